"""Render cnm's nftables rules from data: ``BridgeRules`` / ``PortRule`` in, ``nft -f`` script
text out.

Pure functions, no I/O.  The layout follows Docker 29's nftables backend (one table of
its own, verdict maps keyed by interface name dispatching to per-network chains), so the
cost of adding or removing one network never depends on how many others exist, and
traffic that does not touch a cnm bridge never walks a per-network rule.  Published ports
are elements of four maps read by four fixed rules, so neither the rule count nor the
per-packet cost grows with the number of mappings, and a range published on the same
container ports (``-p 8000-8010:8000-8010``) is one interval element (a shifted range,
``-p 9000-9010:8000-8010``, is one hash element per port: nft has no NAT port shift)::

    table ip cnm {
      map forward-into-bridge { type ifname : verdict }   # oifname <br> -> jump n-<id12>-in
      map forward-from-bridge { type ifname : verdict }   # iifname <br> -> jump n-<id12>-out
      map nat-from-bridge     { type ifname : verdict }   # iifname <br> -> jump n-<id12>-nat
      map nat-into-bridge     { type ifname : verdict }   # oifname <br> -> jump n-<id12>-nat
      map ports-ip        { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service }
      map ports-ip-range  { type ipv4_addr . inet_proto . inet_service : ipv4_addr ; flags interval }
      map ports-any       { type inet_proto . inet_service : ipv4_addr . inet_service }
      map ports-any-range { type inet_proto . inet_service : ipv4_addr ; flags interval }
      chain user        { }   # the user's chain (like DOCKER-USER): created once, never flushed
      chain forward     { type filter hook forward priority filter; policy accept;
                          jump user
                          ct state established,related accept
                          oifname vmap @forward-into-bridge
                          iifname vmap @forward-from-bridge }
      chain postrouting { type nat hook postrouting priority srcnat; policy accept;
                          iifname vmap @nat-from-bridge
                          oifname vmap @nat-into-bridge
                          ip saddr 127.0.0.0/8 ct status dnat masquerade }   # host via 127.0.0.1
      chain prerouting  { type nat hook prerouting priority dstnat; policy accept;
                          [proxy: iifname @forward-from-bridge return]      # hairpin -> proxy
                          fib daddr type local jump ports }
      chain output      { type nat hook output priority -100; policy accept;
                          [proxy: ip daddr 127.0.0.0/8 return]              # localhost -> proxy
                          fib daddr type local jump ports }
      chain ports       { meta l4proto { tcp, udp, sctp } dnat ip to <key> map @<each port map> }
      chain raw-prerouting { type filter hook prerouting priority raw; policy accept;
                          iifname != "lo" ip daddr 127.0.0.0/8 drop }       # no 127.x from outside
      chain n-<id12>-in  { ct status dnat accept ; icc ; drop }   # traffic forwarded into <br>
      chain n-<id12>-out { ... }   # traffic forwarded out of bridge <br>
      chain n-<id12>-nat { masquerade to elsewhere ; oifname <br> ip saddr <subnet> ct status dnat masquerade }
    }

Every per-network chain, rule and map element carries ``comment "cnm:<network id>"``;
every port element carries ``comment "cnm:<endpoint id>"``.
Idempotence without nft's ``destroy`` (nft >= 1.0.8; Debian 12 has 1.0.6) uses nft's
own idempotent verbs: ``add X; delete X`` deletes X whether or not it existed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cnm.errors import FirewallError, InvalidArgument
from cnm.firewall.api import BridgeRules, PortRule
from cnm.firewall.common import PORT_PROTOCOLS, check_ifname, check_owner, check_port_rule, owner_comment

TABLE = "cnm"
FAMILY = "ip"  # IPv6 ("ip6" table of the same layout) comes later

USER_CHAIN = "user"
FORWARD_CHAIN = "forward"
POSTROUTING_CHAIN = "postrouting"
PREROUTING_CHAIN = "prerouting"  # DNAT of traffic arriving for a local address
OUTPUT_CHAIN = "output"  # DNAT of the host's own traffic to a local address
PORTS_CHAIN = "ports"  # the four map lookups, jumped to from both
RAW_CHAIN = "raw-prerouting"  # drops 127.0.0.0/8 arriving from outside

MAP_INTO_BRIDGE = "forward-into-bridge"  # oifname -> n-<id12>-in
MAP_FROM_BRIDGE = "forward-from-bridge"  # iifname -> n-<id12>-out
MAP_NAT_FROM_BRIDGE = "nat-from-bridge"  # iifname -> n-<id12>-nat
# oifname -> n-<id12>-nat: hairpin masquerade.  With br_netfilter loaded, a DNATed packet
# whose new destination is on the bridge it came from is bridged, not routed, and its
# postrouting hook sees no input interface: only the output interface can dispatch it.
MAP_NAT_INTO_BRIDGE = "nat-into-bridge"
MAPS = (MAP_INTO_BRIDGE, MAP_FROM_BRIDGE, MAP_NAT_FROM_BRIDGE, MAP_NAT_INTO_BRIDGE)

# Published ports.  Single ports are elements of hash maps (host port -> address . port):
# adding or deleting one costs the same whatever the map holds.  A range published on the
# same container ports is one element of an interval map whose data is the address only
# (the port is kept).  nft 1.0.6 reads a whole interval map back to delete from it, so
# single ports are kept out of the interval maps (measured: deleting 500 elements from
# an interval map holding 5,000 took 5 s, from a hash map a few ms).  Maps keyed by a
# host address are looked up first.
MAP_PORTS_IP = "ports-ip"
MAP_PORTS_IP_RANGE = "ports-ip-range"
MAP_PORTS_ANY = "ports-any"
MAP_PORTS_ANY_RANGE = "ports-any-range"
PORT_MAPS: dict[str, str] = {  # name -> type and flags
    MAP_PORTS_IP: "type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service ;",
    MAP_PORTS_IP_RANGE: "type ipv4_addr . inet_proto . inet_service : ipv4_addr ; flags interval ;",
    MAP_PORTS_ANY: "type inet_proto . inet_service : ipv4_addr . inet_service ;",
    MAP_PORTS_ANY_RANGE: "type inet_proto . inet_service : ipv4_addr ; flags interval ;",
}
_PORT_MAP_KEYS = {  # the packet fields each map is looked up with
    MAP_PORTS_IP: "ip daddr . meta l4proto . th dport",
    MAP_PORTS_IP_RANGE: "ip daddr . meta l4proto . th dport",
    MAP_PORTS_ANY: "meta l4proto . th dport",
    MAP_PORTS_ANY_RANGE: "meta l4proto . th dport",
}

LOOPBACK = "127.0.0.0/8"

BASE_CHAINS: dict[str, str] = {
    FORWARD_CHAIN: "type filter hook forward priority filter ; policy accept ;",
    POSTROUTING_CHAIN: "type nat hook postrouting priority srcnat ; policy accept ;",
    PREROUTING_CHAIN: "type nat hook prerouting priority dstnat ; policy accept ;",
    # nft accepts the name "dstnat" only on prerouting; -100 is its value
    OUTPUT_CHAIN: "type nat hook output priority -100 ; policy accept ;",
    RAW_CHAIN: "type filter hook prerouting priority raw ; policy accept ;",
}
# Chains that belong to the table's skeleton rather than to one network or endpoint.
FIXED_CHAINS = frozenset({USER_CHAIN, PORTS_CHAIN, *BASE_CHAINS})


@dataclass(frozen=True, slots=True)
class NetworkChains:
    """The names of one network's chains (derived from its id, so a removal needs only
    the id)."""

    inbound: str  # forwarded into the bridge
    outbound: str  # forwarded out of the bridge
    nat: str  # source NAT of traffic from the bridge

    def all(self) -> tuple[str, str, str]:
        return (self.inbound, self.outbound, self.nat)

    def for_map(self) -> tuple[tuple[str, str], ...]:
        """(map, chain) pairs: which map dispatches to which chain."""
        return (
            (MAP_INTO_BRIDGE, self.inbound),
            (MAP_FROM_BRIDGE, self.outbound),
            (MAP_NAT_FROM_BRIDGE, self.nat),
            (MAP_NAT_INTO_BRIDGE, self.nat),
        )


# What chains_for() produces.  nft 1.0.6 does not report chain comments in JSON, so the
# owner of a chain is read from its name (derived from the owner id) when sync looks for
# stale ones; anything else a user put into cnm's table is left alone.
_NETWORK_CHAIN_RE = re.compile(r"^n-[0-9A-Za-z][0-9A-Za-z_-]{0,11}-(in|out|nat)$")


def is_network_chain(name: str) -> bool:
    return bool(_NETWORK_CHAIN_RE.match(name))


def chains_for(owner: str) -> NetworkChains:
    prefix = f"n-{check_owner(owner)[:12]}"
    return NetworkChains(f"{prefix}-in", f"{prefix}-out", f"{prefix}-nat")


def _script(lines: Iterable[str]) -> str:
    return "\n".join(lines) + "\n"


# -- skeleton ---------------------------------------------------------------------------


def setup_lines(table: str = TABLE, userland_proxy: bool = False) -> list[str]:
    """Create the table, maps, user chain and base chains if missing, and (re)write the
    base chains' dispatch rules.  Never flushes the user chain or any map.

    ``userland_proxy``: the host's own traffic to 127.0.0.0/8 and traffic arriving from a
    cnm bridge are left to the proxy (not DNATed); otherwise the kernel DNATs them too."""
    t = f"{FAMILY} {table}"
    lines = [
        f"add table {t}",
        f'add chain {t} {USER_CHAIN} {{ comment "yours: evaluated first, never flushed by cnm" ; }}',
    ]
    lines += [f"add map {t} {m} {{ type ifname : verdict ; }}" for m in MAPS]
    lines += [f"add map {t} {m} {{ {spec} }}" for m, spec in PORT_MAPS.items()]
    for chain, spec in BASE_CHAINS.items():
        lines.append(f"add chain {t} {chain} {{ {spec} }}")
        # flush + re-add keeps setup idempotent (no duplicated dispatch rules)
        lines.append(f"flush chain {t} {chain}")
    lines += [f"add chain {t} {PORTS_CHAIN}", f"flush chain {t} {PORTS_CHAIN}"]
    lines += [
        # the user's verdict comes first; an accept there ends this chain (a drop is final)
        f"add rule {t} {FORWARD_CHAIN} jump {USER_CHAIN}",
        f"add rule {t} {FORWARD_CHAIN} ct state established,related accept",
        # into a bridge first: that is where isolation drops, whatever the source
        f"add rule {t} {FORWARD_CHAIN} oifname vmap @{MAP_INTO_BRIDGE}",
        f"add rule {t} {FORWARD_CHAIN} iifname vmap @{MAP_FROM_BRIDGE}",
        f"add rule {t} {POSTROUTING_CHAIN} iifname vmap @{MAP_NAT_FROM_BRIDGE}",
        f"add rule {t} {POSTROUTING_CHAIN} oifname vmap @{MAP_NAT_INTO_BRIDGE}",
        # the host reaching a published port through 127.0.0.1 (kernel mode; route_localnet
        # lets the packet out of the bridge): the container must answer a real address
        f"add rule {t} {POSTROUTING_CHAIN} ip saddr {LOOPBACK} ct status dnat masquerade",
    ]
    if userland_proxy:
        # a container reaching a published port through the host's address, and the host
        # through 127.0.0.1, are answered by the proxy on the reserved socket
        lines.append(f"add rule {t} {PREROUTING_CHAIN} iifname @{MAP_FROM_BRIDGE} return")
        lines.append(f"add rule {t} {OUTPUT_CHAIN} ip daddr {LOOPBACK} return")
    lines += [
        f"add rule {t} {PREROUTING_CHAIN} fib daddr type local jump {PORTS_CHAIN}",
        f"add rule {t} {OUTPUT_CHAIN} fib daddr type local jump {PORTS_CHAIN}",
    ]
    lines += [
        f"add rule {t} {PORTS_CHAIN} meta l4proto {{ {', '.join(PORT_PROTOCOLS)} }} dnat ip to {_PORT_MAP_KEYS[m]} map @{m}"
        for m in PORT_MAPS
    ]
    # A packet for 127.0.0.0/8 from any other interface than lo is forged or misrouted;
    # without this, "fib daddr type local" would DNAT it to a port bound to 127.0.0.1
    # (moby#41872), and route_localnet on the bridges would let containers reach the
    # host's loopback services (CVE-2020-8558).
    lines.append(f'add rule {t} {RAW_CHAIN} iifname != "lo" ip daddr {LOOPBACK} drop')
    return lines


def base_rule_counts(userland_proxy: bool = False) -> dict[str, int]:
    """How many rules each fixed chain (the user chain aside) holds after setup (for
    health checks)."""
    counts = dict.fromkeys([*BASE_CHAINS, PORTS_CHAIN], 0)
    for line in setup_lines(userland_proxy=userland_proxy):
        parts = line.split()
        if parts[:2] == ["add", "rule"]:
            counts[parts[4]] += 1
    return counts


def render_setup(table: str = TABLE, userland_proxy: bool = False) -> str:
    return _script(setup_lines(table, userland_proxy))


def render_teardown(table: str = TABLE) -> str:
    # "add" first so deleting an absent table is not an error
    return _script([f"add table {FAMILY} {table}", f"delete table {FAMILY} {table}"])


# -- one network ------------------------------------------------------------------------


def network_rules(rules: BridgeRules) -> dict[str, list[str]]:
    """The rule bodies of each of one network's chains (without ``add rule …``)."""
    owner = check_owner(rules.owner)
    br = f'"{check_ifname(rules.bridge)}"'
    tag = f'comment "{owner_comment(owner)}"'
    ch = chains_for(owner)
    # Dispatched on oifname == br: forwarded into the bridge (replies were accepted
    # before the dispatch).  Routed bridge->same bridge traffic follows icc.
    inbound = [
        # published ports (DNATed by cnm's prerouting/output chains), before the
        # icc verdict: a published port is public, for neighbours too
        *([] if rules.internal else [f"ct status dnat accept {tag}"]),
        f"iifname {br} {'accept' if rules.icc else 'drop'} {tag}",
        f"drop {tag}",
    ]
    # Dispatched on iifname == br: forwarded out of the bridge (to another interface:
    # the same bridge was decided by the in-chain above, which is evaluated first).
    if rules.internal:
        outbound = [f"oifname != {br} drop {tag}", f"accept {tag}"]
    else:
        outbound = [f"accept {tag}"]
    nat: list[str] = []
    if rules.masquerade and not rules.internal:
        nat.append(f"oifname != {br} ip saddr {rules.subnet} masquerade {tag}")
    if not rules.internal:
        # hairpin: a container reaching a published port of its own bridge (its own,
        # too) through a host address; without it the reply would bypass the NAT
        nat.append(f"oifname {br} ip saddr {rules.subnet} ct status dnat masquerade {tag}")
    return {ch.inbound: inbound, ch.outbound: outbound, ch.nat: nat}


