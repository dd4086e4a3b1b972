"""Container lifecycle: create, start (sandbox + endpoints + runc), exit handling, stop,
kill, remove, connect/disconnect of running containers, exec, and restart reconcile.

Locking: a container's lock is held for its critical sections only (never while waiting for
its process to exit), so exit handling can always take it.  A start records the sandbox,
its endpoints and the running state in one transaction after runc agreed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal as signals
import socket
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace

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
    RUNNING,
    Container,
    ContainerConfig,
    Image,
)
from cnm.model.endpoint import Endpoint, EndpointRequest, Sandbox
from cnm.model.network import Network
from cnm.model.values import new_id, parse_container_name
from cnm.portmap.requests import port_requests
from cnm.runtime.api import Runtime, StartRequest

log = logging.getLogger("cnm.engine")

UNKNOWN_EXIT = 255


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


@dataclass
class _Run:
    """A running container's live handles (never stored)."""

    pid: int
    exited: asyncio.Future[int]
    watcher: asyncio.Task[None] | None = None


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
    ) -> None:
        self._state = state
        self._networks = networks
        self._runtime = runtime
        self._kernel = kernel
        self._netns_dir = os.path.join(exec_root, "netns")
        self._locks = locks
        self._naming = naming
        self._publisher = publisher
        self._runs: dict[str, _Run] = {}
        self._removed: dict[str, list[asyncio.Future[int]]] = {}
        self.execs = Execs(runtime, self._running_container)
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
        if mode.startswith("container:") and not mode[len("container:"):]:
            raise InvalidArgument("invalid network mode: invalid container format container:<name|id>")
        if mode == "host" and config.port_bindings:
            warnings.append("Published ports are discarded when using host network mode")
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
        return container, warnings

    # -- start ----------------------------------------------------------------------------

    async def start(self, ref: str) -> None:
        container = self.find(ref)
        async with self._locks.hold(container.id):
            container = self._state.containers[container.id]
            if container.running:
                raise NotModified(f"container {container.id} is already running")
            image = self._find_image(container)
            run = await self._start_locked(container, image)
        run.watcher = asyncio.get_running_loop().create_task(self._watch(container.id, run))

    def _find_image(self, container: Container) -> Image:
        try:
            return self._runtime.find_image(container.config.image_id or container.config.image)
        except NotFound:
            return self._runtime.find_image(container.config.image)

    def _network_plan(self, container: Container) -> list[tuple[Network, EndpointRequest, bool]]:
        """The networks a start joins, primary first: (network, request, is_primary)."""
        config = container.config
        requests = dict(config.networks)
        mode = config.network_mode
        plan: list[tuple[Network, EndpointRequest, bool]] = []
        keys = [mode] + [k for k in requests if k != mode]
        seen: set[str] = set()
        for key in keys:
            try:
                network = self._networks.find(key)
            except NotFound:
                raise NotFound(f"failed to set up container networking: network {key} not found") from None
            if network.id in seen:
                continue
            seen.add(network.id)
            request = requests.get(key) or requests.get(network.name) or requests.get(network.id) or EndpointRequest()
            if network.name in ("host", "none") and len(keys) > 1 and key != mode:
                raise InvalidArgument(
                    "container cannot be connected to multiple networks with one of the networks in "
                    f"{'host' if network.name == 'host' else 'private (none)'} mode"
                )
            self._networks.check_request(network, request)
            plan.append((network, request, key == mode))
        return plan

    async def _start_locked(self, container: Container, image: Image) -> _Run:
        config = container.config
        mode = config.network_mode
        async with AsyncExitStack() as stack:
            endpoints: list[Endpoint] = []
            sandbox: Sandbox | None = None
            if mode.startswith("container:"):
                target = self.find(mode[len("container:"):])
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
                    container.state, status=RUNNING, pid=pid, exit_code=0, error="", started_at=now_rfc3339()
                ),
            )
            self._state.commit(put=[running, *([sandbox] if sandbox else []), *endpoints])
            stack.pop_all()
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
        async with self._locks.hold(container_id):
            container = self._state.containers.get(container_id)
            if container is None or container.state.pid != pid:
                return
            errors = await self._teardown_network(container)
            try:
                await self._runtime.cleanup(container_id)
            except CnmError as exc:
                errors.append(exc)
            exited = replace(
                container,
                sandbox_id="",
                state=replace(container.state, status=EXITED, pid=0, exit_code=code, finished_at=now_rfc3339()),
            )
            self._state.commit(put=[exited])
            run = self._runs.pop(container_id, None)
        for err in errors:
            log.warning("container %s teardown: %s", container.name, err)
        log.info("container %s (%s) exited with %d", container.name, container.short_id, code)
        if run is not None and not run.exited.done():
            run.exited.set_result(code)
        if container.config.auto_remove:
            try:
                await self.remove(container_id, force=True)
            except NotFound:
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

    # -- stop / kill / remove / wait ------------------------------------------------------

    async def stop(self, ref: str, timeout: int | None = None, signal: str | None = None) -> None:
        container = self.find(ref)
        run = self._runs.get(container.id)
        if not container.running or run is None:
            raise NotModified(f"container {container.id} is not running")
        sig = parse_signal(signal or container.config.stop_signal, signals.SIGTERM)
        grace = container.config.stop_timeout if timeout is None else timeout
        await self._runtime.kill(container.id, sig)
        try:
            await asyncio.wait_for(asyncio.shield(run.exited), timeout=max(grace, 0))
        except TimeoutError:
            await self._runtime.kill(container.id, signals.SIGKILL)
            await run.exited

    async def kill(self, ref: str, signal: str = "SIGKILL") -> None:
        container = self.find(ref)
        sig = parse_signal(signal)
        if not container.running:
            raise Conflict(f"container {container.id} is not running")
        await self._runtime.kill(container.id, sig)

    async def remove(self, ref: str, force: bool = False) -> None:
        container = self.find(ref)
        if container.running:
            if not force:
                raise Conflict(
                    f'cannot remove container "/{container.name}": container is running: '
                    "stop the container before removing or force remove"
                )
            run = self._runs.get(container.id)
            await self._runtime.kill(container.id, signals.SIGKILL)
            if run is not None:
                await run.exited
        async with self._locks.hold(container.id):
            container = self._state.containers.get(container.id)
            if container is None:
                return
            if container.running:
                raise Conflict(f"container {container.id} was restarted while being removed")
            errors = await self._teardown_network(container)  # nothing left normally
            try:
                await self._runtime.remove(container.id)
            except CnmError as exc:
                errors.append(exc)
            self._state.commit(delete=[container])
            self.execs.forget(container.id)
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

    # -- rename ---------------------------------------------------------------------------

    async def rename(self, ref: str, new_name: str) -> None:
        """Docker's ``rename``: a new unique name; the endpoints' names and the DNS records
        follow at once (the next query answers to the new name only)."""
        container = self.find(ref)
        name = parse_container_name(new_name)
        async with self._locks.hold(container.id):
            container = self._state.containers[container.id]
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
            sandbox = self._state.sandbox_of(container.id)
            if renamed.running and sandbox is not None and sandbox.key:
                await self._naming.publish(renamed, sandbox, endpoints)

    # -- connect / disconnect -------------------------------------------------------------

    async def connect(self, network_ref: str, ref: str, request: EndpointRequest) -> None:
        container = self.find(ref)
        async with self._locks.hold(container.id):
            container = self._state.containers[container.id]
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
                raise Forbidden(f"endpoint with name {container.name} already exists in network {network.name}")
            self._networks.check_request(network, request)
            sandbox = self._state.sandbox_of(container.id)
            if sandbox is None:
                raise SystemFailure(f"container {container.id} has no sandbox")
            async with AsyncExitStack() as stack:
                ep = await self._networks.attach(stack, network, container, sandbox, request)
                if ep.default_route and not network.internal:  # it is the gateway endpoint now
                    ep = await self._publish(stack, network, ep, container, self._find_image(container))
                networks = {k: v for k, v in container.config.networks.items() if k not in (network.name, network.id)}
                networks[network.name] = request
                updated = replace(container, config=replace(container.config, networks=networks))
                self._state.commit(put=[ep, updated])
                stack.pop_all()
            await self._refresh_names(updated)

    def _record_request(self, container: Container, network_ref: str, request: EndpointRequest) -> None:
        try:
            key = self._networks.find(network_ref).name
        except NotFound:
            key = network_ref  # Docker checks at start
        networks = dict(container.config.networks)
        if key in networks or key == container.config.network_mode:
            raise Forbidden(f"endpoint with name {container.name} already exists in network {key}")
        networks[key] = request
        self._state.commit(put=[replace(container, config=replace(container.config, networks=networks))])

    async def disconnect(self, network_ref: str, ref: str, force: bool = False) -> None:
        container = self.find(ref)
        async with self._locks.hold(container.id):
            container = self._state.containers[container.id]
            if not container.running:
                try:
                    network = self._networks.find(network_ref)
                    names = {network.name, network.id, network_ref}
                except NotFound:
                    if not force:
                        raise
                    names = {network_ref}
                if container.config.network_mode == "host" and "host" in names:
                    raise InvalidArgument(
                        "cannot disconnect container from host network - container was created in host network mode"
                    )
                kept = {k: v for k, v in container.config.networks.items() if k not in names}
                if len(kept) == len(container.config.networks) and container.config.network_mode not in names:
                    raise NotFound(f"container {container.id} is not connected to the network {network_ref}")
                config = replace(container.config, networks=kept)
                if config.network_mode in names:
                    config = replace(config, network_mode="none")
                self._state.commit(put=[replace(container, config=config)])
                return
            network = self._networks.find(network_ref)
            if container.config.network_mode == "host" and network.name == "host":
                raise InvalidArgument(
                    "cannot disconnect container from host network - container was created in host network mode"
                )
            ep = next(
                (e for e in self._state.endpoints_of_container(container.id) if e.network_id == network.id), None
            )
            if ep is None:
                raise NotFound(f"container {container.id} is not connected to network {network.name}")
            sandbox = self._state.sandbox_of(container.id)
            errors = await self._detach(ep, sandbox)
            kept = {k: v for k, v in container.config.networks.items() if k not in (network.name, network.id)}
            updated = replace(container, config=replace(container.config, networks=kept))
            self._state.commit(put=[updated])
            if ep.default_route and sandbox is not None and sandbox.key:
                errors.extend(await self._promote_gateway(updated, sandbox))
            await self._refresh_names(updated)
            if errors:
                raise TeardownErrors(f"disconnect of {container.name} from {network.name}", errors)

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
                    promoted = await self._publish(stack, network, promoted, container, self._find_image(container))
                    self._state.commit(put=[promoted])
                    stack.pop_all()
            except CnmError as exc:
                return [exc]
            return []
        return []

    def _running_container(self, container_id: str) -> Container | None:
        container = self._state.containers.get(container_id)
        return container if container is not None and container.running else None

    # -- restart reconcile ----------------------------------------------------------------

    async def restore(self) -> None:
        """After a daemon (re)start: re-arm watchers of containers still running, finish
        those that died while cnmd was away, and remove every sandbox, endpoint and netns
        that no running container owns."""
        for container in list(self._state.containers.values()):
            if not container.running:
                continue
            pid = await self._runtime.is_running(container.id)
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
                container.state, status=EXITED, pid=0, exit_code=UNKNOWN_EXIT, finished_at=now_rfc3339()
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

    async def close(self) -> None:
        """Daemon shutdown: stop watching (containers keep running: live restore)."""
        for run in self._runs.values():
            if run.watcher is not None:
                run.watcher.cancel()
        self.execs.close()


__all__ = ["Containers", "parse_signal"]
