"""IPv6 names (issue 12): AAAA and ip6.arpa PTR answers on the wire, /etc/hosts and
resolv.conf as Docker 27+ writes them, ``host-gateway`` for both families, forwarding to
an IPv6 upstream, and ``cnmd --host-gateway-ip``.

The records are built here (no IPAM, no kernel): what the engine gives the name table
and the files for an endpoint with an IPv6 address.
"""

from __future__ import annotations

import asyncio
import socket
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename
import dns.rrset
import pytest

from cnm.daemon.config import parse_args
from cnm.dns import answer, files
from cnm.dns.forwarder import Forwarder, sockaddr
from cnm.dns.records import NameTable, Upstream
from cnm.engine import naming as naming_module
from cnm.engine.naming import Naming
from cnm.engine.state import State
from cnm.errors import InvalidArgument
from cnm.model.container import RUNNING, Container, ContainerConfig, ContainerState
from cnm.model.endpoint import EndpointRecord, EndpointRequest, SandboxRecord
from cnm.model.network import NetworkRecord
from cnm.model.network_mode import NetworkMode
from cnm.store.memory import MemoryStore

WEB4, WEB6 = IPv4Address("172.20.0.2"), IPv6Address("2001:db8:1::2")
API4 = IPv4Address("172.20.0.3")
DB6 = IPv6Address("2001:db8:1::4")
UPSTREAM = Upstream(IPv4Address("192.0.2.53"), 53, True)


def table() -> NameTable:
    """front: web (v4+v6, alias www), api (v4 only), db (v6 only); api links web as "w"."""
    names = NameTable()
    for sandbox in ("sb-web", "sb-api", "sb-db"):
        names.configure(sandbox, [UPSTREAM])
    names.set_endpoint("sb-web", "n1", "front", "web", ("web", "www"), WEB4, address6=WEB6)
    names.set_endpoint("sb-api", "n1", "front", "api", ("api",), API4, links={"w": "web"})
    names.set_endpoint("sb-db", "n1", "front", "db", ("db",), None, address6=DB6)
    return names


def ask(names: NameTable, sandbox: str, qname: str, qtype: str, *, tcp: bool = False) -> dns.message.Message:
    reply = answer.respond(names, sandbox, dns.message.make_query(qname, qtype).to_wire(), tcp=tcp)
    assert isinstance(reply, bytes), f"{qname} {qtype} was not answered locally: {reply!r}"
    return dns.message.from_wire(reply)


def records(reply: dns.message.Message) -> list[str]:
    return sorted(rdata.to_text() for rrset in reply.answer for rdata in rrset)


# -- the embedded DNS server's answers ------------------------------------------------------


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_aaaa_answers_a_container_v6_address_by_name_alias_and_link(tcp: bool) -> None:
    names = table()
    for qname in ("web", "WWW.", "web.front", "w"):  # name, alias, name.network, --link alias
        reply = ask(names, "sb-api", qname, "AAAA", tcp=tcp)
        assert reply.rcode() == dns.rcode.NOERROR and records(reply) == [str(WEB6)], qname
        assert reply.answer[0].ttl == answer.TTL
        assert records(ask(names, "sb-api", qname, "A", tcp=tcp)) == [str(WEB4)]
    assert records(ask(names, "sb-web", "db", "AAAA", tcp=tcp)) == [str(DB6)]


def test_a_name_with_one_family_gets_an_empty_noerror_for_the_other() -> None:
    names = table()
    for sandbox, qname, qtype in (("sb-web", "api", "AAAA"), ("sb-web", "db", "A")):
        reply = ask(names, sandbox, qname, qtype)  # answered here, not forwarded
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer == [], (qname, qtype)
    # an unknown name is still forwarded, whatever the type
    query = dns.message.make_query("example.org", "AAAA").to_wire()
    assert isinstance(answer.respond(names, "sb-web", query, tcp=False), answer.Forward)


def test_aaaa_answers_are_cached_until_the_names_change() -> None:
    names, cache = table(), answer.AnswerCache()
    query = dns.message.make_query("web", "AAAA").to_wire()
    first = answer.respond(names, "sb-api", query, tcp=False, cache=cache)
    assert answer.respond(names, "sb-api", query, tcp=False, cache=cache) == first
    names.set_endpoint("sb-web", "n1", "front", "web", ("web",), WEB4, address6=IPv6Address("2001:db8:1::9"))
    reply = answer.respond(names, "sb-api", query, tcp=False, cache=cache)
    assert isinstance(reply, bytes) and records(dns.message.from_wire(reply)) == ["2001:db8:1::9"]


