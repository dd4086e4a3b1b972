"""The engine's event log: what changed, in order, for ``GET /events``.

One ``Events`` per controller.  The engine calls it right after a change is recorded
(never the API layer), so an event is never reported for something that did not happen.
It keeps the last ``capacity`` events in a ring (Docker keeps 1024) so ``since`` reaches
back after the fact, and hands each new event to every live subscription.

Promises: events are kept and delivered in emission order, with non-decreasing
``time_nano``; a subscription sees exactly the ring's matching events up to the moment it
was taken, then every later one, with no gap and no duplicate; a subscriber that falls
``capacity`` events behind is dropped (its stream ends) rather than holding memory.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cnm.model.container import Container
from cnm.model.network import NetworkRecord

CAPACITY = 1024  # moby's eventsLimit

CONTAINER = "container"
NETWORK = "network"
IMAGE = "image"


@dataclass(frozen=True, slots=True)
class Event:
    """One change: Docker's ``events.Message`` without its JSON shape."""

    type: str
    action: str
    actor_id: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    time_nano: int = 0


Match = Callable[[Event], bool]


def _everything(event: Event) -> bool:
    return True


class Subscription:
    """Past events (from the ring) and then live ones, filtered by ``match`` and bounded
    by ``since``/``until`` (ns since the epoch, inclusive; None: unbounded)."""

    def __init__(self, owner: Events, past: list[Event], match: Match, until: int | None, limit: int) -> None:
        self.past = past
        self._owner = owner
        self._match = match
        self._until = until
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=limit)
        self.dropped = False

    def _offer(self, event: Event) -> None:
        if self._until is not None and event.time_nano > self._until:
            return
        if not self._match(event):
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped = True
            self.close()

    async def next(self) -> Event | None:
        """The next live event; None once the subscription is closed or dropped."""
        return await self._queue.get()

    def close(self) -> None:
        """Stop receiving; a reader waiting in ``next`` gets None.  Idempotent."""
        if self not in self._owner._subscribers:
            return
        self._owner._subscribers.discard(self)
        if self._queue.full():
            self._queue.get_nowait()  # room for the end marker (the subscriber is dropped anyway)
        self._queue.put_nowait(None)


class Events:
    """The ring and its subscribers (see the module docstring)."""

    def __init__(self, capacity: int = CAPACITY, clock: Callable[[], int] = time.time_ns) -> None:
        self._ring: collections.deque[Event] = collections.deque(maxlen=capacity)
        self._subscribers: set[Subscription] = set()
        self._capacity = capacity
        self._clock = clock

    def emit(self, type_: str, action: str, actor_id: str, attributes: Mapping[str, str]) -> Event:
        """Record an event now and hand it to the subscribers."""
        stamp = self._clock()
        if self._ring and stamp < self._ring[-1].time_nano:
            stamp = self._ring[-1].time_nano  # a clock stepped back must not reorder the log
        event = Event(type_, action, actor_id, dict(attributes), stamp)
        self._ring.append(event)
        for sub in list(self._subscribers):
            sub._offer(event)
        return event

    def container(self, action: str, container: Container, **extra: str) -> Event:
        """A container event: its labels, then ``image`` and ``name`` (moby's order, so
        a label cannot hide them), then the action's own attributes (``exitCode``...)."""
        attributes = {**container.config.labels, **extra}
        attributes["image"] = container.config.image
        attributes["name"] = container.name
        return self.emit(CONTAINER, action, container.id, attributes)

    def network(self, action: str, network: NetworkRecord, container_id: str = "") -> Event:
        """A network event; ``connect``/``disconnect`` name the container."""
        attributes = {"name": network.name, "type": network.driver}
        if container_id:
            attributes["container"] = container_id
        return self.emit(NETWORK, action, network.id, attributes)

    def image(self, action: str, image_id: str, name: str) -> Event:
        return self.emit(IMAGE, action, image_id, {"name": name})

    def recent(
        self, since: int | None = None, until: int | None = None, match: Match = _everything
    ) -> list[Event]:
        """The ring's events within [since, until] that ``match``, oldest first."""
        return [
            e
            for e in self._ring
            if (since is None or e.time_nano >= since)
            and (until is None or e.time_nano <= until)
            and match(e)
        ]

    def subscribe(
        self, since: int | None = None, until: int | None = None, match: Match = _everything
    ) -> Subscription:
        """The ring's matching events as ``past`` (none when neither ``since`` nor ``until``
        is given: moby's ``SubscribeTopic``), and every later matching event live.  Taken
        in one step (no await), so nothing falls between the two."""
        past = self.recent(since, until, match) if since is not None or until is not None else []
        sub = Subscription(self, past, match, until, self._capacity)
        self._subscribers.add(sub)
        return sub


__all__ = ["CAPACITY", "CONTAINER", "Event", "Events", "IMAGE", "NETWORK", "Subscription"]
