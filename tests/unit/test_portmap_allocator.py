"""PortAllocator: real bound sockets on 127.0.0.1 high ports (no root), conflicts with
cnm's own reservations and with another program's socket, round robin, all or nothing,
restore after a restart."""

from __future__ import annotations

import errno
import socket
import time
from ipaddress import IPv4Address

import pytest
from portfree import free_block

from cnm.errors import InvalidArgument
from cnm.model.ports import ANY, PortMapping, PortRequest
from cnm.portmap import hostsock
from cnm.portmap.allocator import PortAllocator, PortConflict
from cnm.portmap.ranges import parse_reserved

LO = IPv4Address("127.0.0.1")
LO2 = IPv4Address("127.0.0.2")
CIP = IPv4Address("172.17.0.2")


@pytest.fixture
def base():
    return free_block(20)


@pytest.fixture
def alloc(base):
    a = PortAllocator((base, base + 9), reserved=())
    yield a
    a.close()


def req(port: int, proto: str = "tcp", ip: IPv4Address = LO, cport: int = 80) -> PortRequest:
    return PortRequest(proto, cport, ip, port, port)


def other_program_binds(port: int, ip: str = "127.0.0.1", kind=socket.SOCK_STREAM) -> socket.socket | None:
    s = socket.socket(socket.AF_INET, kind)
    if kind == socket.SOCK_STREAM:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((ip, port))
        if kind == socket.SOCK_STREAM:
            s.listen()
    except OSError as exc:
        s.close()
        assert exc.errno == errno.EADDRINUSE
        return None
    return s


def test_reserved_port_holds_a_real_socket_no_other_program_can_take(alloc, base):
    (r,) = alloc.reserve("ep1", [req(base)])
    assert r.mapping == PortMapping("tcp", 80, LO, base)
    assert r.sock is not None and r.sock.getsockname() == ("127.0.0.1", base)
    assert other_program_binds(base) is None  # even with SO_REUSEADDR
    assert other_program_binds(base, "0.0.0.0") is None
    (u,) = alloc.reserve("ep1", [req(base, "udp")])
    assert other_program_binds(base, kind=socket.SOCK_DGRAM) is None
    assert u.sock.type == socket.SOCK_DGRAM
    alloc.release("ep1")
    s = other_program_binds(base)
    assert s is not None
    s.close()


def test_the_drop_filter_keeps_the_listener_from_accepting(alloc, base):
    alloc.reserve("ep1", [req(base)])
    c = socket.socket()
    c.settimeout(0.3)
    with pytest.raises(OSError):  # the SYN is dropped: no handshake, no queued connection
        c.connect(("127.0.0.1", base))
    c.close()


def test_cnm_conflict_has_dockers_message_and_leaves_nothing(alloc, base):
    alloc.reserve("ep1", [req(base)])
    with pytest.raises(
        PortConflict, match=rf"^Bind for 127\.0\.0\.1:{base} failed: port is already allocated$"
    ):
        alloc.reserve("ep2", [req(base + 1), req(base)])
    assert alloc.reservations("ep2") == []
    assert alloc.holder("tcp", LO, base + 1) is None
    s = other_program_binds(base + 1)  # rolled back: the socket is closed
    assert s is not None
    s.close()


def test_wildcard_and_specific_addresses_conflict_both_ways(alloc, base):
    alloc.reserve("a", [req(base, ip=ANY)])
    with pytest.raises(PortConflict, match=f"Bind for 127.0.0.1:{base} failed"):
        alloc.reserve("b", [req(base, ip=LO)])
    alloc.reserve("c", [req(base + 1, ip=LO)])
    with pytest.raises(PortConflict, match=f"Bind for 0.0.0.0:{base + 1} failed"):
        alloc.reserve("d", [req(base + 1, ip=ANY)])
    # another specific address, and another protocol, are fine
    alloc.reserve("e", [req(base + 1, ip=LO2), req(base + 1, "udp", ip=ANY)])
    assert alloc.holder("tcp", LO2, base + 1) == "e"


def test_another_programs_socket_is_address_already_in_use(alloc, base):
    s = other_program_binds(base + 3)
    try:
        with pytest.raises(PortConflict) as err:
            alloc.reserve("ep", [req(base + 2), req(base + 3)], container_ip=CIP)
        assert str(err.value) == (
            f"failed to bind host port for 127.0.0.1:{base + 3}:172.17.0.2:80/tcp: address already in use"
        )
        assert alloc.reservations("ep") == [] and alloc.holder("tcp", LO, base + 2) is None
    finally:
        s.close()


def test_an_address_the_host_does_not_have_is_bad_input_naming_it(alloc, base):
    # issue 7: HostIp 8.8.8.8 was a 500; it is the user's mistake, a 400 naming the address
    with pytest.raises(
        InvalidArgument, match="cannot assign requested address: 192.0.2.77 is not an address"
    ):
        alloc.reserve("ep", [req(base, ip=IPv4Address("192.0.2.77"))])
    assert alloc.reservations("ep") == []


