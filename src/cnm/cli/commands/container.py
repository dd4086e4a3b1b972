"""Container lifecycle and listing verbs: ``start stop kill restart rm ps logs port wait``."""

from __future__ import annotations

import time

from cnm.cli import flags as F
from cnm.cli.client import quote
from cnm.cli.context import Cli
from cnm.cli.errors import CliError, DaemonError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing/collections.abc costs start-up time
if TYPE_CHECKING:
    from collections.abc import Callable


def _each(cli: Cli, names: list[str], action: Callable[[str], object], *, ignore_404: bool = False) -> int:
    """Run ``action(name)`` for every name; print the name on success, the error otherwise.

    Exit 1 if any failed. With ``ignore_404`` a 404 is printed but does not fail (``rm -f``).
    """
    status = 0
    for name in names:
        try:
            action(name)
        except DaemonError as exc:
            cli.err(f"{exc}\n")
            if not (ignore_404 and exc.status == 404):
                status = 1
            continue
        cli.out(f"{name}\n")
    return status


def _path(name: str) -> str:
    return f"/containers/{quote(name)}"


START = F.Command(
    "cnm start",
    "CONTAINER [CONTAINER...]",
    "Start one or more stopped containers",
    [
        F.flag("-a", "--attach", kind=F.BOOL, help="Attach STDOUT/STDERR and forward signals"),
        F.flag("--detach-keys", help="Override the key sequence for detaching a container"),
        F.flag("-i", "--interactive", kind=F.BOOL, help="Attach container's STDIN"),
    ],
    min_args=1,
)


def cmd_start(cli: Cli, argv: list[str]) -> int:
    v, names, _ = F.parse(START, argv)
    if v["attach"] or v["interactive"]:
        if len(names) > 1:
            raise CliError("you cannot start and attach multiple containers at once")
        from cnm.cli.commands.run import attach_and_start

        info = cli.client.call("GET", _path(names[0]) + "/json") or {}
        config = info.get("Config") or {}
        return attach_and_start(
            cli,
            info.get("Id", names[0]),
            tty=bool(config.get("Tty")),
            stdin=bool(v["interactive"] and config.get("OpenStdin")),
            auto_remove=bool((info.get("HostConfig") or {}).get("AutoRemove")),
            start_error_code=1,
            detach_keys=v["detach_keys"] or "",
        )
    failed: list[str] = []
    for name in names:
        try:
            cli.client.request("POST", _path(name) + "/start").close()
        except DaemonError as exc:
            cli.err(f"{exc}\n")
            failed.append(name)
            continue
        cli.out(f"{name}\n")
    if failed:
        raise CliError(f"Error: failed to start containers: {', '.join(failed)}")
    return 0


ATTACH = F.Command(
    "cnm attach",
    "CONTAINER",
    "Attach local standard input, output, and error streams to a running container",
    [
        F.flag("--detach-keys", help="Override the key sequence for detaching a container"),
        F.flag("--no-stdin", kind=F.BOOL, help="Do not attach STDIN"),
        F.flag("--sig-proxy", kind=F.BOOL, default=True, help="Proxy all received signals to the process"),
    ],
    min_args=1,
    max_args=1,
)


def cmd_attach(cli: Cli, argv: list[str]) -> int:
    """Docker's ``attach``: stream a running container's output (and feed its stdin) until
    it exits (its exit code) or the detach keys are typed (0, the container runs on)."""
    from cnm.cli.commands.run import attach_and_start

    v, (name,), _ = F.parse(ATTACH, argv)
    info = cli.client.call("GET", _path(name) + "/json") or {}
    state = info.get("State") or {}
    if state.get("Paused"):
        raise CliError("You cannot attach to a paused container, unpause it first")
    if not state.get("Running"):
        raise CliError("You cannot attach to a stopped container, start it first")
    config = info.get("Config") or {}
    return attach_and_start(
        cli,
        info.get("Id", name),
        tty=bool(config.get("Tty")),
        stdin=bool(config.get("OpenStdin")) and not v["no_stdin"],
        auto_remove=False,
        sig_proxy=bool(v["sig_proxy"]) and not config.get("Tty"),
        start_error_code=1,
        detach_keys=v["detach_keys"] or "",
        start=False,
    )


