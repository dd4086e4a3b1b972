"""cnmd restarted (SIGTERM or SIGKILL) keeps networks and running containers working and
reconciles: a container that died while cnmd was down is noticed and its veth released, a new
container gets a fresh address, nothing is double-allocated or leaked."""

from __future__ import annotations

import signal

import pytest
from e2e_util import (
    bridge_of,
    bridge_ports,
    inspect,
    ip_on,
    network_inspect,
    pings,
    run_sleeper,
    sandbox_key,
)
from harness import TestHost, wait_for


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_restart_keeps_containers_and_reconciles(fresh_cnmhost: TestHost, sig: int) -> None:
    host = fresh_cnmhost
    host.cnm("network", "create", "--subnet", "10.70.0.0/24", "rs")
    for name in ("aa", "bb", "cc"):
        run_sleeper(host, name, "--network", "rs")
    run_sleeper(host, "dd")  # default bridge
    ips = {n: ip_on(host, n, "rs") for n in ("aa", "bb", "cc")}
    ids = {n: inspect(host, n)[0]["Id"] for n in ("aa", "bb", "cc", "dd")}
    key_a = sandbox_key(host, "aa")
    c_pid = inspect(host, "cc")[0]["State"]["Pid"]
    rs_id = inspect(host, "aa")[0]["NetworkSettings"]["Networks"]["rs"]["NetworkID"]
    bridge = bridge_of(host, "rs")
    assert len(bridge_ports(host, bridge)) == 3

    host.kill_daemon(sig)
    # With cnmd down the data path keeps working: a's netns still reaches b through the bridge.
    assert host.netns_exec(key_a, ["busybox", "ping", "-c", "1", "-W", "2", ips["bb"]]).returncode == 0
    host.run(["kill", "-9", str(c_pid)])  # c dies while nobody watches

    host.start_daemon()
    assert network_inspect(host, "rs")["Id"] == rs_id
    assert wait_for(lambda: not inspect(host, "cc")[0]["State"]["Running"], timeout=20), "c's death unnoticed"
    running = set(host.cnm("ps", "-q").stdout.split())
    assert {ids["aa"][:12], ids["bb"][:12], ids["dd"][:12]} <= running and ids["cc"][:12] not in running
    assert wait_for(lambda: len(bridge_ports(host, bridge)) == 2), "c's veth was not released"

    assert pings(host, "aa", ips["bb"]) and pings(host, "bb", ips["aa"])
    assert pings(host, "dd", inspect(host, "dd")[0]["NetworkSettings"]["Networks"]["bridge"]["Gateway"])
    run_sleeper(host, "ee", "--network", "rs")
    ip_e = ip_on(host, "ee", "rs")
    assert ip_e not in (ips["aa"], ips["bb"]), "a running container's address was handed out again"
    assert pings(host, "ee", ips["aa"])
    live = [ip_on(host, n, "rs") for n in ("aa", "bb", "ee")]
    assert len(set(live)) == 3
    assert len(bridge_ports(host, bridge)) == 3

    # and once more, now that the daemon has reconciled: nothing drifts on a second restart
    host.kill_daemon(signal.SIGTERM)
    host.start_daemon()
    assert [ip_on(host, n, "rs") for n in ("aa", "bb", "ee")] == live
    assert len(bridge_ports(host, bridge)) == 3
    host.cnm("rm", "-f", "aa", "bb", "cc", "dd", "ee")
    host.cnm("network", "rm", "rs")
    assert not any(link["ifname"] == bridge for link in host.ip_json("link", "show"))
