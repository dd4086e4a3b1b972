"""Render cnm's nftables rules from data: ``BridgeRules`` / ``PortRule`` in, ``nft -f`` script
text out.

Pure functions, no I/O.  One table of cnm's own whose chains and rules are fixed: a
network is a handful of set elements keyed by its bridge name, and a published port is
one element of a port map.  So creating or removing a network adds or deletes elements
only -- never a chain or a rule, which libnftables 1.0.6 would pay for by reading every
chain on the host first -- and neither its cost nor the per-packet cost grows with the
networks there (the set lookups are hashes; ``subnets``, whose keys are ranges, is the
kernel's pipapo set).  A range published on the same container ports
(``-p 8000-8010:8000-8010``) is one interval element (a shifted range,
``-p 9000-9010:8000-8010``, is one hash element per port: nft has no NAT port shift)::

    table ip cnm {
      set bridges     { type ifname ; }                   # every bridge of cnm's
      set same-bridge { type ifname . ifname ; }          # "<br>" . "<br>" of every bridge
      set internal    { type ifname ; }                   # bridges of internal networks
      set icc         { type ifname ; }                   # bridges with icc on
      set masquerading { type ifname ; }                  # bridges masqueraded (not internal)
      set subnets     { type ifname . ipv4_addr ; flags interval ; }   # "<br>" . <subnet>, not internal
      map ports-ip        { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service }
      map ports-ip-range  { type ipv4_addr . inet_proto . inet_service : ipv4_addr ; flags interval }
      map ports-any       { type inet_proto . inet_service : ipv4_addr . inet_service }
      map ports-any-range { type inet_proto . inet_service : ipv4_addr ; flags interval }
      chain user        { }   # the user's chain (like DOCKER-USER): created once, never flushed
      chain forward     { type filter hook forward priority filter; policy accept;
                          jump user
                          ct state established,related accept
                          iifname @internal iifname . oifname != @same-bridge drop   # nothing leaves internal
                          # into a bridge (that is where isolation drops, whatever the source)
                          oifname @bridges oifname != @internal ct status dnat accept   # published ports
                          iifname . oifname @same-bridge oifname @icc accept            # icc, routed
                          oifname @bridges drop }                                       # isolation
      chain postrouting { type nat hook postrouting priority srcnat; policy accept;
                          iifname . ip saddr @subnets iifname @masquerading iifname . oifname != @same-bridge masquerade
                          oifname . ip saddr @subnets ct status dnat masquerade     # hairpin
                          ip saddr 127.0.0.0/8 ct status dnat masquerade }          # host via 127.0.0.1
      chain prerouting  { type nat hook prerouting priority dstnat; policy accept;
                          [proxy: iifname @bridges return]                  # hairpin -> proxy
                          fib daddr type local jump ports }
      chain output      { type nat hook output priority -100; policy accept;
                          [proxy: ip daddr 127.0.0.0/8 return]              # localhost -> proxy
                          fib daddr type local jump ports }
      chain ports       { meta l4proto { tcp, udp, sctp } dnat ip to <key> map @<each port map> }
      chain raw-prerouting { type filter hook prerouting priority raw; policy accept;
                          iifname != "lo" ip daddr 127.0.0.0/8 drop }       # no 127.x from outside
      set encrypted-vnis { typeof @th,96,24 ; }           # VNIs of encrypted overlay networks here
      # only while encrypted-vnis is not empty (no hook on the input path otherwise):
      chain vxlan-input { type filter hook input priority raw; policy accept;
                          iifname != "cnmwg0" udp dport 4789 @th,96,24 @encrypted-vnis counter drop }
    }

The kernel's VXLAN socket takes a frame from whoever sends it: an encrypted overlay
network's frames arrive through the WireGuard interface (``cnmwg0``), and a plain VXLAN
frame from the underlay with that network's VNI would otherwise be decapsulated into it.
The VNI is bytes 4-6 of the VXLAN header, which follows the 8-byte UDP header: 24 bits
at bit 96 of the transport header (``@th,96,24``).  Each encrypted network's data plane
on this host is one element of ``encrypted-vnis``.  The chain ``vxlan-input`` exists only
while the set has an element (``vxlan_guard_lines``): a host without an encrypted network
pays nothing on its input hook for it.

Every network element carries ``comment "cnm:<network id> (<network name>)"``; every port
element ``comment "cnm:<endpoint id> (<container> on <network>)"``: the tag owns, the names
are for people (``common.comment_owner`` reads the tag back, ignoring them).  Idempotence without nft's ``destroy`` (nft >= 1.0.8;
Debian 12 has 1.0.6) uses nft's own idempotent verbs: ``add X; delete X`` deletes X
whether or not it existed.

The last release (v0.1.0) dispatched from four verdict maps (``LEGACY_MAPS``) to three
chains per network (``n-<id12>-in|out|nat``).  On a table still holding them, setup
leaves the old rules serving and ``render_sync`` swaps to this layout in one
transaction, so no packet ever meets a half-built table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cnm.errors import FirewallError, InvalidArgument
from cnm.firewall.api import BridgeRules, PortRule
from cnm.firewall.common import PORT_PROTOCOLS, check_ifname, check_owner, check_port_rule, owner_comment

TABLE = "cnm"
FAMILY = "ip"  # the IPv4 table
# IPv6 has a table of its own, ``ip6 cnm``, of the same layout (see ``setup6_lines``):
# the IPv4 table stays exactly what earlier releases made (no migration on upgrade,
# nothing a v4-only network pays for), and a v4-only network has no element in it.
FAMILY6 = "ip6"

USER_CHAIN = "user"
FORWARD_CHAIN = "forward"
POSTROUTING_CHAIN = "postrouting"
PREROUTING_CHAIN = "prerouting"  # DNAT of traffic arriving for a local address
OUTPUT_CHAIN = "output"  # DNAT of the host's own traffic to a local address
PORTS_CHAIN = "ports"  # the four map lookups, jumped to from both
RAW_CHAIN = "raw-prerouting"  # drops 127.0.0.0/8 arriving from outside
VXLAN_CHAIN = "vxlan-input"  # drops plain VXLAN for encrypted networks' VNIs
SET_ENCRYPTED_VNIS = "encrypted-vnis"  # the VNIs of encrypted overlay networks on this host
VXLAN_PORT = 4789  # IANA's VXLAN port, the overlay's
# The overlay's WireGuard interface (drivers.overlay_crypt.IFNAME): the only way in for an
# encrypted network's frames.
TUNNEL_IFNAME = "cnmwg0"
VNI_PAYLOAD = "@th,96,24"  # the VXLAN header's VNI: bytes 4-6 after the 8-byte UDP header
MAX_VNI = (1 << 24) - 1

# The network sets.  Their keys are bridge names, so a network is found by its bridge
# and a removal needs only what was installed.
SET_BRIDGES = "bridges"  # every bridge: nothing else enters one
SET_SAME_BRIDGE = "same-bridge"  # "<br>" . "<br>": traffic routed back into its own bridge
SET_INTERNAL = "internal"  # nothing leaves these bridges, no published port enters them
SET_ICC = "icc"  # containers of these bridges may talk through the gateway
SET_MASQUERADE = "masquerading"  # traffic leaving these bridges is masqueraded
# "<br>" . <subnet> of every network that is not internal: the sources cnm masquerades
# (with SET_MASQUERADE) and the hairpin of published ports.  An interval set (the kernel's
# pipapo): nft 1.0.6 reads all of it back to delete from it, so a network removal costs
# ~15 µs more per network there, and the kernel copies its lookup table in each
# transaction that changes it (~0.1 ms per 1,000 networks); the other sets are hashes.
SET_SUBNETS = "subnets"
NETWORK_SETS: dict[str, tuple[str, ...]] = {  # name -> the types its keys concatenate
    SET_BRIDGES: ("ifname",),
    SET_SAME_BRIDGE: ("ifname", "ifname"),
    SET_INTERNAL: ("ifname",),
    SET_ICC: ("ifname",),
    SET_MASQUERADE: ("ifname",),
    SET_SUBNETS: ("ifname", "ipv4_addr"),
}
# IPv6 only: bridges whose v6 subnet is routed, not masqueraded (gateway_mode_ipv6=routed),
# and the (container address . protocol . port) of every v6 published port, which the
# world may reach directly on a routed network (Docker's routed mode: no NAT needed).
SET_ROUTED = "routed"
SET_PUBLISHED = "published"
NETWORK_SETS6: dict[str, tuple[str, ...]] = {
    **{name: kinds for name, kinds in NETWORK_SETS.items() if name != SET_SUBNETS},
    SET_SUBNETS: ("ifname", "ipv6_addr"),
    SET_ROUTED: ("ifname",),
}
_INTERVAL_SETS = frozenset({SET_SUBNETS})


def network_sets(family: str = FAMILY) -> dict[str, tuple[str, ...]]:
    """The network sets of table ``family`` (``ip`` or ``ip6``)."""
    return NETWORK_SETS6 if family == FAMILY6 else NETWORK_SETS


def _set_spec(name: str, family: str = FAMILY) -> str:
    flags = " flags interval ;" if name in _INTERVAL_SETS else ""
    return f"type {' . '.join(network_sets(family)[name])} ;{flags}"


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

PORT_MAPS6: dict[str, str] = {
    name: spec.replace("ipv4_addr", "ipv6_addr") for name, spec in PORT_MAPS.items()
}
_PORT_MAP_KEYS6 = {name: key.replace("ip daddr", "ip6 daddr") for name, key in _PORT_MAP_KEYS.items()}
PUBLISHED_SPEC = "type ipv6_addr . inet_proto . inet_service ;"


def port_maps(family: str = FAMILY) -> dict[str, str]:
    """The port maps of table ``family`` (``ip`` or ``ip6``): name -> type and flags."""
    return PORT_MAPS6 if family == FAMILY6 else PORT_MAPS


LOOPBACK = "127.0.0.0/8"
# the forward rule that keeps an internal network's traffic inside its bridge
_INTERNAL_DROP = f"iifname @{SET_INTERNAL} iifname . oifname != @{SET_SAME_BRIDGE} drop"
# Docker does not DNAT what comes from a link-local address (ip6tables: ! -s fe80::/10)
LINK_LOCAL6 = "fe80::/10"

BASE_CHAINS: dict[str, str] = {
    FORWARD_CHAIN: "type filter hook forward priority filter ; policy accept ;",
    POSTROUTING_CHAIN: "type nat hook postrouting priority srcnat ; policy accept ;",
    PREROUTING_CHAIN: "type nat hook prerouting priority dstnat ; policy accept ;",
    # nft accepts the name "dstnat" only on prerouting; -100 is its value
    OUTPUT_CHAIN: "type nat hook output priority -100 ; policy accept ;",
    RAW_CHAIN: "type filter hook prerouting priority raw ; policy accept ;",
}
# Not a fixed chain: made with the first encrypted VNI, deleted with the last.
VXLAN_CHAIN_SPEC = "type filter hook input priority raw ; policy accept ;"
# Chains that belong to the table's skeleton (all of them, now that no network has one).
FIXED_CHAINS = frozenset({USER_CHAIN, PORTS_CHAIN, *BASE_CHAINS})
# The IPv6 table: no loopback DNAT (the kernel cannot DNAT from ::1: cnmd's proxy serves
# [::1]) and no VXLAN guard (overlay networks are IPv4 only).
BASE_CHAINS6 = {c: spec for c, spec in BASE_CHAINS.items() if c not in (RAW_CHAIN, VXLAN_CHAIN)}
FIXED_CHAINS6 = frozenset({USER_CHAIN, PORTS_CHAIN, *BASE_CHAINS6})

# v0.1.0's layout: verdict maps keyed by bridge name, jumping to per-network chains.
LEGACY_MAPS = ("forward-into-bridge", "forward-from-bridge", "nat-from-bridge", "nat-into-bridge")
# nft 1.0.6 does not report chain comments in JSON, so v0.1.0's chains are known by their
# names (derived from their owner's id); anything else a user put into cnm's table is
# left alone.
_LEGACY_CHAIN_RE = re.compile(r"^n-[0-9A-Za-z][0-9A-Za-z_-]{0,11}-(in|out|nat)$")


def is_legacy_chain(name: str) -> bool:
    """Whether ``name`` is one of v0.1.0's per-network chains (``n-<id12>-in|out|nat``)."""
    return bool(_LEGACY_CHAIN_RE.match(name))


