"""The Kernel protocol: everything cnm asks of the host's network stack.

``cnm.kernel.netlink.LinuxKernel`` implements it with pyroute2 (netlink sockets, opened
inside a namespace on a short-lived thread and then used from the event loop);
``cnm.kernel.fake.FakeKernel`` implements it in memory for unit tests.

Rules every implementation keeps:
- Every change is logged at DEBUG on logger ``cnm.kernel`` as the command a person would
  type (``ip link add br-1a2b type bridge``), via ``cnm.kernel.cmdlog``.
- Every link cnm creates carries its owner in the link alias (IFLA_IFALIAS):
  ``cnm:<daemon id>:<owner id>`` -- which cnmd (the id of its data root) and which network
  or endpoint.  It is set in the same netlink datagram that creates the link: the kernel
  runs a datagram's messages inside one ``sendmsg`` and a SIGKILL only lands on its
  return, so no crash can leave a link without its tag.  Cleanup selects by that tag,
  never by name pattern, and removes only what this daemon owns (see ``may_remove``).
- Removal is idempotent: "already gone" is success.
- Failures are raised as ``cnm.errors.KernelError`` (or ``Conflict`` when a name is taken).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import Protocol

from cnm.errors import InvalidArgument

OWNER_PREFIX = "cnm:"
VXLAN_PORT = 4789  # IANA's VXLAN port, Docker's default data path port
VNI_MAX = (1 << 24) - 1
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


ALIAS_MAX = 255  # IFALIASZ - 1: the kernel refuses a longer alias


def owner_alias(owner_id: str, daemon_id: str = "", label: str = "") -> str:
    """The link alias tagging ``owner_id``'s link, created by daemon ``daemon_id`` (the
    untagged-daemon form ``cnm:<owner>`` is what cnm wrote before daemons were told apart).
    ``label``, for a person reading ``ip link`` (``web on front``), follows the tag after a
    space (cut to what the kernel keeps); the tag itself holds no space."""
    tag = f"{OWNER_PREFIX}{daemon_id}:{owner_id}" if daemon_id else OWNER_PREFIX + owner_id
    if not label:
        return tag
    return f"{tag} ({label})"[:ALIAS_MAX]


def parse_alias(alias: str) -> tuple[str, str]:
    """(daemon id, owner id) of a link alias; ("", "") when it is not cnm's tag and
    ("", owner) for the old tag without a daemon.  A label after the tag is ignored."""
    if not alias.startswith(OWNER_PREFIX):
        return "", ""
    daemon, sep, owner = alias[len(OWNER_PREFIX) :].split(" ", 1)[0].rpartition(":")
    return (daemon, owner) if sep else ("", owner)


@dataclass(frozen=True, slots=True)
class LinkStats:
    """An interface's counters (IFLA_STATS64), from its own namespace's point of view."""

    rx_bytes: int = 0
    rx_packets: int = 0
    rx_errors: int = 0
    rx_dropped: int = 0
    tx_bytes: int = 0
    tx_packets: int = 0
    tx_errors: int = 0
    tx_dropped: int = 0


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
    daemon: str = ""  # id of the cnmd that created it, from the alias ("" for the old tag)
    stats: LinkStats | None = None
    iflink: int = 0  # IFLA_LINK: a veth's peer ifindex (in the peer's namespace); else own
    alias: str = ""  # the whole alias: the owner tag, and the label a person reads after it


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
    link_local: tuple[IPv4Interface, ...] = ()  # more addresses on the container end
    label: str = ""  # for people, after the owner tag in the alias: "<container> on <network>"
    # IPv6 on the container end (a network with IPv6): off unless ``ipv6``, as in every
    # container namespace; on, the kernel gives it its link-local address (EUI-64 of its
    # MAC) and it gets ``address6`` (no DAD) and a default route via ``gateway6`` if set
    ipv6: bool = False
    address6: IPv6Interface | None = None
    gateway6: IPv6Address | None = None

    def __post_init__(self) -> None:
        if not self.ipv6 and (self.address6 is not None or self.gateway6 is not None):
            raise InvalidArgument(f"veth {self.host_ifname}: an IPv6 address or gateway needs ipv6=True")


def check_mac(mac: str) -> str:
    """``mac`` as the kernel prints it (lowercase, colon-separated), or InvalidArgument."""
    normal = mac.lower()
    if not _MAC.match(normal):
        raise InvalidArgument(f"invalid MAC address {mac!r}: expected six hex pairs like 02:42:0a:00:00:02")
    return normal


@dataclass(frozen=True, slots=True)
class VxlanSpec:
    """One VXLAN device of an overlay network: VNI ``vni`` on UDP ``port``, sending from
    the underlay address ``local``, a port of ``bridge``.  Always ``nolearning`` (remote
    MACs come only from the FDB entries cnm writes) and ``proxy`` (it answers ARP from its
    neighbour table, so no ARP crosses the underlay); no multicast group, so nothing is
    flooded.  ``mtu``: the underlay's minus the 50 bytes VXLAN over IPv4 adds."""

    owner: str  # network id
    name: str
    vni: int
    local: IPv4Address
    bridge: str
    mtu: int
    port: int = VXLAN_PORT

    def __post_init__(self) -> None:
        if not 1 <= self.vni <= VNI_MAX:
            raise InvalidArgument(f"invalid VNI {self.vni} for {self.name}: expected 1 to {VNI_MAX}")
        if not 1 <= self.port <= 65535:
            raise InvalidArgument(f"invalid VXLAN port {self.port} for {self.name}: expected 1 to 65535")
        if not 68 <= self.mtu <= 65535:
            raise InvalidArgument(f"invalid MTU {self.mtu} for {self.name}: expected 68 to 65535")


