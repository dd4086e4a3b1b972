"""The overlay's encryption (``-o encrypted``): this host's WireGuard tunnel to the other nodes.

The VXLAN device of an encrypted network sends from this node's *tunnel address* to the
other nodes' tunnel addresses (the ``vtep`` of its endpoints' records), so every frame of
such a network leaves the host inside WireGuard (UDP ``WG_PORT`` between underlay
addresses), never as plain VXLAN.  ``Tunnel`` owns, per host:

- **the interface** ``cnmwg0`` (``cnm.kernel.api.WireGuard``: wireguard-go here), up while
  at least one encrypted network has a data plane on this host (``acquire``/``release``),
  with the node's tunnel address and MTU the underlay's minus WireGuard's 60; it outlives a
  cnmd restart like a container, and the restart adopts it (``acquire``) or stops it
  (``reap``);
- **the keys**: made on this host and kept in ``key_path`` (mode 0600, the private keys
  never anywhere else); only the public key goes to the cluster store, in the node record
  (``WireguardKey``, and ``WireguardNextKey`` while a rotation is announced), with the
  ``TunnelAddress`` and ``WireguardPort``.  The record is cleared of the key when the
  interface goes;
- **the tunnel address**: one per node name, taken once by CAS as ``tunnel/<address>`` in
  the cluster store (not on a lease: the node keeps it across restarts and deaths);
- **the peers**: the other nodes whose records carry a key and a tunnel address (a
  ``Mirror`` of ``node/``; a record goes with its node's lease, and its peer with it),
  endpoint their underlay address, allowed IPs their tunnel address.  One task makes the
  device's peers equal to that (``desired_peers``), on every change of the records and
  every ``RECONCILE_S`` (a peer that switched keys before its record arrived is promoted
  by its handshake; a device found dead is started again, same key and address -- while it
  is gone nothing leaks: the VXLAN devices send from the tunnel address, which then is no
  address of this host, so the kernel routes none of their packets);
- **the underlay's door**: the kernel's VXLAN socket takes frames from anyone, so while an
  encrypted network holds the tunnel, ``firewall`` drops plain VXLAN with its VNI that
  does not come through ``cnmwg0`` (``Firewall.add_encrypted_vni``), from before its VXLAN
  device exists until the network lets go of the tunnel;
- **rotation** (``RotationPolicy``; 0 = never): ``rotation_step`` announces the next key,
  then switches to it, each step saved to the key file before the device or the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from cnm.errors import CnmError, InvalidArgument, NotFound, SystemFailure, Unavailable
from cnm.firewall.api import Firewall
from cnm.kernel.api import WgSpec, WireGuard
from cnm.kernel.wireguard import (
    KeyPair,
    KeyState,
    NodeTunnel,
    RotationPolicy,
    Step,
    check_key,
    desired_peers,
    rotation_step,
    tunnel_mtu,
)
from cnm.store.api import Document, StaleRevision, Store
from cnm.store.mirror import Mirror

log = logging.getLogger("cnm.drivers.overlay")

IFNAME = "cnmwg0"
WG_PORT = 51820
TUNNEL_POOL = IPv4Network("100.64.0.0/10")  # shared address space (RFC 6598): never routed publicly
OWNER = "overlay-tunnel"  # the owner tag of the interface's device
NODE_PREFIX = "node/"
TUNNEL_PREFIX = "tunnel/"
RECONCILE_S = 2.0  # peers checked against the records and the handshakes at least this often
RETRY_S = 1.0  # after a failed rotation step


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node record as the tunnel reads it: its name and, when it offers one, its tunnel."""

    name: str
    tunnel: NodeTunnel | None


