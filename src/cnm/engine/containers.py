"""Containers as records: lookup, create, rename, and legacy links.

``Containers`` owns what changes a container's record without touching a running
process: ``create`` (Docker's create-time checks, the network requests as Docker keeps
them), ``rename`` (endpoints and DNS names follow at once) and ``rm --link``.  Names are
checked and recorded under one names lock (innermost: ``rename`` takes it inside its
container lock), since the store's commit may yield between the two.  The rest of the
lifecycle lives by job: ``starts.py``, ``stopping.py``, ``exits.py`` (exit watching and
restart policies), ``connect.py``, ``restore.py``; the sandbox is ``sandbox.py``.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace

from cnm.engine.guard import current, hold_container
from cnm.engine.lookup import find_container, find_network
from cnm.engine.names import random_name
from cnm.engine.naming import parse_link, validate_names
from cnm.engine.network import Network
from cnm.engine.sandbox import Sandbox, name_netns, unname_netns
from cnm.engine.services import Services, now_rfc3339
from cnm.errors import Conflict, InvalidArgument, NotFound
from cnm.model.container import FROM_MOUNTS, Container, ContainerConfig, Image, command_of
from cnm.model.endpoint import EndpointRequest
from cnm.model.network import NetworkRecord
from cnm.model.values import new_id, parse_container_name


class Containers:
    def __init__(self, svc: Services) -> None:
        self._svc = svc
        self._state = svc.state
        self._names = asyncio.Lock()  # a name is checked and taken in one piece

    def find(self, ref: str) -> Container:
        return find_container(self._state, ref)

    def running(self, container_id: str) -> Container | None:
        """The container if it is running, else None."""
        container = self._state.containers.get(container_id)
        return container if container is not None and container.running else None

    # -- create ---------------------------------------------------------------------------

    async def create(
        self, name: str | None, config: ContainerConfig, image: Image
    ) -> tuple[Container, list[str]]:
        async with self._names:
            return await self._create(name, config, image)

    async def _create(
        self, name: str | None, config: ContainerConfig, image: Image
    ) -> tuple[Container, list[str]]:
        warnings: list[str] = []
        taken = {c.name for c in self._state.containers.values()}
        if name:
            name = parse_container_name(name)
            if name in taken:
                other = next(c for c in self._state.containers.values() if c.name == name)
                raise Conflict(
                    f'Conflict. The container name "/{name}" is already in use by container "{other.id}". '
                    "You have to remove (or rename) that container to be able to reuse that name."
                )
        else:
            name = random_name(taken)
        validate_names(config)
        for link in config.links:
            target = parse_link(link)[0]
            if target not in taken:
                raise InvalidArgument(f"could not get container for {target}: No such container: {target}")
        if config.network_mode.is_host and config.port_bindings:
            warnings.append("Published ports are discarded when using host network mode")
        if not command_of(config, image):
            raise InvalidArgument("No command specified")
        config = replace(config, networks=self._create_networks(config), networks_complete=True)
        for m in config.mounts:
            if m.type == "bind" and m.origin == FROM_MOUNTS and not os.path.exists(m.source):
                raise InvalidArgument(
                    f'invalid mount config for type "bind": bind source path does not exist: {m.source}'
                )
        container = Container(
            id=new_id(),
            name=name,
            created=now_rfc3339(),
            # the image's exposed ports are the container's too (inspect shows them)
            config=replace(
                config,
                image_id=image.id,
                exposed_ports=tuple(dict.fromkeys((*image.exposed_ports, *config.exposed_ports))),
            ),
        )
        await self._state.commit(put=[container])
        self._svc.events.container("create", container)
        return container, warnings

    def _create_networks(self, config: ContainerConfig) -> dict[str, EndpointRequest]:
        """Docker's create-time network checks (unknown network, ``--ip`` on a predefined
        network or outside the subnet, ``host``/``none`` with others) and the requests as
        Docker keeps them in ``NetworkSettings.Networks``: keyed by network name, the
        primary network (``network_mode``) included."""
        mode = config.network_mode
        if mode.container:
            self.find(mode.container)  # Docker: "No such container: X" at create
            return {}
        out: dict[str, EndpointRequest] = {}
        primary = self._create_network(mode.network)
        for key, request in config.networks.items():
            network = self._create_network(key)
            if network.name in out:
                raise InvalidArgument(f'network "{network.name}" is specified multiple times')
            out[network.name] = request
        out = {primary.name: out.pop(primary.name, EndpointRequest()), **out}
        for name, request in out.items():
            network = find_network(self._state, name)
            if network.name in ("host", "none") and len(out) > 1:
                raise InvalidArgument(
                    "container cannot be connected to multiple networks with one of the networks in "
                    f"{'host' if network.name == 'host' else 'private (none)'} mode"
                )
            Network(self._svc, network).check_request(request)
        return out

    def _create_network(self, ref: str) -> NetworkRecord:
        """A network named by a create request.  Unknown is a 400, not a 404: a 404 from
        create makes Docker's CLI believe the image is missing and try to pull it, which
        would hide this message behind a pull error."""
        try:
            return find_network(self._state, ref)
        except NotFound as exc:
            raise InvalidArgument(str(exc)) from None

    # -- rename / legacy links ------------------------------------------------------------

    async def rename(self, ref: str, new_name: str) -> None:
        """Docker's ``rename``: a new unique name; the endpoints' names and the DNS records
        follow at once (the next query answers to the new name only).  409 when the name
        is taken, 400 when it is malformed or unchanged."""
        container = self.find(ref)
        name = parse_container_name(new_name)
        async with hold_container(self._svc, container.id):
            container = current(self._svc, container.id, ref)
            if name == container.name:
                raise InvalidArgument("Renaming a container with the same name as its current name")
            async with self._names:
                other = next((c for c in self._state.containers.values() if c.name == name), None)
                if other is not None:
                    raise Conflict(
                        f'Conflict. The container name "/{name}" is already in use by container "{other.id}". '
                        "You have to remove (or rename) that container to be able to reuse that name."
                    )
                renamed = replace(container, name=name)
                endpoints = [
                    replace(ep, name=name) for ep in self._state.endpoints_of_container(container.id)
                ]
                await self._state.commit(put=[renamed, *endpoints])
            self._svc.events.container("rename", renamed, oldName="/" + container.name)
            sandbox = Sandbox.of(self._svc, renamed)
            if renamed.running and sandbox is not None and sandbox.record.key:
                await self._svc.naming.publish(renamed, sandbox.record, endpoints)
                unname_netns(self._svc, sandbox.record.key, container.name)  # --netns-names follows
                name_netns(self._svc, sandbox.record.key, name)

    async def remove_link(self, name: str) -> None:
        """Docker's ``rm --link /web/db``: container ``web`` loses its legacy link alias
        ``db`` (its hosts entry at once; the link's variables from its next start on).
        Neither container is removed."""
        full = name if name.startswith("/") else "/" + name
        parent_name, _, alias = full.rpartition("/")
        if not parent_name:
            raise Conflict("Conflict, cannot remove the default link name of the container")
        try:
            parent = self.find(parent_name)
        except NotFound:
            raise NotFound(f"No such container: {full}") from None
        async with hold_container(self._svc, parent.id):
            parent = current(self._svc, parent.id, parent_name)
            kept = tuple(link for link in parent.config.links if parse_link(link)[1] != alias)
            if len(kept) == len(parent.config.links):
                raise NotFound(f"No such container: {full}")
            updated = replace(parent, config=replace(parent.config, links=kept))
            await self._state.commit(put=[updated])
            sandbox = Sandbox.of(self._svc, updated)
            if updated.running and sandbox is not None:
                await sandbox.refresh_names(updated)
