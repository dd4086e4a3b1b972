"""libnetwork's Endpoint: one sandbox's attachment to one network, and its lifecycle.

An ``Endpoint`` is its ``EndpointRecord`` plus the network it is on and the means to
change it.  Its lifecycle, each step undoable on the caller's ``AsyncExitStack``:

- **create**: an address from IPAM and every field the driver needs, resolved before
  the driver is called (interface name in connect order, MAC, gateway);
- **join**: the driver puts it into the sandbox (veth, address, routes);
- **publish**: the published ports, when it is the sandbox's gateway endpoint;
- **leave**: ports withdrawn, then the driver takes it out of the sandbox;
- **delete**: the address goes back to IPAM, the record is removed.

``leave`` and ``delete`` are idempotent and return errors instead of stopping at the first.
IPAM is called here only for the address: at ``create`` it is claimed at once, or with
``claim_later`` (``network connect``) only held, its claim then going in the transaction
that records the endpoint (``claims``, ``settle``); at ``delete`` it is freed in the
transaction that deletes the record.  Both only with the local IPAM, whose keys are in the
store the records are; a global network's address is claimed and freed on its own.  Which endpoint carries the default route is the
sandbox's choice (``engine/sandbox.py``), passed in at ``create``.

Lock: an endpoint changes under its network's lock (shared) and its sandbox's, which is
its container's lock (``engine/locks.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface

from cnm.drivers.overlay import OverlayDriver
from cnm.engine.services import Services
from cnm.errors import CnmError
from cnm.ipam.api import AddressChange
from cnm.model.container import Container, Image
from cnm.model.endpoint import EndpointRecord, EndpointRequest, SandboxRecord
from cnm.model.network import NetworkRecord
from cnm.model.values import mac_from_ip, new_id
from cnm.portmap.requests import port_requests
from cnm.store.api import Check, Op, StaleRevision

log = logging.getLogger("cnm.engine")


class Endpoint:
    def __init__(self, svc: Services, network: NetworkRecord | None, record: EndpointRecord) -> None:
        """``network`` is None when its record is gone (a crash between records): the
        endpoint can then only be deleted."""
        self._svc = svc
        self.network = network
        self.record = record
        # its addresses (IPv4, then IPv6 on a network with IPv6), held until recorded
        self.claims: list[AddressChange] = []

    @classmethod
    def of(cls, svc: Services, record: EndpointRecord) -> Endpoint:
        return cls(svc, svc.state.networks.get(record.network_id), record)

    @property
    def id(self) -> str:
        return self.record.id

    # -- lifecycle ------------------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        svc: Services,
        stack: AsyncExitStack,
        network: NetworkRecord,
        container: Container,
        sandbox: SandboxRecord,
        request: EndpointRequest,
        *,
        siblings: Sequence[EndpointRecord],
        gateway_free: bool,
        mac: str = "",
        claim_later: bool = False,
    ) -> Endpoint:
        """Allocate the address and resolve the record; nothing reaches the kernel yet.
        ``siblings`` are the sandbox's endpoints so far (interface names and connect order
        follow them); ``gateway_free``: the sandbox wants this one to carry its default
        route if the network has a gateway; ``claim_later``: the caller commits the
        address's claim with the record (``claims``)."""
        driver = svc.drivers[network.driver]
        ep_id = new_id()
        address = gateway = address6 = gateway6 = None
        held: list[AddressChange] = []
        if driver.needs_ipam and network.subnet is not None:
            ip = await _address(svc, stack, network, ep_id, request.ipv4_address, held, claim_later)
            address = IPv4Interface(f"{ip}/{network.subnet.prefixlen}")
            # an overlay's gateway address is nobody's: its containers route out elsewhere
            routed_out = not (network.internal or network.scope == "global")
            gateway = network.gateway if routed_out else None
            if network.enable_ipv6 and network.subnet6 is not None:
                ip6 = await _address(
                    svc, stack, network, ep_id, request.ipv6_address, held, claim_later, v6=True
                )
                address6 = IPv6Interface(f"{ip6}/{network.subnet6.prefixlen}")
                gateway6 = network.gateway6 if routed_out else None
        used = {ep.ifname for ep in siblings}
        prefix = network.iface_prefix
        ifname = next(f"{prefix}{n}" for n in range(len(used) + 1) if f"{prefix}{n}" not in used)
        chosen_mac = request.mac_address or mac or (mac_from_ip(address.ip) if address else "")
        record = EndpointRecord(
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
            address6=address6,
            gateway6=gateway6,
            default_route=gateway is not None and gateway_free,
            aliases=request.aliases,
            request=request,
            created_seq=max((ep.created_seq for ep in siblings), default=-1) + 1,
        )
        endpoint = cls(svc, network, record)
        endpoint.claims = held
        return endpoint

    async def join(self, stack: AsyncExitStack, sandbox: SandboxRecord) -> None:
        """The driver puts the endpoint into ``sandbox``; leaving it goes on ``stack``."""
        assert self.network is not None
        await self._svc.drivers[self.network.driver].join(self.network, self.record, sandbox)
        stack.push_async_callback(self._leave_quietly, self.network, sandbox)

    async def _leave_quietly(self, network: NetworkRecord, sandbox: SandboxRecord) -> None:
        try:
            await self._svc.drivers[network.driver].leave(network, self.record, sandbox)
        except CnmError as exc:
            log.warning("undo of endpoint %s on %s: %s", self.id[:12], network.name, exc)

    async def publish(self, stack: AsyncExitStack, container: Container, image: Image) -> None:
        """Published ports go through the endpoint carrying the default route (Docker's
        gateway endpoint); their undo goes on ``stack``."""
        publisher = self._svc.publisher
        if publisher is None or self.network is None:
            return
        requests = port_requests(container.config, image)
        self.record = await publisher.publish(stack, self.network, self.record, requests)

    async def leave(self, sandbox: SandboxRecord | None) -> list[BaseException]:
        """Withdraw the published ports, then take the endpoint out of the sandbox."""
        publisher = self._svc.publisher
        errors = await publisher.unpublish(self.record) if publisher is not None else []
        try:
            if self.network is not None:
                await self._svc.drivers[self.network.driver].leave(self.network, self.record, sandbox)
            elif isinstance(overlay := self._svc.drivers.get("overlay"), OverlayDriver):
                # its network removed on another host while this one was cut off
                await overlay.leave_removed(self.record, sandbox)
        except CnmError as exc:
            errors.append(exc)
        return errors

    async def delete(self, *, container: Container | None = None) -> None:
        """The address goes back, the record goes; a ``disconnect`` event is reported.
        ``container``: its record as the caller changed it (``network disconnect``
        drops the network from its requests), written in the same transaction.  The
        local IPAM's release is in that transaction too."""
        svc = self._svc
        releases: list[AddressChange] = []
        if self.network is not None:
            ipam = svc.ipam_for(self.network)
            for iface in (self.record.address, self.record.address6):
                if iface is None:
                    continue
                if ipam is svc.ipam:
                    if (release := ipam.release_change(self.network.id, iface.ip)) is not None:
                        releases.append(release)
                else:
                    await ipam.release_address(self.network.id, iface.ip)
        put = [] if container is None else [container]
        while True:
            try:
                revision = await svc.state.commit(
                    put=put,
                    delete=[self.record],
                    ops=[op for r in releases for op in r.ops],
                    checks=[check for r in releases for check in r.checks],
                )
            except StaleRevision as exc:
                lost = [r for r in releases if r.concerns(exc)]
                if not lost:
                    raise
                # released and claimed again (by another daemon) since: not ours to free
                releases = [r for r in releases if r not in lost]
                continue
            break
        for release in releases:
            svc.ipam.settle(release, revision)
        if self.network is not None:
            svc.events.network("disconnect", self.network, self.record.container_id)

    async def remove(
        self, sandbox: SandboxRecord | None, *, container: Container | None = None
    ) -> list[BaseException]:
        """``leave`` then ``delete`` (``container`` as there): idempotent, errors returned."""
        errors = await self.leave(sandbox)
        await self.delete(container=container)
        return errors

    async def restore(self) -> None:
        """After a daemon restart: hold the recorded host ports again (the rules come back
        with the firewall's sync)."""
        if self._svc.publisher is not None:
            await self._svc.publisher.restore(self.record)

    def settle(self, revision: int) -> None:
        """The transaction carrying ``claims`` of this endpoint committed at ``revision``."""
        for claim in self.claims:
            self._svc.ipam.settle(claim, revision)
        self.claims = []

    def take_default_route(self) -> None:
        """It carries the sandbox's default route from now on."""
        self.record = replace(self.record, default_route=True)


