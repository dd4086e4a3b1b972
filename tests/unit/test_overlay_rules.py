"""Small rules of global networks, on two fake hosts sharing one cluster store: ``Peers``
names the nodes with an endpoint on the network; a join racing another host's ``network
rm`` is refused and leaves nothing; ``cnm_gwbridge`` is cnmd's name, never a user's."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address

import pytest
from overlay_hosts import Host, standalone_controller, two_hosts, until

from cnm.drivers.overlay import RETRY_S, ClusterLink, bridge_of, vxlan_of
from cnm.engine.cluster import WITHDRAW_RETRY_S
from cnm.errors import Forbidden, NotFound, Unavailable
from cnm.model.container import ContainerConfig
from cnm.model.network import GWBRIDGE_NAME, NetworkSpec
from cnm.model.network_mode import NetworkMode
from cnm.store.memory import MemoryStore


@pytest.fixture
async def hosts(tmp_path):
    async with two_hosts(tmp_path) as pair:
        yield pair


async def shared_network(a: Host, b: Host, name: str = "ov"):
    net = await a.ctl.create_network(NetworkSpec(name=name, driver="overlay", attachable=True))
    await until(lambda: net.id in b.ctl._state.networks)
    return net


def peers(host: Host, network) -> list[tuple[str, str]]:
    return [(n.name, n.address) for n in host.ctl.network_peers(network)]


async def test_peers_are_the_nodes_with_an_endpoint_on_the_network(hosts):
    a, b = hosts
    net = await shared_network(a, b)
    assert peers(a, net) == [] and peers(b, net) == []  # two live nodes, neither on it
    await a.run("web", "ov")
    await until(lambda: peers(b, net) == [("h1", "198.51.100.1")])
    assert peers(a, net) == [("h1", "198.51.100.1")]
    await b.run("db", "ov")
    both = [("h1", "198.51.100.1"), ("h2", "198.51.100.2")]
    await until(lambda: peers(a, net) == both and peers(b, net) == both)
    await a.ctl.remove_container("web", force=True)
    await until(
        lambda: peers(a, net) == [("h2", "198.51.100.2")] and peers(b, net) == [("h2", "198.51.100.2")]
    )
    local = await a.ctl.create_network(NetworkSpec(name="loc"))
    assert a.ctl.network_peers(local) is None  # a local network has none


async def test_a_global_networks_endpoints_are_every_hosts(hosts):
    a, b = hosts
    net = await shared_network(a, b)
    web = await a.run("web", "ov")
    db = await b.run("db", "ov")
    for host in (a, b):
        await until(lambda host=host: {e.name for e in host.ctl.network_endpoints(net.id)} == {"web", "db"})
    assert {e.id for e in a.ctl.network_endpoints(net.id)} == {web.id, db.id}


async def test_a_join_racing_a_remote_network_rm_is_refused_and_leaves_nothing(hosts):
    a, b = hosts
    net = await shared_network(a, b)
    container, _ = await b.ctl.create_container(
        "db", ContainerConfig(image="busybox", network_mode=NetworkMode.parse("ov"))
    )
    publish = b.driver._publish

    async def rm_lands_first(*args):
        # h1's rm passes its check (no endpoint anywhere yet) and commits while h2 joins
        await a.ctl.remove_network("ov")
        await publish(*args)

    b.driver._publish = rm_lands_first
    with pytest.raises(NotFound, match="network ov not found: it was removed"):
        await b.ctl.start_container(container.id)
    assert [e.key for e in (await b.cluster_store.list("endpoint/")).entries] == []
    assert b.link(bridge_of(net.id)) is None and b.link(vxlan_of(net.id)) is None
    assert b.ctl._state.endpoints_of_network(net.id) == []
    await until(lambda: net.id not in b.ctl._state.networks)
    assert await b.cluster_store.get(f"ipam/pool/{net.id}") is None


async def test_an_rm_racing_a_remote_join_is_refused_and_the_join_stays(hosts):
    a, b = hosts
    net = await shared_network(a, b)
    commit = a.ctl._svc.state.commit
    joined = []

    async def join_lands_first(*args, **kw):
        # h1's rm has checked (its mirror and the store: no endpoint); h2's join lands now
        if kw.get("delete") and not joined:
            joined.append(await b.run("db", "ov"))
        return await commit(*args, **kw)

    a.ctl._svc.state.commit = join_lands_first
    with pytest.raises(Forbidden, match='network ov has active endpoints \\(name:"db"'):
        await a.ctl.remove_network("ov")
    assert await a.cluster_store.get(f"network/{net.id}") is not None
    assert net.id in a.ctl._state.networks and net.id in b.ctl._state.networks
    db = joined[0]
    assert (await a.cluster_store.get(f"endpoint/{db.id}")).doc["node"] == "h2"
    assert b.link(vxlan_of(net.id)) is not None
    # once it leaves, the rm goes through, and the join marker goes with the network
    await b.ctl.remove_container("db", force=True)
    await until(lambda: a.ctl._state.global_endpoints.by("network_id", net.id) == [])
    await a.ctl.remove_network("ov")
    assert await a.cluster_store.get(f"joins/{net.id}") is None


async def test_nobody_may_create_a_network_named_cnm_gwbridge(hosts, tmp_path):
    a, _ = hosts
    for driver in ("bridge", "overlay"):
        with pytest.raises(Forbidden, match="network name cnm_gwbridge is reserved"):
            await a.ctl.create_network(NetworkSpec(name=GWBRIDGE_NAME, driver=driver))
    # nor on a host outside any cluster (it would become the way out once it joins one)
    ctl = standalone_controller(tmp_path)
    await ctl.start()
    try:
        with pytest.raises(Forbidden, match="reserved"):
            await ctl.create_network(NetworkSpec(name=GWBRIDGE_NAME))
        assert GWBRIDGE_NAME not in {n.name for n in ctl.networks()}
    finally:
        await ctl.close()


class AwayStore(MemoryStore):
    """A cluster store that can stop answering (``away``), as an unreachable etcd."""

    away = False

    async def commit(self, ops, checks=()):
        if self.away:
            raise Unavailable("etcd at 198.51.100.1:2379 did not answer commit within 5s")
        return await super().commit(ops, checks)


async def test_a_local_network_removed_while_etcd_is_away_frees_its_name_once_it_is_back(tmp_path):
    shared = AwayStore("global")
    a, b = Host(tmp_path, "h1", "198.51.100.1", shared), Host(tmp_path, "h2", "198.51.100.2", shared)
    await a.start()
    await b.start()
    try:
        await a.ctl.create_network(NetworkSpec(name="web"))
        assert await shared.get("localname/web/h1") is not None
        shared.away = True
        await a.ctl.remove_network("web")  # a local rm never waits for the cluster
        assert "web" not in {n.name for n in a.ctl.networks()}
        assert await shared.get("localname/web/h1") is not None  # for now
        shared.away = False
        await until(lambda: a.ctl._svc.cluster.local_nodes("web") == set())
        assert await shared.get("localname/web/h1") is None
        await until(lambda: b.ctl._svc.cluster.local_nodes("web") == set())
        await b.ctl.create_network(NetworkSpec(name="web", driver="overlay"))
    finally:
        await a.stop()
        await b.stop()


async def test_a_name_created_again_is_not_withdrawn_by_an_earlier_rm(tmp_path):
    shared = AwayStore("global")
    a = Host(tmp_path, "h1", "198.51.100.1", shared)
    await a.start()
    try:
        await a.ctl.create_network(NetworkSpec(name="web"))
        shared.away = True
        await a.ctl.remove_network("web")
        shared.away = False
        net = await a.ctl.create_network(NetworkSpec(name="web"))
        await asyncio.sleep(2 * WITHDRAW_RETRY_S + 0.5)
        assert (await shared.get("localname/web/h1")).doc == {"network": net.id}
    finally:
        await a.stop()


async def test_a_record_lost_with_a_lapsed_lease_comes_back_on_the_new_one(hosts):
    a, b = hosts
    net = await shared_network(a, b)
    store = a.cluster_store
    leases = [await store.grant(60)]
    a.driver._cluster = ClusterLink(store, "h1", IPv4Address(a.address), lambda: leases[-1])
    web = await a.run("web", "ov")
    assert (await store.get(f"endpoint/{web.id}")).lease == leases[0]
    # the lease lapses (etcd away longer than its TTL): the record goes, and the driver's
    # first tries to put it back name a lease that is gone (NotFound) until the node
    # announces itself on a new one
    await store.revoke(leases[0])
    await asyncio.sleep(2 * RETRY_S)
    assert await store.get(f"endpoint/{web.id}") is None
    leases.append(await store.grant(60))
    await until(lambda: web.id in {p.id for p in b.driver.peers()}, timeout=3 * RETRY_S + 2)
    entry = await store.get(f"endpoint/{web.id}")
    assert entry.lease == leases[1] and entry.doc["network_id"] == net.id


class FailsAtRecordStore(AwayStore):
    """Goes away (``AwayStore.away``) at the first commit that writes an endpoint record:
    etcd lost between a join's address claim and its record."""

    armed = False

    async def commit(self, ops, checks=()):
        if self.armed and any(getattr(op, "key", "").startswith("endpoint/") for op in ops):
            self.armed, self.away = False, True
        return await super().commit(ops, checks)


async def test_an_address_claimed_by_a_join_that_lost_etcd_is_freed_once_it_is_back(tmp_path):
    shared = FailsAtRecordStore("global")
    a = Host(tmp_path, "h1", "198.51.100.1", shared)
    await a.start()
    try:
        net = await a.ctl.create_network(NetworkSpec(name="ov", driver="overlay"))
        container, _ = await a.ctl.create_container(
            "web", ContainerConfig(image="busybox", network_mode=NetworkMode.parse("ov"))
        )
        ipam = a.ctl._svc.cluster.ipam
        before = dict(ipam.owners(net.id))
        shared.armed = True
        with pytest.raises(Unavailable, match="did not answer"):
            await a.ctl.start_container(container.id)
        assert [k for k in shared._data if k.startswith("endpoint/")] == []
        shared.away = False  # etcd is back: the claim the join made is undone
        await until(lambda: ipam.owners(net.id) == before, timeout=3 * WITHDRAW_RETRY_S + 2)
        # and the address is given again
        await a.ctl.start_container(container.id)
        assert a.endpoint("web").address.ip == IPv4Address("10.0.0.2")
    finally:
        await a.stop()
