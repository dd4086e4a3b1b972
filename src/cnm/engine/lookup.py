"""Docker's lookup rules for a reference to a network or a container."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from cnm.errors import InvalidArgument, NotFound

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
