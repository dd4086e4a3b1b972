"""Validated value types: ids, names, MAC addresses, IPv4 networks and addresses.

Every parser here either returns a value that is valid by construction or raises
``InvalidArgument`` with a message naming what is wrong.  No I/O.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import TypeVar

from cnm.errors import InvalidArgument

_I = TypeVar("_I", IPv4Interface, IPv6Interface)

__all__ = [
    "IPv4Address",
    "IPv4Interface",
    "IPv4Network",
    "new_id",
    "short_id",
    "is_full_id",
    "parse_container_name",
    "parse_network_name",
    "parse_mac",
    "mac_from_ip",
    "parse_ipv4",
    "parse_ipv4_network",
    "check_usable_subnet",
    "parse_ipv6",
    "parse_ipv6_network",
    "parse_ip",
    "parse_ip_network",
    "check_usable_subnet6",
    "parse_ifname",
]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CONTAINER_NAME = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
_MAC = re.compile(r"^([0-9a-fA-F]{2})([:-][0-9a-fA-F]{2}){5}$")
_IFNAME = re.compile(r"^[^/\s:]{1,15}$")


def new_id() -> str:
    """A Docker-style id: 64 lowercase hex from 32 random bytes, never all digits in its
    first 12 characters (the short id is the default hostname)."""
    while True:
        value = secrets.token_hex(32)
        if not value[:12].isdigit():
            return value


def short_id(value: str) -> str:
    return value[:12]


def is_full_id(value: str) -> bool:
    return bool(_HEX64.match(value))


def parse_container_name(name: str) -> str:
    """Docker's container-name rule; returns the name without the leading slash."""
    if not _CONTAINER_NAME.match(name):
        raise InvalidArgument(f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    return name.lstrip("/")


def parse_network_name(name: str) -> str:
    """A network name as Docker takes it (anything that is not blank), minus what cnm
    cannot keep or show safely: ``/`` (API paths), control characters (NUL, escapes,
    newlines: they break the store, logs and ``network ls``) and other whitespace than
    the plain space."""
    if name is None or not name.strip():
        raise InvalidArgument("invalid name: name is empty")
    for c in name:
        if c == "/" or (c != " " and (c.isspace() or not c.isprintable())):
            raise InvalidArgument(
                f"invalid network name {name!r}: it contains {c!r}; "
                "'/', control characters and whitespace other than ' ' are not allowed"
            )
    return name


def parse_mac(value: str) -> str:
    """A unicast MAC other than 00:00:00:00:00:00, in canonical lower-case colon form (the
    kernel refuses the zero address on an interface, and a group address is no host's)."""
    if not value or not _MAC.match(value):
        raise InvalidArgument(f"invalid MAC address {value}")
    mac = value.replace("-", ":").lower()
    if int(mac[:2], 16) & 1:
        raise InvalidArgument(f"invalid MAC address {value}: multicast address")
    if mac == "00:00:00:00:00:00":
        raise InvalidArgument(f"invalid MAC address {value}: the all-zero address")
    return mac


def mac_from_ip(address: IPv4Address) -> str:
    """``02:42:`` followed by the four IPv4 bytes (Docker <= 27 for bridges)."""
    return "02:42:" + ":".join(f"{b:02x}" for b in address.packed)


def parse_ipv4(value: str, what: str = "IP address") -> IPv4Address:
    try:
        return IPv4Address(value.strip())
    except (ipaddress.AddressValueError, ValueError, AttributeError):
        raise InvalidArgument(f"invalid {what}: {value!r}") from None


def parse_ipv4_network(value: str, what: str = "subnet") -> IPv4Network:
    """A CIDR whose host bits are zero; ``10.0.0.1/24`` is refused like Docker refuses it."""
    return _parse_network(IPv4Interface, value, what).network


def _parse_network(kind: type[_I], value: str, what: str) -> _I:
    """``value`` read as an interface of ``kind`` that names a whole network: written with
    its ``/length`` and no host bits set."""
    try:
        iface = kind(value.strip())
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError, AttributeError):
        raise InvalidArgument(f"invalid {what} {value!r}: invalid CIDR block notation") from None
    if "/" not in value:
        raise InvalidArgument(f"invalid {what} {value!r}: invalid CIDR block notation")
    if iface.ip != iface.network.network_address:
        raise InvalidArgument(f"invalid {what} {value}: it should be {iface.network} (host bits are set)")
    return iface


