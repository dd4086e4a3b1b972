"""The engine's view of the cluster (``cnmd --cluster-store``): the live nodes, the IPAM of
global networks, and what keeps a global network's name and VXLAN id unique across hosts.

The cluster store holds, beside ``network/<id>`` and ``ipam/…`` of the global networks:

    node/<node name>            a live daemon's record, on its lease (``cnm.daemon.cluster``)
    globalname/<name>           {"network": id}: a global network has that name
    localname/<name>/<node>     {"network": id}: that node has a local network of that name
    vni/<n>                     {"network": id}: VXLAN network id ``n`` (4096 and up) is taken
    joins/<network id>          {"endpoint": id}: the last join (``removal_check``)

Each prefix is followed by a ``Mirror``, so the checks below read memory; the store decides.
Uniqueness is compare-and-swap, in the transaction that writes the network record:

- a global network's create checks that ``globalname/<name>`` is absent, that
  ``localname/<name>/<node>`` is absent for every live node (refused outright when the
  mirror knows one already), and that ``vni/<n>`` is absent, and puts the first two;
- a local network's create on a node in a cluster puts ``localname/<name>/<node>``
  checking that ``globalname/<name>`` is absent.

Of two racing creates the second fails a check: one wins, the other is Conflict (a name)
or takes the next VNI.  A node that is down keeps its ``localname`` keys (its networks
still exist); ``publish_local`` reconciles them at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from typing import Any

from cnm.drivers.overlay import ENDPOINT_PREFIX, JOIN_PREFIX
from cnm.engine.later import Later
from cnm.errors import CnmError, Conflict, Unavailable
from cnm.ipam.api import Ipam, PoolSpec
from cnm.model.network import OPT_VXLANID_LIST, NetworkRecord
from cnm.store.api import Check, Delete, Document, Op, Put, StaleRevision, Store
from cnm.store.mirror import Mirror

log = logging.getLogger("cnm.engine")

NODE_PREFIX = "node/"
GLOBAL_NAME_PREFIX = "globalname/"
LOCAL_NAME_PREFIX = "localname/"
VNI_PREFIX = "vni/"

# Docker's overlay driver: VNIs from 4096 (below is left to swarm's managers' own ranges),
# up to the 24-bit field's end.
FIRST_VNI = 4096
LAST_VNI = (1 << 24) - 1
# Docker swarm's default address pool for global networks: 10.0.0.0/8 in /24s.
GLOBAL_POOL = PoolSpec(IPv4Network("10.0.0.0/8"), 24)

MAX_ATTEMPTS = 64  # VNI claims lost in a row before giving up (each loss: another host won)
SPREAD = 64  # after the first loss, a VNI is drawn among the lowest 2, 4 … SPREAD free ones
WATCH_TIMEOUT = 5.0
WITHDRAW_RETRY_S = 1.0  # between tries of withdrawing local names while the store is away


@dataclass(frozen=True, slots=True)
class Node:
    """A live daemon of the cluster, as its node record says."""

    name: str
    daemon_id: str
    address: str
    wireguard_key: str = ""


def _node(name: str, doc: Document) -> Node:
    return Node(
        name=str(doc.get("Name") or name),
        daemon_id=str(doc.get("ID", "")),
        address=str(doc.get("Address", "")),
        wireguard_key=str(doc.get("WireguardKey", "")),
    )


def _network_of(_name: str, doc: Document) -> str:
    return str(doc.get("network", ""))


def vni_of(network: NetworkRecord) -> int:
    """The VNI a global network was given (its ``vxlanid_list`` option); 0 if none."""
    raw = network.options.get(OPT_VXLANID_LIST, "")
    first = str(raw).split(",")[0].strip()
    return int(first) if first.isdigit() else 0


def name_conflict(name: str) -> Conflict:
    return Conflict(f"network with name {name} already exists")


class Cluster:
    """The cluster as this daemon's engine sees it: ``store`` (the cluster store), this
    node's ``node`` name and ``address``, the IPAM of global networks (``ipam``, over
    ``store``), and mirrors of the nodes, names and VNIs.  ``lease()`` is the lease of the
    node's record, for what must vanish with the node (its overlay endpoints' records);
    0 when there is none.  ``start`` before use."""

    def __init__(
        self,
        store: Store,
        node: str,
        address: str,
        ipam: Ipam,
        *,
        lease: Callable[[], int] = lambda: 0,
        watch_timeout: float = WATCH_TIMEOUT,
    ) -> None:
        self.store = store
        self.node = node
        self.address = address
        self.ipam = ipam
        self.lease = lease
        self._watch_timeout = watch_timeout
        self._nodes: Mirror[Node] = Mirror(store, NODE_PREFIX, _node)
        self._global_names: Mirror[str] = Mirror(store, GLOBAL_NAME_PREFIX, _network_of)
        self._local_names: Mirror[str] = Mirror(store, LOCAL_NAME_PREFIX, _network_of)
        self._vnis: Mirror[str] = Mirror(store, VNI_PREFIX, _network_of)
        self._mirrors: dict[str, Mirror[Any]] = {
            NODE_PREFIX: self._nodes,
            GLOBAL_NAME_PREFIX: self._global_names,
            LOCAL_NAME_PREFIX: self._local_names,
            VNI_PREFIX: self._vnis,
        }
        # name -> the nodes having a local network of that name (from localname/<name>/<node>)
        self._local_index: dict[str, set[str]] = {}
        self._local_names.listen(self._local_changed)
        self._rng = random.Random()
        self.conflicts = 0  # VNI claims lost to another host (a figure for benches)
        # local names removed while the store did not answer, withdrawn once it does
        self._withdrawals: set[str] = set()
        self._withdrawer: asyncio.Task[None] | None = None
        # global addresses whose undo the store did not take, freed once it does
        self.releases = Later("global addresses not freed yet", WITHDRAW_RETRY_S)

    async def start(self) -> None:
        """Load and follow the nodes, names and VNIs; start the global IPAM."""
        for mirror in self._mirrors.values():
            await mirror.start()
        await self.ipam.start()

    async def close(self) -> None:
        if self._withdrawer is not None:  # (the next start's reconcile_local does them)
            self._withdrawer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._withdrawer
            self._withdrawer = None
        await self.releases.close()
        await self.ipam.close()
        for mirror in self._mirrors.values():
            await mirror.close()

    async def release_address(self, network_id: str, address: IPv4Address | IPv6Address) -> None:
        """Free a global address claimed by a change that failed (its undo): at once, or,
        while the store does not answer, in the background once it does (logged, not
        raised: the caller's own error is the one to report)."""
        try:
            await self.ipam.release_address(network_id, address)
        except Unavailable as exc:
            log.warning("address %s of network %s is freed once the cluster store answers: %s",
                        address, network_id[:12], exc)  # fmt: skip
            self.releases.add((network_id, address), lambda: self.ipam.release_address(network_id, address))

    # -- nodes ----------------------------------------------------------------------------

    def nodes(self) -> list[Node]:
        """The live nodes (their records are on their leases), by name."""
        return sorted(self._nodes.items.values(), key=lambda n: n.name)

    # -- names ----------------------------------------------------------------------------

    def _local_changed(self, key: str, _old: str | None, new: str | None) -> None:
        name, _, node = key.rpartition("/")
        if new is not None:
            self._local_index.setdefault(name, set()).add(node)
            return
        nodes = self._local_index.get(name)
        if nodes is not None:
            nodes.discard(node)
            if not nodes:
                del self._local_index[name]

    def local_nodes(self, name: str) -> set[str]:
        """The nodes known to have a local network named ``name``."""
        return set(self._local_index.get(name, ()))

    def global_name_taken(self, name: str) -> bool:
        return name in self._global_names.items

    def check_global_name(self, name: str) -> None:
        """Conflict if the mirrors know ``name`` as a global network's, or as a local
        network's on any node (the store's checks decide; this refuses early)."""
        if self.global_name_taken(name):
            raise name_conflict(name)
        nodes = self.local_nodes(name)
        if nodes:
            raise Conflict(
                f"network with name {name} already exists: it is a local network on "
                f"node{'s' if len(nodes) > 1 else ''} {', '.join(sorted(nodes))}"
            )

    async def publish_local(self, name: str, network_id: str) -> None:
        """Tell the cluster this node has a local network ``name``; Conflict if a global
        network has the name (also one created a moment ago on another host)."""
        if self.global_name_taken(name):
            raise name_conflict(name)
        self._withdrawals.discard(name)
        ops: list[Op] = [Put(_local_key(name, self.node), {"network": network_id})]
        try:
            await self._commit(ops, [Check(GLOBAL_NAME_PREFIX + name, 0)])
        except StaleRevision:
            raise name_conflict(name) from None

    async def unpublish_local(self, name: str) -> None:
        """This node no longer has a local network ``name``; idempotent."""
        await self._commit([Delete(_local_key(name, self.node))], [])

    async def withdraw_local(self, name: str) -> None:
        """``unpublish_local`` after a local network's removal, which does not wait for the
        cluster store: when the store does not answer (Unavailable, raised), the name is
        withdrawn in the background once it does, rather than blocking a global network
        of that name until this daemon restarts.  A create of the name meanwhile
        (``publish_local``) cancels that."""
        try:
            await self.unpublish_local(name)
        except Unavailable:
            self._withdrawals.add(name)
            if self._withdrawer is None or self._withdrawer.done():
                self._withdrawer = asyncio.create_task(
                    self._withdraw_later(), name="cluster name withdrawals"
                )
            raise

    async def _withdraw_later(self) -> None:
        """Retry the withdrawals until the store takes them.  Each delete checks the key
        is still at the revision the mirror saw: a name published again meanwhile stays."""
        while self._withdrawals:
            await asyncio.sleep(WITHDRAW_RETRY_S)
            for name in sorted(self._withdrawals):
                key = _local_key(name, self.node)
                revision = self._local_names.revisions.get(key[len(LOCAL_NAME_PREFIX) :], 0)
                try:
                    if revision:
                        await self._commit([Delete(key)], [Check(key, revision)])
                except StaleRevision:
                    pass  # published again since: it stays
                except CnmError as exc:
                    log.debug("local network names not withdrawn yet: %s", exc)
                    break  # still away: all of them later
                if name in self._withdrawals:
                    self._withdrawals.discard(name)
                    log.info("the cluster no longer lists local network %s of this node", name)

    async def reconcile_local(self, networks: Mapping[str, str]) -> None:
        """Make this node's ``localname`` keys match ``networks`` ({name: id}, the local
        networks it has): a daemon that was down or outside the cluster, or crashed between
        a change and its publication, catches up.  A name a global network took meanwhile
        is logged (both networks exist; the global one is reachable by id)."""
        mine: dict[str, str] = {}
        for key, network_id in self._local_names.items.items():
            name, _, node = key.rpartition("/")
            if node == self.node:
                mine[name] = network_id
        for name in sorted(set(mine) - set(networks)):
            await self.unpublish_local(name)
        for name, network_id in sorted(networks.items()):
            if mine.get(name) == network_id:
                continue
            try:
                await self.publish_local(name, network_id)
            except Conflict:
                log.warning(
                    "local network %s has the name of a global network of the cluster: "
                    "refer to one of them by id",
                    name,
                )

    # -- global networks ------------------------------------------------------------------

    def free_vni(self, lost: int = 0) -> int:
        """The lowest VNI the mirror does not know taken; after ``lost`` claims lost in a
        row (> 1), one drawn among the lowest few free, so hosts racing stop colliding."""
        taken = {int(k) for k in self._vnis.items if k.isdigit()}
        spread = min(1 << (lost - 1), SPREAD) if lost > 1 else 1
        pick = self._rng.randrange(spread)
        vni = FIRST_VNI
        while vni <= LAST_VNI:
            if vni not in taken:
                if pick == 0:
                    return vni
                pick -= 1
            vni += 1
        if spread > 1:
            return self.free_vni(0)
        raise Unavailable("no VXLAN network id is left for a global network")

    def create_checks(self, name: str, network_id: str, vni: int) -> tuple[list[Op], list[Check]]:
        """What a global network's record is written with: its name and VNI taken, and the
        checks that they are free and no live node has a local network of that name."""
        self.check_global_name(name)
        ops: list[Op] = [
            Put(GLOBAL_NAME_PREFIX + name, {"network": network_id}),
            Put(_vni_key(vni), {"network": network_id}),
        ]
        checks = [Check(GLOBAL_NAME_PREFIX + name, 0)]
        checks += [
            Check(_local_key(name, node), 0) for node in sorted({n.name for n in self.nodes()} | {self.node})
        ]
        checks.append(Check(_vni_key(vni), 0))
        return ops, checks

    async def removal_check(self, network: NetworkRecord) -> tuple[Check, list[tuple[str, str]]]:
        """Before a global network's removal, read from the store itself (a mirror may lag
        behind a join on another host): the check that keeps any join from landing
        between now and the removal's commit (``joins/<id>`` unchanged), and the
        endpoints (name, id) that any host has on the network now."""
        marker = await self.store.get(JOIN_PREFIX + network.id)
        listing = await self.store.list(ENDPOINT_PREFIX)
        endpoints = [
            (str(e.doc.get("name", "")), e.key[len(ENDPOINT_PREFIX) :])
            for e in listing.entries
            if e.doc.get("network_id") == network.id
        ]
        return Check(JOIN_PREFIX + network.id, marker.revision if marker else 0), endpoints

    def delete_ops(self, network: NetworkRecord) -> list[Op]:
        """What goes with a global network's record: its name and its VNI (when they are
        still this network's), and its join marker."""
        ops: list[Op] = [Delete(JOIN_PREFIX + network.id)]
        if self._global_names.items.get(network.name) == network.id:
            ops.append(Delete(GLOBAL_NAME_PREFIX + network.name))
        vni = vni_of(network)
        if vni and self._vnis.items.get(str(vni)) == network.id:
            ops.append(Delete(_vni_key(vni)))
        return ops

    async def lost(self, exc: StaleRevision, name: str) -> None:
        """A global network's create lost a check: Conflict for its name; for its VNI,
        wait until the mirror has the VNI that won (the caller tries the next one)."""
        if exc.key.startswith((GLOBAL_NAME_PREFIX, LOCAL_NAME_PREFIX)):
            raise name_conflict(name)
        self.conflicts += 1
        mirror = self._mirrors[VNI_PREFIX] if exc.key.startswith(VNI_PREFIX) else None
        if mirror is None or exc.actual <= 0:
            return
        try:
            await asyncio.wait_for(mirror.seen(exc.actual), self._watch_timeout)
        except TimeoutError:
            raise Unavailable(
                f"the cluster store's changes are not arriving (waited {self._watch_timeout:g}s "
                f"for revision {exc.actual} of {exc.key})"
            ) from None

    def applied(self, ops: Sequence[Op], revision: int) -> None:
        """Put this daemon's own committed ``ops`` (of the prefixes above) in the mirrors."""
        for op in ops:
            for prefix, mirror in self._mirrors.items():
                if op.key.startswith(prefix):
                    value = mirror_value(prefix, op)
                    mirror.apply(op.key[len(prefix) :], value, revision)

    async def _commit(self, ops: Sequence[Op], checks: Sequence[Check]) -> int:
        revision = await self.store.commit(ops, checks)
        self.applied(ops, revision)
        return revision


def mirror_value(prefix: str, op: Op) -> Any:
    """The mirror's value of ``op`` under ``prefix`` (None for a delete)."""
    if not isinstance(op, Put):
        return None
    name = op.key[len(prefix) :]
    return _node(name, op.doc) if prefix == NODE_PREFIX else _network_of(name, op.doc)


def _local_key(name: str, node: str) -> str:
    return f"{LOCAL_NAME_PREFIX}{name}/{node}"


def _vni_key(vni: int) -> str:
    return f"{VNI_PREFIX}{vni}"
