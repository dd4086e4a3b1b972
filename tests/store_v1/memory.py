"""An in-memory Store for unit tests: the protocol of ``cnm.store.docs`` without a file.

Documents are kept as JSON text, exactly as the SQLite backend keeps them, so a test sees
the same copy semantics (a caller mutating a document it put or got changes nothing
stored) and the same refusal of documents that are not JSON.  Transactions nest; a
transaction that ends with an exception undoes its writes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

from cnm.errors import SystemFailure
from store_v1.api import Document


def dump_doc(kind: str, key: str, doc: Document) -> str:
    """JSON text of ``doc``; ASCII-only so any str (even a lone surrogate) round-trips."""
    try:
        return json.dumps(doc, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SystemFailure(f"cannot store {kind}/{key}: document is not JSON: {exc}") from exc


def load_doc(kind: str, key: str, text: str) -> Document:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise SystemFailure(f"stored document {kind}/{key} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise SystemFailure(f"stored document {kind}/{key} is not a JSON object")
    return doc


class _MemoryTxn:
    """The Txn of a MemoryStore; valid only inside its ``with`` block.  Keeps an undo log
    (the text each write replaced) so a rollback costs what the transaction wrote, not
    the size of the store."""

    def __init__(self, store: MemoryStore) -> None:
        self._store: MemoryStore | None = store
        self.undo: list[tuple[str, str, str | None]] = []

    def _live(self) -> MemoryStore:
        if self._store is None:
            raise SystemFailure("store transaction used after it ended")
        return self._store

    def get(self, kind: str, key: str) -> Document | None:
        return self._live().get(kind, key)

    def put(self, kind: str, key: str, doc: Document) -> None:
        table = self._live()._data.setdefault(kind, {})
        text = dump_doc(kind, key, doc)
        self.undo.append((kind, key, table.get(key)))
        table[key] = text

    def delete(self, kind: str, key: str) -> None:
        table = self._live()._data.get(kind, {})
        if key in table:
            self.undo.append((kind, key, table.pop(key)))

    def list(self, kind: str, prefix: str = "") -> list[tuple[str, Document]]:
        return self._live().list(kind, prefix)

    def _rollback(self) -> None:
        data = self._live()._data
        for kind, key, old in reversed(self.undo):
            if old is None:
                data.get(kind, {}).pop(key, None)
            else:
                data.setdefault(kind, {})[key] = old

    def _end(self) -> None:
        self._store = None


class MemoryStore:
    """Store protocol in a dict: ``{kind: {key: json text}}``.  Not thread-safe (cnmd
    uses its store from one asyncio thread)."""

    def __init__(self) -> None:
        self._data: dict[str, dict[str, str]] = {}
        self._open: list[_MemoryTxn] = []  # transactions in progress, innermost last
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise SystemFailure("store is closed")

    def get(self, kind: str, key: str) -> Document | None:
        self._check_open()
        text = self._data.get(kind, {}).get(key)
        return None if text is None else load_doc(kind, key, text)

    def list(self, kind: str, prefix: str = "") -> list[tuple[str, Document]]:
        self._check_open()
        table = self._data.get(kind, {})
        keys = sorted(k for k in table if k.startswith(prefix))
        return [(k, load_doc(kind, k, table[k])) for k in keys]

    @contextmanager
    def transaction(self) -> Iterator[_MemoryTxn]:
        """Commit on normal exit; on exception undo this transaction's writes (a nested
        transaction undoes only its own part, like an SQLite savepoint)."""
        self._check_open()
        txn = _MemoryTxn(self)
        self._open.append(txn)
        try:
            yield txn
        except BaseException:
            txn._rollback()
            raise
        finally:
            self._open.pop()
            txn._end()
        if self._open:  # committed into the enclosing transaction, which may still undo it
            self._open[-1].undo.extend(txn.undo)

    def close(self) -> None:
        self._closed = True
