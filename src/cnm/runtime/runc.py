"""``RuncRuntime``: the ``cnm.runtime.api.Runtime`` protocol through the ``runc`` binary.

It owns everything under ``<data-root>/images``, ``<data-root>/containers/<id>``,
``<exec-root>/containers/<id>`` and ``<exec-root>/runc`` (runc's ``--root``), laid out as
``cnm.runtime.api`` describes, plus the cgroups ``/<cgroup_parent>/<id>`` that runc creates.

Containers and execs are started detached (``runc run -d`` / ``runc exec -d``): runc exits
once the process runs, with the process holding its stdio directly (log files, pipes, a pty
slave).  That is what lets containers outlive a cnmd restart, and lets ``exec`` fail fast
with runc's own message (``executable file not found``) instead of as process output.
Because runc's error text would otherwise land in that same stdio, every runc call writes
its log as JSON to a file (``--log``) or to its stderr (``--log-format json``), which is
where ``RuntimeFailure`` messages come from.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import itertools
import json
import logging
import os
import shutil
import stat
import struct
import termios
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, cast

from cnm.errors import CnmError, InvalidArgument, NotFound, RuntimeFailure
from cnm.kernel.cmdlog import log_command
from cnm.kernel.faults import crash_point
from cnm.model.container import ExecSpec, Image
from cnm.runtime import bundle, logs, rootfs, stats
from cnm.runtime.api import RunState, StartRequest, run_states
from cnm.runtime.images import ImageStore, Loaded
from cnm.runtime.output import Copier, OutputHub, Subscription
from cnm.runtime.process import (
    ExecProcess,
    console_listener,
    empty_reader,
    fd_reader,
    fd_writer,
    fetch_kept_fd,
    receive_console,
    start_fd_keeper,
    stop_fd_keeper,
    wait_pid,
)
from cnm.runtime.stats import Cgroup

log = logging.getLogger("cnm.runtime")

F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20  # output a container may write while no cnmd reads (a restart)
OUTPUT_DRAIN_TIMEOUT = 10.0  # seconds after the init's exit for the rest of its output

_GONE = (
    "does not exist",
    "not running",
)  # runc 1.1.5: `container "x" does not exist`, `container not running`


class RuncRuntime:
    """Containers through runc, images as unpacked root filesystems.

    Holds live state only for containers started by this instance: the exit watch of each
    init (so ``wait_exit`` can be awaited many times and ``logs(follow=True)`` knows when to
    stop) and the stdin FIFO keeper.  Everything else is read back from disk and runc, so a
    restarted daemon finds its containers with ``states`` (one ``runc list``).
    """

    def __init__(
        self, data_root: str, exec_root: str, cgroup_parent: str = "cnm", runc: str = "runc"
    ) -> None:
        self.data_root = os.path.abspath(data_root)
        self.exec_root = os.path.abspath(exec_root)
        self.cgroup_parent = cgroup_parent.strip("/")
        self.runc = runc
        self.state_root = os.path.join(self.exec_root, "runc")
        for path in (self.data_root, self.exec_root, os.path.join(self.data_root, "containers")):
            os.makedirs(path, mode=0o711, exist_ok=True)
        os.makedirs(self.state_root, mode=0o700, exist_ok=True)
        self._images = ImageStore(os.path.join(self.data_root, "images"))
        self._image_lock = asyncio.Lock()
        self._exits: dict[str, tuple[int, asyncio.Task[int]]] = {}  # id -> (pid, exit watch)
        self._stdin: dict[str, int] = {}  # id -> O_RDWR fd keeping the stdin FIFO open
        self._stdin_once: set[str] = set()
        self._outputs: dict[str, OutputHub] = {}  # id -> attached clients and output copier
        self._ptys: dict[str, int] = {}  # id -> pty master of a tty container (resize, stdin)
        self._seq = itertools.count()
        self._nofile = bundle.nofile_limit()
        self.last_start_seconds = 0.0  # how long the last start took (for reports/benchmarks)

    # -- images ----------------------------------------------------------------------------
    async def import_image(self, reference: str, tar_path: str) -> Image:
        async with self._image_lock:
            return await asyncio.to_thread(self._images.import_tar, reference, tar_path)

    def images(self) -> list[Image]:
        return self._images.list()

    def find_image(self, reference: str) -> Image:
        return self._images.find(reference)

    async def remove_image(self, reference: str) -> Image:
        async with self._image_lock:
            return await asyncio.to_thread(self._images.remove, reference)

    async def tag_image(self, source: str, target: str) -> Image:
        async with self._image_lock:
            return await asyncio.to_thread(self._images.tag, source, target)

    async def load_images(self, archive_path: str) -> list[Loaded]:
        async with self._image_lock:
            return await asyncio.to_thread(self._images.load_archive, archive_path)

    def export(self, container_id: str, image_id: str) -> AsyncGenerator[bytes, None]:
        """The container's filesystem as a tar: the overlay's merged view while it is
        mounted, else its upper layer over the image's root filesystem."""
        _check_id(container_id)
        merged = self._rootfs(container_id)
        if os.path.ismount(merged):
            layers = [merged]
        else:
            layers = [os.path.join(self.container_dir(container_id), "upper"), self._images.rootfs(image_id)]
        return rootfs.export_tar(layers)

    # -- paths -----------------------------------------------------------------------------
    def container_dir(self, container_id: str) -> str:
        path = self._data_dir(container_id)
        os.makedirs(path, mode=0o711, exist_ok=True)
        return path

    def _data_dir(self, container_id: str) -> str:
        _check_id(container_id)
        return os.path.join(self.data_root, "containers", container_id)

    def _exec_dir(self, container_id: str) -> str:
        _check_id(container_id)
        return os.path.join(self.exec_root, "containers", container_id)

    def _rootfs(self, container_id: str) -> str:
        return os.path.join(self._exec_dir(container_id), "bundle", "rootfs")

    def log_path(self, container_id: str) -> str:
        """The host path of the container's json-file log (``LogPath``, as Docker names it)."""
        return os.path.join(self._data_dir(container_id), f"{container_id}-json.log")

    # -- containers ------------------------------------------------------------------------
    async def start(self, request: StartRequest) -> int:
        """Mount the rootfs, write the bundle, ``runc run -d``; the init's pid.  On failure
        everything done so far is undone and the logs are as they were."""
        began = time.perf_counter()
        container = request.container
        cid = container.id
        config = container.config
        data, execdir = self.container_dir(cid), self._exec_dir(cid)
        bundle_dir = os.path.join(execdir, "bundle")
        target = os.path.join(bundle_dir, "rootfs")
        upper, work = os.path.join(data, "upper"), os.path.join(data, "work")
        for path in (upper, work, target):
            os.makedirs(path, mode=0o755, exist_ok=True)
        lower = self._images.rootfs(request.image.id)
        if not os.path.isdir(lower):
            raise NotFound(f"No such image: {request.image.id}")

        async with contextlib.AsyncExitStack() as undo:
            await asyncio.to_thread(rootfs.mount_overlay, lower, upper, work, target)
            undo.callback(rootfs.unmount, target)
            user = bundle.resolve_user(target, config.user or request.image.user)
            files = request.files
            spec = bundle.oci_config(
                args=bundle.process_args(config, request.image),
                env=bundle.process_env(config, request.image, request.hostname),
                cwd=config.workdir or request.image.workdir or "/",
                user=user,
                hostname=request.hostname,
                netns_path=request.netns_path,
                cgroups_path=f"/{self.cgroup_parent}/{cid}",
                binds=[
                    (files.hostname, "/etc/hostname"),
                    (files.hosts, "/etc/hosts"),
                    (files.resolv_conf, "/etc/resolv.conf"),
                ],
                mounts=config.mounts,
                nofile=self._nofile,
            )

            if config.tty:
                spec["process"]["terminal"] = True
                rows, cols = config.console_size
                if rows and cols:
                    spec["process"]["consoleSize"] = {"height": rows, "width": cols}
                if not any(e.startswith("TERM=") for e in spec["process"]["env"]):
                    spec["process"]["env"].append("TERM=xterm")  # as Docker does for -t
            bundle.write_config(bundle_dir, spec)
            log_options = logs.parse_log_config(config.log_driver, config.log_opts)
            _write_output_info(execdir, config.tty, config.log_driver, log_options)

            pid_file = os.path.join(execdir, "init.pid")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pid_file)
            argv = ["run", "--detach", "--pid-file", pid_file, "--bundle", bundle_dir, cid]
            run_log = os.path.join(execdir, "run.log")
            ours: list[int] = []  # our ends of the container's output (and its pty master)
            try:
                if config.tty:
                    master = await self._run_with_console(
                        lambda address: [*argv[:-3], "--console-socket", address, *argv[-3:]], run_log
                    )
                    ours.append(master)
                    sources = [(logs.STDOUT, os.dup(master))]
                    ours.append(sources[0][1])
                else:
                    sources, theirs = _output_fifos(execdir)
                    ours.extend(fd for _, fd in sources)
                    try:
                        in_fd = self._stdin_for(cid, config.open_stdin, config.stdin_once, undo)
                        try:
                            await self._runc_detached(argv, run_log, in_fd, *theirs)
                        finally:
                            os.close(in_fd)
                    finally:
                        for fd in theirs:
                            os.close(fd)
            except BaseException:
                for fd in ours:
                    os.close(fd)
                await self._delete(cid)
                raise
            undo.push_async_callback(self._delete, cid)
            try:
                pid = _read_pid(pid_file)
            except RuntimeFailure:
                for fd in ours:
                    os.close(fd)
                raise
            # Success: keep the mount, the container, the stdin keeper and our stdio ends.
            undo.pop_all()
        if config.tty:
            self._ptys[cid] = ours[0]
        self._keep_output(cid, [fd for _, fd in sources])
        self._copy_output(cid, sources, config.log_driver, log_options)
        self._watch(cid, pid)
        self.last_start_seconds = time.perf_counter() - began
        log.debug("container %s started (pid %d) in %.1f ms", cid[:12], pid, self.last_start_seconds * 1e3)
        return pid

    def _stdin_for(
        self, cid: str, open_stdin: bool, stdin_once: bool, undo: contextlib.AsyncExitStack
    ) -> int:
        """The container's stdin: /dev/null, or the read end of ``<exec-root>/containers/<id>/stdin``
        (a FIFO).  We keep the FIFO open O_RDWR ourselves so the container never sees EOF
        while no client is attached, and the open never blocks."""
        if not open_stdin:
            return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        fifo = os.path.join(self._exec_dir(cid), "stdin")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(fifo)
        os.mkfifo(fifo, 0o600)
        keeper = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)
        self._stdin[cid] = keeper
        if stdin_once:
            self._stdin_once.add(cid)
        undo.callback(self._close_stdin, cid)
        return os.open(fifo, os.O_RDONLY | os.O_CLOEXEC)

    def _close_stdin(self, cid: str) -> None:
        fd = self._stdin.pop(cid, None)
        self._stdin_once.discard(cid)
        if fd is not None:
            os.close(fd)

    def _watch(self, cid: str, pid: int) -> asyncio.Task[int]:
        """The one exit watch of ``cid``'s init ``pid`` (shared by every waiter)."""
        current = self._exits.get(cid)
        if current is not None and current[0] == pid:
            return current[1]
        task = asyncio.ensure_future(self._wait_init(cid, pid))
        self._exits[cid] = (pid, task)
        hub = self._outputs.get(cid)
        if hub is None or hub.copier is None:
            self._reattach_output(cid)  # a container found running after a daemon restart
        return task

    async def _wait_init(self, cid: str, pid: int) -> int:
        code = await wait_pid(pid)
        self._close_stdin(cid)
        return 255 if code is None else code

    async def wait_exit(self, container_id: str, pid: int) -> int:
        return await asyncio.shield(self._watch(container_id, pid))

    async def kill(self, container_id: str, signal: int) -> None:
        """``runc kill <id> <signal>``; a container that is stopped or gone is fine."""
        try:
            await self._runc(["kill", container_id, str(int(signal))])
        except RuntimeFailure as exc:
            if not _is_gone(exc):
                raise

    async def cleanup(self, container_id: str) -> None:
        """Wait until the container's output is all copied (its stdio reached EOF: the log
        and attached clients have everything), then ``runc delete --force``, unmount the
        rootfs and drop the stdin FIFO and pty.  Idempotent; a container that runc does
        not know is already deleted."""
        errors: list[BaseException] = []
        await self._drain_output(container_id)
        try:
            await self._delete(container_id)
        except CnmError as exc:
            errors.append(exc)
        self._close_stdin(container_id)
        await self._release_output(container_id)
        try:
            await asyncio.to_thread(rootfs.unmount, self._rootfs(container_id))
        except CnmError as exc:
            errors.append(exc)
        if errors:
            raise RuntimeFailure("; ".join(str(e) for e in errors)) from errors[0]

    async def _delete(self, cid: str) -> None:
        try:
            await self._runc(["delete", "--force", cid])
        except RuntimeFailure as exc:
            if not _is_gone(exc):
                raise

    async def remove(self, container_id: str) -> None:
        """Unmount if still mounted, then delete both container directories.  Idempotent."""
        await asyncio.to_thread(rootfs.unmount, self._rootfs(container_id))
        await self._drain_output(container_id)
        self._close_stdin(container_id)
        await self._release_output(container_id)
        self._exits.pop(container_id, None)
        hub = self._outputs.pop(container_id, None)
        if hub is not None:
            hub.end_all()  # clients waiting for a run that will never come
        for path in (self._exec_dir(container_id), self._data_dir(container_id)):
            await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)
            if os.path.lexists(path):
                raise RuntimeFailure(f"cannot remove {path}")

    async def is_running(self, container_id: str) -> int:
        state = await self.state(container_id)
        if state and state.get("status") in ("running", "paused"):
            return int(state.get("pid") or 0)
        return 0

    async def pause(self, container_id: str) -> None:
        await self._runc(["pause", container_id])

    async def resume(self, container_id: str) -> None:
        await self._runc(["resume", container_id])

    def cgroup(self, container_id: str) -> Cgroup:
        _check_id(container_id)
        return stats.locate(self.cgroup_parent, container_id)

    async def state(self, container_id: str) -> dict[str, Any] | None:
        """``runc state <id>`` as a dict, or None when runc does not know the container."""
        try:
            out = await self._runc(["state", container_id])
        except RuntimeFailure as exc:
            if _is_gone(exc):
                return None
            raise
        state: dict[str, Any] = json.loads(out)
        return state

    async def list_containers(self) -> list[dict]:
        """``runc list --format json``: every container runc has under our ``--root``, in
        any state."""
        out = await self._runc(["list", "--format", "json"])
        try:
            listed = json.loads(out or b"null") or []
        except ValueError as exc:
            raise RuntimeFailure(f"runc list printed no JSON: {out[:200]!r}") from exc
        return [entry for entry in listed if isinstance(entry, dict)]

    async def states(self) -> dict[str, RunState]:
        """One ``runc list``: every container's status and pid, by id."""
        return run_states(await self.list_containers())

    # -- exec ------------------------------------------------------------------------------
    async def exec(self, spec: ExecSpec) -> ExecProcess:
        """``runc exec -d`` with the process's stdio on pipes (or, with a tty, on a pty that
        runc allocates in the container): returns once the process runs; RuntimeFailure
        with runc's message when it cannot be started."""
        cid = spec.container_id
        if not spec.cmd:
            raise InvalidArgument("No exec command specified")
        execdir = self._exec_dir(cid)
        n = next(self._seq)
        pid_file = os.path.join(execdir, f"exec-{n}.pid")
        argv = ["exec", "--detach", "--pid-file", pid_file]
        for entry in spec.env:
            argv += ["--env", entry]
        if spec.workdir:
            argv += ["--cwd", spec.workdir]
        if spec.user:
            user = bundle.resolve_user(self._rootfs(cid), spec.user)
            argv += ["--user", user.runc_flag]
            for gid in user.additional_gids:
                argv += ["--additional-gids", str(gid)]
        if spec.privileged:
            for cap in _ALL_CAPS:
                argv += ["--cap", cap]

        ours: list[int] = []  # parent ends, kept on success
        theirs: list[int] = []  # child ends, always closed after the spawn
        try:
            if spec.tty:
                # runc allocates the pty inside the container's /dev/pts (so ``tty`` and job
                # control work) and hands us the master over the console socket.
                ours.append(
                    await self._run_with_console(
                        lambda address: [*argv, "--tty", "--console-socket", address, cid, *spec.cmd],
                        os.path.join(execdir, f"exec-{n}.log"),
                    )
                )
            else:
                argv += [cid, *spec.cmd]
                stdio = self._exec_pipes(spec, ours, theirs)
                await self._runc_detached(argv, os.path.join(execdir, f"exec-{n}.log"), *stdio)
            pid = _read_pid(pid_file)
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pid_file)

        if spec.tty:
            master = ours[0]
            control = os.dup(master)
            writer = await fd_writer(os.dup(master)) if spec.attach_stdin else None
            return ExecProcess(pid, writer, fd_reader(master), None, pty_master=control)
        it = iter(ours)
        writer = await fd_writer(next(it)) if spec.attach_stdin else None
        stdout = fd_reader(next(it)) if spec.attach_stdout else empty_reader()
        stderr = fd_reader(next(it)) if spec.attach_stderr else empty_reader()
        return ExecProcess(pid, writer, stdout, stderr)

    @staticmethod
    def _exec_pipes(spec: ExecSpec, ours: list[int], theirs: list[int]) -> tuple[int, int, int]:
        """stdin, stdout, stderr for a non-tty exec: a pipe per attached stream, /dev/null
        for the others.  Parent ends go to ``ours`` (stdin, stdout, stderr order), child
        ends to ``theirs``."""
        null_in = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        theirs.append(null_in)
        null_out = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        theirs.append(null_out)
        stdio = [null_in, null_out, null_out]
        for index, attached in enumerate((spec.attach_stdin, spec.attach_stdout, spec.attach_stderr)):
            if not attached:
                continue
            r, w = os.pipe2(os.O_CLOEXEC)
            parent, child = (w, r) if index == 0 else (r, w)
            ours.append(parent)
            theirs.append(child)
            stdio[index] = child
        return stdio[0], stdio[1], stdio[2]

    # -- output, logs, stdin, tty ----------------------------------------------------------
    def _hub(self, cid: str) -> OutputHub:
        hub = self._outputs.get(cid)
        if hub is None:
            _check_id(cid)
            hub = self._outputs[cid] = OutputHub()
        return hub

    def _copy_output(
        self,
        cid: str,
        sources: list[tuple[int, int]],
        driver: str,
        options: logs.LogOptions,
        lazy: bool = False,
    ) -> Copier:
        writer = (
            logs.JsonLogWriter(self.log_path(cid), options, lazy=lazy) if driver == logs.JSON_FILE else None
        )
        return Copier(self._hub(cid), sources, writer)

    def _reattach_output(self, cid: str) -> Copier | None:
        """After a daemon restart: open the FIFOs of a container started by an earlier
        cnmd and copy on from where it left (the output waited in the pipes); for a tty,
        take the pty master back from its keeper.  The keeper also holds the FIFOs' read
        ends, so what a container wrote before it exited is still there."""
        execdir = self._exec_dir(cid)
        info = _read_output_info(execdir)
        if info is None:
            return None
        options = logs.LogOptions(max_size=info["max_size"], max_file=info["max_file"])
        if info["tty"]:
            master = self._kept_pty(cid)
            if master is None:
                log.warning("container %s: its terminal was not kept; its output is lost", cid[:12])
                return None
            self._ptys[cid] = master
            return self._copy_output(cid, [(logs.STDOUT, os.dup(master))], info["driver"], options, lazy=True)
        sources: list[tuple[int, int]] = []
        try:
            for stream, name in ((logs.STDOUT, "stdout"), (logs.STDERR, "stderr")):
                fd = os.open(os.path.join(execdir, name), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                sources.append((stream, fd))
        except OSError as exc:
            for _, fd in sources:
                os.close(fd)
            log.warning("container %s: cannot reopen its output: %s", cid[:12], exc)
            return None
        return self._copy_output(cid, sources, info["driver"], options, lazy=True)

    async def _drain_output(self, cid: str, timeout: float = OUTPUT_DRAIN_TIMEOUT) -> None:
        """Wait (bounded) until the copy of ``cid``'s output has reached EOF; after a
        restart, copy what the container left in its FIFOs first."""
        hub = self._outputs.get(cid)
        if hub is not None:
            copier = hub.copier  # None: this run's copy is complete (or there was no run)
        elif os.path.isdir(self._exec_dir(cid)):
            copier = self._reattach_output(cid)  # started by an earlier cnmd
        else:
            copier = None
        if copier is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(copier.done), timeout)
        except TimeoutError:
            log.warning("container %s: its output did not end %.0f s after it exited", cid[:12], timeout)
            copier.abort()

    def attach_output(self, container_id: str) -> Subscription:
        """The output of the container's current run, or of its next one when it is not
        running (``run`` and ``start -a`` attach before they start): raw chunks as read."""
        sub = self._hub(container_id).subscribe()
        assert sub is not None  # only running_only subscriptions are ever refused
        return sub

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
    ) -> AsyncIterator[logs.Record]:
        """The log's records, oldest first (``since``/``until`` in ns, ``tail`` records).
        With ``follow``, then the records of the current run as they come, until its
        output ends (or ``until`` passes)."""
        wanted = {s for s, on in ((logs.STDOUT, stdout), (logs.STDERR, stderr)) if on}

        def keep(record: logs.Record) -> bool:
            return record.stream in wanted and (since is None or record.ns >= since)

        reader = await asyncio.to_thread(logs.LogReader, self.log_path(container_id), tail)
        sub: Subscription | None = None
        try:
            while True:
                # Big logs are read in a worker thread.  The last pass (what came meanwhile)
                # runs here and the subscription is taken right after it, with no await in
                # between: the copier writes the file and feeds subscribers in one step.
                batch = await asyncio.to_thread(reader.read_batch)
                last = not batch
                if last:
                    batch = list(reader.read_new())
                    hub = self._outputs.get(container_id)
                    if follow and hub is not None:
                        sub = hub.subscribe(running_only=True, lines=True)
                    reader.close()
                for record in batch:
                    if until is not None and record.ns > until:
                        return
                    if keep(record):
                        yield record
                if last:
                    break
            while sub is not None and (item := await sub.get()) is not None:
                item = cast(logs.Record, item)  # subscribed with lines=True
                if until is not None and item.ns > until:
                    return
                if keep(item):
                    yield item
        finally:
            reader.close()
            if sub is not None:
                sub.close()

    def resize(self, container_id: str, height: int, width: int) -> None:
        """Set the window size of a tty container's terminal (nothing without a tty)."""
        fd = self._ptys.get(container_id)
        if fd is None:
            return
        try:
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
        except OSError as exc:
            raise RuntimeFailure(f"resize tty of {container_id[:12]}: {exc.strerror}") from exc

    def _keep_output(self, cid: str, fds: list[int]) -> None:
        """Hand copies of our ends of the container's output (FIFO read ends, or the pty
        master) to a keeper process, so that they outlive a cnmd restart; its pid and the
        fd numbers go to ``keeper``."""
        try:
            pid, started = start_fd_keeper(fds)
        except RuntimeFailure as exc:
            log.warning("container %s: %s (its output is not kept across a cnmd restart)", cid[:12], exc)
            return
        with open(os.path.join(self._exec_dir(cid), "keeper"), "w", encoding="ascii") as fh:
            fh.write(" ".join(str(n) for n in (pid, started, *fds)) + "\n")

    def _keeper(self, cid: str) -> tuple[int, int, list[int]] | None:
        """(pid, start time, fds) of ``cid``'s keeper, from its ``keeper`` file."""
        try:
            with open(os.path.join(self._exec_dir(cid), "keeper"), encoding="ascii") as fh:
                pid, started, *fds = (int(x) for x in fh.read().split())
            return pid, started, fds
        except (OSError, ValueError):
            return None

    def _kept_pty(self, cid: str) -> int | None:
        kept = self._keeper(cid)
        return None if kept is None or not kept[2] else fetch_kept_fd(kept[0], kept[1], kept[2][0], "ptmx")

    async def _release_output(self, cid: str) -> None:
        """The run's output is complete: close the pty and stop the keeper."""
        fd = self._ptys.pop(cid, None)
        if fd is not None:
            os.close(fd)
        kept = self._keeper(cid)
        if kept is not None:
            await stop_fd_keeper(kept[0], kept[1])
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._exec_dir(cid), "keeper"))

    async def open_stdin(self, container_id: str) -> asyncio.StreamWriter | None:
        """A writer to the stdin FIFO of a container created with OpenStdin, else None.
        With StdinOnce the runtime lets go of its own keeper, so closing this writer is the
        container's EOF."""
        pty = self._ptys.get(container_id)
        if pty is not None:  # a tty: input goes to the terminal
            return await fd_writer(os.dup(pty))
        fifo = os.path.join(self._exec_dir(container_id), "stdin")
        try:
            if not stat.S_ISFIFO(os.stat(fifo).st_mode):
                return None
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENXIO):  # none, or nobody reads it any more
                return None
            raise RuntimeFailure(f"open stdin of {container_id[:12]}: {exc.strerror}") from exc
        if container_id in self._stdin_once:
            self._close_stdin(container_id)
        return await fd_writer(fd)

    # -- runc ------------------------------------------------------------------------------
    def _base(self) -> list[str]:
        return [self.runc, "--root", self.state_root, "--log-format", "json"]

    async def _runc(self, args: list[str]) -> bytes:
        """Run runc to completion; its stdout; RuntimeFailure with runc's message."""
        argv = self._base() + args
        if args[0] in ("kill", "delete", "run", "exec"):
            log_command(argv)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise RuntimeFailure(f"cannot run {self.runc}: {exc.strerror}") from exc
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeFailure(
                runc_message(err) or f"runc {args[0]} failed with exit code {proc.returncode}"
            )
        return out

    async def _runc_detached(
        self, args: list[str], log_file: str, stdin: int, stdout: int, stderr: int
    ) -> None:
        """``runc run -d`` / ``runc exec -d`` with the given stdio, which the started process
        inherits.  runc's own messages go to ``log_file`` (read on failure, then removed)."""
        argv = [self.runc, "--root", self.state_root, "--log", log_file, "--log-format", "json", *args]
        log_command(argv)
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdin=stdin, stdout=stdout, stderr=stderr)
        except OSError as exc:
            raise RuntimeFailure(f"cannot run {self.runc}: {exc.strerror}") from exc
        crash_point(f"runc-{args[0]}")  # runc in flight
        code = await proc.wait()
        try:
            with open(log_file, "rb") as fh:
                text = fh.read()
            os.unlink(log_file)
        except FileNotFoundError:
            text = b""
        if code != 0:
            raise RuntimeFailure(runc_message(text) or f"runc {args[0]} failed with exit code {code}")

    async def _run_with_console(self, make_argv: Callable[[str], list[str]], log_file: str) -> int:
        """``runc run|exec -d`` with a tty: runc makes the pty inside the container and
        sends its master over a console socket; returns the master (ours now).
        ``make_argv(address)`` is runc's command line for that socket address."""
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            with console_listener() as (listener, address):
                argv = make_argv(address)
                receive = asyncio.ensure_future(receive_console(listener))
                master = -1
                try:
                    await self._runc_detached(argv, log_file, null, null, null)
                    master = await asyncio.wait_for(asyncio.shield(receive), 5)
                finally:
                    if not receive.done():
                        receive.cancel()
                    elif master < 0 and not receive.cancelled() and receive.exception() is None:
                        os.close(receive.result())
                return master
        finally:
            os.close(null)


