"""libnetwork's Sandbox: one container's network namespace and everything in it.

A container *has* a sandbox while it runs: its own (``bridge``, a user network, ``none``,
and ``host``, whose sandbox has no namespace of its own), or, in ``container:X`` mode, X's.
``Sandbox`` is its ``SandboxRecord`` plus the container and the means to change it.  It
owns:

- **create** (at start): the namespace, an endpoint on each network the start joins
  (primary first), /etc/hostname, /etc/hosts, /etc/resolv.conf and the DNS records and
  listener; every step undone on the caller's stack if a later one fails;
- **connect** / **disconnect** of one network while the container runs;
- the **gateway**: the first endpoint with a gateway carries the default route and the
  published ports; when it leaves, the next one in connect order takes both over;
- **destroy** (at exit or removal): endpoints, names, namespace, record; idempotent,
  errors returned;
- **restore** after a daemon restart: held ports and names again.

Lock: a sandbox changes under its container's lock (``engine/locks.py``), with the shared
locks of the networks its endpoints are on.  The caller records the result: a start
commits the sandbox, its endpoints and the running container in one transaction.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import AsyncExitStack
from dataclasses import dataclass

from cnm.engine.endpoint import Endpoint
from cnm.engine.lookup import find_container, find_network
from cnm.engine.network import Network
from cnm.engine.services import Services
from cnm.errors import CnmError, Conflict, InvalidArgument, NotFound
from cnm.kernel import netns as ns
from cnm.model.container import Container, Image
from cnm.model.endpoint import EndpointRecord, EndpointRequest, SandboxRecord
from cnm.model.network import GWBRIDGE_NAME, NetworkRecord
from cnm.model.values import new_id
from cnm.runtime.api import ContainerFiles

log = logging.getLogger("cnm.engine")


@dataclass(frozen=True, slots=True)
class Join:
    """One network a start joins: the network, what was asked for, whether it is primary."""

    network: NetworkRecord
    request: EndpointRequest
    primary: bool


NETNS_NAME_PREFIX = "cnm-"


def netns_name_path(svc: Services, container_name: str) -> str:
    """Where cnmd --netns-names mounts a container's namespace a second time, so that
    ``ip netns exec cnm-<container name>`` enters it."""
    return os.path.join(svc.netns_names, NETNS_NAME_PREFIX + container_name)


def name_netns(svc: Services, key: str, container_name: str) -> None:
    """With --netns-names: the namespace at ``key`` also as cnm-<container name>.  A
    convenience, so a failure (the name holds another daemon's namespace) is a warning."""
    if not svc.netns_names:
        return
    try:
        ns.name_netns(key, netns_name_path(svc, container_name))
    except CnmError as exc:
        log.warning("ip netns name of %s: %s", container_name, exc)


def unname_netns(svc: Services, key: str, container_name: str) -> None:
    """Remove the cnm-<container name> mount, if it is of the namespace at ``key`` (a
    mount of anything else is not ours)."""
    if not svc.netns_names:
        return
    named = netns_name_path(svc, container_name)
    if ns.same_netns(named, key):
        ns.delete_netns(named)


def start_plan(svc: Services, container: Container) -> list[Join]:
    """The networks a start joins, primary first.  They are ``config.networks`` (Docker's
    ``NetworkSettings.Networks``): a primary network disconnected before start is not
    joined, and the container keeps its mode.  ``container:`` mode joins none."""
    config = container.config
    if config.network_mode.container:
        return []
    try:
        primary_id = find_network(svc.state, config.network_mode.network).id
    except NotFound:
        primary_id = ""
    plan: list[Join] = []
    for key, request in config.networks.items():
        try:
            network = find_network(svc.state, key)
        except NotFound:
            raise NotFound(f"failed to set up container networking: network {key} not found") from None
        if any(network.id == j.network.id for j in plan):
            continue
        if network.name in ("host", "none") and len(config.networks) > 1:
            raise InvalidArgument(
                "container cannot be connected to multiple networks with one of the networks in "
                f"{'host' if network.name == 'host' else 'private (none)'} mode"
            )
        Network(svc, network).check_request(request)
        plan.append(Join(network, request, network.id == primary_id))
    plan.sort(key=lambda j: not j.primary)
    return plan


class Sandbox:
    def __init__(self, svc: Services, container: Container, record: SandboxRecord) -> None:
        self._svc = svc
        self.container = container  # the owner (in ``container:`` mode: the other one)
        self.record = record

    @classmethod
    def of(cls, svc: Services, container: Container) -> Sandbox | None:
        """The container's own sandbox, if it has one now."""
        record = svc.state.sandbox_of(container.id)
        return cls(svc, container, record) if record is not None else None

    @classmethod
    def shared(cls, svc: Services, ref: str) -> Sandbox:
        """``container:<ref>`` mode: the running container's sandbox a start joins."""
        target = find_container(svc.state, ref)
        sandbox = cls.of(svc, target)
        if not target.running or sandbox is None:
            raise Conflict(f"cannot join network of a non running container: {target.id}")
        return sandbox

    @property
    def netns(self) -> str | None:
        """The namespace's path; None: the host's own (``host`` mode)."""
        return self.record.key or None

    @property
    def files(self) -> ContainerFiles:
        return self._svc.naming.paths(self.record.container_id)

    def endpoints(self) -> list[EndpointRecord]:
        return self._svc.state.endpoints_of_container(self.record.container_id)

    # -- create ---------------------------------------------------------------------------

    @classmethod
    async def create(
        cls, svc: Services, stack: AsyncExitStack, container: Container, image: Image
    ) -> Sandbox:
        """The container's namespace with an endpoint on each network of its start plan,
        its files and names.  Endpoints join the record view as they are made (the next
        one sees its siblings), and leave it again if a later step fails; the caller
        commits ``sandbox.record`` and ``sandbox.endpoints()``."""
        config = container.config
        plan = start_plan(svc, container)
        host_mode = config.network_mode.is_host
        hostname = config.hostname or (socket.gethostname() if host_mode else container.short_id)
        key = "" if host_mode else os.path.join(svc.netns_dir, new_id()[:12])
        sandbox = cls(
            svc, container, SandboxRecord(id=new_id(), container_id=container.id, key=key, hostname=hostname)
        )
        if key:
            await svc.kernel.create_netns(key)
            stack.push_async_callback(svc.kernel.delete_netns, key)
            name_netns(svc, key, container.name)
            stack.callback(unname_netns, svc, key, container.name)
        for join in plan:
            ep = await sandbox._join(
                stack,
                join.network,
                join.request,
                image,
                mac=config.mac_address if join.primary else "",
                publish=not host_mode,
            )
            svc.state.endpoints[ep.id] = ep.record
            stack.callback(svc.state.endpoints.pop, ep.id, None)
        if not host_mode:
            gw = await sandbox._join_gwbridge(stack, image)
            if gw is not None:
                svc.state.endpoints[gw.id] = gw.record
                stack.callback(svc.state.endpoints.pop, gw.id, None)
        svc.naming.write_files(container, sandbox.record, sandbox.endpoints(), host_mode=host_mode)
        await svc.naming.publish(container, sandbox.record, sandbox.endpoints())
        stack.push_async_callback(svc.naming.withdraw, sandbox.record)
        return sandbox

    async def _join(
        self,
        stack: AsyncExitStack,
        network: NetworkRecord,
        request: EndpointRequest,
        image: Image | None,
        *,
        mac: str = "",
        publish: bool = True,
        claim_later: bool = False,
    ) -> Endpoint:
        """One endpoint: created, joined, and publishing if it became the gateway
        (``image`` None: looked up only then; ``claim_later`` as ``Endpoint.create``)."""
        siblings = self.endpoints()
        ep = await Endpoint.create(
            self._svc,
            stack,
            network,
            self.container,
            self.record,
            request,
            siblings=siblings,
            gateway_free=not any(s.default_route for s in siblings),
            mac=mac,
            claim_later=claim_later,
        )
        await ep.join(stack, self.record)
        if publish and ep.record.default_route and not network.internal:
            await ep.publish(stack, self.container, image or self._svc.image_of(self.container))
        return ep

    # -- connect / disconnect -------------------------------------------------------------

    async def connect(
        self, stack: AsyncExitStack, network: NetworkRecord, request: EndpointRequest
    ) -> list[Endpoint]:
        """``network connect`` of the running container; the caller records the endpoints
        (the one asked for, and the ``cnm_gwbridge`` one if it needs one now) with their
        addresses' claims (``endpoint.claims``)."""
        ep = await self._join(stack, network, request, None, claim_later=True)
        self._svc.state.endpoints[ep.id] = ep.record
        stack.callback(self._svc.state.endpoints.pop, ep.id, None)
        gw = await self._join_gwbridge(stack, None, claim_later=True)
        return [ep] if gw is None else [ep, gw]

    # -- the gateway bridge of overlay containers -----------------------------------------

    def _gwbridge(self) -> NetworkRecord | None:
        """The ``cnm_gwbridge`` network when this sandbox needs an endpoint on it: it is on
        a global network, nothing gives it a default route, it has none on it yet."""
        state = self._svc.state
        endpoints = self.endpoints()
        networks = [state.networks.get(ep.network_id) for ep in endpoints]
        if not any(n is not None and n.scope == "global" for n in networks):
            return None
        if any(ep.default_route for ep in endpoints):
            return None
        gw = next(
            (n for n in state.networks.values() if n.name == GWBRIDGE_NAME and n.scope == "local"), None
        )
        if gw is None or any(ep.network_id == gw.id for ep in endpoints):
            return None
        return gw

    async def _join_gwbridge(
        self, stack: AsyncExitStack, image: Image | None, *, claim_later: bool = False
    ) -> Endpoint | None:
        """An endpoint on ``cnm_gwbridge`` carrying the default route and the published
        ports, if the sandbox needs one (``_gwbridge``); None otherwise."""
        gw = self._gwbridge()
        if gw is None:
            return None
        return await self._join(stack, gw, EndpointRequest(), image, claim_later=claim_later)

    async def leave_gwbridge(self) -> list[BaseException]:
        """After a disconnect: the ``cnm_gwbridge`` endpoint goes with the sandbox's last
        global network (the caller then fails the gateway over if it carried the route)."""
        state = self._svc.state
        endpoints = self.endpoints()
        if any(
            (n := state.networks.get(ep.network_id)) is not None and n.scope == "global" for ep in endpoints
        ):
            return []
        for ep in endpoints:
            network = state.networks.get(ep.network_id)
            if network is not None and network.name == GWBRIDGE_NAME:
                return await Endpoint.of(self._svc, ep).remove(self.record)
        return []

    async def disconnect(self, endpoint: EndpointRecord, container: Container) -> list[BaseException]:
        """``network disconnect``: the endpoint leaves, and its record goes in the
        transaction that records ``container`` (the container with its new networks).
        If it carried the default route, the caller then calls ``fail_over``."""
        return await Endpoint.of(self._svc, endpoint).remove(self.record, container=container)

    async def fail_over(self, container: Container) -> list[BaseException]:
        """The endpoint carrying the default route left: the next one (in connect order)
        with a gateway takes over the route (both families' on a network with IPv6) and the
        published ports, as Docker's gateway endpoint does.  Returns errors instead of
        failing the disconnect."""
        self.container = container
        if not self.record.key:
            return []
        for record in self.endpoints():
            network = self._svc.state.networks.get(record.network_id)
            if network is None or network.internal or record.gateway is None:
                continue
            ep = Endpoint(self._svc, network, record)
            try:
                kernel = self._svc.kernel
                await kernel.set_default_route(self.record.key, record.gateway, record.ifname)
                if network.enable_ipv6 and record.gateway6 is not None:  # and its v6 one too
                    await kernel.set_default_route(self.record.key, record.gateway6, record.ifname)
                ep.take_default_route()
                async with AsyncExitStack() as stack:
                    await ep.publish(stack, container, self._svc.image_of(container))
                    await self._svc.state.commit(put=[ep.record])
                    stack.pop_all()
            except CnmError as exc:
                return [exc]
            return []
        return []

    async def refresh_names(self, container: Container) -> None:
        """After a change of networks, links or names: files rewritten in place, DNS
        records and listener.  ``host`` mode has nothing to refresh."""
        self.container = container
        if not self.record.key:
            return
        endpoints = self.endpoints()
        self._svc.naming.write_files(container, self.record, endpoints, host_mode=False)
        await self._svc.naming.publish(container, self.record, endpoints)

    # -- destroy / restore ----------------------------------------------------------------

    async def destroy(self) -> list[BaseException]:
        """Idempotent: endpoints, names, the namespace, the record; errors returned."""
        errors: list[BaseException] = []
        for record in self.endpoints():
            errors.extend(await Endpoint.of(self._svc, record).remove(self.record))
        errors.extend(await self._svc.naming.withdraw(self.record))
        if self.record.key:
            try:
                unname_netns(self._svc, self.record.key, self.container.name)
            except CnmError as exc:
                errors.append(exc)
            try:
                await self._svc.kernel.delete_netns(self.record.key)
            except CnmError as exc:
                errors.append(exc)
        await self._svc.state.commit(delete=[self.record])
        return errors

    async def restore(self, *, listen: bool = True) -> None:
        """After a daemon restart, the container still running: its ports held again and
        its names served again (``listen=False``: its DNS listener is left to the caller,
        ``Naming.listen``)."""
        for record in self.endpoints():
            await Endpoint.of(self._svc, record).restore()
        try:
            await self._svc.naming.publish(self.container, self.record, self.endpoints(), listen=listen)
        except CnmError as exc:
            log.warning("restoring names of %s: %s", self.container.name, exc)


async def release_network(svc: Services, container: Container) -> list[BaseException]:
    """The container stopped: its sandbox is destroyed, and any endpoint left without one
    (a crash between records) removed.  Idempotent; errors returned."""
    sandbox = Sandbox.of(svc, container)
    if sandbox is not None:
        return await sandbox.destroy()
    errors: list[BaseException] = []
    for record in svc.state.endpoints_of_container(container.id):
        errors.extend(await Endpoint.of(svc, record).remove(None))
    return errors
