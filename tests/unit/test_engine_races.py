"""Races between the engine's mutations, over fakes with controlled awaits.

A ``GatedKernel`` parks chosen kernel calls on an event after they did their work, so a test
can run another mutation at exactly that await and then let the first one finish.  The
invariant every test checks: no endpoint record names a network that is gone, every
recorded endpoint has its veth, and no veth exists that no record owns.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import Awaitable

import pytest

from cnm.drivers.bridge import BridgeDriver
from cnm.drivers.host import HostDriver
from cnm.drivers.null import NullDriver
from cnm.engine.controller import Controller
from cnm.errors import CnmError, Conflict, Forbidden, NotFound
from cnm.firewall.fake import FakeFirewall
from cnm.ipam.api import DEFAULT_POOLS
from cnm.ipam.default import DefaultIpam
from cnm.kernel.api import VethSpec
from cnm.kernel.fake import HOST, FakeKernel
from cnm.model.container import ContainerConfig
from cnm.model.endpoint import EndpointRequest
from cnm.model.network import NetworkSpec
from cnm.model.network_mode import NetworkMode
from cnm.runtime.fake import FakeRuntime
from cnm.store.memory import MemoryStore


class GatedKernel(FakeKernel):
    """A FakeKernel whose ``add_veth`` (once armed) does its work, then waits on ``gate``."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None
        self.parked = asyncio.Event()

    async def add_veth(self, spec: VethSpec) -> int:
        index = await super().add_veth(spec)
        gate = self.gate
        if gate is not None:
            self.parked.set()
            await gate.wait()
        return index


@pytest.fixture
async def world(tmp_path):
    store = MemoryStore()
    kernel = GatedKernel()
    firewall = FakeFirewall()
    runtime = FakeRuntime(str(tmp_path / "containers"))
    runtime.add_image("busybox")
    ctl = Controller(
        store=store,
        ipam=DefaultIpam(store, DEFAULT_POOLS),
        kernel=kernel,
        firewall=firewall,
        drivers={"bridge": BridgeDriver(kernel, firewall), "host": HostDriver(), "null": NullDriver()},
        runtime=runtime,
        data_root=str(tmp_path / "data"),
        exec_root=str(tmp_path / "exec"),
    )
    await ctl.start()
    return ctl, kernel


def assert_consistent(ctl: Controller, kernel: FakeKernel) -> None:
    """Records and the fake kernel agree (the unit-tier version of tests/consistency.py)."""
    networks = {n.id: n for n in ctl.networks()}
    endpoints = [ep for c in ctl.containers() for ep in ctl._state.endpoints_of_container(c.id)]
    assert len(endpoints) == len(ctl._state.endpoints), "endpoints of no container"
    for ep in endpoints:
        assert ep.network_id in networks, f"endpoint {ep.id[:12]} on a network that is gone"
        link = kernel.link(ep.host_ifname)
        assert link is not None and link.owner == ep.id, f"endpoint {ep.id[:12]} has no veth"
        bridge = kernel.link(networks[ep.network_id].bridge_name)
        assert bridge is not None and link.master == bridge.index
    owned = {ep.id for ep in endpoints}
    veths = {link.owner for link in kernel.namespaces[HOST].values() if link.kind == "veth" and link.up}
    assert veths <= owned, f"veths nobody owns: {veths - owned}"
    bridges = {link.owner for link in kernel.namespaces[HOST].values() if link.kind == "bridge"}
    assert bridges == {n.id for n in networks.values() if n.driver == "bridge"}


async def race(kernel: GatedKernel, first: Awaitable, second: Awaitable) -> tuple[object, object]:
    """Run ``first`` until it parks in add_veth, run ``second`` for as long as it can make
    progress, then open the gate; the outcome (result or CnmError) of each."""
    kernel.gate = asyncio.Event()
    kernel.parked.clear()
    task = asyncio.ensure_future(first)
    await asyncio.wait_for(kernel.parked.wait(), 5)
    other = asyncio.ensure_future(second)
    for _ in range(50):  # let the second change run as far as it can
        await asyncio.sleep(0)
    kernel.gate.set()
    kernel.gate = None
    results = await asyncio.gather(task, other, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, CnmError):
            raise r
    return results[0], results[1]


async def test_network_rm_during_connect_leaves_no_orphan_endpoint(world):
    ctl, kernel = world
    await ctl.create_network(NetworkSpec(name="a"))
    await ctl.create_network(NetworkSpec(name="b"))
    container, _ = await ctl.create_container(
        "web", ContainerConfig(image="busybox", network_mode=NetworkMode.parse("a"))
    )
    await ctl.start_container(container.id)
    connected, removed = await race(
        kernel, ctl.connect("b", "web", EndpointRequest()), ctl.remove_network("b")
    )
    # one of the two wins; the other is refused
    assert (connected is None) != (removed is None), (connected, removed)
    if connected is None:
        assert isinstance(removed, Forbidden)
        assert {n.name for n, _ in ctl.container_endpoints(container.id)} == {"a", "b"}
    else:
        assert isinstance(connected, NotFound)
    assert_consistent(ctl, kernel)


