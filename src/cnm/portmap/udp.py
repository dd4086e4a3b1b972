"""The userland proxy for one published UDP port: per-client flows, as docker-proxy does.

Owns the flows of one reserved UDP socket (it does not own that socket: the allocator
does).  Each client address gets its own upstream socket connected to the container, so
the container sees one peer per client and its replies find their way back; a flow
quiet in both directions for ``timeout`` seconds (90 s, docker-proxy's
``UDPConnTrackTimeout``) is closed.  Replies leave through the published socket from
the address the client sent to (``IP_PKTINFO``, ``IPV6_PKTINFO``), which matters when
it is bound to 0.0.0.0 or ``::`` on a host with several addresses.  The published socket
and the container may be of different families (``::`` to an IPv4-only container).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from dataclasses import dataclass, field

from cnm.portmap.hostsock import IP_PKTINFO, IPV6_PKTINFO

log = logging.getLogger("cnm.portmap")

MAX_DATAGRAM = 65535
BATCH = 64  # datagrams handled per readiness event before yielding to the loop
_PKTINFO = struct.Struct("=I4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
_PKTINFO6 = struct.Struct("=16sI")  # struct in6_pktinfo: addr, ifindex
_CMSG_SPACE = socket.CMSG_SPACE(max(_PKTINFO.size, _PKTINFO6.size))
# Errors that concern one datagram or one flow, never the published socket.
_TRANSIENT = (
    errno.EAGAIN,
    errno.ECONNREFUSED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENOBUFS,
    errno.EMSGSIZE,
    errno.EPERM,
    errno.EINVAL,
)
_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS)


@dataclass(eq=False, slots=True)
class _Flow:
    client: tuple[str, int]
    local: bytes  # the 4- or 16-byte address the client sent to (reply source)
    upstream: socket.socket
    last: float = field(default=0.0)


class UdpForwarder:
    """Forward datagrams between clients of ``sock`` and ``target`` on ``loop``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        target: tuple[str, int],
        *,
        timeout: float = 90.0,
        max_flows: int = 4096,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.target = target
        self.timeout = timeout
        self.max_flows = max_flows
        self.flows: dict[tuple[str, int], _Flow] = {}
        self._family = family_of(target)
        self._buf = bytearray(MAX_DATAGRAM)
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    def start(self) -> None:
        self.loop.add_reader(self.sock.fileno(), self._from_clients)
        self._schedule_sweep()

    def close(self) -> None:
        """Stop reading the published socket and close every flow; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.loop.remove_reader(self.sock.fileno())
        if self._sweeper is not None:
            self._sweeper.cancel()
        for flow in list(self.flows.values()):
            self._drop(flow)

    # -- client -> container ----------------------------------------------------------------

    def _from_clients(self) -> None:
        for _ in range(BATCH):
            try:
                n, anc, _flags, client = self.sock.recvmsg_into([self._buf], _CMSG_SPACE)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno not in _TRANSIENT:
                    log.warning("udp proxy %s: receive failed: %s", self.target, exc)
                return
            flow = self.flows.get(client) or self._open(client, _destination(anc))
            if flow is None:
                continue
            flow.last = self.loop.time()
            try:
                flow.upstream.send(memoryview(self._buf)[:n])
            except OSError as exc:
                if exc.errno not in _TRANSIENT:
                    self._drop(flow)

    def _open(self, client: tuple[str, int], local: bytes) -> _Flow | None:
        if len(self.flows) >= self.max_flows:
            oldest = min(self.flows.values(), key=lambda f: f.last)
            self._drop(oldest)
        try:
            up = socket.socket(self._family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        except OSError as exc:
            level = logging.WARNING if exc.errno in _RESOURCES else logging.ERROR
            log.log(
                level, "udp proxy %s: no socket for a new client (%s); datagram dropped", self.target, exc
            )
            return None
        try:
            up.connect(self.target)
        except OSError as exc:
            up.close()
            log.debug("udp proxy: cannot reach %s: %s", self.target, exc)
            return None
        flow = _Flow(client, local, up, self.loop.time())
        self.flows[client] = flow
        self.loop.add_reader(up.fileno(), self._from_container, flow)
        return flow

    # -- container -> client ----------------------------------------------------------------

    def _from_container(self, flow: _Flow) -> None:
        for _ in range(BATCH):
            try:
                n = flow.upstream.recv_into(self._buf)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _TRANSIENT:  # e.g. ICMP port unreachable from the container
                    continue
                self._drop(flow)
                return
            flow.last = self.loop.time()
            self._reply(flow, memoryview(self._buf)[:n])

    def _reply(self, flow: _Flow, data: memoryview) -> None:
        try:
            if len(flow.local) == 16 and any(flow.local):
                info = _PKTINFO6.pack(flow.local, 0)
                self.sock.sendmsg([data], [(socket.IPPROTO_IPV6, IPV6_PKTINFO, info)], 0, flow.client)
            elif len(flow.local) == 4 and any(flow.local):
                info = _PKTINFO.pack(0, flow.local, b"\0\0\0\0")
                self.sock.sendmsg([data], [(socket.IPPROTO_IP, IP_PKTINFO, info)], 0, flow.client)
            else:
                self.sock.sendto(data, flow.client)
        except OSError as exc:
            if exc.errno not in _TRANSIENT:
                log.debug("udp proxy: reply to %s failed: %s", flow.client, exc)

    # -- idle flows -------------------------------------------------------------------------

    def _schedule_sweep(self) -> None:
        self._sweeper = self.loop.call_later(max(min(self.timeout / 3, 10.0), 0.05), self._sweep)

    def _sweep(self) -> None:
        deadline = self.loop.time() - self.timeout
        for flow in [f for f in self.flows.values() if f.last <= deadline]:
            self._drop(flow)
        if not self._closed:
            self._schedule_sweep()

    def _drop(self, flow: _Flow) -> None:
        if self.flows.get(flow.client) is flow:
            del self.flows[flow.client]
        self.loop.remove_reader(flow.upstream.fileno())
        flow.upstream.close()


def family_of(target: tuple[str, int]) -> socket.AddressFamily:
    """The address family of a ``(host, port)`` target: IPv6 text has a colon."""
    return socket.AF_INET6 if ":" in target[0] else socket.AF_INET


def _destination(ancdata: list[tuple[int, int, bytes]]) -> bytes:
    """The header destination address of a received datagram, from its IP_PKTINFO (4
    bytes) or IPV6_PKTINFO (16 bytes)."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _PKTINFO.size:
            destination: bytes = _PKTINFO.unpack_from(data)[2]
            return destination
        if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= _PKTINFO6.size:
            destination6: bytes = _PKTINFO6.unpack_from(data)[0]
            return destination6
    return b""
