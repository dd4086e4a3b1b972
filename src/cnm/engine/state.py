"""The engine's records: an in-memory view of the store, written through in transactions.

The store is the truth that survives restarts; this view makes reads free on the hot path
(attach, inspect, DNS later).  ``commit`` writes a set of changes in one transaction and
only then updates memory, so memory never holds what the store refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from cnm.model.container import Container
from cnm.model.endpoint import Endpoint, Sandbox
from cnm.model.network import Network
from cnm.store import codec
from cnm.store.api import Store

Record = Network | Endpoint | Sandbox | Container
R = TypeVar("R", Network, Endpoint, Sandbox, Container)

_KINDS: dict[type, str] = {
    Network: "network",
    Endpoint: "endpoint",
    Sandbox: "sandbox",
    Container: "container",
}


class State:
    def __init__(self, store: Store) -> None:
        self._store = store
        self.networks: dict[str, Network] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self.sandboxes: dict[str, Sandbox] = {}
        self.containers: dict[str, Container] = {}
        self._tables: dict[type, dict] = {
            Network: self.networks,
            Endpoint: self.endpoints,
            Sandbox: self.sandboxes,
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

    def endpoints_of_network(self, network_id: str) -> list[Endpoint]:
        return [ep for ep in self.endpoints.values() if ep.network_id == network_id]

    def endpoints_of_container(self, container_id: str) -> list[Endpoint]:
        eps = [ep for ep in self.endpoints.values() if ep.container_id == container_id]
        return sorted(eps, key=lambda ep: ep.created_seq)

    def sandbox_of(self, container_id: str) -> Sandbox | None:
        for sb in self.sandboxes.values():
            if sb.container_id == container_id:
                return sb
        return None
