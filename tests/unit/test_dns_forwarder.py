"""Forwarder over real sockets on 127.0.0.1: long-lived upstream sockets, random ids,
answers checked byte-wise, the in-flight bound, and sockets released with their sandbox.

The upstreams are raw UDP servers run by the test on 127.0.0.1 (no root, no namespace),
so a test can answer with whatever bytes it likes, spoofs included.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from ipaddress import IPv4Address

import dns.message
import dns.rcode
import dns.rrset
import pytest

from cnm.dns.forwarder import Forwarder, question_section
from cnm.dns.netns_sockets import HostSockets
from cnm.dns.records import Upstream

LOCAL = "127.0.0.1"
# reply(query wire) -> the datagrams to send back, in order
Replier = Callable[[bytes], list[bytes]]


def good(data: bytes, address: str = "192.0.2.1") -> bytes:
    query = dns.message.from_wire(data)
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", address))
    return reply.to_wire()


class RawUpstream(asyncio.DatagramProtocol):
    """A UDP server on 127.0.0.1 that records (source port, query id) of what it gets
    and answers with ``replier``."""

    def __init__(self, replier: Replier) -> None:
        self.replier = replier
        self.seen: list[tuple[int, int]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[no-untyped-def]
        self.seen.append((addr[1], int.from_bytes(data[:2], "big")))
        for out in self.replier(data):
            self.transport.sendto(out, addr)  # type: ignore[union-attr]

    @classmethod
    async def start(cls, replier: Replier) -> tuple[RawUpstream, Upstream]:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_datagram_endpoint(lambda: cls(replier), local_addr=(LOCAL, 0))
        port = proto.transport.get_extra_info("sockname")[1]
        return proto, Upstream(IPv4Address(LOCAL), port, True)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def query(name: str = "example.org", qid: int = 4321) -> bytes:
    q = dns.message.make_query(name, "A")
    q.id = qid
    return q.to_wire()


@pytest.fixture
async def forwarder():
    f = Forwarder(deadline=1.0)
    yield f
    f.close()


async def test_sockets_are_kept_and_shared_and_ids_are_random(forwarder):
    proto, upstream = await RawUpstream.start(lambda d: [good(d)])
    try:
        for _ in range(40):
            reply = await forwarder.forward(query(qid=4321), [upstream])
            assert reply is not None and reply[:2] == (4321).to_bytes(2, "big")  # the client's id
        ports = {port for port, _ in proto.seen}
        ids = [qid for _, qid in proto.seen]
        assert len(ports) <= forwarder.pool_size  # no socket per query
        assert forwarder.open_sockets() <= forwarder.pool_size
        assert len(set(ids)) >= 35 and 4321 not in ids  # random ids, never the client's
    finally:
        proto.close()


async def test_sockets_are_rotated_after_some_queries():
    forwarder = Forwarder(deadline=1.0, pool_size=2, socket_uses=3)
    proto, upstream = await RawUpstream.start(lambda d: [good(d)])
    try:
        for _ in range(30):
            assert await forwarder.forward(query(), [upstream]) is not None
        ports = {port for port, _ in proto.seen}
        assert len(ports) >= 8  # new source ports all the time
        assert forwarder.open_sockets() <= 2  # retired sockets are closed
    finally:
        proto.close()
        forwarder.close()


async def test_concurrent_queries_share_a_socket_and_each_gets_its_own_answer():
    forwarder = Forwarder(deadline=1.0, pool_size=1)
    held: list[bytes] = []

    def later(data: bytes) -> list[bytes]:  # answer in reverse order once all have arrived
        held.append(data)
        if len(held) < 5:
            return []
        return [
            good(d, f"192.0.2.{dns.message.from_wire(d).question[0].name.labels[0][1] - 48}")
            for d in reversed(held)
        ]

    proto, upstream = await RawUpstream.start(later)
    try:
        names = [f"n{i}.example" for i in range(1, 6)]
        replies = await asyncio.gather(
            *(forwarder.forward(query(n, 100 + i), [upstream]) for i, n in enumerate(names))
        )
        for i, (name, reply) in enumerate(zip(names, replies, strict=True)):
            msg = dns.message.from_wire(reply)  # type: ignore[arg-type]
            assert msg.id == 100 + i and msg.question[0].name.to_text() == name + "."
            assert msg.answer[0][0].address == f"192.0.2.{i + 1}"
        assert len({port for port, _ in proto.seen}) == 1
    finally:
        proto.close()
        forwarder.close()


async def test_spoofed_and_stray_answers_are_ignored(forwarder):
    def spoofing(data: bytes) -> list[bytes]:
        real = good(data, "192.0.2.99")
        wrong_id = bytes([data[0] ^ 0xFF, data[1]]) + good(data, "203.0.113.66")[2:]
        other_question = good(query("evil.example"), "203.0.113.66")
        other_question = data[:2] + other_question[2:]
        not_a_response = data
        return [b"\x00" * 5, wrong_id, other_question, not_a_response, real]

    proto, upstream = await RawUpstream.start(spoofing)
    try:
        reply = dns.message.from_wire(await forwarder.forward(query(), [upstream]))  # type: ignore[arg-type]
        assert [rd.address for rd in reply.answer[0]] == ["192.0.2.99"]
    finally:
        proto.close()


async def test_question_is_compared_case_insensitively(forwarder):
    def shouting(data: bytes) -> list[bytes]:
        reply = bytearray(good(data))
        section = question_section(bytes(data))
        assert section is not None
        reply[12 : 12 + len(section)] = bytes(data[12 : 12 + len(section)]).upper()
        return [bytes(reply)]

    proto, upstream = await RawUpstream.start(shouting)
    try:
        assert await forwarder.forward(query("MiXeD.example"), [upstream]) is not None
    finally:
        proto.close()


async def test_in_flight_forwards_are_bounded():
    forwarder = Forwarder(deadline=0.5, max_inflight=2)
    proto, upstream = await RawUpstream.start(lambda d: [])  # silent
    try:
        got: list[bytes | None] = []
        for i in range(5):
            forwarder.submit(query(qid=i), [upstream], on_answer=got.append)
        assert forwarder.inflight == 2 and forwarder.saturated
        assert got == [None, None, None]  # refused at once, the caller answers SERVFAIL
        await asyncio.sleep(0.7)
        assert got == [None] * 5 and forwarder.inflight == 0
    finally:
        proto.close()
        forwarder.close()


async def test_cancelled_forward_is_forgotten(forwarder):
    proto, upstream = await RawUpstream.start(lambda d: [])
    try:
        task = asyncio.ensure_future(forwarder.forward(query(), [upstream]))
        await asyncio.sleep(0.05)
        assert forwarder.inflight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert forwarder.inflight == 0
        pool = forwarder.pool(forwarder.host_sockets, upstream)
        assert not pool.busy
    finally:
        proto.close()


class CountingSource(HostSockets):
    """A socket source standing for a container namespace (cnmd's own, in this test)."""

    def __init__(self) -> None:
        self.made: list[socket.socket] = []

    def take(self, family: int, kind: int) -> socket.socket | None:
        sock = super().take(family, kind)
        self.made.append(sock)  # type: ignore[arg-type]
        return sock


async def test_release_closes_a_sandbox_sockets_and_idle_pools_close(forwarder):
    proto, upstream = await RawUpstream.start(lambda d: [good(d)])
    container = CountingSource()
    own = upstream._replace(via_host_netns=False)
    try:
        for _ in range(6):
            assert await forwarder.forward(query(), [own], container) is not None
        assert container.made and forwarder.open_sockets() == len(container.made)
        forwarder.release(container)
        assert forwarder.open_sockets() == 0
        assert all(s.fileno() == -1 for s in container.made)
        forwarder.release(container)  # idempotent
    finally:
        proto.close()

    idle = Forwarder(deadline=1.0, idle=0.1)
    proto, upstream = await RawUpstream.start(lambda d: [good(d)])
    try:
        assert await idle.forward(query(), [upstream]) is not None
        assert idle.open_sockets() == 1
        await asyncio.sleep(0.35)
        assert idle.open_sockets() == 0  # an upstream nobody asks any more is let go
        assert await idle.forward(query(), [upstream]) is not None
    finally:
        proto.close()
        idle.close()


async def test_refused_upstream_fails_every_query_waiting_on_it():
    forwarder = Forwarder(deadline=1.0, stagger=0.5, pool_size=1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOCAL, 0))
        dead = Upstream(IPv4Address(LOCAL), s.getsockname()[1], True)
    proto, upstream = await RawUpstream.start(lambda d: [good(d)])
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        replies = await asyncio.gather(*(forwarder.forward(query(qid=i), [dead, upstream]) for i in range(4)))
        assert all(r is not None for r in replies)
        assert loop.time() - start < 0.25  # not the 0.5 s stagger: the ICMP error moved them on
        again = await forwarder.forward(query(), [dead, upstream])  # the same refused socket
        assert again is not None and loop.time() - start < 0.4
    finally:
        proto.close()
        forwarder.close()


