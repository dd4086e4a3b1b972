"""The docs are true: every shell example in README.md and docs/ works as written.

Each ```sh block is read line by line.  ``cnm …`` lines run, in order, in a throwaway host
(one script per block, ``set -e``): an example that fails fails this test.  What cannot run
in a test host is checked against the files that make it true: ``make TARGET`` names a
target of the Makefile, ``. .venv/bin/activate`` a venv that ``make venv`` builds,
``systemctl … cnmd`` the unit ``make install`` installs.  A line of any other kind fails
the test, so a new example cannot slip in unchecked.  The ``cnmd [...]`` synopsis must name
exactly the options ``cnmd --help`` lists.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from harness import REPO, TestHost

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def shell_blocks(path: Path) -> list[list[str]]:
    """The ```sh blocks of ``path``: their lines, comments and blank lines dropped."""
    blocks, current = [], None
    for line in path.read_text().splitlines():
        if current is None and line.strip() == "```sh":
            current = []
        elif current is not None and line.strip() == "```":
            blocks.append(current)
            current = None
        elif current is not None:
            code = re.sub(r"\s+#.*$", "", line).strip() if not line.lstrip().startswith("#") else ""
            if code:
                current.append(code)
    return blocks


def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    found = set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", text, re.M))
    for phony in re.findall(r"^\.PHONY:(.*)$", text, re.M):
        found |= set(phony.split())
    return found


def check_without_running(line: str) -> bool:
    """True when ``line`` is of a kind checked against files (and it holds)."""
    if m := re.fullmatch(r"make ([\w-]+)(?: [A-Z_]+=\S+)*", line):
        assert m.group(1) in make_targets(), f"`{line}`: the Makefile has no target {m.group(1)}"
        return True
    if line == ". .venv/bin/activate":
        assert re.search(r"^VENV\s*:=\s*\.venv$", (REPO / "Makefile").read_text(), re.M)
        return True
    if re.fullmatch(r"systemctl (enable --now|start|stop|restart|status) cnmd", line):
        assert (REPO / "contrib" / "systemd" / "cnmd.service.in").exists()
        return True
    return False


def all_blocks() -> list[tuple[str, list[str]]]:
    return [(f"{p.name}#{i}", b) for p in DOCS for i, b in enumerate(shell_blocks(p))]


@pytest.mark.parametrize("where,block", all_blocks(), ids=[w for w, _ in all_blocks()])
def test_shell_examples(where: str, block: list[str], busybox_tar: Path) -> None:
    runnable = []
    for line in block:
        if check_without_running(line):
            continue
        assert line.startswith("cnm "), f"{where}: `{line}` is neither run nor checked by this test"
        runnable.append(line)
    if not runnable:
        return
    with TestHost() as host:
        host.start_daemon()
        host.import_image(busybox_tar, "busybox")
        script = "set -ex\n" + "\n".join(runnable) + "\n"
        proc = host.run(["bash", "-c", script], check=False, timeout=120, env={"CNM_NO_AUTOSTART": "1"})
        assert proc.returncode == 0, f"{where} failed:\n{proc.stderr}\n{proc.stdout}"


def test_the_daemon_synopsis_names_every_option() -> None:
    readme = (REPO / "README.md").read_text()
    synopsis = re.search(r"^cnmd \[.*?(?=^```)", readme, re.M | re.S)
    assert synopsis, "README has no cnmd synopsis"
    documented = set(re.findall(r"(--[a-z0-9-]+|-H)\b", synopsis.group(0)))
    from cnm.daemon.config import build_parser

    actions = [a.option_strings for a in build_parser()._actions if "--help" not in a.option_strings]
    assert documented <= {name for names in actions for name in names}, "the synopsis names an unknown option"
    missing = [names for names in actions if not documented & set(names)]
    assert missing == [], f"the synopsis lacks {missing}"