def _element(bridge: str, owner: str, chain: str) -> str:
    """A map element ``bridge -> jump chain``, tagged with its owner."""
    return f'{{ "{bridge}" comment "{owner_comment(owner)}" : jump {chain} }}'


def _drop_elements(table: str, owner: str, bridge: str) -> list[str]:
    """Delete ``bridge``'s elements (pointing at ``owner``'s chains) whether present or not.
    The chains must exist when these lines run."""
    t = f"{FAMILY} {table}"
    lines = []
    for map_name, chain in chains_for(owner).for_map():
        lines.append(f"add element {t} {map_name} {_element(bridge, owner, chain)}")
        lines.append(f'delete element {t} {map_name} {{ "{bridge}" }}')
    return lines


def network_lines(rules: BridgeRules, previous_bridge: str | None = None, table: str = TABLE) -> list[str]:
    """Install or replace one network: its three chains (created, flushed, filled) and
    its three map elements.  ``previous_bridge``, when the network was last installed on
    another bridge name, has its elements removed in the same transaction."""
    t = f"{FAMILY} {table}"
    owner = check_owner(rules.owner)
    bridge = check_ifname(rules.bridge)
    tag = owner_comment(owner)
    lines = []
    for chain, body in network_rules(rules).items():
        lines.append(f'add chain {t} {chain} {{ comment "{tag}" ; }}')
        lines.append(f"flush chain {t} {chain}")
        lines += [f"add rule {t} {chain} {rule}" for rule in body]
    if previous_bridge and previous_bridge != bridge:
        lines += _drop_elements(table, owner, check_ifname(previous_bridge))
    for map_name, chain in chains_for(owner).for_map():
        lines.append(f"add element {t} {map_name} {_element(bridge, owner, chain)}")
    return lines


