"""Forwarding the queries that are not container names to upstream DNS servers.

Docker tries up to three servers one after the other with a 4 s timeout each, so a dead
first server costs every lookup 4 s (moby/moby#20029, #22185).  Here:

* the first upstream is asked at once; a server that stays silent gets ``stagger``
  (150 ms) before the next one is started too; the earlier queries stay in flight and
  the first good answer wins;
* a refused or unreachable server (an ICMP error on its connected socket) moves on to
  the next one immediately;
* SERVFAIL and REFUSED move on to the next server (as Docker does); if every server says
  so, the last such answer is passed through; NXDOMAIN and every other answer are passed
  through as they came;
* a truncated (TC) UDP answer is asked again of the same server over TCP;
* after ``deadline`` (2 s) without an answer the caller answers SERVFAIL;
* an upstream that let a query reach the deadline without a word (no answer to anything
  since that query went out) is *silent* for ``dead_hold`` (10 s): while every upstream of a
  query is silent, the caller answers SERVFAIL at once, and the query still goes out, as
  a probe whose answer is dropped; any answer, late ones too, ends the silence.  So a
  client that retries on SERVFAIL (busybox's nslookup does, twice per query) gets its
  answer within the deadline instead of running out of time;
* at most ``max_inflight`` (1024, Docker's figure) forwards run at once.

The query goes out as the client wrote it (EDNS, DO bit and all) except for its id,
which is replaced by a random one; the answer must carry that id, the QR bit and our
question (compared byte-wise, case-insensitively, without parsing the rest), and is
handed back with the client's id.  Anything else arriving on the socket is ignored.

**Sockets.**  A forward costs no socket set-up: per (source namespace, upstream) a
``_Pool`` keeps up to ``pool_size`` (4) *connected* UDP sockets open and takes them in
turn; each carries many queries at once, told apart by their random ids.  A socket is
retired after ``socket_uses`` (128) queries or ``socket_age`` (30 s), closed once its
last query is settled, and replaced by a new one (a new random source port); a pool
unused for ``idle`` (60 s) is closed.  So a spoofed answer must guess a 16-bit id and
one of 4 ports that change every few hundred queries: weaker than a port per query
(Docker's and the old cnm's), but cnm caches nothing it forwards (a forged answer
reaches one client once), and the ports still change all the time under load.
Sockets for ``--dns`` upstreams come from the sandbox's ``NetnsSockets`` (opened inside
the container's namespace, in the background) and are released with the sandbox
(``release``).

**No task, no future per query.**  A forward (``submit``) is driven by callbacks -- the
socket's reader, one timer for the stagger/deadline -- and hands its answer to a
callback; ``forward`` wraps that in a future for callers who await.  Only a TCP retry and
the first socket of a container-namespace pool run as tasks.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable, Sequence

from cnm.dns.netns_sockets import HostSockets, SocketSource
from cnm.dns.records import Upstream
from cnm.errors import CnmError

log = logging.getLogger("cnm.dns")

STAGGER = 0.150
DEADLINE = 2.0
MAX_INFLIGHT = 1024
POOL_SIZE = 4
SOCKET_USES = 128
SOCKET_AGE = 30.0
POOL_IDLE = 60.0
DEAD_HOLD = 10.0
_HEADER = 12
_SERVFAIL, _REFUSED = 2, 5
_RETRY_NEXT = (_SERVFAIL, _REFUSED)
_QR = 0x80  # in the third header byte
_TC = 0x02  # in the third header byte
_randbits = random.SystemRandom().getrandbits


def question_section(wire: bytes) -> bytes | None:
    """The question (name, type, class) of a one-question message as it stands on the
    wire, lower-cased; None when its name is compressed or malformed."""
    pos = _HEADER
    size = len(wire)
    while True:
        if pos >= size:
            return None
        length = wire[pos]
        if length == 0:
            break
        if length > 63:  # a compression pointer (or garbage)
            return None
        pos += 1 + length
    end = pos + 5
    if end > size or end - _HEADER > 255 + 4:
        return None
    return wire[_HEADER:end].lower()


class _Attempt:
    """One question to one upstream within a ``Forwarding``."""

    __slots__ = ("race", "upstream", "qid", "channel", "task", "settled", "pool", "sent_at")

    def __init__(self, race: Forwarding, upstream: Upstream) -> None:
        self.race = race
        self.upstream = upstream
        self.qid = 0
        self.channel: _Channel | None = None
        self.task: asyncio.Task[None] | None = None
        self.settled = False
        self.pool: _Pool | None = None
        self.sent_at = 0.0

    def matches(self, data: bytes) -> bool:
        """``data`` (with our id and QR already checked) answers our question."""
        question = self.race.question
        return data[4] == 0 and data[5] == 1 and data[_HEADER : _HEADER + len(question)].lower() == question


class _Channel:
    """One connected UDP socket to one upstream, shared by many queries (see module doc)."""

    __slots__ = ("loop", "sock", "fd", "pending", "uses", "born", "retired", "pool")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, pool: _Pool) -> None:
        self.loop = loop
        self.pool = pool
        self.sock = sock
        self.fd = sock.fileno()
        self.pending: dict[int, _Attempt] = {}
        self.uses = 0
        self.born = loop.time()
        self.retired = False
        loop.add_reader(self.fd, self._readable)

    def send(self, attempt: _Attempt, tail: bytes) -> None:
        """Send the query (``tail``: all of it after the id) under a fresh random id and
        wait for its answer; raises OSError when it cannot be sent."""
        pending = self.pending
        qid = _randbits(16)
        while qid in pending:
            qid = _randbits(16)
        try:
            self.sock.send(qid.to_bytes(2, "big") + tail)
        except (BlockingIOError, InterruptedError):
            raise
        except OSError as exc:
            # an ICMP error reported for an earlier datagram (and now consumed): it tells
            # the queries waiting here too that the upstream is unreachable
            self._unreachable(exc)
            raise
        pending[qid] = attempt
        attempt.qid = qid
        attempt.channel = self
        self.uses += 1

    def forget(self, attempt: _Attempt) -> None:
        if self.pending.get(attempt.qid) is attempt:
            del self.pending[attempt.qid]
        if self.retired and not self.pending:
            self.close()

    def _readable(self) -> None:
        try:
            data = self.sock.recv(65535)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # an ICMP error: the upstream is unreachable for everyone here
            self._unreachable(exc)
        else:
            if len(data) < _HEADER or not data[2] & _QR:
                return
            pool = self.pool  # connected: only the upstream gets here, so it is alive
            pool.last_heard = self.loop.time()
            pool.silent_until = 0.0
            attempt = self.pending.get(int.from_bytes(data[:2], "big"))
            if attempt is None or not attempt.matches(data):
                return  # a late answer, a stray or a spoof: ignored
            del self.pending[attempt.qid]
            attempt.race.answered(attempt, data)
        if self.retired and not self.pending:
            self.close()

    def _unreachable(self, exc: OSError) -> None:
        pending, self.pending = self.pending, {}
        for attempt in pending.values():
            attempt.race.failed(attempt, exc)
        if self.retired:
            self.close()

    def close(self) -> None:
        """Stop listening and close the socket; idempotent.  Pending queries fail."""
        if self.fd < 0:
            return
        self.loop.remove_reader(self.fd)
        self.sock.close()
        self.fd = -1
        pending, self.pending = self.pending, {}
        for attempt in pending.values():
            attempt.race.failed(attempt, ConnectionAbortedError("the upstream socket was closed"))


class _Pool:
    """The connected UDP sockets to one upstream from one source namespace."""

    def __init__(self, forwarder: Forwarder, source: SocketSource, upstream: Upstream) -> None:
        self.forwarder = forwarder
        self.source = source
        self.upstream = upstream
        self.family = socket.AF_INET6 if upstream.address.version == 6 else socket.AF_INET
        self.channels: list[_Channel] = []
        self.retired: list[_Channel] = []
        self.turn = 0
        self.last_used = 0.0
        self.last_heard = float("-inf")  # when the upstream last answered anything
        self.silent_until = 0.0  # see the module doc
        self._opening: asyncio.Task[None] | None = None

    def channel(self, loop: asyncio.AbstractEventLoop) -> _Channel | None:
        """The socket for the next query, or None when there is none yet (``open``).
        Never waits; may raise OSError (connect)."""
        now = self.last_used = loop.time()
        channels = self.channels
        if len(channels) < self.forwarder.pool_size:
            sock = self.source.take(self.family, socket.SOCK_DGRAM)
            if sock is not None:
                channel = self._connect(loop, sock)
                channels.append(channel)
                return channel
            if not channels:
                return None
        self.turn = turn = (self.turn + 1) % len(channels)
        channel = channels[turn]
        if channel.uses >= self.forwarder.socket_uses or now - channel.born >= self.forwarder.socket_age:
            sock = self.source.take(self.family, socket.SOCK_DGRAM)
            if sock is not None:  # else keep the old one until the source has a new one
                fresh = channels[turn] = self._connect(loop, sock)
                self._retire(channel)
                return fresh
        return channel

    async def open(self, loop: asyncio.AbstractEventLoop) -> _Channel:
        """The first socket of the pool, waiting for the source (one trip for all the
        queries that arrive meanwhile)."""
        task = self._opening
        if task is None:
            task = self._opening = asyncio.ensure_future(self._open_first(loop))
            task.add_done_callback(self._opened)
        await asyncio.wait((task,))  # not shielded: one query giving up must not stop it
        if task.cancelled():
            raise ConnectionAbortedError("the upstream's sockets were closed")
        task.result()  # its error, if any
        channel = self.channel(loop)
        if channel is None:
            raise ConnectionAbortedError("the upstream's sockets were closed")
        return channel

    def _opened(self, task: asyncio.Task[None]) -> None:
        if self._opening is task and (task.cancelled() or task.exception() is not None):
            self._opening = None  # the next query tries again

    async def _open_first(self, loop: asyncio.AbstractEventLoop) -> None:
        sock = await self.source.socket(self.family, socket.SOCK_DGRAM)
        if self.channels:  # filled meanwhile (the source had one at hand after all)
            sock.close()
            return
        self.channels.append(self._connect(loop, sock))

    def _connect(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> _Channel:
        try:
            # connected: the kernel filters other sources, picks a random source port
            # and reports ICMP errors to us
            sock.setblocking(False)
            sock.connect(sockaddr(self.upstream))
            return _Channel(loop, sock, self)
        except BaseException:
            sock.close()
            raise

    def _retire(self, channel: _Channel) -> None:
        channel.retired = True
        if channel.pending:
            self.retired = [c for c in self.retired if c.fd >= 0]
            self.retired.append(channel)
        else:
            channel.close()

    @property
    def busy(self) -> bool:
        return any(c.pending for c in self.channels) or any(c.pending for c in self.retired)

    def close(self) -> None:
        if self._opening is not None:
            self._opening.cancel()
            self._opening = None
        for channel in (*self.channels, *self.retired):
            channel.close()
        self.channels.clear()
        self.retired.clear()


class Forwarding:
    """One forwarded query across a sandbox's upstreams (see module doc): ``on_answer``
    gets the answer with the client's id, or None, once; ``cancel`` abandons it."""

    __slots__ = (
        "forwarder", "loop", "tail", "question", "client_id", "upstreams", "container",
        "started", "attempts", "fallback", "deadline", "timer", "on_answer", "over",
    )  # fmt: skip

    def __init__(
        self,
        forwarder: Forwarder,
        wire: bytes,
        question: bytes,
        upstreams: Sequence[Upstream],
        container: SocketSource | None,
        on_answer: Callable[[bytes | None], None],
    ) -> None:
        loop = self.loop = asyncio.get_running_loop()
        self.forwarder = forwarder
        self.client_id = wire[:2]
        self.tail = wire[2:]
        self.question = question
        self.upstreams = upstreams
        self.container = container
        self.started = 0
        self.attempts: list[_Attempt] = []  # unsettled ones
        self.fallback: bytes | None = None
        self.deadline = loop.time() + forwarder.deadline
        self.timer: asyncio.TimerHandle | None = None
        self.on_answer = on_answer
        self.over = False

    def start_next(self) -> None:
        upstream = self.upstreams[self.started]
        self.started += 1
        attempt = _Attempt(self, upstream)
        self.attempts.append(attempt)
        self._arm_timer()
        source = (
            self.forwarder.host_sockets
            if upstream.via_host_netns or self.container is None
            else self.container
        )
        pool = attempt.pool = self.forwarder.pool(source, upstream)
        attempt.sent_at = self.loop.time()
        try:
            channel = pool.channel(self.loop)
            if channel is None:  # the first query from a container namespace: open a socket
                attempt.task = asyncio.ensure_future(self._send_later(attempt, pool))
                return
            channel.send(attempt, self.tail)
        except OSError as exc:
            self.failed(attempt, exc)

    async def _send_later(self, attempt: _Attempt, pool: _Pool) -> None:
        try:
            channel = await pool.open(self.loop)
            if not attempt.settled:
                channel.send(attempt, self.tail)
        except (OSError, CnmError) as exc:
            self.failed(attempt, exc)

    def _arm_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        when = self.deadline
        if self.started < len(self.upstreams):
            when = min(when, self.loop.time() + self.forwarder.stagger)
        self.timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.over:
            return
        now = self.loop.time()
        if self.started < len(self.upstreams) and now < self.deadline:
            self.start_next()  # the servers in flight are slow: start the next one beside them
            return
        for attempt in self.attempts:
            pool = attempt.pool
            if pool is not None and attempt.channel is not None and pool.last_heard < attempt.sent_at:
                pool.silent_until = now + self.forwarder.dead_hold  # not a word since we asked
        self._finish(self.fallback)

    def _settle(self, attempt: _Attempt) -> bool:
        if attempt.settled or self.over:
            return False
        attempt.settled = True
        self.attempts.remove(attempt)
        return True

    def answered(self, attempt: _Attempt, data: bytes, *, tcp: bool = False) -> None:
        if not self._settle(attempt):
            return
        if not tcp and data[2] & _TC:  # truncated: the same server again, over TCP
            retry = _Attempt(self, attempt.upstream)
            self.attempts.append(retry)
            retry.task = asyncio.ensure_future(self._ask_tcp(retry))
            return
        if data[3] & 0x0F in _RETRY_NEXT:
            self.fallback = data
            self._next_or_end()
        else:
            self._finish(data)

    def failed(self, attempt: _Attempt, exc: BaseException) -> None:
        if not self._settle(attempt):
            return
        log.debug("dns: upstream %s port %s failed: %r", attempt.upstream.address, attempt.upstream.port, exc)
        self._next_or_end()

    def _next_or_end(self) -> None:
        if self.started < len(self.upstreams):
            self.start_next()
        elif not self.attempts:
            self._finish(self.fallback)

    def _finish(self, wire: bytes | None) -> None:
        if self.over:
            return
        self._end()
        self.on_answer(None if wire is None else self.client_id + wire[2:])

    def cancel(self) -> None:
        """Abandon the query: no answer is handed on.  Idempotent."""
        if not self.over:
            self._end()

    def _end(self) -> None:
        """The race is over (answered, given up or cancelled): forget what is in flight."""
        self.over = True
        self.forwarder._live.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for attempt in self.attempts:
            attempt.settled = True
            if attempt.channel is not None:
                attempt.channel.forget(attempt)
            if attempt.task is not None:
                attempt.task.cancel()
        self.attempts.clear()

    async def _ask_tcp(self, attempt: _Attempt) -> None:
        upstream = attempt.upstream
        source = (
            self.forwarder.host_sockets
            if upstream.via_host_netns or self.container is None
            else self.container
        )
        qid = _randbits(16)
        try:
            data = await _tcp_exchange(qid.to_bytes(2, "big") + self.tail, upstream, source)
        except (OSError, EOFError, CnmError) as exc:
            self.failed(attempt, exc)
            return
        attempt.qid = qid
        if int.from_bytes(data[:2], "big") != qid or not data[2] & _QR or not attempt.matches(data):
            self.failed(attempt, ValueError("the TCP answer does not match the query"))
            return
        self.answered(attempt, data, tcp=True)


