"""The live page (``cnmd --ui-addr IP:PORT``): the network map in a browser, kept current
by the event stream; a container's ``explain`` and a published port's path on a click.

It is an aiohttp application of its own on a loopback TCP address, apart from the Engine
API's socket: read-only (GET only, no Engine API path is served there) and every request,
the page's own scripts and streams included, carries the token ``new_token`` made at start
(``?token=``, compared in constant time; 403 without it).  The token is also kept in
``<exec-root>/ui-token`` (mode 0600) and the Engine API hands the page's URL to ``cnm ui``
(``GET /cnm/v1/ui``), so only those who may drive cnmd can open it.

Routes on the page's address:

- ``GET /``: the page (``static/index.html``; the token is written into its script URL);
  ``GET /ui.js``: its script.
- ``GET /map``: ``{"topology": …, "containers": …, "svg": …}``: the map's values (as
  ``/cnm/v1/map``'s JSON), every container (those on no drawn network too) and Graphviz's
  drawing ("" and a problem line when ``dot`` is missing).
- ``GET /explain/{id}``: ``/cnm/v1/containers/{id}/explain``'s JSON.
- ``GET /path/{id}?port=HOST_PORT/PROTO``: a published port's path from the world, as the
  trace engine walks it (``cnm trace world host:HOST_PORT/PROTO``, never ``--live``); when
  it cannot, why, and the DNAT elements ``explain`` found.
- ``GET /events``: server-sent events, one ``change`` per engine event that can change the
  map (``run``, ``network connect``, ``rm`` …); the page re-fetches ``/map`` on each.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from cnm.api.context import Api
from cnm.api.errors import Handler, error_middleware
from cnm.api.http import json_response
from cnm.api.routes_cnm import PREFIX, explain_json, plain
from cnm.engine import topology
from cnm.engine.controller import Controller
from cnm.engine.events import CONTAINER, NETWORK, Event
from cnm.engine.explain import Explanation, PortPath
from cnm.engine.trace import Trace
from cnm.errors import CnmError, Forbidden, InvalidArgument, NotFound, Unavailable

log = logging.getLogger("cnm.api.ui")

TOKEN_FILE = "ui-token"
STATIC = Path(__file__).resolve().parent / "static"
KEEPALIVE = 15.0  # seconds between comment lines on an idle event stream
# engine events after which the map may differ (exec_*, attach, resize ... cannot change it)
MAP_ACTIONS = frozenset(
    {"create", "start", "die", "destroy", "rename", "restart", "connect", "disconnect", "update"}
)
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the token is in the URL: never hand it to another site
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "style-src 'self' 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


@dataclass(frozen=True, slots=True)
class Page:
    """What the page's handlers need: the engine and the token every request must carry."""

    controller: Controller
    token: str


PAGE_KEY: web.AppKey[Page] = web.AppKey("cnm_ui")


def new_token(exec_root: str) -> str:
    """A fresh random token, written to ``<exec_root>/ui-token`` with mode 0600 (replacing
    the previous start's)."""
    token = secrets.token_urlsafe(32)
    path = os.path.join(exec_root, TOKEN_FILE)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a file left by another owner or mode is not reused
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(token + "\n")
    return token


def page_url(host: str, port: int, token: str) -> str:
    where = f"[{host}]" if ":" in host else host
    return f"http://{where}:{port}/?token={token}"


# -- middlewares ------------------------------------------------------------------------


@web.middleware
async def token_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """403 unless the query's ``token`` is the page's; only GET (and HEAD) are served."""
    given = request.query.get("token", "")
    if not secrets.compare_digest(given.encode(), request.app[PAGE_KEY].token.encode()):
        raise Forbidden("this page needs its token: open the URL that `cnm ui` prints")
    if request.method not in ("GET", "HEAD"):
        raise Forbidden("the page is read-only")
    response = await handler(request)
    response.headers.update(_HEADERS)
    return response


# -- a published port's path -----------------------------------------------------------


def parse_port(text: str) -> tuple[int, str]:
    """``HOST_PORT[/PROTO]`` (``8080/tcp``) as (port, protocol)."""
    number, _, proto = text.partition("/")
    proto = proto or "tcp"
    if not number.isdigit() or not 1 <= int(number) <= 65535 or proto not in ("tcp", "udp", "sctp"):
        raise InvalidArgument(f"invalid port {text!r}: expected HOST_PORT/tcp|udp|sctp, e.g. 8080/tcp")
    return int(number), proto


def find_port(e: Explanation, host_port: int, proto: str) -> PortPath:
    """The port ``e``'s container publishes on ``host_port/proto`` (NotFound if none)."""
    for a in e.attachments:
        for p in a.ports:
            if p.host_port == host_port and p.protocol == proto:
                return p
    raise NotFound(f"container {e.container} publishes no port {host_port}/{proto}")


def trace_destination(p: PortPath) -> str:
    """Where a packet from the world goes for the published ``p``, as ``cnm trace`` spells
    it: the host (any of its addresses) or the one address the port is bound to (an IPv6
    one in brackets: the trace then walks IPv6)."""
    try:
        bound = ipaddress.ip_address(p.host_ip)
    except ValueError:  # "" (every address)
        bound = None
    if bound is None or bound.is_unspecified:
        where = "host"
    else:
        where = f"[{bound}]" if bound.version == 6 else str(bound)
    return f"{where}:{p.host_port}/{p.protocol}"


def trace_path(t: Trace) -> dict[str, Any]:
    """The page's path of a port from the trace engine's walk ``t``: its ends, one step per
    hop (``{"step", "text", "command"}``), the verdict and why."""
    return {
        "source": t.source,
        "destination": t.destination,
        "steps": [{"step": h.what, "text": h.text, "command": h.command} for h in t.hops],
        "verdict": t.verdict,
        "reason": t.reason,
        "problems": list(t.problems),
    }


