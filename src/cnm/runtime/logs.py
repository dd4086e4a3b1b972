"""A container's log, as Docker's ``json-file`` driver keeps it.

One JSON record per line, stdout and stderr in the order they were read::

    {"log":"hi\\n","stream":"stdout","time":"2026-12-01T22:30:16.123456789Z"}

A line longer than ``MAX_RECORD`` is cut into several records; only the last one ends in a
newline (Docker's partial messages).  ``max-size``/``max-file`` rotate as Docker does: when
a record would take the file past ``max-size``, ``<log>.{n-2}`` becomes ``<log>.{n-1}`` …,
``<log>`` becomes ``<log>.1`` and a new ``<log>`` starts (with ``max-file=1`` the file is
truncated instead).

Owns: ``LogOptions`` (the validated ``--log-opt`` set), ``LineSplitter`` (bytes -> whole
lines, per stream), ``JsonLogWriter`` (appends and rotates) and ``read_records`` (reads the
files back, oldest first, with ``since``/``until``/``tail``).
"""

from __future__ import annotations

import calendar
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from cnm.errors import InvalidArgument, SystemFailure

STDOUT, STDERR = 1, 2
STREAM_NAMES = {STDOUT: "stdout", STDERR: "stderr"}
_STREAM_IDS = {name: sid for sid, name in STREAM_NAMES.items()}
MAX_RECORD = 16 * 1024  # Docker's partial-message size
_CHUNK = 65536

JSON_FILE, NONE = "json-file", "none"
LOG_DRIVERS = (JSON_FILE, NONE)
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


@dataclass(frozen=True, slots=True)
class LogOptions:
    """``json-file`` options: ``max_size`` in bytes (None: unbounded), ``max_file`` >= 1."""

    max_size: int | None = None
    max_file: int = 1


def parse_size(text: str) -> int:
    """go-units ``RAMInBytes``: ``100``, ``10k``, ``10m``, ``1.5g`` (binary multiples)."""
    m = _SIZE.match(text.strip())
    if not m:
        raise InvalidArgument(f"invalid size: '{text}'")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_log_config(driver: str, opts: Mapping[str, str]) -> LogOptions:
    """Validate ``HostConfig.LogConfig``; the json-file options.  Drivers other than
    ``json-file`` and ``none``, and options cnm does not implement, are refused."""
    if driver not in LOG_DRIVERS:
        raise InvalidArgument(
            f'logging driver "{driver}" is not supported by cnm (supported: json-file, none)'
        )
    if driver == NONE:
        if opts:
            raise InvalidArgument(f"unknown log opt '{next(iter(opts))}' for none log driver")
        return LogOptions()
    max_size: int | None = None
    max_file = 1
    for key, value in opts.items():
        if key == "max-size":
            if value not in ("", "-1"):
                max_size = parse_size(value)
                if max_size <= 0:
                    raise InvalidArgument(f"invalid max-size: '{value}' (must be positive)")
        elif key == "max-file":
            try:
                max_file = int(value)
            except ValueError:
                raise InvalidArgument(f"invalid max-file: '{value}'") from None
            if max_file < 1:
                raise InvalidArgument("max-file cannot be less than 1")
        elif key == "compress" and value.lower() in ("false", "0", ""):
            pass
        else:
            raise InvalidArgument(
                f"unknown log opt '{key}' for json-file log driver (cnm supports max-size, max-file)"
            )
    if max_file > 1 and max_size is None:
        raise InvalidArgument("max-file can only be used together with max-size")
    return LogOptions(max_size=max_size, max_file=max_file)


def rfc3339_nano(ns: int) -> str:
    """``2006-01-02T15:04:05.000000000Z`` (Docker's RFC3339NanoFixed, UTC)."""
    seconds, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{frac:09d}Z"


