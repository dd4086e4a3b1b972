"""The help pages that list verbs: ``cnm --help``, ``cnm network --help``, ``cnm help …``.

Owns the listing, not the verbs: every description comes from the verb's own ``Command``
declaration (found by asking the verb for ``--help``, which every verb parses before any
I/O), so a verb added to ``main.COMMANDS`` is listed with its one line without being
written down twice.  Aliases (``network list`` for ``network ls``) are not listed, as in
Docker's help.  Importing every verb module costs tens of milliseconds: only help pays it.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs start-up time
if TYPE_CHECKING:
    from cnm.cli.flags import Command

GROUPS = {"container": "Manage containers", "image": "Manage images", "network": "Manage networks"}
# Docker's "Common Commands", in Docker's order, restricted to what cnm has.
COMMON = ("run", "exec", "ps", "images", "import", "version", "info")
# Verbs whose page is written here rather than declared by a command module.
BUILTIN = {"help": "Help about any command"}


def declaration(commands: dict[str, tuple[str, str]], key: str) -> Command:
    """The ``Command`` that verb ``key`` (``"ps"``, ``"network ls"``) parses its flags with."""
    from cnm.cli.context import Cli
    from cnm.cli.flags import HelpRequested

    module_name, func_name = commands[key]
    module = __import__(f"cnm.cli.commands.{module_name}", fromlist=[func_name])
    try:
        getattr(module, func_name)(Cli(host="unix:///nonexistent", env={"CNM_NO_AUTOSTART": "1"}), ["--help"])
    except HelpRequested as asked:
        return asked.command
    raise AssertionError(f"cnm {key} did not answer --help")  # every verb parses its flags first


def canonical(commands: dict[str, tuple[str, str]], prefix: str = "") -> list[str]:
    """The verbs directly under ``prefix`` ("" or a group), one per target: aliases dropped."""
    seen: set[tuple[str, str]] = set()
    out = []
    for key, target in commands.items():
        head, _, rest = key.rpartition(" ")
        if head != prefix.strip():
            continue
        if target in seen and prefix:  # within a group, the first name listed is canonical
            continue
        seen.add(target)
        out.append(rest)
    return sorted(set(out))


def _rows(rows: list[tuple[str, str]]) -> str:
    width = max((len(name) for name, _ in rows), default=0)
    return "".join(f"  {name.ljust(max(width, 10))}  {text}\n" for name, text in rows)


def main_usage(commands: dict[str, tuple[str, str]]) -> str:
    """``cnm --help``: every top-level verb and group with its one line."""
    top = canonical(commands)
    described = {verb: declaration(commands, verb).description for verb in top}
    described.update(BUILTIN)
    others = sorted(v for v in described if v not in COMMON)
    return (
        "\nUsage:  cnm [OPTIONS] COMMAND\n\n"
        "Docker's container networking, rebuilt in Python: cnmd serves Docker's Engine API and\n"
        "cnm speaks Docker's verbs to it.\n\n"
        "Common Commands:\n" + _rows([(v, described[v]) for v in COMMON if v in described])
        + "\nManagement Commands:\n" + _rows(sorted(GROUPS.items()))
        + "\nCommands:\n" + _rows([(v, described[v]) for v in others])
        + "\nGlobal Options:\n"
        "  -H, --host string   Daemon socket to connect to (default unix:///run/cnm/cnm.sock; env CNM_HOST)\n"
        "  -D, --debug         Enable debug mode\n"
        "  -v, --version       Print version information and quit\n\n"
        "Run 'cnm COMMAND --help' for more information on a command.\n"
    )  # fmt: skip


def group_usage(commands: dict[str, tuple[str, str]], group: str) -> str:
    """``cnm network --help``: the group's subcommands, each with its one line."""
    verbs = canonical(commands, group)
    rows = [(verb, declaration(commands, f"{group} {verb}").description) for verb in verbs]
    return (
        f"\nUsage:  cnm {group} COMMAND\n\n{GROUPS[group]}\n\nCommands:\n" + _rows(rows)
        + f"\nRun 'cnm {group} COMMAND --help' for more information on a command.\n"
    )  # fmt: skip
