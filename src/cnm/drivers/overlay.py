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

An encrypted network (``-o encrypted``) differs in one thing: its VXLAN device sends from
this node's WireGuard tunnel address, and its endpoints' records name that address as
their VTEP, so its frames cross the underlay inside WireGuard only (``overlay_crypt``
owns the tunnel; the device's MTU leaves room for both headers).

Entries are never patched one by one: a change to a network's remote endpoints marks the
network, and a single task makes each marked network's entries equal to what the mirror
says, against the kernel's own lists (so a relist of the mirror, a restart, or an entry
someone deleted by hand all converge the same way).  One lock serialises data-plane
changes and that task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from typing import Any, Protocol

from cnm.drivers.overlay_crypt import Tunnel
from cnm.errors import CnmError, InvalidArgument, KernelError, NotFound, TeardownErrors, Unavailable
from cnm.kernel.api import FdbEntry, Kernel, LinkInfo, NeighEntry, VethSpec, VxlanSpec, may_remove
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
from cnm.store import codec
from cnm.store.api import Check, Document, Put, StaleRevision, Store
from cnm.store.mirror import Mirror

log = logging.getLogger("cnm.drivers.overlay")

ENDPOINT_PREFIX = "endpoint/"
NETWORK_PREFIX = "network/"
# joins/<network id>: rewritten by every join, in the transaction of its endpoint record,
# so a ``network rm`` that checks it sees a join that landed after its own check
JOIN_PREFIX = "joins/"
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
RETRY_S = 1.0  # after a failed programming of a network's entries


class OverlayKernel(Kernel, Protocol):
    """What the overlay driver needs beyond the Kernel protocol (as the bridge driver)."""

    async def retire_link(self, name: str, netns_path: str | None = None, peer: str = "") -> None: ...


def bridge_of(network_id: str) -> str:
    return OVERLAY_BRIDGE_PREFIX + network_id[:12]


def vxlan_of(network_id: str) -> str:
    return OVERLAY_VXLAN_PREFIX + network_id[:12]


def vni_of(network: NetworkRecord) -> int:
    """The VNI the cluster gave ``network`` (its ``vxlanid_list`` option); 0 if none."""
    first = str(network.options.get(OPT_VXLANID_LIST, "")).split(",")[0].strip()
    return int(first) if first.isdigit() else 0


@dataclass(frozen=True, slots=True)
class ClusterLink:
    """What the driver needs of the cluster: its store, this node's name and advertise
    address (the VTEP), and the node's current lease (None: a store without leases, as
    the tests' MemoryStore; a lease of 0 means the node has none right now)."""

    store: Store
    node: str
    address: IPv4Address
    lease: Callable[[], int] | None = None


@dataclass(frozen=True, slots=True)
class PeerEndpoint:
    """An overlay endpoint as the cluster store has it (any host's)."""

    id: str
    network_id: str
    node: str
    vtep: IPv4Address | None
    mac: str
    ip: IPv4Address | None
    name: str
    aliases: tuple[str, ...]


def peer_of(name: str, doc: Document) -> PeerEndpoint:
    """Decode an ``endpoint/<id>`` document; fields it lacks or cannot parse are empty
    (such a record is then never programmed, but still seen)."""

    def address(raw: Any) -> IPv4Address | None:
        try:
            return IPv4Interface(str(raw)).ip if raw else None
        except ValueError:
            return None

    aliases = doc.get("aliases") or ()
    return PeerEndpoint(
        id=name,
        network_id=str(doc.get("network_id", "")),
        node=str(doc.get("node", "")),
        vtep=address(doc.get("vtep")),
        mac=str(doc.get("mac", "")).lower(),
        ip=address(doc.get("address")),
        name=str(doc.get("name", "")),
        aliases=tuple(str(a) for a in aliases) if isinstance(aliases, list | tuple) else (),
    )