def render_add_network(rules: BridgeRules, previous_bridge: str | None = None, table: str = TABLE) -> str:
    return _script(network_lines(rules, previous_bridge, table))


def remove_lines(owner: str, bridges: Iterable[str] = (), table: str = TABLE) -> list[str]:
    """Remove network ``owner``: the elements of ``bridges`` (the bridge names its map
    elements are keyed by) and its three chains, whether or not they exist."""
    t = f"{FAMILY} {table}"
    chains = chains_for(owner).all()
    # the chains must exist for the element lines to parse, and be empty to be deleted
    lines = [f'add chain {t} {c} {{ comment "{owner_comment(owner)}" ; }}' for c in chains]
    for bridge in dict.fromkeys(bridges):
        lines += _drop_elements(table, owner, check_ifname(bridge))
    for c in chains:
        lines += [f"flush chain {t} {c}", f"delete chain {t} {c}"]
    return lines


def render_remove_network(owner: str, bridges: Iterable[str] = (), table: str = TABLE) -> str:
    return _script(remove_lines(owner, bridges, table))


# -- whole table ------------------------------------------------------------------------


def render_sync(
    networks: Sequence[BridgeRules],
    existing_chains: Iterable[str] = (),
    table: str = TABLE,
    ports: Sequence[PortRule] = (),
    userland_proxy: bool = False,
) -> str:
    """One transaction that leaves the table holding exactly ``networks`` and ``ports``:
    the skeleton (re)made, all map elements replaced, every non-skeleton chain in
    ``existing_chains`` that is a per-network chain of cnm's and that no listed network
    owns deleted, the listed networks (re)installed.  The user chain is created if
    missing and otherwise left alone."""
    t = f"{FAMILY} {table}"
    elements = port_elements_by_owner(ports)
    seen_bridges: dict[str, str] = {}
    seen_chains: dict[str, str] = {}
    for rules in networks:
        other = seen_bridges.setdefault(rules.bridge, rules.owner)
        if other != rules.owner:
            raise InvalidArgument(f"bridge {rules.bridge} claimed by networks {other} and {rules.owner}")
        other = seen_chains.setdefault(chains_for(rules.owner).inbound, rules.owner)
        if other != rules.owner:
            raise InvalidArgument(f"networks {other} and {rules.owner} share an id prefix")
    wanted = {c for rules in networks for c in chains_for(rules.owner).all()}
    lines = setup_lines(table, userland_proxy)
    lines += [f"flush map {t} {m}" for m in (*MAPS, *PORT_MAPS)]
    stale = {c for c in existing_chains if is_network_chain(c)} - wanted
    for chain in sorted(stale):
        lines += [f"flush chain {t} {chain}", f"delete chain {t} {chain}"]
    for rules in networks:
        lines += network_lines(rules, None, table)
    for owner, elems in elements.items():
        lines += ports_lines(owner, (), elems, table)
    return _script(lines)


