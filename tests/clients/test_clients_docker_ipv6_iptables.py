"""IPv6 published ports through Docker's own CLI with cnmd's iptables backend
(``--firewall-backend iptables``: ip6tables beside iptables), the other modules' nftables
cases once more: a dual-stack container's ``-p 18082:80`` on ``0.0.0.0`` and ``[::]``
answers at ``127.0.0.1``, ``[::1]`` (cnmd's proxy: the kernel cannot DNAT from ::1) and
the host's v6 address; ``-p '[::1]:18083:80'`` on v6 loopback only; v6 between containers;
``network rm`` leaves no v6 address behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import ROOT_SKIP_REASON, TestHost, is_root, wait_for

DOCKER = "/usr/local/bin/docker"
HTTPD = ["sh", "-c", "mkdir -p /www && echo hello-ip6tables > /www/index.html && exec httpd -f -p 80 -h /www"]
PORT = 18082
LO6_PORT = 18083


@pytest.fixture(scope="module")
def clienthost(busybox_tar: Path) -> Iterator[TestHost]:
    """This module's host: cnmd on the iptables backend."""
    if not is_root():
        pytest.skip(ROOT_SKIP_REASON)
    host = TestHost()
    try:
        host.start()
        host.start_daemon("--firewall-backend", "iptables")
        host.import_image(busybox_tar, "busybox")
        yield host
    finally:
        host.close()


def docker(host: TestHost, env: dict[str, str], *args: str, check: bool = True) -> Any:
    return host.run([DOCKER, *args], env=env, check=check, timeout=120)


def fetch(host: TestHost, url: str, check: bool = True) -> Any:
    # (busybox's wget -T crashes on some hosts: the time limit is timeout's)
    return host.run(["timeout", "5", "busybox", "wget", "-q", "-O", "-", url], check=check, timeout=30)


def test_dual_stack_ports_on_ip6tables(clienthost: TestHost, client_env: dict[str, str]) -> None:
    env = client_env
    docker(clienthost, env, "network", "create", "--ipv6", "--subnet", "fd00:1b7::/64", "n6t")
    docker(clienthost, env, "run", "-d", "--name", "web6t", "--network", "n6t",
           "-p", f"{PORT}:80", "-p", f"[::1]:{LO6_PORT}:80", "busybox", *HTTPD)  # fmt: skip
    lines = docker(clienthost, env, "port", "web6t").stdout.splitlines()
    assert sorted(lines) == sorted(
        [f"80/tcp -> 0.0.0.0:{PORT}", f"80/tcp -> [::]:{PORT}", f"80/tcp -> [::1]:{LO6_PORT}"]
    ), lines
    assert wait_for(lambda: fetch(clienthost, f"http://127.0.0.1:{PORT}/", check=False).returncode == 0)
    for url in (
        f"http://127.0.0.1:{PORT}/",
        f"http://[::1]:{PORT}/",
        f"http://[::1]:{LO6_PORT}/",
        f"http://[fd00:1b7::1]:{PORT}/",  # the host's address on n6t's bridge
    ):
        assert fetch(clienthost, url, check=False).stdout.strip() == "hello-ip6tables", url
    assert fetch(clienthost, f"http://127.0.0.1:{LO6_PORT}/", check=False).returncode != 0


def test_v6_between_containers_on_ip6tables(clienthost: TestHost, client_env: dict[str, str]) -> None:
    env = client_env
    docker(clienthost, env, "run", "-d", "--name", "peer6t", "--network", "n6t", "busybox", "sleep", "1d")
    addr = docker(
        clienthost, env, "inspect", "-f", "{{.NetworkSettings.Networks.n6t.GlobalIPv6Address}}", "web6t"
    )
    docker(clienthost, env, "exec", "peer6t", "ping", "-6", "-c", "1", "-W", "3", addr.stdout.strip())
    page = docker(clienthost, env, "exec", "peer6t", "timeout", "5", "wget", "-q", "-O", "-", "http://web6t/")
    assert page.stdout.strip() == "hello-ip6tables"


def test_rm_leaves_no_v6_behind_on_ip6tables(clienthost: TestHost, client_env: dict[str, str]) -> None:
    env = client_env
    docker(clienthost, env, "rm", "-f", "web6t", "peer6t")
    docker(clienthost, env, "network", "rm", "n6t")
    v6 = clienthost.run(["ip", "-o", "-6", "addr", "show", "scope", "global"]).stdout
    assert "fd00:1b7" not in v6, v6
    rules = clienthost.run(["ip6tables-save", "-t", "nat"]).stdout
    assert "fd00:1b7" not in rules and str(PORT) not in rules, rules
