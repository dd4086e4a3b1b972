"""The locks a change to one container takes, in ``engine/locks.py``'s order.

Every change to a container holds, from its checks to its record, the shared locks of the
networks it has or will have endpoints on, then the container's own lock (which is its
sandbox's: a sandbox changes only with its container).  The sets are read from the
records before the locks are taken, so ``hold_container`` asks again once it holds them and
starts over with the larger sets if a concurrent change grew them; the caller re-reads
its records inside (``current``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from cnm.engine.lookup import find_container, find_network
from cnm.engine.services import Services
from cnm.errors import CnmError, NotFound
from cnm.model.container import Container


@asynccontextmanager
async def hold_container(
    svc: Services,
    container_id: str,
    *,
    joins: Callable[[], Iterable[str]] = tuple,
    others: Callable[[], Iterable[str]] = tuple,
) -> AsyncIterator[None]:
    """Hold the shared locks of the networks the container has endpoints on and of those
    ``joins()`` names, then the locks of the container and of the containers ``others()``
    names."""
    networks: set[str] = set()
    containers = {container_id}

    def wanted() -> tuple[set[str], set[str]]:
        eps = {ep.network_id for ep in svc.state.endpoints_of_container(container_id)}
        return eps | set(joins()), containers | set(others())

    while True:
        more_networks, more_containers = wanted()
        networks |= more_networks
        containers |= more_containers
        async with svc.locks.hold(networks=networks, containers=containers):
            now_networks, now_containers = wanted()
            if now_networks <= networks and now_containers <= containers:
                yield
                return


def current(svc: Services, container_id: str, ref: str) -> Container:
    """The container's record once its lock is held: it may have been removed while the
    change waited for the lock."""
    container = svc.state.containers.get(container_id)
    if container is None:
        raise NotFound(f"No such container: {ref}")
    return container


def network_ids(svc: Services, *refs: str) -> set[str]:
    """The ids of the networks ``refs`` name now (those that exist)."""
    ids = set()
    for ref in refs:
        try:
            ids.add(find_network(svc.state, ref).id)
        except CnmError:
            pass
    return ids


def start_networks(svc: Services, container_id: str) -> set[str]:
    """The networks a start of the container would join."""
    container = svc.state.containers.get(container_id)
    if container is None or container.config.network_mode.container:
        return set()
    return network_ids(svc, container.config.network_mode.network, *container.config.networks)


def netns_owner(svc: Services, container_id: str) -> set[str]:
    """The container whose sandbox a ``container:`` mode start joins."""
    container = svc.state.containers.get(container_id)
    other = container.config.network_mode.container if container is not None else ""
    if not other:
        return set()
    try:
        return {find_container(svc.state, other).id}
    except CnmError:
        return set()


def hold_start(svc: Services, container_id: str) -> AbstractAsyncContextManager[None]:
    """The locks of a start: the container, the networks it joins, the sandbox it shares."""
    return hold_container(
        svc,
        container_id,
        joins=lambda: start_networks(svc, container_id),
        others=lambda: netns_owner(svc, container_id),
    )