# -- published ports --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PortElement:
    """One element of a port map: ``key`` and ``data`` in nft's syntax."""

    map: str
    key: str  # e.g. "tcp . 8000-8010" or "127.0.0.1 . udp . 53"
    data: str  # e.g. "10.0.0.2" (same port) or "10.0.0.2 . 80"


def port_elements(rule: PortRule) -> list[PortElement]:
    """The map elements of one ``PortRule``: one interval element for a range published
    on the same container ports, else one hash element per port."""
    first, last = check_port_rule(rule)
    prefix = f"{rule.host_ip} . " if rule.host_ip is not None else ""
    if rule.container_port == first and first != last:
        name = MAP_PORTS_IP_RANGE if rule.host_ip is not None else MAP_PORTS_ANY_RANGE
        return [PortElement(name, f"{prefix}{rule.protocol} . {first}-{last}", str(rule.container_ip))]
    name = MAP_PORTS_IP if rule.host_ip is not None else MAP_PORTS_ANY
    shift = rule.container_port - first
    return [
        PortElement(name, f"{prefix}{rule.protocol} . {p}", f"{rule.container_ip} . {p + shift}")
        for p in range(first, last + 1)
    ]


def port_elements_by_owner(rules: Iterable[PortRule]) -> dict[str, list[PortElement]]:
    """Group the elements of ``rules`` by owner (endpoint id), checking each id."""
    out: dict[str, list[PortElement]] = {}
    for rule in rules:
        out.setdefault(check_owner(rule.owner), []).extend(port_elements(rule))
    return out


