"""BridgeDriver with a SpoofGuard: a port is guarded before its veth exists and until
after it is retired, undo on failure, network removal, restore guarding exactly the
recorded endpoints; the fake guard's contract (heal after an outside flush)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_drivers_bridge import RecordingFirewall, endpoint, network, sandbox

from cnm.drivers.bridge import BridgeDriver
from cnm.errors import Conflict, FirewallError, KernelError, TeardownErrors
from cnm.firewall.api import port_guard
from cnm.firewall.fake import FakeSpoofGuard
from cnm.kernel.fake import FakeKernel
from cnm.model.endpoint import EndpointRecord
from cnm.model.network import NetworkRecord


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel()


@pytest.fixture
def guard() -> FakeSpoofGuard:
    return FakeSpoofGuard()


@pytest.fixture
def driver(kernel: FakeKernel, guard: FakeSpoofGuard) -> BridgeDriver:
    return BridgeDriver(kernel, RecordingFirewall(), guard=guard)


async def joined(
    kernel: FakeKernel, driver: BridgeDriver, net: NetworkRecord, n: int, **kw
) -> EndpointRecord:
    await kernel.create_netns(sandbox(n).key)
    ep = endpoint(n, net, **kw)
    await driver.join(net, ep, sandbox(n))
    return ep


async def test_join_guards_the_port_before_the_veth_exists(kernel, guard, driver):
    net = network()
    await driver.create_network(net)
    ep = endpoint(2, net)
    seen: dict[str, bool] = {}
    guard.observe = lambda method: seen.setdefault(method, kernel.link(ep.host_ifname) is not None)
    await kernel.create_netns(sandbox(2).key)
    await driver.join(net, ep, sandbox(2))
    assert seen == {"add_port": False}  # no window: the port was guarded first
    assert guard.ports == {ep.id: port_guard(net, ep)}
    g = guard.ports[ep.id]
    assert (g.port, g.mac, g.network) == (ep.host_ifname, ep.mac, net.id)
    assert g.addresses == (ep.address.ip,)


async def test_leave_unguards_only_after_the_pair_is_retired(kernel, guard, driver):
    net = network()
    await driver.create_network(net)
    ep = await joined(kernel, driver, net, 2)
    seen: dict[str, bool] = {}
    guard.observe = lambda method: seen.setdefault(method, kernel.link(ep.host_ifname) is not None)
    await driver.leave(net, ep, sandbox(2))
    assert seen == {"remove_port": False}
    assert guard.ports == {}
    await driver.leave(net, ep, sandbox(2))  # idempotent
    assert guard.ports == {}


async def test_a_guard_failure_creates_no_veth(kernel, guard, driver):
    net = network()
    await driver.create_network(net)
    await kernel.create_netns(sandbox(2).key)
    guard.fail_on = "add_port"
    with pytest.raises(FirewallError):
        await driver.join(net, endpoint(2, net), sandbox(2))
    assert kernel.link_names() == [net.bridge_name, "lo"]


async def test_a_veth_failure_unguards_the_port(kernel, guard, driver):
    net = network()
    await driver.create_network(net)
    await kernel.create_netns(sandbox(2).key)
    kernel.fail("add_veth")
    with pytest.raises(KernelError):
        await driver.join(net, endpoint(2, net), sandbox(2))
    assert guard.ports == {}
    assert [c[0] for c in guard.calls] == ["add_port", "remove_port"]


async def test_a_port_name_held_by_another_endpoint_is_a_conflict(kernel, guard, driver):
    net = network()
    await driver.create_network(net)
    first = await joined(kernel, driver, net, 2)
    await kernel.create_netns(sandbox(3).key)
    with pytest.raises(Conflict):
        await driver.join(net, endpoint(3, net, host_ifname=first.host_ifname), sandbox(3))
    assert guard.ports == {first.id: port_guard(net, first)}


async def test_a_port_that_could_not_be_retired_stays_guarded(kernel, guard, driver):
    net = network()
    await driver.create_network(net)
    ep = await joined(kernel, driver, net, 2)
    kernel.fail("retire_link")
    with pytest.raises(KernelError):
        await driver.leave(net, ep, sandbox(2))
    assert ep.id in guard.ports  # the veth may still carry traffic
    await driver.leave(net, ep, sandbox(2))  # a retry finishes the job
    assert guard.ports == {} and kernel.link(ep.host_ifname) is None


async def test_delete_network_unguards_every_port_of_it(kernel, guard, driver):
    one, two = network(), network("b2" * 32, name="two", subnet="10.20.0.0/24")
    for net in (one, two):
        await driver.create_network(net)
    a = await joined(kernel, driver, one, 2)
    b = await joined(kernel, driver, two, 3)
    await driver.delete_network(one)
    assert set(guard.ports) == {b.id} and a.id not in guard.ports


async def test_restore_guards_exactly_the_recorded_endpoints_of_its_networks(kernel, guard, driver):
    net = network()
    await driver.create_network(net)
    live = await joined(kernel, driver, net, 2)
    await joined(kernel, driver, net, 3)  # not recorded any more: its veth goes, and its guard
    guard.ports.clear()  # a new daemon remembers nothing
    no_mac = replace(endpoint(4, net), mac="")
    with pytest.raises(TeardownErrors, match="restoring"):
        await driver.restore([net], [live, no_mac])
    assert guard.ports == {live.id: port_guard(net, live)}  # the bad one is reported, not fatal
    await driver.restore([net], [live])
    assert guard.ports == {live.id: port_guard(net, live)}


async def test_without_a_guard_nothing_is_filtered(kernel):
    driver = BridgeDriver(kernel, RecordingFirewall())
    net = network()
    await driver.create_network(net)
    ep = await joined(kernel, driver, net, 2)
    await driver.leave(net, ep, sandbox(2))
    await driver.restore([net], [])


async def test_the_fake_guard_heals_what_it_remembers_after_an_outside_flush(guard):
    net = network()
    g = port_guard(net, endpoint(2, net))
    await guard.sync([])
    await guard.add_port(g)
    guard.flush_outside()
    assert not await guard.healthy()
    assert await guard.heal() is True
    assert guard.ports == {g.owner: g}
    assert await guard.heal() is False
