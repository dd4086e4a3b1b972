"""The IPAM protocol: address pools for networks and addresses for endpoints.

The default implementation (``cnm.ipam.default.DefaultIpam``) keeps its state in the
Store (``ipam/pool/<network id>``, ``ipam/address/<network id>/<address>``), so
allocations survive restarts and are never handed out twice, also by several daemons
sharing one store: every change is a compare-and-swap, and what is in memory is a cache
the store's watch keeps current.  Hence the shape of the protocol: changes are async
(they go to the store), reads are synchronous (they answer from the cache, and may lag
another daemon's change by the watch's latency, never one of the caller's own).

Every address has an owner (an endpoint id, or ``gateway``/``aux:<name>``), which lets
the engine release orphans after a crash.

An endpoint's address can also be claimed and freed in the caller's own transaction, the
one that writes the endpoint's record (``claim_address``/``release_change``, then
``settle`` or ``abandon``): one store commit instead of two, and the address and its
endpoint never exist one without the other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Protocol

from cnm.errors import InvalidArgument, NotFound
from cnm.model.network import IpamConfig
from cnm.store.api import Check, Op, StaleRevision

# The IPAM drivers cnm has: Docker's built-in "default" only (no plugins, no "null").
IPAM_DRIVERS = ("default",)
_DOCKER_BUILTIN = ("null", "windows")


def check_ipam_driver(name: str) -> str:
    """``name`` if cnm has that IPAM driver.  Docker's other built-ins are
    InvalidArgument (cnm does not have them); any other name is Docker's 404 for a
    plugin that is not installed."""
    if name in IPAM_DRIVERS:
        return name
    if name in _DOCKER_BUILTIN:
        raise InvalidArgument(f"IPAM driver {name!r} is not supported by cnm: only 'default' is")
    raise NotFound(f"could not find plugin {name} in v1 plugin registry: plugin not found")


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """A default address pool: ``base`` split into subnets of prefix length ``size``
    (either family: an IPv6 base is a pool for networks' IPv6 subnets)."""

    base: IPv4Network | IPv6Network
    size: int


# Docker's local-scope defaults (libnetwork/ipamutils): 172.17-19/16, 172.20/14, 172.24/14,
# 172.28/14 in /16s, then 192.168.0.0/16 in /20s -- 31 networks.
DEFAULT_POOLS: tuple[PoolSpec, ...] = (
    PoolSpec(IPv4Network("172.17.0.0/16"), 16),
    PoolSpec(IPv4Network("172.18.0.0/16"), 16),
    PoolSpec(IPv4Network("172.19.0.0/16"), 16),
    PoolSpec(IPv4Network("172.20.0.0/14"), 16),
    PoolSpec(IPv4Network("172.24.0.0/14"), 16),
    PoolSpec(IPv4Network("172.28.0.0/14"), 16),
    PoolSpec(IPv4Network("192.168.0.0/16"), 20),
)


def ula_pool(host_id: str) -> PoolSpec:
    """Docker 27+'s default IPv6 pool of a host: a unique local /48 derived from the
    host's id (the low 40 bits of the first 8 bytes of its sha256 after ``fd``), split
    into /64s."""
    gid = int.from_bytes(hashlib.sha256(host_id.encode()).digest()[:8], "big") & (2**40 - 1)
    return PoolSpec(IPv6Network(((0xFD << 120) | (gid << 80), 48)), 64)


@dataclass(frozen=True, slots=True)
class Pool:
    network_id: str
    subnet: IPv4Network
    gateway: IPv4Address | None
    ip_range: IPv4Network | None = None


@dataclass(frozen=True, slots=True)
class Pool6:
    """A network's IPv6 subnet (``ipam/pool6/<network id>``), beside its ``Pool``."""

    network_id: str
    subnet: IPv6Network
    gateway: IPv6Address | None
    ip_range: IPv6Network | None = None


@dataclass(frozen=True, slots=True)
class AddressChange:
    """A claim (``owner`` set) or a release (``owner`` empty) of one address that the
    caller stores in its own transaction: ``ops`` and ``checks`` join that commit."""

    network_id: str
    address: IPv4Address | IPv6Address
    owner: str
    ops: tuple[Op, ...]
    checks: tuple[Check, ...]

    def concerns(self, exc: StaleRevision) -> bool:
        """Did the transaction fail on one of this change's checks?"""
        return any(check.key == exc.key for check in self.checks)


class Ipam(Protocol):
    """Pools and addresses.  ``start`` before any other call, ``close`` at shutdown.
    A change that loses to another daemon's tries the next candidate, and gives up with
    Unavailable if it keeps losing; Unavailable too when the store cannot be reached."""

    async def start(self) -> None:
        """Load the cache from the store and follow the store's changes from then on."""

    async def close(self) -> None:
        """Stop following the store."""

    async def allocate_pool(
        self,
        network_id: str,
        config: IpamConfig | None,
        *,
        reserved: Sequence[IPv4Network] = (),
        with_gateway: bool = True,
    ) -> Pool:
        """Give ``network_id`` a subnet.  With ``config.subnet``: that subnet, refused if
        it overlaps another network's pool; gateway = ``config.gateway`` or the first
        address.  Without: the first default-pool subnet that overlaps neither an
        existing pool nor ``reserved`` (host routes/addresses), lowest first.  Validates
        gateway/ip_range/aux addresses are inside the subnet (InvalidArgument), and
        reserves the gateway and aux addresses.  Errors use Docker's statuses: an
        overlapping subnet is Forbidden ("Pool overlaps with other one on this address
        space"), also when another daemon took it a moment before; exhausted default
        pools are InvalidArgument; a network that has a pool already is Conflict."""

    async def allocate_pool6(
        self, network_id: str, config: IpamConfig | None, *, reserved: Sequence[IPv6Network] = ()
    ) -> Pool6:
        """Give ``network_id`` an IPv6 subnet, as ``allocate_pool`` (same rules and errors)
        with the IPv6 entry ``config`` and the default IPv6 pools; the gateway is the
        first address (``::1`` of a /64) unless given."""

    async def release_pool(self, network_id: str) -> None:
        """Forget the pool (both families) and every address in it; idempotent."""

    def pool(self, network_id: str) -> Pool | None:
        """The network's pool, or None."""

    def pool6(self, network_id: str) -> Pool6 | None:
        """The network's IPv6 pool, or None."""

    async def allocate_address(
        self,
        network_id: str,
        owner: str,
        preferred: IPv4Address | IPv6Address | None = None,
        *,
        v6: bool = False,
    ) -> IPv4Address | IPv6Address:
        """The lowest free address of the pool's ip_range (or subnet), never the network,
        broadcast, gateway or aux addresses; or exactly ``preferred`` (InvalidArgument if
        outside the subnet, Forbidden "Address already in use" if taken, as Docker).
        NotFound without a pool; Unavailable when the pool is full.  ``v6`` (or an IPv6
        ``preferred``): from the network's IPv6 pool."""

    async def release_address(self, network_id: str, address: IPv4Address | IPv6Address) -> None:
        """Free ``address`` as the caller knows it; idempotent, and never frees what
        another daemon claimed after a release the caller has not seen yet."""

    def claim_address(
        self,
        network_id: str,
        owner: str,
        preferred: IPv4Address | IPv6Address | None = None,
        *,
        v6: bool = False,
    ) -> AddressChange:
        """The address ``allocate_address`` would give (same choice, same errors), held in
        this IPAM's cache but not stored: the caller commits the change's ops and checks
        with its records, then calls ``settle``, or ``abandon`` if it did not commit."""

    def release_change(self, network_id: str, address: IPv4Address | IPv6Address) -> AddressChange | None:
        """The change that frees ``address`` in the caller's transaction (None: free
        already).  If that transaction fails on the change's check, the address was
        released and claimed again since, and is not the caller's to free: commit
        without it."""

    def settle(self, change: AddressChange, revision: int) -> None:
        """The caller's transaction carrying ``change`` committed at ``revision``."""

    def abandon(self, change: AddressChange) -> None:
        """The caller's transaction carrying the claim ``change`` did not commit: the held
        address is free again; idempotent, and nothing once settled."""

    async def catch_up(self, exc: StaleRevision) -> None:
        """A transaction carrying a claim failed on one of its checks (``concerns``):
        bring the cache up to the change that beat it, so the next claim chooses
        another address."""

    def owners(self, network_id: str) -> dict[IPv4Address | IPv6Address, str]:
        """Every allocated address of the network (both families) and its owner."""

    def pools(self) -> dict[str, Pool]:
        """Every pool, by network id (for releasing orphans after a crash)."""

    def pools6(self) -> dict[str, Pool6]:
        """Every IPv6 pool, by network id."""