def parse_time(text: str) -> int:
    """A record's ``time`` (RFC 3339, any fraction length, ``Z`` or an offset) -> ns."""
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$", text)
    if not m:
        raise ValueError(f"bad time {text!r}")
    base = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    frac = int((m.group(2) or "0").ljust(9, "0"))
    zone = m.group(3)
    offset = (
        0 if zone == "Z" else (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60) * (1 if zone[0] == "+" else -1)
    )
    return (base - offset) * 1_000_000_000 + frac


def encode_record(stream: int, data: bytes, ns: int) -> bytes:
    """One json-file line (with its newline)."""
    text = json.dumps(
        {
            "log": data.decode("utf-8", errors="replace"),
            "stream": STREAM_NAMES[stream],
            "time": rfc3339_nano(ns),
        },
        separators=(",", ":"),
    )
    return text.encode() + b"\n"


class LineSplitter:
    """Cuts one stream's bytes into records: whole lines, or ``MAX_RECORD``-byte pieces
    of a longer line; ``flush`` gives what is left (at EOF)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        start = 0
        while True:
            nl = self._buf.find(b"\n", start, start + MAX_RECORD)
            if nl >= 0:
                out.append(bytes(self._buf[start : nl + 1]))
                start = nl + 1
            elif len(self._buf) - start >= MAX_RECORD:
                out.append(bytes(self._buf[start : start + MAX_RECORD]))
                start += MAX_RECORD
            else:
                break
        del self._buf[:start]
        return out

    def flush(self) -> list[bytes]:
        rest, self._buf = bytes(self._buf), bytearray()
        return [rest] if rest else []


def log_files(path: str) -> list[str]:
    """The files of a log, oldest first: the rotated ones (``path.N`` … ``path.1``, which
    rotation keeps contiguous), then ``path``."""
    older: list[str] = []
    while os.path.exists(f"{path}.{len(older) + 1}"):
        older.append(f"{path}.{len(older) + 1}")
    return [*reversed(older), path]


_NOT_OPEN = -2
_CLOSED = -1


class JsonLogWriter:
    """Appends records to ``path``, rotating per ``options``.  Owns the open file.  With
    ``lazy``, the file is opened at the first write (a restart makes a writer for every
    running container, most of which write nothing soon); an error opening it is then
    the first write's."""

    def __init__(self, path: str, options: LogOptions, *, lazy: bool = False) -> None:
        self.path = path
        self.options = options
        self._fd = _NOT_OPEN  # then the open file; _CLOSED once closed
        self._size = 0
        if not lazy:
            self._open_log()

    def _open_log(self) -> int:
        fd = self._fd = self._open()
        self._size = os.fstat(fd).st_size
        return fd

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def write(self, stream: int, pieces: list[bytes], ns: int | None = None) -> None:
        """Append one record per piece (all stamped ``ns``, default now)."""
        if not pieces or self._fd == _CLOSED:
            return
        if self._fd == _NOT_OPEN:
            try:
                self._open_log()
            except OSError as exc:
                raise SystemFailure(f"opening log {self.path}: {exc.strerror}") from exc
        stamp = time.time_ns() if ns is None else ns
        for piece in pieces:
            record = encode_record(stream, piece, stamp)
            limit = self.options.max_size
            if limit is not None and self._size and self._size + len(record) > limit:
                self._rotate()
            self._write_all(record)
            self._size += len(record)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            raise SystemFailure(f"writing log {self.path}: {exc.strerror}") from exc

    def _rotate(self) -> None:
        n = self.options.max_file
        if n > 1:
            for i in range(n - 1, 1, -1):
                src = f"{self.path}.{i - 1}"
                if os.path.exists(src):
                    os.replace(src, f"{self.path}.{i}")
            os.replace(self.path, f"{self.path}.1")
            os.close(self._fd)
            self._fd = self._open()
        else:
            os.ftruncate(self._fd, 0)
        self._size = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = _CLOSED


@dataclass(frozen=True, slots=True)
class Record:
    stream: int
    ns: int
    data: bytes


