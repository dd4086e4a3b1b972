"""Exit watching and restart policies.

``Exits`` owns what happens after a container's process ends: a watcher task per run waits
for the exit (through the runtime's pidfd), then, under the container's locks, its sandbox
is destroyed, runc cleans up, the exit is recorded, and the restart policy decides: a
restart after Docker's backoff (``restarting`` meanwhile), or an ``--rm`` removal.  At
daemon start it resumes the restarts that were due (``resume_restarts``).

Docker's restart manager: the first restart after 100 ms, each next one twice as late,
at most a minute apart; a run of 10 s or more starts the series over.  While cnmd runs, a
container stopped or killed by its user is never restarted by its policy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from cnm.engine.guard import hold_container, hold_start
from cnm.engine.runs import Run, Runs
from cnm.engine.sandbox import release_network
from cnm.engine.services import Services, now_rfc3339
from cnm.errors import CnmError, Conflict, NotFound
from cnm.model.container import (
    EXITED,
    RESTART_ALWAYS,
    RESTART_NO,
    RESTART_ON_FAILURE,
    RESTART_UNLESS_STOPPED,
    RESTARTING,
    Container,
    ContainerConfig,
    ContainerState,
)

if TYPE_CHECKING:
    from cnm.engine.starts import Starts

log = logging.getLogger("cnm.engine")

UNKNOWN_EXIT = 255

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


class Exits:
    def __init__(self, svc: Services, runs: Runs) -> None:
        self._svc = svc
        self._state = svc.state
        self._runs = runs
        self._restarts: dict[str, asyncio.Task[None]] = {}  # pending restarts by policy
        self._delays: dict[str, float] = {}  # each container's last restart delay
        self._starts: Starts | None = None
        self._remove: Callable[[str, bool], Awaitable[None]] | None = None

    def bind(self, starts: Starts, remove: Callable[[str, bool], Awaitable[None]]) -> None:
        """Wiring: the start a restart runs, the removal an ``--rm`` exit gets."""
        self._starts, self._remove = starts, remove

    # -- watching -------------------------------------------------------------------------

    def watch(self, container_id: str, run: Run) -> None:
        """Arm the watcher of a run that just began (or was adopted at daemon start)."""
        run.watcher = asyncio.get_running_loop().create_task(self._watch(container_id, run))

    async def _watch(self, container_id: str, run: Run) -> None:
        try:
            code = await self._svc.runtime.wait_exit(container_id, run.pid)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the watcher must always finish the container
            log.error("waiting for container %s: %s", container_id[:12], exc)
            code = UNKNOWN_EXIT
        await self._finish(container_id, run.pid, code)

    async def _finish(self, container_id: str, pid: int, code: int) -> None:
        """The container's init exited: release its network, clean up runc, record it."""
        async with hold_container(self._svc, container_id):
            container = self._state.containers.get(container_id)
            if container is None or container.state.pid != pid:
                return
            errors = await self.teardown(container)
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
            await self._state.commit(put=[exited])
            self._svc.events.container("die", exited, exitCode=str(code))
            run = self._runs.active.pop(container_id, None)
            if restart:
                ran_for = time.monotonic() - run.started if run is not None else 0.0
                delay = next_delay(self._delays.get(container_id, 0.0), ran_for)
                self.schedule_restart(container_id, delay)
        for err in errors:
            log.warning("container %s teardown: %s", container.name, err)
        log.info("container %s (%s) exited with %d", container.name, container.short_id, code)
        if run is not None and not run.exited.done():
            run.exited.set_result(code)
        if container.config.auto_remove and self._remove is not None:
            try:
                await self._remove(container_id, True)
            except (NotFound, Conflict):  # gone, or a removal is already under way
                pass

    async def teardown(self, container: Container) -> list[BaseException]:
        """Idempotent: the container's network (sandbox, endpoints), then runc's state."""
        errors = await release_network(self._svc, container)
        try:
            await self._svc.runtime.cleanup(container.id)
        except CnmError as exc:
            errors.append(exc)
        return errors

    # -- restart policies -----------------------------------------------------------------

    def schedule_restart(self, container_id: str, delay: float) -> None:
        self._delays[container_id] = delay
        self.cancel_restart(container_id)
        task = asyncio.get_running_loop().create_task(self._restart_later(container_id, delay))
        self._restarts[container_id] = task

    def cancel_restart(self, container_id: str) -> bool:
        """Drop a pending restart; True if there was one."""
        task = self._restarts.pop(container_id, None)
        if task is None or task is asyncio.current_task():
            return False
        task.cancel()
        return True

    def forget(self, container_id: str) -> None:
        """The container is gone: no restart, no backoff remembered."""
        self.cancel_restart(container_id)
        self._delays.pop(container_id, None)

    async def _restart_later(self, container_id: str, delay: float) -> None:
        """Start the container again after ``delay``, as its policy says, unless the user
        stopped, started or removed it meanwhile.  A restart that fails leaves the container
        exited with the error (Docker's daemon gives up there too: no loop of failures)."""
        await asyncio.sleep(delay)
        assert self._starts is not None
        async with hold_start(self._svc, container_id):
            if self._restarts.get(container_id) is not asyncio.current_task():
                return
            self._restarts.pop(container_id, None)
            container = self._state.containers.get(container_id)
            if container is None or container.running or container_id in self._runs.removing:
                return
            count = container.state.restart_count + 1
            container = replace(container, state=replace(container.state, restart_count=count))
            try:
                run = await self._starts.start_locked(container, self._svc.image_of(container))
            except Exception as exc:
                log.warning("restart of %s by its policy failed: %s", container.name, exc)
                state = replace(
                    container.state, status=EXITED, error=str(exc), exit_code=128, finished_at=now_rfc3339()
                )
                await self._state.commit(put=[replace(container, state=state)])
                return
        log.info("container %s restarted by its policy (%s)", container.name, container.config.restart_policy)
        self.watch(container_id, run)

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
                    await self._state.commit(
                        put=[replace(container, state=replace(container.state, status=EXITED))]
                    )
                continue
            if container.state.status != RESTARTING:
                await self._state.commit(
                    put=[replace(container, state=replace(container.state, status=RESTARTING))]
                )
            self.schedule_restart(container.id, 0.0)

    def close(self) -> None:
        """Daemon shutdown: pending restarts resume at the next start."""
        for task in self._restarts.values():
            task.cancel()
        self._restarts.clear()


__all__ = ["Exits", "next_delay", "should_restart"]
