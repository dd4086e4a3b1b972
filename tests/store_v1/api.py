"""The Store protocol: documents (JSON-able dicts) by kind and key, written in transactions.

Kinds used by cnm (the key is the record's id unless said otherwise):

    network         cnm.model.network.NetworkRecord
    endpoint        cnm.model.endpoint.EndpointRecord
    sandbox         cnm.model.endpoint.SandboxRecord
    container       cnm.model.container.Container
    image           cnm.model.container.Image
    ipam.pool       IPAM pools, keyed by network id
    ipam.address    IPAM allocations, keyed "<network id>/<address>"

The shape is deliberately that of a key-value store with prefixes (``<kind>/<key>``) so that
an etcd backend for global-scope networks can implement the same protocol later without
touching callers.  ``cnm.store.codec`` turns model dataclasses into documents and back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

Document = dict[str, Any]


class Txn(Protocol):
    """Writes inside one transaction; reads see the transaction's own writes."""

    def get(self, kind: str, key: str) -> Document | None: ...

    def put(self, kind: str, key: str, doc: Document) -> None: ...

    def delete(self, kind: str, key: str) -> None:
        """Idempotent: deleting a missing key is not an error."""
        ...

    def list(self, kind: str, prefix: str = "") -> list[tuple[str, Document]]: ...


class Store(Protocol):
    def get(self, kind: str, key: str) -> Document | None: ...

    def list(self, kind: str, prefix: str = "") -> list[tuple[str, Document]]:
        """All (key, document) pairs of ``kind`` whose key starts with ``prefix``, key order."""
        ...

    def transaction(self) -> AbstractContextManager[Txn]:
        """Commit on normal exit, roll back on exception."""
        ...

    def close(self) -> None: ...


def iter_docs(store: Store, kind: str) -> Iterator[Document]:
    for _key, doc in store.list(kind):
        yield doc
