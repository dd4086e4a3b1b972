"""An in-memory Store: the whole contract of ``cnm.store.api`` in one process, for unit
tests and as the reference the other backends are held to (the conformance suite runs
against it too).

Documents are kept as JSON text, as the other backends keep them, so a caller mutating a
document it put or got changes nothing stored, and what is not JSON is refused.  The
history of changes is kept from revision 1 until ``compact`` drops a prefix of it, so a
test can provoke ``Compacted``.  Leases expire on the event loop's clock.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from cnm.errors import NotFound, SystemFailure
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
from cnm.store.encoding import dump_doc, load_doc


@dataclass(slots=True)
class _Value:
    text: str
    revision: int
    created: int
    lease: int


@dataclass(slots=True)
class _Lease:
    ttl: float
    deadline: float
    keys: set[str]
    timer: asyncio.TimerHandle | None = None


class MemoryStore(CommitStore):
    """The Store protocol over dicts; one instance is one store (not shared between
    processes).  ``scope`` is whatever the test wants the engine to see."""

    def __init__(self, scope: Scope = "local") -> None:
        self.scope: Scope = scope
        self._data: dict[str, _Value] = {}
        self._keys: list[str] = []  # sorted, for prefix listing
        self._revision = 0
        self._history: list[tuple[int, str, str | None]] = []  # (revision, key, text|None)
        self._oldest = 1  # the oldest revision the history still holds
        self._leases: dict[int, _Lease] = {}
        self._lease_ids = itertools.count(0x1000)
        self._changed = asyncio.Event()
        self._closed = False

    # -- reads -----------------------------------------------------------------------------

    def _entry(self, key: str, value: _Value) -> Entry:
        return Entry(key, load_doc(key, value.text), value.revision, value.created, value.lease)

    async def get(self, key: str) -> Entry | None:
        value = self._data.get(key)
        return None if value is None else self._entry(key, value)

    async def list(self, prefix: str) -> Listing:
        start = bisect.bisect_left(self._keys, prefix)
        entries = []
        for key in itertools.islice(self._keys, start, None):
            if not key.startswith(prefix):
                break
            entries.append(self._entry(key, self._data[key]))
        return Listing(entries, self._revision)

    # -- writes ----------------------------------------------------------------------------

    def _current(self, key: str) -> int:
        value = self._data.get(key)
        return 0 if value is None else value.revision

    def _check(self, key: str, revision: int) -> None:
        actual = self._current(key)
        if actual != revision:
            raise StaleRevision(key, revision, actual)

    def _apply(self, ops: Sequence[Op]) -> int:
        """Apply already-validated ops at one new revision (no new revision when nothing
        changes, e.g. deleting only missing keys)."""
        revision = self._revision + 1
        changed = False
        for op in ops:
            if isinstance(op, Put):
                text = dump_doc(op.key, op.doc)
                old = self._data.get(op.key)
                if old is None:
                    bisect.insort(self._keys, op.key)
                elif old.lease:
                    self._leases[old.lease].keys.discard(op.key)
                created = revision if old is None else old.created
                self._data[op.key] = _Value(text, revision, created, op.lease)
                if op.lease:
                    self._leases[op.lease].keys.add(op.key)
                self._history.append((revision, op.key, text))
                changed = True
            elif op.key in self._data:
                old = self._data.pop(op.key)
                del self._keys[bisect.bisect_left(self._keys, op.key)]
                if old.lease and old.lease in self._leases:
                    self._leases[old.lease].keys.discard(op.key)
                self._history.append((revision, op.key, None))
                changed = True
        if changed:
            self._revision = revision
            self._changed.set()
            self._changed = asyncio.Event()
        return self._revision

    def _validate(self, ops: Sequence[Op]) -> None:
        for op in ops:
            if isinstance(op, Put):
                dump_doc(op.key, op.doc)
                if op.lease and op.lease not in self._leases:
                    raise NotFound(f"store: lease {op.lease:x} not found (expired or revoked)")

    async def commit(self, ops: Sequence[Op], checks: Sequence[Check] = ()) -> int:
        self._live()
        for check in checks:
            self._check(check.key, check.revision)
        self._validate(ops)
        return self._apply(ops)

    # -- leases ----------------------------------------------------------------------------

    async def grant(self, ttl: float) -> int:
        self._live()
        lease_id = next(self._lease_ids)
        lease = _Lease(ttl, time.monotonic() + ttl, set())
        self._leases[lease_id] = lease
        self._arm(lease_id, lease)
        return lease_id

    def _arm(self, lease_id: int, lease: _Lease) -> None:
        if lease.timer is not None:
            lease.timer.cancel()
        lease.timer = asyncio.get_running_loop().call_later(lease.ttl, self._expire, lease_id)

    def _expire(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return
        if lease.timer is not None:
            lease.timer.cancel()
        self._apply([Delete(key) for key in sorted(lease.keys)])

    async def refresh(self, lease: int) -> None:
        found = self._leases.get(lease)
        if found is None:
            raise NotFound(f"store: lease {lease:x} not found (expired or revoked)")
        found.deadline = time.monotonic() + found.ttl
        self._arm(lease, found)

    async def revoke(self, lease: int) -> None:
        self._expire(lease)

    # -- watches ---------------------------------------------------------------------------

    def compact(self, revision: int) -> None:
        """Forget the history before ``revision`` (a test's way to provoke Compacted)."""
        self._history = [h for h in self._history if h[0] >= revision]
        self._oldest = max(self._oldest, revision)

    async def watch(self, prefix: str, from_revision: int) -> AsyncIterator[Change]:
        next_revision = max(from_revision, 1)
        while not self._closed:
            # checked on every pass: a compaction may overtake a watch that is running
            if next_revision < self._oldest and next_revision <= self._revision:
                raise Compacted(next_revision, self._oldest)
            changed = self._changed
            start = bisect.bisect_left(self._history, next_revision, key=lambda h: h[0])
            for revision, key, text in self._history[start:]:
                if key.startswith(prefix):
                    yield Change(key, None if text is None else load_doc(key, text), revision)
                next_revision = revision + 1
            if self._history and self._history[-1][0] >= next_revision:
                continue
            await changed.wait()

    async def close(self) -> None:
        self._closed = True
        for lease in self._leases.values():
            if lease.timer is not None:
                lease.timer.cancel()
        self._changed.set()

    def _live(self) -> None:
        if self._closed:
            raise SystemFailure("store is closed")
