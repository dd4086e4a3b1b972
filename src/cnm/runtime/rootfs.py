"""A container's root filesystem: an overlay of its own upper layer over the image.

``mount_overlay`` / ``unmount`` call mount(2) / umount2(2) directly (no ``mount`` exec: a
start is latency-sensitive) and log the equivalent command.  ``unmount`` is idempotent.
``export_tar`` streams the union of the layers as a tar (``docker export``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import os
import threading
from collections.abc import AsyncGenerator

from cnm.errors import RuntimeFailure
from cnm.kernel.cmdlog import log_command
from cnm.runtime.archive import write_layered_tar

_CHUNK = 1 << 16

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)

MNT_DETACH = 2
_UNSAFE = frozenset(",:\\")  # overlay's option syntax: these would split or escape


def overlay_options(lower: str, upper: str, work: str) -> str:
    """The overlay mount data; RuntimeFailure if a path cannot be expressed in it."""
    for path in (lower, upper, work):
        if _UNSAFE & set(path):
            raise RuntimeFailure(
                f"cannot use {path!r} in an overlay mount: ',', ':' and '\\' are not allowed"
            )
    return f"lowerdir={lower},upperdir={upper},workdir={work}"


def mount_overlay(lower: str, upper: str, work: str, target: str) -> None:
    """Mount ``lower`` (read-only) + ``upper``/``work`` at ``target`` (which must exist)."""
    options = overlay_options(lower, upper, work)
    log_command(["mount", "-t", "overlay", "overlay", "-o", options, target])
    if _libc.mount(b"overlay", os.fsencode(target), b"overlay", 0, options.encode()) != 0:
        err = ctypes.get_errno()
        raise RuntimeFailure(f"mount overlay at {target}: {os.strerror(err)}")


def unmount(target: str) -> None:
    """Unmount ``target``; nothing to do when it is not a mount point or does not exist.
    A busy mount is detached (MNT_DETACH) so teardown never blocks on a stray reference."""
    if not os.path.ismount(target):
        return
    log_command(["umount", target])
    if _libc.umount2(os.fsencode(target), 0) == 0:
        return
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOENT):  # raced: no longer mounted
        return
    if err == errno.EBUSY:
        log_command(["umount", "--lazy", target])
        if _libc.umount2(os.fsencode(target), MNT_DETACH) == 0:
            return
        err = ctypes.get_errno()
    raise RuntimeFailure(f"umount {target}: {os.strerror(err)}")


async def export_tar(layers: list[str]) -> AsyncGenerator[bytes, None]:
    """The union of ``layers`` (uppermost first) as tar chunks.

    A thread of its own writes the tar into a pipe (a long export must not hold one of the
    few default-executor workers); the loop reads the pipe without blocking.  When the
    reader stops early (the client went away), closing the pipe ends the writer with
    EPIPE.  A failure while walking the layers is raised after the chunks written before
    it, so a consumer can abort its half-sent response.
    """
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with open(write_fd, "wb", buffering=_CHUNK) as out:
                write_layered_tar(layers, out)
        except BrokenPipeError:
            pass
        except BaseException as exc:  # reported to the reader below
            failure.append(exc)

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=4 * _CHUNK)
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), open(read_fd, "rb", buffering=0)
        )
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise
    writer = threading.Thread(target=produce, name="cnm-export", daemon=True)
    writer.start()
    try:
        while chunk := await reader.read(_CHUNK):
            yield chunk
    finally:
        transport.close()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(writer.join)
    if failure:
        raise RuntimeFailure(f"export failed: {failure[0]}") from failure[0]
