#!/usr/bin/env python3
"""world_server.py tcp|udp PORT TIMEOUT [ADDRESS] — a one-shot server in the "world".

Binds ADDRESS (default 203.0.113.1; an IPv6 address such as 2001:db8:203::1 makes it an
IPv6 server).  Prints ``LISTENING`` once bound, then the source address of the first TCP
connection or UDP datagram (what the Internet would see: the host's 203.0.113.2 or
2001:db8:203::2 after masquerade), then exits.  Prints ``TIMEOUT`` and exits 3 when nothing
arrives within TIMEOUT seconds.
"""

from __future__ import annotations

import socket
import sys

ADDR = "203.0.113.1"


def main() -> int:
    proto, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    address = sys.argv[4] if len(sys.argv) > 4 else ADDR
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        if proto == "tcp":
            sock.listen(1)
        sock.settimeout(timeout)
        print("LISTENING", flush=True)
        try:
            if proto == "tcp":
                conn, peer = sock.accept()
                conn.close()
            else:
                _, peer = sock.recvfrom(4096)
        except TimeoutError:
            print("TIMEOUT", flush=True)
            return 3
        print(peer[0], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
