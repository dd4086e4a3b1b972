"""UserlandProxy on 127.0.0.1 (no root): TCP echo with half-close, UDP flows and their
idle timeout, many concurrent connections, a dead backend, removal, both relay modes
(splice and copy) and both placements (worker thread, caller's loop)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from ipaddress import IPv4Address

import pytest
from portfree import free_block

from cnm.model.ports import PortRequest
from cnm.portmap.allocator import PortAllocator
from cnm.portmap.proxy import UserlandProxy

LO = IPv4Address("127.0.0.1")


@pytest.fixture(
    params=[(1, True), (0, True), (1, False)], ids=["thread-splice", "loop-splice", "thread-copy"]
)
async def setup(request):
    workers, splice = request.param
    base = free_block(10, start=42000)
    alloc = PortAllocator((base, base + 9), reserved=())
    proxy = UserlandProxy(workers=workers, splice=splice, udp_timeout=0.3)
    yield alloc, proxy
    await proxy.close()
    alloc.close()


async def tcp_server(handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def publish(alloc, proxy, owner, proto, container_port):
    res = alloc.reserve(owner, [PortRequest(proto, container_port, LO)])
    await proxy.add(owner, res, LO)
    return res[0].mapping.host_port


async def test_tcp_relays_both_ways_with_half_close(setup):
    alloc, proxy = setup
    seen: list[str] = []

    async def digest(reader, writer):
        # read to EOF (the client's half-close must arrive), then answer and close
        data = await reader.read(-1)
        seen.append("eof")
        writer.write(hashlib.sha256(data).hexdigest().encode() + b"\n" + data[:1000])
        await writer.drain()
        writer.close()

    server, cport = await tcp_server(digest)
    port = await publish(alloc, proxy, "ep", "tcp", cport)
    payload = os.urandom(8 << 20)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(-1), 10)
    assert answer.split(b"\n", 1) == [hashlib.sha256(payload).hexdigest().encode(), payload[:1000]]
    assert seen == ["eof"]
    writer.close()
    server.close()


async def test_server_half_close_reaches_the_client_and_client_can_still_send(setup):
    alloc, proxy = setup
    got = asyncio.get_running_loop().create_future()

    async def greet_then_listen(reader, writer):
        writer.write(b"hello")
        writer.write_eof()  # server is done talking, still reading
        got.set_result(await reader.read(-1))
        writer.close()

    server, cport = await tcp_server(greet_then_listen)
    port = await publish(alloc, proxy, "ep", "tcp", cport)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(-1), 5) == b"hello"
    writer.write(b"still here")
    writer.write_eof()
    assert await asyncio.wait_for(got, 5) == b"still here"
    writer.close()
    server.close()


async def test_many_concurrent_connections(setup):
    alloc, proxy = setup

    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server, cport = await tcp_server(echo)
    port = await publish(alloc, proxy, "ep", "tcp", cport)

    async def one(i: int) -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        blob = (b"%d-" % i) * 5000
        writer.write(blob)
        writer.write_eof()
        back = await reader.read(-1)
        writer.close()
        return back == blob

    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(200))), 30)
    assert all(results)
    server.close()


async def test_dead_backend_closes_only_that_connection(setup):
    alloc, proxy = setup
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens there: connection refused
    port = await publish(alloc, proxy, "dead", "tcp", dead_port)

    async def attempt() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()

    for _ in range(3):
        try:
            assert await attempt() == b""
        except ConnectionResetError:
            pass  # the proxy resets the client (maybe before its connect returned)

    # the proxy keeps serving: the same listener again, and another mapping
    async def hi(reader, writer):
        writer.write(b"hi")
        writer.close()

    server, cport = await tcp_server(hi)
    port2 = await publish(alloc, proxy, "live", "tcp", cport)
    reader, writer = await asyncio.open_connection("127.0.0.1", port2)
    assert await asyncio.wait_for(reader.read(), 5) == b"hi"
    writer.close()
    server.close()


async def test_remove_closes_connections_and_refilters_the_port(setup):
    alloc, proxy = setup
    hold = asyncio.Event()

    async def idle(reader, writer):
        await hold.wait()
        writer.close()

    server, cport = await tcp_server(idle)
    port = await publish(alloc, proxy, "ep", "tcp", cport)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(0.1)
    assert proxy.stats()["connections"] == 1
    await proxy.remove("ep")
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        pass
    writer.close()
    # the reservation still holds the port, and it no longer answers
    c = socket.socket()
    c.settimeout(0.3)
    with pytest.raises(OSError):
        c.connect(("127.0.0.1", port))
    c.close()
    await proxy.remove("ep")  # idempotent
    hold.set()
    server.close()


class _UdpEcho(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.peers: set[tuple[str, int]] = set()

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.peers.add(addr)
        self.transport.sendto(data.upper(), addr)


async def test_udp_flows_per_client_and_idle_timeout(setup):
    alloc, proxy = setup
    loop = asyncio.get_running_loop()
    transport, echo = await loop.create_datagram_endpoint(_UdpEcho, local_addr=("127.0.0.1", 0))
    cport = transport.get_extra_info("sockname")[1]
    port = await publish(alloc, proxy, "ep", "udp", cport)
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for i, c in enumerate(clients):
            c.settimeout(5)
            for _ in range(3):
                c.sendto(b"ping %d" % i, ("127.0.0.1", port))
                data, src = await loop.run_in_executor(None, c.recvfrom, 65535)
                assert data == b"PING %d" % i and src == ("127.0.0.1", port)
        assert len(echo.peers) == 3  # one upstream flow per client
        big = os.urandom(60000)
        clients[0].sendto(big, ("127.0.0.1", port))
        data, _ = await loop.run_in_executor(None, clients[0].recvfrom, 65535)
        assert data == big.upper()
        assert proxy.stats()["flows"] == 3
        await asyncio.sleep(0.8)  # udp_timeout=0.3 in this fixture
        assert proxy.stats()["flows"] == 0
        clients[0].sendto(b"again", ("127.0.0.1", port))
        data, _ = await loop.run_in_executor(None, clients[0].recvfrom, 65535)
        assert data == b"AGAIN" and len(echo.peers) == 4  # a fresh flow after the timeout
    finally:
        for c in clients:
            c.close()
        transport.close()


async def test_tcp_and_udp_of_one_owner_and_readd_replaces(setup):
    alloc, proxy = setup

    async def hi(reader, writer):
        writer.write(b"hi")
        writer.close()

    server, cport = await tcp_server(hi)
    res = alloc.reserve("ep", [PortRequest("tcp", cport, LO), PortRequest("udp", cport, LO)])
    await proxy.add("ep", res, LO)
    await proxy.add("ep", res, LO)  # again: replaces, does not double-serve
    assert proxy.stats()["owners"] == 1
    reader, writer = await asyncio.open_connection("127.0.0.1", res[0].mapping.host_port)
    assert await asyncio.wait_for(reader.read(), 5) == b"hi"
    writer.close()
    await proxy.remove("ep")
    alloc.release("ep")
    server.close()
