"""The overlay driver's records in the cluster store and its remote endpoints' entries.

Split from ``cnm.drivers.overlay`` by job: that module makes and removes each network's
data plane and its local endpoints; this one writes a local endpoint's record
(``endpoint/<id>``, on the node's lease) and follows every host's records to program
the FDB and neighbour entries of the remote ones.  ``OverlayPeers`` is the driver's part
that does this (a mixin: its state is the driver's, made in ``OverlayDriver.__init__``).

Entries are never patched one by one: a change to a network's remote endpoints marks the
network, and a single task makes each marked network's entries equal to what the mirror
says, against the kernel's own lists (so a relist of the mirror, a restart, or an entry
someone deleted by hand all converge the same way).  The driver's one lock serialises
data-plane changes and that task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from typing import Any, Protocol

from cnm.drivers.overlay_crypt import Tunnel
from cnm.errors import CnmError, InvalidArgument, NotFound, Unavailable
from cnm.kernel.api import FdbEntry, Kernel, NeighEntry
from cnm.model.endpoint import EndpointRecord
from cnm.model.network import OVERLAY_BRIDGE_PREFIX, OVERLAY_VXLAN_PREFIX, NetworkRecord
from cnm.store import codec
from cnm.store.api import Check, Document, Put, StaleRevision, Store
from cnm.store.mirror import Mirror

log = logging.getLogger("cnm.drivers.overlay")

ENDPOINT_PREFIX = "endpoint/"
NETWORK_PREFIX = "network/"
# joins/<network id>: rewritten by every join, in the transaction of its endpoint record,
# so a ``network rm`` that checks it sees a join that landed after its own check
JOIN_PREFIX = "joins/"
RETRY_S = 1.0  # after a failed programming of a network's entries


class OverlayKernel(Kernel, Protocol):
    """What the overlay driver needs beyond the Kernel protocol (as the bridge driver)."""

    async def retire_link(self, name: str, netns_path: str | None = None, peer: str = "") -> None: ...


def bridge_of(network_id: str) -> str:
    return OVERLAY_BRIDGE_PREFIX + network_id[:12]


def vxlan_of(network_id: str) -> str:
    return OVERLAY_VXLAN_PREFIX + network_id[:12]


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


class OverlayPeers:
    """The records and remote entries of ``OverlayDriver`` (see the module docstring)."""

    _kernel: OverlayKernel | None
    _cluster: ClusterLink | None
    _tunnel: Tunnel | None
    _tunneled: dict[str, IPv4Address]  # encrypted networks here: their VTEP
    _lock: asyncio.Lock
    _networks: dict[str, NetworkRecord]  # networks with a data plane on this host
    _local: dict[str, dict[str, EndpointRecord]]  # and their local endpoints
    _peers: Mirror[PeerEndpoint] | None
    _dirty: set[str]  # networks whose entries must be made right
    _wake: asyncio.Event
    _task: asyncio.Task[None] | None

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
