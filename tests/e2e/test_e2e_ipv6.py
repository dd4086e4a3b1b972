"""IPv6 end to end (issue 12), over both firewall backends: dual-stack networks (a given v6
subnet and one from the default unique-local pool), addresses and routes inside, ping6
between containers and to the gateway, egress to the world's 2001:db8:203::1 masqueraded to
the host's 2001:db8:203::2 (and not, with ``gateway_mode_ipv6=routed``), isolation between
networks, ``--internal``, icc=false, a published port reached over IPv6 from the world and
at [::1] on the host, a v4-only network without IPv6 inside, the forwarding sysctl turned on
only by the first v6 network, the anti-spoofing guard for IPv6, AAAA/PTR names, /etc/hosts,
and the inspect fields.

One throwaway host per backend; every test reads it, none changes what another test reads
(each has its own containers, ports or world routes).
"""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from e2e_util import cexec, inspect, network_inspect, run_sleeper, sandbox_key, world_server
from etcd_cluster import EtcdCluster
from harness import HOST_ADDR, HOST_ADDR6, ROOT_SKIP_REASON, WORLD_ADDR6, TestHost, dump_host, is_root

HERE = Path(__file__).resolve().parent
RAW = HERE / "rawframes.py"

GIVEN = "v6given"  # --subnet 10.70.0.0/24 --subnet 2001:db8:70::/64
GIVEN6 = ipaddress.IPv6Network("2001:db8:70::/64")
FIXED6 = "2001:db8:70::99"  # g2's --ip6
ULA = "v6ula"  # --ipv6 alone: both subnets from the default pools
OTHER = "v6other"
INTERNAL = "v6int"
NOICC = "v6noicc"
ROUTED = "v6routed"
ROUTED6 = "2001:db8:75::/64"
V4ONLY = "v4only"
GATEWAY_MODE6 = "com.docker.network.bridge.gateway_mode_ipv6"

NETWORKS: dict[str, list[str]] = {
    GIVEN: ["--ipv6", "--subnet", "10.70.0.0/24", "--subnet", str(GIVEN6)],
    ULA: ["--ipv6"],
    OTHER: ["--ipv6", "--subnet", "10.72.0.0/24", "--subnet", "2001:db8:72::/64"],
    INTERNAL: ["--ipv6", "--internal", "--subnet", "10.73.0.0/24", "--subnet", "2001:db8:73::/64"],
    NOICC: [
        "--ipv6",
        "-o",
        "com.docker.network.bridge.enable_icc=false",
        "--subnet",
        "10.74.0.0/24",
        "--subnet",
        "2001:db8:74::/64",
    ],
    ROUTED: ["--ipv6", "-o", f"{GATEWAY_MODE6}=routed", "--subnet", "10.75.0.0/24", "--subnet", ROUTED6],
}
SLEEPERS: dict[str, list[str]] = {
    "g1": ["--network", GIVEN],
    "g2": ["--network", GIVEN, "--ip6", FIXED6],
    "u1": ["--network", ULA],
    "o1": ["--network", OTHER],
    "i1": ["--network", INTERNAL],
    "i2": ["--network", INTERNAL],
    "n1": ["--network", NOICC],
    "n2": ["--network", NOICC],
    "r1": ["--network", ROUTED],
}
HTTPD = "mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p 80 -h /www"
BACKENDS = ["nftables", "iptables"]
SYSCTLS = {
    "forwarding": "/proc/sys/net/ipv6/conf/all/forwarding",
    "wan0 accept_ra": "/proc/sys/net/ipv6/conf/wan0/accept_ra",
}


@dataclass
class Site:
    """The host of one backend and what the fixture saw on the way to building it."""

    host: TestHost
    backend: str
    sysctls: dict[str, dict[str, str]] = field(default_factory=dict)  # stage -> name -> value


def read_sysctls(host: TestHost) -> dict[str, str]:
    return {name: host.run(["cat", path]).stdout.strip() for name, path in SYSCTLS.items()}


