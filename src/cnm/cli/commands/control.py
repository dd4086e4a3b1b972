"""``cnm top``, ``pause``, ``unpause`` and ``container prune``."""

from __future__ import annotations

from cnm.cli import flags as F
from cnm.cli.client import quote
from cnm.cli.commands.container import _each
from cnm.cli.context import Cli
from cnm.cli.format import human_size, tabwrite

TOP = F.Command(
    "cnm top",
    "CONTAINER [ps OPTIONS]",
    "Display the running processes of a container",
    min_args=1,
    interspersed=False,
)


def cmd_top(cli: Cli, argv: list[str]) -> int:
    _, args, _ = F.parse(TOP, argv)
    query = {"ps_args": " ".join(args[1:])} if len(args) > 1 else None
    resp = cli.client.call("GET", f"/containers/{quote(args[0])}/top", query) or {}
    lines = ["\t".join(resp.get("Titles") or [])]
    lines += ["\t".join(p) for p in resp.get("Processes") or []]
    cli.out(tabwrite(lines, minwidth=20, padding=3))
    return 0


PAUSE = F.Command(
    "cnm pause", "CONTAINER [CONTAINER...]", "Pause all processes within one or more containers", min_args=1
)
UNPAUSE = F.Command(
    "cnm unpause",
    "CONTAINER [CONTAINER...]",
    "Unpause all processes within one or more containers",
    min_args=1,
)


def cmd_pause(cli: Cli, argv: list[str]) -> int:
    _, names, _ = F.parse(PAUSE, argv)
    return _each(cli, names, lambda n: cli.client.request("POST", f"/containers/{quote(n)}/pause").close())


def cmd_unpause(cli: Cli, argv: list[str]) -> int:
    _, names, _ = F.parse(UNPAUSE, argv)
    return _each(cli, names, lambda n: cli.client.request("POST", f"/containers/{quote(n)}/unpause").close())


PRUNE = F.Command(
    "cnm container prune",
    "",
    "Remove all stopped containers",
    [
        F.flag("--filter", kind=F.LIST, help='Provide filter values (e.g. "until=<timestamp>")'),
        F.flag("-f", "--force", kind=F.BOOL, help="Do not prompt for confirmation"),
    ],
    max_args=0,
)


def cmd_prune(cli: Cli, argv: list[str]) -> int:
    from cnm.cli.listing import filters_param

    v, _, _ = F.parse(PRUNE, argv)
    if not v["force"] and not cli.confirm("This will remove all stopped containers."):
        return 0
    resp = cli.client.call("POST", "/containers/prune", {"filters": filters_param(v["filter"])}) or {}
    deleted = resp.get("ContainersDeleted") or []
    if deleted:
        cli.out("Deleted Containers:\n" + "".join(f"{c}\n" for c in deleted) + "\n")
    cli.out(f"Total reclaimed space: {human_size(resp.get('SpaceReclaimed') or 0)}\n")
    return 0
