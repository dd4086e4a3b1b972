"""The document store of release 1 (``docs_sqlite.SqliteStore``) specifics: the file
survives reopening, WAL/NORMAL, schema version, errors, an index range scan for prefixes,
and the latency of a call (printed, not asserted)."""

from __future__ import annotations

import sqlite3
import statistics
import time

import pytest

import cnm.store.docs_sqlite as sqlite_mod
from cnm.errors import SystemFailure, Unavailable
from cnm.store.docs_sqlite import SCHEMA_VERSION, SqliteStore


def test_data_survives_reopen(tmp_path):
    path = tmp_path / "sub" / "cnm.db"  # the directory is created
    s = SqliteStore(path)
    with s.transaction() as tx:
        tx.put("network", "n1", {"name": "backend"})
    s.close()
    s2 = SqliteStore(path)
    assert s2.get("network", "n1") == {"name": "backend"}
    assert s2.schema_version == SCHEMA_VERSION
    s2.close()


def test_pragmas_and_schema_row(tmp_path):
    s = SqliteStore(tmp_path / "cnm.db")
    db = sqlite3.connect(tmp_path / "cnm.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    rows = db.execute("SELECT kind, key, doc FROM docs").fetchall()
    assert rows == [("_schema", "version", f'{{"version":{SCHEMA_VERSION}}}')]
    cols = [r[1] for r in db.execute("PRAGMA table_info(docs)")]
    assert cols == ["kind", "key", "doc"]
    db.close()
    s.close()


def test_prefix_list_is_an_index_range_scan(tmp_path):
    s = SqliteStore(tmp_path / "cnm.db")
    plan = s._db.execute(
        "EXPLAIN QUERY PLAN SELECT key, doc FROM docs WHERE kind = ? AND key >= ? AND key < ? ORDER BY key",
        ("ipam.address", "n1/", "n10"),
    ).fetchall()
    detail = " ".join(str(r[-1]) for r in plan)
    assert "SEARCH" in detail and "PRIMARY KEY" in detail and "key>? AND key<?" in detail.replace("=", "")
    assert "TEMP B-TREE" not in detail  # key order comes from the index
    s.close()


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "cnm.db"
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE docs SET doc = '{\"version\": 99}' WHERE kind = '_schema'")
    db.commit()
    db.close()
    with pytest.raises(SystemFailure, match="schema version 99"):
        SqliteStore(path)


def test_migration_runs_for_older_schema(tmp_path, monkeypatch):
    path = tmp_path / "cnm.db"
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE docs SET doc = '{\"version\": 0}' WHERE kind = '_schema'")
    db.commit()
    db.close()
    ran = []

    def migrate_0_to_1(conn):
        ran.append(0)
        conn.execute("INSERT INTO docs(kind, key, doc) VALUES ('m', 'k', '{}')")

    monkeypatch.setitem(sqlite_mod._MIGRATIONS, 0, migrate_0_to_1)
    s = SqliteStore(path)
    assert ran == [0] and s.schema_version == SCHEMA_VERSION and s.get("m", "k") == {}
    s.close()


def test_locked_database_is_unavailable(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_mod, "BUSY_TIMEOUT_S", 0.05)
    path = tmp_path / "cnm.db"
    s = SqliteStore(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        with pytest.raises(Unavailable, match="database is locked"):
            with s.transaction() as tx:
                tx.put("k", "a", {})
        # reads are not blocked by a writer in WAL mode
        assert s.get("k", "a") is None
    finally:
        other.execute("ROLLBACK")
        other.close()
    with s.transaction() as tx:  # usable again once the lock is gone
        tx.put("k", "a", {"ok": True})
    assert s.get("k", "a") == {"ok": True}
    s.close()


def test_sqlite_error_becomes_system_failure(tmp_path):
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(SystemFailure, match="cannot open"):
        SqliteStore(tmp_path / "dir.db")


def test_corrupt_document_is_system_failure(tmp_path):
    path = tmp_path / "cnm.db"
    s = SqliteStore(path)
    db = sqlite3.connect(path)
    db.execute("INSERT INTO docs VALUES ('k', 'a', 'not json')")
    db.commit()
    db.close()
    with pytest.raises(SystemFailure, match="k/a is not valid JSON"):
        s.get("k", "a")
    s.close()


def test_latency_is_printed(tmp_path, capsys):
    """Not a timing assertion: prints p50/p99 of put (one transaction each), get and
    list with 5000 rows stored, so a regression is visible in ``pytest -s`` output."""
    s = SqliteStore(tmp_path / "cnm.db")

    def measure(fn, n):
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            fn(i)
            times.append((time.perf_counter() - t0) * 1e6)
        times.sort()
        return statistics.median(times), times[int(len(times) * 0.99) - 1]

    def put(i):
        with s.transaction() as tx:
            tx.put("ipam.address", f"net{i % 10}/10.0.{i // 256}.{i % 256}", {"owner": "x" * 64})

    figures = {
        "put (txn)": measure(put, 5000),
        "get": measure(lambda i: s.get("ipam.address", f"net{i % 10}/10.0.{i // 256}.{i % 256}"), 2000),
        "list 1/10": measure(lambda i: s.list("ipam.address", f"net{i % 10}/"), 50),
    }
    assert len(s.list("ipam.address", "net3/")) == 500
    with capsys.disabled():
        print()
        for name, (p50, p99) in figures.items():
            print(f"sqlite store {name:10s} p50 {p50:8.1f} us  p99 {p99:8.1f} us  (5000 rows)")
    s.close()