async def test_network_rm_during_run_leaves_no_orphan_endpoint(world):
    ctl, kernel = world
    await ctl.create_network(NetworkSpec(name="a"))
    container, _ = await ctl.create_container(
        "web", ContainerConfig(image="busybox", network_mode=NetworkMode.parse("a"))
    )
    started, removed = await race(kernel, ctl.start_container(container.id), ctl.remove_network("a"))
    assert (started is None) != (removed is None), (started, removed)
    if started is None:
        assert isinstance(removed, Forbidden)
        assert ctl.find_container("web").running
    else:
        assert not ctl.find_container("web").running
    assert_consistent(ctl, kernel)


async def test_network_prune_during_connect_leaves_no_orphan_endpoint(world):
    ctl, kernel = world
    await ctl.create_network(NetworkSpec(name="a"))
    await ctl.create_network(NetworkSpec(name="b"))
    container, _ = await ctl.create_container(
        "web", ContainerConfig(image="busybox", network_mode=NetworkMode.parse("a"))
    )
    await ctl.start_container(container.id)
    connected, pruned = await race(kernel, ctl.connect("b", "web", EndpointRequest()), ctl.prune_networks())
    assert connected is None or isinstance(connected, NotFound)
    assert ("b" in pruned) == isinstance(connected, NotFound), (connected, pruned)
    assert_consistent(ctl, kernel)


async def test_exit_during_connect_leaves_no_orphan_endpoint(world):
    """The container's init exits while a connect is half done: the exit handling waits
    for the connect and then tears the new endpoint down too."""
    ctl, kernel = world
    await ctl.create_network(NetworkSpec(name="a"))
    await ctl.create_network(NetworkSpec(name="b"))
    container, _ = await ctl.create_container(
        "web", ContainerConfig(image="busybox", network_mode=NetworkMode.parse("a"))
    )
    await ctl.start_container(container.id)

    async def exit_now() -> None:
        ctl._runtime.exit(container.id, 3)
        await ctl.wait_container(container.id)

    await race(kernel, ctl.connect("b", "web", EndpointRequest()), exit_now())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not ctl.find_container("web").running
    assert ctl.container_endpoints(container.id) == []
    assert_consistent(ctl, kernel)


async def test_change_waiting_for_a_container_removed_meanwhile_is_not_found(world):
    """A connect queued behind a failing start and a ``rm`` finds the container gone:
    404, not a KeyError (a 500)."""
    ctl, kernel = world
    await ctl.create_network(NetworkSpec(name="a"))
    await ctl.create_network(NetworkSpec(name="b"))
    container, _ = await ctl.create_container(
        "web", ContainerConfig(image="busybox", network_mode=NetworkMode.parse("a"))
    )
    ctl._runtime.fail_start = True
    kernel.gate = asyncio.Event()
    kernel.parked.clear()
    start = asyncio.ensure_future(ctl.start_container(container.id))
    await asyncio.wait_for(kernel.parked.wait(), 5)
    removal = asyncio.ensure_future(ctl.remove_container(container.id))
    await asyncio.sleep(0)
    connect = asyncio.ensure_future(ctl.connect("b", container.id, EndpointRequest()))
    rename = asyncio.ensure_future(ctl.rename_container(container.id, "other"))
    await asyncio.sleep(0)
    kernel.gate.set()
    kernel.gate = None
    results = await asyncio.gather(start, removal, connect, rename, return_exceptions=True)
    assert isinstance(results[0], CnmError) and results[1] is None, results
    assert isinstance(results[2], NotFound) and isinstance(results[3], NotFound), results
    assert_consistent(ctl, kernel)


async def test_rm_force_during_start_removes_the_container(world):
    """``rm -f`` while a start is under way: the start finishes, then the removal kills
    and removes the container; a start asked for meanwhile is refused (marked for
    removal), as in Docker."""
    ctl, kernel = world
    await ctl.create_network(NetworkSpec(name="a"))
    container, _ = await ctl.create_container(
        "web", ContainerConfig(image="busybox", network_mode=NetworkMode.parse("a"))
    )
    kernel.gate = asyncio.Event()
    kernel.parked.clear()
    start = asyncio.ensure_future(ctl.start_container(container.id))
    await asyncio.wait_for(kernel.parked.wait(), 5)
    removal = asyncio.ensure_future(ctl.remove_container(container.id, force=True))
    await asyncio.sleep(0)
    again = asyncio.ensure_future(ctl.start_container(container.id))
    with pytest.raises(Conflict, match="already in progress"):
        await ctl.remove_container(container.id, force=True)
    kernel.gate.set()
    kernel.gate = None
    assert await asyncio.gather(start, removal, return_exceptions=True) == [None, None]
    with pytest.raises(Conflict, match="marked for removal"):
        await again
    assert ctl.containers() == []
    assert_consistent(ctl, kernel)


