"""The Store protocol: JSON documents under string keys, with revisions, compare-and-swap,
multi-key transactions, leases and watches -- the contract etcd offers, so several cnmd
can share state (global scope) and one cnmd can keep a local file (SQLite) behind the same
calls.

Keys are paths without a leading slash, a kind first: ``network/<id>``,
``endpoint/<id>``, ``ipam/address/<network id>/<address>``.  A backend may put all of
cnm's keys under a namespace of its own (etcd: ``/cnm/v2/``); callers never see it.

Revisions.  The store has one counter, its *revision*, raised by one for every successful
write call (``put``, ``delete`` that deleted, ``commit`` that changed anything, a lease
expiring with keys).  Each key carries the revision of its last change (``Entry.revision``)
and of its creation (``Entry.created``).  Revisions only grow, across restarts too.

Compare-and-swap.  ``put``/``delete`` take ``revision=``: the write happens only if the
key's current revision is exactly that (``0``: the key must not exist); otherwise
``StaleRevision`` and nothing changes.  ``commit`` checks any number of keys that way
and then applies any number of puts and deletes, all or nothing, at one new revision.

Leases.  ``grant(ttl)`` returns a lease id; keys put with ``lease=`` vanish (with watch
events) when the lease expires -- ``ttl`` seconds after the last ``refresh`` -- or is
revoked.  A daemon uses one for what lives only while it does (its presence, a
keep-alive of its node).

Watches.  ``watch(prefix, from_revision)`` yields every change under ``prefix`` with
revision ``>= from_revision``, in revision order (changes of one ``commit`` share a
revision), and goes on yielding new ones until the consumer stops iterating.  A backend
reconnects on its own after a lost connection and resumes from the last revision it
yielded: no change is lost or repeated.  When ``from_revision`` is older than the history
the backend keeps, the iterator raises ``Compacted``; the caller lists again and watches
from the listing's revision + 1 (``cnm.store.mirror`` does that).

The usual pattern, "list then watch": ``entries, rev = await store.list(prefix)`` then
``store.watch(prefix, rev + 1)`` -- the listing and the watch together see every change
exactly once.

Errors: ``StaleRevision`` (a ``Conflict``) for a failed comparison, ``Compacted`` for a
watch too far back, ``Unavailable`` when the backend cannot be reached in time,
``NotFound`` for an expired or unknown lease in ``refresh``, ``SystemFailure`` for the rest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from cnm.errors import Conflict, SystemFailure

Document = dict[str, Any]
Scope = Literal["local", "global"]


class StaleRevision(Conflict):
    """A compare-and-swap failed: ``key`` is not at the revision the caller expected."""

    def __init__(self, key: str, expected: int, actual: int) -> None:
        super().__init__(f"store: {key} changed (expected revision {expected}, found {actual})")
        self.key = key
        self.expected = expected
        self.actual = actual


class Compacted(SystemFailure):
    """A watch asked for history the backend no longer keeps; list again."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"store: revision {requested} is compacted (oldest kept: {oldest})")
        self.requested = requested
        self.oldest = oldest


@dataclass(frozen=True, slots=True)
class Entry:
    """A key as read: its document and the revisions of its last change and creation."""

    key: str
    doc: Document
    revision: int
    created: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Change:
    """One change seen by a watch: ``doc`` is None when the key was deleted."""

    key: str
    doc: Document | None
    revision: int

    @property
    def deleted(self) -> bool:
        return self.doc is None


@dataclass(frozen=True, slots=True)
class Put:
    """In a ``commit``: write ``doc`` at ``key`` (attached to ``lease`` when not 0)."""

    key: str
    doc: Document
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    """In a ``commit``: delete ``key`` (no error when it is missing)."""

    key: str


@dataclass(frozen=True, slots=True)
class Check:
    """In a ``commit``: ``key`` must be at exactly ``revision`` (0: must not exist)."""

    key: str
    revision: int


Op = Put | Delete


@dataclass(frozen=True, slots=True)
class Listing:
    """The entries under a prefix, in key order, and the store's revision when read."""

    entries: list[Entry] = field(default_factory=list)
    revision: int = 0


@runtime_checkable
class Store(Protocol):
    """What every backend offers; see the module docstring for the contract."""

    scope: Scope

    async def get(self, key: str) -> Entry | None:
        """The entry at ``key``, or None."""
        ...

    async def list(self, prefix: str) -> Listing:
        """Every entry whose key starts with ``prefix``, in key (code point) order, with the
        store revision of that consistent read."""
        ...

    async def put(self, key: str, doc: Document, *, revision: int | None = None, lease: int = 0) -> int:
        """Write ``doc`` at ``key``; with ``revision``, only if the key is at that revision
        (0: absent), else ``StaleRevision``.  Returns the new store revision."""
        ...

    async def delete(self, key: str, *, revision: int | None = None) -> int:
        """Delete ``key`` (idempotent without ``revision``; with it, ``StaleRevision`` unless
        the key is at that revision).  Returns the store revision after the call."""
        ...

    async def commit(self, ops: Sequence[Op], checks: Sequence[Check] = ()) -> int:
        """Apply ``ops`` in order, all or nothing, if every check holds; else
        ``StaleRevision`` naming the first check that failed.  Returns the new revision."""
        ...

    async def grant(self, ttl: float) -> int:
        """A new lease that expires ``ttl`` seconds from now unless refreshed."""
        ...

    async def refresh(self, lease: int) -> None:
        """Push the lease's expiry ``ttl`` from now; ``NotFound`` if it already expired."""
        ...

    async def revoke(self, lease: int) -> None:
        """End the lease now, deleting its keys; idempotent."""
        ...

    def watch(self, prefix: str, from_revision: int) -> AsyncIterator[Change]:
        """Changes under ``prefix`` from ``from_revision`` on, in order, forever; resumes
        across reconnects; ``Compacted`` when the history is gone."""
        ...

    async def close(self) -> None:
        """Release the backend (connections, file); watches end."""
        ...


class CommitStore:
    """``put`` and ``delete`` as the one-op ``commit`` they are; a backend inherits them
    and implements ``commit`` (which owns the checks, the revision and the errors)."""

    async def commit(self, ops: Sequence[Op], checks: Sequence[Check] = ()) -> int:
        raise NotImplementedError

    async def put(self, key: str, doc: Document, *, revision: int | None = None, lease: int = 0) -> int:
        checks = () if revision is None else (Check(key, revision),)
        return await self.commit([Put(key, doc, lease)], checks)

    async def delete(self, key: str, *, revision: int | None = None) -> int:
        checks = () if revision is None else (Check(key, revision),)
        return await self.commit([Delete(key)], checks)
