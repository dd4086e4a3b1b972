"""The per-invocation context handed to every command: where to talk and where to print."""

from __future__ import annotations

import os
import sys

from cnm.cli.client import DEFAULT_HOST, Client

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing/collections.abc costs start-up time
if TYPE_CHECKING:
    from typing import TextIO


class Cli:
    """Holds the daemon address, the environment and the output streams of one ``cnm`` run.

    ``client`` is created on first use.  Auto-start (``cnm.cli.autostart``) is only ever
    offered for the default socket: never when the user named one (``-H``, ``CNM_HOST``;
    then nothing answering is an error, as with Docker) nor when ``CNM_NO_AUTOSTART`` is set.
    """

    def __init__(
        self,
        host: str | None = None,
        env: dict[str, str] | None = None,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        self.env = dict(os.environ) if env is None else env
        self.host = host or self.env.get("CNM_HOST") or DEFAULT_HOST
        self.host_named = bool(host or self.env.get("CNM_HOST"))
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            autostart = None
            if not self.host_named and not self.env.get("CNM_NO_AUTOSTART"):
                autostart = _start_daemon
            self._client = Client(self.host, autostart)
        return self._client

    def out(self, text: str) -> None:
        self.stdout.write(text)

    def err(self, text: str) -> None:
        self.stderr.write(text)

    def flush(self) -> None:
        self.stdout.flush()
        self.stderr.flush()

    def confirm(self, warning: str) -> bool:
        """Docker's prompt before a destructive verb: ``WARNING! <warning>`` and ``[y/N]``;
        True only for y/yes on stdin."""
        self.out(f"WARNING! {warning}\nAre you sure you want to continue? [y/N] ")
        self.flush()
        return sys.stdin.readline().strip().lower() in ("y", "yes")


def _start_daemon(socket_path: str) -> None:
    from cnm.cli.autostart import start_daemon  # only paid for when nothing answers

    start_daemon(socket_path)
