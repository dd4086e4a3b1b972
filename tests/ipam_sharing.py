"""Several daemons' IPAM on one store: the checks, written once for any Store backend.

A "daemon" here is a ``DefaultIpam`` with its own cache, fed by its own watch, on its own
client of the store (``open_store`` is called once per daemon: a backend with a server
gives each daemon a connection of its own; the in-process MemoryStore hands out the same
store every time).  The unit tier runs these on a MemoryStore
(tests/unit/test_ipam_shared.py); the etcd tier runs the same functions with an etcd
client per daemon, and when the daemons are processes, each runs ``run_daemon`` and the
parent checks what they hold with ``assert_disjoint`` and ``assert_store_holds``.

The properties: concurrent allocations from one pool never hand out an address twice, and
every daemon's cache comes to show the others' allocations and releases (through the
watch, without a restart); of two daemons creating overlapping pools at once, exactly one
wins and the other gets Docker's Forbidden.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from cnm.errors import Conflict, Forbidden
from cnm.ipam.default import ADDRESS_PREFIX, OWNER_GATEWAY, DefaultIpam
from cnm.model.network import IpamConfig
from cnm.store.api import Change, Check, Document, Entry, Listing, Op, Scope, Store

StoreOpener = Callable[[], AbstractAsyncContextManager[Store]]

SHARED_NETWORK = "shared0123456789"
SHARED_SUBNET = IPv4Network("10.200.0.0/20")  # 4094 addresses: 2 x 1000 and churn fit


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; AssertionError naming ``what`` after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"after {timeout:g}s still not: {what}")
        await asyncio.sleep(0.001)


async def allocate_many(
    ipam: DefaultIpam,
    network_id: str,
    count: int,
    owner_prefix: str,
    *,
    release_ratio: float = 0.0,
    seed: int = 0,
) -> dict[IPv4Address, str]:
    """One daemon's share: ``count`` allocations on ``network_id``, yielding to the event
    loop between them as a daemon serving requests does; with ``release_ratio``, after
    an allocation one of the addresses held is released with that probability.  Returns
    what this daemon holds at the end, with the owners."""
    rng = random.Random(seed)
    held: dict[IPv4Address, str] = {}
    for n in range(count):
        owner = f"{owner_prefix}-{n}"
        address = await ipam.allocate_address(network_id, owner)
        assert address not in held, f"{address} handed out twice to {owner_prefix}"
        held[address] = owner
        if release_ratio and rng.random() < release_ratio:
            gone = rng.choice(list(held))
            await ipam.release_address(network_id, gone)
            del held[gone]
        await asyncio.sleep(0)
    return held


def assert_disjoint(holdings: Sequence[Mapping[IPv4Address, str]], subnet: IPv4Network) -> None:
    """No address is held by two daemons, and each is a host address of ``subnet``."""
    seen: dict[IPv4Address, int] = {}
    for i, held in enumerate(holdings):
        for address in held:
            assert address in subnet and address not in (subnet.network_address, subnet.broadcast_address)
            assert address not in seen, f"{address} handed out to daemon {seen[address]} and daemon {i}"
            seen[address] = i


async def assert_store_holds(store: Store, network_id: str, expected: Mapping[IPv4Address, str]) -> None:
    """The store's address keys of ``network_id`` are exactly ``expected`` (gateway aside)."""
    listing = await store.list(f"{ADDRESS_PREFIX}{network_id}/")
    stored = {IPv4Address(e.key.rsplit("/", 1)[1]): e.doc["owner"] for e in listing.entries}
    stored = {a: o for a, o in stored.items() if o != OWNER_GATEWAY}
    assert stored == dict(expected)


async def ensure_shared_pool(ipam: DefaultIpam) -> None:
    """Create the shared pool unless another daemon has (or is creating it right now)."""
    if ipam.pool(SHARED_NETWORK) is None:
        with contextlib.suppress(Conflict):
            await ipam.allocate_pool(SHARED_NETWORK, IpamConfig(subnet=SHARED_SUBNET))


