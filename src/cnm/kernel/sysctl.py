"""sysctl reads and writes under /proc/sys, in the namespace of the calling thread."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from cnm.errors import KernelError
from cnm.kernel.cmdlog import log_command


def _path(key: str) -> str:
    """As sysctl(8): dots separate the levels, a slash stands for a dot in a name."""
    return os.path.join("/proc/sys", key.translate(_SWAP))


_SWAP = str.maketrans("./", "/.")


def conf_key(family: str, ifname: str, item: str) -> str:
    """The key of an interface's setting, ``net.<family>.conf.<ifname>.<item>``, with a dot
    in the name written as a slash (``eth0.100`` -> ``eth0/100``), as sysctl(8) does."""
    return f"net.{family}.conf.{ifname.replace('.', '/')}.{item}"


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


IPV6_FORWARDING = ("net.ipv6.conf.all.forwarding", "net.ipv6.conf.default.forwarding")


def ipv6_forwarding_plan(read: Callable[[str], str | None], uplinks: Iterable[str]) -> list[tuple[str, str]]:
    """The writes, in order, that turn IPv6 forwarding on without costing the host its
    routes from router advertisements: none when forwarding is on already (``all`` and
    ``default``); else ``accept_ra=2`` on each of ``uplinks`` whose ``accept_ra`` is 1 (a
    forwarding interface ignores RAs unless it is 2), then ``forwarding=1`` on ``all`` and
    ``default``.  ``read(key)`` is the current value, None when the key does not exist;
    KernelError when the host has no IPv6 at all."""
    current = [read(key) for key in IPV6_FORWARDING]
    if None in current:
        raise KernelError("cannot turn on IPv6 forwarding: the host has no IPv6 (no net.ipv6 sysctls)")
    if all(value == "1" for value in current):
        return []
    plan = []
    for name in uplinks:
        key = conf_key("ipv6", name, "accept_ra")
        if read(key) == "1":
            plan.append((key, "2"))
    return plan + [(key, "1") for key in IPV6_FORWARDING]


def read_sysctl(key: str) -> str | None:
    """``key``'s value in the calling thread's namespace; None when it does not exist."""
    try:
        return get_sysctl(key)
    except KernelError:
        return None
