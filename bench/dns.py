#!/usr/bin/env python3
"""bench/dns.py — the embedded DNS server (127.0.0.11) as a container sees it.

Everything runs in throwaway hosts (tests/harness.py: private net + mount + pid namespaces);
nothing on this machine's network changes and no packet leaves it.  Figures, per engine:

* sequential UDP query latency (p50, p99, in µs) and queries per second, from inside a
  container, for a container name on the same user-defined network (answered locally);
* the same for a forwarded name (``ext.example``), answered by a stand-in upstream resolver
  (``tests/e2e/dns_upstream.py``):
  - cnm, the host's upstream: the test host's /etc/resolv.conf says ``nameserver 127.0.0.53``
    and cnmd asks it from the host's namespace (issue 4);
  - cnm and Docker, an upstream in the "world" (203.0.113.1) asked from the container's
    namespace: cnm with ``--dns 203.0.113.1``, Docker through the host's resolv.conf (it
    drops loopback nameservers, so its test host's resolv.conf names 203.0.113.1) — the
    same path for both.

Docker (``docker.io``, installed with apt when missing unless ``--no-install``) runs as a
dockerd inside its own throwaway host with its own roots, on a user-defined network.  Both
hosts are up together and the rounds alternate between them, so both engines are measured
under the same load.  The client is the same for both: this file's ``client`` subcommand,
run with the host's Python in the container's network namespace (``nsenter --net=<SandboxKey>``),
sending N sequential queries on one connected UDP socket (a process per query, as busybox
nslookup is, would measure process start-up, not the server).

Goals (issue 4): cnm's p50 <= Docker's and cnm's queries/s >= Docker's, same run, same client.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# This file is bench/dns.py: with bench/ first on sys.path, `import dns` would import this
# file instead of dnspython.  bench/ goes last, for the shared helpers of bench/common.py
# (not bench/attach.py: it puts bench/ first again).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO / "tests"))
sys.path.append(str(REPO / "bench"))

from common import ensure_package, pct, start_dockerd  # noqa: E402
from harness import HarnessError, TestHost  # noqa: E402

UPSTREAM = REPO / "tests" / "e2e" / "dns_upstream.py"
RESOLVER = "127.0.0.11"
WORLD_UPSTREAM = "203.0.113.1"  # the world namespace of every TestHost
HOST_UPSTREAM = "127.0.0.53"
FORWARDED = "ext.example"
FORWARDED_ADDRESS = "198.51.100.7"  # what dns_upstream.py answers for it
NETWORK = "benchnet"
# the floor under every forwarded figure: the stand-in itself, asked by the client directly
DIRECT = f"baseline: {WORLD_UPSTREAM} asked directly by the client"
SUBNET = {"cnm": "10.201.0.0/24", "docker": "10.241.0.0/24"}


# -- the client (runs in a container's network namespace) -----------------------------------------


def client(server: str, name: str, expect: str, count: int, warmup: int, timeout: float) -> dict:
    """``count`` sequential A queries for ``name`` to ``server``:53 on one connected UDP
    socket, after ``warmup`` untimed ones.  The first answer is parsed in full and must hold
    ``expect``; the timed ones must carry our id, NOERROR and at least one answer record.
    A query without an answer within ``timeout`` counts as lost (not in the latencies)."""
    import dns.message
    import dns.rcode

    wire = bytearray(dns.message.make_query(name, "A").to_wire())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((server, 53))
    sock.settimeout(timeout)

    sock.send(bytes(wire))
    first = dns.message.from_wire(sock.recv(4096))
    got = {rd.to_text() for rrset in first.answer for rd in rrset}
    if first.rcode() != dns.rcode.NOERROR or expect not in got:
        raise SystemExit(
            f"{name} via {server}: {dns.rcode.to_text(first.rcode())}, answers {sorted(got)}, "
            f"expected {expect}"
        )

    def one(qid: int) -> int | None:
        wire[0], wire[1] = qid >> 8, qid & 0xFF
        t0 = time.perf_counter_ns()
        sock.send(wire)
        try:
            while True:  # a late answer to an earlier (lost) query is skipped
                data = sock.recv(4096)
                if data[0] == wire[0] and data[1] == wire[1]:
                    break
        except TimeoutError:
            return None
        elapsed = time.perf_counter_ns() - t0
        if data[3] & 0x0F or not (data[6] or data[7]):
            raise SystemExit(f"{name} via {server}: answer without records (rcode {data[3] & 0x0F})")
        return elapsed

    for i in range(warmup):
        one(i & 0xFFFF)
    latencies: list[float] = []
    lost = 0
    start = time.perf_counter_ns()
    for i in range(count):
        ns = one((warmup + i) & 0xFFFF)
        if ns is None:
            lost += 1
        else:
            latencies.append(ns / 1000)
    total = (time.perf_counter_ns() - start) / 1e9
    return {"us": latencies, "lost": lost, "seconds": total}


# -- results --------------------------------------------------------------------------------------


@dataclass
class Series:
    """All rounds of one (engine, query) pair."""

    who: str
    what: str
    latencies: list[float] = field(default_factory=list)
    qps: list[float] = field(default_factory=list)
    lost: int = 0

    def add(self, run: dict) -> None:
        self.latencies += run["us"]
        self.qps.append((len(run["us"]) + run["lost"]) / run["seconds"])
        self.lost += run["lost"]

    @property
    def p50(self) -> float:
        return pct(self.latencies, 50)

    @property
    def p99(self) -> float:
        return pct(self.latencies, 99)

    @property
    def median_qps(self) -> float:
        return statistics.median(self.qps)


class Results:
    def __init__(self) -> None:
        self.series: dict[tuple[str, str], Series] = {}
        self.notes: list[str] = []

    def add(self, who: str, what: str, run: dict) -> None:
        series = self.series.setdefault((who, what), Series(who, what))
        series.add(run)
        qps = (len(run["us"]) + run["lost"]) / run["seconds"]
        print(
            f"  {who}: {what}: n={len(run['us'])} p50={pct(run['us'], 50):.1f} µs "
            f"p99={pct(run['us'], 99):.1f} µs {qps:,.0f} q/s lost={run['lost']}",
            flush=True,
        )

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def get(self, who: str, what: str) -> Series | None:
        return self.series.get((who, what))

    def render(self) -> str:
        lines = [f"{'who':<7} {'query':<58} {'n':>6} {'p50 µs':>8} {'p99 µs':>8} {'q/s':>8} {'lost':>5}"]
        for s in self.series.values():
            if s.latencies:
                lines.append(
                    f"{s.who:<7} {s.what:<58} {len(s.latencies):>6} {s.p50:>8.1f} {s.p99:>8.1f} "
                    f"{s.median_qps:>8,.0f} {s.lost:>5}"
                )
        return "\n".join(lines)


# -- the engines under test -------------------------------------------------------------------------


@dataclass
class Probe:
    """One measured query: from which sandbox, what name, what answer proves it worked."""

    what: str
    netns: str
    name: str
    expect: str
    server: str = RESOLVER


def start_upstream(host: TestHost, address: str, world: bool) -> None:
    """The stand-in resolver on ``address`` (in the world namespace when ``world``)."""
    argv = [sys.executable, str(UPSTREAM), address]
    if world:
        argv = ["ip", "netns", "exec", "world", *argv]
    proc = host.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "READY":
        raise HarnessError(f"stand-in resolver on {address} did not start: {line!r}")


def host_resolv_conf(host: TestHost, nameserver: str) -> None:
    """The test host's /etc/resolv.conf (a bind mount inside it only) names ``nameserver``."""
    resolv = host.tmp / "host-resolv.conf"
    resolv.write_text(f"nameserver {nameserver}\n")
    host.run(["mount", "--bind", str(resolv), "/etc/resolv.conf"])


