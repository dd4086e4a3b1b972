"""The ends of a ``cnm trace`` and the names it speaks in: SRC and DST as written
(``parse_target``), resolved to a container (its namespace and endpoints), the host, the
world (beyond the host's default route) or an address; and the words for what the kernel
holds (a bridge is "network 'front' (bridge br-…)", an address of a container is
"web (172.18.0.2)").  ``engine/trace_walk.py`` walks the path on top of it.

A trace is of one IP version (``family``): IPv6 when an end is written as an IPv6 address
(``[2001:db8::2]:80`` with a port) or when asked for (``cnm trace -6``); a container's
end is then its IPv6 address, the host's the gateway6 its containers see, the world's
the host's IPv6 default route.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import ip_address

from cnm.engine.lookup import find_container
from cnm.engine.naming import parse_link
from cnm.engine.services import Services
from cnm.errors import CnmError, InvalidArgument, NotFound
from cnm.firewall import trace_nft
from cnm.firewall.trace_nft import IPAddress
from cnm.kernel import facts, tracing
from cnm.kernel import netns as ns
from cnm.model.endpoint import EndpointRecord
from cnm.model.network import NetworkRecord

PROTOCOLS = ("tcp", "udp", "icmp")
SPECIAL = ("host", "world")
_HEX64 = re.compile(r"\b[0-9a-f]{64}\b")
_HEX12 = re.compile(r"(?<![0-9a-f])[0-9a-f]{12}(?![0-9a-f])")


@dataclass(frozen=True, slots=True)
class Target:
    """SRC or DST as written: ``ref`` (a container, ``host``, ``world`` or an address),
    and for DST the port and protocol."""

    ref: str
    port: int | None = None
    protocol: str = "icmp"


def parse_target(text: str, *, destination: bool) -> Target:
    """``NAME[:PORT][/PROTO]`` (PORT and PROTO on DST only); an IPv6 address is written
    bare, or in brackets before a port (``[2001:db8::2]:80``).  The protocol defaults to
    tcp with a port and icmp without; tcp and udp need a port, icmp takes none."""
    if not text or text != text.strip():
        raise InvalidArgument(f"invalid trace {'destination' if destination else 'source'} {text!r}")
    ref, slash, proto = text.partition("/")
    if ref.startswith("["):
        ref, bracket, rest = ref[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise InvalidArgument(f"invalid trace end {text!r}: expected [IPV6]:PORT")
        colon, port_text = rest[:1], rest[1:]
    elif ref.count(":") > 1:  # a bare IPv6 address: no port
        colon = port_text = ""
    else:
        ref, colon, port_text = ref.partition(":")
    what = "destination" if destination else "source"
    if not ref:
        raise InvalidArgument(f"invalid trace {what} {text!r}: no container, host, world or address")
    if not destination and (slash or colon):
        raise InvalidArgument(f"invalid trace source {text!r}: a port or protocol goes on the destination")
    port: int | None = None
    if colon:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise InvalidArgument(f"invalid port {port_text!r} in {text!r}: expected 1-65535")
        port = int(port_text)
    if slash and proto not in PROTOCOLS:
        raise InvalidArgument(
            f"invalid protocol {proto!r} in {text!r}: expected one of {', '.join(PROTOCOLS)}"
        )
    protocol = proto if slash else ("tcp" if port is not None else "icmp")
    if protocol == "icmp" and port is not None:
        raise InvalidArgument(f"{text!r}: icmp has no ports")
    if protocol != "icmp" and port is None and destination:
        raise InvalidArgument(f"{text!r}: {protocol} needs a port (DST:PORT/{protocol})")
    return Target(ref, port, protocol)


@dataclass(frozen=True, slots=True)
class Hop:
    """One step of the path: ``what`` it is ("route", "veth", "neighbour", "bridge",
    a hook's name, "deliver"), the sentence, the command that shows the same fact, and
    for a hook the rules met (``chain #handle: rule -> what it did``)."""

    what: str
    text: str
    command: str = ""
    rules: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class End:
    kind: str  # container | host | world | address
    label: str
    address: IPAddress | None = None
    netns: str = ""
    container: str = ""
    endpoints: tuple[EndpointRecord, ...] = ()


class Done(Exception):
    """The path ended (dropped, no route): the hops so far and the verdict."""

    def __init__(self, verdict: str, reason: str) -> None:
        super().__init__(reason)
        self.verdict = verdict
        self.reason = reason


class Names:
    """One trace's working state: the names, the hops so far, the packet's addresses."""

    def __init__(self, svc: Services, backend: str, table: str) -> None:
        self.svc = svc
        self.backend = backend
        self.table = table
        self.hops: list[Hop] = []
        self.problems: list[str] = []
        self.saddr: IPAddress | None = None
        self.family = 4  # the IP version traced (see the module)
        self.verdict = "delivered"
        self.unevaluated = False  # a hook met whose rules could not be evaluated (iptables)
        self.reason = ""
        state = svc.state
        self.networks: dict[str, NetworkRecord] = dict(state.networks)
        self.by_bridge = {n.bridge_name: n for n in self.networks.values() if n.driver == "bridge"}
        self.by_address: dict[IPAddress, EndpointRecord] = {}
        self.by_veth: dict[str, EndpointRecord] = {}
        for ep in state.endpoints.values():
            for iface in (ep.address, ep.address6):
                if iface is not None:
                    self.by_address.setdefault(iface.ip, ep)
            if ep.host_ifname:
                self.by_veth[ep.host_ifname] = ep
        self._ruleset: trace_nft.Ruleset | None = None
        # sysctls that change the path, as cnmd's namespace holds them ("1": on)
        self.bridge_nf = {
            key
            for key in ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables")
            if ns.read_proc_sys(key) == "1"
        }
        self._uplink: facts.Route | None = None

    # -- names ----------------------------------------------------------------------------

    def container_name(self, ep: EndpointRecord) -> str:
        c = self.svc.state.containers.get(ep.container_id)
        return c.name if c is not None else ep.name

    def bridge_text(self, bridge: str) -> str:
        n = self.by_bridge.get(bridge)
        return f"network '{n.name}' (bridge {bridge})" if n is not None else f"interface {bridge}"

    def ep_ip(self, ep: EndpointRecord) -> IPAddress | None:
        """``ep``'s address of the traced IP version."""
        iface = ep.address6 if self.family == 6 else ep.address
        return iface.ip if iface is not None else None

    def gateway_of(self, network: NetworkRecord) -> str:
        gateway = network.gateway6 if self.family == 6 else network.gateway
        return str(gateway) if gateway is not None else ""

    def addr_text(self, addr: IPAddress | str) -> str:
        ep = self.by_address.get(ip_address(str(addr)))
        return f"{self.container_name(ep)} ({addr})" if ep is not None else str(addr)

    def names_in(self, text: str) -> str:
        """``text`` with ids, bridges, veths and container addresses named."""

        def hexname(m: re.Match[str]) -> str:
            i = m[0]
            if i in self.networks:
                return f"{i[:12]} (network '{self.networks[i].name}')"
            ep = self.svc.state.endpoints.get(i)
            if ep is not None:
                return f"{i[:12]} ({self.container_name(ep)})"
            return i[:12]

        text = _HEX64.sub(hexname, text)
        words = []
        for word in re.split(r"(\s+)", text):
            bare = word.strip('"')
            if bare in self.by_bridge:
                word = f"{word} (network '{self.by_bridge[bare].name}')"
            elif bare in self.by_veth:
                word = f"{word} ({self.container_name(self.by_veth[bare])}'s veth)"
            else:
                a: IPAddress | None = None
                try:
                    a = ip_address(bare)
                except ValueError:
                    pass
                else:
                    if a in self.by_address:
                        word = f"{word} ({self.container_name(self.by_address[a])})"
                found = _HEX12.search(bare)  # iptables chains: CNM-N-<id12>-IN
                if found and a is None:
                    named = [n for n in self.networks.values() if n.id.startswith(found[0])]
                    if len(named) == 1:
                        word = f"{word} (network '{named[0].name}')"
            words.append(word)
        return "".join(words)

    def link_target(self, src: End | None, alias: str) -> str:
        """The container a legacy ``--link NAME:ALIAS`` of ``src`` calls ``alias``, or ""."""
        if src is None or src.kind != "container":
            return ""
        container = find_container(self.svc.state, src.container)
        links = list(container.config.links) + [link for e in src.endpoints for link in e.request.links]
        for value in links:
            try:
                name, link_alias = parse_link(value)
            except CnmError:
                continue
            if alias == link_alias:
                return name.lstrip("/")
        return ""

    # -- the ends -------------------------------------------------------------------------

    async def uplink(self) -> facts.Route:
        """The host's default route (the "world" is beyond it)."""
        if self._uplink is None:
            default = [r for r in await facts.routes(None, self.family) if r.dst == "default"]
            if not default or not default[0].dev:
                v6 = " IPv6" if self.family == 6 else ""
                raise InvalidArgument(
                    f"world: the cnmd host has no{v6} default route, so there is no world to trace"
                )
            self._uplink = default[0]
        return self._uplink

    async def resolve(self, ref: str, other: End | None) -> End:
        v6 = self.family == 6
        if ref == "host":
            addr: IPAddress | None = None
            if other is not None and other.kind == "container" and other.endpoints:
                ep0 = other.endpoints[0]  # the host as its containers see it
                addr = ep0.gateway6 if v6 else ep0.gateway
            elif other is not None:
                up = await self.uplink()
                r = await tracing.route_get(up.gateway or ("::" if v6 else "0.0.0.0"))
                addr = ip_address(r.src) if r.src else None
            return End("host", "host", addr)
        if ref == "world":
            up = await self.uplink()
            if not up.gateway:
                raise InvalidArgument(f"world: the default route (dev {up.dev}) has no gateway address")
            return End("world", f"world ({up.gateway} via {up.dev})", ip_address(up.gateway))
        try:
            addr = ip_address(ref)
        except ValueError:
            addr = None
        if addr is not None:
            ep = self.by_address.get(addr)
            if ep is None:
                if (await tracing.route_get(str(addr))).kind == "local":  # one of the host's own
                    return End("host", f"host ({addr})", addr)
                return End("address", str(addr), addr)
            ref = ep.container_id
        try:
            container = find_container(self.svc.state, self.link_target(other, ref) or ref)
        except NotFound:
            raise NotFound(
                f"No such container: {ref} (a trace end is a container, host, world or an IP address)"
            ) from None
        sandbox = self.svc.state.sandbox_of(container.id)
        if not container.running or sandbox is None or not sandbox.key:
            raise InvalidArgument(
                f"container {container.name} is not running: it has no network namespace to trace"
            )
        eps = sorted(self.svc.state.endpoints_of_container(container.id), key=lambda e: e.created_seq)
        eps = [e for e in eps if self.ep_ip(e) is not None]
        if other is not None and other.kind == "container":
            shared = {e.network_id for e in other.endpoints}
            eps.sort(key=lambda e: e.network_id not in shared)  # the address on a shared network first
        if addr is not None:
            eps.sort(key=lambda e: self.ep_ip(e) != addr)
        address = self.ep_ip(eps[0]) if eps else None
        label = f"{container.name} ({address})" if address else container.name
        return End("container", label, address, sandbox.key, container.name, tuple(eps))


def comment_label(comment: str) -> str:
    """``cnm:<id> (front)`` -> ``front``; anything else as it is."""
    tag, _, rest = comment.partition(" ")
    if tag.startswith("cnm:") and rest.startswith("(") and rest.endswith(")"):
        return rest[1:-1]
    return comment
