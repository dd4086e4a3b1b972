"""``GET /events``: the engine's event log in Docker's JSON shape, filtered, bounded by
``since``/``until``.

The past (the engine's ring) is written first, then live events as they happen.  With an
``until`` in the past the stream ends after the past; with one in the future it ends
then; without one it goes on until the client leaves.  Filters follow moby's
``daemon/events/filter.go``: ``type``, ``event`` and ``scope`` are exact; ``container``,
``network`` (and the other object kinds) are prefixes of the actor's id or name;
``image`` is exact on the image (with or without its tag); ``label`` is moby's
``MatchKVList`` on the attributes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from aiohttp import web

from cnm.api.context import Api
from cnm.api.filters import Filters
from cnm.api.hijack import stream_response, until_disconnected
from cnm.api.http import JSON_TYPE, dumps
from cnm.engine.events import CONTAINER, IMAGE, Event
from cnm.errors import InvalidArgument

ACCEPTED = (
    "config", "container", "daemon", "event", "image", "label", "network", "node", "plugin",
    "scope", "secret", "service", "type", "volume",
)  # fmt: skip
# object kinds whose filter is a prefix of the actor's id or of its name attribute
_BY_NAME = ("config", "container", "daemon", "network", "node", "plugin", "secret", "service", "volume")
# event filters that match by prefix (moby #25798: ``exec_start: sh -c ...``)
_FUZZY_EVENTS = {"health_status", "exec_create", "exec_start"}

_GO_DURATION = re.compile(r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|ms|s|m|h))+")
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)")
_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def message(event: Event) -> dict[str, Any]:
    """moby's ``events.Message``, with the deprecated ``status``/``id``/``from`` that
    container and image events still carry."""
    out: dict[str, Any] = {}
    if event.type in (CONTAINER, IMAGE):
        out["status"] = event.action
        out["id"] = event.actor_id
        if event.type == CONTAINER and event.attributes.get("image"):
            out["from"] = event.attributes["image"]
    out["Type"] = event.type
    out["Action"] = event.action
    out["Actor"] = {"ID": event.actor_id, "Attributes": dict(event.attributes)}
    out["scope"] = "local"
    out["time"] = event.time_nano // 1_000_000_000
    out["timeNano"] = event.time_nano
    return out


def _fuzzy(filters: Filters, key: str, *sources: str) -> bool:
    values = filters.values(key)
    return not values or any(s.startswith(v) for v in values for s in sources)


def _strip_tag(ref: str) -> str:
    name, sep, tag = ref.rpartition(":")
    return name if sep and "/" not in tag else ref


def matcher(filters: Filters) -> Callable[[Event], bool]:
    """moby's ``Filter.Include`` as a predicate over engine events."""

    def include(event: Event) -> bool:
        attrs = event.attributes
        if filters.values("event") and _FUZZY_EVENTS & set(filters.values("event")):
            if not _fuzzy(filters, "event", event.action):
                return False
        elif not filters.exact("event", event.action):
            return False
        if not filters.exact("type", event.type) or not filters.exact("scope", "local"):
            return False
        name = attrs.get("name", "")
        if not all(_fuzzy(filters, key, event.actor_id, name) for key in _BY_NAME if key in filters):
            return False
        if "image" in filters:
            image = attrs.get("name" if event.type == IMAGE else "image", "")
            candidates = {event.actor_id, image, _strip_tag(event.actor_id), _strip_tag(image)}
            if not any(filters.exact("image", c) for c in candidates):
                return False
        return filters.match_kv("label", attrs)

    return include


def parse_time(raw: str, now_ns: int) -> int:
    """A ``since``/``until`` value -> ns since the epoch.  What the docker CLI sends
    (moby's ``ParseTimestamps``: ``seconds[.fraction]``), and for callers without a CLI
    what ``timetypes.GetTimestamp`` accepts: a Go duration before now (``10m``, ``1h30m``)
    or an RFC 3339 date/time (no zone: the daemon's local time)."""
    text = raw.strip()
    m = re.fullmatch(r"(-?\d+)(?:\.(\d*))?", text)
    if m is not None:
        fraction = (m[2] or "")[:9].ljust(9, "0")
        sign = -1 if m[1].startswith("-") else 1
        return int(m[1]) * 1_000_000_000 + sign * int(fraction)
    if _GO_DURATION.fullmatch(text):
        ns = sum(int(float(n) * _NS[u]) for n, u in _DURATION_PART.findall(text))
        return now_ns - (-ns if text.startswith("-") else ns)
    m = re.fullmatch(r"([^.]+?)(?:\.(\d{1,9}))?([Zz]|[+-]\d\d:\d\d)?", text)
    try:
        if m is None or "-" not in m[1]:
            raise ValueError(text)
        moment = datetime.fromisoformat(m[1] + (m[3] or "").replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f"failed to parse value as time or duration: {raw!r}") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # naive: local time, as Docker reads it
    return int(moment.timestamp()) * 1_000_000_000 + int((m[2] or "0").ljust(9, "0"))


def _query_time(request: web.Request, key: str, now_ns: int) -> int | None:
    raw = request.query.get(key, "")
    return parse_time(raw, now_ns) if raw else None


async def events(request: web.Request) -> web.StreamResponse:
    """Docker's ``GET /events`` (see the module docstring)."""
    api = Api.of(request)
    filters = Filters.parse(request.query.get("filters"), ACCEPTED)
    now = time.time_ns()
    since, until = _query_time(request, "since", now), _query_time(request, "until", now)
    if since is not None and until is not None and until < since:
        raise InvalidArgument(
            f"`since` time ({request.query['since']}) cannot be after `until` time ({request.query['until']})"
        )
    sub = api.controller.events.subscribe(since, until, matcher(filters))
    try:
        response, sink = await stream_response(request, JSON_TYPE)
        for event in sub.past:
            if not await sink.write(dumps(message(event))):
                return response
        if until is not None and until <= now:
            return response

        async def pump() -> None:
            while (event := await sub.next()) is not None:
                if not await sink.write(dumps(message(event))):
                    return

        task = asyncio.ensure_future(pump())
        gone = asyncio.ensure_future(until_disconnected(request))
        timeout = None if until is None else max(0.0, (until - time.time_ns()) / 1e9)
        try:
            await asyncio.wait({task, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (task, gone):
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending
        return response
    finally:
        sub.close()


def routes() -> list[tuple[str, str, object]]:
    return [("GET", "/events", events)]
