"""Exec routes: create, start (hijacked, plain streaming, or detached), inspect, resize."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import web

from cnm.api.context import Api
from cnm.api.hijack import (
    STDERR,
    STDOUT,
    Sink,
    frame,
    hijack,
    media_type,
    pump_input,
    pump_output,
    stream_response,
    wants_upgrade,
)
from cnm.api.http import get_bool, get_str, get_str_list, json_response, query_int, read_json
from cnm.engine.info import ExecInfo
from cnm.errors import CnmError, InvalidArgument
from cnm.model.container import ExecSpec
from cnm.runtime.api import Process

log = logging.getLogger("cnm.api")

# After the process exits, output still buffered in the pipes gets this long to arrive
# (a background child may hold the pipe open forever; Docker does not wait for it either).
_OUTPUT_GRACE = 2.0

_background: set[asyncio.Task[Any]] = set()


def parse_exec_create(container_id: str, body: dict[str, Any]) -> ExecSpec:
    cmd = get_str_list(body, "Cmd")
    if not cmd:
        raise InvalidArgument("No exec command specified")
    return ExecSpec(
        container_id=container_id,
        cmd=tuple(cmd),
        env=tuple(get_str_list(body, "Env") or ()),
        workdir=get_str(body, "WorkingDir"),
        user=get_str(body, "User"),
        tty=get_bool(body, "Tty"),
        attach_stdin=get_bool(body, "AttachStdin"),
        attach_stdout=get_bool(body, "AttachStdout", True),
        attach_stderr=get_bool(body, "AttachStderr", True),
        privileged=get_bool(body, "Privileged"),
    )


def exec_info_json(info: ExecInfo) -> dict[str, Any]:
    spec = info.spec
    return {
        "ID": info.id,
        "Running": info.running,
        "ExitCode": info.exit_code,
        "ProcessConfig": {
            "tty": spec.tty,
            "entrypoint": spec.cmd[0] if spec.cmd else "",
            "arguments": list(spec.cmd[1:]),
            "privileged": spec.privileged,
            "user": spec.user,
        },
        "OpenStdin": spec.attach_stdin,
        "OpenStderr": spec.attach_stderr,
        "OpenStdout": spec.attach_stdout,
        "CanRemove": False,
        "ContainerID": info.container_id,
        "DetachKeys": "",
        "Pid": info.pid,
    }


async def create_exec(request: web.Request) -> web.Response:
    api = Api.of(request)
    container = api.controller.find_container(request.match_info["id"])
    spec = parse_exec_create(container.id, await read_json(request))
    exec_id = api.controller.create_exec(container.id, spec)
    return json_response({"Id": exec_id}, status=201)


async def inspect_exec(request: web.Request) -> web.Response:
    return json_response(exec_info_json(Api.of(request).controller.exec_info(request.match_info["id"])))


async def resize_exec(request: web.Request) -> web.Response:
    api = Api.of(request)
    exec_id = request.match_info["id"]
    api.controller.exec_info(exec_id)  # 404 for an unknown exec
    height, width = query_int(request, "h", 0), query_int(request, "w", 0)
    process = api.processes.get(exec_id)
    if process is not None and height and width:
        process.resize(height, width)
    return web.Response(status=200)


async def _drain(process: Process) -> None:
    """A detached exec: nobody reads its output, so read it to keep the pipes flowing."""
    with contextlib.suppress(Exception):
        await pump_output(_Discard(), [(STDOUT, process.stdout), (STDERR, process.stderr)], False)
        await process.wait()


class _Discard:
    async def write(self, data: bytes) -> bool:
        return True


async def _run_attached(
    sink: Sink, process: Process, reader: asyncio.StreamReader | None, spec: ExecSpec
) -> None:
    """Pump stdin -> process and output -> client until the process has exited."""
    feeder = (
        asyncio.ensure_future(pump_input(reader, process.stdin if spec.attach_stdin else None))
        if reader is not None
        else None
    )
    sources = [
        (STDOUT, process.stdout if spec.attach_stdout or spec.tty else None),
        (STDERR, process.stderr if spec.attach_stderr else None),
    ]
    output = asyncio.ensure_future(pump_output(sink, sources, multiplexed=not spec.tty))
    try:
        await process.wait()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(output), _OUTPUT_GRACE)
    finally:
        output.cancel()
        if feeder is not None:
            feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await output


async def start_exec(request: web.Request) -> web.StreamResponse:
    api = Api.of(request)
    exec_id = request.match_info["id"]
    info = api.controller.exec_info(exec_id)  # 404 before any hijack
    body = await read_json(request)
    spec = info.spec
    if get_bool(body, "Detach"):
        process = await api.controller.start_exec(exec_id)
        task = asyncio.get_running_loop().create_task(_drain(process))
        _background.add(task)
        task.add_done_callback(_background.discard)
        return web.Response(status=200)
    if wants_upgrade(request):
        response, stream = await hijack(request, media_type(spec.tty))
        sink: Sink = stream
        reader: asyncio.StreamReader | None = stream.reader
    else:
        response, sink = await stream_response(request, media_type(spec.tty))
        reader = None
    try:
        process = await api.controller.start_exec(exec_id)
    except CnmError as exc:  # as moby: after the hijack, the error goes into stdout
        text = f"{exc.message}\r\n".encode()
        await sink.write(text if spec.tty else frame(STDOUT, text))
        return response
    api.processes[exec_id] = process
    try:
        await _run_attached(sink, process, reader, spec)
    finally:
        api.processes.pop(exec_id, None)
    return response


def routes() -> list[tuple[str, str, object]]:
    return [
        ("POST", "/containers/{id}/exec", create_exec),
        ("POST", "/exec/{id}/start", start_exec),
        ("GET", "/exec/{id}/json", inspect_exec),
        ("POST", "/exec/{id}/resize", resize_exec),
    ]
