"""Reachability and the shape of each network mode, on one module-scoped test host.

Must hold: same network reaches, different networks do not, host <-> container works;
``none`` has only lo, ``host`` sees the host's interfaces, ``container:NAME`` shares NAME's
stack; static IP, MAC and hostname are what was asked; iflink pairing as in the tour.
"""

from __future__ import annotations

import pytest
from e2e_util import (
    bridge_of,
    bridge_ports,
    cexec,
    host_pings,
    inspect,
    ip_on,
    network_inspect,
    pings,
    run_sleeper,
)
from harness import HOST_ADDR, TestHost


@pytest.fixture(scope="module")
def nets(cnmhost: TestHost) -> TestHost:
    """Two user networks with two containers each, plus two on the default bridge."""
    cnmhost.cnm("network", "create", "--subnet", "10.31.0.0/24", "red")
    cnmhost.cnm("network", "create", "--subnet", "10.32.0.0/24", "blue")
    run_sleeper(cnmhost, "red1", "--network", "red")
    run_sleeper(cnmhost, "red2", "--network", "red")
    run_sleeper(cnmhost, "blue1", "--network", "blue")
    run_sleeper(cnmhost, "def1")
    run_sleeper(cnmhost, "def2")
    return cnmhost


def test_default_bridge_is_cnm0_with_dockers_subnet(nets: TestHost) -> None:
    bridge = network_inspect(nets, "bridge")
    assert bridge["Driver"] == "bridge"
    assert [c["Subnet"] for c in bridge["IPAM"]["Config"]] == ["172.17.0.0/16"]
    addrs = [f"{a['local']}/{a['prefixlen']}" for a in nets.ip_json("addr", "show", "cnm0")[0]["addr_info"]]
    assert "172.17.0.1/16" in addrs
    ls = nets.cnm("network", "ls").stdout
    assert ls.splitlines()[0].split() == ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"]
    rows = {line.split()[1]: line.split()[2:] for line in ls.splitlines()[1:]}
    assert rows["bridge"] == ["bridge", "local"] and rows["host"] == ["host", "local"]
    assert rows["none"] == ["null", "local"]


def test_same_network_reaches(nets: TestHost) -> None:
    assert pings(nets, "red1", ip_on(nets, "red2", "red"))
    assert pings(nets, "red2", ip_on(nets, "red1", "red"))
    assert pings(nets, "def1", ip_on(nets, "def2", "bridge"))


def test_different_networks_are_isolated(nets: TestHost) -> None:
    assert not pings(nets, "red1", ip_on(nets, "blue1", "blue"))
    assert not pings(nets, "blue1", ip_on(nets, "red1", "red"))
    assert not pings(nets, "def1", ip_on(nets, "red1", "red"))
    assert not pings(nets, "red1", ip_on(nets, "def1", "bridge"))


def test_host_and_container_reach_each_other(nets: TestHost) -> None:
    for name, net in (("red1", "red"), ("def1", "bridge")):
        assert host_pings(nets, ip_on(nets, name, net)), f"host cannot reach {name}"
        gateway = inspect(nets, name)[0]["NetworkSettings"]["Networks"][net]["Gateway"]
        assert pings(nets, name, gateway), f"{name} cannot reach its gateway {gateway}"
        assert pings(nets, name, HOST_ADDR), f"{name} cannot reach the host's wan0"


def test_addresses_come_from_the_subnet_lowest_first(nets: TestHost) -> None:
    assert {ip_on(nets, "red1", "red"), ip_on(nets, "red2", "red")} == {"10.31.0.2", "10.31.0.3"}
    eth0 = cexec(nets, "red1", "ip", "-o", "-4", "addr", "show", "eth0").stdout
    assert f"{ip_on(nets, 'red1', 'red')}/24" in eth0
    route = cexec(nets, "red1", "ip", "route").stdout
    assert "default via 10.31.0.1" in route


