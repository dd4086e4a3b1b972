"""Container routes: create, list, inspect, start/stop/kill/restart, remove, wait, logs,
attach (hijacked), resize.  Handlers parse, call the controller, render."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from cnm.api.context import Api
from cnm.api.filters import Filters
from cnm.api.hijack import (
    STDERR,
    STDOUT,
    SYSERR,
    Sink,
    frame,
    hijack,
    media_type,
    parse_detach_keys,
    pump_input,
    stream_response,
    until_disconnected,
    wants_upgrade,
)
from cnm.api.http import dumps, json_response, query_bool, query_int, read_json
from cnm.api.routes_networks import label_matches, parse_until
from cnm.api.schemas_container import (
    NetworkView,
    container_inspect_json,
    container_summary_json,
    network_keys,
    parse_container_create,
    parse_time,
    status_name,
)
from cnm.api.schemas_stats import stats_json, top_json
from cnm.engine.controller import ContainerPaths, ContainerSample
from cnm.errors import CnmError, Conflict, InvalidArgument, NotFound
from cnm.model.container import Container
from cnm.model.network import NetworkRecord
from cnm.model.values import parse_container_name
from cnm.runtime.logs import Record, rfc3339_nano
from cnm.runtime.output import Subscription

log = logging.getLogger("cnm.api")

_PS_FILTERS = ("name", "id", "status", "network", "label", "exited", "ancestor")
_STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")
_WAIT_CONDITIONS = ("not-running", "next-exit", "removed")
_PRUNE_FILTERS = ("label", "label!", "until")


def network_view(api: Api, c: Container) -> NetworkView:
    ctrl = api.controller

    def find(ref: str) -> NetworkRecord | None:
        try:
            return ctrl.find_network(ref)
        except (NotFound, InvalidArgument):
            return None

    endpoints = ctrl.container_endpoints(c.id) if c.running else []
    sandbox = ctrl.container_sandbox(c.id) if c.running else None
    return NetworkView(endpoints=endpoints, sandbox=sandbox, find_network=find)


def _paths(api: Api, c: Container) -> ContainerPaths | None:
    try:
        return api.controller.container_paths(c.id)
    except NotFound:
        return None


# -- create / list / inspect ------------------------------------------------------------------


async def create(request: web.Request) -> web.Response:
    api = Api.of(request)
    config, warnings = parse_container_create(await read_json(request))
    raw_name = request.query.get("name", "")
    name = parse_container_name(raw_name) if raw_name else None
    container, more = await api.controller.create_container(name, config)
    return json_response({"Id": container.id, "Warnings": [*warnings, *more]}, status=201)


def _ps_match(c: Container, view: NetworkView, f: Filters) -> bool:
    if not (f.match("name", "/" + c.name) and f.match("id", c.id) and f.match_kv("label", c.config.labels)):
        return False
    statuses = f.values("status")
    for s in statuses:
        if s not in _STATUSES:
            raise InvalidArgument(f"invalid filter 'status={s}'")
    if statuses and status_name(c) not in statuses:
        return False
    exited = f.values("exited")
    if exited:
        try:
            codes = {int(v) for v in exited}
        except ValueError:
            raise InvalidArgument(f"invalid filter 'exited={exited[0]}'") from None
        if c.state.status != "exited" or c.state.exit_code not in codes:
            return False
    ancestors = f.values("ancestor")
    if ancestors and not any(
        a in (c.config.image, c.config.image_id)
        or c.config.image_id.startswith(a if a.startswith("sha256:") else "sha256:" + a)
        for a in ancestors
    ):
        return False
    nets = f.values("network")
    if nets:
        keys = network_keys(c, view)
        if not any(v == name or (nid and nid.startswith(v)) for v in nets for name, nid in keys):
            return False
    return True


async def list_containers(request: web.Request) -> web.Response:
    api = Api.of(request)
    f = Filters.parse(request.query.get("filters"), _PS_FILTERS)
    show_all = query_bool(request, "all")
    limit = query_int(request, "limit", -1) or -1
    items: list[tuple[str, dict[str, Any]]] = []
    for c in api.controller.containers():
        live = c.running or c.state.status == "restarting"  # docker ps lists restarting ones too
        if not show_all and not live and not f.values("status") and not f.values("exited"):
            continue
        view = network_view(api, c)
        if _ps_match(c, view, f):
            items.append((c.created, container_summary_json(c, view)))
    items.sort(key=lambda item: item[0], reverse=True)  # newest first, as docker ps
    out = [item for _, item in items]
    return json_response(out[:limit] if limit > 0 else out)


async def inspect(request: web.Request) -> web.Response:
    api = Api.of(request)
    c = api.controller.find_container(request.match_info["id"])
    return json_response(container_inspect_json(c, network_view(api, c), _paths(api, c)))


# -- lifecycle --------------------------------------------------------------------------------


async def start(request: web.Request) -> web.Response:
    await Api.of(request).controller.start_container(request.match_info["id"])
    return web.Response(status=204)


async def stop(request: web.Request) -> web.Response:
    timeout = query_int(request, "t")
    signal = request.query.get("signal") or None
    await Api.of(request).controller.stop_container(request.match_info["id"], timeout, signal)
    return web.Response(status=204)


async def kill(request: web.Request) -> web.Response:
    signal = request.query.get("signal") or "SIGKILL"
    await Api.of(request).controller.kill_container(request.match_info["id"], signal)
    return web.Response(status=204)


async def rename(request: web.Request) -> web.Response:
    new_name = request.query.get("name", "")
    if not new_name:
        raise InvalidArgument("Neither old nor new names may be empty")
    await Api.of(request).controller.rename_container(request.match_info["id"], new_name)
    return web.Response(status=204)


async def restart(request: web.Request) -> web.Response:
    ctrl = Api.of(request).controller
    ref = request.match_info["id"]
    await ctrl.restart_container(ref, query_int(request, "t"), request.query.get("signal") or None)
    return web.Response(status=204)


async def remove(request: web.Request) -> web.Response:
    ref = request.match_info["name"]
    if query_bool(request, "link"):
        await Api.of(request).controller.remove_container_link(ref)
        return web.Response(status=204)
    await Api.of(request).controller.remove_container(ref, force=query_bool(request, "force"))
    return web.Response(status=204)


async def wait(request: web.Request) -> web.StreamResponse:
    """Headers are flushed at once (``docker run`` blocks on them before it sends
    ``start``); the status follows when the condition is met."""
    api = Api.of(request)
    c = api.controller.find_container(request.match_info["id"])
    condition = request.query.get("condition") or "not-running"
    if condition not in _WAIT_CONDITIONS:
        raise InvalidArgument(f'invalid condition: "{condition}"')
    response = web.StreamResponse(status=200)
    response.headers["Content-Type"] = "application/json"
    await response.prepare(request)
    waiter = asyncio.ensure_future(api.controller.wait_container(c.id, condition))
    gone = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not waiter.done():  # the client left (docker run -d does): stop waiting
        waiter.cancel()
        return response
    error: dict[str, str] | None = None
    try:
        code = waiter.result()
    except CnmError as exc:
        code, error = 255, {"Message": exc.message}
    with contextlib.suppress(ConnectionError, RuntimeError):
        await response.write(dumps({"StatusCode": code, "Error": error}))
    return response


async def pause(request: web.Request) -> web.Response:
    await Api.of(request).controller.pause_container(request.match_info["id"])
    return web.Response(status=204)


async def unpause(request: web.Request) -> web.Response:
    await Api.of(request).controller.unpause_container(request.match_info["id"])
    return web.Response(status=204)


async def prune(request: web.Request) -> web.Response:
    """Docker's ``container prune``: every container that is not running (nor restarting,
    which Docker counts as running), narrowed by ``until``/``label``/``label!``.  One that
    started meanwhile is skipped."""
    api = Api.of(request)
    f = Filters.parse(request.query.get("filters"), _PRUNE_FILTERS)
    now = datetime.now(UTC)
    until = [parse_until(v, now) for v in f.values("until")]
    deleted: list[str] = []
    reclaimed = 0
    for c in api.controller.containers():
        if c.running or c.state.status == "restarting" or not f.match_kv("label", c.config.labels):
            continue
        if any(label_matches(v, c.config.labels) for v in f.values("label!")):
            continue
        created = parse_time(c.created)
        if until and (created is None or not all(created < u for u in until)):
            continue
        size = api.controller.container_size(c.id)
        try:
            await api.controller.remove_container(c.id)
        except (Conflict, NotFound):
            continue
        deleted.append(c.id)
        reclaimed += size
    return json_response({"ContainersDeleted": deleted or None, "SpaceReclaimed": reclaimed})


async def top(request: web.Request) -> web.Response:
    ps_args = request.query.get("ps_args", "") or "-ef"
    titles, processes = await Api.of(request).controller.container_top(request.match_info["id"], ps_args)
    return json_response(top_json(titles, processes))


STATS_INTERVAL = 1.0  # seconds between two readings of a stream (moby's collector's)


async def stats(request: web.Request) -> web.StreamResponse:
    """Docker's ``GET /containers/{id}/stats``: a reading a second while ``stream`` (the
    default); with ``stream=false`` one reading, taken a second after a first one so
    that ``precpu_stats`` is filled (CPU % needs two), or at once with ``one-shot``."""
    api = Api.of(request)
    ref = request.match_info["id"]
    api.controller.find_container(ref)
    stream = query_bool(request, "stream", default=True)
    one_shot = query_bool(request, "one-shot")
    if one_shot and stream:
        raise InvalidArgument("cannot have stream=true and one-shot=true")
    previous: ContainerSample | None = None
    preread = ""
    if not stream:
        if not one_shot:
            previous, preread = await api.controller.container_stats(ref), _now()
            await asyncio.sleep(STATS_INTERVAL)
        sample = await api.controller.container_stats(ref)
        return json_response(stats_json(sample, _now(), previous, preread))
    response = web.StreamResponse(status=200)
    response.headers["Content-Type"] = "application/json"
    await response.prepare(request)
    while request.transport is not None and not request.transport.is_closing():
        try:
            sample = await api.controller.container_stats(ref)
        except NotFound:  # removed while streamed
            break
        read = _now()
        try:
            await response.write(dumps(stats_json(sample, read, previous, preread)))
        except (ConnectionError, RuntimeError):
            break
        previous, preread = sample, read
        await asyncio.sleep(STATS_INTERVAL)
    return response


def _now() -> str:
    return rfc3339_nano(time.time_ns())


# -- logs / attach ----------------------------------------------------------------------------


def _tail(request: web.Request) -> int | None:
    raw = request.query.get("tail", "all")
    if raw in ("", "all"):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidArgument(f"invalid value for tail: {raw!r}") from None
    return None if value < 0 else value


def _timestamp(request: web.Request, key: str) -> int | None:
    """``since``/``until`` as the CLI sends them (``timetypes.GetTimestamp``: seconds,
    optionally ``.nanoseconds``) -> ns since the epoch; None for 0 or absent."""
    raw = request.query.get(key, "")
    if raw in ("", "0"):
        return None
    m = re.fullmatch(r"(-?\d+)(?:\.(\d{1,9}))?", raw)
    if m is None:
        raise InvalidArgument(f"invalid value for {key}: {raw!r} (expected a unix timestamp)")
    ns = int(m[1]) * 1_000_000_000 + int((m[2] or "0").ljust(9, "0"))
    return ns if ns > 0 else None


def _log_line(record: Record, timestamps: bool) -> bytes:
    if timestamps:
        return rfc3339_nano(record.ns).encode() + b" " + record.data
    return record.data


async def logs(request: web.Request) -> web.StreamResponse:
    """Docker's ``GET /containers/{id}/logs``: the json-file records (stdout and stderr in
    the order they were written), framed unless the container has a tty; ``follow`` goes
    on with the current run until its output ends or the client leaves."""
    api = Api.of(request)
    stdout, stderr = query_bool(request, "stdout"), query_bool(request, "stderr")
    if not (stdout or stderr):
        raise InvalidArgument("Bad parameters: you must choose at least one stream")
    since, until = _timestamp(request, "since"), _timestamp(request, "until")
    timestamps = query_bool(request, "timestamps")
    c = api.controller.find_container(request.match_info["id"])
    follow, tail = query_bool(request, "follow"), _tail(request)
    records = api.controller.container_logs(
        c.id, stdout=stdout, stderr=stderr, follow=follow, tail=tail, since=since, until=until
    )
    multiplexed = not c.config.tty
    response, sink = await stream_response(request, media_type(c.config.tty))

    async def pump() -> None:
        async for record in records:
            line = _log_line(record, timestamps)
            if not await sink.write(frame(record.stream, line) if multiplexed else line):
                return

    task = asyncio.ensure_future(pump())
    gone = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("logs of %s: %s", c.name, task.exception())
    return response


async def attach(request: web.Request) -> web.StreamResponse:
    """``docker run``/``start -a`` attach before they start: the subscription is taken
    before the 101 goes out, so it is served by the run that follows and ends when that
    run's output ends -- never earlier (the container may be removed at once after,
    ``--rm``).  A running container's output is served from now on.  ``logs=1`` first
    replays the log.  The client's bytes go to the container's stdin; with a tty, the
    detach keys (default Ctrl-P Ctrl-Q) end the attach and leave the container running."""
    api = Api.of(request)
    c = api.controller.find_container(request.match_info["id"])
    want_out, want_err = query_bool(request, "stdout"), query_bool(request, "stderr")
    want_in, stream_on = query_bool(request, "stdin"), query_bool(request, "stream")
    detach_keys = parse_detach_keys(request.query.get("detachKeys")) if c.config.tty else b""
    replay = query_bool(request, "logs") and c.config.log_driver == "json-file"
    multiplexed = not c.config.tty
    wanted = {s for s, on in ((STDOUT, want_out), (STDERR, want_err)) if on}
    sub = api.controller.attach_output(c.id) if stream_on and wanted else None
    try:
        if not wants_upgrade(request):
            response, sink = await stream_response(request, media_type(c.config.tty))
            await _attach_output(api, c, sink, sub, wanted, replay, multiplexed)
            return response
        response, stream = await hijack(request, media_type(c.config.tty))
        detached = asyncio.Event()
        feeder: asyncio.Future[None] | None = None
        if want_in:
            stdin = api.controller.attach_stdin(c.id)
            feeder = asyncio.ensure_future(_feed_stdin(stream.reader, stdin, detach_keys, detached))
        try:
            ends: set[asyncio.Future[Any]] = {
                asyncio.ensure_future(stream.wait_lost()),
                asyncio.ensure_future(detached.wait()),
            }
            if sub is not None or replay:
                ends.add(
                    asyncio.ensure_future(_attach_output(api, c, stream, sub, wanted, replay, multiplexed))
                )
            elif feeder is not None:
                ends.add(feeder)
            try:
                await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in ends:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.gather(*ends, return_exceptions=True)
        except CnmError as exc:
            await stream.write((f"{exc.message}\r\n").encode() if not multiplexed else _sys_err(exc.message))
        finally:
            if feeder is not None:
                feeder.cancel()
        return response
    finally:
        if sub is not None:
            sub.close()


async def _attach_output(
    api: Api,
    c: Container,
    sink: Sink,
    sub: Subscription | None,
    wanted: set[int],
    replay: bool,
    multiplexed: bool,
) -> None:
    """The log so far (``replay``), then the subscription's chunks, to ``sink``."""
    if replay:
        async for record in api.controller.container_logs(
            c.id, stdout=STDOUT in wanted, stderr=STDERR in wanted, follow=False, tail=None
        ):
            if not await sink.write(frame(record.stream, record.data) if multiplexed else record.data):
                return
    if sub is None:
        return
    async for stream_id, data in sub:
        if stream_id in wanted and not await sink.write(frame(stream_id, data) if multiplexed else data):
            return


