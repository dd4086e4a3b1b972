"""The embedded Store: the whole contract of ``cnm.store.api`` in one SQLite file,
``<data-root>/cnm.db``, owned by one cnmd (local scope).

Schema version 2::

    kv(key TEXT PRIMARY KEY, doc TEXT, revision INT, created INT, lease INT) WITHOUT ROWID
    history(revision INT, seq INT, key TEXT, doc TEXT NULL,      -- NULL: deleted
            PRIMARY KEY(revision, seq)) WITHOUT ROWID
    leases(id INTEGER PRIMARY KEY, ttl REAL, deadline REAL)      -- deadline: wall clock
    meta(name TEXT PRIMARY KEY, value INT) WITHOUT ROWID         -- revision, oldest, lease
    docs(kind, key, doc)                                         -- release 1's table

The schema version stays where release 1 keeps it, in the ``docs`` row ``("_schema",
"version")``; after the migration that row is all ``docs`` holds, so release 1 refuses the
file ("newer than this cnm understands") instead of seeing an empty store.  Opening a
version 1 file migrates it in one transaction (``_migrate_1_to_2``): every document moves to
``kv`` under the key layout of ``cnm.store.api`` (kind ``ipam.address``, key ``n1/10.0.0.2``
-> ``ipam/address/n1/10.0.0.2``) at revision 1; a crash midway leaves the version 1 file as
it was.

Revisions live in ``meta`` and in every row, so they only grow, across reopenings too.
``history`` holds one row per change (``seq`` orders the changes of one commit), which is
what ``watch`` reads: a watch replays from the file, also after a reopen.  The history is
kept for the last ``HISTORY_KEEP`` revisions at least and ``2 * HISTORY_KEEP`` at most;
``meta.oldest`` is the oldest revision it still holds, and a watch from before that raises
``Compacted``.  A lease's deadline is wall-clock time, so a lease granted by a previous
process still expires at its deadline: overdue leases are expired when the file is opened,
the others by timers on the event loop while it is open.

Every call runs inline on the event loop: one short SQLite transaction (tens of
microseconds; tests/unit/test_store_sqlite.py prints the figures), cheaper than handing it
to a thread.  Writes take the lock at once (``BEGIN IMMEDIATE``); another process holding
it for longer than ``BUSY_TIMEOUT_S`` makes the call fail with ``Unavailable``, changing
nothing.  A commit looks up each key it checks or deletes (a point lookup: cheaper in
SQLite than one ``IN`` list) and writes each table with one statement.

This connection keeps what it wrote in memory: the store revision and oldest kept
revision after its last write, and its newest changes (``TAIL_KEEP`` to ``2 *
TAIL_KEEP`` of them, the *tail*), from which a watch reads without a statement.  That
memory is right only while no other connection writes the file (say, a second process
pointed at it by mistake): each write transaction reads ``PRAGMA data_version`` holding
the lock, and when it moved (another connection committed since) or the last write
failed, the revisions are read from the file again and the tail starts again at this
write.  Watches are fed in process: a commit wakes the watches whose prefix it changed
(all of them when another connection wrote meanwhile), and moves an idle watch it did
not wake past its revision, so a quiet watch never falls behind the tail or the kept
history.  A watch behind the tail reads the history from the file, as it always may.

Keys are compared with SQLite's BINARY collation (UTF-8 bytes, i.e. code-point order),
which is what ``list`` returns and what the prefix range ``key >= prefix AND key <
prefix_successor(prefix)`` relies on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import sqlite3
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnm.errors import InvalidArgument, NotFound, SystemFailure, Unavailable
from cnm.store.api import (
    Change,
    Check,
    CommitStore,
    Compacted,
    Delete,
    Entry,
    Listing,
    Op,
    Put,
    Scope,
    StaleRevision,
)
from cnm.store.encoding import dump_doc, load_doc, prefix_successor

log = logging.getLogger("cnm.store")

SCHEMA_VERSION = 2
_SCHEMA_KIND = "_schema"
_SCHEMA_KEY = "version"

# How long a writer waits for another process's lock (say, a second cnmd pointed at the
# same data root by mistake) before the call fails with Unavailable.
BUSY_TIMEOUT_S = 5.0
# Revisions of history always kept for watches; compaction runs when twice as many are held.
HISTORY_KEEP = 10_000
# History rows a watch reads at a time (it reads again at once when a batch was full).
WATCH_BATCH = 500
# Changes of this connection's own commits kept in memory for the watches (see above).
TAIL_KEEP = 1_000
# A lease expiry that found the file locked tries again after this long.
_EXPIRY_RETRY_S = 1.0

_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6


def _translate(exc: sqlite3.Error, what: str) -> Exception:
    code = getattr(exc, "sqlite_errorcode", None)
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in str(exc):
        return Unavailable(f"store: {what}: database is locked (another process holds it)")
    return SystemFailure(f"store: {what}: {exc}")


_UPSERT_SQL = (
    "INSERT INTO kv(key, doc, revision, created, lease) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT(key) DO UPDATE SET"
    " doc = excluded.doc, revision = excluded.revision, lease = excluded.lease"
)

History = tuple[int, int, str, str | None]  # (revision, seq, key, doc text; None: deleted)
Rows = list[History]  # (``SqliteStore.list`` shadows ``list`` in the class body)


@dataclass(slots=True)
class _Snapshot:
    """What one write transaction read before deciding (``SqliteStore._snapshot``)."""

    revision: int
    oldest: int
    data_version: int
    fresh: bool  # the revisions were read from the file (this connection's memory was not right)
    revisions: dict[str, int]  # of the keys asked for that exist


@dataclass(slots=True, eq=False)
class _Watcher:
    """One running ``watch``: its prefix, the (revision, seq) of the next change it
    reads, whether it waits for a commit, and the event that wakes it."""

    prefix: str
    position: tuple[int, int]
    idle: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(slots=True)
class _Written:
    """What one write transaction changed, for the tail once it is committed."""

    snapshot: _Snapshot
    revision: int  # the store revision after it
    oldest: int  # the oldest revision the history holds after it
    rows: list[History]


def _check_key(key: str) -> None:
    """Keys are non-empty text SQLite can store (UTF-8: no lone surrogates)."""
    if not isinstance(key, str) or not key:
        raise InvalidArgument(f"store: key must be a non-empty string, not {key!r}")
    try:
        key.encode()
    except UnicodeEncodeError as exc:
        raise InvalidArgument(f"store: key {key!r} is not valid UTF-8 text") from exc


def _v1_key(kind: str, key: str) -> str:
    """The key of release 1's document ``(kind, key)`` in schema 2."""
    return kind.replace(".", "/") + "/" + key