def test_ephemeral_round_robin_does_not_reuse_a_just_released_port(alloc, base):
    first = [r.mapping.host_port for r in alloc.reserve("a", [PortRequest("tcp", 80, LO)])]
    assert first == [base]
    alloc.release("a")
    again = alloc.reserve("b", [PortRequest("tcp", 80, LO), PortRequest("tcp", 81, LO)])
    assert [r.mapping.host_port for r in again] == [base + 1, base + 2]
    alloc.release("b")
    # wraps around the range, skipping what is held
    held = alloc.reserve("c", [req(base + p) for p in (3, 4, 5, 6, 7, 8, 9)])
    assert len(held) == 7
    wrapped = alloc.reserve("d", [PortRequest("tcp", 80, LO)])
    assert wrapped[0].mapping.host_port == base


def test_range_request_skips_other_programs_and_fails_when_full(alloc, base):
    s = other_program_binds(base + 10)
    try:
        got = alloc.reserve("a", [PortRequest("tcp", 80, LO, base + 10, base + 11)])
        assert got[0].mapping.host_port == base + 11
        with pytest.raises(
            PortConflict, match=rf"127\.0\.0\.1:{base + 10}-{base + 11} failed: all ports are allocated"
        ):
            alloc.reserve("b", [PortRequest("tcp", 80, LO, base + 10, base + 11)])
    finally:
        s.close()


def test_ephemeral_picks_skip_reserved_ports(base):
    a = PortAllocator((base, base + 3), reserved=parse_reserved(f"{base},{base + 1}-{base + 2}\n"))
    try:
        assert a.reserve("x", [PortRequest("udp", 53, LO)])[0].mapping.host_port == base + 3
        # an explicit request for a reserved port is the user's choice
        assert a.reserve("x", [req(base, "udp")])[0].mapping.host_port == base
    finally:
        a.close()


def test_restore_reholds_exactly_the_mappings_and_reports_failures(alloc, base):
    blocker = other_program_binds(base + 5)
    try:
        mappings = [
            PortMapping("tcp", 80, LO, base + 4),
            PortMapping("tcp", 81, LO, base + 5),
            PortMapping("udp", 53, LO, base + 4),
        ]
        held, failed = alloc.restore("ep", mappings)
        assert [r.mapping for r in held] == [mappings[0], mappings[2]]
        assert [m for m, _ in failed] == [mappings[1]]
        assert "address already in use" in str(failed[0][1])
        assert [r.mapping for r in alloc.reservations("ep")] == [mappings[0], mappings[2]]
    finally:
        blocker.close()


def test_release_is_idempotent_and_close_releases_all(alloc, base):
    alloc.reserve("a", [req(base)])
    alloc.release("a")
    alloc.release("a")
    alloc.release("never")
    alloc.reserve("b", [req(base + 1)])
    alloc.close()
    assert alloc.owners() == []


def test_sctp_without_kernel_support_is_held_by_bookkeeping(base):
    def opener(proto, ip, port):
        assert proto == "sctp"
        return None  # hostsock.open_reserved's answer when the kernel has no SCTP

    a = PortAllocator((base, base + 9), reserved=(), opener=opener)
    (r,) = a.reserve("x", [req(base, "sctp")])
    assert r.sock is None
    with pytest.raises(PortConflict, match="already allocated"):
        a.reserve("y", [req(base, "sctp")])
    a.close()


def test_open_reserved_sets_up_sockets_like_moby(base):
    t = hostsock.open_reserved("tcp", LO, base)
    u = hostsock.open_reserved("udp", LO, base)
    try:
        assert t.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert t.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        assert not u.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert u.getsockopt(socket.IPPROTO_IP, hostsock.IP_PKTINFO)
        assert not t.getblocking() and not u.getblocking()
    finally:
        t.close()
        u.close()


def test_five_hundred_ports_reserve_fast():
    base = free_block(500)
    a = PortAllocator((base, base + 499), reserved=())
    try:
        t0 = time.perf_counter()
        got = a.reserve("big", [req(base + i, cport=1000 + i) for i in range(500)])
        t1 = time.perf_counter()
        a.release("big")
        t2 = time.perf_counter()
        eph = a.reserve("eph", [PortRequest("udp", 1000 + i, LO) for i in range(500)])
        t3 = time.perf_counter()
        assert len(got) == 500 and len({r.mapping.host_port for r in eph}) == 500
        print(
            f"\n500 TCP ports reserved in {1000 * (t1 - t0):.1f} ms, released in {1000 * (t2 - t1):.1f} ms; "
            f"500 ephemeral UDP ports in {1000 * (t3 - t2):.1f} ms"
        )
    finally:
        a.close()
