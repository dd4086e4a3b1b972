"""sysctl reads and writes under /proc/sys, in the namespace of the calling thread."""

from __future__ import annotations

import os

from cnm.errors import KernelError
from cnm.kernel.cmdlog import log_command


def _path(key: str) -> str:
    return os.path.join("/proc/sys", key.replace(".", "/"))


def get_sysctl(key: str) -> str:
    try:
        with open(_path(key)) as f:
            return f.read().strip()
    except OSError as exc:
        raise KernelError(f"cannot read sysctl {key}: {exc.strerror}") from exc


def set_sysctl(key: str, value: str) -> str:
    """Write ``value`` to ``key`` (dotted form, e.g. ``net.ipv4.ip_forward``); return the
    previous value so the caller can undo.  Writes nothing when the value is already set."""
    previous = get_sysctl(key)
    if previous == value:
        return previous
    log_command(["sysctl", "-w", f"{key}={value}"])
    try:
        with open(_path(key), "w") as f:
            f.write(value)
    except OSError as exc:
        raise KernelError(f"cannot set sysctl {key}={value}: {exc.strerror}") from exc
    return previous
