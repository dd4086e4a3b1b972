"""Published ports: what a container asks for and what cnm installed.

``PortRequest`` is one ``HostConfig.PortBindings`` entry (or one ``-P`` exposed port) after
validation; ``PortMapping`` is a binding cnm actually holds (a reserved host port and the
firewall rules / proxy listener for it).  Data only: no sockets here.

A host address is either family.  The unspecified address of a family (``0.0.0.0``,
``::``) means every address of that family; the two families never overlap (cnm binds
its IPv6 sockets ``IPV6_V6ONLY``, as Docker does).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

PROTOCOLS = ("tcp", "udp", "sctp")
ANY = IPv4Address("0.0.0.0")
ANY6 = IPv6Address("::")
LOOPBACK6 = IPv6Address("::1")

HostIP = IPv4Address | IPv6Address


def any_of(host_ip: HostIP) -> HostIP:
    """The unspecified address of ``host_ip``'s family (``0.0.0.0`` or ``::``)."""
    return ANY if host_ip.version == 4 else ANY6


def host_ip_order(host_ip: HostIP | None) -> tuple[int, int]:
    """A sort key that puts IPv4 before IPv6 (Docker lists ``0.0.0.0`` before ``::``),
    each in numeric order; None (not given yet) first."""
    return (0, 0) if host_ip is None else (host_ip.version, int(host_ip))


def join_host_port(host_ip: HostIP, port: int | str) -> str:
    """``0.0.0.0:8080``, ``[::]:8080`` (Go's ``net.JoinHostPort``)."""
    return f"[{host_ip}]:{port}" if host_ip.version == 6 else f"{host_ip}:{port}"


@dataclass(frozen=True, slots=True)
class PortRequest:
    """Publish ``container_port``/``protocol`` on ``host_ip`` (0.0.0.0 or ``::``: every
    address of that family) at a host port in ``host_port``..``host_port_end`` (0..0 = any
    ephemeral port).  ``host_ip`` None: none was given, so the publishing network's default
    binding address applies (0.0.0.0 and ``::`` with the same port, unless its
    ``host_binding_ipv4`` option names an address, as in Docker)."""

    protocol: str
    container_port: int
    host_ip: HostIP | None = None
    host_port: int = 0
    host_port_end: int = 0


@dataclass(frozen=True, slots=True)
class PortMapping:
    """One installed binding: ``host_ip:host_port`` -> the container's ``container_port``."""

    protocol: str
    container_port: int
    host_ip: HostIP
    host_port: int

    @property
    def key(self) -> str:
        """Docker's PortMap key, e.g. ``80/tcp``."""
        return f"{self.container_port}/{self.protocol}"
