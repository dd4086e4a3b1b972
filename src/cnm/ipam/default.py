"""cnm's default IPAM: subnets for networks, addresses for endpoints, kept in the Store.

State lives in the store (``cnm.store.api``), under ``ipam/``:

    ipam/pool/<network id>               the ``Pool``
    ipam/address/<network id>/<address>  ``{"owner": ...}``, one key per allocated address
    ipam/space/default                   the address space's change marker (see below)

What is in memory is a cache of those keys, fed by a watch (``cnm.store.mirror.Mirror``):
an allocation made by another daemon sharing the store shows up without a restart.  Reads
(``pool``, ``owners``, ``pools``) answer from the cache; every change is a
compare-and-swap against the store, so several daemons never hand out one thing twice:

- an address is claimed by creating its key (``Check(key, 0)``), with the pool key at the
  revision the cache holds (a pool another daemon released cannot get new addresses); a
  release deletes the key at the revision the cache holds, so it never frees an address
  someone else has taken since;
- "no two pools overlap" is one key: every pool creation and release rewrites
  ``ipam/space/default`` in its transaction and checks it is still at the revision the
  cache holds.  A pool change the cache has not seen fails that check; nothing can
  overlap a pool the cache does not know.

A claim that loses (``StaleRevision``) brings the cache up to the change that beat it and
tries again with the next candidate; after ``MAX_ATTEMPTS`` it gives up with Unavailable.
Under contention the lowest free address is what every daemon wants, so from the second
loss in a row an address is drawn among the lowest few free ones (``SPREAD``); a daemon
alone always gets the lowest.  Writes are put in the cache as soon as they are committed
(``Mirror.apply``), so a caller reads its own writes at once.

The store is the daemon's, and so is the address space: a local-scope IPAM sits on the
local store; networks that span hosts want an IPAM of their own on the cluster store.

Per pool, the free addresses are a sorted list of disjoint intervals, so "lowest free"
is a binary search (O(log n)) however many addresses are taken, and a release merges
with its neighbours.

Docker's behaviour kept here (moby ``libnetwork/ipams/defaultipam``, ``ipamapi``):
the network and broadcast addresses are never handed out, the gateway defaults to the
first address, aux addresses are reserved, dynamic allocation is the lowest free address
(a released one is reused at once) limited to ``ip_range``, a preferred address may be
anywhere in the subnet; default subnets are the first size-aligned block, in pool order,
that overlaps neither another network's pool nor a reserved (host) prefix.  Errors carry
Docker's wording and Docker's HTTP category (``ipamapi/contract.go``): pool overlap and
"Address already in use" are Forbidden (403), a full pool is Unavailable (503), and
exhausted default pools are InvalidArgument (400: current Docker's ``ErrNoMoreSubnets``;
Docker before 25 answered 404, which sends the CLI into its image-pull path).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from cnm.errors import Conflict, Forbidden, InvalidArgument, NotFound, SystemFailure, Unavailable
from cnm.ipam.api import DEFAULT_POOLS, AddressChange, Pool, Pool6, PoolSpec
from cnm.model.network import IpamConfig
from cnm.model.values import check_usable_subnet, check_usable_subnet6, parse_ip_network
from cnm.store import codec
from cnm.store.api import Check, Delete, Document, Op, Put, StaleRevision, Store
from cnm.store.mirror import Mirror

log = logging.getLogger("cnm.ipam")

PREFIX = "ipam/"
POOL_PREFIX = "ipam/pool/"
POOL6_PREFIX = "ipam/pool6/"
ADDRESS_PREFIX = "ipam/address/"
SPACE_KEY = "ipam/space/default"
OWNER_GATEWAY = "gateway"
MAX_PREFIX = 30  # a /30 holds a gateway and one container; /31 and /32 hold no network
MAX_PREFIX6 = 126  # IPv6 has no broadcast address: a /126 holds a gateway and two containers

ERR_POOL_OVERLAP = "invalid pool request: Pool overlaps with other one on this address space"
ERR_NO_MORE_SUBNETS = (
    "could not find an available, non-overlapping IPv4 address pool among the defaults "
    "to assign to the network"
)
ERR_NO_MORE_SUBNETS6 = ERR_NO_MORE_SUBNETS.replace("IPv4", "IPv6")
ERR_IN_USE = "Address already in use"
ERR_NO_ADDRESSES = "no available addresses on this pool"

# A claim that loses a compare-and-swap is retried with the next candidate this many times
# (each loss means another daemon won a claim); a cache that waits longer than
# WATCH_TIMEOUT for the watch to bring a change is Unavailable.  After the first loss in
# a row, a dynamic address is drawn among the lowest 2, 4 ... SPREAD free ones: daemons
# allocating at full speed from one pool all want the lowest, and the one whose cache
# lags would otherwise lose every time.
MAX_ATTEMPTS = 64
WATCH_TIMEOUT = 5.0
SPREAD = 64


def aux_owner(name: str) -> str:
    """The owner recorded for the aux address ``name``."""
    return f"aux:{name}"


def pool_key(network_id: str) -> str:
    return f"{POOL_PREFIX}{network_id}"


def pool6_key(network_id: str) -> str:
    return f"{POOL6_PREFIX}{network_id}"


def address_key(network_id: str, address: IPv4Address | IPv6Address) -> str:
    return f"{ADDRESS_PREFIX}{network_id}/{address}"


def _max_prefix(subnet: IPv4Network | IPv6Network) -> int:
    return MAX_PREFIX if subnet.version == 4 else MAX_PREFIX6


def _usable(subnet: IPv4Network | IPv6Network, what: str = "subnet") -> IPv4Network | IPv6Network:
    if isinstance(subnet, IPv4Network):
        return check_usable_subnet(subnet, what)
    return check_usable_subnet6(subnet, what)


def _address(value: int, v6: bool) -> IPv4Address | IPv6Address:
    return IPv6Address(value) if v6 else IPv4Address(value)


# -- the default-address-pool option ---------------------------------------------------------


def validate_pool_spec(spec: PoolSpec) -> None:
    """InvalidArgument unless ``spec.base`` can be split into ``/spec.size`` subnets that
    each hold a network (``base`` prefix <= size <= 30, or 126 for IPv6), outside the
    reserved ranges."""
    base = _usable(spec.base, "default address pool base")
    if not base.prefixlen <= spec.size <= _max_prefix(base):
        raise InvalidArgument(
            f"invalid default address pool base={base},size={spec.size}: size must be between "
            f"the base's prefix length ({base.prefixlen}) and {_max_prefix(base)}"
        )


def parse_pool_spec(text: str) -> PoolSpec:
    """Parse ``--default-address-pool base=CIDR,size=N`` (Docker's syntax: comma-separated
    ``key=value``, keys case-insensitive); an IPv6 base is a pool of IPv6 subnets."""
    base: IPv4Network | IPv6Network | None = None
    size: int | None = None
    for item in text.split(","):
        item = item.strip()
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidArgument(f"invalid field '{item}' must be a key=value pair")
        key, value = key.strip().lower(), value.strip()
        if key == "base":
            base = parse_ip_network(value, "address pool base")
        elif key == "size":
            try:
                size = int(value)
            except ValueError:
                raise InvalidArgument(f"invalid size value: {value!r} (must be integer)") from None
        else:
            raise InvalidArgument(f"unexpected key '{key}' in '{item}'")
    if base is None or size is None:
        raise InvalidArgument(f"invalid default address pool {text!r}: expected base=CIDR,size=N")
    spec = PoolSpec(base, size)
    validate_pool_spec(spec)
    return spec


# -- free addresses as intervals --------------------------------------------------------------


class FreeRanges:
    """A set of free integers as sorted, disjoint, closed intervals ``[starts[i], ends[i]]``.
    Lookups are binary searches; a take or give touches at most one interval (splitting one
    in two, or merging two neighbours)."""

    def __init__(self, first: int, last: int, used: Iterable[int] = ()) -> None:
        """All of ``[first, last]`` free except ``used`` (any order; values outside ignored)."""
        self._starts: list[int] = []
        self._ends: list[int] = []
        nxt = first
        for v in sorted(set(used)):
            if v < nxt or v > last:
                continue
            if v > nxt:
                self._starts.append(nxt)
                self._ends.append(v - 1)
            nxt = v + 1
        if nxt <= last:
            self._starts.append(nxt)
            self._ends.append(last)

    def __contains__(self, value: int) -> bool:
        i = bisect_left(self._ends, value)
        return i < len(self._ends) and self._starts[i] <= value

    def lowest(self, lo: int, hi: int) -> int | None:
        """The lowest free value in ``[lo, hi]``, or None."""
        i = bisect_left(self._ends, lo)
        if i == len(self._ends):
            return None
        value = max(self._starts[i], lo)
        return value if value <= hi else None

    def run_end(self, value: int) -> int | None:
        """The end of the free interval holding ``value``, or None if it is not free."""
        i = bisect_left(self._ends, value)
        return self._ends[i] if i < len(self._ends) and self._starts[i] <= value else None

    def take_range(self, lo: int, hi: int) -> None:
        """Mark all of ``[lo, hi]`` used (parts may be used already)."""
        i = bisect_left(self._ends, lo)  # first interval reaching lo
        j = bisect_right(self._starts, hi)  # first interval starting after hi
        if i >= j:
            return
        starts: list[int] = []
        ends: list[int] = []
        if self._starts[i] < lo:
            starts.append(self._starts[i])
            ends.append(lo - 1)
        if self._ends[j - 1] > hi:
            starts.append(hi + 1)
            ends.append(self._ends[j - 1])
        self._starts[i:j] = starts
        self._ends[i:j] = ends

    def give_range(self, lo: int, hi: int) -> None:
        """Mark all of ``[lo, hi]`` free, merging with touching intervals; idempotent."""
        i = bisect_left(self._ends, lo - 1)  # first interval touching lo from the left
        j = bisect_right(self._starts, hi + 1)  # first interval past hi + 1
        if i < j:
            lo, hi = min(lo, self._starts[i]), max(hi, self._ends[j - 1])
        self._starts[i:j] = [lo]
        self._ends[i:j] = [hi]

    def take(self, value: int) -> bool:
        """Mark ``value`` used; False if it was not free."""
        i = bisect_left(self._ends, value)
        if i == len(self._ends) or self._starts[i] > value:
            return False
        start, end = self._starts[i], self._ends[i]
        if start == end:
            del self._starts[i], self._ends[i]
        elif value == start:
            self._starts[i] = value + 1
        elif value == end:
            self._ends[i] = value - 1
        else:
            self._ends[i] = value - 1
            self._starts.insert(i + 1, value + 1)
            self._ends.insert(i + 1, end)
        return True

    def give(self, value: int) -> None:
        """Mark ``value`` free again; idempotent."""
        i = bisect_left(self._ends, value)
        if i < len(self._ends) and self._starts[i] <= value:
            return  # already free
        joins_left = i > 0 and self._ends[i - 1] == value - 1
        joins_right = i < len(self._starts) and self._starts[i] == value + 1
        if joins_left and joins_right:
            self._ends[i - 1] = self._ends[i]
            del self._starts[i], self._ends[i]
        elif joins_left:
            self._ends[i - 1] = value
        elif joins_right:
            self._starts[i] = value
        else:
            self._starts.insert(i, value)
            self._ends.insert(i, value)

    def nth(self, lo: int, hi: int, n: int) -> int | None:
        """The ``n``-th (from 0) lowest free value in ``[lo, hi]``, or None; walks at
        most ``n + 1`` intervals."""
        for i in range(bisect_left(self._ends, lo), len(self._ends)):
            start, end = max(self._starts[i], lo), min(self._ends[i], hi)
            if start > end:
                return None
            if n <= end - start:
                return start + n
            n -= end - start + 1
        return None

    def count(self, lo: int, hi: int) -> int:
        """How many free values lie in ``[lo, hi]``."""
        total = 0
        for i in range(bisect_left(self._ends, lo), len(self._ends)):
            start, end = max(self._starts[i], lo), min(self._ends[i], hi)
            if start > end:
                break
            total += end - start + 1
        return total


# -- pools ------------------------------------------------------------------------------------


def _host_bounds(subnet: IPv4Network | IPv6Network) -> tuple[int, int]:
    """First and last assignable address: never the network address (IPv6's
    subnet-router anycast address) nor IPv4's broadcast address."""
    last = int(subnet.broadcast_address)
    return int(subnet.network_address) + 1, last - 1 if subnet.version == 4 else last


