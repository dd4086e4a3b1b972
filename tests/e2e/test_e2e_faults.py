"""cnmd SIGKILLed at chosen points (``CNM_TEST_CRASH_AT``, see ``cnm.kernel.faults``): right
after a bridge, a veth pair or a network namespace is created, and while ``runc run`` is in
flight.  The next cnmd must find what the dead one made and remove it -- which it can only
do if every object was tagged at birth -- and the CLI that was waiting reports a one-line
error, not a traceback."""

from __future__ import annotations

import json
import signal

import pytest
from e2e_util import inspect, network_inspect
from harness import TestHost, wait_for

CRASH_ENV = "CNM_TEST_CRASH_AT"


def restart_aimed(host: TestHost, point: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Restart cnmd so that it SIGKILLs itself at ``point``."""
    host.kill_daemon(signal.SIGTERM)
    monkeypatch.setenv(CRASH_ENV, point)  # the daemon's environment only: set, start, unset
    try:
        host.start_daemon()
    finally:
        monkeypatch.delenv(CRASH_ENV)


def crashed(host: TestHost, result) -> None:
    """The daemon died at the aimed point and the CLI said so in one line."""
    assert wait_for(lambda: not host.daemon_running(), timeout=20), "cnmd did not die at the crash point"
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def link_names(host: TestHost) -> set[str]:
    return {link["ifname"] for link in host.ip_json("link", "show")}


def netns_files(host: TestHost) -> list[str]:
    return host.run(["ls", "-A", str(host.exec_root / "netns")], check=False).stdout.split()


def runc_list(host: TestHost) -> list[dict]:
    out = host.run(["runc", "--root", str(host.exec_root / "runc"), "list", "--format", "json"]).stdout
    return json.loads(out or "null") or []


def test_crash_right_after_bridge_creation_leaves_no_bridge(fresh_cnmhost: TestHost, monkeypatch) -> None:
    host = fresh_cnmhost
    before = link_names(host)
    restart_aimed(host, "bridge-created", monkeypatch)
    result = host.cnm("network", "create", "--subnet", "10.71.0.0/24", "crashnet", check=False)
    crashed(host, result)
    left = link_names(host) - before
    assert left and all(name.startswith("br-") for name in left), left  # the crash left it behind

    host.start_daemon()
    assert link_names(host) == before, "the bridge made before the crash is still there"
    assert "crashnet" not in host.cnm("network", "ls", "--format", "{{.Name}}").stdout.split()
    host.cnm("network", "create", "--subnet", "10.71.0.0/24", "crashnet")
    host.cnm("network", "rm", "crashnet")
    assert link_names(host) == before


@pytest.mark.parametrize("point", ["netns-created", "veth-created"])
def test_crash_while_a_container_joins_leaves_no_netns_nor_veth(
    fresh_cnmhost: TestHost, monkeypatch, point: str
) -> None:
    host = fresh_cnmhost
    host.cnm("network", "create", "--subnet", "10.72.0.0/24", "joinnet")
    before = link_names(host)
    restart_aimed(host, point, monkeypatch)
    result = host.cnm(
        "run", "-d", "--name", "c1", "--network", "joinnet", "busybox", "sleep", "1d", check=False
    )
    crashed(host, result)
    assert netns_files(host), "the crash left no netns: the point was not reached"

    host.start_daemon()
    assert link_names(host) == before
    assert netns_files(host) == []
    assert network_inspect(host, "joinnet")["Containers"] in ({}, None)
    assert not runc_list(host)
    host.cnm("rm", "-f", "c1")
    host.cnm("run", "-d", "--name", "c1", "--network", "joinnet", "busybox", "sleep", "1d")
    host.cnm("rm", "-f", "c1")
    host.cnm("network", "rm", "joinnet")


def test_crash_while_runc_runs_leaks_no_container(fresh_cnmhost: TestHost, monkeypatch) -> None:
    host = fresh_cnmhost
    restart_aimed(host, "runc-run", monkeypatch)
    result = host.cnm("run", "-d", "--name", "c1", "busybox", "sleep", "1d", check=False)
    crashed(host, result)
    # runc carried on without its parent: the container runs, unknown to the store
    assert wait_for(lambda: any(c["status"] == "running" for c in runc_list(host)), timeout=20), runc_list(
        host
    )
    (leaked,) = runc_list(host)
    cgroup = f"/sys/fs/cgroup/{host.cgroup_parent}/{leaked['id']}"

    host.start_daemon()
    assert runc_list(host) == [], "a container runc runs and the store does not is still there"
    assert host.run(["kill", "-0", str(leaked["pid"])], check=False).returncode != 0, "its process lives on"
    assert host.run(["test", "-e", cgroup], check=False).returncode != 0, f"{cgroup} is left"
    state = inspect(host, "c1")[0]["State"]
    assert not state["Running"] and state["Status"] == "created"
    assert netns_files(host) == []
    host.cnm("start", "c1")
    assert inspect(host, "c1")[0]["State"]["Running"]
    host.cnm("rm", "-f", "c1")
    assert runc_list(host) == []