def _script(lines: Iterable[str]) -> str:
    return "\n".join(lines) + "\n"


# -- skeleton ---------------------------------------------------------------------------


def setup_lines(table: str = TABLE, userland_proxy: bool = False, legacy: bool = False) -> list[str]:
    """Create the table, sets, maps, user chain and base chains if missing, and (re)write
    the base chains' rules.  Never flushes the user chain, a set or a map.

    ``userland_proxy``: the host's own traffic to 127.0.0.0/8 and traffic arriving from a
    cnm bridge are left to the proxy (not DNATed); otherwise the kernel DNATs them too.
    ``legacy``: the table still holds v0.1.0's layout, whose rules keep serving (the
    base chains are left as they are) until ``render_sync`` replaces them."""
    return setup4_lines(table, userland_proxy, legacy) + setup6_lines(table, userland_proxy)


def setup4_lines(table: str = TABLE, userland_proxy: bool = False, legacy: bool = False) -> list[str]:
    """``setup_lines`` for the IPv4 table."""
    t = f"{FAMILY} {table}"
    lines = [
        f"add table {t}",
        f'add chain {t} {USER_CHAIN} {{ comment "yours: evaluated first, never flushed by cnm" ; }}',
    ]
    lines += [f"add set {t} {s} {{ {_set_spec(s)} }}" for s in NETWORK_SETS]
    lines += [f"add map {t} {m} {{ {spec} }}" for m, spec in PORT_MAPS.items()]
    lines.append(f"add set {t} {SET_ENCRYPTED_VNIS} {{ typeof {VNI_PAYLOAD} ; }}")
    for chain, spec in BASE_CHAINS.items():
        lines.append(f"add chain {t} {chain} {{ {spec} }}")
    lines.append(f"add chain {t} {PORTS_CHAIN}")
    if legacy:
        return lines
    # flush + re-add keeps setup idempotent (no duplicated rules)
    lines += [f"flush chain {t} {chain}" for chain in (*BASE_CHAINS, PORTS_CHAIN)]
    lines += [
        # the user's verdict comes first; an accept there ends this chain (a drop is final)
        f"add rule {t} {FORWARD_CHAIN} jump {USER_CHAIN}",
        f"add rule {t} {FORWARD_CHAIN} ct state established,related accept",
        # Nothing leaves an internal network for another interface, a published port
        # of another network included (Docker's isolation drops it before its DNAT accept).
        f"add rule {t} {FORWARD_CHAIN} {_INTERNAL_DROP}",
        # Into a bridge: that is where isolation drops, whatever the source.  A
        # published port (DNATed by cnm's prerouting/output chains) is public, for
        # neighbours too, so it comes before icc; no published port enters an internal
        # network.  Traffic routed from a bridge back into it follows icc (bridged
        # traffic never reaches this hook: the bridge driver isolates its ports).
        f"add rule {t} {FORWARD_CHAIN} oifname @{SET_BRIDGES} oifname != @{SET_INTERNAL} ct status dnat accept",
        f"add rule {t} {FORWARD_CHAIN} iifname . oifname @{SET_SAME_BRIDGE} oifname @{SET_ICC} accept",
        f"add rule {t} {FORWARD_CHAIN} oifname @{SET_BRIDGES} drop",
        # out of a bridge to any other interface: accepted (policy); internal: dropped above
        # From a bridge's own subnet to any other interface (another bridge included: a
        # published port reached through the host), when the network masquerades.
        f"add rule {t} {POSTROUTING_CHAIN} iifname . ip saddr @{SET_SUBNETS} iifname @{SET_MASQUERADE}"
        f" iifname . oifname != @{SET_SAME_BRIDGE} masquerade",
        # Hairpin: a container reaching a published port of its own bridge (its own, too)
        # through a host address; without it the reply would bypass the NAT.  Keyed by
        # the output interface: with br_netfilter loaded, a DNATed packet whose new
        # destination is on the bridge it came from is bridged, not routed, and its
        # postrouting hook sees no input interface.
        f"add rule {t} {POSTROUTING_CHAIN} oifname . ip saddr @{SET_SUBNETS} ct status dnat masquerade",
        # the host reaching a published port through 127.0.0.1 (kernel mode; route_localnet
        # lets the packet out of the bridge): the container must answer a real address
        f"add rule {t} {POSTROUTING_CHAIN} ip saddr {LOOPBACK} ct status dnat masquerade",
    ]
    if userland_proxy:
        # a container reaching a published port through the host's address, and the host
        # through 127.0.0.1, are answered by the proxy on the reserved socket
        lines.append(f"add rule {t} {PREROUTING_CHAIN} iifname @{SET_BRIDGES} return")
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


