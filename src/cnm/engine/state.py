"""The engine's records: an in-memory view of the store, written through in transactions.

The store is the truth that survives restarts; this view makes reads free on the hot path
(attach, inspect, DNS later).  ``commit`` writes a set of changes in one transaction and
only then updates memory, so memory never holds what the store refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from cnm.model.container import Container
from cnm.model.endpoint import EndpointRecord, SandboxRecord
from cnm.model.network import NetworkRecord
from cnm.store import codec
from cnm.store.docs import Store

Record = NetworkRecord | EndpointRecord | SandboxRecord | Container
R = TypeVar("R", bound=Record)

_KINDS: dict[type, str] = {
    NetworkRecord: "network",
    EndpointRecord: "endpoint",
    SandboxRecord: "sandbox",
    Container: "container",
}


_MISSING = object()


class IndexedTable(dict[str, R]):
    """Records by id, also indexed by some of their fields, so the hot-path queries
    ("endpoints of this container") cost the same with 5 or 5000 records.  Every way of
    changing the dict keeps the indexes right (the engine also writes it directly, e.g.
    an endpoint being joined during a start)."""

    def __init__(self, *fields: str) -> None:
        super().__init__()
        self._index: dict[str, dict[object, dict[str, R]]] = {f: {} for f in fields}

    def by(self, field: str, value: object) -> list[R]:
        """The records whose ``field`` is ``value``, in insertion order."""
        return list(self._index[field].get(value, {}).values())

    def _drop(self, key: str, record: R) -> None:
        for field, index in self._index.items():
            value = getattr(record, field)
            bucket = index.get(value)
            if bucket is not None:
                bucket.pop(key, None)
                if not bucket:
                    del index[value]

    def __setitem__(self, key: str, record: R) -> None:
        old = super().get(key, _MISSING)
        super().__setitem__(key, record)
        for field, index in self._index.items():
            value = getattr(record, field)
            if old is not _MISSING:
                previous = getattr(old, field)
                if previous == value:
                    index[value][key] = record  # keeps its place, as the dict does
                    continue
                bucket = index.get(previous)
                if bucket is not None:
                    bucket.pop(key, None)
                    if not bucket:
                        del index[previous]
            index.setdefault(value, {})[key] = record

    def __delitem__(self, key: str) -> None:
        record = super().pop(key)
        self._drop(key, record)

    def pop(self, key: str, default: object = _MISSING):
        if key not in self:
            if default is _MISSING:
                raise KeyError(key)
            return default
        record = super().pop(key)
        self._drop(key, record)
        return record

    def popitem(self) -> tuple[str, R]:
        key, record = super().popitem()
        self._drop(key, record)
        return key, record

    def setdefault(self, key: str, default: R) -> R:
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args, **kwargs) -> None:
        for key, record in dict(*args, **kwargs).items():
            self[key] = record

    def clear(self) -> None:
        super().clear()
        for index in self._index.values():
            index.clear()


class State:
    def __init__(self, store: Store) -> None:
        self._store = store
        self.networks: dict[str, NetworkRecord] = {}
        self.endpoints: IndexedTable[EndpointRecord] = IndexedTable("container_id", "network_id")
        self.sandboxes: IndexedTable[SandboxRecord] = IndexedTable("container_id")
        self.containers: dict[str, Container] = {}
        self._tables: dict[type, dict] = {
            NetworkRecord: self.networks,
            EndpointRecord: self.endpoints,
            SandboxRecord: self.sandboxes,
            Container: self.containers,
        }

    def load(self) -> None:
        """Read every record from the store (daemon start)."""
        for cls, table in self._tables.items():
            table.clear()
            for key, doc in self._store.list(_KINDS[cls]):
                table[key] = codec.decode(cls, doc)

    def commit(self, put: Iterable[Record] = (), delete: Iterable[Record] = ()) -> None:
        """Persist ``put`` and remove ``delete`` in one transaction, then mirror in memory."""
        put, delete = list(put), list(delete)
        with self._store.transaction() as tx:
            for record in put:
                tx.put(_KINDS[type(record)], record.id, codec.encode(record))
            for record in delete:
                tx.delete(_KINDS[type(record)], record.id)
        for record in put:
            self._tables[type(record)][record.id] = record
        for record in delete:
            self._tables[type(record)].pop(record.id, None)

    # -- queries used on hot paths --------------------------------------------------------

    def endpoints_of_network(self, network_id: str) -> list[EndpointRecord]:
        return self.endpoints.by("network_id", network_id)

    def endpoints_of_container(self, container_id: str) -> list[EndpointRecord]:
        return sorted(self.endpoints.by("container_id", container_id), key=lambda ep: ep.created_seq)

    def sandbox_of(self, container_id: str) -> SandboxRecord | None:
        found = self.sandboxes.by("container_id", container_id)
        return found[0] if found else None
