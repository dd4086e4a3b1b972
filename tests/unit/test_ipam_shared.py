"""Two daemons' IPAM on one store (two DefaultIpam caches on one MemoryStore, each fed by
its own watch): no address handed out twice, each sees the other's changes, overlapping
pools have one winner; and the edges of the compare-and-swap scheme one at a time.

The core checks live in tests/ipam_sharing.py so the etcd tier can run them too."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N

import pytest
from ipam_sharing import (
    SHARED_NETWORK,
    SHARED_SUBNET,
    LatencyStore,
    assert_disjoint,
    assert_store_holds,
    check_overlapping_pools,
    check_parallel_allocation,
    run_daemon,
)

from cnm.errors import Forbidden, NotFound, Unavailable
from cnm.ipam import default
from cnm.ipam.default import DefaultIpam, address_key
from cnm.model.network import IpamConfig
from cnm.store.api import Change, Check, Op, Put, StaleRevision, Store
from cnm.store.memory import MemoryStore


def shared(store: Store):
    """An opener handing every daemon the same in-process store (closed by the test)."""

    @contextlib.asynccontextmanager
    async def open_store() -> AsyncIterator[Store]:
        yield store

    return open_store


async def started(store: Store, **kw) -> DefaultIpam:
    ipam = DefaultIpam(store, **kw)
    await ipam.start()
    return ipam


@pytest.mark.parametrize("seed", [1, 2])
async def test_two_daemons_allocate_1000_each_from_one_pool(seed, capsys):
    inner = MemoryStore()
    stores = iter([LatencyStore(inner, seed=seed), LatencyStore(inner, seed=seed + 100)])

    @contextlib.asynccontextmanager
    async def open_store() -> AsyncIterator[Store]:
        yield next(stores)

    figures = await check_parallel_allocation(open_store, count=1000)
    # The daemons did race: claims were lost and retried (else this proved nothing).
    assert figures.conflicts > 0
    with capsys.disabled():
        print(
            f"\nipam: 2 daemons x 1000 allocations on one MemoryStore in {figures.seconds * 1e3:.0f} ms "
            f"({figures.allocations / figures.seconds:.0f}/s), {figures.conflicts} lost compare-and-swaps"
        )
    await inner.close()


async def test_two_daemons_without_latency():
    """Each call completes without yielding: the caches are fed only between allocations."""
    store = MemoryStore()
    await check_parallel_allocation(shared(store), count=300)
    await store.close()


async def test_overlapping_pools_have_exactly_one_winner():
    inner = MemoryStore()
    stores = iter([LatencyStore(inner, seed=3), LatencyStore(inner, seed=4)])

    @contextlib.asynccontextmanager
    async def open_store() -> AsyncIterator[Store]:
        yield next(stores)

    conflicts = await check_overlapping_pools(open_store, rounds=8)
    assert conflicts > 0
    await inner.close()


# -- one edge at a time, with a daemon whose watch is held back ---------------------------


class HeldWatchStore(LatencyStore):
    """The same store, but this daemon's watch delivers nothing while ``held`` is set: its
    cache is stale for as long as the test wants."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner, max_yields=1)
        self.held = False
        self._released = asyncio.Event()

    def hold(self) -> None:
        self.held = True
        self._released.clear()

    def release(self) -> None:
        self.held = False
        self._released.set()

    async def watch(self, prefix: str, from_revision: int) -> AsyncIterator[Change]:
        async for change in super().watch(prefix, from_revision):
            while self.held:
                await self._released.wait()
            yield change


@pytest.fixture
async def pair():
    """Daemon ``a`` on the store, daemon ``b`` on the same store behind a held-back watch,
    both with the pool 10.0.0.0/24 of network ``n``."""
    inner = MemoryStore()
    held = HeldWatchStore(inner)
    a = await started(inner)
    await a.allocate_pool("n", IpamConfig(subnet=N("10.0.0.0/24")))
    b = await started(held, watch_timeout=2.0)
    yield a, b, held, inner
    held.release()
    await a.close()
    await b.close()
    await inner.close()


async def test_a_stale_cache_loses_the_claim_and_takes_the_next(pair):
    a, b, held, _ = pair
    held.hold()
    assert await a.allocate_address("n", "ea") == A("10.0.0.2")
    held.release()  # b's claim of .2 fails; it waits for its watch, then takes .3
    assert await b.allocate_address("n", "eb") == A("10.0.0.3")
    assert b.conflicts == 1 and b.owners("n")[A("10.0.0.2")] == "ea"


async def test_a_preferred_address_taken_elsewhere_is_forbidden(pair):
    a, b, held, _ = pair
    held.hold()
    await a.allocate_address("n", "ea", A("10.0.0.50"))
    asyncio.get_running_loop().call_later(0.05, held.release)
    with pytest.raises(Forbidden, match="^Address already in use$"):
        await b.allocate_address("n", "eb", A("10.0.0.50"))