STOP = F.Command(
    "cnm stop",
    "CONTAINER [CONTAINER...]",
    "Stop one or more running containers",
    [
        F.flag("-s", "--signal", help="Signal to send to the container"),
        F.flag(
            "-t",
            "--timeout",
            "--time",
            kind=F.INT,
            dest="timeout",
            help="Seconds to wait before killing the container",
        ),
    ],
    min_args=1,
)


def _stop_query(v: dict) -> dict:
    return {"signal": v["signal"] or None, "t": v["timeout"]}


def cmd_stop(cli: Cli, argv: list[str]) -> int:
    v, names, _ = F.parse(STOP, argv)
    query = _stop_query(v)
    return _each(cli, names, lambda n: cli.client.request("POST", _path(n) + "/stop", query).close())


RESTART = F.Command(
    "cnm restart", "CONTAINER [CONTAINER...]", "Restart one or more containers", STOP.flags, min_args=1
)


def cmd_restart(cli: Cli, argv: list[str]) -> int:
    v, names, _ = F.parse(RESTART, argv)
    query = _stop_query(v)
    return _each(cli, names, lambda n: cli.client.request("POST", _path(n) + "/restart", query).close())


KILL = F.Command(
    "cnm kill",
    "CONTAINER [CONTAINER...]",
    "Kill one or more running containers",
    [F.flag("-s", "--signal", help="Signal to send to the container")],
    min_args=1,
)


def cmd_kill(cli: Cli, argv: list[str]) -> int:
    v, names, _ = F.parse(KILL, argv)
    query = {"signal": v["signal"] or None}
    return _each(cli, names, lambda n: cli.client.request("POST", _path(n) + "/kill", query).close())


RM = F.Command(
    "cnm rm",
    "CONTAINER [CONTAINER...]",
    "Remove one or more containers",
    [
        F.flag("-f", "--force", kind=F.BOOL, help="Force the removal of a running container (uses SIGKILL)"),
        F.flag("-l", "--link", kind=F.BOOL, help="Remove the specified link"),
        F.flag("-v", "--volumes", kind=F.BOOL, help="Remove anonymous volumes associated with the container"),
    ],
    min_args=1,
)


def cmd_rm(cli: Cli, argv: list[str]) -> int:
    v, names, _ = F.parse(RM, argv)
    query = {
        "force": "1" if v["force"] else None,
        "v": "1" if v["volumes"] else None,
        "link": "1" if v["link"] else None,
    }
    for name in names:
        if not name.strip("/"):
            raise CliError("Container name cannot be empty")
    return _each(
        cli,
        names,
        lambda n: cli.client.request("DELETE", _path(n.lstrip("/") or n), query).close(),
        ignore_404=v["force"],
    )


WAIT = F.Command(
    "cnm wait",
    "CONTAINER [CONTAINER...]",
    "Block until one or more containers stop, then print their exit codes",
    min_args=1,
)


def cmd_wait(cli: Cli, argv: list[str]) -> int:
    _, names, _ = F.parse(WAIT, argv)
    status = 0
    for name in names:
        try:
            resp = cli.client.call("POST", _path(name) + "/wait") or {}
        except DaemonError as exc:
            cli.err(f"{exc}\n")
            status = 1
            continue
        err = (resp.get("Error") or {}).get("Message") if isinstance(resp.get("Error"), dict) else None
        if err:
            cli.err(f"{err}\n")
            status = 1
            continue
        cli.out(f"{resp.get('StatusCode', 0)}\n")
    return status


RENAME = F.Command("cnm rename", "CONTAINER NEW_NAME", "Rename a container", min_args=2, max_args=2)


def cmd_rename(cli: Cli, argv: list[str]) -> int:
    _, (old, new), _ = F.parse(RENAME, argv)
    cli.client.call("POST", _path(old) + "/rename?name=" + quote(new, safe=""))
    return 0


PORT = F.Command(
    "cnm port",
    "CONTAINER [PRIVATE_PORT[/PROTO]]",
    "List port mappings or a specific mapping for the container",
    min_args=1,
    max_args=2,
)


