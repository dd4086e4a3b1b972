"""Image routes: ``docker import`` (``POST /images/create?fromSrc=-``), ``docker load``
(``POST /images/load``), ``docker tag``, list, inspect, remove.  Pulling from a registry and
``docker save`` are not something cnm does: both are refused with what to do instead."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import tempfile

from aiohttp import web

from cnm.api.context import Api
from cnm.api.filters import Filters
from cnm.api.http import dumps, json_response, query_bool
from cnm.api.schemas_image import image_delete_json, image_inspect_json, image_summary_json, load_stream_json
from cnm.errors import Forbidden, InvalidArgument, NotFound
from cnm.model.container import Image

_LIST_FILTERS = ("reference", "dangling", "label")
_CHUNK = 1 << 20


def _reference(repo: str, tag: str) -> str:
    if not repo:
        raise InvalidArgument("an imported image needs a name: repo=NAME[:TAG]")
    last = repo.rsplit("/", 1)[-1]
    if tag:
        if ":" in last:
            raise InvalidArgument(f"invalid reference {repo!r} with a separate tag {tag!r}")
        return f"{repo}:{tag}"
    return repo


async def _save_body(request: web.Request, directory: str) -> str:
    """Stream the request body into a temp file under ``directory``; returns its path."""
    os.makedirs(directory, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="import-", suffix=".tar", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.content.iter_chunked(_CHUNK):
                await asyncio.to_thread(out.write, chunk)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return path


async def create_image(request: web.Request) -> web.Response:
    api = Api.of(request)
    if request.query.get("fromImage"):
        name = request.query["fromImage"]
        tag = request.query.get("tag", "")
        ref = f"{name}:{tag}" if tag and ":" not in name.rsplit("/", 1)[-1] else name
        for prefix in ("docker.io/library/", "docker.io/"):  # the CLI sends qualified names
            ref = ref.removeprefix(prefix)
        raise NotFound(
            f"pull access denied for {ref}: cnm does not pull images from registries; "
            f"bring the image from a machine that has it: docker save {ref} > image.tar, "
            f"then cnm load -i image.tar (or docker export CONTAINER > rootfs.tar, then "
            f"cnm image import rootfs.tar {ref})"
        )
    source = request.query.get("fromSrc", "")
    if source != "-":
        raise InvalidArgument("only fromSrc=- (the tar as the request body) is supported by cnm")
    reference = _reference(request.query.get("repo", ""), request.query.get("tag", ""))
    path = await _save_body(request, api.tmp_dir)
    try:
        image = await api.controller.import_image(reference, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return web.Response(body=dumps({"status": image.id}), headers={"Content-Type": "application/json"})


def _reference_match(img: Image, patterns: list[str]) -> bool:
    for pattern in patterns:
        for tag in img.repo_tags:
            name = tag.rsplit(":", 1)[0] if ":" in tag.rsplit("/", 1)[-1] else tag
            if fnmatch.fnmatchcase(tag, pattern) or fnmatch.fnmatchcase(name, pattern):
                return True
    return False


async def list_images(request: web.Request) -> web.Response:
    api = Api.of(request)
    f = Filters.parse(request.query.get("filters"), _LIST_FILTERS)
    dangling = f.bool_value("dangling")
    out = []
    for img in api.controller.images():
        if f.values("reference") and not _reference_match(img, f.values("reference")):
            continue
        if dangling is not None and dangling != (not img.repo_tags):
            continue
        if f.values("label") and not f.match_kv("label", img.labels):
            continue
        out.append(image_summary_json(img))
    return json_response(out)


async def inspect_image(request: web.Request) -> web.Response:
    return json_response(
        image_inspect_json(Api.of(request).controller.find_image(request.match_info["name"]))
    )


async def remove_image(request: web.Request) -> web.Response:
    api = Api.of(request)
    img = await api.controller.remove_image(request.match_info["name"], force=query_bool(request, "force"))
    return json_response(image_delete_json(img))


async def load_images(request: web.Request) -> web.Response:
    """``docker load``: the body is a ``docker save`` archive (optionally compressed)."""
    api = Api.of(request)
    path = await _save_body(request, api.tmp_dir)
    try:
        loaded = await api.controller.load_images(path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    body = b"".join(dumps(m) for m in load_stream_json(loaded))  # one JSON message a line
    return web.Response(body=body, headers={"Content-Type": "application/json"})


async def tag_image(request: web.Request) -> web.Response:
    """``docker tag SOURCE TARGET``: the target arrives as ``repo`` and ``tag``."""
    repo, tag = request.query.get("repo", ""), request.query.get("tag", "")
    if not repo:
        raise InvalidArgument("invalid reference format: repository name must have at least one component")
    await Api.of(request).controller.tag_image(request.match_info["name"], _reference(repo, tag))
    return web.Response(status=201)


async def save_images(request: web.Request) -> web.Response:
    raise Forbidden(
        "cnm does not save images to archives; to carry a container's filesystem elsewhere, "
        "export it: cnm export -o FILE CONTAINER (then cnm image import FILE NAME)"
    )


def routes() -> list[tuple[str, str, object]]:
    return [
        ("POST", "/images/create", create_image),
        ("POST", "/images/load", load_images),
        ("GET", "/images/get", save_images),
        ("GET", "/images/{name:.+}/get", save_images),
        ("POST", "/images/{name:.+}/tag", tag_image),
        ("GET", "/images/json", list_images),
        ("GET", "/images/{name:.+}/json", inspect_image),
        ("DELETE", "/images/{name:.+}", remove_image),
    ]
