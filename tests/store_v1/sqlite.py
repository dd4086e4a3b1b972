"""The embedded Store: one SQLite file (``<data-root>/cnm.db``), one table of JSON documents.

Schema::

    docs(kind TEXT, key TEXT, doc TEXT, PRIMARY KEY(kind, key)) WITHOUT ROWID

plus one row ``(kind="_schema", key="version")`` that says which layout the file has, so a
later cnm can migrate it (see ``_MIGRATIONS``).  Keys are compared with SQLite's BINARY
collation (UTF-8 bytes, i.e. code-point order), which is what ``list`` returns and what the
prefix range ``key >= prefix AND key < successor(prefix)`` relies on.

cnmd uses the store from its one asyncio thread; every call is synchronous and short
(tens of microseconds: see tests/unit/test_store_sqlite.py, which prints the figures).
Transactions are explicit (``BEGIN IMMEDIATE``) and nest through savepoints, so IPAM can
open its own transaction inside one of the engine's.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cnm.errors import SystemFailure, Unavailable
from cnm.store.encoding import prefix_successor
from store_v1.api import Document
from store_v1.memory import dump_doc, load_doc

SCHEMA_VERSION = 1
_SCHEMA_KIND = "_schema"
_SCHEMA_KEY = "version"

# How long a writer waits for another process's lock (say, a second cnmd pointed at the
# same data root by mistake) before the call fails with Unavailable.
BUSY_TIMEOUT_S = 5.0

# version -> function that upgrades a file from ``version`` to ``version + 1``.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {}

_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6


def _translate(exc: sqlite3.Error, what: str) -> Exception:
    code = getattr(exc, "sqlite_errorcode", None)
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in str(exc):
        return Unavailable(f"store: {what}: database is locked (another process holds it)")
    return SystemFailure(f"store: {what}: {exc}")


class _SqliteTxn:
    """Reads and writes inside one SqliteStore transaction; valid only inside its block."""

    def __init__(self, store: SqliteStore) -> None:
        self._store: SqliteStore | None = store

    def _live(self) -> SqliteStore:
        if self._store is None:
            raise SystemFailure("store transaction used after it ended")
        return self._store

    def get(self, kind: str, key: str) -> Document | None:
        return self._live().get(kind, key)

    def list(self, kind: str, prefix: str = "") -> list[tuple[str, Document]]:
        return self._live().list(kind, prefix)

    def put(self, kind: str, key: str, doc: Document) -> None:
        text = dump_doc(kind, key, doc)
        self._live()._execute(
            "INSERT INTO docs(kind, key, doc) VALUES (?, ?, ?) "
            "ON CONFLICT(kind, key) DO UPDATE SET doc = excluded.doc",
            (kind, key, text),
            f"put {kind}/{key}",
        )

    def delete(self, kind: str, key: str) -> None:
        self._live()._execute(
            "DELETE FROM docs WHERE kind = ? AND key = ?", (kind, key), f"delete {kind}/{key}"
        )

    def _end(self) -> None:
        self._store = None


class SqliteStore:
    """Store protocol over one SQLite file, created (with its directory) if missing."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._depth = 0  # open transactions: 0 = none, 1 = BEGIN, >1 = savepoints
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SystemFailure(f"store: cannot create {self.path.parent}: {exc}") from exc
        try:
            # isolation_level=None: the sqlite3 module opens no implicit transactions; every
            # transaction here is an explicit BEGIN IMMEDIATE ... COMMIT / ROLLBACK.
            self._db: sqlite3.Connection | None = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + synchronous=NORMAL: a commit is appended to the WAL without an fsync
            # (fsync happens at checkpoints).  A crash of cnmd -- even SIGKILL -- loses
            # nothing; only a power loss or kernel crash can drop the last commits, and
            # never corrupts the file.  cnmd reconciles store and kernel on every start, so
            # that is recoverable, while an fsync per commit would cost milliseconds on
            # each connect/disconnect.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._init_schema()
        except sqlite3.Error as exc:
            self.close()
            raise _translate(exc, f"cannot open {self.path}") from exc
        except BaseException:
            self.close()
            raise

    # -- schema ----------------------------------------------------------------------------

    def _init_schema(self) -> None:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS docs ("
                " kind TEXT NOT NULL, key TEXT NOT NULL, doc TEXT NOT NULL,"
                " PRIMARY KEY(kind, key)) WITHOUT ROWID"
            )
            row = db.execute(
                "SELECT doc FROM docs WHERE kind = ? AND key = ?", (_SCHEMA_KIND, _SCHEMA_KEY)
            ).fetchone()
            version = load_doc(_SCHEMA_KIND, _SCHEMA_KEY, row[0])["version"] if row else SCHEMA_VERSION
            if version > SCHEMA_VERSION:
                raise SystemFailure(
                    f"store {self.path} has schema version {version}, newer than this cnm "
                    f"understands ({SCHEMA_VERSION}): upgrade cnm or use another --data-root"
                )
            while version < SCHEMA_VERSION:
                _MIGRATIONS[version](db)
                version += 1
            db.execute(
                "INSERT INTO docs(kind, key, doc) VALUES (?, ?, ?) "
                "ON CONFLICT(kind, key) DO UPDATE SET doc = excluded.doc",
                (_SCHEMA_KIND, _SCHEMA_KEY, dump_doc(_SCHEMA_KIND, _SCHEMA_KEY, {"version": version})),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @property
    def schema_version(self) -> int:
        doc = self.get(_SCHEMA_KIND, _SCHEMA_KEY)
        return int(doc["version"]) if doc else 0

    # -- plumbing --------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise SystemFailure(f"store {self.path} is closed")
        return self._db

    def _execute(self, sql: str, params: tuple, what: str) -> sqlite3.Cursor:
        db = self._conn()
        try:
            return db.execute(sql, params)
        except sqlite3.Error as exc:
            raise _translate(exc, what) from exc

    # -- the Store protocol ----------------------------------------------------------------

    def get(self, kind: str, key: str) -> Document | None:
        row = self._execute(
            "SELECT doc FROM docs WHERE kind = ? AND key = ?", (kind, key), f"get {kind}/{key}"
        ).fetchone()
        return None if row is None else load_doc(kind, key, row[0])

    def list(self, kind: str, prefix: str = "") -> list[tuple[str, Document]]:
        """Key order; a range scan of the primary key, not LIKE (which would need escaping
        of ``%``/``_`` and, being case-insensitive for ASCII, could not use the index)."""
        upper = prefix_successor(prefix)
        if upper is None:
            rows = self._execute(
                "SELECT key, doc FROM docs WHERE kind = ? AND key >= ? ORDER BY key",
                (kind, prefix),
                f"list {kind}/{prefix}",
            ).fetchall()
        else:
            rows = self._execute(
                "SELECT key, doc FROM docs WHERE kind = ? AND key >= ? AND key < ? ORDER BY key",
                (kind, prefix, upper),
                f"list {kind}/{prefix}",
            ).fetchall()
        return [(key, load_doc(kind, key, text)) for key, text in rows]

    @contextmanager
    def transaction(self) -> Iterator[_SqliteTxn]:
        """``BEGIN IMMEDIATE`` (the write lock is taken now, so a busy database fails here,
        before any work, not at COMMIT); commit on normal exit, roll back on exception.
        Inside another transaction this is a savepoint: its failure undoes only its part."""
        db = self._conn()
        savepoint = f"sp{self._depth}"
        begin = "BEGIN IMMEDIATE" if self._depth == 0 else f"SAVEPOINT {savepoint}"
        self._execute(begin, (), "begin transaction")
        self._depth += 1
        txn = _SqliteTxn(self)
        try:
            yield txn
        except BaseException:
            txn._end()
            self._depth -= 1
            try:
                if self._depth == 0:
                    db.execute("ROLLBACK")
                else:
                    db.execute(f"ROLLBACK TO {savepoint}")
                    db.execute(f"RELEASE {savepoint}")
            except sqlite3.Error:
                pass  # the original exception matters more; SQLite rolled back already
            raise
        txn._end()
        self._depth -= 1
        commit = "COMMIT" if self._depth == 0 else f"RELEASE {savepoint}"
        try:
            db.execute(commit)
        except sqlite3.Error as exc:
            if self._depth == 0 and db.in_transaction:
                db.execute("ROLLBACK")
            raise _translate(exc, "commit") from exc

    def close(self) -> None:
        """Idempotent."""
        db, self._db = getattr(self, "_db", None), None
        if db is not None:
            try:
                db.close()
            except sqlite3.Error:
                pass