async def run_daemon(
    open_store: StoreOpener, count: int, owner_prefix: str, *, seed: int = 0
) -> dict[str, str]:
    """What one daemon process runs: open the store, make sure the shared pool is there,
    allocate ``count`` addresses (releasing some on the way) and return what it holds, as
    text (JSON for the parent, which checks all of them with ``assert_disjoint`` and
    ``assert_store_holds``)."""
    async with open_store() as store:
        ipam = DefaultIpam(store)
        await ipam.start()
        try:
            await ensure_shared_pool(ipam)
            held = await allocate_many(
                ipam, SHARED_NETWORK, count, owner_prefix, release_ratio=0.1, seed=seed
            )
        finally:
            await ipam.close()
    return {str(a): o for a, o in held.items()}


@dataclass
class AllocationFigures:
    """What ``check_parallel_allocation`` measured (printed by the callers, never asserted)."""

    allocations: int
    seconds: float
    conflicts: int


@contextlib.asynccontextmanager
async def daemons(open_store: StoreOpener, count: int) -> AsyncIterator[list[tuple[Store, DefaultIpam]]]:
    """``count`` started DefaultIpam instances, each on its own ``open_store()``."""
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for _ in range(count):
            store = await stack.enter_async_context(open_store())
            ipam = DefaultIpam(store)
            await ipam.start()
            stack.push_async_callback(ipam.close)
            out.append((store, ipam))
        yield out


async def check_parallel_allocation(
    open_store: StoreOpener, *, count: int = 1000, n_daemons: int = 2, release_ratio: float = 0.1
) -> AllocationFigures:
    """``n_daemons`` allocate ``count`` addresses each from one pool, at once, some
    releasing as they go: no address is handed out twice, the store holds exactly what
    they hold, and every cache comes to show all of it.  Then daemon 0 releases all it
    holds, the others see the addresses free, and daemon 1's next allocations are exactly
    the lowest free addresses (those, and any that a release during the run left free),
    which the others see taken again."""
    async with daemons(open_store, n_daemons) as ds:
        (store0, first), others = ds[0], [ipam for _, ipam in ds[1:]]
        await first.allocate_pool(SHARED_NETWORK, IpamConfig(subnet=SHARED_SUBNET))
        for ipam in others:
            await wait_until(lambda ipam=ipam: ipam.pool(SHARED_NETWORK) is not None, "the pool is seen")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        holdings = await asyncio.gather(
            *(
                allocate_many(ipam, SHARED_NETWORK, count, f"d{i}", release_ratio=release_ratio, seed=i)
                for i, (_, ipam) in enumerate(ds)
            )
        )
        seconds = loop.time() - t0
        assert_disjoint(holdings, SHARED_SUBNET)
        union = {a: o for held in holdings for a, o in held.items()}
        await assert_store_holds(store0, SHARED_NETWORK, union)
        gateway = first.pool(SHARED_NETWORK).gateway  # type: ignore[union-attr]
        everything = {**union, gateway: OWNER_GATEWAY}
        for i, (_, ipam) in enumerate(ds):
            await wait_until(
                lambda ipam=ipam: ipam.owners(SHARED_NETWORK) == everything, f"daemon {i} sees all"
            )

        freed = sorted(holdings[0])
        for address in freed:
            await first.release_address(SHARED_NETWORK, address)
        rest = {a: o for a, o in everything.items() if a not in holdings[0]}
        for i, (_, ipam) in enumerate(ds):
            await wait_until(
                lambda ipam=ipam: ipam.owners(SHARED_NETWORK) == rest, f"daemon {i} sees the release"
            )
        second = ds[1][1]
        # the lowest free addresses: daemon 0's, and any a release during the run left free
        lowest = [a for a in SHARED_SUBNET.hosts() if a not in rest][: len(freed)]
        again = [await second.allocate_address(SHARED_NETWORK, f"again-{n}") for n in range(len(freed))]
        assert again == lowest
        final = second.owners(SHARED_NETWORK)
        for i, (_, ipam) in enumerate(ds):
            await wait_until(
                lambda ipam=ipam: ipam.owners(SHARED_NETWORK) == final, f"daemon {i} sees the reuse"
            )
        conflicts = sum(ipam.conflicts for _, ipam in ds)
        return AllocationFigures(allocations=count * n_daemons, seconds=seconds, conflicts=conflicts)


