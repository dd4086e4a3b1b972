"""Global-scope (overlay) networks in the engine: two engines, each with its own local store,
kernel and runtime (two hosts), sharing one MemoryStore as the cluster store.  What one
host creates the other sees through its watch; names are unique across hosts both ways
(global against global, global against any host's local networks), also when two hosts
create at once; VNIs and subnets never repeat; a network some host uses cannot be
removed; a restart's orphan sweep never frees another host's addresses."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

import pytest
from overlay_hosts import standalone_controller, two_hosts, until

from cnm.engine.cluster import FIRST_VNI, vni_of
from cnm.engine.controller import Controller
from cnm.errors import CnmError, Conflict, Forbidden, InvalidArgument, SystemFailure
from cnm.model.container import ContainerConfig
from cnm.model.endpoint import EndpointRecord
from cnm.model.network import OPT_MTU, OPT_VXLANID_LIST, IpamConfig, NetworkSpec
from cnm.model.network_mode import NetworkMode
from cnm.store import codec
from cnm.store.memory import MemoryStore


class YieldingStore(MemoryStore):
    """A cluster store whose commits take a moment (up to 2 ms, at random), as a remote
    etcd's do: two hosts' creates then really interleave between their checks and
    writes."""

    rng = random.Random(7)

    async def commit(self, ops, checks=()):
        await asyncio.sleep(self.rng.random() * 0.002)
        return await super().commit(ops, checks)


@pytest.fixture
async def hosts(tmp_path):
    async with two_hosts(tmp_path, YieldingStore("global")) as pair:
        yield pair


def overlay(name: str, **kw) -> NetworkSpec:
    return NetworkSpec(name=name, driver="overlay", **kw)


def names(ctl: Controller) -> dict[str, str]:
    """{network name: scope}."""
    return {n.name: n.scope for n in ctl.networks()}


async def outcome(awaitable) -> object:
    try:
        return await awaitable
    except CnmError as exc:
        return exc


async def test_a_network_created_on_one_host_is_seen_by_the_other_without_restart(hosts):
    a, b = hosts
    net = await a.ctl.create_network(overlay("ov", attachable=True, options={"encrypted": ""}))
    assert net.scope == "global" and net.driver == "overlay" and net.attachable
    assert net.subnet == IPv4Network("10.0.0.0/24") and net.gateway == IPv4Address("10.0.0.1")
    assert net.options == {"encrypted": "", OPT_VXLANID_LIST: str(FIRST_VNI)}
    assert a.kernel.commands == [] or all("ov" not in c for c in a.kernel.commands)  # no kernel object
    await until(lambda: "ov" in names(b.ctl))
    seen = b.ctl.find_network("ov")
    assert seen == net  # the same record, options and VNI included
    assert b.ctl.network_peers(seen) == []  # no node has an endpoint on it yet
    assert b.ctl.network_peers(b.ctl.find_network("bridge")) is None  # local: no peers
    # the cluster's pool is seen by the other host's global IPAM as well
    assert b.ctl._svc.cluster.ipam.pool(net.id).subnet == net.subnet
    # nothing of it in either local store
    assert not [k for k in a.store._data if net.id in k] and not [k for k in b.store._data if net.id in k]


async def test_rm_from_the_other_host_removes_it_everywhere(hosts):
    a, b = hosts
    net = await a.ctl.create_network(overlay("ov"))
    await until(lambda: "ov" in names(b.ctl))
    await b.ctl.remove_network("ov")
    await until(lambda: "ov" not in names(a.ctl))
    assert "ov" not in names(b.ctl)
    await until(lambda: a.ctl._svc.cluster.ipam.pool(net.id) is None)  # released after the record
    left = [k for k in a.cluster_store._data if not k.startswith(("node/", "ipam/space/"))]
    assert left == []  # record, name, VNI, pool: all gone
    # the name and the VNI can be taken again
    again = await b.ctl.create_network(overlay("ov"))
    assert vni_of(again) == FIRST_VNI


async def test_a_global_name_is_refused_to_a_second_global_network(hosts):
    a, b = hosts
    await a.ctl.create_network(overlay("ov"))
    await until(lambda: "ov" in names(b.ctl))
    before = dict(b.cluster_store._data)
    with pytest.raises(Conflict, match="network with name ov already exists"):
        await b.ctl.create_network(overlay("ov"))
    assert b.cluster_store._data.keys() == before.keys()


async def test_a_local_name_on_any_host_is_refused_to_a_global_network(hosts):
    a, b = hosts
    await b.ctl.create_network(NetworkSpec(name="web"))
    await until(lambda: a.ctl._svc.cluster.local_nodes("web") == {"h2"})
    with pytest.raises(Conflict, match="local network on node h2"):
        await a.ctl.create_network(overlay("web"))
    assert names(a.ctl).get("web") is None
    # once h2 removes its local network, the name is free for a global one
    await b.ctl.remove_network("web")
    await until(lambda: not a.ctl._svc.cluster.local_nodes("web"))
    await a.ctl.create_network(overlay("web"))


async def test_a_global_name_is_refused_to_a_local_network_on_every_host(hosts):
    a, b = hosts
    await a.ctl.create_network(overlay("ov"))
    await until(lambda: "ov" in names(b.ctl))
    for host in (a, b):
        commands = list(host.kernel.commands)
        with pytest.raises(Conflict, match="network with name ov already exists"):
            await host.ctl.create_network(NetworkSpec(name="ov"))
        assert host.kernel.commands == commands  # no bridge made


async def test_two_hosts_creating_one_global_name_at_once_one_wins(hosts):
    a, b = hosts
    first, second = await asyncio.gather(
        outcome(a.ctl.create_network(overlay("same"))), outcome(b.ctl.create_network(overlay("same")))
    )
    results = [first, second]
    assert sum(isinstance(r, Conflict) for r in results) == 1, results
    won = next(r for r in results if not isinstance(r, CnmError))
    await until(lambda: names(a.ctl).get("same") == names(b.ctl).get("same") == "global")
    assert a.ctl.find_network("same").id == b.ctl.find_network("same").id == won.id
    # the loser's pool went back: one pool in the cluster
    pools = [k for k in a.cluster_store._data if k.startswith("ipam/pool/")]
    assert pools == [f"ipam/pool/{won.id}"]


async def test_a_local_and_a_global_create_of_one_name_at_once_one_wins(hosts):
    a, b = hosts
    for round_ in range(12):
        name = f"both{round_}"
        local, global_ = await asyncio.gather(
            outcome(b.ctl.create_network(NetworkSpec(name=name))),
            outcome(a.ctl.create_network(overlay(name))),
        )
        assert sum(isinstance(r, Conflict) for r in (local, global_)) == 1, (name, local, global_)
        if isinstance(local, Conflict):  # the loser left nothing behind
            await until(lambda n=name: names(b.ctl).get(n) == "global")
            bridges = [link for link in b.kernel.namespaces["host"].values() if link.name.startswith("br-")]
            assert bridges == [], "the local create that lost kept its bridge"
        else:
            assert names(b.ctl)[name] == "local" and name not in names(a.ctl)
            assert not [k for k in a.cluster_store._data if k.startswith(("network/", "globalname/"))]
            await b.ctl.remove_network(name)  # (its bridge goes: the next round counts bridges)


async def test_parallel_creates_on_two_hosts_never_share_a_vni_or_a_subnet(hosts):
    a, b = hosts
    count = 15
    made = await asyncio.gather(
        *[a.ctl.create_network(overlay(f"a{i}")) for i in range(count)],
        *[b.ctl.create_network(overlay(f"b{i}")) for i in range(count)],
    )
    vnis = [vni_of(n) for n in made]
    subnets = [n.subnet for n in made]
    assert len(set(vnis)) == len(vnis) == 2 * count
    assert min(vnis) >= FIRST_VNI
    assert len(set(subnets)) == len(subnets)
    assert all(s.subnet_of(IPv4Network("10.0.0.0/8")) and s.prefixlen == 24 for s in subnets)
    await until(lambda: len([n for n in a.ctl.networks() if n.scope == "global"]) == 2 * count)
    await until(lambda: len([n for n in b.ctl.networks() if n.scope == "global"]) == 2 * count)
    vni_keys = sorted(int(k[4:]) for k in a.cluster_store._data if k.startswith("vni/"))
    assert vni_keys == sorted(vnis)


async def test_rm_is_refused_while_any_host_has_endpoints_on_it(hosts):
    a, b = hosts
    net = await a.ctl.create_network(overlay("ov"))
    await until(lambda: "ov" in names(b.ctl))
    # h1 has an endpoint on it (as the data plane records one: in the cluster store)
    ep = EndpointRecord(id="e" * 64, network_id=net.id, container_id="c" * 64, sandbox_id="s", name="web1")
    doc = {**codec.encode(ep), "node": "h1", "vtep": "198.51.100.1"}
    await a.cluster_store.put(f"endpoint/{ep.id}", doc)
    await until(lambda: b.ctl._state.global_endpoints.by("network_id", net.id) != [])
    with pytest.raises(Forbidden, match='network ov has active endpoints \\(name:"web1"'):
        await b.ctl.remove_network("ov")
    assert "ov" in names(a.ctl) and "ov" in names(b.ctl)
    await a.cluster_store.delete(f"endpoint/{ep.id}")
    await until(lambda: b.ctl._state.global_endpoints.by("network_id", net.id) == [])
    await b.ctl.remove_network("ov")


async def test_prune_leaves_global_networks_alone(hosts):
    a, b = hosts
    await a.ctl.create_network(overlay("ov"))
    await b.ctl.create_network(NetworkSpec(name="spare"))
    await until(lambda: "ov" in names(b.ctl))
    assert await b.ctl.prune_networks() == ["spare"]
    assert "ov" in names(a.ctl) and "ov" in names(b.ctl)


async def test_an_attach_whose_data_plane_fails_leaves_nothing(hosts):
    a, _ = hosts
    net = await a.ctl.create_network(overlay("ov", attachable=True, options={OPT_MTU: "1450"}))
    container, _ = await a.ctl.create_container(
        "web", ContainerConfig(image="busybox", network_mode=NetworkMode.parse("ov"))
    )
    a.kernel.fail("add_vxlan")
    with pytest.raises(CnmError):
        await a.ctl.start_container(container.id)
    assert not [name for name in a.kernel.namespaces[None] if name.startswith(("ov-", "vx-"))]
    assert [key async for key in _endpoint_keys(a.cluster_store)] == []
    assert a.ctl._svc.cluster.ipam.owners(net.id) == {net.gateway: "gateway"}  # address back
    assert a.ctl._state.endpoints_of_network(net.id) == []


async def test_a_restart_never_frees_another_hosts_addresses_in_a_global_pool(hosts):
    a, b = hosts
    net = await a.ctl.create_network(overlay("ov"))
    await until(lambda: "ov" in names(b.ctl))
    # h2's endpoint holds an address in the cluster's pool; h1 has no record of it
    taken = await b.ctl._svc.cluster.ipam.allocate_address(net.id, "f" * 64)
    # and h1 holds a leaked address of its own in a local network (a crash): that one goes
    local = await a.ctl.create_network(NetworkSpec(name="loc"))
    leaked = await a.ctl._svc.ipam.allocate_address(local.id, "d" * 64)
    await a.stop()
    await a.start()
    assert a.ctl._svc.cluster.ipam.owners(net.id).get(taken) == "f" * 64
    assert b.ctl._svc.cluster.ipam.owners(net.id).get(taken) == "f" * 64
    assert leaked not in a.ctl._svc.ipam.owners(local.id)


async def test_a_restart_publishes_the_local_names_the_cluster_lost(hosts):
    a, b = hosts
    net = await b.ctl.create_network(NetworkSpec(name="web"))
    await b.stop()
    await b.cluster_store.delete("localname/web/h2")  # a crash between create and publish
    await b.cluster_store.put("localname/gone/h2", {"network": "x"})  # and one between rm and unpublish
    await b.start()
    assert (await b.cluster_store.get("localname/web/h2")).doc == {"network": net.id}
    assert await b.cluster_store.get("localname/gone/h2") is None
    await until(lambda: a.ctl._svc.cluster.local_nodes("web") == {"h2"})


async def test_without_a_cluster_store_overlay_is_refused_naming_the_flag(tmp_path):
    ctl = standalone_controller(tmp_path)
    await ctl.start()
    with pytest.raises(InvalidArgument, match="need a cluster store: start cnmd with --cluster-store"):
        await ctl.create_network(overlay("ov"))
    assert "ov" not in names(ctl)
    await ctl.close()


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({OPT_VXLANID_LIST: "5000"}, "a VXLAN id of its own"),
        ({"com.docker.network.bridge.name": "br9"}, "for bridge networks, not overlay"),
        ({"com.docker.network.driver.mtu": "huge"}, "invalid MTU"),
    ],
)
async def test_bad_overlay_options_are_refused_and_change_nothing(hosts, options, why):
    a, _ = hosts
    before = sorted(a.cluster_store._data)
    with pytest.raises(InvalidArgument, match=why):
        await a.ctl.create_network(overlay("ov", options=options))
    assert sorted(a.cluster_store._data) == before


async def test_a_given_subnet_and_mtu_are_kept(hosts):
    a, b = hosts
    net = await a.ctl.create_network(
        overlay(
            "ov",
            ipam=(IpamConfig(subnet=IPv4Network("10.9.0.0/16")),),
            options={"com.docker.network.driver.mtu": "1400"},
        )
    )
    assert net.subnet == IPv4Network("10.9.0.0/16") and net.mtu == 1400
    await until(lambda: "ov" in names(b.ctl))
    # the other host cannot take an overlapping subnet for another global network
    with pytest.raises(Forbidden, match="overlaps"):
        await b.ctl.create_network(overlay("ov2", ipam=(IpamConfig(subnet=IPv4Network("10.9.3.0/24")),)))


async def test_a_local_create_that_fails_withdraws_its_name(hosts):
    _, b = hosts
    await b.ctl.create_network(
        NetworkSpec(name="one", ipam=(IpamConfig(subnet=IPv4Network("10.50.0.0/24")),))
    )
    with pytest.raises(Forbidden, match="overlaps"):
        await b.ctl.create_network(
            NetworkSpec(name="two", ipam=(IpamConfig(subnet=IPv4Network("10.50.0.0/16")),))
        )
    assert await b.cluster_store.get("localname/one/h2") is not None
    assert await b.cluster_store.get("localname/two/h2") is None


async def test_one_commit_never_spans_the_local_and_the_cluster_store(hosts):
    a, _ = hosts
    net = await a.ctl.create_network(overlay("ov"))
    local = a.ctl.find_network("bridge")
    before = (dict(a.store._data), dict(a.cluster_store._data))
    with pytest.raises(SystemFailure, match="both the local and the cluster store"):
        await a.ctl._state.commit(put=[replace(net, labels={"x": "1"}), replace(local, labels={"x": "1"})])
    assert (dict(a.store._data), dict(a.cluster_store._data)) == before


async def test_an_endpoint_record_another_version_wrote_still_counts_on_its_network(hosts):
    a, b = hosts
    net = await a.ctl.create_network(overlay("ov"))
    await until(lambda: "ov" in names(b.ctl))
    # a record this version cannot decode (a field of another type): it still holds the network
    await a.cluster_store.put("endpoint/x1", {"network_id": net.id, "name": "odd", "created_seq": "many"})
    await until(lambda: [ep.name for ep in b.ctl._state.global_endpoints.by("network_id", net.id)] == ["odd"])
    with pytest.raises(Forbidden, match='name:"odd"'):
        await b.ctl.remove_network("ov")


async def _endpoint_keys(store: MemoryStore):
    for entry in (await store.list("endpoint/")).entries:
        yield entry.key
