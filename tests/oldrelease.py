"""The last release before the redesign (git tag ``v0.1.0``), runnable beside the current code.

``extract(dest)`` writes that release's ``src/`` under ``dest`` and two launchers next to it, ``cnmd`` and ``cnm``, that run it with the interpreter (and so
the venv and its dependencies) running this process: the release's sources go first on the
path, ahead of the editable install of the current ones.  The upgrade test
(tests/e2e/test_e2e_upgrade.py) and bench/scale.py use it to run the old and the new code
on the same machine, the same data root, in the same run.

The sources come from ``tests/releases/<tag>-src.tar.xz``, the output of
``git archive <tag> src`` kept in the repository (``make release-archive`` writes it again),
because a clone need not carry the tag: CI's clone of main has no tags, and a shallow clone
lacks the old commits.  A missing archive fails with ``OldReleaseError``, never quietly.
"""

from __future__ import annotations

import compileall
import os
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RELEASES = REPO / "tests" / "releases"
RELEASE = "v0.1.0"

# The same launchers as the venv's (scripts/fast-cli-launcher for the CLI: no site, the
# sources on the path), so that old and new start alike and a figure compares the code.
CNMD = """#!{python}
# The cnm release {tag}, extracted by tests/oldrelease.py: its sources before the venv's.
import sys
sys.path.insert(0, {src!r})
from cnm.daemon.main import main
sys.exit(main())
"""
CNM = """#!{python} -S
# The cnm release {tag}, extracted by tests/oldrelease.py: no site, its sources on the path.
import sys
sys.path.insert(0, {src!r})
from cnm.cli.main import main
sys.exit(main())
"""


class OldReleaseError(RuntimeError):
    """The old release cannot be extracted (no archive of that tag in this clone)."""


@dataclass(frozen=True)
class Release:
    """One extracted release: its tag, its sources and its two launchers."""

    tag: str
    src: Path
    daemon: str  # its cnmd launcher
    client: str  # its cnm launcher

    def daemon_argv(self, host: Any, *extra: str) -> list[str]:
        """``host``'s cnmd command line (a ``harness.TestHost``: its roots, bridge, cgroup
        parent) with this release's cnmd instead of the venv's."""
        argv = host.daemon_argv(*extra)
        return [self.daemon, *argv[1:]]

    def start_daemon(self, host: Any, *extra: str, timeout: float = 30.0) -> None:
        """Start this release's cnmd in ``host`` and wait until it answers ``/_ping``."""
        host.start_daemon(*extra, timeout=timeout, argv=self.daemon_argv(host, *extra))

    def cli(self, host: Any) -> list[str]:
        """This release's ``cnm -H <host's socket>``."""
        return [self.client, "-H", host.host_uri]

    def cnm(self, host: Any, *args: str, check: bool = True, timeout: float = 60) -> Any:
        """``cnm ARGS…`` of this release inside ``host`` (a CompletedProcess)."""
        return host.run([*self.cli(host), *args], check=check, timeout=timeout)


def archive(tag: str = RELEASE) -> Path:
    """The path of release ``tag``'s source archive; OldReleaseError when there is none."""
    path = RELEASES / f"{tag}-src.tar.xz"
    if not path.is_file():
        raise OldReleaseError(
            f"release {tag} is not in {RELEASES} (no {path.name}): the upgrade test and "
            f"bench/scale.py run it beside the current code; write it from the git tag with "
            f"`make release-archive TAG={tag}`"
        )
    return path


def read(path: str, tag: str = RELEASE) -> str:
    """The text of ``path`` (``src/…``) as release ``tag`` has it."""
    with tarfile.open(archive(tag)) as tar:
        try:
            member = tar.extractfile(path)
        except KeyError:
            member = None
        if member is None:
            raise OldReleaseError(f"release {tag} has no file {path}")
        return member.read().decode()


def extract(dest: Path, tag: str = RELEASE) -> Release:
    """Write release ``tag``'s ``src/`` and its launchers under ``dest`` (created; must be
    empty or absent) and byte-compile it (the venv's sources are, by ``make venv``)."""
    source = archive(tag)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise OldReleaseError(f"{dest} is not empty: extract release {tag} into a fresh directory")
    with tarfile.open(source) as tar:
        tar.extractall(dest, filter="data")
    src = dest / "src"
    if not (src / "cnm" / "daemon" / "main.py").is_file():
        raise OldReleaseError(f"release {tag} has no src/cnm/daemon/main.py: not a cnm release")
    compileall.compile_dir(str(src), quiet=1)
    launchers = {}
    for name, template in (("cnmd", CNMD), ("cnm", CNM)):
        path = dest / name
        path.write_text(template.format(python=sys.executable, tag=tag, src=str(src)))
        os.chmod(path, 0o755)
        launchers[name] = str(path)
    return Release(tag, src, launchers["cnmd"], launchers["cnm"])
