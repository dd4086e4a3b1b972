"""``network connect`` and ``network disconnect``.

Of a running container they change its sandbox at once (an endpoint joins or leaves;
the gateway fails over; names are refreshed); of a stopped one they change the requests
its next start acts on (``config.networks``, Docker's ``NetworkSettings.Networks``) and
never ``network_mode``.  Locks: the network named (shared) and the container, through
``guard.hold_container``, so a ``network rm`` never lands between the checks and the record.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import replace

from cnm.engine.endpoint import Endpoint, claim_lost, claims
from cnm.engine.guard import current, hold_container, network_ids
from cnm.engine.lookup import find_container, find_network
from cnm.engine.network import Network
from cnm.engine.sandbox import Sandbox
from cnm.engine.services import Services
from cnm.errors import Forbidden, InvalidArgument, NotFound, SystemFailure, TeardownErrors
from cnm.model.container import Container
from cnm.model.endpoint import EndpointRequest
from cnm.model.network import NetworkRecord
from cnm.store.api import StaleRevision

ERR_SHARED = "container sharing network namespace with another container or host cannot be connected to any other network"
ERR_HOST = "cannot connect container to host network - container must be created in host network mode"
ERR_NONE = (
    "container cannot be connected to multiple networks with one of the networks in private (none) mode"
)
ERR_LEAVE_HOST = "cannot disconnect container from host network - container was created in host network mode"

# A connect whose address another daemon claimed first (after this one's cache chose it)
# starts again with another address this many times at most.
CONNECT_ATTEMPTS = 8


class Connections:
    def __init__(self, svc: Services) -> None:
        self._svc = svc
        self._state = svc.state

    async def connect(self, network_ref: str, ref: str, request: EndpointRequest) -> None:
        svc = self._svc
        container = find_container(self._state, ref)
        async with hold_container(svc, container.id, joins=lambda: network_ids(svc, network_ref)):
            container = current(svc, container.id, ref)
            mode = container.config.network_mode
            if mode.is_host or mode.container:
                raise InvalidArgument(ERR_SHARED)
            if not container.running:
                await self._record_request(container, network_ref, request)
                return
            network = find_network(self._state, network_ref)
            if network.name == "host":
                raise InvalidArgument(ERR_HOST)
            if mode.is_none or network.name == "none":
                raise InvalidArgument(ERR_NONE)
            if any(ep.network_id == network.id for ep in self._state.endpoints_of_container(container.id)):
                raise Forbidden(
                    f"endpoint with name {container.name} already exists in network {network.name}"
                )
            Network(svc, network).check_request(request)
            sandbox = Sandbox.of(svc, container)
            if sandbox is None:
                raise SystemFailure(f"container {container.id} has no sandbox")
            networks = {
                k: v for k, v in container.config.networks.items() if k not in (network.name, network.id)
            }
            networks[network.name] = request
            updated = replace(container, config=replace(container.config, networks=networks))
            for attempt in range(1, CONNECT_ATTEMPTS + 1):
                eps: list[Endpoint] = []
                try:
                    await self._connect_once(sandbox, network, request, updated, eps)
                except StaleRevision as exc:
                    if attempt < CONNECT_ATTEMPTS and await claim_lost(svc, eps, exc):
                        continue
                    raise
                break
            svc.events.network("connect", network, container.id)
            await sandbox.refresh_names(updated)

    async def _connect_once(
        self,
        sandbox: Sandbox,
        network: NetworkRecord,
        request: EndpointRequest,
        updated: Container,
        eps: list[Endpoint],
    ) -> None:
        """The endpoints joined and recorded with ``updated`` and their addresses' claims
        in one transaction, or nothing done (``eps``: the endpoints, for the caller)."""
        async with AsyncExitStack() as stack:
            eps += await sandbox.connect(stack, network, request)
            ops, checks = claims(eps)
            revision = await self._state.commit(
                put=[*(ep.record for ep in eps), updated], ops=ops, checks=checks
            )
            for ep in eps:
                ep.settle(revision)
            stack.pop_all()

    async def _record_request(self, container: Container, network_ref: str, request: EndpointRequest) -> None:
        """``network connect`` of a container that is not running: the request joins
        ``config.networks`` (keyed by network name) and is acted on at start."""
        network = find_network(self._state, network_ref)
        if network.name == "host":
            raise InvalidArgument(ERR_HOST)
        networks = dict(container.config.networks)
        if any(self._same_network(key, network) for key in networks):
            raise Forbidden(f"endpoint with name {container.name} already exists in network {network.name}")
        if network.name == "none" or any(k in ("host", "none") for k in networks):
            raise InvalidArgument(ERR_NONE)
        Network(self._svc, network).check_request(request)
        networks[network.name] = request
        await self._state.commit(
            put=[replace(container, config=replace(container.config, networks=networks))]
        )

    def _same_network(self, key: str, network: NetworkRecord) -> bool:
        """Is the ``config.networks`` key ``key`` (a name, or an id kept from an older
        record) the network ``network``?"""
        if key in (network.name, network.id):
            return True
        try:
            return find_network(self._state, key).id == network.id
        except NotFound:
            return False

    async def disconnect(self, network_ref: str, ref: str, force: bool = False) -> None:
        svc = self._svc
        container = find_container(self._state, ref)
        async with hold_container(svc, container.id, joins=lambda: network_ids(svc, network_ref)):
            container = current(svc, container.id, ref)
            if not container.running:
                await self._forget_request(container, network_ref, force)
                return
            network = find_network(self._state, network_ref)
            if container.config.network_mode.is_host and network.name == "host":
                raise InvalidArgument(ERR_LEAVE_HOST)
            ep = next(
                (e for e in self._state.endpoints_of_container(container.id) if e.network_id == network.id),
                None,
            )
            if ep is None:
                raise NotFound(f"container {container.id} is not connected to network {network.name}")
            kept = {k: v for k, v in container.config.networks.items() if not self._same_network(k, network)}
            updated = replace(container, config=replace(container.config, networks=kept))
            # The endpoint's record goes in the transaction that records the container.
            sandbox = Sandbox.of(svc, container)
            if sandbox is not None:
                errors = await sandbox.disconnect(ep, updated)
                errors += await sandbox.leave_gwbridge()
            else:
                errors = await Endpoint.of(svc, ep).remove(None, container=updated)
            if sandbox is not None:
                if ep.default_route:
                    errors.extend(await sandbox.fail_over(updated))
                await sandbox.refresh_names(updated)
            if errors:
                raise TeardownErrors(f"disconnect of {container.name} from {network.name}", errors)

    async def _forget_request(self, container: Container, network_ref: str, force: bool) -> None:
        """``network disconnect`` of a container that is not running: its entry leaves
        ``config.networks``; ``network_mode`` never changes (Docker keeps HostConfig's
        NetworkMode: a start joins the networks left, or none but ``lo``)."""
        try:
            network: NetworkRecord | None = find_network(self._state, network_ref)
        except NotFound:
            if not force:
                raise
            network = None
        if network is not None and network.name == "host" and container.config.network_mode.is_host:
            raise InvalidArgument(ERR_LEAVE_HOST)
        networks = container.config.networks
        kept = {
            k: v
            for k, v in networks.items()
            if not (self._same_network(k, network) if network is not None else k == network_ref)
        }
        if len(kept) == len(networks):
            raise NotFound(f"container {container.id} is not connected to the network {network_ref}")
        await self._state.commit(put=[replace(container, config=replace(container.config, networks=kept))])
