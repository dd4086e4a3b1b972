"""Anti-spoofing on overlay ports: the overlay driver guards a local endpoint's port before
its veth exists and until after it is retired (IPv4 only); both drivers restore one guard
with a scope each, and neither restore drops the other's ports -- at start-up nothing is
dropped until both have reported, then exactly their union is guarded."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from overlay_hosts import Host, until
from test_drivers_bridge import RecordingFirewall, endpoint, network

from cnm.drivers.bridge import BridgeDriver
from cnm.drivers.overlay import OverlayDriver
from cnm.errors import TeardownErrors
from cnm.firewall.api import PortGuard, port_guard
from cnm.firewall.fake import FakeSpoofGuard
from cnm.kernel.fake import HOST, FakeKernel
from cnm.model.network import NetworkRecord, NetworkSpec
from cnm.store.memory import MemoryStore

SCOPES = ("bridge", "overlay")


@pytest.fixture
async def hosts(tmp_path) -> AsyncIterator[tuple[Host, Host]]:
    shared = MemoryStore("global")
    pair = (
        Host(tmp_path, "h1", "198.51.100.1", shared, guard=True),
        Host(tmp_path, "h2", "198.51.100.2", shared, guard=True),
    )
    try:
        for host in pair:
            await host.start()
        yield pair
    finally:
        for host in pair:
            if host.ctl is not None:
                await host.stop()


async def overlay(a: Host, b: Host) -> NetworkRecord:
    assert a.ctl is not None and b.ctl is not None
    net = await a.ctl.create_network(NetworkSpec(name="ov", driver="overlay", attachable=True))
    await until(lambda: net.id in b.ctl._state.networks)
    return a.ctl._state.networks[net.id]


def on(guard: FakeSpoofGuard, net: NetworkRecord) -> dict[str, PortGuard]:
    """The guarded ports of ``net`` (an overlay container also has one on cnm_gwbridge)."""
    return {owner: g for owner, g in guard.ports.items() if g.network == net.id}


async def test_an_overlay_port_is_guarded_before_its_veth_exists_and_until_it_is_retired(hosts):
    a, b = hosts
    assert a.guard is not None and a.ctl is not None
    net = await overlay(a, b)
    links_then: dict[str, set[str]] = {}
    a.guard.observe = lambda method: links_then.setdefault(method, set(a.kernel.namespaces[HOST]))
    web = await a.run("web", "ov")
    assert web.host_ifname and web.host_ifname not in links_then["add_port"]  # guarded first
    assert on(a.guard, net) == {web.id: port_guard(net, web)}
    guard = a.guard.ports[web.id]
    assert (guard.port, guard.mac, guard.network) == (web.host_ifname, web.mac, net.id)
    assert guard.addresses == (web.address.ip,) and guard.addresses6 == ()  # overlay: IPv4 only

    links_then.clear()
    await a.ctl.disconnect("ov", "web")
    assert web.host_ifname not in links_then["remove_port"]  # unguarded once retired
    assert on(a.guard, net) == {}


async def test_an_overlay_port_that_could_not_be_retired_stays_guarded(hosts):
    a, b = hosts
    assert a.guard is not None and a.driver is not None
    net = await overlay(a, b)
    web = await a.run("web", "ov")
    a.kernel.fail("retire_link")
    with pytest.raises(TeardownErrors):
        await a.driver.leave(net, web, None)
    assert web.id in a.guard.ports  # its veth may still carry traffic
    await a.driver.leave(net, web, None)  # a retry finishes the job
    assert on(a.guard, net) == {}


async def test_a_failed_overlay_join_unguards_the_port(hosts):
    a, b = hosts
    assert a.guard is not None and a.ctl is not None
    net = await overlay(a, b)
    a.kernel.fail("add_veth")
    with pytest.raises(Exception):  # noqa: B017,PT011 -- whichever error the engine reports
        await a.run("web", "ov")
    tried = [arg for call, arg in a.guard.calls if call == "add_port"]
    assert any(isinstance(g, PortGuard) and g.network == net.id for g in tried)  # the overlay's join failed
    assert on(a.guard, net) == {}


async def test_a_restart_guards_both_drivers_ports_and_drops_stale_ones(hosts):
    a, b = hosts
    assert a.ctl is not None and a.guard is not None
    onet = await overlay(a, b)
    await a.ctl.create_network(NetworkSpec(name="local"))
    web = await a.run("web", "ov")
    dave = await a.run("dave", "local")
    bnet = a.ctl._state.networks[dave.network_id]
    gone = port_guard(bnet, endpoint(9, bnet))  # a port the previous run never unguarded
    a.guard.ports[gone.owner] = gone
    await a.stop()
    await a.start()
    assert a.guard is not None
    assert on(a.guard, onet) == {web.id: port_guard(onet, web)}
    assert on(a.guard, bnet) == {dave.id: port_guard(bnet, dave)}
    gateway = [g for g in a.guard.ports.values() if g.network not in (onet.id, bnet.id)]
    assert len(gateway) == 1 and gone.owner not in a.guard.ports  # web's cnm_gwbridge port stays
    assert [c for c, _ in a.guard.calls].count("sync") == 2  # one per driver, installed once


def drivers(kernel: FakeKernel, guard: FakeSpoofGuard) -> tuple[BridgeDriver, OverlayDriver]:
    # the overlay driver without a cluster still restores its ports' guards
    return BridgeDriver(kernel, RecordingFirewall(), guard=guard), OverlayDriver(guard=guard)


BNET = network()
ONET = network("c3" * 32, name="ov", subnet="10.30.0.0/24", driver="overlay")
BEP, OEP, STALE = endpoint(2, BNET), endpoint(3, ONET), endpoint(4, BNET)


@pytest.mark.parametrize("first", ["bridge", "overlay"])
async def test_at_start_up_nothing_is_dropped_until_both_drivers_restored(first):
    guard = FakeSpoofGuard(scopes=SCOPES, is_setup=True)
    bridge, ov = drivers(FakeKernel(), guard)
    previous = {ep.id: port_guard(net, ep) for net, ep in ((BNET, BEP), (ONET, OEP), (BNET, STALE))}
    guard.ports = dict(previous)  # what the last run left in the kernel
    restores = {"bridge": lambda: bridge.restore([BNET], [BEP]), "overlay": lambda: ov.restore([ONET], [OEP])}
    await restores[first]()
    assert guard.ports == previous  # the other driver has not said which ports are its own
    await restores["overlay" if first == "bridge" else "bridge"]()
    assert guard.ports == {BEP.id: previous[BEP.id], OEP.id: previous[OEP.id]}


async def test_a_bridge_restore_keeps_overlay_guards_and_vice_versa():
    guard = FakeSpoofGuard(scopes=SCOPES, is_setup=True)
    bridge, ov = drivers(FakeKernel(), guard)
    await bridge.restore([BNET], [BEP])
    await ov.restore([ONET], [OEP])
    assert set(guard.ports) == {BEP.id, OEP.id}
    await bridge.restore([BNET], [])  # the bridge's endpoint is gone: only its guard goes
    assert set(guard.ports) == {OEP.id}
    await bridge.restore([BNET], [BEP])
    assert set(guard.ports) == {BEP.id, OEP.id}
    await ov.restore([ONET], [])  # and the other way round
    assert set(guard.ports) == {BEP.id}
    # a port guarded since (a join) is kept by either driver's restore
    late = port_guard(ONET, endpoint(5, ONET))
    await guard.add_port(late)
    await bridge.restore([BNET], [BEP])
    assert set(guard.ports) == {BEP.id, late.owner}


async def test_with_one_scope_declared_a_scoped_sync_applies_at_once():
    guard = FakeSpoofGuard(is_setup=True)  # a guard built for one driver waits for nobody
    bridge, _ = drivers(FakeKernel(), guard)
    guard.ports = {STALE.id: port_guard(BNET, STALE)}
    await bridge.restore([BNET], [BEP])
    assert set(guard.ports) == {BEP.id}
