"""Pause and unpause: the cgroup freezer stops or resumes every process of a container.

A paused container stays running (Docker's ``Paused``), its network untouched.  A frozen
process cannot act on a signal, so a stop or a kill thaws it first (``thaw``).  Locks: the
container's, through ``guard.hold_container``.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

from cnm.engine.guard import current, hold_container
from cnm.engine.lookup import find_container
from cnm.engine.services import Services
from cnm.errors import Conflict
from cnm.model.container import RESTARTING, Container


class Freezer:
    def __init__(self, svc: Services) -> None:
        self._svc = svc
        self._state = svc.state
        self._runtime = svc.runtime
        self._events = svc.events

    async def pause(self, ref: str) -> None:
        """Docker's ``pause``: the cgroup freezer stops every process of the container; it
        stays running (``Paused``), its network untouched."""
        container = find_container(self._state, ref)
        async with hold_container(self._svc, container.id):
            container = current(self._svc, container.id, ref)
            if container.state.status == RESTARTING:
                raise Conflict(f"Container {container.id} is restarting, wait until the container is running")
            if not container.running:
                raise Conflict(f"Container {container.id} is not running")
            if container.state.paused:
                raise Conflict(f"Container {container.id} is already paused")
            await self._runtime.pause(container.id)
            await self._state.commit(put=[replace(container, state=replace(container.state, paused=True))])
            self._events.container("pause", container)

    async def unpause(self, ref: str) -> None:
        container = find_container(self._state, ref)
        async with hold_container(self._svc, container.id):
            container = current(self._svc, container.id, ref)
            if not container.running or not container.state.paused:
                raise Conflict(f"Container {container.id} is not paused")
            await self._runtime.resume(container.id)
            await self._state.commit(put=[replace(container, state=replace(container.state, paused=False))])
            self._events.container("unpause", container)

    async def thaw(self, container: Container) -> None:
        """Before a stop or a kill: a frozen process cannot act on a signal, so the
        container is unpaused first, as Docker does."""
        if container.state.paused:
            with contextlib.suppress(Conflict):
                await self.unpause(container.id)
