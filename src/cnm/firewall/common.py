"""What both firewall backends share: the owner tag, input checks, and the kernel knob that
lets the host reach published ports through 127.0.0.1.  Backends import this, never each
other."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from cnm.errors import InvalidArgument, KernelError
from cnm.kernel.sysctl import set_sysctl

log = logging.getLogger("cnm.firewall")

OWNER_TAG = "cnm:"
_OWNER_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_-]{0,99}$")
# Linux interface names: 1-15 bytes, no '/', ':' or whitespace; quotes, backslashes and '!'
# are refused too, so a name can never break out of an nft string or an iptables word.
_IFNAME_RE = re.compile(r'^[^\s/:"\\\'!]{1,15}$')


def owner_comment(owner: str) -> str:
    """The tag every rule, chain and element owned by ``owner`` carries."""
    return OWNER_TAG + owner


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
