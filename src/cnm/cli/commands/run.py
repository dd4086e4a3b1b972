"""``cnm create`` and ``cnm run``: Docker's create → (attach) → wait → start sequence.

Exit codes as Docker's CLI: 125 for a daemon error in create/start (126 when the message
says "permission denied"/"is a directory", 127 for "executable file not found"/"no such
file or directory"), otherwise the container's exit code from the wait.
"""

from __future__ import annotations

import os
import sys

from cnm.cli import flags as F
from cnm.cli import runopts
from cnm.cli.client import Response, quote
from cnm.cli.context import Cli
from cnm.cli.errors import CliError, DaemonError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing/collections.abc costs start-up time
if TYPE_CHECKING:
    from collections.abc import Callable

CREATE = F.Command(
    "cnm create",
    "IMAGE [COMMAND] [ARG...]",
    "Create a new container",
    runopts.CREATE_FLAGS,
    min_args=1,
    interspersed=False,
    aliases=("cnm container create", "cnm create"),
)
RUN = F.Command(
    "cnm run",
    "IMAGE [COMMAND] [ARG...]",
    "Create and run a new container from an image",
    runopts.RUN_FLAGS,
    min_args=1,
    interspersed=False,
    aliases=("cnm container run", "cnm run"),
)


def status_error(verb: str, message: str) -> CliError:
    """``toStatusError``: Docker's exit code (125/126/127) and its "Run … --help" hint."""
    code = 125
    if "executable file not found" in message or "no such file or directory" in message:
        code = 127
    elif "permission denied" in message or "is a directory" in message:
        code = 126
    return CliError(f"cnm: {message}\n\nRun 'cnm {verb} --help' for more information", code)


def _build(
    cli: Cli, v: dict, changed: set[str], args: list[str], detach: bool, verb: str
) -> tuple[dict, str]:
    image, cmd = args[0], args[1:]
    console = None
    if v["tty"]:
        from cnm.cli.hijack import terminal_size

        console = terminal_size(1)
    try:
        body = runopts.create_body(v, changed, image, cmd, detach, cli.env, console)
    except ValueError as exc:
        raise status_error(verb, str(exc)) from None
    return body, image


def create_container(cli: Cli, body: dict, name: str | None, image: str, verb: str) -> str:
    """POST /containers/create; print warnings; return the new id (errors → status_error)."""
    try:
        resp = cli.client.call("POST", "/containers/create", {"name": name or None}, body) or {}
    except DaemonError as exc:
        if exc.status == 404 and "image" in exc.daemon_message.lower():
            ref = image if ":" in image.rsplit("/", 1)[-1] or "@" in image else image + ":latest"
            cli.err(f"Unable to find image '{ref}' locally\n")
        raise status_error(verb, str(exc)) from None
    for warning in resp.get("Warnings") or []:
        cli.err(f"WARNING: {warning}\n")
    return str(resp.get("Id", ""))


def cmd_create(cli: Cli, argv: list[str]) -> int:
    v, args, changed = F.parse(CREATE, argv)
    body, image = _build(cli, v, changed, args, False, "create")
    cli.out(create_container(cli, body, v["name"], image, "create") + "\n")
    return 0


def _wait_head(cli: Cli, cid: str, auto_remove: bool, condition: str = "next-exit") -> Response:
    """Open ``POST /wait`` and read only its head: the daemon must be watching before we start."""
    resp = cli.client.open(
        "POST", f"/containers/{quote(cid)}/wait", {"condition": "removed" if auto_remove else condition}
    )
    if resp.status >= 400:
        try:
            raise cli.client.error_from(resp, "/containers/wait")
        finally:
            resp.close()
    return resp


def _wait_status(cli: Cli, resp: Response) -> int:
    try:
        result = resp.json() or {}
    except (OSError, CliError, ValueError) as exc:
        cli.err(f"error waiting for container: {exc}\n")
        return 125
    finally:
        resp.close()
    error = result.get("Error")
    if isinstance(error, dict) and error.get("Message"):
        cli.err(f"error waiting for container: {error['Message']}\n")
        return 125
    return int(result.get("StatusCode", 0) or 0)