def node_of(name: str, doc: Document) -> NodeInfo:
    """Decode ``node/<name>``: a tunnel only with a well-formed key, underlay address, port
    and tunnel address (anything else is a node without encryption, never a bad peer)."""
    try:
        key = str(doc.get("WireguardKey") or "")
        next_key = str(doc.get("WireguardNextKey") or "")
        if not key:
            return NodeInfo(name, None)
        check_key(key)
        if next_key:
            check_key(next_key)
        port = int(doc.get("WireguardPort", WG_PORT))
        if not 0 < port <= 65535:
            raise ValueError(port)
        tunnel = NodeTunnel(
            public_key=key,
            endpoint=(IPv4Address(str(doc.get("Address", ""))), port),
            address=IPv4Address(str(doc.get("TunnelAddress", ""))),
            next_public_key=next_key,
        )
    except (InvalidArgument, ValueError, TypeError):
        log.warning("node record %s has a malformed WireGuard tunnel: not a peer", name)
        return NodeInfo(name, None)
    return NodeInfo(name, tunnel)


# -- the key file ------------------------------------------------------------------------------


def load_keys(path: str) -> KeyState | None:
    """The key state saved at ``path``; None when there is none.  SystemFailure naming the
    file when it cannot be read or is not a key file (never its content)."""
    try:
        with open(path, encoding="ascii") as fh:
            raw = json.load(fh)
        current = KeyPair.from_private(str(raw["private"]))
        following = KeyPair.from_private(str(raw["next"])) if raw.get("next") else None
        return KeyState(
            current=current,
            since=float(raw["since"]),
            next=following,
            announced=float(raw.get("announced", 0.0)),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, InvalidArgument) as exc:
        kind = type(exc).__name__
        raise SystemFailure(f"cannot read the WireGuard key file {path}: {kind}") from None


