"""Helpers shared by the benchmarks in bench/ (attach.py, ports.py).

What lives here: the path to the test harness (every benchmark runs inside a throwaway
``TestHost``; nothing touches this machine's network), percentiles, installing a peer with apt
when it is missing, one Engine API call that must succeed, running one measurement in its own
throwaway host without letting its failure hide the others' figures, dockerd started inside a
throwaway host with its own roots, and reading the processes of a throwaway host (from the
real host's /proc, read only).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from harness import HarnessError, TestHost, pids_in_pidns, unix_http  # noqa: E402

PEER_PACKAGES = {
    "cni": ("containernetworking-plugins", "/usr/lib/cni/bridge"),
    "netavark": ("netavark", "/usr/lib/podman/netavark"),
    "docker": ("docker.io", "/usr/sbin/dockerd"),
}


class Notes(Protocol):
    """Anything that collects the benchmark's notes (each benchmark's table)."""

    def note(self, text: str) -> None: ...


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered) + 0.5)) - 1))]


# -- peers: install ---------------------------------------------------------------------------------


def ensure_package(peer: str, table: Notes, install: bool) -> bool:
    """Is ``peer``'s binary there, installing its Debian package with apt-get when allowed?
    A peer that stays absent is noted, never an error."""
    package, binary = PEER_PACKAGES[peer]
    if os.path.exists(binary):
        return True
    if not install:
        table.note(f"{peer}: absent ({binary} missing; --no-install given)")
        return False
    print(f"installing {package} for the {peer} figures (apt-get)…", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    ok = (
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
            env=env,
            capture_output=True,
        ).returncode
        == 0
    )
    if not ok:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        ok = (
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
                env=env,
                capture_output=True,
            ).returncode
            == 0
        )
    if not ok or not os.path.exists(binary):
        table.note(f"{peer}: absent (apt-get install {package} failed)")
        return False
    return True


# -- cnm and the throwaway host -----------------------------------------------------------------------


def api_ok(host: TestHost, method: str, path: str, body: Any = None) -> Any:
    """One Engine API request to cnmd that must succeed; its JSON answer (or None)."""
    resp = host.api(method, path, body, timeout=120)
    if resp.status >= 300:
        raise HarnessError(f"{method} {path}: {resp.status} {resp.message}")
    return (
        resp.json()
        if resp.body and resp.headers.get("Content-Type", "").startswith("application/json")
        else None
    )


def run_in_host(what: str, table: Notes, fn: Callable[..., Any], *args: Any) -> None:
    """``fn(host, *args, table)`` in a fresh throwaway host.  A failure becomes a note (a peer
    or cnm failing must not hide the others' figures); the host is always torn down."""
    print(f"[{what}]", flush=True)
    try:
        with TestHost() as host:
            try:
                fn(host, *args, table)
            except Exception as exc:
                table.note(f"{what}: not measured: {exc}".splitlines()[0][:400])
                if what.startswith("cnm"):
                    print(host.daemon_log_tail(20), flush=True)
    except HarnessError as exc:
        table.note(f"{what}: throwaway host trouble: {exc}")


# -- dockerd inside a throwaway host ------------------------------------------------------------------


@dataclass
class Dockerd:
    """A dockerd running inside ``host`` with its roots under ``root``."""

    host: TestHost
    root: Path
    sock: Path
    proc: subprocess.Popen

    @property
    def cli(self) -> list[str]:
        """The docker CLI pointed at this daemon."""
        return ["docker", "-H", f"unix://{self.sock}"]

    def call(self, method: str, path: str, body: Any = None, timeout: float = 120) -> Any:
        """One Engine API request (API 1.41, Docker 20.10's) that must succeed."""
        resp = unix_http(str(self.sock), method, f"/v1.41{path}", body, timeout=timeout)
        if resp.status >= 300:
            raise HarnessError(f"docker {method} {path}: {resp.status} {resp.message}")
        return resp.json() if resp.body else None

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM dockerd (inside the host) and wait for it; its containers keep running
        unless removed first."""
        pid = (self.root / "dockerd.pid").read_text().strip() if (self.root / "dockerd.pid").exists() else ""
        if pid:
            self.host.run(["kill", pid], check=False)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"dockerd did not exit within {timeout}s") from None


def start_dockerd(host: TestHost, *flags: str, name: str = "docker", timeout: float = 60) -> Dockerd:
    """Start dockerd inside ``host`` with its own data/exec roots under ``host.tmp/name`` and
    wait for ``/_ping``.  Raises HarnessError with the tail of its log when it cannot run."""
    root = host.tmp / name
    sock = root / "docker.sock"
    root.mkdir(exist_ok=True)
    argv = [
        "dockerd",
        "-H",
        f"unix://{sock}",
        "--data-root",
        str(root / "data"),
        "--exec-root",
        str(root / "exec"),
        "--pidfile",
        str(root / "dockerd.pid"),
        "--cgroup-parent",
        host.cgroup_parent,
        *flags,
    ]
    with open(root / "dockerd.log", "ab") as log:
        proc = host.spawn(argv, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if unix_http(str(sock), "GET", "/_ping", timeout=2).status == 200:
                return Dockerd(host, root, sock, proc)
        except OSError:
            pass
        time.sleep(0.2)
    tail = (root / "dockerd.log").read_text(errors="replace").splitlines()[-8:]
    raise HarnessError("dockerd could not run inside the throwaway host: " + " | ".join(tail))


# -- processes of a throwaway host (read from /proc) -------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    comm: str
    rss_kb: int
    in_container: bool  # in a pid namespace nested below the host's (a container's own)


def host_processes(host: TestHost) -> dict[int, Proc]:
    """Every live process of ``host`` (its pid namespace and those nested below), by pid."""
    if host._pidns is None:  # noqa: SLF001 - the harness keeps the inode private
        raise HarnessError("the test host is not running")
    found: dict[int, Proc] = {}
    for pid in pids_in_pidns(host._pidns):  # noqa: SLF001
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            inode = os.stat(f"/proc/{pid}/ns/pid").st_ino
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:  # gone meanwhile
            continue
        rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        found[pid] = Proc(pid, comm, rss, inode != host._pidns)  # noqa: SLF001
    return found


def steady_processes(host: TestHost, gap: float = 0.3) -> dict[int, Proc]:
    """The processes of ``host`` alive in two snapshots ``gap`` seconds apart (the second's
    figures): a short-lived helper caught by chance (cnmd's periodic ``iptables-save``, a
    ``runc`` call) is not a process the mappings keep running."""
    first = host_processes(host)
    time.sleep(gap)
    second = host_processes(host)
    return {pid: proc for pid, proc in second.items() if pid in first and first[pid].comm == proc.comm}


@dataclass(frozen=True)
class ProcDelta:
    """What appeared outside the containers between two snapshots, and the RSS it cost."""

    new: Counter[str]  # command name -> count of new processes (containers' own excluded)
    rss_kb: int  # RSS now minus RSS before, of every process outside the containers

    @property
    def count(self) -> int:
        return sum(self.new.values())

    def describe(self) -> str:
        return ", ".join(f"{name}×{n}" for name, n in self.new.most_common()) or "none"


def proc_delta(before: dict[int, Proc], after: dict[int, Proc]) -> ProcDelta:
    """New non-container processes in ``after``, and the change in the summed RSS of the
    non-container processes (long-lived ones growing count: that is cnmd's cost)."""
    outside_before = {p: v for p, v in before.items() if not v.in_container}
    outside_after = {p: v for p, v in after.items() if not v.in_container}
    new = Counter(v.comm for p, v in outside_after.items() if p not in outside_before)
    rss = sum(v.rss_kb for v in outside_after.values()) - sum(v.rss_kb for v in outside_before.values())
    return ProcDelta(new, rss)
