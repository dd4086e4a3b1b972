"""The CLI against a daemon that dies mid-reply (a fake server that closes at chosen
points), and the auto-start decision: one-line errors, non-zero exits, no traceback, and
no daemon started for a named socket or while a default root is held."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cnm.cli.autostart import LOCK_FILE, lock_holder, refusal
from cnm.cli.context import Cli

SRC = str(Path(__file__).resolve().parents[2] / "src")

HEAD_JSON = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
# what the dying daemon manages to send before its socket closes
REPLIES = {
    "nothing": b"",
    "status-line": b"HTTP/1.1 200 OK\r\n",
    "half-headers": HEAD_JSON[:30],
    "short-body": HEAD_JSON + b'Content-Length: 200\r\n\r\n[{"Id": "abc',
    "short-chunked": HEAD_JSON + b'Transfer-Encoding: chunked\r\n\r\na\r\n[{"Id": "a',
    "bad-chunk-size": HEAD_JSON + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    "truncated-json": HEAD_JSON + b'Connection: close\r\n\r\n[{"Id": "abc',
    "bad-length": HEAD_JSON + b"Content-Length: lots\r\n\r\n[]",
    "reset": None,  # close without reading the request: the client sees ECONNRESET or EPIPE
}


class DyingDaemon:
    """Accepts connections on a unix socket; answers each with ``reply`` cut short, then
    closes (``None``: closes at once, leaving the request unread)."""

    def __init__(self, path: str, reply: bytes | None) -> None:
        self.reply = reply
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                if self.reply is None:
                    continue
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(self.reply)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("point", list(REPLIES))
@pytest.mark.parametrize("command", [["ps"], ["network", "ls"], ["logs", "c1"], ["version"]], ids=" ".join)
def test_daemon_dying_mid_reply_is_a_one_line_error(tmp_path, point, command):
    path = str(tmp_path / "cnm.sock")
    server = DyingDaemon(path, REPLIES[point])
    try:
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": SRC, "CNM_NO_AUTOSTART": "1"}
        r = subprocess.run(
            [sys.executable, "-m", "cnm.cli", "-H", f"unix://{path}", *command],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
    finally:
        server.close()
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0], r.stderr


# -- auto-start ---------------------------------------------------------------------------------


def test_named_socket_never_offers_autostart():
    assert Cli(host="unix:///run/cnm/cnm.sock", env={}).client.autostart is None
    assert Cli(env={"CNM_HOST": "unix:///nonexistent"}).client.autostart is None
    assert Cli(env={"CNM_NO_AUTOSTART": "1"}).client.autostart is None
    assert Cli(env={}).client.autostart is not None  # the default socket, nothing named


def test_refusal_for_another_socket(tmp_path):
    roots = (str(tmp_path / "data"), str(tmp_path / "exec"))
    assert "not the default socket" in refusal("/nonexistent", roots, "/run/cnm/cnm.sock")
    assert refusal("/run/cnm/cnm.sock", roots, "/run/cnm/cnm.sock") == ""


def test_refusal_while_a_root_is_held(tmp_path):
    data, exec_ = tmp_path / "data", tmp_path / "exec"
    data.mkdir()
    exec_.mkdir()
    roots = (str(data), str(exec_))
    sock = str(exec_ / "cnm.sock")
    (exec_ / LOCK_FILE).write_text("stale\n")  # a pid file nobody holds: a daemon that died
    assert refusal(sock, roots, sock) == ""
    fd = os.open(data / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert lock_holder(str(data / LOCK_FILE)) == os.getpid()
        assert refusal(sock, roots, sock) == (
            f"a cnmd (pid {os.getpid()}) holds {data} but does not answer on {sock}; it may be starting or stuck"
        )
    finally:
        os.close(fd)
    assert refusal(sock, roots, sock) == ""
    assert lock_holder(str(tmp_path / "nosuch")) == 0
