"""Networks: what a user asks for (``NetworkSpec``) and what cnm stores (``NetworkRecord``;
the object that changes it is ``cnm.engine.network.Network``).

Docker's option keys are kept as the keys of ``Network.options`` (they are the user's
vocabulary), but every option the bridge driver acts on is parsed once, here, into a typed
property so no layer above re-parses strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from types import MappingProxyType
from typing import Any

from cnm.errors import InvalidArgument

PREDEFINED = ("bridge", "host", "none")
RESERVED_NAMES = ("bridge", "host", "none", "default")

OPT_BRIDGE_NAME = "com.docker.network.bridge.name"
OPT_ICC = "com.docker.network.bridge.enable_icc"
OPT_MASQ = "com.docker.network.bridge.enable_ip_masquerade"
OPT_HOST_BINDING = "com.docker.network.bridge.host_binding_ipv4"
# IPv6 on a bridge: "nat" (masquerade, Docker's default) or "routed" (no NAT, as Docker 27+)
OPT_GATEWAY_MODE_V6 = "com.docker.network.bridge.gateway_mode_ipv6"
GATEWAY_MODES = ("nat", "routed")
# Docker's fallback for EnableIPv6 when a create request has no such field
OPT_ENABLE_IPV6 = "com.docker.network.enable_ipv6"
OPT_DEFAULT_BRIDGE = "com.docker.network.bridge.default_bridge"
OPT_MTU = "com.docker.network.driver.mtu"
OPT_IFACE_PREFIX = "com.docker.network.container_iface_prefix"
# overlay: the VXLAN id(s) of a global network, as Docker shows them; "encrypted" (-o encrypted)
OPT_VXLANID_LIST = "com.docker.network.driver.overlay.vxlanid_list"
OPT_ENCRYPTED = "encrypted"
# overlay: the per-host bridge and VXLAN device of a network (+ 12 hex of its id)
OVERLAY_BRIDGE_PREFIX = "ov-"
OVERLAY_VXLAN_PREFIX = "vx-"
# Docker's docker_gwbridge: the local bridge network through which containers on overlay
# networks (and nothing else giving them a default route) reach the outside and are reached
# through their published ports.
GWBRIDGE_NAME = "cnm_gwbridge"

# Drivers whose networks span hosts (global scope: kept in the cluster store).
GLOBAL_DRIVERS = ("overlay",)

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def bool_option(options: Mapping[str, str], key: str, default: bool) -> bool:
    """A boolean driver option (Docker's spellings of true and false); InvalidArgument
    for anything else."""
    return _bool_option(options, key, default)


def _bool_option(options: Mapping[str, str], key: str, default: bool) -> bool:
    raw = options.get(key)
    if raw is None or raw == "":
        return default
    low = str(raw).strip().lower()
    if low in ("1", "t", "true", "yes", "on"):
        return True
    if low in ("0", "f", "false", "no", "off"):
        return False
    raise InvalidArgument(f"invalid value {raw!r} for option {key}: expected true or false")


@dataclass(frozen=True, slots=True)
class IpamConfig:
    """One subnet of a network, as given by the user (any field may be absent), of one
    address family (Docker's ``IPAM.Config`` entry): every address given is of the
    family of the subnet (``family``), which the API checks when it builds one."""

    subnet: IPv4Network | IPv6Network | None = None
    ip_range: IPv4Network | IPv6Network | None = None
    gateway: IPv4Address | IPv6Address | None = None
    aux_addresses: Mapping[str, IPv4Address | IPv6Address] = field(default_factory=lambda: _EMPTY)

    @property
    def family(self) -> int:
        """4 or 6: the family of the subnet (or of the gateway, ip-range or an aux
        address when there is no subnet); 4 for an empty entry."""
        values: list[IPv4Address | IPv6Address | IPv4Network | IPv6Network | None] = [
            self.subnet,
            self.gateway,
            self.ip_range,
            *self.aux_addresses.values(),
        ]
        return next((v.version for v in values if v is not None), 4)

    @property
    def is_v6(self) -> bool:
        return self.family == 6


def ipam_v4(configs: tuple[IpamConfig, ...]) -> IpamConfig | None:
    """The IPv4 entry of a network's IPAM configs (the first), or None."""
    return next((c for c in configs if not c.is_v6), None)


def ipam_v6(configs: tuple[IpamConfig, ...]) -> IpamConfig | None:
    """The IPv6 entry of a network's IPAM configs (the first), or None."""
    return next((c for c in configs if c.is_v6), None)


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """A validated ``network create`` request."""

    name: str
    driver: str = "bridge"
    internal: bool = False
    attachable: bool = False
    enable_ipv6: bool = False
    ipam_driver: str = "default"
    ipam_options: Mapping[str, str] | None = None
    ipam: tuple[IpamConfig, ...] = ()
    options: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class NetworkRecord:
    """A network as stored.  ``subnet``/``gateway`` are what IPAM settled on; ``ipam``
    echoes the user's request (Docker's inspect shows it verbatim)."""

    id: str
    name: str
    driver: str
    created: str  # RFC 3339 with nanoseconds, UTC
    scope: str = "local"
    internal: bool = False
    attachable: bool = False
    enable_ipv6: bool = False
    ipam_driver: str = "default"
    ipam_options: Mapping[str, str] | None = None
    ipam: tuple[IpamConfig, ...] = ()
    subnet: IPv4Network | None = None
    gateway: IPv4Address | None = None
    ip_range: IPv4Network | None = None
    # IPv6 (``enable_ipv6``): what IPAM settled on for the network's v6 subnet
    subnet6: IPv6Network | None = None
    gateway6: IPv6Address | None = None
    ip_range6: IPv6Network | None = None
    options: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    # -- typed views of the driver options ------------------------------------------------

    @property
    def predefined(self) -> bool:
        return self.name in PREDEFINED

    @property
    def is_default_bridge(self) -> bool:
        return _bool_option(self.options, OPT_DEFAULT_BRIDGE, False)

    @property
    def bridge_name(self) -> str:
        return self.options.get(OPT_BRIDGE_NAME) or f"br-{self.id[:12]}"

    @property
    def icc(self) -> bool:
        return _bool_option(self.options, OPT_ICC, True)

    @property
    def masquerade(self) -> bool:
        return _bool_option(self.options, OPT_MASQ, True)

    @property
    def mtu(self) -> int:
        return parse_mtu(self.options.get(OPT_MTU))

    @property
    def iface_prefix(self) -> str:
        return self.options.get(OPT_IFACE_PREFIX) or "eth"

    @property
    def host_binding_ipv4(self) -> IPv4Address | None:
        """The host address a port published without one binds to (Docker's default
        binding IP); None: every address (0.0.0.0)."""
        return parse_host_binding(self.options.get(OPT_HOST_BINDING))

    @property
    def gateway_mode_ipv6(self) -> str:
        """``nat`` (masquerade the v6 subnet's egress) or ``routed`` (forward it as is)."""
        return parse_gateway_mode(self.options.get(OPT_GATEWAY_MODE_V6))


def parse_mtu(raw: str | int | None) -> int:
    if raw is None or raw == "" or raw == 0:
        return 1500
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise InvalidArgument(f"invalid MTU {raw!r}: not a number") from None
    if not 68 <= value <= 65535:
        raise InvalidArgument(f"invalid MTU {value}: must be between 68 and 65535")
    return value


def parse_host_binding(raw: str | None) -> IPv4Address | None:
    """``com.docker.network.bridge.host_binding_ipv4``: an IPv4 address; unset, empty
    and 0.0.0.0 mean every address (None)."""
    if raw is None or raw == "":
        return None
    try:
        address = ip_address(str(raw).strip())
    except ValueError:
        raise InvalidArgument(
            f"invalid host binding IP {raw!r} for option {OPT_HOST_BINDING}: not an IP address"
        ) from None
    if not isinstance(address, IPv4Address):
        raise InvalidArgument(
            f"invalid host binding IP {raw!r} for option {OPT_HOST_BINDING}: not an IPv4 address"
        )
    if address.is_multicast or address == IPv4Address("255.255.255.255"):
        raise InvalidArgument(
            f"invalid host binding IP {raw!r} for option {OPT_HOST_BINDING}: not a unicast address"
        )
    return None if address.is_unspecified else address


def parse_gateway_mode(raw: str | None) -> str:
    if raw is None or raw == "":
        return "nat"
    mode = str(raw).strip().lower()
    if mode not in GATEWAY_MODES:
        raise InvalidArgument(
            f"invalid value {raw!r} for option {OPT_GATEWAY_MODE_V6}: expected one of {', '.join(GATEWAY_MODES)}"
        )
    return mode


def validate_options(options: Mapping[str, str]) -> None:
    """Parse every typed option once so a bad value is refused at create time."""
    parse_gateway_mode(options.get(OPT_GATEWAY_MODE_V6))
    _bool_option(options, OPT_ICC, True)
    parse_host_binding(options.get(OPT_HOST_BINDING))
    _bool_option(options, OPT_MASQ, True)
    parse_mtu(options.get(OPT_MTU))
    name = options.get(OPT_BRIDGE_NAME)
    if name is not None and (not name or len(name) > 15 or "/" in name or " " in name):
        raise InvalidArgument(f"invalid bridge name {name!r}: 1 to 15 characters, no '/' or space")