async def test_release_never_frees_an_address_claimed_again_since(pair):
    """b saw .2 owned by ea; a releases it and hands it to ea2 while b's watch is held:
    b releasing .2 (its stale view) must leave ea2's claim alone."""
    a, b, held, inner = pair
    await a.allocate_address("n", "ea")
    await asyncio.sleep(0.01)
    assert b.owners("n")[A("10.0.0.2")] == "ea"
    held.hold()
    await a.release_address("n", A("10.0.0.2"))
    assert await a.allocate_address("n", "ea2") == A("10.0.0.2")
    await b.release_address("n", A("10.0.0.2"))
    entry = await inner.get(address_key("n", A("10.0.0.2")))
    assert entry is not None and entry.doc == {"owner": "ea2"}


async def test_no_address_in_a_pool_released_elsewhere(pair):
    a, b, held, inner = pair
    held.hold()
    await a.release_pool("n")
    with pytest.raises(NotFound, match="cannot find address pool"):
        await b.allocate_address("n", "eb")
    assert b.pool("n") is None
    assert (await inner.list("ipam/address/n/")).entries == []


async def test_a_pool_overlapping_one_not_yet_seen_is_forbidden(pair):
    a, b, held, _ = pair
    held.hold()
    await a.allocate_pool("m", IpamConfig(subnet=N("10.1.0.0/16")))
    asyncio.get_running_loop().call_later(0.05, held.release)  # b waits for its watch
    with pytest.raises(Forbidden, match="Pool overlaps with other one on this address space"):
        await b.allocate_pool("k", IpamConfig(subnet=N("10.1.5.0/24")))


async def test_default_pool_taken_elsewhere_moves_to_the_next(pair):
    a, b, held, _ = pair
    held.hold()
    assert (await a.allocate_pool("m", None)).subnet == N("172.17.0.0/16")
    asyncio.get_running_loop().call_later(0.05, held.release)
    assert (await b.allocate_pool("k", None)).subnet == N("172.18.0.0/16")


async def test_addresses_claimed_during_a_pool_release_are_swept(pair):
    """b claims an address c's cache has not seen, then c releases the pool: no address
    key of the network is left behind (c's transaction deletes what it knows, the
    sweep after it the rest)."""
    a, b, held, inner = pair
    await asyncio.sleep(0.01)
    deaf = HeldWatchStore(inner)  # daemon c: loaded, then sees nothing new
    c = await started(deaf)
    deaf.hold()
    await b.allocate_address("n", "eb")
    await c.release_pool("n")
    assert (await inner.list("ipam/address/n/")).entries == []
    await asyncio.sleep(0.01)
    assert a.pool("n") is None and b.pool("n") is None
    deaf.release()
    await c.close()


async def test_a_watch_that_stops_is_unavailable_not_a_hang(pair):
    a, b, held, _ = pair
    held.hold()
    await a.allocate_address("n", "ea")
    b._watch_timeout = 0.1
    with pytest.raises(Unavailable, match="the store's changes are not arriving"):
        await b.allocate_address("n", "eb")


class ThiefStore(LatencyStore):
    """Another writer that claims every address just before this daemon does."""

    async def commit(self, ops: Sequence[Op], checks: Sequence[Check] = ()) -> int:
        for op in ops:
            if isinstance(op, Put) and op.key.startswith("ipam/address/") and Check(op.key, 0) in checks:
                await self._inner.put(op.key, {"owner": "thief"})
        return await super().commit(ops, checks)


async def test_endless_contention_gives_up_with_unavailable():
    inner = MemoryStore()
    a = await started(inner)
    await a.allocate_pool("n", IpamConfig(subnet=N("10.0.0.0/22")))
    b = await started(ThiefStore(inner))
    with pytest.raises(
        Unavailable, match=f"gave up allocating an address .* after {default.MAX_ATTEMPTS} attempts"
    ):
        await b.allocate_address("n", "eb")
    assert b.conflicts == default.MAX_ATTEMPTS
    await a.close()
    await b.close()
    await inner.close()


async def test_run_daemon_twice_on_one_store():
    """The per-process entry point, run as two tasks: both find (or make) the one pool."""
    inner = MemoryStore()
    stores = iter([LatencyStore(inner, seed=5), LatencyStore(inner, seed=6)])

    @contextlib.asynccontextmanager
    async def open_store() -> AsyncIterator[Store]:
        yield next(stores)

    held = await asyncio.gather(
        run_daemon(open_store, 200, "p0", seed=0), run_daemon(open_store, 200, "p1", seed=1)
    )
    holdings = [{A(a): o for a, o in h.items()} for h in held]
    assert_disjoint(holdings, SHARED_SUBNET)
    await assert_store_holds(inner, SHARED_NETWORK, {**holdings[0], **holdings[1]})
    assert len((await inner.list("ipam/pool/")).entries) == 1
    await inner.close()