def test_iflink_pairs_with_the_veth_on_the_bridge(nets: TestHost) -> None:
    for name, net in (("def1", "bridge"), ("red1", "red")):
        iflink = int(cexec(nets, name, "cat", "/sys/class/net/eth0/iflink").stdout.strip())
        bridge = bridge_of(nets, net)
        ports = {p["ifindex"]: p for p in bridge_ports(nets, bridge)}
        assert iflink in ports, f"{name}: iflink {iflink} is not a port of {bridge}: {sorted(ports)}"
    assert bridge_of(nets, "bridge") == "cnm0"


def test_static_ip_mac_and_hostname(nets: TestHost) -> None:
    nets.cnm("network", "create", "--subnet", "10.10.0.0/24", "backend")
    run_sleeper(
        nets,
        "api",
        "--network",
        "backend",
        "--ip",
        "10.10.0.10",
        "-h",
        "api.local",
        "--mac-address",
        "92:d0:c6:0a:29:33",
    )
    assert ip_on(nets, "api", "backend") == "10.10.0.10"
    assert "10.10.0.10/24" in cexec(nets, "api", "ip", "-o", "-4", "addr", "show", "eth0").stdout
    assert cexec(nets, "api", "cat", "/sys/class/net/eth0/address").stdout.strip() == "92:d0:c6:0a:29:33"
    assert cexec(nets, "api", "hostname").stdout.strip() == "api.local"
    assert cexec(nets, "api", "cat", "/etc/hostname").stdout.strip() == "api.local"
    assert nets.cnm("inspect", "-f", "{{ .Config.MacAddress }}", "api").stdout.strip() == "92:d0:c6:0a:29:33"
    assert nets.cnm("inspect", "-f", "{{ .Config.Hostname }}", "api").stdout.strip() == "api.local"


def test_connect_adds_eth1_and_reaches(nets: TestHost) -> None:
    nets.cnm("network", "connect", "red", "blue1")
    try:
        links = cexec(nets, "blue1", "ip", "-o", "link").stdout
        assert " eth1" in links or "eth1@" in links
        assert pings(nets, "blue1", ip_on(nets, "red1", "red"))
    finally:
        nets.cnm("network", "disconnect", "red", "blue1")
    assert "eth1" not in cexec(nets, "blue1", "ip", "-o", "link").stdout
    assert not pings(nets, "blue1", ip_on(nets, "red1", "red"))


def test_none_has_only_loopback(nets: TestHost) -> None:
    ports_before = {p["ifname"] for p in nets.ip_json("link", "show")}
    run_sleeper(nets, "lonely", "--network", "none")
    links = [
        line.split()[1].rstrip(":").split("@")[0]
        for line in cexec(nets, "lonely", "ip", "-o", "link").stdout.splitlines()
    ]
    assert links == ["lo"]
    assert {p["ifname"] for p in nets.ip_json("link", "show")} == ports_before


def test_host_mode_sees_the_hosts_interfaces(nets: TestHost) -> None:
    run_sleeper(nets, "hosty", "--network", "host")
    links = cexec(nets, "hosty", "ip", "-o", "link").stdout
    assert "wan0" in links and "cnm0" in links
    assert "203.0.113.2/24" in cexec(nets, "hosty", "ip", "-o", "-4", "addr").stdout


def test_container_mode_shares_the_stack(nets: TestHost) -> None:
    run_sleeper(nets, "sidecar", "--network", "container:red1")
    mine = cexec(nets, "sidecar", "ip", "-o", "-4", "addr").stdout
    theirs = cexec(nets, "red1", "ip", "-o", "-4", "addr").stdout
    assert mine == theirs and ip_on(nets, "red1", "red") in mine
    ns_a = cexec(nets, "sidecar", "readlink", "/proc/self/ns/net").stdout.strip()
    ns_b = cexec(nets, "red1", "readlink", "/proc/self/ns/net").stdout.strip()
    assert ns_a == ns_b
    assert pings(nets, "sidecar", ip_on(nets, "red2", "red"))


def test_lookup_by_id_prefix(nets: TestHost) -> None:
    full = inspect(nets, "red1")[0]["Id"]
    assert inspect(nets, full[:6])[0]["Id"] == full
    net_id = network_inspect(nets, "red")["Id"]
    assert network_inspect(nets, net_id[:6])["Name"] == "red"
