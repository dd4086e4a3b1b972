"""Helpers for the end-to-end tier: containers, addresses and kernel snapshots in a TestHost.

All reads go through the product's CLI (``cnm …``) or straight to the kernel inside the test
host (``ip -j``, ``nft -j``, /proc/self/mountinfo); the tests compare the two.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import WORLD_ADDR, TestHost

HERE = Path(__file__).resolve().parent
WORLD_SERVER = HERE / "world_server.py"
IMAGE = "busybox"


# -- containers through the CLI ------------------------------------------------------------------


def run_sleeper(host: TestHost, name: str, *opts: str, cmd: Iterable[str] = ("sleep", "1d")) -> str:
    """``cnm run -d --name NAME OPTS… busybox sleep 1d``; returns the id the CLI printed."""
    out = host.cnm("run", "-d", "--name", name, *opts, IMAGE, *cmd, timeout=90).stdout.strip()
    assert out, f"cnm run printed no id for {name}"
    return out.splitlines()[-1]


def inspect(host: TestHost, *refs: str) -> list[dict[str, Any]]:
    return json.loads(host.cnm("inspect", *refs).stdout)


def network_inspect(host: TestHost, ref: str) -> dict[str, Any]:
    data = json.loads(host.cnm("network", "inspect", ref).stdout)
    assert isinstance(data, list) and len(data) == 1, data
    return data[0]


def subnets(host: TestHost, ref: str) -> list[str]:
    return [c["Subnet"] for c in (network_inspect(host, ref)["IPAM"]["Config"] or [])]


def ip_on(host: TestHost, name: str, network: str) -> str:
    """The container's address on ``network`` (Docker's ``Networks[n].IPAddress``)."""
    return inspect(host, name)[0]["NetworkSettings"]["Networks"][network]["IPAddress"]


def sandbox_key(host: TestHost, name: str) -> str:
    key = inspect(host, name)[0]["NetworkSettings"]["SandboxKey"]
    assert key, f"{name} has no SandboxKey"
    return key


def cexec(
    host: TestHost, name: str, *argv: str, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess:
    return host.cnm("exec", name, *argv, check=check, timeout=timeout)


def pings(host: TestHost, name: str, address: str, wait: int = 2) -> bool:
    """Does ``ping`` from inside container ``name`` get an answer from ``address``?"""
    return (
        cexec(host, name, "ping", "-c", "1", "-W", str(wait), address, check=False, timeout=30).returncode
        == 0
    )


def host_pings(host: TestHost, address: str, wait: int = 2) -> bool:
    """Does the test host (its root netns) get an answer from ``address``?"""
    return host.run(["busybox", "ping", "-c", "1", "-W", str(wait), address], check=False).returncode == 0


def bridge_ports(host: TestHost, bridge: str) -> list[dict[str, Any]]:
    """Links enslaved to ``bridge`` in the test host's root netns."""
    return [link for link in host.ip_json("link", "show") if link.get("master") == bridge]


def bridge_of(host: TestHost, network: str) -> str:
    """The Linux bridge behind ``network``: ``cnm0`` for ``bridge``, else ``br-<id12>`` unless
    the option ``com.docker.network.bridge.name`` names another."""
    net = network_inspect(host, network)
    name = (net.get("Options") or {}).get("com.docker.network.bridge.name")
    if name:
        return name
    return "cnm0" if net["Name"] == "bridge" else f"br-{net['Id'][:12]}"


# -- a server in the world namespace -------------------------------------------------------------


@dataclass
class WorldServer:
    """One-shot TCP/UDP server on an address of the world netns (203.0.113.1 unless told);
    ``peer()`` is the source address of the first connection/datagram, or None on timeout."""

    proc: subprocess.Popen

    def peer(self, timeout: float = 15) -> str | None:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            return None
        lines = [ln for ln in out.splitlines() if ln and ln != "LISTENING"]
        return lines[0] if lines and lines[0] != "TIMEOUT" else None


def world_server(
    host: TestHost, proto: str, port: int, timeout: float = 10, address: str = WORLD_ADDR
) -> WorldServer:
    """Start ``world_server.py`` in the world netns on ``address`` (v4 or v6) and wait until it
    listens."""
    argv = [sys.executable, str(WORLD_SERVER), proto, str(port), str(timeout), address]
    proc = host.spawn(
        ["ip", "netns", "exec", "world", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline().strip()
    assert first == "LISTENING", f"world server did not start: {first!r}"
    return WorldServer(proc)


# -- what the kernel and the daemon hold ----------------------------------------------------------

_VOLATILE = {"handle", "packets", "bytes"}
_ID_LIKE = re.compile(r"[0-9a-f]{12}")
_IGNORED_FILES = re.compile(
    r"(daemon-id|\.sock|\.log|\.db|\.db-wal|\.db-shm|\.db-journal|\.sqlite\S*|\.lock|\.pid)$"
)


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in _VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def nft_rules(host: TestHost) -> list[str]:
    """The whole ruleset inside, without handles and counter values, as sorted JSON lines."""
    return sorted(json.dumps(_strip(item), sort_keys=True) for item in host.nft_json())


def _tree(root: Path) -> set[str]:
    found = set()
    for dirpath, dirs, files in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if rel.parts[:1] == ("images",):  # imported images are not per-container state
            dirs[:] = []
            continue
        for d in dirs:
            if _ID_LIKE.search(d):
                found.add(str(rel / d) + "/")
        for f in files:
            if not _IGNORED_FILES.search(f):
                found.add(str(rel / f))
    return found


def kernel_state(host: TestHost) -> dict[str, Any]:
    """Links, addresses, routes, nft ruleset, netns, mounts and per-object files of the test
    host, normalised so that two snapshots are equal iff nothing was added or left behind."""
    links = sorted(
        f"{link['ifname']} master={link.get('master', '')}" for link in host.ip_json("link", "show")
    )
    addrs = sorted(
        f"{a['ifname']} {ai['local']}/{ai['prefixlen']}"
        for a in host.ip_json("addr", "show")
        for ai in a.get("addr_info", [])
        if ai.get("scope") != "link"
    )
    routes = sorted(
        f"{r.get('dst')} via={r.get('gateway', '')} dev={r.get('dev', '')} src={r.get('prefsrc', '')}"
        for r in host.ip_json("route", "show")
    )
    netns = sorted(host.run(["ls", "-A", "/run/netns"], check=False).stdout.split())
    mounts = sorted(line.split()[4] for line in host.run(["cat", "/proc/self/mountinfo"]).stdout.splitlines())
    files = sorted(
        {f"exec/{p}" for p in _tree(host.exec_root)} | {f"data/{p}" for p in _tree(host.data_root)}
    )
    return {
        "links": links,
        "addrs": addrs,
        "routes": routes,
        "nft": nft_rules(host),
        "netns": netns,
        "mounts": mounts,
        "files": files,
    }


def daemon_state(host: TestHost) -> dict[str, Any]:
    """What the daemon reports: networks and containers (all, and running)."""
    return {
        "networks": sorted(host.cnm("network", "ls", "-q").stdout.split()),
        "containers": sorted(host.cnm("ps", "-a", "-q").stdout.split()),
        "running": sorted(host.cnm("ps", "-q").stdout.split()),
    }


def diff_states(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per key: what appeared (+) and what vanished (-)."""
    out = {}
    for key in before.keys() | after.keys():
        b, a = set(before.get(key, [])), set(after.get(key, []))
        if a != b:
            out[key] = {"+": sorted(a - b), "-": sorted(b - a)}
    return out