def setup6_lines(table: str = TABLE, userland_proxy: bool = False) -> list[str]:
    """``setup_lines`` for the IPv6 table: the IPv4 table's layout and rules, for the v6
    subnets of networks with IPv6, plus Docker's routed mode (``routed``: a v6 subnet
    the world reaches without NAT, for ICMPv6 and the published ports only)."""
    t = f"{FAMILY6} {table}"
    lines = [
        f"add table {t}",
        f'add chain {t} {USER_CHAIN} {{ comment "yours: evaluated first, never flushed by cnm" ; }}',
    ]
    lines += [f"add set {t} {s} {{ {_set_spec(s, FAMILY6)} }}" for s in NETWORK_SETS6]
    lines += [f"add map {t} {m} {{ {spec} }}" for m, spec in PORT_MAPS6.items()]
    lines.append(f"add set {t} {SET_PUBLISHED} {{ {PUBLISHED_SPEC} }}")
    lines += [f"add chain {t} {chain} {{ {spec} }}" for chain, spec in BASE_CHAINS6.items()]
    lines.append(f"add chain {t} {PORTS_CHAIN}")
    lines += [f"flush chain {t} {chain}" for chain in (*BASE_CHAINS6, PORTS_CHAIN)]
    lines += [
        f"add rule {t} {FORWARD_CHAIN} jump {USER_CHAIN}",
        f"add rule {t} {FORWARD_CHAIN} ct state established,related accept",
        f"add rule {t} {FORWARD_CHAIN} {_INTERNAL_DROP}",
        f"add rule {t} {FORWARD_CHAIN} oifname @{SET_BRIDGES} oifname != @{SET_INTERNAL} ct status dnat accept",
        f"add rule {t} {FORWARD_CHAIN} iifname . oifname @{SET_SAME_BRIDGE} oifname @{SET_ICC} accept",
        # routed mode (never internal: such a bridge is not in the set), from outside cnm's
        # bridges (other networks stay isolated): ICMPv6 and the published ports of its
        # containers, at their own addresses, as Docker's routed mode
        f"add rule {t} {FORWARD_CHAIN} oifname @{SET_ROUTED} iifname != @{SET_BRIDGES} meta l4proto ipv6-icmp accept",
        f"add rule {t} {FORWARD_CHAIN} oifname @{SET_ROUTED} iifname != @{SET_BRIDGES}"
        f" ip6 daddr . meta l4proto . th dport @{SET_PUBLISHED} accept",
        f"add rule {t} {FORWARD_CHAIN} oifname @{SET_BRIDGES} drop",
        f"add rule {t} {POSTROUTING_CHAIN} iifname . ip6 saddr @{SET_SUBNETS} iifname @{SET_MASQUERADE}"
        f" iifname . oifname != @{SET_SAME_BRIDGE} masquerade",
        f"add rule {t} {POSTROUTING_CHAIN} oifname . ip6 saddr @{SET_SUBNETS} ct status dnat masquerade",
    ]
    if userland_proxy:
        lines.append(f"add rule {t} {PREROUTING_CHAIN} iifname @{SET_BRIDGES} return")
    lines += [
        f"add rule {t} {PREROUTING_CHAIN} fib daddr type local jump {PORTS_CHAIN}",
        # [::1] is the proxy's: the kernel cannot route a DNATed packet from ::1
        f"add rule {t} {OUTPUT_CHAIN} ip6 daddr != ::1 fib daddr type local jump {PORTS_CHAIN}",
    ]
    lines += [
        f"add rule {t} {PORTS_CHAIN} ip6 saddr != {LINK_LOCAL6} meta l4proto {{ {', '.join(PORT_PROTOCOLS)} }}"
        f" dnat ip6 to {_PORT_MAP_KEYS6[m]} map @{m}"
        for m in PORT_MAPS6
    ]
    return lines