def claims(endpoints: Iterable[Endpoint]) -> tuple[list[Op], list[Check]]:
    """The ops and checks of the held addresses of ``endpoints`` (``claim_later``), for
    the transaction that records them; ``Endpoint.settle`` each once it committed."""
    ops: list[Op] = []
    checks: list[Check] = []
    for ep in endpoints:
        for claim in ep.claims:
            ops += claim.ops
            checks += claim.checks
    return ops, checks


async def claim_lost(svc: Services, endpoints: Iterable[Endpoint], exc: StaleRevision) -> bool:
    """Did a transaction carrying ``claims(endpoints)`` fail on one of their checks (an
    address another daemon claimed first)?  If so the IPAM's cache catches up, and the
    caller may try again: it will hold another address."""
    if not any(claim.concerns(exc) for ep in endpoints for claim in ep.claims):
        return False
    await svc.ipam.catch_up(exc)
    return True


async def _address(
    svc: Services,
    stack: AsyncExitStack,
    network: NetworkRecord,
    ep_id: str,
    preferred: IPv4Address | IPv6Address | None,
    held: list[AddressChange],
    claim_later: bool,
    *,
    v6: bool = False,
) -> IPv4Address | IPv6Address:
    """One address of the endpoint (``v6``: from the network's IPv6 pool), its undo on
    ``stack``: held in ``held`` (``claim_later``, with the local IPAM) or allocated."""
    ipam = svc.ipam_for(network)
    if claim_later and ipam is svc.ipam:
        claim = ipam.claim_address(network.id, ep_id, preferred, v6=v6)
        stack.callback(ipam.abandon, claim)
        held.append(claim)
        return claim.address
    ip = await ipam.allocate_address(network.id, ep_id, preferred, v6=v6)
    if ipam is svc.ipam or svc.cluster is None:
        stack.push_async_callback(ipam.release_address, network.id, ip)
    else:  # a global address: freed even when etcd is lost mid-change
        stack.push_async_callback(svc.cluster.release_address, network.id, ip)
    return ip