def _create_v2(db: sqlite3.Connection) -> None:
    # ``docs`` has exactly release 1's definition: it keeps the version row.
    db.execute(
        "CREATE TABLE IF NOT EXISTS docs ("
        " kind TEXT NOT NULL, key TEXT NOT NULL, doc TEXT NOT NULL,"
        " PRIMARY KEY(kind, key)) WITHOUT ROWID"
    )
    db.execute(
        "CREATE TABLE kv ("
        " key TEXT NOT NULL PRIMARY KEY, doc TEXT NOT NULL, revision INTEGER NOT NULL,"
        " created INTEGER NOT NULL, lease INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID"
    )
    db.execute("CREATE INDEX kv_lease ON kv(lease) WHERE lease != 0")
    db.execute(
        "CREATE TABLE history ("
        " revision INTEGER NOT NULL, seq INTEGER NOT NULL, key TEXT NOT NULL, doc TEXT,"
        " PRIMARY KEY(revision, seq)) WITHOUT ROWID"
    )
    db.execute("CREATE TABLE leases (id INTEGER PRIMARY KEY, ttl REAL NOT NULL, deadline REAL NOT NULL)")
    db.execute("CREATE TABLE meta (name TEXT NOT NULL PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID")
    db.executemany(
        "INSERT INTO meta(name, value) VALUES (?, ?)", [("revision", 0), ("oldest", 1), ("lease", 0)]
    )


