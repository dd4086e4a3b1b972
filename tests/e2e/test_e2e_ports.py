"""Issue 3: published ports, end to end, for each firewall backend, in kernel and proxy mode.

Each mode gets one test host (module-scoped per parameter).  A busybox httpd answers
``hello-<hostname>``; clients are the world namespace (the Internet), the host itself, and
other containers (hairpin through the host's address).
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_util import inspect
from harness import TestHost, wait_for

HOST_IP = "203.0.113.2"

MODES = [
    pytest.param(("nftables", "false"), id="nftables-kernel"),
    pytest.param(("nftables", "true"), id="nftables-proxy"),
    pytest.param(("iptables", "false"), id="iptables-kernel"),
    pytest.param(("iptables", "true"), id="iptables-proxy"),
]


@pytest.fixture(scope="module", params=MODES)
def porthost(request: pytest.FixtureRequest, busybox_tar: Path) -> Iterator[TestHost]:
    backend, proxy = request.param
    host = TestHost()
    try:
        host.start()
        host.start_daemon("--firewall-backend", backend, f"--userland-proxy={proxy}")
        host.import_image(busybox_tar, "busybox")
        host.mode = (backend, proxy == "true")  # type: ignore[attr-defined]
        yield host
    finally:
        host.close()


def web(host: TestHost, name: str, *flags: str, port: int = 80) -> str:
    script = f"mkdir -p /www && echo hello-{name} > /www/index.html && exec httpd -f -p {port} -h /www"
    cid = host.cnm("run", "-d", "--name", name, *flags, "busybox", "sh", "-c", script).stdout.strip()
    # wait until httpd listens inside
    assert wait_for(
        lambda: (
            host.cnm(
                "exec", name, "timeout", "2", "wget", "-qO-", f"http://127.0.0.1:{port}/", check=False
            ).returncode
            == 0
        ),
        timeout=10,
    )
    return cid


# Never busybox wget's own -T: Debian 12's static busybox 1.35 segfaults with it.
def fetch_world(host: TestHost, url: str) -> str | None:
    r = host.world(["busybox", "timeout", "3", "busybox", "wget", "-qO-", url], check=False, timeout=20)
    return r.stdout.strip() if r.returncode == 0 else None


def fetch_host(host: TestHost, url: str) -> str | None:
    r = host.run(["busybox", "timeout", "3", "busybox", "wget", "-qO-", url], check=False, timeout=20)
    return r.stdout.strip() if r.returncode == 0 else None


def fetch_from(host: TestHost, name: str, url: str) -> str | None:
    r = host.cnm("exec", name, "timeout", "3", "wget", "-qO-", url, check=False, timeout=20)
    return r.stdout.strip() if r.returncode == 0 else None


def can_bind(host: TestHost, port: int, ip: str = "0.0.0.0") -> bool:
    probe = (
        "import socket,sys;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
        f"try: s.bind(('{ip}',{port}))\nexcept OSError: sys.exit(1)"
    )
    return host.run(["python3", "-c", probe], check=False).returncode == 0


def test_published_port_reachable_everywhere(porthost: TestHost) -> None:
    web(porthost, "pub", "-p", "8080:80")
    web(porthost, "peer")
    try:
        assert fetch_world(porthost, f"http://{HOST_IP}:8080/") == "hello-pub"
        assert fetch_host(porthost, "http://127.0.0.1:8080/") == "hello-pub"
        assert fetch_host(porthost, f"http://{HOST_IP}:8080/") == "hello-pub"
        assert fetch_from(porthost, "peer", f"http://{HOST_IP}:8080/") == "hello-pub", "hairpin"
        assert fetch_from(porthost, "pub", f"http://{HOST_IP}:8080/") == "hello-pub", "own port"
        port = porthost.cnm("port", "pub", "80").stdout.strip()
        assert port == "0.0.0.0:8080\n[::]:8080"  # no host address: both families (Docker 27+)
        ps = porthost.cnm("ps", "--filter", "name=pub").stdout
        assert "0.0.0.0:8080->80/tcp" in ps
        assert not can_bind(porthost, 8080), "the host port is held while the mapping exists"
    finally:
        porthost.cnm("rm", "-f", "pub", "peer")
    assert wait_for(lambda: can_bind(porthost, 8080)), "the port is given back on rm"
    assert fetch_world(porthost, f"http://{HOST_IP}:8080/") is None


def test_loopback_binding_is_not_reachable_from_the_world(porthost: TestHost) -> None:
    web(porthost, "lo8081", "-p", "127.0.0.1:8081:80")
    try:
        assert fetch_host(porthost, "http://127.0.0.1:8081/") == "hello-lo8081"
        assert fetch_world(porthost, f"http://{HOST_IP}:8081/") is None
        assert fetch_host(porthost, f"http://{HOST_IP}:8081/") is None, "bound to 127.0.0.1 only"
        # even a packet addressed to 127.0.0.1 arriving from the world must not get in
        porthost.world(["ip", "route", "add", "127.0.0.1/32", "via", HOST_IP], check=False)
        r = porthost.world(
            ["busybox", "timeout", "2", "busybox", "wget", "-qO-", "http://127.0.0.1:8081/"], check=False
        )
        assert "hello-lo8081" not in r.stdout
    finally:
        porthost.world(["ip", "route", "del", "127.0.0.1/32"], check=False)
        porthost.cnm("rm", "-f", "lo8081")


def test_binding_to_one_host_address_answers_only_there(porthost: TestHost) -> None:
    porthost.run(["ip", "addr", "add", "203.0.113.3/24", "dev", "wan0"], check=False)
    web(porthost, "only3", "-p", "203.0.113.3:8082:80")
    try:
        assert fetch_world(porthost, "http://203.0.113.3:8082/") == "hello-only3"
        assert fetch_world(porthost, f"http://{HOST_IP}:8082/") is None
    finally:
        porthost.cnm("rm", "-f", "only3")


def test_publish_all_and_ranges(porthost: TestHost) -> None:
    web(porthost, "all", "-P", "--expose", "80")
    web(porthost, "ranged", "-p", "9000-9002:9000-9002", port=9001)
    try:
        line = porthost.cnm("port", "all").stdout.strip()
        m = re.fullmatch(r"80/tcp -> 0\.0\.0\.0:(\d+)\n80/tcp -> \[::\]:\1", line)
        assert m, line
        low, high = map(int, porthost.run(["cat", "/proc/sys/net/ipv4/ip_local_port_range"]).stdout.split())
        assert low <= int(m.group(1)) <= high
        assert fetch_world(porthost, f"http://{HOST_IP}:{m.group(1)}/") == "hello-all"
        assert fetch_world(porthost, f"http://{HOST_IP}:9001/") == "hello-ranged"
        ports = inspect(porthost, "ranged")[0]["NetworkSettings"]["Ports"]
        assert ports["9001/tcp"] == [
            {"HostIp": "0.0.0.0", "HostPort": "9001"},
            {"HostIp": "::", "HostPort": "9001"},
        ]
    finally:
        porthost.cnm("rm", "-f", "all", "ranged")


def test_port_conflicts_are_clear_and_leave_nothing(porthost: TestHost) -> None:
    web(porthost, "first", "-p", "8083:80")
    holder = porthost.spawn(
        [
            "python3",
            "-c",
            "import socket,time;s=socket.socket();s.bind(('0.0.0.0',8084));s.listen();"
            "print('up',flush=True);time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "up"
        r = porthost.cnm(
            "run", "-d", "--name", "second", "-p", "8083:80", "busybox", "sleep", "1d", check=False
        )
        assert r.returncode != 0 and "already allocated" in r.stderr
        r = porthost.cnm(
            "run", "-d", "--name", "third", "-p", "8084:80", "busybox", "sleep", "1d", check=False
        )
        assert r.returncode != 0 and "address already in use" in r.stderr
        for name in ("second", "third"):
            state = inspect(porthost, name)[0]["State"]
            assert not state["Running"]
        assert fetch_world(porthost, f"http://{HOST_IP}:8083/") == "hello-first", (
            "the first mapping is intact"
        )
    finally:
        holder.kill()
        porthost.cnm("rm", "-f", "first", "second", "third", check=False)


def test_internal_network_is_not_published(porthost: TestHost) -> None:
    porthost.cnm("network", "create", "--internal", "sealed")
    try:
        porthost.cnm(
            "run",
            "-d",
            "--name",
            "hidden",
            "--network",
            "sealed",
            "-p",
            "8085:80",
            "busybox",
            "sh",
            "-c",
            "mkdir /www; echo x > /www/index.html; exec httpd -f -p 80 -h /www",
        )
        time.sleep(0.5)
        assert fetch_world(porthost, f"http://{HOST_IP}:8085/") is None
        assert fetch_host(porthost, "http://127.0.0.1:8085/") is None
    finally:
        porthost.cnm("rm", "-f", "hidden", check=False)
        porthost.cnm("network", "rm", "sealed")


def test_stop_releases_and_start_restores(porthost: TestHost) -> None:
    web(porthost, "cycle", "-p", "8086:80")
    try:
        porthost.cnm("stop", "-t", "1", "cycle")
        assert wait_for(lambda: can_bind(porthost, 8086))
        assert fetch_world(porthost, f"http://{HOST_IP}:8086/") is None
        porthost.cnm("start", "cycle")
        assert wait_for(lambda: fetch_world(porthost, f"http://{HOST_IP}:8086/") == "hello-cycle", timeout=10)
    finally:
        porthost.cnm("rm", "-f", "cycle")


def test_rules_come_back_after_an_outside_flush_and_a_restart(porthost: TestHost) -> None:
    backend, _proxy = porthost.mode  # type: ignore[attr-defined]
    web(porthost, "heal", "-p", "8087:80")
    try:
        if backend == "nftables":
            porthost.run(["nft", "flush", "ruleset"])
        else:
            porthost.sh("iptables -t nat -F; iptables -F; iptables -t raw -F")
        assert wait_for(
            lambda: fetch_world(porthost, f"http://{HOST_IP}:8087/") == "hello-heal", timeout=6
        ), "cnmd puts its rules back within 5 s"
        porthost.kill_daemon(signal.SIGKILL)
        porthost.start_daemon("--firewall-backend", backend, f"--userland-proxy={str(_proxy).lower()}")
        assert fetch_world(porthost, f"http://{HOST_IP}:8087/") == "hello-heal"
        assert fetch_host(porthost, "http://127.0.0.1:8087/") == "hello-heal"
        assert not can_bind(porthost, 8087), "the reservation is taken again after a restart"
    finally:
        porthost.cnm("rm", "-f", "heal")


UDP_ECHO = (
    "import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('0.0.0.0',53));"
    "print('up',flush=True)\nwhile True:\n d,a=s.recvfrom(512);s.sendto(b'echo-'+d,a)"
)
UDP_ASK = (
    "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(3);"
    "s.sendto(b'ping',('{ip}',{port}));print(s.recv(512).decode())"
)


def test_udp_port(porthost: TestHost) -> None:
    """busybox has no UDP server: a Python echo server runs in the container's network
    namespace (its network stack is what is tested)."""
    porthost.cnm("run", "-d", "--name", "udp", "-p", "5300:53/udp", "busybox", "sleep", "1d")
    key = inspect(porthost, "udp")[0]["NetworkSettings"]["SandboxKey"]
    server = porthost.spawn(
        ["nsenter", f"--net={key}", "python3", "-c", UDP_ECHO], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "up"
        r = porthost.world(["python3", "-c", UDP_ASK.format(ip=HOST_IP, port=5300)], check=False)
        assert r.stdout.strip() == "echo-ping", r.stderr
        r = porthost.run(["python3", "-c", UDP_ASK.format(ip="127.0.0.1", port=5300)], check=False)
        assert r.stdout.strip() == "echo-ping", r.stderr
    finally:
        server.kill()
        porthost.cnm("rm", "-f", "udp")


def test_nothing_left_after_removal(porthost: TestHost) -> None:
    backend, _ = porthost.mode  # type: ignore[attr-defined]
    web(porthost, "gone", "-p", "8088:80", "-p", "127.0.0.1:8089:80")
    porthost.cnm("rm", "-f", "gone")
    if backend == "nftables":
        ruleset = porthost.run(["nft", "list", "ruleset"]).stdout
    else:
        ruleset = porthost.run(["iptables-save"]).stdout
    assert "8088" not in ruleset and "8089" not in ruleset
    assert can_bind(porthost, 8088) and can_bind(porthost, 8089, "127.0.0.1")
