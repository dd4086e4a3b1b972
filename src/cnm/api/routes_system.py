"""System routes: ``/_ping``, ``/version``, ``/info``, the 404s for object types cnm does
not have (``docker inspect`` falls through them), and Docker's 503s for every swarm-only
path: cnm is a node outside any swarm, and says so the way Docker does."""

from __future__ import annotations

from aiohttp import web

from cnm.api.context import Api
from cnm.api.errors import error_response
from cnm.api.http import json_response
from cnm.api.schemas_system import NOT_IN_SWARM, NOT_SWARM_MANAGER, info_json, version_json

_PING_HEADERS = {
    "Cache-Control": "no-cache, no-store, must-revalidate",
    "Pragma": "no-cache",
    "Builder-Version": "2",
    "Swarm": "inactive",
}


async def ping(request: web.Request) -> web.Response:
    body = b"" if request.method == "HEAD" else b"OK"
    return web.Response(
        body=body,
        headers={**_PING_HEADERS, "Content-Type": "text/plain; charset=utf-8"},
    )


async def version(request: web.Request) -> web.Response:
    return json_response(version_json(Api.of(request).version_info))


async def info(request: web.Request) -> web.Response:
    api = Api.of(request)
    return json_response(info_json(api.controller.info(), api.version_info))


async def swarm_leave(request: web.Request) -> web.Response:
    return error_response(503, NOT_IN_SWARM)


async def not_swarm_manager(request: web.Request) -> web.Response:
    return error_response(503, NOT_SWARM_MANAGER)


# The swarm-only object types of the Engine API: each path and all under it, any method.
_SWARM_ONLY = ("/swarm", "/services", "/nodes", "/tasks", "/secrets", "/configs")


async def no_volume(request: web.Request) -> web.Response:
    return error_response(404, f"get {request.match_info['name']}: no such volume")


async def no_plugin(request: web.Request) -> web.Response:
    return error_response(404, f'plugin "{request.match_info["name"]}" not found')


def routes() -> list[tuple[str, str, object]]:
    return [
        ("GET", "/version", version),
        ("GET", "/info", info),
        ("POST", "/swarm/leave", swarm_leave),
        *[("*", path, not_swarm_manager) for path in _SWARM_ONLY],
        *[("*", path + "/{tail:.*}", not_swarm_manager) for path in _SWARM_ONLY],
        ("GET", "/volumes/{name}", no_volume),
        ("GET", "/plugins/{name:.+}/json", no_plugin),
    ]
