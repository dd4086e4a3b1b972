"""The network catalogue: which networks exist, their names, the predefined three.

``Networks`` owns what is about the set rather than one network: looking a network up by
Docker's rules, the uniqueness of names and Linux bridge names (checked and taken under
the catalogue lock, so two ``network create`` never both win), the predefined ``bridge``,
``host`` and ``none``, and prune.  Each network's own lifecycle is ``engine/network.py``.
"""

from __future__ import annotations

import logging
from ipaddress import IPv6Network

from cnm.drivers.overlay import OverlayDriver
from cnm.engine.cluster import Node
from cnm.engine.lookup import find_network, network_by_name
from cnm.engine.network import Network
from cnm.engine.services import Services, now_rfc3339
from cnm.errors import CnmError, Conflict, Forbidden, InvalidArgument, NotFound
from cnm.model.endpoint import EndpointRecord
from cnm.model.network import (
    GLOBAL_DRIVERS,
    GWBRIDGE_NAME,
    OPT_BRIDGE_NAME,
    OPT_DEFAULT_BRIDGE,
    OPT_HOST_BINDING,
    OPT_ICC,
    OPT_MASQ,
    OPT_MTU,
    RESERVED_NAMES,
    IpamConfig,
    NetworkRecord,
    NetworkSpec,
    validate_options,
)
from cnm.model.values import new_id

log = logging.getLogger("cnm.engine")