class _PoolState:
    """The cache of one network's pool and its allocations (``owners`` is shared with
    ``DefaultIpam._owners``).  ``host_bounds``: first and last assignable address;
    ``dynamic_bounds``: the same within ``ip_range``."""

    __slots__ = ("dynamic_bounds", "free", "host_bounds", "owners", "pool")

    def __init__(self, pool: Pool | Pool6, owners: dict[int, str]) -> None:
        self.pool = pool
        self.owners = owners
        self.host_bounds = lo, hi = _host_bounds(pool.subnet)
        self.free = FreeRanges(lo, hi, owners)
        if pool.ip_range is not None:
            lo = max(lo, int(pool.ip_range.network_address))
            hi = min(hi, int(pool.ip_range.broadcast_address))
        self.dynamic_bounds = lo, hi


def _merge(prefixes: Iterable[IPv4Network | IPv6Network]) -> tuple[list[int], list[int]]:
    """Sorted disjoint [start, end] intervals covering ``prefixes``."""
    starts: list[int] = []
    ends: list[int] = []
    for lo, hi in sorted((int(p.network_address), int(p.broadcast_address)) for p in prefixes):
        if ends and lo <= ends[-1] + 1:
            ends[-1] = max(ends[-1], hi)
        else:
            starts.append(lo)
            ends.append(hi)
    return starts, ends


