"""What a user installing cnm relies on: the systemd unit verifies, the metadata is there,
runtime dependencies are ranges while development tools are pinned."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
NEEDS_SYSTEMD = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze missing (.ci/run installs it)"
)


def render_unit(tmp_path: Path, prefix: Path) -> Path:
    """The unit as `make install` writes it, with cnmd taken from ``prefix``/bin."""
    out = tmp_path / "cnmd.service"
    subprocess.run(
        ["make", "-s", "-C", str(REPO), "systemd-unit", f"UNIT_OUT={out}", f"PREFIX={prefix}",
         f"CNM_HOME={REPO}"],
        check=True,
    )  # fmt: skip
    return out


@NEEDS_SYSTEMD
def test_systemd_unit_verifies_without_a_warning(tmp_path: Path) -> None:
    venv = Path(shutil.which("cnmd") or REPO / ".venv" / "bin" / "cnmd").resolve().parent.parent
    unit = render_unit(tmp_path, venv)
    text = unit.read_text()
    assert "@" not in text.replace("unix:///", ""), "every placeholder is rendered"
    assert f"ExecStart={venv}/bin/cnmd " in text
    assert "KillMode=process" in text  # live restore: stopping cnmd leaves containers running
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert (proc.returncode, proc.stderr, proc.stdout) == (0, "", "")


@NEEDS_SYSTEMD
def test_verification_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a unit whose cnmd does not exist is refused."""
    unit = render_unit(tmp_path, tmp_path / "nowhere")
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert proc.returncode != 0 and "not executable" in proc.stderr


def test_metadata_a_user_expects() -> None:
    project = PYPROJECT["project"]
    assert project["readme"] == "README.md" and (REPO / "README.md").exists()
    assert (REPO / project["license"]["file"]).read_text().lstrip().startswith("Apache License")
    assert any(c.startswith("License :: ") for c in project["classifiers"])
    assert "Operating System :: POSIX :: Linux" in project["classifiers"]
    assert (REPO / "src" / "cnm" / "py.typed").exists()
    assert set(project["scripts"]) == {"cnm", "cnmd"}


def test_runtime_dependencies_are_ranges_and_tools_are_pinned() -> None:
    for requirement in PYPROJECT["project"]["dependencies"]:
        assert "==" not in requirement and "<" in requirement, requirement
    tools = {r.split("==")[0]: r for r in PYPROJECT["project"]["optional-dependencies"]["test"] if "==" in r}
    assert {"ruff", "mypy", "import-linter"} <= set(tools)