# Ranges no bridge network can use: not host addresses, or not routable to a host on a link.
RESERVED_RANGES: tuple[tuple[IPv4Network, str], ...] = (
    (IPv4Network("0.0.0.0/8"), "'this network' addresses"),
    (IPv4Network("127.0.0.0/8"), "loopback addresses"),
    (IPv4Network("224.0.0.0/4"), "multicast addresses"),
    (IPv4Network("240.0.0.0/4"), "reserved addresses (and the broadcast address)"),
)


def parse_ipv6(value: str, what: str = "IPv6 address") -> IPv6Address:
    try:
        return IPv6Address(value.strip())
    except (ipaddress.AddressValueError, ValueError, AttributeError):
        raise InvalidArgument(f"invalid {what}: {value!r}") from None


def parse_ipv6_network(value: str, what: str = "subnet") -> IPv6Network:
    """An IPv6 CIDR whose host bits are zero, as ``parse_ipv4_network``."""
    return _parse_network(IPv6Interface, value, what).network


def parse_ip_network(value: str, what: str = "subnet") -> IPv4Network | IPv6Network:
    """An IPv4 or IPv6 CIDR (host bits zero): IPv6 when it holds a colon."""
    if ":" in value:
        return parse_ipv6_network(value, what)
    return parse_ipv4_network(value, what)


def parse_ip(value: str, what: str = "IP address") -> IPv4Address | IPv6Address:
    """An IPv4 or IPv6 address: IPv6 when it holds a colon."""
    if ":" in value:
        return parse_ipv6(value, what)
    return parse_ipv4(value, what)


# IPv6 ranges no network can use: unspecified/loopback/v4-mapped, link-local, multicast.
RESERVED_RANGES6: tuple[tuple[IPv6Network, str], ...] = (
    (IPv6Network("::/96"), "unspecified, loopback and IPv4-compatible addresses"),
    (IPv6Network("::ffff:0:0/96"), "IPv4-mapped addresses"),
    (IPv6Network("fe80::/10"), "link-local addresses"),
    (IPv6Network("ff00::/8"), "multicast addresses"),
)


def check_usable_subnet6(subnet: IPv6Network, what: str = "subnet") -> IPv6Network:
    """``subnet`` unless it overlaps ::/96, ::ffff:0:0/96, fe80::/10 or ff00::/8
    (InvalidArgument naming the range)."""
    for reserved, kind in RESERVED_RANGES6:
        if subnet.overlaps(reserved):
            raise InvalidArgument(
                f"invalid {what} {subnet}: it overlaps {reserved} ({kind}), which a network cannot use"
            )
    return subnet


def check_usable_subnet(subnet: IPv4Network, what: str = "subnet") -> IPv4Network:
    """``subnet`` unless it overlaps 0.0.0.0/8, 127.0.0.0/8, 224.0.0.0/4 or 240.0.0.0/4
    (InvalidArgument naming the range)."""
    for reserved, kind in RESERVED_RANGES:
        if subnet.overlaps(reserved):
            raise InvalidArgument(
                f"invalid {what} {subnet}: it overlaps {reserved} ({kind}), which a network cannot use"
            )
    return subnet


def parse_ifname(value: str) -> str:
    if not _IFNAME.match(value or ""):
        raise InvalidArgument(f"invalid interface name {value!r}")
    return value


HOST_GATEWAY = "host-gateway"
_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$")


def parse_extra_host(value: str) -> tuple[str, str]:
    """``--add-host NAME:IP`` (IPv4, IPv6 or ``host-gateway``) -> (name, ip).  The CLI has
    already turned ``NAME=IP`` and ``NAME:[v6]`` into this form."""
    name, sep, ip = (value or "").partition(":")
    ip = ip.strip("[]")
    if not sep or not name or not ip:
        raise InvalidArgument(f"invalid --add-host {value!r}: expected NAME:IP")
    if not _HOSTNAME.match(name):
        raise InvalidArgument(f"invalid --add-host {value!r}: {name!r} is not a valid host name")
    if ip != HOST_GATEWAY:
        try:
            ip = str(ipaddress.ip_address(ip))
        except ValueError:
            raise InvalidArgument(f"invalid --add-host {value!r}: {ip!r} is not an IP address") from None
    return name, ip


def parse_nameserver(value: str) -> str:
    """A ``--dns`` server: an IPv4 or IPv6 address."""
    try:
        return str(ipaddress.ip_address((value or "").strip()))
    except ValueError:
        raise InvalidArgument(f"invalid --dns {value!r}: not an IP address") from None
