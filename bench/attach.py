#!/usr/bin/env python3
"""bench/attach.py — how long attaching a running container to a bridge network takes.

Everything runs in a throwaway host (tests/harness.py: private net + mount + pid namespaces);
nothing on this machine's network changes.  Figures:

* cnm, inside the daemon: ``POST /networks/bench/connect`` + ``/disconnect`` over the API
  socket for each of N running containers (p50/p99), then again with M more containers already
  attached to the same network (the cost must not grow with M);
* cnm, dual stack (issue 12): the same connect+disconnect to an ``EnableIPv6`` network (a v4
  and a v6 subnet) beside an IPv4-only one, the two alternating container by container in
  the same run so load on the machine touches both alike; the ratio (goal <= 1.3x);
* cnm, CLI round trip: ``cnm network connect`` + ``cnm network disconnect``;
* cnmd's RSS with all those containers running;
* peers from the same run, each installed with apt when missing (or reported as absent):
  the CNI bridge plugin (ADD+DEL), netavark 1.4 (setup+teardown), Docker (API and CLI
  connect+disconnect, dockerd started inside the throwaway host with its own roots).

Goals (issue 2): p50 <= 5 ms inside the daemon; CLI round trip <= 1/3 of Docker's;
cnmd <= 100 MB RSS with 500 containers.  Issue 12: dual stack p50 <= 1.3x IPv4-only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, api_ok, ensure_package, pct, run_in_host, start_dockerd  # noqa: E402
from harness import HarnessError, TestHost, venv_bin  # noqa: E402

INNER = REPO / "bench" / "inner.py"


# -- figures ------------------------------------------------------------------------------------


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, int, float, float]] = []
        self.notes: list[str] = []

    def add(self, who: str, what: str, values: list[float]) -> None:
        self.rows.append((who, what, len(values), pct(values, 50), pct(values, 99)))
        print(
            f"  {who}: {what}: n={len(values)} p50={pct(values, 50):.2f} ms p99={pct(values, 99):.2f} ms",
            flush=True,
        )

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def p50(self, who: str, what: str) -> float | None:
        return next((r[3] for r in self.rows if r[0] == who and r[1] == what), None)

    def render(self) -> str:
        lines = [f"{'who':<10} {'what':<52} {'n':>5} {'p50 ms':>9} {'p99 ms':>9}"]
        lines += [f"{w:<10} {what:<52} {n:>5} {p50:>9.2f} {p99:>9.2f}" for w, what, n, p50, p99 in self.rows]
        return "\n".join(lines)


# -- cnm -------------------------------------------------------------------------------------------


def start_containers(create_start: Any, count: int, workers: int = 4) -> list[str]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(create_start, range(count)))


def attach_rounds(call: Any, net: str, ids: list[str]) -> list[float]:
    times = []
    for cid in ids:
        t0 = time.perf_counter()
        call("POST", f"/networks/{net}/connect", {"Container": cid})
        call("POST", f"/networks/{net}/disconnect", {"Container": cid})
        times.append((time.perf_counter() - t0) * 1000)
    return times


DUAL_V4 = "API connect+disconnect, IPv4-only (alternating)"
DUAL_V6 = "API connect+disconnect, dual stack (alternating)"


def dual_rounds(call: Any, ids: list[str]) -> tuple[list[float], list[float]]:
    """connect+disconnect of each container to ``bench4`` (IPv4 only) and to ``bench6``
    (IPv4 and IPv6), alternating which goes first, so both see the same machine."""
    v4: list[float] = []
    v6: list[float] = []
    for i, cid in enumerate(ids):
        order = [("bench4", v4), ("bench6", v6)]
        for net, times in order if i % 2 == 0 else order[::-1]:
            times += attach_rounds(call, net, [cid])
    return v4, v6


def bench_dual(host: TestHost, call: Any, ids: list[str], table: Table) -> None:
    """The dual-stack figure beside IPv4-only; a failure is a note, the other figures stand."""
    try:
        api_ok(
            host,
            "POST",
            "/networks/create",
            {"Name": "bench4", "IPAM": {"Config": [{"Subnet": "10.202.0.0/16"}]}},
        )
        api_ok(
            host,
            "POST",
            "/networks/create",
            {
                "Name": "bench6",
                "EnableIPv6": True,
                "IPAM": {"Config": [{"Subnet": "10.203.0.0/16"}, {"Subnet": "fd00:203::/64"}]},
            },
        )
        dual_rounds(call, ids[:5])  # warm-up
        v4, v6 = dual_rounds(call, ids)
    except Exception as exc:
        table.note(f"cnm: dual stack not measured: {exc}".splitlines()[0][:400])
        return
    table.add("cnm", DUAL_V4, v4)
    table.add("cnm", DUAL_V6, v6)


def bench_cnm(
    host: TestHost,
    image: str,
    n: int,
    preload: int,
    cli_rounds: int,
    flags: list[str],
    dual: bool,
    table: Table,
) -> None:
    host.start_daemon(*flags)
    host.import_image(image, "busybox")
    api_ok(
        host, "POST", "/networks/create", {"Name": "bench", "IPAM": {"Config": [{"Subnet": "10.200.0.0/16"}]}}
    )

    def create_start(i: int) -> str:
        cid = api_ok(
            host, "POST", f"/containers/create?name=b{i}", {"Image": "busybox", "Cmd": ["sleep", "1d"]}
        )["Id"]
        api_ok(host, "POST", f"/containers/{cid}/start")
        return cid

    t0 = time.perf_counter()
    ids = start_containers(create_start, n)
    print(f"  cnm: started {n} containers in {time.perf_counter() - t0:.1f} s", flush=True)
    call = lambda m, p, b=None: api_ok(host, m, p, b)  # noqa: E731
    attach_rounds(call, "bench", ids[:5])  # warm-up
    table.add("cnm", f"API connect+disconnect ({n} containers)", attach_rounds(call, "bench", ids))
    if dual:
        bench_dual(host, call, ids, table)

    more = start_containers(lambda i: create_start(n + i), preload)
    for cid in more:
        call("POST", "/networks/bench/connect", {"Container": cid})
    table.add("cnm", f"API connect+disconnect, {preload} already attached", attach_rounds(call, "bench", ids))

    pid = host.daemon_pid()
    rss = int(
        next(
            line.split()[1]
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith("VmRSS:")
        )
    )
    table.note(
        f"cnm: cnmd RSS with {n + preload} containers running ({preload} attached to 'bench'): "
        f"{rss / 1024:.1f} MB (goal <= 100 MB)"
    )

    cli = [venv_bin("cnm"), "-H", host.host_uri]
    out = host.run(
        [sys.executable, str(INNER), "cli", str(cli_rounds), "bench", *cli, "--", *ids], timeout=1800
    ).stdout
    table.add("cnm", "CLI network connect + disconnect", json.loads(out)["roundtrip"])


# -- peers -----------------------------------------------------------------------------------------


def bench_cni(host: TestHost, n: int, table: Table) -> None:
    out = json.loads(
        host.run([sys.executable, str(INNER), "cni", str(n), str(host.tmp)], timeout=1800).stdout
    )
    table.add("cni", "bridge ADD+DEL", [a + d for a, d in zip(out["add"], out["del"], strict=True)])


def bench_netavark(host: TestHost, n: int, table: Table) -> None:
    out = json.loads(
        host.run([sys.executable, str(INNER), "netavark", str(n), str(host.tmp)], timeout=1800).stdout
    )
    table.add(
        "netavark", "setup+teardown", [a + d for a, d in zip(out["setup"], out["teardown"], strict=True)]
    )


def bench_docker(host: TestHost, image: str, n: int, cli_rounds: int, table: Table) -> None:
    try:
        dockerd = start_dockerd(host, "--userland-proxy=false")
    except HarnessError as exc:
        table.note(f"docker: {exc}")
        return
    docker = dockerd.cli
    host.run([*docker, "import", str(image), "busybox"], timeout=300)
    host.run([*docker, "network", "create", "--subnet", "10.240.0.0/16", "bench"])

    call = dockerd.call

    def create_start(i: int) -> str:
        cid = call("POST", f"/containers/create?name=d{i}", {"Image": "busybox", "Cmd": ["sleep", "1d"]})[
            "Id"
        ]
        call("POST", f"/containers/{cid}/start")
        return cid

    t0 = time.perf_counter()
    ids = start_containers(create_start, n, workers=2)
    table.note(
        f"docker: started {n} containers in {time.perf_counter() - t0:.1f} s "
        f"({(time.perf_counter() - t0) / n * 1000:.0f} ms each, 2 at a time)"
    )
    attach_rounds(call, "bench", ids[:3])
    table.add("docker", f"API connect+disconnect ({n} containers)", attach_rounds(call, "bench", ids))
    out = host.run(
        [sys.executable, str(INNER), "cli", str(cli_rounds), "bench", *docker, "--", *ids], timeout=1800
    ).stdout
    table.add("docker", "CLI network connect + disconnect", json.loads(out)["roundtrip"])


# -- main ------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=str(REPO / "images" / "busybox.tar"))
    parser.add_argument("--containers", type=int, default=200)
    parser.add_argument("--preload", type=int, default=500)
    parser.add_argument("--cli-rounds", type=int, default=50)
    parser.add_argument("--peer-rounds", type=int, default=50, help="CNI / netavark iterations")
    parser.add_argument("--docker-containers", type=int, default=50)
    parser.add_argument("--peers", default="cni,netavark,docker")
    parser.add_argument("--no-cnm", action="store_true", help="peers only")
    parser.add_argument(
        "--cnmd-flag",
        action="append",
        default=[],
        help="extra cnmd flag, e.g. --cnmd-flag=--anti-spoofing=false",
    )
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install missing peers")
    parser.add_argument(
        "--no-ipv6", dest="ipv6", action="store_false", help="skip the dual-stack beside IPv4-only figure"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 20 containers, none preloaded, 5 CLI rounds, no peers",
    )
    args = parser.parse_args()
    if args.quick:
        args.containers, args.preload, args.cli_rounds, args.peers = 20, 0, 5, ""
    if os.geteuid() != 0:
        print("bench/attach.py needs root (it builds network namespaces)", file=sys.stderr)
        return 1
    args.image = os.path.abspath(args.image)  # commands run inside the throwaway host, elsewhere
    if not os.path.exists(args.image):
        print(f"no image {args.image}: run `make image`", file=sys.stderr)
        return 1
    table = Table()
    if not args.no_cnm:
        run_in_host(
            "cnm",
            table,
            bench_cnm,
            args.image,
            args.containers,
            args.preload,
            args.cli_rounds,
            args.cnmd_flag,
            args.ipv6,
        )
    peers = [p for p in args.peers.split(",") if p]
    for peer in peers:
        if not ensure_package(peer, table, not args.no_install):
            continue
        if peer == "cni":
            run_in_host("cni", table, bench_cni, args.peer_rounds)
        elif peer == "netavark":
            run_in_host("netavark", table, bench_netavark, args.peer_rounds)
        elif peer == "docker":
            if not shutil.which("docker"):
                table.note("docker: absent (no docker CLI)")
                continue
            run_in_host("docker", table, bench_docker, args.image, args.docker_containers, args.cli_rounds)

    print("\n== attach latency ==")
    print(table.render())
    cnm_api = table.p50("cnm", f"API connect+disconnect ({args.containers} containers)")
    cnm_cli = table.p50("cnm", "CLI network connect + disconnect")
    print("\n== ratios (p50, peer / cnm; > 1 means cnm is faster) ==")
    for who, what in (
        ("cni", "bridge ADD+DEL"),
        ("netavark", "setup+teardown"),
        ("docker", f"API connect+disconnect ({args.docker_containers} containers)"),
    ):
        peer = table.p50(who, what)
        if peer is not None and cnm_api:
            print(f"  {who} {what}: {peer:.2f} ms vs cnm API {cnm_api:.2f} ms -> {peer / cnm_api:.1f}x")
    docker_cli = table.p50("docker", "CLI network connect + disconnect")
    if docker_cli is not None and cnm_cli:
        print(
            f"  docker CLI round trip: {docker_cli:.2f} ms vs cnm CLI {cnm_cli:.2f} ms -> {docker_cli / cnm_cli:.1f}x"
            f" (goal >= 3x)"
        )
    if cnm_api is not None:
        print(f"  cnm API p50 {cnm_api:.2f} ms (goal <= 5 ms): {'met' if cnm_api <= 5 else 'NOT met'}")
    v4, v6 = table.p50("cnm", DUAL_V4), table.p50("cnm", DUAL_V6)
    if v4 and v6 is not None:
        print(
            f"  cnm dual stack {v6:.2f} ms vs IPv4-only {v4:.2f} ms -> {v6 / v4:.2f}x"
            f" (goal <= 1.3x): {'met' if v6 / v4 <= 1.3 else 'NOT met'}"
        )
    if table.notes:
        print("\n== notes ==")
        for note in table.notes:
            print(f"  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
