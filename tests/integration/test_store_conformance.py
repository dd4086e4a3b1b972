"""The Store contract (``cnm.store.api``), held against every backend of
``tests/store_backends.BACKENDS``: reads, compare-and-swap, transactions, watches (replay,
list-then-watch, resumption, compaction), leases, closing, and contention.

The cases use only the protocol (plus ``store_backends.compact`` to force a compaction), so
a new backend runs them by adding its entry to the registry.  No root needed.  A change is
known to be the last one when a sentinel key written after it is the next event, so "nothing
more" is asserted without waiting for silence.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from store_backends import BACKENDS, compact

from cnm.errors import NotFound, SystemFailure
from cnm.store.api import Change, Check, Compacted, Delete, Put, StaleRevision, Store

NEEDS_ROOT = False
TIMEOUT = 10.0  # generous: a failing case must end, a passing one is far quicker
SENTINEL = "zz-sentinel"


@pytest.fixture(params=sorted(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[Store]:
    async with BACKENDS[request.param](tmp_path) as s:
        yield s


async def take(watch: AsyncIterator[Change], n: int) -> list[Change]:
    """The next ``n`` changes of ``watch``."""
    return [await asyncio.wait_for(anext(watch), TIMEOUT) for _ in range(n)]


async def until_sentinel(store: Store, watch: AsyncIterator[Change], prefix: str) -> list[Change]:
    """Every change of ``watch`` up to (not including) a sentinel key written now."""
    await store.put(prefix + SENTINEL, {})
    seen: list[Change] = []
    while True:
        change = await asyncio.wait_for(anext(watch), TIMEOUT)
        if change.key == prefix + SENTINEL:
            return seen
        seen.append(change)


def summary(changes: list[Change]) -> list[tuple[str, object, int]]:
    return [(c.key, c.doc, c.revision) for c in changes]


# -- reads and plain writes ----------------------------------------------------------------


async def test_get_put_list_in_key_order_with_prefix_isolation(store: Store) -> None:
    keys = ["n1/b", "n10/a", "n1/a", "n1", "n2/a", "n1/\u00e9", "n1/\U0001f600", "n0/z"]
    revisions = []
    for i, key in enumerate(random.Random(9).sample(keys, len(keys))):
        revisions.append(await store.put(key, {"i": i}))
    assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)
    listing = await store.list("n1/")
    assert [e.key for e in listing.entries] == ["n1/a", "n1/b", "n1/\u00e9", "n1/\U0001f600"]
    assert listing.revision == revisions[-1]
    everything = await store.list("")
    assert [e.key for e in everything.entries] == sorted(keys)
    assert [e.key for e in (await store.list("n1")).entries] == [
        "n1",
        *[e.key for e in listing.entries],
        "n10/a",
    ]
    assert (await store.list("n3/")).entries == []
    entry = await store.get("n1/a")
    assert entry is not None and entry.key == "n1/a" and entry.lease == 0
    assert entry.revision == entry.created and entry.revision in revisions
    assert await store.get("n1/") is None and await store.get("missing") is None


async def test_update_keeps_created_and_delete_is_idempotent(store: Store) -> None:
    r1 = await store.put("network/a", {"v": 1})
    await store.put("network/other", {})
    r2 = await store.put("network/a", {"v": 2})
    entry = await store.get("network/a")
    assert entry is not None and (entry.doc, entry.revision, entry.created) == ({"v": 2}, r2, r1)
    r3 = await store.delete("network/a")
    assert r3 == r2 + 1 and await store.get("network/a") is None
    assert await store.delete("network/a") == r3  # nothing deleted: no new revision
    r4 = await store.put("network/a", {"v": 3})
    entry = await store.get("network/a")
    assert entry is not None and entry.created == r4  # a new life of the key


async def test_documents_are_copied_and_non_json_refused(store: Store) -> None:
    doc = {"name": "backend", "tags": ["a"], "sub": {"x": None, "ok": True, "f": 1.5}}
    await store.put("network/a", doc)
    doc["tags"].append("mutated after put")
    entry = await store.get("network/a")
    assert entry is not None and entry.doc == {
        "name": "backend",
        "tags": ["a"],
        "sub": {"x": None, "ok": True, "f": 1.5},
    }
    entry.doc["name"] = "mutated after get"
    again = await store.get("network/a")
    assert again is not None and again.doc["name"] == "backend"
    before = await store.list("")
    for bad in ({"s": {1, 2}}, {"nan": float("nan")}, {"o": object()}):
        with pytest.raises(SystemFailure, match="network/b"):
            await store.put("network/b", bad)
    with pytest.raises(SystemFailure, match="network/b"):  # nothing of the commit lands
        await store.commit([Put("network/c", {}), Put("network/b", {"s": {1}})])
    assert await store.list("") == before


# -- compare-and-swap and transactions -----------------------------------------------------


async def test_cas_create_only(store: Store) -> None:
    r1 = await store.put("ipam/address/n1/10.0.0.2", {"owner": "a"}, revision=0)
    with pytest.raises(StaleRevision) as err:
        await store.put("ipam/address/n1/10.0.0.2", {"owner": "b"}, revision=0)
    assert (err.value.key, err.value.expected, err.value.actual) == ("ipam/address/n1/10.0.0.2", 0, r1)
    assert "ipam/address/n1/10.0.0.2" in str(err.value)
    entry = await store.get("ipam/address/n1/10.0.0.2")
    assert entry is not None and entry.doc == {"owner": "a"} and entry.revision == r1
    assert (await store.list("")).revision == r1


async def test_cas_update_and_delete_with_a_stale_revision(store: Store) -> None:
    r1 = await store.put("network/a", {"v": 1})
    r2 = await store.put("network/a", {"v": 2}, revision=r1)
    for attempt in (store.put("network/a", {"v": 3}, revision=r1), store.delete("network/a", revision=r1)):
        with pytest.raises(StaleRevision) as err:
            await attempt
        assert (err.value.key, err.value.expected, err.value.actual) == ("network/a", r1, r2)
    with pytest.raises(StaleRevision, match="network/b"):
        await store.put("network/b", {}, revision=r2)  # absent: actual 0
    entry = await store.get("network/a")
    assert entry is not None and (entry.doc, entry.revision) == ({"v": 2}, r2)
    assert await store.get("network/b") is None and (await store.list("")).revision == r2
    assert await store.delete("network/a", revision=r2) == r2 + 1


async def test_commit_is_all_or_nothing(store: Store) -> None:
    r1 = await store.put("network/a", {"v": 1})
    await store.put("network/b", {"v": 1})
    before = await store.list("")
    with pytest.raises(StaleRevision) as err:
        await store.commit(
            [Put("network/a", {"v": 2}), Delete("network/b"), Put("network/c", {})],
            [Check("network/a", r1), Check("network/c", 0), Check("network/b", r1)],  # the last is stale
        )
    assert err.value.key == "network/b"
    assert await store.list("") == before
    lease = await store.grant(30)
    await store.revoke(lease)
    with pytest.raises(NotFound):  # a revoked lease in a later op: nothing of the commit lands
        await store.commit([Delete("network/a"), Put("network/d", {}, lease=lease)])
    assert await store.list("") == before


async def test_commit_applies_every_op_at_one_revision(store: Store) -> None:
    r1 = await store.put("endpoint/a", {"v": 1})
    await store.put("endpoint/b", {"v": 1})
    watch = store.watch("endpoint/", r1 + 2)
    rev = await store.commit(
        [
            Put("endpoint/a", {"v": 2}),
            Delete("endpoint/b"),
            Put("endpoint/c", {"v": 1}),
            Delete("endpoint/none"),
        ],
        [Check("endpoint/a", r1), Check("endpoint/none", 0)],
    )
    assert rev == r1 + 2
    listing = await store.list("endpoint/")
    assert [(e.key, e.doc, e.revision, e.created) for e in listing.entries] == [
        ("endpoint/a", {"v": 2}, rev, r1),
        ("endpoint/c", {"v": 1}, rev, rev),
    ]
    assert summary(await take(watch, 3)) == [
        ("endpoint/a", {"v": 2}, rev),
        ("endpoint/b", None, rev),
        ("endpoint/c", {"v": 1}, rev),
    ]
    assert await until_sentinel(store, watch, "endpoint/") == []
    await watch.aclose()  # type: ignore[attr-defined]
    # Checks alone, or deletes of missing keys only, make no new revision.
    current = (await store.list("")).revision
    assert await store.commit([Delete("endpoint/none")], [Check("endpoint/a", rev)]) == current
    assert await store.commit([], [Check("endpoint/a", rev)]) == current
    assert (await store.list("")).revision == current


# -- watches -------------------------------------------------------------------------------


async def test_watch_from_an_old_revision_replays_in_order(store: Store) -> None:
    expected = []
    for i in range(6):
        key = f"network/{'ab'[i % 2]}"
        rev = await store.put(key, {"i": i})
        await store.put(f"endpoint/{i}", {})  # another prefix: never seen
        expected.append((key, {"i": i}, rev))
    rev = await store.delete("network/a")
    expected.append(("network/a", None, rev))
    watch = store.watch("network/", expected[0][2])
    got = await take(watch, len(expected))
    assert summary(got) == expected and got[-1].deleted
    assert await until_sentinel(store, watch, "network/") == []
    from_middle = store.watch("network/", expected[3][2])
    assert summary(await take(from_middle, 4)) == expected[3:]
    await asyncio.gather(watch.aclose(), from_middle.aclose())  # type: ignore[attr-defined]


async def test_list_then_watch_sees_every_change_exactly_once(store: Store) -> None:
    for i in range(5):
        await store.put(f"container/{i}", {"v": 0})
    writer_done = asyncio.Event()

    async def writer() -> None:
        for i in range(20):
            key = f"container/{i % 7}"
            if i % 5 == 4:
                await store.delete(key)
            else:
                await store.put(key, {"v": i})
            await asyncio.sleep(0)
        writer_done.set()

    task = asyncio.create_task(writer())
    await asyncio.sleep(0)  # the writer has begun
    listing = await store.list("container/")
    state = {e.key: (e.doc, e.revision) for e in listing.entries}
    watch = store.watch("container/", listing.revision + 1)
    await task
    changes = await until_sentinel(store, watch, "container/")
    await watch.aclose()  # type: ignore[attr-defined]
    revisions = [c.revision for c in changes]
    assert revisions == sorted(set(revisions)) and all(r > listing.revision for r in revisions)
    for change in changes:
        assert state.get(change.key, (None, 0))[1] < change.revision  # none seen twice
        if change.doc is None:
            state.pop(change.key)
        else:
            state[change.key] = (change.doc, change.revision)
    final = await store.list("container/")
    assert state == {e.key: (e.doc, e.revision) for e in final.entries if e.key != "container/" + SENTINEL}


async def test_two_concurrent_watchers_see_the_same_changes(store: Store) -> None:
    start = (await store.list("")).revision + 1
    watches = [store.watch("sandbox/", start), store.watch("sandbox/", start)]
    results: list[list[Change]] = [[], []]

    async def follow(i: int) -> None:
        async for change in watches[i]:
            if change.key == "sandbox/" + SENTINEL:
                return
            results[i].append(change)

    tasks = [asyncio.create_task(follow(i)) for i in range(2)]
    expected: list[tuple[str, object, int]] = []
    for i in range(10):
        key = f"sandbox/{i % 3}"
        if i % 4 == 3:  # sandbox/0 at i=3, sandbox/1 at i=7: both exist then
            expected.append((key, None, await store.delete(key)))
        else:
            expected.append((key, {"i": i}, await store.put(key, {"i": i})))
        await asyncio.sleep(0)  # let the watchers run in between
    await store.put("sandbox/" + SENTINEL, {})
    await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    assert summary(results[0]) == summary(results[1]) == expected


async def test_watch_resumes_where_it_stopped(store: Store) -> None:
    """A consumer that stopped after revision R and watches again from R + 1 (what a
    reconnect does) sees every later change once, also those made while it was away."""
    start = (await store.list("")).revision + 1
    all_changes = []
    for i in range(4):
        all_changes.append(("image/a", {"i": i}, await store.put("image/a", {"i": i})))
    watch = store.watch("image/", start)
    first = summary(await take(watch, 2))
    await watch.aclose()  # type: ignore[attr-defined]
    last_seen = first[-1][2]
    all_changes.append(("image/a", None, await store.delete("image/a")))  # while away
    all_changes.append(("image/b", {}, await store.put("image/b", {})))
    resumed = store.watch("image/", last_seen + 1)
    rest = summary(await take(resumed, len(all_changes) - 2))
    assert first + rest == all_changes
    assert await until_sentinel(store, resumed, "image/") == []
    await resumed.aclose()  # type: ignore[attr-defined]


async def test_watch_below_the_compacted_history_raises_compacted(store: Store) -> None:
    revs = [await store.put("network/a", {"i": i}) for i in range(5)]
    await compact(store, revs[3])
    with pytest.raises(Compacted) as err:
        await asyncio.wait_for(anext(store.watch("network/", revs[1])), TIMEOUT)
    assert err.value.requested == revs[1] and revs[1] < err.value.oldest <= revs[3]
    # What the caller does next: list, then watch from the listing.
    listing = await store.list("network/")
    watch = store.watch("network/", listing.revision + 1)
    rev = await store.put("network/a", {"i": 5})
    assert summary(await take(watch, 1)) == [("network/a", {"i": 5}, rev)]
    kept = store.watch("network/", revs[3])  # the kept history still replays
    assert [c.revision for c in await take(kept, 3)] == [revs[3], revs[4], rev]
    await asyncio.gather(watch.aclose(), kept.aclose())  # type: ignore[attr-defined]


# -- leases --------------------------------------------------------------------------------


async def test_lease_expiry_deletes_its_keys_with_events(store: Store) -> None:
    lease = await store.grant(0.3)
    start = await store.put("node/a", {}, lease=lease)
    await store.put("node/b", {}, lease=lease)
    await store.put("node/c", {})
    entry = await store.get("node/a")
    assert entry is not None and entry.lease == lease
    watch = store.watch("node/", start)
    changes = await take(watch, 5)  # three puts, then the lease's two deletes
    await watch.aclose()  # type: ignore[attr-defined]
    deletes = changes[3:]
    assert sorted((c.key, c.deleted) for c in deletes) == [("node/a", True), ("node/b", True)]
    assert deletes[0].revision == deletes[1].revision > changes[2].revision  # one revision
    assert [e.key for e in (await store.list("node/")).entries] == ["node/c"]
    with pytest.raises(NotFound, match="lease"):
        await store.refresh(lease)
    with pytest.raises(NotFound, match="lease"):
        await store.put("node/d", {}, lease=lease)
    assert await store.get("node/d") is None


async def test_refresh_extends_a_lease(store: Store) -> None:
    lease = await store.grant(0.6)
    await store.put("node/a", {}, lease=lease)
    for _ in range(12):  # 1.2 s: twice the ttl, kept alive by refreshes
        await asyncio.sleep(0.1)
        await store.refresh(lease)
    assert await store.get("node/a") is not None
    rev = (await store.list("")).revision
    watch = store.watch("node/", rev + 1)
    change = (await take(watch, 1))[0]  # without refreshes, it expires
    assert (change.key, change.deleted) == ("node/a", True)
    await watch.aclose()  # type: ignore[attr-defined]


async def test_revoke_ends_a_lease_now(store: Store) -> None:
    lease = await store.grant(60)
    await store.put("node/a", {}, lease=lease)
    rev = await store.put("node/b", {}, lease=lease)
    await store.put("node/b", {})  # put without the lease: node/b no longer depends on it
    watch = store.watch("node/", rev + 2)
    await store.revoke(lease)
    assert summary(await take(watch, 1)) == [("node/a", None, rev + 2)]
    assert await until_sentinel(store, watch, "node/") == []
    await watch.aclose()  # type: ignore[attr-defined]
    entry = await store.get("node/b")
    assert entry is not None and entry.lease == 0
    await store.revoke(lease)  # idempotent
    with pytest.raises(NotFound):
        await store.refresh(lease)


async def test_leases_are_independent(store: Store) -> None:
    short, long = await store.grant(0.2), await store.grant(60)
    assert short != long
    start = await store.put("node/short", {}, lease=short)
    await store.put("node/long", {}, lease=long)
    watch = store.watch("node/", start)
    changes = await take(watch, 3)  # two puts and the short lease's expiry, in some order
    await watch.aclose()  # type: ignore[attr-defined]
    assert sorted((c.key, c.deleted) for c in changes) == [
        ("node/long", False), ("node/short", False), ("node/short", True)
    ]  # fmt: skip
    await store.refresh(long)
    assert [e.key for e in (await store.list("node/")).entries] == ["node/long"]


# -- closing and contention ----------------------------------------------------------------


async def test_close_ends_watches(store: Store) -> None:
    rev = await store.put("network/a", {})
    seen: list[Change] = []

    async def follow() -> None:
        async for change in store.watch("network/", rev):
            seen.append(change)

    task = asyncio.create_task(follow())
    while not seen:
        await asyncio.sleep(0.01)
    await store.close()  # the fixture closes it once more: close is idempotent
    await asyncio.wait_for(task, TIMEOUT)  # the iteration ended, without an error
    assert [c.key for c in seen] == ["network/a"]


async def test_concurrent_cas_increments_reach_the_exact_total(store: Store) -> None:
    await store.put("counter", {"n": 0})
    conflicts = 0

    async def increment(times: int) -> None:
        nonlocal conflicts
        for _ in range(times):
            while True:
                entry = await store.get("counter")
                assert entry is not None
                await asyncio.sleep(0)  # let the others read the same revision
                try:
                    await store.put("counter", {"n": entry.doc["n"] + 1}, revision=entry.revision)
                    break
                except StaleRevision:
                    conflicts += 1

    await asyncio.wait_for(asyncio.gather(*(increment(5) for _ in range(20))), 60)
    entry = await store.get("counter")
    assert entry is not None and entry.doc == {"n": 100}
    assert conflicts > 0  # the coroutines did contend