def test_ip6_arpa_ptr_answers_container_dot_network() -> None:
    names = table()
    for address, target in ((WEB6, "web.front."), (DB6, "db.front."), (WEB4, "web.front.")):
        reply = ask(names, "sb-api", dns.reversename.from_address(str(address)).to_text(), "PTR")
        assert records(reply) == [target], address
        assert reply.answer[0].rdtype == dns.rdatatype.PTR
    # an address on no network of the asking sandbox, or a partial ip6.arpa name: forwarded
    other = dns.reversename.from_address("2001:db8:9::1").to_text()
    for qname in (other, "1.0.0.2.ip6.arpa."):
        query = dns.message.make_query(qname, "PTR").to_wire()
        assert isinstance(answer.respond(names, "sb-api", query, tcp=False), answer.Forward), qname


def test_v6_records_leave_with_their_endpoint() -> None:
    names = table()
    names.remove_endpoint("sb-web", "n1")
    assert names.lookup_aaaa("sb-api", "web") is None
    assert names.lookup_ptr("sb-api", WEB6) is None


# -- what the engine feeds the table ---------------------------------------------------------


class Runtime:
    def __init__(self, root: Path) -> None:
        self.root = root

    def container_dir(self, container_id: str) -> str:
        path = self.root / container_id
        path.mkdir(exist_ok=True)
        return str(path)


FRONT = NetworkRecord(
    id="n" * 64,
    name="front",
    driver="bridge",
    created="",
    enable_ipv6=True,
    subnet=IPv4Network("172.20.0.0/16"),
    gateway=IPv4Address("172.20.0.1"),
    subnet6=IPv6Network("2001:db8:1::/64"),
    gateway6=IPv6Address("2001:db8:1::1"),
)
PLAIN = NetworkRecord(
    id="p" * 64,
    name="plain",
    driver="bridge",
    created="",
    subnet=IPv4Network("172.21.0.0/16"),
    gateway=IPv4Address("172.21.0.1"),
)
BRIDGE = NetworkRecord(
    id="b" * 64,
    name="bridge",
    driver="bridge",
    created="",
    subnet=IPv4Network("172.17.0.0/16"),
    gateway=IPv4Address("172.17.0.1"),
)


def endpoint(network: NetworkRecord, container: Container, v4: str | None, v6: str | None) -> EndpointRecord:
    return EndpointRecord(
        id=container.id[:8] + network.id[:8],
        network_id=network.id,
        container_id=container.id,
        sandbox_id="sb-" + container.name,
        name=container.name,
        address=IPv4Interface(v4) if v4 else None,
        gateway=network.gateway,
        address6=IPv6Interface(v6) if v6 else None,
        gateway6=network.gateway6 if v6 else None,
        default_route=True,
    )


def world(tmp_path: Path, *networks: NetworkRecord, **kwargs: object) -> tuple[Naming, State, NameTable]:
    state = State(MemoryStore())
    for network in (BRIDGE, *networks):
        state.networks[network.id] = network
    resolv = tmp_path / "host-resolv.conf"
    resolv.write_text("nameserver 2001:db8:53::53\nnameserver 192.0.2.53\nnameserver ::1\n")
    names = NameTable()
    naming = Naming(state, Runtime(tmp_path), names, None, str(resolv), **kwargs)  # type: ignore[arg-type]
    return naming, state, names


def container(name: str, mode: str = "front", **config: object) -> Container:
    cfg = ContainerConfig(image="busybox", network_mode=NetworkMode.parse(mode), **config)  # type: ignore[arg-type]
    return Container(id=(name * 64)[:64], name=name, created="", config=cfg)


def sandbox(c: Container) -> SandboxRecord:
    return SandboxRecord(id="sb-" + c.name, container_id=c.id, key="/run/x", hostname=c.name)


async def test_publish_gives_the_table_the_endpoint_v6_address(tmp_path: Path) -> None:
    naming, _, names = world(tmp_path, FRONT)
    web, api = container("web"), container("api")
    await naming.publish(web, sandbox(web), [endpoint(FRONT, web, "172.20.0.2/16", "2001:db8:1::2/64")])
    await naming.publish(api, sandbox(api), [endpoint(FRONT, api, "172.20.0.3/16", "2001:db8:1::3/64")])
    assert names.lookup_aaaa("sb-api", "web") == [WEB6]
    assert names.lookup_a("sb-api", "web") == [WEB4]
    assert names.lookup_ptr("sb-api", WEB6) == "web.front"


