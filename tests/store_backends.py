"""The Store backends the conformance suite (tests/integration/test_store_conformance.py)
runs against: name -> async context manager factory yielding a fresh, empty Store.

Each backend module adds its entry here; the suite is parametrized over all of them.
Backend hooks a case may need (forcing what a backend does on its own) are functions here
that work for every registered backend.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from etcd_cluster import etcd_store  # tests/ is on sys.path (tests/conftest.py)

from cnm.store.api import Store
from cnm.store.memory import MemoryStore
from cnm.store.sqlite import SqliteStore


@contextlib.asynccontextmanager
async def memory_store(tmp_path: Path) -> AsyncIterator[Store]:
    store = MemoryStore()
    try:
        yield store
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    store = SqliteStore(tmp_path / "cnm.db")
    try:
        yield store
    finally:
        await store.close()


BACKENDS: dict[str, Callable[[Path], Any]] = {
    "sqlite": sqlite_store,  # first: the entries others add after "memory" then merge cleanly
    "memory": memory_store,
    "etcd": etcd_store,
}


async def compact(store: Store, revision: int) -> None:
    """Make ``store`` forget its history before ``revision`` (so a watch from before it
    raises Compacted).  Every backend offers ``compact(revision)``, plain or async."""
    result = store.compact(revision)  # type: ignore[attr-defined]
    if inspect.isawaitable(result):
        await result
