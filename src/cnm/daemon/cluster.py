"""cnmd in a cluster (``--cluster-store etcd://…``): the shared etcd store and this
daemon's presence in it.

At start cnmd connects (a clear error, naming the endpoints, if no member answers) and
writes ``node/<daemon id>`` attached to a lease that it refreshes every third of its TTL;
when cnmd dies without a word, etcd removes the key once the lease runs out, so the other
daemons see it gone (a watch on ``node/``).  At shutdown the lease is revoked: the key
goes at once.  Without the flag none of this exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time

from cnm.errors import CnmError, NotFound, Unavailable
from cnm.store.etcd import EtcdStore, TlsFiles

log = logging.getLogger("cnm.daemon.cluster")

PRESENCE_TTL = 15.0  # seconds a dead daemon stays listed
NODE_PREFIX = "node/"


class ClusterMembership:
    """This daemon's connection to the cluster store and its lease-backed presence key."""

    def __init__(
        self,
        endpoints: tuple[str, ...],
        daemon_id: str,
        *,
        tls: TlsFiles | None = None,
        version: str = "",
        ttl: float = PRESENCE_TTL,
    ) -> None:
        self.store = EtcdStore(endpoints, tls=tls)
        self.daemon_id = daemon_id
        self.key = NODE_PREFIX + daemon_id
        self.ttl = ttl
        self._doc = {
            "ID": daemon_id,
            "Hostname": socket.gethostname(),
            "Pid": os.getpid(),
            "Version": version,
            "Started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self._lease = 0
        self._task: asyncio.Task[None] | None = None

    def describe(self) -> str:
        """``etcd://h:p,…``, as ``/info`` shows it (``ClusterStore``)."""
        return self.store.describe()

    async def start(self) -> None:
        """Connect and announce this daemon; Unavailable (closing the store) if the
        cluster does not answer."""
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
        self._lease = await self.store.grant(self.ttl)
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
                with contextlib.suppress(CnmError):
                    await self._announce()
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
