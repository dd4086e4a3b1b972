"""Start cnmd in the background when nothing answers on its unix socket.

Owns: finding the ``cnmd`` program (next to the running interpreter, i.e. the venv's bin,
else on PATH; ``CNM_CNMD`` overrides), launching it detached (new session, stdio to
``<socket dir>/cnmd.log``), and waiting up to ``timeout`` seconds for ``GET /_ping``.
Promises: returns silently once the daemon answers; otherwise raises ``ConnectError``
naming the log file.
"""

from __future__ import annotations

import os
import sys
import time

from cnm.cli.errors import ConnectError

DEFAULT_SOCKET = "/run/cnm/cnm.sock"


def find_cnmd(env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    if env.get("CNM_CNMD"):
        return env["CNM_CNMD"]
    beside = os.path.join(os.path.dirname(sys.executable), "cnmd")
    if os.access(beside, os.X_OK):
        return beside
    import shutil

    found = shutil.which("cnmd")
    if not found:
        raise ConnectError("Cannot connect to the cnm daemon and cnmd was not found "
                           f"(looked in {os.path.dirname(sys.executable)} and PATH)")
    return found


def daemon_argv(cnmd: str, socket_path: str) -> list[str]:
    """cnmd's command line: the socket, plus its directory as exec root when not the default."""
    argv = [cnmd, "-H", f"unix://{socket_path}"]
    if os.path.abspath(socket_path) != DEFAULT_SOCKET:
        argv += ["--exec-root", os.path.dirname(os.path.abspath(socket_path))]
    return argv


def _ping(socket_path: str) -> bool:
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(1.0)
        sock.connect(socket_path)
        sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: api.moby.localhost\r\nConnection: close\r\n\r\n")
        data = sock.recv(64)
        return data.startswith(b"HTTP/1.1 200") or data.startswith(b"HTTP/1.0 200")
    except OSError:
        return False
    finally:
        sock.close()


def start_daemon(socket_path: str, timeout: float = 10.0) -> None:
    """Launch cnmd for ``socket_path`` and wait until it answers ``/_ping``."""
    import subprocess

    directory = os.path.dirname(os.path.abspath(socket_path))
    os.makedirs(directory, mode=0o755, exist_ok=True)
    log_path = os.path.join(directory, "cnmd.log")
    argv = daemon_argv(find_cnmd(), socket_path)
    with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
        try:
            proc = subprocess.Popen(argv, stdin=devnull, stdout=log, stderr=log,
                                    start_new_session=True, close_fds=True)
        except OSError as exc:
            raise ConnectError(f"Cannot start the cnm daemon ({argv[0]}): {exc.strerror}") from exc
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _ping(socket_path):
            return
        if proc.poll() is not None:
            raise ConnectError(f"Cannot connect to the cnm daemon at unix://{socket_path}: cnmd exited "
                               f"with status {proc.returncode}; see {log_path}")
        time.sleep(0.02)
    raise ConnectError(f"Cannot connect to the cnm daemon at unix://{socket_path}: cnmd did not answer "
                       f"within {timeout:g}s; see {log_path}")
