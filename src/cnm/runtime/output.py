"""A container's output on its way out: read from its stdio, written to its log, and
handed to every attached client.

The container's stdout and stderr are FIFOs (``<exec-root>/containers/<id>/stdout``,
``stderr``) that the container holds open read-write -- so a write never fails while no
one reads (while cnmd restarts, output waits in the pipe) -- or, with a tty, the pty whose
master runc sends us.  ``Copier`` reads them in cnmd's event loop; each chunk goes first to
the attached clients (``Subscription``: raw bytes, at once, a prompt without a newline
too) and then to the json-file log, cut into lines.  The copy ends when every writer is
gone (EOF; ``EIO`` on a pty master): only then is a run's output complete, and only then
may the container's files be removed -- which is what keeps ``run --rm`` from losing it.

``OutputHub`` is a container's meeting point across runs: a client may subscribe before
the container starts (``docker run`` attaches, then starts) and is then served by the next
copier; a subscription ends with the copier that served it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from typing import cast

from cnm.runtime.logs import JsonLogWriter, LineSplitter, Record

log = logging.getLogger("cnm.runtime")

_READ = 65536
# A client that reads nothing must not make cnmd hold the container's output without limit.
MAX_QUEUED = 64 << 20
_END = None


def _size(item: tuple[int, bytes] | Record) -> int:
    return len(item.data) if isinstance(item, Record) else len(item[1])


class Subscription:
    """One client's copy of a container's output until the run that serves it ends
    (``None`` then): ``(stream, bytes)`` pairs as read, or with ``lines`` the log's
    ``Record``s (whole lines, stamped).  ``close`` detaches it."""

    def __init__(self, hub: OutputHub, lines: bool = False) -> None:
        self._hub = hub
        self.lines = lines
        self._queue: asyncio.Queue[tuple[int, bytes] | Record | None] = asyncio.Queue()
        self._queued = 0
        self.overflowed = False

    def put(self, item: tuple[int, bytes] | Record) -> None:
        if self.overflowed:
            return
        self._queued += _size(item)
        if self._queued > MAX_QUEUED:
            self.overflowed = True  # the client is too slow: cut it off, never the container
            self._queue.put_nowait(_END)
            return
        self._queue.put_nowait(item)

    def end(self) -> None:
        self._queue.put_nowait(_END)

    async def get(self) -> tuple[int, bytes] | Record | None:
        """The next item (a ``Record`` with ``lines``, else a pair), None at the end."""
        item = await self._queue.get()
        if item is not None:
            self._queued -= _size(item)
        return item

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> tuple[int, bytes]:
        item = await self.get()
        if item is None:
            self.close()
            raise StopAsyncIteration
        return cast(tuple[int, bytes], item)  # iterated without ``lines`` only

    def close(self) -> None:
        self._hub.subscribers.discard(self)


class OutputHub:
    """A container's subscribers and its current copier (None between runs)."""

    def __init__(self) -> None:
        self.subscribers: set[Subscription] = set()
        self.copier: Copier | None = None

    def subscribe(self, *, running_only: bool = False, lines: bool = False) -> Subscription | None:
        """A subscription served by the current copier, or by the next one when none runs
        (None instead with ``running_only``)."""
        if running_only and (self.copier is None or self.copier.done.done()):
            return None
        sub = Subscription(self, lines)
        self.subscribers.add(sub)
        return sub

    def publish(self, stream: int, data: bytes) -> None:
        for sub in list(self.subscribers):
            if not sub.lines:
                sub.put((stream, data))

    def publish_records(self, records: list[Record]) -> None:
        for sub in list(self.subscribers):
            if sub.lines:
                for record in records:
                    sub.put(record)

    def end_all(self) -> None:
        """The run ended (or the container is gone): every subscription ends."""
        subs, self.subscribers = self.subscribers, set()
        for sub in subs:
            sub.end()


class Copier:
    """Copies ``sources`` (stream id, fd it owns, non-blocking) to ``hub`` and ``writer``
    until each fd reaches EOF.  ``done`` resolves then (never with an error)."""

    def __init__(self, hub: OutputHub, sources: list[tuple[int, int]], writer: JsonLogWriter | None) -> None:
        self._hub = hub
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        self._open: dict[int, int] = {}  # fd -> stream
        self._split: dict[int, LineSplitter] = {}
        self.done: asyncio.Future[None] = self._loop.create_future()
        hub.copier = self
        for stream, fd in sources:
            os.set_blocking(fd, False)
            self._open[fd] = stream
            self._split[stream] = LineSplitter()
            self._loop.add_reader(fd, self._readable, fd)
            # A FIFO opened after its last writer left never polls readable (Linux reports
            # the hang-up only to readers that saw a writer): try once, to find EOF.
            self._loop.call_soon(self._readable, fd)
        if not self._open:
            self._finish()

    def _readable(self, fd: int) -> None:
        stream = self._open.get(fd)
        if stream is None:
            return
        try:
            data = os.read(fd, _READ)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: the pty's last slave closed, i.e. EOF
                log.warning("reading container output: %s", exc)
            data = b""
        if data:
            self._hub.publish(stream, data)
            self._log(stream, self._split[stream].feed(data))
            return
        self._close_fd(fd)
        self._log(stream, self._split[stream].flush())
        if not self._open:
            self._finish()

    def _log(self, stream: int, pieces: list[bytes]) -> None:
        if not pieces:
            return
        ns = time.time_ns()
        self._hub.publish_records([Record(stream, ns, piece) for piece in pieces])
        if self._writer is None:
            return
        try:
            self._writer.write(stream, pieces, ns)
        except Exception as exc:  # a full disk must not stop the copy (the clients still get it)
            log.error("container log: %s", exc)

    def _close_fd(self, fd: int) -> None:
        self._open.pop(fd, None)
        self._loop.remove_reader(fd)
        os.close(fd)

    def _finish(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._hub.copier is self:
            self._hub.copier = None
        self._hub.end_all()
        if not self.done.done():
            self.done.set_result(None)

    def abort(self) -> None:
        """Stop now: read what is readable without waiting, then end as at EOF (when
        something outside the container still holds its stdio open)."""
        for fd in list(self._open):
            stream = self._open[fd]
            while True:
                try:
                    data = os.read(fd, _READ)
                except OSError:
                    data = b""
                if not data:
                    break
                self._hub.publish(stream, data)
                self._log(stream, self._split[stream].feed(data))
            self._close_fd(fd)
            self._log(stream, self._split[stream].flush())
        self._finish()
