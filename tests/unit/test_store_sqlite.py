"""SqliteStore specifics, beyond the conformance suite: the file keeps revisions, history
and leases across reopening; the migration of release 1's file; the schema and its
version; a busy file -> Unavailable; watches reading the history in batches; automatic
compaction; what the connection keeps in memory (revisions, the tail of its changes the
watches read) staying right when another connection writes or a write fails; bad input;
and the latency of a call (printed, not asserted)."""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from store_v1 import sqlite as docs_sqlite

import cnm.store.sqlite as sqlite_mod
from cnm.errors import InvalidArgument, NotFound, SystemFailure, Unavailable
from cnm.store.api import Change, Check, Compacted, Delete, Put, Store
from cnm.store.memory import MemoryStore
from cnm.store.sqlite import SCHEMA_VERSION, SqliteStore

TIMEOUT = 10.0


async def take(store: Store, prefix: str, from_revision: int, n: int) -> list[Change]:
    watch = store.watch(prefix, from_revision)
    try:
        return [await asyncio.wait_for(anext(watch), TIMEOUT) for _ in range(n)]
    finally:
        await watch.aclose()  # type: ignore[attr-defined]


def rows(path: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


# -- the file across reopening -------------------------------------------------------------


async def test_reopen_keeps_entries_revisions_and_history(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cnm.db"  # the directory is created
    s = SqliteStore(path)
    r1 = await s.put("network/a", {"v": 1})
    r2 = await s.commit([Put("network/a", {"v": 2}), Put("network/b", {})], [Check("network/a", r1)])
    r3 = await s.delete("network/b")
    await s.close()
    s = SqliteStore(path)
    entry = await s.get("network/a")
    assert entry is not None and (entry.doc, entry.revision, entry.created) == ({"v": 2}, r2, r1)
    assert (await s.list("")).revision == r3
    r4 = await s.put("network/c", {})
    assert r4 == r3 + 1  # revisions go on growing
    changes = await take(s, "network/", 1, 5)
    assert [(c.key, c.doc, c.revision) for c in changes] == [
        ("network/a", {"v": 1}, r1),
        ("network/a", {"v": 2}, r2),
        ("network/b", {}, r2),
        ("network/b", None, r3),
        ("network/c", {}, r4),
    ]
    await s.close()


async def test_reopen_keeps_leases(tmp_path: Path) -> None:
    path = tmp_path / "cnm.db"
    s = SqliteStore(path)
    lease = await s.grant(60)
    await s.put("node/a", {}, lease=lease)
    await s.close()
    s = SqliteStore(path)
    entry = await s.get("node/a")
    assert entry is not None and entry.lease == lease
    await s.refresh(lease)  # the lease is still known
    assert await s.grant(60) > lease  # ids are not reused
    rev = await s.put("node/b", {})
    await s.revoke(lease)
    assert [(c.key, c.deleted) for c in await take(s, "node/", rev + 1, 1)] == [("node/a", True)]
    await s.close()


async def test_a_lease_overdue_at_reopen_expires_at_open(tmp_path: Path) -> None:
    path = tmp_path / "cnm.db"
    s = SqliteStore(path)
    lease = await s.grant(0.2)
    rev = await s.put("node/a", {}, lease=lease)
    await s.close()
    await asyncio.sleep(0.4)  # the deadline passes while no process has the file open
    s = SqliteStore(path)
    assert rows(path, "SELECT key FROM kv") == []  # gone before any call
    assert [(c.key, c.deleted, c.revision) for c in await take(s, "node/", rev + 1, 1)] == [
        ("node/a", True, rev + 1)
    ]
    with pytest.raises(NotFound):
        await s.refresh(lease)
    await s.close()


async def test_a_lease_of_a_previous_process_expires_at_its_deadline(tmp_path: Path) -> None:
    path = tmp_path / "cnm.db"
    s = SqliteStore(path)
    lease = await s.grant(0.5)
    rev = await s.put("node/a", {}, lease=lease)
    await s.close()
    s = SqliteStore(path)  # before the deadline: the key is there, then a timer expires it
    assert await s.get("node/a") is not None
    assert [(c.key, c.deleted) for c in await take(s, "node/", rev + 1, 1)] == [("node/a", True)]
    await s.close()


def test_opened_outside_an_event_loop_the_first_call_arms_the_timers(tmp_path: Path) -> None:
    path = tmp_path / "cnm.db"

    async def setup() -> tuple[int, int]:
        s = SqliteStore(path)
        lease = await s.grant(0.3)
        rev = await s.put("node/a", {}, lease=lease)
        await s.close()
        return lease, rev

    _, rev = asyncio.run(setup())
    s = SqliteStore(path)  # no running loop here

    async def use() -> list[Change]:
        return await take(s, "node/", rev + 1, 1)

    assert [(c.key, c.deleted) for c in asyncio.run(use())] == [("node/a", True)]
    asyncio.run(s.close())


# -- schema and migration ------------------------------------------------------------------


def test_schema_version_2_layout_and_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "cnm.db"
    s = SqliteStore(path)
    assert s.schema_version == SCHEMA_VERSION == 2
    assert isinstance(s, Store)
    tables = {r[0] for r in rows(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"docs", "kv", "history", "leases", "meta"}
    assert rows(path, "SELECT kind, key, doc FROM docs") == [("_schema", "version", '{"version":2}')]
    assert dict(rows(path, "SELECT name, value FROM meta")) == {"revision": 0, "oldest": 1, "lease": 0}
    assert rows(path, "PRAGMA journal_mode") == [("wal",)]
    assert s._conn().execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    asyncio.run(s.close())


def test_prefix_list_is_an_index_range_scan(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "cnm.db")
    plan = (
        s._conn()
        .execute(
            "EXPLAIN QUERY PLAN SELECT key, doc, revision, created, lease FROM kv"
            " WHERE key >= ? AND key < ? ORDER BY key",
            ("ipam/address/n1/", "ipam/address/n10"),
        )
        .fetchall()
    )
    detail = " ".join(str(r[-1]) for r in plan)
    assert "SEARCH" in detail and "PRIMARY KEY" in detail
    assert "TEMP B-TREE" not in detail  # key order comes from the index
    asyncio.run(s.close())


# Documents as release 1 wrote them: (kind, key) -> document.
V1_DOCS = {
    ("network", "a1b2"): {"id": "a1b2", "name": "backend", "driver": "bridge", "subnets": ["172.18.0.0/16"]},
    ("network", "c3d4"): {"id": "c3d4", "name": "bridge", "driver": "bridge", "default": True},
    ("endpoint", "e1"): {
        "id": "e1",
        "network": "a1b2",
        "address": "172.18.0.2/16",
        "mac": "02:42:ac:12:00:02",
    },
    ("ipam.pool", "a1b2"): {"subnet": "172.18.0.0/16", "gateway": "172.18.0.1"},
    ("ipam.address", "a1b2/172.18.0.1"): {"owner": "gateway"},
    ("ipam.address", "a1b2/172.18.0.2"): {"owner": "e1"},
    ("container", "f00d"): {"id": "f00d", "name": "web", "state": "running", "ports": [{"host": 8080}]},
    ("sandbox", "5b"): {"id": "5b", "container": "f00d", "netns": "/run/cnm/netns/5b"},
}
V2_KEYS = {
    ("network", "a1b2"): "network/a1b2",
    ("network", "c3d4"): "network/c3d4",
    ("endpoint", "e1"): "endpoint/e1",
    ("ipam.pool", "a1b2"): "ipam/pool/a1b2",
    ("ipam.address", "a1b2/172.18.0.1"): "ipam/address/a1b2/172.18.0.1",
    ("ipam.address", "a1b2/172.18.0.2"): "ipam/address/a1b2/172.18.0.2",
    ("container", "f00d"): "container/f00d",
    ("sandbox", "5b"): "sandbox/5b",
}


def write_v1(path: Path, docs: dict[tuple[str, str], dict] = V1_DOCS) -> None:
    """A file written by release 1's store (schema version 1)."""
    old = docs_sqlite.SqliteStore(path)
    with old.transaction() as tx:
        for (kind, key), doc in docs.items():
            tx.put(kind, key, doc)
    assert old.schema_version == 1
    old.close()


def v1_contents(path: Path) -> dict[tuple[str, str], dict]:
    """What release 1's store reads from ``path`` (it must still open it)."""
    old = docs_sqlite.SqliteStore(path)
    try:
        assert old.schema_version == 1
        kinds = {kind for kind, _ in V1_DOCS}
        return {(kind, key): doc for kind in kinds for key, doc in old.list(kind)}
    finally:
        old.close()


async def test_migration_from_a_release_1_file(tmp_path: Path) -> None:
    path = tmp_path / "cnm.db"
    write_v1(path)
    s = SqliteStore(path)
    assert s.schema_version == 2
    listing = await s.list("")
    assert listing.revision == 1
    assert {e.key: e.doc for e in listing.entries} == {V2_KEYS[k]: doc for k, doc in V1_DOCS.items()}
    assert {(e.revision, e.created, e.lease) for e in listing.entries} == {(1, 1, 0)}
    assert [e.key for e in (await s.list("ipam/address/a1b2/")).entries] == [
        "ipam/address/a1b2/172.18.0.1",
        "ipam/address/a1b2/172.18.0.2",
    ]
    replay = await take(s, "", 1, len(V1_DOCS))  # the migration is revision 1 of the history
    assert {(c.key, c.revision) for c in replay} == {(key, 1) for key in V2_KEYS.values()}
    await s.close()
    assert rows(path, "SELECT kind, key FROM docs") == [("_schema", "version")]
    # Idempotent: reopening changes nothing; writing goes on from revision 1.
    s = SqliteStore(path)
    assert await s.list("") == listing
    assert await s.put("network/new", {}) == 2
    await s.close()


def test_release_1_refuses_a_migrated_file(tmp_path: Path) -> None:
    path = tmp_path / "cnm.db"
    write_v1(path)
    asyncio.run(SqliteStore(path).close())
    with pytest.raises(SystemFailure, match="schema version 2, newer than this cnm"):
        docs_sqlite.SqliteStore(path)


async def test_an_empty_release_1_file_migrates_to_revision_0(tmp_path: Path) -> None:
    path = tmp_path / "cnm.db"
    write_v1(path, {})
    s = SqliteStore(path)
    listing = await s.list("")
    assert s.schema_version == 2 and listing.entries == [] and listing.revision == 0
    await s.close()


def test_a_crash_midway_through_the_migration_leaves_the_release_1_file(tmp_path: Path) -> None:
    """The process dies (no rollback, no close) after some documents were copied: the file
    still is release 1's, whole; the next open migrates it."""
    path = tmp_path / "cnm.db"
    write_v1(path)
    crash = textwrap.dedent(
        """
        import os, sys
        import cnm.store.sqlite as m
        convert, calls = m._v1_key, []
        def dying(kind, key):
            calls.append(key)
            if len(calls) == 4:
                os._exit(17)  # a crash: no rollback, no close
            return convert(kind, key)
        m._v1_key = dying
        m.SqliteStore(sys.argv[1])
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", crash, str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 17, proc.stderr
    assert v1_contents(path) == V1_DOCS

    async def migrate() -> dict[str, dict]:
        s = SqliteStore(path)
        try:
            return {e.key: e.doc for e in (await s.list("")).entries}
        finally:
            await s.close()

    assert asyncio.run(migrate()) == {V2_KEYS[k]: doc for k, doc in V1_DOCS.items()}


def test_a_corrupt_release_1_document_stops_the_migration_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "cnm.db"
    write_v1(path)
    db = sqlite3.connect(path)
    db.execute("INSERT INTO docs VALUES ('container', 'bad', 'not json')")
    db.commit()
    db.close()
    with pytest.raises(SystemFailure, match="container/bad is not valid JSON"):
        SqliteStore(path)
    db = sqlite3.connect(path)
    db.execute("DELETE FROM docs WHERE key = 'bad'")
    db.commit()
    db.close()
    assert v1_contents(path) == V1_DOCS  # nothing of the attempt remains


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cnm.db"
    asyncio.run(SqliteStore(path).close())
    db = sqlite3.connect(path)
    db.execute("UPDATE docs SET doc = '{\"version\": 3}' WHERE kind = '_schema'")
    db.commit()
    db.close()
    with pytest.raises(SystemFailure, match="schema version 3, newer than this cnm understands \\(2\\)"):
        SqliteStore(path)
    assert rows(path, "SELECT doc FROM docs") == [('{"version": 3}',)]  # left as it was


def test_a_file_that_is_not_a_cnm_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cnm.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE photos (id INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(SystemFailure, match="not a cnm store"):
        SqliteStore(path)
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(SystemFailure, match="cannot open"):
        SqliteStore(tmp_path / "dir.db")


# -- errors --------------------------------------------------------------------------------


async def test_a_busy_file_is_unavailable_and_nothing_changes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sqlite_mod, "BUSY_TIMEOUT_S", 0.05)
    path = tmp_path / "cnm.db"
    s = SqliteStore(path)
    rev = await s.put("network/a", {"v": 1})
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        for call in (
            s.put("network/a", {"v": 2}),
            s.commit([Delete("network/a")]),
            s.grant(10),
        ):
            with pytest.raises(Unavailable, match="database is locked"):
                await call
        with pytest.raises(Unavailable, match="database is locked"):
            SqliteStore(path)  # opening takes the lock too
        entry = await s.get("network/a")  # reads are not blocked by a writer in WAL mode
        assert entry is not None and entry.doc == {"v": 1} and (await s.list("")).revision == rev
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert await s.put("network/a", {"v": 2}) == rev + 1  # usable again once the lock is gone
    await s.close()


async def test_a_lease_expiry_that_finds_the_file_busy_is_retried(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sqlite_mod, "BUSY_TIMEOUT_S", 0.05)
    monkeypatch.setattr(sqlite_mod, "_EXPIRY_RETRY_S", 0.2)
    path = tmp_path / "cnm.db"
    s = SqliteStore(path)
    lease = await s.grant(0.1)
    rev = await s.put("node/a", {}, lease=lease)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    await asyncio.sleep(0.3)  # the timer ran and found the file locked
    assert await s.get("node/a") is not None
    other.execute("ROLLBACK")
    other.close()
    assert [(c.key, c.deleted) for c in await take(s, "node/", rev + 1, 1)] == [("node/a", True)]
    await s.close()


async def test_bad_input_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "cnm.db")
    await s.put("network/a", {})
    before = await s.list("")
    for ttl in (0, -1, float("nan"), float("inf"), "10"):
        with pytest.raises(InvalidArgument, match="lease ttl"):
            await s.grant(ttl)  # type: ignore[arg-type]
    for key in ("", "network/\ud800", None):
        with pytest.raises(InvalidArgument, match="key"):
            await s.put(key, {})  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="key"):
        await s.commit([Put("network/b", {})], [Check("bad\udfff", 0)])
    with pytest.raises(InvalidArgument, match="UTF-8"):
        await s.get("network/\ud800")
    assert await s.list("") == before
    await s.close()


async def test_a_corrupt_stored_document_is_a_system_failure(tmp_path: Path) -> None:
    path = tmp_path / "cnm.db"
    s = SqliteStore(path)
    db = sqlite3.connect(path)
    db.execute("INSERT INTO kv(key, doc, revision, created) VALUES ('network/x', 'not json', 1, 1)")
    db.commit()
    db.close()
    with pytest.raises(SystemFailure, match="network/x is not valid JSON"):
        await s.get("network/x")
    await s.close()


async def test_calls_after_close_fail_clearly(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "cnm.db")
    await s.close()
    await s.close()  # idempotent
    with pytest.raises(SystemFailure, match="closed"):
        await s.put("network/a", {})
    with pytest.raises(SystemFailure, match="closed"):
        await s.get("network/a")
    assert [c async for c in s.watch("", 1)] == []  # a watch of a closed store just ends


# -- watches and history -------------------------------------------------------------------


async def test_a_watch_reads_the_history_in_batches_without_loss_or_repeat(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(sqlite_mod, "WATCH_BATCH", 2)
    s = SqliteStore(tmp_path / "cnm.db")
    expected = []
    rev = await s.commit([Put(f"k/{i}", {"i": i}) for i in range(5)])  # one revision, 5 rows
    expected += [(f"k/{i}", rev) for i in range(5)]
    for i in range(3):
        await s.put("other/x", {})  # revisions the prefix does not see
        expected.append((f"k/{i}", await s.delete(f"k/{i}")))
    changes = await take(s, "k/", 1, len(expected))
    assert [(c.key, c.revision) for c in changes] == expected
    from_zero = await take(s, "k/", 0, len(expected))  # revision 0 holds no change: as from 1
    assert [(c.key, c.revision) for c in from_zero] == expected
    live = s.watch("k/", expected[-1][1] + 1)  # and new changes after a caught-up batch
    rev = await s.put("k/9", {})
    assert (await asyncio.wait_for(anext(live), TIMEOUT)).revision == rev
    await live.aclose()  # type: ignore[attr-defined]
    await s.close()


async def test_the_history_is_compacted_on_its_own(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sqlite_mod, "HISTORY_KEEP", 5)
    path = tmp_path / "cnm.db"
    s = SqliteStore(path)
    for i in range(30):
        last = await s.put("k/a", {"i": i})
    kept = [r[0] for r in rows(path, "SELECT DISTINCT revision FROM history ORDER BY revision")]
    assert 5 <= len(kept) <= 10 and kept[-1] == last and kept == list(range(kept[0], last + 1))
    assert dict(rows(path, "SELECT name, value FROM meta"))["oldest"] == kept[0]
    with pytest.raises(Compacted) as err:
        await take(s, "k/", 1, 1)
    assert (err.value.requested, err.value.oldest) == (1, kept[0])
    assert [c.revision for c in await take(s, "k/", kept[0], len(kept))] == kept
    await s.close()


async def test_a_compaction_that_overtakes_a_slow_watcher_raises_compacted(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(sqlite_mod, "WATCH_BATCH", 2)
    s = SqliteStore(tmp_path / "cnm.db")
    revs = [await s.put("k/a", {"i": i}) for i in range(6)]
    watch = s.watch("k/", 1)
    assert (await anext(watch)).revision == revs[0]
    assert (await anext(watch)).revision == revs[1]  # the first batch is consumed
    s.compact(revs[4])
    with pytest.raises(Compacted) as err:
        await anext(watch)  # revisions 3 and 4 are gone: not skipped silently
    # It asks for no later revision than the first it had not seen (at worst, the last
    # one it saw part of: a Compacted too many is safe, a change skipped is not).
    assert revs[1] <= err.value.requested <= revs[2] and err.value.oldest == revs[4]
    await s.close()


# -- what the connection keeps in memory -----------------------------------------------------


async def drain_until(watch, key: str) -> list[tuple[str, dict | None, int]]:
    """The changes a watch yields up to and including the first one of ``key``."""
    seen = []
    while True:
        change = await asyncio.wait_for(anext(watch), TIMEOUT)
        seen.append((change.key, change.doc, change.revision))
        if change.key == key:
            return seen


async def test_a_commit_of_another_connection_between_two_of_ours_is_seen(tmp_path: Path) -> None:
    """The revision counter and the watches' tail of this connection's own changes are
    memory; another connection writing the file in between (a second process) must neither
    make a revision count twice nor be skipped by a watch."""
    path = tmp_path / "cnm.db"
    s = SqliteStore(path)
    r1 = await s.put("k/a", {"v": 1})
    watch = s.watch("k/", 1)
    assert await drain_until(watch, "k/a") == [("k/a", {"v": 1}, r1)]
    other = SqliteStore(path)
    r2 = await other.commit([Put("k/b", {"v": 2}), Delete("k/a")])
    await other.close()
    r3 = await s.put("k/c", {"v": 3})
    assert (r1, r2, r3) == (r1, r1 + 1, r1 + 2)
    assert await drain_until(watch, "k/c") == [
        ("k/b", {"v": 2}, r2),
        ("k/a", None, r2),
        ("k/c", {"v": 3}, r3),
    ]
    assert [(e.key, e.revision) for e in (await s.list("k/")).entries] == [("k/b", r2), ("k/c", r3)]
    # and a watch opened now, from before all of it, reads the same from the file
    assert [(c.key, c.revision) for c in await take(s, "k/", 1, 4)] == [
        ("k/a", r1),
        ("k/b", r2),
        ("k/a", r2),
        ("k/c", r3),
    ]
    await watch.aclose()
    await s.close()


class FailingCommit:
    """A connection whose next ``COMMIT`` fails as a full disk would (SQLite rolls back)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.fail = True

    def execute(self, sql: str, *args):
        if sql == "COMMIT" and self.fail:
            self.fail = False
            self.db.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self.db, name)


async def test_a_write_that_fails_at_commit_is_not_seen_and_costs_no_revision(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "cnm.db")
    r1 = await s.put("k/a", {"v": 1})
    watch = s.watch("k/", r1 + 1)
    real, s._db = s._db, FailingCommit(s._db)  # type: ignore[assignment]
    with pytest.raises(SystemFailure, match="disk is full"):
        await s.commit([Put("k/lost", {}), Delete("k/a")], [Check("k/a", r1)])
    s._db = real
    assert await s.put("k/b", {"v": 2}) == r1 + 1
    assert await drain_until(watch, "k/b") == [("k/b", {"v": 2}, r1 + 1)]
    assert [e.key for e in (await s.list("k/")).entries] == ["k/a", "k/b"]
    await watch.aclose()
    await s.close()


async def test_a_commit_touching_a_key_several_times_ends_as_the_reference_store_does(
    tmp_path: Path,
) -> None:
    """Each table is written once per commit, so the ops are played in memory first: a key
    put, deleted and put again starts afresh (``created``), one put then deleted is gone,
    and the history keeps every op in order.  MemoryStore is the reference."""
    ops = [
        Put("k/a", {"v": 2}),
        Delete("k/a"),
        Put("k/a", {"v": 3}),
        Put("k/b", {"v": 1}),
        Delete("k/b"),
        Delete("k/c"),
        Put("k/d", {"v": 1}),
        Put("k/d", {"v": 2}),
        Delete("k/missing"),
    ]
    results = []
    for store in (SqliteStore(tmp_path / "cnm.db"), MemoryStore()):
        await store.put("k/a", {"v": 1})
        await store.put("k/c", {"v": 1})
        await store.put("k/other", {"v": 1})
        rev = await store.commit(ops, [Check("k/b", 0)])
        listing = await store.list("k/")
        changes = await take(store, "k/", rev, 8)
        results.append(
            (
                rev,
                [(e.key, e.doc, e.revision, e.created) for e in listing.entries],
                [(c.key, c.doc, c.revision) for c in changes],
            )
        )
        await store.close()
    assert results[0] == results[1]
    rev, entries, changes = results[0]
    assert entries == [
        ("k/a", {"v": 3}, rev, rev),
        ("k/d", {"v": 2}, rev, rev),
        ("k/other", {"v": 1}, 3, 3),
    ]
    assert [c[:2] for c in changes] == [(op.key, getattr(op, "doc", None)) for op in ops[:8]]


async def test_watches_woken_by_this_connection_read_nothing_from_the_file(tmp_path: Path) -> None:
    """A commit is one transaction; the watches it wakes take its changes from memory."""
    s = SqliteStore(tmp_path / "cnm.db")
    r0 = await s.put("k/a", {"v": 0})
    watches = [s.watch(prefix, 1) for prefix in ("k/", "k/a", "other/")]
    for watch in watches[:2]:
        await drain_until(watch, "k/a")
    pending = asyncio.ensure_future(anext(watches[2]))
    await asyncio.sleep(0)
    statements: list[str] = []
    s._conn().set_trace_callback(statements.append)
    rev = await s.put("k/a", {"v": 1}, revision=r0)
    for watch in watches[:2]:
        assert await drain_until(watch, "k/a") == [("k/a", {"v": 1}, rev)]
    await asyncio.sleep(0)
    assert not pending.done()
    s._conn().set_trace_callback(None)
    assert statements[0] == "BEGIN IMMEDIATE" and statements[-1] == "COMMIT"
    assert statements.count("BEGIN IMMEDIATE") == 1 and not any("BEGIN" == t for t in statements)
    assert not any("FROM history" in t or "FROM meta" in t for t in statements), statements
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    for watch in watches:
        await watch.aclose()
    await s.close()


async def test_a_quiet_watch_gets_its_next_change_after_others_outran_tail_and_history(
    tmp_path: Path, monkeypatch
) -> None:
    """A commit wakes only the watches whose prefix it changed, and moves the others on:
    a watch that sees nothing for longer than the tail and the kept history reach still
    gets its next change (no Compacted, nothing read twice)."""
    monkeypatch.setattr(sqlite_mod, "HISTORY_KEEP", 5)
    monkeypatch.setattr(sqlite_mod, "TAIL_KEEP", 3)
    s = SqliteStore(tmp_path / "cnm.db")
    r1 = await s.put("a/x", {"v": 1})
    quiet = s.watch("a/", 1)
    busy = s.watch("b/", 1)
    assert await drain_until(quiet, "a/x") == [("a/x", {"v": 1}, r1)]
    pending = asyncio.ensure_future(anext(quiet))
    await asyncio.sleep(0)
    for i in range(40):
        rev = await s.put("b/y", {"i": i})
        assert await drain_until(busy, "b/y") == [("b/y", {"i": i}, rev)]
    assert not pending.done()
    assert rows(tmp_path / "cnm.db", "SELECT MIN(revision) FROM history")[0][0] > r1 + 1  # compacted
    last = await s.put("a/x", {"v": 2})
    change = await asyncio.wait_for(pending, TIMEOUT)
    assert (change.key, change.doc, change.revision) == ("a/x", {"v": 2}, last)
    await quiet.aclose()
    await busy.aclose()
    await s.close()


async def test_latency_is_printed(tmp_path: Path, capsys) -> None:
    """Not a timing assertion: p50/p99 of put (one transaction each), CAS put, get and list
    with 5000 keys stored, and of an attach's commit with cnmd's five watches following,
    so a regression is visible in ``pytest -s`` output."""
    s = SqliteStore(tmp_path / "cnm.db")

    async def measure(fn, n: int) -> tuple[float, float]:
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            await fn(i)
            times.append((time.perf_counter() - t0) * 1e6)
        times.sort()
        return statistics.median(times), times[int(len(times) * 0.99) - 1]

    def key(i: int) -> str:
        return f"ipam/address/net{i % 10}/10.0.{i // 256}.{i % 256}"

    async def cas(i: int) -> None:
        entry = await s.get(key(i))
        assert entry is not None
        await s.put(key(i), {"owner": "y" * 64}, revision=entry.revision)

    async def drain(prefix: str) -> None:
        async for _change in s.watch(prefix, 1):
            pass

    async def records(i: int) -> None:
        """The engine's commit of an attach (endpoint and container, each checked), with
        cnmd's five watches following and done with it before the figure stops."""
        revisions[0] = await s.commit(
            [Put(f"endpoint/e{i}", {"owner": "x" * 64}), Put("container/c", {"i": i})],
            [Check(f"endpoint/e{i}", 0), Check("container/c", revisions[0])],
        )
        for _ in range(3):
            await asyncio.sleep(0)

    figures = {
        "put": await measure(lambda i: s.put(key(i), {"owner": "x" * 64}), 5000),
        "get+CAS put": await measure(cas, 2000),
        "get": await measure(lambda i: s.get(key(i)), 2000),
        "list 1/10": await measure(lambda i: s.list(f"ipam/address/net{i % 10}/"), 50),
    }
    assert len((await s.list("ipam/address/net3/")).entries) == 500
    watches = [
        asyncio.ensure_future(drain(p)) for p in ("network/", "endpoint/", "sandbox/", "container/", "ipam/")
    ]
    revisions = [0]
    figures["commit+watch"] = await measure(records, 2000)
    for watch in watches:
        watch.cancel()
    await asyncio.gather(*watches, return_exceptions=True)
    with capsys.disabled():
        print()
        for name, (p50, p99) in figures.items():
            print(f"sqlite store {name:12s} p50 {p50:8.1f} us  p99 {p99:8.1f} us  (5000 keys)")
    await s.close()