class JitterKernel(GatedKernel):
    """Every kernel call yields to the event loop a random number of times before and
    after its work, so concurrent changes interleave at every await."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.rng = rng

    async def _jitter(self) -> None:
        for _ in range(self.rng.randrange(4)):
            await asyncio.sleep(0)

    async def create_netns(self, path: str) -> None:
        await self._jitter()
        await super().create_netns(path)
        await self._jitter()

    async def delete_netns(self, path: str) -> None:
        await self._jitter()
        await super().delete_netns(path)
        await self._jitter()

    async def ensure_bridge(self, name: str, **kw) -> int:
        await self._jitter()
        index = await super().ensure_bridge(name, **kw)
        await self._jitter()
        return index

    async def add_veth(self, spec: VethSpec) -> int:
        await self._jitter()
        index = await super().add_veth(spec)
        await self._jitter()
        return index

    async def retire_link(self, name: str, netns_path: str | None = None, peer: str = "") -> None:
        await self._jitter()
        await super().retire_link(name, netns_path, peer)
        await self._jitter()

    async def delete_link(self, name: str, netns_path: str | None = None) -> None:
        await self._jitter()
        await super().delete_link(name, netns_path)
        await self._jitter()


@pytest.mark.parametrize("seed", [int(x) for x in os.environ.get("CNM_RACE_SEEDS", "7,11,23").split(",")])
async def test_random_concurrent_changes_keep_records_and_kernel_in_step(tmp_path, seed):
    """The unit-tier stress: 8 workers, random changes on shared names over a kernel that
    yields at every call.  Refusals are fine; a non-CnmError (a KeyError, a lock taken
    out of order) or a hang is not, and at the end records and kernel agree."""
    rng = random.Random(seed)
    store = MemoryStore()
    kernel = JitterKernel(rng)
    firewall = FakeFirewall()
    runtime = FakeRuntime(str(tmp_path / "containers"))
    runtime.add_image("busybox")
    ctl = Controller(
        store=store,
        ipam=DefaultIpam(store, DEFAULT_POOLS),
        kernel=kernel,
        firewall=firewall,
        drivers={"bridge": BridgeDriver(kernel, firewall), "host": HostDriver(), "null": NullDriver()},
        runtime=runtime,
        data_root=str(tmp_path / "data"),
        exec_root=str(tmp_path / "exec"),
    )
    await ctl.start()
    networks, containers = ("n0", "n1", "n2"), tuple(f"c{i}" for i in range(6))
    done: Counter[str] = Counter()

    async def one(r: random.Random) -> None:
        c, n = r.choice(containers), r.choice(networks)
        kind = r.choices(
            (
                "run",
                "start",
                "kill",
                "exit",
                "rm",
                "connect",
                "disconnect",
                "rename",
                "net-create",
                "net-rm",
                "prune",
            ),
            weights=(5, 1, 1, 1, 2, 5, 2, 1, 3, 3, 1),
        )[0]
        if kind == "run":
            config = ContainerConfig(
                image="busybox",
                network_mode=NetworkMode.parse(r.choice((*networks, "bridge"))),
                auto_remove=r.random() < 0.2,
            )
            container, _ = await ctl.create_container(c, config)
            await ctl.start_container(container.id)
        elif kind == "start":
            await ctl.start_container(c)
        elif kind == "kill":
            await ctl.kill_container(c)
        elif kind == "exit":
            runtime.exit(ctl.find_container(c).id, 1)
        elif kind == "rm":
            await ctl.remove_container(c, force=True)
        elif kind == "connect":
            await ctl.connect(n, c, EndpointRequest())
        elif kind == "disconnect":
            await ctl.disconnect(n, c, force=r.random() < 0.3)
        elif kind == "rename":
            await ctl.rename_container(c, r.choice(containers))
        elif kind == "net-create":
            await ctl.create_network(NetworkSpec(name=n))
        elif kind == "net-rm":
            await ctl.remove_network(n)
        else:
            await ctl.prune_networks()
        done[kind] += 1

    async def worker(index: int) -> None:
        r = random.Random(seed * 100 + index)
        for _ in range(100):
            try:
                await one(r)
            except CnmError:
                pass

    await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(8))), timeout=60)
    for _ in range(50):  # exits in flight finish
        await asyncio.sleep(0)
    assert sum(done.values()) > 100, done
    assert_consistent(ctl, kernel)
    for c in ctl.containers():
        await ctl.remove_container(c.id, force=True)
    assert_consistent(ctl, kernel)
