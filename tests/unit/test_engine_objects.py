"""libnetwork's Network, Endpoint and Sandbox as the engine's own classes: their
lifecycles and locks over fakes, and the shape of the engine (one job per module)."""

from __future__ import annotations

import ast
import asyncio
from contextlib import AsyncExitStack
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from test_engine import World, netns_paths, run

from cnm.engine.endpoint import Endpoint
from cnm.engine.network import Network
from cnm.engine.sandbox import Sandbox
from cnm.errors import Forbidden
from cnm.model.container import ContainerConfig
from cnm.model.endpoint import EndpointRequest
from cnm.model.network import IpamConfig, NetworkSpec
from cnm.model.network_mode import NetworkMode
from cnm.store import codec
from cnm.store.api import Check, Put

SRC = Path(__file__).resolve().parents[2] / "src" / "cnm"
MAX_LINES = 400


@pytest.fixture
def world(tmp_path) -> World:
    return World(tmp_path)


# -- shape --------------------------------------------------------------------------------


def test_the_three_objects_are_engine_classes() -> None:
    for module, cls in (("network", Network), ("endpoint", Endpoint), ("sandbox", Sandbox)):
        assert cls.__module__ == f"cnm.engine.{module}"
        assert cls.__name__ == module.capitalize()


@pytest.mark.parametrize("path", sorted((SRC / "engine").glob("*.py")), ids=lambda p: p.name)
def test_no_engine_module_over_400_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines: split it by job"


def test_network_mode_text_is_read_only_by_the_model() -> None:
    """``container:``, ``host`` and ``none`` as modes are NetworkMode's business: no other
    module of src (the CLI, which only speaks HTTP, aside) looks for the text."""
    offenders = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("cli/") or rel == "model/network_mode.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value == "container:":
                offenders.append(f"{rel}:{node.lineno}")
            if isinstance(node, ast.Compare) and any(
                isinstance(n, ast.Attribute) and n.attr == "network_mode"
                for n in (node.left, *node.comparators)
            ):
                offenders.append(f"{rel}:{node.lineno} compares network_mode")
    assert not offenders


# -- Network ------------------------------------------------------------------------------


async def test_network_create_and_delete(world) -> None:
    ctl = await world.controller()
    svc = ctl._svc
    spec = NetworkSpec(name="objs", ipam=(IpamConfig(subnet=IPv4Network("10.77.0.0/24")),))
    network = await Network.create(svc, spec)
    assert svc.state.networks[network.id] == network.record
    assert network.id in svc.ipam.pools()
    assert world.kernel.link(network.record.bridge_name) is not None
    await network.delete()
    assert network.id not in svc.state.networks and network.id not in svc.ipam.pools()
    assert world.kernel.link(network.record.bridge_name) is None


async def test_network_delete_is_refused_while_endpoints_remain(world) -> None:
    ctl = await world.controller()
    await ctl.create_network(NetworkSpec(name="busy"))
    await run(ctl, "web", network_mode=NetworkMode.parse("busy"))
    network = Network(ctl._svc, ctl.find_network("busy"))
    with pytest.raises(Forbidden, match="has active endpoints"):
        await network.delete()
    assert network.id in ctl._svc.state.networks


async def test_an_exclusive_network_hold_keeps_endpoints_out(world) -> None:
    """The Network's lock: a connect (an endpoint change, shared) waits while the network
    is held exclusively, and goes ahead once it is released."""
    ctl = await world.controller()
    await ctl.create_network(NetworkSpec(name="locked"))
    await run(ctl, "web")
    network = Network(ctl._svc, ctl.find_network("locked"))
    async with network.hold(exclusive=True):
        connect = asyncio.ensure_future(ctl.connect("locked", "web", EndpointRequest()))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not connect.done() and not network.endpoints()
    await connect
    assert [ep.container_id for ep in network.endpoints()] == [ctl.find_container("web").id]


# -- Endpoint -----------------------------------------------------------------------------


async def test_endpoint_lifecycle(world) -> None:
    """create allocates the address, join puts it in the sandbox, remove (leave + delete)
    takes it out and gives the address back."""
    ctl = await world.controller()
    svc = ctl._svc
    await ctl.create_network(
        NetworkSpec(name="epnet", ipam=(IpamConfig(subnet=IPv4Network("10.78.0.0/24")),))
    )
    cid = await run(ctl, "web", network_mode=NetworkMode.parse("none"))
    container = ctl.find_container(cid)
    sandbox = Sandbox.of(svc, container)
    assert sandbox is not None
    network = ctl.find_network("epnet")
    async with AsyncExitStack() as stack:
        ep = await Endpoint.create(
            svc, stack, network, container, sandbox.record, EndpointRequest(), siblings=[], gateway_free=True
        )
        assert ep.record.address is not None and svc.ipam.owners(network.id)[ep.record.address.ip] == ep.id
        assert ep.record.default_route and ep.record.ifname == "eth0"
        await ep.join(stack, sandbox.record)
        assert world.kernel.link("eth0", sandbox.record.key) is not None
        stack.pop_all()
    await svc.state.commit(put=[ep.record])
    assert await ep.remove(sandbox.record) == []
    assert world.kernel.link("eth0", sandbox.record.key) is None
    assert ep.record.address.ip not in svc.ipam.owners(network.id)
    assert ep.id not in svc.state.endpoints


