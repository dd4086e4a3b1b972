"""The ``overlay`` driver: networks that span hosts (global scope), over VXLAN.

The network itself is the cluster's: its record, pool and VNI live in the cluster store
(the engine writes them, ``cnm.engine.cluster``), and a host has nothing of it in the
kernel until a container of that host joins.  So ``create_network`` and
``delete_network`` touch no kernel object.  What this driver owns, per host:

- **the data plane of each overlay network with a local endpoint**, made at the first
  join on this host and removed at the last leave: a bridge ``ov-<12 hex of the network
  id>`` without an address, and on it the VXLAN device ``vx-<…>`` (the network's VNI,
  sending from this node's advertise address, ``nolearning``, ``proxy``, MTU the
  underlay's minus the 50 bytes VXLAN adds); both tagged with the network id;
- **each local endpoint**: a veth pair whose host end is a port of that bridge, and its
  record in the cluster store (``endpoint/<id>``: the engine's record plus ``node`` and
  ``vtep``), put on the node's lease so that it vanishes with the node;
- **the remote endpoints' entries**: a ``Mirror`` of every host's endpoint records; for
  each one of another node on a network with a local data plane, an FDB entry (its MAC
  to its VTEP) and a neighbour entry (its IP to its MAC, which the VXLAN device's ARP
  proxy answers with) on that network's VXLAN device.  No multicast, no flooding, no
  learning: a MAC nobody programmed is unreachable.

Anti-spoofing (when a ``SpoofGuard`` is given), as on bridge networks: each local
endpoint's port on the ``ov-`` bridge is guarded from before its veth exists until after
it is retired, so a container can send onto the overlay -- and across VXLAN to the other
hosts -- only from its own MAC and address.  Overlay endpoints are IPv4 only.

An encrypted network (``-o encrypted``) differs in one thing: its VXLAN device sends from
this node's WireGuard tunnel address, and its endpoints' records name that address as
their VTEP, so its frames cross the underlay inside WireGuard only (``overlay_crypt``
owns the tunnel; the device's MTU leaves room for both headers).

The endpoints' records and the remote entries are ``overlay_peers``' part of the driver
(``OverlayPeers``).  One lock serialises data-plane changes and the entries' task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
from ipaddress import IPv4Address

from cnm.drivers.overlay_crypt import Tunnel
from cnm.drivers.overlay_peers import ENDPOINT_PREFIX as ENDPOINT_PREFIX
from cnm.drivers.overlay_peers import JOIN_PREFIX as JOIN_PREFIX
from cnm.drivers.overlay_peers import NETWORK_PREFIX as NETWORK_PREFIX
from cnm.drivers.overlay_peers import RETRY_S as RETRY_S
from cnm.drivers.overlay_peers import ClusterLink as ClusterLink
from cnm.drivers.overlay_peers import OverlayKernel as OverlayKernel
from cnm.drivers.overlay_peers import OverlayPeers
from cnm.drivers.overlay_peers import PeerEndpoint as PeerEndpoint
from cnm.drivers.overlay_peers import bridge_of as bridge_of
from cnm.drivers.overlay_peers import peer_of as peer_of
from cnm.drivers.overlay_peers import vxlan_of as vxlan_of
from cnm.errors import CnmError, InvalidArgument, KernelError, TeardownErrors, Unavailable
from cnm.firewall.api import SpoofGuard, port_guard, restore_guards
from cnm.kernel.api import Kernel, LinkInfo, VethSpec, VxlanSpec, may_remove
from cnm.kernel.wireguard import vxlan_mtu_over_tunnel
from cnm.model.endpoint import EndpointRecord, SandboxRecord
from cnm.model.network import (
    OPT_BRIDGE_NAME,
    OPT_ENCRYPTED,
    OPT_MTU,
    OPT_VXLANID_LIST,
    OVERLAY_BRIDGE_PREFIX,
    OVERLAY_VXLAN_PREFIX,
    NetworkRecord,
    NetworkSpec,
    parse_mtu,
    validate_options,
)
from cnm.store.mirror import Mirror

log = logging.getLogger("cnm.drivers.overlay")

VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8


def vni_of(network: NetworkRecord) -> int:
    """The VNI the cluster gave ``network`` (its ``vxlanid_list`` option); 0 if none."""
    first = str(network.options.get(OPT_VXLANID_LIST, "")).split(",")[0].strip()
    return int(first) if first.isdigit() else 0


class OverlayDriver(OverlayPeers):
    """The CNM ``overlay`` driver over a kernel and, with ``--cluster-store``, the cluster
    (``cluster`` None: every join is refused, clearly), and this node's WireGuard
    ``tunnel`` for encrypted networks (None: joining one is refused), and the ``guard``
    of its ports (None: containers may send from any address)."""

    name = "overlay"
    needs_ipam = True

    def __init__(
        self,
        kernel: OverlayKernel | None = None,
        cluster: ClusterLink | None = None,
        tunnel: Tunnel | None = None,
        *,
        guard: SpoofGuard | None = None,
    ) -> None:
        self._kernel = kernel
        self._guard = guard
        self._cluster = cluster
        self._tunnel = tunnel
        self._tunneled: dict[str, IPv4Address] = {}  # encrypted networks here: their VTEP
        self._lock = asyncio.Lock()
        # networks with a data plane on this host, and their local endpoints
        self._networks: dict[str, NetworkRecord] = {}
        self._local: dict[str, dict[str, EndpointRecord]] = {}
        self._underlay_mtu = 0
        self._peers: Mirror[PeerEndpoint] | None = None
        self._dirty: set[str] = set()  # networks whose entries must be made right
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- networks -------------------------------------------------------------------------

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
            raise InvalidArgument(
                "cnm's overlay networks are IPv4-only: --ipv6 cannot be used with the overlay driver"
            )
        if len(spec.ipam) > 1:
            raise InvalidArgument("the overlay driver takes one IPv4 subnet per network")

    async def create_network(self, network: NetworkRecord) -> None:
        """Nothing in the kernel: the data plane is made at the first join on a host."""

    async def delete_network(self, network: NetworkRecord) -> None:
        """Nothing in the kernel outlives the last leave."""

    # -- endpoints ------------------------------------------------------------------------

    async def join(self, network: NetworkRecord, endpoint: EndpointRecord, sandbox: SandboxRecord) -> None:
        """The network's data plane if this is its first endpoint here, the veth pair (its
        container end ``endpoint.ifname`` with the endpoint's MAC and address, no default
        route: the overlay's gateway is nobody's), on a first join the other hosts' entries,
        then the endpoint's record in the
        cluster store.  Undoes its own work on failure."""
        kernel, cluster = self._require(network)
        if not sandbox.key:
            raise InvalidArgument(
                f"sandbox of container {sandbox.container_id[:12]} has no network namespace"
            )
        if not endpoint.host_ifname or not endpoint.ifname or endpoint.address is None:
            raise InvalidArgument(f"endpoint {endpoint.id[:12]} has no interface names or address")
        await self._start(cluster)
        async with self._lock, AsyncExitStack() as undo:
            first = network.id not in self._networks
            if first:
                await self._create_data_plane(kernel, cluster, network, None)
                undo.push_async_callback(self._remove_data_plane, kernel, network.id)
            mtu = await self._mtu(kernel, cluster, network)
            if self._guard is not None:
                # before the veth exists: its very first frame is checked
                await self._guard.add_port(port_guard(network, endpoint))
                undo.push_async_callback(self._guard.remove_port, endpoint.id)
            await kernel.add_veth(
                VethSpec(
                    owner=endpoint.id,
                    host_ifname=endpoint.host_ifname,
                    bridge=bridge_of(network.id),
                    netns_path=sandbox.key,
                    ifname=endpoint.ifname,
                    mtu=mtu,
                    mac=endpoint.mac,
                    address=endpoint.address,
                )
            )
            undo.push_async_callback(kernel.delete_link, endpoint.host_ifname)
            if first:
                # the others' entries before our record: a host that sees the record sends
                # at once, and an ARP request of ours the proxy cannot answer yet is asked
                # again only a second later
                self._networks[network.id] = network
                await self._program(kernel, cluster, network.id)
            await self._publish(cluster, endpoint, network)
            undo.pop_all()
            self._networks[network.id] = network
            self._local.setdefault(network.id, {})[endpoint.id] = endpoint

    async def leave(
        self, network: NetworkRecord, endpoint: EndpointRecord, sandbox: SandboxRecord | None
    ) -> None:
        """The endpoint's record out of the cluster store, its veth pair retired, and with
        the network's last local endpoint its data plane removed.  Idempotent; keeps going
        past errors and reports them all.  The port is unguarded only once the pair is out
        of service (if retiring fails, its guard stays, as on the bridge driver)."""
        if self._kernel is None or self._cluster is None:
            return  # nothing was joined
        kernel, cluster = self._kernel, self._cluster
        errors: list[BaseException] = []
        async with self._lock:
            try:
                revision = await cluster.store.delete(ENDPOINT_PREFIX + endpoint.id)
                if self._peers is not None:
                    self._peers.apply(endpoint.id, None, revision)
            except CnmError as exc:
                errors.append(exc)
            retired = True
            if endpoint.host_ifname:
                try:
                    # out of service now, deleted in the background (as the bridge driver)
                    await kernel.retire_link(
                        endpoint.host_ifname, sandbox.key if sandbox is not None else None, endpoint.ifname
                    )
                except CnmError as exc:
                    errors.append(exc)
                    retired = False
            if retired and self._guard is not None:
                try:
                    await self._guard.remove_port(endpoint.id)
                except CnmError as exc:
                    errors.append(exc)
            local = self._local.get(network.id, {})
            local.pop(endpoint.id, None)
            if not local:
                try:
                    await self._remove_data_plane(kernel, network.id)
                except CnmError as exc:
                    errors.append(exc)
        if errors:
            raise TeardownErrors(f"leaving overlay network {network.name}", errors)

    async def leave_removed(self, endpoint: EndpointRecord, sandbox: SandboxRecord | None) -> None:
        """``leave`` for an endpoint whose network's record is gone (removed on another
        host while this one was cut off): the data plane this host still has of it goes
        with its last local endpoint.  Nothing when this driver never had the network."""
        network = self._networks.get(endpoint.network_id)
        if network is not None and endpoint.id in self._local.get(network.id, {}):
            await self.leave(network, endpoint, sandbox)

    # -- restart --------------------------------------------------------------------------

    async def restore(self, networks: Sequence[NetworkRecord], endpoints: Sequence[EndpointRecord]) -> None:
        """After a restart: the data plane of every overlay network with a local endpoint
        back in place (a missing bridge or VXLAN device made again), the endpoints'
        records put again on this node's (new) lease and this node's records that no
        endpoint names deleted, the remote entries reconciled; bridges and VXLAN devices
        this daemon tagged for networks without a local endpoint removed (``may_remove``:
        never another live cnmd's).  First of all, the guard of exactly the listed
        endpoints' ports among the overlay's (even without a cluster: their veths stay).
        Keeps going past errors and reports them all."""
        by_id = {n.id: n for n in networks if n.driver == self.name}
        errors: list[BaseException] = []
        if self._guard is not None:
            errors += await restore_guards(self._guard, self.name, list(by_id.values()), endpoints)
        if self._kernel is None or self._cluster is None:
            if errors:
                raise TeardownErrors("restoring overlay networks", errors)
            return
        kernel, cluster = self._kernel, self._cluster
        await self._start(cluster)
        async with self._lock:
            links = {link.name: link for link in await kernel.links()}
            for endpoint in endpoints:
                network = by_id.get(endpoint.network_id)
                if network is not None:
                    self._local.setdefault(network.id, {})[endpoint.id] = endpoint
            for network_id in list(self._local):
                network = by_id.get(network_id)
                if network is None or not self._local[network_id]:
                    self._local.pop(network_id)
                    continue
                try:
                    await self._create_data_plane(kernel, cluster, network, links)
                    self._networks[network_id] = network
                except CnmError as exc:
                    errors.append(exc)
                    if OPT_ENCRYPTED in network.options:
                        continue  # no tunnel: no record, which would name the underlay as VTEP
                for endpoint in self._local[network_id].values():
                    try:
                        await self._publish(cluster, endpoint)
                    except CnmError as exc:
                        errors.append(exc)
            errors += await self._forget_stale_records(cluster)
            errors += await self._remove_stale_links(kernel, list(links.values()))
            if self._tunnel is not None:
                try:
                    await self._tunnel.reap()
                except CnmError as exc:
                    errors.append(exc)
            for network_id in self._networks:
                self._mark(network_id)
        if errors:
            raise TeardownErrors("restoring overlay networks", errors)

    async def _forget_stale_records(self, cluster: ClusterLink) -> list[BaseException]:
        """This node's records in the cluster store whose endpoint is gone (a crash between
        the leave and the delete)."""
        assert self._peers is not None
        known = {ep_id for eps in self._local.values() for ep_id in eps}
        errors: list[BaseException] = []
        for peer in list(self._peers.items.values()):
            if peer.node == cluster.node and peer.id not in known:
                log.info("removing stale endpoint record %s of this node", peer.id[:12])
                try:
                    await cluster.store.delete(ENDPOINT_PREFIX + peer.id)
                except CnmError as exc:
                    errors.append(exc)
        return errors

    async def _remove_stale_links(self, kernel: Kernel, links: list[LinkInfo]) -> list[BaseException]:
        """This daemon's ``ov-``/``vx-`` links of networks without a local endpoint, and
        its veths on its overlay bridges whose endpoint no record names."""
        others = bool(kernel.other_daemons())
        endpoint_ids = {ep_id for eps in self._local.values() for ep_id in eps}
        overlay = {
            link.index: link
            for link in links
            if link.kind == "bridge" and link.name.startswith(OVERLAY_BRIDGE_PREFIX)
        }
        stale = [
            link
            for link in links
            if link.kind == "veth"
            and link.master in overlay
            and link.owner not in endpoint_ids
            and may_remove(link, kernel.daemon_id, others)
        ] + [
            link
            for link in links
            if link.name.startswith((OVERLAY_BRIDGE_PREFIX, OVERLAY_VXLAN_PREFIX))
            and link.kind in ("bridge", "vxlan")
            and link.owner not in self._networks
            and may_remove(link, kernel.daemon_id, others)
        ]
        errors: list[BaseException] = []
        for link in stale:
            log.info("removing stale %s %s (owner %s)", link.kind, link.name, link.owner[:12])
            try:
                await kernel.delete_link(link.name)
            except CnmError as exc:
                errors.append(exc)
        return errors

    # -- the data plane -------------------------------------------------------------------

    def _require(self, network: NetworkRecord) -> tuple[OverlayKernel, ClusterLink]:
        if self._kernel is None or self._cluster is None:
            raise Unavailable(
                f"cannot attach to overlay network {network.name}: cnmd runs without --cluster-store"
            )
        if not vni_of(network):
            raise InvalidArgument(f"overlay network {network.name} has no VXLAN id")
        if OPT_ENCRYPTED in network.options and self._tunnel is None:
            # never its traffic in the clear
            raise Unavailable(
                f"cannot attach to overlay network {network.name}: it is encrypted, and this "
                "cnmd has no WireGuard tunnel"
            )
        return self._kernel, self._cluster

    async def _mtu(self, kernel: Kernel, cluster: ClusterLink, network: NetworkRecord) -> int:
        """The network's MTU when given (``-o com.docker.network.driver.mtu``), else the
        underlay's (the interface holding the advertise address) minus VXLAN's 50; an
        encrypted network's never more than what fits in the tunnel."""
        given = parse_mtu(network.options[OPT_MTU]) if network.options.get(OPT_MTU) else 0
        if OPT_ENCRYPTED in network.options:
            fits = vxlan_mtu_over_tunnel(await self._underlay(kernel, cluster))
            return min(given, fits) if given else fits
        if given:
            return given
        return await self._underlay(kernel, cluster) - VXLAN_OVERHEAD

    async def _underlay(self, kernel: Kernel, cluster: ClusterLink) -> int:
        """The MTU of the interface holding the advertise address (looked up once)."""
        if not self._underlay_mtu:
            for link in await kernel.links():
                if any(a.ip == cluster.address for a in link.addresses):
                    self._underlay_mtu = link.mtu
                    break
            else:
                raise KernelError(f"no interface of this host has the advertise address {cluster.address}")
        return self._underlay_mtu

    async def _create_data_plane(
        self,
        kernel: Kernel,
        cluster: ClusterLink,
        network: NetworkRecord,
        links: dict[str, LinkInfo] | None,
    ) -> None:
        """The bridge and its VXLAN device, each made unless present (``links``: the host's,
        when the caller has them).  A VXLAN device of another network in the way is
        Conflict; the bridge is removed again if the device cannot be made.  An encrypted
        network's device sends from the tunnel address (the tunnel taken first)."""
        bridge, vxlan = bridge_of(network.id), vxlan_of(network.id)
        existing = links.get(vxlan) if links is not None else await kernel.lookup_link(vxlan)
        if existing is not None and existing.owner != network.id:
            raise KernelError(
                f"cannot use {vxlan} for overlay network {network.name}: another link has that name"
            )
        mtu = await self._mtu(kernel, cluster, network)
        local = cluster.address
        if OPT_ENCRYPTED in network.options:
            assert self._tunnel is not None  # _require
            underlay = await self._underlay(kernel, cluster)
            local = await self._tunnel.acquire(network.id, underlay, vni=vni_of(network))
            self._tunneled[network.id] = local
        had_bridge = (
            links.get(bridge) if links is not None else await kernel.lookup_link(bridge)
        ) is not None
        try:
            await kernel.ensure_bridge(bridge, owner=network.id, mtu=mtu, address=None)
            if existing is not None:
                return
            await kernel.add_vxlan(
                VxlanSpec(
                    owner=network.id,
                    name=vxlan,
                    vni=vni_of(network),
                    local=local,
                    bridge=bridge,
                    mtu=mtu,
                )
            )
        except BaseException:
            if not had_bridge:
                with contextlib.suppress(CnmError):
                    await kernel.delete_link(bridge)
            if self._tunnel is not None and self._tunneled.pop(network.id, None) is not None:
                with contextlib.suppress(CnmError):
                    await self._tunnel.release(network.id)
            raise
        log.info("overlay network %s: %s and %s up (VNI %d)", network.name, bridge, vxlan, vni_of(network))

    async def _remove_data_plane(self, kernel: Kernel, network_id: str) -> None:
        """The VXLAN device (its entries go with it), then the bridge, then the network's
        hold on the tunnel; idempotent."""
        self._networks.pop(network_id, None)
        self._local.pop(network_id, None)
        await kernel.delete_link(vxlan_of(network_id))
        await kernel.delete_link(bridge_of(network_id))
        if self._tunnel is not None and self._tunneled.pop(network_id, None) is not None:
            await self._tunnel.release(network_id)