def fallback_path(p: PortPath, failure: CnmError) -> dict[str, Any]:
    """What the page shows when the trace engine cannot walk the port's path (no default
    route, a protocol it does not trace …): why, and the DNAT elements explain found."""
    steps = [{"step": "dnat", "text": rule, "command": p.command} for rule in p.rules]
    return {
        "source": "",
        "destination": "",
        "steps": steps,
        "verdict": "",
        "reason": "",
        "problems": [f"no trace of this port: {failure}"],
    }


# -- handlers ---------------------------------------------------------------------------


def _controller(request: web.Request) -> Controller:
    return request.app[PAGE_KEY].controller


async def index(request: web.Request) -> web.Response:
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    # the token is URL-safe base64: nothing in it needs escaping in HTML
    html = html.replace("{{TOKEN}}", request.app[PAGE_KEY].token)
    return web.Response(text=html, content_type="text/html")


async def script(request: web.Request) -> web.Response:
    return web.Response(
        text=(STATIC / "ui.js").read_text(encoding="utf-8"), content_type="application/javascript"
    )


async def network_map(request: web.Request) -> web.Response:
    ctrl = _controller(request)
    topo = await ctrl.topology([])
    # every container, also those on no network drawn (created, never started; --network none)
    containers = [
        {"id": c.id, "name": c.name, "running": c.running, "network_mode": str(c.config.network_mode)}
        for c in sorted(ctrl.containers(), key=lambda c: c.name)
    ]
    problems = list(topo.problems)
    try:
        svg = await topology.render_svg(topology.render_dot(topo))
    except CnmError as exc:
        svg = ""
        problems.append(f"drawing: {exc}")
    return json_response(
        {"topology": plain(topo), "containers": containers, "svg": svg, "problems": problems}
    )


async def explain(request: web.Request) -> web.Response:
    e = await _controller(request).explain_container(request.match_info["id"])
    return json_response(explain_json(e))


async def path(request: web.Request) -> web.Response:
    host_port, proto = parse_port(request.query.get("port", ""))
    ctrl = _controller(request)
    e = await ctrl.explain_container(request.match_info["id"])
    p = find_port(e, host_port, proto)
    try:
        # the static walk only: --live would send a probe, and the page is read-only
        body = trace_path(await ctrl.trace("world", trace_destination(p)))
    except CnmError as exc:
        body = fallback_path(p, exc)
    return json_response({"container": e.container, "port": f"{host_port}/{proto}", **body})


def _change(event: Event) -> bytes:
    data = {
        "type": event.type,
        "action": event.action,
        "id": event.actor_id,
        "name": event.attributes.get("name", ""),
    }
    return f"event: change\ndata: {json.dumps(data)}\n\n".encode()


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: a ``change`` per event that may change the map, a comment line
    every ``KEEPALIVE`` seconds; ends when the client goes."""
    sub = _controller(request).events.subscribe(
        match=lambda e: e.type in (CONTAINER, NETWORK) and e.action in MAP_ACTIONS
    )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **_HEADERS})
    try:
        await response.prepare(request)
        await response.write(b"retry: 1000\n: live\n\n")
        while True:
            try:
                event = await asyncio.wait_for(sub.next(), KEEPALIVE)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if event is None:  # dropped (fell far behind): the page reconnects and re-fetches
                return response
            await response.write(_change(event))
    except ConnectionError:  # the page was closed
        return response
    finally:
        sub.close()


def make_ui_app(controller: Controller, token: str) -> web.Application:
    """The page's application over ``controller``, every request checked against ``token``."""
    app = web.Application(middlewares=[error_middleware, token_middleware])
    app[PAGE_KEY] = Page(controller=controller, token=token)
    for route, handler in (
        ("/", index),
        ("/ui.js", script),
        ("/map", network_map),
        ("/explain/{id}", explain),
        ("/path/{id}", path),
        ("/events", events),
    ):
        app.router.add_route("GET", route, handler)
    return app


async def serve_ui(
    controller: Controller, addr: tuple[str, int], exec_root: str
) -> tuple[web.AppRunner, str]:
    """Serve the page on ``addr`` (loopback, validated by the daemon's config) with a new
    token; the runner (the caller cleans it up) and the page's URL, with the port the
    kernel chose when ``addr``'s is 0.  Unavailable when the address cannot be bound."""
    token = new_token(exec_root)
    runner = web.AppRunner(
        make_ui_app(controller, token), access_log=logging.getLogger("cnm.api.access"), shutdown_timeout=1.0
    )
    await runner.setup()
    host, port = addr
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError as exc:
        await runner.cleanup()
        raise Unavailable(f"cannot serve the page on --ui-addr {host}:{port}: {exc.strerror or exc}") from exc
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1] if runner.addresses else port
    url = page_url(host, bound, token)
    log.info("live page on %s", page_url(host, bound, "…"))
    return runner, url


# -- on the Engine API: where the page is ------------------------------------------------


async def ui_info(request: web.Request) -> web.Response:
    """``GET /cnm/v1/ui`` (Engine API socket): ``{"url": …}`` of the live page."""
    url = Api.of(request).ui_url
    if not url:
        raise Unavailable("cnmd serves no live page: start it with --ui-addr 127.0.0.1:PORT")
    return json_response({"url": url})


def routes() -> list[tuple[str, str, object]]:
    """The Engine API's route to the page's URL (not the page's own routes)."""
    return [("GET", PREFIX + "/ui", ui_info)]


__all__ = ["make_ui_app", "new_token", "page_url", "parse_port", "routes", "serve_ui"]
