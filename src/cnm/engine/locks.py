"""The engine's locks: one per network, one per container, one for the network catalogue.

Every change to the engine's records holds the locks of the objects it reads or writes from
its validation through its kernel work to its record, so no other change can slip in at
one of its awaits.

The order (the only one; ``hold`` takes a whole set in it, and refuses, as a bug, a task
that asks for a lock out of order while it holds others):

1. the catalogue (network names, bridge names: ``network create``), exclusive;
2. networks, by id: shared by changes to their endpoints (start, connect, disconnect,
   exit, remove, rename), exclusive for the network itself (``network rm``, prune);
3. containers, by id: exclusive.

Waiters are served first come, first served, so a ``network rm`` waiting for the
network is not starved by a stream of starts on it.  Locks are created on demand and
dropped when nobody holds or waits for them, so the table does not grow with the number
of objects ever seen.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager

CATALOGUE = 0
NETWORK = 1
CONTAINER = 2

Key = tuple[int, str]  # (rank, id): the global order is the tuples' order


class LockOrderError(RuntimeError):
    """A lock was asked for out of the documented order: a bug that could deadlock."""


class _Lock:
    """Many shared holders or one exclusive holder, granted in arrival order."""

    def __init__(self) -> None:
        self.shared = 0
        self.exclusive = False
        self.waiters: deque[tuple[bool, asyncio.Future[None]]] = deque()

    def _grantable(self, exclusive: bool) -> bool:
        return not self.exclusive and (not exclusive or self.shared == 0)

    def _take(self, exclusive: bool) -> None:
        if exclusive:
            self.exclusive = True
        else:
            self.shared += 1

    def _wake(self) -> None:
        while self.waiters:
            exclusive, fut = self.waiters[0]
            if fut.done():  # cancelled while waiting
                self.waiters.popleft()
                continue
            if not self._grantable(exclusive):
                return
            self.waiters.popleft()
            self._take(exclusive)
            fut.set_result(None)

    async def acquire(self, exclusive: bool) -> None:
        if not self.waiters and self._grantable(exclusive):
            self._take(exclusive)
            return
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append((exclusive, fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # granted, then cancelled: give it back
                self.release(exclusive)
            else:
                self._wake()  # a shared waiter behind a cancelled exclusive one may go now
            raise

    def release(self, exclusive: bool) -> None:
        if exclusive:
            self.exclusive = False
        else:
            self.shared -= 1
        self._wake()

    @property
    def idle(self) -> bool:
        return not self.exclusive and self.shared == 0 and not self.waiters


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[Key, _Lock] = {}
        self._held: dict[asyncio.Task[object] | None, list[Key]] = {}

    @asynccontextmanager
    async def hold(
        self,
        *,
        catalogue: bool = False,
        networks: Iterable[str] = (),
        containers: Iterable[str] = (),
        networks_exclusive: bool = False,
    ) -> AsyncIterator[None]:
        """Hold every lock named, taken in the documented order; released in reverse."""
        wanted: list[tuple[Key, bool]] = [((CATALOGUE, ""), True)] if catalogue else []
        wanted += [((NETWORK, n), networks_exclusive) for n in sorted(set(networks))]
        wanted += [((CONTAINER, c), True) for c in sorted(set(containers))]
        async with AsyncExitStack() as stack:
            for key, exclusive in wanted:
                await stack.enter_async_context(self._one(key, exclusive))
            yield

    @asynccontextmanager
    async def _one(self, key: Key, exclusive: bool) -> AsyncIterator[None]:
        task = asyncio.current_task()
        held = self._held.setdefault(task, [])
        if held and held[-1] >= key:
            raise LockOrderError(f"lock {key} asked for while holding {held[-1]}: out of order")
        lock = self._locks.setdefault(key, _Lock())
        try:
            await lock.acquire(exclusive)
        except BaseException:
            self._forget(key, lock, task)
            raise
        held.append(key)
        try:
            yield
        finally:
            held.remove(key)
            lock.release(exclusive)
            self._forget(key, lock, task)

    def _forget(self, key: Key, lock: _Lock, task: asyncio.Task[object] | None) -> None:
        if lock.idle and self._locks.get(key) is lock:
            del self._locks[key]
        if not self._held.get(task, True):
            del self._held[task]

    def held(self) -> list[Key]:
        """The keys the current task holds, in the order taken (for tests and asserts)."""
        return list(self._held.get(asyncio.current_task(), []))

    def __len__(self) -> int:
        """How many locks exist (held or waited for)."""
        return len(self._locks)
