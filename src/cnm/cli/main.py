"""``cnm``: Docker's verbs over cnmd's Engine API.

Owns: global options (``-H/--host``, ``CNM_HOST``), finding the verb (management commands
such as ``network ls`` and Docker's shortcuts such as ``ps``), importing only that verb's
module, and turning errors into Docker's stderr text and exit codes.

Error boundary: whatever goes wrong -- a daemon dying mid-reply included -- ends as one
line on stderr and a non-zero exit; a traceback only with ``-D``.
"""

from __future__ import annotations

import sys

# verb path -> (module under cnm.cli.commands, function); modules are imported on demand
COMMANDS: dict[str, tuple[str, str]] = {
    "version": ("system", "cmd_version"),
    "info": ("system", "cmd_info"),
    "network ls": ("network", "cmd_ls"),
    "network list": ("network", "cmd_ls"),
    "network create": ("network", "cmd_create"),
    "network inspect": ("network", "cmd_inspect"),
    "network rm": ("network", "cmd_rm"),
    "network remove": ("network", "cmd_rm"),
    "network connect": ("network", "cmd_connect"),
    "network disconnect": ("network", "cmd_disconnect"),
    "network prune": ("network", "cmd_prune"),
    "network map": ("explain", "cmd_map"),
    "explain": ("explain", "cmd_explain"),
    "trace": ("trace", "cmd_trace"),
    "ui": ("ui", "cmd_ui"),
    "create": ("run", "cmd_create"),
    "run": ("run", "cmd_run"),
    "start": ("container", "cmd_start"),
    "stop": ("container", "cmd_stop"),
    "kill": ("container", "cmd_kill"),
    "restart": ("container", "cmd_restart"),
    "rm": ("container", "cmd_rm"),
    "ps": ("container", "cmd_ps"),
    "logs": ("container", "cmd_logs"),
    "port": ("container", "cmd_port"),
    "wait": ("container", "cmd_wait"),
    "rename": ("container", "cmd_rename"),
    "container rename": ("container", "cmd_rename"),
    "exec": ("exec", "cmd_exec"),
    "inspect": ("inspect", "cmd_inspect"),
    "images": ("image", "cmd_ls"),
    "rmi": ("image", "cmd_rm"),
    "import": ("image", "cmd_import"),
    "image import": ("image", "cmd_import"),
    "image ls": ("image", "cmd_ls"),
    "image list": ("image", "cmd_ls"),
    "image rm": ("image", "cmd_rm"),
    "image remove": ("image", "cmd_rm"),
    "image inspect": ("inspect", "cmd_image_inspect"),
    "tag": ("image", "cmd_tag"),
    "image tag": ("image", "cmd_tag"),
    "load": ("image", "cmd_load"),
    "image load": ("image", "cmd_load"),
    "export": ("image", "cmd_export"),
    "container export": ("image", "cmd_export"),
    "save": ("image", "cmd_save"),
    "image save": ("image", "cmd_save"),
    "container create": ("run", "cmd_create"),
    "container run": ("run", "cmd_run"),
    "container start": ("container", "cmd_start"),
    "container stop": ("container", "cmd_stop"),
    "container kill": ("container", "cmd_kill"),
    "container restart": ("container", "cmd_restart"),
    "container rm": ("container", "cmd_rm"),
    "container remove": ("container", "cmd_rm"),
    "container ls": ("container", "cmd_ps"),
    "container list": ("container", "cmd_ps"),
    "container ps": ("container", "cmd_ps"),
    "container logs": ("container", "cmd_logs"),
    "container port": ("container", "cmd_port"),
    "container wait": ("container", "cmd_wait"),
    "container exec": ("exec", "cmd_exec"),
    "container inspect": ("inspect", "cmd_container_inspect"),
    "stats": ("stats", "cmd_stats"),
    "container stats": ("stats", "cmd_stats"),
    "top": ("control", "cmd_top"),
    "container top": ("control", "cmd_top"),
    "pause": ("control", "cmd_pause"),
    "container pause": ("control", "cmd_pause"),
    "unpause": ("control", "cmd_unpause"),
    "container unpause": ("control", "cmd_unpause"),
    "container prune": ("control", "cmd_prune"),
    "completion": ("completion", "cmd_completion"),
    "attach": ("container", "cmd_attach"),
    "container attach": ("container", "cmd_attach"),
    "events": ("events", "cmd_events"),
}
_DEBUG = False  # -D: unexpected errors print their traceback
GROUPS = ("container", "image", "network")  # management commands: `cnm GROUP VERB`


