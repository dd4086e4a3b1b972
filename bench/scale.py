#!/usr/bin/env python3
"""bench/scale.py — does cnm stay fast as networks and containers pile up (issue 9)?

The current code ("cnm now") beside the last release before the redesign ("cnm v0.1.0",
the git tag, extracted by tests/oldrelease.py and run with the same venv), in the same run;
Docker where bench/attach.py and bench/ports.py install it (``docker.io``; absent otherwise,
and said so).  Every engine runs in a throwaway host of its own (tests/harness.py); nothing
on this machine's network changes.  Figures:

* (a) ``network create`` p50 (``POST /networks/create`` with an explicit subnet, over the
  API socket) with 0, 250, 500, 750 and 1,000 networks already there: the p50 of the
  ``--samples`` creates that start at each of those counts.  Goal: flat.
* (b) cnmd restart: SIGTERM, then the time from starting cnmd until it answers ``/_ping``
  (it serves only once it has reconciled), with no container and with ``--containers``
  running (``busybox sleep``, half on the default bridge, half on a user network).
  Goal: <= 2 s with 1,000.
* (c) the earlier benchmarks' figures, old against new: attach (``connect`` + ``disconnect``
  over the API, p50, as bench/attach.py; both cnmd up at once in two hosts and measured in
  alternating rounds, so load drifts over both alike) and publishing 1, 50 and 500 ports (``run -d``
  until the last port answers, ``rm -f``, as bench/ports.py, nftables in kernel mode; the
  throughput paths are bench/ports.py's, left out here).

``--quick``: 0..200 networks, 100 containers, fewer samples.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, api_ok, ensure_package, pct, run_in_host, start_dockerd  # noqa: E402
from harness import HarnessError, TestHost, venv_bin  # noqa: E402
from ports import Engine, Table, start_remove  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))
from oldrelease import RELEASE, OldReleaseError, Release, extract  # noqa: E402

START_PROFILE_ENV = "CNM_START_PROFILE"  # cnmd profiles its start into this file

NOW = "cnm now"
OLD = f"cnm {RELEASE}"
DOCKER = "docker"


@dataclass(frozen=True)
class Cnm:
    """One cnm under test: how to start its cnmd and call its CLI in a throwaway host."""

    who: str
    release: Release | None  # None: the current code (the venv's cnmd and cnm)

    def start(self, host: TestHost, *flags: str, timeout: float = 60) -> None:
        if self.release is None:
            host.start_daemon(*flags, timeout=timeout)
        else:
            self.release.start_daemon(host, *flags, timeout=timeout)

    def cli(self, host: TestHost) -> list[str]:
        return [venv_bin("cnm"), "-H", host.host_uri] if self.release is None else self.release.cli(host)

    def import_image(self, host: TestHost, image: str) -> None:
        host.run([*self.cli(host), "image", "import", image, "busybox"], timeout=300)


def subnet(i: int) -> str:
    """The ``i``-th explicit /24 (10.64.0.0 up): none overlaps the default pools."""
    return f"10.{64 + i // 256}.{i % 256}.0/24"


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def level_figures(table: Table, who: str, times: list[float], levels: list[int], samples: int) -> None:
    """p50 of the ``samples`` creates starting at each level, one row per level."""
    for level in levels:
        window = times[level : level + samples]
        table.add(
            who,
            f"network create, {level} networks",
            pct(window, 50),
            "ms",
            f"n={len(window)} p99={pct(window, 99):.2f}",
        )


# -- (a) network create ----------------------------------------------------------------------------


def networks_cnm(host: TestHost, cnm: Cnm, levels: list[int], samples: int, table: Table) -> None:
    cnm.start(host, "--log-level", "info")  # debug logging would cost every create its lines
    times: list[float] = []
    for i in range(max(levels) + samples):
        body = {"Name": f"n{i}", "IPAM": {"Config": [{"Subnet": subnet(i)}]}}
        times.append(timed(lambda body=body: api_ok(host, "POST", "/networks/create", body)))
    level_figures(table, cnm.who, times, levels, samples)


def networks_docker(host: TestHost, levels: list[int], samples: int, table: Table) -> None:
    dockerd = start_dockerd(host)
    times = []
    for i in range(max(levels) + samples):
        body = {"Name": f"n{i}", "IPAM": {"Config": [{"Subnet": subnet(i)}]}}
        times.append(timed(lambda body=body: dockerd.call("POST", "/networks/create", body)))
    level_figures(table, DOCKER, times, levels, samples)


# -- (b) restart with many containers --------------------------------------------------------------


def restart_time(host: TestHost, cnm: Cnm, profile: str | None = None) -> float:
    """SIGTERM cnmd, start it again: seconds until it answers ``/_ping`` (Python's start-up
    included).  ``profile``: the file cnmd writes the profile of its start to (the
    current code only; ``CNM_START_PROFILE``)."""
    host.kill_daemon(signal.SIGTERM, timeout=120)
    if profile is not None:
        os.environ[START_PROFILE_ENV] = profile  # the harness hands cnmd this environment
    try:
        t0 = time.perf_counter()
        cnm.start(host, "--log-level", "info", timeout=600)
        return time.perf_counter() - t0
    finally:
        os.environ.pop(START_PROFILE_ENV, None)


def restart_cnm(host: TestHost, cnm: Cnm, image: str, count: int, profile: str | None, table: Table) -> None:
    cnm.start(host, "--log-level", "info")
    cnm.import_image(host, image)
    api_ok(
        host, "POST", "/networks/create", {"Name": "many", "IPAM": {"Config": [{"Subnet": "10.90.0.0/16"}]}}
    )
    empty = [restart_time(host, cnm) for _ in range(2)]
    table.add(cnm.who, "restart, 0 containers", min(empty), "s", ", ".join(f"{s:.2f}" for s in empty))

    def create_start(i: int) -> None:
        body = {
            "Image": "busybox",
            "Cmd": ["sleep", "1d"],
            "HostConfig": {"NetworkMode": "many" if i % 2 else "bridge"},
        }
        cid = api_ok(host, "POST", f"/containers/create?name=s{i}", body)["Id"]
        api_ok(host, "POST", f"/containers/{cid}/start")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(create_start, range(count)))
    print(f"  {cnm.who}: started {count} containers in {time.perf_counter() - t0:.0f} s", flush=True)
    runs = [restart_time(host, cnm) for _ in range(2)]
    if profile is not None and cnm.release is None:
        # a third restart, under the profiler (its time is not a figure: profiling slows it)
        restart_time(host, cnm, profile)
        table.note(f"{cnm.who}: profile of a start with {count} containers in {profile} (python -m pstats)")
    running = len(api_ok(host, "GET", "/containers/json"))
    if running != count:
        raise HarnessError(f"{running} of {count} containers running after the restarts")
    table.add(
        cnm.who,
        f"restart, {count} containers",
        min(runs),
        "s",
        f"start until /_ping answers, best of {', '.join(f'{s:.2f}' for s in runs)}",
    )


# -- (c) attach and ports --------------------------------------------------------------------------


def attach_setup(host: TestHost, cnm: Cnm, image: str, count: int) -> list[str]:
    """``cnm``'s cnmd in ``host`` with a network ``bench`` and ``count`` running containers
    (their ids), ready for connect+disconnect rounds."""
    cnm.start(host, "--log-level", "info")
    cnm.import_image(host, image)
    api_ok(
        host, "POST", "/networks/create", {"Name": "bench", "IPAM": {"Config": [{"Subnet": "10.200.0.0/16"}]}}
    )
    ids = []
    for i in range(count):
        cid = api_ok(
            host, "POST", f"/containers/create?name=b{i}", {"Image": "busybox", "Cmd": ["sleep", "1d"]}
        )["Id"]
        api_ok(host, "POST", f"/containers/{cid}/start")
        ids.append(cid)
    return ids


def attach_round(host: TestHost, ids: list[str]) -> list[float]:
    """One connect+disconnect of every container in ``ids`` (ms each)."""
    return [
        timed(lambda cid=cid: api_ok(host, "POST", "/networks/bench/connect", {"Container": cid}))
        + timed(lambda cid=cid: api_ok(host, "POST", "/networks/bench/disconnect", {"Container": cid}))
        for cid in ids
    ]


def attach_side_by_side(engines: list[Cnm], image: str, count: int, rounds: int, table: Table) -> None:
    """Attach p50 of every engine, each in its own host, all up at once and measured in
    alternating rounds (the order flips each round), so that the machine's load drifts
    over both alike: measured one after the other, the same code's p50 varied by 1.5x."""
    print(f"[attach, side by side: {', '.join(e.who for e in engines)}]", flush=True)
    hosts: list[TestHost] = []
    try:
        ids = []
        for cnm in engines:
            host = TestHost()
            hosts.append(host)
            host.start()
            ids.append(attach_setup(host, cnm, image, count))
        order = list(range(len(engines)))
        for i in order:
            attach_round(hosts[i], ids[i])  # warm-up
        times: list[list[float]] = [[] for _ in engines]
        for _ in range(rounds):
            for i in order:
                times[i] += attach_round(hosts[i], ids[i])
            order.reverse()
        for cnm, t in zip(engines, times, strict=True):
            table.add(
                cnm.who,
                "attach: API connect+disconnect",
                pct(t, 50),
                "ms",
                f"n={len(t)} p99={pct(t, 99):.2f}",
            )
    except HarnessError as exc:
        table.note(f"attach: not measured: {exc}")
    finally:
        for host in hosts:
            host.close()


