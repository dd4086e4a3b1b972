"""libnetwork's Network: one network the engine manages, and its lifecycle.

A ``Network`` is its stored ``NetworkRecord`` plus what it needs to change it (its
driver, IPAM, the store); it is built on demand from the record and holds no state of
its own.  It owns:

- **create**: a pool from IPAM, the driver's kernel objects, then the record, in that
  order, each undone if a later step fails;
- **delete**: refused while endpoints remain or for a predefined network; the teardown
  (``destroy``) is idempotent and reports every error at the end;
- the endpoint rules that depend on the network (``check_request``).

Its lock is the network's lock in ``engine/locks.py``: taken shared by every change to one
of its endpoints, exclusive by ``delete`` (so no endpoint joins between the check for
endpoints and the removal).  IPAM is called here only for the pool (``allocate_pool`` in
``create``, ``release_pool`` in ``destroy``).
"""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager, AsyncExitStack

from cnm.drivers.api import NetworkDriver
from cnm.engine.services import Services, now_rfc3339
from cnm.errors import CnmError, Forbidden, InvalidArgument, TeardownErrors
from cnm.model.endpoint import EndpointRecord, EndpointRequest
from cnm.model.network import IpamConfig, NetworkRecord, NetworkSpec
from cnm.model.values import new_id

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
    async def create(cls, svc: Services, spec: NetworkSpec) -> Network:
        """Pool, driver objects, record; a failure undoes what was done.  ``spec`` is
        validated by the caller (the catalogue: names are its business)."""
        driver = svc.drivers[spec.driver]
        network_id = new_id()
        config: IpamConfig | None = spec.ipam[0] if spec.ipam else None
        async with AsyncExitStack() as stack:
            subnet = gateway = ip_range = None
            if driver.needs_ipam:
                reserved = await svc.kernel.host_networks() if config is None or config.subnet is None else ()
                pool = await svc.ipam.allocate_pool(network_id, config, reserved=reserved)
                stack.push_async_callback(svc.ipam.release_pool, network_id)
                subnet, gateway, ip_range = pool.subnet, pool.gateway, pool.ip_range
            record = NetworkRecord(
                id=network_id,
                name=spec.name,
                driver=spec.driver,
                created=now_rfc3339(),
                internal=spec.internal,
                attachable=spec.attachable,
                enable_ipv6=spec.enable_ipv6,
                ipam_driver=spec.ipam_driver,
                ipam_options=spec.ipam_options,
                ipam=spec.ipam,
                subnet=subnet,
                gateway=gateway,
                ip_range=ip_range,
                options=dict(spec.options),
                labels=dict(spec.labels),
            )
            await driver.create_network(record)
            stack.push_async_callback(driver.delete_network, record)
            await svc.state.commit(put=[record])
            stack.pop_all()
        svc.events.network("create", record)
        log.info("network %s (%s) created on %s", record.name, record.id[:12], subnet)
        return cls(svc, record)

    async def delete(self) -> None:
        """``network rm``: refused for a predefined network or one with endpoints.  The
        caller holds the network's lock exclusively."""
        if self.record.predefined:
            raise Forbidden(f"{self.name} is a pre-defined network and cannot be removed")
        endpoints = self.endpoints()
        if endpoints:
            ep = endpoints[0]
            raise Forbidden(
                f"error while removing network: network {self.name} has active endpoints "
                f'(name:"{ep.name}" id:"{ep.id[:12]}")'
            )
        await self.destroy()

    async def destroy(self) -> None:
        """Idempotent teardown: driver objects, pool, record; reports errors at the end."""
        errors: list[BaseException] = []
        try:
            await self.driver.delete_network(self.record)
        except CnmError as exc:
            errors.append(exc)
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
            if not any(c.subnet for c in network.ipam):
                raise InvalidArgument(
                    "invalid endpoint settings:\nuser specified IP address is supported only when "
                    "connecting to networks with user configured subnets"
                )
            if network.subnet is None or request.ipv4_address not in network.subnet:
                raise InvalidArgument(
                    f"no configured subnet or ip-range contain the IP address {request.ipv4_address}"
                )
        if request.aliases and not user_defined:
            raise InvalidArgument(
                "invalid endpoint settings:\nnetwork-scoped alias is supported only for containers in user defined networks"
            )
