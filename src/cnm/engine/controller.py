"""The CNM controller: the one place that combines store, IPAM, drivers, firewall and runtime.

Every mutation follows DESIGN.md: validate and plan before the first syscall; apply step by
step with each undo pushed on an AsyncExitStack; record in the store in one transaction
after the kernel agrees; teardown idempotent.

This facade is the contract the API layer codes against; the work is done by
``engine.networks.Networks`` and ``engine.containers.Containers``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from cnm.dns.records import NameTable
from cnm.dns.server import DnsServer
from cnm.drivers.api import NetworkDriver
from cnm.engine.containers import Containers
from cnm.engine.events import Events
from cnm.engine.locks import KeyedLocks
from cnm.engine.naming import Naming
from cnm.engine.networks import Networks
from cnm.engine.ports import Publisher
from cnm.engine.state import State
from cnm.errors import CnmError, Conflict, InvalidArgument, NotFound, NotModified
from cnm.firewall.api import BridgeRules, Firewall, PortRule, bridge_rules
from cnm.ipam.api import Ipam, PoolSpec
from cnm.kernel.api import Kernel, LinkStats
from cnm.model.container import RESTARTING, Container, ContainerConfig, ExecSpec, Image
from cnm.model.endpoint import Endpoint, EndpointRequest, Sandbox
from cnm.model.network import Network, NetworkSpec
from cnm.runtime import stats
from cnm.runtime.api import Process, Runtime
from cnm.runtime.images import Loaded, normalize_reference
from cnm.runtime.logs import Record
from cnm.runtime.output import Subscription
from cnm.store.docs import Store

log = logging.getLogger("cnm.engine")

ATTACH_START_TIMEOUT = 60.0  # seconds an attached stdin waits for the container to start


def familiar(reference: str) -> str:
    """Docker's ``FamiliarString`` of a tagged reference: ``docker.io/library/x:1`` -> ``x:1``."""
    name = normalize_reference(reference)
    for prefix in ("docker.io/library/", "docker.io/"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


@dataclass(frozen=True, slots=True)
class EngineInfo:
    data_root: str
    exec_root: str
    bridge_name: str
    firewall_backend: str
    default_pools: tuple[tuple[str, int], ...]  # (base CIDR, size)
    containers: int
    running: int
    stopped: int
    images: int
    debug: bool


@dataclass(frozen=True, slots=True)
class ExecInfo:
    id: str
    container_id: str
    spec: ExecSpec
    running: bool
    exit_code: int | None
    pid: int


@dataclass(frozen=True, slots=True)
class ContainerPaths:
    hostname: str
    hosts: str
    resolv_conf: str
    log: str


@dataclass(frozen=True, slots=True)
class ContainerSample:
    """What ``docker stats`` shows of a container at one moment."""

    container: Container
    cgroup: stats.CgroupStats
    system_cpu_ns: int
    networks: dict[str, LinkStats]


class Controller:
    """Owns the engine's state and its collaborators; the daemon builds it and calls
    ``start`` once before serving and ``close`` at shutdown."""

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
        publisher: Publisher | None = None,
    ) -> None:
        self._store = store
        self._ipam = ipam
        self._kernel = kernel
        self._firewall = firewall
        self._drivers = drivers
        self._runtime = runtime
        self._data_root = data_root
        self._exec_root = exec_root
        self._bridge_name = bridge_name
        self._firewall_backend = firewall_backend
        self._default_pools = tuple(default_pools)
        self._debug = debug
        self._locks = KeyedLocks()
        self._state = State(store)
        self.events = Events()  # GET /events reads it; the engine alone writes it
        self._networks = Networks(
            self._state, ipam, kernel, drivers, bridge_name=bridge_name, events=self.events
        )
        self._naming = Naming(self._state, runtime, names=names, dns=dns, host_resolv_conf=host_resolv_conf)
        self._containers = Containers(
            self._state,
            self._networks,
            runtime,
            kernel,
            exec_root=exec_root,
            locks=self._locks,
            naming=self._naming,
            publisher=publisher,
            events=self.events,
        )
        self._publisher = publisher

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the records, then reconcile them with the kernel (DESIGN.md, Restart):
        firewall base, predefined networks, running containers, orphans."""
        self._state.load()
        await self._ipam.start()
        self._containers.upgrade_records()
        await self._firewall.setup()
        await self._containers.restore()
        await self._release_orphan_addresses()
        networks = list(self._state.networks.values())
        for driver in {net.driver for net in networks} | set(self._drivers):
            mine = [n for n in networks if n.driver == driver]
            eps = [e for e in self._state.endpoints.values() if e.network_id in {n.id for n in mine}]
            await self._drivers[driver].restore(mine, eps)
        await self._networks.ensure_predefined()
        await self._firewall.sync(self.bridge_rules(), self.port_rules())
        await self._containers.resume_restarts()  # restart policies, once networks are in place

    async def _release_orphan_addresses(self) -> None:
        """Pools whose network record is missing and addresses whose owner endpoint no
        longer exists (a crash between IPAM and the record) go back."""
        for network_id in list(self._ipam.pools()):
            if network_id not in self._state.networks:
                log.info("releasing orphan pool of network %s", network_id[:12])
                await self._ipam.release_pool(network_id)
        live = set(self._state.endpoints)
        for network_id in self._state.networks:
            for address, owner in self._ipam.owners(network_id).items():
                if owner in live or owner == "gateway" or owner.startswith("aux:"):
                    continue
                log.info("releasing orphan address %s of network %s", address, network_id[:12])
                await self._ipam.release_address(network_id, address)

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
        await self._containers.close()
        if self._publisher is not None:
            await self._publisher.close()
        await self._ipam.close()

    # -- system ---------------------------------------------------------------------------

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

    async def create_network(self, spec: NetworkSpec) -> Network:
        # the catalogue lock: names and bridge names are checked and taken in one piece
        async with self._locks.hold(catalogue=True):
            return await self._networks.create(spec)

    def networks(self) -> list[Network]:
        return sorted(self._state.networks.values(), key=lambda n: n.name)

    def find_network(self, ref: str) -> Network:
        return self._networks.find(ref)

    def network_endpoints(self, network_id: str) -> list[Endpoint]:
        return self._state.endpoints_of_network(network_id)

    async def remove_network(self, ref: str) -> None:
        network = self._networks.find(ref)
        # exclusive: no endpoint joins or leaves it between the check for endpoints and
        # the removal (engine/locks.py)
        async with self._locks.hold(networks=[network.id], networks_exclusive=True):
            current = self._state.networks.get(network.id)
            if current is None:
                raise NotFound(f"network {ref} not found")
            await self._networks.remove(current)

    async def prune_networks(self, labels: dict[str, str | None] | None = None) -> list[str]:
        removed: list[str] = []
        for candidate in self.networks():
            if candidate.predefined or self._state.endpoints_of_network(candidate.id):
                continue  # not a candidate: no need to wait for its lock
            async with self._locks.hold(networks=[candidate.id], networks_exclusive=True):
                network = self._state.networks.get(candidate.id)
                if network is None or network.predefined or self._state.endpoints_of_network(network.id):
                    continue
                if labels and not all(
                    k in network.labels and (v is None or network.labels[k] == v) for k, v in labels.items()
                ):
                    continue
                try:
                    await self._networks.remove(network)
                except CnmError as exc:
                    log.warning("prune of %s: %s", network.name, exc)
                    continue
                removed.append(network.name)
        return removed

    async def connect(self, network_ref: str, container_ref: str, request: EndpointRequest) -> None:
        await self._containers.connect(network_ref, container_ref, request)

    async def disconnect(self, network_ref: str, container_ref: str, force: bool = False) -> None:
        await self._containers.disconnect(network_ref, container_ref, force)

    # -- containers -----------------------------------------------------------------------

    async def create_container(
        self, name: str | None, config: ContainerConfig
    ) -> tuple[Container, list[str]]:
        image = self._runtime.find_image(config.image)
        return self._containers.create(name, config, image)

    def containers(self) -> list[Container]:
        return sorted(self._state.containers.values(), key=lambda c: c.created, reverse=True)

    def find_container(self, ref: str) -> Container:
        return self._containers.find(ref)

    def container_endpoints(self, container_id: str) -> list[tuple[Network, Endpoint]]:
        return [
            (self._state.networks[ep.network_id], ep)
            for ep in self._state.endpoints_of_container(container_id)
            if ep.network_id in self._state.networks
        ]

    def container_sandbox(self, container_id: str) -> Sandbox | None:
        return self._state.sandbox_of(container_id)

    def container_paths(self, container_id: str) -> ContainerPaths:
        container = self._containers.find(container_id)
        root = self._runtime.container_dir(container_id)
        return ContainerPaths(
            hostname=f"{root}/hostname",
            hosts=f"{root}/hosts",
            resolv_conf=f"{root}/resolv.conf",
            log=self._runtime.log_path(container_id) if container.config.log_driver == "json-file" else "",
        )

    async def rename_container(self, ref: str, new_name: str) -> None:
        """409 when the name is taken, 400 when it is malformed or unchanged."""
        await self._containers.rename(ref, new_name)

    async def start_container(self, ref: str) -> None:
        await self._containers.start(ref)

    async def stop_container(self, ref: str, timeout: int | None = None, signal: str | None = None) -> None:
        await self._containers.stop(ref, timeout, signal)

    async def restart_container(
        self, ref: str, timeout: int | None = None, signal: str | None = None
    ) -> None:
        """Docker's ``restart``: stop (a stopped container is fine), start, then the
        ``restart`` event after the stop and start events."""
        container_id = self._containers.find(ref).id
        try:
            await self._containers.stop(container_id, timeout, signal)
        except NotModified:
            pass
        await self._containers.start(container_id)
        current = self._state.containers.get(container_id)
        if current is not None:  # an rm may have raced in after the start: nothing to report then
            self.events.container("restart", current)

    async def kill_container(self, ref: str, signal: str = "SIGKILL") -> None:
        await self._containers.kill(ref, signal)

    async def remove_container(self, ref: str, force: bool = False) -> None:
        await self._containers.remove(ref, force)

    async def pause_container(self, ref: str) -> None:
        await self._containers.pause(ref)

    async def unpause_container(self, ref: str) -> None:
        await self._containers.unpause(ref)

    async def remove_container_link(self, name: str) -> None:
        """``DELETE /containers/<parent>/<alias>?link=1``: the parent loses the link."""
        await self._containers.remove_link(name)

    def container_size(self, ref: str) -> int:
        """Bytes the container wrote to its own layer (Docker's ``SizeRw``)."""
        container = self._containers.find(ref)
        return stats.tree_size(os.path.join(self._runtime.container_dir(container.id), "upper"))

    def _live(self, ref: str) -> Container:
        container = self._containers.find(ref)
        if container.state.status == RESTARTING:
            raise Conflict(f"Container {container.id} is restarting, wait until the container is running")
        if not container.running:
            raise Conflict(f"Container {container.id} is not running")
        return container

    async def container_top(self, ref: str, ps_args: str) -> tuple[list[str], list[list[str]]]:
        """Docker's ``top``: the host's ``ps`` with ``ps_args``, its lines kept for the pids
        of the container's cgroup."""
        container = self._live(ref)
        pids = stats.procs(self._runtime.cgroup(container.id))
        return await stats.top(pids, ps_args)

    async def container_stats(self, ref: str) -> ContainerSample:
        """One reading of a container's counters: its cgroup's and its interfaces' (read in
        its network namespace, so eth0... as the container names them and rx/tx as it
        sees them).  A container that is not running reads as zeros, as in Docker."""
        container = self._containers.find(ref)
        host_cpu = stats.system_cpu_ns()
        if not container.running:
            return ContainerSample(container, stats.CgroupStats(), host_cpu, {})
        reading = await asyncio.to_thread(stats.read_stats, self._runtime.cgroup(container.id))
        sandbox = self._state.sandbox_of(container.id)
        networks: dict[str, LinkStats] = {}
        if sandbox is not None and sandbox.key:
            try:
                links = await self._kernel.links(sandbox.key)
            except CnmError as exc:  # the container is exiting: its namespace is going away
                log.debug("interfaces of %s: %s", container.name, exc)
                links = []
            networks = {
                link.name: link.stats for link in links if link.stats is not None and link.name != "lo"
            }
        return ContainerSample(container, reading, host_cpu, networks)

    async def wait_container(self, ref: str, condition: str = "not-running") -> int:
        return await self._containers.wait(ref, condition)

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
        """The container's log records; InvalidArgument when its log driver keeps none."""
        container = self._containers.find(ref)
        if container.config.log_driver != "json-file":
            raise InvalidArgument(
                f'configured logging driver does not support reading (driver "{container.config.log_driver}")'
            )
        return self._runtime.logs(
            container.id, stdout=stdout, stderr=stderr, follow=follow, tail=tail, since=since, until=until
        )

    def attach_output(self, ref: str) -> Subscription:
        """The output of the container's current run, or of its next one (attach before
        start); it ends with that run's output."""
        return self._runtime.attach_output(self._containers.find(ref).id)

    def resize_container_tty(self, ref: str, height: int, width: int) -> None:
        container = self._containers.find(ref)
        if container.running:
            self._runtime.resize(container.id, height, width)

    async def attach_stdin(self, ref: str) -> asyncio.StreamWriter | None:
        """The container's stdin, or None.  ``run -i`` attaches before ``start``, when the
        stdin pipe does not exist yet: wait (bounded) for the container to start."""
        container = self._containers.find(ref)
        if not container.config.open_stdin:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ATTACH_START_TIMEOUT
        while container.state.status == "created" and loop.time() < deadline:
            await asyncio.sleep(0.02)
            current = self._state.containers.get(container.id)
            if current is None:
                return None
            container = current
        return await self._runtime.open_stdin(container.id)

    # -- exec -----------------------------------------------------------------------------

    def create_exec(self, ref: str, spec: ExecSpec) -> str:
        return self._containers.execs.create(self._containers.find(ref), spec)

    async def start_exec(self, exec_id: str) -> Process:
        return await self._containers.execs.start(exec_id)

    def exec_info(self, exec_id: str) -> ExecInfo:
        record = self._containers.execs.record(exec_id)
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
        image = await self._runtime.import_image(reference, tar_path)
        self.events.image("import", image.id, image.id)  # moby names the id here, and below
        return image

    def images(self) -> list[Image]:
        return self._runtime.images()

    def find_image(self, ref: str) -> Image:
        return self._runtime.find_image(ref)

    async def remove_image(self, ref: str, force: bool = False) -> Image:
        image = self._runtime.find_image(ref)
        users = [c for c in self._state.containers.values() if c.config.image_id == image.id]
        if users and not force:
            raise Conflict(
                f'conflict: unable to remove repository reference "{ref}" (must force) - '
                f"container {users[0].short_id} is using its referenced image {image.id[7:19]}"
            )
        removed = await self._runtime.remove_image(ref)
        self.events.image("untag", removed.id, removed.id)
        if all(i.id != removed.id for i in self._runtime.images()):  # its last tag went
            self.events.image("delete", removed.id, removed.id)
        return removed

    async def tag_image(self, source: str, target: str) -> Image:
        image = await self._runtime.tag_image(source, target)
        self.events.image("tag", image.id, familiar(target))
        return image

    async def load_images(self, archive_path: str) -> list[Loaded]:
        loaded = await self._runtime.load_images(archive_path)
        for item in loaded:
            self.events.image("load", item.image.id, item.image.id)
        return loaded

    def export_container(self, ref: str) -> AsyncGenerator[bytes, None]:
        """The container's filesystem as tar chunks; NotFound at once for an unknown ref."""
        container = self.find_container(ref)
        image_id = container.config.image_id or self._runtime.find_image(container.config.image).id
        return self._runtime.export(container.id, image_id)


__all__ = ["Controller", "EngineInfo", "ExecInfo", "ContainerPaths"]
