"""Processes cnmd did not start itself but must watch: container inits and exec'd processes.

``runc run -d`` and ``runc exec -d`` exit once the process is running; the process is then
reparented to the nearest child subreaper.  cnmd makes itself one (``become_subreaper``, at
daemon start), so it can reap them and learn their exit codes.  ``wait_pid`` watches a pid
with a pidfd (works for any process, child or not) and then reaps it if it is ours.

A keeper (``start_fd_keeper``) is a ``sleep infinity`` holding copies of descriptors that
must outlive cnmd (a container's output pipes, its pty master); a restarted cnmd takes
them back with ``pidfd_getfd`` (``fetch_kept_fd``).

``ExecProcess`` is the ``cnm.runtime.api.Process`` of an exec: the stdio the API pumps to
the client (pipes, or a pty master when the exec has a tty) and the wait for its exit.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import fcntl
import os
import secrets
import select
import socket
import struct
import termios
from collections.abc import Iterator
from contextlib import contextmanager

from cnm.errors import RuntimeFailure

PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def become_subreaper() -> None:
    """Make the calling process a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER, 1)``):
    orphans below it are reparented to it instead of to init.  Call once at daemon start."""
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise RuntimeFailure(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128+signal."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


async def wait_pid(pid: int) -> int | None:
    """Wait until ``pid`` has exited; its exit code (128+signal), or None when it was not
    our child (it exited, but someone else holds its status: e.g. after a daemon restart)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return _reap(pid)
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_reader(pidfd, _set_once, ready)
    try:
        await ready
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    return _reap(pid)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` has not exited (a zombie counts as exited)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        readable, _, _ = select.select([pidfd], [], [], 0)
        return not readable
    finally:
        os.close(pidfd)


def _reap(pid: int) -> int | None:
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if got == 0:  # exited per pidfd but not yet a zombie we can see: block briefly
        got, status = os.waitpid(pid, 0)
    return exit_code(status)


class ExecProcess:
    """A process running inside a container, with the stdio cnmd holds for it.

    Owns: the parent's ends of its pipes or the pty master.  ``wait`` may be awaited by any
    number of callers; the first one reaps.  ``stdout`` ends (EOF) when the process and
    everything that inherited its stdio are gone.
    """

    def __init__(
        self,
        pid: int,
        stdin: asyncio.StreamWriter | None,
        stdout: asyncio.StreamReader,
        stderr: asyncio.StreamReader | None,
        pty_master: int | None = None,
    ) -> None:
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self._pty = pty_master
        self._exit: asyncio.Task[int] | None = None

    async def wait(self) -> int:
        """The exit code (128+signal); 255 if the status could not be collected."""
        if self._exit is None:
            self._exit = asyncio.ensure_future(self._wait())
        return await asyncio.shield(self._exit)

    async def _wait(self) -> int:
        code = await wait_pid(self.pid)
        self.close()
        return 255 if code is None else code

    def resize(self, height: int, width: int) -> None:
        """Set the pty's window size (TIOCSWINSZ); nothing to do without a tty."""
        if self._pty is None:
            return
        try:
            fcntl.ioctl(self._pty, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
        except OSError as exc:
            raise RuntimeFailure(f"resize exec tty: {exc.strerror}") from exc

    def close(self) -> None:
        """Release the pty control descriptor (the stream ends close themselves)."""
        if self._pty is not None:
            os.close(self._pty)
            self._pty = None


def empty_reader() -> asyncio.StreamReader:
    """A reader that is already at EOF (a stream that was not attached)."""
    reader = asyncio.StreamReader()
    reader.feed_eof()
    return reader


def fd_reader(fd: int) -> asyncio.StreamReader:
    """A StreamReader fed from ``fd`` (a pipe read end or a pty master), which it owns and
    closes at EOF.  A pty master reports EIO once the last slave is closed: that is EOF."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    os.set_blocking(fd, False)

    def finish() -> None:
        loop.remove_reader(fd)
        os.close(fd)
        reader.feed_eof()

    def on_readable() -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                reader.set_exception(exc)
                loop.remove_reader(fd)
                os.close(fd)
                return
            data = b""
        if data:
            reader.feed_data(data)
        else:
            finish()

    loop.add_reader(fd, on_readable)
    return reader


async def fd_writer(fd: int) -> asyncio.StreamWriter:
    """A StreamWriter over ``fd`` (a pipe write end, FIFO or pty master), which it owns."""
    loop = asyncio.get_running_loop()
    pipe = os.fdopen(fd, "wb", buffering=0)
    protocol = asyncio.StreamReaderProtocol(asyncio.StreamReader())
    transport, _ = await loop.connect_write_pipe(lambda: protocol, pipe)
    return asyncio.StreamWriter(transport, protocol, None, loop)


@contextmanager
def console_listener() -> Iterator[tuple[socket.socket, str]]:
    """A listening unix socket for ``runc --console-socket`` and the address to give runc.

    It is an abstract socket (``@cnm-console-<random>``, Go's spelling): a path under the
    exec root could exceed the 107-byte limit of socket paths, and an abstract name leaves
    nothing to clean up.  The random name makes it unguessable for the moment it exists."""
    name = f"cnm-console-{secrets.token_hex(12)}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        listener.bind(f"\0{name}")
        listener.listen(1)
        listener.setblocking(False)
        yield listener, f"@{name}"
    finally:
        listener.close()


def _set_once(future: asyncio.Future[None]) -> None:
    """A reader callback: the fd is ready (it may fire again before the waiter runs)."""
    if not future.done():
        future.set_result(None)


async def receive_console(listener: socket.socket) -> int:
    """Accept runc's connection and receive the pty master it sends (SCM_RIGHTS)."""
    loop = asyncio.get_running_loop()
    conn, _ = await loop.sock_accept(listener)
    with conn:
        readable: asyncio.Future[None] = loop.create_future()
        loop.add_reader(conn.fileno(), _set_once, readable)
        try:
            await readable
        finally:
            loop.remove_reader(conn.fileno())
        _, fds, _, _ = socket.recv_fds(conn, 4096, 1)
    if not fds:
        raise RuntimeFailure("runc sent no terminal over the console socket")
    for extra in fds[1:]:
        os.close(extra)
    os.set_inheritable(fds[0], False)
    return fds[0]


# -- keeping a descriptor alive across a daemon restart ------------------------------------------

_SYS_PIDFD_GETFD = 438  # the same number on every architecture (Linux >= 5.6)
_KEEPER_ARGV = ("sleep", "infinity")


def start_time(pid: int) -> int | None:
    """The start time of ``pid`` (clock ticks since boot, ``/proc/<pid>/stat`` field 22):
    with the pid, it names one process for good (pids are reused, this pair is not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


def start_fd_keeper(fds: list[int]) -> tuple[int, int]:
    """A tiny process (``sleep infinity``) that holds copies of ``fds`` under the same
    numbers, so the open files outlive cnmd: a container's output pipes (what it writes
    while no cnmd reads stays in them, even after it exits) or its pty master (without
    it a cnmd restart would hang up the container's terminal).  Returns its pid and
    ``start_time``, which name it for ``fetch_kept_fd`` and ``stop_fd_keeper``."""
    import subprocess

    try:
        proc = subprocess.Popen(
            _KEEPER_ARGV,
            pass_fds=tuple(fds),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        raise RuntimeFailure(f"cannot start the fd keeper: {exc.strerror}") from exc
    started = start_time(proc.pid)
    if started is None:
        raise RuntimeFailure("the fd keeper died at once")
    return proc.pid, started


def fetch_kept_fd(pid: int, started: int, fd: int, target_suffix: str) -> int | None:
    """A copy of descriptor ``fd`` of keeper (``pid``, ``started``) (``pidfd_getfd``),
    after checking that it is still that process and its ``fd`` points at a path ending
    in ``target_suffix``; None when it is gone or is not."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        if start_time(pid) != started or not os.readlink(f"/proc/{pid}/fd/{fd}").endswith(target_suffix):
            return None
        got = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)  # the copy is close-on-exec
        return got if got >= 0 else None
    except OSError:
        return None
    finally:
        os.close(pidfd)


async def stop_fd_keeper(pid: int, started: int) -> None:
    """Kill keeper (``pid``, ``started``) and reap it if it is ours.  Idempotent."""
    import signal

    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        if start_time(pid) != started:  # the pidfd pins the pid: no reuse after this check
            return
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        return
    finally:
        os.close(pidfd)
    await wait_pid(pid)
