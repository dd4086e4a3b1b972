"""Looking at containers without changing them: stats, top, logs, attach, file paths.

``Observe`` reads the records and asks the runtime and the kernel; it takes no lock and
writes nothing, so none of it can race with a change (a container that stops meanwhile
reads as stopped, or as zeros).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from cnm.engine.lookup import find_container
from cnm.engine.services import Services
from cnm.errors import CnmError, Conflict, InvalidArgument
from cnm.kernel.api import LinkStats
from cnm.model.container import RESTARTING, Container
from cnm.runtime import stats
from cnm.runtime.logs import Record
from cnm.runtime.output import Subscription

log = logging.getLogger("cnm.engine")

ATTACH_START_TIMEOUT = 60.0  # seconds an attached stdin waits for the container to start


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


class Observe:
    def __init__(self, svc: Services) -> None:
        self._svc = svc
        self._state = svc.state
        self._runtime = svc.runtime

    def _find(self, ref: str) -> Container:
        return find_container(self._state, ref)

    def paths(self, container_id: str) -> ContainerPaths:
        container = self._find(container_id)
        root = self._runtime.container_dir(container_id)
        return ContainerPaths(
            hostname=f"{root}/hostname",
            hosts=f"{root}/hosts",
            resolv_conf=f"{root}/resolv.conf",
            log=self._runtime.log_path(container_id) if container.config.log_driver == "json-file" else "",
        )

    def size(self, ref: str) -> int:
        """Bytes the container wrote to its own layer (Docker's ``SizeRw``)."""
        container = self._find(ref)
        return stats.tree_size(os.path.join(self._runtime.container_dir(container.id), "upper"))

    def _live(self, ref: str) -> Container:
        container = self._find(ref)
        if container.state.status == RESTARTING:
            raise Conflict(f"Container {container.id} is restarting, wait until the container is running")
        if not container.running:
            raise Conflict(f"Container {container.id} is not running")
        return container

    async def top(self, ref: str, ps_args: str) -> tuple[list[str], list[list[str]]]:
        """Docker's ``top``: the host's ``ps`` with ``ps_args``, its lines kept for the pids
        of the container's cgroup."""
        container = self._live(ref)
        pids = stats.procs(self._runtime.cgroup(container.id))
        return await stats.top(pids, ps_args)

    async def stats(self, ref: str) -> ContainerSample:
        """One reading of a container's counters: its cgroup's and its interfaces' (read in
        its network namespace, so eth0... as the container names them and rx/tx as it
        sees them).  A container that is not running reads as zeros, as in Docker."""
        container = self._find(ref)
        host_cpu = stats.system_cpu_ns()
        if not container.running:
            return ContainerSample(container, stats.CgroupStats(), host_cpu, {})
        reading = await asyncio.to_thread(stats.read_stats, self._runtime.cgroup(container.id))
        sandbox = self._state.sandbox_of(container.id)
        networks: dict[str, LinkStats] = {}
        if sandbox is not None and sandbox.key:
            try:
                links = await self._svc.kernel.links(sandbox.key)
            except CnmError as exc:  # the container is exiting: its namespace is going away
                log.debug("interfaces of %s: %s", container.name, exc)
                links = []
            networks = {
                link.name: link.stats for link in links if link.stats is not None and link.name != "lo"
            }
        return ContainerSample(container, reading, host_cpu, networks)

    def logs(
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
        container = self._find(ref)
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
        return self._runtime.attach_output(self._find(ref).id)

    def resize_tty(self, ref: str, height: int, width: int) -> None:
        container = self._find(ref)
        if container.running:
            self._runtime.resize(container.id, height, width)

    async def attach_stdin(self, ref: str) -> asyncio.StreamWriter | None:
        """The container's stdin, or None.  ``run -i`` attaches before ``start``, when the
        stdin pipe does not exist yet: wait (bounded) for the container to start."""
        container = self._find(ref)
        if not container.config.open_stdin:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ATTACH_START_TIMEOUT
        while container.state.status == "created" and loop.time() < deadline:
            await asyncio.sleep(0.02)
            now = self._state.containers.get(container.id)
            if now is None:
                return None
            container = now
        return await self._runtime.open_stdin(container.id)

    def export(self, ref: str) -> AsyncGenerator[bytes, None]:
        """The container's filesystem as tar chunks; NotFound at once for an unknown ref."""
        container = self._find(ref)
        image_id = container.config.image_id or self._runtime.find_image(container.config.image).id
        return self._runtime.export(container.id, image_id)
