"""The bridge driver: one Linux bridge per network, one veth pair per endpoint.

What it owns in the kernel: the bridge (tagged ``cnm:<network id>`` unless it existed
before the network and is the user's), the host ends of the veth pairs (tagged
``cnm:<endpoint id>``), and through the firewall backend the network's rules.  A bridge
named by ``com.docker.network.bridge.name`` that existed without cnm's tag is used but
never deleted, as Docker does with "user-created" bridges.

icc=false is enforced here, not in the firewall: frames between two ports of one bridge
never reach the IP forward hook (no br_netfilter), so each endpoint's host end is made an
isolated bridge port; isolated ports cannot talk to each other but still reach the bridge
itself (the gateway, the host).

Anti-spoofing (when a ``SpoofGuard`` is given): each endpoint's port is guarded before its
veth is created and until after it is retired, so a container can never send with another
MAC or address, nor answer ARP for one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
from ipaddress import IPv4Interface, IPv6Interface
from typing import Protocol

from cnm.errors import Conflict, InvalidArgument, KernelError, TeardownErrors
from cnm.firewall.api import Firewall, SpoofGuard, bridge_rules, port_guard, restore_guards
from cnm.kernel.api import Kernel, LinkInfo, VethSpec, may_remove
from cnm.model.endpoint import EndpointRecord, SandboxRecord
from cnm.model.network import OVERLAY_BRIDGE_PREFIX, NetworkRecord, NetworkSpec, validate_options

log = logging.getLogger("cnm.drivers.bridge")

LINK_LOCAL_PREFIX = 16  # libnetwork's linkLocalMask for IPAMConfig.LinkLocalIPs


class BridgeKernel(Kernel, Protocol):
    """What the bridge driver needs beyond the Kernel protocol (LinuxKernel and FakeKernel
    both provide it)."""

    async def set_port_isolated(self, name: str, isolated: bool) -> None: ...

    async def retire_link(self, name: str, netns_path: str | None = None, peer: str = "") -> None:
        """Take the veth pair of host end ``name`` (container end ``peer`` in
        ``netns_path``) out of service now, delete it in the background (the kernel waits
        for the deletion wherever it matters: same namespace, netns or bridge removal,
        shutdown)."""


def gateway_address(network: NetworkRecord) -> IPv4Interface | None:
    """The bridge's own address: the gateway, with the subnet's prefix length.  Internal
    networks get it too (Docker gives it; the host can still reach their containers)."""
    if network.gateway is None or network.subnet is None:
        return None
    return IPv4Interface(f"{network.gateway}/{network.subnet.prefixlen}")


def gateway6_address(network: NetworkRecord) -> IPv6Interface | None:
    """The bridge's own IPv6 address (a network with IPv6): its v6 gateway, with the v6
    subnet's prefix length."""
    if not network.enable_ipv6 or network.gateway6 is None or network.subnet6 is None:
        return None
    return IPv6Interface(f"{network.gateway6}/{network.subnet6.prefixlen}")


