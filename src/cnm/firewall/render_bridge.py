"""Render cnm's anti-spoofing rules for bridge ports from data: ``PortGuard`` in, ``nft -f``
script text out.

Pure functions, no I/O.  One table of cnm's own in nftables' ``bridge`` family, whichever
backend does the L3 rules (this is what ebtables would do, on every kernel that has
nftables).  The rules are fixed and read two sets; a guarded port is a few set elements,
so adding or removing one never depends on how many others exist, and a frame costs at
most three hash lookups however many containers there are::

    table bridge cnm {
      set ports { type ifname ; }                              # every guarded port
      set addrs { type ifname . ether_addr . ipv4_addr ; }     # port . its MAC . each address
      chain prerouting { type filter hook prerouting priority filter ; policy accept ;
                         iifname @ports jump port-guard }
      chain port-guard { ether type ip iifname . ether saddr . ip saddr @addrs return
                         ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4
                           iifname . ether saddr . arp saddr ip @addrs
                           iifname . arp saddr ether . arp saddr ip @addrs return
                         drop }
    }

Every frame a port sends passes the bridge's prerouting hook, whether it is then
forwarded to another port or delivered to the host, so neighbours and the host are both
protected.  A port is put into ``ports`` before its veth is created and taken out only
after the veth is retired: no frame of a cnm port ever goes unchecked, and ports that are
not cnm's (the host's, another tool's) are never touched.  A frame from a guarded port
passes only as IPv4 from the port's own MAC and addresses, or as Ethernet/IPv4 ARP whose
frame source and ARP sender are the port's MAC and whose sender address is the port's;
everything else (another MAC, another address, 0.0.0.0 probes, IPv6 -- off in containers
until networks carry it --, VLAN-tagged frames) is dropped.

The table, chains and sets carry a ``cnm:`` comment; every element carries
``comment "cnm:<endpoint id>"``.  Idempotence without nft's ``destroy`` (nft >= 1.0.8;
Debian 12 has 1.0.6) uses nft's own idempotent verbs: ``add X; delete X`` deletes X
whether or not it existed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from cnm.errors import FirewallError, InvalidArgument
from cnm.firewall.api import PortGuard
from cnm.firewall.common import check_ifname, check_owner, owner_comment

TABLE = "cnm"
FAMILY = "bridge"

PREROUTING_CHAIN = "prerouting"
GUARD_CHAIN = "port-guard"
CHAINS = (PREROUTING_CHAIN, GUARD_CHAIN)

SET_PORTS = "ports"  # ifname: the ports cnm guards
SET_ADDRS = "addrs"  # ifname . MAC . IPv4: what each port may send from
SETS: dict[str, str] = {
    SET_PORTS: "type ifname ;",
    SET_ADDRS: "type ifname . ether_addr . ipv4_addr ;",
}

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def _script(lines: Iterable[str]) -> str:
    return "\n".join(lines) + "\n"


def _comment(what: str) -> str:
    return f'comment "{owner_comment(what)}"'


# -- checks -----------------------------------------------------------------------------


def check_mac(mac: str) -> str:
    """A unicast Ethernet address, lower case (the only kind a port may send from)."""
    low = mac.strip().lower()
    if not _MAC_RE.match(low):
        raise InvalidArgument(f"invalid MAC address {mac!r} for a guarded port")
    if int(low[:2], 16) & 1 or low == "00:00:00:00:00:00":
        raise InvalidArgument(f"MAC address {mac} of a guarded port must be a unicast address")
    return low


def check_port(name: str) -> str:
    try:
        return check_ifname(name)
    except InvalidArgument:
        raise InvalidArgument(f"invalid port name {name!r} for the anti-spoofing guard") from None


def check_address(address: object) -> IPv4Address:
    """A unicast IPv4 address a port may send from: not 0.0.0.0, multicast (224/4),
    loopback (127/8) or the broadcast address.  Tested on the integer, without building
    addresses: a restore checks the address of every endpoint."""
    if not isinstance(address, IPv4Address):
        raise InvalidArgument(f"invalid IPv4 address {address!r} for a guarded port")
    n = int(address)
    if n == 0 or n >> 28 == 0xE or n >> 24 == 127 or n == 0xFFFFFFFF:
        raise InvalidArgument(f"{address} cannot be the address of a guarded port")
    return address


# -- skeleton ---------------------------------------------------------------------------


def setup_lines(table: str = TABLE) -> list[str]:
    """Create the table, sets and chains if missing and (re)write the fixed rules.  Never
    flushes a set."""
    t = f"{FAMILY} {table}"
    lines = [f"add table {t} {{ {_comment('anti-spoofing of container ports')} ; }}"]
    lines += [f"add set {t} {name} {{ {spec} {_comment('guarded ports')} ; }}" for name, spec in SETS.items()]
    lines.append(
        f"add chain {t} {PREROUTING_CHAIN} {{ type filter hook prerouting priority filter ; policy accept ; }}"
    )
    lines.append(f"add chain {t} {GUARD_CHAIN} {{ {_comment('what a guarded port may send')} ; }}")
    # flush + re-add keeps setup idempotent (no duplicated rules); one transaction, so no
    # frame ever sees the chains empty
    lines += [f"flush chain {t} {c}" for c in CHAINS]
    lines += [
        f"add rule {t} {PREROUTING_CHAIN} iifname @{SET_PORTS} jump {GUARD_CHAIN}",
        # "ether type" explicitly: the dependency nft would add by itself for "ip saddr" is
        # "meta protocol ip", which an 802.1Q-tagged frame matches too (the kernel moves
        # the tag out of the frame); the link-layer field still reads 8021q then
        f"add rule {t} {GUARD_CHAIN} ether type ip iifname . ether saddr . ip saddr @{SET_ADDRS} return",
        # the sender fields sit where nft reads them only for Ethernet/IPv4 ARP: the kernel
        # reads them at offsets given by hlen/plen
        f"add rule {t} {GUARD_CHAIN} ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4"
        f" iifname . ether saddr . arp saddr ip @{SET_ADDRS}"
        f" iifname . arp saddr ether . arp saddr ip @{SET_ADDRS} return",
        f"add rule {t} {GUARD_CHAIN} drop",
    ]
    return lines


def base_rule_counts() -> dict[str, int]:
    """How many rules each chain holds after setup (for health checks)."""
    counts = dict.fromkeys(CHAINS, 0)
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


# -- one port ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GuardElement:
    """One set element: ``key`` in nft's syntax."""

    set: str
    key: str  # e.g. '"veth1234567"' or '"veth1234567" . 02:42:ac:11:00:02 . 172.17.0.2'


