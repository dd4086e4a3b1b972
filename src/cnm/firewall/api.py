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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Protocol

from cnm.errors import InvalidArgument
from cnm.model.network import Network


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


def bridge_rules(network: Network) -> BridgeRules:
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
    )


@dataclass(frozen=True, slots=True)
class PortRule:
    """One published port (or a run of ports with the same offset) of one endpoint:
    traffic to ``host_ip`` (None: any local address) ports ``host_port``..``host_port_end``
    goes to ``container_ip`` ports ``container_port``.. (same offset)."""

    owner: str  # endpoint id
    network: str  # network id (whose bridge the container is on)
    bridge: str
    protocol: str  # tcp | udp | sctp
    host_ip: IPv4Address | None
    host_port: int
    host_port_end: int
    container_ip: IPv4Address
    container_port: int


class Firewall(Protocol):
    async def setup(self) -> None:
        """Create cnm's table and base chains (and the user chain) if missing; idempotent.
        Turns on IPv4 forwarding in the namespace cnmd runs in."""

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

    async def teardown(self) -> None:
        """Remove everything this backend owns (the user chain included)."""

    async def healthy(self) -> bool:
        """Whether cnm's table and base chains are still present (someone may have
        flushed the ruleset)."""
