"""Starting a container: its sandbox, then its process, then one record of it all.

``Starts`` owns ``start`` (the user's) and ``start_locked`` (also the restart policy's):
the container's sandbox (its own, made by ``Sandbox.create``, or in ``container:`` mode the
running one it shares), the process through the runtime, and one transaction that records
the sandbox, its endpoints and the running state after runc agreed.  A failed start
leaves no endpoint, address, namespace or rule (the stack unwinds); the record keeps the
error, as Docker's does, and an ``--rm`` container is removed.

Locks: ``guard.hold_start`` (the networks joined, shared; the container; the container whose
sandbox is shared).
"""

from __future__ import annotations

import logging
import os
import signal as signals
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import replace

from cnm.engine.exits import Exits
from cnm.engine.guard import current, hold_start
from cnm.engine.lookup import find_container
from cnm.engine.runs import Run, Runs
from cnm.engine.sandbox import Sandbox
from cnm.engine.services import Services, now_rfc3339
from cnm.errors import CnmError, Conflict, InvalidArgument, NotModified
from cnm.model.container import FROM_BINDS, RUNNING, Container, ContainerConfig, Image
from cnm.runtime.api import StartRequest

log = logging.getLogger("cnm.engine")


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


class Starts:
    def __init__(
        self, svc: Services, runs: Runs, exits: Exits, remove: Callable[[str, bool], Awaitable[None]]
    ) -> None:
        """``remove(container_id, force)``: the removal an ``--rm`` start that failed gets."""
        self._svc = svc
        self._state = svc.state
        self._runs = runs
        self._exits = exits
        self._remove = remove

    async def start(self, ref: str) -> None:
        """Start a created or stopped container."""
        container = find_container(self._state, ref)
        async with hold_start(self._svc, container.id):
            container = current(self._svc, container.id, ref)
            if container.id in self._runs.removing:
                raise Conflict(f"container {container.id} is marked for removal and cannot be started")
            if container.state.paused:
                raise Conflict("cannot start a paused container, try unpause instead")
            if container.running:
                raise NotModified(f"container {container.id} is already running")
            self._exits.cancel_restart(container.id)
            # a start by the user begins a new life: no count, no "stopped by the user"
            container = replace(
                container, state=replace(container.state, restart_count=0, stopped_by_user=False)
            )
            try:
                run = await self.start_locked(container, self._svc.image_of(container))
            except Exception as exc:
                await self._record_start_error(container, exc)
                failed: Exception | None = exc
            else:
                failed = None
        if failed is not None:
            if container.config.auto_remove:
                try:
                    await self._remove(container.id, True)
                except CnmError as exc:
                    log.warning("removing %s after its failed start: %s", container.name, exc)
            raise failed
        self._exits.watch(container.id, run)

    async def _record_start_error(self, container: Container, exc: Exception) -> None:
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
            await self._state.commit(put=[replace(self._state.containers[container.id], state=state)])

    async def start_locked(self, container: Container, image: Image) -> Run:
        """The start itself, under ``hold_start``'s locks; the caller arms the watcher."""
        svc = self._svc
        config = container.config
        async with AsyncExitStack() as stack:
            own: Sandbox | None = None
            if config.network_mode.container:
                sandbox = Sandbox.shared(svc, config.network_mode.container)
            else:
                sandbox = own = await Sandbox.create(svc, stack, container, image)
                link_env = svc.naming.link_env(container)
                if link_env:  # legacy links add variables for this run only, like Docker
                    config = replace(config, env=(*link_env, *config.env))
            make_bind_sources(config)
            pid = await svc.runtime.start(
                StartRequest(
                    container=replace(container, config=config),
                    image=image,
                    netns_path=sandbox.netns,
                    hostname=sandbox.record.hostname,
                    files=sandbox.files,
                )
            )
            stack.push_async_callback(self._kill_and_cleanup, container.id)
            running = replace(
                container,
                sandbox_id=own.record.id if own else "",
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
            endpoints = own.endpoints() if own else []
            await self._state.commit(put=[running, *([own.record] if own else []), *endpoints])
            stack.pop_all()
        for ep in endpoints:
            svc.events.network("connect", self._state.networks[ep.network_id], container.id)
        svc.events.container("start", running)
        log.info("container %s (%s) started, pid %d", container.name, container.short_id, pid)
        return self._runs.new(container.id, pid)

    async def _kill_and_cleanup(self, container_id: str) -> None:
        try:
            await self._svc.runtime.kill(container_id, signals.SIGKILL)
        except CnmError:
            pass
        await self._svc.runtime.cleanup(container_id)
