"""``cnm``: Docker's verbs over cnmd's Engine API.

Owns: global options (``-H/--host``, ``CNM_HOST``), finding the verb (management commands
such as ``network ls`` and Docker's shortcuts such as ``ps``), importing only that verb's
module, and turning errors into Docker's stderr text and exit codes.
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
}
GROUPS = {"network": "Manage networks", "container": "Manage containers", "image": "Manage images"}

USAGE = """
Usage:  cnm [OPTIONS] COMMAND

Docker's container networking, rebuilt in Python: cnmd serves Docker's Engine API and
cnm speaks Docker's verbs to it.

Common Commands:
  run         Create and run a new container from an image
  exec        Execute a command in a running container
  ps          List containers
  images      List images
  import      Import the contents from a tarball to create a filesystem image
  version     Show the cnm version information
  info        Display system-wide information

Management Commands:
  container   Manage containers
  image       Manage images
  network     Manage networks

Commands:
  create      Create a new container
  inspect     Return low-level information on cnm objects
  kill        Kill one or more running containers
  logs        Fetch the logs of a container
  port        List port mappings or a specific mapping for the container
  restart     Restart one or more containers
  rm          Remove one or more containers
  rmi         Remove one or more images
  start       Start one or more stopped containers
  stop        Stop one or more running containers
  wait        Block until one or more containers stop, then print their exit codes

Global Options:
  -H, --host string   Daemon socket to connect to (default unix:///run/cnm/cnm.sock; env CNM_HOST)
  -D, --debug         Enable debug mode
  -v, --version       Print version information and quit

Run 'cnm COMMAND --help' for more information on a command.
"""


def _group_usage(group: str) -> str:
    verbs = sorted({k.split(" ", 1)[1] for k in COMMANDS if k.startswith(group + " ")})
    return (f"\nUsage:  cnm {group} COMMAND\n\n{GROUPS[group]}\n\nCommands:\n"
            + "".join(f"  {v}\n" for v in verbs)
            + f"\nRun 'cnm {group} COMMAND --help' for more information on a command.\n")


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
    except BrokenPipeError:
        return 0


def _flush_quietly() -> None:
    try:
        sys.stdout.flush()
    except OSError:
        pass


def _dispatch(args: list[str]) -> int:
    from cnm.cli.errors import CliError

    opts, rest = _global_options(args)
    if opts.get("version"):
        from cnm import __version__

        sys.stdout.write(f"cnm version {__version__}\n")
        return 0
    if not rest or opts.get("help") and not rest:
        sys.stdout.write(USAGE)
        return 0
    key = rest[0]
    consumed = 1
    if key in GROUPS:
        if len(rest) < 2 or rest[1] in ("--help", "-h"):
            sys.stdout.write(_group_usage(key))
            return 0
        key = f"{rest[0]} {rest[1]}"
        consumed = 2
        if key not in COMMANDS:
            raise CliError(f"cnm: unknown command: cnm {key}\n\nRun 'cnm {rest[0]} --help' for more information")
    if key == "help":
        sys.stdout.write(USAGE)
        return 0
    if key not in COMMANDS:
        raise CliError(f"cnm: unknown command: cnm {key}\n\nRun 'cnm --help' for more information")
    module_name, func_name = COMMANDS[key]
    module = __import__(f"cnm.cli.commands.{module_name}", fromlist=[func_name])
    from cnm.cli.context import Cli
    from cnm.cli.flags import HelpRequested

    cli = Cli(host=opts.get("H"))
    try:
        code = getattr(module, func_name)(cli, rest[consumed:])
    except HelpRequested as req:
        sys.stdout.write(req.command.help_text())
        return 0
    _flush_quietly()
    return code


if __name__ == "__main__":
    sys.exit(main())
