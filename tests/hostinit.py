#!/usr/bin/env python3
"""pid 1 of a throwaway test host (started by ``tests/harness.py`` under ``unshare``).

What it owns, inside its private net + mount + pid namespaces:

* a tmpfs on ``/run`` (so ``ip netns``, runc state and cnmd's defaults stay private) and one
  on ``/var/lib/cnm`` or, where it does not exist, ``/var/lib`` (so a cnmd started with
  default roots by mistake writes nothing real);
* ``lo`` up; the "world" netns joined to the host by a veth: host ``wan0`` 203.0.113.2/24 and
  2001:db8:203::2/64, world ``eth0`` 203.0.113.1/24 and 2001:db8:203::1/64, host default routes
  (both families) via the world (the Internet stand-in; it routes nowhere else).  The v6
  addresses are added ``nodad``: usable at once, no duplicate-detection wait;
* reaping every orphan forever (containers outlive cnmd when it is killed).

It prints ``READY`` on stdout once the host is built, then closes stdout.  SIGTERM/SIGINT make
it exit, and the kernel then kills everything else in the pid namespace.  Setup failure: the
message goes to stderr and it exits 1 before printing ``READY``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

WORLD_NETNS = "world"
HOST_ADDR = "203.0.113.2/24"
WORLD_ADDR = "203.0.113.1/24"
WORLD_GATEWAY = "203.0.113.1"
HOST_ADDR6 = "2001:db8:203::2/64"
WORLD_ADDR6 = "2001:db8:203::1/64"
WORLD_GATEWAY6 = "2001:db8:203::1"

SETUP: list[list[str]] = [
    ["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run"],
    ["ip", "link", "set", "lo", "up"],
    ["ip", "netns", "add", WORLD_NETNS],
    ["ip", "link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", WORLD_NETNS],
    ["ip", "addr", "add", HOST_ADDR, "dev", "wan0"],
    ["ip", "-6", "addr", "add", HOST_ADDR6, "dev", "wan0", "nodad"],
    ["ip", "link", "set", "wan0", "up"],
    ["ip", "-n", WORLD_NETNS, "link", "set", "lo", "up"],
    ["ip", "-n", WORLD_NETNS, "addr", "add", WORLD_ADDR, "dev", "eth0"],
    ["ip", "-n", WORLD_NETNS, "-6", "addr", "add", WORLD_ADDR6, "dev", "eth0", "nodad"],
    ["ip", "-n", WORLD_NETNS, "link", "set", "eth0", "up"],
    ["ip", "route", "add", "default", "via", WORLD_GATEWAY],
    ["ip", "-6", "route", "add", "default", "via", WORLD_GATEWAY6, "dev", "wan0"],
]


def build_host() -> None:
    """Run the setup commands in order; any failure is fatal (the harness sees no READY)."""
    for argv in SETUP:
        subprocess.run(argv, check=True)
    # The default data root, hidden behind a tmpfs: an accidental default-rooted cnmd (the
    # CLI's auto-start) must not touch the real /var/lib/cnm.  Where that directory does not
    # exist, the tmpfs goes over /var/lib itself, so nothing is created on the real host.
    target = "/var/lib/cnm" if os.path.isdir("/var/lib/cnm") else "/var/lib"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", target], check=True)


def reap_forever() -> None:
    """Reap zombies until SIGTERM/SIGINT.  Signals are blocked and taken with sigwait, so a
    SIGCHLD can never slip in between a reap pass and the wait."""
    wanted = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    while True:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        if signal.sigwait(wanted) in (signal.SIGTERM, signal.SIGINT):
            sys.exit(0)


def main() -> int:
    if os.getpid() != 1:
        print("hostinit: must run as pid 1 of a new pid namespace", file=sys.stderr)
        return 2
    try:
        build_host()
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"hostinit: setup failed: {exc}", file=sys.stderr)
        return 1
    print("READY", flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    reap_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
