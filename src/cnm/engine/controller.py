"""The engine's coordinator: it wires the engine's pieces and is the one facade the API layer calls.

Each entry point hands its request to the piece whose job it is: the catalogue
(``networks.py``), the three CNM objects (``network.py``, ``endpoint.py``, ``sandbox.py``),
the container lifecycle by job (``containers.py``, ``starts.py``, ``stopping.py``,
``freezer.py``, ``exits.py``, ``connect.py``, ``restore.py``), ``observe.py``,
``images.py``, ``execs.py``; docs/architecture.md has the map.  The controller itself only
does what spans them: the start-up sequence (``start``), the firewall's view of
everything (``bridge_rules``, ``port_rules``), shutdown.  Every mutation follows one
protocol: validate and plan before the first syscall, apply step by step with each undo on
an ``AsyncExitStack``, record in one transaction after the kernel agreed, tear down
idempotently.  Locks: ``engine/locks.py``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Mapping, Sequence

from cnm.dns.records import IPAddress, NameTable
from cnm.dns.server import DnsServer
from cnm.drivers.api import NetworkDriver
from cnm.engine.cluster import Cluster, Node
from cnm.engine.connect import Connections
from cnm.engine.containers import Containers
from cnm.engine.events import Events
from cnm.engine.execs import Execs
from cnm.engine.exits import Exits
from cnm.engine.explain import Explanation
from cnm.engine.freezer import Freezer
from cnm.engine.images import Images
from cnm.engine.info import EngineInfo, ExecInfo
from cnm.engine.locks import KeyedLocks
from cnm.engine.naming import Naming
from cnm.engine.networks import Networks
from cnm.engine.observe import ContainerPaths, ContainerSample, Observe
from cnm.engine.ports import Publisher
from cnm.engine.restore import Restore
from cnm.engine.runs import Runs
from cnm.engine.services import Services
from cnm.engine.starts import Starts
from cnm.engine.state import State
from cnm.engine.stopping import Stopping
from cnm.engine.topology import Topology, gather
from cnm.engine.trace import Tracer, Tracing
from cnm.errors import NotModified
from cnm.firewall.api import BridgeRules, Firewall, PortRule, bridge_rules
from cnm.ipam.api import Ipam, PoolSpec
from cnm.kernel.api import Kernel
from cnm.model.container import Container, ContainerConfig, ExecSpec, Image
from cnm.model.endpoint import EndpointRecord, EndpointRequest, SandboxRecord
from cnm.model.network import IpamConfig, NetworkRecord, NetworkSpec
from cnm.runtime.api import Process, RunState, Runtime
from cnm.runtime.images import Loaded
from cnm.runtime.logs import Record
from cnm.runtime.output import Subscription
from cnm.store.api import Store

log = logging.getLogger("cnm.engine")


class Controller(Tracing):  # Tracing: the trace verb (engine/trace.py)
    """The daemon builds it, calls ``start`` once before serving and ``close`` at shutdown."""

    def __init__(
        self,
        *,
        store: Store,
        ipam: Ipam,
        kernel: Kernel,
        firewall: Firewall,
        drivers: Mapping[str, NetworkDriver],
        runtime: Runtime,
        data_root: str,
        exec_root: str,
        bridge_name: str = "cnm0",
        firewall_backend: str = "nftables",
        default_pools: Sequence[PoolSpec] = (),
        debug: bool = False,
        names: NameTable | None = None,
        dns: DnsServer | None = None,
        host_resolv_conf: str = "/etc/resolv.conf",
        host_gateway_ips: Sequence[IPAddress] = (),  # cnmd --host-gateway-ip
        publisher: Publisher | None = None,
        cluster: Cluster | None = None,
        firewall_table: str = "cnm",
        netns_names: str = "",
        bridge_ipv6: IpamConfig | None = None,  # the default bridge's IPv6 (Networks)
    ) -> None:
        self._ipam = ipam
        self._firewall = firewall
        self._runtime = runtime
        self._data_root = data_root
        self._exec_root = exec_root
        self._bridge_name = bridge_name
        self._firewall_backend = firewall_backend
        self._default_pools = tuple(default_pools)
        self._debug = debug
        self._publisher = publisher
        self._state = State(store, cluster.store if cluster is not None else None)
        self.events = Events()  # GET /events reads it; the engine alone writes it
        netns_dir = os.path.join(exec_root, "netns")
        os.makedirs(netns_dir, exist_ok=True)
        svc = Services(
            state=self._state,
            locks=KeyedLocks(),
            events=self.events,
            ipam=ipam,
            kernel=kernel,
            drivers=drivers,
            runtime=runtime,
            naming=Naming(self._state, runtime, names, dns, host_resolv_conf, host_gateway_ips),
            publisher=publisher,
            netns_dir=netns_dir,
            cluster=cluster,
            netns_names=netns_names,
        )
        self._svc = svc
        self._networks = Networks(svc, bridge_name=bridge_name, ipv6=bridge_ipv6)
        self._containers = Containers(svc)
        self._execs = Execs(runtime, self._containers.running, self.events)
        self._runs = runs = Runs()
        self._exits = Exits(svc, runs)
        self._freezer = Freezer(svc)
        self._stopping = Stopping(svc, runs, self._exits, self._execs, self._freezer)
        self._starts = Starts(svc, runs, self._exits, self._stopping.remove)
        self._exits.bind(self._starts, self._stopping.remove)
        self._connections = Connections(svc)
        self._restore = Restore(svc, runs, self._exits)
        self._observe = Observe(svc)
        self._images = Images(svc)
        self._explainer = Tracer(svc, firewall_backend=firewall_backend, firewall_table=firewall_table)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, runc_states: Awaitable[dict[str, RunState]] | None = None) -> None:
        """Load the records, then reconcile them with the kernel (``engine/restore.py``):
        firewall base, running containers, orphans, drivers, predefined networks, rules,
        and last the restart policies, once networks are in place.  ``runc_states``:
        ``runtime.states()``, when the caller started it earlier."""
        self._restore.list_runc(runc_states)  # runc lists its containers meanwhile
        try:
            await self._state.load()
            await self._ipam.start()
            await self._restore.upgrade_records()
            await self._firewall.setup()
        except BaseException:
            self._restore.cancel()
            raise
        await self._restore.containers()
        await self._restore.orphan_addresses()
        await self._restore.drivers()
        await self._networks.ensure_predefined()
        await self._networks.join_cluster()
        await self._firewall.sync(self.bridge_rules(), self.port_rules())
        await self._exits.resume_restarts()

    def bridge_rules(self) -> list[BridgeRules]:
        """The firewall's view of every bridge network (for sync and self-healing)."""
        return [
            bridge_rules(n)
            for n in self._state.networks.values()
            if n.driver == "bridge" and n.subnet is not None
        ]

    def port_rules(self) -> list[PortRule]:
        """The firewall's view of every published port."""
        pairs = [
            (self._state.networks[ep.network_id], ep)
            for ep in self._state.endpoints.values()
            if ep.ports and ep.network_id in self._state.networks
        ]
        return Publisher.rules(pairs)

    async def heal_firewall(self) -> bool:
        """Re-install cnm's rules if someone flushed them; True when it had to."""
        if await self._firewall.healthy():
            return False
        log.warning("cnm's firewall rules were removed from outside; putting them back")
        await self._firewall.setup()
        await self._firewall.sync(self.bridge_rules(), self.port_rules())
        return True

    async def close(self) -> None:
        self._runs.close()
        self._exits.close()
        self._execs.close()
        if self._publisher is not None:
            await self._publisher.close()
        await self._ipam.close()
        for close in filter(None, (getattr(d, "close", None) for d in self._svc.drivers.values())):
            await close()  # the overlay's watch stops before the node's lease goes
        if self._svc.cluster is not None:
            await self._svc.cluster.close()

    def info(self) -> EngineInfo:
        containers = list(self._state.containers.values())
        running = sum(1 for c in containers if c.running)
        return EngineInfo(
            data_root=self._data_root,
            exec_root=self._exec_root,
            bridge_name=self._bridge_name,
            firewall_backend=self._firewall_backend,
            default_pools=tuple((str(p.base), p.size) for p in self._default_pools),
            containers=len(containers),
            running=running,
            stopped=len(containers) - running,
            images=len(self._runtime.images()),
            debug=self._debug,
        )

    # -- networks -------------------------------------------------------------------------

    async def create_network(self, spec: NetworkSpec) -> NetworkRecord:
        return await self._networks.create(spec)

    def networks(self) -> list[NetworkRecord]:
        return self._networks.all()

    def find_network(self, ref: str) -> NetworkRecord:
        return self._networks.find(ref)

    def network_endpoints(self, network_id: str) -> list[EndpointRecord]:
        return self._networks.endpoints(network_id)

    def network_peers(self, network: NetworkRecord) -> list[Node] | None:
        return self._networks.peers(network)

    async def remove_network(self, ref: str) -> None:
        await self._networks.remove(ref)

    async def prune_networks(self, labels: dict[str, str | None] | None = None) -> list[str]:
        return await self._networks.prune(labels)

    async def connect(self, network_ref: str, container_ref: str, request: EndpointRequest) -> None:
        await self._connections.connect(network_ref, container_ref, request)

    async def disconnect(self, network_ref: str, container_ref: str, force: bool = False) -> None:
        await self._connections.disconnect(network_ref, container_ref, force)

    # -- containers -----------------------------------------------------------------------

    async def create_container(
        self, name: str | None, config: ContainerConfig
    ) -> tuple[Container, list[str]]:
        image = self._runtime.find_image(config.image)
        return await self._containers.create(name, config, image)

    def containers(self) -> list[Container]:
        return sorted(self._state.containers.values(), key=lambda c: c.created, reverse=True)

    def find_container(self, ref: str) -> Container:
        return self._containers.find(ref)

    def container_endpoints(self, container_id: str) -> list[tuple[NetworkRecord, EndpointRecord]]:
        return [
            (self._state.networks[ep.network_id], ep)
            for ep in self._state.endpoints_of_container(container_id)
            if ep.network_id in self._state.networks
        ]

    def container_sandbox(self, container_id: str) -> SandboxRecord | None:
        return self._state.sandbox_of(container_id)

    def container_paths(self, container_id: str) -> ContainerPaths:
        return self._observe.paths(container_id)

    async def rename_container(self, ref: str, new_name: str) -> None:
        await self._containers.rename(ref, new_name)

    async def start_container(self, ref: str) -> None:
        await self._starts.start(ref)

    async def stop_container(self, ref: str, timeout: int | None = None, signal: str | None = None) -> None:
        await self._stopping.stop(ref, timeout, signal)

    async def restart_container(
        self, ref: str, timeout: int | None = None, signal: str | None = None
    ) -> None:
        """Docker's ``restart``: stop (a stopped container is fine), start, then the
        ``restart`` event after the stop and start events."""
        container_id = self._containers.find(ref).id
        try:
            await self._stopping.stop(container_id, timeout, signal)
        except NotModified:
            pass
        await self._starts.start(container_id)
        current = self._state.containers.get(container_id)
        if current is not None:  # an rm may have raced in after the start: nothing to report then
            self.events.container("restart", current)

    async def kill_container(self, ref: str, signal: str = "SIGKILL") -> None:
        await self._stopping.kill(ref, signal)

    async def remove_container(self, ref: str, force: bool = False) -> None:
        await self._stopping.remove(ref, force)

    async def pause_container(self, ref: str) -> None:
        await self._freezer.pause(ref)

    async def unpause_container(self, ref: str) -> None:
        await self._freezer.unpause(ref)

    async def remove_container_link(self, name: str) -> None:
        """``DELETE /containers/<parent>/<alias>?link=1``: the parent loses the link."""
        await self._containers.remove_link(name)

    async def wait_container(self, ref: str, condition: str = "not-running") -> int:
        return await self._stopping.wait(ref, condition)

    def container_size(self, ref: str) -> int:
        return self._observe.size(ref)

    async def container_top(self, ref: str, ps_args: str) -> tuple[list[str], list[list[str]]]:
        return await self._observe.top(ref, ps_args)

    async def container_stats(self, ref: str) -> ContainerSample:
        return await self._observe.stats(ref)

    def container_logs(
        self,
        ref: str,
        *,
        stdout: bool,
        stderr: bool,
        follow: bool,
        tail: int | None,
        since: int | None = None,
        until: int | None = None,
    ) -> AsyncIterator[Record]:
        return self._observe.logs(
            ref, stdout=stdout, stderr=stderr, follow=follow, tail=tail, since=since, until=until
        )

    def attach_output(self, ref: str) -> Subscription:
        return self._observe.attach_output(ref)

    def resize_container_tty(self, ref: str, height: int, width: int) -> None:
        self._observe.resize_tty(ref, height, width)

    async def attach_stdin(self, ref: str) -> asyncio.StreamWriter | None:
        return await self._observe.attach_stdin(ref)

    def export_container(self, ref: str) -> AsyncGenerator[bytes, None]:
        return self._observe.export(ref)

    # -- seeing inside (cnm explain, cnm network map) ---------------------------------------

    async def explain_container(self, ref: str) -> Explanation:
        """Every fact of the container's networking, read from the kernel (``engine/explain.py``)."""
        return await self._explainer.explain(ref)

    async def topology(self, network_refs: Sequence[str] = ()) -> Topology:
        """The map of ``network_refs`` (every network when empty), read from the kernel."""
        chosen = [self._networks.find(ref) for ref in dict.fromkeys(network_refs)]
        return await gather(self._svc, chosen or sorted(self._networks.all(), key=lambda n: n.name))

    # -- exec -----------------------------------------------------------------------------

    def create_exec(self, ref: str, spec: ExecSpec) -> str:
        return self._execs.create(self._containers.find(ref), spec)

    async def start_exec(self, exec_id: str) -> Process:
        return await self._execs.start(exec_id)

    def exec_info(self, exec_id: str) -> ExecInfo:
        record = self._execs.record(exec_id)
        return ExecInfo(
            id=record.id,
            container_id=record.spec.container_id,
            spec=record.spec,
            running=record.running,
            exit_code=record.exit_code,
            pid=record.pid,
        )

    # -- images ---------------------------------------------------------------------------

    async def import_image(self, reference: str, tar_path: str) -> Image:
        return await self._images.import_(reference, tar_path)

    def images(self) -> list[Image]:
        return self._runtime.images()

    def find_image(self, ref: str) -> Image:
        return self._runtime.find_image(ref)

    async def remove_image(self, ref: str, force: bool = False) -> Image:
        return await self._images.remove(ref, force)

    async def tag_image(self, source: str, target: str) -> Image:
        return await self._images.tag(source, target)

    async def load_images(self, archive_path: str) -> list[Loaded]:
        return await self._images.load(archive_path)


__all__ = ["Controller", "ContainerPaths", "ContainerSample", "EngineInfo", "ExecInfo"]
