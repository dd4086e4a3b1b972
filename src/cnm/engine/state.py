"""The engine's records: a cache of the store, fed by its watch, written through with
compare-and-swap.

The store is the truth that survives restarts and that other daemons may share; this view
makes reads free on the hot path (attach, inspect, DNS).  ``load`` lists each kind and
follows it with a ``Mirror``, so a change another daemon writes shows up here without a
restart.  ``commit`` writes a set of changes in one store transaction, each checked
against the revision this view last saw (a record changed elsewhere meanwhile is a
``StaleRevision``, nothing written), and only then updates memory, so memory never holds
what the store refused.

With a cluster store (``global_store``), global-scope networks live there: their records
are mirrored into ``networks`` beside the local ones and written there, and every
endpoint record in the cluster store (any host's, on a global network) is mirrored into
``global_endpoints``, so "does any host use this network" is a lookup too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, TypeVar

from cnm.errors import SystemFailure
from cnm.model.container import Container
from cnm.model.endpoint import EndpointRecord, SandboxRecord
from cnm.model.network import NetworkRecord
from cnm.store import codec
from cnm.store.api import Check, Delete, Document, Op, Put, Store
from cnm.store.mirror import Mirror

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

    def pop(self, key: str, default: Any = _MISSING) -> Any:
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

    def update(self, *args: Any, **kwargs: R) -> None:
        for key, record in dict(*args, **kwargs).items():
            self[key] = record

    def clear(self) -> None:
        super().clear()
        for index in self._index.values():
            index.clear()


class State:
    """The four kinds of engine record, each a table kept current by a Mirror."""

    def __init__(self, store: Store, global_store: Store | None = None) -> None:
        self._store = store
        self._global_store = global_store
        self.networks: dict[str, NetworkRecord] = {}
        self.endpoints: IndexedTable[EndpointRecord] = IndexedTable("container_id", "network_id")
        self.sandboxes: IndexedTable[SandboxRecord] = IndexedTable("container_id")
        self.containers: dict[str, Container] = {}
        self._tables: dict[type, MutableMapping[str, Any]] = {
            NetworkRecord: self.networks,
            EndpointRecord: self.endpoints,
            SandboxRecord: self.sandboxes,
            Container: self.containers,
        }
        self._mirrors: dict[type, Mirror[Any]] = {}
        # the cluster store's networks (also in ``networks``) and endpoints (any host's)
        self.global_endpoints: IndexedTable[EndpointRecord] = IndexedTable("network_id")
        self._global_networks: Mirror[NetworkRecord] | None = None
        self._global_endpoints: Mirror[EndpointRecord] | None = None
        self._global_endpoint_listeners: list[
            Callable[[str, EndpointRecord | None, EndpointRecord | None], None]
        ] = []

    async def load(self) -> None:
        """Read every record from the store and follow each kind from then on (daemon start)."""
        for cls, table in self._tables.items():
            table.clear()
            mirror = Mirror(self._store, _KINDS[cls] + "/", _decoder(cls), items=table)
            await mirror.start()
            self._mirrors[cls] = mirror
        if self._global_store is not None:
            networks: Mirror[NetworkRecord] = Mirror(self._global_store, "network/", _decoder(NetworkRecord))
            networks.listen(self._global_network_changed)
            await networks.start()
            self._global_networks = networks
            endpoints = Mirror(self._global_store, "endpoint/", _global_endpoint, items=self.global_endpoints)
            for listener in self._global_endpoint_listeners:
                endpoints.listen(listener)
            await endpoints.start()
            self._global_endpoints = endpoints

    def listen_global_endpoints(
        self, listener: Callable[[str, EndpointRecord | None, EndpointRecord | None], None]
    ) -> None:
        """Call ``listener(id, old, new)`` for every change of the cluster store's endpoint
        records (any host's), from the first load on; register before ``load``."""
        self._global_endpoint_listeners.append(listener)

    def _global_network_changed(
        self, name: str, _old: NetworkRecord | None, new: NetworkRecord | None
    ) -> None:
        if new is None:
            self.networks.pop(name, None)
        else:
            self.networks[name] = new

    async def commit(
        self,
        put: Iterable[Record] = (),
        delete: Iterable[Record] = (),
        *,
        ops: Iterable[Op] = (),
        checks: Iterable[Check] = (),
    ) -> int:
        """Persist ``put`` and remove ``delete`` in one transaction, then mirror in memory;
        the store revision written.  Each key is checked against the revision last seen
        here, so a record another daemon changed meanwhile fails the whole commit
        (StaleRevision).  ``ops`` and ``checks`` join the transaction as they are (a
        global network's name and VNI); all of it goes to one store: the cluster store
        for global networks, the local one for the rest."""
        put, delete = list(put), list(delete)
        store = self._store
        if self._global_store is not None:
            stores = {id(s): s for s in map(self._store_of, [*put, *delete])}
            if len(stores) > 1:
                raise SystemFailure("one commit cannot write both the local and the cluster store")
            store = next(iter(stores.values()), store)
        writes: list[Op] = [Put(_key(r), codec.encode(r)) for r in put]
        writes += [Delete(_key(r)) for r in delete]
        writes += ops
        tests = [Check(_key(r), self._revision(r)) for r in [*put, *delete]]
        tests += checks
        revision = await store.commit(writes, tests)
        for record in put:
            self._mirror(record).apply(record.id, record, revision)
        for record in delete:
            self._mirror(record).apply(record.id, None, revision)
        return revision

    def _store_of(self, record: Record) -> Store:
        if isinstance(record, NetworkRecord) and record.scope == "global":
            if self._global_store is None:
                raise SystemFailure(f"network {record.name} is global but cnmd has no --cluster-store")
            return self._global_store
        return self._store

    def _mirror(self, record: Record) -> Mirror[Any]:
        if isinstance(record, NetworkRecord) and record.scope == "global":
            mirror = self._global_networks
        else:
            mirror = self._mirrors.get(type(record))
        if mirror is None:
            raise RuntimeError("State.commit before State.load")
        return mirror

    def _revision(self, record: Record) -> int:
        return self._mirror(record).revisions.get(record.id, 0)

    async def close(self) -> None:
        """Stop following the store."""
        for mirror in self._mirrors.values():
            await mirror.close()
        self._mirrors.clear()
        for extra in (self._global_networks, self._global_endpoints):
            if extra is not None:
                await extra.close()
        self._global_networks = self._global_endpoints = None

    # -- queries used on hot paths --------------------------------------------------------

    def endpoints_of_network(self, network_id: str) -> list[EndpointRecord]:
        return self.endpoints.by("network_id", network_id)

    def endpoints_of_container(self, container_id: str) -> list[EndpointRecord]:
        return sorted(self.endpoints.by("container_id", container_id), key=lambda ep: ep.created_seq)

    def sandbox_of(self, container_id: str) -> SandboxRecord | None:
        found = self.sandboxes.by("container_id", container_id)
        return found[0] if found else None


def _key(record: Record) -> str:
    return f"{_KINDS[type(record)]}/{record.id}"


def _global_endpoint(name: str, doc: Document) -> EndpointRecord:
    """An endpoint record of the cluster store (another host's may carry fields this one
    does not know; one that does not decode still counts on its network)."""
    try:
        return codec.decode(EndpointRecord, doc)
    except SystemFailure:
        network = doc.get("network_id", "")
        return EndpointRecord(
            id=name, network_id=str(network), container_id="", sandbox_id="", name=str(doc.get("name", ""))
        )


def _decoder(cls: type[R]) -> Any:
    def decode(_name: str, doc: Document) -> R:
        return codec.decode(cls, doc)

    return decode