class Forwarder:
    """Sends queries to a sandbox's upstreams (see module doc).  Holds the upstream
    sockets of every sandbox; shared by all of them, on cnmd's event loop."""

    def __init__(
        self,
        *,
        stagger: float = STAGGER,
        deadline: float = DEADLINE,
        max_inflight: int = MAX_INFLIGHT,
        host_sockets: SocketSource | None = None,
        pool_size: int = POOL_SIZE,
        socket_uses: int = SOCKET_USES,
        socket_age: float = SOCKET_AGE,
        idle: float = POOL_IDLE,
        dead_hold: float = DEAD_HOLD,
    ) -> None:
        self.stagger = stagger
        self.deadline = deadline
        self.max_inflight = max_inflight
        self.host_sockets: SocketSource = host_sockets or HostSockets()
        self.pool_size = max(1, pool_size)
        self.socket_uses = socket_uses
        self.socket_age = socket_age
        self.idle = idle
        self.dead_hold = dead_hold
        self._live: set[Forwarding] = set()
        self._pools: dict[tuple[SocketSource, Upstream], _Pool] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def inflight(self) -> int:
        """How many forwards are under way."""
        return len(self._live)

    @property
    def saturated(self) -> bool:
        return len(self._live) >= self.max_inflight

    def submit(
        self,
        wire: bytes,
        upstreams: Sequence[Upstream],
        container_sockets: SocketSource | None = None,
        *,
        question: bytes | None = None,
        on_answer: Callable[[bytes | None], None],
    ) -> Forwarding:
        """Start forwarding the query ``wire`` (one question; ``question`` is its question
        section lower-cased, found from ``wire`` when not given) to ``upstreams``.
        ``on_answer`` is called once -- possibly before ``submit`` returns -- with the first
        good answer in wire form with the client's id, or with None when no server
        answered in time, none is configured, every one is silent (then the query still
        goes out as a probe) or too many forwards are in flight (the caller answers
        SERVFAIL); never after ``cancel``.  ``container_sockets`` opens
        sockets for upstreams not ``via_host_netns`` (cnmd's own namespace when None).
        Must be called on the event loop."""
        if question is None:
            question = question_section(wire)
        race = Forwarding(self, wire, question or b"", upstreams, container_sockets, on_answer)
        if not upstreams or self.saturated or question is None or len(wire) < _HEADER:
            race.over = True
            on_answer(None)
            return race
        if self._all_silent(upstreams, container_sockets, race.loop.time()):
            on_answer(None)  # SERVFAIL now rather than after the deadline (module doc)
            race.on_answer = _drop
        self._live.add(race)
        race.start_next()
        return race

    def _all_silent(self, upstreams: Sequence[Upstream], container: SocketSource | None, now: float) -> bool:
        for upstream in upstreams:
            source = self.host_sockets if upstream.via_host_netns or container is None else container
            pool = self._pools.get((source, upstream))
            if pool is None or pool.silent_until <= now:
                return False
        return True

    async def forward(
        self,
        wire: bytes,
        upstreams: Sequence[Upstream],
        container_sockets: SocketSource | None = None,
        *,
        question: bytes | None = None,
    ) -> bytes | None:
        """``submit``, awaited: the answer with the client's id, or None.  Cancelling the
        awaiting task abandons the forward."""
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

        def on_answer(reply: bytes | None) -> None:
            if not future.done():
                future.set_result(reply)

        race = self.submit(wire, upstreams, container_sockets, question=question, on_answer=on_answer)
        try:
            return await future
        finally:
            race.cancel()

    # -- sockets -----------------------------------------------------------------------

    def pool(self, source: SocketSource, upstream: Upstream) -> _Pool:
        """The sockets to ``upstream`` from ``source``'s namespace, made on first use."""
        key = (source, upstream)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(self, source, upstream)
            if self._sweeper is None:
                self._sweeper = asyncio.get_running_loop().call_later(self.idle, self._sweep)
        return pool

    def _sweep(self) -> None:
        """Close the pools nobody asked through for ``idle`` seconds (old upstreams)."""
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for key, pool in list(self._pools.items()):
            if now - pool.last_used >= self.idle and not pool.busy:
                del self._pools[key]
                pool.close()
        if self._pools:
            self._sweeper = asyncio.get_running_loop().call_later(self.idle, self._sweep)

    def open_sockets(self, source: SocketSource | None = None) -> int:
        """How many upstream sockets are open (from ``source`` only, when given; for
        tests and debugging)."""
        return sum(
            sum(1 for c in (*pool.channels, *pool.retired) if c.fd >= 0)
            for (owner, _), pool in self._pools.items()
            if source is None or owner is source
        )

    def release(self, source: SocketSource) -> None:
        """Close the sockets opened from ``source`` (its sandbox is going); forwards still
        using them fail over to their next upstream or end.  Idempotent."""
        for key in [k for k in self._pools if k[0] is source]:
            self._pools.pop(key).close()

    def close(self) -> None:
        """Abandon every forward and close every upstream socket (cnmd shutting down).
        Idempotent."""
        for race in list(self._live):
            race.cancel()
        pools = list(self._pools.values())
        self._pools.clear()
        for pool in pools:
            pool.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


