"""Issue 12: IPv6 names -- AAAA and ip6.arpa PTR from the embedded DNS server, forwarding
to IPv6 upstreams, /etc/hosts with Docker's IPv6 lines, ``--add-host NAME:v6`` and
``host-gateway`` for both families (``cnmd --host-gateway-ip`` given twice).

One test host for the module: cnmd's "host" resolv.conf (bind-mounted over
/etc/resolv.conf inside the test host only) names one IPv6 resolver, a stand-in on [::1]
in the host namespace, which cnmd asks from its own namespace.  A second stand-in answers
at the world's IPv6 address, for ``--dns`` servers asked from the container.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_util import inspect, run_sleeper
from harness import TestHost

UPSTREAM = Path(__file__).with_name("dns_upstream.py")
WORLD6 = "2001:db8:203::1"  # the world namespace's IPv6 address (tests/hostinit.py)
GATEWAY4, GATEWAY6 = "192.0.2.1", "2001:db8:ffff::1"  # cnmd --host-gateway-ip, twice


def start_upstream(host: TestHost, address: str, world: bool) -> subprocess.Popen:
    argv = [sys.executable, str(UPSTREAM), address]
    if world:
        argv = ["ip", "netns", "exec", "world", *argv]
    proc = host.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
    return proc


@pytest.fixture(scope="module")
def v6host(busybox_tar: Path) -> Iterator[TestHost]:
    host = TestHost()
    host.start()
    try:
        resolv = host.tmp / "host-resolv.conf"
        resolv.write_text("nameserver ::1\noptions edns0\n")
        host.run(["mount", "--bind", str(resolv), "/etc/resolv.conf"])
        start_upstream(host, "::1", world=False)
        host.start_daemon("--host-gateway-ip", GATEWAY4, "--host-gateway-ip", GATEWAY6)
        host.import_image(busybox_tar, "busybox")
        host.cnm("network", "create", "--ipv6", "--subnet", "2001:db8:1::/64", "front6")
        host.cnm("network", "create", "plain")
        run_sleeper(
            host,
            "web6",
            "--network",
            "front6",
            "--network-alias",
            "svc6",
            "--add-host",
            "v6host:[2001:db8:9::9]",
            "--add-host",
            "gw:host-gateway",
        )
        run_sleeper(host, "api6", "--network", "front6")
        run_sleeper(host, "plain1", "--network", "plain", "--add-host", "gw:host-gateway")
        yield host
    finally:
        host.close()


def nslookup(host: TestHost, name: str, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    return host.cnm("exec", name, "nslookup", *args, check=check, timeout=30)


def answers(out: str) -> set[str]:
    """The answer addresses busybox nslookup printed (not the server's)."""
    lines = out.split("Non-authoritative answer:", 1)[-1].splitlines() if "answer" in out else []
    return {ln.split()[-1] for ln in lines if ln.startswith("Address")}


def addresses_on(host: TestHost, name: str, network: str) -> tuple[str, str]:
    settings = inspect(host, name)[0]["NetworkSettings"]["Networks"][network]
    return settings["IPAddress"], settings["GlobalIPv6Address"]


def test_aaaa_answers_names_and_aliases_on_a_v6_network(v6host: TestHost) -> None:
    web4, web6 = addresses_on(v6host, "web6", "front6")
    assert web6, "web6 has an IPv6 address on front6"
    for query in ("web6", "svc6", "web6.front6"):
        r = nslookup(v6host, "api6", "-type=AAAA", query, check=True)
        assert answers(r.stdout) == {web6}, (query, r.stdout)
        r = nslookup(v6host, "api6", "-type=A", query, check=True)
        assert answers(r.stdout) == {web4}, (query, r.stdout)


def test_ip6_arpa_ptr_answers_name_dot_network(v6host: TestHost) -> None:
    _, web6 = addresses_on(v6host, "web6", "front6")
    r = nslookup(v6host, "api6", web6, check=True)
    assert "ip6.arpa" in r.stdout and "web6.front6" in r.stdout, r.stdout


def test_a_name_without_ipv6_has_an_empty_aaaa_not_nxdomain(v6host: TestHost) -> None:
    r = nslookup(v6host, "plain1", "-type=AAAA", "plain1", check=True)  # NOERROR, no record
    assert "NXDOMAIN" not in r.stdout and answers(r.stdout) == set(), r.stdout
    r = nslookup(v6host, "plain1", "-type=A", "plain1", check=True)
    assert answers(r.stdout) == {addresses_on(v6host, "plain1", "plain")[0]}


def test_hosts_of_a_dual_stack_container(v6host: TestHost) -> None:
    web4, web6 = addresses_on(v6host, "web6", "front6")
    hosts = v6host.cnm("exec", "web6", "cat", "/etc/hosts").stdout
    short = inspect(v6host, "web6")[0]["Id"][:12]
    assert hosts.startswith("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    for line in (
        "fe00::\tip6-localnet",
        "ff00::\tip6-mcastprefix",
        "ff02::1\tip6-allnodes",
        "ff02::2\tip6-allrouters",
    ):
        assert line + "\n" in hosts
    assert "2001:db8:9::9\tv6host\n" in hosts
    assert f"{GATEWAY4}\tgw\n{GATEWAY6}\tgw\n" in hosts  # host-gateway: both --host-gateway-ip
    assert hosts.endswith(f"{web4}\t{short}\n{web6}\t{short}\n"), hosts


def test_hosts_of_a_v4_only_container_match_its_loopback(v6host: TestHost) -> None:
    """As Docker 26+: the loopback keeps ::1 on IPv4-only networks, and /etc/hosts keeps
    the IPv6 defaults that go with it; the container's own line is IPv4 only."""
    lo = v6host.cnm("exec", "plain1", "ip", "-6", "addr", "show", "lo").stdout
    assert "::1/128" in lo
    eth0 = v6host.cnm("exec", "plain1", "ip", "-6", "addr", "show", "eth0").stdout
    assert "inet6" not in eth0, "IPv6 stays off on an IPv4-only network's interface"
    hosts = v6host.cnm("exec", "plain1", "cat", "/etc/hosts").stdout
    plain4, plain6 = addresses_on(v6host, "plain1", "plain")
    assert not plain6
    assert "::1\tlocalhost ip6-localhost ip6-loopback\n" in hosts
    assert hosts.endswith(f"{plain4}\t{inspect(v6host, 'plain1')[0]['Id'][:12]}\n")


def test_a_v6_host_resolver_is_asked_from_cnmd_namespace(v6host: TestHost) -> None:
    r = nslookup(v6host, "api6", "-type=AAAA", "who.example", check=True)
    assert answers(r.stdout) == {"::1"}, "the answer came from the [::1] stand-in"
    r = nslookup(v6host, "plain1", "-type=AAAA", "ext6.example", check=True)
    assert answers(r.stdout) == {"2001:db8:7::7"}
    resolv = v6host.cnm("exec", "api6", "cat", "/etc/resolv.conf").stdout
    assert "nameserver 127.0.0.11" in resolv and resolv.count("nameserver") == 1


def test_a_v6_dns_server_is_asked_from_the_container(v6host: TestHost) -> None:
    world = start_upstream(v6host, WORLD6, world=True)
    run_sleeper(v6host, "dns6", "--network", "front6", "--dns", WORLD6)
    try:
        r = nslookup(v6host, "dns6", "-type=AAAA", "who.example", check=True)
        assert answers(r.stdout) == {WORLD6}, r.stdout
    finally:
        v6host.cnm("rm", "-f", "dns6")
        world.kill()
        world.wait()
