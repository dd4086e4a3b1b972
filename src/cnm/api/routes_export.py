"""``GET /containers/{id}/export`` (``docker export``): the container's root filesystem as a
tar stream, as the container sees it."""

from __future__ import annotations

import contextlib
import logging

from aiohttp import web

from cnm.api.context import Api
from cnm.errors import CnmError

log = logging.getLogger("cnm.api")


async def export_container(request: web.Request) -> web.StreamResponse:
    """An unknown container is a 404 before anything is sent; the first chunk is read
    before the 200 goes out, so an export that cannot start fails with a status too.  A
    failure after that cannot be a status any more: it is logged and the connection
    dropped, so the chunked stream visibly lacks its end (a client never takes a cut tar
    for a whole one)."""
    chunks = Api.of(request).controller.export_container(request.match_info["id"])
    async with contextlib.aclosing(chunks):
        first = await anext(chunks, b"")
        response = web.StreamResponse(headers={"Content-Type": "application/x-tar"})
        await response.prepare(request)
        try:
            if first:
                await response.write(first)
            async for chunk in chunks:
                await response.write(chunk)
        except ConnectionError:
            return response  # the client went away: nothing to report
        except (CnmError, OSError) as exc:
            log.error("GET %s: %s (connection dropped)", request.path, exc)
            if request.transport is not None:
                request.transport.abort()
            return response  # aiohttp's closing write_eof meets the closed transport: fine
        await response.write_eof()
    return response


def routes() -> list[tuple[str, str, object]]:
    return [("GET", "/containers/{id}/export", export_container)]