async def test_all_servfail_passes_the_last_one_through(forwarder):
    def failing(data: bytes) -> list[bytes]:
        reply = dns.message.make_response(dns.message.from_wire(data))
        reply.set_rcode(dns.rcode.SERVFAIL)
        return [reply.to_wire()]

    a, up_a = await RawUpstream.start(failing)
    b, up_b = await RawUpstream.start(failing)
    try:
        reply = await forwarder.forward(query(), [up_a, up_b])
        assert reply is not None and dns.message.from_wire(reply).rcode() == dns.rcode.SERVFAIL
        assert len(a.seen) == 1 and len(b.seen) == 1
    finally:
        a.close()
        b.close()


async def test_no_upstream_or_no_question_is_none(forwarder):
    assert await forwarder.forward(query(), []) is None
    proto, upstream = await RawUpstream.start(lambda d: [good(d)])
    try:
        assert await forwarder.forward(b"\x00" * 12 + b"\xc0\x0c\x00\x01\x00\x01", [upstream]) is None
        assert proto.seen == []
    finally:
        proto.close()


# -- silent upstreams (issue 7: a dead upstream, a client that retries on SERVFAIL) ----------


async def test_a_silent_upstream_gets_servfail_at_once_and_is_still_probed():
    forwarder = Forwarder(deadline=0.3)
    proto, upstream = await RawUpstream.start(lambda d: [])  # alive socket, never answers
    try:
        assert await forwarder.forward(query(qid=1), [upstream]) is None  # after the deadline
        forwarder.deadline = 120.0  # from now on only the silence shortcut can answer in time
        for qid in (2, 3):
            assert await asyncio.wait_for(forwarder.forward(query(qid=qid), [upstream]), 10) is None
        assert len(proto.seen) == 3  # each query still went out, as a probe
    finally:
        proto.close()
        forwarder.close()


