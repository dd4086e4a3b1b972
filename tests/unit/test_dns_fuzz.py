"""Hostile input never crashes the DNS server nor stops it answering others.

The server runs on its own event loop in a thread; hypothesis throws random bytes,
mutated and truncated queries and compression loops at its UDP and TCP listeners, and
after every example a valid query must still get its answer.  No upstream is configured,
so nothing is ever forwarded off the host.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterator
from ipaddress import IPv4Address

import dns.message
import dns.rcode
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnm.dns import answer
from cnm.dns.records import NameTable
from cnm.dns.server import DnsServer

LOCAL = "127.0.0.1"
VALID = dns.message.make_query("api", "A").to_wire()


class Background:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def ports() -> Iterator[tuple[int, int]]:
    names = NameTable()
    names.set_endpoint("sb", "n", "net", "api", ("api",), IPv4Address("10.1.0.3"))
    bg = Background()
    server = DnsServer(names)
    ports = bg.run(server.add_listener("sb", LOCAL))
    logging.getLogger("cnm.dns").setLevel(logging.CRITICAL)  # expected noise
    yield ports
    bg.run(server.close())
    bg.stop()


def ask_udp(port: int, wire: bytes, timeout: float = 2.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((LOCAL, port))
        s.send(wire)
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def assert_still_answers(udp_port: int, tcp_port: int) -> None:
    reply = dns.message.from_wire(ask_udp(udp_port, VALID) or b"")
    assert [rd.address for rd in reply.answer[0]] == ["10.1.0.3"]
    with socket.create_connection((LOCAL, tcp_port), timeout=2) as s:
        s.sendall(len(VALID).to_bytes(2, "big") + VALID)
        size = int.from_bytes(_recv_exactly(s, 2), "big")
        reply = dns.message.from_wire(_recv_exactly(s, size))
    assert [rd.address for rd in reply.answer[0]] == ["10.1.0.3"]


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, "connection closed"
        buf += chunk
    return buf


def _flip(data: bytes, positions: list[int], values: list[int]) -> bytes:
    out = bytearray(data)
    for pos, val in zip(positions, values, strict=False):
        out[pos % len(out)] = val
    return bytes(out)


header_and_pointer_loops = st.builds(
    lambda head, qd, ptr: head + qd.to_bytes(2, "big") + b"\x00\x00" * 3 + ptr,
    st.binary(min_size=4, max_size=4),
    st.integers(0, 65535),
    st.sampled_from([b"\xc0\x0c", b"\x01a\xc0\x0c", b"\xc0\x0e\xc0\x0c", b"\x3fabc", b"\xc0\xff"]),
)
mutated = st.builds(
    _flip,
    st.just(VALID),
    st.lists(st.integers(0, 1000), min_size=1, max_size=6),
    st.lists(st.integers(0, 255), min_size=1, max_size=6),
)
truncated = st.integers(0, len(VALID) - 1).map(lambda n: VALID[:n])
packets = st.one_of(st.binary(max_size=1500), mutated, truncated, header_and_pointer_loops)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(packet=packets)
def test_fuzz_respond_never_raises(packet: bytes) -> None:
    names = NameTable()
    names.set_endpoint("sb", "n", "net", "api", ("api",), IPv4Address("10.1.0.3"))
    for tcp in (False, True):
        result = answer.respond(names, "sb", packet, tcp=tcp)
        assert result is None or isinstance(result, (bytes, answer.Forward))
        if isinstance(result, bytes):
            reply = dns.message.from_wire(result)  # what we send is always well-formed
            assert reply.id == int.from_bytes(packet[:2], "big")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(burst=st.lists(packets, min_size=1, max_size=8))
def test_fuzz_udp_listener_keeps_answering(ports: tuple[int, int], burst: list[bytes]) -> None:
    udp_port, tcp_port = ports
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((LOCAL, udp_port))
        for packet in burst:
            s.send(packet)
    assert_still_answers(udp_port, tcp_port)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(burst=st.lists(packets, min_size=1, max_size=4), framed=st.booleans())
def test_fuzz_tcp_listener_keeps_answering(ports: tuple[int, int], burst: list[bytes], framed: bool) -> None:
    udp_port, tcp_port = ports
    with socket.create_connection((LOCAL, tcp_port), timeout=2) as s:
        try:
            for packet in burst:
                s.sendall(len(packet).to_bytes(2, "big") + packet if framed else packet)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may hang up on garbage: that is its right
    assert_still_answers(udp_port, tcp_port)


def test_oversized_and_response_packets(ports: tuple[int, int]) -> None:
    udp_port, tcp_port = ports
    assert ask_udp(udp_port, VALID + b"\x00" * 60000, timeout=1) is not None  # trailing junk: FORMERR
    reply = dns.message.from_wire(ask_udp(udp_port, VALID + b"\x00" * 60000) or b"")
    assert reply.rcode() == dns.rcode.FORMERR
    response = dns.message.make_response(dns.message.from_wire(VALID)).to_wire()
    assert ask_udp(udp_port, response, timeout=0.3) is None  # never answer a response
    # a 64 KiB framed message of junk over TCP
    with socket.create_connection((LOCAL, tcp_port), timeout=2) as s:
        s.sendall(b"\xff\xff" + b"\x00\x01" + b"\x01" * 65533)
        size = int.from_bytes(_recv_exactly(s, 2), "big")
        assert dns.message.from_wire(_recv_exactly(s, size)).rcode() == dns.rcode.FORMERR
    assert_still_answers(udp_port, tcp_port)
