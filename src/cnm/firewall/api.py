"""The Firewall protocol: rules rendered from data, applied in one transaction.

A backend (``cnm.firewall.nftables``; iptables comes with port publishing) owns its own
table / chains entirely, never changes global policies, tags every rule with the id of the
network (or endpoint) that owns it, and provides a user chain evaluated before its own
(like Docker's DOCKER-USER), which it creates once and never flushes.

Semantics of one bridge network (Docker's bridge driver):
- masquerade: traffic from ``subnet`` leaving through another interface is masqueraded;
- isolation: traffic entering the bridge from any other interface is dropped, except
  replies (ct established,related) -- so networks cannot reach each other and the world
  cannot route to containers; traffic from the host itself is not forwarded and is allowed;
- icc=false: traffic between two ports of the same bridge is dropped.  Bridged traffic
  never reaches the IP forward hook (no br_netfilter), so the bridge driver enforces this
  with bridge-port isolation (``ip link set vethX type bridge_slave isolated on``); the
  firewall backend only carries ``icc`` for display and may ignore it;
- internal: nothing leaves the bridge for another interface and nothing enters it from one.

A network with IPv6 (``subnet6``) gets the same rules for its v6 subnet in each backend's
IPv6 tables (nftables ``ip6``, ``ip6tables``), except that a routed v6 subnet
(``routed6``) is not masqueraded: the world reaches it for ICMPv6 and its published ports.
A ``PortRule`` is of one family; a v4-only network or port touches no IPv6 table.

Beside the backend, a ``SpoofGuard`` filters what each container sends into its bridge
port (its own MAC, its own IPv4 addresses, ARP for those only; with v6 addresses, IPv6
from those and its link-local address, neighbour advertisements for those only, never a
router advertisement), whichever backend filters at L3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Protocol

from cnm.errors import InvalidArgument
from cnm.model.endpoint import EndpointRecord
from cnm.model.network import NetworkRecord


@dataclass(frozen=True, slots=True)
class BridgeRules:
    """Everything a backend needs to render one bridge network's rules."""

    owner: str  # network id
    bridge: str  # Linux bridge name
    subnet: IPv4Network
    gateway: IPv4Address | None = None
    internal: bool = False
    icc: bool = True
    masquerade: bool = True
    # IPv6 (a network with ``enable_ipv6``): its v6 subnet and gateway; ``routed6``: the v6
    # subnet is forwarded without NAT (``gateway_mode_ipv6=routed``), else masqueraded
    subnet6: IPv6Network | None = None
    gateway6: IPv6Address | None = None
    routed6: bool = False
    # the network's name, for people reading the comments: not part of what a rule *is*
    name: str = field(default="", compare=False)


def bridge_rules(network: NetworkRecord) -> BridgeRules:
    """The firewall's view of bridge network ``network`` (InvalidArgument without a subnet)."""
    if network.subnet is None:
        raise InvalidArgument(f"network {network.name} has no IPv4 subnet")
    return BridgeRules(
        owner=network.id,
        bridge=network.bridge_name,
        subnet=network.subnet,
        gateway=network.gateway,
        internal=network.internal,
        icc=network.icc,
        masquerade=network.masquerade,
        subnet6=network.subnet6 if network.enable_ipv6 else None,
        gateway6=network.gateway6 if network.enable_ipv6 else None,
        routed6=network.enable_ipv6 and network.gateway_mode_ipv6 == "routed",
        name=network.name,
    )


@dataclass(frozen=True, slots=True)
class PortRule:
    """One published port (or a run of ports with the same offset) of one endpoint:
    traffic to ``host_ip`` (None: any local address of ``container_ip``'s family) ports
    ``host_port``..``host_port_end`` goes to ``container_ip`` ports ``container_port``..
    (same offset).  One family per rule: a v6 ``host_ip`` goes with a v6 ``container_ip``
    (``common.check_port_rule`` refuses a mix); ``-p 8080:80`` on a dual-stack container
    is two rules, one per family."""

    owner: str  # endpoint id
    network: str  # network id (whose bridge the container is on)
    bridge: str
    protocol: str  # tcp | udp | sctp
    host_ip: IPv4Address | IPv6Address | None
    host_port: int
    host_port_end: int
    container_ip: IPv4Address | IPv6Address
    container_port: int
    # "<container> on <network>", for people reading the comments (not compared, as above)
    label: str = field(default="", compare=False)