class Networks:
    def __init__(
        self,
        svc: Services,
        *,
        bridge_name: str = "cnm0",
        default_bridge_mtu: int = 1500,
        ipv6: IpamConfig | None = None,
    ) -> None:
        """``ipv6``: the default bridge's IPv6 entry (cnmd ``--ipv6``; its subnet is
        ``--fixed-cidr-v6``, or none for a /64 of the default IPv6 pool); None: no IPv6."""
        self._svc = svc
        self._state = svc.state
        self._bridge_name = bridge_name
        self._mtu = default_bridge_mtu
        self._ipv6 = ipv6 is not None
        subnet6 = ipv6.subnet if ipv6 is not None else None
        self._subnet6 = subnet6 if isinstance(subnet6, IPv6Network) else None

    # -- lookup ---------------------------------------------------------------------------

    def find(self, ref: str) -> NetworkRecord:
        return find_network(self._state, ref)

    def by_name(self, name: str) -> NetworkRecord | None:
        return network_by_name(self._state, name)

    def get(self, ref: str) -> Network:
        """The network ``ref`` names, as the object that changes it."""
        return Network(self._svc, self.find(ref))

    def all(self) -> list[NetworkRecord]:
        return sorted(self._state.networks.values(), key=lambda n: n.name)

    # -- predefined networks --------------------------------------------------------------

    async def ensure_predefined(self) -> None:
        """``none`` and ``host`` keep their ids across restarts; ``bridge`` is kept while
        its Linux bridge name and its IPv6 (``--ipv6``, ``--fixed-cidr-v6``) are still
        the configured ones (re-created otherwise, when no endpoint uses it)."""
        for name, driver in (("none", "null"), ("host", "host")):
            if self.by_name(name) is None:
                net = NetworkRecord(id=new_id(), name=name, driver=driver, created=now_rfc3339())
                await self._state.commit(put=[net])
        current = self.by_name("bridge")
        if current is not None and not self._default_bridge_matches(current):
            if self._state.endpoints_of_network(current.id):
                log.warning(
                    "default bridge stays on %s%s: containers are attached to it",
                    current.bridge_name,
                    f" and {current.subnet6}" if current.enable_ipv6 else " without IPv6",
                )
                return
            await Network(self._svc, current).destroy()
            current = None
        if current is None:
            spec = NetworkSpec(
                name="bridge",
                options={
                    OPT_DEFAULT_BRIDGE: "true",
                    OPT_ICC: "true",
                    OPT_MASQ: "true",
                    OPT_HOST_BINDING: "0.0.0.0",
                    OPT_BRIDGE_NAME: self._bridge_name,
                    OPT_MTU: str(self._mtu),
                },
                enable_ipv6=self._ipv6,
                ipam=self._default_bridge_ipam6(),
            )
            await Network.create(self._svc, spec)

    def _default_bridge_ipam6(self) -> tuple[IpamConfig, ...]:
        """As dockerd shows ``--fixed-cidr-v6``: the subnet, its first address the gateway."""
        if self._subnet6 is None:
            return ()
        return (IpamConfig(subnet=self._subnet6, gateway=self._subnet6.network_address + 1),)

    def _default_bridge_matches(self, current: NetworkRecord) -> bool:
        """Is the stored default bridge the configured one (bridge name, IPv6)?"""
        if current.bridge_name != self._bridge_name or current.enable_ipv6 != self._ipv6:
            return False
        return self._subnet6 is None or current.subnet6 == self._subnet6

    # -- create / remove ------------------------------------------------------------------

    def validate(self, spec: NetworkSpec, *, gwbridge: bool = False) -> None:
        """Everything that can be refused before the first syscall.  ``gwbridge``: this
        is cnmd making ``cnm_gwbridge``, a name no user may take (cnmd would take a user's
        network of that name for the overlay containers' way out)."""
        drivers = self._svc.drivers
        if spec.name in RESERVED_NAMES:
            raise Forbidden(f"operation is not permitted on predefined {spec.name} network ")
        if spec.name == GWBRIDGE_NAME and not gwbridge:
            raise Forbidden(
                f"network name {GWBRIDGE_NAME} is reserved: cnmd makes that network for the "
                "outside traffic of containers on overlay networks"
            )
        if spec.driver in ("host", "null"):
            raise Forbidden(f'only one instance of "{spec.driver}" network is allowed')
        if spec.driver not in drivers:
            raise NotFound(f"could not find plugin {spec.driver} in v1 plugin registry: plugin not found")
        if spec.driver in GLOBAL_DRIVERS and self._svc.cluster is None:
            raise InvalidArgument(
                f"{spec.driver} networks span hosts and need a cluster store: "
                "start cnmd with --cluster-store etcd://HOST:PORT"
            )
        if self.by_name(spec.name) is not None:
            raise Conflict(f"network with name {spec.name} already exists")
        if spec.driver in GLOBAL_DRIVERS and self._svc.cluster is not None:
            self._svc.cluster.check_global_name(spec.name)
        validate_options(spec.options)
        for version in (4, 6):
            if len([c for c in spec.ipam if c.subnet is not None and c.family == version]) > 1:
                raise InvalidArgument(f"only one IPv{version} subnet per network is supported")
        if not spec.enable_ipv6 and (v6 := [c for c in spec.ipam if c.is_v6]):
            raise InvalidArgument(
                f"invalid network config:\nIPv6 subnet {v6[0].subnet} is given but IPv6 is not enabled "
                "on the network (--ipv6)"
            )
        for cfg in spec.ipam:
            if cfg.subnet is None and (cfg.gateway or cfg.ip_range or cfg.aux_addresses):
                raise InvalidArgument("a gateway, ip-range or aux-address needs a subnet")
        bridge = spec.options.get(OPT_BRIDGE_NAME)
        if bridge:
            for net in self._state.networks.values():
                if net.driver == "bridge" and net.bridge_name == bridge:
                    raise InvalidArgument(f"bridge name {bridge} is already used by network {net.name}")
        drivers[spec.driver].validate(spec)

    async def create(self, spec: NetworkSpec) -> NetworkRecord:
        """``network create``: names and bridge names are checked and taken in one piece,
        under the catalogue lock.  In a cluster a local network's name is published for
        the other hosts first (Conflict, with nothing changed, if a global network has
        it, also one created a moment ago elsewhere; withdrawn if the create fails); a
        global network's name is taken with its record."""
        async with self._svc.locks.hold(catalogue=True):
            self.validate(spec)
            cluster = self._svc.cluster
            if cluster is None or spec.driver in GLOBAL_DRIVERS:
                return (await Network.create(self._svc, spec)).record
            network_id = new_id()
            await cluster.publish_local(spec.name, network_id)  # first: a Conflict changes nothing
            try:
                return (await Network.create(self._svc, spec, network_id)).record
            except BaseException:
                await cluster.unpublish_local(spec.name)
                raise

    async def _forget_name(self, network: NetworkRecord) -> None:
        """After a local network's removal: the cluster's record of its name goes too."""
        cluster = self._svc.cluster
        if cluster is None or network.scope != "local":
            return
        try:
            await cluster.withdraw_local(network.name)
        except CnmError as exc:  # withdrawn once the store answers (or at the next start)
            log.warning("the cluster still lists local network %s of this node: %s", network.name, exc)

    async def join_cluster(self) -> None:
        """In a cluster (start-up): follow its nodes, names and VNIs, and tell it which
        local networks this node has (``Cluster.reconcile_local``).  Global networks are
        records, loaded with the rest before this."""
        cluster = self._svc.cluster
        if cluster is None:
            return
        await cluster.start()
        if self.by_name(GWBRIDGE_NAME) is None:
            await self._create_gwbridge()
        local = {
            n.name: n.id
            for n in self._state.networks.values()
            if n.scope == "local" and not n.predefined and n.name != GWBRIDGE_NAME
        }
        await cluster.reconcile_local(local)

    async def _create_gwbridge(self) -> None:
        """The local bridge network of overlay containers' outside traffic (Docker's
        docker_gwbridge: containers do not talk to each other on it, their traffic out is
        masqueraded).  Made at start in a cluster, so a start never creates a network."""
        spec = NetworkSpec(
            name=GWBRIDGE_NAME,
            options={OPT_BRIDGE_NAME: GWBRIDGE_NAME, OPT_ICC: "false", OPT_MASQ: "true"},
        )
        # this host's own, like the predefined networks: its name is not published to the cluster
        async with self._svc.locks.hold(catalogue=True):
            self.validate(spec, gwbridge=True)
            await Network.create(self._svc, spec)

    def endpoints(self, network_id: str) -> list[EndpointRecord]:
        """The network's endpoints: this host's, and for a global network every host's
        (``network inspect`` lists the containers of every host)."""
        network = self._state.networks.get(network_id)
        if network is None or network.scope != "global":
            return self._state.endpoints_of_network(network_id)
        return self.get(network_id).all_endpoints()

    def peers(self, network: NetworkRecord) -> list[Node] | None:
        """The hosts of a global network: the live nodes with an endpoint on it (as
        Docker's ``Peers`` lists the nodes taking part in an overlay); None for a local
        network."""
        if network.scope != "global" or self._svc.cluster is None:
            return None
        driver = self._svc.drivers.get(network.driver)
        if not isinstance(driver, OverlayDriver):
            return []
        present = {peer.node for peer in driver.peers() if peer.network_id == network.id}
        return [node for node in self._svc.cluster.nodes() if node.name in present]

    async def remove(self, ref: str) -> None:
        """``network rm``, under the network's exclusive lock."""
        network = self.get(ref)
        async with network.hold(exclusive=True):
            current = self._state.networks.get(network.id)
            if current is None:
                raise NotFound(f"network {ref} not found")
            await Network(self._svc, current).delete()
        await self._forget_name(current)

    async def prune(self, labels: dict[str, str | None] | None = None) -> list[str]:
        """``network prune``: every unused user network (matching ``labels``), each under
        its exclusive lock; returns the names removed."""
        removed: list[str] = []
        for candidate in self.all():
            if candidate.predefined or self._state.endpoints_of_network(candidate.id):
                continue  # not a candidate: no need to wait for its lock
            if candidate.scope == "global":
                continue  # the cluster's: another host may be about to use it
            if candidate.name == GWBRIDGE_NAME and self._svc.cluster is not None:
                continue  # made at start, for the overlay containers of any later start
            async with Network(self._svc, candidate).hold(exclusive=True):
                network = self._state.networks.get(candidate.id)
                if network is None or network.predefined or self._state.endpoints_of_network(network.id):
                    continue
                if labels and not all(
                    k in network.labels and (v is None or network.labels[k] == v) for k, v in labels.items()
                ):
                    continue
                try:
                    await Network(self._svc, network).delete()
                except CnmError as exc:
                    log.warning("prune of %s: %s", network.name, exc)
                    continue
                await self._forget_name(network)
                removed.append(network.name)
        return removed