def sockaddr(upstream: Upstream) -> tuple[str, int] | tuple[str, int, int, int]:
    """The socket address ``upstream`` is dialed at.  An IPv6 link-local server's zone
    (``fe80::1%eth0``, ``fe80::1%2``) becomes the scope id: a name is looked up in cnmd's
    own namespace, where the host's resolvers are dialed (a ``--dns`` server, dialed from
    the container's namespace, needs a numeric zone).  OSError: no such interface."""
    address = upstream.address
    if address.version == 4:
        return str(address), upstream.port
    zone = address.scope_id
    if not zone:
        return str(address), upstream.port, 0, 0
    index = int(zone) if zone.isdigit() else socket.if_nametoindex(zone)
    return str(address).split("%", 1)[0], upstream.port, 0, index


def _drop(reply: bytes | None) -> None:
    """The answer of a probe whose client already got its SERVFAIL."""


async def _tcp_exchange(out: bytes, upstream: Upstream, source: SocketSource) -> bytes:
    """Send ``out`` to ``upstream`` over a fresh TCP connection from ``source``; the answer."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if upstream.address.version == 6 else socket.AF_INET
    sock = await source.socket(family, socket.SOCK_STREAM)
    try:
        await loop.sock_connect(sock, sockaddr(upstream))
        await loop.sock_sendall(sock, len(out).to_bytes(2, "big") + out)
        size = int.from_bytes(await _recv_exactly(loop, sock, 2), "big")
        data = await _recv_exactly(loop, sock, size)
    finally:
        sock.close()
    if len(data) < _HEADER:
        raise EOFError("the upstream's TCP answer is shorter than a DNS header")
    return data


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = await loop.sock_recv(sock, size - len(buf))
        if not chunk:
            raise EOFError("the upstream closed the TCP connection")
        buf += chunk
    return bytes(buf)