def base_rule_counts(userland_proxy: bool = False, family: str = FAMILY) -> dict[str, int]:
    """How many rules each fixed chain (the user chain aside) of table ``family`` holds
    after setup (for health checks)."""
    chains = BASE_CHAINS6 if family == FAMILY6 else BASE_CHAINS
    counts = dict.fromkeys([*chains, PORTS_CHAIN], 0)
    for line in setup_lines(userland_proxy=userland_proxy):
        parts = line.split()
        if parts[:2] == ["add", "rule"] and parts[2] == family:
            counts[parts[4]] += 1
    return counts


def render_setup(table: str = TABLE, userland_proxy: bool = False, legacy: bool = False) -> str:
    return _script(setup_lines(table, userland_proxy, legacy))


def render_teardown(table: str = TABLE) -> str:
    # "add" first so deleting an absent table is not an error
    return _script(
        [
            line
            for family in (FAMILY, FAMILY6)
            for line in (f"add table {family} {table}", f"delete table {family} {table}")
        ]
    )


# -- one network ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetElement:
    """One element of a network set: ``key`` in nft's syntax (``"br-x" . 10.0.0.0/24``),
    in the table of ``family`` (``ip`` or ``ip6``)."""

    set: str
    key: str
    family: str = FAMILY


def network_elements(rules: BridgeRules) -> list[SetElement]:
    """The set elements that make up network ``rules`` (see the module's layout)."""
    check_owner(rules.owner)
    br = f'"{check_ifname(rules.bridge)}"'
    out = [SetElement(SET_BRIDGES, br), SetElement(SET_SAME_BRIDGE, f"{br} . {br}")]
    if rules.internal:
        out.append(SetElement(SET_INTERNAL, br))
    if rules.icc:
        out.append(SetElement(SET_ICC, br))
    if not rules.internal:
        if rules.masquerade:
            out.append(SetElement(SET_MASQUERADE, br))
        out.append(SetElement(SET_SUBNETS, f"{br} . {rules.subnet}"))
    if rules.subnet6 is not None:
        out += _network_elements6(rules, br)
    return out


