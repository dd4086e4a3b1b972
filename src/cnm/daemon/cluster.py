"""cnmd in a cluster (``--cluster-store etcd://…``): the shared etcd store and this
daemon's node record in it.

At start cnmd connects (a clear error, naming the endpoints, if no member answers) and
writes its node record ``node/<node name>`` attached to a lease that it refreshes every
third of its TTL; when cnmd dies without a word, etcd removes the key once the lease runs
out, so the other daemons see it gone (a watch on ``node/``).  At shutdown the lease is
revoked: the key goes at once.  Without the flag none of this exists.

The record (``NodeRecord`` fields, Docker-style keys): the node's name, the daemon's id,
its advertise address (the underlay address other hosts send VXLAN to) and, while the
node runs an encrypted overlay's tunnel, its WireGuard public key (``WireguardKey``, empty
otherwise; ``WireguardNextKey`` while a rotation is announced), ``TunnelAddress`` and
``WireguardPort`` (``update``: the overlay's tunnel writes them; a record announced again
after a lost lease carries them).  A node name is one live daemon's: a second
daemon taking a name whose record is alive under another daemon id is refused at start;
the same daemon (its data root) restarting before its old lease ran out takes its record
back.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import ipaddress
import logging
import os
import socket
import struct
import time
from typing import Any

from cnm.errors import CnmError, Conflict, InvalidArgument, NotFound, Unavailable
from cnm.store.api import StaleRevision
from cnm.store.etcd import EtcdStore, TlsFiles

log = logging.getLogger("cnm.daemon.cluster")

PRESENCE_TTL = 15.0  # seconds a dead daemon stays listed
NODE_PREFIX = "node/"
SIOCGIFADDR = 0x8915  # linux/sockios.h: an interface's (first) IPv4 address


def interface_address(ifname: str) -> str:
    """The first IPv4 address of interface ``ifname`` in this network namespace;
    InvalidArgument naming the interface when it is missing or has none."""
    request = struct.pack("256s", ifname.encode()[:15])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            answer = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, request)
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                raise InvalidArgument(f"invalid --cluster-advertise: no interface {ifname!r}") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise InvalidArgument(
                    f"invalid --cluster-advertise: interface {ifname} has no IPv4 address"
                ) from None
            raise InvalidArgument(
                f"invalid --cluster-advertise: interface {ifname}: {exc.strerror}"
            ) from None
    return socket.inet_ntoa(answer[20:24])


def _is_local(address: str) -> bool:
    """Whether ``address`` is one of this network namespace's (a socket can bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
    return True


def _route_source(endpoint: str) -> str:
    """The source address the kernel picks to reach ``endpoint`` (``HOST:PORT``): a UDP
    ``connect`` sends nothing."""
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((host, int(port)))
        except OSError as exc:
            raise InvalidArgument(
                f"cannot find this host's address towards the cluster store {endpoint} "
                f"({exc.strerror}): give --cluster-advertise IP|IFACE"
            ) from None
        address: str = sock.getsockname()[0]
    return address


def resolve_advertise(value: str, endpoints: tuple[str, ...]) -> str:
    """``--cluster-advertise`` as an IPv4 address of this host: an address as given (it
    must be one of this host's), an interface's first IPv4 address, or, when not given,
    the address this host reaches the first cluster-store member from."""
    if not value:
        return _route_source(endpoints[0])
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return interface_address(value)
    if not _is_local(value):
        raise InvalidArgument(f"invalid --cluster-advertise: {value} is not an address of this host")
    return value


class ClusterMembership:
    """This daemon's connection to the cluster store and its lease-backed node record."""

    def __init__(
        self,
        endpoints: tuple[str, ...],
        daemon_id: str,
        *,
        node_name: str,
        address: str,
        tls: TlsFiles | None = None,
        version: str = "",
        ttl: float = PRESENCE_TTL,
    ) -> None:
        self.store = EtcdStore(endpoints, tls=tls)
        self.daemon_id = daemon_id
        self.node_name = node_name
        self.address = address
        self.key = NODE_PREFIX + node_name
        self.ttl = ttl
        self._doc: dict[str, Any] = {
            "Name": node_name,
            "ID": daemon_id,
            "Address": address,
            "WireguardKey": "",
            "Hostname": socket.gethostname(),
            "Pid": os.getpid(),
            "Version": version,
            "Started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self._lease = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def lease(self) -> int:
        """The lease this daemon's node record (and whatever lives only while it does)
        is put on; 0 before ``start``."""
        return self._lease

    def describe(self) -> str:
        """``etcd://h:p,…``, as ``/info`` shows it (``ClusterStore``)."""
        return self.store.describe()

    async def start(self) -> None:
        """Connect and announce this daemon; Unavailable (closing the store) if the
        cluster does not answer, Conflict if another live daemon has the node name."""
        try:
            await self.store.connect()
            await self._announce()
        except Unavailable as exc:
            await self.store.close()
            raise Unavailable(f"cannot join --cluster-store {self.describe()}: {exc}") from exc
        except BaseException:
            await self.store.close()
            raise
        self._task = asyncio.create_task(self._keep_alive(), name="cluster presence")
        log.info("joined cluster store %s as %s", self.describe(), self.key)

    async def _announce(self) -> None:
        """Take ``node/<name>`` on a new lease: Conflict when another live daemon holds the
        name; this daemon's own record (a restart within the old lease) is taken back."""
        lease = await self.store.grant(self.ttl)
        try:
            await self._claim(lease)
        except BaseException:
            with contextlib.suppress(CnmError):
                await self.store.revoke(lease)
            raise
        self._lease = lease

    async def _claim(self, lease: int) -> None:
        for _attempt in range(8):
            current = await self.store.get(self.key)
            if current is not None and current.doc.get("ID") != self.daemon_id:
                other = current.doc
                raise Conflict(
                    f"node name {self.node_name!r} is taken by another live cnmd in the cluster "
                    f"(daemon {other.get('ID', '?')}, pid {other.get('Pid', '?')} on host "
                    f"{other.get('Hostname', '?')}, address {other.get('Address', '?')}): "
                    "give this daemon another --node-name"
                )
            try:
                await self.store.put(
                    self.key, self._doc, revision=current.revision if current else 0, lease=lease
                )
            except StaleRevision:
                continue  # it changed under us: look again
            # (our own record from before a restart is now on the new lease; what else the
            # old lease holds goes when it runs out)
            return
        raise Unavailable(f"could not take node name {self.node_name!r}: its record kept changing")

    async def update(self, **fields: Any) -> None:
        """Change fields of the node record (``WireguardKey`` …) and write it again."""
        self._doc.update(fields)
        if self._lease:
            await self.store.put(self.key, self._doc, lease=self._lease)

    async def _keep_alive(self) -> None:
        """Refresh the lease; when it was lost (etcd unreachable longer than the TTL),
        announce again with a new one."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.store.refresh(self._lease)
            except NotFound:
                log.warning("cluster presence lease expired; announcing %s again", self.key)
                try:
                    await self._announce()
                except Conflict as exc:
                    log.error("cluster presence lost: %s", exc)
                except CnmError as exc:
                    log.warning("cluster presence not announced again: %s", exc)
            except CnmError as exc:
                log.warning("cluster presence not refreshed: %s", exc)

    async def close(self) -> None:
        """Stop refreshing, remove the presence key (revoke its lease), close the store."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._lease:
            try:
                await self.store.revoke(self._lease)
            except Unavailable as exc:  # the key goes when the lease runs out
                log.warning("cluster presence not removed: %s", exc)
            self._lease = 0
        await self.store.close()