def _global_options(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Consume the options before the verb; raise UsageError on unknown ones."""
    from cnm.cli.errors import UsageError

    opts: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in ("-H", "--host", "-l", "--log-level", "--config", "-c", "--context"):
            if not eq:
                if i + 1 >= len(argv):
                    raise UsageError(f"flag needs an argument: {name}\nSee 'cnm --help'.")
                value = argv[i + 1]
                i += 1
            opts[name.lstrip("-")[:1].upper() if name in ("-H", "--host") else name] = value
        elif arg.startswith("-H") and len(arg) > 2:
            opts["H"] = arg[2:]
        elif arg in ("-D", "--debug"):
            opts["debug"] = "1"
        elif arg in ("-v", "--version"):
            opts["version"] = "1"
        elif arg in ("-h", "--help"):
            opts["help"] = "1"
        else:
            raise UsageError(f"unknown flag: {name}\nSee 'cnm --help'.")
        i += 1
    return opts, argv[i:]


def main(argv: list[str] | None = None) -> int:
    """Run one ``cnm`` command; return its exit code."""
    from cnm.cli.errors import CliError

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(args)
    except CliError as exc:
        _flush_quietly()
        if exc.message:
            sys.stderr.write(exc.message.rstrip("\n") + "\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # our stdout went away (``| head``); the daemon's socket is a ConnectError
        return 0
    except OSError as exc:  # a socket outside the client's framing (a hijacked stream)
        _flush_quietly()
        sys.stderr.write(f"error during connect: {(exc.strerror or str(exc)).lower()}\n")
        return 1
    except Exception as exc:  # noqa: BLE001 -- the last boundary: one line, not a traceback
        _flush_quietly()
        if _DEBUG:
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"cnm: unexpected error: {type(exc).__name__}: {exc}\n")
        return 1


def _flush_quietly() -> None:
    try:
        sys.stdout.flush()
    except OSError:
        pass


def _dispatch(args: list[str]) -> int:
    from cnm.cli.errors import CliError

    global _DEBUG
    opts, rest = _global_options(args)
    _DEBUG = bool(opts.get("debug"))
    if opts.get("version"):
        from cnm import __version__

        sys.stdout.write(f"cnm version {__version__}\n")
        return 0
    if not rest or rest[0] == "help":
        return _help(rest[1:])
    key = rest[0]
    consumed = 1
    if key in GROUPS:
        if len(rest) < 2 or rest[1] in ("--help", "-h"):
            return _help([key])
        key = f"{rest[0]} {rest[1]}"
        consumed = 2
        if key not in COMMANDS:
            raise CliError(
                f"cnm: unknown command: cnm {key}\n\nRun 'cnm {rest[0]} --help' for more information"
            )
    if key not in COMMANDS:
        raise CliError(f"cnm: unknown command: cnm {key}\n\nRun 'cnm --help' for more information")
    module_name, func_name = COMMANDS[key]
    module = __import__(f"cnm.cli.commands.{module_name}", fromlist=[func_name])
    from cnm.cli.context import Cli
    from cnm.cli.flags import HelpRequested

    cli = Cli(host=opts.get("H"))
    try:
        code: int = getattr(module, func_name)(cli, rest[consumed:])
    except HelpRequested as req:
        sys.stdout.write(req.command.help_text())
        return 0
    _flush_quietly()
    return code


def _help(topic: list[str]) -> int:
    """``cnm help [GROUP] [VERB]``: the page ``cnm [GROUP] [VERB] --help`` prints."""
    from cnm.cli import usage
    from cnm.cli.errors import CliError

    if not topic:
        sys.stdout.write(usage.main_usage(COMMANDS))
        return 0
    if topic[0] in GROUPS and len(topic) == 1:
        sys.stdout.write(usage.group_usage(COMMANDS, topic[0]))
        return 0
    key = " ".join(topic)
    if key not in COMMANDS:
        raise CliError(f"cnm: unknown help topic: {key}\n\nRun 'cnm --help' for more information")
    sys.stdout.write(usage.declaration(COMMANDS, key).help_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
