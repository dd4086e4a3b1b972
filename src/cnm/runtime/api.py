"""The container runtime protocol: images, root filesystems and processes, through runc.

``cnm.runtime.runc.RuncRuntime`` implements it.  Layout on disk (everything under the two
daemon roots, so tests can run many daemons side by side):

    <data-root>/images/<hex>/rootfs/          an imported image, read-only lower layer
    <data-root>/containers/<id>/upper, work/  the container's overlay layers
    <data-root>/containers/<id>/hostname, hosts, resolv.conf   (written by the engine)
    <data-root>/containers/<id>/<id>-json.log[.N]  the container's log (json-file, rotated)
    <exec-root>/containers/<id>/stdout, stderr, stdin  FIFOs: the container's stdio (no tty)
    <exec-root>/runc/                         runc --root (state)
    <exec-root>/containers/<id>/bundle/       config.json and the rootfs mount point

The container writes its output into FIFOs that it holds open itself, so it keeps running
while cnmd restarts (its output waits in the pipes); cnmd copies them into the json-file
log and to attached clients (``cnm.runtime.output``).  A tty container's pty master is
held by cnmd only: it does not survive a cnmd restart.  cnmd is a child subreaper, so containers it started are
reparented to it and their exit codes are known; after a restart, an exit is still noticed
(pidfd) but its code is not (reported as 255 unless runc knows better).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from cnm.model.container import Container, ExecSpec, Image
from cnm.runtime.images import Loaded
from cnm.runtime.logs import Record
from cnm.runtime.output import Subscription
from cnm.runtime.stats import Cgroup


@dataclass(frozen=True, slots=True)
class ContainerFiles:
    """Host paths bind-mounted over the container's /etc files."""

    hostname: str
    hosts: str
    resolv_conf: str


@dataclass(frozen=True, slots=True)
class StartRequest:
    container: Container
    image: Image
    netns_path: str | None  # None: share the host's network namespace (--net host)
    hostname: str
    files: ContainerFiles


@dataclass(frozen=True, slots=True)
class RunState:
    """What runc says of one container: its status (``created``, ``running``, ``paused``,
    ``stopped``) and its init's pid (0 when none)."""

    status: str
    pid: int

    @property
    def running(self) -> bool:
        """Its init runs (a paused container's too)."""
        return self.status in ("running", "paused") and self.pid > 0


def run_states(listed: list[dict]) -> dict[str, RunState]:
    """``runc list --format json`` entries (``id``, ``status``, ``pid``) by id; entries
    without an id are dropped."""
    states = {}
    for entry in listed:
        cid = str(entry.get("id") or "")
        if cid:
            states[cid] = RunState(str(entry.get("status") or ""), int(entry.get("pid") or 0))
    return states


class Process(Protocol):
    """A process started by exec (or an attach session): pipes the API pumps to the client.
    With a tty, ``stdout`` carries both streams and ``stderr`` is None."""

    pid: int
    stdin: asyncio.StreamWriter | None
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader | None

    async def wait(self) -> int: ...

    def resize(self, height: int, width: int) -> None: ...


class Runtime(Protocol):
    # -- images ---------------------------------------------------------------------------
    async def import_image(self, reference: str, tar_path: str) -> Image:
        """Unpack a root-filesystem tar (optionally gzip/xz) as image ``reference``
        (``name[:tag]``, tag ``latest`` by default)."""

    def images(self) -> list[Image]: ...

    def find_image(self, reference: str) -> Image:
        """By ``name[:tag]``, full ``sha256:`` id, or unique id prefix; NotFound otherwise."""

    async def remove_image(self, reference: str) -> Image: ...

    async def tag_image(self, source: str, target: str) -> Image:
        """Point ``target`` (``name[:tag]``) at the image ``source`` names; NotFound when
        there is none, InvalidArgument when ``target`` is not a reference."""

    async def load_images(self, archive_path: str) -> list[Loaded]:
        """Load the images of a ``docker save`` archive (layers applied in order, whiteouts
        honoured, config kept); InvalidArgument naming what is wrong with the archive."""

    def export(self, container_id: str, image_id: str) -> AsyncGenerator[bytes, None]:
        """The container's root filesystem as it sees it, as tar chunks (``docker export``)."""

    # -- containers -----------------------------------------------------------------------
    def container_dir(self, container_id: str) -> str:
        """``<data-root>/containers/<id>``: where the engine writes hostname/hosts/resolv.conf."""

    async def start(self, request: StartRequest) -> int:
        """Mount the rootfs, write the OCI bundle, ``runc run -d``; return the pid."""

    async def wait_exit(self, container_id: str, pid: int) -> int:
        """Wait until ``pid`` (the container's init) exits; its exit code (128+signal when
        killed by one; 255 when it is not our child and runc does not know)."""

    async def kill(self, container_id: str, signal: int) -> None:
        """Signal the container's init; NotModified-free: a stopped container is fine."""

    async def cleanup(self, container_id: str) -> None:
        """After exit: ``runc delete``, unmount the rootfs.  Idempotent."""

    async def remove(self, container_id: str) -> None:
        """Delete the container's directories (layers, logs, files).  Idempotent."""

    async def is_running(self, container_id: str) -> int:
        """The pid of the container's init if runc says it is running, else 0."""

    async def pause(self, container_id: str) -> None:
        """Freeze every process of the container (``runc pause``: the cgroup freezer)."""

    async def resume(self, container_id: str) -> None:
        """Thaw a paused container (``runc resume``)."""

    def cgroup(self, container_id: str) -> Cgroup:
        """Where the container's cgroup is (v2, or v1's hierarchies): its CPU, memory and
        pids counters and ``cgroup.procs`` are read there."""

    async def list_containers(self) -> list[dict]:
        """Every container runc knows under this runtime's root, in any state, as runc
        lists them (``id``, ``pid``, ``status`` ...)."""

    async def states(self) -> dict[str, RunState]:
        """Every container runc knows under this runtime's root, by id, from ONE listing
        (``runc list``): what a restart reconciles with, whatever the number of
        containers (``is_running`` is a runc call per container)."""

    async def exec(self, spec: ExecSpec) -> Process:
        """Run a process inside a running container (``runc exec``)."""

    def log_path(self, container_id: str) -> str:
        """The json-file log's host path (inspect's ``LogPath``)."""

    def logs(
        self,
        container_id: str,
        *,
        stdout: bool,
        stderr: bool,
        follow: bool,
        tail: int | None,
        since: int | None = None,
        until: int | None = None,
    ) -> AsyncIterator[Record]:
        """The log's records (stream 1 = stdout, 2 = stderr; time in ns), oldest first.
        With ``follow``, then those of the current run as they come, until its output
        ends."""

    def attach_output(self, container_id: str) -> Subscription:
        """Raw output of the current run, or of the next one when the container is not
        running (attach before start); it ends when that run's output ends."""

    def resize(self, container_id: str, height: int, width: int) -> None:
        """The window size of a tty container's terminal (nothing without a tty)."""

    async def open_stdin(self, container_id: str) -> asyncio.StreamWriter | None:
        """A writer to the container's stdin (containers created with OpenStdin), or None."""
