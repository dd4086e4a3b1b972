#!/usr/bin/env python3
"""bench/ports.py — what publishing ports costs, and what it does to throughput (issue 3).

Everything runs in throwaway hosts (tests/harness.py: private net + mount + pid namespaces,
a "world" namespace behind wan0 203.0.113.2 <-> 203.0.113.1); nothing on this machine's
network changes.  One fresh host per cnm configuration (firewall backend x kernel NAT or
userland proxy) and one for Docker.  Figures:

* for 1, 50 and 500 published ports on one container (``-p 20000-20499:20000-20499``):
  time from ``run -d`` until the last published port answers an HTTP request (busybox
  httpd in the container, asked through the host's address), time of ``rm -f``, the extra
  processes outside the container while it runs, and the extra memory (the change in the
  summed RSS of every process outside the containers: cnmd; dockerd, containerd, shims and
  docker-proxy for Docker);
* iperf3 TCP throughput to a container (``iperf3 -s`` is the host's binary run in the
  container's netns with ``nsenter --net=<SandboxKey>``): directly to its address, through
  a published port via 127.0.0.1, via the host's address (203.0.113.2) and from the world;
  then the same with a second container holding 5,000 other mappings
  (``-p 25000-29999:25000-29999``);
* IPv6 (issue 12): a dual-stack container (``--ipv6`` network) published on one port, iperf3
  to it over each family from the host and from the world (``[2001:db8:203::2]`` beside
  203.0.113.2, ``[::1]`` beside 127.0.0.1), in the same rounds, and the v6 / v4 ratios;
* Docker 20.10 (dockerd inside the throwaway host with its own roots) from the same run:
  with its default userland proxy (one docker-proxy per port) and with
  ``--userland-proxy=false`` (DNAT only).

Goals (issue 3): 500 ports start <= 0.3 s more than 1 port and are removed in <= 0.3 s; at
most one extra process and <= 50 MB for all mappings together; kernel mode >= 95 % of direct
throughput, via 127.0.0.1 as well; proxy mode >= docker-proxy; >= 95 % of throughput kept
with 5,000 other mappings present.

``ports.py inner …`` is the timing loop that runs INSIDE a throwaway host (so no nsenter
cost lands in a figure); it prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    Dockerd,
    HarnessError,
    TestHost,
    ensure_package,
    proc_delta,
    run_in_host,
    start_dockerd,
    steady_processes,
)
from harness import HOST_ADDR, HOST_ADDR6, venv_bin  # noqa: E402

SELF = Path(__file__).resolve()
FIRST_PORT = 20000
# Below the kernel's ip_local_port_range (32768-60999): a range inside it collides with the
# ephemeral ports of live connections (the proxy's own dials, iperf3's) and is refused,
# rightly, as "address already in use" -- by cnm and by Docker alike.
OTHERS_FIRST = 25000
PERF_HOST_PORT = 15201  # published -> 5201 in the throughput container
IPERF_PORT = 5201
# "world direct": from the world to the container's own address, routed through the host (a
# route in the world namespace, and an accept in the firewall's user chain, where an admin
# would put it): the same hops as "world" without the DNAT, its fair baseline.
PATHS = ("direct", "127.0.0.1", "host address", "world direct", "world")
PUBLISHED = ("127.0.0.1", "host address", "world")
# The dual-stack container (issue 12): the same published port asked over each family.
DUAL_HOST_PORT = 15202
DUAL_NET = ("--ipv6", "--subnet", "10.90.0.0/24", "--subnet", "fd00:90::/64")
DUAL_PATHS = ("v4 loopback", "v6 loopback", "v4 host address", "v6 host address", "v4 world", "v6 world")
DUAL_PAIRS = (
    ("v6 loopback", "v4 loopback"),
    ("v6 host address", "v4 host address"),
    ("v6 world", "v4 world"),
)
DOCKER_PROXY = "docker proxy"  # dockerd's default: --userland-proxy=true
DOCKER_DNAT = "docker no-proxy"  # dockerd --userland-proxy=false


# -- inside the throwaway host ---------------------------------------------------------------------


def _answers(address: str, port: int) -> bool:
    """Does an HTTP server answer at address:port?  A short connect timeout: a SYN the kernel
    drops (a reserved port without its DNAT yet) must not cost a 1 s retransmit."""
    try:
        with socket.create_connection((address, port), timeout=0.1) as sock:
            sock.settimeout(2)
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return sock.recv(16).startswith(b"HTTP/")
    except OSError:
        return False


def inner(args: list[str]) -> int:
    """``inner start ADDR PORT TIMEOUT -- ARGV…``: run ARGV (``run -d …``), then ask ADDR:PORT
    until it answers; prints {"cli": s, "answer": s, "out": stdout}.
    ``inner time -- ARGV…``: run ARGV; prints {"s": seconds}."""
    sep = args.index("--")
    argv = args[sep + 1 :]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    cli = time.perf_counter() - t0
    if proc.returncode != 0:
        print(
            json.dumps(
                {"error": f"{' '.join(argv[:6])}… exited {proc.returncode}: {proc.stderr.strip()[-400:]}"}
            )
        )
        return 0
    if args[0] == "time":
        print(json.dumps({"s": cli}))
        return 0
    address, port, timeout = args[1], int(args[2]), float(args[3])
    while not _answers(address, port):
        if time.perf_counter() - t0 > timeout:
            print(json.dumps({"error": f"{address}:{port} did not answer within {timeout:.0f} s"}))
            return 0
        time.sleep(0.005)
    print(json.dumps({"cli": cli, "answer": time.perf_counter() - t0, "out": proc.stdout.strip()}))
    return 0


# -- figures ---------------------------------------------------------------------------------------


@dataclass
class Row:
    who: str
    what: str
    value: float
    unit: str
    detail: str = ""
    runs: list[float] = field(default_factory=list)  # the samples behind a median


@dataclass
class Table:
    """Figures as they are measured (printed at once), notes, and the closing table."""

    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(
        self, who: str, what: str, value: float, unit: str, detail: str = "", runs: Sequence[float] = ()
    ) -> None:
        self.rows.append(Row(who, what, value, unit, detail, list(runs)))
        shown = f"{value:.0f}" if unit == "processes" else f"{value:.3f}" if unit == "s" else f"{value:.2f}"
        print(f"  {who}: {what}: {shown} {unit}{f'  ({detail})' if detail else ''}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def get(self, who: str, what: str) -> float | None:
        return next((r.value for r in self.rows if r.who == who and r.what == what), None)

    def save(self, path: str) -> None:
        Path(path).write_text(
            json.dumps({"rows": [vars(r) for r in self.rows], "notes": self.notes}, indent=1)
        )

    @classmethod
    def load(cls, path: str) -> Table:
        doc = json.loads(Path(path).read_text())
        return cls([Row(**r) for r in doc["rows"]], doc["notes"])

    def whos(self) -> list[str]:
        return list(dict.fromkeys(r.who for r in self.rows))

    def render(self, whats: Sequence[str], unit: str, fmt: str) -> str:
        """One row per measurement, one column per configuration ("-": not measured)."""
        whos = [w for w in self.whos() if any(self.get(w, what) is not None for what in whats)]
        width = max([len(w) for w in whos] + [9])
        lines = [f"{'':<34}" + "".join(f" {w:>{width}}" for w in whos) + f"   [{unit}]"]
        for what in whats:
            cells = [self.get(w, what) for w in whos]
            if all(c is None for c in cells):
                continue
            lines.append(
                f"{what:<34}" + "".join(f" {'-' if c is None else format(c, fmt):>{width}}" for c in cells)
            )
        return "\n".join(lines)


# -- one configuration: start/remove and throughput --------------------------------------------------


@dataclass
class Engine:
    """How to drive one engine inside a throwaway host: its CLI and how to inspect."""

    who: str
    host: TestHost
    cli: list[str]
    user_chain: list[str]  # inserts "accept tcp to {address}:5201" at the top of the user chain

    def run(self, *args: str, timeout: float = 120) -> str:
        return self.host.run([*self.cli, *args], timeout=timeout).stdout.strip()

    def inspect(self, name: str) -> dict[str, Any]:
        return json.loads(self.run("inspect", name))[0]

    def inner(self, *args: str, timeout: float) -> dict[str, Any]:
        out = self.host.run([sys.executable, str(SELF), "inner", *args], timeout=timeout + 30).stdout
        result = json.loads(out)
        if "error" in result:
            raise HarnessError(f"{self.who}: {result['error']}")
        return result


def publish_flag(first: int, count: int) -> str:
    """``-p`` value publishing ``count`` ports from ``first`` on the same container ports."""
    return f"{first}:{first}" if count == 1 else f"{first}-{first + count - 1}:{first}-{first + count - 1}"


def start_remove(engine: Engine, count: int, reps: int, cap: float, table: Table) -> None:
    """``run -d -p …`` of a busybox httpd on the last of ``count`` published ports, until it
    answers through the host's address; processes and memory while it runs; ``rm -f``.
    Median of ``reps``; each step gives up after ``cap`` seconds."""
    last = FIRST_PORT + count - 1
    starts, removes, extra, memory = [], [], [], []
    for rep in range(reps):
        name = f"pub{count}x{rep}"
        before = steady_processes(engine.host)
        r = engine.inner(
            "start",
            HOST_ADDR,
            str(last),
            str(cap),
            "--",
            *engine.cli,
            "run",
            "-d",
            "--name",
            name,
            "-p",
            publish_flag(FIRST_PORT, count),
            "busybox",
            "httpd",
            "-f",
            "-p",
            str(last),
            "-h",
            "/",
            timeout=cap,
        )
        starts.append(r["answer"])
        delta = proc_delta(before, steady_processes(engine.host))
        extra.append(delta)
        memory.append(delta.rss_kb / 1024)
        removes.append(engine.inner("time", "--", *engine.cli, "rm", "-f", name, timeout=cap)["s"])
    table.add(
        engine.who,
        f"start, {count} ports",
        statistics.median(starts),
        "s",
        f"run -d until it answers; {', '.join(f'{s:.3f}' for s in starts)}",
    )
    table.add(
        engine.who,
        f"rm -f, {count} ports",
        statistics.median(removes),
        "s",
        ", ".join(f"{s:.3f}" for s in removes),
    )
    worst = max(extra, key=lambda d: d.count)
    table.add(engine.who, f"extra processes, {count} ports", worst.count, "processes", worst.describe())
    table.add(
        engine.who,
        f"extra memory, {count} ports",
        statistics.median(memory),
        "MB",
        "RSS of every process outside the containers, after minus before",
    )


def iperf(engine: Engine, path: str, address: str, port: int, seconds: float) -> float:
    """One iperf3 TCP run to ``address:port`` from the host (or from the world for the
    paths starting with "world"), in Gbit/s."""
    argv = ["iperf3", "-c", address, "-p", str(port), "-t", str(seconds), "-J", "--connect-timeout", "3000"]
    if path.startswith("world"):
        argv = ["ip", "netns", "exec", "world", *argv]
    try:
        proc = engine.host.run(argv, check=False, timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        raise HarnessError(
            f"iperf3 {path} ({address}:{port}) did not finish within {seconds + 30:.0f} s"
        ) from None
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        raise HarnessError(f"iperf3 {path}: {proc.stderr.strip() or proc.stdout.strip()}") from None
    if "error" in doc:
        raise HarnessError(f"iperf3 {path} ({address}:{port}): {doc['error']}")
    return doc["end"]["sum_received"]["bits_per_second"] / 1e9


@dataclass
class PerfTarget:
    """A running container with ``iperf3 -s`` in its netns, published on PERF_HOST_PORT."""

    address: str
    pidfile: Path


def start_perf_target(engine: Engine, name: str) -> PerfTarget:
    engine.run("run", "-d", "--name", name, "-p", f"{PERF_HOST_PORT}:{IPERF_PORT}", "busybox", "sleep", "1d")
    info = engine.inspect(name)
    key = info["NetworkSettings"]["SandboxKey"]
    address = next(iter(info["NetworkSettings"]["Networks"].values()))["IPAddress"]
    pidfile = engine.host.tmp / f"iperf3-{name}.pid"
    engine.host.world(["ip", "route", "replace", f"{address}/32", "via", HOST_ADDR])
    engine.host.run([arg.format(address=address) for arg in engine.user_chain])
    engine.host.run(
        ["nsenter", f"--net={key}", "iperf3", "-s", "-p", str(IPERF_PORT), "-D", "-I", str(pidfile)]
    )
    deadline = time.monotonic() + 10
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    return PerfTarget(address, pidfile)


def stop_perf_target(engine: Engine, target: PerfTarget, name: str) -> None:
    if target.pidfile.exists():
        engine.host.run(["kill", target.pidfile.read_text().strip()], check=False)
    engine.run("rm", "-f", name)


@dataclass
class Rounds:
    """iperf3 figures in rounds: each round measures every path once, back to back, so a
    change in the machine's load (other work on it) touches every path of a round alike and
    ratios are taken within a round."""

    engine: Engine
    target: PerfTarget
    seconds: float
    table: Table
    failed: set[str] = field(default_factory=set)

    def measure(self, suffix: str = "") -> dict[str, float]:
        where = {
            "direct": (self.target.address, IPERF_PORT),
            "127.0.0.1": ("127.0.0.1", PERF_HOST_PORT),
            "host address": (HOST_ADDR, PERF_HOST_PORT),
            "world direct": (self.target.address, IPERF_PORT),
            "world": (HOST_ADDR, PERF_HOST_PORT),
        }
        found = {}
        for path in PATHS:
            if path + suffix in self.failed:
                continue
            try:
                found[path] = iperf(self.engine, path, *where[path], self.seconds)
            except HarnessError as exc:  # noted once; the other paths still run
                self.failed.add(path + suffix)
                self.table.note(f"{self.engine.who}: tcp {path}{suffix}: not measured: {exc}"[:400])
        return found


def record_throughput(
    table: Table,
    who: str,
    plain: list[dict[str, float]],
    loaded: list[dict[str, float]],
    others: int,
    paired: bool,
) -> None:
    """Median Gbit/s per path; each published path as a share of direct (median of the
    per-round ratios); with ``loaded`` rounds, what each path keeps with ``others`` other
    mappings present (per-round ratios when ``paired``, else the ratio of the medians)."""

    def values(rounds: list[dict[str, float]], path: str) -> list[float]:
        return [r[path] for r in rounds if path in r]

    for path in PATHS:
        if values(plain, path):
            table.add(
                who,
                f"tcp {path}",
                statistics.median(values(plain, path)),
                "Gbit/s",
                "runs " + ", ".join(f"{v:.2f}" for v in values(plain, path)),
                values(plain, path),
            )
    for path in PATHS[1:]:
        ratios = [r[path] / r["direct"] for r in plain if path in r and r.get("direct")]
        if ratios:
            table.add(
                who,
                f"tcp {path} / direct",
                100 * statistics.median(ratios),
                "%",
                "per round " + ", ".join(f"{100 * v:.0f}" for v in ratios),
            )
    ratios = [r["world"] / r["world direct"] for r in plain if "world" in r and r.get("world direct")]
    if ratios:
        table.add(
            who,
            "tcp world / world direct",
            100 * statistics.median(ratios),
            "%",
            "per round " + ", ".join(f"{100 * v:.0f}" for v in ratios),
        )
    for path in PATHS:
        if not values(loaded, path):
            continue
        table.add(
            who,
            f"tcp {path}, {others} others",
            statistics.median(values(loaded, path)),
            "Gbit/s",
            "runs " + ", ".join(f"{v:.2f}" for v in values(loaded, path)),
        )
        if paired:
            kept = [
                lo[path] / pl[path]
                for pl, lo in zip(plain, loaded, strict=False)
                if path in pl and path in lo
            ]
            table.add(
                who,
                f"tcp {path} kept, {others} others",
                100 * statistics.median(kept),
                "%",
                "per round " + ", ".join(f"{100 * v:.0f}" for v in kept),
            )
        elif values(plain, path):
            ratio = statistics.median(values(loaded, path)) / statistics.median(values(plain, path))
            table.add(who, f"tcp {path} kept, {others} others", 100 * ratio, "%", "ratio of the medians")


@dataclass
class Others:
    """A second container holding ``count`` other mappings (``-p 25000-…``)."""

    engine: Engine
    count: int
    cap: float
    starts: list[float] = field(default_factory=list)
    removes: list[float] = field(default_factory=list)

    def install(self, table: Table, account: bool) -> None:
        """Run it; with ``account``, record the processes and memory it adds."""
        before = steady_processes(self.engine.host)
        r = self.engine.inner(
            "time",
            "--",
            *self.engine.cli,
            "run",
            "-d",
            "--name",
            "others",
            "-p",
            publish_flag(OTHERS_FIRST, self.count),
            "busybox",
            "sleep",
            "1d",
            timeout=self.cap,
        )
        self.starts.append(r["s"])
        if account:
            delta = proc_delta(before, steady_processes(self.engine.host))
            who = self.engine.who
            table.add(
                who, f"extra processes, {self.count} other ports", delta.count, "processes", delta.describe()
            )
            table.add(who, f"extra memory, {self.count} other ports", delta.rss_kb / 1024, "MB")

    def remove(self) -> None:
        r = self.engine.inner("time", "--", *self.engine.cli, "rm", "-f", "others", timeout=self.cap)
        self.removes.append(r["s"])

    def record(self, table: Table) -> None:
        if self.starts:
            table.add(
                self.engine.who,
                f"run -d, {self.count} other ports",
                statistics.median(self.starts),
                "s",
                ", ".join(f"{v:.3f}" for v in self.starts),
            )
        if self.removes:
            table.add(
                self.engine.who,
                f"rm -f, {self.count} other ports",
                statistics.median(self.removes),
                "s",
                ", ".join(f"{v:.3f}" for v in self.removes),
            )


# -- cnm ---------------------------------------------------------------------------------------------


def bench_cnm(
    host: TestHost, image: str, backend: str, proxy: bool, opts: argparse.Namespace, table: Table
) -> None:
    host.start_daemon(
        "--firewall-backend",
        backend,
        f"--userland-proxy={'true' if proxy else 'false'}",
        "--log-level",
        "info",
    )
    host.import_image(image, "busybox")
    user_chain = {
        "nftables": [
            "nft",
            "insert",
            "rule",
            "ip",
            "cnm",
            "user",
            "ip",
            "daddr",
            "{address}",
            "tcp",
            "dport",
            str(IPERF_PORT),
            "accept",
        ],
        "iptables": [
            "iptables",
            "-I",
            "CNM-USER",
            "-d",
            "{address}",
            "-p",
            "tcp",
            "--dport",
            str(IPERF_PORT),
            "-j",
            "ACCEPT",
        ],
    }[backend]
    engine = Engine(
        f"cnm {backend} {'proxy' if proxy else 'kernel'}",
        host,
        [venv_bin("cnm"), "-H", host.host_uri],
        user_chain,
    )
    engine.inner(
        "start",
        HOST_ADDR,
        str(FIRST_PORT),
        "30",
        "--",
        *engine.cli,
        "run",
        "-d",
        "--name",
        "warm",
        "-p",
        f"{FIRST_PORT}:{FIRST_PORT}",
        "busybox",
        "httpd",
        "-f",
        "-p",
        str(FIRST_PORT),
        "-h",
        "/",
        timeout=30,
    )  # warm-up: the first run imports and caches what every later one uses
    engine.run("rm", "-f", "warm")
    for count in opts.sizes:
        start_remove(engine, count, opts.reps, 120, table)
    # Throughput rounds alternate without and with the other mappings, so each pair is
    # measured close together in time.
    target = start_perf_target(engine, "perf")
    rounds = Rounds(engine, target, opts.seconds, table)
    others = Others(engine, opts.others, 300) if opts.others else None
    plain, loaded = [], []
    for r in range(opts.runs):
        plain.append(rounds.measure())
        if others:
            try:
                others.install(table, account=r == 0)
            except HarnessError as exc:  # noted; the plain figures still count
                table.note(f"{engine.who}: {opts.others} other ports: {str(exc).splitlines()[0][:300]}")
                others = None
                continue
            loaded.append(rounds.measure(f", {opts.others} others"))
            others.remove()
    if others:
        others.record(table)
    record_throughput(table, engine.who, plain, loaded[: len(plain)], opts.others, paired=True)
    stop_perf_target(engine, target, "perf")
    if opts.ipv6:
        try:
            dual_stack_throughput(engine, opts, table)
        except HarnessError as exc:  # noted; the IPv4 figures above stand
            table.note(f"{engine.who}: dual stack not measured: {str(exc).splitlines()[0][:300]}")


def dual_stack_throughput(engine: Engine, opts: argparse.Namespace, table: Table) -> None:
    """iperf3 to one dual-stack container published on DUAL_HOST_PORT, over IPv4 and IPv6
    alike, every path once per round; the v6 / v4 ratio of each pair (median per round)."""
    engine.run("network", "create", *DUAL_NET, "dual")
    engine.run(
        "run",
        "-d",
        "--name",
        "dual",
        "--network",
        "dual",
        "-p",
        f"{DUAL_HOST_PORT}:{IPERF_PORT}",
        "busybox",
        "sleep",
        "1d",
    )
    key = engine.inspect("dual")["NetworkSettings"]["SandboxKey"]
    pidfile = engine.host.tmp / "iperf3-dual.pid"
    engine.host.run(
        ["nsenter", f"--net={key}", "iperf3", "-s", "-p", str(IPERF_PORT), "-D", "-I", str(pidfile)]
    )
    deadline = time.monotonic() + 10
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    where = {
        "v4 loopback": "127.0.0.1",
        "v6 loopback": "::1",
        "v4 host address": HOST_ADDR,
        "v6 host address": HOST_ADDR6,
        "v4 world": HOST_ADDR,
        "v6 world": HOST_ADDR6,
    }
    rounds: list[dict[str, float]] = []
    failed: set[str] = set()
    for _ in range(opts.runs):
        found = {}
        for path in DUAL_PATHS:
            if path in failed:
                continue
            how = "world" if path.endswith("world") else path
            try:
                found[path] = iperf(engine, how, where[path], DUAL_HOST_PORT, opts.seconds)
            except HarnessError as exc:
                failed.add(path)
                table.note(f"{engine.who}: dual-stack tcp {path}: not measured: {exc}"[:400])
        rounds.append(found)
    for path in DUAL_PATHS:
        runs = [r[path] for r in rounds if path in r]
        if runs:
            table.add(
                engine.who,
                f"dual tcp {path}",
                statistics.median(runs),
                "Gbit/s",
                "runs " + ", ".join(f"{v:.2f}" for v in runs),
                runs,
            )
    for v6, v4 in DUAL_PAIRS:
        ratios = [r[v6] / r[v4] for r in rounds if r.get(v4) and v6 in r]
        if ratios:
            table.add(
                engine.who,
                f"dual {v6} / v4",
                100 * statistics.median(ratios),
                "%",
                "per round " + ", ".join(f"{100 * v:.0f}" for v in ratios),
            )
    if pidfile.exists():
        engine.host.run(["kill", pidfile.read_text().strip()], check=False)
    engine.run("rm", "-f", "dual")
    engine.run("network", "rm", "dual")


# -- docker ------------------------------------------------------------------------------------------


def bench_docker(host: TestHost, image: str, opts: argparse.Namespace, table: Table) -> None:
    """Docker with its default userland proxy, then with --userland-proxy=false."""
    for who, flags in ((DOCKER_PROXY, ()), (DOCKER_DNAT, ("--userland-proxy=false",))):
        dockerd = start_dockerd(host, *flags)
        engine = Engine(
            who,
            host,
            dockerd.cli,
            [
                "iptables",
                "-I",
                "DOCKER-USER",
                "-d",
                "{address}",
                "-p",
                "tcp",
                "--dport",
                str(IPERF_PORT),
                "-j",
                "ACCEPT",
            ],
        )
        if who == DOCKER_PROXY:
            host.run([*dockerd.cli, "import", image, "busybox"], timeout=300)
        try:
            docker_round(engine, dockerd, opts, table)
        finally:
            dockerd.stop(timeout=max(120, opts.docker_cap))


def docker_round(engine: Engine, dockerd: Dockerd, opts: argparse.Namespace, table: Table) -> None:
    sizes = [n for n in opts.sizes if n <= opts.docker_max_ports]
    skipped = [n for n in opts.sizes if n > opts.docker_max_ports]
    if skipped:
        table.note(f"{engine.who}: {skipped} ports not measured (--docker-max-ports {opts.docker_max_ports})")
    for count in sizes:
        try:
            start_remove(engine, count, 1, opts.docker_cap, table)
        except (HarnessError, subprocess.TimeoutExpired) as exc:
            table.note(
                f"{engine.who}: {count} ports: not measured within the {opts.docker_cap:.0f} s cap: "
                f"{str(exc).splitlines()[0][:200]}"
            )
            return  # dockerd may still be busy with it; later figures would be skewed
    target = start_perf_target(engine, "perf")
    rounds = Rounds(engine, target, opts.seconds, table)
    plain = [rounds.measure() for _ in range(opts.runs)]
    loaded = []
    # docker-proxy would need 10,000 processes for 5,000 mappings: only the DNAT round gets them,
    # installed once (Docker takes far too long to add and remove them every round).
    if opts.others and opts.docker_others and engine.who == DOCKER_DNAT:
        others = Others(engine, opts.others, opts.docker_cap)
        try:
            others.install(table, account=True)
            loaded = [rounds.measure(f", {opts.others} others") for _ in range(opts.runs)]
            others.remove()
        except (HarnessError, subprocess.TimeoutExpired) as exc:
            table.note(
                f"{engine.who}: {opts.others} other ports: not measured within the "
                f"{opts.docker_cap:.0f} s cap: {str(exc).splitlines()[0][:200]}"
            )
        others.record(table)
    record_throughput(table, engine.who, plain, loaded, opts.others, paired=False)
    if not loaded and opts.others and engine.who == DOCKER_DNAT and opts.docker_others:
        return  # dockerd may still be busy with the 5,000 mappings
    stop_perf_target(engine, target, "perf")


# -- goals -------------------------------------------------------------------------------------------


def goal_lines(table: Table, opts: argparse.Namespace) -> list[str]:
    """Each goal of issue 3 beside the figure it judges, for every cnm configuration."""
    lines: list[str] = []
    small, big, others = min(opts.sizes), max(opts.sizes), opts.others

    def judge(who: str, goal: str, figure: str, ok: bool | None, noisy: str = "") -> None:
        mark = "-" if ok is None else "met" if ok else "NOT met"
        lines.append(f"  {who:<20} {goal:<48} {figure:<44} {mark}{noisy}")

    def noise(who: str, kept: bool = False) -> str:
        """How much the direct path (which publishing does not touch) moved between rounds,
        or, for a "kept" goal, with the other mappings present: a throughput goal judged
        inside that band says little."""
        runs = next((r.runs for r in table.rows if r.who == who and r.what == "tcp direct"), [])
        spread = (max(runs) - min(runs)) / 2 / statistics.median(runs) if len(runs) > 1 else 0.0
        control = table.get(who, f"tcp direct kept, {others} others") if kept else None
        if control is not None and abs(control - 100) / 100 > spread:
            return (
                f"  (inconclusive: direct, untouched by mappings, kept {control:.0f} %)"
                if abs(control - 100) > 5
                else ""
            )
        return (
            f"  (inconclusive: direct varied ±{100 * spread:.0f} % between rounds)" if spread > 0.05 else ""
        )

    docker_abs = table.get(DOCKER_PROXY, "tcp 127.0.0.1")
    docker_pct = table.get(DOCKER_PROXY, "tcp 127.0.0.1 / direct")
    for who in [w for w in table.whos() if w.startswith("cnm")]:

        def get(what: str, who: str = who) -> float | None:
            return table.get(who, what)

        s_small, s_big = get(f"start, {small} ports"), get(f"start, {big} ports")
        if s_small is not None and s_big is not None and big != small:
            judge(
                who,
                f"start {big} ports <= start {small} port + 0.3 s",
                f"{s_big:.3f} - {s_small:.3f} = {s_big - s_small:+.3f} s",
                s_big - s_small <= 0.3,
            )
        rm = get(f"rm -f, {big} ports")
        if rm is not None:
            judge(who, f"rm -f {big} ports <= 0.3 s", f"{rm:.3f} s", rm <= 0.3)
        procs, mem = get(f"extra processes, {big} ports"), get(f"extra memory, {big} ports")
        if procs is not None and mem is not None:
            judge(
                who,
                f"<= 1 extra process, <= 50 MB ({big} ports)",
                f"{procs:.0f}, {mem:.1f} MB",
                procs <= 1 and mem <= 50,
            )
        oprocs, omem = (
            get(f"extra processes, {others} other ports"),
            get(f"extra memory, {others} other ports"),
        )
        if oprocs is not None and omem is not None:
            judge(
                who,
                f"<= 1 extra process, <= 50 MB ({others} ports)",
                f"{oprocs:.0f}, {omem:.1f} MB",
                oprocs <= 1 and omem <= 50,
            )
        for path in PUBLISHED:
            share = get(f"tcp {path} / direct")
            if share is None:
                continue
            if who.endswith("kernel"):
                judge(who, f"tcp {path} >= 95 % of direct", f"{share:.1f} %", share >= 95, noise(who))
                routed = get("tcp world / world direct")
                if path == "world" and routed is not None:
                    judge(
                        who,
                        "tcp world >= 95 % of world direct (same hops)",
                        f"{routed:.1f} %",
                        routed >= 95,
                        noise(who),
                    )
            elif path == "127.0.0.1":
                mine = get("tcp 127.0.0.1")
                if docker_pct is None or docker_abs is None or mine is None:
                    judge(
                        who,
                        "tcp 127.0.0.1 (proxy) >= docker-proxy",
                        f"{share:.1f} % of direct (no docker)",
                        None,
                    )
                else:
                    judge(
                        who,
                        "tcp 127.0.0.1 (proxy) >= docker-proxy (% of direct)",
                        f"{share:.1f} % vs {docker_pct:.1f} % ({mine:.2f} vs {docker_abs:.2f} Gbit/s)",
                        share >= docker_pct,
                        noise(who),
                    )
        for path in PUBLISHED:
            kept = get(f"tcp {path} kept, {others} others")
            if kept is not None:
                judge(
                    who,
                    f"tcp {path} >= 95 % kept with {others} others",
                    f"{kept:.1f} %",
                    kept >= 95,
                    noise(who, kept=True),
                )
    return lines


def report(table: Table, opts: argparse.Namespace) -> None:
    sizes, others = opts.sizes, opts.others
    print("\n== publishing: start (run -d until the last port answers) and remove (rm -f) ==")
    print(
        table.render(
            [f"start, {n} ports" for n in sizes]
            + [f"rm -f, {n} ports" for n in sizes]
            + [f"run -d, {others} other ports", f"rm -f, {others} other ports"],
            "s",
            ".3f",
        )
    )
    print("\n== publishing: extra processes and memory while the container runs ==")
    print(
        table.render(
            [f"extra processes, {n} ports" for n in sizes] + [f"extra processes, {others} other ports"],
            "processes",
            ".0f",
        )
    )
    print(
        table.render(
            [f"extra memory, {n} ports" for n in sizes] + [f"extra memory, {others} other ports"], "MB", ".1f"
        )
    )
    print(f"\n== iperf3 TCP throughput (median of {opts.runs} rounds of {opts.seconds:g} s per path) ==")
    print(
        table.render(
            [f"tcp {p}" for p in PATHS] + [f"tcp {p}, {others} others" for p in PATHS], "Gbit/s", ".2f"
        )
    )
    print(
        table.render(
            [f"tcp {p} / direct" for p in PATHS[1:]]
            + ["tcp world / world direct"]
            + [f"tcp {p} kept, {others} others" for p in PATHS],
            "%",
            ".1f",
        )
    )
    print(
        "  issue 3, measured earlier on this kind of machine: direct 15.9, docker-proxy via 127.0.0.1 11.4, "
        "DNAT 15.9 Gbit/s"
    )
    if opts.ipv6:
        print(f"\n== IPv6: one dual-stack container, -p {DUAL_HOST_PORT}:{IPERF_PORT}, each family ==")
        print(table.render([f"dual tcp {p}" for p in DUAL_PATHS], "Gbit/s", ".2f"))
        print(table.render([f"dual {v6} / v4" for v6, _ in DUAL_PAIRS], "%", ".1f"))
        print("  loopback: the kernel cannot DNAT from ::1, so [::1] goes through cnmd's proxy in every mode")
    print("\n== goals (issue 3) ==")
    print("\n".join(goal_lines(table, opts)) or "  (no cnm figures)")
    if table.notes:
        print("\n== notes ==")
        for text in table.notes:
            print(f"  {text}")


# -- main --------------------------------------------------------------------------------------------


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "inner":
        return inner(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--image", default=str(Path(__file__).resolve().parent.parent / "images" / "busybox.tar")
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one repetition, 1 s iperf3 runs, Docker without 500 ports nor 5,000 others",
    )
    parser.add_argument("--no-docker", action="store_true", help="cnm only")
    parser.add_argument("--no-cnm", action="store_true", help="Docker only")
    parser.add_argument(
        "--no-install", action="store_true", help="do not apt-get install docker.io when missing"
    )
    parser.add_argument("--backends", default="nftables,iptables")
    parser.add_argument("--modes", default="kernel,proxy")
    parser.add_argument("--sizes", default="1,50,500", help="published ports on the measured container")
    parser.add_argument("--reps", type=int, default=3, help="start/remove repetitions per size (median)")
    parser.add_argument("--seconds", type=float, default=3, help="iperf3 -t")
    parser.add_argument(
        "--runs", type=int, default=5, help="iperf3 rounds (every path once per round; median)"
    )
    parser.add_argument("--others", type=int, default=5000, help="other mappings installed (0: skip)")
    parser.add_argument(
        "--docker-cap",
        type=float,
        default=240,
        help="seconds Docker gets for one start or remove before it is given up",
    )
    parser.add_argument("--docker-max-ports", type=int, default=500)
    parser.add_argument(
        "--no-docker-others",
        dest="docker_others",
        action="store_false",
        help="skip Docker's (DNAT mode) run with 5,000 other mappings",
    )
    parser.add_argument(
        "--no-ipv6",
        dest="ipv6",
        action="store_false",
        help="skip the dual-stack container (IPv6 beside IPv4 throughput)",
    )
    parser.add_argument("--save", metavar="FILE", help="also write every figure to FILE (JSON)")
    parser.add_argument(
        "--report",
        metavar="FILE",
        help="measure nothing: print the report of a --save FILE "
        "(give the same --sizes/--others/--runs/--seconds as that run)",
    )
    opts = parser.parse_args()
    opts.sizes = sorted({int(n) for n in opts.sizes.split(",") if n})
    if opts.quick:
        opts.reps, opts.seconds, opts.runs = 1, 1, 1
        opts.docker_max_ports, opts.docker_others = min(opts.docker_max_ports, 50), False
    if opts.report:
        report(Table.load(opts.report), opts)
        return 0
    if os.geteuid() != 0:
        print("bench/ports.py needs root (it builds network namespaces)", file=sys.stderr)
        return 1
    image = os.path.abspath(opts.image)  # commands run inside the throwaway host, elsewhere
    if not os.path.exists(image):
        print(f"no image {image}: run `make image`", file=sys.stderr)
        return 1
    if not shutil.which("iperf3"):
        print("no iperf3: run `make deps`", file=sys.stderr)
        return 1
    table = Table()
    table.note(
        f"load average at the start: {' '.join(Path('/proc/loadavg').read_text().split()[:3])} "
        f"on {os.cpu_count()} CPUs (other work on this machine makes throughput noisy)"
    )
    for backend in [b for b in opts.backends.split(",") if b and not opts.no_cnm]:
        for mode in [m for m in opts.modes.split(",") if m]:
            run_in_host(f"cnm {backend} {mode}", table, bench_cnm, image, backend, mode == "proxy", opts)
    if not opts.no_docker and ensure_package("docker", table, not opts.no_install):
        if shutil.which("docker"):
            run_in_host("docker", table, bench_docker, image, opts)
        else:
            table.note("docker: absent (no docker CLI)")
    table.note(f"load average at the end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    if opts.save:
        table.save(opts.save)
    report(table, opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