def _output_fifos(execdir: str) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """The container's stdout and stderr FIFOs: our read ends ((stream, fd) pairs) and
    the container's ends.  The container's are opened read-write, so that its writes
    never meet a pipe without readers (EPIPE/SIGPIPE) while cnmd restarts: output then
    waits in the pipe, which is made large."""
    ours: list[tuple[int, int]] = []
    theirs: list[int] = []
    try:
        for stream, name in ((logs.STDOUT, "stdout"), (logs.STDERR, "stderr")):
            path = os.path.join(execdir, name)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            os.mkfifo(path, 0o600)
            ours.append((stream, os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)))
            theirs.append(os.open(path, os.O_RDWR | os.O_CLOEXEC))
            with contextlib.suppress(OSError):
                fcntl.fcntl(theirs[-1], F_SETPIPE_SZ, PIPE_SIZE)
    except OSError as exc:
        for fd in [fd for _, fd in ours] + theirs:
            os.close(fd)
        raise RuntimeFailure(f"container output pipes: {exc.strerror}") from exc
    return ours, (theirs[0], theirs[1])


def _write_output_info(execdir: str, tty: bool, driver: str, options: logs.LogOptions) -> None:
    """What a restarted cnmd needs to copy on the output of a running container."""
    info = {"tty": tty, "driver": driver, "max_size": options.max_size, "max_file": options.max_file}
    with open(os.path.join(execdir, "output.json"), "w", encoding="utf-8") as fh:
        json.dump(info, fh)