class Firewall(Protocol):
    async def setup(self) -> None:
        """Create cnm's tables and base chains (and the user chains) of both families if
        missing; idempotent.  Turns on IPv4 forwarding in the namespace cnmd runs in (IPv6
        forwarding is the bridge driver's, once a network has IPv6)."""

    async def sync(self, networks: Sequence[BridgeRules], ports: Sequence[PortRule] = ()) -> None:
        """Make the kernel hold exactly these networks' and ports' rules (start-up
        reconcile, recovery after an outside flush) in one transaction."""

    async def add_network(self, rules: BridgeRules) -> None:
        """Install (or replace) one network's rules in one transaction; idempotent."""

    async def remove_network(self, owner: str) -> None:
        """Remove everything owned by network ``owner``; idempotent."""

    async def add_ports(self, owner: str, rules: Sequence[PortRule]) -> None:
        """Install every published port of endpoint ``owner`` in one transaction (replacing
        what it had).  Cost must not grow with the number of other mappings: maps/sets
        (nftables), one batch (iptables)."""

    async def remove_ports(self, owner: str) -> None:
        """Remove every published port of endpoint ``owner``; idempotent."""

    async def add_encrypted_vni(self, owner: str, vni: int) -> None:
        """Drop plain VXLAN (UDP 4789) carrying VNI ``vni`` that arrives on any interface but
        the overlay's WireGuard tunnel: encrypted overlay network ``owner``'s data plane is
        on this host (the kernel's VXLAN socket would decapsulate such a frame into it).
        Idempotent; kept across ``sync``.  A backend that cannot says so in its docs."""

    async def remove_encrypted_vni(self, owner: str, vni: int) -> None:
        """Stop dropping what ``add_encrypted_vni(owner, vni)`` dropped; idempotent."""

    async def teardown(self) -> None:
        """Remove everything this backend owns (the user chain included)."""

    async def healthy(self) -> bool:
        """Whether cnm's table and base chains are still present (someone may have
        flushed the ruleset)."""


@dataclass(frozen=True, slots=True)
class PortGuard:
    """What the container of one endpoint may send into its bridge port (the host end of
    its veth, ``port``): frames from ``mac`` only; of those, IPv4 from ``addresses`` only
    and ARP whose sender is ``mac`` and one of ``addresses``; IPv6 only when ``addresses6``
    is not empty (a network with IPv6), from those or the link-local address of ``mac``;
    nothing else (no other ethertype, VLAN tags are refused)."""

    owner: str  # endpoint id
    network: str  # network id
    port: str  # host-side interface name
    mac: str
    addresses: tuple[IPv4Address, ...]
    addresses6: tuple[IPv6Address, ...] = ()


def port_guard(network: NetworkRecord, endpoint: EndpointRecord) -> PortGuard:
    """The guard of ``endpoint``'s port on ``network`` (InvalidArgument without a host
    interface or a MAC: a port whose MAC cnm does not know cannot be guarded)."""
    if not endpoint.host_ifname:
        raise InvalidArgument(f"endpoint {endpoint.id[:12]} has no host interface to guard")
    if not endpoint.mac:
        raise InvalidArgument(f"endpoint {endpoint.id[:12]} has no MAC address to guard its port with")
    addresses = (endpoint.address.ip,) if endpoint.address is not None else ()
    addresses6 = (endpoint.address6.ip,) if endpoint.address6 is not None else ()
    return PortGuard(
        owner=endpoint.id,
        network=network.id,
        port=endpoint.host_ifname,
        mac=endpoint.mac,
        addresses=addresses,
        addresses6=addresses6,
    )


class SpoofGuard(Protocol):
    """Anti-spoofing on the ports of cnm's bridges (bridge and overlay networks').  Fixed rules read sets; each guarded
    port is a few set elements tagged with its endpoint id, so neither a change nor a
    packet costs more with more containers.  A port is guarded from before its veth
    exists until after it is retired, so no frame of it ever goes unchecked."""

    async def setup(self) -> None:
        """Create cnm's table, sets and chains if missing and rewrite the fixed rules;
        elements are kept.  Idempotent."""

    async def sync(self, guards: Sequence[PortGuard], scope: str | None = None) -> None:
        """Make the kernel guard exactly these ports (start-up reconcile, recovery), in
        one transaction.  With ``scope`` (the driver whose ports these are): exactly these
        among that scope's ports, never touching another scope's; at start-up nothing is
        changed until every scope the guard was built with has reported, then their
        union is installed at once (see ``cnm.firewall.guard_scopes``)."""

    async def add_port(self, guard: PortGuard) -> None:
        """Guard one port (replacing what its endpoint had), in one transaction whose size
        depends only on this port; Conflict when another endpoint holds the port name."""

    async def remove_port(self, owner: str) -> None:
        """Stop guarding endpoint ``owner``'s port; idempotent.  Call it only once the
        veth is out of service."""

    async def remove_network(self, network: str) -> None:
        """Stop guarding every port of network ``network``; idempotent."""

    async def teardown(self) -> None:
        """Remove everything this guard owns."""

    async def healthy(self) -> bool:
        """Whether cnm's table, sets, chains and fixed rules are all present."""

    async def heal(self) -> bool:
        """Re-install everything if someone removed part of it; True when it had to."""


async def restore_guards(
    guard: SpoofGuard,
    scope: str,
    networks: Sequence[NetworkRecord],
    endpoints: Sequence[EndpointRecord],
) -> list[BaseException]:
    """A driver's start-up reconcile of its ports: ``guard`` guards exactly the ports of
    ``endpoints`` (those of ``networks`` with a host interface) among ``scope``'s (the
    driver's name; another driver's ports are never touched).  Returns what went wrong:
    an endpoint whose guard cannot be built is reported, the others are still guarded."""
    by_id = {n.id: n for n in networks}
    guards = []
    errors: list[BaseException] = []
    for endpoint in endpoints:
        network = by_id.get(endpoint.network_id)
        if network is None or not endpoint.host_ifname:
            continue
        try:
            guards.append(port_guard(network, endpoint))
        except Exception as exc:  # noqa: BLE001 -- reported with the others
            errors.append(exc)
    try:
        await guard.sync(guards, scope)
    except Exception as exc:  # noqa: BLE001
        errors.append(exc)
    return errors
