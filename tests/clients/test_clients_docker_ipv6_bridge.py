"""The default bridge with IPv6 (cnmd ``--ipv6 --fixed-cidr-v6``, as dockerd's flags) through
Docker's own CLI: ``docker network inspect bridge`` and ``network ls`` show it dual-stack, a
plain ``docker run`` gets a v6 address, gateway and default route, shown in the deprecated
top-level ``NetworkSettings`` fields too (Docker fills them from ``Networks["bridge"]``),
containers reach each other over v6, and ``--ip6`` stays refused there (user networks only).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import ROOT_SKIP_REASON, TestHost, is_root

DOCKER = "/usr/local/bin/docker"
FIXED = "fd00:b0b:6::/64"


@pytest.fixture(scope="module")
def clienthost(busybox_tar: Path) -> Iterator[TestHost]:
    """This module's host: cnmd with IPv6 on the default bridge."""
    if not is_root():
        pytest.skip(ROOT_SKIP_REASON)
    host = TestHost()
    try:
        host.start()
        host.start_daemon("--ipv6", "--fixed-cidr-v6", FIXED)
        host.import_image(busybox_tar, "busybox")
        yield host
    finally:
        host.close()


def docker(host: TestHost, env: dict[str, str], *args: str, check: bool = True) -> Any:
    return host.run([DOCKER, *args], env=env, check=check, timeout=120)


def fmt(host: TestHost, env: dict[str, str], template: str, ref: str) -> str:
    return str(docker(host, env, "inspect", "-f", template, ref).stdout.strip())


def test_bridge_is_dual_stack(clienthost: TestHost, client_env: dict[str, str]) -> None:
    net = json.loads(docker(clienthost, client_env, "network", "inspect", "bridge").stdout)[0]
    assert net["EnableIPv6"] is True
    subnets = [c["Subnet"] for c in net["IPAM"]["Config"]]
    assert subnets == ["172.17.0.0/16", FIXED], net["IPAM"]
    out = docker(clienthost, client_env, "network", "ls", "--format", "{{.Name}} {{.IPv6}}").stdout
    assert "bridge true" in out.splitlines(), out


def test_run_on_the_bridge_gets_v6_in_both_inspect_places(
    clienthost: TestHost, client_env: dict[str, str]
) -> None:
    docker(clienthost, client_env, "run", "-d", "--name", "b1", "busybox", "sleep", "1d")
    addr = fmt(clienthost, client_env, "{{.NetworkSettings.Networks.bridge.GlobalIPv6Address}}", "b1")
    assert ipaddress.IPv6Address(addr) in ipaddress.IPv6Network(FIXED), addr
    top = fmt(
        clienthost,
        client_env,
        "{{.NetworkSettings.GlobalIPv6Address}} {{.NetworkSettings.GlobalIPv6PrefixLen}} {{.NetworkSettings.IPv6Gateway}}",
        "b1",
    )
    assert top == f"{addr} 64 fd00:b0b:6::1", top
    routes = docker(clienthost, client_env, "exec", "b1", "ip", "-6", "route", "show", "default").stdout
    assert "default via fd00:b0b:6::1" in routes, routes
    hosts = docker(clienthost, client_env, "exec", "b1", "cat", "/etc/hosts").stdout
    assert any(line.split()[:1] == [addr] for line in hosts.splitlines()), hosts


def test_bridge_containers_reach_each_other_over_v6(clienthost: TestHost, client_env: dict[str, str]) -> None:
    docker(clienthost, client_env, "run", "-d", "--name", "b2", "busybox", "sleep", "1d")
    addr = fmt(clienthost, client_env, "{{.NetworkSettings.GlobalIPv6Address}}", "b1")
    docker(clienthost, client_env, "exec", "b2", "ping", "-6", "-c", "1", "-W", "3", addr)


def test_ip6_on_the_bridge_is_refused(clienthost: TestHost, client_env: dict[str, str]) -> None:
    out = docker(
        clienthost, client_env, "run", "-d", "--name", "b3", "--ip6", "fd00:b0b:6::99", "busybox", "sleep", "1d",
        check=False,
    )  # fmt: skip
    assert out.returncode != 0
    assert "user specified IP address is supported on user defined networks only" in out.stderr, out.stderr
    docker(clienthost, client_env, "rm", "-f", "b3", check=False)
    for name in ("b1", "b2"):
        docker(clienthost, client_env, "rm", "-f", name)
