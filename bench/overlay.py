#!/usr/bin/env python3
"""bench/overlay.py — cnm's overlay across hosts, beside the raw kernel paths (issue 10).

One run, one lab (tests/lab.py: two throwaway hosts ``h1``, ``h2`` on an underlay bridge, one
etcd member in the lab's root, cnmd in each host with ``--cluster-store`` and
``--cluster-advertise ul0``); nothing on this machine's network changes.  Parts, chosen
with ``--parts`` (default: all), each a function of its own:

* ``connect``: a container ``probe`` on h2 sends ICMP echo requests every millisecond to
  an address no container has yet; on h1 a running container ``target`` is connected to
  the overlay network with that address (``POST /networks/{id}/connect``).  Figure: the
  time from the request until the probe's first reply (p50, p90 over ``--samples``),
  beside the time the API call took and the time h2's kernel had the target's neighbour
  entry (``ip monitor neigh``).  Between samples the target is disconnected and the
  probe's neighbour cache flushed, so each sample is a first contact.  Goal p50 <= 100 ms.
  Each sample is taken twice, interleaved: with the probe's ARP retry at the kernel's
  default (1 s: its first ARP request leaves before h2 can answer it; h2's gratuitous ARP,
  sent once it has the entry, completes it) and at 10 ms (what cnm itself takes).
* ``tcp``: iperf3 TCP from a container on h1 to one on h2 over a cnm overlay network,
  beside the same hosts' raw kernel VXLAN (a bridge, a VXLAN device and a namespace made
  with iproute2 exactly as the driver makes them, VNI 99 so as not to meet cnm's VNIs from
  4096) and their underlay, in rounds that alternate the paths; the ratio is the median of
  the per-round ratios (steadier than a ratio of medians on a shared machine).  Goal
  cnm >= 95 % of raw VXLAN.
* ``encrypted``: iperf3 TCP from a container on h1 to one on h2 over an ``-o encrypted``
  overlay network (VXLAN inside cnmd's WireGuard tunnel), beside raw wireguard-go between
  the same two hosts (h1 to h2's tunnel address, through the devices cnmd runs), alternating
  rounds.  Goal: encrypted >= 90 % of raw wireguard-go.
* ``sim``: the control plane at scale, simulated (bench/overlay_sim.py, in a throwaway
  host of its own with its own etcd).

No peer runs here: Docker's overlay needs swarm mode (its external key-value store mode was
removed in Docker 23.0), and netavark and CNI have no multi-host overlay at all, so the raw
kernel paths are the comparison.  docs/overlay-scale.md reads the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, HarnessError, api_ok, pct  # noqa: E402
from lab import Lab, LabHost  # noqa: E402

IPERF_PORT = 5201
VNI = 99  # the raw path's; cnm's VNIs start at 4096 and one VNI has one device per host
MTU = 1450  # the underlay's 1500 minus VXLAN's 50
UNDERLAY, VXLAN, CNM = "underlay (host -> host)", "kernel VXLAN (netns -> netns)", "cnm overlay (ctr -> ctr)"
NETWORK, SUBNET = "benchov", "10.10.0.0/24"
TARGET_IP, PROBE_IP = "10.10.0.100", "10.10.0.200"
NO_PEERS = (
    "peers: none comparable here. Docker's overlay needs swarm mode (its external-KV mode is "
    "gone), netavark and CNI have no multi-host overlay; cnm is compared with the raw kernel paths."
)


@dataclass
class Report:
    """What the parts measured: lines printed at the end, in part order."""

    lines: list[str] = field(default_factory=list)

    def add(self, text: str = "") -> None:
        self.lines.append(text)


# -- the raw data plane (iproute2, as the overlay driver builds it) ---------------------------


def container_ip(host: LabHost) -> str:
    return f"10.0.0.{host.name[1:]}"


def container_mac(host: LabHost) -> str:
    return f"02:42:0a:00:00:{int(host.name[1:]):02x}"


def build(host: LabHost, peer: LabHost) -> None:
    """The overlay's data plane on ``host``, with the entries of ``peer``'s container."""
    script = f"""