def hosts_of(naming: Naming, c: Container, endpoints: list[EndpointRecord], host_mode: bool = False) -> str:
    naming.write_files(c, sandbox(c), endpoints, host_mode=host_mode)
    return Path(naming.paths(c.id).hosts).read_text()


def test_hosts_of_a_dual_stack_container(tmp_path: Path) -> None:
    naming, _, _ = world(tmp_path, FRONT)
    web = container("web", extra_hosts=("v6host:[2001:db8:9::9]", "v4host:10.1.2.3"))
    hosts = hosts_of(naming, web, [endpoint(FRONT, web, "172.20.0.2/16", "2001:db8:1::2/64")])
    assert hosts == (
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "fe00::\tip6-localnet\n"
        "ff00::\tip6-mcastprefix\n"
        "ff02::1\tip6-allnodes\n"
        "ff02::2\tip6-allrouters\n"
        "2001:db8:9::9\tv6host\n"
        "10.1.2.3\tv4host\n"
        "172.20.0.2\tweb\n"
        "2001:db8:1::2\tweb\n"
    )


def test_hosts_without_ipv6_inside_has_no_v6_line_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Docker's BuildNoIPv6: no IPv6 defaults and no record with an IPv6 address."""
    monkeypatch.setattr(naming_module, "kernel_ipv6", lambda: False)
    naming, _, _ = world(
        tmp_path, PLAIN, host_gateway_ips=(IPv4Address("192.0.2.1"), IPv6Address("2001:db8::1"))
    )
    web = container("web", "plain", extra_hosts=("v6host:[2001:db8:9::9]", "gw:host-gateway"))
    hosts = hosts_of(naming, web, [endpoint(PLAIN, web, "172.21.0.2/16", None)])
    assert hosts == "127.0.0.1\tlocalhost\n192.0.2.1\tgw\n172.21.0.2\tweb\n"


def test_hosts_of_a_v4_only_container_keeps_docker_ipv6_defaults(tmp_path: Path) -> None:
    """Docker 26+ keeps IPv6 on the container's loopback on IPv4-only networks, so its
    /etc/hosts keeps the IPv6 defaults (and ``--add-host`` v6 entries); only the
    container's own line is IPv4 alone."""
    naming, _, _ = world(tmp_path, PLAIN)
    web = container("web", "plain", extra_hosts=("v6host:[2001:db8:9::9]",))
    hosts = hosts_of(naming, web, [endpoint(PLAIN, web, "172.21.0.2/16", None)])
    assert "::1\tlocalhost ip6-localhost ip6-loopback\n" in hosts
    assert "2001:db8:9::9\tv6host\n" in hosts
    assert hosts.endswith("\n172.21.0.2\tweb\n")


def test_host_gateway_from_the_flags_gives_both_families_in_order(tmp_path: Path) -> None:
    gateways = (IPv6Address("2001:db8::1"), IPv4Address("192.0.2.1"))
    naming, _, _ = world(tmp_path, FRONT, host_gateway_ips=gateways)
    web = container("web", extra_hosts=("host.docker.internal:host-gateway",))
    hosts = hosts_of(naming, web, [endpoint(FRONT, web, "172.20.0.2/16", "2001:db8:1::2/64")])
    assert "2001:db8::1\thost.docker.internal\n192.0.2.1\thost.docker.internal\n" in hosts