def ports_cnm(host: TestHost, cnm: Cnm, image: str, sizes: list[int], table: Table) -> None:
    cnm.start(host, "--log-level", "info")
    cnm.import_image(host, image)
    engine = Engine(cnm.who, host, cnm.cli(host), [])
    for size in sizes:
        start_remove(engine, size, 1, 120, table)


def attach_docker(host: TestHost, image: str, count: int, table: Table) -> None:
    dockerd = start_dockerd(host, "--userland-proxy=false")
    host.run([*dockerd.cli, "import", image, "busybox"], timeout=300)
    call = dockerd.call
    call("POST", "/networks/create", {"Name": "bench", "IPAM": {"Config": [{"Subnet": "10.240.0.0/16"}]}})
    ids = []
    for i in range(count):
        cid = call("POST", f"/containers/create?name=d{i}", {"Image": "busybox", "Cmd": ["sleep", "1d"]})[
            "Id"
        ]
        call("POST", f"/containers/{cid}/start")
        ids.append(cid)
    times = [
        timed(lambda cid=cid: call("POST", "/networks/bench/connect", {"Container": cid}))
        + timed(lambda cid=cid: call("POST", "/networks/bench/disconnect", {"Container": cid}))
        for cid in ids
    ]
    table.add(DOCKER, "attach: API connect+disconnect", pct(times, 50), "ms", f"n={len(times)}")


