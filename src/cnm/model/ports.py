"""Published ports: what a container asks for and what cnm installed.

``PortRequest`` is one ``HostConfig.PortBindings`` entry (or one ``-P`` exposed port) after
validation; ``PortMapping`` is a binding cnm actually holds (a reserved host port and the
firewall rules / proxy listener for it).  Data only: no sockets here.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

PROTOCOLS = ("tcp", "udp", "sctp")
ANY = IPv4Address("0.0.0.0")


@dataclass(frozen=True, slots=True)
class PortRequest:
    """Publish ``container_port``/``protocol`` on ``host_ip`` (0.0.0.0 = every address) at
    a host port in ``host_port``..``host_port_end`` (0..0 = any ephemeral port).
    ``host_ip`` None: none was given, so the publishing network's default binding address
    applies (0.0.0.0 unless its ``host_binding_ipv4`` option names one, as in Docker)."""

    protocol: str
    container_port: int
    host_ip: IPv4Address | None = None
    host_port: int = 0
    host_port_end: int = 0


@dataclass(frozen=True, slots=True)
class PortMapping:
    """One installed binding: ``host_ip:host_port`` -> the container's ``container_port``."""

    protocol: str
    container_port: int
    host_ip: IPv4Address
    host_port: int

    @property
    def key(self) -> str:
        """Docker's PortMap key, e.g. ``80/tcp``."""
        return f"{self.container_port}/{self.protocol}"