def _network_elements6(rules: BridgeRules, br: str) -> list[SetElement]:
    """The IPv6 table's elements of a network with a v6 subnet: as in the IPv4 table,
    except that a routed v6 subnet (``routed6``) is in ``routed``, not masqueraded."""
    out = [SetElement(SET_BRIDGES, br, FAMILY6), SetElement(SET_SAME_BRIDGE, f"{br} . {br}", FAMILY6)]
    if rules.internal:
        out.append(SetElement(SET_INTERNAL, br, FAMILY6))
    if rules.icc:
        out.append(SetElement(SET_ICC, br, FAMILY6))
    if not rules.internal:
        if rules.routed6:
            out.append(SetElement(SET_ROUTED, br, FAMILY6))
        elif rules.masquerade:
            out.append(SetElement(SET_MASQUERADE, br, FAMILY6))
        out.append(SetElement(SET_SUBNETS, f"{br} . {rules.subnet6}", FAMILY6))
    return out


def network_lines(
    owner: str, old: Iterable[SetElement], new: Iterable[SetElement], table: str = TABLE, label: str = ""
) -> list[str]:
    """Replace network ``owner``'s elements ``old`` with ``new`` in one transaction whose
    size depends only on this network: those of ``old`` not in ``new`` are deleted
    whether or not they are still there, then every one of ``new`` is added (adding an
    element that is there is no error).  ``label``: the network's name, in the comments."""
    tag = owner_comment(check_owner(owner), label)
    new = list(dict.fromkeys(new))
    lines = []
    for e in dict.fromkeys(old):
        if e not in new:  # deleted first: a subnet's new range may overlap its old one
            lines.append(f'add element {e.family} {table} {e.set} {{ {e.key} comment "{tag}" }}')
            lines.append(f"delete element {e.family} {table} {e.set} {{ {e.key} }}")
    lines += [f'add element {e.family} {table} {e.set} {{ {e.key} comment "{tag}" }}' for e in new]
    return lines


