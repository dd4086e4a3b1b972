"""Published ports in the API's JSON (inspect ``NetworkSettings.Ports``, ``Config.ExposedPorts``,
``HostConfig.PortBindings``, ``docker ps`` items) and how the CLI renders that JSON."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from cnm.api.schemas_container import (
    NetworkView,
    container_inspect_json,
    container_summary_json,
    parse_container_create,
)
from cnm.cli.commands.container import port_lines
from cnm.cli.format import displayable_ports
from cnm.cli.portspec import parse_expose, parse_publish
from cnm.model.container import Container, ContainerState
from cnm.model.endpoint import EndpointRecord, SandboxRecord
from cnm.model.network import NetworkRecord
from cnm.model.ports import ANY, PortMapping

NOW = "2024-05-01T10:00:00.000000000Z"
LO = IPv4Address("127.0.0.1")
NET = NetworkRecord(
    id="n" * 64,
    name="bridge",
    driver="bridge",
    created=NOW,
    subnet=IPv4Network("172.17.0.0/16"),
    gateway=IPv4Address("172.17.0.1"),
)


def container(publish=(), expose=(), publish_all=False, mode="default", status="running") -> Container:
    exposed, bindings = parse_publish(list(publish))
    exposed = parse_expose(list(expose), exposed)
    config, _ = parse_container_create(
        {
            "Image": "busybox",
            "ExposedPorts": exposed,
            "HostConfig": {"PortBindings": bindings, "PublishAllPorts": publish_all, "NetworkMode": mode},
        }
    )
    return Container(
        id="c" * 64,
        name="web",
        created=NOW,
        config=config,
        state=ContainerState(status=status),
        sandbox_id="s" * 64,
    )


def view(c: Container, *mappings: PortMapping) -> NetworkView:
    ep = EndpointRecord(
        id="e" * 64,
        network_id=NET.id,
        container_id=c.id,
        sandbox_id="s" * 64,
        name="web",
        address=IPv4Interface("172.17.0.2/16"),
        gateway=NET.gateway,
        ports=tuple(mappings),
    )
    return NetworkView(
        [(NET, ep)], SandboxRecord(id="s" * 64, container_id=c.id, key="/run/cnm/netns/s"), lambda r: NET
    )


def test_inspect_ports_of_a_running_container():
    c = container(
        ["8080:80", "127.0.0.1:9090:80", "53:53/udp", "8000-8001:8000-8001"], ["443", "7000-7001/udp"]
    )
    v = view(
        c,
        PortMapping("tcp", 80, ANY, 8080),
        PortMapping("tcp", 80, LO, 9090),
        PortMapping("udp", 53, ANY, 53),
        PortMapping("tcp", 8000, ANY, 8000),
        PortMapping("tcp", 8001, ANY, 8001),
    )
    doc = container_inspect_json(c, v, None)
    ports = doc["NetworkSettings"]["Ports"]
    assert ports == {
        "443/tcp": None,
        "53/udp": [{"HostIp": "0.0.0.0", "HostPort": "53"}],
        "7000/udp": None,
        "7001/udp": None,
        "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}, {"HostIp": "127.0.0.1", "HostPort": "9090"}],
        "8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8000"}],
        "8001/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8001"}],
    }
    assert list(ports) == sorted(ports)  # Go's encoder sorts map keys
    assert doc["HostConfig"]["PortBindings"]["80/tcp"] == [
        {"HostIp": "", "HostPort": "8080"},
        {"HostIp": "127.0.0.1", "HostPort": "9090"},
    ]
    assert set(doc["Config"]["ExposedPorts"]) == {
        "443/tcp",
        "53/udp",
        "7000/udp",
        "7001/udp",
        "80/tcp",
        "8000/tcp",
        "8001/tcp",
    }
    # docker port, as the CLI prints it from this JSON
    assert port_lines(ports, None, "web") == [
        "53/udp -> 0.0.0.0:53",
        "80/tcp -> 0.0.0.0:8080",
        "80/tcp -> 127.0.0.1:9090",
        "8000/tcp -> 0.0.0.0:8000",
        "8001/tcp -> 0.0.0.0:8001",
    ]
    assert port_lines(ports, "80", "web") == ["0.0.0.0:8080", "127.0.0.1:9090"]


def test_publish_all_of_an_image_port_is_exposed_and_published():
    c = container(publish_all=True)
    v = view(c, PortMapping("tcp", 80, ANY, 32768))  # the image's EXPOSE 80, published by -P
    doc = container_inspect_json(c, v, None)
    assert doc["NetworkSettings"]["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "32768"}]}
    assert doc["Config"]["ExposedPorts"] == {"80/tcp": {}}
    assert doc["HostConfig"]["PublishAllPorts"] is True


def test_ps_items_and_the_ports_column():
    c = container(["8080:80", "8000-8001:8000-8001", "127.0.0.1:9090:90/udp"], ["443"])
    v = view(
        c,
        PortMapping("tcp", 80, ANY, 8080),
        PortMapping("tcp", 8000, ANY, 8000),
        PortMapping("tcp", 8001, ANY, 8001),
        PortMapping("udp", 90, LO, 9090),
    )
    items = container_summary_json(c, v)["Ports"]
    assert {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"} in items
    assert {"PrivatePort": 443, "Type": "tcp"} in items
    assert list(items[0]) in (["PrivatePort", "Type"], ["IP", "PrivatePort", "PublicPort", "Type"])
    assert len(items) == 5
    assert displayable_ports(items) == (
        "443/tcp, 0.0.0.0:8000-8001->8000-8001/tcp, 0.0.0.0:8080->80/tcp, 127.0.0.1:9090->90/udp"
    )


def test_no_ports_when_not_running_or_in_host_mode():
    stopped = container(["8080:80"], status="exited")
    assert (
        container_inspect_json(stopped, NetworkView([], None, lambda r: NET), None)["NetworkSettings"][
            "Ports"
        ]
        == {}
    )
    assert container_summary_json(stopped, NetworkView([], None, lambda r: NET))["Ports"] == []
    host = container(["8080:80"], mode="host")
    assert container_inspect_json(host, view(host), None)["NetworkSettings"]["Ports"] == {}


def test_exposed_only_ports_of_a_running_container_are_null():
    c = container(expose=["80", "1000-1001/udp"])
    assert container_inspect_json(c, view(c), None)["NetworkSettings"]["Ports"] == {
        "1000/udp": None,
        "1001/udp": None,
        "80/tcp": None,
    }
    assert displayable_ports(container_summary_json(c, view(c))["Ports"]) == "80/tcp, 1000-1001/udp"


def test_a_range_key_from_another_client_is_expanded():
    c = container()
    c = replace(c, config=replace(c.config, exposed_ports=("7000-7001/tcp",)))
    assert container_inspect_json(c, view(c), None)["NetworkSettings"]["Ports"] == {
        "7000/tcp": None,
        "7001/tcp": None,
    }


def test_v6_bindings_in_inspect_ps_and_the_request_echo():
    """``-p 8080:80 -p [::1]:9090:80``: inspect lists 0.0.0.0 before ::, ps shows Docker's
    ``[::]`` text, and HostConfig echoes the v6 HostIp as sent."""
    from ipaddress import IPv6Address

    c = container(["8080:80", "[::1]:9090:80"])
    v = view(
        c,
        PortMapping("tcp", 80, IPv6Address("::1"), 9090),
        PortMapping("tcp", 80, IPv6Address("::"), 8080),
        PortMapping("tcp", 80, ANY, 8080),
    )
    doc = container_inspect_json(c, v, None)
    assert doc["NetworkSettings"]["Ports"] == {
        "80/tcp": [
            {"HostIp": "0.0.0.0", "HostPort": "8080"},
            {"HostIp": "::", "HostPort": "8080"},
            {"HostIp": "::1", "HostPort": "9090"},
        ]
    }
    assert doc["HostConfig"]["PortBindings"]["80/tcp"] == [
        {"HostIp": "", "HostPort": "8080"},
        {"HostIp": "::1", "HostPort": "9090"},
    ]
    column = displayable_ports(container_summary_json(c, v)["Ports"])
    assert column == "0.0.0.0:8080->80/tcp, [::]:8080->80/tcp, [::1]:9090->80/tcp"
