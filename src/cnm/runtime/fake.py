"""FakeRuntime: the Runtime protocol in memory, for engine unit tests.

Containers "run" until killed; ``exit(id, code)`` makes one exit on its own.  Exec
processes answer with canned output.  No process, mount or file outside ``root``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal as signals
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

from cnm.errors import Conflict, NotFound, RuntimeFailure
from cnm.model.container import ExecSpec, Image
from cnm.runtime.api import RunState, StartRequest, run_states
from cnm.runtime.images import Loaded
from cnm.runtime.logs import Record
from cnm.runtime.output import OutputHub, Subscription
from cnm.runtime.stats import Cgroup


@dataclass
class _FakeProcess:
    pid: int
    stdout: asyncio.StreamReader
    stdin: asyncio.StreamWriter | None = None
    stderr: asyncio.StreamReader | None = None
    code: int = 0

    async def wait(self) -> int:
        return self.code

    def resize(self, height: int, width: int) -> None:
        pass


@dataclass
class FakeRuntime:
    root: str
    images_by_ref: dict[str, Image] = field(default_factory=dict)
    started: dict[str, StartRequest] = field(default_factory=dict)
    exits: dict[str, asyncio.Future[int]] = field(default_factory=dict)
    fail_start: bool = False
    pids: dict[str, int] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)  # runc deleted (cleanup) since their last start
    hubs: dict[str, OutputHub] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)  # runc-like queries made: "states", "is_running"
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    paused: set[str] = field(default_factory=set)
    _pids: itertools.count = field(default_factory=lambda: itertools.count(1000))

    def add_image(
        self, reference: str, image_id: str = "sha256:" + "ab" * 32, cmd: tuple[str, ...] = ("sh",)
    ) -> Image:
        """An image with a CMD (``cmd=()``: like ``cnm image import``, none)."""
        name = reference if ":" in reference else reference + ":latest"
        image = Image(id=image_id, repo_tags=(name,), created="2026-01-01T00:00:00Z", cmd=cmd)
        self.images_by_ref[name] = image
        return image

    async def import_image(self, reference: str, tar_path: str) -> Image:
        return self.add_image(reference)

    def images(self) -> list[Image]:
        return list({i.id: i for i in self.images_by_ref.values()}.values())

    def find_image(self, reference: str) -> Image:
        name = reference if ":" in reference or reference.startswith("sha256:") else reference + ":latest"
        if name in self.images_by_ref:
            return self.images_by_ref[name]
        for image in self.images_by_ref.values():
            if image.id == reference:
                return image
        raise NotFound(f"No such image: {reference}")

    async def remove_image(self, reference: str) -> Image:
        image = self.find_image(reference)
        for key in [k for k, v in self.images_by_ref.items() if v.id == image.id]:
            del self.images_by_ref[key]
        return image

    async def tag_image(self, source: str, target: str) -> Image:
        image = self.find_image(source)
        name = target if ":" in target.rsplit("/", 1)[-1] else target + ":latest"
        self.images_by_ref[name] = image
        return image

    async def load_images(self, archive_path: str) -> list[Loaded]:
        return [Loaded(self.add_image("loaded"), ("loaded:latest",))]

    async def export(self, container_id: str, image_id: str) -> AsyncGenerator[bytes, None]:
        yield f"tar of {container_id} over {image_id}".encode()

    def container_dir(self, container_id: str) -> str:
        path = os.path.join(self.root, container_id)
        os.makedirs(path, exist_ok=True)
        return path

    async def start(self, request: StartRequest) -> int:
        if self.fail_start:
            raise RuntimeFailure("runc run failed: fake failure")
        cid = request.container.id
        if cid in self.exits and not self.exits[cid].done():
            raise Conflict(f"container {cid} already running")
        self.started[cid] = request
        self.deleted.discard(cid)
        self.exits[cid] = asyncio.get_running_loop().create_future()
        self.pids[cid] = next(self._pids)
        return self.pids[cid]

    def exit(self, container_id: str, code: int) -> None:
        fut = self.exits.get(container_id)
        if fut is not None and not fut.done():
            fut.set_result(code)

    async def wait_exit(self, container_id: str, pid: int) -> int:
        return await asyncio.shield(self.exits[container_id])

    async def kill(self, container_id: str, signal: int) -> None:
        if signal in (signals.SIGKILL, signals.SIGTERM, signals.SIGINT):
            self.exit(container_id, 128 + signal)

    async def cleanup(self, container_id: str) -> None:
        self.exit(container_id, 128 + signals.SIGKILL)  # runc delete --force
        self.deleted.add(container_id)
        hub = self.hubs.get(container_id)
        if hub is not None:
            hub.end_all()

    async def states(self) -> dict[str, RunState]:
        self.calls["states"] = self.calls.get("states", 0) + 1
        return run_states(await self.list_containers())

    async def list_containers(self) -> list[dict]:
        return [
            {"id": cid, "pid": self.pids.get(cid, 0), "status": "stopped" if fut.done() else "running"}
            for cid, fut in self.exits.items()
            if cid not in self.deleted
        ]

    async def remove(self, container_id: str) -> None:
        self.started.pop(container_id, None)
        hub = self.hubs.pop(container_id, None)
        if hub is not None:
            hub.end_all()

    async def pause(self, container_id: str) -> None:
        if container_id not in self.exits or self.exits[container_id].done():
            raise RuntimeFailure(f"container {container_id} is not running")
        self.paused.add(container_id)

    async def resume(self, container_id: str) -> None:
        if container_id not in self.paused:
            raise RuntimeFailure(f"container {container_id} is not paused")
        self.paused.discard(container_id)

    def cgroup(self, container_id: str) -> Cgroup:
        """A v2-shaped cgroup directory under ``root`` that tests fill with counters."""
        path = os.path.join(self.root, "cgroup", container_id)
        os.makedirs(path, exist_ok=True)
        return Cgroup(2, {"": path})

    async def is_running(self, container_id: str) -> int:
        self.calls["is_running"] = self.calls.get("is_running", 0) + 1
        fut = self.exits.get(container_id)
        return self.pids.get(container_id, 0) if fut is not None and not fut.done() else 0

    async def exec(self, spec: ExecSpec) -> _FakeProcess:
        reader = asyncio.StreamReader()
        reader.feed_data((" ".join(spec.cmd) + "\n").encode())
        reader.feed_eof()
        return _FakeProcess(pid=next(self._pids), stdout=reader)

    def log_path(self, container_id: str) -> str:
        return os.path.join(self.root, container_id, f"{container_id}-json.log")

    async def logs(
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
        if stdout:
            yield Record(1, 1_700_000_000_000_000_000, b"fake output\n")

    def attach_output(self, container_id: str) -> Subscription:
        """Fed by ``emit``; ends when the container exits or is removed."""
        hub = self.hubs.setdefault(container_id, OutputHub())
        sub = hub.subscribe()
        assert sub is not None
        return sub

    def emit(self, container_id: str, stream: int, data: bytes) -> None:
        """The container writes ``data`` (attached clients get it)."""
        self.hubs.setdefault(container_id, OutputHub()).publish(stream, data)

    def resize(self, container_id: str, height: int, width: int) -> None:
        self.sizes[container_id] = (height, width)

    async def open_stdin(self, container_id: str) -> asyncio.StreamWriter | None:
        return None
