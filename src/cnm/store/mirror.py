"""A Mirror: the entries under one prefix of a Store, kept current in memory by a watch.

This is how the engine and IPAM keep their caches: reads are dictionary lookups, and a
change written by another daemon sharing the store (etcd, global scope) shows up here
within the watch's latency, without a restart.  The mirror lists the prefix, then watches
from the listing's revision + 1; when the backend says the history is compacted, it lists
again and reports the difference as changes, so a consumer never misses one.

A writer that wants to read its own write at once calls ``seen(revision)`` (wait until
the watch has delivered it) or ``apply`` (put its own value in now; the watch's copy of
the same revision later changes nothing).  A delete applied that way is remembered until
the watch has passed its revision, so the watch's late copy of an older put cannot bring
the deleted value back for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, MutableMapping
from typing import Generic, TypeVar

from cnm.errors import CnmError
from cnm.store.api import Change, Compacted, Document, Store

T = TypeVar("T")

log = logging.getLogger(__name__)

# How long a mirror waits before following a store again after its watch failed.
RETRY_S = 1.0


class Mirror(Generic[T]):
    """The decoded entries under ``prefix`` (keys without the prefix), with the revision
    of each and the last store revision applied."""

    def __init__(
        self,
        store: Store,
        prefix: str,
        decode: Callable[[str, Document], T],
        items: MutableMapping[str, T] | None = None,
    ) -> None:
        """``items``: the mapping to keep current (an indexed table of the caller's, say);
        a new dict when not given."""
        self._store = store
        self._prefix = prefix
        self._decode = decode
        self.items: MutableMapping[str, T] = {} if items is None else items
        self.revisions: dict[str, int] = {}
        self.revision = 0
        # Deletes applied ahead of the watch (name -> revision): a change older than that,
        # still on its way through the watch, must not resurrect the name.
        self._gone: dict[str, int] = {}
        self._gone_upto = 0  # the newest of them: once the watch is there, all can go
        self._listeners: list[Callable[[str, T | None, T | None], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._progress = asyncio.Event()

    def listen(self, listener: Callable[[str, T | None, T | None], None]) -> None:
        """Call ``listener(name, old, new)`` for every change applied from now on (None
        for a value that is absent)."""
        self._listeners.append(listener)

    async def start(self) -> None:
        """Load the prefix and start following it."""
        await self._load()
        self._task = asyncio.create_task(self._follow(), name=f"mirror {self._prefix}")

    async def _load(self) -> None:
        listing = await self._store.list(self._prefix)
        self._gone = {n: r for n, r in self._gone.items() if r > listing.revision}
        fresh = {e.key[len(self._prefix) :]: e for e in listing.entries}
        # (what the caller applied after the listing's revision is newer than the listing)
        for name in [n for n in self.items if n not in fresh and self.revisions[n] <= listing.revision]:
            self._set(name, None, listing.revision)
        for name, entry in fresh.items():
            if self.revisions.get(name) != entry.revision and self._gone.get(name, 0) < entry.revision:
                self._set(name, self._decode(name, entry.doc), entry.revision)
        self._advance(listing.revision)

    async def _follow(self) -> None:
        """Apply the watch's changes until closed.  A backend reconnects on its own; if its
        watch still fails (or a re-list does), log it and start over after a pause, so
        reads never go stale in silence."""
        while True:
            try:
                async for change in self._store.watch(self._prefix, self.revision + 1):
                    self._on_change(change)
                return
            except Compacted:
                await self._load_or_wait()
            except CnmError as exc:
                log.warning(
                    "store watch of %s failed (%s); following it again in %.0f s", self._prefix, exc, RETRY_S
                )
                await asyncio.sleep(RETRY_S)
                await self._load_or_wait()

    async def _load_or_wait(self) -> None:
        while True:
            try:
                await self._load()
                return
            except CnmError as exc:
                log.warning(
                    "store listing of %s failed (%s); trying again in %.0f s", self._prefix, exc, RETRY_S
                )
                await asyncio.sleep(RETRY_S)

    def _on_change(self, change: Change) -> None:
        name = change.key[len(self._prefix) :]
        gone = self._gone.get(name, 0)
        if gone and gone <= change.revision:
            del self._gone[name]  # the watch has reached the delete applied ahead of it
        if max(self.revisions.get(name, 0), gone) < change.revision:
            value = None if change.doc is None else self._decode(name, change.doc)
            self._set(name, value, change.revision)
        self._advance(change.revision)

    def _set(self, name: str, value: T | None, revision: int) -> None:
        old = self.items.get(name)
        if value is None and old is None:
            return  # already gone (our own delete, then the watch's copy of it)
        if value is None:
            self.items.pop(name, None)
            self.revisions.pop(name, None)
        else:
            self.items[name] = value
            self.revisions[name] = revision
        for listener in self._listeners:
            listener(name, old, value)

    def _advance(self, revision: int) -> None:
        if revision > self.revision:
            self.revision = revision
            if self._gone and revision >= self._gone_upto:
                self._gone.clear()
            self._progress.set()
            self._progress = asyncio.Event()

    def apply(self, name: str, value: T | None, revision: int) -> None:
        """Record the caller's own write (``value`` None: a delete) made at ``revision``."""
        if max(self.revisions.get(name, 0), self._gone.get(name, 0)) >= revision:
            return
        if value is None and revision > self.revision:
            self._gone[name] = revision
            self._gone_upto = max(self._gone_upto, revision)
        elif value is not None:
            self._gone.pop(name, None)
        self._set(name, value, revision)

    async def seen(self, revision: int) -> None:
        """Return once a change at ``revision`` or later under this prefix has been applied
        (a watch reports only its own prefix, so ``revision`` must be one of a change here,
        e.g. of the caller's own write)."""
        while self.revision < revision:
            await self._progress.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