def guard_elements(guard: PortGuard) -> list[GuardElement]:
    """The elements of one port's guard, checking every field: the port, then one
    (port, MAC, address) per address."""
    check_owner(guard.owner)
    check_owner(guard.network)
    port = check_port(guard.port)
    mac = check_mac(guard.mac)
    addresses = dict.fromkeys(check_address(a) for a in guard.addresses)
    return [
        GuardElement(SET_PORTS, f'"{port}"'),
        *(GuardElement(SET_ADDRS, f'"{port}" . {mac} . {a}') for a in addresses),
    ]


def drop_lines(elements: Iterable[GuardElement], table: str = TABLE) -> list[str]:
    """Delete ``elements`` whether present or not."""
    t = f"{FAMILY} {table}"
    lines = []
    for e in elements:
        lines += [f"add element {t} {e.set} {{ {e.key} }}", f"delete element {t} {e.set} {{ {e.key} }}"]
    return lines


def render_drop(elements: Iterable[GuardElement], table: str = TABLE) -> str:
    return _script(drop_lines(elements, table))


def port_lines(
    owner: str, old: Iterable[GuardElement], new: Iterable[GuardElement], table: str = TABLE
) -> list[str]:
    """Replace endpoint ``owner``'s elements ``old`` (present or not) with ``new``, in one
    transaction whose size depends only on this port."""
    t = f"{FAMILY} {table}"
    tag = _comment(check_owner(owner))
    lines = drop_lines(old, table)
    lines += [f"add element {t} {e.set} {{ {e.key} {tag} }}" for e in new]
    return lines


def render_port(
    owner: str, old: Iterable[GuardElement], new: Iterable[GuardElement], table: str = TABLE
) -> str:
    return _script(port_lines(owner, old, new, table))


# -- whole table ------------------------------------------------------------------------


def elements_by_owner(guards: Sequence[PortGuard]) -> dict[str, list[GuardElement]]:
    """Every guard's elements by owner (endpoint id), checking each guard; InvalidArgument
    when two guards share an owner or a port."""
    out: dict[str, list[GuardElement]] = {}
    port_owner: dict[str, str] = {}
    for guard in guards:
        if guard.owner in out:
            raise InvalidArgument(f"endpoint {guard.owner} is guarded twice")
        other = port_owner.setdefault(guard.port, guard.owner)
        if other != guard.owner:
            raise InvalidArgument(f"port {guard.port} claimed by endpoints {other} and {guard.owner}")
        out[guard.owner] = guard_elements(guard)
    return out


def render_sync(
    guards: Sequence[PortGuard], table: str = TABLE, elements: Mapping[str, list[GuardElement]] | None = None
) -> str:
    """One transaction that leaves the table guarding exactly ``guards``: the skeleton
    (re)made, both sets emptied and refilled.  ``elements``: ``elements_by_owner(guards)``
    when the caller has it already (a restore syncs every port: checking each twice
    costs)."""
    t = f"{FAMILY} {table}"
    if elements is None:
        elements = elements_by_owner(guards)
    lines = setup_lines(table)
    lines += [f"flush set {t} {name}" for name in SETS]
    for owner, elems in elements.items():
        lines += port_lines(owner, (), elems, table)
    return _script(lines)


def key_from_json(value: Any) -> str:
    """nft's JSON form of an element key (``{"concat": ["veth1", "02:…", "10.0.0.2"]}``)
    back to the text it was written as (``"veth1" . 02:… . 10.0.0.2``)."""
    if isinstance(value, dict) and "concat" in value and value["concat"]:
        first, *rest = value["concat"]
        return " . ".join([key_from_json(first), *(str(v) for v in rest)])
    if isinstance(value, str):
        return f'"{value}"'
    raise FirewallError(f"nft: unexpected key in a guard set: {value!r}")
