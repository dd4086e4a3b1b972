"""What every engine object works with: the records, the locks, the event log, and the
layers below (IPAM, kernel, drivers, runtime, names, published ports).

``ipam`` is the local scope's; a global network's addresses come from ``ipam_for``.
The controller builds one ``Services`` at start; ``Network``, ``Endpoint``, ``Sandbox`` and
the container-lifecycle modules hold it and never copy from it, so there is one record
view, one lock table and one event log per daemon.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from cnm.drivers.api import NetworkDriver
from cnm.engine.cluster import Cluster
from cnm.engine.events import Events
from cnm.engine.locks import KeyedLocks
from cnm.engine.naming import Naming
from cnm.engine.ports import Publisher
from cnm.engine.state import State
from cnm.errors import NotFound, Unavailable
from cnm.ipam.api import Ipam
from cnm.kernel.api import Kernel
from cnm.model.container import Container, Image
from cnm.model.network import NetworkRecord
from cnm.runtime.api import Runtime


def now_rfc3339() -> str:
    """UTC with nanoseconds, Docker's ``Created`` format."""
    t = datetime.now(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond:06d}000Z"


@dataclass(frozen=True, slots=True, eq=False)
class Services:
    state: State
    locks: KeyedLocks
    events: Events
    ipam: Ipam
    kernel: Kernel
    drivers: Mapping[str, NetworkDriver]
    runtime: Runtime
    naming: Naming
    publisher: Publisher | None
    netns_dir: str  # where sandboxes' namespaces are bind-mounted (under the exec root)
    cluster: Cluster | None = None  # with --cluster-store: global networks, nodes, names
    # with cnmd --netns-names: the directory (/run/netns) where each sandbox's namespace is
    # also mounted as cnm-<container name>, for ``ip netns exec``; "" = off
    netns_names: str = ""

    def ipam_for(self, network: NetworkRecord) -> Ipam:
        """The IPAM of ``network``'s scope: the cluster's for a global network."""
        if network.scope == "global":
            if self.cluster is None:
                raise Unavailable(f"network {network.name} is global but cnmd has no --cluster-store")
            return self.cluster.ipam
        return self.ipam

    def image_of(self, container: Container) -> Image:
        """The image the container was created from (by id, else by its reference)."""
        try:
            return self.runtime.find_image(container.config.image_id or container.config.image)
        except NotFound:
            return self.runtime.find_image(container.config.image)
