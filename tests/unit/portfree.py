"""Free loopback ports for tests that bind real sockets (no root needed)."""

from __future__ import annotations

import socket


def free_block(size: int, start: int = 41000) -> int:
    """A first port of ``size`` consecutive 127.0.0.1 ports that no one holds right now,
    for TCP and UDP."""
    for base in range(start, 60000, size + 7):
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + size):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    socks.append(s := socket.socket(socket.AF_INET, kind))
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block on 127.0.0.1")