@pytest.fixture(scope="module", params=BACKENDS)
def site(request: pytest.FixtureRequest, busybox_tar: Path) -> Iterator[Site]:
    backend = request.param
    with TestHost() as host:
        try:
            here = build_site(host, backend, busybox_tar)
        except BaseException:
            dump_host(host)
            raise
        failed_before = request.session.testsfailed
        yield here
        if request.session.testsfailed != failed_before:
            dump_host(host)


def build_site(host: TestHost, backend: str, busybox_tar: Path) -> Site:
    """cnmd with ``backend``; a v4-only network first (the sysctls read before and after it),
    then the v6 networks and every container the tests read."""
    host.start_daemon("--firewall-backend", backend)
    host.import_image(busybox_tar, "busybox")
    here = Site(host, backend)
    here.sysctls["started"] = read_sysctls(host)
    host.cnm("network", "create", "--subnet", "10.76.0.0/24", V4ONLY)
    run_sleeper(host, "p1", "--network", V4ONLY)
    web4 = ("sh", "-c", HTTPD.format(text="web4"))
    run_sleeper(host, "web4", "--network", V4ONLY, "-p", "8081:80", cmd=web4)
    here.sysctls["v4 network"] = read_sysctls(host)
    for name, opts in NETWORKS.items():
        host.cnm("network", "create", *opts, name)
        if name == GIVEN:
            here.sysctls["v6 network"] = read_sysctls(host)
    for name, opts in SLEEPERS.items():
        run_sleeper(host, name, *opts)
    run_sleeper(host, "web", "--network", GIVEN, "-p", "8080:80", cmd=("sh", "-c", HTTPD.format(text="web6")))
    return here


# -- helpers ------------------------------------------------------------------------------------


def settings(host: TestHost, name: str, network: str) -> dict[str, Any]:
    """``NetworkSettings.Networks[network]`` of container ``name``."""
    return inspect(host, name)[0]["NetworkSettings"]["Networks"][network]


def addr6(host: TestHost, name: str, network: str) -> str:
    address = settings(host, name, network)["GlobalIPv6Address"]
    assert address, f"{name} has no IPv6 address on {network}"
    return address


def pings6(host: TestHost, name: str, address: str) -> bool:
    """Does ``ping6`` from inside container ``name`` get an answer from ``address``?"""
    r = cexec(host, name, "ping6", "-c", "1", "-W", "2", address, check=False, timeout=30)
    return r.returncode == 0


def tcp6_probe(host: TestHost, name: str, port: int) -> None:
    cexec(host, name, "sh", "-c", f"echo hello | nc -w 3 {WORLD_ADDR6} {port}", check=False, timeout=30)


def fetch(host: TestHost, url: str, world: bool = False) -> str | None:
    """``wget -qO- URL`` from the host (or the world); None when nothing answered."""
    # never busybox wget's own -T: Debian 12's static busybox 1.35 segfaults with it
    argv = ["busybox", "timeout", "3", "busybox", "wget", "-qO-", url]
    r = host.world(argv, check=False, timeout=20) if world else host.run(argv, check=False, timeout=20)
    return r.stdout.strip() if r.returncode == 0 else None


def link_local(mac: str) -> str:
    """fe80::/64 with the modified EUI-64 of ``mac`` (what the kernel derives, as Docker)."""
    b = bytes(int(x, 16) for x in mac.split(":"))
    eui = bytes([b[0] ^ 0x02]) + b[1:3] + b"\xff\xfe" + b[3:]
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + eui))


def v6_addrs(host: TestHost, key: str, dev: str = "eth0") -> list[dict[str, Any]]:
    """``ip -6 addr show dev DEV`` inside the namespace at ``key``, as JSON address entries."""
    return [
        a for link in host.ip_json("-6", "addr", "show", "dev", dev, netns=key) for a in link["addr_info"]
    ]