def ports_lines(
    owner: str, old: Iterable[PortElement], new: Iterable[PortElement], table: str = TABLE
) -> list[str]:
    """Replace endpoint ``owner``'s elements ``old`` (which must be present) with ``new``,
    in one transaction whose size depends only on this endpoint's ports."""
    t = f"{FAMILY} {table}"
    tag = owner_comment(check_owner(owner))
    lines = [f"delete element {t} {e.map} {{ {e.key} }}" for e in old]
    lines += [f'add element {t} {e.map} {{ {e.key} comment "{tag}" : {e.data} }}' for e in new]
    return lines


def render_ports(
    owner: str, old: Iterable[PortElement], new: Iterable[PortElement], table: str = TABLE
) -> str:
    return _script(ports_lines(owner, old, new, table))


def port_key_from_json(value: Any) -> str:
    """nft's JSON form of a port-map key (``{"concat": ["tcp", {"range": [1, 2]}]}``)
    back to the text it was written as (``tcp . 1-2``)."""
    if isinstance(value, dict) and "concat" in value:
        return " . ".join(port_key_from_json(v) for v in value["concat"])
    if isinstance(value, dict) and "range" in value:
        low, high = value["range"]
        return f"{low}-{high}"
    if isinstance(value, dict) and "prefix" in value:
        return f"{value['prefix']['addr']}/{value['prefix']['len']}"
    if isinstance(value, (str, int)):
        return str(value)
    raise FirewallError(f"nft: unexpected key in a port map: {value!r}")


def port_data_from_json(value: Any) -> str:
    """nft's JSON form of a port-map value back to text (``10.0.0.2 . 80``)."""
    return port_key_from_json(value)
