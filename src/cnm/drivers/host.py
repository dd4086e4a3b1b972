"""The ``host`` driver: the container shares the host's network namespace.

Nothing to create in the kernel: there is no endpoint link, no address from IPAM and no
firewall rule.  The engine refuses creating more host networks (Docker's "only one
instance"); this driver only serves the predefined one.
"""

from __future__ import annotations

from collections.abc import Sequence

from cnm.model.endpoint import EndpointRecord, SandboxRecord
from cnm.model.network import NetworkRecord, NetworkSpec


class HostDriver:
    name = "host"
    needs_ipam = False

    def validate(self, spec: NetworkSpec) -> None:
        """Nothing to honour: host networking has no options."""

    async def create_network(self, network: NetworkRecord) -> None:
        """No kernel object: the network is the host's own stack."""

    async def delete_network(self, network: NetworkRecord) -> None:
        """Nothing was created."""

    async def join(self, network: NetworkRecord, endpoint: EndpointRecord, sandbox: SandboxRecord) -> None:
        """The container runs in the host's namespace (its sandbox has no key)."""

    async def leave(
        self, network: NetworkRecord, endpoint: EndpointRecord, sandbox: SandboxRecord | None
    ) -> None:
        """Nothing to undo."""

    async def restore(self, networks: Sequence[NetworkRecord], endpoints: Sequence[EndpointRecord]) -> None:
        """Nothing in the kernel belongs to this driver."""
