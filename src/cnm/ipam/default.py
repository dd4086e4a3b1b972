"""cnm's default IPAM: subnets for networks, addresses for endpoints, kept in the store.

State lives in the store -- kind ``ipam.pool`` (key: network id, document: the ``Pool``)
and kind ``ipam.address`` (key ``<network id>/<address>``, document ``{"owner": ...}``) --
and is mirrored in memory, rebuilt from the store when a ``DefaultIpam`` is made.  Every
change is written to the store in its own transaction first and mirrored only after the
commit, so memory never holds what the store refused.

Per pool, the free addresses are a sorted list of disjoint intervals, so "lowest free"
is a binary search (O(log n)) however many addresses are taken, and a release merges
with its neighbours.  cnmd calls IPAM from its one asyncio thread and every method is
synchronous, so two tasks can never be handed the same address.

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

import logging
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from cnm.errors import Conflict, Forbidden, InvalidArgument, NotFound, Unavailable
from cnm.ipam.api import DEFAULT_POOLS, Pool, PoolSpec
from cnm.model.network import IpamConfig
from cnm.model.values import check_usable_subnet, parse_ipv4_network
from cnm.store import codec
from cnm.store.docs import Store

log = logging.getLogger("cnm.ipam")

KIND_POOL = "ipam.pool"
KIND_ADDRESS = "ipam.address"
OWNER_GATEWAY = "gateway"
MAX_PREFIX = 30  # a /30 holds a gateway and one container; /31 and /32 hold no network

ERR_POOL_OVERLAP = "invalid pool request: Pool overlaps with other one on this address space"
ERR_NO_MORE_SUBNETS = (
    "could not find an available, non-overlapping IPv4 address pool among the defaults "
    "to assign to the network"
)
ERR_IN_USE = "Address already in use"
ERR_NO_ADDRESSES = "no available addresses on this pool"


def aux_owner(name: str) -> str:
    """The owner recorded for the aux address ``name``."""
    return f"aux:{name}"


def address_key(network_id: str, address: IPv4Address) -> str:
    return f"{network_id}/{address}"


# -- the default-address-pool option ---------------------------------------------------------


def validate_pool_spec(spec: PoolSpec) -> None:
    """InvalidArgument unless ``spec.base`` can be split into ``/spec.size`` subnets that
    each hold a network (``base`` prefix <= size <= 30), outside the reserved ranges."""
    base = check_usable_subnet(spec.base, "default address pool base")
    if not base.prefixlen <= spec.size <= MAX_PREFIX:
        raise InvalidArgument(
            f"invalid default address pool base={base},size={spec.size}: size must be between "
            f"the base's prefix length ({base.prefixlen}) and {MAX_PREFIX}"
        )


def parse_pool_spec(text: str) -> PoolSpec:
    """Parse ``--default-address-pool base=CIDR,size=N`` (Docker's syntax: comma-separated
    ``key=value``, keys case-insensitive)."""
    base: IPv4Network | None = None
    size: int | None = None
    for item in text.split(","):
        item = item.strip()
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidArgument(f"invalid field '{item}' must be a key=value pair")
        key, value = key.strip().lower(), value.strip()
        if key == "base":
            if ":" in value:
                raise InvalidArgument(f"invalid address pool base {value}: IPv6 pools are not supported")
            base = parse_ipv4_network(value, "address pool base")
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


def _host_bounds(subnet: IPv4Network) -> tuple[int, int]:
    """First and last assignable address: never the network or broadcast address."""
    return int(subnet.network_address) + 1, int(subnet.broadcast_address) - 1


@dataclass
class _PoolState:
    """The in-memory mirror of one network's pool and its allocations."""

    pool: Pool
    free: FreeRanges
    owners: dict[int, str] = field(default_factory=dict)

    @property
    def dynamic_bounds(self) -> tuple[int, int]:
        lo, hi = _host_bounds(self.pool.subnet)
        if self.pool.ip_range is not None:
            lo = max(lo, int(self.pool.ip_range.network_address))
            hi = min(hi, int(self.pool.ip_range.broadcast_address))
        return lo, hi


def _merge(prefixes: Iterable[IPv4Network]) -> tuple[list[int], list[int]]:
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
) -> IPv4Network | None:
    """The lowest ``/spec.size`` block of ``spec.base`` that lies in a free run of
    ``space`` (the IPv4 space minus every pool) and meets no ``reserved`` interval.  Each
    step jumps to the next free run or past a reserved prefix, so the cost grows with the
    number of free runs and reserved prefixes passed, not with the number of networks."""
    step = 1 << (32 - spec.size)
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
            return IPv4Network((addr, spec.size))
        addr = blocker + 1