async def check_overlapping_pools(open_store: StoreOpener, *, rounds: int = 10) -> int:
    """Two daemons create overlapping pools at the same moment, ``rounds`` times (the same
    subnet, a subnet inside the other's, and two default pools): exactly one of two
    overlapping requests wins, the other is Forbidden with Docker's message, and both
    caches agree on the winner; two default-pool requests both succeed, with subnets that
    do not overlap.  Returns the compare-and-swaps lost on the way."""
    async with daemons(open_store, 2) as ds:
        (_, a), (_, b) = ds
        for r in range(rounds):
            big, small = IPv4Network(f"10.{100 + r}.0.0/16"), IPv4Network(f"10.{100 + r}.7.0/24")
            for k, (sa, sb) in enumerate(((big, big), (big, small), (small, big))):
                ida, idb = f"a{r}x{k}", f"b{r}x{k}"
                got = await asyncio.gather(
                    a.allocate_pool(ida, IpamConfig(subnet=sa)),
                    b.allocate_pool(idb, IpamConfig(subnet=sb)),
                    return_exceptions=True,
                )
                losers = [g for g in got if isinstance(g, BaseException)]
                assert len(losers) == 1, f"round {r} {sa} vs {sb}: {got}"
                assert isinstance(losers[0], Forbidden) and "Pool overlaps" in str(losers[0]), losers
                winner = ida if not isinstance(got[0], BaseException) else idb
                for ipam in (a, b):
                    await wait_until(
                        lambda ipam=ipam, w=winner: ipam.pool(w) is not None, "both see the winner"
                    )
                    assert ipam.pool(ida if winner == idb else idb) is None
                await (a if winner == ida else b).release_pool(winner)
                for ipam in (a, b):
                    await wait_until(lambda ipam=ipam, w=winner: ipam.pool(w) is None, "both see the release")
            da, db = await asyncio.gather(a.allocate_pool(f"da{r}", None), b.allocate_pool(f"db{r}", None))
            assert not da.subnet.overlaps(db.subnet), (da, db)
        return a.conflicts + b.conflicts


class LatencyStore:
    """A Store in front of another that yields to the event loop before every call, as a
    round trip to a server would: in one process, two daemons' calls then interleave
    (another's claim lands between this one's decision and its write)."""

    def __init__(self, inner: Store, *, seed: int = 0, max_yields: int = 2) -> None:
        self._inner = inner
        self._rng = random.Random(seed)
        self._max_yields = max_yields
        self.scope: Scope = inner.scope

    async def _trip(self) -> None:
        for _ in range(self._rng.randint(1, self._max_yields)):
            await asyncio.sleep(0)

    async def get(self, key: str) -> Entry | None:
        await self._trip()
        return await self._inner.get(key)

    async def list(self, prefix: str) -> Listing:
        await self._trip()
        return await self._inner.list(prefix)

    async def put(self, key: str, doc: Document, *, revision: int | None = None, lease: int = 0) -> int:
        await self._trip()
        return await self._inner.put(key, doc, revision=revision, lease=lease)

    async def delete(self, key: str, *, revision: int | None = None) -> int:
        await self._trip()
        return await self._inner.delete(key, revision=revision)

    async def commit(self, ops: Sequence[Op], checks: Sequence[Check] = ()) -> int:
        await self._trip()
        return await self._inner.commit(ops, checks)

    async def grant(self, ttl: float) -> int:
        return await self._inner.grant(ttl)

    async def refresh(self, lease: int) -> None:
        await self._inner.refresh(lease)

    async def revoke(self, lease: int) -> None:
        await self._inner.revoke(lease)

    def watch(self, prefix: str, from_revision: int) -> AsyncIterator[Change]:
        return self._inner.watch(prefix, from_revision)

    async def close(self) -> None:
        await self._inner.close()
