"""Mirror.apply of a delete ahead of the watch: the watch's late copy of an older put of
the same key must not bring the value back (IPAM would see a released pool or address
as taken until the watch caught up)."""

from __future__ import annotations

from cnm.store.memory import MemoryStore
from cnm.store.mirror import Mirror


def _decode(name: str, doc: dict) -> str:
    return str(doc["v"])


async def test_own_delete_is_not_undone_by_the_watchs_older_put():
    store = MemoryStore()
    mirror: Mirror[str] = Mirror(store, "p/", _decode)
    seen: list[tuple[str, str | None, str | None]] = []
    mirror.listen(lambda name, old, new: seen.append((name, old, new)))
    await mirror.start()
    # Put then delete, both applied at once; the watch has delivered neither yet.
    put_rev = await store.put("p/a", {"v": "1"})
    mirror.apply("a", "1", put_rev)
    del_rev = await store.delete("p/a")
    mirror.apply("a", None, del_rev)
    assert "a" not in mirror.items
    await mirror.seen(del_rev)
    assert "a" not in mirror.items
    assert seen == [("a", None, "1"), ("a", "1", None)]  # never resurrected in between
    # A later put by someone else is applied as usual.
    again = await store.put("p/a", {"v": "2"})
    await mirror.seen(again)
    assert mirror.items == {"a": "2"}
    await mirror.close()


async def test_delete_of_a_key_the_watch_has_not_brought_yet():
    """Another writer's put, then our delete of it, before the watch delivered either."""
    store = MemoryStore()
    mirror: Mirror[str] = Mirror(store, "p/", _decode)
    seen: list[tuple[str, str | None, str | None]] = []
    mirror.listen(lambda name, old, new: seen.append((name, old, new)))
    await mirror.start()
    await store.put("p/b", {"v": "other"})
    rev = await store.delete("p/b")
    mirror.apply("b", None, rev)
    await mirror.seen(rev)
    assert mirror.items == {} and seen == []  # the stale put never showed
    await mirror.close()


async def test_remembered_deletes_are_forgotten_once_the_watch_passes_them():
    """A delete recorded at a revision the watch never reports for that key (the
    store's revision when the caller read the key absent) is not kept forever."""
    store = MemoryStore()
    mirror: Mirror[str] = Mirror(store, "p/", _decode)
    await mirror.start()
    await store.put("p/c", {"v": "1"})
    await store.delete("p/c")
    rev = await store.put("p/d", {"v": "2"})
    mirror.apply("c", None, rev)  # "absent as of rev" (its delete was earlier)
    assert mirror._gone == {"c": rev}
    await mirror.seen(rev)
    assert mirror._gone == {} and mirror.items == {"d": "2"}
    await mirror.close()
