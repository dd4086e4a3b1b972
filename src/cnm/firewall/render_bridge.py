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
      set addrs6 { type ifname . ether_addr . ipv6_addr ; }    # port . MAC . each v6 address,
                                                               #   its link-local, and ::
      set targets6 { typeof iifname . @th,64,128 ; }           # port . each v6 address and
                                                               #   its link-local (ND targets)
      chain prerouting { type filter hook prerouting priority filter ; policy accept ;
                         iifname @ports jump port-guard }
      chain port-guard { ether type ip iifname . ether saddr . ip saddr @addrs return
                         ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4
                           iifname . ether saddr . arp saddr ip @addrs
                           iifname . arp saddr ether . arp saddr ip @addrs return
                         ether type ip6 goto port-guard6
                         drop }
      chain port-guard6 { icmpv6 type { nd-router-advert, nd-redirect } drop
                          iifname . ether saddr . ip6 saddr != @addrs6 drop
                          icmpv6 type nd-neighbor-advert iifname . @th,64,128 != @targets6 drop
                          ip6 saddr != :: return
                          icmpv6 type nd-neighbor-solicit iifname . @th,64,128 @targets6 return
                          icmpv6 type mld2-listener-report return
                          drop }
    }

IPv6 (a port whose endpoint has ``addresses6``): sent from the port's MAC and from one of
its v6 addresses, its link-local address (``fe80::/64``, EUI-64 of its MAC, as the kernel
makes it), or ``::`` -- and ``::`` only for duplicate address detection of one of its own
addresses (a neighbour solicitation whose target is its own) and MLDv2 reports.  A
neighbour advertisement must advertise one of its own addresses (its target, the 128 bits
at bit 64 of the ICMPv6 header: nft 1.0.6 has no ``icmpv6 taddr``); a solicitation from
an own address may ask for anyone (that is how a neighbour is found).  Router
advertisements and redirects are never let through; router solicitations and MLD are.  A
port without ``addresses6`` has no element in ``addrs6``: it sends no IPv6 at all.

Every frame a port sends passes the bridge's prerouting hook, whether it is then
forwarded to another port or delivered to the host, so neighbours and the host are both
protected.  A port is put into ``ports`` before its veth is created and taken out only
after the veth is retired: no frame of a cnm port ever goes unchecked, and ports that are
not cnm's (the host's, another tool's) are never touched.  A frame from a guarded port
passes only as IPv4 from the port's own MAC and addresses, or as Ethernet/IPv4 ARP whose
frame source and ARP sender are the port's MAC and whose sender address is the port's;
everything else (another MAC, another address, 0.0.0.0 probes, IPv6 but as below,
VLAN-tagged frames) is dropped.

The table, chains and sets carry a ``cnm:`` comment; every element carries
``comment "cnm:<endpoint id>"``.  Idempotence without nft's ``destroy`` (nft >= 1.0.8;
Debian 12 has 1.0.6) uses nft's own idempotent verbs: ``add X; delete X`` deletes X
whether or not it existed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from cnm.errors import FirewallError, InvalidArgument
from cnm.firewall.api import PortGuard
from cnm.firewall.common import check_ifname, check_owner, owner_comment

TABLE = "cnm"
FAMILY = "bridge"

PREROUTING_CHAIN = "prerouting"
GUARD_CHAIN = "port-guard"
GUARD6_CHAIN = "port-guard6"
CHAINS = (PREROUTING_CHAIN, GUARD_CHAIN, GUARD6_CHAIN)

SET_PORTS = "ports"  # ifname: the ports cnm guards
SET_ADDRS = "addrs"  # ifname . MAC . IPv4: what each port may send from
SET_ADDRS6 = "addrs6"  # ifname . MAC . IPv6: what each port with IPv6 may send from
SET_TARGETS6 = "targets6"  # ifname . IPv6 (as the ND target's 128 bits): what it may advertise
ND_TARGET = "@th,64,128"  # the target address of a neighbour solicitation / advertisement
SETS: dict[str, str] = {
    SET_PORTS: "type ifname ;",
    SET_ADDRS: "type ifname . ether_addr . ipv4_addr ;",
    SET_ADDRS6: "type ifname . ether_addr . ipv6_addr ;",
    SET_TARGETS6: f"typeof iifname . {ND_TARGET} ;",
}
UNSPECIFIED6 = IPv6Address("::")

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


