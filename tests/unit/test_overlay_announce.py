"""Remote endpoints announced into the local bridge: when a host programs a remote
endpoint's neighbour entry on its VXLAN device it also sends a gratuitous ARP for it on
the network's bridge (so a local container whose ARP request left before the proxy could
answer is completed at once, not after retrans_time); an entry already programmed is not
announced again, and a failed announce is logged, not fatal."""

from __future__ import annotations

import logging
from ipaddress import IPv4Address

import pytest
from overlay_hosts import Host, two_hosts, until

from cnm.drivers.overlay import bridge_of, vxlan_of
from cnm.kernel.api import NeighEntry
from cnm.model.network import NetworkSpec


@pytest.fixture
async def hosts(tmp_path):
    async with two_hosts(tmp_path) as pair:
        yield pair


async def shared_network(a: Host, b: Host):
    assert a.ctl is not None and b.ctl is not None
    net = await a.ctl.create_network(NetworkSpec(name="ov", driver="overlay", attachable=True))
    await until(lambda: net.id in b.ctl._state.networks)
    return net


def neigh_of(ep) -> NeighEntry:
    assert ep.address is not None
    return NeighEntry(ep.address.ip, ep.mac)


async def test_each_new_remote_endpoint_is_announced_once_on_the_bridge(hosts):
    a, b = hosts
    net = await shared_network(a, b)
    await a.run("web", "ov")
    db = await b.run("db", "ov")
    await until(lambda: a.neigh(net.id) == {neigh_of(db)})
    assert a.kernel.announced == [(bridge_of(net.id), neigh_of(db))]
    assert f"arping -U -c 1 -I {bridge_of(net.id)} -s {db.address.ip} {db.address.ip}  # from {db.mac}" in (
        a.kernel.commands
    )
    cache = await b.run("cache", "ov")
    await until(lambda: a.neigh(net.id) == {neigh_of(db), neigh_of(cache)})
    assert a.kernel.announced == [(bridge_of(net.id), neigh_of(db)), (bridge_of(net.id), neigh_of(cache))]
    # programming again with nothing changed announces nothing
    assert a.driver is not None
    assert a.driver._cluster is not None
    async with a.driver._lock:
        await a.driver._program(a.kernel, a.driver._cluster, net.id)
    assert len(a.kernel.announced) == 2
    # an entry put back (deleted by hand) is announced again
    await a.kernel.delete_neigh(vxlan_of(net.id), db.address.ip)
    a.driver._mark(net.id)
    await until(lambda: len(a.kernel.announced) == 3)
    assert a.kernel.announced[-1] == (bridge_of(net.id), neigh_of(db))


async def test_a_failed_announce_is_logged_and_the_entries_stay(hosts, caplog):
    a, b = hosts
    net = await shared_network(a, b)
    await a.run("web", "ov")
    a.kernel.fail("announce")
    with caplog.at_level(logging.WARNING, logger="cnm"):
        db = await b.run("db", "ov")
        await until(lambda: a.neigh(net.id) == {neigh_of(db)})
        await until(lambda: "not announced: injected failure in announce" in caplog.text)
    assert a.kernel.announced == [] and a.neigh(net.id) == {neigh_of(db)}
    assert a.fdb(net.id) and IPv4Address(b.address) in {e.dst for e in a.fdb(net.id)}
