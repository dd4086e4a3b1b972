"""libnetwork's Network: one network the engine manages, and its lifecycle.

A ``Network`` is its stored ``NetworkRecord`` plus what it needs to change it (its
driver, IPAM, the store); it is built on demand from the record and holds no state of
its own.  It owns:

- **create**: a pool from IPAM, the driver's kernel objects, then the record, in that
  order, each undone if a later step fails;
- **delete**: refused while endpoints remain (on any host, for a global network) or for
  a predefined network; the teardown (``destroy``) is idempotent and reports every error
  at the end;
- the endpoint rules that depend on the network (``check_request``).

Its lock is the network's lock in ``engine/locks.py``: taken shared by every change to one
of its endpoints, exclusive by ``delete`` (so no endpoint joins between the check for
endpoints and the removal).  IPAM is called here only for the pool (``allocate_pool`` in
``create``, ``release_pool`` in ``destroy``).

A global network (driver ``overlay``, with ``--cluster-store``) is the same object with
its record, pool and addresses in the cluster store, where every host sees it; its name
and VNI are made unique across hosts in the transaction that writes it
(``engine/cluster.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import replace
from ipaddress import IPv6Address

from cnm.drivers.api import NetworkDriver
from cnm.engine.cluster import MAX_ATTEMPTS
from cnm.engine.services import Services, now_rfc3339
from cnm.errors import CnmError, Conflict, Forbidden, InvalidArgument, TeardownErrors, Unavailable
from cnm.model.endpoint import EndpointRecord, EndpointRequest
from cnm.model.network import (
    GLOBAL_DRIVERS,
    OPT_VXLANID_LIST,
    IpamConfig,
    NetworkRecord,
    NetworkSpec,
    ipam_v4,
    ipam_v6,
)
from cnm.model.values import new_id
from cnm.store.api import Check, StaleRevision

log = logging.getLogger("cnm.engine")


class Network:
    def __init__(self, svc: Services, record: NetworkRecord) -> None:
        self._svc = svc
        self.record = record

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def driver(self) -> NetworkDriver:
        return self._svc.drivers[self.record.driver]

    def hold(self, *, exclusive: bool) -> AbstractAsyncContextManager[None]:
        """The network's lock: shared for changes to its endpoints, exclusive for itself."""
        return self._svc.locks.hold(networks=[self.id], networks_exclusive=exclusive)

    def endpoints(self) -> list[EndpointRecord]:
        return self._svc.state.endpoints_of_network(self.id)

    # -- lifecycle ------------------------------------------------------------------------

    @classmethod
    async def create(cls, svc: Services, spec: NetworkSpec, network_id: str = "") -> Network:
        """Pool, driver objects, record; a failure undoes what was done.  ``spec`` is
        validated by the caller (the catalogue: names are its business).  A global
        network (``GLOBAL_DRIVERS``) takes its pool from the cluster's IPAM and is
        recorded in the cluster store with its name and VNI (``_record_global``).
        ``network_id``: the id to give it (new when empty)."""
        driver = svc.drivers[spec.driver]
        network_id = network_id or new_id()
        config: IpamConfig | None = ipam_v4(spec.ipam)
        scope = "global" if spec.driver in GLOBAL_DRIVERS else "local"
        async with AsyncExitStack() as stack:
            subnet = gateway = ip_range = None
            subnet6 = gateway6 = ip_range6 = None
            if driver.needs_ipam:
                ipam = svc.cluster.ipam if scope == "global" and svc.cluster is not None else svc.ipam
                # a global network's subnet is the cluster's: one host's routes say nothing of it
                host_routes = scope == "local" and (config is None or config.subnet is None)
                reserved = await svc.kernel.host_networks() if host_routes else ()
                pool = await ipam.allocate_pool(network_id, config, reserved=reserved)
                stack.push_async_callback(ipam.release_pool, network_id)
                subnet, gateway, ip_range = pool.subnet, pool.gateway, pool.ip_range
                if spec.enable_ipv6 and scope == "local":
                    # the v6 pool goes with the v4 one: the release above frees both
                    config6 = ipam_v6(spec.ipam)
                    reserved6 = []
                    if config6 is None or config6.subnet is None:
                        reserved6 = await svc.kernel.host_networks6()
                    pool6 = await svc.ipam.allocate_pool6(network_id, config6, reserved=reserved6)
                    subnet6, gateway6, ip_range6 = pool6.subnet, pool6.gateway, pool6.ip_range
            record = NetworkRecord(
                id=network_id,
                name=spec.name,
                driver=spec.driver,
                created=now_rfc3339(),
                scope=scope,
                internal=spec.internal,
                attachable=spec.attachable,
                enable_ipv6=spec.enable_ipv6,
                ipam_driver=spec.ipam_driver,
                ipam_options=spec.ipam_options,
                ipam=spec.ipam,
                subnet=subnet,
                gateway=gateway,
                ip_range=ip_range,
                subnet6=subnet6,
                gateway6=gateway6,
                ip_range6=ip_range6,
                options=dict(spec.options),
                labels=dict(spec.labels),
            )
            await driver.create_network(record)
            stack.push_async_callback(driver.delete_network, record)
            if scope == "global":
                record = await cls._record_global(svc, record)
            else:
                await svc.state.commit(put=[record])
            stack.pop_all()
        svc.events.network("create", record)
        log.info(
            "network %s (%s) created on %s%s",
            record.name,
            record.id[:12],
            subnet,
            f" and {subnet6}" if subnet6 else "",
        )
        return cls(svc, record)

    @staticmethod
    async def _record_global(svc: Services, record: NetworkRecord) -> NetworkRecord:
        """Write a global network's record, its name and a free VNI (in its
        ``vxlanid_list`` option) in one transaction of the cluster store, checked against
        every other host's names (``engine/cluster.py``).  Conflict if the name is taken;
        a VNI another host took first means the next one."""
        cluster = svc.cluster
        if cluster is None:
            raise Unavailable(f"network {record.name} is global but cnmd has no --cluster-store")
        lost = 0
        for _attempt in range(MAX_ATTEMPTS):
            vni = cluster.free_vni(lost)
            candidate = replace(record, options={**record.options, OPT_VXLANID_LIST: str(vni)})
            ops, checks = cluster.create_checks(record.name, record.id, vni)
            try:
                revision = await svc.state.commit(put=[candidate], ops=ops, checks=checks)
            except StaleRevision as exc:
                lost += 1
                await cluster.lost(exc, record.name)
                continue
            cluster.applied(ops, revision)
            return candidate
        raise Unavailable(
            f"network {record.name}: gave up taking a VXLAN id after {MAX_ATTEMPTS} attempts "
            "(other hosts took each one first)"
        )

    def all_endpoints(self) -> list[EndpointRecord]:
        """This host's endpoints on the network, then (global networks) every host's."""
        mine = self.endpoints()
        if self.record.scope != "global":
            return mine
        known = {ep.id for ep in mine}
        return mine + [
            ep for ep in self._svc.state.global_endpoints.by("network_id", self.id) if ep.id not in known
        ]

    async def delete(self) -> None:
        """``network rm``: refused for a predefined network or one with endpoints (on any
        host, for a global network).  The caller holds the network's lock exclusively."""
        if self.record.predefined:
            raise Forbidden(f"{self.name} is a pre-defined network and cannot be removed")
        found = [(ep.name, ep.id) for ep in self.all_endpoints()]
        checks: list[Check] = []
        cluster = self._svc.cluster
        if not found and self.record.scope == "global" and cluster is not None:
            check, found = await cluster.removal_check(self.record)
            checks.append(check)
        if found:
            raise self._in_use(*found[0])
        try:
            await self.destroy(checks)
        except StaleRevision as exc:
            if cluster is None or not checks or exc.key != checks[0].key:
                raise
            # an endpoint joined on another host since the check: it stays, and the network too
            _, found = await cluster.removal_check(self.record)
            if not found:  # (and left again)
                raise Conflict(
                    f"network {self.name} was joined on another host during its removal: try again"
                ) from None
            raise self._in_use(*found[0]) from None

    def _in_use(self, name: str, endpoint_id: str) -> Forbidden:
        return Forbidden(
            f"error while removing network: network {self.name} has active endpoints "
            f'(name:"{name}" id:"{endpoint_id[:12]}")'
        )

    def _check_ipv6_request(self, address: IPv6Address) -> None:
        """``--ip6``: Docker's rules for a static address, on the network's IPv6 subnet."""
        network = self.record
        if network.predefined:
            raise InvalidArgument(
                "invalid endpoint settings:\nuser specified IP address is supported on user defined networks only"
            )
        if not network.enable_ipv6 or network.subnet6 is None:
            raise InvalidArgument(
                f"invalid endpoint settings:\nuser specified IPv6 address {address} is supported only on "
                f"networks with IPv6 enabled: network {network.name} has no IPv6"
            )
        if not any(c.subnet for c in network.ipam if c.is_v6):
            raise InvalidArgument(
                "invalid endpoint settings:\nuser specified IP address is supported only when "
                "connecting to networks with user configured subnets"
            )
        if address not in network.subnet6:
            raise InvalidArgument(f"no configured subnet or ip-range contain the IP address {address}")

    async def destroy(self, checks: Sequence[Check] = ()) -> None:
        """Idempotent teardown: driver objects, pool, record; reports errors at the end.
        A global network's record goes first, with its name and VNI, then its pool (no
        host can join it once the record is gone); ``checks`` join that transaction."""
        errors: list[BaseException] = []
        try:
            await self.driver.delete_network(self.record)
        except CnmError as exc:
            errors.append(exc)
        cluster = self._svc.cluster
        if self.record.scope == "global" and cluster is not None:
            ops = cluster.delete_ops(self.record)
            revision = await self._svc.state.commit(delete=[self.record], ops=ops, checks=checks)
            cluster.applied(ops, revision)
            await cluster.ipam.release_pool(self.id)
        else:
            await self._svc.ipam.release_pool(self.id)
            await self._svc.state.commit(delete=[self.record])
        self._svc.events.network("destroy", self.record)  # Docker's action for network rm
        if errors:
            raise TeardownErrors(f"network {self.name}", errors)

    # -- endpoint rules -------------------------------------------------------------------

    def check_request(self, request: EndpointRequest) -> None:
        """Docker's endpoint-settings rules that depend on the network."""
        network = self.record
        user_defined = not network.predefined
        if request.ipv4_address is not None:
            if not user_defined:
                raise InvalidArgument(
                    "invalid endpoint settings:\nuser specified IP address is supported on user defined networks only"
                )
            if not any(c.subnet for c in network.ipam if not c.is_v6):
                raise InvalidArgument(
                    "invalid endpoint settings:\nuser specified IP address is supported only when "
                    "connecting to networks with user configured subnets"
                )
            if network.subnet is None or request.ipv4_address not in network.subnet:
                raise InvalidArgument(
                    f"no configured subnet or ip-range contain the IP address {request.ipv4_address}"
                )
        if request.ipv6_address is not None:
            self._check_ipv6_request(request.ipv6_address)
        if request.aliases and not user_defined:
            raise InvalidArgument(
                "invalid endpoint settings:\nnetwork-scoped alias is supported only for containers in user defined networks"
            )