def _read_output_info(execdir: str) -> dict[str, Any] | None:
    try:
        # raw os calls: a restart reads this for every running container
        fd = os.open(os.path.join(execdir, "output.json"), os.O_RDONLY | os.O_CLOEXEC)
        try:
            info = json.loads(os.read(fd, 4096))
        finally:
            os.close(fd)
        return {
            "tty": bool(info["tty"]),
            "driver": str(info["driver"]),
            "max_size": None if info["max_size"] is None else int(info["max_size"]),
            "max_file": int(info["max_file"]),
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None


def runc_message(output: bytes) -> str:
    """runc's error message from its JSON log lines (the last ``error``), else the text."""
    last = ""
    for line in output.decode(errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            last = last or line
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            last = str(entry.get("msg", "")).strip()
    return last


def _is_gone(exc: RuntimeFailure) -> bool:
    text = str(exc).lower()
    return any(marker in text for marker in _GONE)


def _check_id(container_id: str) -> None:
    if not container_id or "/" in container_id or container_id in (".", ".."):
        raise InvalidArgument(f"invalid container id {container_id!r}")


def _read_pid(path: str) -> int:
    try:
        with open(path, encoding="ascii") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError) as exc:
        raise RuntimeFailure(f"runc did not report a pid ({path}): {exc}") from exc


# Every capability runc 1.1.5 knows, for privileged execs.
_ALL_CAPS = (
    "CAP_CHOWN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER CAP_FSETID CAP_KILL CAP_SETGID CAP_SETUID "
    "CAP_SETPCAP CAP_LINUX_IMMUTABLE CAP_NET_BIND_SERVICE CAP_NET_BROADCAST CAP_NET_ADMIN CAP_NET_RAW "
    "CAP_IPC_LOCK CAP_IPC_OWNER CAP_SYS_MODULE CAP_SYS_RAWIO CAP_SYS_CHROOT CAP_SYS_PTRACE CAP_SYS_PACCT "
    "CAP_SYS_ADMIN CAP_SYS_BOOT CAP_SYS_NICE CAP_SYS_RESOURCE CAP_SYS_TIME CAP_SYS_TTY_CONFIG CAP_MKNOD "
    "CAP_LEASE CAP_AUDIT_WRITE CAP_AUDIT_CONTROL CAP_SETFCAP CAP_MAC_OVERRIDE CAP_MAC_ADMIN CAP_SYSLOG "
    "CAP_WAKE_ALARM CAP_BLOCK_SUSPEND CAP_AUDIT_READ CAP_PERFMON CAP_BPF CAP_CHECKPOINT_RESTORE"
).split()
