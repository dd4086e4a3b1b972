"""IPv6 published ports (Docker 27+), no root: parsing of v6 host addresses, one host port
for the 0.0.0.0 / :: twins of one ``-p``, which bindings the kernel's NAT serves and which
the proxy serves, the proxy carrying [::1] to an IPv4-only container, and how inspect and
``cnm port`` list both families."""

from __future__ import annotations

import asyncio
import socket
from contextlib import AsyncExitStack
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface

import pytest
from portfree import free_block

from cnm.errors import InvalidArgument
from cnm.firewall.fake import FakeFirewall
from cnm.model.container import ContainerConfig, PortBindingRequest
from cnm.model.endpoint import EndpointRecord
from cnm.model.network import OPT_HOST_BINDING, NetworkRecord
from cnm.model.ports import ANY, ANY6, LOOPBACK6, PortMapping, PortRequest, host_ip_order
from cnm.portmap import hostsock
from cnm.portmap.allocator import PortAllocator, PortConflict
from cnm.portmap.proxy import UserlandProxy
from cnm.portmap.requests import parse_host_ip, port_requests

LO = IPv4Address("127.0.0.1")
CIP = IPv4Address("172.17.0.2")
CIP6 = IPv6Address("fd00:1::2")
NET = NetworkRecord(id="n" * 64, name="net", driver="bridge", created="t")


class _Sock:
    def close(self) -> None:
        pass


def fake_allocator(first: int = 40000, last: int = 40009, taken: set | None = None) -> PortAllocator:
    """An allocator that binds nothing; ``taken`` = {(host ip text, port)} another program holds."""

    def opener(proto, ip, port):
        if (str(ip), port) in (taken or set()):
            raise OSError(98, "Address in use")
        return _Sock()

    return PortAllocator((first, last), reserved=(), opener=opener, ipv6=True)


def config(**bindings: list[PortBindingRequest]) -> ContainerConfig:
    return ContainerConfig(
        image="b", port_bindings={k.replace("_", "/"): tuple(v) for k, v in bindings.items()}
    )


# -- parsing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, want",
    [
        ("::1", LOOPBACK6),
        ("[::1]", LOOPBACK6),
        ("::", ANY6),
        ("[2001:db8::1]", IPv6Address("2001:db8::1")),
        ("127.0.0.1", LO),
        ("", None),
    ],
)
def test_host_ip_takes_either_family_with_or_without_brackets(text, want):
    assert parse_host_ip(text) == want


def test_v6_and_v4_bindings_of_one_port_coexist_but_overlapping_v6_ones_do_not():
    both = config(**{"80_tcp": [PortBindingRequest("0.0.0.0", "8080"), PortBindingRequest("::", "8080")]})
    assert [r.host_ip for r in port_requests(both)] == [ANY, ANY6]  # v4 first, as Docker lists
    twice = config(
        **{"80_tcp": [PortBindingRequest("::", "8080")], "81_tcp": [PortBindingRequest("::1", "8080")]}
    )
    with pytest.raises(InvalidArgument, match=r"host port \[::1\]:8080/tcp is published twice"):
        port_requests(twice)
    # an address not given yet binds both families: it overlaps a v6 one too
    unset = config(
        **{"80_tcp": [PortBindingRequest("", "8080")], "81_tcp": [PortBindingRequest("::1", "8080")]}
    )
    with pytest.raises(InvalidArgument, match="published twice"):
        port_requests(unset)
    v4_and_v6 = config(
        **{"80_tcp": [PortBindingRequest("0.0.0.0", "8080")], "81_tcp": [PortBindingRequest("::1", "8080")]}
    )
    assert len(port_requests(v4_and_v6)) == 2


def test_host_ip_order_puts_v4_before_v6():
    ips = [ANY6, LOOPBACK6, LO, ANY, None]
    assert sorted(ips, key=host_ip_order) == [None, ANY, LO, ANY6, LOOPBACK6]


