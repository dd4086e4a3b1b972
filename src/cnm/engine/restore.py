"""Restore after a daemon (re)start (live-restore): the store says what should exist, the
kernel and runc say what does, and this module makes them agree.

- ``upgrade_records``: records of an older cnm completed once (the primary network in
  ``config.networks``);
- ``containers``: what runc runs that the store does not consider running is killed and
  deleted; containers still running are adopted (watcher, ports, names); those that died
  while cnmd was away are finished; every sandbox, endpoint and namespace that no running
  container owns is removed;
- ``orphan_addresses``: pools and addresses IPAM holds for records that do not exist;
- ``drivers``: each driver makes the kernel match its networks and endpoints.

Restart policies resume afterwards (``Exits.resume_restarts``), once networks are in place.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Mapping
from dataclasses import replace

from cnm.engine.endpoint import Endpoint
from cnm.engine.exits import UNKNOWN_EXIT, Exits
from cnm.engine.lookup import find_network
from cnm.engine.runs import Runs
from cnm.engine.sandbox import Sandbox
from cnm.engine.services import Services, now_rfc3339
from cnm.errors import CnmError, NotFound
from cnm.model.container import EXITED
from cnm.model.endpoint import EndpointRequest
from cnm.runtime.api import RunState

log = logging.getLogger("cnm.engine")


class Restore:
    def __init__(self, svc: Services, runs: Runs, exits: Exits) -> None:
        self._svc = svc
        self._state = svc.state
        self._runs = runs
        self._exits = exits
        self._listing: asyncio.Future[dict[str, RunState]] | None = None

    def list_runc(self, listing: Awaitable[dict[str, RunState]] | None = None) -> None:
        """Start the one listing of runc's state that ``containers`` reads (or take
        ``listing``, ``runtime.states()`` started by the caller): a ``runc list`` of 1,000
        containers takes a good part of a second, in a process of its own, so it runs
        while the records load (call first; ``containers`` awaits it)."""
        if self._listing is None:
            self._listing = asyncio.ensure_future(listing or self._svc.runtime.states())

    def cancel(self) -> None:
        """The start failed before ``containers``: no listing left behind."""
        listing, self._listing = self._listing, None
        if listing is not None and not listing.cancel() and not listing.cancelled():
            listing.exception()  # done already: its failure, if any, is not news now

    async def upgrade_records(self) -> None:
        """Records written before ``config.networks`` held the primary network imply it by
        ``network_mode``: write it in, once, so that they start where they did."""
        for container in list(self._state.containers.values()):
            config = container.config
            if config.networks_complete:
                continue
            networks = dict(config.networks)
            mode = config.network_mode.network
            if mode:
                try:
                    primary = find_network(self._state, mode).name
                except NotFound:
                    primary = mode
                if not any(k == primary or k == mode for k in networks):
                    networks = {primary: EndpointRequest(), **networks}
                networks = {(primary if k == mode else k): v for k, v in networks.items()}
            upgraded = replace(config, networks=networks, networks_complete=True)
            await self._state.commit(put=[replace(container, config=upgraded)])

    async def containers(self) -> None:
        """Adopt the containers still running, finish those that died, remove what no
        running container owns (see the module's docstring)."""
        svc = self._svc
        # the DNS sockets of the sandboxes the store says run are opened while runc lists
        # (those found dead are closed unused)
        svc.naming.prepare(
            [
                s
                for s in self._state.sandboxes.values()
                if (c := self._state.containers.get(s.container_id)) and c.running
            ]
        )
        try:
            await self._adopt()
        finally:
            svc.naming.discard_prepared()

    async def _adopt(self) -> None:
        svc = self._svc
        # ONE listing of runc's state for every container: a runc call per container
        # would make a restart with 1,000 containers take seconds
        self.list_runc()
        assert self._listing is not None
        try:
            runc = await self._listing
        finally:
            self._listing = None
        await self._reap_unrecorded(runc)
        adopted: list[Sandbox] = []
        for container in list(self._state.containers.values()):
            if not container.running:
                continue
            known = runc.get(container.id)
            pid = known.pid if known is not None and known.running else 0
            if pid and pid == container.state.pid:
                self._exits.watch(container.id, self._runs.new(container.id, pid))
                sandbox = Sandbox.of(svc, container)
                if sandbox is not None:
                    await sandbox.restore(listen=False)
                    adopted.append(sandbox)
                else:
                    for ep in self._state.endpoints_of_container(container.id):
                        await Endpoint.of(svc, ep).restore()
                continue
            log.info("container %s died while cnmd was down", container.name)
            errors = await self._exits.teardown(container)
            state = replace(
                container.state,
                status=EXITED,
                paused=False,
                pid=0,
                exit_code=UNKNOWN_EXIT,
                finished_at=now_rfc3339(),
            )
            await self._state.commit(put=[replace(container, state=state, sandbox_id="")])
            for err in errors:
                log.warning("reconcile of %s: %s", container.name, err)
        # their DNS listeners in one trip through the namespaces, once their names are
        # published (a thread per sandbox would cost a restart with 1,000 of them seconds)
        failed = await svc.naming.listen([sandbox.record for sandbox in adopted])
        for sandbox in adopted:
            if sandbox.record.id in failed:
                log.warning("restoring names of %s: %s", sandbox.container.name, failed[sandbox.record.id])
        live = {c.id for c in self._state.containers.values() if c.running}
        for orphan in [s for s in self._state.sandboxes.values() if s.container_id not in live]:
            for ep in self._state.endpoints_of_container(orphan.container_id):
                await Endpoint.of(svc, ep).remove(orphan)
            if orphan.key:
                await svc.kernel.delete_netns(orphan.key)
            await self._state.commit(delete=[orphan])
        for ep in [e for e in self._state.endpoints.values() if e.container_id not in live]:
            await Endpoint.of(svc, ep).remove(None)
        keys = {s.key for s in self._state.sandboxes.values()}
        for entry in os.listdir(svc.netns_dir):
            path = os.path.join(svc.netns_dir, entry)
            if path not in keys:
                log.info("removing stale netns %s", path)
                await svc.kernel.delete_netns(path)

    async def _reap_unrecorded(self, runc: Mapping[str, RunState]) -> None:
        """Reconcile with runc's own list (every container under cnmd's runc root): one the
        store does not mark running -- a start that cnmd died in the middle of, after
        ``runc run`` went ahead -- is killed and deleted (its cgroup and rootfs mount go
        too), and its directories as well when the store does not know it at all.

        Killed, not adopted: the start never reported success and the network it was given
        (sandbox, endpoints) was never recorded, so it is removed as an orphan in this same
        restore; the store's view decides what runs, as in Docker's live-restore, where a
        task the daemon does not consider running is not brought back."""
        runtime = self._svc.runtime
        for cid, entry in runc.items():
            container = self._state.containers.get(cid)
            if container is not None and container.running:
                continue  # running per the store: checked against runc by ``containers``
            log.warning(
                "runc has container %s (%s, pid %s) that cnm does not consider running: killing and deleting it",
                cid[:12],
                entry.status or "?",
                entry.pid,
            )
            try:
                await runtime.cleanup(cid)  # runc delete --force: SIGKILL, state, cgroup
                if container is None:
                    await runtime.remove(cid)
            except CnmError as exc:
                log.error("removing container %s left by a crash: %s", cid[:12], exc)

    async def orphan_addresses(self) -> None:
        """Pools whose network record is missing and addresses whose owner endpoint no
        longer exists (a crash between IPAM and the record) go back.  Only this node's
        own (local) IPAM is swept: the pools of global networks are shared by every
        host of the cluster, and one node cannot tell another's allocation from an
        orphan."""
        ipam = self._svc.ipam
        for network_id in sorted(set(ipam.pools()) | set(ipam.pools6())):
            if network_id not in self._state.networks:
                log.info("releasing orphan pool of network %s", network_id[:12])
                await ipam.release_pool(network_id)
        live = set(self._state.endpoints)
        for network_id, network in self._state.networks.items():
            if network.scope == "global":
                # the cluster's pool: the other hosts' endpoints own addresses in it that
                # this node's records never name
                continue
            for address, owner in ipam.owners(network_id).items():
                if owner in live or owner == "gateway" or owner.startswith("aux:"):
                    continue
                log.info("releasing orphan address %s of network %s", address, network_id[:12])
                await ipam.release_address(network_id, address)

    async def drivers(self) -> None:
        """Each driver makes the kernel match the records of its networks and endpoints."""
        networks = list(self._state.networks.values())
        drivers = self._svc.drivers
        for driver in {net.driver for net in networks} | set(drivers):
            mine = [n for n in networks if n.driver == driver]
            ids = {n.id for n in mine}
            eps = [e for e in self._state.endpoints.values() if e.network_id in ids]
            await drivers[driver].restore(mine, eps)