# -- claims the caller commits with its own records (network connect/disconnect) ------------


async def test_a_claim_is_held_until_settled_and_stored_with_the_callers_records():
    """``claim_address`` stores nothing: the address is held (a second claim gets the
    next one), and is the owner's once the caller's transaction carrying it settles."""
    store = MemoryStore()
    ipam = await started(store)
    await ipam.allocate_pool("n", IpamConfig(subnet=N("10.5.0.0/24")))
    first = ipam.claim_address("n", "ep1")
    second = ipam.claim_address("n", "ep2")
    assert (first.address, second.address) == (A("10.5.0.2"), A("10.5.0.3"))
    assert await store.get(address_key("n", first.address)) is None
    assert A("10.5.0.2") not in ipam.owners("n")
    with pytest.raises(Forbidden, match="^Address already in use$"):
        ipam.claim_address("n", "ep3", A("10.5.0.2"))  # held counts as taken
    revision = await store.commit([Put("endpoint/ep1", {"id": "ep1"}), *first.ops], first.checks)
    ipam.settle(first, revision)
    assert ipam.owners("n")[first.address] == "ep1"
    assert (await store.get(address_key("n", first.address))).doc == {"owner": "ep1"}
    ipam.abandon(first)  # settled: nothing happens
    assert ipam.owners("n")[first.address] == "ep1"
    ipam.abandon(second)  # never committed: free again, the lowest
    assert ipam.claim_address("n", "ep4").address == A("10.5.0.3")
    await ipam.close()


async def test_a_release_change_frees_the_address_in_the_callers_transaction():
    store = MemoryStore()
    ipam = await started(store)
    await ipam.allocate_pool("n", IpamConfig(subnet=N("10.5.0.0/24")))
    a = await ipam.allocate_address("n", "ep1")
    change = ipam.release_change("n", a)
    assert change is not None and A("10.5.0.2") in ipam.owners("n")  # nothing done yet
    revision = await store.commit(list(change.ops), change.checks)
    ipam.settle(change, revision)
    assert a not in ipam.owners("n") and await store.get(address_key("n", a)) is None
    assert ipam.release_change("n", a) is None  # free already
    assert ipam.release_change("no-such-network", a) is None
    assert await ipam.allocate_address("n", "again") == a
    await ipam.close()


async def test_a_claim_another_daemon_beat_fails_the_transaction_and_the_next_gets_another():
    """Daemon a holds an address, b claims the same one first: a's transaction fails on
    the claim's check (nothing of it written), and after ``catch_up`` a's next claim
    holds the next address; abandoning the lost one frees nothing of b's."""
    store = MemoryStore()
    a, b = await started(store), await started(store)
    await a.allocate_pool("n", IpamConfig(subnet=N("10.5.0.0/24")))
    await asyncio.wait_for(b._mirror.seen((await store.list("ipam/")).revision), 5)
    held = a.claim_address("n", "ep-a")
    assert await b.allocate_address("n", "ep-b") == held.address
    with pytest.raises(StaleRevision) as lost:
        await store.commit([Put("endpoint/ep-a", {"id": "ep-a"}), *held.ops], held.checks)
    assert held.concerns(lost.value)
    assert await store.get("endpoint/ep-a") is None
    a.abandon(held)
    await a.catch_up(lost.value)
    assert a.owners("n")[held.address] == "ep-b"
    again = a.claim_address("n", "ep-a")
    assert again.address == A("10.5.0.3")
    a.settle(again, await store.commit(list(again.ops), again.checks))
    assert a.owners("n")[again.address] == "ep-a"
    await a.close()
    await b.close()


async def test_a_release_whose_address_was_claimed_again_is_refused_by_its_check():
    store = MemoryStore()
    a, b = await started(store), await started(store)
    await a.allocate_pool("n", IpamConfig(subnet=N("10.5.0.0/24")))
    addr = await a.allocate_address("n", "ep-a")
    change = a.release_change("n", addr)
    await a.release_address("n", addr)  # as if released meanwhile ...
    await asyncio.wait_for(b._mirror.seen((await store.list("ipam/")).revision), 5)
    assert await b.allocate_address("n", "ep-b") == addr  # ... and claimed again by b
    with pytest.raises(StaleRevision) as stale:
        await store.commit(list(change.ops), change.checks)
    assert change.concerns(stale.value)
    assert (await store.get(address_key("n", addr))).doc == {"owner": "ep-b"}
    await a.close()
    await b.close()
