"""The CNM network-driver protocol.

The engine owns ids, names, IPAM and the store; a driver owns the kernel objects of its
networks and endpoints.  The engine computes every field of a ``Network``/``Endpoint``
(addresses, MAC, interface names) *before* calling a driver, so driver calls are
"apply this resolved record" and can be replayed on restart.

Promises of every driver:
- ``validate`` is pure and raises ``InvalidArgument`` for options it cannot honour.
- ``create_network`` / ``join`` undo their own partial work before raising.
- ``delete_network`` / ``leave`` are idempotent and keep going past errors.
- ``restore`` makes the kernel match the records after a daemon restart: re-creates what
  is missing for the given networks/endpoints and removes links it owns that no record
  names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from cnm.model.endpoint import EndpointRecord, SandboxRecord
from cnm.model.network import NetworkRecord, NetworkSpec


class NetworkDriver(Protocol):
    name: str  # "bridge", "host", "null"
    #: whether endpoints of this driver get an address from IPAM
    needs_ipam: bool

    def validate(self, spec: NetworkSpec) -> None: ...

    async def create_network(self, network: NetworkRecord) -> None: ...

    async def delete_network(self, network: NetworkRecord) -> None: ...

    async def join(
        self, network: NetworkRecord, endpoint: EndpointRecord, sandbox: SandboxRecord
    ) -> None: ...

    async def leave(
        self, network: NetworkRecord, endpoint: EndpointRecord, sandbox: SandboxRecord | None
    ) -> None: ...

    async def restore(
        self, networks: Sequence[NetworkRecord], endpoints: Sequence[EndpointRecord]
    ) -> None: ...