def render_network(
    owner: str, old: Iterable[SetElement], new: Iterable[SetElement], table: str = TABLE, label: str = ""
) -> str:
    return _script(network_lines(owner, old, new, table, label))


def render_add_network(rules: BridgeRules, previous: BridgeRules | None = None, table: str = TABLE) -> str:
    """Install network ``rules`` (replacing ``previous``, what it last was, if known)."""
    old = network_elements(previous) if previous is not None else []
    return render_network(rules.owner, old, network_elements(rules), table, rules.name)


def render_remove_network(owner: str, elements: Iterable[SetElement], table: str = TABLE) -> str:
    """Remove network ``owner``'s ``elements``, whether or not they are still there."""
    return render_network(owner, elements, (), table)


def element_key_from_json(set_name: str, value: Any, family: str = FAMILY) -> str:
    """nft's JSON form of a network set's key (``{"concat": ["br-x", {"prefix": …}]}``)
    back to the text it was written as (``"br-x" . 10.0.0.0/24``)."""
    parts = value["concat"] if isinstance(value, dict) and "concat" in value else [value]
    kinds = network_sets(family)[set_name]
    if len(parts) != len(kinds):
        raise FirewallError(f"nft: unexpected key in set {set_name}: {value!r}")
    return " . ".join(
        f'"{check_ifname(p)}"' if kind == "ifname" and isinstance(p, str) else port_key_from_json(p)
        for kind, p in zip(kinds, parts, strict=True)
    )