def _blocker_end(starts: list[int], ends: list[int], lo: int, hi: int) -> int | None:
    """The end of an interval of the sorted disjoint ``starts``/``ends`` that meets
    ``[lo, hi]``, or None.  The last interval starting at or before ``hi`` is the only one
    to check: any earlier one that met ``[lo, hi]`` would end before it starts."""
    i = bisect_right(starts, hi) - 1
    return ends[i] if i >= 0 and ends[i] >= lo else None


def _first_free_subnet(
    spec: PoolSpec, space: FreeRanges, reserved: tuple[list[int], list[int]]
) -> IPv4Network | IPv6Network | None:
    """The lowest ``/spec.size`` block of ``spec.base`` that lies in a free run of
    ``space`` (the IPv4 space minus every pool) and meets no ``reserved`` interval.  Each
    step jumps to the next free run or past a reserved prefix, so the cost grows with the
    number of free runs and reserved prefixes passed, not with the number of networks."""
    step = 1 << (spec.base.max_prefixlen - spec.size)
    addr = int(spec.base.network_address)
    last = int(spec.base.broadcast_address)
    while True:
        free = space.lowest(addr, last)
        if free is None:
            return None
        addr = -(-free // step) * step  # align up
        if addr + step - 1 > last:
            return None
        run_end = space.run_end(addr)
        if run_end is None:  # aligning up left the free run
            addr += 1
            continue
        if run_end < addr + step - 1:
            addr = run_end + 1
            continue
        blocker = _blocker_end(*reserved, addr, addr + step - 1)
        if blocker is None:
            return (
                IPv6Network((addr, spec.size)) if spec.base.version == 6 else IPv4Network((addr, spec.size))
            )
        addr = blocker + 1


def _validate_config(subnet: IPv4Network | IPv6Network, config: IpamConfig | None) -> None:
    """Docker's ValidateIPAM checks (api/types/network/ipam.go), plus cnm's own: room for
    a network, none of the reserved ranges (loopback, multicast, IPv6 link-local ...), and
    no gateway/aux on the network or broadcast address or on each other."""
    _usable(subnet)
    if subnet.prefixlen > _max_prefix(subnet):
        raise InvalidArgument(
            f"invalid subnet {subnet}: too small for a network, use a /{_max_prefix(subnet)} or larger"
        )
    if config is None:
        return
    mixed = [
        str(v)
        for v in (config.ip_range, config.gateway, *config.aux_addresses.values())
        if v is not None and v.version != subnet.version
    ]
    if mixed:
        raise InvalidArgument(
            f"invalid network config:\n{', '.join(mixed)} and subnet {subnet} are of different IP versions"
        )
    errors: list[str] = []
    special: dict[IPv4Address | IPv6Address, str] = {subnet.network_address: "network address"}
    if subnet.version == 4:
        special[subnet.broadcast_address] = "broadcast address"
    ip_range = config.ip_range
    if ip_range is not None:
        if ip_range.prefixlen < subnet.prefixlen:
            errors.append(
                f"invalid ip-range {ip_range}: CIDR block is bigger than its parent subnet {subnet}"
            )
        elif not (
            int(subnet.network_address) <= int(ip_range.network_address)
            and int(ip_range.broadcast_address) <= int(subnet.broadcast_address)
        ):
            errors.append(f"invalid ip-range {ip_range}: parent subnet {subnet} doesn't contain ip-range")
    taken: dict[IPv4Address | IPv6Address, str] = {}
    gateway = config.gateway
    if gateway is not None:
        if gateway not in subnet:
            errors.append(f"invalid gateway {gateway}: parent subnet {subnet} doesn't contain this address")
        elif gateway in special:
            errors.append(f"invalid gateway {gateway}: it is the {special[gateway]} of {subnet}")
        else:
            taken[gateway] = "the gateway"
    for name, aux in sorted(config.aux_addresses.items()):
        if aux not in subnet:
            errors.append(
                f"invalid auxiliary address {name}: parent subnet {subnet} doesn't contain this address"
            )
        elif aux in special:
            errors.append(f"invalid auxiliary address {name}: {aux} is the {special[aux]} of {subnet}")
        elif aux in taken:
            errors.append(f"invalid auxiliary address {name}: {aux} is already {taken[aux]}")
        else:
            taken[aux] = f"auxiliary address {name}"
    if errors:
        raise InvalidArgument("invalid network config:\n" + "\n".join(errors))


def _parse_ipv6(text: str) -> int | None:
    """The IPv6 address ``text`` (as ``str(IPv6Address)`` writes it) as an integer, or None."""
    try:
        address = IPv6Address(text)
    except ValueError:
        return None
    return int(address) if str(address) == text else None


def _parse_ipv4(text: str) -> int | None:
    """The dotted quad ``text`` as an integer, or None.  The cache parses one per address
    key; ``inet_aton`` is several times faster than ``IPv4Address``, and the round trip
    through ``inet_ntoa`` refuses its lenient forms (``1.2.3``, ``0x1.2.3.4``, ``01.2.3.4``)."""
    try:
        packed = socket.inet_aton(text)
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return None
    if socket.inet_ntoa(packed) != text:
        return None
    return int.from_bytes(packed, "big")


# What the cache holds per key under ``ipam/``: a Pool, an address's owner, or (the space
# marker, or a document that does not decode) the document itself.
_Cached = Pool | Pool6 | str | Document


def _decode(name: str, doc: Document) -> _Cached:
    """A key's document as the cache keeps it; a pool that does not decode is kept as its
    document (and so ignored), with a warning, rather than stopping the watch."""
    if name.startswith(("pool/", "pool6/")):
        try:
            if name.startswith("pool6/"):
                return codec.decode(Pool6, doc)
            return codec.decode(Pool, doc)
        except SystemFailure as exc:
            log.warning("ipam: ignoring stored pool %s: %s", name, exc)
            return doc
    if name.startswith("address/"):
        return str(doc.get("owner", ""))
    return doc


class DefaultIpam:
    """The Ipam protocol (``cnm.ipam.api``) over a Store; see the module docstring for how
    the cache and the compare-and-swaps keep daemons sharing a store apart."""

    def __init__(
        self,
        store: Store,
        pools: Sequence[PoolSpec] = DEFAULT_POOLS,
        *,
        pools6: Sequence[PoolSpec] = (),
        watch_timeout: float = WATCH_TIMEOUT,
    ) -> None:
        for spec in pools:
            validate_pool_spec(spec)
        self._store = store
        self._specs: tuple[PoolSpec, ...] = tuple(p for p in pools if p.base.version == 4)
        # IPv6 pools: those given, else ``pools6`` (the host's ULA pool, ``ula_pool``)
        self._specs6: tuple[PoolSpec, ...] = tuple(p for p in pools if p.base.version == 6)
        if not self._specs6:
            for spec in pools6:
                validate_pool_spec(spec)
            self._specs6 = tuple(pools6)
        self._watch_timeout = watch_timeout
        self._mirror: Mirror[_Cached] = Mirror(store, PREFIX, _decode)
        self._mirror.listen(self._cached)
        self._started = False
        self.conflicts = 0  # compare-and-swaps lost to another writer (a figure for benches)
        self._rng = random.Random()
        # claims lost in a row per network (``catch_up``), for the spread of the next one
        self._claims_lost: dict[str, int] = {}
        self._pools: dict[str, _PoolState] = {}
        # The owners of every network's addresses, pool known or not yet (the watch may
        # bring an address before its pool); a pool's state shares its network's dict.
        self._owners: dict[str, dict[int, str]] = {}
        # The IPv4 space not covered by any pool: overlap checks and the default-subnet
        # walk are binary searches in it.
        self._space = FreeRanges(0, 2**32 - 1)
        # The same for IPv6: pools, owners (by network) and the space outside every pool.
        self._pools6: dict[str, _PoolState] = {}
        self._owners6: dict[str, dict[int, str]] = {}
        self._space6 = FreeRanges(0, 2**128 - 1)

    async def start(self) -> None:
        """Load the cache from the store and start following its changes; once (a second
        call changes nothing)."""
        if self._started:
            return
        await self._mirror.start()
        self._started = True

    async def close(self) -> None:
        """Stop following the store (the store itself stays open)."""
        self._started = False
        await self._mirror.close()

    # -- the cache ------------------------------------------------------------------------

    def _cached(self, name: str, old: _Cached | None, new: _Cached | None) -> None:
        """Keep pools, owners, free ranges and the space index in step with one key's
        change (the Mirror's listener: a write of ours or one the watch brought)."""
        if name.startswith("address/"):
            self._address_changed(name[8:], new if isinstance(new, str) else None)
        elif name.startswith("pool/"):
            self._pool_changed(name[5:], old, new, Pool, self._pools, self._owners)
        elif name.startswith("pool6/"):
            self._pool_changed(name[6:], old, new, Pool6, self._pools6, self._owners6)

    def _pool_changed(
        self,
        nid: str,
        old: _Cached | None,
        new: _Cached | None,
        kind: type[Pool] | type[Pool6],
        pools: dict[str, _PoolState],
        all_owners: dict[str, dict[int, str]],
    ) -> None:
        if isinstance(old, kind) and (state := pools.pop(nid, None)) is not None:
            self._index_remove(state.pool.subnet)
        if isinstance(new, kind):
            pools[nid] = _PoolState(new, all_owners.setdefault(nid, {}))
            self._index_add(new.subnet)
        elif not all_owners.get(nid, True):
            del all_owners[nid]

    def _address_changed(self, rest: str, owner: str | None) -> None:
        nid, _, text = rest.rpartition("/")
        v6 = ":" in text
        value = _parse_ipv6(text) if v6 else _parse_ipv4(text)
        if value is None:
            log.warning("ipam: ignoring stored address %s of network %s: not an IP address", text, nid)
            return
        pools, all_owners = (self._pools6, self._owners6) if v6 else (self._pools, self._owners)
        state = pools.get(nid)
        if owner is not None:
            all_owners.setdefault(nid, {})[value] = owner
            if state is not None and state.host_bounds[0] <= value <= state.host_bounds[1]:
                state.free.take(value)
            return
        owners = all_owners.get(nid)
        if owners is None or owners.pop(value, None) is None:
            return
        if state is not None:
            if state.host_bounds[0] <= value <= state.host_bounds[1]:
                state.free.give(value)
        elif not owners:
            del all_owners[nid]

    def _space_of(self, subnet: IPv4Network | IPv6Network) -> FreeRanges:
        return self._space6 if subnet.version == 6 else self._space

    def _index_add(self, subnet: IPv4Network | IPv6Network) -> None:
        lo, hi = int(subnet.network_address), int(subnet.broadcast_address)
        if self._overlaps_pool(subnet):
            log.warning("ipam: stored pool %s overlaps another pool", subnet)
        self._space_of(subnet).take_range(lo, hi)

    def _index_remove(self, subnet: IPv4Network | IPv6Network) -> None:
        self._space_of(subnet).give_range(int(subnet.network_address), int(subnet.broadcast_address))

    def _overlaps_pool(self, subnet: IPv4Network | IPv6Network) -> bool:
        run_end = self._space_of(subnet).run_end(int(subnet.network_address))
        return run_end is None or run_end < int(subnet.broadcast_address)

    def _revision(self, key: str) -> int:
        """The revision of ``key`` as the cache knows it (0: absent)."""
        return self._mirror.revisions.get(key[len(PREFIX) :], 0)

    def _applied(self, ops: Sequence[Op], revision: int) -> None:
        """Put our own committed ``ops`` in the cache, in order, at once."""
        for op in ops:
            name = op.key[len(PREFIX) :]
            self._mirror.apply(name, _decode(name, op.doc) if isinstance(op, Put) else None, revision)

    async def _commit(self, ops: Sequence[Op], checks: Sequence[Check]) -> int:
        if not self._started:
            raise SystemFailure("ipam: not started (start() loads the cache)")
        revision = await self._store.commit(ops, checks)
        self._applied(ops, revision)
        return revision

    async def _refresh(self, exc: StaleRevision) -> None:
        """After a lost compare-and-swap: bring the cache up to the change that beat it.
        A key changed at a known revision: wait for the watch to deliver it (and every
        change before it, which for the space marker means every pool change).  A key that
        is gone (a pool another daemon released): read it, and record its absence at the
        store revision of that read."""
        self.conflicts += 1
        if exc.actual > 0:
            try:
                await asyncio.wait_for(self._mirror.seen(exc.actual), self._watch_timeout)
            except TimeoutError:
                raise Unavailable(
                    f"ipam: the store's changes are not arriving (waited {self._watch_timeout:g}s "
                    f"for revision {exc.actual} of {exc.key})"
                ) from None
            return
        listing = await self._store.list(exc.key)
        entry = next((e for e in listing.entries if e.key == exc.key), None)
        name = exc.key[len(PREFIX) :]
        if entry is None:
            self._mirror.apply(name, None, listing.revision)
        else:
            self._mirror.apply(name, _decode(name, entry.doc), entry.revision)

    def _gave_up(self, what: str) -> Unavailable:
        return Unavailable(
            f"ipam: gave up {what} after {MAX_ATTEMPTS} attempts: other daemons sharing the "
            "store changed it first every time"
        )

    # -- pools --------------------------------------------------------------------------

    async def allocate_pool(
        self,
        network_id: str,
        config: IpamConfig | None,
        *,
        reserved: Sequence[IPv4Network] = (),
        with_gateway: bool = True,
    ) -> Pool:
        """See ``cnm.ipam.api.Ipam.allocate_pool``.  A given subnet is checked against
        other networks' pools only, not ``reserved`` (as Docker does); a default-route
        ``0.0.0.0/0`` in ``reserved`` is ignored (it would block every pool).  The pool,
        its gateway and aux reservations and the space marker are one transaction."""
        if config is not None and config.is_v6:
            raise InvalidArgument(f"invalid network config:\n{config.subnet} is not an IPv4 subnet")
        pool = await self._allocate(network_id, config, reserved, with_gateway, v6=False)
        assert isinstance(pool, Pool)
        return pool

    async def allocate_pool6(
        self, network_id: str, config: IpamConfig | None, *, reserved: Sequence[IPv6Network] = ()
    ) -> Pool6:
        """See ``cnm.ipam.api.Ipam.allocate_pool6``: ``allocate_pool`` for the network's
        IPv6 subnet (its own key, ``ipam/pool6/<network id>``), from the IPv6 pools."""
        if config is not None and not config.is_v6:
            raise InvalidArgument(f"invalid network config:\n{config.subnet} is not an IPv6 subnet")
        pool = await self._allocate(network_id, config, reserved, True, v6=True)
        assert isinstance(pool, Pool6)
        return pool

    async def _allocate(
        self,
        network_id: str,
        config: IpamConfig | None,
        reserved: Sequence[IPv4Network | IPv6Network],
        with_gateway: bool,
        *,
        v6: bool,
    ) -> Pool | Pool6:
        if config is not None and config.subnet is not None:
            _validate_config(config.subnet, config)
        elif config is not None and (config.gateway or config.ip_range or config.aux_addresses):
            raise InvalidArgument(
                "invalid network config:\na gateway, ip-range or aux-address needs a subnet"
            )
        pools, key = (self._pools6, pool6_key(network_id)) if v6 else (self._pools, pool_key(network_id))
        for _attempt in range(MAX_ATTEMPTS):
            if network_id in pools:
                raise Conflict(
                    f"network {network_id[:12]} already has an {'IPv6 ' if v6 else ''}address pool"
                )
            if config is not None and config.subnet is not None:
                subnet = config.subnet
                if self._overlaps_pool(subnet):
                    raise Forbidden(ERR_POOL_OVERLAP)
            else:
                subnet = self._choose_subnet(reserved, v6=v6)
            pool, reservations = _plan_pool(network_id, subnet, config, with_gateway)
            ops: list[Op] = [Put(key, codec.encode(pool))]
            ops += [Put(address_key(network_id, a), {"owner": o}) for a, o in reservations.items()]
            # The marker goes last: a cache that sees its new revision has seen the pool.
            ops.append(Put(SPACE_KEY, {"network": network_id, "change": "allocate"}))
            checks = [Check(key, 0), Check(SPACE_KEY, self._revision(SPACE_KEY))]
            try:
                await self._commit(ops, checks)
            except StaleRevision as exc:
                await self._refresh(exc)
                continue
            return pool
        raise self._gave_up(f"allocating a pool for network {network_id[:12]}")

    def _choose_subnet(
        self, reserved: Sequence[IPv4Network | IPv6Network], *, v6: bool = False
    ) -> IPv4Network | IPv6Network:
        version = 6 if v6 else 4
        blocked = _merge(p for p in reserved if p.prefixlen > 0 and p.version == version)
        for spec in self._specs6 if v6 else self._specs:
            subnet = _first_free_subnet(spec, self._space6 if v6 else self._space, blocked)
            if subnet is not None:
                return subnet
        raise InvalidArgument(ERR_NO_MORE_SUBNETS6 if v6 else ERR_NO_MORE_SUBNETS)

    async def release_pool(self, network_id: str) -> None:
        """Forget the pool (both families) and every address in it; idempotent.  The
        pools, the addresses the cache knows and the space marker go in one transaction;
        addresses another daemon claimed just before (not yet in the cache) are swept
        after it -- once the pool keys are gone no new claim on them can succeed."""
        keys = (pool_key(network_id), pool6_key(network_id))
        for _attempt in range(MAX_ATTEMPTS):
            states = (self._pools.get(network_id), self._pools6.get(network_id))
            if states == (None, None):
                stored = [await self._store.get(key) for key in keys]
                entry = next(((k, e) for k, e in zip(keys, stored, strict=True) if e is not None), None)
                if entry is None:
                    break  # released already (by us or by another daemon)
                await self._refresh(StaleRevision(entry[0], 0, entry[1].revision))
                continue
            ops: list[Op] = []
            checks: list[Check] = []
            for key, state in zip(keys, states, strict=True):
                if state is None:
                    continue
                v6 = isinstance(state.pool, Pool6)
                ops.append(Delete(key))
                ops += [Delete(address_key(network_id, _address(v, v6))) for v in state.owners]
                checks.append(Check(key, self._revision(key)))
            ops.append(Put(SPACE_KEY, {"network": network_id, "change": "release"}))
            checks.append(Check(SPACE_KEY, self._revision(SPACE_KEY)))
            try:
                await self._commit(ops, checks)
            except StaleRevision as exc:
                await self._refresh(exc)
                continue
            if network_id not in self._pools and network_id not in self._pools6:
                break
        else:
            raise self._gave_up(f"releasing the pool of network {network_id[:12]}")
        leftover = await self._store.list(f"{ADDRESS_PREFIX}{network_id}/")
        if leftover.entries:
            await self._commit([Delete(e.key) for e in leftover.entries], ())

    def pool(self, network_id: str) -> Pool | None:
        state = self._pools.get(network_id)
        return None if state is None else _as_pool(state.pool)

    def pool6(self, network_id: str) -> Pool6 | None:
        state = self._pools6.get(network_id)
        return None if state is None else _as_pool6(state.pool)

    def pools(self) -> dict[str, Pool]:
        """Every allocated pool by network id (for reconciliation at start)."""
        return {nid: _as_pool(state.pool) for nid, state in self._pools.items()}

    def pools6(self) -> dict[str, Pool6]:
        """Every allocated IPv6 pool by network id."""
        return {nid: _as_pool6(state.pool) for nid, state in self._pools6.items()}

    # -- addresses ----------------------------------------------------------------------

    async def allocate_address(
        self,
        network_id: str,
        owner: str,
        preferred: IPv4Address | IPv6Address | None = None,
        *,
        v6: bool = False,
    ) -> IPv4Address | IPv6Address:
        """See ``cnm.ipam.api.Ipam.allocate_address``.  NotFound if the network has no
        pool, InvalidArgument for a preferred address outside the subnet, Forbidden
        "Address already in use" (Docker's 403) if it is taken or is the network or
        broadcast address, Unavailable when the pool (or ip_range) is full.  Under
        contention (a claim lost twice in a row) the address is a random one among the
        lowest free, not the lowest (see SPREAD)."""
        lost = 0
        v6 = v6 or isinstance(preferred, IPv6Address)
        for _attempt in range(MAX_ATTEMPTS):
            value = self._choose_address(network_id, preferred, lost, v6=v6)
            address = _address(value, v6)
            key = address_key(network_id, address)
            pkey = pool_key(network_id)
            try:
                await self._commit(
                    [Put(key, {"owner": owner})], [Check(key, 0), Check(pkey, self._revision(pkey))]
                )
            except StaleRevision as exc:
                lost += 1
                await self._refresh(exc)
                continue
            return address
        raise self._gave_up(f"allocating an address on network {network_id[:12]}")

    def _choose_address(
        self, network_id: str, preferred: IPv4Address | IPv6Address | None, lost: int, *, v6: bool
    ) -> int:
        """The address a claim takes (see ``allocate_address`` for the rules and errors);
        ``lost``: claims lost in a row, which spread the choice; ``v6``: from the IPv6 pool."""
        state = (self._pools6 if v6 else self._pools).get(network_id)
        if state is None:
            raise NotFound(f"cannot find {'IPv6 ' if v6 else ''}address pool for network {network_id}")
        if preferred is not None:
            if preferred not in state.pool.subnet:
                raise InvalidArgument(
                    f"requested address is out of range: {preferred} is not in {state.pool.subnet}"
                )
            if int(preferred) not in state.free:
                raise Forbidden(ERR_IN_USE)
            return int(preferred)
        lo, hi = state.dynamic_bounds
        lowest = state.free.lowest(lo, hi)
        if lowest is None:
            raise Unavailable(ERR_NO_ADDRESSES)
        if lost > 1:
            pick = state.free.nth(lo, hi, self._rng.randrange(min(1 << (lost - 1), SPREAD)))
            return lowest if pick is None else pick
        return lowest

    def claim_address(
        self,
        network_id: str,
        owner: str,
        preferred: IPv4Address | IPv6Address | None = None,
        *,
        v6: bool = False,
    ) -> AddressChange:
        """See ``cnm.ipam.api.Ipam.claim_address``.  The address is taken from the free
        ranges at once (a second claim before the first settles gets another one), not
        yet given an owner: ``owners`` lists stored addresses only."""
        if not self._started:
            raise SystemFailure("ipam: not started (start() loads the cache)")
        v6 = v6 or isinstance(preferred, IPv6Address)
        value = self._choose_address(network_id, preferred, self._claims_lost.get(network_id, 0), v6=v6)
        (self._pools6 if v6 else self._pools)[network_id].free.take(value)
        address = _address(value, v6)
        key, pkey = address_key(network_id, address), pool_key(network_id)
        return AddressChange(
            network_id,
            address,
            owner,
            (Put(key, {"owner": owner}),),
            (Check(key, 0), Check(pkey, self._revision(pkey))),
        )

    def _state_of(self, network_id: str, address: IPv4Address | IPv6Address) -> _PoolState | None:
        return (self._pools6 if address.version == 6 else self._pools).get(network_id)

    def release_change(self, network_id: str, address: IPv4Address | IPv6Address) -> AddressChange | None:
        """See ``cnm.ipam.api.Ipam.release_change``: checked at the revision the cache
        holds, as ``release_address``."""
        state = self._state_of(network_id, address)
        if state is None or int(address) not in state.owners:
            return None
        key = address_key(network_id, address)
        return AddressChange(network_id, address, "", (Delete(key),), (Check(key, self._revision(key)),))

    def settle(self, change: AddressChange, revision: int) -> None:
        if change.owner:
            self._claims_lost.pop(change.network_id, None)
        self._applied(change.ops, revision)

    def abandon(self, change: AddressChange) -> None:
        """A held address goes back to the free ranges unless it is stored by now (ours
        settled, or another daemon's that the watch brought)."""
        state = self._state_of(change.network_id, change.address)
        value = int(change.address)
        if not change.owner or state is None or value in state.owners:
            return
        if state.host_bounds[0] <= value <= state.host_bounds[1]:
            state.free.give(value)

    async def catch_up(self, exc: StaleRevision) -> None:
        nid = exc.key.removeprefix(ADDRESS_PREFIX).removeprefix(POOL_PREFIX).removeprefix(POOL6_PREFIX)
        nid = nid.partition("/")[0]
        self._claims_lost[nid] = self._claims_lost.get(nid, 0) + 1
        await self._refresh(exc)

    async def release_address(self, network_id: str, address: IPv4Address | IPv6Address) -> None:
        """Idempotent: an unknown network or a free address is not an error.  The key is
        deleted only at the revision the cache holds: if it changed, the address was
        released and claimed again (by another daemon) since, and is not ours to free."""
        state = self._state_of(network_id, address)
        if state is None or int(address) not in state.owners:
            return
        key = address_key(network_id, address)
        try:
            await self._commit([Delete(key)], [Check(key, self._revision(key))])
        except StaleRevision:
            return

    def owners(self, network_id: str) -> dict[IPv4Address | IPv6Address, str]:
        """IPv4 addresses first, then IPv6, each in order."""
        found: dict[IPv4Address | IPv6Address, str] = {}
        for pools, v6 in ((self._pools, False), (self._pools6, True)):
            state = pools.get(network_id)
            if state is not None:
                found.update((_address(v, v6), owner) for v, owner in sorted(state.owners.items()))
        return found

    def available(self, network_id: str) -> int:
        """How many addresses dynamic allocation could still hand out (Docker 29's
        ``DynamicIPsAvailable``)."""
        state = self._pools.get(network_id)
        if state is None:
            return 0
        return state.free.count(*state.dynamic_bounds)


def _as_pool(pool: Pool | Pool6) -> Pool:
    assert isinstance(pool, Pool)
    return pool


def _as_pool6(pool: Pool | Pool6) -> Pool6:
    assert isinstance(pool, Pool6)
    return pool


def _plan_pool(
    network_id: str, subnet: IPv4Network | IPv6Network, config: IpamConfig | None, with_gateway: bool
) -> tuple[Pool | Pool6, dict[IPv4Address | IPv6Address, str]]:
    """The pool for ``subnet`` and its reserved addresses (gateway, aux) with their owners."""
    aux = dict(config.aux_addresses) if config is not None else {}
    gateway = config.gateway if config is not None else None
    if gateway is None and with_gateway:
        first, last = _host_bounds(subnet)
        aux_values = {int(a) for a in aux.values()}
        gw = next((v for v in range(first, last + 1) if v not in aux_values), None)
        if gw is None:
            raise InvalidArgument(f"invalid network config:\nno address of {subnet} is left for the gateway")
        gateway = _address(gw, subnet.version == 6)
    ip_range = config.ip_range if config is not None else None
    pool: Pool | Pool6
    if isinstance(subnet, IPv6Network):
        assert isinstance(gateway, IPv6Address | None) and isinstance(ip_range, IPv6Network | None)
        pool = Pool6(network_id=network_id, subnet=subnet, gateway=gateway, ip_range=ip_range)
    else:
        assert isinstance(gateway, IPv4Address | None) and isinstance(ip_range, IPv4Network | None)
        pool = Pool(network_id=network_id, subnet=subnet, gateway=gateway, ip_range=ip_range)
    reservations: dict[IPv4Address | IPv6Address, str] = {a: aux_owner(name) for name, a in aux.items()}
    if gateway is not None:
        reservations[gateway] = OWNER_GATEWAY
    return pool, reservations