def _migrate_1_to_2(db: sqlite3.Connection) -> None:
    """Release 1's ``docs`` rows become ``kv`` rows at revision 1 (with their history, so
    a watch from revision 1 sees them); ``docs`` keeps only the version row."""
    _create_v2(db)
    rows = db.execute(
        "SELECT kind, key, doc FROM docs WHERE kind != ? ORDER BY kind, key", (_SCHEMA_KIND,)
    ).fetchall()
    for kind, key, text in rows:
        load_doc(f"{kind}/{key}", text)  # refuse to carry a corrupt document forward
    # A generator: the rows are converted while they are inserted (what a crash midway
    # interrupts; the transaction leaves the file as it was).
    moved = ((_v1_key(kind, key), text) for kind, key, text in rows)
    try:
        db.executemany("INSERT INTO kv(key, doc, revision, created) VALUES (?, ?, 1, 1)", moved)
    except sqlite3.IntegrityError as exc:
        raise SystemFailure(
            f"store: cannot migrate to schema 2: two documents map to one key ({exc})"
        ) from exc
    db.execute(
        "INSERT INTO history(revision, seq, key, doc)"
        " SELECT 1, row_number() OVER (ORDER BY key) - 1, key, doc FROM kv"
    )
    db.execute("DELETE FROM docs WHERE kind != ?", (_SCHEMA_KIND,))
    if rows:
        db.execute("UPDATE meta SET value = 1 WHERE name = 'revision'")