def setup_cnm(host: TestHost, image: str) -> list[Probe]:
    host_resolv_conf(host, HOST_UPSTREAM)
    start_upstream(host, HOST_UPSTREAM, world=False)
    start_upstream(host, WORLD_UPSTREAM, world=True)
    host.start_daemon("--log-level", "info")  # debug logging would cost every query a log line
    host.import_image(image, "busybox")
    host.cnm("network", "create", "--subnet", SUBNET["cnm"], NETWORK)
    containers = {"peer": [], "client": [], "client-dns": ["--dns", WORLD_UPSTREAM]}
    for name, opts in containers.items():
        host.cnm(
            "run", "-d", "--name", name, "--network", NETWORK, *opts, "busybox", "sleep", "1d", timeout=90
        )
    info = {c["Name"].lstrip("/"): c for c in json.loads(host.cnm("inspect", *containers).stdout)}
    peer = info["peer"]["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]
    key = info["client"]["NetworkSettings"]["SandboxKey"]
    key_dns = info["client-dns"]["NetworkSettings"]["SandboxKey"]
    return [
        Probe("container name", key, "peer", peer),
        Probe(f"forwarded, host's {HOST_UPSTREAM} asked from host netns", key, FORWARDED, FORWARDED_ADDRESS),
        Probe(
            f"forwarded, {WORLD_UPSTREAM} asked from container netns", key_dns, FORWARDED, FORWARDED_ADDRESS
        ),
        Probe(DIRECT, key, FORWARDED, FORWARDED_ADDRESS, server=WORLD_UPSTREAM),
    ]


def setup_docker(host: TestHost, image: str) -> list[Probe]:
    # Docker drops loopback nameservers from the host's list (it would fall back to 8.8.8.8,
    # which the world namespace drops), so its host names the world's stand-in.
    host_resolv_conf(host, WORLD_UPSTREAM)
    start_upstream(host, WORLD_UPSTREAM, world=True)
    docker = start_dockerd(host, "--userland-proxy=false").cli
    host.run([*docker, "import", image, "busybox"], timeout=300)
    host.run([*docker, "network", "create", "--subnet", SUBNET["docker"], NETWORK])
    for name in ("peer", "client"):
        host.run(
            [*docker, "run", "-d", "--name", name, "--network", NETWORK, "busybox", "sleep", "1d"],
            timeout=120,
        )
    fmt = '{{.NetworkSettings.SandboxKey}} {{(index .NetworkSettings.Networks "' + NETWORK + '").IPAddress}}'
    key, _ = host.run([*docker, "inspect", "-f", fmt, "client"]).stdout.split()
    _, peer = host.run([*docker, "inspect", "-f", fmt, "peer"]).stdout.split()
    return [
        Probe("container name", key, "peer", peer),
        Probe(f"forwarded, {WORLD_UPSTREAM} asked from container netns", key, FORWARDED, FORWARDED_ADDRESS),
        Probe(DIRECT, key, FORWARDED, FORWARDED_ADDRESS, server=WORLD_UPSTREAM),
    ]


def measure(host: TestHost, probe: Probe, count: int, warmup: int) -> dict:
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "client",
        probe.server,
        probe.name,
        probe.expect,
        str(count),
        str(warmup),
    ]
    proc = host.netns_exec(probe.netns, argv, timeout=max(120, count * 0.01), check=False)
    if proc.returncode != 0:
        raise HarnessError(
            f"client exited {proc.returncode}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
        )
    return json.loads(proc.stdout)


