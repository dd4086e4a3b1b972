"""A container's network mode (Docker's ``HostConfig.NetworkMode``), typed.

The API parses the text once (``NetworkMode.parse``); everything below works with the
value.  It is a small tagged union: ``kind`` says which of the five modes it is and
``ref`` carries the one argument two of them have:

=============  ===========================  =============================================
kind           text                         the container ...
=============  ===========================  =============================================
``bridge``     ``bridge``, ``default``, ""  gets its own sandbox on the default bridge
``network``    a network's name or id       gets its own sandbox on that network
``host``       ``host``                     runs in the host's namespace (no sandbox netns)
``none``       ``none``                     gets its own sandbox with only ``lo``
``container``  ``container:<name|id>``      shares another container's sandbox
=============  ===========================  =============================================

Stored as ``{"kind": ..., "ref": ...}``; records written before the type existed hold the
text, which ``from_text`` reads (the store's codec calls it).
"""

from __future__ import annotations

from dataclasses import dataclass

from cnm.errors import InvalidArgument

BRIDGE = "bridge"
NETWORK = "network"
HOST = "host"
NONE = "none"
CONTAINER = "container"
KINDS = (BRIDGE, NETWORK, HOST, NONE, CONTAINER)

CONTAINER_PREFIX = "container:"
ERR_CONTAINER_FORMAT = "invalid network mode: invalid container format container:<name|id>"


@dataclass(frozen=True, slots=True)
class NetworkMode:
    """One network mode; build it with ``parse`` or the named constructors."""

    kind: str = BRIDGE
    ref: str = ""  # CONTAINER: the other container's name or id; NETWORK: the network's

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidArgument(f"invalid network mode kind {self.kind!r}")
        if (self.kind in (CONTAINER, NETWORK)) != bool(self.ref):
            raise InvalidArgument(f"network mode {self.kind!r} with ref {self.ref!r}")

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> NetworkMode:
        """Docker's text: ``""``/``default``/``bridge``, ``host``, ``none``,
        ``container:<name|id>``, or a user network's name or id.  ``container:`` without a
        name is InvalidArgument (moby's message)."""
        if text in ("", "default", BRIDGE):
            return cls(BRIDGE)
        if text in (HOST, NONE):
            return cls(text)
        if text.startswith(CONTAINER_PREFIX):
            ref = text[len(CONTAINER_PREFIX) :]
            if not ref:
                raise InvalidArgument(ERR_CONTAINER_FORMAT)
            return cls(CONTAINER, ref)
        return cls(NETWORK, text)

    @classmethod
    def from_text(cls, text: str) -> NetworkMode:
        """A mode as records written before this type stored it (the same text)."""
        return cls.parse(text)

    # -- reading --------------------------------------------------------------------------

    def __str__(self) -> str:
        """Docker's text (``HostConfig.NetworkMode``)."""
        if self.kind == CONTAINER:
            return CONTAINER_PREFIX + self.ref
        return self.ref if self.kind == NETWORK else self.kind

    @property
    def is_default_bridge(self) -> bool:
        return self.kind == BRIDGE

    @property
    def is_host(self) -> bool:
        return self.kind == HOST

    @property
    def is_none(self) -> bool:
        return self.kind == NONE

    @property
    def container(self) -> str:
        """The container whose sandbox this mode shares; empty for every other mode."""
        return self.ref if self.kind == CONTAINER else ""

    @property
    def network(self) -> str:
        """The network this mode joins first (its primary network: ``bridge``, ``host``,
        ``none`` or the user's); empty in ``container:`` mode, which joins none."""
        return "" if self.kind == CONTAINER else str(self)

    @property
    def own_sandbox(self) -> bool:
        """Whether a start makes the container a network namespace of its own."""
        return self.kind in (BRIDGE, NETWORK, NONE)


DEFAULT = NetworkMode(BRIDGE)
