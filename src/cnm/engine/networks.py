"""Networks and endpoints: create/remove networks, attach/detach endpoints.

Owns the rules of the CNM model that are not a driver's business: names and ids,
predefined networks, IPAM requests, which endpoint carries the default route, interface
names in connect order, MAC addresses.  Drivers get fully resolved records.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from ipaddress import IPv4Interface

from cnm.drivers.api import NetworkDriver
from cnm.engine.events import Events
from cnm.engine.lookup import find
from cnm.engine.state import State
from cnm.errors import CnmError, Conflict, Forbidden, InvalidArgument, NotFound, TeardownErrors
from cnm.ipam.api import Ipam
from cnm.kernel.api import Kernel
from cnm.model.container import Container
from cnm.model.endpoint import Endpoint, EndpointRequest, Sandbox
from cnm.model.network import (
    OPT_BRIDGE_NAME,
    OPT_DEFAULT_BRIDGE,
    OPT_HOST_BINDING,
    OPT_ICC,
    OPT_MASQ,
    OPT_MTU,
    RESERVED_NAMES,
    IpamConfig,
    Network,
    NetworkSpec,
    validate_options,
)
from cnm.model.values import mac_from_ip, new_id

log = logging.getLogger("cnm.engine")


def now_rfc3339() -> str:
    """UTC with nanoseconds, Docker's ``Created`` format."""
    t = datetime.now(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond:06d}000Z"