# -- report ----------------------------------------------------------------------------------------


def report(table: Table, opts: argparse.Namespace) -> None:
    print("\n== (a) network create p50, with N networks already there (explicit subnets) ==")
    print(table.render([f"network create, {n} networks" for n in opts.levels], "ms", ".2f"))
    print("\n== (b) cnmd restart: start until it answers /_ping (reconciled) ==")
    print(table.render(["restart, 0 containers", f"restart, {opts.containers} containers"], "s", ".2f"))
    print("\n== (c) attach and publishing, old against new ==")
    print(table.render(["attach: API connect+disconnect"], "ms", ".2f"))
    print(
        table.render(
            [f"start, {n} ports" for n in opts.sizes] + [f"rm -f, {n} ports" for n in opts.sizes], "s", ".3f"
        )
    )
    print("\n== goals (issue 9) ==")
    for who in (OLD, NOW, DOCKER):
        measured = [n for n in opts.levels if table.get(who, f"network create, {n} networks") is not None]
        if len(measured) > 1:
            first = table.get(who, f"network create, {measured[0]} networks") or 0.0
            last = table.get(who, f"network create, {measured[-1]} networks") or 0.0
            print(
                f"  {who:<12} network create flat: {first:.2f} ms at {measured[0]}, {last:.2f} ms at "
                f"{measured[-1]} ({last / first:.2f}x)"
            )
        restart = table.get(who, f"restart, {opts.containers} containers") if who != DOCKER else None
        if restart is not None:
            verdict = "met" if restart <= 2 else "NOT met"
            print(f"  {who:<12} restart with {opts.containers} containers <= 2 s: {restart:.2f} s {verdict}")
    for what in ["attach: API connect+disconnect"] + [f"start, {n} ports" for n in opts.sizes]:
        old, now = table.get(OLD, what), table.get(NOW, what)
        if old is not None and now is not None:
            print(f"  {what}: now {now:.3f} vs {RELEASE} {old:.3f} ({now / old:.2f}x)")
    if table.notes:
        print("\n== notes ==")
        for text in table.notes:
            print(f"  {text}")


