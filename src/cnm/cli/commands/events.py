"""``cnm events``: the daemon's events as they happen (or between ``--since`` and
``--until``), printed the way Docker's CLI prints them."""

from __future__ import annotations

import json
import time

from cnm.cli import flags as F
from cnm.cli.context import Cli
from cnm.cli.errors import CliError

EVENTS = F.Command(
    "cnm events",
    "",
    "Get real time events from the server",
    [
        F.flag("-f", "--filter", kind=F.LIST, help="Filter output based on conditions provided"),
        F.flag("--format", default="", help="Format output using a custom template"),
        F.flag("--since", help="Show all events created since timestamp"),
        F.flag("--until", help="Stream events until this timestamp"),
    ],
    max_args=0,
)


def _local_rfc3339_nano(ns: int) -> str:
    """Go's ``RFC3339NanoFixed`` in local time: ``2026-12-01T22:00:00.123456789Z``."""
    t = time.localtime(ns // 1_000_000_000)
    offset = t.tm_gmtoff
    zone = (
        "Z"
        if offset == 0
        else f"{'+' if offset > 0 else '-'}{abs(offset) // 3600:02d}:{abs(offset) % 3600 // 60:02d}"
    )
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{ns % 1_000_000_000:09d}{zone}"


def pretty(message: dict) -> str:
    """Docker's ``prettyPrintEvent``: time, type, action, actor id, sorted attributes."""
    out = ""
    if message.get("timeNano"):
        out = _local_rfc3339_nano(int(message["timeNano"])) + " "
    elif message.get("time"):
        out = _local_rfc3339_nano(int(message["time"]) * 1_000_000_000) + " "
    actor = message.get("Actor") or {}
    out += f"{message.get('Type', '')} {message.get('Action', '')} {actor.get('ID', '')}"
    attrs = actor.get("Attributes") or {}
    if attrs:
        out += " (" + ", ".join(f"{k}={attrs[k]}" for k in sorted(attrs)) + ")"
    return out + "\n"


def cmd_events(cli: Cli, argv: list[str]) -> int:
    from cnm.cli.commands.container import api_timestamp
    from cnm.cli.listing import filters_param
    from cnm.cli.template import Template, TemplateError

    v, _, _ = F.parse(EVENTS, argv)
    now = time.time()
    query: dict[str, object] = {"filters": filters_param(v["filter"])}
    for key in ("since", "until"):
        try:
            query[key] = api_timestamp(v[key], now) if v[key] else None
        except ValueError as exc:
            raise CliError(f"invalid value for --{key}: {exc}") from None
    fmt = v["format"]
    if fmt == "json":
        fmt = "{{json .}}"
    template = None
    if fmt:
        try:
            template = Template(fmt.replace("\\t", "\t").replace("\\n", "\n"))
        except TemplateError as exc:
            raise CliError(f"template parsing error: {exc}") from None
    resp = cli.client.request("GET", "/events", query)
    pending = b""
    try:
        for chunk in resp.chunks():
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                message = json.loads(line)
                try:
                    cli.out(template.execute(message) + "\n" if template else pretty(message))
                except TemplateError as exc:
                    raise CliError(f"template: {exc}") from None
                cli.flush()
    except KeyboardInterrupt:
        return 0
    finally:
        resp.close()
    return 0
