"""The stored records of endpoints and sandboxes, the E and S of CNM.

An ``EndpointRecord`` is a container's attachment to one network (a veth pair on a bridge
network); a ``SandboxRecord`` is a container's network namespace.  The objects that change
them are ``cnm.engine.endpoint.Endpoint`` and ``cnm.engine.sandbox.Sandbox``.  Records hold
ids, never live handles and never back-pointers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from types import MappingProxyType

from cnm.model.ports import PortMapping

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class EndpointRequest:
    """What the user asked for on one network (Docker's ``EndpointSettings`` input)."""

    ipv4_address: IPv4Address | None = None
    ipv6_address: IPv6Address | None = None  # IPAMConfig.IPv6Address (``--ip6``)
    mac_address: str | None = None
    aliases: tuple[str, ...] = ()
    links: tuple[str, ...] = ()
    driver_opts: Mapping[str, str] | None = None
    # IPAMConfig.LinkLocalIPs: extra addresses put on the interface (as /16, as Docker does)
    link_local_ips: tuple[IPv4Address, ...] = ()
    # Docker echoes some of these as null vs [] depending on the client; keep what was sent.
    aliases_given: bool = False
    links_given: bool = False


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    """A live attachment of sandbox ``sandbox_id`` (container ``container_id``) to network
    ``network_id``.  ``host_ifname`` is empty for drivers without a host-side link."""

    id: str
    network_id: str
    container_id: str
    sandbox_id: str
    name: str  # the container's name, unique per network
    ifname: str = ""  # inside the sandbox: eth0, eth1, ... in connect order
    host_ifname: str = ""  # the veth peer on the host (bridge driver)
    mac: str = ""
    address: IPv4Interface | None = None
    gateway: IPv4Address | None = None  # the network's gateway (shown by inspect)
    # IPv6 (networks with ``enable_ipv6``): the endpoint's global address and the gateway
    address6: IPv6Interface | None = None
    gateway6: IPv6Address | None = None
    default_route: bool = False  # whether the sandbox's default route goes via ``gateway``
    aliases: tuple[str, ...] = ()
    request: EndpointRequest = field(default_factory=EndpointRequest)
    created_seq: int = 0  # connect order within the sandbox: decides eth0, eth1, ...
    ports: tuple[PortMapping, ...] = ()  # published ports reached through this endpoint


@dataclass(frozen=True, slots=True)
class SandboxRecord:
    """A network namespace owned by one container, bind-mounted at ``key``.

    ``key`` is empty for ``host`` mode (the host's own namespace) and for
    ``container:NAME`` mode (the other container's sandbox is used)."""

    id: str
    container_id: str
    key: str
    hostname: str = ""


def dns_names(container_name: str, aliases: tuple[str, ...], short_id: str, hostname: str) -> list[str]:
    """The names an endpoint answers to on a user-defined network, Docker's order and
    without repeats: container name, aliases, short id, hostname."""
    return list(dict.fromkeys(n for n in (container_name, *aliases, short_id, hostname) if n))
