#!/usr/bin/env python3
"""bench/run_output.py — does ``run --rm busybox echo hi`` print ``hi`` every time?

Everything runs in one throwaway host (tests/harness.py); nothing on this machine changes.
For each mode it runs the command N times in a row and prints how many runs printed exactly
``hi`` and exited 0, through ``cnm`` and through the docker CLI (``DOCKER_HOST`` = the
sandbox's socket) when it is installed.  Modes: plain, ``--net host``, ``--net none``,
``-t``, and a command that sleeps before it prints.  Goal (issue 7): N of N in every mode.

    bench/run_output.py --image images/busybox.tar [-n 200] [--mode plain] [--client cnm]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import TestHost, venv_bin  # noqa: E402

MODES: dict[str, tuple[list[str], list[str]]] = {
    "plain": ([], ["echo", "hi"]),
    "net-host": (["--net", "host"], ["echo", "hi"]),
    "net-none": (["--net", "none"], ["echo", "hi"]),
    "tty": (["-t"], ["echo", "hi"]),
    "sleep": ([], ["sh", "-c", "sleep 0.3; echo hi"]),
}
DOCKER = "/usr/local/bin/docker"


def client_argv(host: TestHost, client: str) -> list[str]:
    if client == "cnm":
        return [venv_bin("cnm"), "-H", host.host_uri]
    return [DOCKER, "-H", host.host_uri]


def one_run(host: TestHost, client: str, mode: str) -> tuple[bool, str]:
    """One ``run --rm``: (printed exactly ``hi`` and exited 0, what it printed)."""
    opts, cmd = MODES[mode]
    argv = [*client_argv(host, client), "run", "--rm", *opts, "busybox", *cmd]
    env = {"CNM_NO_AUTOSTART": "1", "DOCKER_CONFIG": str(host.tmp / "docker-config")}
    proc = host.run(argv, check=False, timeout=60, env=env)
    out = proc.stdout.replace("\r\n", "\n")
    ok = proc.returncode == 0 and out == "hi\n"
    return ok, f"rc={proc.returncode} out={proc.stdout!r} err={proc.stderr.strip()[-200:]!r}"


def loop(host: TestHost, client: str, mode: str, runs: int, verbose: bool = False) -> tuple[int, list[str]]:
    """How many of ``runs`` runs were correct, and the first few failures."""
    good, failures = 0, []
    for _ in range(runs):
        ok, detail = one_run(host, client, mode)
        good += ok
        if not ok and len(failures) < 3:
            failures.append(detail)
            if verbose:
                print("   ", detail, flush=True)
    return good, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True, help="busybox root filesystem tar")
    parser.add_argument("-n", "--runs", type=int, default=200)
    parser.add_argument("--mode", action="append", choices=sorted(MODES), help="default: all")
    parser.add_argument("--client", action="append", choices=("cnm", "docker"), help="default: both")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    clients = args.client or ["cnm", "docker"]
    if "docker" in clients and not shutil.which(DOCKER):
        print(f"docker CLI: absent ({DOCKER} missing)")
        clients.remove("docker")
    if os.geteuid() != 0:
        print("run_output: needs root (throwaway namespaces)", file=sys.stderr)
        return 1
    total_bad = 0
    with TestHost() as host:
        host.start_daemon()
        host.import_image(os.path.abspath(args.image), "busybox")
        (host.tmp / "docker-config").mkdir()
        print(f"{'client':8} {'mode':9} {'correct':>12}  seconds")
        for client in clients:
            for mode in args.mode or list(MODES):
                began = time.monotonic()
                good, failures = loop(host, client, mode, args.runs, args.verbose)
                total_bad += args.runs - good
                print(
                    f"{client:8} {mode:9} {good:>5} of {args.runs:<4} {time.monotonic() - began:7.1f}",
                    flush=True,
                )
                for detail in failures:
                    print("    e.g.", detail)
    return 1 if total_bad else 0


if __name__ == "__main__":
    sys.exit(main())
