"""Render cnm's nftables rules from data: ``BridgeRules`` in, ``nft -f`` script text out.

Pure functions, no I/O.  The layout follows Docker 29's nftables backend (one table of
its own, verdict maps keyed by interface name dispatching to per-network chains), so the
cost of adding or removing one network never depends on how many others exist, and
traffic that does not touch a cnm bridge never walks a per-network rule::

    table ip cnm {
      map forward-into-bridge { type ifname : verdict }   # oifname <br> -> jump n-<id12>-in
      map forward-from-bridge { type ifname : verdict }   # iifname <br> -> jump n-<id12>-out
      map nat-from-bridge     { type ifname : verdict }   # iifname <br> -> jump n-<id12>-nat
      chain user        { }   # the user's chain (like DOCKER-USER): created once, never flushed
      chain forward     { type filter hook forward priority filter; policy accept;
                          jump user
                          ct state established,related accept
                          oifname vmap @forward-into-bridge
                          iifname vmap @forward-from-bridge }
      chain postrouting { type nat hook postrouting priority srcnat; policy accept;
                          iifname vmap @nat-from-bridge }
      chain prerouting  { type nat hook prerouting priority dstnat; policy accept; }  # issue 3: DNAT
      chain output      { type nat hook output priority -100; policy accept; }           # issue 3: DNAT
      chain n-<id12>-in  { ... }   # traffic forwarded into bridge <br>
      chain n-<id12>-out { ... }   # traffic forwarded out of bridge <br>
      chain n-<id12>-nat { ... }   # source NAT of traffic leaving bridge <br>
    }

Every per-network chain, rule and map element carries ``comment "cnm:<network id>"``.
Idempotence without nft's ``destroy`` (nft >= 1.0.8; Debian 12 has 1.0.6) uses nft's
own idempotent verbs: ``add X; delete X`` deletes X whether or not it existed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cnm.errors import InvalidArgument
from cnm.firewall.api import BridgeRules

TABLE = "cnm"
FAMILY = "ip"  # IPv6 ("ip6" table of the same layout) comes later

USER_CHAIN = "user"
FORWARD_CHAIN = "forward"
POSTROUTING_CHAIN = "postrouting"
# Port publishing (issue 3) hangs its DNAT dispatch (e.g. a ``fib daddr type local`` jump
# or a ``th dport . ip daddr`` map) on these two; they are created empty now so the hook
# order and names are settled.
PREROUTING_CHAIN = "prerouting"
OUTPUT_CHAIN = "output"

MAP_INTO_BRIDGE = "forward-into-bridge"  # oifname -> n-<id12>-in
MAP_FROM_BRIDGE = "forward-from-bridge"  # iifname -> n-<id12>-out
MAP_NAT_FROM_BRIDGE = "nat-from-bridge"  # iifname -> n-<id12>-nat
MAPS = (MAP_INTO_BRIDGE, MAP_FROM_BRIDGE, MAP_NAT_FROM_BRIDGE)

BASE_CHAINS: dict[str, str] = {
    FORWARD_CHAIN: "type filter hook forward priority filter ; policy accept ;",
    POSTROUTING_CHAIN: "type nat hook postrouting priority srcnat ; policy accept ;",
    PREROUTING_CHAIN: "type nat hook prerouting priority dstnat ; policy accept ;",
    # nft accepts the name "dstnat" only on prerouting; -100 is its value
    OUTPUT_CHAIN: "type nat hook output priority -100 ; policy accept ;",
}
# Chains that belong to the table's skeleton rather than to one network.
FIXED_CHAINS = frozenset({USER_CHAIN, *BASE_CHAINS})

OWNER_TAG = "cnm:"
_OWNER_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_-]{0,99}$")
# Linux interface names: 1-15 bytes, no '/', ':' or whitespace; we also refuse quotes
# and backslashes so a name can never break out of an nft string.
_IFNAME_RE = re.compile(r'^[^\s/:"\\]{1,15}$')


def owner_comment(owner: str) -> str:
    """The tag every object owned by network ``owner`` carries."""
    return OWNER_TAG + owner


def _check_owner(owner: str) -> str:
    if not _OWNER_RE.match(owner):
        raise InvalidArgument(f"invalid firewall owner id {owner!r}")
    return owner


def _check_ifname(name: str) -> str:
    if not _IFNAME_RE.match(name):
        raise InvalidArgument(f"invalid bridge name {name!r} for the firewall")
    return name


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
        )


# What chains_for() produces.  nft 1.0.6 does not report chain comments in JSON, so the
# owner of a chain is read from its name (derived from the owner id) when sync looks for
# stale ones; anything else a user put into cnm's table is left alone.
_NETWORK_CHAIN_RE = re.compile(r"^n-[0-9A-Za-z][0-9A-Za-z_-]{0,11}-(in|out|nat)$")


def is_network_chain(name: str) -> bool:
    return bool(_NETWORK_CHAIN_RE.match(name))


def chains_for(owner: str) -> NetworkChains:
    prefix = f"n-{_check_owner(owner)[:12]}"
    return NetworkChains(f"{prefix}-in", f"{prefix}-out", f"{prefix}-nat")


def _script(lines: Iterable[str]) -> str:
    return "\n".join(lines) + "\n"


# -- skeleton ---------------------------------------------------------------------------


def setup_lines(table: str = TABLE) -> list[str]:
    """Create the table, maps, user chain and base chains if missing, and (re)write the
    base chains' dispatch rules.  Never flushes the user chain."""
    t = f"{FAMILY} {table}"
    lines = [
        f"add table {t}",
        f'add chain {t} {USER_CHAIN} {{ comment "yours: evaluated first, never flushed by cnm" ; }}',
    ]
    lines += [f"add map {t} {m} {{ type ifname : verdict ; }}" for m in MAPS]
    for chain, spec in BASE_CHAINS.items():
        lines.append(f"add chain {t} {chain} {{ {spec} }}")
        # flush + re-add keeps setup idempotent (no duplicated dispatch rules)
        lines.append(f"flush chain {t} {chain}")
    lines += [
        # the user's verdict comes first; an accept there ends this chain (a drop is final)
        f"add rule {t} {FORWARD_CHAIN} jump {USER_CHAIN}",
        f"add rule {t} {FORWARD_CHAIN} ct state established,related accept",
        # into a bridge first: that is where isolation drops, whatever the source
        f"add rule {t} {FORWARD_CHAIN} oifname vmap @{MAP_INTO_BRIDGE}",
        f"add rule {t} {FORWARD_CHAIN} iifname vmap @{MAP_FROM_BRIDGE}",
        f"add rule {t} {POSTROUTING_CHAIN} iifname vmap @{MAP_NAT_FROM_BRIDGE}",
    ]
    return lines