# -- whole table ------------------------------------------------------------------------


def render_sync(
    networks: Sequence[BridgeRules],
    existing: Iterable[str] = (),
    table: str = TABLE,
    ports: Sequence[PortRule] = (),
    userland_proxy: bool = False,
    vnis: Mapping[str, int] | None = None,
) -> str:
    """One transaction that leaves the table holding exactly ``networks``, ``ports`` and
    ``vnis`` (encrypted overlay networks' VNIs by network id):
    the skeleton (re)made, every set and map emptied and refilled.  ``existing`` names the
    table's chains and maps (from a terse listing): v0.1.0's dispatch maps and
    per-network chains among them are deleted, after the base chains that used them were
    rewritten, in the same transaction.  The user chain is created if missing and
    otherwise left alone."""
    t = f"{FAMILY} {table}"
    elements = port_elements_by_owner(ports)
    seen_bridges: dict[str, str] = {}
    for rules in networks:
        other = seen_bridges.setdefault(rules.bridge, rules.owner)
        if other != rules.owner:
            raise InvalidArgument(f"bridge {rules.bridge} claimed by networks {other} and {rules.owner}")
    existing = set(existing)
    t6 = f"{FAMILY6} {table}"
    lines = setup_lines(table, userland_proxy)
    lines += [f"flush set {t} {s}" for s in NETWORK_SETS]
    lines += [f"flush map {t} {m}" for m in PORT_MAPS]
    lines += [f"flush set {t6} {s}" for s in (*NETWORK_SETS6, SET_PUBLISHED)]
    lines += [f"flush map {t6} {m}" for m in PORT_MAPS6]
    lines.append(f"flush set {t} {SET_ENCRYPTED_VNIS}")
    # v0.1.0's maps first (their elements hold its chains), then its chains
    lines += [f"delete map {t} {m}" for m in LEGACY_MAPS if m in existing]
    for chain in sorted(c for c in existing if is_legacy_chain(c)):
        lines += [f"flush chain {t} {chain}", f"delete chain {t} {chain}"]
    for rules in networks:
        lines += network_lines(rules.owner, (), network_elements(rules), table, rules.name)
    labels = {rule.owner: rule.label for rule in ports}
    for owner, elems in elements.items():
        lines += ports_lines(owner, (), elems, table, labels.get(owner, ""))
    for owner, vni in (vnis or {}).items():
        lines += vni_lines(owner, vni, add=True, table=table)
    if vnis or VXLAN_CHAIN in existing:
        lines += vxlan_guard_lines(bool(vnis), table)
    return _script(lines)


# -- encrypted overlay networks ------------------------------------------------------------


def check_vni(vni: int) -> int:
    """``vni`` when it is a VXLAN network identifier (1..2^24-1), else InvalidArgument."""
    if isinstance(vni, bool) or not isinstance(vni, int) or not 0 < vni <= MAX_VNI:
        raise InvalidArgument(f"invalid VXLAN VNI {vni!r}: expected 1..{MAX_VNI}")
    return vni


def vni_lines(owner: str, vni: int, add: bool, table: str = TABLE) -> list[str]:
    """Add (or delete, whether or not it is there) network ``owner``'s VNI in
    ``encrypted-vnis``: one element, tagged with the owner."""
    t = f"{FAMILY} {table}"
    element = f'add element {t} {SET_ENCRYPTED_VNIS} {{ {check_vni(vni)} comment "{owner_comment(check_owner(owner))}" }}'
    if add:
        return [element]
    return [element, f"delete element {t} {SET_ENCRYPTED_VNIS} {{ {vni} }}"]


