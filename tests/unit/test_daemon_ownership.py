"""One daemon, its own state: the roots' locks, the daemon id, the owner tag and the
liveness beacon (no root needed: files under tmp_path, an abstract socket of this process)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cnm.daemon.main import daemon_id, firewall_table, lock_root, lock_roots
from cnm.errors import Conflict, Unavailable
from cnm.kernel.api import LinkInfo, may_remove, owner_alias, parse_alias
from cnm.kernel.owner import DaemonBeacon, live_daemons

ME, OTHER = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"


def test_a_locked_root_is_refused_naming_the_root_and_the_holder(tmp_path):
    held = lock_root(str(tmp_path), "data root")
    try:
        with pytest.raises(Unavailable) as err:
            lock_root(str(tmp_path), "data root")
        assert str(err.value) == f"another cnmd (pid {os.getpid()}) is running with data root {tmp_path}"
    finally:
        os.close(held)
    os.close(lock_root(str(tmp_path), "data root"))  # released with its holder


def test_a_root_held_by_another_process_is_refused(tmp_path):
    code = (
        "import fcntl, os, sys; fd = os.open(sys.argv[1] + '/cnmd.pid', os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'%d\\n' % os.getpid()); print('held', flush=True); "
        "sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Unavailable, match=f"pid {holder.pid}\\) is running with exec root {tmp_path}"):
            lock_root(str(tmp_path), "exec root")
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


def test_lock_roots_holds_nothing_when_the_second_root_is_taken(tmp_path):
    data, exec_ = tmp_path / "data", tmp_path / "exec"
    data.mkdir()
    exec_.mkdir()
    held = lock_root(str(exec_), "exec root")
    try:
        with pytest.raises(Unavailable, match="exec root"):
            lock_roots(str(data), str(exec_))
        os.close(lock_root(str(data), "data root"))  # the data root was let go
    finally:
        os.close(held)
    for fd in lock_roots(str(data), str(exec_)):
        os.close(fd)


def test_daemon_id_is_made_once_and_kept(tmp_path):
    first = daemon_id(str(tmp_path))
    assert len(first) == 16 and int(first, 16) >= 0
    assert daemon_id(str(tmp_path)) == first
    (tmp_path / "daemon-id").write_text("garbage\n")
    assert daemon_id(str(tmp_path)) != first


def test_firewall_table_per_bridge_name():
    assert firewall_table("cnm0") == "cnm"
    assert firewall_table("cnm1") == "cnm-cnm1"
    assert firewall_table("br.x-1") == "cnm-br.x-1"
    assert firewall_table("a@b") == "cnm-x" + b"a@b".hex()


def test_owner_alias_round_trip():
    assert parse_alias(owner_alias("n" * 64, ME)) == (ME, "n" * 64)
    assert parse_alias(owner_alias("n" * 64)) == ("", "n" * 64)
    assert parse_alias("someone else's alias") == ("", "")


def test_owner_alias_label_is_read_by_people_and_ignored_by_the_owner_match():
    alias = owner_alias("e" * 64, ME, "web on front:end")
    assert alias == f"cnm:{ME}:{'e' * 64} (web on front:end)"
    assert parse_alias(alias) == (ME, "e" * 64)
    assert len(owner_alias("e" * 64, ME, "x" * 400)) == 255  # the kernel keeps 255 bytes
    assert parse_alias(owner_alias("e" * 64, ME, "x" * 400)) == (ME, "e" * 64)


@pytest.mark.parametrize(
    "daemon,others_alive,removable",
    [
        (ME, True, True),
        (ME, False, True),
        (OTHER, True, False),
        (OTHER, False, False),
        ("", True, False),
        ("", False, True),
    ],
)
def test_may_remove(daemon, others_alive, removable):
    link = LinkInfo(index=3, name="br-x", kind="bridge", owner="n" * 64, daemon=daemon)
    assert may_remove(link, ME, others_alive) is removable
    untagged = LinkInfo(index=4, name="br-user", kind="bridge", owner="")
    assert not may_remove(untagged, ME, others_alive)


def test_beacon_is_visible_while_held_and_unique(tmp_path):
    daemon = os.urandom(8).hex()
    beacon = DaemonBeacon(daemon, os.getpid())
    try:
        assert live_daemons()[daemon] == os.getpid()
        with pytest.raises(Conflict, match=f"daemon id {daemon}"):
            DaemonBeacon(daemon, os.getpid())
    finally:
        beacon.close()
    assert daemon not in live_daemons()


def test_live_daemons_parses_proc_net_unix(tmp_path):
    table = tmp_path / "unix"
    table.write_text(
        "Num       RefCount Protocol Flags    Type St Inode Path\n"
        f"0000000000000000: 00000002 00000000 00010000 0005 01 1001 @cnmd:{ME}:77\n"
        "0000000000000000: 00000002 00000000 00010000 0001 01 1002 /run/cnm/cnm.sock\n"
        "0000000000000000: 00000002 00000000 00010000 0001 01 1003 @cnmd:NOTHEX:1\n"
        "0000000000000000: 00000002 00000000 00010000 0001 01 1004\n"
    )
    assert live_daemons(str(table)) == {ME: 77}


async def test_a_bridge_name_tagged_by_another_daemon_is_refused():
    from cnm.daemon.main import check_bridge_name
    from cnm.kernel.fake import FakeKernel

    kernel = FakeKernel(daemon_id=ME)
    await check_bridge_name(kernel, "cnm0", {})  # no such link
    kernel.add_foreign_link("cnm0", owner="n" * 64, daemon=ME)
    await check_bridge_name(kernel, "cnm0", {})  # ours, from before a restart
    kernel.add_foreign_link("cnm1", owner="n" * 64, daemon=OTHER)
    with pytest.raises(
        Unavailable, match=f"bridge cnm1 belongs to another cnmd \\(daemon {OTHER}, running, pid 9\\)"
    ):
        await check_bridge_name(kernel, "cnm1", {OTHER: 9})
    with pytest.raises(Unavailable, match="not running"):
        await check_bridge_name(kernel, "cnm1", {})
    kernel.add_foreign_link("user0")  # the user's own bridge: used, as Docker does
    await check_bridge_name(kernel, "user0", {OTHER: 9})