class SqliteStore(CommitStore):
    """The Store protocol over one SQLite file, created (with its directory) if missing,
    migrated from release 1's schema if needed.  ``scope`` is "local": the file is this
    host's."""

    def __init__(self, path: str | os.PathLike[str], scope: Scope = "local") -> None:
        self.path = Path(path)
        self.scope: Scope = scope
        self._db: sqlite3.Connection | None = None
        self._closed = False
        self._watchers: set[_Watcher] = set()
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._armed = False  # lease timers exist once an event loop runs
        # The tail (module docstring): this connection's changes from revision _tail_from
        # on (None: no tail yet), the store revision after its last write, and the
        # data_version that write saw.
        self._tail: list[History] = []
        self._tail_from: int | None = None
        self._revision = 0
        self._oldest = 1
        self._data_version: int | None = None  # None: memory not right, read the file
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SystemFailure(f"store: cannot create {self.path.parent}: {exc}") from exc
        try:
            # isolation_level=None: the sqlite3 module opens no implicit transactions; every
            # transaction here is an explicit BEGIN ... COMMIT / ROLLBACK.
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + synchronous=NORMAL: a commit reaches the WAL without an fsync.  A crash of
            # cnmd (even SIGKILL) loses nothing; a power loss may drop the last commits but
            # never corrupts the file, and cnmd reconciles store and kernel on every start.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._open_schema()
            for (lease_id,) in self._db.execute(
                "SELECT id FROM leases WHERE deadline <= ? ORDER BY deadline", (time.time(),)
            ).fetchall():
                self._end_lease(lease_id)  # expired while no process held the file
        except sqlite3.Error as exc:
            self._close_db()
            raise _translate(exc, f"cannot open {self.path}") from exc
        except BaseException:
            self._close_db()
            raise
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop yet: the first call arms the lease timers
        self._arm_all()

    # -- schema ----------------------------------------------------------------------------

    def _open_schema(self) -> None:
        with self._write(f"cannot open {self.path}") as db:
            tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = self._version(db, tables)
            if version > SCHEMA_VERSION:
                raise SystemFailure(
                    f"store {self.path} has schema version {version}, newer than this cnm "
                    f"understands ({SCHEMA_VERSION}): upgrade cnm or use another --data-root"
                )
            if version == 0:
                _create_v2(db)
            elif version == 1:
                _migrate_1_to_2(db)
            elif not {"kv", "history", "leases", "meta"} <= tables:
                raise SystemFailure(f"store {self.path}: schema version 2 but tables are missing")
            if version != SCHEMA_VERSION:
                db.execute(
                    "INSERT INTO docs(kind, key, doc) VALUES (?, ?, ?) "
                    "ON CONFLICT(kind, key) DO UPDATE SET doc = excluded.doc",
                    (_SCHEMA_KIND, _SCHEMA_KEY, dump_doc(_SCHEMA_KIND, {"version": SCHEMA_VERSION})),
                )

    def _version(self, db: sqlite3.Connection, tables: set[str]) -> int:
        """The file's schema version; 0 for a new, empty file."""
        if "docs" not in tables:
            if tables:
                raise SystemFailure(f"store {self.path} is not a cnm store (tables: {sorted(tables)})")
            return 0
        row = db.execute(
            "SELECT doc FROM docs WHERE kind = ? AND key = ?", (_SCHEMA_KIND, _SCHEMA_KEY)
        ).fetchone()
        if row is None:
            return 1  # release 1 treated a missing row as its own version
        version = load_doc(f"{_SCHEMA_KIND}/{_SCHEMA_KEY}", row[0]).get("version")
        if not isinstance(version, int) or version < 1:
            raise SystemFailure(f"store {self.path}: bad schema version {version!r}")
        return version

    @property
    def schema_version(self) -> int:
        return self._version(self._conn(), {"docs"})

    # -- plumbing --------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is None or self._closed:
            raise SystemFailure(f"store {self.path} is closed")
        return self._db

    def _forget(self) -> None:
        """This connection's memory of the file may be wrong (a write failed): the next
        write reads the revisions from the file and starts the tail again."""
        self._data_version = None

    def _live(self) -> sqlite3.Connection:
        """The connection, for a call from the event loop: arms the lease timers of leases
        found in the file on the first such call."""
        db = self._conn()
        if not self._armed:
            self._arm_all()
        return db

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction: ``BEGIN IMMEDIATE`` takes the lock now, so a busy file
        fails here, before any work; commit on normal exit, roll back on any exception."""
        db = self._conn()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _translate(exc, what) from exc
        try:
            yield db
        except BaseException as exc:
            with suppress(sqlite3.Error):  # SQLite may have rolled back already
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                self._forget()
                raise _translate(exc, what) from exc
            raise
        try:
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._forget()
            if db.in_transaction:
                with suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise _translate(exc, what) from exc

    def _read(self, sql: str, params: tuple[Any, ...], what: str) -> list[Any]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _translate(exc, what) from exc
        except UnicodeEncodeError as exc:
            raise InvalidArgument(f"store: {what}: not valid UTF-8 text") from exc

    @staticmethod
    def _meta(db: sqlite3.Connection, name: str) -> int:
        return int(db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()[0])

    @staticmethod
    def _revisions(db: sqlite3.Connection) -> tuple[int, int]:
        """The store revision and the oldest revision the history holds."""
        found = dict(db.execute("SELECT name, value FROM meta WHERE name IN ('revision', 'oldest')"))
        return int(found["revision"]), int(found["oldest"])

    def _notify(self, written: _Written | None = None) -> None:
        """Wake the watches a write concerns (``None``: all of them, e.g. at close).
        An idle watch whose prefix the write did not change, and that had read every
        change before it, moves past its revision without waking."""
        for watcher in self._watchers:
            if written is None or written.snapshot.fresh or not watcher.idle:
                watcher.wake.set()
            elif any(row[2].startswith(watcher.prefix) for row in written.rows):
                watcher.wake.set()
            elif watcher.position == (written.revision, 0):
                watcher.position = (written.revision + 1, 0)
            else:
                watcher.wake.set()

    # -- reads -----------------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        self._live()
        rows = self._read("SELECT doc, revision, created, lease FROM kv WHERE key = ?", (key,), f"get {key}")
        if not rows:
            return None
        text, revision, created, lease = rows[0]
        return Entry(key, load_doc(key, text), revision, created, lease)

    async def list(self, prefix: str) -> Listing:
        """Key order; a range scan of the primary key, not LIKE (which would need escaping
        of ``%``/``_`` and, being case-insensitive for ASCII, could not use the index).
        Entries and revision come from one read transaction."""
        db = self._live()
        upper = prefix_successor(prefix)
        sql = "SELECT key, doc, revision, created, lease FROM kv WHERE key >= ?"
        params: tuple[str, ...] = (prefix,)
        if upper is not None:
            sql, params = sql + " AND key < ?", (prefix, upper)
        try:
            db.execute("BEGIN")
            try:
                rows = db.execute(sql + " ORDER BY key", params).fetchall()
                revision = self._meta(db, "revision")
            finally:
                db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise _translate(exc, f"list {prefix}") from exc
        except UnicodeEncodeError as exc:
            raise InvalidArgument(f"store: list {prefix!r}: not valid UTF-8 text") from exc
        entries = [Entry(k, load_doc(k, text), rev, created, lease) for k, text, rev, created, lease in rows]
        return Listing(entries, revision)

    # -- writes ----------------------------------------------------------------------------

    async def commit(self, ops: Sequence[Op], checks: Sequence[Check] = ()) -> int:
        self._live()
        for item in [*ops, *checks]:
            _check_key(item.key)
        # Encoded before the transaction: a document that is not JSON changes nothing.
        texts = [dump_doc(op.key, op.doc) if isinstance(op, Put) else None for op in ops]
        asked = {c.key for c in checks} | {op.key for op in ops if isinstance(op, Delete)}
        leases = {op.lease for op in ops if isinstance(op, Put) and op.lease}
        with self._write("commit") as db:
            snapshot = self._snapshot(db, asked)
            for check in checks:
                actual = snapshot.revisions.get(check.key, 0)
                if actual != check.revision:
                    raise StaleRevision(check.key, check.revision, actual)
            now = time.time()
            for lease in leases:
                row = db.execute("SELECT deadline FROM leases WHERE id = ?", (lease,)).fetchone()
                if row is None or row[0] <= now:  # overdue: its timer has not run yet
                    raise NotFound(f"store: lease {lease:x} not found (expired or revoked)")
            written = self._apply(db, snapshot, ops, texts)
        self._remember(written)
        if written.rows:
            self._notify(written)
        return written.revision

    def _snapshot(self, db: sqlite3.Connection, keys: Iterable[str]) -> _Snapshot:
        """What a write decides on, read in the caller's transaction (which holds the
        lock): the store revision and oldest kept revision (from memory while no other
        connection has written since this one's last write) and the revisions of ``keys``."""
        (data_version,) = db.execute("PRAGMA data_version").fetchone()
        fresh = data_version != self._data_version
        revision, oldest = self._revisions(db) if fresh else (self._revision, self._oldest)
        found: dict[str, int] = {}
        for key in keys:
            row = db.execute("SELECT revision FROM kv WHERE key = ?", (key,)).fetchone()
            if row is not None:
                found[key] = row[0]
        return _Snapshot(revision, oldest, data_version, fresh, found)

    def _apply(
        self, db: sqlite3.Connection, snapshot: _Snapshot, ops: Sequence[Op], texts: Sequence[str | None]
    ) -> _Written:
        """Apply validated ops at one new revision inside the caller's transaction; no new
        revision when nothing changes (e.g. deleting only missing keys).  ``snapshot``
        holds the revision of every key ``ops`` delete.  The ops are played in memory
        first, so each table is written with one statement: the rows a delete removes
        (also a key deleted and put again, which starts afresh), then the final value of
        every key put, then the history in op order."""
        revision = snapshot.revision + 1
        rows: list[History] = []
        live = set(snapshot.revisions)  # of the keys deleted: those that exist now
        gone: dict[str, None] = {}  # keys whose row goes, in order
        puts: dict[str, tuple[str, int]] = {}  # key -> (text, lease): the final puts
        for op, text in zip(ops, texts, strict=True):
            if isinstance(op, Put):
                assert text is not None
                puts[op.key] = (text, op.lease)
                live.add(op.key)
                rows.append((revision, len(rows), op.key, text))
            elif op.key in live:
                live.discard(op.key)
                puts.pop(op.key, None)
                gone[op.key] = None
                rows.append((revision, len(rows), op.key, None))
        if not rows:
            return _Written(snapshot, snapshot.revision, snapshot.oldest, rows)
        if gone:
            db.executemany("DELETE FROM kv WHERE key = ?", [(k,) for k in gone])
        if puts:
            db.executemany(
                _UPSERT_SQL, [(k, text, revision, revision, lease) for k, (text, lease) in puts.items()]
            )
        db.executemany("INSERT INTO history(revision, seq, key, doc) VALUES (?, ?, ?, ?)", rows)
        db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (revision,))
        oldest = snapshot.oldest
        if revision - oldest >= 2 * HISTORY_KEEP:
            oldest = self._compact(db, revision - HISTORY_KEEP + 1)
        return _Written(snapshot, revision, oldest, rows)

    def _remember(self, written: _Written) -> None:
        """A write transaction committed: its revisions are this connection's memory and
        its changes join the tail.  If the memory was not right (another connection
        committed since this one's last write), the tail starts again with this write."""
        if written.snapshot.fresh:
            self._tail = []
            self._tail_from = written.snapshot.revision + 1
        self._data_version = written.snapshot.data_version
        self._revision, self._oldest = written.revision, written.oldest
        self._tail.extend(written.rows)
        if len(self._tail) > 2 * TAIL_KEEP:
            self._trim_tail(self._tail[-TAIL_KEEP][0])
        self._trim_tail(written.oldest)

    def _trim_tail(self, revision: int) -> None:
        """The tail starts at ``revision`` at the latest (whole revisions go)."""
        if self._tail_from is None or revision <= self._tail_from:
            return
        del self._tail[: bisect_left(self._tail, revision, key=lambda row: row[0])]
        self._tail_from = revision

    def _tail_rows(self, position: tuple[int, int], prefix: str) -> Rows | None:
        """The changes under ``prefix`` from ``position`` on, from the tail, at most
        ``WATCH_BATCH`` as from the file; None when the tail does not reach back that far
        (the file has them)."""
        if self._tail_from is None or position[0] < self._tail_from:
            return None
        start = bisect_left(self._tail, position, key=lambda row: (row[0], row[1]))
        found = (row for row in self._tail[start:] if row[2].startswith(prefix))
        return list(itertools.islice(found, WATCH_BATCH))

    # -- history ---------------------------------------------------------------------------

    def compact(self, revision: int) -> None:
        """Forget the history before ``revision`` (done on its own as the history grows;
        called directly by tests to provoke Compacted)."""
        with self._write(f"compact to {revision}") as db:
            oldest = self._compact(db, revision)
        self._oldest = oldest
        self._trim_tail(oldest)

    def _compact(self, db: sqlite3.Connection, revision: int) -> int:
        """Returns the oldest revision the history holds now."""
        current, oldest = self._revisions(db)
        revision = min(revision, current + 1)
        if revision > oldest:
            db.execute("DELETE FROM history WHERE revision < ?", (revision,))
            db.execute("UPDATE meta SET value = ? WHERE name = 'oldest'", (revision,))
            return revision
        return oldest

    async def watch(self, prefix: str, from_revision: int) -> AsyncIterator[Change]:
        upper = prefix_successor(prefix)
        sql = "SELECT revision, seq, key, doc FROM history WHERE (revision, seq) >= (?, ?) AND key >= ?"
        if upper is not None:
            sql += " AND key < ?"
        sql += " ORDER BY revision, seq LIMIT ?"
        watcher = _Watcher(prefix, (max(from_revision, 1), 0))
        self._watchers.add(watcher)
        try:
            while not self._closed:
                watcher.wake.clear()  # a commit from now on wakes it (or moves it on)
                position = watcher.position
                db = self._live()
                rows = self._tail_rows(position, prefix)
                if rows is not None:
                    revision, full = self._revision, len(rows) == WATCH_BATCH
                else:
                    try:
                        db.execute("BEGIN")
                        try:
                            revision, oldest = self._revisions(db)
                            params = (*position, prefix) + (() if upper is None else (upper,))
                            rows = db.execute(sql, (*params, WATCH_BATCH)).fetchall()
                        finally:
                            db.execute("COMMIT")
                    except sqlite3.Error as exc:
                        raise _translate(exc, f"watch {prefix}") from exc
                    # Also when a compaction overtook a slow consumer between two batches.
                    if position[0] < oldest and position[0] <= revision:
                        raise Compacted(position[0], oldest)
                    full = len(rows) == WATCH_BATCH
                for rev, seq, key, text in rows:
                    yield Change(key, None if text is None else load_doc(key, text), rev)
                    if self._closed:
                        return
                    watcher.position = (rev, seq + 1)
                if full:
                    continue  # more to read now
                watcher.position = max(watcher.position, (revision + 1, 0))
                watcher.idle = True
                try:
                    await watcher.wake.wait()
                finally:
                    watcher.idle = False
        finally:
            self._watchers.discard(watcher)

    # -- leases ----------------------------------------------------------------------------

    async def grant(self, ttl: float) -> int:
        self._live()
        if not (isinstance(ttl, int | float) and math.isfinite(ttl) and ttl > 0):
            raise InvalidArgument(f"store: lease ttl must be a positive number of seconds, not {ttl!r}")
        deadline = time.time() + ttl
        with self._write("grant lease") as db:
            lease_id = self._meta(db, "lease") + 1
            db.execute("UPDATE meta SET value = ? WHERE name = 'lease'", (lease_id,))
            db.execute("INSERT INTO leases(id, ttl, deadline) VALUES (?, ?, ?)", (lease_id, ttl, deadline))
        self._arm(lease_id, deadline)
        return lease_id

    async def refresh(self, lease: int) -> None:
        self._live()
        with self._write(f"refresh lease {lease:x}") as db:
            row = db.execute("SELECT ttl, deadline FROM leases WHERE id = ?", (lease,)).fetchone()
            now = time.time()
            alive = row is not None and row[1] > now
            if alive:
                deadline = now + row[0]
                db.execute("UPDATE leases SET deadline = ? WHERE id = ?", (deadline, lease))
        if not alive:
            if row is not None:
                self._end_lease(lease)  # overdue, its timer not yet run: expire it now
            raise NotFound(f"store: lease {lease:x} not found (expired or revoked)")
        self._arm(lease, deadline)

    async def revoke(self, lease: int) -> None:
        self._live()
        self._end_lease(lease)

    def _end_lease(self, lease: int) -> None:
        """Delete the lease and its keys (one revision, if it had keys)."""
        timer = self._timers.pop(lease, None)
        if timer is not None:
            timer.cancel()
        with self._write(f"end lease {lease:x}") as db:
            keys = [k for (k,) in db.execute("SELECT key FROM kv WHERE lease = ? ORDER BY key", (lease,))]
            db.execute("DELETE FROM leases WHERE id = ?", (lease,))
            snapshot = self._snapshot(db, keys)
            written = self._apply(db, snapshot, [Delete(k) for k in keys], [None] * len(keys))
        self._remember(written)
        if written.rows:
            self._notify(written)

    def _arm_all(self) -> None:
        self._armed = True
        for lease_id, deadline in self._conn().execute("SELECT id, deadline FROM leases").fetchall():
            self._arm(lease_id, deadline)

    def _arm(self, lease: int, deadline: float) -> None:
        old = self._timers.pop(lease, None)
        if old is not None:
            old.cancel()
        if not self._armed:
            return  # no event loop yet: _arm_all reads every deadline from the file
        loop = asyncio.get_running_loop()
        delay = max(0.0, deadline - time.time())
        self._timers[lease] = loop.call_later(delay, self._on_timer, lease)

    def _on_timer(self, lease: int) -> None:
        self._timers.pop(lease, None)
        if self._closed:
            return
        try:
            rows = self._read("SELECT deadline FROM leases WHERE id = ?", (lease,), "lease timer")
            if not rows:
                return
            if rows[0][0] > time.time() + 0.001:  # the loop's clock ran ahead of the wall clock
                self._arm(lease, rows[0][0])
                return
            self._end_lease(lease)
        except Unavailable as exc:
            log.warning("%s; retrying in %.0f s", exc, _EXPIRY_RETRY_S)
            self._timers[lease] = asyncio.get_running_loop().call_later(
                _EXPIRY_RETRY_S, self._on_timer, lease
            )
        except SystemFailure as exc:
            log.error("cannot expire lease %x: %s", lease, exc)

    # -- closing ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Idempotent; ends the watches and the lease timers (the leases stay in the file)."""
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._notify()
        self._close_db()

    def _close_db(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            with suppress(sqlite3.Error):
                db.close()