def base_rule_counts() -> dict[str, int]:
    """How many rules each base chain holds after setup (for health checks)."""
    counts = dict.fromkeys(BASE_CHAINS, 0)
    for line in setup_lines():
        parts = line.split()
        if parts[:2] == ["add", "rule"]:
            counts[parts[4]] += 1
    return counts


def render_setup(table: str = TABLE) -> str:
    return _script(setup_lines(table))


def render_teardown(table: str = TABLE) -> str:
    # "add" first so deleting an absent table is not an error
    return _script([f"add table {FAMILY} {table}", f"delete table {FAMILY} {table}"])


# -- one network ------------------------------------------------------------------------


def network_rules(rules: BridgeRules) -> dict[str, list[str]]:
    """The rule bodies of each of one network's chains (without ``add rule …``)."""
    owner = _check_owner(rules.owner)
    br = f'"{_check_ifname(rules.bridge)}"'
    tag = f'comment "{owner_comment(owner)}"'
    ch = chains_for(owner)
    # Dispatched on oifname == br: forwarded into the bridge (replies were accepted
    # before the dispatch).  Routed bridge->same bridge traffic follows icc.
    inbound = [
        f"iifname {br} {'accept' if rules.icc else 'drop'} {tag}",
        # issue 3 inserts published-port accepts here, before the default drop
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
    owner = _check_owner(rules.owner)
    bridge = _check_ifname(rules.bridge)
    tag = owner_comment(owner)
    lines = []
    for chain, body in network_rules(rules).items():
        lines.append(f'add chain {t} {chain} {{ comment "{tag}" ; }}')
        lines.append(f"flush chain {t} {chain}")
        lines += [f"add rule {t} {chain} {rule}" for rule in body]
    if previous_bridge and previous_bridge != bridge:
        lines += _drop_elements(table, owner, _check_ifname(previous_bridge))
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
        lines += _drop_elements(table, owner, _check_ifname(bridge))
    for c in chains:
        lines += [f"flush chain {t} {c}", f"delete chain {t} {c}"]
    return lines


def render_remove_network(owner: str, bridges: Iterable[str] = (), table: str = TABLE) -> str:
    return _script(remove_lines(owner, bridges, table))


# -- whole table ------------------------------------------------------------------------


def render_sync(
    networks: Sequence[BridgeRules], existing_chains: Iterable[str] = (), table: str = TABLE
) -> str:
    """One transaction that leaves the table holding exactly ``networks``: the skeleton
    (re)made, all map elements replaced, every non-skeleton chain in ``existing_chains``
    that is a per-network chain of cnm's and that no listed network owns deleted, the listed networks (re)installed.  The user
    chain is created if missing and otherwise left alone."""
    t = f"{FAMILY} {table}"
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
    lines = setup_lines(table)
    lines += [f"flush map {t} {m}" for m in MAPS]
    stale = {c for c in existing_chains if is_network_chain(c)} - wanted
    for chain in sorted(stale):
        lines += [f"flush chain {t} {chain}", f"delete chain {t} {chain}"]
    for rules in networks:
        lines += network_lines(rules, None, table)
    return _script(lines)