async def _feed_stdin(
    reader: asyncio.StreamReader,
    stdin: Awaitable[asyncio.StreamWriter | None],
    detach_keys: bytes,
    detached: asyncio.Event,
) -> None:
    """The client's bytes to the container's stdin (opened once it has started); the
    detach keys set ``detached`` instead of being sent."""
    dest = await stdin
    if await pump_input(reader, dest, detach_keys=detach_keys, close_dest=not detach_keys):
        detached.set()


async def resize(request: web.Request) -> web.Response:
    """The window size of a tty container's terminal (``h`` rows, ``w`` columns)."""
    api = Api.of(request)
    height, width = query_int(request, "h", 0) or 0, query_int(request, "w", 0) or 0
    if height < 0 or width < 0 or height > 65535 or width > 65535:
        raise InvalidArgument(f"invalid size: h={height} w={width}")
    c = api.controller.find_container(request.match_info["id"])
    if height and width:
        api.controller.resize_container_tty(c.id, height, width)
    return web.Response(status=200)


def _sys_err(message: str) -> bytes:
    return frame(SYSERR, (message + "\r\n").encode())


def routes() -> list[tuple[str, str, object]]:
    return [
        ("POST", "/containers/create", create),
        ("GET", "/containers/json", list_containers),
        ("GET", "/containers/{id}/json", inspect),
        ("POST", "/containers/{id}/start", start),
        ("POST", "/containers/{id}/stop", stop),
        ("POST", "/containers/{id}/kill", kill),
        ("POST", "/containers/{id}/rename", rename),
        ("POST", "/containers/{id}/restart", restart),
        ("POST", "/containers/{id}/wait", wait),
        ("GET", "/containers/{id}/logs", logs),
        ("POST", "/containers/{id}/attach", attach),
        ("POST", "/containers/{id}/resize", resize),
        ("POST", "/containers/{id}/pause", pause),
        ("POST", "/containers/{id}/unpause", unpause),
        ("POST", "/containers/prune", prune),
        ("GET", "/containers/{id}/top", top),
        ("GET", "/containers/{id}/stats", stats),
        ("DELETE", "/containers/{name:.+}", remove),
    ]
