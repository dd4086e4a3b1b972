"""``GET /containers/{id}/export`` (``docker export``): the container's root filesystem as a
tar stream, as the container sees it."""

from __future__ import annotations

import contextlib

from aiohttp import web

from cnm.api.context import Api


async def export_container(request: web.Request) -> web.StreamResponse:
    """An unknown container is a 404 before anything is sent; the first chunk is read
    before the 200 goes out, so an export that cannot start fails with a status too.  A
    failure after that aborts the connection (the tar is visibly cut short)."""
    chunks = Api.of(request).controller.export_container(request.match_info["id"])
    async with contextlib.aclosing(chunks):
        first = await anext(chunks, b"")
        response = web.StreamResponse(headers={"Content-Type": "application/x-tar"})
        await response.prepare(request)
        if first:
            await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
    return response


def routes() -> list[tuple[str, str, object]]:
    return [("GET", "/containers/{id}/export", export_container)]
