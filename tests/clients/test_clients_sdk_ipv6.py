"""IPv6 through the Docker SDK for Python's high-level client (``docker.DockerClient``, the
models users write), against cnmd in a throwaway host:

``client.networks.create(enable_ipv6=True, ipam=IPAMConfig(pool_configs=[v6]))`` (and with
both families), ``network.connect(container, ipv6_address=…)`` of a running container (the
address in ``container.attrs`` and inside it, ``network.containers``), v6 between two
containers, and ``containers.run(..., ports={'80/tcp': 8080})`` whose ``container.ports``
holds both families (``('::1', port)`` only the v6 loopback).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest
from harness import TestHost, wait_for

V6 = "fd00:5d6:1::/64"
HTTPD = ["sh", "-c", "mkdir -p /www && echo hello-sdk > /www/index.html && exec httpd -f -p 80 -h /www"]
PORT = 18090
LO6_PORT = 18091


@pytest.fixture(scope="module")
def sdk() -> Any:
    return pytest.importorskip("docker", reason="the Docker SDK comes with the test extras")


@pytest.fixture(scope="module")
def client(clienthost: TestHost, sdk: Any) -> Iterator[Any]:
    client = sdk.DockerClient(base_url=f"unix://{clienthost.socket_path}", version="1.45")
    yield client
    for c in client.containers.list(all=True):
        if c.name.startswith("sdk6-"):
            c.remove(force=True)
    for n in client.networks.list():
        if n.name.startswith("sdk6"):
            n.remove()
    client.close()


def fetch(host: TestHost, url: str, check: bool = True) -> Any:
    # (busybox's wget -T crashes on some hosts: the time limit is timeout's)
    return host.run(["timeout", "5", "busybox", "wget", "-q", "-O", "-", url], check=check, timeout=30)


def test_networks_create_with_a_v6_pool(client: Any, sdk: Any) -> None:
    types = sdk.types
    net = client.networks.create(
        "sdk6",
        driver="bridge",
        enable_ipv6=True,
        ipam=types.IPAMConfig(pool_configs=[types.IPAMPool(subnet=V6)]),
    )
    net.reload()
    assert net.attrs["EnableIPv6"] is True
    subnets = [c["Subnet"] for c in net.attrs["IPAM"]["Config"]]
    assert V6 in subnets and [ipaddress.ip_network(s).version for s in subnets] == [4, 6], subnets
    assert client.networks.get("sdk6").id == net.id


def test_networks_create_with_both_families(client: Any, sdk: Any) -> None:
    types = sdk.types
    net = client.networks.create(
        "sdk6-dual",
        enable_ipv6=True,
        ipam=types.IPAMConfig(
            pool_configs=[
                types.IPAMPool(subnet="10.67.0.0/24", gateway="10.67.0.1"),
                types.IPAMPool(subnet="fd00:5d6:2::/64", gateway="fd00:5d6:2::1"),
            ]
        ),
    )
    net.reload()
    assert net.attrs["IPAM"]["Config"] == [
        {"Subnet": "10.67.0.0/24", "Gateway": "10.67.0.1"},
        {"Subnet": "fd00:5d6:2::/64", "Gateway": "fd00:5d6:2::1"},
    ]


def test_network_connect_with_ipv6_address(client: Any) -> None:
    c = client.containers.run("busybox", ["sleep", "1d"], detach=True, name="sdk6-a")
    net = client.networks.get("sdk6")
    net.connect(c, ipv6_address="fd00:5d6:1::42")
    c.reload()
    settings = c.attrs["NetworkSettings"]["Networks"]["sdk6"]
    assert settings["GlobalIPv6Address"] == "fd00:5d6:1::42"
    assert settings["GlobalIPv6PrefixLen"] == 64
    assert settings["IPv6Gateway"] == "fd00:5d6:1::1"
    assert settings["IPAMConfig"]["IPv6Address"] == "fd00:5d6:1::42"
    # the default bridge stays IPv4-only
    assert c.attrs["NetworkSettings"]["Networks"]["bridge"]["GlobalIPv6Address"] == ""
    code, out = c.exec_run(["ip", "-o", "-6", "addr", "show", "scope", "global"])
    assert code == 0 and b"fd00:5d6:1::42/64" in out, out
    net.reload()
    assert [x.name for x in net.containers] == ["sdk6-a"]


def test_containers_on_the_network_reach_each_other_over_v6(client: Any) -> None:
    b = client.containers.run("busybox", ["sleep", "1d"], detach=True, name="sdk6-b", network="sdk6")
    b.reload()
    addr = b.attrs["NetworkSettings"]["Networks"]["sdk6"]["GlobalIPv6Address"]
    assert ipaddress.IPv6Address(addr) in ipaddress.IPv6Network(V6), addr
    code, out = b.exec_run(["ping", "-6", "-c", "1", "-W", "3", "fd00:5d6:1::42"])
    assert code == 0, out
    code, out = client.containers.get("sdk6-a").exec_run(["ping", "-6", "-c", "1", "-W", "3", addr])
    assert code == 0, out


def test_network_disconnect_frees_the_v6_address(client: Any) -> None:
    net = client.networks.get("sdk6")
    c = client.containers.get("sdk6-a")
    net.disconnect(c)
    code, out = c.exec_run(["ip", "-o", "-6", "addr", "show", "scope", "global"])
    assert b"fd00:5d6:1::42" not in out, out
    net.connect(c, ipv6_address="fd00:5d6:1::42")  # free again: the same address is taken back
    c.reload()
    assert c.attrs["NetworkSettings"]["Networks"]["sdk6"]["GlobalIPv6Address"] == "fd00:5d6:1::42"


def test_run_ports_lists_both_families(clienthost: TestHost, client: Any) -> None:
    web = client.containers.run("busybox", HTTPD, detach=True, name="sdk6-web", ports={"80/tcp": PORT})
    web.reload()
    assert web.ports == {
        "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(PORT)}, {"HostIp": "::", "HostPort": str(PORT)}]
    }
    assert wait_for(lambda: fetch(clienthost, f"http://127.0.0.1:{PORT}/", check=False).returncode == 0)
    assert fetch(clienthost, f"http://[::1]:{PORT}/").stdout.strip() == "hello-sdk"
    listed = client.api.containers(filters={"name": "sdk6-web"})[0]["Ports"]
    assert sorted((p.get("IP"), p.get("PublicPort"), p["PrivatePort"]) for p in listed) == [
        ("0.0.0.0", PORT, 80),
        ("::", PORT, 80),
    ], listed


def test_run_ports_on_v6_loopback(clienthost: TestHost, client: Any) -> None:
    lo6 = client.containers.run(
        "busybox", HTTPD, detach=True, name="sdk6-lo6", ports={"80/tcp": ("::1", LO6_PORT)}
    )
    lo6.reload()
    assert lo6.ports == {"80/tcp": [{"HostIp": "::1", "HostPort": str(LO6_PORT)}]}
    assert wait_for(lambda: fetch(clienthost, f"http://[::1]:{LO6_PORT}/", check=False).returncode == 0)
    assert fetch(clienthost, f"http://127.0.0.1:{LO6_PORT}/", check=False).returncode != 0


def test_networks_remove(client: Any) -> None:
    for name in ("sdk6-a", "sdk6-b", "sdk6-web", "sdk6-lo6"):
        client.containers.get(name).remove(force=True)
    for name in ("sdk6", "sdk6-dual"):
        client.networks.get(name).remove()
    assert [n.name for n in client.networks.list() if n.name.startswith("sdk6")] == []
