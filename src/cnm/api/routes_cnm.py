"""cnm's own routes, outside Docker's paths (``/cnm/v1/…``): what ``cnm explain`` and ``cnm
network map`` show.  Docker's tools never call them; the JSON is cnm's (snake_case field
names of the engine's values), built here as every wire shape is.

- ``GET /cnm/v1/containers/{id}/explain``: a container's networking, fact by fact, each
  with the command that shows it (``engine/explain.py``).
- ``GET /cnm/v1/map[?network=NAME…][&format=json|text|dot|svg]``: the networks as the
  kernel wires them (``engine/topology.py``); text, dot and svg come rendered.
- ``POST /cnm/v1/trace?source=SRC&destination=DST[:PORT][/PROTO][&live=1][&family=6]``: a packet's
  path (``engine/trace.py``); a POST because ``live`` sends a probe and installs, for its
  duration, a marking table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from cnm.api.context import Api
from cnm.api.http import json_response
from cnm.engine import topology
from cnm.engine.explain import Explanation
from cnm.errors import InvalidArgument
from cnm.kernel.facts import Neighbour, Route

PREFIX = "/cnm/v1"


def plain(value: Any) -> Any:
    """An engine value as JSON-ready data: dataclasses as objects of their fields, mappings
    as objects, tuples as lists; routes and neighbours also carry their ``ip`` text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (Route, Neighbour)):
            out["text"] = value.text
        return out
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def explain_json(explanation: Explanation) -> dict[str, Any]:
    out: dict[str, Any] = plain(explanation)
    return out


async def explain(request: web.Request) -> web.Response:
    api = Api.of(request)
    return json_response(explain_json(await api.controller.explain_container(request.match_info["id"])))


async def network_map(request: web.Request) -> web.Response:
    api = Api.of(request)
    fmt = request.query.get("format", "json")
    if fmt not in topology.FORMATS:
        raise InvalidArgument(f"invalid map format {fmt!r}: expected one of {', '.join(topology.FORMATS)}")
    networks = [n for n in request.query.getall("network", []) if n]
    topo = await api.controller.topology(networks)
    if fmt == "json":
        return json_response(plain(topo))
    if fmt == "text":
        return web.Response(text=topology.render_text(topo), content_type="text/plain")
    dot = topology.render_dot(topo)
    if fmt == "dot":
        return web.Response(text=dot, content_type="text/vnd.graphviz")
    return web.Response(text=await topology.render_svg(dot), content_type="image/svg+xml")


_TRUE, _FALSE = ("1", "true", "True"), ("", "0", "false", "False")


async def trace(request: web.Request) -> web.Response:
    api = Api.of(request)
    source = request.query.get("source", "")
    destination = request.query.get("destination", "")
    if not source or not destination:
        raise InvalidArgument("trace needs both source and destination")
    live = request.query.get("live", "")
    if live not in _TRUE + _FALSE:
        raise InvalidArgument(f"invalid live {live!r}: expected 1 or 0")
    family = request.query.get("family", "")
    if family not in ("", "4", "6"):
        raise InvalidArgument(f"invalid family {family!r}: expected 4 or 6")
    traced = await api.controller.trace(source, destination, live in _TRUE, int(family) if family else None)
    return json_response(plain(traced))


def routes() -> list[tuple[str, str, object]]:
    return [
        ("GET", PREFIX + "/containers/{id}/explain", explain),
        ("GET", PREFIX + "/map", network_map),
        ("POST", PREFIX + "/trace", trace),
    ]