def save_keys(path: str, state: KeyState) -> None:
    """Write ``state`` to ``path`` atomically, readable by its owner only (mode 0600 from
    the moment the file exists)."""
    doc = {
        "private": state.current.private,
        "since": state.since,
        "next": state.next.private if state.next is not None else "",
        "announced": state.announced,
    }
    tmp = f"{path}.tmp"
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            json.dump(doc, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise SystemFailure(f"cannot write the WireGuard key file {path}: {exc.strerror}") from exc


# -- the tunnel ---------------------------------------------------------------------------------


class Tunnel:
    """This node's WireGuard tunnel for encrypted overlay networks; see the module docstring.

    ``publish(fields)`` writes fields of this node's record (the daemon's cluster membership
    keeps them across a lease lost and renewed); ``clock`` is wall time (the key file's
    times outlive the process)."""

    def __init__(
        self,
        wireguard: WireGuard,
        store: Store,
        node: str,
        underlay: IPv4Address,
        *,
        key_path: str,
        publish: Callable[[dict[str, Any]], Awaitable[None]],
        pool: IPv4Network = TUNNEL_POOL,
        rotation: RotationPolicy | None = None,
        ifname: str = IFNAME,
        port: int = WG_PORT,
        clock: Callable[[], float] = time.time,
        firewall: Firewall | None = None,
    ) -> None:
        self.wireguard = wireguard
        self.firewall = firewall
        self.store = store
        self.node = node
        self.underlay = underlay
        self.key_path = key_path
        self.ifname = ifname
        self.port = port
        self._publish = publish
        self._pool = pool
        self._rotation = rotation if rotation is not None else RotationPolicy(0)
        self._clock = clock
        self._address: IPv4Address | None = None
        self._keys: KeyState | None = None
        self._users: set[str] = set()  # encrypted networks with a data plane here
        self._vnis: dict[str, int] = {}  # those of them whose VNI the firewall guards
        self._spec: WgSpec | None = None
        self._lock = asyncio.Lock()
        self._nodes: Mirror[NodeInfo] | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def up(self) -> bool:
        return bool(self._users)

    @property
    def keys(self) -> KeyState | None:
        return self._keys

    # -- the address ----------------------------------------------------------------------

    def carries(self, address: IPv4Address) -> bool:
        """Whether VXLAN sent to ``address`` goes through the tunnel (a tunnel address)."""
        return address in self._pool

    async def address(self) -> IPv4Address:
        """This node's tunnel address: the one the cluster store gives its name, else the
        first free one of the pool, taken by CAS (two nodes never get the same)."""
        if self._address is not None:
            return self._address
        listing = await self.store.list(TUNNEL_PREFIX)
        taken: set[IPv4Address] = set()
        for entry in listing.entries:
            try:
                address = IPv4Address(entry.key[len(TUNNEL_PREFIX) :])
            except ValueError:
                continue
            if entry.doc.get("Node") == self.node:
                self._address = address
                return address
            taken.add(address)
        for candidate in self._pool.hosts():
            if candidate in taken:
                continue
            try:
                await self.store.put(TUNNEL_PREFIX + str(candidate), {"Node": self.node}, revision=0)
            except StaleRevision:
                continue  # another node took it meanwhile
            log.info("tunnel address %s taken for node %s", candidate, self.node)
            self._address = candidate
            return candidate
        raise Unavailable(f"no free tunnel address left in {self._pool} for node {self.node}")

    # -- the interface ----------------------------------------------------------------------

    async def acquire(self, network_id: str, underlay_mtu: int, vni: int = 0) -> IPv4Address:
        """The tunnel up for encrypted network ``network_id`` (started with the first such
        network, adopted when it runs already), this node's key and tunnel published, the
        peers set, plain VXLAN with the network's ``vni`` (0: none yet) dropped by the
        firewall; returns the tunnel address.  Undoes a start it made on failure."""
        async with self._lock:
            if network_id in self._users:
                assert self._address is not None
                return self._address
            address = await self.address()
            started = not self._users
            if started:
                await self._start(address, underlay_mtu)
            try:
                if self.firewall is not None and vni:
                    await self.firewall.add_encrypted_vni(network_id, vni)
                    self._vnis[network_id] = vni
            except BaseException:
                if started:
                    await self._stop()
                raise
            self._users.add(network_id)
            return address

    async def _start(self, address: IPv4Address, underlay_mtu: int) -> None:
        keys = await asyncio.to_thread(load_keys, self.key_path)
        if keys is None:
            keys = KeyState(current=KeyPair.generate(), since=self._clock())
            await asyncio.to_thread(save_keys, self.key_path, keys)
            log.info("WireGuard key pair made for node %s (public key %s)", self.node, keys.current.public)
        self._keys = keys
        self._spec = WgSpec(
            ifname=self.ifname,
            owner=OWNER,
            address=IPv4Interface(f"{address}/{self._pool.prefixlen}"),
            listen_port=self.port,
            mtu=tunnel_mtu(underlay_mtu),
            private_key=keys.current.private,
        )
        await self.wireguard.up(self._spec)
        try:
            await self._follow_nodes()
            await self._reconcile()
            await self._announce()
        except BaseException:
            await self._stop_tasks()
            with contextlib.suppress(CnmError):
                await self.wireguard.down(self.ifname)
            raise
        self._tasks.append(asyncio.create_task(self._keep_peers(), name="overlay tunnel peers"))
        if self._rotation.interval:
            self._tasks.append(asyncio.create_task(self._rotate(), name="overlay tunnel keys"))
        log.info("overlay tunnel %s up: %s, port %d", self.ifname, address, self.port)

    async def release(self, network_id: str) -> None:
        """``network_id`` no longer needs the tunnel; with the last such network the
        interface goes and this node's record offers no key.  Idempotent."""
        async with self._lock:
            if network_id not in self._users:
                return
            vni = self._vnis.get(network_id)
            if self.firewall is not None and vni is not None:
                await self.firewall.remove_encrypted_vni(network_id, vni)
                del self._vnis[network_id]
            self._users.discard(network_id)
            if self._users:
                return
            await self._stop()
            log.info("overlay tunnel %s down: no encrypted network left here", self.ifname)

    async def _stop(self) -> None:
        """The tasks stopped, the record cleared of the key, the interface down."""
        await self._stop_tasks()
        try:
            await self._publish({"WireguardKey": "", "WireguardNextKey": ""})
        finally:
            await self.wireguard.down(self.ifname)

    async def reap(self) -> None:
        """This daemon's WireGuard devices that nothing needs stopped (after a restart's
        data planes are back: the tunnel's own device is kept while a network holds it)."""
        for ifname in await self.wireguard.reap({self.ifname} if self._users else set()):
            log.info("stale WireGuard interface %s stopped", ifname)

    async def close(self) -> None:
        """Stop following the records and rotating; the interface stays (a restart adopts
        it).  Idempotent."""
        await self._stop_tasks()

    async def _stop_tasks(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        nodes, self._nodes = self._nodes, None
        if nodes is not None:
            await nodes.close()

    async def _announce(self) -> None:
        """This node's tunnel in its record: current and announced public keys, tunnel
        address, port."""
        assert self._keys is not None and self._address is not None
        current, following = self._keys.published
        await self._publish(
            {
                "WireguardKey": current,
                "WireguardNextKey": following,
                "TunnelAddress": str(self._address),
                "WireguardPort": self.port,
            }
        )

    # -- the peers --------------------------------------------------------------------------

    async def _follow_nodes(self) -> None:
        if self._nodes is not None:
            return
        nodes: Mirror[NodeInfo] = Mirror(self.store, NODE_PREFIX, node_of)
        nodes.listen(lambda _name, _old, _new: self._wake.set())
        await nodes.start()
        self._nodes = nodes

    def wanted(self, handshakes: dict[str, float] | None = None) -> list[NodeTunnel]:
        """The other nodes offering a tunnel, one per tunnel address (a second node
        claiming an address is ignored, with a warning, rather than stealing its traffic)."""
        if self._nodes is None:
            return []
        found: dict[IPv4Address, NodeTunnel] = {}
        for name, info in sorted(self._nodes.items.items()):
            tunnel = info.tunnel
            if name == self.node or tunnel is None or tunnel.address == self._address:
                continue
            if tunnel.address in found:
                log.warning("node %s claims tunnel address %s of another node: ignored", name, tunnel.address)
                continue
            found[tunnel.address] = tunnel
        return list(found.values())

    async def _reconcile(self) -> None:
        """Make the device's peers those the records ask for (nothing sent when equal)."""
        status = await self.wireguard.status(self.ifname)
        handshakes = {p.peer.public_key: p.last_handshake for p in status.peers}
        peers = desired_peers(self.wanted(), handshakes=handshakes)
        await self.wireguard.set_peers(self.ifname, peers)

    async def _keep_peers(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RECONCILE_S)
            self._wake.clear()
            try:
                async with self._lock:
                    if self._users:
                        await self._reconcile()
            except NotFound:
                await self._revive()
            except CnmError as exc:
                log.warning("overlay tunnel peers: %s (again in %gs)", exc, RECONCILE_S)

    async def _revive(self) -> None:
        """The device died under us (killed, crashed): start it again with the current key."""
        try:
            async with self._lock:
                if not self._users or self._spec is None or self._keys is None:
                    return
                log.warning("overlay tunnel %s is gone: starting it again", self.ifname)
                self._spec = replace(self._spec, private_key=self._keys.current.private)
                await self.wireguard.up(self._spec)
                await self._reconcile()
        except CnmError as exc:
            log.warning(
                "overlay tunnel %s not started again: %s (again in %gs)", self.ifname, exc, RECONCILE_S
            )

    # -- rotation ---------------------------------------------------------------------------

    async def _rotate(self) -> None:
        """Follow ``rotation_step``: each new state saved before it reaches the device or
        the record (a crash in between repeats the step from the file); a record that could
        not be written is written again before the next step."""
        unpublished = False  # a step the record does not show yet (etcd was unreachable)
        while True:
            try:
                async with self._lock:
                    assert self._keys is not None
                    if unpublished:
                        await self._announce()
                        unpublished = False
                    step, state, when = rotation_step(self._keys, self._rotation, self._clock())
                    if step is not Step.WAIT:
                        await asyncio.to_thread(save_keys, self.key_path, state)
                        if step is Step.SWITCH:
                            await self.wireguard.set_private_key(self.ifname, state.current.private)
                        self._keys = state
                        unpublished = True
                        await self._announce()
                        unpublished = False
                        log.info(
                            "overlay tunnel key %s: %s",
                            "announced" if step is Step.ANNOUNCE else "switched to",
                            (state.next or state.current).public,
                        )
                delay = when - self._clock()
            except CnmError as exc:
                log.warning("overlay tunnel key rotation: %s (again in %gs)", exc, RETRY_S)
                delay = RETRY_S
            if math.isinf(delay):
                return
            await asyncio.sleep(max(0.0, delay))
