"""``make test`` on a fresh machine (issue 7): the root tiers get what they need first --
the apt packages (``deps``), the venv, the busybox image -- and ``deps`` installs exactly
what is missing.  Checked on a copy of the build files in a temporary directory (no .venv,
no images/), with ``make -n`` and with stand-ins for dpkg-query and apt-get on PATH: nothing
is installed on this machine."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@pytest.fixture
def fresh(tmp_path: Path) -> Path:
    """The repo's build files as a fresh clone has them: no .venv, no images/."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "scripts", tmp_path / "scripts")
    return tmp_path


def make(where: Path, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=where,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def apt_packages() -> list[str]:
    text = (REPO / "Makefile").read_text()
    return re.search(r"^APT_PKGS\s*:=\s*(.*)$", text, re.M).group(1).split()


def first_line(out: str, needle: str) -> int:
    for i, line in enumerate(out.splitlines()):
        if needle in line:
            return i
    pytest.fail(f"{needle!r} is not in:\n{out}")


@pytest.mark.parametrize("target", ["test", "integration", "e2e"])
def test_root_tiers_get_packages_venv_and_image_before_pytest(fresh: Path, target: str) -> None:
    out = make(fresh, "-n", target)
    order = [
        first_line(out, needle)
        for needle in ("dpkg-query", "-m venv", "pip install", "make-busybox-tar", "-m pytest")
    ]
    assert order == sorted(order), out


def test_unit_tier_needs_only_the_venv(fresh: Path) -> None:
    out = make(fresh, "-n", "unit")
    assert "-m pytest" in out and "-m venv" in out
    assert "apt-get" not in out or "python3-venv" in out  # only if this python has no ensurepip


def test_deps_installs_exactly_what_is_missing(fresh: Path) -> None:
    fake = fresh / "fakebin"
    fake.mkdir()
    log = fresh / "apt.log"
    installed = fresh / "installed"
    installed.write_text("runc\nprocps\n")
    scripts = {
        # dpkg-query -W -f=... PKG: "installed" for the packages listed in $installed
        "dpkg-query": f'#!/bin/sh\nfor p; do :; done\ngrep -qx "$p" {installed} && printf "install ok installed"\n',
        "apt-get": f'#!/bin/sh\necho "$@" >> {log}\n',
    }
    for name, body in scripts.items():
        (fake / name).write_text(body)
        (fake / name).chmod(stat.S_IRWXU)
    env = {"PATH": f"{fake}:{os.environ['PATH']}"}
    make(fresh, "deps", env=env)
    calls = log.read_text().splitlines()
    assert len(calls) == 1 and calls[0].startswith("install -y --no-install-recommends"), calls
    assert calls[0].split()[3:] == [p for p in apt_packages() if p not in ("runc", "procps")]
    installed.write_text("\n".join(apt_packages()) + "\n")
    log.unlink()
    make(fresh, "deps", env=env)
    assert not log.exists(), "apt-get ran although nothing was missing"


def test_ci_script_drives_the_same_targets() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert subprocess.run(["bash", "-n", str(REPO / ".ci" / "run")]).returncode == 0
    for target in ("deps", "venv", "test"):
        assert f"make {target}" in ci


def test_lint_runs_every_check_and_ci_runs_lint_before_the_suite(fresh: Path) -> None:
    """``make lint``: ruff (lint and format) on src/ and tests/, the import contracts, mypy;
    .ci/run calls it before ``make test``."""
    out = make(fresh, "-n", "lint")
    for needle in ("ruff check", "ruff format --check"):
        line = out.splitlines()[first_line(out, needle)]
        assert {"src", "tests"} <= set(line.split()), line
    first_line(out, "lint-imports")
    first_line(out, "mypy")
    ci = (REPO / ".ci" / "run").read_text()
    assert "make lint" in ci and ci.index("make lint") < ci.index("make test")
