"""The ``null`` driver behind network ``none``: a sandbox with only ``lo``.

The sandbox's namespace (with ``lo`` up) is the engine's; this driver adds nothing to it:
no link, no address, no route, no firewall rule.
"""

from __future__ import annotations

from collections.abc import Sequence

from cnm.model.endpoint import EndpointRecord, SandboxRecord
from cnm.model.network import NetworkRecord, NetworkSpec


class NullDriver:
    name = "null"
    needs_ipam = False

    def validate(self, spec: NetworkSpec) -> None:
        """Nothing to honour: the null driver has no options."""

    async def create_network(self, network: NetworkRecord) -> None:
        """No kernel object."""

    async def delete_network(self, network: NetworkRecord) -> None:
        """Nothing was created."""

    async def join(self, network: NetworkRecord, endpoint: EndpointRecord, sandbox: SandboxRecord) -> None:
        """The sandbox keeps only its loopback."""

    async def leave(
        self, network: NetworkRecord, endpoint: EndpointRecord, sandbox: SandboxRecord | None
    ) -> None:
        """Nothing to undo."""

    async def restore(self, networks: Sequence[NetworkRecord], endpoints: Sequence[EndpointRecord]) -> None:
        """Nothing in the kernel belongs to this driver."""
