"""A Mirror: the entries under one prefix of a Store, kept current in memory by a watch.

This is how the engine and IPAM keep their caches: reads are dictionary lookups, and a
change written by another daemon sharing the store (etcd, global scope) shows up here
within the watch's latency, without a restart.  The mirror lists the prefix, then watches
from the listing's revision + 1; when the backend says the history is compacted, it lists
again and reports the difference as changes, so a consumer never misses one.

A writer that wants to read its own write at once calls ``seen(revision)`` (wait until
the watch has delivered it) or ``apply`` (put its own value in now; the watch's copy of
the same revision later changes nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, MutableMapping
from typing import Generic, TypeVar

from cnm.store.api import Change, Compacted, Document, Store

T = TypeVar("T")


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
        fresh = {e.key[len(self._prefix) :]: e for e in listing.entries}
        for name in [n for n in self.items if n not in fresh]:
            self._set(name, None, listing.revision)
        for name, entry in fresh.items():
            if self.revisions.get(name) != entry.revision:
                self._set(name, self._decode(name, entry.doc), entry.revision)
        self._advance(listing.revision)

    async def _follow(self) -> None:
        while True:
            try:
                async for change in self._store.watch(self._prefix, self.revision + 1):
                    self._on_change(change)
                return
            except Compacted:
                await self._load()

    def _on_change(self, change: Change) -> None:
        name = change.key[len(self._prefix) :]
        if self.revisions.get(name, 0) < change.revision:
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
            self._progress.set()
            self._progress = asyncio.Event()

    def apply(self, name: str, value: T | None, revision: int) -> None:
        """Record the caller's own write (``value`` None: a delete) made at ``revision``."""
        if self.revisions.get(name, 0) < revision:
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