# -- main ------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=str(REPO / "images" / "busybox.tar"))
    parser.add_argument("--quick", action="store_true", help="0..200 networks, 100 containers, fewer samples")
    parser.add_argument("--levels", default="0,250,500,750,1000", help="network counts for (a)")
    parser.add_argument("--samples", type=int, default=20, help="creates timed at each level")
    parser.add_argument(
        "--old-max-networks", type=int, default=500, help=f"highest level {RELEASE} is measured at in (a)"
    )
    parser.add_argument("--containers", type=int, default=1000, help="running containers for (b)")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="(b): profile one more start of the current code (CPU time, cProfile) into FILE",
    )
    parser.add_argument("--attach-containers", type=int, default=50, help="containers attached in (c)")
    parser.add_argument("--attach-rounds", type=int, default=4, help="alternating rounds of attaches in (c)")
    parser.add_argument("--sizes", default="1,50,500", help="published ports in (c)")
    parser.add_argument("--parts", default="a,b,c", help="which figures: a, b, c")
    parser.add_argument("--no-old", action="store_true", help=f"do not run {RELEASE}")
    parser.add_argument("--no-docker", action="store_true", help="no Docker figures")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install docker.io")
    opts = parser.parse_args()
    if opts.quick:
        opts.levels, opts.samples, opts.containers, opts.attach_containers = "0,100,200", 10, 100, 20
    opts.levels = sorted({int(n) for n in opts.levels.split(",") if n})
    opts.sizes = sorted({int(n) for n in opts.sizes.split(",") if n})
    parts = set(opts.parts.split(","))
    if os.geteuid() != 0:
        print("bench/scale.py needs root (it builds network namespaces)", file=sys.stderr)
        return 1
    if opts.profile:
        opts.profile = os.path.abspath(opts.profile)
    image = os.path.abspath(opts.image)
    if not os.path.exists(image):
        print(f"no image {image}: run `make image`", file=sys.stderr)
        return 1
    table = Table()
    table.note(f"load average at the start: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    with tempfile.TemporaryDirectory(prefix="cnm-bench-release-") as tmp:
        engines = [Cnm(NOW, None)]
        if not opts.no_old:
            try:
                engines.insert(0, Cnm(OLD, extract(Path(tmp) / RELEASE)))
            except OldReleaseError as exc:
                print(f"bench/scale.py: {exc}", file=sys.stderr)
                return 1
        docker = not opts.no_docker and ensure_package("docker", table, not opts.no_install)
        if docker and not shutil.which("docker"):
            table.note("docker: absent (no docker CLI)")
            docker = False
        table.note("netavark, CNI: absent here (no network-create or restart figure to compare)")
        if "a" in parts:
            for cnm in engines:
                levels = opts.levels
                if cnm.release is not None and max(levels) > opts.old_max_networks:
                    # its create grows with the links already there: 1,000 networks would
                    # take it about 20 minutes to build
                    levels = [n for n in levels if n <= opts.old_max_networks]
                    table.note(
                        f"{cnm.who}: network create measured up to {max(levels)} networks "
                        f"(--old-max-networks; each create costs it more with every network)"
                    )
                run_in_host(f"{cnm.who}: network create", table, networks_cnm, cnm, levels, opts.samples)
            if docker:
                run_in_host("docker: network create", table, networks_docker, opts.levels, opts.samples)
        if "b" in parts:
            for cnm in engines:
                run_in_host(
                    f"{cnm.who}: restart", table, restart_cnm, cnm, image, opts.containers, opts.profile
                )
            if docker:
                table.note("docker: restart not measured (starting 1,000 Docker containers takes minutes)")
        if "c" in parts:
            attach_side_by_side(engines, image, opts.attach_containers, opts.attach_rounds, table)
            for cnm in engines:
                run_in_host(f"{cnm.who}: ports", table, ports_cnm, cnm, image, opts.sizes)
            if docker:
                run_in_host("docker: attach", table, attach_docker, image, opts.attach_containers)
    table.note(f"load average at the end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    report(table, opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
