"""Issue 12: IPv6 published ports, end to end, in kernel and proxy mode.

As Docker 27+: ``-p 8080:80`` binds ``0.0.0.0`` and ``[::]`` with one host port, and with
the default settings (``--userland-proxy=false``) a published port answers at ``[::1]`` on
the host: the kernel cannot DNAT from ::1, so cnmd's proxy serves every IPv6 host binding
(to the container's IPv6 address, or to its IPv4 one when it has none).  The world reaches
the host at 2001:db8:203::2.
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_util import inspect
from harness import HOST_ADDR6, WORLD_ADDR6, TestHost, wait_for

HOST_IP = "203.0.113.2"
HOST_IP6 = HOST_ADDR6
WORLD_IP6 = WORLD_ADDR6

MODES = [
    pytest.param(("nftables", "false"), id="nftables-kernel"),
    pytest.param(("nftables", "true"), id="nftables-proxy"),
    pytest.param(("iptables", "false"), id="iptables-kernel"),
]


@pytest.fixture(scope="module", params=MODES)
def host6(request: pytest.FixtureRequest, busybox_tar: Path) -> Iterator[TestHost]:
    backend, proxy = request.param
    host = TestHost()
    try:
        host.start()
        host.start_daemon("--firewall-backend", backend, f"--userland-proxy={proxy}")
        host.import_image(busybox_tar, "busybox")
        host.mode = (backend, proxy)  # type: ignore[attr-defined]
        yield host
    finally:
        host.close()


def web(host: TestHost, name: str, *flags: str) -> str:
    script = f"mkdir -p /www && echo hello-{name} > /www/index.html && exec httpd -f -p 80 -h /www"
    cid = host.cnm("run", "-d", "--name", name, *flags, "busybox", "sh", "-c", script).stdout.strip()
    assert wait_for(
        lambda: (
            host.cnm(
                "exec", name, "timeout", "2", "wget", "-qO-", "http://127.0.0.1:80/", check=False
            ).returncode
            == 0
        ),
        timeout=10,
    )
    return cid


FETCH = (
    "import sys,urllib.request\n"
    "try: print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode().strip())\n"
    "except OSError: sys.exit(1)"
)


def fetch_host(host: TestHost, url: str) -> str | None:
    r = host.run(["python3", "-c", FETCH, url], check=False, timeout=20)
    return r.stdout.strip() if r.returncode == 0 else None


def fetch_world(host: TestHost, url: str) -> str | None:
    r = host.world(["python3", "-c", FETCH, url], check=False, timeout=20)
    return r.stdout.strip() if r.returncode == 0 else None


def can_bind6(host: TestHost, port: int, ip: str = "::") -> bool:
    probe = (
        "import socket,sys;s=socket.socket(socket.AF_INET6);s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,1)\n"
        "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
        f"try: s.bind(('{ip}',{port}))\nexcept OSError: sys.exit(1)"
    )
    return host.run(["python3", "-c", probe], check=False).returncode == 0


def can_bind4(host: TestHost, port: int) -> bool:
    probe = (
        "import socket,sys;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
        f"try: s.bind(('0.0.0.0',{port}))\nexcept OSError: sys.exit(1)"
    )
    return host.run(["python3", "-c", probe], check=False).returncode == 0


def test_a_v4_only_container_answers_on_both_families(host6: TestHost) -> None:
    """``-p 8180:80`` on the default bridge (no IPv6 inside): 0.0.0.0 and [::], one port;
    [::1] and the host's v6 address reach it through the proxy."""
    web(host6, "dual", "-p", "8180:80")
    try:
        assert fetch_host(host6, "http://[::1]:8180/") == "hello-dual"
        assert fetch_host(host6, "http://127.0.0.1:8180/") == "hello-dual"
        assert fetch_world(host6, f"http://[{HOST_IP6}]:8180/") == "hello-dual"
        assert fetch_world(host6, f"http://{HOST_IP}:8180/") == "hello-dual"
        assert host6.cnm("port", "dual").stdout == "80/tcp -> 0.0.0.0:8180\n80/tcp -> [::]:8180\n"
        assert host6.cnm("port", "dual", "80/tcp").stdout == "0.0.0.0:8180\n[::]:8180\n"
        ports = inspect(host6, "dual")[0]["NetworkSettings"]["Ports"]
        assert ports == {
            "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8180"}, {"HostIp": "::", "HostPort": "8180"}]
        }
        assert "0.0.0.0:8180->80/tcp, [::]:8180->80/tcp" in host6.cnm("ps", "--filter", "name=dual").stdout
        assert not can_bind6(host6, 8180), "[::]:8180 is held while the mapping exists"
    finally:
        host6.cnm("rm", "-f", "dual")
    assert wait_for(lambda: can_bind6(host6, 8180)), "and given back on rm"
    assert fetch_host(host6, "http://[::1]:8180/") is None