def port_lines(ports: dict | None, want: str | None, container: str) -> list[str]:
    """``docker port`` output from ``NetworkSettings.Ports`` (natural-sorted)."""
    from cnm.cli.format import join_host_port, natural_sorted

    ports = ports or {}
    out: list[str] = []
    if want is not None:
        port, _, proto = want.partition("/")
        if not port.isdigit() or int(port) > 65535:
            raise CliError(
                f'Error: invalid port ({port}): strconv.ParseUint: parsing "{port}": invalid syntax'
            )
        frontends = ports.get(f"{port}/{proto or 'tcp'}") or []
        if not frontends:
            raise CliError(f"Error: No public port '{want}' published for {container}")
        out = [join_host_port(f.get("HostIp", ""), f.get("HostPort", "")) for f in frontends]
    else:
        for key, frontends in ports.items():
            for f in frontends or []:
                out.append(f"{key} -> {join_host_port(f.get('HostIp', ''), f.get('HostPort', ''))}")
    return natural_sorted(out)


def cmd_port(cli: Cli, argv: list[str]) -> int:
    _, args, _ = F.parse(PORT, argv)
    info = cli.client.call("GET", _path(args[0]) + "/json") or {}
    lines = port_lines(
        (info.get("NetworkSettings") or {}).get("Ports"), args[1] if len(args) > 1 else None, args[0]
    )
    if lines:
        cli.out("\n".join(lines) + "\n")
    return 0


LOGS = F.Command(
    "cnm logs",
    "CONTAINER",
    "Fetch the logs of a container",
    [
        F.flag("--details", kind=F.BOOL, help="Show extra details provided to logs"),
        F.flag("-f", "--follow", kind=F.BOOL, help="Follow log output"),
        F.flag("--since", help="Show logs since timestamp or relative"),
        F.flag("-n", "--tail", default="all", help="Number of lines to show from the end of the logs"),
        F.flag("-t", "--timestamps", kind=F.BOOL, help="Show timestamps"),
        F.flag("--until", help="Show logs before a timestamp or relative"),
    ],
    min_args=1,
    max_args=1,
)


def api_timestamp(value: str, now: float) -> str:
    """Docker's ``timetypes.GetTimestamp``: a duration (``10m``, ``1h30m``, ``42s``) means
    that long before ``now``; an RFC 3339 date/time (``2026-12-01``, ``…T10:00:00Z``, with
    or without a zone: UTC) or a unix timestamp (``1700000000.5``) is that moment.  The API's
    ``seconds.nanoseconds`` text; ValueError for anything else."""
    import re

    text = value.strip()
    if re.fullmatch(r"\d+(\.\d{1,9})?", text):
        return text
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    if parts and "".join(n + u for n, u in parts) == text:
        scale = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
        seconds = sum(float(n) * scale[u] for n, u in parts)
        return f"{now - seconds:.9f}"
    from datetime import UTC, datetime

    m = re.fullmatch(r"([^.]+?)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)?", text)  # keep the nanoseconds
    try:
        if m is None:
            raise ValueError(text)
        moment = datetime.fromisoformat(m[1] + (m[3] or "").replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"cannot parse {value!r} as a timestamp or duration") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return f"{int(moment.timestamp())}.{(m[2] or '0').ljust(9, '0')}"


def cmd_logs(cli: Cli, argv: list[str]) -> int:
    from cnm.cli.hijack import copy_chunks

    v, (name,), _ = F.parse(LOGS, argv)
    now = time.time()
    stamps: dict[str, str | None] = {}
    for key in ("since", "until"):
        try:
            stamps[key] = api_timestamp(v[key], now) if v[key] else None
        except ValueError as exc:
            raise CliError(f"invalid value for --{key}: {exc}") from None
    since, until = stamps["since"], stamps["until"]
    info = cli.client.call("GET", _path(name) + "/json") or {}
    query = {
        "stdout": "1",
        "stderr": "1",
        "since": since,
        "until": until,
        "timestamps": "1" if v["timestamps"] else None,
        "follow": "1" if v["follow"] else None,
        "tail": v["tail"],
        "details": "1" if v["details"] else None,
    }
    resp = cli.client.request("GET", _path(info.get("Id") or name) + "/logs", query)
    cli.flush()
    try:
        copy_chunks(resp.chunks(), bool((info.get("Config") or {}).get("Tty")))
    finally:
        resp.close()
    return 0