# -- allocation ------------------------------------------------------------------------------------


def test_twins_get_one_ephemeral_port_free_for_both_families():
    a = fake_allocator(taken={("::", 40000)})  # another program holds [::]:40000 only
    held = a.reserve_groups("ep", [[PortRequest("tcp", 80, ANY), PortRequest("tcp", 80, ANY6)]])
    assert [(str(r.mapping.host_ip), r.mapping.host_port) for r in held] == [
        ("0.0.0.0", 40001),
        ("::", 40001),
    ]
    # the families never conflict: [::] and 0.0.0.0 are two bindings; a specific v6
    # address conflicts with [::] of its family only
    assert a.holder("tcp", IPv4Address("10.0.0.1"), 40001) == "ep"
    assert a.holder("tcp", LOOPBACK6, 40001) == "ep"
    a.release("ep")
    a.reserve("v6", [PortRequest("tcp", 80, LOOPBACK6, 40005, 40005)])
    assert a.holder("tcp", ANY6, 40005) == "v6" and a.holder("tcp", ANY, 40005) is None


def test_a_conflict_on_either_family_refuses_the_whole_request_and_holds_nothing():
    a = fake_allocator()
    a.reserve("other", [PortRequest("tcp", 80, LOOPBACK6, 8080, 8080)])
    groups = [
        [PortRequest("udp", 53, ANY), PortRequest("udp", 53, ANY6)],
        [PortRequest("tcp", 80, ANY, 8080, 8080), PortRequest("tcp", 80, ANY6, 8080, 8080)],
    ]
    with pytest.raises(PortConflict, match=r"Bind for \[::\]:8080 failed: port is already allocated"):
        a.reserve_groups("ep", groups)
    assert a.reservations("ep") == [] and a.holder("tcp", ANY, 8080) is None
    assert a.holder("udp", ANY, 40000) is None and a.holder("udp", ANY6, 40000) is None
    # another program holding the v6 side of a fixed port: same, with the kernel's words
    b = fake_allocator(taken={("::", 9090)})
    with pytest.raises(PortConflict, match=r"failed to bind host port for \[::\]:9090:\[fd00:1::2\]:80/tcp"):
        b.reserve_groups(
            "ep", [[PortRequest("tcp", 80, ANY, 9090, 9090), PortRequest("tcp", 80, ANY6, 9090, 9090)]], CIP6
        )
    assert b.holder("tcp", ANY, 9090) is None


def test_real_v6_reservations_are_v6only_and_hold_the_port():
    base = free_block(4)
    a = PortAllocator((base, base + 3), reserved=())
    try:
        [r] = a.reserve("ep", [PortRequest("tcp", 80, LOOPBACK6, base, base)])
        assert r.sock is not None and r.sock.family == socket.AF_INET6
        assert r.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        [u] = a.reserve("ep2", [PortRequest("udp", 53, LOOPBACK6, base, base)])
        assert u.sock is not None and u.sock.getsockopt(socket.IPPROTO_IPV6, hostsock.IPV6_RECVPKTINFO) == 1
        # v4 loopback on the same port is another binding; another program cannot have ::1
        a.reserve("ep3", [PortRequest("tcp", 80, LO, base, base)])
        other = socket.socket(socket.AF_INET6)
        try:
            with pytest.raises(OSError, match="in use"):
                other.bind(("::1", base))
        finally:
            other.close()
    finally:
        a.close()


# -- planning: NAT rules and the proxy --------------------------------------------------------------


def endpoint(address6: bool, ports: tuple[PortMapping, ...] = ()) -> EndpointRecord:
    return EndpointRecord(
        id="e" * 64,
        network_id=NET.id,
        container_id="c" * 64,
        sandbox_id="s" * 64,
        name="web",
        address=IPv4Interface(f"{CIP}/16"),
        address6=IPv6Interface(f"{CIP6}/64") if address6 else None,
        ports=ports,
    )