def _validate_config(subnet: IPv4Network, config: IpamConfig | None) -> None:
    """Docker's ValidateIPAM checks (api/types/network/ipam.go), plus cnm's own: room for
    a network, none of the reserved ranges (loopback, multicast ...), and no gateway/aux on
    the network or broadcast address or on each other."""
    check_usable_subnet(subnet)
    if subnet.prefixlen > MAX_PREFIX:
        raise InvalidArgument(
            f"invalid subnet {subnet}: too small for a network, use a /{MAX_PREFIX} or larger"
        )
    if config is None:
        return
    errors: list[str] = []
    special = {subnet.network_address: "network address", subnet.broadcast_address: "broadcast address"}
    ip_range = config.ip_range
    if ip_range is not None:
        if ip_range.prefixlen < subnet.prefixlen:
            errors.append(
                f"invalid ip-range {ip_range}: CIDR block is bigger than its parent subnet {subnet}"
            )
        elif not ip_range.subnet_of(subnet):
            errors.append(f"invalid ip-range {ip_range}: parent subnet {subnet} doesn't contain ip-range")
    taken: dict[IPv4Address, str] = {}
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


class DefaultIpam:
    """The Ipam protocol (``cnm.ipam.api``) over a Store."""

    def __init__(self, store: Store, pools: Sequence[PoolSpec] = DEFAULT_POOLS) -> None:
        for spec in pools:
            validate_pool_spec(spec)
        self._store = store
        self._specs: tuple[PoolSpec, ...] = tuple(pools)
        self._pools: dict[str, _PoolState] = {}
        # The IPv4 space not covered by any pool: overlap checks and the default-subnet
        # walk are binary searches in it.
        self._space = FreeRanges(0, 2**32 - 1)
        self._load()

    def _load(self) -> None:
        """Rebuild the memory index from the store: pools, then every allocation."""
        pools = {key: codec.decode(Pool, doc) for key, doc in self._store.list(KIND_POOL)}
        owners: dict[str, dict[int, str]] = {nid: {} for nid in pools}
        for key, doc in self._store.list(KIND_ADDRESS):
            nid, _, text = key.rpartition("/")
            pool = pools.get(nid)
            try:
                value = IPv4Address(text)
            except ValueError:
                value = None
            if pool is None or value is None or value not in pool.subnet:
                log.warning("ipam: ignoring stored address %s: no pool holds it", key)
                continue
            owners[nid][int(value)] = str(doc.get("owner", ""))
        for nid, pool in pools.items():
            first, last = _host_bounds(pool.subnet)
            self._pools[nid] = _PoolState(pool, FreeRanges(first, last, owners[nid]), owners[nid])
            self._index_add(pool.subnet)

    def _index_add(self, subnet: IPv4Network) -> None:
        lo, hi = int(subnet.network_address), int(subnet.broadcast_address)
        if self._overlaps_pool(subnet):
            log.warning("ipam: stored pool %s overlaps another pool", subnet)
        self._space.take_range(lo, hi)

    def _index_remove(self, subnet: IPv4Network) -> None:
        self._space.give_range(int(subnet.network_address), int(subnet.broadcast_address))

    def _overlaps_pool(self, subnet: IPv4Network) -> bool:
        run_end = self._space.run_end(int(subnet.network_address))
        return run_end is None or run_end < int(subnet.broadcast_address)

    # -- pools --------------------------------------------------------------------------

    def allocate_pool(
        self,
        network_id: str,
        config: IpamConfig | None,
        *,
        reserved: Sequence[IPv4Network] = (),
        with_gateway: bool = True,
    ) -> Pool:
        """See ``cnm.ipam.api.Ipam.allocate_pool``.  A given subnet is checked against
        other networks' pools only, not ``reserved`` (as Docker does); a default-route
        ``0.0.0.0/0`` in ``reserved`` is ignored (it would block every pool)."""
        if network_id in self._pools:
            raise Conflict(f"network {network_id[:12]} already has an address pool")
        if config is not None and config.subnet is not None:
            subnet = config.subnet
            _validate_config(subnet, config)
            if self._overlaps_pool(subnet):
                raise Forbidden(ERR_POOL_OVERLAP)
        else:
            if config is not None and (config.gateway or config.ip_range or config.aux_addresses):
                raise InvalidArgument(
                    "invalid network config:\na gateway, ip-range or aux-address needs a subnet"
                )
            subnet = self._choose_subnet(reserved)
        aux = dict(config.aux_addresses) if config is not None else {}
        gateway = config.gateway if config is not None else None
        if gateway is None and with_gateway:
            first, last = _host_bounds(subnet)
            aux_values = {int(a) for a in aux.values()}
            gw = next((v for v in range(first, last + 1) if v not in aux_values), None)
            if gw is None:
                raise InvalidArgument(
                    f"invalid network config:\nno address of {subnet} is left for the gateway"
                )
            gateway = IPv4Address(gw)
        pool = Pool(
            network_id=network_id,
            subnet=subnet,
            gateway=gateway,
            ip_range=config.ip_range if config is not None else None,
        )
        reservations: dict[int, str] = {int(a): aux_owner(name) for name, a in aux.items()}
        if gateway is not None:
            reservations[int(gateway)] = OWNER_GATEWAY
        with self._store.transaction() as tx:
            tx.put(KIND_POOL, network_id, codec.encode(pool))
            for value, owner in reservations.items():
                tx.put(KIND_ADDRESS, address_key(network_id, IPv4Address(value)), {"owner": owner})
        first, last = _host_bounds(subnet)
        self._pools[network_id] = _PoolState(pool, FreeRanges(first, last, reservations), reservations)
        self._index_add(subnet)
        return pool

    def _choose_subnet(self, reserved: Sequence[IPv4Network]) -> IPv4Network:
        blocked = _merge(p for p in reserved if p.prefixlen > 0)
        for spec in self._specs:
            subnet = _first_free_subnet(spec, self._space, blocked)
            if subnet is not None:
                return subnet
        raise InvalidArgument(ERR_NO_MORE_SUBNETS)

    def release_pool(self, network_id: str) -> None:
        """Forget the pool and every address in it (in one transaction); idempotent."""
        with self._store.transaction() as tx:
            if network_id not in self._pools and tx.get(KIND_POOL, network_id) is None:
                return
            for key, _doc in tx.list(KIND_ADDRESS, f"{network_id}/"):
                tx.delete(KIND_ADDRESS, key)
            tx.delete(KIND_POOL, network_id)
        state = self._pools.pop(network_id, None)
        if state is not None:
            self._index_remove(state.pool.subnet)

    def pool(self, network_id: str) -> Pool | None:
        state = self._pools.get(network_id)
        return None if state is None else state.pool

    def pools(self) -> dict[str, Pool]:
        """Every allocated pool by network id (for reconciliation at start)."""
        return {nid: state.pool for nid, state in self._pools.items()}

    # -- addresses ----------------------------------------------------------------------

    def allocate_address(
        self, network_id: str, owner: str, preferred: IPv4Address | None = None
    ) -> IPv4Address:
        """See ``cnm.ipam.api.Ipam.allocate_address``.  NotFound if the network has no
        pool, InvalidArgument for a preferred address outside the subnet, Forbidden
        "Address already in use" (Docker's 403) if it is taken or is the network or
        broadcast address, Unavailable when the pool (or ip_range) is full."""
        state = self._pools.get(network_id)
        if state is None:
            raise NotFound(f"cannot find address pool for network {network_id}")
        if preferred is not None:
            if preferred not in state.pool.subnet:
                raise InvalidArgument(
                    f"requested address is out of range: {preferred} is not in {state.pool.subnet}"
                )
            value = int(preferred)
            if value not in state.free:
                raise Forbidden(ERR_IN_USE)
        else:
            lowest = state.free.lowest(*state.dynamic_bounds)
            if lowest is None:
                raise Unavailable(ERR_NO_ADDRESSES)
            value = lowest
        address = IPv4Address(value)
        with self._store.transaction() as tx:
            tx.put(KIND_ADDRESS, address_key(network_id, address), {"owner": owner})
        state.free.take(value)
        state.owners[value] = owner
        return address

    def release_address(self, network_id: str, address: IPv4Address) -> None:
        """Idempotent: an unknown network or a free address is not an error."""
        state = self._pools.get(network_id)
        value = int(address)
        if state is None or value not in state.owners:
            return
        with self._store.transaction() as tx:
            tx.delete(KIND_ADDRESS, address_key(network_id, address))
        del state.owners[value]
        state.free.give(value)

    def owners(self, network_id: str) -> dict[IPv4Address, str]:
        state = self._pools.get(network_id)
        if state is None:
            return {}
        return {IPv4Address(v): owner for v, owner in sorted(state.owners.items())}

    def available(self, network_id: str) -> int:
        """How many addresses dynamic allocation could still hand out (Docker 29's
        ``DynamicIPsAvailable``)."""
        state = self._pools.get(network_id)
        if state is None:
            return 0
        return state.free.count(*state.dynamic_bounds)
