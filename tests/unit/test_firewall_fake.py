"""FakeFirewall behaves like a backend for the engine's and drivers' unit tests."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from cnm.errors import FirewallError
from cnm.firewall.api import BridgeRules, Firewall
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
