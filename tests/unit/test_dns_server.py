"""DnsServer over real sockets on 127.0.0.1 (``add_listener``; no root, no namespace).

Upstreams are fake DNS servers run by the test on 127.0.0.1; no packet leaves the host.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from ipaddress import IPv4Address

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from cnm.dns import server as server_module
from cnm.dns.forwarder import Forwarder
from cnm.dns.records import NameTable, Upstream
from cnm.dns.server import DnsServer

LOCAL = "127.0.0.1"
Handler = Callable[[dns.message.Message, bool], "dns.message.Message | None"]


class FakeUpstream:
    """A DNS server on 127.0.0.1 (UDP and TCP on one port) answering with ``handler``;
    None from the handler means silence.  Records what it was asked."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.asked: list[tuple[str, bool, int]] = []  # (qname, tcp, id)
        self.port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    def _answer(self, data: bytes, tcp: bool) -> bytes | None:
        query = dns.message.from_wire(data)
        self.asked.append((query.question[0].name.to_text(), tcp, query.id))
        reply = self.handler(query, tcp)
        return None if reply is None else reply.to_wire()

    async def start(self) -> FakeUpstream:
        loop = asyncio.get_running_loop()
        outer = self

        class Proto(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                reply = outer._answer(data, False)
                if reply is not None:
                    self.transport.sendto(reply, addr)

        for _ in range(20):  # UDP and TCP on one port: retry when the TCP one is taken
            self._udp, _ = await loop.create_datagram_endpoint(Proto, local_addr=(LOCAL, 0))
            self.port = self._udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, LOCAL, self.port)
                return self
            except OSError:
                self._udp.close()
        raise RuntimeError("no port free for both UDP and TCP")

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                reply = self._answer(await reader.readexactly(size), True)
                if reply is not None:
                    writer.write(len(reply).to_bytes(2, "big") + reply)
                    await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    def upstream(self, via_host_netns: bool = True) -> Upstream:
        return Upstream(IPv4Address(LOCAL), self.port, via_host_netns)

    async def stop(self) -> None:
        if self._udp:
            self._udp.close()
        if self._tcp:
            self._tcp.close()
            await self._tcp.wait_closed()


def answering(address: str, *, rcode: int = dns.rcode.NOERROR, aa: bool = False) -> Handler:
    def handler(query: dns.message.Message, tcp: bool) -> dns.message.Message:
        reply = dns.message.make_response(query)
        reply.set_rcode(rcode)
        if aa:
            reply.flags |= dns.flags.AA
        if rcode == dns.rcode.NOERROR and query.question[0].rdtype == dns.rdatatype.A:
            reply.answer.append(dns.rrset.from_text(query.question[0].name, 300, "IN", "A", address))
        return reply

    return handler


def silent(query: dns.message.Message, tcp: bool) -> None:
    return None


