"""Forwarding the queries that are not container names to upstream DNS servers.

Docker tries up to three servers one after the other with a 4 s timeout each, so a dead
first server costs every lookup 4 s (moby/moby#20029, #22185).  Here:

* each upstream query goes out on a fresh *connected* UDP socket, so an ICMP
  port-unreachable from a dead server surfaces at once (ConnectionRefusedError) and the
  next server is asked immediately;
* a server that stays silent gets ``stagger`` (150 ms) before the next one is started
  too; the earlier queries stay in flight and the first good answer wins;
* SERVFAIL and REFUSED move on to the next server (as Docker does); if every server says
  so, the last such answer is passed through; NXDOMAIN and every other answer are passed
  through as they came;
* a truncated (TC) UDP answer is asked again of the same server over TCP;
* after ``deadline`` (2 s) without an answer the caller answers SERVFAIL;
* at most ``max_inflight`` (1024, Docker's figure) forwards run at once.

The query goes out as the client wrote it (EDNS, DO bit and all) except for its id,
which is replaced by a random one so a spoofed answer must guess it as well as the
random source port; the answer is checked (id, QR, question) and handed back with the
client's id.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.rcode

from cnm.dns.netns_sockets import HostSockets, SocketSource
from cnm.dns.records import Upstream
from cnm.errors import CnmError

log = logging.getLogger("cnm.dns")

STAGGER = 0.150
DEADLINE = 2.0
MAX_INFLIGHT = 1024
_RETRY_NEXT = (dns.rcode.SERVFAIL, dns.rcode.REFUSED)
_sysrand = random.SystemRandom()


@dataclass(frozen=True, slots=True)
class Answer:
    """An upstream's answer: its wire form (still with the id we sent) and rcode."""

    wire: bytes
    rcode: int
    upstream: Upstream


class Forwarder:
    """Sends queries to a sandbox's upstreams (see module doc).  Stateless between
    queries apart from the in-flight count; safe to share by every sandbox."""

    def __init__(
        self,
        *,
        stagger: float = STAGGER,
        deadline: float = DEADLINE,
        max_inflight: int = MAX_INFLIGHT,
        host_sockets: SocketSource | None = None,
    ) -> None:
        self.stagger = stagger
        self.deadline = deadline
        self.max_inflight = max_inflight
        self._host = host_sockets or HostSockets()
        self._inflight = 0

    @property
    def saturated(self) -> bool:
        return self._inflight >= self.max_inflight

    async def forward(
        self,
        query: dns.message.Message,
        wire: bytes,
        upstreams: Sequence[Upstream],
        container_sockets: SocketSource | None = None,
    ) -> bytes | None:
        """The first good answer to ``query`` (whose wire form is ``wire``) from
        ``upstreams``, in wire form with the client's id; None when no server answered
        in time or too many forwards are in flight (the caller answers SERVFAIL).
        ``container_sockets`` opens sockets for upstreams not ``via_host_netns``
        (cnmd's own namespace when None)."""
        if not upstreams or self.saturated:
            return None
        self._inflight += 1
        try:
            answer = await self._race(query, wire, upstreams, container_sockets)
        finally:
            self._inflight -= 1
        if answer is None:
            return None
        return wire[:2] + answer.wire[2:]

    async def _race(
        self,
        query: dns.message.Message,
        wire: bytes,
        upstreams: Sequence[Upstream],
        container_sockets: SocketSource | None,
    ) -> Answer | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline
        pending: set[asyncio.Task[Answer | None]] = set()
        fallback: Answer | None = None
        started = 0

        def start_next() -> None:
            nonlocal started
            upstream = upstreams[started]
            started += 1
            source = self._host if upstream.via_host_netns or container_sockets is None else container_sockets
            pending.add(asyncio.ensure_future(self._ask(query, wire, upstream, source)))

        start_next()
        try:
            while pending:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                wait = min(remaining, self.stagger) if started < len(upstreams) else remaining
                done, _ = await asyncio.wait(pending, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                if not done:  # the servers in flight are slow: start the next one beside them
                    if started < len(upstreams):
                        start_next()
                    continue
                for task in done:
                    pending.discard(task)
                    answer = task.result()
                    if answer is not None and answer.rcode not in _RETRY_NEXT:
                        return answer
                    if answer is not None:
                        fallback = answer
                    if started < len(upstreams):
                        start_next()
        finally:
            for task in pending:
                task.cancel()
        return fallback

    async def _ask(
        self, query: dns.message.Message, wire: bytes, upstream: Upstream, source: SocketSource
    ) -> Answer | None:
        """One upstream over UDP, and over TCP if the UDP answer was truncated; None when
        the server failed (refused, unreachable, garbage, closed)."""
        qid = _sysrand.randrange(0x10000)
        out = qid.to_bytes(2, "big") + wire[2:]
        try:
            data, header = await _udp_exchange(out, qid, query, upstream, source)
            if header.flags & dns.flags.TC:
                data, header = await _tcp_exchange(out, qid, query, upstream, source)
        except (OSError, EOFError, dns.exception.DNSException) as exc:
            log.debug("dns: upstream %s port %s failed: %r", upstream.address, upstream.port, exc)
            return None
        except CnmError as exc:
            log.debug("dns: no socket for upstream %s: %s", upstream.address, exc)
            return None
        return Answer(data, dns.rcode.from_flags(header.flags, 0), upstream)


def _family(upstream: Upstream) -> int:
    return socket.AF_INET6 if upstream.address.version == 6 else socket.AF_INET


def _check(data: bytes, qid: int, query: dns.message.Message) -> dns.message.Message | None:
    """The header and question of ``data`` when it answers the query we sent."""
    try:
        header = dns.message.from_wire(data, question_only=True)
    except dns.exception.DNSException:
        return None
    if header.id != qid or not header.flags & dns.flags.QR or header.question != query.question:
        return None
    return header


async def _udp_exchange(
    out: bytes, qid: int, query: dns.message.Message, upstream: Upstream, source: SocketSource
) -> tuple[bytes, dns.message.Message]:
    loop = asyncio.get_running_loop()
    sock = await source.socket(_family(upstream), socket.SOCK_DGRAM)
    try:
        # connected: the kernel filters other sources and reports ICMP errors to us
        await loop.sock_connect(sock, (str(upstream.address), upstream.port))
        await loop.sock_sendall(sock, out)
        while True:  # skip stray datagrams until ours arrives (or the caller gives up)
            data = await loop.sock_recv(sock, 65535)
            header = _check(data, qid, query)
            if header is not None:
                return data, header
    finally:
        sock.close()


async def _tcp_exchange(
    out: bytes, qid: int, query: dns.message.Message, upstream: Upstream, source: SocketSource
) -> tuple[bytes, dns.message.Message]:
    loop = asyncio.get_running_loop()
    sock = await source.socket(_family(upstream), socket.SOCK_STREAM)
    try:
        await loop.sock_connect(sock, (str(upstream.address), upstream.port))
        await loop.sock_sendall(sock, len(out).to_bytes(2, "big") + out)
        size = int.from_bytes(await _recv_exactly(loop, sock, 2), "big")
        data = await _recv_exactly(loop, sock, size)
    finally:
        sock.close()
    header = _check(data, qid, query)
    if header is None:
        raise dns.exception.FormError("the TCP answer does not match the query")
    return data, header


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = await loop.sock_recv(sock, size - len(buf))
        if not chunk:
            raise EOFError("the upstream closed the TCP connection")
        buf += chunk
    return bytes(buf)