def test_a_v6_loopback_binding_answers_on_loopback_only(host6: TestHost) -> None:
    web(host6, "lo6", "-p", "[::1]:8181:80")
    try:
        assert fetch_host(host6, "http://[::1]:8181/") == "hello-lo6"
        assert fetch_host(host6, "http://127.0.0.1:8181/") is None, "IPv6 loopback only"
        assert fetch_host(host6, f"http://[{HOST_IP6}]:8181/") is None
        assert fetch_world(host6, f"http://[{HOST_IP6}]:8181/") is None
        assert host6.cnm("port", "lo6").stdout == "80/tcp -> [::1]:8181\n"
        assert not can_bind6(host6, 8181, "::1")
    finally:
        host6.cnm("rm", "-f", "lo6")


def test_a_binding_to_the_hosts_v6_address_answers_only_there(host6: TestHost) -> None:
    web(host6, "at6", "-p", f"[{HOST_IP6}]:8189:80")
    try:
        assert fetch_world(host6, f"http://[{HOST_IP6}]:8189/") == "hello-at6"
        assert fetch_host(host6, "http://[::1]:8189/") is None
        assert fetch_world(host6, f"http://{HOST_IP}:8189/") is None
        assert host6.cnm("port", "at6").stdout == f"80/tcp -> [{HOST_IP6}]:8189\n"
        # an address the host does not have is bad input, and nothing is kept
        r = host6.cnm(
            "run",
            "-d",
            "--name",
            "nowhere6",
            "-p",
            "[2001:db8:ffff::9]:8190:80",
            "busybox",
            "true",
            check=False,
        )
        assert r.returncode != 0 and "2001:db8:ffff::9 is not an address of this host" in r.stderr, r.stderr
    finally:
        host6.cnm("rm", "-f", "at6", "nowhere6", check=False)


def test_an_ephemeral_port_is_the_same_for_both_families(host6: TestHost) -> None:
    web(host6, "eph", "-P", "--expose", "80")
    try:
        lines = host6.cnm("port", "eph").stdout.splitlines()
        m = [re.fullmatch(r"80/tcp -> (0\.0\.0\.0|\[::\]):(\d+)", line) for line in lines]
        assert all(m) and len(m) == 2, lines
        v4, v6 = (x.group(2) for x in m if x)
        assert v4 == v6 and [x.group(1) for x in m if x] == ["0.0.0.0", "[::]"]
        assert fetch_host(host6, f"http://[::1]:{v6}/") == "hello-eph"
        assert fetch_host(host6, f"http://127.0.0.1:{v4}/") == "hello-eph"
    finally:
        host6.cnm("rm", "-f", "eph")


UDP_ECHO = (
    "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('0.0.0.0',53));"
    "print('up',flush=True)\nwhile True:\n d,a=s.recvfrom(512);s.sendto(b'echo-'+d,a)"
)
UDP_ASK6 = (
    "import socket;s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM);s.settimeout(3);"
    "s.sendto(b'ping',('{ip}',{port}));d,a=s.recvfrom(512);print(d.decode(),a[0])"
)