@dataclass(frozen=True, slots=True, order=True)
class FdbEntry:
    """A VXLAN device's forwarding entry: frames to ``mac`` go to the VTEP ``dst``
    (``bridge fdb replace MAC dev VX dst DST self permanent``)."""

    mac: str
    dst: IPv4Address

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", check_mac(self.mac))


@dataclass(frozen=True, slots=True, order=True)
class NeighEntry:
    """A permanent neighbour entry: ``ip`` is at ``mac`` (what the VXLAN proxy answers ARP
    with: ``ip neigh replace IP lladdr MAC dev VX nud permanent``)."""

    ip: IPv4Address
    mac: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", check_mac(self.mac))


class Kernel(Protocol):
    #: the id of the daemon this kernel works for: part of every owner tag it writes
    daemon_id: str

    def other_daemons(self) -> dict[str, int]:
        """{daemon id: pid} of the *other* cnmd alive in the host namespace (their
        beacons, ``cnm.kernel.owner``)."""

    # -- namespaces -----------------------------------------------------------------------
    async def create_netns(self, path: str) -> None:
        """A new network namespace bind-mounted at ``path``, with ``lo`` up."""

    async def delete_netns(self, path: str) -> None:
        """Unmount and unlink ``path``; idempotent."""

    def netns_exists(self, path: str) -> bool: ...

    # -- links ----------------------------------------------------------------------------
    async def ensure_bridge(
        self,
        name: str,
        *,
        owner: str,
        mtu: int,
        address: IPv4Interface | None,
        address6: IPv6Interface | None = None,
    ) -> int:
        """Create the bridge if missing (tagged with ``owner``), make sure it carries
        ``address`` and is up; return its ifindex.  With ``address6``: IPv6 on for the
        bridge (``disable_ipv6=0``) and that address on it, without DAD.  Raises Conflict
        if a link of that name exists that is not a bridge."""

    async def add_veth(self, spec: VethSpec) -> int:
        """Create the pair, attach and raise the host end, configure the peer inside the
        namespace (name, MAC, MTU, address, up, default route; with ``spec.ipv6`` IPv6 on
        for it, its v6 address and v6 default route, else IPv6 stays off on it).  Undoes
        its own partial work on failure.  Returns the host end's ifindex (= the container
        side's iflink).  Two calls into one namespace must not overlap (the sandbox's lock
        keeps them apart): IPv6 on or off is the namespace's default while the pair is made."""

    async def add_vxlan(self, spec: VxlanSpec) -> int:
        """Create the VXLAN device (tagged with ``spec.owner`` in the creating datagram), a
        port of ``spec.bridge``, up; return its ifindex.  Conflict if the name is taken or
        another device has that VNI and port; KernelError if the bridge does not exist."""

    async def replace_fdb(self, dev: str, entry: FdbEntry) -> None:
        """Make VXLAN device ``dev`` send frames for ``entry.mac`` to ``entry.dst`` (a
        permanent entry of the device itself, replacing the MAC's previous one)."""

    async def delete_fdb(self, dev: str, entry: FdbEntry) -> None:
        """Remove ``entry`` (that MAC *to that VTEP*: an entry the MAC has since moved
        elsewhere with stays); idempotent, also when ``dev`` is gone."""

    async def fdb_entries(self, dev: str) -> list[FdbEntry]:
        """The remote entries of VXLAN device ``dev`` (its own, with a VTEP), sorted."""

    async def replace_neigh(self, dev: str, entry: NeighEntry) -> None:
        """A permanent neighbour entry ``entry.ip`` -> ``entry.mac`` on ``dev`` (replacing
        the address's previous one)."""

    async def delete_neigh(self, dev: str, ip: IPv4Address) -> None:
        """Remove the neighbour entry of ``ip`` on ``dev``; idempotent, also when ``dev``
        is gone."""

    async def neigh_entries(self, dev: str) -> list[NeighEntry]:
        """The permanent IPv4 neighbour entries of ``dev``, sorted."""

    async def announce(self, dev: str, entries: Sequence[NeighEntry]) -> None:
        """Broadcast a gratuitous ARP for each entry (``entry.ip`` is at ``entry.mac``) on
        host link ``dev`` (a bridge), from the host side: a neighbour entry for that IP
        on a host of the bridge that is INCOMPLETE or STALE takes that MAC at once; none
        is created.  KernelError if ``dev`` does not exist or is down."""

    async def set_default_route(
        self, netns_path: str, gateway: IPv4Address | IPv6Address, ifname: str
    ) -> None:
        """Make the namespace's default route of ``gateway``'s family go via ``gateway`` on
        ``ifname`` (replacing any other of that family): the gateway endpoint changed."""

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

    async def lookup_link(self, name: str) -> LinkInfo | None:
        """The host namespace's link ``name``, or None: one lookup, whose cost does not
        grow with the number of links (``links`` dumps them all)."""

    async def host_networks(self) -> list[IPv4Network]:
        """Networks of the host's IPv4 addresses and main-table routes (on-link or via a
        gateway), except the default route and routes shorter than /8, for IPAM to avoid."""

    async def host_networks6(self) -> list[IPv6Network]:
        """The same for IPv6: networks of the host's global and unique local addresses and
        main-table routes, except the default route, link-local, multicast and routes
        shorter than /16."""

    # -- sysctl ---------------------------------------------------------------------------
    async def set_sysctl(self, key: str, value: str, netns_path: str | None = None) -> str:
        """Write ``/proc/sys/<key with dots as slashes>``; return the previous value."""

    async def enable_ipv6_forwarding(self) -> None:
        """IPv6 forwarding on in the host namespace (``all`` and ``default``), for a network
        with IPv6 (never without one; never turned off again).  First, each uplink (a link
        that is not cnm's, not a bridge port, not ``lo``) that accepts router advertisements
        (``accept_ra=1``) is made to accept them while forwarding (``accept_ra=2``), so the
        host keeps the routes it learns from them.  Nothing changes when forwarding is on
        already.  KernelError when the host has no IPv6."""

    def close(self) -> None: ...