def test_host_gateway_by_default_is_the_network_gateways(tmp_path: Path) -> None:
    naming, state, _ = world(tmp_path, FRONT, PLAIN)
    web = container("web", extra_hosts=("gw:host-gateway",))
    hosts = hosts_of(naming, web, [endpoint(FRONT, web, "172.20.0.2/16", "2001:db8:1::2/64")])
    assert "172.20.0.1\tgw\n2001:db8:1::1\tgw\n" in hosts
    # on a v4-only network: its v4 gateway, and the default bridge's v6 one when it has IPv6
    api = container("api", "plain", extra_hosts=("gw:host-gateway",))
    hosts = hosts_of(naming, api, [endpoint(PLAIN, api, "172.21.0.3/16", None)])
    assert "172.21.0.1\tgw\n" in hosts and "::1\tgw" not in hosts.replace("::1\tlocalhost", "")
    bridge6 = NetworkRecord(
        id=BRIDGE.id,
        name="bridge",
        driver="bridge",
        created="",
        enable_ipv6=True,
        subnet=BRIDGE.subnet,
        gateway=BRIDGE.gateway,
        subnet6=IPv6Network("2001:db8:17::/64"),
        gateway6=IPv6Address("2001:db8:17::1"),
    )
    state.networks[BRIDGE.id] = bridge6
    hosts = hosts_of(naming, api, [endpoint(PLAIN, api, "172.21.0.3/16", None)])
    assert "172.21.0.1\tgw\n2001:db8:17::1\tgw\n" in hosts


def test_legacy_link_lines_carry_both_addresses(tmp_path: Path) -> None:
    bridge6 = NetworkRecord(
        id=BRIDGE.id,
        name="bridge",
        driver="bridge",
        created="",
        enable_ipv6=True,
        subnet=BRIDGE.subnet,
        gateway=BRIDGE.gateway,
        subnet6=IPv6Network("2001:db8:17::/64"),
        gateway6=IPv6Address("2001:db8:17::1"),
    )
    naming, state, _ = world(tmp_path, bridge6)
    db = container("db", "bridge")
    running = ContainerState(status=RUNNING, pid=1)
    state.containers[db.id] = Container(id=db.id, name="db", created="", config=db.config, state=running)
    db_ep = endpoint(bridge6, db, "172.17.0.2/16", "2001:db8:17::2/64")
    state.endpoints[db_ep.id] = db_ep
    app = container("app", "bridge", links=("db:database",))
    hosts = hosts_of(naming, app, [endpoint(bridge6, app, "172.17.0.3/16", "2001:db8:17::3/64")])
    assert hosts.endswith(
        "172.17.0.3\tapp\n2001:db8:17::3\tapp\n"
        f"172.17.0.2\tdatabase {db.id[:12]} db\n2001:db8:17::2\tdatabase {db.id[:12]} db\n"
    )
    env = naming.link_env(app)
    assert "DATABASE_NAME=/app/database" in env


def test_legacy_resolv_conf_keeps_v6_servers_only_with_a_v6_address(tmp_path: Path) -> None:
    naming, _, _ = world(tmp_path, FRONT, PLAIN)
    web = container("web", "bridge")
    bridge_ep = endpoint(BRIDGE, web, "172.17.0.2/16", None)
    naming.write_files(web, sandbox(web), [bridge_ep], host_mode=False)
    resolv = Path(naming.paths(web.id).resolv_conf).read_text()
    assert "nameserver 192.0.2.53" in resolv and "2001:db8:53::53" not in resolv and "::1" not in resolv
    dual = EndpointRecord(**{**_fields(bridge_ep), "address6": IPv6Interface("2001:db8:17::2/64")})
    naming.write_files(web, sandbox(web), [dual], host_mode=False)
    resolv = Path(naming.paths(web.id).resolv_conf).read_text()
    assert "nameserver 2001:db8:53::53\nnameserver 192.0.2.53\n" in resolv and "::1" not in resolv


def _fields(record: EndpointRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}


def test_legacy_fallback_adds_google_v6_servers_with_ipv6() -> None:
    host = files.ResolvConf(nameservers=("127.0.0.53", "::1"))
    conf, fallback = files.container_resolv_conf(host)
    assert fallback and conf.nameservers == ("8.8.8.8", "8.8.4.4")
    conf, fallback = files.container_resolv_conf(host, ipv6=True)
    assert conf.nameservers == ("8.8.8.8", "8.8.4.4", "2001:4860:4860::8888", "2001:4860:4860::8844")


def test_host_v6_and_zoned_upstreams_are_kept(tmp_path: Path) -> None:
    host = files.parse_resolv_conf("nameserver fe80::1%eth0\nnameserver 2001:db8:53::53\n")
    upstreams = Naming._upstreams(ContainerConfig(image="busybox"), host)
    assert [str(u.address) for u in upstreams] == ["fe80::1%eth0", "2001:db8:53::53"]
    assert all(u.via_host_netns for u in upstreams)
    dns_flag = Naming._upstreams(ContainerConfig(image="busybox", dns=("2001:db8::53",)), host)
    assert dns_flag == [Upstream(IPv6Address("2001:db8::53"), 53, False)]


