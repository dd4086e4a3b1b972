"""The Docker Engine API application: routes (versioned and not), middlewares, headers,
and the unix-socket server the daemon runs.

``make_app`` builds the aiohttp application over a ``Controller``; ``serve_unix`` binds it
to a unix socket with the requested mode and returns the runner for the daemon to clean
up.  Every route is served both as ``/v1.XX/<path>`` and as ``/<path>`` (moby does the
same); versions outside 1.24..1.51 are refused with Docker's messages.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

from cnm.api import (
    routes_cnm,
    routes_containers,
    routes_events,
    routes_exec,
    routes_export,
    routes_images,
    routes_networks,
    routes_system,
    ui,
)
from cnm.api.context import API_KEY, Api
from cnm.api.errors import Handler, error_middleware
from cnm.api.schemas_system import API_VERSION, MIN_API_VERSION, VersionInfo
from cnm.engine.controller import Controller
from cnm.errors import InvalidArgument

log = logging.getLogger("cnm.api")

_VERSION_PREFIX = "/v{version:[0-9][0-9.]*}"


def _version_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        raise InvalidArgument(f"invalid API version {text!r}") from None


@web.middleware
async def version_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """moby's version middleware: refuse a URL version below the minimum or above ours."""
    wanted = request.match_info.get("version")
    if wanted:
        if _version_tuple(wanted) < _version_tuple(MIN_API_VERSION):
            raise InvalidArgument(
                f"client version {wanted} is too old. Minimum supported API version is "
                f"{MIN_API_VERSION}, please upgrade your client to a newer version"
            )
        if _version_tuple(wanted) > _version_tuple(API_VERSION):
            raise InvalidArgument(
                f"client version {wanted} is too new. Maximum supported API version is {API_VERSION}"
            )
    return await handler(request)


def _header_hook(version_info: VersionInfo) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    server = f"cnm/{version_info.version} (linux)"
    experimental = "true" if version_info.experimental else "false"

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        # A signal, not a middleware: streaming responses send their headers early.
        response.headers["Server"] = server
        response.headers["Api-Version"] = API_VERSION
        response.headers["Ostype"] = "linux"
        response.headers["Docker-Experimental"] = experimental

    return add_headers


def _add_routes(app: web.Application, table: Iterable[tuple[str, str, object]]) -> None:
    for method, path, handler in table:
        for prefix in (_VERSION_PREFIX, ""):
            app.router.add_route(method, prefix + path, handler)  # type: ignore[arg-type]


def make_app(
    controller: Controller,
    *,
    version_info: VersionInfo,
    tmp_dir: str | None = None,
    ui_url: str = "",
) -> web.Application:
    """The API over ``controller``.  ``tmp_dir`` receives uploads (``docker import``
    tars) while they are imported; the daemon passes a directory under its exec root.
    ``ui_url``: the live page's URL (``cnmd --ui-addr``), handed to ``cnm ui``."""
    app = web.Application(middlewares=[error_middleware, version_middleware], client_max_size=16 << 20)
    app[API_KEY] = Api(
        controller=controller,
        version_info=version_info,
        tmp_dir=tmp_dir or os.path.join(os.environ.get("TMPDIR", "/tmp"), "cnm-uploads"),
        ui_url=ui_url,
    )
    app.on_response_prepare.append(_header_hook(version_info))
    for prefix in (_VERSION_PREFIX, ""):
        app.router.add_route("GET", prefix + "/_ping", routes_system.ping)
        app.router.add_route("HEAD", prefix + "/_ping", routes_system.ping)
    for module in (
        routes_system,
        routes_networks,
        routes_containers,
        routes_exec,
        routes_images,
        routes_export,
        routes_events,
    ):
        _add_routes(app, module.routes())
    for method, path, handler in [
        *routes_cnm.routes(),
        *ui.routes(),
    ]:  # cnm's own: outside Docker's versioned paths
        app.router.add_route(method, path, handler)  # type: ignore[arg-type]
    return app


async def serve_unix(app: web.Application, path: str, mode: int = 0o660) -> web.AppRunner:
    """Serve ``app`` on the unix socket ``path`` (a stale socket there is replaced) with
    permissions ``mode``.  The caller owns the returned runner: ``await runner.cleanup()``."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    # Short shutdown: streaming handlers (attach, wait, logs -f) would otherwise hold it up.
    runner = web.AppRunner(app, access_log=logging.getLogger("cnm.api.access"), shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.UnixSite(runner, path)
        await site.start()
        os.chmod(path, mode)
    except BaseException:
        await runner.cleanup()
        raise
    log.info("API listening on unix://%s", path)
    return runner
