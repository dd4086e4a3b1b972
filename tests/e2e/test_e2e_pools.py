"""Default address pools: Docker's order (172.17/16 for the default bridge, then 172.18/16 …),
a pool overlapping a host route is skipped, ``--default-address-pool`` replaces them."""

from __future__ import annotations

import ipaddress

import pytest
from e2e_util import network_inspect, subnets
from harness import TestHost


def test_default_pools_follow_docker_and_skip_host_routes(fresh_cnmhost: TestHost) -> None:
    host = fresh_cnmhost
    bridge = network_inspect(host, "bridge")["IPAM"]["Config"][0]
    assert (bridge["Subnet"], bridge.get("Gateway")) == ("172.17.0.0/16", "172.17.0.1")
    host.cnm("network", "create", "p1")
    assert subnets(host, "p1") == ["172.18.0.0/16"]
    # a route on the host makes 172.19.0.0/16 unusable: it must be skipped
    host.run(["ip", "route", "add", "172.19.0.0/16", "via", "203.0.113.1"])
    host.cnm("network", "create", "p2")
    assert subnets(host, "p2") == ["172.20.0.0/16"]
    # a subnet already taken by a user network is skipped too
    host.cnm("network", "create", "--subnet", "172.21.0.0/16", "p3")
    host.cnm("network", "create", "p4")
    assert subnets(host, "p4") == ["172.22.0.0/16"]
    # a removed network's pool is free again
    host.cnm("network", "rm", "p1")
    host.cnm("network", "create", "p5")
    assert subnets(host, "p5") == ["172.18.0.0/16"]


@pytest.mark.daemon_flags("--default-address-pool", "base=10.123.0.0/16,size=24")
def test_configured_default_address_pool(fresh_cnmhost: TestHost) -> None:
    host = fresh_cnmhost
    host.cnm("network", "create", "q1")
    host.cnm("network", "create", "q2")
    pool = ipaddress.ip_network("10.123.0.0/16")
    got = [ipaddress.ip_network(subnets(host, n)[0]) for n in ("q1", "q2")]
    assert all(n.prefixlen == 24 and n.subnet_of(pool) for n in got), got
    assert got[0] != got[1]