def decode_record(line: bytes) -> Record | None:
    """A json-file line back into a record; None for a line that is not one (a torn
    write after a crash)."""
    try:
        obj = json.loads(line)
        return Record(_STREAM_IDS[obj["stream"]], parse_time(obj["time"]), obj["log"].encode())
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _count_back(path: str, lines: int) -> tuple[int, int]:
    """(offset where the last ``lines`` whole lines of ``path`` start, how many there are)."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return 0, 0
    with fh:
        end = fh.seek(0, os.SEEK_END)
        found, pos, first = 0, end, True
        while pos > 0:
            step = min(_CHUNK, pos)
            pos -= step
            fh.seek(pos)
            block = fh.read(step)
            for i in range(len(block) - 1, -1, -1):
                if block[i] != 0x0A:
                    continue
                if first and pos + i == end - 1:
                    first = False
                    continue  # the newline ending the last line
                first = False
                found += 1
                if found == lines:
                    return pos + i + 1, found
        return 0, found + (1 if end else 0)


class LogReader:
    """Reads records from a log's files, oldest first, remembering where it stopped so a
    follower can ``read_new`` what was appended since (it notices a rotation by the inode
    of ``path`` changing)."""

    def __init__(self, path: str, tail: int | None) -> None:
        self.path = path
        self._pending: list[tuple[str, int]] = []  # (file, offset) still to read, in order
        files = log_files(path)
        if tail is None:
            self._pending = [(p, 0) for p in files]
        elif tail > 0:
            want = tail
            for p in reversed(files):
                offset, found = _count_back(p, want)
                self._pending.insert(0, (p, offset))
                want -= min(found, want)
                if want <= 0:
                    break
        self._fh = None
        self._ino = 0
        self._partial = b""
        if tail == 0:  # start at the current end
            try:
                self._fh = open(path, "rb")
                self._fh.seek(0, os.SEEK_END)
                self._ino = os.fstat(self._fh.fileno()).st_ino
            except FileNotFoundError:
                pass

    def read_new(self) -> Iterator[Record]:
        """Every whole record available now."""
        while batch := self.read_batch():
            yield from batch

    def read_batch(self, limit: int = 1 << 20) -> list[Record]:
        """The next records, about ``limit`` bytes of the files' worth (every record of a
        chunk read is returned, none is held back); [] when none is available now.  Safe
        to call from a worker thread while no other call runs."""
        out: list[Record] = []
        taken = 0
        while True:
            if self._fh is None:
                if self._pending:
                    path, offset = self._pending.pop(0)
                elif os.path.exists(self.path):
                    path, offset = self.path, 0
                else:
                    return out
                try:
                    self._fh = open(path, "rb")
                except FileNotFoundError:
                    continue
                self._fh.seek(offset)
                self._ino = os.fstat(self._fh.fileno()).st_ino
                self._partial = b""
            while chunk := self._fh.read(_CHUNK):
                lines = (self._partial + chunk).split(b"\n")
                self._partial = lines.pop()
                out.extend(r for r in map(decode_record, lines) if r is not None)
                taken += len(chunk)
                if taken >= limit:
                    return out
            if self._pending:
                self._close_file()
                continue
            try:
                rotated = os.stat(self.path).st_ino != self._ino
            except FileNotFoundError:
                return out
            if not rotated:
                return out
            self._close_file()  # the file we read was rotated away: go on with the new one
            self._pending = [(self.path, 0)]

    def _close_file(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def close(self) -> None:
        self._close_file()


def read_records(
    path: str, *, tail: int | None = None, since: int | None = None, until: int | None = None
) -> Iterator[Record]:
    """The records now in the log, oldest first; ``tail`` counts the last N records,
    ``since``/``until`` (ns, inclusive/exclusive as Docker) filter by time."""
    reader = LogReader(path, tail)
    try:
        for record in reader.read_new():
            if since is not None and record.ns < since:
                continue
            if until is not None and record.ns > until:
                return
            yield record
    finally:
        reader.close()
