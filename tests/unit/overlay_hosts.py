"""Two or more hosts for the overlay's unit tests (tests/unit/test_engine_overlay.py,
test_overlay_data.py): each a whole engine on fakes -- its own local store, FakeKernel with
an underlay ``ul0``, firewall and runtime -- with the real overlay driver, all sharing one
store as the cluster store.  ``until`` waits for the watches that carry one host's change
to the others.  ``Host(…, tunnel=True)``: the host has a WireGuard tunnel for encrypted
networks (``FakeWireGuard``; its key file in the host's directory; its node record fields
written into the shared store as the daemon's cluster membership writes them).
``Host(…, guard=True)``: both drivers guard their ports with one ``FakeSpoofGuard`` (as the
daemon builds it); each start makes a new one over what the previous one left installed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

from cnm.dns.records import NameTable
from cnm.drivers.bridge import BridgeDriver
from cnm.drivers.host import HostDriver
from cnm.drivers.null import NullDriver
from cnm.drivers.overlay import ClusterLink, OverlayDriver, vxlan_of
from cnm.drivers.overlay_crypt import Tunnel
from cnm.engine.cluster import GLOBAL_POOL, Cluster
from cnm.engine.controller import Controller
from cnm.firewall.fake import FakeFirewall, FakeSpoofGuard
from cnm.ipam.api import DEFAULT_POOLS
from cnm.ipam.default import DefaultIpam
from cnm.kernel.api import FdbEntry, NeighEntry
from cnm.kernel.fake import HOST, FakeKernel, FakeWireGuard
from cnm.kernel.wireguard import RotationPolicy
from cnm.model.container import ContainerConfig
from cnm.model.endpoint import EndpointRecord, EndpointRequest
from cnm.model.network_mode import NetworkMode
from cnm.runtime.fake import FakeRuntime
from cnm.store.memory import MemoryStore


class Host:
    """One host: local store, fake kernel with an underlay ``ul0`` (MTU 1500), runtime; the
    cluster store is shared.  ``start()`` builds (or, again, restarts) its engine."""

    def __init__(
        self,
        tmp_path,
        name: str,
        address: str,
        cluster_store: MemoryStore,
        *,
        tunnel: bool = False,
        rotation: RotationPolicy | None = None,
        guard: bool = False,
    ) -> None:
        self.name = name
        self.address = address
        self.store = MemoryStore()
        self.cluster_store = cluster_store
        self.kernel = FakeKernel()
        self.kernel._add_link(
            HOST, "ul0", "veth", up=True, mtu=1500, addresses=[IPv4Interface(f"{address}/24")]
        )
        self.firewall = FakeFirewall()
        self.runtime = FakeRuntime(str(tmp_path / name / "containers"))
        self.runtime.add_image("busybox")
        self.tmp = tmp_path / name
        self.ctl: Controller | None = None
        self.driver: OverlayDriver | None = None
        self.names = NameTable()
        self.wireguard = FakeWireGuard(self.kernel) if tunnel else None
        self.rotation = rotation
        self.tunnel: Tunnel | None = None
        self.guard: FakeSpoofGuard | None = FakeSpoofGuard() if guard else None

    async def start(self) -> Controller:
        await self.cluster_store.put(
            f"node/{self.name}", {"Name": self.name, "ID": f"id-{self.name}", "Address": self.address}
        )
        cluster = Cluster(
            self.cluster_store, self.name, self.address, DefaultIpam(self.cluster_store, (GLOBAL_POOL,))
        )
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.tunnel = None
        if self.wireguard is not None:
            self.tunnel = Tunnel(
                self.wireguard,
                self.cluster_store,
                self.name,
                IPv4Address(self.address),
                key_path=str(self.tmp / "wireguard.json"),
                publish=self.publish,
                rotation=self.rotation,
                firewall=self.firewall,
            )
        if self.guard is not None:  # a new daemon: what is installed stays, nothing is remembered
            self.guard = FakeSpoofGuard(
                ports=dict(self.guard.ports), is_setup=self.guard.is_setup, scopes=("bridge", "overlay")
            )
        self.driver = OverlayDriver(
            self.kernel,
            ClusterLink(self.cluster_store, self.name, IPv4Address(self.address)),
            self.tunnel,
            guard=self.guard,
        )
        ctl = Controller(
            store=self.store,
            ipam=DefaultIpam(self.store, DEFAULT_POOLS),
            kernel=self.kernel,
            firewall=self.firewall,
            drivers={
                "bridge": BridgeDriver(self.kernel, self.firewall, guard=self.guard),
                "host": HostDriver(),
                "null": NullDriver(),
                "overlay": self.driver,
            },
            runtime=self.runtime,
            data_root=str(self.tmp / "data"),
            exec_root=str(self.tmp / "exec"),
            cluster=cluster,
            names=self.names,
        )
        self.ctl = ctl  # before its start: a start that fails is still stopped by ``stop``
        await ctl.start()
        return ctl

    async def publish(self, fields: dict) -> None:
        """Fields of this host's node record, written as ``ClusterMembership.update`` does."""
        entry = await self.cluster_store.get(f"node/{self.name}")
        doc = dict(entry.doc) if entry is not None else {"Name": self.name, "Address": self.address}
        doc.update(fields)
        await self.cluster_store.put(f"node/{self.name}", doc)

    async def stop(self) -> None:
        assert self.ctl is not None and self.driver is not None
        await self.ctl.close()
        await self.ctl._state.close()
        await self.driver.close()
        self.ctl = None

    async def run(self, name: str, network: str, **request) -> EndpointRecord:
        """A started container on ``network``; its endpoint there."""
        assert self.ctl is not None
        container, _ = await self.ctl.create_container(
            name, ContainerConfig(image="busybox", network_mode=NetworkMode.parse(network))
        )
        if request:
            await self.ctl.disconnect(network, name)
            await self.ctl.connect(network, name, EndpointRequest(**request))
        await self.ctl.start_container(container.id)
        return self.endpoint(name)

    def endpoint(self, container: str) -> EndpointRecord:
        assert self.ctl is not None
        return next(ep for ep in self.ctl._state.endpoints.values() if ep.name == container)

    def link(self, name: str):
        return self.kernel.namespaces[HOST].get(name)

    def fdb(self, network_id: str) -> set[FdbEntry]:
        link = self.link(vxlan_of(network_id))
        return {FdbEntry(mac, dst) for mac, dst in link.fdb.items()} if link else set()

    def neigh(self, network_id: str) -> set[NeighEntry]:
        link = self.link(vxlan_of(network_id))
        return {NeighEntry(ip, mac) for ip, mac in link.neigh.items()} if link else set()


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "the change never arrived"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def two_hosts(tmp_path: Path, shared: MemoryStore | None = None) -> AsyncIterator[tuple[Host, Host]]:
    """Hosts h1 (198.51.100.1) and h2 (198.51.100.2) started on one cluster store
    (``shared``, or a fresh MemoryStore), each stopped at the end if a test has not."""
    shared = shared if shared is not None else MemoryStore("global")
    a = Host(tmp_path, "h1", "198.51.100.1", shared)
    b = Host(tmp_path, "h2", "198.51.100.2", shared)
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        for host in (a, b):
            if host.ctl is not None:
                await host.stop()


def standalone_controller(tmp_path: Path) -> Controller:
    """A host outside any cluster: a Controller on its own MemoryStore, fake kernel,
    firewall and runtime, with every driver (the overlay one without a cluster link)."""
    store = MemoryStore()
    kernel, firewall = FakeKernel(), FakeFirewall()
    return Controller(
        store=store,
        ipam=DefaultIpam(store, DEFAULT_POOLS),
        kernel=kernel,
        firewall=firewall,
        drivers={
            "bridge": BridgeDriver(kernel, firewall),
            "host": HostDriver(),
            "null": NullDriver(),
            "overlay": OverlayDriver(),
        },
        runtime=FakeRuntime(str(tmp_path / "containers")),
        data_root=str(tmp_path / "data"),
        exec_root=str(tmp_path / "exec"),
    )
