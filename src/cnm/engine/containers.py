"""Container lifecycle: create, start (sandbox + endpoints + runc), exit handling, stop,
kill, remove, connect/disconnect of running containers, exec, and restart reconcile.

Locking (engine/locks.py): every change to a container holds, from its checks to its
record, the shared locks of the networks it has or will have endpoints on, then the
container's own lock (``_hold``); ``network rm`` takes its network's lock exclusively, so
it never runs between a connect's or start's checks and its record.  A container's lock is
held for its critical sections only (never while waiting for its process to exit), so
exit handling can always take it.  ``create`` takes no lock: it has no await between its
checks and its record.  ``stop`` and ``kill`` only send signals; the exit handling that
follows changes the records, under the locks.  A start records the sandbox, its
endpoints and the running state in one transaction after runc agreed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal as signals
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace

from cnm.engine.events import Events
from cnm.engine.execs import Execs
from cnm.engine.locks import KeyedLocks
from cnm.engine.lookup import find
from cnm.engine.names import random_name
from cnm.engine.naming import Naming, parse_link, validate_names
from cnm.engine.networks import Networks, now_rfc3339
from cnm.engine.ports import Publisher
from cnm.engine.state import State
from cnm.errors import (
    CnmError,
    Conflict,
    Forbidden,
    InvalidArgument,
    NotFound,
    NotModified,
    SystemFailure,
    TeardownErrors,
)
from cnm.kernel.api import Kernel
from cnm.model.container import (
    EXITED,
    FROM_BINDS,
    FROM_MOUNTS,
    RESTART_ALWAYS,
    RESTART_NO,
    RESTART_ON_FAILURE,
    RESTART_UNLESS_STOPPED,
    RESTARTING,
    RUNNING,
    Container,
    ContainerConfig,
    ContainerState,
    Image,
    command_of,
)
from cnm.model.endpoint import Endpoint, EndpointRequest, Sandbox
from cnm.model.network import Network
from cnm.model.values import new_id, parse_container_name
from cnm.portmap.requests import port_requests
from cnm.runtime.api import RunState, Runtime, StartRequest

log = logging.getLogger("cnm.engine")

UNKNOWN_EXIT = 255

# Docker's restart manager: the first restart after 100 ms, each next one twice as late, at
# most a minute apart; a run of 10 s or more starts the series over.
RESTART_FIRST_DELAY = 0.1
RESTART_MAX_DELAY = 60.0
RESTART_RESET_AFTER = 10.0


def should_restart(
    config: ContainerConfig, state: ContainerState, exit_code: int, *, daemon_start: bool
) -> bool:
    """Docker's ``RestartManager.ShouldRestart``.  While cnmd runs, a container stopped
    or killed by its user is never restarted.  At daemon start, ``always`` comes back even
    then (Docker's rule), ``unless-stopped`` only if the user did not stop it, and
    ``on-failure`` on a non-zero exit below its retry limit."""
    policy = config.restart_policy
    if policy == RESTART_NO or (state.stopped_by_user and not daemon_start):
        return False
    if policy == RESTART_ALWAYS:
        return True
    if policy == RESTART_UNLESS_STOPPED:
        return not state.stopped_by_user
    if policy == RESTART_ON_FAILURE:
        return exit_code != 0 and (config.restart_max == 0 or state.restart_count < config.restart_max)
    return False


def next_delay(previous: float, ran_for: float) -> float:
    """The backoff after a run of ``ran_for`` seconds that followed a delay of ``previous``."""
    if ran_for >= RESTART_RESET_AFTER or previous <= 0:
        return RESTART_FIRST_DELAY
    return min(previous * 2, RESTART_MAX_DELAY)


def parse_signal(value: str | int | None, default: int = signals.SIGKILL) -> int:
    """``SIGTERM``, ``TERM``, ``15`` -> 15; InvalidArgument otherwise."""
    if value is None or value == "":
        return default
    if isinstance(value, int) or str(value).isdigit():
        number = int(value)
        if 0 < number < signals.NSIG:
            return number
        raise InvalidArgument(f"invalid signal: {value}")
    name = str(value).upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(getattr(signals.Signals, name))
    except AttributeError:
        raise InvalidArgument(f"invalid signal: {value}") from None


def make_bind_sources(config: ContainerConfig) -> None:
    """``-v /host/path:/path``: a missing host path is created as a directory, as Docker
    does at start (``--mount type=bind`` refuses it at create instead)."""
    for m in config.mounts:
        if m.type == "bind" and m.origin == FROM_BINDS and not os.path.exists(m.source):
            try:
                os.makedirs(m.source, mode=0o755, exist_ok=True)
            except OSError as exc:
                raise InvalidArgument(
                    f"error while creating mount source path '{m.source}': {exc.strerror or exc}"
                ) from None


@dataclass
class _Run:
    """A running container's live handles (never stored)."""

    pid: int
    exited: asyncio.Future[int]
    watcher: asyncio.Task[None] | None = None
    started: float = field(default_factory=time.monotonic)


class Containers:
    def __init__(
        self,
        state: State,
        networks: Networks,
        runtime: Runtime,
        kernel: Kernel,
        *,
        exec_root: str,
        locks: KeyedLocks,
        naming: Naming,
        publisher: Publisher | None = None,
        events: Events | None = None,
    ) -> None:
        self._state = state
        self._networks = networks
        self._runtime = runtime
        self._kernel = kernel
        self._netns_dir = os.path.join(exec_root, "netns")
        self._locks = locks
        self._naming = naming
        self._publisher = publisher
        self._events = events if events is not None else Events()
        self._runs: dict[str, _Run] = {}
        self._restarts: dict[str, asyncio.Task[None]] = {}  # pending restarts by policy
        self._delays: dict[str, float] = {}  # each container's last restart delay
        self._removed: dict[str, list[asyncio.Future[int]]] = {}
        self._removing: set[str] = set()  # ids of containers an ``rm`` is removing
        self.execs = Execs(runtime, self._running_container, self._events)
        os.makedirs(self._netns_dir, exist_ok=True)

    # -- lookup ---------------------------------------------------------------------------

    def find(self, ref: str) -> Container:
        exact = self._state.containers.get(ref)  # a full id: the API's usual case, O(1)
        if exact is not None:
            return exact
        name = ref[1:] if ref.startswith("/") else ref
        return find(
            self._state.containers.values(),
            name,
            name_of=lambda c: c.name,
            id_of=lambda c: c.id,
            not_found=f"No such container: {ref}",
            kind="container",
        )

    # -- create ---------------------------------------------------------------------------

    def create(self, name: str | None, config: ContainerConfig, image: Image) -> tuple[Container, list[str]]:
        warnings: list[str] = []
        taken = {c.name for c in self._state.containers.values()}
        if name:
            name = parse_container_name(name)
            if name in taken:
                other = next(c for c in self._state.containers.values() if c.name == name)
                raise Conflict(
                    f'Conflict. The container name "/{name}" is already in use by container "{other.id}". '
                    "You have to remove (or rename) that container to be able to reuse that name."
                )
        else:
            name = random_name(taken)
        validate_names(config)
        for link in config.links:
            target = parse_link(link)[0]
            if target not in taken:
                raise InvalidArgument(f"could not get container for {target}: No such container: {target}")
        mode = config.network_mode
        if mode.startswith("container:") and not mode[len("container:") :]:
            raise InvalidArgument("invalid network mode: invalid container format container:<name|id>")
        if mode == "host" and config.port_bindings:
            warnings.append("Published ports are discarded when using host network mode")
        if not command_of(config, image):
            raise InvalidArgument("No command specified")
        config = replace(config, networks=self._create_networks(config), networks_complete=True)
        for m in config.mounts:
            if m.type == "bind" and m.origin == FROM_MOUNTS and not os.path.exists(m.source):
                raise InvalidArgument(
                    f'invalid mount config for type "bind": bind source path does not exist: {m.source}'
                )
        container = Container(
            id=new_id(),
            name=name,
            created=now_rfc3339(),
            # the image's exposed ports are the container's too (inspect shows them)
            config=replace(
                config,
                image_id=image.id,
                exposed_ports=tuple(dict.fromkeys((*image.exposed_ports, *config.exposed_ports))),
            ),
        )
        self._state.commit(put=[container])
        self._events.container("create", container)
        return container, warnings

    def _create_networks(self, config: ContainerConfig) -> dict[str, EndpointRequest]:
        """Docker's create-time network checks (unknown network, ``--ip`` on a predefined
        network or outside the subnet, ``host``/``none`` with others) and the requests as
        Docker keeps them in ``NetworkSettings.Networks``: keyed by network name, the
        primary network (``network_mode``) included."""
        mode = config.network_mode
        if mode.startswith("container:"):
            self.find(mode[len("container:") :])  # Docker: "No such container: X" at create
            return {}
        out: dict[str, EndpointRequest] = {}
        primary = self._create_network(mode)
        for key, request in config.networks.items():
            network = self._create_network(key)
            if network.name in out:
                raise InvalidArgument(f'network "{network.name}" is specified multiple times')
            out[network.name] = request
        out = {primary.name: out.pop(primary.name, EndpointRequest()), **out}
        for name, request in out.items():
            network = self._networks.find(name)
            if network.name in ("host", "none") and len(out) > 1:
                raise InvalidArgument(
                    "container cannot be connected to multiple networks with one of the networks in "
                    f"{'host' if network.name == 'host' else 'private (none)'} mode"
                )
            self._networks.check_request(network, request)
        return out

    def _create_network(self, ref: str) -> Network:
        """A network named by a create request.  Unknown is a 400, not a 404: a 404 from
        create makes Docker's CLI believe the image is missing and try to pull it, which
        would hide this message behind a pull error."""
        try:
            return self._networks.find(ref)
        except NotFound as exc:
            raise InvalidArgument(str(exc)) from None

    # -- start ----------------------------------------------------------------------------

    async def start(self, ref: str) -> None:
        """Start a created or stopped container.  A failed start leaves no endpoint, address,
        netns or rule (the plan unwinds); the record keeps the error, as Docker's does, and
        an ``--rm`` container is removed."""
        container = self.find(ref)
        cid = container.id
        async with self._hold(
            cid, joins=lambda: self._plan_networks(cid), others=lambda: self._netns_owner(cid)
        ):
            container = self._current(container.id, ref)
            if container.id in self._removing:
                raise Conflict(f"container {container.id} is marked for removal and cannot be started")
            if container.state.paused:
                raise Conflict("cannot start a paused container, try unpause instead")
            if container.running:
                raise NotModified(f"container {container.id} is already running")
            self._cancel_restart(container.id)
            # a start by the user begins a new life: no count, no "stopped by the user"
            container = replace(
                container, state=replace(container.state, restart_count=0, stopped_by_user=False)
            )
            try:
                image = self._find_image(container)
                run = await self._start_locked(container, image)
            except Exception as exc:
                self._record_start_error(container, exc)
                failed: Exception | None = exc
            else:
                failed = None
        if failed is not None:
            if container.config.auto_remove:
                try:
                    await self.remove(container.id, force=True)
                except CnmError as exc:
                    log.warning("removing %s after its failed start: %s", container.name, exc)
            raise failed
        run.watcher = asyncio.get_running_loop().create_task(self._watch(container.id, run))

    def _record_start_error(self, container: Container, exc: Exception) -> None:
        """Docker keeps a failed start's error and exit code (127: command not found, 126:
        not executable, else 128) on the record; its status does not change."""
        text = str(exc)
        code = 128
        if "executable file not found" in text or "no such file or directory" in text:
            code = 127
        elif "permission denied" in text or "is a directory" in text:
            code = 126
        state = replace(container.state, error=text, exit_code=code)
        if container.id in self._state.containers:
            self._state.commit(put=[replace(self._state.containers[container.id], state=state)])

    def _find_image(self, container: Container) -> Image:
        try:
            return self._runtime.find_image(container.config.image_id or container.config.image)
        except NotFound:
            return self._runtime.find_image(container.config.image)

    def _network_plan(self, container: Container) -> list[tuple[Network, EndpointRequest, bool]]:
        """The networks a start joins, primary first: (network, request, is_primary).  They
        are ``config.networks`` (Docker's ``NetworkSettings.Networks``): a primary network
        disconnected before start is not joined, and the container keeps its mode."""
        config = container.config
        if config.network_mode.startswith("container:"):
            return []
        try:
            primary_id = self._networks.find(config.network_mode).id
        except NotFound:
            primary_id = ""
        plan: list[tuple[Network, EndpointRequest, bool]] = []
        for key, request in config.networks.items():
            try:
                network = self._networks.find(key)
            except NotFound:
                raise NotFound(f"failed to set up container networking: network {key} not found") from None
            if any(network.id == n.id for n, _, _ in plan):
                continue
            if network.name in ("host", "none") and len(config.networks) > 1:
                raise InvalidArgument(
                    "container cannot be connected to multiple networks with one of the networks in "
                    f"{'host' if network.name == 'host' else 'private (none)'} mode"
                )
            self._networks.check_request(network, request)
            plan.append((network, request, network.id == primary_id))
        plan.sort(key=lambda item: not item[2])
        return plan

    async def _start_locked(self, container: Container, image: Image) -> _Run:
        config = container.config
        mode = config.network_mode
        async with AsyncExitStack() as stack:
            endpoints: list[Endpoint] = []
            sandbox: Sandbox | None = None
            if mode.startswith("container:"):
                target = self.find(mode[len("container:") :])
                target_sb = self._state.sandbox_of(target.id)
                if not target.running or target_sb is None:
                    raise Conflict(f"cannot join network of a non running container: {target.id}")
                netns: str | None = target_sb.key or None
                hostname = target_sb.hostname
                paths = self._naming.paths(target.id)
            else:
                plan = self._network_plan(container)
                host_mode = mode == "host"
                hostname = config.hostname or (socket.gethostname() if host_mode else container.short_id)
                key = "" if host_mode else os.path.join(self._netns_dir, new_id()[:12])
                sandbox = Sandbox(id=new_id(), container_id=container.id, key=key, hostname=hostname)
                if key:
                    await self._kernel.create_netns(key)
                    stack.push_async_callback(self._kernel.delete_netns, key)
                # Endpoints are recorded as they join so the next one sees its siblings
                # (interface names, default route); the records are rolled back on failure.
                for network, request, primary in plan:
                    ep = await self._networks.attach(
                        stack, network, container, sandbox, request, mac=config.mac_address if primary else ""
                    )
                    if ep.default_route and not network.internal and not host_mode:
                        ep = await self._publish(stack, network, ep, container, image)
                    endpoints.append(ep)
                    self._state.endpoints[ep.id] = ep
                    stack.callback(self._state.endpoints.pop, ep.id, None)
                netns = key or None
                paths = self._naming.paths(container.id)
                self._naming.write_files(container, sandbox, endpoints, host_mode=host_mode)
                await self._naming.publish(container, sandbox, endpoints)
                stack.push_async_callback(self._naming.withdraw, sandbox)
                link_env = self._naming.link_env(container)
                if link_env:  # legacy links add variables for this run only, like Docker
                    config = replace(config, env=(*link_env, *config.env))
            make_bind_sources(config)
            pid = await self._runtime.start(
                StartRequest(
                    container=replace(container, config=config),
                    image=image,
                    netns_path=netns,
                    hostname=hostname,
                    files=paths,
                )
            )
            stack.push_async_callback(self._kill_and_cleanup, container.id)
            running = replace(
                container,
                sandbox_id=sandbox.id if sandbox else "",
                state=replace(
                    container.state,
                    status=RUNNING,
                    paused=False,
                    pid=pid,
                    exit_code=0,
                    error="",
                    started_at=now_rfc3339(),
                ),
            )
            self._state.commit(put=[running, *([sandbox] if sandbox else []), *endpoints])
            stack.pop_all()
        for ep in endpoints:
            self._events.network("connect", self._state.networks[ep.network_id], container.id)
        self._events.container("start", running)
        log.info("container %s (%s) started, pid %d", container.name, container.short_id, pid)
        run = _Run(pid=pid, exited=asyncio.get_running_loop().create_future())
        self._runs[container.id] = run
        return run

    async def _publish(
        self, stack: AsyncExitStack, network: Network, ep: Endpoint, container: Container, image: Image
    ) -> Endpoint:
        """Published ports go through the endpoint carrying the default route (Docker's
        gateway endpoint)."""
        if self._publisher is None:
            return ep
        requests = port_requests(container.config, image)
        return await self._publisher.publish(stack, network, ep, requests)

    async def _detach(self, ep: Endpoint, sandbox: Sandbox | None) -> list[BaseException]:
        """Unpublish the endpoint's ports, then leave its network."""
        errors = await self._publisher.unpublish(ep) if self._publisher is not None else []
        errors.extend(await self._networks.detach(ep, sandbox))
        return errors

    async def _kill_and_cleanup(self, container_id: str) -> None:
        try:
            await self._runtime.kill(container_id, signals.SIGKILL)
        except CnmError:
            pass
        await self._runtime.cleanup(container_id)

    async def _refresh_names(self, container: Container) -> None:
        """After connect/disconnect: files rewritten in place, DNS records and listener."""
        sandbox = self._state.sandbox_of(container.id)
        if sandbox is None or not sandbox.key:
            return
        endpoints = self._state.endpoints_of_container(container.id)
        self._naming.write_files(container, sandbox, endpoints, host_mode=False)
        await self._naming.publish(container, sandbox, endpoints)

    # -- locking --------------------------------------------------------------------------

    @asynccontextmanager
    async def _hold(
        self,
        container_id: str,
        *,
        joins: Callable[[], Iterable[str]] = tuple,
        others: Callable[[], Iterable[str]] = tuple,
    ) -> AsyncIterator[None]:
        """Hold, in locks.py's order, the shared locks of the networks the container has
        endpoints on and of those ``joins()`` names, then the locks of the container and of
        the containers ``others()`` names.  Both are asked again once all are held: when a
        concurrent change grew a set meanwhile, start over with the larger one.  The
        caller re-reads its records inside."""
        networks: set[str] = set()
        containers = {container_id}

        def wanted() -> tuple[set[str], set[str]]:
            eps = {ep.network_id for ep in self._state.endpoints_of_container(container_id)}
            return eps | set(joins()), containers | set(others())

        while True:
            more_networks, more_containers = wanted()
            networks |= more_networks
            containers |= more_containers
            async with self._locks.hold(networks=networks, containers=containers):
                now_networks, now_containers = wanted()
                if now_networks <= networks and now_containers <= containers:
                    yield
                    return

    def _current(self, container_id: str, ref: str) -> Container:
        """The container's record once its lock is held: it may have been removed while
        the change waited for the lock."""
        container = self._state.containers.get(container_id)
        if container is None:
            raise NotFound(f"No such container: {ref}")
        return container

    def _network_ids(self, *refs: str) -> set[str]:
        """The ids of the networks ``refs`` name now (those that exist)."""
        ids = set()
        for ref in refs:
            try:
                ids.add(self._networks.find(ref).id)
            except CnmError:
                pass
        return ids

    def _plan_networks(self, container_id: str) -> set[str]:
        """The networks a start of the container would join."""
        container = self._state.containers.get(container_id)
        if container is None or container.config.network_mode.startswith("container:"):
            return set()
        return self._network_ids(container.config.network_mode, *container.config.networks)

    def _netns_owner(self, container_id: str) -> set[str]:
        """The container whose namespace a ``container:`` mode start joins."""
        container = self._state.containers.get(container_id)
        mode = container.config.network_mode if container is not None else ""
        if not mode.startswith("container:"):
            return set()
        try:
            return {self.find(mode[len("container:") :]).id}
        except CnmError:
            return set()

    # -- exit -----------------------------------------------------------------------------

    async def _watch(self, container_id: str, run: _Run) -> None:
        try:
            code = await self._runtime.wait_exit(container_id, run.pid)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the watcher must always finish the container
            log.error("waiting for container %s: %s", container_id[:12], exc)
            code = UNKNOWN_EXIT
        await self._finish(container_id, run.pid, code)

    async def _finish(self, container_id: str, pid: int, code: int) -> None:
        """The container's init exited: release its network, clean up runc, record it."""
        async with self._hold(container_id):
            container = self._state.containers.get(container_id)
            if container is None or container.state.pid != pid:
                return
            errors = await self._teardown_network(container)
            try:
                await self._runtime.cleanup(container_id)
            except CnmError as exc:
                errors.append(exc)
            restart = should_restart(container.config, container.state, code, daemon_start=False)
            exited = replace(
                container,
                sandbox_id="",
                state=replace(
                    container.state,
                    status=RESTARTING if restart else EXITED,
                    paused=False,
                    pid=0,
                    exit_code=code,
                    finished_at=now_rfc3339(),
                ),
            )
            self._state.commit(put=[exited])
            self._events.container("die", exited, exitCode=str(code))
            run = self._runs.pop(container_id, None)
            if restart:
                ran_for = time.monotonic() - run.started if run is not None else 0.0
                delay = next_delay(self._delays.get(container_id, 0.0), ran_for)
                self._schedule_restart(container_id, delay)
        for err in errors:
            log.warning("container %s teardown: %s", container.name, err)
        log.info("container %s (%s) exited with %d", container.name, container.short_id, code)
        if run is not None and not run.exited.done():
            run.exited.set_result(code)
        if container.config.auto_remove:
            try:
                await self.remove(container_id, force=True)
            except (NotFound, Conflict):  # gone, or a removal is already under way
                pass

    async def _teardown_network(self, container: Container) -> list[BaseException]:
        """Idempotent: endpoints, then the sandbox's netns and record."""
        errors: list[BaseException] = []
        sandbox = self._state.sandbox_of(container.id)
        for ep in self._state.endpoints_of_container(container.id):
            errors.extend(await self._detach(ep, sandbox))
        if sandbox is not None:
            errors.extend(await self._naming.withdraw(sandbox))
            if sandbox.key:
                try:
                    await self._kernel.delete_netns(sandbox.key)
                except CnmError as exc:
                    errors.append(exc)
            self._state.commit(delete=[sandbox])
        return errors

    # -- restart policies -----------------------------------------------------------------

    def _schedule_restart(self, container_id: str, delay: float) -> None:
        self._delays[container_id] = delay
        self._cancel_restart(container_id)
        task = asyncio.get_running_loop().create_task(self._restart_later(container_id, delay))
        self._restarts[container_id] = task

    def _cancel_restart(self, container_id: str) -> bool:
        """Drop a pending restart; True if there was one."""
        task = self._restarts.pop(container_id, None)
        if task is None or task is asyncio.current_task():
            return False
        task.cancel()
        return True

    async def _restart_later(self, container_id: str, delay: float) -> None:
        """Start the container again after ``delay``, as its policy says, unless the user
        stopped, started or removed it meanwhile.  A restart that fails leaves the container
        exited with the error (Docker's daemon gives up there too: no loop of failures)."""
        await asyncio.sleep(delay)
        async with self._hold(
            container_id,
            joins=lambda: self._plan_networks(container_id),
            others=lambda: self._netns_owner(container_id),
        ):
            if self._restarts.get(container_id) is not asyncio.current_task():
                return
            self._restarts.pop(container_id, None)
            container = self._state.containers.get(container_id)
            if container is None or container.running or container_id in self._removing:
                return
            count = container.state.restart_count + 1
            container = replace(container, state=replace(container.state, restart_count=count))
            try:
                run = await self._start_locked(container, self._find_image(container))
            except Exception as exc:
                log.warning("restart of %s by its policy failed: %s", container.name, exc)
                state = replace(
                    container.state, status=EXITED, error=str(exc), exit_code=128, finished_at=now_rfc3339()
                )
                self._state.commit(put=[replace(container, state=state)])
                return
        log.info("container %s restarted by its policy (%s)", container.name, container.config.restart_policy)
        run.watcher = asyncio.get_running_loop().create_task(self._watch(container_id, run))

    async def resume_restarts(self) -> None:
        """At daemon start, once networks are in place: containers found dead (or waiting
        for a restart) whose policy says so start again, as Docker's daemon does."""
        for container in list(self._state.containers.values()):
            if container.state.status not in (EXITED, RESTARTING):
                continue
            if not should_restart(
                container.config, container.state, container.state.exit_code, daemon_start=True
            ):
                if container.state.status == RESTARTING:
                    self._state.commit(
                        put=[replace(container, state=replace(container.state, status=EXITED))]
                    )
                continue
            if container.state.status != RESTARTING:
                self._state.commit(
                    put=[replace(container, state=replace(container.state, status=RESTARTING))]
                )
            self._schedule_restart(container.id, 0.0)

    # -- stop / kill / remove / wait ------------------------------------------------------

    async def _mark_stopped_by_user(self, container: Container) -> Container:
        """``stop``/``kill``: no restart by policy (``unless-stopped`` remembers it across
        a daemon restart); a pending restart is dropped and the container is exited."""
        async with self._locks.hold(containers=[container.id]):
            current = self._state.containers.get(container.id)
            if current is None:
                raise NotFound(f"No such container: {container.id}")
            state = replace(current.state, stopped_by_user=True)
            if self._cancel_restart(container.id) or state.status == RESTARTING:
                state = replace(state, status=EXITED)
            if state != current.state:
                current = replace(current, state=state)
                self._state.commit(put=[current])
            return current

    async def stop(self, ref: str, timeout: int | None = None, signal: str | None = None) -> None:
        container = self.find(ref)
        if container.state.status == RESTARTING:
            await self._mark_stopped_by_user(container)
            return
        run = self._runs.get(container.id)
        if not container.running or run is None:
            raise NotModified(f"container {container.id} is not running")
        if container.config.restart_policy != RESTART_NO:
            await self._mark_stopped_by_user(container)
        sig = parse_signal(signal or container.config.stop_signal, signals.SIGTERM)
        await self._thaw(container)
        grace = container.config.stop_timeout if timeout is None else timeout
        await self._runtime.kill(container.id, sig)
        self._events.container("kill", container, signal=str(int(sig)))
        try:
            await asyncio.wait_for(asyncio.shield(run.exited), timeout=max(grace, 0))
        except TimeoutError:
            await self._runtime.kill(container.id, signals.SIGKILL)
            self._events.container("kill", container, signal=str(int(signals.SIGKILL)))
            await run.exited
        self._events.container("stop", self._state.containers.get(container.id, container))

    async def kill(self, ref: str, signal: str = "SIGKILL") -> None:
        container = self.find(ref)
        sig = parse_signal(signal)
        if container.state.status == RESTARTING:
            raise Conflict(f"Container {container.id} is restarting, wait until the container is running")
        if not container.running:
            raise Conflict(f"container {container.id} is not running")
        if container.config.restart_policy != RESTART_NO:
            await self._mark_stopped_by_user(container)
        if sig == signals.SIGKILL:  # a frozen process dies only once thawed (cgroup v1)
            await self._thaw(container)
        await self._runtime.kill(container.id, sig)
        self._events.container("kill", container, signal=str(int(sig)))

    async def remove(self, ref: str, force: bool = False) -> None:
        """Docker's ``rm [-f]``.  While it runs the container is marked for removal: a
        start is refused (Docker's 409), so ``rm -f`` always ends with the container gone."""
        container = self.find(ref)
        if container.id in self._removing:
            raise Conflict(f"removal of container {container.id} is already in progress")
        self._removing.add(container.id)
        try:
            await self._remove(container.id, force)
        finally:
            self._removing.discard(container.id)

    async def _remove(self, container_id: str, force: bool) -> None:
        while True:
            container = self._state.containers.get(container_id)
            if container is None:
                return
            if container.state.status == RESTARTING:
                if not force:
                    raise Conflict(
                        f'cannot remove container "/{container.name}": container is restarting: '
                        "stop the container before removing or force remove"
                    )
                container = await self._mark_stopped_by_user(container)
            if container.running:
                if not force:
                    raise Conflict(
                        f'cannot remove container "/{container.name}": container is running: '
                        "stop the container before removing or force remove"
                    )
                if container.config.restart_policy != RESTART_NO:
                    container = await self._mark_stopped_by_user(container)
                run = self._runs.get(container.id)
                await self._thaw(container)
                await self._runtime.kill(container.id, signals.SIGKILL)
                self._events.container("kill", container, signal=str(int(signals.SIGKILL)))
                if run is not None:
                    await run.exited
            async with self._hold(container.id):
                container = self._state.containers.get(container.id)
                if container is None:
                    return
                if container.running:
                    if container.id in self._runs:  # a start (or a restart) under way when the removal began
                        continue
                    raise Conflict(f"container {container.id} is running and cannot be stopped")
                errors = await self._teardown_network(container)  # nothing left normally
                try:
                    await self._runtime.remove(container.id)
                except CnmError as exc:
                    errors.append(exc)
                self._state.commit(delete=[container])
                self._events.container("destroy", container)
                self.execs.forget(container.id)
                self._cancel_restart(container.id)
                self._delays.pop(container.id, None)
                break
        for fut in self._removed.pop(container.id, []):
            if not fut.done():
                fut.set_result(container.state.exit_code)
        if errors:
            raise TeardownErrors(f"container {container.name}", errors)

    async def wait(self, ref: str, condition: str = "not-running") -> int:
        container = self.find(ref)
        if condition not in ("not-running", "next-exit", "removed"):
            raise InvalidArgument(f"invalid condition: {condition!r}")
        if condition == "removed":
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._removed.setdefault(container.id, []).append(fut)
            return await fut
        run = self._runs.get(container.id)
        if run is None:
            if condition == "not-running":
                return container.state.exit_code
            # next-exit of a container not started yet: wait for its next run's exit.
            while run is None:
                await asyncio.sleep(0.02)
                if container.id not in self._state.containers:
                    raise NotFound(f"No such container: {ref}")
                run = self._runs.get(container.id)
        return await asyncio.shield(run.exited)

    # -- pause / unpause / legacy links ---------------------------------------------------

    async def pause(self, ref: str) -> None:
        """Docker's ``pause``: the cgroup freezer stops every process of the container; it
        stays running (``Paused``), its network untouched."""
        container = self.find(ref)
        async with self._hold(container.id):
            container = self._current(container.id, ref)
            if container.state.status == RESTARTING:
                raise Conflict(f"Container {container.id} is restarting, wait until the container is running")
            if not container.running:
                raise Conflict(f"Container {container.id} is not running")
            if container.state.paused:
                raise Conflict(f"Container {container.id} is already paused")
            await self._runtime.pause(container.id)
            self._state.commit(put=[replace(container, state=replace(container.state, paused=True))])
            self._events.container("pause", container)

    async def unpause(self, ref: str) -> None:
        container = self.find(ref)
        async with self._hold(container.id):
            container = self._current(container.id, ref)
            if not container.running or not container.state.paused:
                raise Conflict(f"Container {container.id} is not paused")
            await self._runtime.resume(container.id)
            self._state.commit(put=[replace(container, state=replace(container.state, paused=False))])
            self._events.container("unpause", container)

    async def _thaw(self, container: Container) -> None:
        """Before a stop or a kill: a frozen process cannot act on a signal, so the
        container is unpaused first, as Docker does."""
        if container.state.paused:
            with contextlib.suppress(Conflict):
                await self.unpause(container.id)

    async def remove_link(self, name: str) -> None:
        """Docker's ``rm --link /web/db``: container ``web`` loses its legacy link alias
        ``db`` (its hosts entry at once; the link's variables from its next start on).
        Neither container is removed."""
        full = name if name.startswith("/") else "/" + name
        parent_name, _, alias = full.rpartition("/")
        if not parent_name:
            raise Conflict("Conflict, cannot remove the default link name of the container")
        try:
            parent = self.find(parent_name)
        except NotFound:
            raise NotFound(f"No such container: {full}") from None
        async with self._hold(parent.id):
            parent = self._current(parent.id, parent_name)
            kept = tuple(link for link in parent.config.links if parse_link(link)[1] != alias)
            if len(kept) == len(parent.config.links):
                raise NotFound(f"No such container: {full}")
            updated = replace(parent, config=replace(parent.config, links=kept))
            self._state.commit(put=[updated])
            if updated.running:
                await self._refresh_names(updated)

    # -- rename ---------------------------------------------------------------------------

    async def rename(self, ref: str, new_name: str) -> None:
        """Docker's ``rename``: a new unique name; the endpoints' names and the DNS records
        follow at once (the next query answers to the new name only)."""
        container = self.find(ref)
        name = parse_container_name(new_name)
        async with self._hold(container.id):
            container = self._current(container.id, ref)
            if name == container.name:
                raise InvalidArgument("Renaming a container with the same name as its current name")
            other = next((c for c in self._state.containers.values() if c.name == name), None)
            if other is not None:
                raise Conflict(
                    f'Conflict. The container name "/{name}" is already in use by container "{other.id}". '
                    "You have to remove (or rename) that container to be able to reuse that name."
                )
            renamed = replace(container, name=name)
            endpoints = [replace(ep, name=name) for ep in self._state.endpoints_of_container(container.id)]
            self._state.commit(put=[renamed, *endpoints])
            self._events.container("rename", renamed, oldName="/" + container.name)
            sandbox = self._state.sandbox_of(container.id)
            if renamed.running and sandbox is not None and sandbox.key:
                await self._naming.publish(renamed, sandbox, endpoints)

    # -- connect / disconnect -------------------------------------------------------------

    async def connect(self, network_ref: str, ref: str, request: EndpointRequest) -> None:
        container = self.find(ref)
        async with self._hold(container.id, joins=lambda: self._network_ids(network_ref)):
            container = self._current(container.id, ref)
            mode = container.config.network_mode
            if mode == "host" or mode.startswith("container:"):
                raise InvalidArgument(
                    "container sharing network namespace with another container or host cannot be "
                    "connected to any other network"
                )
            if not container.running:
                self._record_request(container, network_ref, request)
                return
            network = self._networks.find(network_ref)
            if network.name == "host":
                raise InvalidArgument(
                    "cannot connect container to host network - container must be created in host network mode"
                )
            if mode == "none" or network.name == "none":
                raise InvalidArgument(
                    "container cannot be connected to multiple networks with one of the networks in private (none) mode"
                )
            if any(ep.network_id == network.id for ep in self._state.endpoints_of_container(container.id)):
                raise Forbidden(
                    f"endpoint with name {container.name} already exists in network {network.name}"
                )
            self._networks.check_request(network, request)
            sandbox = self._state.sandbox_of(container.id)
            if sandbox is None:
                raise SystemFailure(f"container {container.id} has no sandbox")
            async with AsyncExitStack() as stack:
                ep = await self._networks.attach(stack, network, container, sandbox, request)
                if ep.default_route and not network.internal:  # it is the gateway endpoint now
                    ep = await self._publish(stack, network, ep, container, self._find_image(container))
                networks = {
                    k: v for k, v in container.config.networks.items() if k not in (network.name, network.id)
                }
                networks[network.name] = request
                updated = replace(container, config=replace(container.config, networks=networks))
                self._state.commit(put=[ep, updated])
                stack.pop_all()
            self._events.network("connect", network, container.id)
            await self._refresh_names(updated)

    def _record_request(self, container: Container, network_ref: str, request: EndpointRequest) -> None:
        """``network connect`` of a container that is not running: the request joins
        ``config.networks`` (keyed by network name) and is acted on at start."""
        network = self._networks.find(network_ref)
        if network.name == "host":
            raise InvalidArgument(
                "cannot connect container to host network - container must be created in host network mode"
            )
        networks = dict(container.config.networks)
        if any(self._same_network(key, network) for key in networks):
            raise Forbidden(f"endpoint with name {container.name} already exists in network {network.name}")
        if network.name == "none" or any(k in ("host", "none") for k in networks):
            raise InvalidArgument(
                "container cannot be connected to multiple networks with one of the networks in private (none) mode"
            )
        self._networks.check_request(network, request)
        networks[network.name] = request
        self._state.commit(put=[replace(container, config=replace(container.config, networks=networks))])

    def _same_network(self, key: str, network: Network) -> bool:
        """Is the ``config.networks`` key ``key`` (a name, or an id kept from an older
        record) the network ``network``?"""
        if key in (network.name, network.id):
            return True
        try:
            return self._networks.find(key).id == network.id
        except NotFound:
            return False

    async def disconnect(self, network_ref: str, ref: str, force: bool = False) -> None:
        container = self.find(ref)
        async with self._hold(container.id, joins=lambda: self._network_ids(network_ref)):
            container = self._current(container.id, ref)
            if not container.running:
                self._forget_request(container, network_ref, force)
                return
            network = self._networks.find(network_ref)
            if container.config.network_mode == "host" and network.name == "host":
                raise InvalidArgument(
                    "cannot disconnect container from host network - container was created in host network mode"
                )
            ep = next(
                (e for e in self._state.endpoints_of_container(container.id) if e.network_id == network.id),
                None,
            )
            if ep is None:
                raise NotFound(f"container {container.id} is not connected to network {network.name}")
            sandbox = self._state.sandbox_of(container.id)
            errors = await self._detach(ep, sandbox)
            kept = {k: v for k, v in container.config.networks.items() if not self._same_network(k, network)}
            updated = replace(container, config=replace(container.config, networks=kept))
            self._state.commit(put=[updated])
            if ep.default_route and sandbox is not None and sandbox.key:
                errors.extend(await self._promote_gateway(updated, sandbox))
            await self._refresh_names(updated)
            if errors:
                raise TeardownErrors(f"disconnect of {container.name} from {network.name}", errors)

    def _forget_request(self, container: Container, network_ref: str, force: bool) -> None:
        """``network disconnect`` of a container that is not running: its entry leaves
        ``config.networks``; ``network_mode`` never changes (Docker keeps HostConfig's
        NetworkMode: a start joins the networks left, or none but ``lo``)."""
        try:
            network: Network | None = self._networks.find(network_ref)
        except NotFound:
            if not force:
                raise
            network = None
        if network is not None and network.name == "host" and container.config.network_mode == "host":
            raise InvalidArgument(
                "cannot disconnect container from host network - container was created in host network mode"
            )
        networks = container.config.networks
        kept = {
            k: v
            for k, v in networks.items()
            if not (self._same_network(k, network) if network is not None else k == network_ref)
        }
        if len(kept) == len(networks):
            raise NotFound(f"container {container.id} is not connected to the network {network_ref}")
        self._state.commit(put=[replace(container, config=replace(container.config, networks=kept))])

    async def _promote_gateway(self, container: Container, sandbox: Sandbox) -> list[BaseException]:
        """The endpoint carrying the default route left: the next one (in connect order)
        with a gateway takes over the route and the published ports, as Docker's
        gateway endpoint does.  Returns errors instead of failing the disconnect."""
        for ep in self._state.endpoints_of_container(container.id):
            network = self._state.networks.get(ep.network_id)
            if network is None or network.internal or ep.gateway is None:
                continue
            try:
                await self._kernel.set_default_route(sandbox.key, ep.gateway, ep.ifname)
                promoted = replace(ep, default_route=True)
                async with AsyncExitStack() as stack:
                    promoted = await self._publish(
                        stack, network, promoted, container, self._find_image(container)
                    )
                    self._state.commit(put=[promoted])
                    stack.pop_all()
            except CnmError as exc:
                return [exc]
            return []
        return []

    def _running_container(self, container_id: str) -> Container | None:
        container = self._state.containers.get(container_id)
        return container if container is not None and container.running else None

    def upgrade_records(self) -> None:
        """Records written before ``config.networks`` held the primary network imply it by
        ``network_mode``: write it in, once, so that they start where they did."""
        for container in list(self._state.containers.values()):
            config = container.config
            if config.networks_complete:
                continue
            networks = dict(config.networks)
            if not config.network_mode.startswith("container:"):
                try:
                    primary = self._networks.find(config.network_mode).name
                except NotFound:
                    primary = config.network_mode
                if not any(k == primary or k == config.network_mode for k in networks):
                    networks = {primary: EndpointRequest(), **networks}
                networks = {(primary if k == config.network_mode else k): v for k, v in networks.items()}
            upgraded = replace(config, networks=networks, networks_complete=True)
            self._state.commit(put=[replace(container, config=upgraded)])

    # -- restart reconcile ----------------------------------------------------------------

    async def restore(self) -> None:
        """After a daemon (re)start: remove what runc runs that the store does not consider
        running, re-arm watchers of containers still running, finish those that died while
        cnmd was away, and remove every sandbox, endpoint and netns that no running
        container owns."""
        # ONE listing of runc's state for every container: a runc call per container
        # would make a restart with 1,000 containers take seconds
        runc = await self._runtime.states()
        await self._reap_unrecorded(runc)
        for container in list(self._state.containers.values()):
            if not container.running:
                continue
            known = runc.get(container.id)
            pid = known.pid if known is not None and known.running else 0
            if pid and pid == container.state.pid:
                run = _Run(pid=pid, exited=asyncio.get_running_loop().create_future())
                self._runs[container.id] = run
                run.watcher = asyncio.get_running_loop().create_task(self._watch(container.id, run))
                sandbox = self._state.sandbox_of(container.id)
                if self._publisher is not None:
                    for ep in self._state.endpoints_of_container(container.id):
                        await self._publisher.restore(ep)
                if sandbox is not None:
                    try:
                        await self._naming.publish(
                            container, sandbox, self._state.endpoints_of_container(container.id)
                        )
                    except CnmError as exc:
                        log.warning("restoring names of %s: %s", container.name, exc)
                continue
            log.info("container %s died while cnmd was down", container.name)
            errors = await self._teardown_network(container)
            try:
                await self._runtime.cleanup(container.id)
            except CnmError as exc:
                errors.append(exc)
            state = replace(
                container.state,
                status=EXITED,
                paused=False,
                pid=0,
                exit_code=UNKNOWN_EXIT,
                finished_at=now_rfc3339(),
            )
            self._state.commit(put=[replace(container, state=state, sandbox_id="")])
            for err in errors:
                log.warning("reconcile of %s: %s", container.name, err)
        live = {c.id for c in self._state.containers.values() if c.running}
        for sandbox in [s for s in self._state.sandboxes.values() if s.container_id not in live]:
            for ep in self._state.endpoints_of_container(sandbox.container_id):
                await self._detach(ep, sandbox)
            if sandbox.key:
                await self._kernel.delete_netns(sandbox.key)
            self._state.commit(delete=[sandbox])
        for ep in [e for e in self._state.endpoints.values() if e.container_id not in live]:
            await self._detach(ep, None)
        keys = {s.key for s in self._state.sandboxes.values()}
        for entry in os.listdir(self._netns_dir):
            path = os.path.join(self._netns_dir, entry)
            if path not in keys:
                log.info("removing stale netns %s", path)
                await self._kernel.delete_netns(path)

    async def _reap_unrecorded(self, runc: Mapping[str, RunState]) -> None:
        """Reconcile with runc's own list (every container under cnmd's runc root): one the
        store does not mark running -- a start that cnmd died in the middle of, after
        ``runc run`` went ahead -- is killed and deleted (its cgroup and rootfs mount go
        too), and its directories as well when the store does not know it at all.

        Killed, not adopted: the start never reported success and the network it was given
        (sandbox, endpoints) was never recorded, so it is removed as an orphan in this same
        restore; the store's view decides what runs, as in Docker's live-restore, where a
        task the daemon does not consider running is not brought back."""
        for cid, entry in runc.items():
            container = self._state.containers.get(cid)
            if container is not None and container.running:
                continue  # running per the store: checked against runc below
            log.warning(
                "runc has container %s (%s, pid %s) that cnm does not consider running: killing and deleting it",
                cid[:12],
                entry.status or "?",
                entry.pid,
            )
            try:
                await self._runtime.cleanup(cid)  # runc delete --force: SIGKILL, state, cgroup
                if container is None:
                    await self._runtime.remove(cid)
            except CnmError as exc:
                log.error("removing container %s left by a crash: %s", cid[:12], exc)

    async def close(self) -> None:
        """Daemon shutdown: stop watching (containers keep running: live restore)."""
        for run in self._runs.values():
            if run.watcher is not None:
                run.watcher.cancel()
        for task in self._restarts.values():  # pending restarts resume at the next start
            task.cancel()
        self._restarts.clear()
        self.execs.close()


__all__ = ["Containers", "parse_signal"]