def free_udp_port() -> int:
    """A port nothing listens on (ICMP port unreachable when asked)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOCAL, 0))
        return s.getsockname()[1]


@pytest.fixture
def names() -> NameTable:
    t = NameTable()
    t.set_endpoint("sb-web", "n-back", "back", "web", ("web", "abcdef123456"), IPv4Address("10.1.0.2"))
    t.set_endpoint("sb-api", "n-back", "back", "api", ("api", "pool"), IPv4Address("10.1.0.3"))
    t.set_endpoint("sb-api2", "n-back", "back", "api2", ("api2", "pool"), IPv4Address("10.1.0.4"))
    t.set_endpoint("sb-db", "n-data", "data", "db", ("db",), IPv4Address("10.2.0.2"))
    return t


@pytest.fixture
async def served(names):
    """A DnsServer with listeners for sb-web and sb-db; yields (server, {sandbox: (udp, tcp)})."""
    server = DnsServer(names, Forwarder(deadline=1.0))
    ports = {sb: await server.add_listener(sb, LOCAL) for sb in ("sb-web", "sb-db")}
    yield server, ports
    await server.close()


async def udp(port: int, name: str, rdtype: str = "A", *, timeout: float = 2.0, **kw) -> dns.message.Message:
    return await dns.asyncquery.udp(
        dns.message.make_query(name, rdtype, **kw), LOCAL, port=port, timeout=timeout
    )


async def tcp(port: int, name: str, rdtype: str = "A", **kw) -> dns.message.Message:
    return await dns.asyncquery.tcp(dns.message.make_query(name, rdtype, **kw), LOCAL, port=port, timeout=2.0)


def addresses(reply: dns.message.Message) -> list[str]:
    return [rd.address for rrset in reply.answer for rd in rrset]


# -- local answers -----------------------------------------------------------------------


async def test_a_record_for_a_container_name(served):
    server, ports = served
    reply = await udp(ports["sb-web"][0], "api")
    assert reply.rcode() == dns.rcode.NOERROR
    assert addresses(reply) == ["10.1.0.3"]
    assert reply.answer[0].ttl == 600
    assert reply.flags & dns.flags.RA and not reply.flags & dns.flags.AA
    assert reply.flags & dns.flags.RD  # copied from the query


async def test_short_id_alias_and_network_suffix(served):
    _, ports = served
    port = ports["sb-web"][0]
    assert addresses(await udp(port, "abcdef123456")) == ["10.1.0.2"]
    assert addresses(await udp(port, "API.back.")) == ["10.1.0.3"]


async def test_aaaa_and_mx_for_a_container_name_are_empty_noerror(served):
    _, ports = served
    for rdtype in ("AAAA", "MX"):
        reply = await udp(ports["sb-web"][0], "api", rdtype)
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer == [], rdtype


async def test_ptr_for_a_container_address(served):
    _, ports = served
    reply = await udp(ports["sb-web"][0], "3.0.1.10.in-addr.arpa", "PTR")
    assert [rd.target.to_text() for rd in reply.answer[0]] == ["api.back."]
    assert reply.answer[0].ttl == 600


async def test_alias_on_several_containers_all_answer_in_rotating_order(served):
    _, ports = served
    orders = set()
    for _ in range(20):
        found = addresses(await udp(ports["sb-web"][0], "pool"))
        assert sorted(found) == ["10.1.0.3", "10.1.0.4"]
        orders.add(tuple(found))
    assert len(orders) == 2


async def test_names_are_scoped_to_the_asking_sandbox(served):
    _, ports = served
    # sb-db is not on "back" and has no upstream: not a local name, nowhere to forward
    reply = await udp(ports["sb-db"][0], "api")
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert addresses(await udp(ports["sb-db"][0], "db")) == ["10.2.0.2"]


async def test_a_removed_record_is_gone_for_the_very_next_query(served, names):
    _, ports = served
    assert addresses(await udp(ports["sb-web"][0], "api")) == ["10.1.0.3"]
    names.remove_endpoint("sb-api", "n-back")
    reply = await udp(ports["sb-web"][0], "api")
    assert reply.answer == [] and reply.rcode() == dns.rcode.SERVFAIL  # forwarded: no upstream
    names.set_endpoint("sb-api", "n-back", "back", "api", ("api",), IPv4Address("10.1.0.9"))
    assert addresses(await udp(ports["sb-web"][0], "api")) == ["10.1.0.9"]


async def test_tcp_queries(served):
    _, ports = served
    reply = await tcp(ports["sb-web"][1], "api")
    assert addresses(reply) == ["10.1.0.3"]
    # several queries on one connection
    reader, writer = await asyncio.open_connection(LOCAL, ports["sb-web"][1])
    for name in ("web", "pool", "api"):
        wire = dns.message.make_query(name, "A").to_wire()
        writer.write(len(wire).to_bytes(2, "big") + wire)
    got = []
    for _ in range(3):
        size = int.from_bytes(await reader.readexactly(2), "big")
        got.append(dns.message.from_wire(await reader.readexactly(size)).question[0].name.to_text())
    assert got == ["web.", "pool.", "api."]
    writer.close()


async def test_large_local_answer_is_truncated_over_udp_and_whole_over_tcp(names):
    for i in range(60):
        names.set_endpoint(
            f"sb-many{i}", "n-back", "back", f"m{i}", ("many",), IPv4Address(f"10.1.1.{i + 1}")
        )
    server = DnsServer(names)
    udp_port, tcp_port = await server.add_listener("sb-web", LOCAL)
    try:
        query = dns.message.make_query("many", "A")
        wire = await _raw_udp(udp_port, query.to_wire())
        assert len(wire) <= 512
        reply = dns.message.from_wire(wire)
        assert reply.flags & dns.flags.TC and 0 < len(addresses(reply)) < 60
        assert len(addresses(await udp(udp_port, "many", use_edns=0, payload=4096))) == 60
        assert len(addresses(await tcp(tcp_port, "many"))) == 60
    finally:
        await server.close()


async def _raw_udp(port: int, wire: bytes, timeout: float = 2.0) -> bytes:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.connect((LOCAL, port))
        await loop.sock_sendall(s, wire)
        return await asyncio.wait_for(loop.sock_recv(s, 65535), timeout)


# -- forwarding ---------------------------------------------------------------------------


async def _with_upstreams(names, *upstreams: Upstream, forwarder: Forwarder | None = None, **config):
    names.configure("sb-web", upstreams, **config)
    server = DnsServer(names, forwarder or Forwarder(deadline=1.0))
    ports = await server.add_listener("sb-web", LOCAL)
    return server, ports


async def test_other_names_are_forwarded_with_the_clients_id(names):
    up = await FakeUpstream(answering("192.0.2.10")).start()
    server, (port, _) = await _with_upstreams(names, up.upstream())
    try:
        query = dns.message.make_query("example.org", "A")
        reply = dns.message.from_wire(await _raw_udp(port, query.to_wire()))
        assert reply.id == query.id
        assert addresses(reply) == ["192.0.2.10"]
        assert up.asked[0][:2] == ("example.org.", False)
        # a type the server does not answer for a container name is forwarded too
        await udp(port, "api", "TXT")
        assert up.asked[-1][0] == "api."
    finally:
        await server.close()
        await up.stop()


async def test_nxdomain_passes_through_without_asking_the_next(names):
    first = await FakeUpstream(answering("0.0.0.0", rcode=dns.rcode.NXDOMAIN)).start()
    second = await FakeUpstream(answering("192.0.2.2")).start()
    server, (port, _) = await _with_upstreams(names, first.upstream(), second.upstream())
    try:
        reply = await udp(port, "missing.example")
        assert reply.rcode() == dns.rcode.NXDOMAIN
        assert second.asked == []
    finally:
        await server.close()
        await first.stop()
        await second.stop()


async def test_servfail_tries_the_next_then_passes_through(names):
    first = await FakeUpstream(answering("0.0.0.0", rcode=dns.rcode.SERVFAIL)).start()
    second = await FakeUpstream(answering("192.0.2.2")).start()
    server, (port, _) = await _with_upstreams(names, first.upstream(), second.upstream())
    try:
        assert addresses(await udp(port, "example.org")) == ["192.0.2.2"]
        second.handler = answering("0.0.0.0", rcode=dns.rcode.REFUSED)
        reply = await udp(port, "example.org")
        assert reply.rcode() in (dns.rcode.SERVFAIL, dns.rcode.REFUSED)  # the last one seen
        assert len(first.asked) == 2 and len(second.asked) == 2
    finally:
        await server.close()
        await first.stop()
        await second.stop()


async def test_dead_first_upstream_is_skipped_at_once(names):
    dead = Upstream(IPv4Address(LOCAL), free_udp_port(), True)
    second = await FakeUpstream(answering("192.0.2.2")).start()
    server, (port, _) = await _with_upstreams(names, dead, second.upstream())
    try:
        await udp(port, "warm.example")
        start = time.perf_counter()
        reply = await udp(port, "example.org")
        elapsed = time.perf_counter() - start
        print(f"dead (refusing) first upstream: answered by the second in {elapsed * 1e3:.2f} ms")
        assert addresses(reply) == ["192.0.2.2"]
    finally:
        await server.close()
        await second.stop()


async def test_silent_first_upstream_costs_the_stagger_not_a_timeout(names):
    first = await FakeUpstream(silent).start()
    second = await FakeUpstream(answering("192.0.2.2")).start()
    server, (port, _) = await _with_upstreams(names, first.upstream(), second.upstream())
    try:
        start = time.perf_counter()
        reply = await udp(port, "example.org")
        elapsed = time.perf_counter() - start
        print(f"silent first upstream: answered by the second in {elapsed * 1e3:.2f} ms")
        assert addresses(reply) == ["192.0.2.2"]
        assert [a[0] for a in first.asked] == ["example.org."]
    finally:
        await server.close()
        await first.stop()
        await second.stop()


async def test_no_answer_before_the_deadline_is_servfail(names):
    first = await FakeUpstream(silent).start()
    server, (port, _) = await _with_upstreams(names, first.upstream(), forwarder=Forwarder(deadline=0.3))
    try:
        reply = await udp(port, "example.org")
        assert reply.rcode() == dns.rcode.SERVFAIL
    finally:
        await server.close()
        await first.stop()


async def test_truncated_udp_answer_is_retried_over_tcp(names):
    def handler(query: dns.message.Message, tcp: bool) -> dns.message.Message:
        reply = answering("192.0.2.7")(query, tcp)
        if not tcp:
            reply.answer = []
            reply.flags |= dns.flags.TC
        return reply

    up = await FakeUpstream(handler).start()
    server, (port, tcp_port) = await _with_upstreams(names, up.upstream())
    try:
        reply = await udp(port, "big.example")
        assert addresses(reply) == ["192.0.2.7"] and not reply.flags & dns.flags.TC
        assert [a[1] for a in up.asked] == [False, True]
        assert addresses(await tcp(tcp_port, "big.example")) == ["192.0.2.7"]
    finally:
        await server.close()
        await up.stop()


async def test_forwarded_answer_too_big_for_the_client_is_truncated(names):
    def handler(query: dns.message.Message, tcp: bool) -> dns.message.Message:
        reply = dns.message.make_response(query)
        reply.answer.append(
            dns.rrset.from_text_list(
                query.question[0].name, 60, "IN", "A", [f"192.0.2.{i}" for i in range(1, 80)]
            )
        )
        return reply

    up = await FakeUpstream(handler).start()
    server, (port, _) = await _with_upstreams(names, up.upstream())
    try:
        # the client asks with EDNS 4096 (so does the upstream), our reply fits
        assert len(addresses(await udp(port, "many.example", use_edns=0, payload=4096))) == 79
        wire = await _raw_udp(port, dns.message.make_query("many.example", "A").to_wire())
        assert len(wire) <= 512 and dns.message.from_wire(wire).flags & dns.flags.TC
    finally:
        await server.close()
        await up.stop()


async def test_internal_only_sandbox_does_not_use_host_upstreams(names):
    host = await FakeUpstream(answering("192.0.2.1")).start()
    own = await FakeUpstream(answering("192.0.2.2")).start()
    server, (port, _) = await _with_upstreams(
        names, host.upstream(True), own.upstream(False), internal_only=True
    )
    try:
        assert addresses(await udp(port, "example.org")) == ["192.0.2.2"]
        assert host.asked == []
        names.configure("sb-web", [host.upstream(True)], internal_only=True)
        assert (await udp(port, "example.org")).rcode() == dns.rcode.SERVFAIL
    finally:
        await server.close()
        await host.stop()
        await own.stop()


async def test_user_ndots_keeps_single_labels_local(names):
    up = await FakeUpstream(answering("192.0.2.1")).start()
    server, (port, _) = await _with_upstreams(names, up.upstream(), ndots_set=True)
    try:
        reply = await udp(port, "intranet")
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer == []
        assert addresses(await udp(port, "intranet.example")) == ["192.0.2.1"]
        assert [a[0] for a in up.asked] == ["intranet.example."]
    finally:
        await server.close()
        await up.stop()


# -- lifecycle and hostile clients --------------------------------------------------------


async def test_remove_sandbox_stops_answering_and_is_idempotent(served):
    server, ports = served
    reader, writer = await asyncio.open_connection(LOCAL, ports["sb-web"][1])
    await server.remove_sandbox("sb-web")
    await server.remove_sandbox("sb-web")
    assert server.serving("sb-web") is None
    with pytest.raises(dns.exception.Timeout):
        await udp(ports["sb-web"][0], "api", timeout=0.3)
    assert await asyncio.wait_for(reader.read(), 2.0) == b""  # the open connection was closed
    writer.close()
    assert addresses(await udp(ports["sb-db"][0], "db")) == ["10.2.0.2"]  # others unaffected


async def test_malformed_queries_get_formerr_or_are_dropped(served):
    _, ports = served
    port = ports["sb-web"][0]
    good = dns.message.make_query("api", "A")
    wire = good.to_wire()
    # two questions
    two = bytearray(wire)
    two[5] = 2
    reply = dns.message.from_wire(await _raw_udp(port, bytes(two)))
    assert reply.rcode() == dns.rcode.FORMERR and reply.id == good.id
    # no question
    none = bytearray(wire[:12])
    none[5] = 0
    assert dns.message.from_wire(await _raw_udp(port, bytes(none))).rcode() == dns.rcode.FORMERR
    # a compression pointer pointing at itself
    loop = wire[:12] + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    reply = dns.message.from_wire(await _raw_udp(port, loop))
    assert reply.rcode() == dns.rcode.FORMERR and reply.id == good.id
    # a NOTIFY
    notify = bytearray(wire)
    notify[2] = (notify[2] & 0x87) | (4 << 3)
    assert dns.message.from_wire(await _raw_udp(port, bytes(notify))).rcode() == dns.rcode.NOTIMP
    # too short, or a response: dropped
    for junk in (b"\x01\x02\x03", bytes([wire[0], wire[1], wire[2] | 0x80]) + wire[3:]):
        with pytest.raises(TimeoutError):
            await _raw_udp(port, junk, timeout=0.2)
    # and the listener still answers
    assert addresses(await udp(port, "api")) == ["10.1.0.3"]


async def test_slow_and_idle_tcp_clients_do_not_block_others(served, monkeypatch):
    monkeypatch.setattr(server_module, "TCP_IDLE", 0.3)
    monkeypatch.setattr(server_module, "TCP_READ", 0.3)
    _, ports = served
    tcp_port = ports["sb-web"][1]
    # one sends half a length prefix, one a length and half a message, one nothing
    clients = [await asyncio.open_connection(LOCAL, tcp_port) for _ in range(3)]
    clients[0][1].write(b"\x00")
    clients[1][1].write(b"\x00\x40" + b"\x00" * 20)
    assert addresses(await tcp(tcp_port, "api")) == ["10.1.0.3"]
    for reader, writer in clients:  # each is cut off by the server
        assert await asyncio.wait_for(reader.read(), 2.0) == b""
        writer.close()
    # a too-short length prefix ends the connection at once
    reader, writer = await asyncio.open_connection(LOCAL, tcp_port)
    writer.write(b"\x00\x03abc")
    assert await asyncio.wait_for(reader.read(), 2.0) == b""
    writer.close()


async def test_too_many_tcp_connections_are_refused_not_queued(served, monkeypatch):
    monkeypatch.setattr(server_module, "TCP_MAX_CONNECTIONS", 2)
    _, ports = served
    tcp_port = ports["sb-web"][1]
    held = [await asyncio.open_connection(LOCAL, tcp_port) for _ in range(2)]
    await asyncio.sleep(0.05)
    reader, writer = await asyncio.open_connection(LOCAL, tcp_port)
    assert await asyncio.wait_for(reader.read(), 2.0) == b""
    writer.close()
    for _, w in held:
        w.close()
    await asyncio.sleep(0.05)
    assert addresses(await tcp(tcp_port, "api")) == ["10.1.0.3"]


async def test_add_listener_twice_is_a_conflict(served):
    from cnm.errors import Conflict

    server, _ = served
    with pytest.raises(Conflict):
        await server.add_listener("sb-web", LOCAL)


async def test_cached_answers_carry_each_querys_id_and_follow_changes(served, names):
    _, ports = served
    port = ports["sb-web"][0]
    for qid in (1, 2, 0xBEEF):
        query = dns.message.make_query("api", "A")
        query.id = qid
        reply = dns.message.from_wire(await _raw_udp(port, query.to_wire()))
        assert reply.id == qid and addresses(reply) == ["10.1.0.3"]
    names.set_endpoint("sb-api", "n-back", "back", "api", ("api", "pool"), IPv4Address("10.1.0.77"))
    assert addresses(await udp(port, "api")) == ["10.1.0.77"]
    # several records are never served from the cache: they stay shuffled
    orders = {tuple(addresses(await udp(port, "pool"))) for _ in range(20)}
    assert len(orders) == 2


async def test_a_burst_of_datagrams_is_answered_whole_and_tcp_clients_end_with_their_listener(served):
    """More queries than one wakeup reads (``_UDP_BATCH``) are all answered, each with its
    own id; removing the sandbox ends its open TCP connections at once."""
    server, ports = served
    udp_port, tcp_port = ports["sb-web"]
    count = 3 * server_module._UDP_BATCH
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.setblocking(False)
        s.connect((LOCAL, udp_port))
        for qid in range(count):
            query = dns.message.make_query("api", "A")
            query.id = qid
            s.send(query.to_wire())  # all sent before the server reads any
        seen = set()
        while len(seen) < count:
            reply = dns.message.from_wire(await asyncio.wait_for(loop.sock_recv(s, 65535), 2.0))
            assert addresses(reply) == ["10.1.0.3"]
            seen.add(reply.id)
    assert seen == set(range(count))
    reader, writer = await asyncio.open_connection(LOCAL, tcp_port)
    assert addresses(await tcp(tcp_port, "api")) == ["10.1.0.3"]
    await server.remove_sandbox("sb-web")
    assert await asyncio.wait_for(reader.read(), 2.0) == b""  # closed by the server
    writer.close()
    assert server.serving("sb-web") is None