def test_udp_over_v6(host6: TestHost) -> None:
    host6.cnm("run", "-d", "--name", "udp6", "-p", "5301:53/udp", "busybox", "sleep", "1d")
    key = inspect(host6, "udp6")[0]["NetworkSettings"]["SandboxKey"]
    server = host6.spawn(
        ["nsenter", f"--net={key}", "python3", "-c", UDP_ECHO], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "up"
        r = host6.run(["python3", "-c", UDP_ASK6.format(ip="::1", port=5301)], check=False)
        assert r.stdout.strip() == "echo-ping ::1", r.stderr
        r = host6.world(["python3", "-c", UDP_ASK6.format(ip=HOST_IP6, port=5301)], check=False)
        assert r.stdout.strip() == f"echo-ping {HOST_IP6}", r.stderr  # answered from the address asked
    finally:
        server.kill()
        host6.cnm("rm", "-f", "udp6")


def test_a_conflict_on_the_v6_side_refuses_and_leaves_nothing(host6: TestHost) -> None:
    holder = host6.spawn(
        [
            "python3",
            "-c",
            "import socket,time;s=socket.socket(socket.AF_INET6);"
            "s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,1);s.bind(('::',8184));s.listen();"
            "print('up',flush=True);time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "up"
        r = host6.cnm("run", "-d", "--name", "clash6", "-p", "8184:80", "busybox", "sleep", "1d", check=False)
        assert r.returncode != 0 and "[::]:8184" in r.stderr and "address already in use" in r.stderr, (
            r.stderr
        )
        assert not inspect(host6, "clash6")[0]["State"]["Running"]
        assert can_bind4(host6, 8184), "the v4 side was not kept"
        r = host6.cnm("run", "--rm", "-p", "[::g]:8185:80", "busybox", "true", check=False)
        assert r.returncode != 0 and "invalid IP address" in r.stderr, r.stderr
    finally:
        holder.kill()
        host6.cnm("rm", "-f", "clash6", check=False)


def test_restart_keeps_the_v6_mappings(host6: TestHost) -> None:
    backend, proxy = host6.mode  # type: ignore[attr-defined]
    web(host6, "keep6", "-p", "8186:80", "-p", "[::1]:8187:80")
    try:
        before = host6.cnm("port", "keep6").stdout
        host6.kill_daemon(signal.SIGKILL)
        host6.start_daemon("--firewall-backend", backend, f"--userland-proxy={proxy}")
        assert host6.cnm("port", "keep6").stdout == before
        assert fetch_host(host6, "http://[::1]:8186/") == "hello-keep6"
        assert fetch_host(host6, "http://[::1]:8187/") == "hello-keep6"
        assert fetch_world(host6, f"http://[{HOST_IP6}]:8186/") == "hello-keep6"
        assert not can_bind6(host6, 8186), "the reservation is taken again after a restart"
    finally:
        host6.cnm("rm", "-f", "keep6")


def test_a_v6_container_is_reached_by_v6_nat_from_the_world(host6: TestHost) -> None:
    """A dual-stack network: the world's v6 traffic is DNATed to the container's v6 address
    (its source kept: httpd sees the world's address), [::1] goes through the proxy to it."""
    host6.cnm("network", "create", "--ipv6", "--subnet", "fd00:cafe:12::/64", "v6net")
    try:
        script = "mkdir -p /www && echo hello-v6 > /www/index.html && exec httpd -f -vv -p 80 -h /www"
        host6.cnm(
            "run",
            "-d",
            "--name",
            "web6",
            "--network",
            "v6net",
            "-p",
            "8188:80",
            "busybox",
            "sh",
            "-c",
            script,
        )
        addr6 = inspect(host6, "web6")[0]["NetworkSettings"]["Networks"]["v6net"]["GlobalIPv6Address"]
        assert addr6.startswith("fd00:cafe:12::"), addr6
        assert wait_for(lambda: fetch_world(host6, f"http://[{HOST_IP6}]:8188/") == "hello-v6", timeout=10)
        assert fetch_host(host6, "http://[::1]:8188/") == "hello-v6"
        assert fetch_world(host6, f"http://{HOST_IP}:8188/") == "hello-v6"
        r = host6.cnm("logs", "web6")
        logs = r.stdout + r.stderr
        assert WORLD_IP6 in logs, "DNAT keeps the client's address (the proxy would not)"
        rules = host6.run(["nft", "list", "ruleset"] if host6.mode[0] == "nftables" else ["ip6tables-save"])  # type: ignore[attr-defined]
        assert addr6 in rules.stdout
    finally:
        host6.cnm("rm", "-f", "web6", check=False)
        host6.cnm("network", "rm", "v6net")