class BridgeDriver:
    """The CNM ``bridge`` driver over a kernel and a firewall backend."""

    name = "bridge"
    needs_ipam = True

    def __init__(
        self,
        kernel: BridgeKernel,
        firewall: Firewall,
        *,
        hairpin: bool = False,
        guard: SpoofGuard | None = None,
    ) -> None:
        """``hairpin``: bridge ports reflect frames back to their sender, so a container
        reaches its own published port through the host's address by kernel NAT alone
        (the daemon turns it on when the userland proxy is off, as Docker does).
        ``guard``: filters what each container sends into its port (None: nothing)."""
        self._kernel = kernel
        self._firewall = firewall
        self._hairpin = hairpin
        self._guard = guard

    # -- networks -------------------------------------------------------------------------

    def validate(self, spec: NetworkSpec) -> None:
        validate_options(spec.options)
        if len([c for c in spec.ipam if not c.is_v6]) > 1 or len([c for c in spec.ipam if c.is_v6]) > 1:
            raise InvalidArgument("the bridge driver takes one IPv4 and one IPv6 subnet per network")

    async def _bridge_link(self, name: str) -> LinkInfo | None:
        return await self._kernel.lookup_link(name)  # by name: a dump of every link grows with networks

    async def create_network(self, network: NetworkRecord) -> None:
        """Bridge up with the gateway address, then the firewall rules; on failure, undo the
        bridge if this call created it."""
        await self._create(network, await self._bridge_link(network.bridge_name))

    async def _create(self, network: NetworkRecord, existing: LinkInfo | None) -> None:
        """``create_network`` given the link that already has the bridge's name, if any."""
        rules = bridge_rules(network)
        name = network.bridge_name
        if existing is not None and existing.owner and existing.owner != network.id:
            if existing.daemon and existing.daemon != self._kernel.daemon_id:
                raise Conflict(
                    f"bridge {name} is already in use by another cnmd (daemon {existing.daemon}, "
                    f"network {existing.owner[:12]})"
                )
            raise Conflict(f"bridge {name} is already in use by network {existing.owner[:12]}")
        async with AsyncExitStack() as undo:
            if existing is None:  # before: a bridge made but not configured goes too
                undo.push_async_callback(self._kernel.delete_link, name)
            await self._kernel.ensure_bridge(
                name,
                owner=network.id,
                mtu=network.mtu,
                address=gateway_address(network),
                address6=gateway6_address(network),
            )
            await self._quiet_bridge(name)
            if network.enable_ipv6:
                # after the bridge's accept_ra=0, so it is not taken for an uplink
                await self._kernel.enable_ipv6_forwarding()
            await self._firewall.add_network(rules)
            undo.pop_all()

    async def _quiet_bridge(self, name: str) -> None:
        """Docker's ``accept_ra=0`` on the bridge; skipped when the host has no IPv6."""
        try:
            await self._kernel.set_sysctl(f"net.ipv6.conf.{name}.accept_ra", "0")
        except KernelError as exc:
            log.debug("not setting accept_ra on %s: %s", name, exc)

    async def delete_network(self, network: NetworkRecord) -> None:
        """Rules, then the bridge if cnm created it; keeps going past errors."""
        errors: list[BaseException] = []
        try:
            await self._firewall.remove_network(network.id)
        except Exception as exc:  # noqa: BLE001 -- reported together at the end
            errors.append(exc)
        if self._guard is not None:
            try:
                await self._guard.remove_network(network.id)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        try:
            link = await self._bridge_link(network.bridge_name)
            if link is not None and link.owner == network.id:
                await self._kernel.delete_link(network.bridge_name)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        if errors:
            raise TeardownErrors(f"removing network {network.name}", errors)

    # -- endpoints ------------------------------------------------------------------------

    async def join(self, network: NetworkRecord, endpoint: EndpointRecord, sandbox: SandboxRecord) -> None:
        """The veth pair: host end on the bridge, container end named ``endpoint.ifname``
        in the sandbox with its MAC, address and (unless internal) default route; on a
        network with IPv6 also IPv6 on, its v6 address and (likewise) v6 default route --
        on any other, IPv6 stays off in there."""
        if not sandbox.key:
            raise InvalidArgument(
                f"sandbox of container {sandbox.container_id[:12]} has no network namespace"
            )
        if not endpoint.host_ifname or not endpoint.ifname:
            raise InvalidArgument(f"endpoint {endpoint.id[:12]} has no interface names")
        route = endpoint.default_route and not network.internal
        v6 = network.enable_ipv6
        spec = VethSpec(
            owner=endpoint.id,
            host_ifname=endpoint.host_ifname,
            bridge=network.bridge_name,
            netns_path=sandbox.key,
            ifname=endpoint.ifname,
            mtu=network.mtu,
            mac=endpoint.mac,
            address=endpoint.address,
            # only the endpoint chosen by the engine carries the sandbox's default route
            gateway=endpoint.gateway if route else None,
            ipv6=v6,
            address6=endpoint.address6 if v6 else None,
            gateway6=endpoint.gateway6 if v6 and route else None,
            hairpin=self._hairpin,
            label=f"{endpoint.name} on {network.name}",
            link_local=tuple(
                IPv4Interface(f"{ip}/{LINK_LOCAL_PREFIX}") for ip in endpoint.request.link_local_ips
            ),
        )
        async with AsyncExitStack() as undo:
            if self._guard is not None:
                # before the veth exists: its very first frame is checked
                await self._guard.add_port(port_guard(network, endpoint))
                undo.push_async_callback(self._guard.remove_port, endpoint.id)
            await self._kernel.add_veth(spec)
            undo.push_async_callback(self._kernel.delete_link, endpoint.host_ifname)
            if not network.icc:
                await self._kernel.set_port_isolated(endpoint.host_ifname, True)
            undo.pop_all()

    async def leave(
        self, network: NetworkRecord, endpoint: EndpointRecord, sandbox: SandboxRecord | None
    ) -> None:
        """Retire the pair: the container side down at once (no route through it, no
        frame reaches it), the pair deleted in the background -- unregistering a device
        costs ~20 ms of RCU grace periods that ``network disconnect`` need not wait for.
        "Already gone" is success.  The port is unguarded only once the pair is out of
        service: if retiring fails, its guard stays (a stale element is harmless and goes
        with the next leave or restart; an unguarded live port is not)."""
        if endpoint.host_ifname:
            await self._kernel.retire_link(
                endpoint.host_ifname, sandbox.key if sandbox is not None else None, endpoint.ifname
            )
        if self._guard is not None:
            await self._guard.remove_port(endpoint.id)

    # -- restart --------------------------------------------------------------------------

    async def restore(self, networks: Sequence[NetworkRecord], endpoints: Sequence[EndpointRecord]) -> None:
        """Bridges and rules for ``networks`` back in place; bridges this daemon tagged whose
        network is not listed, and veths it tagged whose endpoint is not listed, removed
        (``may_remove``: never another live cnmd's).  Keeps going past errors and reports
        them all."""
        mine = [n for n in networks if n.driver == self.name]
        errors: list[BaseException] = []
        if self._guard is not None:  # first, and whatever fails next: the overlay waits for it
            errors += await restore_guards(self._guard, self.name, mine, endpoints)
        try:
            links = await self._kernel.links()  # one dump: it is the costly call with many links
        except Exception as exc:  # noqa: BLE001
            raise TeardownErrors("restoring bridge networks", [*errors, exc]) from exc
        by_name = {link.name: link for link in links}
        for network in mine:
            try:
                await self._create(network, by_name.get(network.bridge_name))
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        network_ids = {n.id for n in mine}
        endpoint_ids = {e.id for e in endpoints}
        bridge_names = {n.bridge_name for n in mine}
        others = self._kernel.other_daemons()

        def stale(link: LinkInfo) -> bool:
            if link.name.startswith(OVERLAY_BRIDGE_PREFIX) and link.name not in bridge_names:
                return False  # the overlay driver's (it restores its own bridges and ports)
            return may_remove(link, self._kernel.daemon_id, bool(others))

        bridges = {
            link.index
            for link in links
            if link.kind == "bridge" and (stale(link) or link.name in bridge_names)
        }
        orphans = [
            link
            for link in links
            if (
                link.kind == "veth"
                and link.owner not in endpoint_ids
                and stale(link)
                and (link.master in bridges or link.master == 0)
            )
        ] + [
            link for link in links if link.kind == "bridge" and link.owner not in network_ids and stale(link)
        ]
        for link in links:
            if link.owner and link.owner not in endpoint_ids | network_ids and link not in orphans:
                log.debug(
                    "leaving %s %s alone: tagged by cnmd %s (alive: %s)",
                    link.kind,
                    link.name,
                    link.daemon or "(untagged)",
                    ", ".join(f"{d} pid {p}" for d, p in others.items()) or "none",
                )
        for link in orphans:
            log.info("removing stale %s %s (owner %s)", link.kind, link.name, link.owner[:12])
            try:
                if link.kind == "bridge":
                    await self._firewall.remove_network(link.owner)
                await self._kernel.delete_link(link.name)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        if errors:
            raise TeardownErrors("restoring bridge networks", errors)