PS = F.Command(
    "cnm ps",
    "",
    "List containers",
    [
        F.flag("-a", "--all", kind=F.BOOL, help="Show all containers (default shows just running)"),
        F.flag("-f", "--filter", kind=F.LIST, help="Filter output based on conditions provided"),
        F.flag("--format", default="", help="Format output using a custom template"),
        F.flag(
            "-n",
            "--last",
            kind=F.INT,
            default=-1,
            help="Show n last created containers (includes all states)",
        ),
        F.flag("-l", "--latest", kind=F.BOOL, help="Show the latest created container (includes all states)"),
        F.flag("--no-trunc", kind=F.BOOL, help="Don't truncate output"),
        F.flag("-q", "--quiet", kind=F.BOOL, help="Only display container IDs"),
        F.flag("-s", "--size", kind=F.BOOL, help="Display total file sizes"),
    ],
    max_args=0,
    aliases=("cnm container ls", "cnm container list", "cnm container ps", "cnm ps"),
)

PS_TABLE = "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t{{.Names}}"
PS_HEADERS = {
    "ID": "CONTAINER ID",
    "Image": "IMAGE",
    "Command": "COMMAND",
    "CreatedAt": "CREATED AT",
    "RunningFor": "CREATED",
    "Ports": "PORTS",
    "State": "STATE",
    "Status": "STATUS",
    "Size": "SIZE",
    "Names": "NAMES",
    "Labels": "LABELS",
    "Mounts": "MOUNTS",
    "Networks": "NETWORKS",
    "LocalVolumes": "LOCAL VOLUMES",
}


def container_row(c: dict, trunc: bool, now: float | None = None) -> dict:
    """Docker's ``ContainerContext`` fields for one item of ``GET /containers/json``."""
    import json

    from cnm.cli.format import displayable_ports, ellipsis, go_time, human_size, since, truncate_id
    from cnm.cli.listing import labels_str

    names = [n[1:] if n.startswith("/") else n for n in c.get("Names") or []]
    if trunc:
        for n in names:
            if "/" not in n:
                names = [n]
                break
    command = c.get("Command", "")
    if trunc:
        command = ellipsis(command, 20)
    image = c.get("Image", "") or "<no image>"
    if trunc and image != "<no image>" and truncate_id(c.get("ImageID", "")) == truncate_id(image):
        image = truncate_id(image)
    labels = c.get("Labels") or {}
    created = c.get("Created", 0) or 0
    networks = sorted(((c.get("NetworkSettings") or {}).get("Networks") or {}).keys())
    size = ""
    if "SizeRw" in c or "SizeRootFs" in c:
        size = human_size(c.get("SizeRw") or 0, 3)
        if c.get("SizeRootFs"):
            size += f" (virtual {human_size(c['SizeRootFs'], 3)})"
    return {
        "ID": truncate_id(c.get("Id", "")) if trunc else c.get("Id", ""),
        "Image": image,
        "Command": json.dumps(command, ensure_ascii=False),
        "CreatedAt": go_time(created),
        "RunningFor": since(created, now),
        "Ports": displayable_ports(c.get("Ports") or []),
        "State": c.get("State", ""),
        "Status": c.get("Status", ""),
        "Size": size,
        "Names": ",".join(names),
        "Labels": labels_str(labels),
        "Label": lambda name: labels.get(name, ""),
        "Mounts": "",
        "Networks": ",".join(networks),
        "LocalVolumes": "0",
    }


def cmd_ps(cli: Cli, argv: list[str]) -> int:
    from cnm.cli.listing import filters_param, render

    v, _, _ = F.parse(PS, argv)
    query: dict[str, object] = {
        "all": "1" if v["all"] or v["latest"] or v["last"] > 0 else None,
        "limit": 1 if v["latest"] else (v["last"] if v["last"] > 0 else None),
        "size": "1" if v["size"] else None,
        "filters": filters_param(v["filter"]),
    }
    items = cli.client.call("GET", "/containers/json", query) or []
    rows = [container_row(c, not v["no_trunc"]) for c in items]
    fmt = "{{.ID}}" if v["quiet"] else v["format"]
    table = PS_TABLE + ("\t{{.Size}}" if v["size"] and not v["format"] else "")
    cli.out(render(rows, fmt, table, PS_HEADERS))
    return 0
