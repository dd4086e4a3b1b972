"""The ``overlay`` driver: networks that span hosts (global scope), over VXLAN.

The network itself is the cluster's: its record, pool and VNI live in the cluster store
(the engine writes them, ``cnm.engine.cluster``), and a host has nothing of it in the
kernel until a container of that host joins.  So ``create_network`` and
``delete_network`` touch no kernel object: the per-host data plane (a bridge and a VXLAN
device per network, the remote endpoints' FDB and neighbour entries) is made at the
first join on a host and removed at its last leave.

That data plane is not wired in yet: ``join`` refuses, clearly, in ``_data_plane``.
"""

from __future__ import annotations

from collections.abc import Sequence

from cnm.errors import InvalidArgument, Unavailable
from cnm.model.endpoint import EndpointRecord, SandboxRecord
from cnm.model.network import OPT_BRIDGE_NAME, OPT_VXLANID_LIST, NetworkRecord, NetworkSpec, validate_options

DATA_PLANE_MISSING = "overlay data plane not available yet"


class OverlayDriver:
    name = "overlay"
    needs_ipam = True

    def validate(self, spec: NetworkSpec) -> None:
        """Docker's overlay options: ``encrypted`` (present: encrypted), the MTU.  The VNI
        is cnm's to choose (unique in the cluster), and a bridge name has no meaning here."""
        validate_options(spec.options)
        if OPT_VXLANID_LIST in spec.options:
            raise InvalidArgument(
                f"option {OPT_VXLANID_LIST} is not supported: cnm gives each overlay network "
                "a VXLAN id of its own"
            )
        if OPT_BRIDGE_NAME in spec.options:
            raise InvalidArgument(f"option {OPT_BRIDGE_NAME} is for bridge networks, not overlay")
        if spec.enable_ipv6:
            raise InvalidArgument("IPv6 networks are not supported yet: cnm's overlay driver is IPv4-only")
        if len(spec.ipam) > 1:
            raise InvalidArgument("the overlay driver takes one IPv4 subnet per network")

    async def create_network(self, network: NetworkRecord) -> None:
        """Nothing in the kernel: the data plane is made at the first join on a host."""

    async def delete_network(self, network: NetworkRecord) -> None:
        """Nothing in the kernel outlives the last leave."""

    async def join(self, network: NetworkRecord, endpoint: EndpointRecord, sandbox: SandboxRecord) -> None:
        self._data_plane(network)

    async def leave(
        self, network: NetworkRecord, endpoint: EndpointRecord, sandbox: SandboxRecord | None
    ) -> None:
        """Nothing was joined (see ``join``)."""

    async def restore(self, networks: Sequence[NetworkRecord], endpoints: Sequence[EndpointRecord]) -> None:
        """Nothing in the kernel yet."""

    def _data_plane(self, network: NetworkRecord) -> None:
        """THE place where the per-host data plane gets wired (bridge + VXLAN device,
        remote endpoints from the cluster store's watch); until then, a clear refusal."""
        raise Unavailable(f"cannot attach to overlay network {network.name}: {DATA_PLANE_MISSING}")
