"""The end of a run and of a container: stop, kill, remove, wait.

``Stopping`` only sends signals for ``stop`` and ``kill``; the exit handling that follows
(``engine/exits.py``) changes the records, under the locks.  A container's lock is never
held while waiting for its process to exit, so exit handling can always take it.  While
``rm`` runs the container is marked for removal: a start is refused (Docker's 409), so
``rm -f`` always ends with the container gone.
"""

from __future__ import annotations

import asyncio
import signal as signals
from dataclasses import replace

from cnm.engine.execs import Execs
from cnm.engine.exits import Exits
from cnm.engine.freezer import Freezer
from cnm.engine.guard import hold_container
from cnm.engine.lookup import find_container
from cnm.engine.runs import Runs
from cnm.engine.sandbox import release_network
from cnm.engine.services import Services
from cnm.errors import CnmError, Conflict, InvalidArgument, NotFound, NotModified, TeardownErrors
from cnm.model.container import EXITED, RESTART_NO, RESTARTING, Container


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


class Stopping:
    def __init__(self, svc: Services, runs: Runs, exits: Exits, execs: Execs, freezer: Freezer) -> None:
        self._svc = svc
        self._state = svc.state
        self._runtime = svc.runtime
        self._events = svc.events
        self._runs = runs
        self._exits = exits
        self._execs = execs
        self._freezer = freezer

    async def _mark_stopped_by_user(self, container: Container) -> Container:
        """``stop``/``kill``: no restart by policy (``unless-stopped`` remembers it across
        a daemon restart); a pending restart is dropped and the container is exited."""
        async with self._svc.locks.hold(containers=[container.id]):
            now = self._state.containers.get(container.id)
            if now is None:
                raise NotFound(f"No such container: {container.id}")
            state = replace(now.state, stopped_by_user=True)
            if self._exits.cancel_restart(container.id) or state.status == RESTARTING:
                state = replace(state, status=EXITED)
            if state != now.state:
                now = replace(now, state=state)
                await self._state.commit(put=[now])
            return now

    async def stop(self, ref: str, timeout: int | None = None, signal: str | None = None) -> None:
        container = find_container(self._state, ref)
        if container.state.status == RESTARTING:
            await self._mark_stopped_by_user(container)
            return
        run = self._runs.get(container.id)
        if not container.running or run is None:
            raise NotModified(f"container {container.id} is not running")
        if container.config.restart_policy != RESTART_NO:
            await self._mark_stopped_by_user(container)
        sig = parse_signal(signal or container.config.stop_signal, signals.SIGTERM)
        await self._freezer.thaw(container)
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
        container = find_container(self._state, ref)
        sig = parse_signal(signal)
        if container.state.status == RESTARTING:
            raise Conflict(f"Container {container.id} is restarting, wait until the container is running")
        if not container.running:
            raise Conflict(f"container {container.id} is not running")
        if container.config.restart_policy != RESTART_NO:
            await self._mark_stopped_by_user(container)
        if sig == signals.SIGKILL:  # a frozen process dies only once thawed (cgroup v1)
            await self._freezer.thaw(container)
        await self._runtime.kill(container.id, sig)
        self._events.container("kill", container, signal=str(int(sig)))

    # -- remove / wait --------------------------------------------------------------------

    async def remove(self, ref: str, force: bool = False) -> None:
        """Docker's ``rm [-f]``."""
        container = find_container(self._state, ref)
        if container.id in self._runs.removing:
            raise Conflict(f"removal of container {container.id} is already in progress")
        self._runs.removing.add(container.id)
        try:
            await self._remove(container.id, force)
        finally:
            self._runs.removing.discard(container.id)

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
                await self._freezer.thaw(container)
                await self._runtime.kill(container.id, signals.SIGKILL)
                self._events.container("kill", container, signal=str(int(signals.SIGKILL)))
                if run is not None:
                    await run.exited
            async with hold_container(self._svc, container.id):
                container = self._state.containers.get(container.id)
                if container is None:
                    return
                if container.running:
                    if (
                        container.id in self._runs.active
                    ):  # a start (or a restart) under way when the removal began
                        continue
                    raise Conflict(f"container {container.id} is running and cannot be stopped")
                errors = await release_network(self._svc, container)  # nothing left normally
                try:
                    await self._runtime.remove(container.id)
                except CnmError as exc:
                    errors.append(exc)
                await self._state.commit(delete=[container])
                self._events.container("destroy", container)
                self._execs.forget(container.id)
                self._exits.forget(container.id)
                break
        for fut in self._runs.removed.pop(container.id, []):
            if not fut.done():
                fut.set_result(container.state.exit_code)
        if errors:
            raise TeardownErrors(f"container {container.name}", errors)

    async def wait(self, ref: str, condition: str = "not-running") -> int:
        container = find_container(self._state, ref)
        if condition not in ("not-running", "next-exit", "removed"):
            raise InvalidArgument(f"invalid condition: {condition!r}")
        if condition == "removed":
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._runs.removed.setdefault(container.id, []).append(fut)
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
