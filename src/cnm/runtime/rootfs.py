"""A container's root filesystem: an overlay of its own upper layer over the image.

``mount_overlay`` / ``unmount`` call mount(2) / umount2(2) directly (no ``mount`` exec: a
start is latency-sensitive) and log the equivalent command.  ``unmount`` is idempotent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

from cnm.errors import RuntimeFailure
from cnm.kernel.cmdlog import log_command

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