# -- forwarding to an IPv6 upstream ----------------------------------------------------------


def test_sockaddr_turns_a_zone_into_a_scope_id() -> None:
    assert sockaddr(Upstream(IPv4Address("192.0.2.53"), 53)) == ("192.0.2.53", 53)
    assert sockaddr(Upstream(IPv6Address("2001:db8::53"), 5353)) == ("2001:db8::53", 5353, 0, 0)
    assert sockaddr(Upstream(IPv6Address("fe80::1%7"), 53)) == ("fe80::1", 53, 0, 7)
    lo = socket.if_nametoindex("lo")
    assert sockaddr(Upstream(IPv6Address("fe80::1%lo"), 53)) == ("fe80::1", 53, 0, lo)
    with pytest.raises(OSError):
        sockaddr(Upstream(IPv6Address("fe80::1%no-such-if0"), 53))


class V6Upstream(asyncio.DatagramProtocol):
    """A UDP DNS server on [::1] answering every question with one AAAA record."""

    transport: asyncio.DatagramTransport

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[no-untyped-def]
        query = dns.message.from_wire(data)
        reply = dns.message.make_response(query)
        reply.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "AAAA", "2001:db8::80"))
        self.transport.sendto(reply.to_wire(), addr)


async def test_forwarding_to_an_ipv6_upstream_over_udp_and_tcp() -> None:
    if not socket.has_ipv6 or not Path("/proc/net/if_inet6").exists():
        pytest.skip("this kernel has no IPv6")  # pragma: no cover
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        V6Upstream, local_addr=("::1", 0), family=socket.AF_INET6
    )
    port = transport.get_extra_info("sockname")[1]

    async def tcp_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        size = int.from_bytes(await reader.readexactly(2), "big")
        query = dns.message.from_wire(await reader.readexactly(size))
        reply = dns.message.make_response(query)
        reply.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "AAAA", "2001:db8::81"))
        wire = reply.to_wire()
        writer.write(len(wire).to_bytes(2, "big") + wire)
        await writer.drain()
        writer.close()

    tcp = await asyncio.start_server(tcp_client, "::1", port)
    forwarder = Forwarder(deadline=2.0)
    try:
        upstream = Upstream(IPv6Address("::1"), port, True)
        query = dns.message.make_query("example.org", "AAAA")
        query.id = 777
        reply = await forwarder.forward(query.to_wire(), [upstream])
        assert reply is not None
        message = dns.message.from_wire(reply)
        assert message.id == 777 and records(message) == ["2001:db8::80"]
        from cnm.dns.forwarder import _tcp_exchange
        from cnm.dns.netns_sockets import HostSockets

        wire = await _tcp_exchange(query.to_wire(), upstream, HostSockets())
        assert records(dns.message.from_wire(wire)) == ["2001:db8::81"]
    finally:
        forwarder.close()
        transport.close()
        tcp.close()
        await tcp.wait_closed()


# -- cnmd --host-gateway-ip --------------------------------------------------------------------


def test_host_gateway_ip_flag_takes_one_address_per_family(tmp_path: Path) -> None:
    roots = ["--data-root", str(tmp_path / "d"), "--exec-root", str(tmp_path / "e")]
    assert parse_args(roots).host_gateway_ips == ()
    config = parse_args([*roots, "--host-gateway-ip", "192.0.2.1", "--host-gateway-ip", "2001:db8::1"])
    assert config.host_gateway_ips == (IPv4Address("192.0.2.1"), IPv6Address("2001:db8::1"))
    for bad, what in (
        (["192.0.2.1", "192.0.2.2"], "one IPv4 address was given already"),
        (["2001:db8::1", "2001:db8::2"], "one IPv6 address was given already"),
        (["not-an-ip"], "not an IP address"),
        (["::"], "not a unicast address"),
        (["224.0.0.1"], "not a unicast address"),
    ):
        argv = [*roots, *(a for ip in bad for a in ("--host-gateway-ip", ip))]
        with pytest.raises(InvalidArgument, match=what):
            parse_args(argv)


def test_endpoint_request_is_untouched_by_names() -> None:
    """The names layer reads --ip6 only through the endpoint's address (a sanity check of
    the record shape this file builds on)."""
    assert EndpointRequest(ipv6_address=WEB6).ipv6_address == WEB6
