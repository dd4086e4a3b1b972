"""Issue 4: /etc/hosts, resolv.conf, --add-host/--dns/--link, and the embedded DNS server.

One test host for the module: cnmd's "host" resolv.conf (bind-mounted over /etc/resolv.conf
inside the test host only) points at a stand-in resolver on 127.0.0.53 in the host
namespace; a second stand-in answers at 203.0.113.1 in the world namespace.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_util import inspect, ip_on, run_sleeper
from harness import TestHost

UPSTREAM = Path(__file__).with_name("dns_upstream.py")


def start_upstream(host: TestHost, address: str, world: bool) -> subprocess.Popen:
    argv = [sys.executable, str(UPSTREAM), address]
    if world:
        argv = ["ip", "netns", "exec", "world", *argv]
    proc = host.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
    return proc


@pytest.fixture(scope="module")
def dnshost(busybox_tar: Path) -> Iterator[TestHost]:
    host = TestHost()
    host.start()
    try:
        resolv = host.tmp / "host-resolv.conf"
        # No search domain: busybox nslookup tries only NAME.DOMAIN for a dot-less NAME when
        # there is one (with Docker as with cnm), which would hide what is tested here.
        resolv.write_text("nameserver 127.0.0.53\noptions edns0\n")
        host.run(["mount", "--bind", str(resolv), "/etc/resolv.conf"])
        start_upstream(host, "127.0.0.53", world=False)
        start_upstream(host, "203.0.113.1", world=True)
        host.start_daemon()
        host.import_image(busybox_tar, "busybox")
        host.cnm("network", "create", "front")
        host.cnm("network", "create", "back")
        host.cnm("network", "create", "--internal", "inside")
        run_sleeper(host, "web", "--network", "front", "--network-alias", "svc", "-h", "web.host")
        run_sleeper(host, "web2", "--network", "front", "--network-alias", "svc")
        run_sleeper(host, "api", "--network", "front")
        run_sleeper(host, "db", "--network", "back")
        yield host
    finally:
        host.close()


def lookup(host: TestHost, name: str, query: str, check: bool = False) -> subprocess.CompletedProcess:
    return host.cnm("exec", name, "nslookup", query, check=check, timeout=30)


def addresses(out: str) -> set[str]:
    """The answer addresses busybox nslookup printed (not the server's)."""
    lines = out.split("Non-authoritative answer:", 1)[-1].splitlines() if "answer" in out else []
    return {ln.split()[-1] for ln in lines if ln.startswith("Address")}


def test_names_resolve_within_a_network_only(dnshost: TestHost) -> None:
    web = ip_on(dnshost, "web", "front")
    for query in ("web", "WEB", "web.front", inspect(dnshost, "web")[0]["Id"][:12], "web.host"):
        r = lookup(dnshost, "api", query)
        assert r.returncode == 0 and web in addresses(r.stdout), (query, r.stdout)
    r = lookup(dnshost, "db", "web")
    assert r.returncode != 0 and web not in r.stdout


def test_alias_answers_every_member(dnshost: TestHost) -> None:
    members = {ip_on(dnshost, "web", "front"), ip_on(dnshost, "web2", "front")}
    seen_first = set()
    for _ in range(8):
        r = lookup(dnshost, "api", "svc", check=True)
        got = [
            ln.split()[-1] for ln in r.stdout.split("answer:", 1)[1].splitlines() if ln.startswith("Address")
        ]
        assert set(got) == members
        seen_first.add(got[0])
    assert len(seen_first) == 2, "several answers are rotated"


def test_reverse_lookup(dnshost: TestHost) -> None:
    web = ip_on(dnshost, "web", "front")
    r = lookup(dnshost, "api", web, check=True)
    assert "web.front" in r.stdout


def test_other_names_are_forwarded_to_the_hosts_resolver(dnshost: TestHost) -> None:
    r = lookup(dnshost, "api", "ext.example", check=True)
    assert "198.51.100.7" in addresses(r.stdout)
    r = lookup(dnshost, "api", "who.example", check=True)
    assert "127.0.0.53" in addresses(r.stdout), "host upstreams are asked from the host's namespace"
    r = lookup(dnshost, "api", "missing.example")
    assert r.returncode != 0 and "NXDOMAIN" in r.stdout
    resolv = dnshost.cnm("exec", "api", "cat", "/etc/resolv.conf").stdout
    assert "nameserver 127.0.0.11" in resolv
    assert "options edns0 ndots:0" in resolv and resolv.count("nameserver") == 1


def test_dns_servers_are_asked_from_the_container_and_a_dead_one_is_skipped(dnshost: TestHost) -> None:
    run_sleeper(dnshost, "dnsuser", "--network", "front", "--dns", "203.0.113.99", "--dns", "203.0.113.1")
    try:
        r = lookup(dnshost, "dnsuser", "who.example", check=True)
        assert "203.0.113.1" in addresses(r.stdout)
    finally:
        dnshost.cnm("rm", "-f", "dnsuser")


def test_tcp_queries_and_truncation(dnshost: TestHost) -> None:
    key = inspect(dnshost, "api")[0]["NetworkSettings"]["SandboxKey"]
    probe = (
        "import dns.message, dns.query;"
        "q=dns.message.make_query('{name}','A');"
        "r=dns.query.{how}(q,'127.0.0.11',timeout=5);"
        "print(len(r.answer[0]) if r.answer else 0, r.flags & 0x200)"
    )
    tcp = dnshost.netns_exec(key, [sys.executable, "-c", probe.format(name="web", how="tcp")])
    assert tcp.stdout.split()[0] == "1"
    udp = dnshost.netns_exec(key, [sys.executable, "-c", probe.format(name="big.example", how="udp")])
    assert udp.stdout.split()[1] != "0", f"a 60-record answer is truncated over UDP: {udp.stdout}"
    tcp = dnshost.netns_exec(key, [sys.executable, "-c", probe.format(name="big.example", how="tcp")])
    assert tcp.stdout.split()[0] == "60"


def test_record_gone_when_disconnected_or_stopped(dnshost: TestHost) -> None:
    run_sleeper(dnshost, "temp", "--network", "front")
    assert lookup(dnshost, "api", "temp").returncode == 0
    dnshost.cnm("network", "connect", "back", "temp")
    assert lookup(dnshost, "db", "temp").returncode == 0
    dnshost.cnm("network", "disconnect", "back", "temp")
    assert lookup(dnshost, "db", "temp").returncode != 0
    dnshost.cnm("stop", "-t", "1", "temp")
    assert lookup(dnshost, "api", "temp").returncode != 0
    dnshost.cnm("rm", "temp")


def test_internal_network_does_not_forward(dnshost: TestHost) -> None:
    run_sleeper(dnshost, "sealed", "--network", "inside")
    try:
        assert lookup(dnshost, "sealed", "sealed").returncode == 0
        assert lookup(dnshost, "sealed", "ext.example").returncode != 0
    finally:
        dnshost.cnm("rm", "-f", "sealed")


def test_files_and_link_environment(dnshost: TestHost) -> None:
    run_sleeper(dnshost, "pg", "-e", "SECRET=x", "--expose", "5432")
    run_sleeper(
        dnshost,
        "client",
        "--link",
        "pg:database",
        "--add-host",
        "gw:host-gateway",
        "--add-host",
        "other:10.1.2.3",
        "-h",
        "client.local",
        "--dns",
        "192.0.2.53",
        "--dns-search",
        "example.org",
        "--dns-option",
        "timeout:1",
    )
    try:
        pg_ip = inspect(dnshost, "pg")[0]["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
        hosts = dnshost.cnm("exec", "client", "cat", "/etc/hosts").stdout
        assert "172.17.0.1\tgw" in hosts and "10.1.2.3\tother" in hosts
        assert f"{pg_ip}\tdatabase" in hosts and "\tclient.local client" in hosts
        resolv = dnshost.cnm("exec", "client", "cat", "/etc/resolv.conf").stdout
        assert "nameserver 192.0.2.53" in resolv and "search example.org" in resolv
        assert "options timeout:1" in resolv
        assert dnshost.cnm("exec", "client", "hostname").stdout.strip() == "client.local"
        env = dnshost.cnm("exec", "client", "env").stdout.split()
        assert f"DATABASE_PORT_5432_TCP=tcp://{pg_ip}:5432" in env
        assert "DATABASE_NAME=/client/database" in env and "DATABASE_ENV_SECRET=x" in env
        # the default bridge has no embedded DNS
        assert lookup(dnshost, "client", "pg").returncode != 0
    finally:
        dnshost.cnm("rm", "-f", "client", "pg")


@pytest.mark.parametrize(
    "flags",
    [("--add-host", "nocolon"), ("--add-host", "h:not-an-ip"), ("--dns", "8.8.8"), ("--link", "ghost:x")],
    ids=["add-host-form", "add-host-ip", "dns", "link-target"],
)
def test_malformed_name_options_are_refused(dnshost: TestHost, flags: tuple[str, str]) -> None:
    before = dnshost.cnm("ps", "-a", "-q").stdout
    r = dnshost.cnm("run", "-d", *flags, "busybox", "true", check=False)
    assert r.returncode != 0 and r.stderr.strip()
    assert dnshost.cnm("ps", "-a", "-q").stdout == before


def test_rename_changes_answers_at_once(dnshost: TestHost) -> None:
    run_sleeper(dnshost, "before", "--network", "front")
    try:
        assert lookup(dnshost, "api", "before").returncode == 0
        dnshost.cnm("rename", "before", "after")
        assert lookup(dnshost, "api", "after").returncode == 0
        assert lookup(dnshost, "api", "before").returncode != 0
        r = dnshost.cnm("rename", "after", "api", check=False)
        assert r.returncode != 0 and "already in use" in r.stderr
    finally:
        dnshost.cnm("rm", "-f", "after", check=False)


def test_link_on_a_user_network_is_a_private_alias(dnshost: TestHost) -> None:
    web = ip_on(dnshost, "web", "front")
    run_sleeper(dnshost, "linker", "--network", "front", "--link", "web:backend")
    try:
        r = lookup(dnshost, "linker", "backend")
        assert r.returncode == 0 and web in addresses(r.stdout)
        assert lookup(dnshost, "api", "backend").returncode != 0, "the alias is the linking container's only"
    finally:
        dnshost.cnm("rm", "-f", "linker")
