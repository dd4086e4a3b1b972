"""``cnm exec``: create an exec, start it over a hijacked stream, exit with its exit code."""

from __future__ import annotations

import os
import sys

from cnm.cli import flags as F
from cnm.cli.client import quote
from cnm.cli.context import Cli
from cnm.cli.errors import CliError
from cnm.cli.runopts import validate_env

EXEC = F.Command(
    "cnm exec",
    "CONTAINER COMMAND [ARG...]",
    "Execute a command in a running container",
    [
        F.flag("-d", "--detach", kind=F.BOOL, help="Detached mode: run command in the background"),
        F.flag("--detach-keys", default="", help="Override the key sequence for detaching a container"),
        F.flag("-e", "--env", kind=F.LIST, validate=validate_env, help="Set environment variables"),
        F.flag("--env-file", kind=F.LIST, help="Read in a file of environment variables"),
        F.flag("-i", "--interactive", kind=F.BOOL, help="Keep STDIN open even if not attached"),
        F.flag("--privileged", kind=F.BOOL, help="Give extended privileges to the command"),
        F.flag("-t", "--tty", kind=F.BOOL, help="Allocate a pseudo-TTY"),
        F.flag("-u", "--user", default="", help='Username or UID (format: "<name|uid>[:<group|gid>]")'),
        F.flag("-w", "--workdir", default="", help="Working directory inside the container"),
    ],
    min_args=2,
    interspersed=False,
    aliases=("cnm container exec", "cnm exec"),
)


def exec_body(v: dict, cmd: list[str], env: dict[str, str], console: tuple[int, int] | None) -> dict:
    """The ``POST /containers/{id}/exec`` body Docker's CLI sends."""
    from cnm.cli.runopts import read_env_files, resolve_env

    try:
        env_list = read_env_files(v["env_file"], env) + resolve_env(v["env"], env)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    attach = not v["detach"]
    body: dict = {"User": v["user"], "Privileged": v["privileged"], "Tty": v["tty"]}
    if v["tty"] and console:
        body["ConsoleSize"] = list(console)
    body.update(
        {
            "AttachStdin": bool(v["interactive"] and attach),
            "AttachStderr": attach,
            "AttachStdout": attach,
            "Detach": v["detach"],
            "DetachKeys": v["detach_keys"],
            "Env": env_list,
            "WorkingDir": v["workdir"],
            "Cmd": list(cmd),
        }
    )
    return body


def cmd_exec(cli: Cli, argv: list[str]) -> int:
    from cnm.cli.hijack import pump, raw_terminal, terminal_size

    v, args, _ = F.parse(EXEC, argv)
    container, cmd = args[0], args[1:]
    stdin_fd = sys.stdin.fileno() if v["interactive"] and not v["detach"] else None
    if v["tty"] and stdin_fd is not None and not os.isatty(stdin_fd):
        raise CliError("the input device is not a TTY")
    console = terminal_size(1) if v["tty"] else None
    created = (
        cli.client.call(
            "POST", f"/containers/{quote(container)}/exec", body=exec_body(v, cmd, cli.env, console)
        )
        or {}
    )
    exec_id = created.get("Id", "")
    if v["detach"]:
        cli.client.request("POST", f"/exec/{exec_id}/start", body={"Detach": True, "Tty": v["tty"]}).close()
        return 0
    start = {"Detach": False, "Tty": v["tty"]}
    if v["tty"] and console:
        start["ConsoleSize"] = list(console)
    sock, initial = cli.client.hijack(f"/exec/{exec_id}/start", body=start)
    try:
        if v["tty"] and console:
            try:
                cli.client.request(
                    "POST", f"/exec/{exec_id}/resize", {"h": console[0], "w": console[1]}
                ).close()
            except CliError:
                pass  # best effort, as in Docker's CLI
        cli.flush()
        if v["tty"] and stdin_fd is not None:
            with raw_terminal(stdin_fd):
                pump(sock, initial, True, stdin_fd)
        else:
            pump(sock, initial, v["tty"], stdin_fd)
    finally:
        sock.close()
    info = cli.client.call("GET", f"/exec/{exec_id}/json") or {}
    return int(info.get("ExitCode") or 0)
