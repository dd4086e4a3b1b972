"""Exec instances: processes started inside running containers (``docker exec``).

Held in memory only, like Docker's: an exec does not survive the daemon, and a container's
execs are forgotten when it is removed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from cnm.engine.events import Events
from cnm.errors import Conflict, InvalidArgument, NotFound, RuntimeFailure
from cnm.model.container import Container, ExecSpec
from cnm.model.values import new_id
from cnm.runtime.api import Process, Runtime


def exec_failure_code(message: str) -> int:
    """Docker's exit code for a process that could not be started: 127 when the executable
    is missing, 126 when it cannot be run."""
    return 127 if "executable file not found" in message or "no such file or directory" in message else 126


@dataclass
class ExecRecord:
    id: str
    spec: ExecSpec
    running: bool = False
    started: bool = False
    exit_code: int | None = None
    pid: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Execs:
    def __init__(
        self, runtime: Runtime, running: Callable[[str], Container | None], events: Events | None = None
    ) -> None:
        """``running(container_id)``: the container if it is running, else None."""
        self._runtime = runtime
        self._running = running
        self._events = events if events is not None else Events()
        self._records: dict[str, ExecRecord] = {}

    def create(self, container: Container, spec: ExecSpec) -> str:
        if not container.running:
            raise Conflict(f"container {container.id} is not running")
        if container.state.paused:
            raise Conflict(f"Container {container.id} is paused, unpause the container before exec")
        if not spec.cmd:
            raise InvalidArgument("No exec command specified")
        exec_id = new_id()
        self._records[exec_id] = ExecRecord(id=exec_id, spec=replace(spec, container_id=container.id))
        self._events.container(f"exec_create: {' '.join(spec.cmd)}", container, execID=exec_id)
        return exec_id

    def record(self, exec_id: str) -> ExecRecord:
        record = self._records.get(exec_id)
        if record is None:
            raise NotFound(f"No such exec instance: {exec_id}")
        return record

    async def start(self, exec_id: str) -> Process:
        """Start the process; its exit code is recorded when it ends."""
        record = self.record(exec_id)
        if record.started:
            raise Conflict(f"exec {exec_id} has already started")
        container = self._running(record.spec.container_id)
        if container is None:
            raise Conflict(f"container {record.spec.container_id} is not running")
        if container.state.paused:
            raise Conflict(f"Container {container.id} is paused, unpause the container before exec")
        record.started = True
        try:
            process = await self._runtime.exec(record.spec)
        except RuntimeFailure as exc:
            record.exit_code = exec_failure_code(exc.message)
            raise
        record.running, record.pid = True, process.pid
        self._events.container(f"exec_start: {' '.join(record.spec.cmd)}", container, execID=exec_id)

        async def reap() -> None:
            try:
                record.exit_code = await process.wait()
                self._events.container("exec_die", container, execID=exec_id, exitCode=str(record.exit_code))
            finally:
                record.running = False

        record.task = asyncio.get_running_loop().create_task(reap())
        return process

    def forget(self, container_id: str) -> None:
        """The container is gone: so are its execs."""
        for exec_id in [r.id for r in self._records.values() if r.spec.container_id == container_id]:
            del self._records[exec_id]

    def close(self) -> None:
        for record in self._records.values():
            if record.task is not None:
                record.task.cancel()
