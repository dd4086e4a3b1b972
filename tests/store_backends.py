"""The Store backends the conformance suite (tests/integration/test_store_conformance.py)
runs against: name -> async context manager factory yielding a fresh, empty Store.

Each backend module adds its entry here; the suite is parametrized over all of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from etcd_cluster import etcd_store  # tests/ is on sys.path (tests/conftest.py)

from cnm.store.api import Store
from cnm.store.memory import MemoryStore


@contextlib.asynccontextmanager
async def memory_store(tmp_path: Path) -> AsyncIterator[Store]:
    store = MemoryStore()
    try:
        yield store
    finally:
        await store.close()


BACKENDS: dict[str, Callable[[Path], Any]] = {
    "memory": memory_store,
    "etcd": etcd_store,
}