def test_rules_one_family_each_v6_only_for_a_v6_container_never_for_loopback():
    from cnm.engine.ports import port_rules

    maps = [
        PortMapping("tcp", 80, ANY, 8080),
        PortMapping("tcp", 80, ANY6, 8080),
        PortMapping("tcp", 81, LOOPBACK6, 8081),
        PortMapping("udp", 53, IPv6Address("2001:db8::1"), 5353),
    ]
    dual = [(r.host_ip, r.container_ip, r.host_port) for r in port_rules(NET, endpoint(True), maps)]
    assert dual == [
        (None, CIP, 8080),
        (None, CIP6, 8080),
        (IPv6Address("2001:db8::1"), CIP6, 5353),
    ]
    v4only = [(r.host_ip, r.container_ip) for r in port_rules(NET, endpoint(False), maps)]
    assert v4only == [(None, CIP)]  # the proxy serves the v6 bindings


def test_default_host_ip_twins_and_the_v4_binding_option():
    from cnm.engine.ports import default_host_ip

    local = NetworkRecord(
        id="l" * 64, name="l", driver="bridge", created="t", options={OPT_HOST_BINDING: "127.0.0.1"}
    )
    reqs = [PortRequest("tcp", 80, None, 8080, 8080), PortRequest("tcp", 81, LOOPBACK6)]
    assert [[r.host_ip for r in g] for g in default_host_ip(NET, reqs)] == [[ANY, ANY6], [LOOPBACK6]]
    assert [[r.host_ip for r in g] for g in default_host_ip(local, reqs)] == [[LO], [LOOPBACK6]]


class RecordingProxy:
    def __init__(self) -> None:
        self.added: list[tuple[list[PortMapping], object, object]] = []

    async def add(self, owner, reservations, container_ip, container_ip6=None):
        self.added.append(([r.mapping for r in reservations], container_ip, container_ip6))

    async def remove(self, owner):
        pass

    async def close(self):
        pass


@pytest.mark.parametrize("userland_proxy", [False, True], ids=["kernel", "proxy"])
async def test_publish_proxies_v6_always_and_v4_only_in_proxy_mode(userland_proxy):
    from cnm.engine.ports import Publisher

    fw = FakeFirewall()
    await fw.setup()
    proxy = RecordingProxy()
    pub = Publisher(fake_allocator(), fw, proxy, userland_proxy=userland_proxy)  # type: ignore[arg-type]
    async with AsyncExitStack() as stack:
        ep = await pub.publish(stack, NET, endpoint(True), [PortRequest("tcp", 80, None, 8080, 8080)])
        stack.pop_all()
    assert [(str(m.host_ip), m.host_port) for m in ep.ports] == [("0.0.0.0", 8080), ("::", 8080)]
    [(served, ip4, ip6)] = proxy.added
    want = ["0.0.0.0", "::"] if userland_proxy else ["::"]
    assert [str(m.host_ip) for m in served] == want and (ip4, ip6) == (CIP, CIP6)
    assert {(r.host_ip, r.container_ip) for r in fw.ports[ep.id]} == {(None, CIP), (None, CIP6)}
    # restart: the same bindings are held and served again
    await pub.unpublish(ep)
    proxy.added.clear()
    await pub.restore(ep)
    assert [str(m.host_ip) for m in proxy.added[0][0]] == want


async def test_a_proxy_failure_unwinds_the_ports_rules_and_listeners():
    from cnm.engine.ports import Publisher
    from cnm.errors import KernelError

    class FailingProxy(RecordingProxy):
        removed: list[str] = []

        async def add(self, owner, reservations, container_ip, container_ip6=None):
            raise KernelError("no worker")

        async def remove(self, owner):
            self.removed.append(owner)

    fw = FakeFirewall()
    await fw.setup()
    alloc = fake_allocator()
    proxy = FailingProxy()
    pub = Publisher(alloc, fw, proxy, userland_proxy=False)  # type: ignore[arg-type]
    with pytest.raises(KernelError):
        async with AsyncExitStack() as stack:
            await pub.publish(stack, NET, endpoint(False), [PortRequest("tcp", 80, None, 8080, 8080)])
    assert alloc.reservations("e" * 64) == [] and alloc.holder("tcp", ANY6, 8080) is None
    assert not fw.ports.get("e" * 64) and proxy.removed == ["e" * 64]