def cmd_run(cli: Cli, argv: list[str]) -> int:
    v, args, changed = F.parse(RUN, argv)
    stdin_fd = sys.stdin.fileno() if v["interactive"] else None
    if not v["detach"] and v["tty"] and stdin_fd is not None and not os.isatty(stdin_fd):
        raise CliError("the input device is not a TTY")
    body, image = _build(cli, v, changed, args, v["detach"], "run")
    cid = create_container(cli, body, v["name"], image, "run")
    if v["detach"]:
        wait = _wait_head(cli, cid, v["rm"])
        try:
            try:
                cli.client.request("POST", f"/containers/{quote(cid)}/start").close()
            except DaemonError as exc:
                raise status_error("run", str(exc)) from None
        finally:
            wait.close()
        cli.out(cid + "\n")
        return 0
    return attach_and_start(
        cli,
        cid,
        tty=v["tty"],
        stdin=v["interactive"],
        auto_remove=v["rm"],
        sig_proxy=v["sig_proxy"] and not v["tty"],
        start_error_code=125,
        detach_keys=v["detach_keys"] or "",
    )


def attach_and_start(
    cli: Cli,
    cid: str,
    *,
    tty: bool,
    stdin: bool,
    auto_remove: bool,
    sig_proxy: bool = True,
    start_error_code: int = 125,
    detach_keys: str = "",
    start: bool = True,
) -> int:
    """Attach (hijack), open the wait, start, stream until the container closes the stream.
    ``start=False`` (``cnm attach``): the container already runs; only attach and wait.

    Returns the container's exit code from the wait. With ``tty`` and a terminal on stdin,
    the terminal is raw for the duration, its size follows the window (SIGWINCH ->
    resize), and the detach keys (default Ctrl-P Ctrl-Q) leave the container running:
    then 0 is returned without waiting.  Without a tty SIGINT/SIGTERM are forwarded.
    """
    from cnm.cli.hijack import detach_key_bytes, pump, raw_terminal

    interactive_tty = tty and stdin and os.isatty(sys.stdin.fileno())
    keys = detach_key_bytes(detach_keys) if interactive_tty else b""
    query = {
        "stream": "1",
        "stdin": "1" if stdin else None,
        "stdout": "1",
        "stderr": "1",
        "detachKeys": detach_keys or None,
    }
    sock, initial = cli.client.hijack(f"/containers/{quote(cid)}/attach", query)
    detached = False
    try:
        wait = _wait_head(cli, cid, auto_remove, "next-exit" if start else "not-running")
        try:
            if start:
                cli.client.request("POST", f"/containers/{quote(cid)}/start").close()
        except DaemonError as exc:
            wait.close()
            if start_error_code == 125:
                raise status_error("run", str(exc)) from None
            raise
        restore = _proxy_signals(cli, cid) if sig_proxy else None
        restore_winch = _follow_window(cli, cid) if tty else None
        cli.flush()
        stdin_fd = sys.stdin.fileno() if stdin else None
        try:
            if tty and stdin_fd is not None:
                with raw_terminal(stdin_fd):
                    detached = pump(sock, initial, True, stdin_fd, detach_keys=keys)
            else:
                pump(sock, initial, tty, stdin_fd)
        finally:
            if restore:
                restore()
            if restore_winch:
                restore_winch()
    finally:
        sock.close()
    if detached:
        wait.close()
        return 0
    return _wait_status(cli, wait)


def _follow_window(cli: Cli, cid: str) -> Callable[[], object]:
    """Send the terminal's size now and at every SIGWINCH (``POST /resize``); a restorer."""
    import signal

    from cnm.cli.hijack import terminal_size

    def send(*_args: object) -> None:
        size = terminal_size(1)
        if not size:
            return
        try:
            cli.client.request(
                "POST", f"/containers/{quote(cid)}/resize", {"h": size[0], "w": size[1]}
            ).close()
        except (DaemonError, CliError):
            pass  # resizing is best effort, as in Docker's CLI

    send()
    saved = signal.signal(signal.SIGWINCH, send)
    return lambda: signal.signal(signal.SIGWINCH, saved)


def _proxy_signals(cli: Cli, cid: str) -> Callable[[], object]:
    """Forward SIGINT/SIGTERM to the container (``POST /kill?signal=``); return a restorer."""
    import signal

    def forward(signum: int, _frame: object) -> None:
        try:
            cli.client.request(
                "POST", f"/containers/{quote(cid)}/kill", {"signal": signal.Signals(signum).name}
            ).close()
        except CliError:
            pass

    saved = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for s, handler in saved.items():
            signal.signal(s, handler)

    return restore
