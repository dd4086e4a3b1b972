"""Docker's lookup rules for a reference to a network or a container."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from cnm.engine.state import State
from cnm.errors import InvalidArgument, NotFound
from cnm.model.container import Container
from cnm.model.network import NetworkRecord

T = TypeVar("T")


def find(
    items: Iterable[T],
    ref: str,
    *,
    name_of: Callable[[T], str],
    id_of: Callable[[T], str],
    not_found: str,
    kind: str,
) -> T:
    """Full id, then exact name, then unique id prefix (Docker's order).  Several exact
    names or several prefix matches are ambiguous (InvalidArgument); nothing is NotFound
    with the message ``not_found``."""
    items = list(items)
    if not ref:
        raise NotFound(not_found)
    for item in items:
        if id_of(item) == ref:
            return item
    by_name = [item for item in items if name_of(item) == ref]
    if len(by_name) == 1:
        return by_name[0]
    if len(by_name) > 1:
        raise InvalidArgument(f"{kind} {ref} is ambiguous ({len(by_name)} matches found based on name)")
    by_prefix = [item for item in items if id_of(item).startswith(ref.lower())]
    if len(by_prefix) == 1:
        return by_prefix[0]
    if len(by_prefix) > 1:
        raise InvalidArgument(
            f"{kind} {ref} is ambiguous ({len(by_prefix)} matches found based on ID prefix)"
        )
    raise NotFound(not_found)


def find_network(state: State, ref: str) -> NetworkRecord:
    """The network ``ref`` names (``default`` is ``bridge``); NotFound otherwise."""
    if ref == "default":
        ref = "bridge"
    return find(
        state.networks.values(),
        ref,
        name_of=lambda n: n.name,
        id_of=lambda n: n.id,
        not_found=f"network {ref} not found",
        kind="network",
    )


def network_by_name(state: State, name: str) -> NetworkRecord | None:
    return next((net for net in state.networks.values() if net.name == name), None)


def find_container(state: State, ref: str) -> Container:
    """The container ``ref`` names (a leading ``/`` is allowed); NotFound otherwise."""
    exact = state.containers.get(ref)  # a full id: the API's usual case, O(1)
    if exact is not None:
        return exact
    name = ref[1:] if ref.startswith("/") else ref
    return find(
        state.containers.values(),
        name,
        name_of=lambda c: c.name,
        id_of=lambda c: c.id,
        not_found=f"No such container: {ref}",
        kind="container",
    )