async def test_proxy_carries_v6_loopback_to_an_ipv4_only_container():
    """Kernel mode, a v4-only container: [::1]:PORT answers through the proxy (TCP and UDP)."""
    from cnm.engine.ports import Publisher

    async def echo(reader, writer):
        writer.write(b"v4 says " + await reader.read(100))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    cport = server.sockets[0].getsockname()[1]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", cport))
    udp.setblocking(False)
    loop = asyncio.get_running_loop()

    async def udp_echo() -> None:
        data, peer = await loop.sock_recvfrom(udp, 100)
        await loop.sock_sendto(udp, b"udp " + data, peer)

    base = free_block(4)
    fw = FakeFirewall()
    await fw.setup()
    proxy = UserlandProxy(workers=0)
    pub = Publisher(PortAllocator((base, base + 3), reserved=()), fw, proxy, userland_proxy=False)
    ep = EndpointRecord(
        id="e" * 64,
        network_id=NET.id,
        container_id="c",
        sandbox_id="s",
        name="web",
        address=IPv4Interface("127.0.0.1/8"),
    )
    try:
        async with AsyncExitStack() as stack:
            ep = await pub.publish(
                stack, NET, ep, [PortRequest("tcp", cport, LOOPBACK6), PortRequest("udp", cport, LOOPBACK6)]
            )
            stack.pop_all()
        assert fw.ports.get(ep.id, []) == []  # no NAT rule: the kernel cannot DNAT from ::1
        tcp_port = next(m.host_port for m in ep.ports if m.protocol == "tcp")
        reader, writer = await asyncio.open_connection("::1", tcp_port)
        writer.write(b"hi")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(100), 5) == b"v4 says hi"
        writer.close()
        udp_port = next(m.host_port for m in ep.ports if m.protocol == "udp")
        task = asyncio.ensure_future(udp_echo())
        client = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        client.settimeout(5)
        try:
            await loop.run_in_executor(None, client.sendto, b"ping", ("::1", udp_port))
            data, peer = await loop.run_in_executor(None, client.recvfrom, 100)
        finally:
            client.close()
        await task
        assert data == b"udp ping" and peer[:2] == ("::1", udp_port)
    finally:
        await pub.unpublish(ep)
        await pub.close()
        server.close()
        udp.close()


# -- what inspect and cnm port show ------------------------------------------------------------------


def test_cnm_port_lists_both_families_as_docker():
    from cnm.cli.commands.container import port_lines

    ports = {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}, {"HostIp": "::", "HostPort": "8080"}]}
    assert port_lines(ports, None, "web") == ["80/tcp -> 0.0.0.0:8080", "80/tcp -> [::]:8080"]
    assert port_lines(ports, "80", "web") == ["0.0.0.0:8080", "[::]:8080"]
    assert port_lines({"80/tcp": [{"HostIp": "::1", "HostPort": "8081"}]}, None, "web") == [
        "80/tcp -> [::1]:8081"
    ]


def test_published_sorts_v4_before_v6():
    from types import SimpleNamespace

    from cnm.api.schemas_container import published

    maps = (
        PortMapping("tcp", 80, ANY6, 8080),
        PortMapping("tcp", 80, LOOPBACK6, 9),
        PortMapping("tcp", 80, ANY, 8080),
    )
    view = SimpleNamespace(endpoints=[(None, endpoint(True, maps))])
    assert [str(m.host_ip) for m in published(view)] == ["0.0.0.0", "::", "::1"]  # type: ignore[arg-type]
