"""The live side of containers, never stored: each running container's run (its pid, the
future of its exit, its watcher task), the containers an ``rm`` is removing, and who waits
for a removal.  One ``Runs`` per controller, shared by the container-lifecycle modules."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class Run:
    """A running container's live handles."""

    pid: int
    exited: asyncio.Future[int]
    watcher: asyncio.Task[None] | None = None
    started: float = field(default_factory=time.monotonic)


class Runs:
    def __init__(self) -> None:
        self.active: dict[str, Run] = {}  # by container id
        self.removing: set[str] = set()  # ids of containers an ``rm`` is removing
        self.removed: dict[str, list[asyncio.Future[int]]] = {}  # ``wait --condition removed``

    def new(self, container_id: str, pid: int) -> Run:
        """A run of ``container_id`` begins (or is adopted after a daemon restart)."""
        run = Run(pid=pid, exited=asyncio.get_running_loop().create_future())
        self.active[container_id] = run
        return run

    def get(self, container_id: str) -> Run | None:
        return self.active.get(container_id)

    def close(self) -> None:
        """Daemon shutdown: stop watching (containers keep running: live restore)."""
        for run in self.active.values():
            if run.watcher is not None:
                run.watcher.cancel()