class Sniffer:
    """``rawframes.py sniff`` on ``eth0`` of the namespace at ``key``."""

    def __init__(self, host: TestHost, key: str, markers: list[str], seconds: float = 3.0) -> None:
        argv = [sys.executable, str(RAW), "sniff", "--iface", "eth0", "--seconds", str(seconds)]
        argv += [a for m in markers for a in ("--marker", m)]
        self.proc = host.spawn(
            ["nsenter", f"--net={key}", "--", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline().strip()
        assert ready == "ready", self.proc.stderr.read() if self.proc.stderr else ready

    def counts(self) -> dict[str, int]:
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        counts: dict[str, int] = json.loads(out.strip().splitlines()[-1])
        return counts


# -- networks and addresses ---------------------------------------------------------------------


def test_given_subnet_network_inspect(site: Site) -> None:
    net = network_inspect(site.host, GIVEN)
    assert net["EnableIPv6"] is True
    assert [c["Subnet"] for c in net["IPAM"]["Config"]] == ["10.70.0.0/24", str(GIVEN6)]
    g1 = settings(site.host, "g1", GIVEN)
    entry = next(c for c in net["Containers"].values() if c["Name"] == "g1")
    assert entry["IPv6Address"] == f"{g1['GlobalIPv6Address']}/64"
    assert entry["IPv4Address"] == f"{g1['IPAddress']}/24"


def test_default_v6_subnet_is_a_unique_local_64(site: Site) -> None:
    net = network_inspect(site.host, ULA)
    assert net["EnableIPv6"] is True
    subnets = [ipaddress.ip_network(c["Subnet"]) for c in net["IPAM"]["Config"]]
    assert [s.version for s in subnets] == [4, 6], subnets
    v6 = subnets[1]
    assert v6.prefixlen == 64 and v6.subnet_of(ipaddress.IPv6Network("fd00::/8")), v6
    u1 = settings(site.host, "u1", ULA)
    assert ipaddress.IPv6Address(u1["GlobalIPv6Address"]) in v6
    assert u1["IPv6Gateway"] == str(v6[1])


def test_container_inspect_fields(site: Site) -> None:
    g1 = settings(site.host, "g1", GIVEN)
    assert ipaddress.IPv6Address(g1["GlobalIPv6Address"]) in GIVEN6
    assert g1["GlobalIPv6PrefixLen"] == 64
    assert g1["IPv6Gateway"] == "2001:db8:70::1"
    g2 = settings(site.host, "g2", GIVEN)
    assert g2["GlobalIPv6Address"] == FIXED6
    assert (g2["IPAMConfig"] or {}).get("IPv6Address") == FIXED6
    assert g1["GlobalIPv6Address"] != FIXED6


def test_container_has_its_v6_address_link_local_and_default_route(site: Site) -> None:
    host = site.host
    g1 = settings(host, "g1", GIVEN)
    key = sandbox_key(host, "g1")
    found = {(a["local"], a["prefixlen"]) for a in v6_addrs(host, key)}
    assert (g1["GlobalIPv6Address"], 64) in found
    assert (link_local(g1["MacAddress"]), 64) in found
    defaults = [r for r in host.ip_json("-6", "route", "show", "default", netns=key)]
    assert [r.get("gateway") for r in defaults] == ["2001:db8:70::1"], defaults


def test_containers_ping6_each_other_and_the_gateway(site: Site) -> None:
    assert pings6(site.host, "g1", FIXED6)
    assert pings6(site.host, "g2", addr6(site.host, "g1", GIVEN))
    assert pings6(site.host, "g1", "2001:db8:70::1")


def test_v4_only_network_has_no_ipv6_inside(site: Site) -> None:
    host = site.host
    for name in ("p1", "web4"):
        s = settings(host, name, V4ONLY)
        assert (s["GlobalIPv6Address"], s["IPv6Gateway"], s["GlobalIPv6PrefixLen"]) == ("", "", 0)
        key = sandbox_key(host, name)
        assert v6_addrs(host, key) == []
        off = host.netns_exec(key, ["cat", "/proc/sys/net/ipv6/conf/eth0/disable_ipv6"]).stdout.strip()
        assert off == "1"
    assert network_inspect(host, V4ONLY)["EnableIPv6"] is False


# -- the host's sysctls ----------------------------------------------------------------------------


def test_forwarding_turns_on_only_with_the_first_v6_network(site: Site) -> None:
    assert site.sysctls["started"] == {"forwarding": "0", "wan0 accept_ra": "1"}
    assert site.sysctls["v4 network"] == {"forwarding": "0", "wan0 accept_ra": "1"}
    # forwarding on; the uplink keeps taking router advertisements (accept_ra=2)
    assert site.sysctls["v6 network"] == {"forwarding": "1", "wan0 accept_ra": "2"}


def test_no_global_forward_policy_changed(site: Site) -> None:
    """cnm never sets a DROP policy on a forward hook (Docker's FORWARD DROP)."""
    chains = [item["chain"] for item in site.host.nft_json() if "chain" in item]
    dropping = [c for c in chains if c.get("hook") == "forward" and c.get("policy") == "drop"]
    assert dropping == []
    if site.backend == "iptables":
        policy = site.host.run(["ip6tables", "-S", "FORWARD"]).stdout.splitlines()[0]
        assert policy == "-P FORWARD ACCEPT"


# -- egress -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,port", [("g1", 9001), ("u1", 9002)])
def test_egress_is_masqueraded_to_the_host_v6_address(site: Site, name: str, port: int) -> None:
    server = world_server(site.host, "tcp", port, address=WORLD_ADDR6)
    tcp6_probe(site.host, name, port)
    assert server.peer() == HOST_ADDR6


def test_container_pings_the_world_over_v6(site: Site) -> None:
    assert pings6(site.host, "u1", WORLD_ADDR6)


def test_routed_gateway_mode_shows_the_container_address(site: Site) -> None:
    host = site.host
    # routed: the world needs a route to the subnet, as a real upstream router would
    host.world(["ip", "-6", "route", "replace", ROUTED6, "via", HOST_ADDR6])
    r1 = addr6(host, "r1", ROUTED)
    server = world_server(host, "tcp", 9003, address=WORLD_ADDR6)
    tcp6_probe(host, "r1", 9003)
    assert server.peer() == r1
    # and routed mode accepts ICMP to the containers from outside, as Docker's
    assert host.world(["busybox", "ping6", "-c", "1", "-W", "2", r1], check=False).returncode == 0


def test_routed_is_per_family(site: Site) -> None:
    """gateway_mode_ipv6=routed leaves IPv4 masqueraded."""
    server = world_server(site.host, "tcp", 9004)
    cexec(site.host, "r1", "sh", "-c", "echo hi | nc -w 3 203.0.113.1 9004", check=False, timeout=30)
    assert server.peer() == HOST_ADDR


# -- isolation ------------------------------------------------------------------------------------


def test_v6_networks_are_isolated_from_each_other(site: Site) -> None:
    host = site.host
    assert not pings6(host, "g1", addr6(host, "o1", OTHER))
    assert not pings6(host, "o1", addr6(host, "g1", GIVEN))
    assert pings6(host, "o1", WORLD_ADDR6)  # the way out is still open


def test_internal_v6_network_has_no_way_out(site: Site) -> None:
    host = site.host
    assert pings6(host, "i1", addr6(host, "i2", INTERNAL))
    server = world_server(host, "tcp", 9005, timeout=6, address=WORLD_ADDR6)
    tcp6_probe(host, "i1", 9005)
    assert server.peer() is None
    assert not pings6(host, "i1", WORLD_ADDR6)
    assert host.ip_json("-6", "route", "show", "default", netns=sandbox_key(host, "i1")) == []


def test_icc_false_blocks_v6_between_containers(site: Site) -> None:
    host = site.host
    assert not pings6(host, "n1", addr6(host, "n2", NOICC))
    assert not pings6(host, "n2", addr6(host, "n1", NOICC))
    assert pings6(host, "n1", WORLD_ADDR6)


# -- published ports --------------------------------------------------------------------------------


def test_published_port_answers_from_the_world_over_v6(site: Site) -> None:
    assert fetch(site.host, f"http://[{HOST_ADDR6}]:8080/", world=True) == "web6"
    assert fetch(site.host, f"http://{HOST_ADDR}:8080/", world=True) == "web6"


def test_published_port_answers_at_v6_loopback(site: Site) -> None:
    assert fetch(site.host, "http://[::1]:8080/") == "web6"


def test_cnm_port_prints_both_families(site: Site) -> None:
    lines = site.host.cnm("port", "web").stdout.split("\n")
    assert [ln for ln in lines if ln] == ["80/tcp -> 0.0.0.0:8080", "80/tcp -> [::]:8080"]


def test_v4_only_container_is_reached_over_v6_through_the_proxy(site: Site) -> None:
    assert fetch(site.host, f"http://[{HOST_ADDR6}]:8081/", world=True) == "web4"
    assert fetch(site.host, "http://[::1]:8081/") == "web4"


# -- anti-spoofing ----------------------------------------------------------------------------------


def test_forged_v6_traffic_is_dropped(site: Site) -> None:
    """g2 (NET_RAW, as runc's default) sends to g1: from its own address (arrives), from a
    forged one (dropped), a router advertisement (dropped), a neighbour advertisement for
    g1's address (dropped) and one for its own (arrives)."""
    host = site.host
    g1, g2 = settings(host, "g1", GIVEN), settings(host, "g2", GIVEN)
    ip1, ip2 = g1["GlobalIPv6Address"], g2["GlobalIPv6Address"]
    mac1, mac2 = g1["MacAddress"], g2["MacAddress"]

    def udp(src_ip: str, marker: str) -> dict[str, Any]:
        return {
            "kind": "udp6",
            "src": mac2,
            "dst": mac1,
            "src_ip": src_ip,
            "dst_ip": ip1,
            "dport": 9999,
            "data": marker,
            "repeat": 3,
        }

    def na(target: str, marker: str) -> dict[str, Any]:
        body = "20000000" + ipaddress.IPv6Address(target).packed.hex()  # override flag, target
        return {
            "kind": "icmp6",
            "src": mac2,
            "dst": mac1,
            "src_ip": ip2,
            "dst_ip": ip1,
            "type": 136,
            "body": body,
            "data": marker,
            "repeat": 3,
        }

    router_advert = {
        "kind": "icmp6",
        "src": mac2,
        "dst": "33:33:00:00:00:01",
        "src_ip": link_local(mac2),
        "dst_ip": "ff02::1",
        "type": 134,
        "body": "40000708" + "00" * 8,  # hop limit 64, router lifetime 1800 s
        "data": "RAFORGED",
        "repeat": 3,
    }
    frames = [
        udp(ip2, "OWNSRC6"),
        udp("2001:db8:70::66", "FORGEDSRC6"),
        router_advert,
        na(ip1, "NAFOREIGN"),
        na(ip2, "NAOWN"),
    ]
    sniffer = Sniffer(
        host, sandbox_key(host, "g1"), ["OWNSRC6", "FORGEDSRC6", "RAFORGED", "NAFOREIGN", "NAOWN"]
    )
    host.netns_exec(
        sandbox_key(host, "g2"),
        [sys.executable, str(RAW), "send", "--iface", "eth0", "--frames", json.dumps(frames)],
    )
    counts = sniffer.counts()
    assert counts["OWNSRC6"] > 0 and counts["NAOWN"] > 0, counts  # the test can tell
    assert (counts["FORGEDSRC6"], counts["RAFORGED"], counts["NAFOREIGN"]) == (0, 0, 0), counts


# -- names ------------------------------------------------------------------------------------------


def test_embedded_dns_answers_aaaa_and_ptr(site: Site) -> None:
    host = site.host
    out = cexec(host, "g1", "nslookup", "-type=AAAA", "g2", timeout=30).stdout
    assert FIXED6 in out, out
    ptr = cexec(host, "g1", "nslookup", FIXED6, timeout=30).stdout
    names = [ln.split("name =", 1)[1].strip().rstrip(".") for ln in ptr.splitlines() if "name =" in ln]
    assert names and names[0].split(".")[0] == "g2", ptr


def hosts_lines(host: TestHost, name: str) -> list[list[str]]:
    return [ln.split() for ln in cexec(host, name, "cat", "/etc/hosts").stdout.splitlines() if ln.strip()]


def test_etc_hosts_has_the_v6_lines(site: Site) -> None:
    host = site.host
    lines = hosts_lines(host, "g1")
    assert ["::1", "localhost", "ip6-localhost", "ip6-loopback"] in lines
    hostname = inspect(host, "g1")[0]["Config"]["Hostname"]
    own = [ln for ln in lines if ln[0] == addr6(host, "g1", GIVEN)]
    assert own and hostname in own[0][1:], lines


def test_etc_hosts_of_a_v4_only_container_has_no_v6_address(site: Site) -> None:
    """IPv6 stays on the container's loopback (Docker 26+), so Docker's five IPv6 default
    lines may be there; no line names a v6 address of the container: it has none."""
    lines = hosts_lines(site.host, "p1")
    defaults = {ipaddress.IPv6Address(a) for a in ("::1", "fe00::", "ff00::", "ff02::1", "ff02::2")}
    v6 = [ln for ln in lines if ":" in ln[0]]
    assert [ln for ln in v6 if ipaddress.IPv6Address(ln[0]) not in defaults] == [], lines


# -- restart ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_ipv6_survives_a_daemon_restart(backend: str, busybox_tar: Path) -> None:
    """cnmd stops and starts again (live-restore): the containers keep their v6 addresses,
    and v6 between them, v6 egress and the v6 published port work as before."""
    if not is_root():
        pytest.skip(ROOT_SKIP_REASON)
    with TestHost() as host:
        try:
            host.start_daemon("--firewall-backend", backend)
            host.import_image(busybox_tar, "busybox")
            host.cnm("network", "create", *NETWORKS[GIVEN], GIVEN)
            run_sleeper(host, "g1", "--network", GIVEN)
            run_sleeper(host, "g2", "--network", GIVEN, "--ip6", FIXED6)
            web = ("sh", "-c", HTTPD.format(text="web6"))
            run_sleeper(host, "web", "--network", GIVEN, "-p", "8080:80", cmd=web)
            before = {n: settings(host, n, GIVEN)["GlobalIPv6Address"] for n in ("g1", "g2", "web")}
            assert host.kill_daemon(signal.SIGTERM) == 0
            host.start_daemon("--firewall-backend", backend)
            after = {n: settings(host, n, GIVEN)["GlobalIPv6Address"] for n in ("g1", "g2", "web")}
            assert after == before
            assert pings6(host, "g1", FIXED6)
            server = world_server(host, "tcp", 9006, address=WORLD_ADDR6)
            tcp6_probe(host, "g1", 9006)
            assert server.peer() == HOST_ADDR6
            assert fetch(host, f"http://[{HOST_ADDR6}]:8080/", world=True) == "web6"
            assert fetch(host, "http://[::1]:8080/") == "web6"
        except BaseException:
            dump_host(host)
            raise


# -- overlay ------------------------------------------------------------------------------------


def test_overlay_with_ipv6_is_a_clear_400_that_changes_nothing() -> None:
    """Overlay networks stay IPv4: ``-d overlay --ipv6`` is refused, through the API and the
    CLI, naming why, and no network is left (a cluster store is needed to get that far)."""
    if not is_root():
        pytest.skip(ROOT_SKIP_REASON)
    with TestHost() as host:
        cluster = EtcdCluster(1, inside=host.inside, root=host.tmp / "etcd")
        try:
            cluster.start()
            host.start_daemon("--cluster-store", cluster.url)
            r = host.api("POST", "/networks/create", {"Name": "ov6", "Driver": "overlay", "EnableIPv6": True})
            assert (r.status, "IPv4-only" in r.message) == (400, True), r.message
            cli = host.cnm("network", "create", "-d", "overlay", "--ipv6", "ov6", check=False)
            assert cli.returncode != 0 and "IPv4-only" in cli.stderr, cli.stderr
            assert "ov6" not in host.cnm("network", "ls", "--format", "{{.Name}}").stdout.split()
            host.cnm("network", "create", "-d", "overlay", "ov6")  # the name was never taken
        finally:
            if host.daemon_running():
                host.kill_daemon(signal.SIGTERM)
            cluster.close()
