"""Changes to the cluster store that must still happen after the store failed to take
them: each is retried in the background until the store answers.

An undo that itself needs the store (freeing a global address a failed join claimed)
cannot run while etcd is away; dropping it would leak what it frees, and waiting for it
would hold the caller's error back.  ``Later`` keeps it and tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable

from cnm.errors import CnmError, Unavailable

log = logging.getLogger("cnm.engine")


class Later:
    """Pending changes by key, each an ``attempt`` retried every ``interval`` seconds
    while it raises Unavailable; any other outcome ends it (an error is logged).  One
    background task while anything is pending; ``close`` cancels it (what is left is
    dropped: the next start's reconciliation owns it)."""

    def __init__(self, what: str, interval: float) -> None:
        self.what = what  # for the log: "global addresses not freed yet"
        self.interval = interval
        self._pending: dict[Hashable, Callable[[], Awaitable[None]]] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, key: Hashable, attempt: Callable[[], Awaitable[None]]) -> None:
        """Retry ``attempt`` (replacing what ``key`` had) until the store takes it."""
        self._pending[key] = attempt
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=self.what)

    def pending(self) -> list[Hashable]:
        return list(self._pending)

    async def _run(self) -> None:
        while self._pending:
            await asyncio.sleep(self.interval)
            for key, attempt in list(self._pending.items()):
                try:
                    await attempt()
                except Unavailable as exc:
                    log.debug("%s: %s", self.what, exc)
                    break  # still away: all of them later
                except CnmError as exc:
                    log.warning("%s: %s gave up: %s", self.what, key, exc)
                if self._pending.get(key) is attempt:
                    del self._pending[key]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
