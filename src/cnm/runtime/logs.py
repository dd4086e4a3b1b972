"""Reading a container's output back from its two log files.

The container writes ``stdout.log`` / ``stderr.log`` itself (they are its stdout and
stderr), so there are no timestamps and no record of how the two streams interleave: each
read pass yields what is new in stdout, then what is new in stderr.  ``tail`` counts lines
in each file separately.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Sequence

STDOUT, STDERR = 1, 2
POLL_INTERVAL = 0.05
_CHUNK = 65536


def tail_offset(path: str, lines: int) -> int:
    """The offset where the last ``lines`` lines of ``path`` start (a final line without a
    newline counts as a line); 0 when the file has fewer lines or does not exist."""
    try:
        with open(path, "rb") as fh:
            end = fh.seek(0, os.SEEK_END)
            if lines <= 0:
                return end
            pos = end
            # The last byte ending a line does not start a new one.
            fh.seek(max(end - 1, 0))
            wanted = lines + (1 if end and fh.read(1) == b"\n" else 0)
            while pos > 0:
                step = min(_CHUNK, pos)
                pos -= step
                fh.seek(pos)
                block = fh.read(step)
                for i in range(len(block) - 1, -1, -1):
                    if block[i] == 0x0A:
                        wanted -= 1
                        if wanted == 0:
                            return pos + i + 1
            return 0
    except FileNotFoundError:
        return 0


async def read_logs(
    streams: Sequence[tuple[int, str]],
    *,
    follow: bool,
    tail: int | None,
    exited: Callable[[], bool],
    interval: float = POLL_INTERVAL,
) -> AsyncIterator[tuple[int, bytes]]:
    """(stream, chunk) from each ``(stream, path)`` in turn.  Without ``follow`` it ends at
    the current end of the files.  With ``follow`` it polls every ``interval`` seconds and
    ends once ``exited()`` was true before a pass that then read everything left."""
    offsets = {path: (0 if tail is None else tail_offset(path, tail)) for _, path in streams}
    while True:
        done = not follow or exited()
        for stream, path in streams:
            try:
                with open(path, "rb") as fh:
                    fh.seek(offsets[path])
                    while chunk := fh.read(_CHUNK):
                        offsets[path] += len(chunk)
                        yield stream, chunk
            except FileNotFoundError:
                pass
        if done:
            return
        await asyncio.sleep(interval)
