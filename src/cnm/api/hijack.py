"""Docker's hijacked streams over aiohttp: ``101 UPGRADED`` then raw bytes both ways.

``docker exec``/``attach`` POST with ``Connection: Upgrade`` and ``Upgrade: tcp``, require
status 101, then treat the socket as a raw pipe: stdin in, output out (multiplexed frames
``[stream,0,0,0,size_be32]`` unless a tty), with no HTTP chunking.  When stdin ends the
client half-closes (``CloseWrite``) and expects output until the process exits.

How: aiohttp writes the 101 head (a 1xx response is never chunk-encoded) and already
treats the connection as upgraded (its parser knows ``Upgrade: tcp``).  We then take the
transport over: ``set_parser`` hands us any bytes aiohttp buffered after the request, and
``transport.set_protocol`` swaps in an ``asyncio.StreamReaderProtocol`` whose
``eof_received`` keeps the socket open for writing (aiohttp's would close it on
half-close).  A full close shows up as ``connection_lost`` (or a failed write), which is
forwarded to aiohttp's protocol so it tidies its own state.

With a tty, ``pump_input`` watches the client's bytes for the detach keys (Docker's
``detachKeys``, default Ctrl-P Ctrl-Q; ``EscapeDetector``): the attach then ends and the
container keeps running.

Limit: bytes a client sends *before* it has read the 101 may be lost -- aiohttp's C
parser (3.14) only switches protocols for ``websocket`` and drops what follows an
``Upgrade: tcp`` request in the same read.  Docker's clients (Go CLI, docker-py) wait for
the 101 before they write, and no data can be handled between our 101 and the swap (no
``await`` in between), so nothing they send is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Iterable
from typing import Protocol

from aiohttp import web

from cnm.api.http import MULTIPLEXED_STREAM, RAW_STREAM
from cnm.errors import InvalidArgument

log = logging.getLogger("cnm.api")

STDIN, STDOUT, STDERR, SYSERR = 0, 1, 2, 3
_READ_CHUNK = 32 * 1024


def frame(stream: int, data: bytes) -> bytes:
    """One ``pkg/stdcopy`` frame."""
    return struct.pack(">BxxxL", stream, len(data)) + data


def media_type(tty: bool) -> str:
    return RAW_STREAM if tty else MULTIPLEXED_STREAM


def wants_upgrade(request: web.Request) -> bool:
    connection = {t.strip().lower() for t in request.headers.get("Connection", "").split(",")}
    return "upgrade" in connection and request.headers.get("Upgrade", "").lower() == "tcp"


class Sink(Protocol):
    """Where output goes; ``write`` returns False once the client is gone."""

    async def write(self, data: bytes) -> bool: ...


class _Feeder:
    """Receives the bytes aiohttp buffered past the request (via ``set_parser``)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if data:
            self._reader.feed_data(data)
        return False, b""

    def feed_eof(self) -> None:  # the StreamReaderProtocol reports EOF itself
        pass


class _HijackProtocol(asyncio.StreamReaderProtocol):
    def __init__(self, reader: asyncio.StreamReader, previous: asyncio.BaseProtocol) -> None:
        super().__init__(reader)
        self._previous = previous
        self.lost = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.lost.done():
            self.lost.set_result(None)
        with contextlib.suppress(Exception):
            self._previous.connection_lost(exc)


