"""Small HTTP helpers shared by every route: Docker's JSON rendering and query parsing.

Docker writes JSON compactly with a trailing newline and ``Content-Type: application/json``
exactly (the Go client decodes error bodies only for that exact type).  Query booleans
follow moby's ``httputils.BoolValue``: ``""``, ``0``, ``no``, ``false``, ``none`` are false.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from cnm.errors import InvalidArgument

JSON_TYPE = "application/json"
RAW_STREAM = "application/vnd.docker.raw-stream"
MULTIPLEXED_STREAM = "application/vnd.docker.multiplexed-stream"

_FALSE = {"", "0", "no", "false", "none"}


def dumps(obj: Any) -> bytes:
    """Go's ``json.Encoder`` output: compact, newline-terminated."""
    return (json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=dumps(obj), headers={"Content-Type": JSON_TYPE})


def query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    if name not in request.query:
        return default
    return request.query[name].strip().lower() not in _FALSE


def query_bool_strict(request: web.Request, name: str, default: bool = False) -> bool:
    """Like ``strconv.ParseBool``: a value that is not a boolean is a 400 (``verbose``)."""
    if name not in request.query:
        return default
    raw = request.query[name].strip().lower()
    if raw in ("1", "t", "true"):
        return True
    if raw in ("", "0", "f", "false"):
        return False
    raise InvalidArgument(f'invalid value for {name}: strconv.ParseBool: parsing "{raw}": invalid syntax')


def query_int(request: web.Request, name: str, default: int | None = None) -> int | None:
    raw = request.query.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidArgument(f"invalid value for {name}: {raw!r} is not an integer") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is ``{}`` (moby's CheckForJSON
    allows it), ``null`` too.  Anything else that is not an object is a 400, and so is
    what Go's decoder would not hand on either: invalid UTF-8, ``NaN``/``Infinity``,
    nesting deeper than Python can follow, and strings holding a lone surrogate (they
    cannot be written back out as UTF-8)."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise InvalidArgument("invalid JSON body: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"invalid JSON body: {exc}") from None
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise InvalidArgument("invalid JSON body: expected an object")
    try:
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise InvalidArgument("invalid JSON body: a string holds a lone UTF-16 surrogate") from None
    except RecursionError:
        raise InvalidArgument("invalid JSON body: nested too deeply") from None
    return body


def get_dict(body: dict[str, Any], key: str) -> dict[str, Any]:
    """``body[key]`` as a dict; absent or null is ``{}``."""
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"invalid {key}: expected an object")
    return value


def get_list(body: dict[str, Any], key: str) -> list[Any] | None:
    """``body[key]`` as a list; absent or null is None."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidArgument(f"invalid {key}: expected an array")
    return value


def get_str(body: dict[str, Any], key: str, default: str = "") -> str:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidArgument(f"invalid {key}: expected a string")
    return value


def get_bool(body: dict[str, Any], key: str, default: bool = False) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidArgument(f"invalid {key}: expected true or false")
    return value


def get_str_map(body: dict[str, Any], key: str) -> dict[str, str] | None:
    """A ``map[string]string``; absent or null is None."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidArgument(f"invalid {key}: expected an object of strings")
    return dict(value)


def get_str_list(body: dict[str, Any], key: str) -> list[str] | None:
    value = get_list(body, key)
    if value is None:
        return None
    if not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"invalid {key}: expected an array of strings")
    return value