async def test_endpoint_create_is_undone_with_its_stack(world) -> None:
    ctl = await world.controller()
    svc = ctl._svc
    await ctl.create_network(NetworkSpec(name="undo", ipam=(IpamConfig(subnet=IPv4Network("10.79.0.0/24")),)))
    container = ctl.find_container(await run(ctl, "web", network_mode=NetworkMode.parse("none")))
    sandbox = Sandbox.of(svc, container)
    network = ctl.find_network("undo")
    before = dict(svc.ipam.owners(network.id))
    async with AsyncExitStack() as stack:
        ep = await Endpoint.create(
            svc, stack, network, container, sandbox.record, EndpointRequest(), siblings=[], gateway_free=True
        )
        await ep.join(stack, sandbox.record)
    assert dict(svc.ipam.owners(network.id)) == before
    assert world.kernel.link("eth0", sandbox.record.key) is None


# -- Sandbox ------------------------------------------------------------------------------


async def test_a_container_has_a_sandbox_and_container_mode_shares_it(world) -> None:
    ctl = await world.controller()
    svc = ctl._svc
    web = ctl.find_container(await run(ctl, "web"))
    side = ctl.find_container(await run(ctl, "side", network_mode=NetworkMode.parse("container:web")))
    own = Sandbox.of(svc, web)
    assert own is not None and own.record.id == web.sandbox_id and own.netns in netns_paths(world.kernel)
    assert Sandbox.of(svc, side) is None and side.sandbox_id == ""
    shared = Sandbox.shared(svc, "web")
    assert shared.record == own.record and shared.files == own.files


async def test_sandbox_gateway_fails_over_in_connect_order(world) -> None:
    ctl = await world.controller()
    svc = ctl._svc
    for name, subnet in (("one", "10.81.0.0/24"), ("two", "10.82.0.0/24"), ("three", "10.83.0.0/24")):
        await ctl.create_network(NetworkSpec(name=name, ipam=(IpamConfig(subnet=IPv4Network(subnet)),)))
    cid = await run(ctl, "web", network_mode=NetworkMode.parse("one"))
    await ctl.connect("two", "web", EndpointRequest())
    await ctl.connect("three", "web", EndpointRequest())
    sandbox = Sandbox.of(svc, ctl.find_container(cid))

    def gateway() -> str:
        (ep,) = [e for e in sandbox.endpoints() if e.default_route]
        return svc.state.networks[ep.network_id].name

    assert gateway() == "one"
    await ctl.disconnect("one", "web")
    assert gateway() == "two"
    await ctl.disconnect("two", "web")
    assert gateway() == "three"


async def test_connect_and_disconnect_each_write_the_records_in_one_transaction(world) -> None:
    """What one ``network connect`` / ``disconnect`` of a running container changes in the
    store (the endpoint, the container's networks, the address IPAM claims or frees) is
    one commit."""
    ctl = await world.controller()
    await ctl.create_network(NetworkSpec(name="side", ipam=(IpamConfig(subnet=IPv4Network("10.85.0.0/24")),)))
    cid = await run(ctl, "web")
    commits: list[list[tuple[str, str]]] = []
    real = world.store.commit

    async def commit(ops, checks=()):
        commits.append([(type(op).__name__, op.key.split("/")[0]) for op in ops])
        return await real(ops, checks)

    world.store.commit = commit
    await ctl.connect("side", "web", EndpointRequest())
    assert commits == [[("Put", "endpoint"), ("Put", "container"), ("Put", "ipam")]]
    side = ctl.find_network("side").id
    (ep,) = [e for e in ctl._svc.state.endpoints_of_container(cid) if e.network_id == side]
    assert ctl._svc.ipam.owners(side)[ep.address.ip] == ep.id
    assert "side" in ctl.find_container(cid).config.networks
    commits.clear()
    await ctl.disconnect("side", "web")
    assert commits == [[("Put", "container"), ("Delete", "endpoint"), ("Delete", "ipam")]]
    container = ctl.find_container(cid)
    assert "side" not in container.config.networks
    assert [ctl.find_network(e.network_id).name for e in ctl._svc.state.endpoints_of_container(cid)] == [
        "bridge"
    ]
    assert ctl._svc.ipam.owners(ctl.find_network("side").id) == {IPv4Network("10.85.0.0/24")[1]: "gateway"}


