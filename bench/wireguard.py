#!/usr/bin/env python3
"""bench/wireguard.py — what encrypting an overlay with wireguard-go costs (issue 10).

Two host namespaces on an underlay bridge, inside one throwaway host (this script runs itself
again under ``unshare --pid --fork --mount-proc --net --mount``, with a tmpfs on /run for the
UAPI sockets): nothing on this machine's network changes, and every process dies with the
pid namespace.  The tunnel is made by cnm's own ``WireGuardGo`` (keys, UAPI, address, MTU)
and torn down by it.  TCP throughput (iperf3, host 1 -> host 2), in rounds that alternate
the paths so each round measures all of them close together in time:

* underlay: the veth pair through the bridge, no tunnel (the ceiling);
* VXLAN: kernel VXLAN between the underlay addresses (the unencrypted overlay);
* WireGuard: wireguard-go between the tunnel addresses (the encryption alone);
* VXLAN over WireGuard: VXLAN between the tunnel addresses (the encrypted overlay).

Printed: the median of each path and the median of the per-round ratios to the underlay and
to plain VXLAN.  Then the cost of a static-key rotation of host 1 (``--rotations``), under a
ping over the encrypted VXLAN every 10 ms: the time from host 1's switch until host 2 has moved
the address to the staged key (seen from its handshake), and the pings lost per rotation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from cnm.kernel import wireguard as wg  # noqa: E402
from cnm.kernel.api import WgSpec  # noqa: E402
from cnm.kernel.wireguard_go import WireGuardGo  # noqa: E402

UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--net", "--mount", "--propagation", "private"]
H = {i: f"/run/netns/h{i}" for i in (1, 2)}
UNDER = {i: IPv4Address(f"198.51.100.{i}") for i in (1, 2)}
TUN = {i: IPv4Interface(f"10.99.0.{i}/24") for i in (1, 2)}
PORT = 51820
IPERF_PORT = 5201
PATHS = {  # name -> the address of host 2 that iperf3 dials
    "underlay": "198.51.100.2",
    "VXLAN": "10.201.0.2",
    "WireGuard": "10.99.0.2",
    "VXLAN over WireGuard": "10.200.0.2",
}


def sh(*argv: str, netns: str | None = None, timeout: float = 30) -> str:
    if netns:
        argv = ("nsenter", f"--net={netns}", *argv)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def vxlan(i: int, name: str, vni: int, local: object, remote: object, address: str, mtu: int) -> None:
    sh("ip", "link", "add", name, "type", "vxlan", "id", str(vni), "local", str(local), "dstport", "4789", "nolearning", netns=H[i])  # fmt: skip
    sh("ip", "link", "set", name, "mtu", str(mtu), "up", netns=H[i])
    sh("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", name, "dst", str(remote), "self", "permanent", netns=H[i])  # fmt: skip
    sh("ip", "addr", "add", address, "dev", name, netns=H[i])


async def build() -> tuple[WireGuardGo, wg.KeyPair]:
    """The two hosts, the tunnel (cnm's WireGuardGo) and both VXLAN devices; returns the
    WireGuardGo, for the rest, and host 1's key pair."""
    sh("ip", "link", "add", "ul", "type", "bridge")
    sh("ip", "link", "set", "ul", "up")
    for i in (1, 2):
        sh("ip", "netns", "add", f"h{i}")
        sh("ip", "link", "add", f"u{i}", "type", "veth", "peer", "name", "eth0", "netns", H[i])
        sh("ip", "link", "set", f"u{i}", "master", "ul", "up")
        sh("ip", "addr", "add", f"{UNDER[i]}/24", "dev", "eth0", netns=H[i])
        sh("ip", "link", "set", "eth0", "up", netns=H[i])
        sh("ip", "link", "set", "lo", "up", netns=H[i])
    engine = WireGuardGo()
    keys = {i: wg.KeyPair.generate() for i in (1, 2)}
    for i in (1, 2):
        spec = WgSpec(f"wg-h{i}", "bench", TUN[i], PORT, wg.tunnel_mtu(1500), keys[i].private)
        await engine.up(spec, H[i])
    for i, j in ((1, 2), (2, 1)):
        node = wg.NodeTunnel(keys[j].public, (UNDER[j], PORT), TUN[j].ip)
        await engine.set_peers(f"wg-h{i}", wg.desired_peers([node]), H[i])
    for i, j in ((1, 2), (2, 1)):
        vxlan(i, "vx-plain", 4201, UNDER[i], UNDER[j], f"10.201.0.{i}/24", 1450)
        vxlan(i, "vx-enc", 4200, TUN[i].ip, TUN[j].ip, f"10.200.0.{i}/24", wg.vxlan_mtu_over_tunnel(1500))
    return engine, keys[1]


async def rotate(engine: WireGuardGo, keys: wg.KeyPair) -> tuple[wg.KeyPair, float]:
    """One rotation of host 1's key, as the overlay runs it: announce (host 2 stages the
    next key), switch, host 2 promotes the staged key on its first handshake.  Returns the
    new pair and the seconds from the switch to the promotion."""
    policy = wg.RotationPolicy(interval=2, grace=0.2)
    state = wg.KeyState(current=keys, since=time.time() - 2)
    step, state, when = wg.rotation_step(state, policy, time.time())
    public, following = state.published
    record = wg.NodeTunnel(public, (UNDER[1], PORT), TUN[1].ip, following)
    await engine.set_peers("wg-h2", wg.desired_peers([record]), H[2])
    await asyncio.sleep(max(0.0, when - time.time()))
    step, state, _ = wg.rotation_step(state, policy, time.time())
    assert step is wg.Step.SWITCH
    await engine.set_private_key("wg-h1", state.current.private, H[1])
    switched = time.monotonic()
    while True:
        seen = {p.peer.public_key: p.last_handshake for p in (await engine.status("wg-h2", H[2])).peers}
        if seen.get(following, 0.0) > 0:
            break
        if time.monotonic() - switched > 10:
            raise RuntimeError("host 2 saw no handshake on the staged key within 10 s")
        await asyncio.sleep(0.005)
    await engine.set_peers("wg-h2", wg.desired_peers([record], handshakes=seen), H[2])
    return state.current, time.monotonic() - switched


async def rotations(engine: WireGuardGo, keys: wg.KeyPair, count: int) -> tuple[list[float], list[int]]:
    """``count`` rotations, each under its own 10 ms ping: promotion delays, pings lost."""
    delays, lost = [], []
    for _ in range(count):
        argv = [
            "nsenter",
            f"--net={H[1]}",
            "busybox",
            "ping",
            "-c",
            "150",
            "-i",
            "0.01",
            "-W",
            "1",
            "10.200.0.2",
        ]
        pinger = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        await asyncio.sleep(0.3)
        keys, delay = await rotate(engine, keys)
        out, _ = pinger.communicate(timeout=60)
        delays.append(delay)
        lost.append(150 - len(set(re.findall(r"seq=(\d+)", out))))
    return delays, lost


def iperf(address: str, seconds: int) -> float:
    """Gbit/s of one iperf3 TCP run from host 1 to ``address`` (host 2).  (iperf3 reads -t as
    a whole number: 0.5 would be 0, which is "forever".)"""
    argv = [
        "iperf3",
        "-c",
        address,
        "-p",
        str(IPERF_PORT),
        "-t",
        str(seconds),
        "-J",
        "--connect-timeout",
        "3000",
    ]
    out = sh(*argv, netns=H[1], timeout=seconds + 30)
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9


def inside(opts: argparse.Namespace) -> int:
    """Runs in the throwaway host: build, measure, print, tear down."""
    engine, keys = asyncio.run(build())
    sh("iperf3", "-s", "-p", str(IPERF_PORT), "-D", "-I", "/run/iperf3.pid", netns=H[2])
    for address in PATHS.values():
        iperf(address, 1)  # warm-up: neighbours resolved, handshake done
    figures: dict[str, list[float]] = {name: [] for name in PATHS}
    for round_ in range(opts.runs):
        order = list(PATHS) if round_ % 2 == 0 else list(reversed(PATHS))
        for name in order:
            figures[name].append(iperf(PATHS[name], opts.seconds))
    delays, lost = asyncio.run(rotations(engine, keys, opts.rotations)) if opts.rotations else ([], [])
    for i in (1, 2):
        asyncio.run(engine.down(f"wg-h{i}", H[i]))

    def ratio(name: str, base: str) -> float:
        return statistics.median(v / b for v, b in zip(figures[name], figures[base], strict=True))

    print(f"\nhost 1 -> host 2 TCP (iperf3, {opts.runs} rounds x {opts.seconds} s, paths alternating)")
    print(f"  {'path':<22} {'median':>12}  {'vs underlay*':>12}  {'vs VXLAN*':>9}")
    for name, values in figures.items():
        print(
            f"  {name:<22} {statistics.median(values):6.2f} Gbit/s  {ratio(name, 'underlay') * 100:11.1f}%"
            f"  {ratio(name, 'VXLAN') * 100:8.1f}%"
        )
    print("  * median of the per-round ratios")
    print(
        f"  VXLAN over WireGuard / WireGuard alone: {ratio('VXLAN over WireGuard', 'WireGuard') * 100:.1f}%"
    )
    if delays:
        print(
            f"\nkey rotation of host 1 ({len(delays)} rotations, a ping over the encrypted VXLAN every 10 ms)"
        )
        print(
            f"  switch -> host 2 promotes the staged key: median {statistics.median(delays) * 1000:.0f} ms,"
            f" max {max(delays) * 1000:.0f} ms"
        )
        print(f"  pings lost per rotation: median {statistics.median(lost):g}, max {max(lost)} (of 150)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3, help="iperf3 -t (whole seconds)")
    parser.add_argument("--runs", type=int, default=5, help="rounds (each path once per round)")
    parser.add_argument("--rotations", type=int, default=5, help="key rotations to time (0: none)")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 s, 2 rotations")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.quick:
        opts.runs, opts.seconds, opts.rotations = 2, 1, 2
    if opts.inside:
        return inside(opts)
    if os.geteuid() != 0:
        print("bench/wireguard.py needs root (it builds network namespaces)", file=sys.stderr)
        return 1
    missing = [t for t in ("iperf3", "wireguard-go", "unshare", "nsenter") if not shutil.which(t)]
    if missing:
        print(f"missing: {' '.join(missing)}: run `make deps`", file=sys.stderr)
        return 1
    argv = [sys.executable, str(Path(__file__).resolve()), "--inside", "--runs", str(opts.runs), "--seconds", str(opts.seconds), "--rotations", str(opts.rotations)]  # fmt: skip
    shell = f"set -e; mount -t tmpfs tmpfs /run; ip link set lo up; exec {' '.join(argv)}"
    return subprocess.run([*UNSHARE, "bash", "-c", shell]).returncode


if __name__ == "__main__":
    sys.exit(main())
