"""Start cnmd in the background when nothing answers on the *default* socket.

Owns: the decision (``refusal``), finding the ``cnmd`` program (next to the running
interpreter, i.e. the venv's bin, else on PATH; ``CNM_CNMD`` overrides), launching it
detached with its default roots (new session, stdio to ``/run/cnm/cnmd.log``), and waiting
up to ``timeout`` seconds for ``GET /_ping``.

Promises: a daemon is only ever started for the default socket with the default roots --
never for a socket the user named (``-H``, ``CNM_HOST``: the caller does not even ask), and
never while any process holds a default root's lock (``<root>/cnmd.pid``, which a running
cnmd keeps ``flock``-ed): that cnmd is starting or stuck, and a second one would fight it.
``start_daemon`` returns silently once the daemon answers; otherwise raises ``ConnectError``.
"""

from __future__ import annotations

import os
import sys
import time

from cnm.cli.errors import ConnectError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_SOCKET = "/run/cnm/cnm.sock"
DEFAULT_DATA_ROOT = "/var/lib/cnm"
DEFAULT_EXEC_ROOT = "/run/cnm"
LOCK_FILE = "cnmd.pid"  # what cnmd holds locked in each root (cnm.daemon.main)


def lock_holder(path: str, proc_locks: str = "/proc/locks") -> int:
    """The pid holding a ``flock`` on ``path`` (as /proc/locks shows it; -1 when the holder
    is not visible from here), 0 when none or no such file.  Read-only: taking the lock to test it could make a starting cnmd fail."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return 0
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open(proc_locks, encoding="ascii", errors="replace") as fh:
        for line in fh:
            fields = line.split()
            if "->" in fields:  # a waiter's line: "1: -> FLOCK ..."
                continue
            if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device:
                pid = int(fields[4]) if fields[4].isdigit() else 0
                return pid if pid > 0 else -1  # 0: a holder outside our pid namespace
    return 0


def refusal(
    socket_path: str,
    roots: tuple[str, ...] = (DEFAULT_DATA_ROOT, DEFAULT_EXEC_ROOT),
    default_socket: str = DEFAULT_SOCKET,
    proc_locks: str = "/proc/locks",
) -> str:
    """Why no daemon may be started for ``socket_path`` ("" when one may)."""
    if os.path.abspath(socket_path) != default_socket:
        return f"{socket_path} is not the default socket {default_socket}"
    for root in roots:
        holder = lock_holder(os.path.join(root, LOCK_FILE), proc_locks)
        if holder:
            who = f"pid {holder}" if holder > 0 else "pid unknown"
            return (
                f"a cnmd ({who}) holds {root} but does not answer on {socket_path}; "
                "it may be starting or stuck"
            )
    return ""


def find_cnmd(env: Mapping[str, str] | None = None) -> str:
    environ = os.environ if env is None else env
    if environ.get("CNM_CNMD"):
        return environ["CNM_CNMD"]
    beside = os.path.join(os.path.dirname(sys.executable), "cnmd")
    if os.access(beside, os.X_OK):
        return beside
    import shutil

    found = shutil.which("cnmd")
    if not found:
        raise ConnectError(
            "Cannot connect to the cnm daemon and cnmd was not found "
            f"(looked in {os.path.dirname(sys.executable)} and PATH)"
        )
    return found


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
    """Launch cnmd with its defaults for the default ``socket_path`` and wait until it
    answers ``/_ping``; ConnectError (saying why) when it may not or does not."""
    import subprocess

    why = refusal(socket_path)
    if why:
        raise ConnectError(f"Cannot connect to the cnm daemon at unix://{socket_path}: {why}")
    directory = os.path.dirname(os.path.abspath(socket_path))
    os.makedirs(directory, mode=0o755, exist_ok=True)
    log_path = os.path.join(directory, "cnmd.log")
    argv = [find_cnmd()]  # its defaults: this socket, /var/lib/cnm, /run/cnm
    with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
        try:
            proc = subprocess.Popen(
                argv, stdin=devnull, stdout=log, stderr=log, start_new_session=True, close_fds=True
            )
        except OSError as exc:
            raise ConnectError(f"Cannot start the cnm daemon ({argv[0]}): {exc.strerror}") from exc
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _ping(socket_path):
            return
        if proc.poll() is not None:
            raise ConnectError(
                f"Cannot connect to the cnm daemon at unix://{socket_path}: cnmd exited "
                f"with status {proc.returncode}; see {log_path}"
            )
        time.sleep(0.02)
    raise ConnectError(
        f"Cannot connect to the cnm daemon at unix://{socket_path}: cnmd did not answer "
        f"within {timeout:g}s; see {log_path}"
    )