class HijackedStream:
    """A client connection after the 101: ``reader`` yields the client's bytes and ends
    at its half-close (or close); ``write`` sends raw bytes."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: _HijackProtocol
    ) -> None:
        self.reader = reader
        self._writer = writer
        self._protocol = protocol
        self.gone = False

    @property
    def closed(self) -> bool:
        return self.gone or self._protocol.lost.done()

    async def write(self, data: bytes) -> bool:
        if self.closed:
            return False
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, RuntimeError, OSError):
            self.gone = True
            return False
        return True

    async def wait_lost(self) -> None:
        await asyncio.shield(self._protocol.lost)


class ResponseSink:
    """Output into an ordinary (chunked) streaming response, for clients that did not
    ask for an upgrade."""

    def __init__(self, response: web.StreamResponse) -> None:
        self._response = response
        self.gone = False

    async def write(self, data: bytes) -> bool:
        if self.gone:
            return False
        try:
            await self._response.write(data)
        except (ConnectionError, RuntimeError, OSError):
            self.gone = True
            return False
        return True


async def hijack(request: web.Request, content_type: str) -> tuple[web.StreamResponse, HijackedStream]:
    """Answer ``101 UPGRADED`` now and take the connection over.  The caller returns the
    response from its handler when done; aiohttp then closes the connection."""
    response = web.StreamResponse(status=101, reason="UPGRADED")
    response.headers["Content-Type"] = content_type
    response.headers["Connection"] = "Upgrade"
    response.headers["Upgrade"] = "tcp"
    response.force_close()  # one hijacked exchange per connection
    await response.prepare(request)
    transport = request.transport
    previous = request.protocol
    if transport is None or transport.is_closing():
        raise ConnectionResetError("client went away before the stream started")
    reader = asyncio.StreamReader(limit=2 * _READ_CHUNK)
    # No await from here on: nothing may arrive between draining aiohttp's buffer and the swap.
    previous.set_parser(_Feeder(reader))  # type: ignore[arg-type]
    protocol = _HijackProtocol(reader, previous)
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    if hasattr(transport, "is_reading") and not transport.is_reading():
        transport.resume_reading()
    writer = asyncio.StreamWriter(transport, protocol, reader, asyncio.get_running_loop())
    return response, HijackedStream(reader, writer, protocol)


async def stream_response(request: web.Request, content_type: str) -> tuple[web.StreamResponse, ResponseSink]:
    """A 200 streaming response (chunked, flushed at once) for non-upgrade clients."""
    response = web.StreamResponse(status=200)
    response.headers["Content-Type"] = content_type
    await response.prepare(request)
    return response, ResponseSink(response)


# -- pumps ------------------------------------------------------------------------------------


async def pump_output(
    sink: Sink, sources: Iterable[tuple[int, asyncio.StreamReader | None]], multiplexed: bool
) -> None:
    """Copy each (stream id, reader) to ``sink`` until every reader is at EOF: framed
    when ``multiplexed``, raw otherwise.  When the client goes away the readers are still
    drained, so the process never blocks on a full pipe."""

    async def one(stream_id: int, reader: asyncio.StreamReader) -> None:
        while chunk := await reader.read(_READ_CHUNK):
            await sink.write(frame(stream_id, chunk) if multiplexed else chunk)

    async with asyncio.TaskGroup() as tg:
        for stream_id, reader in sources:
            if reader is not None:
                tg.create_task(one(stream_id, reader))


DEFAULT_DETACH_KEYS = b"\x10\x11"  # ctrl-p, ctrl-q


def parse_detach_keys(spec: str | None) -> bytes:
    """Docker's ``detachKeys``: comma-separated ``ctrl-<a-z @ [ \\ ] ^ _>`` or single
    characters; empty or absent: Ctrl-P Ctrl-Q."""
    if not spec:
        return DEFAULT_DETACH_KEYS
    out = bytearray()
    for key in spec.split(","):
        key = key.strip()
        low = key.lower()
        if len(key) == 1:
            out.append(ord(key))
        elif low.startswith("ctrl-") and len(low) == 6 and (low[5].isalpha() or low[5] in "@[\\]^_"):
            ch = low[5]
            out.append(ord(ch) - ord("a") + 1 if ch.isalpha() else ord(ch) - 64)
        else:
            raise InvalidArgument(f"Unknown character: '{key}'")
    return bytes(out)


class EscapeDetector:
    """Finds the detach sequence in a byte stream (moby's ``copyEscapable``): bytes that
    may begin it are held back until it is complete (detach) or broken (sent on)."""

    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self._held = b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(bytes to pass on, whether the sequence is complete)."""
        if not self.keys:
            return data, False
        out = bytearray()
        for b in data:
            candidate = self._held + bytes([b])
            if self.keys.startswith(candidate):
                if candidate == self.keys:
                    self._held = b""
                    return bytes(out), True
                self._held = candidate
                continue
            out += self._held  # a broken sequence is passed on; ``b`` may start a new one
            self._held = b""
            if self.keys[:1] == bytes([b]):
                if len(self.keys) == 1:
                    return bytes(out), True
                self._held = bytes([b])
            else:
                out.append(b)
        return bytes(out), False


async def pump_input(
    reader: asyncio.StreamReader,
    dest: asyncio.StreamWriter | None,
    *,
    detach_keys: bytes = b"",
    close_dest: bool = True,
) -> bool:
    """Copy the client's bytes to ``dest`` until the client half-closes, then close
    ``dest`` (when ``close_dest``) so the process sees EOF.  Without ``dest`` the bytes
    are discarded.  With ``detach_keys``, returns True as soon as they were typed."""
    escape = EscapeDetector(detach_keys)
    try:
        while chunk := await reader.read(_READ_CHUNK):
            chunk, detached = escape.feed(chunk)
            if dest is not None and chunk:
                dest.write(chunk)
                await dest.drain()
            if detached:
                return True
    except (ConnectionError, OSError) as exc:
        log.debug("stdin pump stopped: %s", exc)
    finally:
        if dest is not None:
            with contextlib.suppress(Exception):
                if close_dest and dest.can_write_eof():
                    dest.write_eof()
                else:
                    dest.close()
    return False


async def until_disconnected(request: web.Request, interval: float = 0.5) -> None:
    """Returns once the client of an ordinary (not hijacked) request has gone away.
    aiohttp does not cancel handlers on disconnect (by design: controller operations must
    not be interrupted half-way), so long waits poll the connection."""
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(interval)
