"""The anti-spoofing guard with real dual-stack containers (issue 12): neighbour discovery
and echo over IPv6 pass the guard (between neighbours and to the gateway), and a container
that sends from an address not its own gets no answer while its own still works.  The
frame-by-frame rules (NA targets, router advertisements, ``::``) are tested against the
kernel in tests/integration/test_firewall_bridge_guard6.py."""

from __future__ import annotations

import json

from e2e_util import cexec, inspect, run_sleeper, sandbox_key
from harness import TestHost

NET = "v6guard"


def v6(host: TestHost, name: str) -> tuple[str, str]:
    settings = inspect(host, name)[0]["NetworkSettings"]["Networks"][NET]
    return settings["GlobalIPv6Address"], settings["IPv6Gateway"]


def ping6(host: TestHost, key: str, address: str, source: str) -> bool:
    """Does a ping from ``source`` in the namespace at ``key`` get an answer?"""
    argv = ["busybox", "ping", "-6", "-c", "1", "-W", "3", "-I", source, address]
    return host.netns_exec(key, argv, check=False, timeout=30).returncode == 0


def guarded_v6(host: TestHost) -> set[str]:
    """The v6 source addresses cnm's guard lets through, over all ports."""
    objects = json.loads(host.run(["nft", "-j", "list", "set", "bridge", "cnm", "addrs6"]).stdout)["nftables"]
    return {
        item["elem"]["val"]["concat"][2] for o in objects if "set" in o for item in o["set"].get("elem", [])
    }


def test_dual_stack_neighbours_talk_through_the_guard_and_cannot_spoof(fresh_cnmhost: TestHost) -> None:
    host = fresh_cnmhost
    host.cnm("network", "create", "--ipv6", "--subnet", "10.62.0.0/24", "--subnet", "2001:db8:62::/64", NET)
    run_sleeper(host, "ga", "--network", NET)
    run_sleeper(host, "gb", "--network", NET)
    a6, gw6 = v6(host, "ga")
    b6, _ = v6(host, "gb")
    assert {a6, b6} <= guarded_v6(host)

    # neighbour discovery and echo between neighbours and with the gateway
    assert cexec(host, "ga", "ping", "-6", "-c", "1", "-W", "3", b6, check=False).returncode == 0
    assert cexec(host, "gb", "ping", "-6", "-c", "1", "-W", "3", gw6, check=False).returncode == 0

    # a second address on ga's interface (added from the host: the container has no
    # NET_ADMIN) is not one cnm gave it: nothing it sends from there gets through
    key = sandbox_key(host, "ga")
    host.netns_exec(key, ["ip", "-6", "addr", "add", "2001:db8:62::99/64", "dev", "eth0", "nodad"])
    assert ping6(host, key, b6, "2001:db8:62::99") is False
    assert ping6(host, key, gw6, "2001:db8:62::99") is False
    assert ping6(host, key, b6, a6) is True  # its own address still works

    # control: without the guard the forged source gets its answer, so the check can fail
    host.kill_daemon()
    host.start_daemon("--anti-spoofing=false")
    assert host.run(["nft", "list", "table", "bridge", "cnm"], check=False).returncode != 0
    assert ping6(host, key, b6, "2001:db8:62::99") is True

    # back on: the guard follows the endpoints (gone with a container)
    host.kill_daemon()
    host.start_daemon()
    assert ping6(host, key, b6, "2001:db8:62::99") is False
    host.cnm("rm", "-f", "gb")
    assert b6 not in guarded_v6(host) and a6 in guarded_v6(host)
