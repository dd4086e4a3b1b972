"""FakeFirewall behaves like a backend for the engine's and drivers' unit tests."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from cnm.errors import FirewallError
from cnm.firewall.api import BridgeRules, Firewall, PortRule
from cnm.firewall.fake import FakeFirewall


def net(owner: str, bridge: str) -> BridgeRules:
    return BridgeRules(owner=owner, bridge=bridge, subnet=IPv4Network("10.1.0.0/24"))


async def test_fake_records_calls_and_holds_networks():
    fw: Firewall = FakeFirewall()
    assert isinstance(fw, FakeFirewall)
    await fw.setup()
    await fw.add_network(net("a", "br-a"))
    await fw.add_network(net("b", "br-b"))
    await fw.remove_network("a")
    await fw.remove_network("a")  # idempotent
    assert set(fw.networks) == {"b"}
    assert [c[0] for c in fw.calls] == [
        "setup",
        "add_network",
        "add_network",
        "remove_network",
        "remove_network",
    ]
    assert await fw.healthy()


async def test_fake_refuses_what_the_real_backend_refuses():
    fw = FakeFirewall()
    with pytest.raises(FirewallError):
        await fw.add_network(net("a", "br-a"))  # no setup: no table
    await fw.setup()
    await fw.add_network(net("a", "br-a"))
    with pytest.raises(FirewallError):
        await fw.add_network(net("b", "br-a"))
    with pytest.raises(FirewallError):
        await fw.sync([net("a", "br-x"), net("b", "br-x")])


async def test_fake_failure_injection_and_outside_flush():
    fw = FakeFirewall()
    await fw.setup()
    fw.fail_on = "add_network"
    with pytest.raises(FirewallError, match="injected"):
        await fw.add_network(net("a", "br-a"))
    assert fw.networks == {}
    await fw.add_network(net("a", "br-a"))  # only the next call fails
    fw.flush_outside()
    assert not await fw.healthy()
    await fw.sync([net("a", "br-a")])
    assert await fw.healthy() and set(fw.networks) == {"a"}
    await fw.teardown()
    assert fw.networks == {} and not await fw.healthy()


def port(owner: str, host_port: int, end: int | None = None, host_ip: str | None = None) -> PortRule:
    return PortRule(owner=owner, network="a", bridge="br-a", protocol="tcp",
                    host_ip=IPv4Address(host_ip) if host_ip else None, host_port=host_port,
                    host_port_end=end or host_port, container_ip=IPv4Address("10.1.0.2"), container_port=80)  # fmt: skip


async def test_fake_records_ports_and_refuses_another_endpoints_port():
    fw = FakeFirewall()
    with pytest.raises(FirewallError):
        await fw.add_ports("e1", [port("e1", 8080)])  # no setup
    await fw.setup()
    await fw.add_ports("e1", [port("e1", 8000, 8010)])
    await fw.add_ports("e1", [port("e1", 8000, 8010)])  # idempotent replace
    with pytest.raises(FirewallError, match="File exists"):
        await fw.add_ports("e2", [port("e2", 8010)])
    await fw.add_ports("e2", [port("e2", 8010, host_ip="127.0.0.1")])  # another address
    assert set(fw.ports) == {"e1", "e2"}
    fw.fail_on = "add_ports"
    with pytest.raises(FirewallError, match="injected"):
        await fw.add_ports("e3", [port("e3", 9000)])
    assert "e3" not in fw.ports
    await fw.remove_ports("e1")
    await fw.remove_ports("e1")
    assert set(fw.ports) == {"e2"}
    assert ("remove_ports", "e1") in fw.calls
    fw.flush_outside()
    assert fw.ports == {}
    await fw.sync([net("a", "br-a")], [port("e1", 8080)])
    assert fw.ports == {"e1": (port("e1", 8080),)}
    with pytest.raises(FirewallError):
        await fw.sync([], [port("e1", 8080), port("e2", 8080)])
    await fw.teardown()
    assert fw.ports == {}
