#!/usr/bin/env python3
"""bench/overlay.py — the overlay's raw data plane: TCP between two namespaces on two hosts
over kernel VXLAN, beside the same hosts' underlay (issue 10).

Everything runs in the multi-host lab of tests/lab.py (two throwaway hosts on an underlay
bridge, in private namespaces); nothing on this machine's network changes.  On each host,
made with iproute2 as the overlay driver will make it: a bridge ``ov-bench`` without an
address, a VXLAN device ``vx-bench`` (VNI 4096, dstport 4789, local = the host's underlay
address, nolearning, proxy, MTU 1450) on it, a namespace ``c`` whose ``eth0`` (10.0.0.N/24)
is a veth port of the bridge, and static FDB + neighbour entries for the other host's
container.  Figures (iperf3, TCP, h1 -> h2), in rounds that alternate the two paths so
each pair is measured close together in time:

* underlay: host h1 to host h2 on their underlay veths (198.51.100.1 -> .2), through the
  lab's bridge;
* vxlan: container c on h1 to container c on h2: veth, bridge, VXLAN encapsulation, the
  same underlay, decapsulation, bridge, veth.

The ratio is the median of the per-round ratios (steadier than a ratio of medians on a
shared machine).  Later overlay figures (WireGuard, cnmd's own overlay networks) compare
against this one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import HarnessError  # noqa: E402
from lab import Lab, LabHost  # noqa: E402

IPERF_PORT = 5201
VNI = 4096
MTU = 1450  # the underlay's 1500 minus VXLAN's 50
UNDERLAY, VXLAN = "underlay (host -> host)", "kernel VXLAN (netns -> netns)"


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


def start_servers(host: LabHost) -> None:
    """iperf3 servers in ``host`` (underlay) and in its container (overlay); they die with
    the host."""
    for where, name in (([], "host"), (["nsenter", "--net=/run/netns/c", "--"], "c")):
        pidfile = host.tmp / f"iperf3-{name}.pid"
        host.run([*where, "iperf3", "-s", "-p", str(IPERF_PORT), "-D", "-I", str(pidfile)])


def iperf(host: LabHost, address: str, seconds: float, netns: str | None) -> float:
    """One TCP run from ``host`` (or its namespace ``netns``) to ``address``: Gbit/s."""
    where = ["nsenter", f"--net=/run/netns/{netns}", "--"] if netns else []
    argv = [*where, "iperf3", "-c", address, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]
    argv += ["--connect-timeout", "3000"]
    proc = host.run(argv, check=False, timeout=seconds + 30)
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise HarnessError(f"iperf3: {proc.stderr.strip() or proc.stdout.strip()}") from None
    if "error" in doc:
        raise HarnessError(f"iperf3: {doc['error']}")
    return float(doc["end"]["sum_received"]["bits_per_second"]) / 1e9


def bench(lab: Lab, opts: argparse.Namespace) -> dict[str, list[float]]:
    h1, h2 = lab.hosts
    build(h1, h2)
    build(h2, h1)
    start_servers(h2)
    paths = {UNDERLAY: (h2.address, None), VXLAN: (container_ip(h2), "c")}
    for address, netns in paths.values():  # warm-up (ARP on the underlay, first connections)
        iperf(h1, address, 1, netns)
    figures: dict[str, list[float]] = {UNDERLAY: [], VXLAN: []}
    for r in range(opts.runs):
        order = [UNDERLAY, VXLAN] if r % 2 == 0 else [VXLAN, UNDERLAY]
        for mode in order:
            address, netns = paths[mode]
            figures[mode].append(iperf(h1, address, opts.seconds, netns))
        print(
            f"round {r + 1}/{opts.runs}: " + ", ".join(f"{k} {v[-1]:.2f} Gbit/s" for k, v in figures.items()),
            flush=True,
        )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3, help="iperf3 -t")
    parser.add_argument("--runs", type=int, default=5, help="rounds (each path once per round; median)")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 s")
    opts = parser.parse_args()
    if opts.quick:
        opts.runs, opts.seconds = 2, 1
    if os.geteuid() != 0:
        print("bench/overlay.py needs root (it builds network namespaces)", file=sys.stderr)
        return 1
    if not shutil.which("iperf3"):
        print("iperf3 is missing: run `make deps`", file=sys.stderr)
        return 1
    try:
        with Lab(2, etcd=False) as lab:
            figures = bench(lab, opts)
    except (HarnessError, subprocess.TimeoutExpired) as exc:
        print(f"bench/overlay.py: {exc}", file=sys.stderr)
        return 1
    ratio = statistics.median(v / u for v, u in zip(figures[VXLAN], figures[UNDERLAY], strict=True))
    print(f"\nTCP h1 -> h2 across the lab's underlay (iperf3, {opts.runs} x {opts.seconds:g} s)")
    print(f"  {'path':<32} {'median':>12}  {'min':>6}  {'max':>6}  {'vs underlay*':>12}")
    for mode, values in figures.items():
        share = ratio if mode == VXLAN else 1.0
        print(
            f"  {mode:<32} {statistics.median(values):6.2f} Gbit/s  {min(values):6.2f}  {max(values):6.2f}"
            f"  {share * 100:11.1f}%"
        )
    print("  * median of the per-round ratios (each round measures both paths back to back)")
    return 0


# -- the encrypted overlay (--encrypted) -------------------------------------------------------
#
# cnmd itself in each of the two lab hosts (with the lab's etcd), an ``-o encrypted`` overlay
# network, a container on each host: TCP from container c1 on h1 to container c2 on h2
# (iperf3 run in each container's network namespace) through the network's VXLAN device and
# cnmd's WireGuard interface, beside raw wireguard-go between the same two hosts: host h1 to
# h2's tunnel address, through the very wireguard-go devices cnmd runs.  Goal: >= 90 %.

ENCRYPTED = "encrypted overlay (c1 -> c2)"
RAW_WG = "raw wireguard-go (h1 -> h2 tunnel)"


def iperf_at(host: LabHost, address: str, seconds: float, net: str | None) -> float:
    """One TCP run from ``host`` (or the network namespace at path ``net`` in it): Gbit/s."""
    where = ["nsenter", f"--net={net}", "--"] if net else []
    argv = [*where, "iperf3", "-c", address, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]
    proc = host.run([*argv, "--connect-timeout", "3000"], check=False, timeout=seconds + 30)
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise HarnessError(f"iperf3: {proc.stderr.strip() or proc.stdout.strip()}") from None
    if "error" in doc:
        raise HarnessError(f"iperf3: {doc['error']}")
    return float(doc["end"]["sum_received"]["bits_per_second"]) / 1e9


def bench_encrypted(lab: Lab, opts: argparse.Namespace) -> dict[str, list[float]]:
    h1, h2 = lab.hosts
    for host in lab.hosts:
        host.start_cnmd("--cluster-advertise", "ul0", "--log-level", "info")
        host.import_image(opts.image, "busybox")
    h1.cnm("network", "create", "-d", "overlay", "-o", "encrypted", "sec")
    for _ in range(100):
        if h2.cnm("network", "inspect", "sec", check=False).returncode == 0:
            break
        time.sleep(0.1)
    for host, name in ((h1, "c1"), (h2, "c2")):
        host.cnm("run", "-d", "--name", name, "--network", "sec", "busybox", "sleep", "1d")
    info = {
        name: json.loads(host.cnm("inspect", name).stdout)[0]["NetworkSettings"]
        for host, name in ((h1, "c1"), (h2, "c2"))
    }
    c1_net, c2_net = info["c1"]["SandboxKey"], info["c2"]["SandboxKey"]
    c2_ip = info["c2"]["Networks"]["sec"]["IPAddress"]
    tunnel2 = h2.ip_json("-4", "addr", "show", "cnmwg0")[0]["addr_info"][0]["local"]
    for where, name in (([], "host"), (["nsenter", f"--net={c2_net}", "--"], "c2")):
        pidfile = h2.tmp / f"iperf3-{name}.pid"
        h2.run([*where, "iperf3", "-s", "-p", str(IPERF_PORT), "-D", "-I", str(pidfile)])
    for _ in range(50):  # the peers and entries arrive through etcd
        if h1.cnm("exec", "c1", "ping", "-c", "1", "-W", "1", c2_ip, check=False).returncode == 0:
            break
    paths = {RAW_WG: (tunnel2, None), ENCRYPTED: (c2_ip, c1_net)}
    for address, net in paths.values():  # warm-up (handshakes, first connections)
        iperf_at(h1, address, 1, net)
    figures: dict[str, list[float]] = {RAW_WG: [], ENCRYPTED: []}
    for r in range(opts.runs):
        order = [RAW_WG, ENCRYPTED] if r % 2 == 0 else [ENCRYPTED, RAW_WG]
        for mode in order:
            address, net = paths[mode]
            figures[mode].append(iperf_at(h1, address, opts.seconds, net))
        print(
            f"round {r + 1}/{opts.runs}: " + ", ".join(f"{k} {v[-1]:.3f} Gbit/s" for k, v in figures.items()),
            flush=True,
        )
    return figures


def main_encrypted(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="TCP over cnm's encrypted overlay vs raw wireguard-go")
    parser.add_argument("--encrypted", action="store_true", help="this measurement")
    parser.add_argument("--seconds", type=float, default=3, help="iperf3 -t")
    parser.add_argument("--runs", type=int, default=5, help="rounds (each path once per round; median)")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 s")
    parser.add_argument(
        "--image", default=str(Path(__file__).resolve().parent.parent / "images" / "busybox.tar")
    )
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.runs, opts.seconds = 2, 1
    if os.geteuid() != 0:
        print("bench/overlay.py needs root (it builds network namespaces)", file=sys.stderr)
        return 1
    for tool in ("iperf3", "wireguard-go"):
        if not shutil.which(tool):
            print(f"{tool} is missing: run `make deps`", file=sys.stderr)
            return 1
    if not os.path.exists(opts.image):
        print(f"no image {opts.image}: run `make image`", file=sys.stderr)
        return 1
    try:
        with Lab(2) as lab:
            figures = bench_encrypted(lab, opts)
    except (HarnessError, subprocess.TimeoutExpired) as exc:
        print(f"bench/overlay.py --encrypted: {exc}", file=sys.stderr)
        return 1
    ratio = statistics.median(e / w for e, w in zip(figures[ENCRYPTED], figures[RAW_WG], strict=True))
    print(f"\nTCP h1 -> h2, encrypted (iperf3, {opts.runs} x {opts.seconds:g} s)")
    print(f"  {'path':<36} {'median':>12}  {'min':>6}  {'max':>6}  {'vs raw wg*':>10}")
    for mode, values in figures.items():
        share = ratio if mode == ENCRYPTED else 1.0
        print(
            f"  {mode:<36} {statistics.median(values):6.3f} Gbit/s  {min(values):6.3f}  {max(values):6.3f}"
            f"  {share * 100:9.1f}%"
        )
    print("  * median of the per-round ratios (each round measures both paths back to back); goal >= 90%")
    return 0


if __name__ == "__main__":
    sys.exit(main_encrypted(sys.argv[1:]) if "--encrypted" in sys.argv[1:] else main())
