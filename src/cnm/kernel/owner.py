"""Which cnmd owns a kernel object, and whether that cnmd is alive.

Several cnmd may share one network namespace (each with its own roots and bridge name), so
"owned by cnm" is not enough to call an object stale: it must be owned by *this* daemon.

Owns:

* the daemon's identity tag: ``DaemonBeacon`` binds the abstract unix socket
  ``@cnmd:<daemon id>:<pid>`` in the daemon's network namespace for its whole life.  The
  kernel drops it the instant the process dies (even by SIGKILL), so the beacon is a
  liveness signal that can never go stale, and it lives in the very namespace whose links,
  rules and addresses the daemon programs.
* ``live_daemons()``: the beacons visible in the calling process's network namespace
  (``/proc/net/unix`` lists the sockets of the reader's namespace).

The daemon id comes from the data root (``cnm.daemon``), which one daemon at a time holds
locked: two live daemons never share an id.
"""

from __future__ import annotations

import re
import socket

from cnm.errors import Conflict, KernelError

BEACON_PREFIX = "cnmd:"
_DAEMON_ID = re.compile(r"^[0-9a-f]{8,32}$")
_BEACON = re.compile(r"^@cnmd:([0-9a-f]{8,32}):(\d+)$")


def check_daemon_id(daemon_id: str) -> str:
    if not _DAEMON_ID.match(daemon_id):
        raise KernelError(f"invalid daemon id {daemon_id!r}: expected 8-32 lowercase hex digits")
    return daemon_id


class DaemonBeacon:
    """The abstract socket announcing that daemon ``daemon_id`` (process ``pid``) is alive
    in this network namespace; ``close()`` withdraws it (process death does too)."""

    def __init__(self, daemon_id: str, pid: int) -> None:
        check_daemon_id(daemon_id)
        others = live_daemons().get(daemon_id)
        if others:
            raise Conflict(f"a cnmd with daemon id {daemon_id} (pid {others}) is already running here")
        self.name = f"{BEACON_PREFIX}{daemon_id}:{pid}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            self._sock.bind("\0" + self.name)
        except OSError as exc:
            self._sock.close()
            raise KernelError(f"cannot announce cnmd {daemon_id}: {exc.strerror}") from exc

    def close(self) -> None:
        self._sock.close()


def live_daemons(proc_net_unix: str = "/proc/net/unix") -> dict[str, int]:
    """{daemon id: pid} of every cnmd whose beacon is bound in the caller's network
    namespace (pids as those daemons see them)."""
    found: dict[str, int] = {}
    try:
        with open(proc_net_unix, encoding="utf-8", errors="replace") as fh:
            next(fh, None)  # the header
            for line in fh:
                fields = line.split()
                if len(fields) < 8:
                    continue
                match = _BEACON.match(fields[7])
                if match:
                    found[match.group(1)] = int(match.group(2))
    except OSError as exc:
        raise KernelError(f"cannot read {proc_net_unix}: {exc.strerror}") from exc
    return found
