"""Root-free checks of the test tooling: the busybox image builder and the harness helpers."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from harness import REPO, HarnessError, HostSnapshot, cgroup_dirs

MAKE_TAR = REPO / "scripts" / "make-busybox-tar"


def test_busybox_tar_is_deterministic_and_complete(tmp_path: Path) -> None:
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    for out in (a, b):
        subprocess.run([sys.executable, str(MAKE_TAR), str(out)], check=True, capture_output=True)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    with tarfile.open(a) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["bin/busybox"].isfile() and members["bin/busybox"].mode == 0o755
    for applet in ("sh", "ip", "ping", "nc", "sleep", "hostname", "nslookup", "cat", "readlink"):
        assert members[f"bin/{applet}"].issym() and members[f"bin/{applet}"].linkname == "busybox"
    assert members["sbin"].linkname == "bin" and members["usr/bin"].linkname == "../bin"
    assert members["tmp"].mode == 0o1777 and members["root"].mode == 0o700
    assert {"etc/passwd", "etc/group", "etc/hosts", "etc/hostname", "etc/resolv.conf"} <= members.keys()
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members.values())


def test_make_busybox_tar_usage() -> None:
    proc = subprocess.run([sys.executable, str(MAKE_TAR)], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_snapshot_diff_names_only_what_is_new() -> None:
    before = HostSnapshot(frozenset({"1:lo"}), frozenset(), frozenset({"ip filter"}), frozenset({"/"}))
    after = HostSnapshot(
        frozenset({"1:lo", "7:veth0"}), frozenset({"x"}), frozenset({"ip filter"}), frozenset({"/"})
    )
    assert after.new_since(before) == {"links": {"7:veth0"}, "netns": {"x"}}
    assert before.new_since(before) == {}


@pytest.mark.parametrize("bad", ["", "/", "a/b", "..", "."])
def test_cgroup_cleanup_refuses_unsafe_parents(bad: str) -> None:
    with pytest.raises(HarnessError):
        cgroup_dirs(bad)