async def test_a_connect_whose_address_another_daemon_claimed_first_starts_again(world) -> None:
    """The address is claimed in the connect's own transaction, after the kernel work: if
    another daemon sharing the store claimed it meanwhile, that transaction fails, the
    work is undone and the connect starts again with the next address."""
    ctl = await world.controller()
    await ctl.create_network(NetworkSpec(name="side", ipam=(IpamConfig(subnet=IPv4Network("10.85.0.0/24")),)))
    cid = await run(ctl, "web")
    side = ctl.find_network("side").id
    real = world.store.commit
    beaten: list[str] = []

    async def commit(ops, checks=()):
        claimed = [op.key for op in ops if op.key.startswith("ipam/address/")]
        if claimed and not beaten:  # another daemon's claim of the same address lands first
            beaten.append(claimed[0])
            await real([Put(claimed[0], {"owner": "other-daemon"})], [Check(claimed[0], 0)])
        return await real(ops, checks)

    world.store.commit = commit
    await ctl.connect("side", "web", EndpointRequest())
    assert beaten == ["ipam/address/" + side + "/10.85.0.2"]
    (ep,) = [e for e in ctl._svc.state.endpoints_of_container(cid) if e.network_id == side]
    assert ep.address.ip == IPv4Address("10.85.0.3")
    owners = ctl._svc.ipam.owners(side)
    assert owners[IPv4Address("10.85.0.2")] == "other-daemon" and owners[ep.address.ip] == ep.id
    netns = Sandbox.of(ctl._svc, ctl.find_container(cid)).netns
    assert sorted(world.kernel.namespaces[netns]) == ["eth0", "eth1", "lo"]  # the first try's veth went
    stored = [e.doc["network_id"] for e in (await world.store.list("endpoint/")).entries]
    assert stored.count(side) == 1 and "side" in ctl.find_container(cid).config.networks


async def test_sandbox_destroy_leaves_nothing(world) -> None:
    ctl = await world.controller()
    svc = ctl._svc
    await ctl.create_network(NetworkSpec(name="gone", ipam=(IpamConfig(subnet=IPv4Network("10.84.0.0/24")),)))
    container = ctl.find_container(await run(ctl, "web", network_mode=NetworkMode.parse("gone")))
    sandbox = Sandbox.of(svc, container)
    network = ctl.find_network("gone")
    assert await sandbox.destroy() == []
    assert sandbox.netns not in netns_paths(world.kernel)
    assert not svc.state.endpoints_of_container(container.id) and svc.state.sandbox_of(container.id) is None
    assert all(
        owner in ("gateway",) or owner.startswith("aux:") for owner in svc.ipam.owners(network.id).values()
    )
    assert await sandbox.destroy() == []  # idempotent


# -- records of v0.1.0 --------------------------------------------------------------------


async def test_a_v010_container_record_loads_and_starts(world) -> None:
    """v0.1.0 stored ``network_mode`` as Docker's text: such a record loads with a typed
    mode and starts on the network the text names."""
    ctl = await world.controller()
    await ctl.create_network(NetworkSpec(name="old", ipam=(IpamConfig(subnet=IPv4Network("10.85.0.0/24")),)))
    created, _ = await ctl.create_container(
        "web", ContainerConfig(image="busybox", network_mode=NetworkMode.parse("old"))
    )
    await ctl.create_container(
        "side", ContainerConfig(image="busybox", network_mode=NetworkMode.parse("container:web"))
    )
    for container in ctl.containers():
        doc = codec.encode(container)
        doc["config"]["network_mode"] = str(container.config.network_mode)  # as v0.1.0 wrote it
        await world.store.put(f"container/{container.id}", doc)
    ctl = await world.controller()  # a restart reads the records again
    web, side = ctl.find_container("web"), ctl.find_container("side")
    assert web.config.network_mode == NetworkMode("network", "old")
    assert side.config.network_mode == NetworkMode("container", "web")
    await ctl.start_container("web")
    await ctl.start_container("side")
    assert [net.name for net, _ in ctl.container_endpoints(created.id)] == ["old"]
    assert ctl.find_container("side").running and not ctl.container_endpoints(ctl.find_container("side").id)
    stored = (await world.store.get(f"container/{web.id}")).doc
    assert stored["config"]["network_mode"] == {"kind": "network", "ref": "old"}  # written back typed