set -e
ip link add ov-bench mtu {MTU} type bridge
ip link set ov-bench up
ip link add vx-bench mtu {MTU} master ov-bench type vxlan id {VNI} local {host.address} dstport 4789 nolearning proxy
ip link set vx-bench up
ip netns add c
ip link add ve-c mtu {MTU} master ov-bench up type veth peer name eth0 address {container_mac(host)} mtu {MTU} netns c
ip -n c link set lo up
ip -n c link set eth0 up
ip -n c addr add {container_ip(host)}/24 dev eth0
bridge fdb replace {container_mac(peer)} dev vx-bench dst {peer.address} self permanent
ip neigh replace {container_ip(peer)} lladdr {container_mac(peer)} dev vx-bench nud permanent
"""
    host.sh(script)


# -- cnm in the lab ----------------------------------------------------------------------------


def network_id(host: LabHost, name: str) -> str:
    return str(api_ok(host, "GET", f"/networks/{name}")["Id"])


def container_pid(host: LabHost, name: str) -> int:
    """The container's init as ``host`` sees it (its network namespace is ``/proc/PID/ns/net``)."""
    return int(api_ok(host, "GET", f"/containers/{name}/json")["State"]["Pid"])


def in_container(pid: int) -> list[str]:
    return ["nsenter", "-t", str(pid), "-n", "--"]