def vxlan_guard_lines(on: bool, table: str = TABLE) -> list[str]:
    """Make ``vxlan-input`` hold its one rule (``on``), or delete the chain whether or not
    it is there.  Its hook is on every packet for this host, so it exists only while
    ``encrypted-vnis`` has an element."""
    t = f"{FAMILY} {table}"
    lines = [f"add chain {t} {VXLAN_CHAIN} {{ {VXLAN_CHAIN_SPEC} }}", f"flush chain {t} {VXLAN_CHAIN}"]
    if not on:
        return [*lines, f"delete chain {t} {VXLAN_CHAIN}"]
    # Plain VXLAN from the underlay for an encrypted network (the kernel's VXLAN socket
    # does not check where a frame came from); the counter shows the attempts.
    rule = f'iifname != "{TUNNEL_IFNAME}" udp dport {VXLAN_PORT} {VNI_PAYLOAD} @{SET_ENCRYPTED_VNIS} counter drop'
    return [*lines, f"add rule {t} {VXLAN_CHAIN} {rule}"]


def render_vni(owner: str, vni: int, add: bool, table: str = TABLE, guard: bool | None = None) -> str:
    """``vni_lines``, then, when ``guard`` is not None, ``vxlan_guard_lines(guard)``: one
    transaction, so the VNI and its drop rule come (and go) together."""
    lines = vni_lines(owner, vni, add, table)
    if guard is not None:
        lines += vxlan_guard_lines(guard, table)
    return _script(lines)


# -- published ports --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PortElement:
    """One element of a port map (or, with no ``data``, of the set ``published``):
    ``key`` and ``data`` in nft's syntax, in the table of ``family``."""

    map: str
    key: str  # e.g. "tcp . 8000-8010" or "127.0.0.1 . udp . 53"
    data: str  # e.g. "10.0.0.2" (same port) or "10.0.0.2 . 80"; "" in a set
    family: str = FAMILY


def port_elements(rule: PortRule) -> list[PortElement]:
    """The map elements of one ``PortRule``: one interval element for a range published
    on the same container ports, else one hash element per port."""
    first, last = check_port_rule(rule)
    family = FAMILY6 if rule.container_ip.version == 6 else FAMILY
    prefix = f"{rule.host_ip} . " if rule.host_ip is not None else ""
    shift = rule.container_port - first
    if rule.container_port == first and first != last:
        name = MAP_PORTS_IP_RANGE if rule.host_ip is not None else MAP_PORTS_ANY_RANGE
        out = [PortElement(name, f"{prefix}{rule.protocol} . {first}-{last}", str(rule.container_ip), family)]
    else:
        name = MAP_PORTS_IP if rule.host_ip is not None else MAP_PORTS_ANY
        out = [
            PortElement(name, f"{prefix}{rule.protocol} . {p}", f"{rule.container_ip} . {p + shift}", family)
            for p in range(first, last + 1)
        ]
    if family == FAMILY6:  # reachable directly when the network is routed (SET_ROUTED)
        out += [
            PortElement(SET_PUBLISHED, f"{rule.container_ip} . {rule.protocol} . {p + shift}", "", family)
            for p in range(first, last + 1)
        ]
    return list(dict.fromkeys(out))


def port_elements_by_owner(rules: Iterable[PortRule]) -> dict[str, list[PortElement]]:
    """Group the elements of ``rules`` by owner (endpoint id), checking each id."""
    out: dict[str, list[PortElement]] = {}
    for rule in rules:
        out.setdefault(check_owner(rule.owner), []).extend(port_elements(rule))
    # two ports published on the same container port share its ``published`` element
    return {owner: list(dict.fromkeys(elems)) for owner, elems in out.items()}


def ports_lines(
    owner: str, old: Iterable[PortElement], new: Iterable[PortElement], table: str = TABLE, label: str = ""
) -> list[str]:
    """Replace endpoint ``owner``'s elements ``old`` (which must be present) with ``new``,
    in one transaction whose size depends only on this endpoint's ports.  ``label``:
    "<container> on <network>", in the comments."""
    tag = owner_comment(check_owner(owner), label)
    lines = [f"delete element {e.family} {table} {e.map} {{ {e.key} }}" for e in old]
    lines += [
        f'add element {e.family} {table} {e.map} {{ {e.key} comment "{tag}"{f" : {e.data}" if e.data else ""} }}'
        for e in new
    ]
    return lines


def render_ports(
    owner: str, old: Iterable[PortElement], new: Iterable[PortElement], table: str = TABLE, label: str = ""
) -> str:
    return _script(ports_lines(owner, old, new, table, label))


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
