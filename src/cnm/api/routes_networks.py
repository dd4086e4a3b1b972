"""Network routes: list, inspect, create, remove, connect, disconnect, prune."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiohttp import web

from cnm.api.context import Api
from cnm.api.filters import Filters
from cnm.api.http import get_bool, get_str, json_response, query_bool_strict, read_json
from cnm.api.schemas_container import parse_time
from cnm.api.schemas_network import network_json, parse_endpoint_settings, parse_network_create
from cnm.errors import Forbidden, InvalidArgument, NotFound
from cnm.model.network import NetworkRecord

_LIST_FILTERS = ("driver", "scope", "name", "id", "label", "type", "dangling")
_PRUNE_FILTERS = ("label", "label!", "until")
_BUILTIN = ("bridge", "host", "none", "default")


def _list_match(api: Api, net: NetworkRecord, f: Filters) -> bool:
    if not (f.exact("driver", net.driver) and f.exact("scope", net.scope)):
        return False
    if not (f.match("name", net.name) and f.match("id", net.id) and f.match_kv("label", net.labels)):
        return False
    for kind in f.values("type"):
        if kind not in ("custom", "builtin"):
            raise InvalidArgument(f"invalid filter: 'type'='{kind}'")
    if f.values("type"):
        kind = "builtin" if net.name in _BUILTIN else "custom"
        if kind not in f.values("type"):
            return False
    dangling = f.bool_value("dangling")
    if dangling is not None:
        is_dangling = net.name not in _BUILTIN and not api.controller.network_endpoints(net.id)
        if is_dangling != dangling:
            return False
    return True


async def list_networks(request: web.Request) -> web.Response:
    api = Api.of(request)
    f = Filters.parse(request.query.get("filters"), _LIST_FILTERS)
    nets = [network_json(n) for n in api.controller.networks() if _list_match(api, n, f)]
    return json_response(nets)


async def inspect_network(request: web.Request) -> web.Response:
    api = Api.of(request)
    ref = request.match_info["id"]
    query_bool_strict(request, "verbose")  # accepted; cnm has no services to show
    net = api.controller.find_network(ref)
    scope = request.query.get("scope", "")
    if scope and scope != net.scope:
        raise NotFound(f"network {ref} not found")
    endpoints = api.controller.network_endpoints(net.id)
    return json_response(network_json(net, endpoints, api.controller.network_peers(net)))


async def create_network(request: web.Request) -> web.Response:
    api = Api.of(request)
    spec = parse_network_create(await read_json(request))
    net = await api.controller.create_network(spec)
    return json_response({"Id": net.id, "Warning": ""}, status=201)


async def remove_network(request: web.Request) -> web.Response:
    await Api.of(request).controller.remove_network(request.match_info["id"])
    return web.Response(status=204)


async def connect(request: web.Request) -> web.Response:
    body = await read_json(request)
    container = get_str(body, "Container")
    if not container:
        raise InvalidArgument("no container specified")
    endpoint = parse_endpoint_settings(body.get("EndpointConfig"))
    await Api.of(request).controller.connect(request.match_info["id"], container, endpoint)
    return web.Response(status=200)


async def disconnect(request: web.Request) -> web.Response:
    body = await read_json(request)
    container = get_str(body, "Container")
    if not container:
        raise InvalidArgument("no container specified")
    await Api.of(request).controller.disconnect(
        request.match_info["id"], container, force=get_bool(body, "Force")
    )
    return web.Response(status=200)


def parse_until(value: str, now: datetime) -> datetime:
    """``until``: a unix timestamp, an RFC 3339 time, or a Go duration (``24h``, ``30m``)."""
    units = {"s": 1, "m": 60, "h": 3600}
    if value and value[-1] in units and value[:-1].replace(".", "", 1).isdigit():
        return now - timedelta(seconds=float(value[:-1]) * units[value[-1]])
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except ValueError:
        pass
    parsed = parse_time(value)
    if parsed is None:
        raise InvalidArgument(f"invalid filter 'until={value}'")
    return parsed


async def prune_networks(request: web.Request) -> web.Response:
    """Docker's prune; with only ``label`` filters it is the controller's own prune.
    ``label!`` and ``until`` pick the candidates here and remove them one by one
    (a network that gained an endpoint meanwhile is skipped, as Docker does)."""
    api = Api.of(request)
    f = Filters.parse(request.query.get("filters"), _PRUNE_FILTERS)
    if "label!" not in f and "until" not in f:
        removed = await api.controller.prune_networks(f.labels() or None)
        return json_response({"NetworksDeleted": removed or None})
    now = datetime.now(UTC)
    until = [parse_until(v, now) for v in f.values("until")]
    removed = []
    for net in api.controller.networks():
        if net.predefined or net.scope == "global" or api.controller.network_endpoints(net.id):
            continue  # (a global network is the cluster's: another host may be using it)
        if not f.match_kv("label", net.labels):
            continue
        if any(label_matches(v, net.labels) for v in f.values("label!")):
            continue
        created = parse_time(net.created)
        if until and (created is None or not all(created < u for u in until)):
            continue
        try:
            await api.controller.remove_network(net.id)
        except (Forbidden, NotFound):
            continue
        removed.append(net.name)
    return json_response({"NetworksDeleted": removed or None})


def label_matches(value: str, labels: dict[str, str] | object) -> bool:
    name, sep, want = value.partition("=")
    if name not in labels:  # type: ignore[operator]
        return False
    return not sep or labels[name] == want  # type: ignore[index]


def routes() -> list[tuple[str, str, object]]:
    return [
        ("GET", "/networks", list_networks),
        ("POST", "/networks/create", create_network),
        ("POST", "/networks/prune", prune_networks),
        ("GET", "/networks/{id}", inspect_network),
        ("DELETE", "/networks/{id}", remove_network),
        ("POST", "/networks/{id}/connect", connect),
        ("POST", "/networks/{id}/disconnect", disconnect),
    ]
