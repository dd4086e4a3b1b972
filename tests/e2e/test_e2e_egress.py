"""Egress to the "world" namespace (the Internet stand-in): masquerade to the host's
203.0.113.2, ``--internal`` has no way out, masquerade off shows the container's address."""

from __future__ import annotations

import pytest
from e2e_util import cexec, ip_on, pings, run_sleeper, world_server
from harness import HOST_ADDR, WORLD_ADDR, TestHost


@pytest.fixture(scope="module")
def egress(cnmhost: TestHost) -> TestHost:
    cnmhost.cnm("network", "create", "--subnet", "10.60.0.0/24", "outnet")
    cnmhost.cnm("network", "create", "--internal", "--subnet", "10.61.0.0/24", "inner")
    cnmhost.cnm(
        "network",
        "create",
        "--subnet",
        "10.62.0.0/24",
        "-o",
        "com.docker.network.bridge.enable_ip_masquerade=false",
        "nomasq",
    )
    run_sleeper(cnmhost, "out1", "--network", "outnet")
    run_sleeper(cnmhost, "def1")
    run_sleeper(cnmhost, "in1", "--network", "inner")
    run_sleeper(cnmhost, "nm1", "--network", "nomasq")
    return cnmhost


def tcp_probe(host: TestHost, name: str, port: int) -> None:
    cexec(host, name, "sh", "-c", f"echo hello | nc -w 3 {WORLD_ADDR} {port}", check=False, timeout=30)


def udp_probe(host: TestHost, name: str) -> None:
    # busybox has no `nc -u`; nslookup sends a UDP datagram to port 53 of the given server
    cexec(host, name, "sh", "-c", f"timeout 3 nslookup probe.invalid {WORLD_ADDR}", check=False, timeout=30)


@pytest.mark.parametrize("name", ["out1", "def1"])
def test_tcp_egress_is_masqueraded_to_the_host_address(egress: TestHost, name: str) -> None:
    server = world_server(egress, "tcp", 8080)
    tcp_probe(egress, name, 8080)
    assert server.peer() == HOST_ADDR


def test_udp_egress_is_masqueraded_to_the_host_address(egress: TestHost) -> None:
    server = world_server(egress, "udp", 53)
    udp_probe(egress, "out1")
    assert server.peer() == HOST_ADDR


def test_container_pings_the_world(egress: TestHost) -> None:
    assert pings(egress, "out1", WORLD_ADDR)


def test_internal_network_cannot_reach_the_world(egress: TestHost) -> None:
    server = world_server(egress, "tcp", 8081, timeout=6)
    tcp_probe(egress, "in1", 8081)
    assert server.peer() is None
    assert not pings(egress, "in1", WORLD_ADDR)
    assert "default" not in cexec(egress, "in1", "ip", "route").stdout


def test_masquerade_off_shows_the_container_address(egress: TestHost) -> None:
    # the world needs a route back to the subnet to answer an un-NATed source
    egress.world(["ip", "route", "replace", "10.62.0.0/24", "via", HOST_ADDR])
    server = world_server(egress, "tcp", 8082)
    tcp_probe(egress, "nm1", 8082)
    assert server.peer() == ip_on(egress, "nm1", "nomasq")
