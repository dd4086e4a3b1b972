"""One proxied TCP connection: bytes copied both ways between two sockets, with half-close.

Owns the two sockets of a connection once handed over, and closes them exactly once.
Each direction is a ``_Pump`` driven by an asyncio loop's ``add_reader``/``add_writer``
(no coroutine, no buffer objects): zero-copy ``os.splice`` socket -> pipe -> socket when
the kernel allows it, ``recv_into``/``send`` through one buffer otherwise.  When one side
ends its stream the other side's write half is shut (``SHUT_WR``), as docker-proxy's
``CloseWrite`` does; the connection closes when both directions are done, or at the first
error on either socket (that error concerns this connection only).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import socket
from collections.abc import Callable

log = logging.getLogger("cnm.portmap")

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_SIZE = 1 << 20  # bytes per splice round trip; capped by /proc/sys/fs/pipe-max-size
COPY_SIZE = 64 * 1024
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_HAVE_SPLICE = hasattr(os, "splice")
# splice cannot be used between these (e.g. a socket type without splice_read support).
_NO_SPLICE = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)


def _make_pipe(size: int) -> tuple[int, int]:
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, size)
    except OSError:
        pass  # the default 64 KiB pipe still works, only with more round trips
    return r, w


class _Pump:
    """One direction, ``src`` -> ``dst``.  ``done`` is called once, with None at a clean
    end of stream or with the error that broke it."""

    __slots__ = (
        "loop",
        "src",
        "dst",
        "done",
        "pipe",
        "pending",
        "buf",
        "view",
        "reading",
        "writing",
        "eof",
        "closed",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        src: socket.socket,
        dst: socket.socket,
        done: Callable[[_Pump, BaseException | None], None],
        pipe: tuple[int, int] | None,
    ) -> None:
        self.loop = loop
        self.src = src
        self.dst = dst
        self.done = done
        self.pipe = pipe  # (read end, write end) for splice; None: copy through a buffer
        self.pending = 0  # bytes read from src and not yet written to dst
        self.buf = bytearray(COPY_SIZE) if pipe is None else None
        self.view = memoryview(self.buf if self.buf is not None else b"")  # empty while splicing
        self.reading = False  # a reader is registered on src
        self.writing = False  # a writer is registered on dst (dst was full)
        self.eof = False
        self.closed = False

    def start(self) -> None:
        self._resume_reading()

    def stop(self) -> None:
        """Unregister from the loop (the owner closes the sockets and the pipe)."""
        if self.closed:
            return
        self.closed = True
        self._pause_reading()
        if self.writing:
            self.loop.remove_writer(self.dst.fileno())
            self.writing = False

    # -- reading ----------------------------------------------------------------------------

    def _readable(self) -> None:
        try:
            n = self._read()
        except BlockingIOError:
            return
        except OSError as exc:
            if self.pipe is not None and exc.errno in _NO_SPLICE and self.pending == 0:
                self._fall_back()
                return
            self._finish(exc)
            return
        if n == 0:
            self.eof = True
            self._pause_reading()
        else:
            self.pending += n
        self._flush()

    def _read(self) -> int:
        if self.pipe is not None:
            return os.splice(self.src.fileno(), self.pipe[1], PIPE_SIZE, flags=_SPLICE_FLAGS)
        return self.src.recv_into(self.view)

    def _fall_back(self) -> None:
        log.debug("splice not possible between fds %d and %d: copying", self.src.fileno(), self.dst.fileno())
        if self.pipe is not None:
            os.close(self.pipe[0])
            os.close(self.pipe[1])
        self.pipe = None
        self.buf = bytearray(COPY_SIZE)
        self.view = memoryview(self.buf)

    # -- writing ----------------------------------------------------------------------------

    def _flush(self) -> None:
        """Write what is pending; while ``dst`` is full, stop reading and wait for it."""
        sent = 0
        try:
            while self.pending:
                if self.pipe is not None:
                    n = os.splice(self.pipe[0], self.dst.fileno(), self.pending, flags=_SPLICE_FLAGS)
                else:
                    n = self.dst.send(self.view[sent : sent + self.pending])
                    sent += n
                self.pending -= n
        except BlockingIOError:
            if self.buf is not None and sent:
                self.buf[: self.pending] = self.buf[sent : sent + self.pending]
            self._pause_reading()
            if not self.writing:
                self.writing = True
                self.loop.add_writer(self.dst.fileno(), self._flush)
            return
        except OSError as exc:
            self._finish(exc)
            return
        if self.writing:
            self.loop.remove_writer(self.dst.fileno())
            self.writing = False
        if self.eof:
            try:
                self.dst.shutdown(socket.SHUT_WR)
            except OSError as exc:
                if exc.errno != errno.ENOTCONN:
                    self._finish(exc)
                    return
            self._finish(None)
        else:
            self._resume_reading()

    def _pause_reading(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.src.fileno())
            self.reading = False

    def _resume_reading(self) -> None:
        if not self.reading:
            self.reading = True
            self.loop.add_reader(self.src.fileno(), self._readable)

    def _finish(self, error: BaseException | None) -> None:
        if self.closed:
            return
        self.stop()
        self.done(self, error)


class Relay:
    """A proxied connection between ``client`` and ``upstream`` (both connected,
    non-blocking).  ``on_close`` is called once when it is over."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: socket.socket,
        upstream: socket.socket,
        on_close: Callable[[Relay], None],
        *,
        splice: bool = True,
    ) -> None:
        self.loop = loop
        self.client = client
        self.upstream = upstream
        self._on_close = on_close
        self._pipes: list[tuple[int, int]] = []
        use_splice = splice and _HAVE_SPLICE
        try:
            up_pipe = _make_pipe(PIPE_SIZE) if use_splice else None
            if up_pipe:
                self._pipes.append(up_pipe)
            down_pipe = _make_pipe(PIPE_SIZE) if use_splice else None
            if down_pipe:
                self._pipes.append(down_pipe)
        except OSError:
            self._close_pipes()
            raise
        self._pumps = [
            _Pump(loop, client, upstream, self._pump_done, up_pipe),
            _Pump(loop, upstream, client, self._pump_done, down_pipe),
        ]
        self._running = 0
        self.closed = False

    def start(self) -> None:
        self._running = 2
        for p in self._pumps:
            p.start()

    def _pump_done(self, pump: _Pump, error: BaseException | None) -> None:
        self._running -= 1
        if error is not None:
            if not isinstance(error, (ConnectionError, TimeoutError)):
                log.debug("proxied connection failed: %s", error)
            self.close()
        elif self._running == 0:
            self.close()

    def close(self) -> None:
        """Stop both directions and close both sockets and pipes; idempotent."""
        if self.closed:
            return
        self.closed = True
        for p in self._pumps:
            p.stop()
        self.client.close()
        self.upstream.close()
        for p in self._pumps:
            if p.pipe is not None:
                os.close(p.pipe[0])
                os.close(p.pipe[1])
                p.pipe = None
        self._pipes.clear()
        self._on_close(self)

    def _close_pipes(self) -> None:
        for r, w in self._pipes:
            os.close(r)
            os.close(w)
        self._pipes.clear()