class Networks:
    def __init__(
        self,
        state: State,
        ipam: Ipam,
        kernel: Kernel,
        drivers: Mapping[str, NetworkDriver],
        *,
        bridge_name: str = "cnm0",
        default_bridge_mtu: int = 1500,
        events: Events | None = None,
    ) -> None:
        self._state = state
        self._ipam = ipam
        self._kernel = kernel
        self._drivers = drivers
        self._bridge_name = bridge_name
        self._mtu = default_bridge_mtu
        self._events = events if events is not None else Events()

    # -- lookup ---------------------------------------------------------------------------

    def find(self, ref: str) -> Network:
        if ref == "default":
            ref = "bridge"
        return find(
            self._state.networks.values(),
            ref,
            name_of=lambda n: n.name,
            id_of=lambda n: n.id,
            not_found=f"network {ref} not found",
            kind="network",
        )

    def by_name(self, name: str) -> Network | None:
        for net in self._state.networks.values():
            if net.name == name:
                return net
        return None

    def driver(self, network: Network) -> NetworkDriver:
        return self._drivers[network.driver]

    # -- predefined networks --------------------------------------------------------------

    async def ensure_predefined(self) -> None:
        """``none`` and ``host`` keep their ids across restarts; ``bridge`` is kept while
        its Linux bridge name is still the configured one (re-created otherwise, when no
        endpoint uses it)."""
        for name, driver in (("none", "null"), ("host", "host")):
            if self.by_name(name) is None:
                net = Network(id=new_id(), name=name, driver=driver, created=now_rfc3339())
                self._state.commit(put=[net])
        current = self.by_name("bridge")
        if current is not None and current.bridge_name != self._bridge_name:
            if self._state.endpoints_of_network(current.id):
                log.warning("default bridge stays on %s: containers are attached to it", current.bridge_name)
                return
            await self._delete(current)
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
            )
            await self._create(spec)

    # -- create / remove ------------------------------------------------------------------

    def validate(self, spec: NetworkSpec) -> None:
        """Everything that can be refused before the first syscall."""
        if spec.name in RESERVED_NAMES:
            raise Forbidden(f"operation is not permitted on predefined {spec.name} network ")
        if spec.driver in ("host", "null"):
            raise Forbidden(f'only one instance of "{spec.driver}" network is allowed')
        if spec.driver not in self._drivers:
            raise NotFound(f"could not find plugin {spec.driver} in v1 plugin registry: plugin not found")
        if self.by_name(spec.name) is not None:
            raise Conflict(f"network with name {spec.name} already exists")
        validate_options(spec.options)
        if len([c for c in spec.ipam if c.subnet is not None]) > 1:
            raise InvalidArgument("only one IPv4 subnet per network is supported")
        for cfg in spec.ipam:
            if cfg.subnet is None and (cfg.gateway or cfg.ip_range or cfg.aux_addresses):
                raise InvalidArgument("a gateway, ip-range or aux-address needs a subnet")
        bridge = spec.options.get(OPT_BRIDGE_NAME)
        if bridge:
            for net in self._state.networks.values():
                if net.driver == "bridge" and net.bridge_name == bridge:
                    raise InvalidArgument(f"bridge name {bridge} is already used by network {net.name}")
        self._drivers[spec.driver].validate(spec)

    async def create(self, spec: NetworkSpec) -> Network:
        self.validate(spec)
        return await self._create(spec)

    async def _create(self, spec: NetworkSpec) -> Network:
        driver = self._drivers[spec.driver]
        network_id = new_id()
        config: IpamConfig | None = spec.ipam[0] if spec.ipam else None
        async with AsyncExitStack() as stack:
            subnet = gateway = ip_range = None
            if driver.needs_ipam:
                reserved = (
                    await self._kernel.host_networks() if config is None or config.subnet is None else ()
                )
                pool = await self._ipam.allocate_pool(network_id, config, reserved=reserved)
                stack.push_async_callback(self._ipam.release_pool, network_id)
                subnet, gateway, ip_range = pool.subnet, pool.gateway, pool.ip_range
            network = Network(
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
            await driver.create_network(network)
            stack.push_async_callback(driver.delete_network, network)
            self._state.commit(put=[network])
            stack.pop_all()
        self._events.network("create", network)
        log.info("network %s (%s) created on %s", network.name, network.id[:12], subnet)
        return network

    async def remove(self, network: Network) -> None:
        if network.predefined:
            raise Forbidden(f"{network.name} is a pre-defined network and cannot be removed")
        endpoints = self._state.endpoints_of_network(network.id)
        if endpoints:
            ep = endpoints[0]
            raise Forbidden(
                f"error while removing network: network {network.name} has active endpoints "
                f'(name:"{ep.name}" id:"{ep.id[:12]}")'
            )
        await self._delete(network)

    async def _delete(self, network: Network) -> None:
        """Idempotent teardown: driver objects, pool, record; reports errors at the end."""
        errors: list[BaseException] = []
        try:
            await self._drivers[network.driver].delete_network(network)
        except CnmError as exc:
            errors.append(exc)
        await self._ipam.release_pool(network.id)
        self._state.commit(delete=[network])
        self._events.network("destroy", network)  # Docker's action for network rm
        if errors:
            raise TeardownErrors(f"network {network.name}", errors)

    # -- endpoints ------------------------------------------------------------------------

    def check_request(self, network: Network, request: EndpointRequest) -> None:
        """Docker's endpoint-settings rules that depend on the network."""
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

    async def attach(
        self,
        stack: AsyncExitStack,
        network: Network,
        container: Container,
        sandbox: Sandbox,
        request: EndpointRequest,
        *,
        mac: str = "",
    ) -> Endpoint:
        """Allocate, plan and join one endpoint; its undo goes on ``stack``.  The caller
        records it (alone or with the rest of a start) once everything succeeded."""
        driver = self._drivers[network.driver]
        ep_id = new_id()
        existing = self._state.endpoints_of_container(container.id)
        address = gateway = None
        if driver.needs_ipam and network.subnet is not None:
            ip = await self._ipam.allocate_address(network.id, ep_id, request.ipv4_address)
            stack.push_async_callback(self._ipam.release_address, network.id, ip)
            address = IPv4Interface(f"{ip}/{network.subnet.prefixlen}")
            gateway = None if network.internal else network.gateway
        used = {ep.ifname for ep in existing}
        prefix = network.iface_prefix
        ifname = next(f"{prefix}{n}" for n in range(len(used) + 1) if f"{prefix}{n}" not in used)
        chosen_mac = request.mac_address or mac or (mac_from_ip(address.ip) if address else "")
        endpoint = Endpoint(
            id=ep_id,
            network_id=network.id,
            container_id=container.id,
            sandbox_id=sandbox.id,
            name=container.name,
            ifname=ifname if driver.needs_ipam else "",
            host_ifname=f"veth{ep_id[:7]}" if driver.needs_ipam else "",
            mac=chosen_mac if driver.needs_ipam else "",
            address=address,
            gateway=gateway,
            default_route=gateway is not None and not any(ep.default_route for ep in existing),
            aliases=request.aliases,
            request=request,
            created_seq=max((ep.created_seq for ep in existing), default=-1) + 1,
        )
        await driver.join(network, endpoint, sandbox)
        stack.push_async_callback(self._leave_quietly, network, endpoint, sandbox)
        return endpoint

    async def _leave_quietly(self, network: Network, endpoint: Endpoint, sandbox: Sandbox) -> None:
        try:
            await self._drivers[network.driver].leave(network, endpoint, sandbox)
        except CnmError as exc:
            log.warning("undo of endpoint %s on %s: %s", endpoint.id[:12], network.name, exc)

    async def detach(self, endpoint: Endpoint, sandbox: Sandbox | None) -> list[BaseException]:
        """Leave, release the address and forget the endpoint; idempotent, returns errors
        instead of stopping at the first."""
        errors: list[BaseException] = []
        network = self._state.networks.get(endpoint.network_id)
        if network is not None:
            try:
                await self._drivers[network.driver].leave(network, endpoint, sandbox)
            except CnmError as exc:
                errors.append(exc)
            if endpoint.address is not None:
                await self._ipam.release_address(network.id, endpoint.address.ip)
        self._state.commit(delete=[endpoint])
        if network is not None:
            self._events.network("disconnect", network, endpoint.container_id)
        return errors