def check_address6(address: object) -> IPv6Address:
    """A unicast IPv6 address a port may send from: not ``::``, ``::1``, multicast
    (ff00::/8), link-local (fe80::/10: a port's own is derived from its MAC) or an
    IPv4-mapped address."""
    if not isinstance(address, IPv6Address):
        raise InvalidArgument(f"invalid IPv6 address {address!r} for a guarded port")
    if (
        address.is_unspecified
        or address.is_loopback
        or address.is_multicast
        or address.is_link_local
        or address.ipv4_mapped is not None
    ):
        raise InvalidArgument(f"{address} cannot be the IPv6 address of a guarded port")
    return address


def link_local(mac: str) -> IPv6Address:
    """The link-local address the kernel gives an interface with ``mac`` (EUI-64:
    ``fe80::``, the MAC with ``ff:fe`` in its middle and the universal/local bit flipped)."""
    b = bytes.fromhex(check_mac(mac).replace(":", ""))
    eui = bytes((b[0] ^ 0x02, b[1], b[2], 0xFF, 0xFE, b[3], b[4], b[5]))
    return IPv6Address(b"\xfe\x80" + bytes(6) + eui)


def target_key(address: IPv6Address) -> str:
    """``address`` as nft writes the ND target's raw 128 bits (``0x`` and 32 hex digits)."""
    return f"0x{int(address):032x}"


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
    lines.append(f"add chain {t} {GUARD6_CHAIN} {{ {_comment('what a guarded port may send over IPv6')} ; }}")
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
        # IPv6: only for ports with v6 addresses (see the module's docstring); goto, so
        # that a "return" there ends the guard as one here does
        f"add rule {t} {GUARD_CHAIN} ether type ip6 goto {GUARD6_CHAIN}",
        f"add rule {t} {GUARD_CHAIN} drop",
        f"add rule {t} {GUARD6_CHAIN} icmpv6 type {{ nd-router-advert, nd-redirect }} drop",
        f"add rule {t} {GUARD6_CHAIN} iifname . ether saddr . ip6 saddr != @{SET_ADDRS6} drop",
        f"add rule {t} {GUARD6_CHAIN} icmpv6 type nd-neighbor-advert iifname . {ND_TARGET} != @{SET_TARGETS6} drop",
        f"add rule {t} {GUARD6_CHAIN} ip6 saddr != :: return",
        f"add rule {t} {GUARD6_CHAIN} icmpv6 type nd-neighbor-solicit iifname . {ND_TARGET} @{SET_TARGETS6} return",
        f"add rule {t} {GUARD6_CHAIN} icmpv6 type mld2-listener-report return",
        f"add rule {t} {GUARD6_CHAIN} drop",
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
    out = [
        GuardElement(SET_PORTS, f'"{port}"'),
        *(GuardElement(SET_ADDRS, f'"{port}" . {mac} . {a}') for a in addresses),
    ]
    if guard.addresses6:
        own = [*dict.fromkeys(check_address6(a) for a in guard.addresses6), link_local(mac)]
        out += [GuardElement(SET_ADDRS6, f'"{port}" . {mac} . {a}') for a in (*own, UNSPECIFIED6)]
        out += [GuardElement(SET_TARGETS6, f'"{port}" . {target_key(a)}') for a in own]
    return out


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
        return " . ".join([key_from_json(first), *(_field_text(v) for v in rest)])
    if isinstance(value, str):
        return f'"{value}"'
    raise FirewallError(f"nft: unexpected key in a guard set: {value!r}")


def _field_text(value: Any) -> str:
    """A key's field after the port as written: an ND target (a raw 128-bit integer,
    which nft prints without leading zeros) as ``target_key`` writes it."""
    text = str(value)
    if text.startswith("0x"):
        return target_key(IPv6Address(int(text, 16)))
    return text