async def test_a_silent_upstream_that_answers_again_is_used_again():
    forwarder = Forwarder(deadline=0.3)
    answering = False
    proto, upstream = await RawUpstream.start(lambda d: [good(d)] if answering else [])
    try:
        assert await forwarder.forward(query(), [upstream]) is None
        answering = True
        results: list[bytes | None] = []
        forwarder.submit(query(qid=7), [upstream], on_answer=results.append)
        assert results == [None]  # still silent when asked: SERVFAIL at once, probe sent
        for _ in range(200):  # the probe's answer ends the silence
            if await forwarder.forward(query(qid=8), [upstream]) is not None:
                break
            await asyncio.sleep(0.01)
        reply = await forwarder.forward(query(qid=9), [upstream])
        assert reply is not None and reply[:2] == (9).to_bytes(2, "big")
        assert results == [None]  # the probe's own answer was dropped, not handed on twice
    finally:
        proto.close()
        forwarder.close()


async def test_an_upstream_slow_on_one_name_but_answering_others_is_not_silent():
    forwarder = Forwarder(deadline=0.5)
    proto, upstream = await RawUpstream.start(
        lambda d: [] if dns.message.from_wire(d).question[0].name.labels[0] == b"slow" else [good(d)]
    )
    try:
        slow = asyncio.ensure_future(forwarder.forward(query("slow.example"), [upstream]))
        await asyncio.sleep(0.05)
        assert await forwarder.forward(query("fast.example"), [upstream]) is not None
        assert await slow is None  # that one name timed out ...
        assert (
            await forwarder.forward(query("other.example"), [upstream]) is not None
        )  # ... the server is not silent
    finally:
        proto.close()
        forwarder.close()


async def test_one_silent_upstream_among_others_changes_nothing():
    forwarder = Forwarder(deadline=0.3, stagger=0.05)
    quiet, up_quiet = await RawUpstream.start(lambda d: [])
    proto, upstream = await RawUpstream.start(lambda d: [good(d)])
    try:
        assert await forwarder.forward(query(), [up_quiet]) is None  # up_quiet is now silent
        reply = await forwarder.forward(query(qid=5), [up_quiet, upstream])
        assert reply is not None and reply[:2] == (5).to_bytes(2, "big")
    finally:
        quiet.close()
        proto.close()
        forwarder.close()
