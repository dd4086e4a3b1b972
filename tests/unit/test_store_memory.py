"""MemoryStore, the reference backend: what the conformance suite cannot provoke on every
backend (a compaction overtaking a running watch) and the Mirror that rides on it."""

from __future__ import annotations

import asyncio

import pytest

from cnm.store.api import Compacted
from cnm.store.memory import MemoryStore
from cnm.store.mirror import Mirror


async def test_a_watch_from_zero_replays_from_the_start():
    store = MemoryStore()
    await store.put("k/a", {"n": 1})
    watch = store.watch("k/", 0)
    change = await anext(watch)
    assert (change.key, change.revision) == ("k/a", 1)
    await watch.aclose()


async def test_a_compaction_that_overtakes_a_running_watch_raises_compacted():
    store = MemoryStore()
    await store.put("k/a", {"n": 1})
    watch = store.watch("k/", 1)
    assert (await anext(watch)).revision == 1
    await store.put("k/b", {"n": 2})
    await store.put("k/c", {"n": 3})
    store.compact(3)  # revision 2, which the watch has not delivered yet, is gone
    with pytest.raises(Compacted):
        await anext(watch)


async def test_a_mirror_relists_after_compaction_and_reports_the_difference():
    store = MemoryStore()
    await store.put("k/a", {"n": 1})
    await store.put("k/b", {"n": 2})
    mirror: Mirror[int] = Mirror(store, "k/", lambda _name, doc: doc["n"])
    seen: list[tuple[str, int | None, int | None]] = []
    mirror.listen(lambda name, old, new: seen.append((name, old, new)))
    await mirror.start()
    seen.clear()
    # changes and a compaction with no await between them: the mirror's watch falls behind
    # the history, gets Compacted, and must list again
    await store.delete("k/a")
    revision = await store.put("k/c", {"n": 3})
    store.compact(revision + 1)
    await asyncio.wait_for(mirror.seen(revision), 2)
    assert mirror.items == {"b": 2, "c": 3}
    assert sorted(seen, key=str) == sorted([("a", 1, None), ("c", None, 3)], key=str)
    await mirror.close()


async def test_a_mirror_whose_watch_fails_follows_the_store_again(monkeypatch):
    from cnm.errors import Unavailable
    from cnm.store import mirror as mirror_mod

    monkeypatch.setattr(mirror_mod, "RETRY_S", 0.01)
    store = MemoryStore()
    real_watch = store.watch
    failures = [Unavailable("store: connection lost")]

    async def flaky_watch(prefix, from_revision):
        if failures:
            raise failures.pop()
        async for change in real_watch(prefix, from_revision):
            yield change

    store.watch = flaky_watch  # type: ignore[method-assign]
    mirror: Mirror[int] = Mirror(store, "k/", lambda _name, doc: doc["n"])
    await mirror.start()
    revision = await store.put("k/a", {"n": 1})
    await asyncio.wait_for(mirror.seen(revision), 2)
    assert mirror.items == {"a": 1} and not failures
    await mirror.close()
