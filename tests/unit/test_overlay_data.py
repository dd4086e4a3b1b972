"""The overlay data plane on fake kernels: two engines (two hosts), each with its own local
store and FakeKernel, sharing one MemoryStore as the cluster store.  A host's first
endpoint on an overlay network makes its bridge and VXLAN device, the last leave removes
them; each endpoint is recorded in the cluster store with its node and VTEP; every other
host with an endpoint on the network programs its MAC and address on its VXLAN device,
and removes them when it goes; a restart puts back what is missing and removes what is
stale, in the kernel and in the cluster store."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address

import pytest
from overlay_hosts import Host, two_hosts, until

from cnm.drivers.overlay import ClusterLink, OverlayDriver, bridge_of, vxlan_of
from cnm.errors import Unavailable
from cnm.kernel.api import FdbEntry, NeighEntry
from cnm.kernel.fake import HOST
from cnm.model.container import ContainerConfig
from cnm.model.endpoint import EndpointRecord, EndpointRequest
from cnm.model.network import NetworkSpec
from cnm.model.network_mode import NetworkMode


@pytest.fixture
async def hosts(tmp_path):
    async with two_hosts(tmp_path) as pair:
        yield pair


async def shared_network(a: Host, b: Host, name: str = "ov"):
    assert a.ctl is not None and b.ctl is not None
    net = await a.ctl.create_network(NetworkSpec(name=name, driver="overlay", attachable=True))
    await until(lambda: net.id in b.ctl._state.networks)
    return net


def entries_of(host: Host, ep: EndpointRecord) -> tuple[FdbEntry, NeighEntry]:
    assert ep.address is not None
    return FdbEntry(ep.mac, IPv4Address(host.address)), NeighEntry(ep.address.ip, ep.mac)


async def test_first_join_makes_the_bridge_and_vxlan_device_and_records_the_endpoint(hosts):
    a, b = hosts
    net = await shared_network(a, b)
    assert a.link(bridge_of(net.id)) is None  # nothing before the first join
    ep = await a.run("web", "ov", aliases=("www",))
    bridge, vxlan = a.link(bridge_of(net.id)), a.link(vxlan_of(net.id))
    assert bridge.kind == "bridge" and bridge.addresses == [] and bridge.owner == net.id
    spec = vxlan.vxlan
    assert (spec.vni, spec.local, spec.port, spec.mtu, vxlan.master) == (
        4096,
        IPv4Address("198.51.100.1"),
        4789,
        1450,
        bridge.index,
    )
    veth = a.link(ep.host_ifname)
    assert veth.master == bridge.index and veth.mtu == 1450
    assert ep.address is not None and ep.mac == "02:42:" + ":".join(f"{x:02x}" for x in ep.address.ip.packed)
    assert ep.gateway is None and not ep.default_route  # the overlay's gateway is nobody's
    doc = (await a.cluster_store.get(f"endpoint/{ep.id}")).doc
    assert (doc["node"], doc["vtep"], doc["mac"], doc["address"], doc["name"], doc["aliases"]) == (
        "h1",
        "198.51.100.1",
        ep.mac,
        str(ep.address),
        "web",
        ["www"],
    )
    assert b.link(bridge_of(net.id)) is None  # h2 has no endpoint: no data plane


async def test_remote_endpoints_are_programmed_both_ways_and_removed_when_they_go(hosts):
    a, b = hosts
    net = await shared_network(a, b)
    web = await a.run("web", "ov")
    db = await b.run("db", "ov")
    fdb_db, neigh_db = entries_of(b, db)
    fdb_web, neigh_web = entries_of(a, web)
    await until(lambda: a.fdb(net.id) == {fdb_db} and a.neigh(net.id) == {neigh_db})
    await until(lambda: b.fdb(net.id) == {fdb_web} and b.neigh(net.id) == {neigh_web})
    # a second container on h2: h1 gets it too; disconnecting it takes it away again
    cache = await b.run("cache", "ov")
    fdb_cache, neigh_cache = entries_of(b, cache)
    await until(lambda: a.fdb(net.id) == {fdb_db, fdb_cache})
    assert b.ctl is not None
    await b.ctl.disconnect("ov", "cache")
    await until(lambda: a.fdb(net.id) == {fdb_db} and a.neigh(net.id) == {neigh_db})
    # the last one on h2 goes: h2's devices go, h1 forgets it
    await b.ctl.remove_container("db", force=True)
    await until(lambda: a.fdb(net.id) == set() and a.neigh(net.id) == set())
    assert b.link(bridge_of(net.id)) is None and b.link(vxlan_of(net.id)) is None
    assert [e.key for e in (await b.cluster_store.list("endpoint/")).entries] == [f"endpoint/{web.id}"]


async def test_a_host_joining_later_learns_the_endpoints_already_there(hosts):
    a, b = hosts
    net = await shared_network(a, b)
    web = await a.run("web", "ov")
    db = await b.run("db", "ov")
    assert b.fdb(net.id) == {entries_of(a, web)[0]}  # programmed by the join itself
    await until(lambda: a.fdb(net.id) == {entries_of(b, db)[0]})


async def test_entries_nobody_records_are_removed_and_missing_ones_put_back(hosts):
    a, b = hosts
    net = await shared_network(a, b)
    await a.run("web", "ov")
    db = await b.run("db", "ov")
    await until(lambda: a.fdb(net.id) == {entries_of(b, db)[0]})
    stray = FdbEntry("02:42:0a:00:00:63", IPv4Address("198.51.100.9"))
    await a.kernel.replace_fdb(vxlan_of(net.id), stray)
    await a.kernel.delete_neigh(vxlan_of(net.id), db.address.ip)
    assert a.driver is not None
    a.driver._mark(net.id)  # what any change of the network's records, or a relist, does
    await until(lambda: a.fdb(net.id) == {entries_of(b, db)[0]} and a.neigh(net.id) == {entries_of(b, db)[1]})


async def test_restart_puts_back_missing_devices_and_records_and_removes_stale_ones(hosts):
    a, b = hosts
    net = await shared_network(a, b)
    web = await a.run("web", "ov")
    db = await b.run("db", "ov")
    await until(lambda: a.fdb(net.id) == {entries_of(b, db)[0]})
    await a.stop()
    # meanwhile: h1's VXLAN device deleted by hand, its record lost with its lease, a stale
    # record of h1 left by a crash, and a stale data plane of a network h1 no longer uses
    await a.kernel.delete_link(vxlan_of(net.id))
    await a.cluster_store.delete(f"endpoint/{web.id}")
    await a.cluster_store.put("endpoint/" + "9" * 64, {"network_id": net.id, "node": "h1"})
    gone = "8" * 64
    await a.kernel.ensure_bridge(bridge_of(gone), owner=gone, mtu=1450, address=None)
    await a.start()
    vxlan = a.link(vxlan_of(net.id))
    assert vxlan is not None and vxlan.master == a.link(bridge_of(net.id)).index
    assert a.link(web.host_ifname).master == a.link(bridge_of(net.id)).index  # the container kept its port
    assert a.link(bridge_of(gone)) is None
    assert await a.cluster_store.get(f"endpoint/{web.id}") is not None
    assert await a.cluster_store.get("endpoint/" + "9" * 64) is None
    await until(lambda: a.fdb(net.id) == {entries_of(b, db)[0]} and a.neigh(net.id) == {entries_of(b, db)[1]})
    await until(lambda: b.fdb(net.id) == {entries_of(a, web)[0]})


async def test_a_record_lost_with_the_lease_is_put_back(hosts):
    a, b = hosts
    net = await shared_network(a, b)
    web = await a.run("web", "ov")
    await a.cluster_store.delete(f"endpoint/{web.id}")  # as when the lease ran out and was renewed
    for _ in range(500):
        if (entry := await a.cluster_store.get(f"endpoint/{web.id}")) is not None:
            break
        await asyncio.sleep(0.01)
    assert entry is not None and entry.doc["node"] == "h1" and entry.doc["network_id"] == net.id


async def test_without_a_cluster_store_a_join_is_refused_naming_the_flag(hosts):
    a, _ = hosts
    net = await shared_network(*hosts)
    web = await a.run("web", "ov")
    sandbox = next(iter(a.ctl._state.sandboxes.values()))
    with pytest.raises(Unavailable, match="without --cluster-store"):
        await OverlayDriver().join(net, web, sandbox)


async def test_names_of_other_hosts_endpoints_resolve_on_the_shared_network(hosts):
    a, b = hosts
    await shared_network(a, b)
    await b.ctl.create_network(NetworkSpec(name="ov2", driver="overlay", attachable=True))
    web = await a.run("web", "ov")
    db = await b.run("db", "ov", aliases=("database",))
    other = await b.run("other", "ov2")
    sandbox = a.ctl._state.sandbox_of(web.container_id).id
    await until(lambda: a.names.lookup_a(sandbox, "database") == [db.address.ip])
    assert a.names.lookup_a(sandbox, "db") == [db.address.ip]
    assert a.names.lookup_a(sandbox, db.container_id[:12]) == [db.address.ip]
    assert a.names.lookup_ptr(sandbox, db.address.ip) == "db.ov"
    assert not a.names.lookup_a(sandbox, "other")  # not on a network web is on
    assert other.address is not None
    await b.ctl.remove_container("db", force=True)
    await until(lambda: not a.names.lookup_a(sandbox, "database"))
    # after a restart, the names come back with the first listing
    cache = await b.run("cache", "ov")
    await a.stop()
    await a.start()
    sandbox = a.ctl._state.sandbox_of(web.container_id).id
    assert a.names.lookup_a(sandbox, "cache") == [cache.address.ip]


async def test_an_overlay_container_routes_out_through_cnm_gwbridge(hosts):
    a, b = hosts
    net = await shared_network(a, b)
    gw = next(n for n in a.ctl.networks() if n.name == "cnm_gwbridge")
    assert (gw.scope, gw.bridge_name, gw.icc, gw.masquerade) == ("local", "cnm_gwbridge", False, True)
    assert await a.cluster_store.get("localname/cnm_gwbridge/h1") is None  # this host's own
    web = await a.run("web", "ov")
    eps = {ep.network_id: ep for ep in a.ctl._state.endpoints_of_container(web.container_id)}
    assert set(eps) == {net.id, gw.id}
    assert (eps[net.id].ifname, eps[net.id].default_route) == ("eth0", False)
    assert (eps[gw.id].ifname, eps[gw.id].default_route, eps[gw.id].gateway) == ("eth1", True, gw.gateway)
    sandbox = a.ctl._state.sandbox_of(web.container_id)
    routes = [
        c for c in a.kernel.commands if c.startswith(f"nsenter --net={sandbox.key} ip route add default")
    ]
    assert routes == [f"nsenter --net={sandbox.key} ip route add default via {gw.gateway} dev eth1"]
    # the name answers with the overlay address only (gwbridge endpoints are anonymous)
    await b.run("db", "ov")
    dbbox = b.ctl._state.sandbox_of(b.endpoint("db").container_id).id
    await until(lambda: b.names.lookup_a(dbbox, "web") == [web.address.ip])
    # leaving the overlay takes the gwbridge endpoint with it; connecting brings it back
    await a.ctl.disconnect("ov", "web")
    assert [ep.network_id for ep in a.ctl._state.endpoints_of_container(web.container_id)] == []
    await a.ctl.connect("ov", "web", EndpointRequest())
    eps = {ep.network_id: ep for ep in a.ctl._state.endpoints_of_container(web.container_id)}
    assert set(eps) == {net.id, gw.id} and eps[gw.id].default_route
    stored = {e.key for e in (await a.store.list("endpoint/")).entries}
    assert {f"endpoint/{ep.id}" for ep in eps.values()} <= stored  # both recorded


async def test_an_encrypted_network_is_refused_without_a_tunnel_rather_than_sent_in_the_clear(hosts):
    a, b = hosts
    await a.ctl.create_network(
        NetworkSpec(name="sec", driver="overlay", attachable=True, options={"encrypted": ""})
    )
    container, _ = await a.ctl.create_container(
        "web", ContainerConfig(image="busybox", network_mode=NetworkMode.parse("sec"))
    )
    with pytest.raises(Unavailable, match="it is encrypted, and this cnmd has no WireGuard tunnel"):
        await a.ctl.start_container(container.id)
    assert not [name for name in a.kernel.namespaces[HOST] if name.startswith(("ov-", "vx-"))]
    assert (await a.cluster_store.list("endpoint/")).entries == []


async def test_an_endpoint_is_never_recorded_without_the_nodes_lease(hosts):
    a, b = hosts
    net = await shared_network(a, b)
    assert a.driver is not None
    a.driver._cluster = ClusterLink(a.cluster_store, "h1", IPv4Address(a.address), lambda: 0)
    container, _ = await a.ctl.create_container(
        "web", ContainerConfig(image="busybox", network_mode=NetworkMode.parse("ov"))
    )
    with pytest.raises(Unavailable, match="this node has no lease"):
        await a.ctl.start_container(container.id)
    assert (await a.cluster_store.list("endpoint/")).entries == []
    assert a.link(bridge_of(net.id)) is None and a.link(vxlan_of(net.id)) is None
