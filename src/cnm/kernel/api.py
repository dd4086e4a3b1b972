"""The Kernel protocol: everything cnm asks of the host's network stack.

``cnm.kernel.netlink.LinuxKernel`` implements it with pyroute2 (netlink sockets, opened
inside a namespace on a short-lived thread and then used from the event loop);
``cnm.kernel.fake.FakeKernel`` implements it in memory for unit tests.

Rules every implementation keeps:
- Every change is logged at DEBUG on logger ``cnm.kernel`` as the command a person would
  type (``ip link add br-1a2b type bridge``), via ``cnm.kernel.cmdlog``.
- Every link cnm creates carries its owner in the link alias (IFLA_IFALIAS):
  ``cnm:<owner id>``; cleanup selects by that tag, never by name pattern.
- Removal is idempotent: "already gone" is success.
- Failures are raised as ``cnm.errors.KernelError`` (or ``Conflict`` when a name is taken).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Protocol

OWNER_PREFIX = "cnm:"


def owner_alias(owner_id: str) -> str:
    return OWNER_PREFIX + owner_id


@dataclass(frozen=True, slots=True)
class LinkInfo:
    index: int
    name: str
    kind: str  # "bridge", "veth", "vxlan", "" ...
    owner: str  # owner id parsed from the alias, "" when the link is not cnm's
    master: int = 0  # ifindex of the bridge this link is a port of, 0 when none
    mac: str = ""
    mtu: int = 0
    up: bool = False
    addresses: tuple[IPv4Interface, ...] = ()


@dataclass(frozen=True, slots=True)
class VethSpec:
    """One veth pair: ``host_ifname`` stays on the host as a port of ``bridge``; its peer
    goes into the namespace at ``netns_path`` and is named ``ifname`` there."""

    owner: str  # endpoint id
    host_ifname: str
    bridge: str
    netns_path: str
    ifname: str
    mtu: int = 1500
    mac: str = ""
    address: IPv4Interface | None = None
    gateway: IPv4Address | None = None  # default route via this gateway when set
    hairpin: bool = False


class Kernel(Protocol):
    # -- namespaces -----------------------------------------------------------------------
    async def create_netns(self, path: str) -> None:
        """A new network namespace bind-mounted at ``path``, with ``lo`` up."""

    async def delete_netns(self, path: str) -> None:
        """Unmount and unlink ``path``; idempotent."""

    def netns_exists(self, path: str) -> bool: ...

    # -- links ----------------------------------------------------------------------------
    async def ensure_bridge(
        self, name: str, *, owner: str, mtu: int, address: IPv4Interface | None
    ) -> int:
        """Create the bridge if missing (tagged with ``owner``), make sure it carries
        ``address`` and is up; return its ifindex.  Raises Conflict if a link of that
        name exists that is not a bridge."""

    async def add_veth(self, spec: VethSpec) -> int:
        """Create the pair, attach and raise the host end, configure the peer inside the
        namespace (name, MAC, MTU, address, up, default route).  Undoes its own partial
        work on failure.  Returns the host end's ifindex (= the container side's iflink)."""

    async def set_default_route(self, netns_path: str, gateway: IPv4Address, ifname: str) -> None:
        """Make the namespace's default route go via ``gateway`` on ``ifname`` (replacing
        any other): the gateway endpoint changed."""

    async def set_port_isolated(self, name: str, isolated: bool) -> None:
        """Bridge-port isolation of host link ``name`` (how icc=false is enforced)."""

    async def delete_link(self, name: str, netns_path: str | None = None) -> None:
        """Delete a link by name (in the host namespace unless ``netns_path``); idempotent."""

    async def retire_link(self, name: str, netns_path: str | None = None, peer: str = "") -> None:
        """Take link ``name`` out of service now (down, so nothing routes through it or
        reaches its peer) and delete it in the background: the kernel's unregister waits
        ~20 ms for RCU.  Anything that needs the name or the namespace gone (add_veth into
        the same namespace, delete_netns, delete_link, links, close) waits for it."""

    async def links(self, netns_path: str | None = None) -> list[LinkInfo]:
        """Every link of the host namespace, or of the namespace at ``netns_path``."""

    async def host_networks(self) -> list[IPv4Network]:
        """Networks of the host's IPv4 addresses and main-table routes (on-link or via a
        gateway), except the default route and routes shorter than /8, for IPAM to avoid."""

    # -- sysctl ---------------------------------------------------------------------------
    async def set_sysctl(self, key: str, value: str, netns_path: str | None = None) -> str:
        """Write ``/proc/sys/<key with dots as slashes>``; return the previous value."""

    def close(self) -> None: ...


def owned(links: Sequence[LinkInfo]) -> list[LinkInfo]:
    return [link for link in links if link.owner]