class OverlayDriver:
    """The CNM ``overlay`` driver over a kernel and, with ``--cluster-store``, the cluster
    (``cluster`` None: every join is refused, clearly), and this node's WireGuard
    ``tunnel`` for encrypted networks (None: joining one is refused)."""

    name = "overlay"
    needs_ipam = True

    def __init__(
        self,
        kernel: OverlayKernel | None = None,
        cluster: ClusterLink | None = None,
        tunnel: Tunnel | None = None,
    ) -> None:
        self._kernel = kernel
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
        past errors and reports them all."""
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
            if endpoint.host_ifname:
                try:
                    # out of service now, deleted in the background (as the bridge driver)
                    await kernel.retire_link(
                        endpoint.host_ifname, sandbox.key if sandbox is not None else None, endpoint.ifname
                    )
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
        never another live cnmd's).  Keeps going past errors and reports them all."""
        if self._kernel is None or self._cluster is None:
            return
        kernel, cluster = self._kernel, self._cluster
        await self._start(cluster)
        by_id = {n.id: n for n in networks if n.driver == self.name}
        errors: list[BaseException] = []
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

    async def _publish(
        self, cluster: ClusterLink, endpoint: EndpointRecord, network: NetworkRecord | None = None
    ) -> None:
        """The endpoint's record in the cluster store, on the node's lease.  Never without
        one (the record would outlive the node): Unavailable while the node has none (it is
        shutting down, or announcing itself again; the record is put back once it has).
        ``network`` (a join): the record is written only while the network's record is
        still the one read here, and rewrites ``joins/<network id>``: a join racing
        another host's ``network rm`` either lands first (the rm, which checks that key,
        is refused) or is NotFound."""
        lease = 0
        if cluster.lease is not None:
            lease = cluster.lease()
            if not lease:
                raise Unavailable(
                    f"cannot record endpoint {endpoint.id[:12]} in the cluster store: this node has no lease"
                )
        doc = dict(codec.encode(endpoint))
        doc.update(node=cluster.node, vtep=str(self._tunneled.get(endpoint.network_id, cluster.address)))
        put = Put(ENDPOINT_PREFIX + endpoint.id, doc, lease=lease)
        if network is None:
            revision = await cluster.store.commit([put])
        else:
            gone = NotFound(f"network {network.name} not found: it was removed (on another host)")
            current = await cluster.store.get(NETWORK_PREFIX + network.id)
            if current is None:
                raise gone
            try:
                revision = await cluster.store.commit(
                    [put, Put(JOIN_PREFIX + network.id, {"endpoint": endpoint.id})],
                    [Check(NETWORK_PREFIX + network.id, current.revision)],
                )
            except StaleRevision:
                raise gone from None
        if self._peers is not None:  # read our own write at once (see Mirror.apply)
            self._peers.apply(endpoint.id, peer_of(endpoint.id, doc), revision)

    # -- the remote endpoints -------------------------------------------------------------

    async def _start(self, cluster: ClusterLink) -> None:
        """Follow every host's endpoint records (once)."""
        if self._peers is not None:
            return
        peers: Mirror[PeerEndpoint] = Mirror(cluster.store, ENDPOINT_PREFIX, peer_of)
        peers.listen(self._changed)
        self._peers = peers
        await peers.start()
        self._task = asyncio.create_task(self._follow(), name="overlay peers")

    async def close(self) -> None:
        """Stop following the cluster store (before the node's lease goes: its records'
        deletes must not be taken for losses to repair).  Idempotent."""
        task, peers = self._task, self._peers
        self._task = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if peers is not None:
            await peers.close()
        if self._tunnel is not None:
            await self._tunnel.close()

    def peers(self) -> list[PeerEndpoint]:
        """Every host's overlay endpoints as last seen (for names across hosts)."""
        return list(self._peers.items.values()) if self._peers is not None else []

    def _changed(self, _name: str, old: PeerEndpoint | None, new: PeerEndpoint | None) -> None:
        for peer in (old, new):
            if peer is not None:
                self._mark(peer.network_id)
        # our own record deleted behind our back (the lease was lost and renewed): put back
        if new is None and old is not None and self._cluster is not None and old.node == self._cluster.node:
            if old.id in self._local.get(old.network_id, {}):
                self._mark(old.network_id)

    def _mark(self, network_id: str) -> None:
        self._dirty.add(network_id)
        self._wake.set()

    async def _follow(self) -> None:
        """Make each marked network's entries right; a failure is retried after a pause."""
        assert self._kernel is not None and self._cluster is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                network_id = self._dirty.pop()
                try:
                    async with self._lock:
                        await self._program(self._kernel, self._cluster, network_id)
                except CnmError as exc:
                    log.warning(
                        "overlay entries of network %s: %s (again in %gs)", network_id[:12], exc, RETRY_S
                    )
                    await asyncio.sleep(RETRY_S)
                    self._mark(network_id)

    async def _program(self, kernel: Kernel, cluster: ClusterLink, network_id: str) -> None:
        """Make the FDB and neighbour entries of ``network_id``'s VXLAN device those of the
        remote endpoints the mirror has (nothing without a local data plane), and put
        back this node's own records that went missing.  Caller holds the lock."""
        if network_id not in self._networks or self._peers is None:
            return
        dev = vxlan_of(network_id)
        fdb: set[FdbEntry] = set()
        neigh: dict[IPv4Address, NeighEntry] = {}
        mine: set[str] = set()
        for peer in self._peers.items.values():
            if peer.network_id != network_id:
                continue
            if peer.node == cluster.node:
                mine.add(peer.id)
                continue
            if peer.vtep is None or peer.ip is None or not peer.mac:
                continue
            if (
                network_id in self._tunneled
                and self._tunnel is not None
                and not self._tunnel.carries(peer.vtep)
            ):
                log.warning(
                    "endpoint %s of node %s not programmed: its VTEP %s is outside the tunnel",
                    peer.id[:12],
                    peer.node,
                    peer.vtep,
                )
                continue
            try:
                fdb.add(FdbEntry(peer.mac, peer.vtep))
                neigh[peer.ip] = NeighEntry(peer.ip, peer.mac)
            except InvalidArgument as exc:
                log.warning("endpoint %s of node %s not programmed: %s", peer.id[:12], peer.node, exc)
        for endpoint_id, endpoint in self._local.get(network_id, {}).items():
            if endpoint_id not in mine:
                if await cluster.store.get(NETWORK_PREFIX + network_id) is None:
                    # removed on another host while this one's records had lapsed (cut off):
                    # the endpoint stays here, unrecorded, until its container leaves
                    log.warning(
                        "endpoint %s not recorded again: its network %s was removed",
                        endpoint_id[:12],
                        network_id[:12],
                    )
                    continue
                # (any error, a lapsed lease's NotFound too, is tried again)
                await self._publish(cluster, endpoint, self._networks[network_id])
        current_fdb = set(await kernel.fdb_entries(dev))
        for stale in sorted(current_fdb - fdb):
            await kernel.delete_fdb(dev, stale)
        for missing in sorted(fdb - current_fdb):
            await kernel.replace_fdb(dev, missing)
        current_neigh = {n.ip: n for n in await kernel.neigh_entries(dev)}
        for ip in sorted(set(current_neigh) - set(neigh)):
            await kernel.delete_neigh(dev, ip)
        changed: list[NeighEntry] = []
        for ip, wanted in sorted(neigh.items()):
            if current_neigh.get(ip) != wanted:
                await kernel.replace_neigh(dev, wanted)
                changed.append(wanted)
        if changed:
            # a local container whose ARP request left before the proxy could answer it
            # would otherwise wait retrans_time (1 s) to ask again: tell it now
            try:
                await kernel.announce(bridge_of(network_id), changed)
            except CnmError as exc:
                log.warning("remote endpoints of network %s not announced: %s", network_id[:12], exc)