def owned(links: Sequence[LinkInfo]) -> list[LinkInfo]:
    return [link for link in links if link.owner]


def may_remove(link: LinkInfo, daemon_id: str, others_alive: bool) -> bool:
    """May daemon ``daemon_id`` remove ``link`` when its records do not name the owner?

    Its own links, yes (it holds its data root: no other live process is this daemon).
    Another daemon's, never: that daemon reconciles its own on its next start (its
    containers may live on while it is down).  An old tag without a daemon id, only when
    no other cnmd is alive here to own it."""
    if not link.owner:
        return False
    if link.daemon:
        return link.daemon == daemon_id
    return not others_alive


# -- WireGuard (encrypted overlays) ----------------------------------------------------------------
#
# Keys are the 32-byte Curve25519 keys of WireGuard, written in base64 as ``wg`` prints them (what
# a node record carries and a person compares); ``cnm.kernel.wireguard`` makes and checks them.


@dataclass(frozen=True, slots=True)
class WgPeer:
    """One peer of a WireGuard interface: who it is (``public_key``), where its packets go
    (``endpoint``: underlay address and UDP port; None = learnt from its first handshake), which
    inner source/destination addresses belong to it (``allowed_ips``: WireGuard's cryptokey
    routing) and how often to send a keepalive (seconds; 0 = never)."""

    public_key: str
    endpoint: tuple[IPv4Address, int] | None = None
    allowed_ips: tuple[IPv4Network, ...] = ()
    keepalive: int = 0


