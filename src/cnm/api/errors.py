"""The one map from cnm's error categories to HTTP statuses, and the middleware that
renders every failure as Docker does: ``{"message": ...}``, ``application/json``, ``\\n``.

Mirrors moby's ``httpstatus.FromError``: NotFound 404, InvalidArgument 400, Conflict 409,
Forbidden 403, NotModified 304 (empty body), Unavailable 503, anything else 500.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from cnm.api.http import JSON_TYPE, dumps
from cnm.errors import (
    CnmError,
    Conflict,
    Forbidden,
    InvalidArgument,
    NotFound,
    NotModified,
    Unavailable,
)

log = logging.getLogger("cnm.api")

_STATUS: tuple[tuple[type[CnmError], int], ...] = (
    (NotFound, 404),
    (InvalidArgument, 400),
    (Conflict, 409),
    (Forbidden, 403),
    (NotModified, 304),
    (Unavailable, 503),
)


def status_of(exc: BaseException) -> int:
    """The HTTP status for ``exc``; 500 for anything cnm did not raise on purpose."""
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def error_response(status: int, message: str) -> web.Response:
    if status == 304:
        return web.Response(status=304)
    return web.Response(status=status, body=dumps({"message": message}), headers={"Content-Type": JSON_TYPE})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every exception into Docker's error body.  A failure after a streaming
    response was prepared cannot be rendered: it is logged and the connection closed."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status == 404:
            return error_response(404, "page not found")
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason.lower())
    except CnmError as exc:
        status = status_of(exc)
        if status >= 500:
            log.error("%s %s: %s", request.method, request.path, exc)
        return error_response(status, exc.message)
    except RecursionError:  # only input nested past what a parser can follow gets here
        log.warning("%s %s: input nested too deeply", request.method, request.path)
        return error_response(400, "invalid request: nested too deeply")
    except Exception as exc:  # the contract: unknown failures are a logged 500
        # A bug, never the client's fault: said so, with the details in cnmd's log rather
        # than a bare Python message the user cannot act on.
        log.exception("%s %s failed", request.method, request.path)
        return error_response(
            500, f"internal error in cnmd ({type(exc).__name__}: {exc}); the daemon's log has the details"
        )
