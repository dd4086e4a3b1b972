"""What both firewall backends share: the owner tag, input checks, and the kernel knob that
lets the host reach published ports through 127.0.0.1.  Backends import this, never each
other."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from ipaddress import IPv4Address, IPv6Address

from cnm.errors import FirewallError, InvalidArgument, KernelError
from cnm.firewall.api import PortRule
from cnm.kernel.sysctl import set_sysctl

log = logging.getLogger("cnm.firewall")

OWNER_TAG = "cnm:"
_OWNER_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_-]{0,99}$")
# Linux interface names: 1-15 bytes, no '/', ':' or whitespace; quotes, backslashes and '!'
# are refused too, so a name can never break out of an nft string or an iptables word.
_IFNAME_RE = re.compile(r'^[^\s/:"\\\'!]{1,15}$')


# A label's characters: what can stand inside an nft string and an iptables word unquoted.
_LABEL_BAD = re.compile(r"[^0-9A-Za-z_.-]")
COMMENT_MAX = 128  # nft keeps 256 bytes of user data with an element: names fit, ids too


def owner_comment(owner: str, label: str = "") -> str:
    """The tag every rule, chain and element owned by ``owner`` carries; ``label`` (names a
    person reads, ``web on front``) follows it in parentheses, each word cut down to
    ``[0-9A-Za-z_.-]``.  Ownership is the tag alone (``comment_owner``)."""
    tag = OWNER_TAG + owner
    words = [_LABEL_BAD.sub("_", word) for word in label.split()]
    return f"{tag} ({' '.join(words)})"[:COMMENT_MAX] if words else tag


def comment_owner(comment: str) -> str:
    """The owner id a comment tags ("" when it is not cnm's); a label after it is ignored."""
    if not comment.startswith(OWNER_TAG):
        return ""
    return comment.split(" ", 1)[0][len(OWNER_TAG) :]


def check_owner(owner: str) -> str:
    if not _OWNER_RE.match(owner):
        raise InvalidArgument(f"invalid firewall owner id {owner!r}")
    return owner


def check_ifname(name: str) -> str:
    if not _IFNAME_RE.match(name):
        raise InvalidArgument(f"invalid bridge name {name!r} for the firewall")
    return name


def enable_route_localnet(bridges: Iterable[str], *, strict: bool) -> None:
    """Let ``bridges`` route packets from 127.0.0.1 (DNATed by the nat output chain), so the
    host reaches published ports through localhost in kernel mode.  Both backends drop
    127.0.0.0/8 arriving from outside, which route_localnet alone would let in.
    ``strict=False`` (sync) skips a bridge that is gone."""
    for bridge in sorted(bridges):
        try:
            set_sysctl(f"net.ipv4.conf.{bridge}.route_localnet", "1")
        except KernelError:
            if strict:
                raise
            log.warning("bridge %s is gone: route_localnet not set", bridge)


PORT_PROTOCOLS = ("tcp", "udp", "sctp")

# (host ip; None for any IPv4 address, "::" for any IPv6 address; protocol, host port)
PortKey = tuple[str | None, str, int]
ANY6 = "::"


def check_port_rule(rule: PortRule) -> tuple[int, int]:
    """Validate a published-port rule before rendering it; its (first, last) host port."""
    if rule.protocol not in PORT_PROTOCOLS:
        raise InvalidArgument(
            f"invalid protocol {rule.protocol!r}: must be one of {', '.join(PORT_PROTOCOLS)}"
        )
    if not isinstance(rule.container_ip, (IPv4Address, IPv6Address)):
        raise InvalidArgument(f"invalid container address {rule.container_ip!r} for a published port")
    if rule.host_ip is not None and rule.host_ip.version != rule.container_ip.version:
        raise InvalidArgument(
            f"published port {rule.host_ip}:{rule.host_port} (IPv{rule.host_ip.version}) cannot go to"
            f" container address {rule.container_ip} (IPv{rule.container_ip.version}): one family per rule"
        )
    first = _check_port(rule.host_port, "host port")
    last = _check_port(rule.host_port_end, "host port")
    if last < first:
        raise InvalidArgument(f"invalid host port range {first}-{last}")
    _check_port(rule.container_port, "container port")
    _check_port(rule.container_port + last - first, "container port")
    return first, last


def _check_port(port: int, what: str) -> int:
    if not 1 <= port <= 65535:
        raise InvalidArgument(f"invalid {what} {port}: must be 1-65535")
    return port


def port_keys(rules: Iterable[PortRule]) -> list[PortKey]:
    """Every (host ip, protocol, host port) ``rules`` claim."""
    return [(_host_key(r), r.protocol, p) for r in rules for p in range(r.host_port, r.host_port_end + 1)]


def _host_key(rule: PortRule) -> str | None:
    if rule.host_ip is not None:
        return str(rule.host_ip)
    return ANY6 if rule.container_ip.version == 6 else None


def claim_ports(owner: str, rules: Sequence[PortRule], held: Mapping[PortKey, str]) -> list[PortKey]:
    """The keys endpoint ``owner``'s ``rules`` claim, refused (FirewallError) when a rule
    belongs to another endpoint or a port is already published by one (``held``: key ->
    owner).  Both backends check this before touching the kernel."""
    if any(r.owner != owner for r in rules):
        raise FirewallError(f"add_ports({owner}) was given ports of another endpoint")
    keys = port_keys(rules)
    for key in keys:
        other = held.get(key, owner)
        if other != owner:
            raise FirewallError(
                f"port {key[2]}/{key[1]} on {key[0] or '0.0.0.0'} is already published by endpoint {other}"
            )
    return keys
