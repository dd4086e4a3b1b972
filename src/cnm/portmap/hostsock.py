"""The socket that holds one published host port in cnmd's namespace.

As moby's ``portallocator/osallocator_linux.go`` does: for TCP (and SCTP) ``SO_REUSEADDR``,
a BPF filter that drops every packet attached *before* bind, bind, and ``listen``.  The
listen matters: a bound TCP socket that is not listening lets any other program with
``SO_REUSEADDR`` bind and listen on the same port (checked on Linux 6.x), so the port would
not really be reserved; the drop-all filter keeps the listener from completing handshakes
while the kernel's DNAT serves the port.  UDP: filter, ``IP_PKTINFO`` (so a proxy can
answer from the address the client used), bind, no ``SO_REUSEADDR`` (it would let others
share the port).  The userland proxy detaches the filter when it serves the socket.
IPv6 sockets are ``IPV6_V6ONLY`` (``::`` and ``0.0.0.0`` are two bindings, as in Docker)
and UDP ones ask for ``IPV6_RECVPKTINFO``.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
from ipaddress import IPv4Address, IPv6Address

SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
SO_DETACH_FILTER = getattr(socket, "SO_DETACH_FILTER", 27)
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPPROTO_SCTP = getattr(socket, "IPPROTO_SCTP", 132)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)

# One classic-BPF instruction, BPF_RET|BPF_K with k=0: "accept 0 bytes" = drop.
_DROP_ALL_INSN = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))
# struct sock_fprog { unsigned short len; struct sock_filter *filter; } (native layout)
_DROP_ALL_PROG = struct.pack("HP", 1, ctypes.addressof(_DROP_ALL_INSN))

_NO_PROTOCOL = (errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT, errno.EAFNOSUPPORT)


def drop_all(sock: socket.socket) -> None:
    """Make ``sock`` discard every packet (nothing is queued or accepted)."""
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, _DROP_ALL_PROG)


def accept_all(sock: socket.socket) -> None:
    """Remove the drop-all filter (the proxy serves ``sock`` from now on)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
    except OSError as exc:
        if exc.errno != errno.ENOENT:  # no filter attached: nothing to do
            raise


def ipv6_available() -> bool:
    """Whether this namespace can have IPv6 sockets at all (Docker's "if the host can
    listen on IPv6": only then does a port without a host address get a ``::`` twin)."""
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC).close()
    except OSError:
        return False
    return True


def open_reserved(protocol: str, host_ip: IPv4Address | IPv6Address, port: int) -> socket.socket | None:
    """A socket bound to ``host_ip:port`` for ``protocol``, filtered, listening for TCP/SCTP.

    Raises ``OSError`` as the kernel reports it (``EADDRINUSE`` when another program holds
    the port, ``EADDRNOTAVAIL`` for an address the host does not have).  Returns None for
    SCTP when the kernel has no SCTP support: then no program can bind an SCTP port at all,
    and the allocator's own bookkeeping is the whole reservation.
    """
    family = socket.AF_INET6 if host_ip.version == 6 else socket.AF_INET
    if protocol == "udp":
        sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    else:
        proto = IPPROTO_SCTP if protocol == "sctp" else 0
        try:
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC, proto)
        except OSError as exc:
            if protocol == "sctp" and exc.errno in _NO_PROTOCOL:
                return None
            raise
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if protocol == "udp":
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        drop_all(sock)
        sock.bind((str(host_ip), port))
        if protocol != "udp":
            sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