def wait(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise HarnessError(f"{what} (after {timeout:g}s)")
        time.sleep(0.05)


def setup_cnm(lab: Lab, image: str) -> str:
    """cnmd on both hosts with the busybox image, and the overlay network (made on h1, seen
    on h2); its id."""
    h1, h2 = lab.hosts
    for host in lab.hosts:
        host.start_cnmd("--cluster-advertise", "ul0")
        host.import_image(image, "busybox")
    h1.cnm("network", "create", "-d", "overlay", "--attachable", "--subnet", SUBNET, NETWORK)
    wait(lambda: h2.api("GET", f"/networks/{NETWORK}").status == 200, f"h2 never saw network {NETWORK}")
    return network_id(h1, NETWORK)


def run_container(host: LabHost, name: str, *flags: str) -> int:
    host.cnm("run", "-d", "--name", name, *flags, "busybox", "sleep", "1d")
    return container_pid(host, name)


# -- part: connect -> first reply --------------------------------------------------------------

PROBE = r"""
import os, select, socket, struct, sys, time
target = sys.argv[1]
deadline = time.monotonic() + float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.setblocking(False)
ident = os.getpid() & 0xFFFF

def echo(seq):
    head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    total = sum(struct.unpack("!4H", head)) & 0xFFFFFFFF
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return struct.pack("!BBHHH", 8, 0, ~total & 0xFFFF, ident, seq)

print("ready", flush=True)
seq = 0
while time.monotonic() < deadline:
    seq = (seq + 1) & 0xFFFF
    try:
        s.sendto(echo(seq), (target, 0))
    except OSError:
        pass  # no route or neighbour yet: try again
    if select.select([s], [], [], 0.001)[0]:
        data, (src, _) = s.recvfrom(2048)
        hl = (data[0] & 0x0F) * 4
        if src == target and data[hl] == 0 and struct.unpack("!H", data[hl + 4:hl + 6])[0] == ident:
            print(f"reply {time.monotonic():.6f}", flush=True)
            sys.exit(0)
print("timeout", flush=True)
sys.exit(1)
"""


class NeighWatch:
    """``ip monitor neigh`` on a host: when each IP's permanent entry appeared (monotonic)."""

    def __init__(self, host: LabHost) -> None:
        self.proc = host.spawn(["ip", "-o", "monitor", "neigh"], stdout=subprocess.PIPE, text=True, bufsize=1)
        self.seen: queue.Queue[tuple[float, str]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.seen.put((time.monotonic(), line))

    def appeared(self, ip: str, timeout: float) -> float | None:
        """The first time ``ip``'s entry was added since the last call (None: not in time)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                when, line = self.seen.get(timeout=left)
            except queue.Empty:
                return None
            words = line.split()
            if words and words[0] == ip and "PERMANENT" in words:
                return when
        return None

    def drain(self) -> None:
        while not self.seen.empty():
            self.seen.get_nowait()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


ARP_MODES = {
    # the kernel's default: an unanswered ARP request is sent again after 1 s
    "probe's ARP retry 1 s (default)": 1000,
    # the same probe retrying ARP every 10 ms: what cnm itself takes, end to end
    "probe's ARP retry 10 ms": 10,
}


@dataclass
class ConnectFigures:
    api: list[float] = field(default_factory=list)  # POST .../connect returned
    programmed: list[float] = field(default_factory=list)  # the neighbour entry on h2
    reply: list[float] = field(default_factory=list)  # the probe's first reply
    misses: int = 0


def connect_sample(
    h1: LabHost, h2: LabHost, nid: str, probe: int, watch: NeighWatch, opts: argparse.Namespace
) -> tuple[float, float | None, float | None]:
    """Connect the target once and disconnect it again: (API, on h2, first reply) in ms
    after the request (None: not seen in time)."""
    h2.run([*in_container(probe), "ip", "neigh", "flush", "to", TARGET_IP])
    proc = h2.spawn(
        [*in_container(probe), "python3", "-c", PROBE, TARGET_IP, str(opts.probe_timeout)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise HarnessError("the probe did not start")
    watch.drain()
    t0 = time.monotonic()
    api_ok(
        h1,
        "POST",
        f"/networks/{nid}/connect",
        {"Container": "target", "EndpointConfig": {"IPAMConfig": {"IPv4Address": TARGET_IP}}},
    )
    t_api = time.monotonic()
    t_neigh = watch.appeared(TARGET_IP, opts.probe_timeout)
    out = proc.stdout.readline().split()
    proc.wait(timeout=opts.probe_timeout + 10)
    api_ok(h1, "POST", f"/networks/{nid}/disconnect", {"Container": "target"})
    wait(
        lambda: not h2.ip_json("neigh", "show", "to", TARGET_IP, "nud", "permanent"),
        "h2 kept the target's neighbour entry after the disconnect",
    )
    return (
        (t_api - t0) * 1000,
        (t_neigh - t0) * 1000 if t_neigh is not None else None,
        (float(out[1]) - t0) * 1000 if out[:1] == ["reply"] else None,
    )


def part_connect(lab: Lab, nid: str, opts: argparse.Namespace, report: Report) -> None:
    h1, h2 = lab.hosts
    probe = run_container(h2, "probe", "--network", NETWORK, "--ip", PROBE_IP)
    run_container(h1, "target")  # on the default bridge: running before it joins the overlay
    watch = NeighWatch(h2)
    figures = {mode: ConnectFigures() for mode in ARP_MODES}
    retrans = "net.ipv4.neigh.eth0.retrans_time_ms"
    try:
        for i in range(opts.samples):
            for mode, retrans_ms in ARP_MODES.items():  # interleaved: both modes see the same load
                h2.run([*in_container(probe), "sysctl", "-qw", f"{retrans}={retrans_ms}"])
                api, programmed, reply = connect_sample(h1, h2, nid, probe, watch, opts)
                fig = figures[mode]
                fig.api.append(api)
                if programmed is not None:
                    fig.programmed.append(programmed)
                if reply is not None:
                    fig.reply.append(reply)
                else:
                    fig.misses += 1
                print(
                    f"connect {i + 1}/{opts.samples}, {mode}: api {api:.1f} ms"
                    + (f", on h2 at {programmed:.1f} ms" if programmed is not None else "")
                    + (f", first reply {reply:.1f} ms" if reply is not None else ", no reply"),
                    flush=True,
                )
    finally:
        watch.close()
    report.add(f"connect on h1 -> first reply on h2 ({opts.samples} samples a mode, ICMP every 1 ms)")
    report.add(f"  {'':<52} {'p50':>8} {'p90':>8} {'max':>8}")
    for mode, fig in figures.items():
        report.add(f"  {mode}:")
        for label, values in (
            ("POST /networks/{id}/connect returned", fig.api),
            ("target's neighbour entry on h2", fig.programmed),
            ("first reply on h2 (goal p50 <= 100 ms)", fig.reply),
        ):
            if values:
                report.add(
                    f"    {label:<50} {pct(values, 50):5.1f} ms {pct(values, 90):5.1f} ms {max(values):5.1f} ms"
                )
            else:
                report.add(f"    {label:<50} none")
        if fig.misses:
            report.add(f"    {fig.misses} sample(s) without a reply within {opts.probe_timeout:g} s")
    default = figures[next(iter(ARP_MODES))].reply
    if not default or pct(default, 50) > 100:
        # the probe's first ARP request leaves before h2 has the target's neighbour entry;
        # the gratuitous ARP h2 sends into the bridge once it has it should complete it
        report.add(
            "  why the default misses: the probe's ARP request was not completed by h2's gratuitous ARP,"
        )
        report.add("  and the kernel asks again only after retrans_time_ms (1 s); see docs/overlay-scale.md.")


# -- part: TCP, cnm overlay vs raw VXLAN vs underlay -------------------------------------------


def iperf(host: LabHost, address: str, seconds: float, where: list[str], port: int = IPERF_PORT) -> float:
    """One TCP run from ``host`` (in the namespace ``where`` enters) to ``address``: Gbit/s."""
    argv = [*where, "iperf3", "-c", address, "-p", str(port), "-t", str(seconds), "-J"]
    argv += ["--connect-timeout", "3000"]
    proc = host.run(argv, check=False, timeout=seconds + 30)
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise HarnessError(f"iperf3: {proc.stderr.strip() or proc.stdout.strip()}") from None
    if "error" in doc:
        raise HarnessError(f"iperf3: {doc['error']}")
    return float(doc["end"]["sum_received"]["bits_per_second"]) / 1e9


def serve(host: LabHost, name: str, where: list[str], port: int = IPERF_PORT) -> None:
    """An iperf3 server in ``host`` (in the namespace ``where`` enters); it dies with the host."""
    pidfile = host.tmp / f"iperf3-{name}.pid"
    host.run([*where, "iperf3", "-s", "-p", str(port), "-D", "-I", str(pidfile)])


def mtu(host: LabHost, where: list[str], ifname: str) -> int:
    return int(json.loads(host.run([*where, "ip", "-j", "link", "show", ifname]).stdout)[0]["mtu"])


def part_tcp(lab: Lab, nid: str, opts: argparse.Namespace, report: Report) -> None:
    h1, h2 = lab.hosts
    build(h1, h2)
    build(h2, h1)
    raw = ["nsenter", "--net=/run/netns/c", "--"]
    client = in_container(run_container(h1, "cli", "--network", NETWORK))
    server_pid = run_container(h2, "srv", "--network", NETWORK)
    server = in_container(server_pid)
    server_ip = api_ok(h2, "GET", "/containers/srv/json")["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]
    for name, where in (("host", []), ("raw", raw), ("cnm", server)):
        serve(h2, name, where)
    paths = {UNDERLAY: (h2.address, []), VXLAN: (container_ip(h2), raw), CNM: (server_ip, client)}
    mtus = {VXLAN: mtu(h1, raw, "eth0"), CNM: mtu(h1, client, "eth0")}
    deadline = time.monotonic() + 30  # the peers' entries arrive through etcd
    for address, where in paths.values():  # warm-up (ARP, first connections)
        while True:
            try:
                iperf(h1, address, 1, where)
                break
            except HarnessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    figures: dict[str, list[float]] = {mode: [] for mode in paths}
    modes = list(paths)
    for r in range(opts.runs):
        order = modes[r % len(modes) :] + modes[: r % len(modes)]  # each path first in turn
        for mode in order:
            address, where = paths[mode]
            figures[mode].append(iperf(h1, address, opts.seconds, where))
        print(
            f"tcp round {r + 1}/{opts.runs}: "
            + ", ".join(f"{k} {v[-1]:.2f} Gbit/s" for k, v in figures.items()),
            flush=True,
        )
    vs_raw = statistics.median(c / v for c, v in zip(figures[CNM], figures[VXLAN], strict=True))
    vs_underlay = {
        mode: statistics.median(x / u for x, u in zip(figures[mode], figures[UNDERLAY], strict=True))
        for mode in figures
    }
    report.add(f"TCP h1 -> h2 (iperf3, {opts.runs} rounds x {opts.seconds:g} s; each path once per round)")
    report.add(f"  {'path':<32} {'median':>12}  {'min':>6}  {'max':>6}  {'vs underlay*':>12}  MTU")
    for mode, values in figures.items():
        report.add(
            f"  {mode:<32} {statistics.median(values):6.2f} Gbit/s  {min(values):6.2f}  {max(values):6.2f}"
            f"  {vs_underlay[mode] * 100:11.1f}%  {mtus.get(mode, 1500)}"
        )
    report.add(f"  cnm overlay vs raw kernel VXLAN*: {vs_raw * 100:.1f}% (goal >= 95%)")
    report.add("  * median of the per-round ratios (each round measures every path back to back)")


# -- part: the encrypted overlay ---------------------------------------------------------------
#
# An ``-o encrypted`` overlay network on the same two cnmd, a container on each host: TCP from
# container ``sec1`` on h1 to ``sec2`` on h2 through the network's VXLAN device and cnmd's
# WireGuard interface, beside raw wireguard-go between the same two hosts: host h1 to h2's
# tunnel address, through the very wireguard-go devices cnmd runs.  Goal: >= 90 %.

ENCRYPTED, RAW_WG = "encrypted overlay (ctr -> ctr)", "raw wireguard-go (h1 -> h2 tunnel)"
ENCRYPTED_NETWORK = "benchsec"
WG_PORT = IPERF_PORT + 1  # h2's own iperf3 server for the tcp part holds IPERF_PORT


def part_encrypted(lab: Lab, nid: str, opts: argparse.Namespace, report: Report) -> None:
    h1, h2 = lab.hosts
    if not shutil.which("wireguard-go"):
        report.add("encrypted overlay: not measured (wireguard-go is missing: run `make deps`)")
        return
    h1.cnm("network", "create", "-d", "overlay", "-o", "encrypted", ENCRYPTED_NETWORK)
    wait(lambda: h2.api("GET", f"/networks/{ENCRYPTED_NETWORK}").status == 200, "h2 never saw the network")
    client = in_container(run_container(h1, "sec1", "--network", ENCRYPTED_NETWORK))
    server = in_container(run_container(h2, "sec2", "--network", ENCRYPTED_NETWORK))
    settings = api_ok(h2, "GET", "/containers/sec2/json")["NetworkSettings"]
    server_ip = settings["Networks"][ENCRYPTED_NETWORK]["IPAddress"]
    tunnel2 = h2.ip_json("-4", "addr", "show", "cnmwg0")[0]["addr_info"][0]["local"]
    serve(h2, "wg-host", [], WG_PORT)
    serve(h2, "wg-ctr", server, WG_PORT)
    paths = {RAW_WG: (tunnel2, []), ENCRYPTED: (server_ip, client)}
    deadline = time.monotonic() + 30  # the peers and entries arrive through etcd
    for address, where in paths.values():  # warm-up (handshakes, first connections)
        while True:
            try:
                iperf(h1, address, 1, where, WG_PORT)
                break
            except HarnessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    figures: dict[str, list[float]] = {RAW_WG: [], ENCRYPTED: []}
    for r in range(opts.runs):
        order = [RAW_WG, ENCRYPTED] if r % 2 == 0 else [ENCRYPTED, RAW_WG]
        for mode in order:
            address, where = paths[mode]
            figures[mode].append(iperf(h1, address, opts.seconds, where, WG_PORT))
        print(
            f"encrypted round {r + 1}/{opts.runs}: "
            + ", ".join(f"{k} {v[-1]:.3f} Gbit/s" for k, v in figures.items()),
            flush=True,
        )
    ratio = statistics.median(e / w for e, w in zip(figures[ENCRYPTED], figures[RAW_WG], strict=True))
    report.add(f"TCP h1 -> h2, encrypted (iperf3, {opts.runs} rounds x {opts.seconds:g} s)")
    report.add(f"  {'path':<36} {'median':>12}  {'min':>6}  {'max':>6}")
    for mode, values in figures.items():
        report.add(
            f"  {mode:<36} {statistics.median(values):6.3f} Gbit/s  {min(values):6.3f}  {max(values):6.3f}"
        )
    report.add(f"  encrypted overlay vs raw wireguard-go*: {ratio * 100:.1f}% (goal >= 90%)")
    report.add("  * median of the per-round ratios (each round measures both paths back to back)")


# -- part: the control plane at scale ----------------------------------------------------------


def part_sim(opts: argparse.Namespace, report: Report) -> None:
    """bench/overlay_sim.py in its own throwaway host (its etcd on that host's loopback)."""
    argv = [sys.executable, str(REPO / "bench" / "overlay_sim.py")]
    if opts.quick:
        argv.append("--quick")
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True, timeout=3600)  # progress on stderr
    if proc.returncode:
        report.add(f"control plane at scale: not measured (overlay_sim.py exited {proc.returncode})")
        return
    report.add(proc.stdout.rstrip())


# -- etcd as the lab's cnmd use it -------------------------------------------------------------

METRICS_SCRIPT = """
import re, sys, urllib.request
text = urllib.request.urlopen(sys.argv[1] + "/metrics", timeout=10).read().decode()
for name in sys.argv[2:]:
    print(sum(float(v) for v in re.findall("^" + name + r"(?:[{][^}]*[}])? ([0-9.e+]+)$", text, re.M)))
"""


def etcd_watches(lab: Lab, report: Report) -> None:
    """How many watches the lab's cnmd hold on etcd (the simulation's fan-out assumes it)."""
    assert lab.cluster is not None
    url = f"http://{lab.cluster.endpoints[0]}"
    names = ("etcd_debugging_mvcc_watcher_total", "etcd_debugging_mvcc_watch_stream_total")
    out = lab.root.run([sys.executable, "-c", METRICS_SCRIPT, url, *names]).stdout.split()
    watchers, streams = (float(x) for x in out)
    per = len(lab.hosts)
    report.add(
        f"etcd: the lab's {per} cnmd hold {watchers:.0f} watchers on {streams:.0f} gRPC streams "
        f"({watchers / per:.0f} per cnmd)"
    )


# -- main --------------------------------------------------------------------------------------

LAB_PARTS: dict[str, Callable[[Lab, str, argparse.Namespace, Report], None]] = {
    "connect": part_connect,
    "tcp": part_tcp,
    "encrypted": part_encrypted,
}
PARTS = [*LAB_PARTS, "sim"]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {','.join(PARTS)}")
    parser.add_argument("--image", default=str(REPO / "images" / "busybox.tar"), help="busybox image tar")
    parser.add_argument("--seconds", type=float, default=3, help="iperf3 -t")
    parser.add_argument("--runs", type=int, default=5, help="TCP rounds (each path once per round; median)")
    parser.add_argument("--samples", type=int, default=20, help="connect -> first reply samples")
    parser.add_argument("--probe-timeout", type=float, default=10, help="seconds a probe waits for its reply")
    parser.add_argument(
        "--quick", action="store_true", help="2 rounds of 1 s, 5 samples, a smaller simulation"
    )
    opts = parser.parse_args()
    parts = [p.strip() for p in opts.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        parser.error(
            f"--parts: unknown part(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(PARTS)}"
        )
    if opts.quick:
        opts.runs, opts.seconds, opts.samples = 2, 1, 5
    if os.geteuid() != 0:
        print("bench/overlay.py needs root (it builds network namespaces)", file=sys.stderr)
        return 1
    if not shutil.which("iperf3"):
        print("iperf3 is missing: run `make deps`", file=sys.stderr)
        return 1
    report = Report()
    try:
        lab_parts = [p for p in parts if p in LAB_PARTS]
        if lab_parts:
            if not Path(opts.image).is_file():
                print(f"{opts.image} is missing: run `make image`", file=sys.stderr)
                return 1
            with Lab(2) as lab:
                try:
                    nid = setup_cnm(lab, opts.image)
                    for part in lab_parts:
                        print(f"[{part}]", flush=True)
                        LAB_PARTS[part](lab, nid, opts, report)
                        report.add()
                    etcd_watches(lab, report)
                    report.add()
                except Exception:
                    lab.dump()
                    raise
        if "sim" in parts:
            print("[sim]", flush=True)
            part_sim(opts, report)
            report.add()
    except (HarnessError, subprocess.TimeoutExpired) as exc:
        print(f"bench/overlay.py: {exc}", file=sys.stderr)
        for line in report.lines:
            print(line)
        return 1
    print()
    for line in report.lines:
        print(line)
    print(NO_PEERS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