@dataclass(frozen=True, slots=True)
class WgPeerStatus:
    """A configured peer and what the interface knows of it: the last completed handshake
    (seconds since the epoch, 0.0 = never) and the bytes through its tunnel."""

    peer: WgPeer
    last_handshake: float = 0.0
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass(frozen=True, slots=True)
class WgStatus:
    """A WireGuard interface as its device reports it (never its private key)."""

    ifname: str
    public_key: str  # "" when no private key is set
    listen_port: int
    peers: tuple[WgPeerStatus, ...] = ()


@dataclass(frozen=True, slots=True)
class WgSpec:
    """A host's WireGuard interface: its name, owner (for the owner tag), private key ("" = keep
    the key of the device already running, or make a fresh one), UDP port on the underlay,
    tunnel address (its network routes the peers' tunnel addresses to the interface) and MTU."""

    ifname: str
    owner: str
    address: IPv4Interface
    listen_port: int = 51820
    mtu: int = 1440  # cnm.kernel.wireguard.tunnel_mtu(1500)
    private_key: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class WgProcess:
    """A running WireGuard device process and the daemon and owner it was started for."""

    pid: int
    ifname: str
    daemon: str
    owner: str


class WireGuard(Protocol):
    """WireGuard interfaces for encrypted overlays (``cnm.kernel.wireguard_go`` runs them with
    wireguard-go; ``cnm.kernel.fake.FakeWireGuard`` in memory).  ``netns_path`` None is the
    daemon's own namespace.  Every change is logged as the ``wg``/``ip`` command a person would
    type (never a private key); removals are idempotent; a device is tagged with its owner when
    it is started, and cleanup selects by that tag."""

    daemon_id: str

    async def up(self, spec: WgSpec, netns_path: str | None = None) -> WgStatus:
        """Make interface ``spec.ifname`` run with ``spec``'s key, port, address and MTU, up:
        start its device, or adopt the one this daemon started before (a restart keeps its key
        unless ``spec.private_key`` differs).  Peers are left as they are.  Raises Conflict
        when the name is taken by a link or device that is not this daemon's."""

    async def set_peers(self, ifname: str, peers: Sequence[WgPeer], netns_path: str | None = None) -> None:
        """Make the interface's peers exactly ``peers``: add the missing, update the changed,
        remove the others -- one change, sending nothing when nothing differs."""

    async def update_peer(self, ifname: str, peer: WgPeer, netns_path: str | None = None) -> None:
        """Add ``peer`` or bring it to this endpoint, allowed IPs and keepalive; others stay."""

    async def remove_peer(self, ifname: str, public_key: str, netns_path: str | None = None) -> None:
        """Remove the peer with ``public_key``; idempotent."""

    async def set_private_key(self, ifname: str, private_key: str, netns_path: str | None = None) -> None:
        """Give the interface a new private key (a rotation's switch); peers stay."""

    async def status(self, ifname: str, netns_path: str | None = None) -> WgStatus:
        """What the device reports.  Raises NotFound when no such device runs."""

    async def down(self, ifname: str, netns_path: str | None = None) -> None:
        """Stop the device of ``ifname`` that this daemon started; its link goes with it.
        Idempotent; never touches another daemon's device."""

    async def running(self) -> list[WgProcess]:
        """The devices this daemon started that still run."""

    async def reap(self, keep: Collection[str]) -> list[str]:
        """Stop this daemon's devices whose interface is not in ``keep`` (a restart's cleanup);
        return their names."""
