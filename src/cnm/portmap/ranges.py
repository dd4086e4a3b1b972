"""The kernel's ephemeral port range and reserved ports, read (never written) from /proc.

Docker picks ``-P`` and empty-``HostPort`` ports from ``net.ipv4.ip_local_port_range``
(fallback 49153-65535, ``portallocator_unix.go``) and, since 29.6, skips
``net.ipv4.ip_local_reserved_ports`` for automatic picks.  So does cnm.
"""

from __future__ import annotations

import logging

log = logging.getLogger("cnm.portmap")

FALLBACK_RANGE = (49153, 65535)
PORT_RANGE_PATH = "/proc/sys/net/ipv4/ip_local_port_range"
RESERVED_PATH = "/proc/sys/net/ipv4/ip_local_reserved_ports"


def ephemeral_range(path: str = PORT_RANGE_PATH) -> tuple[int, int]:
    """``ip_local_port_range`` as (first, last); the fallback when unreadable or nonsense."""
    try:
        with open(path, encoding="ascii") as f:
            lo, hi = (int(v) for v in f.read().split())
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s (%s): using ephemeral ports %d-%d", path, exc, *FALLBACK_RANGE)
        return FALLBACK_RANGE
    if not 0 < lo <= hi <= 65535:
        log.warning("%s holds %d-%d: using ephemeral ports %d-%d", path, lo, hi, *FALLBACK_RANGE)
        return FALLBACK_RANGE
    return lo, hi


def parse_reserved(text: str) -> frozenset[int]:
    """``ip_local_reserved_ports`` syntax: ``8080,9000-9010`` (empty: none)."""
    ports: set[int] = set()
    for part in text.replace("\n", ",").split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        first, last = int(lo), int(hi or lo)
        ports.update(range(first, last + 1))
    return frozenset(ports)


def reserved_ports(path: str = RESERVED_PATH) -> frozenset[int]:
    """The reserved ports; empty when the file is missing or unreadable."""
    try:
        with open(path, encoding="ascii") as f:
            return parse_reserved(f.read())
    except (OSError, ValueError) as exc:
        log.debug("cannot read %s: %s", path, exc)
        return frozenset()
