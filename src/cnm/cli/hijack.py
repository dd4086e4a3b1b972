"""Hijacked streams: Docker's multiplexed framing and the copy loop of ``run``/``exec``/``logs``.

Owns: ``Demuxer`` (``pkg/stdcopy``: 8-byte header ``[stream,0,0,0,size_be32]`` then the
payload; 1 = stdout, 2 = stderr, 0 = stdin echoed to stdout, 3 = a daemon error),
``pump`` (copy stdin to the socket and the socket to stdout/stderr until the daemon closes
the stream; half-close the socket when stdin ends) and ``raw_terminal`` (put a tty in raw
mode and restore it, for ``-t``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from cnm.cli.errors import CliError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing/collections.abc costs start-up time
if TYPE_CHECKING:
    import _socket
    from collections.abc import Iterator

STDIN, STDOUT, STDERR, SYSTEMERR = 0, 1, 2, 3


class Demuxer:
    """Incremental parser of a multiplexed stream: ``feed(bytes)`` → [(stream, payload)…]."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buf += data
        frames: list[tuple[int, bytes]] = []
        while len(self.buf) >= 8:
            size = int.from_bytes(self.buf[4:8], "big")
            if len(self.buf) < 8 + size:
                break
            stream = self.buf[0]
            if stream > SYSTEMERR:
                raise CliError(f"Unrecognized input header: {stream}")
            payload = bytes(self.buf[8 : 8 + size])
            del self.buf[: 8 + size]
            if payload:
                frames.append((stream, payload))
        return frames

    def pending(self) -> int:
        """Bytes of an incomplete frame left over (non-zero at EOF means a truncated stream)."""
        return len(self.buf)


def demux(data: bytes) -> list[tuple[int, bytes]]:
    """Split a complete multiplexed byte string into (stream, payload) frames."""
    d = Demuxer()
    frames = d.feed(data)
    if d.pending():
        raise CliError("unexpected EOF in a multiplexed stream")
    return frames


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BrokenPipeError:
            return
        view = view[n:]


class Output:
    """Where a stream's bytes go: raw (tty) to ``out_fd``, or demultiplexed to out/err."""

    def __init__(self, tty: bool, out_fd: int = 1, err_fd: int = 2) -> None:
        self.demuxer = None if tty else Demuxer()
        self.out_fd, self.err_fd = out_fd, err_fd

    def write(self, data: bytes) -> None:
        if self.demuxer is None:
            _write_all(self.out_fd, data)
            return
        for stream, payload in self.demuxer.feed(data):
            if stream == SYSTEMERR:
                raise CliError(payload.decode(errors="replace").rstrip("\n"))
            _write_all(self.err_fd if stream == STDERR else self.out_fd, payload)


def copy_chunks(chunks: Iterator[bytes], tty: bool, out_fd: int = 1, err_fd: int = 2) -> None:
    """Copy a streamed HTTP body (``logs``) to stdout/stderr."""
    out = Output(tty, out_fd, err_fd)
    for chunk in chunks:
        out.write(chunk)


DEFAULT_DETACH_KEYS = b"\x10\x11"  # ctrl-p, ctrl-q


def detach_key_bytes(spec: str) -> bytes:
    """Docker's ``--detach-keys`` (``ctrl-p,ctrl-q``, ``ctrl-@``, ``a``): the bytes; empty
    spec: the default, Ctrl-P Ctrl-Q."""
    if not spec:
        return DEFAULT_DETACH_KEYS
    out = bytearray()
    for key in spec.split(","):
        key = key.strip()
        low = key.lower()
        if len(key) == 1:
            out.append(ord(key))
        elif low.startswith("ctrl-") and len(low) == 6 and (low[5].isalpha() or low[5] in "@[\\]^_"):
            out.append(ord(low[5]) - 96 if low[5].isalpha() else ord(low[5]) - 64)
        else:
            raise CliError(f"Unknown character: '{key}'")
    return bytes(out)


class Escape:
    """Watches typed bytes for the detach sequence; bytes that may begin it are held back
    until it is complete or broken (then sent on), as Docker's escape proxy does."""

    def __init__(self, keys: bytes) -> None:
        self.keys, self.held = keys, b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        out = bytearray()
        for b in data:
            candidate = self.held + bytes([b])
            if self.keys.startswith(candidate):
                if candidate == self.keys:
                    self.held = b""
                    return bytes(out), True
                self.held = candidate
                continue
            out += self.held
            self.held = b""
            if self.keys[:1] == bytes([b]):
                if len(self.keys) == 1:
                    return bytes(out), True
                self.held = bytes([b])
            else:
                out.append(b)
        return bytes(out), False


def pump(
    sock: _socket.socket,
    initial: bytes,
    tty: bool,
    stdin_fd: int | None,
    out_fd: int = 1,
    err_fd: int = 2,
    detach_keys: bytes = b"",
) -> bool:
    """Copy until the daemon closes the stream; True when the user typed ``detach_keys``
    instead (the stream is left at once; the container keeps running).

    With ``stdin_fd``, its bytes go to the socket; at its EOF the socket is half-closed
    (``CloseWrite``) and output keeps flowing until the daemon closes. Without it nothing
    is sent and the socket is left open for writing (as Docker's CLI does).
    """
    import _socket
    import select

    out = Output(tty, out_fd, err_fd)
    escape = Escape(detach_keys) if detach_keys else None
    if initial:
        out.write(initial)
    sfd = sock.fileno()
    poller = select.poll()
    poller.register(sfd, select.POLLIN)
    if stdin_fd is not None:
        poller.register(stdin_fd, select.POLLIN)
    while True:
        for fd, _event in poller.poll():
            if fd == sfd:
                data = sock.recv(65536)
                if not data:
                    return False
                out.write(data)
            else:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    data = b""
                detached = False
                if data and escape is not None:
                    send, detached = escape.feed(data)
                else:
                    send = data
                if send:
                    try:
                        sock.sendall(send)
                    except OSError:
                        data = b""
                if detached:
                    return True
                if not data:
                    poller.unregister(fd)
                    try:
                        sock.shutdown(_socket.SHUT_WR)
                    except OSError:
                        pass


@contextmanager
def raw_terminal(fd: int) -> Iterator[bool]:
    """Put terminal ``fd`` in raw mode for the block (yields False, doing nothing, if not a tty)."""
    if not os.isatty(fd):
        yield False
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    # TCSANOW, not setraw's default TCSAFLUSH: what was typed before (run -it attaching)
    # must reach the container, not be discarded.
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def terminal_size(fd: int = 1) -> tuple[int, int] | None:
    """(height, width) of the terminal on ``fd``, or None."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return None
    return size.lines, size.columns