# -- main ------------------------------------------------------------------------------------------


def ratio_line(results: Results, what_cnm: str, what_docker: str, label: str) -> None:
    cnm, docker = results.get("cnm", what_cnm), results.get("docker", what_docker)
    if cnm is None or docker is None or not cnm.latencies or not docker.latencies:
        return
    p50_ok = cnm.p50 <= docker.p50
    qps_ok = cnm.median_qps >= docker.median_qps
    print(
        f"  {label}: p50 docker {docker.p50:.1f} µs / cnm {cnm.p50:.1f} µs = {docker.p50 / cnm.p50:.2f}x "
        f"({'met' if p50_ok else 'NOT met'}); q/s cnm {cnm.median_qps:,.0f} / docker {docker.median_qps:,.0f} "
        f"= {cnm.median_qps / docker.median_qps:.2f}x ({'met' if qps_ok else 'NOT met'})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=str(REPO / "images" / "busybox.tar"))
    parser.add_argument("--queries", type=int, default=2000, help="timed queries per round (default 2000)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed queries before each round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per query, alternating engines")
    parser.add_argument("--no-docker", action="store_true", help="cnm only")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install docker.io")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/dns.py needs root (it builds network namespaces)", file=sys.stderr)
        return 1
    args.image = os.path.abspath(args.image)
    if not os.path.exists(args.image):
        print(f"no image {args.image}: run `make image`", file=sys.stderr)
        return 1
    results = Results()
    engines: list[tuple[str, TestHost, list[Probe]]] = []
    setups: list[tuple[str, Callable[[TestHost, str], list[Probe]]]] = [("cnm", setup_cnm)]
    if not args.no_docker and ensure_package("docker", results, not args.no_install):
        if shutil.which("docker"):
            setups.append(("docker", setup_docker))
        else:
            results.note("docker: absent (no docker CLI)")

    with contextlib.ExitStack() as stack:
        for who, setup in setups:
            print(f"[{who}: setting up]", flush=True)
            try:
                host = stack.enter_context(TestHost())
            except HarnessError as exc:
                results.note(f"{who}: throwaway host trouble: {exc}")
                continue
            try:
                engines.append((who, host, setup(host, args.image)))
            except Exception as exc:  # one engine failing must not hide the other's figures
                results.note(f"{who}: not measured: {exc}".splitlines()[0][:400])
                if who == "cnm":
                    print(host.daemon_log_tail(20), flush=True)
        for round_no in range(1, args.rounds + 1):
            print(f"[round {round_no}/{args.rounds}]", flush=True)
            for who, host, probes in engines:
                for probe in probes:
                    try:
                        results.add(who, probe.what, measure(host, probe, args.queries, args.warmup))
                    except Exception as exc:
                        results.note(f"{who}: {probe.what}: failed: {exc}".splitlines()[0][:400])
        for who, host, _ in engines:
            if who == "cnm" and host.daemon_pid():
                status = Path(f"/proc/{host.daemon_pid()}/status").read_text().splitlines()
                rss = next(int(ln.split()[1]) for ln in status if ln.startswith("VmRSS:"))
                results.note(f"cnm: cnmd RSS after the run: {rss / 1024:.1f} MB")

    print(
        f"\n== DNS: {args.queries} sequential UDP queries x {args.rounds} rounds per row, "
        f"from inside a container to {RESOLVER} (p50/p99 over all rounds, q/s median of rounds) =="
    )
    print(results.render())
    print("\n== cnm against Docker (goals: p50 <= Docker's, q/s >= Docker's) ==")
    ratio_line(results, "container name", "container name", "container name")
    same_path = f"forwarded, {WORLD_UPSTREAM} asked from container netns"
    ratio_line(results, same_path, same_path, "forwarded, same path")
    ratio_line(
        results,
        f"forwarded, host's {HOST_UPSTREAM} asked from host netns",
        same_path,
        f"forwarded, each engine's host upstream ({HOST_UPSTREAM} / {WORLD_UPSTREAM})",
    )
    if results.notes:
        print("\n== notes ==")
        for note in results.notes:
            print(f"  {note}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        server, name, expect, count, warmup = sys.argv[2:7]
        print(json.dumps(client(server, name, expect, int(count), int(warmup), timeout=2.0)))
        sys.exit(0)
    sys.exit(main())
