"""Concurrent changes through the Engine API, then proof that store and kernel agree.

``test_network_rm_races_connect_and_run``: ``network rm`` sent over and over while
``network connect`` of four containers and two ``run`` on that network are under way,
twelve rounds; whatever wins, no endpoint may be left on a network that is gone.

``test_stress``: 8 workers for ``CNM_STRESS_SECONDS`` (default 15; ``make stress`` runs 60)
doing random create / run / start / stop / kill / restart / rename / connect / disconnect / rm -f /
network create / network rm / prune on a few shared names.  Refusals (404, 409, 403 …) are
expected; what must hold is that at the end ``tests/consistency.py`` finds nothing, that
no request got a 500 other than Docker's own (a port already allocated) and none hung.
It prints the operations run, by kind and status.

``test_checker_sees_*``: the checker reports each fault planted behind cnmd's back, so a
clean result means something.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from consistency import assert_consistent, problems
from harness import ApiResponse, TestHost

WORKERS = 8
NETWORKS = ("s0", "s1", "s2")
CONTAINERS = tuple(f"c{i}" for i in range(8))
HOST_PORTS = (18080, 18081)
REQUEST_TIMEOUT = 120.0
# 500s that are not races: the host port is taken by another worker's container (Docker
# answers 500 too)
EXPECTED_500 = ("port is already allocated", "address already in use")


@dataclass
class Tally:
    ops: Counter[tuple[str, int]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    samples: dict[tuple[str, int], str] = field(default_factory=dict)  # a message per refusal kind
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, op: str, resp: ApiResponse | None, detail: str = "") -> None:
        with self.lock:
            if resp is None:
                self.ops[(op, 0)] += 1
                self.failures.append(f"{op}: {detail}")
                return
            self.ops[(op, resp.status)] += 1
            if resp.status >= 300:
                self.samples.setdefault((op, resp.status), resp.message[:120])
            if resp.status >= 500 and not any(m in resp.message for m in EXPECTED_500):
                self.failures.append(f"{op} -> {resp.status}: {resp.message}")

    def total(self) -> int:
        return sum(self.ops.values())

    def report(self) -> str:
        by_op: dict[str, list[str]] = {}
        for (op, status), n in sorted(self.ops.items()):
            by_op.setdefault(op, []).append(f"{status}x{n}")
        lines = [f"  {op:<12} {' '.join(v)}" for op, v in by_op.items()]
        lines += [f"  e.g. {op} {status}: {msg}" for (op, status), msg in sorted(self.samples.items())]
        return "\n".join(lines)


def call(
    host: TestHost, tally: Tally, op: str, method: str, path: str, body: Any = None
) -> ApiResponse | None:
    try:
        resp = host.api(method, path, body, timeout=REQUEST_TIMEOUT)
    except OSError as exc:  # a hung or dropped request is a failure too
        tally.add(op, None, f"{method} {path}: {exc!r}")
        return None
    tally.add(op, resp)
    return resp


def container_body(rng: random.Random) -> dict[str, Any]:
    host_config: dict[str, Any] = {"NetworkMode": rng.choice((*NETWORKS, "bridge"))}
    if rng.random() < 0.3:
        host_config["PortBindings"] = {"80/tcp": [{"HostPort": str(rng.choice(HOST_PORTS))}]}
    if rng.random() < 0.2:
        host_config["AutoRemove"] = True
    # some exit on their own, so exit handling races the rest
    cmd = ["sleep", "1d"] if rng.random() < 0.75 else ["sleep", f"{rng.uniform(0.1, 1.5):.2f}"]
    return {"Image": "busybox", "Cmd": cmd, "HostConfig": host_config}


def one_op(host: TestHost, tally: Tally, rng: random.Random) -> None:
    c, n = rng.choice(CONTAINERS), rng.choice(NETWORKS)
    kind = rng.choices(
        (
            "run",
            "create",
            "start",
            "stop",
            "kill",
            "restart",
            "rename",
            "connect",
            "disconnect",
            "rm",
            "net-create",
            "net-rm",
            "prune",
        ),
        weights=(14, 4, 6, 3, 3, 2, 3, 14, 10, 10, 8, 8, 1),
    )[0]
    if kind in ("run", "create"):
        resp = call(host, tally, "create", "POST", f"/containers/create?name={c}", container_body(rng))
        if kind == "run" and resp is not None and resp.status == 201:
            call(host, tally, "start", "POST", f"/containers/{c}/start")
    elif kind == "start":
        call(host, tally, "start", "POST", f"/containers/{c}/start")
    elif kind == "stop":
        call(host, tally, "stop", "POST", f"/containers/{c}/stop?t=1")
    elif kind == "restart":
        call(host, tally, "restart", "POST", f"/containers/{c}/restart?t=1")
    elif kind == "rename":
        call(host, tally, "rename", "POST", f"/containers/{c}/rename?name={rng.choice(CONTAINERS)}")
    elif kind == "kill":
        call(host, tally, "kill", "POST", f"/containers/{c}/kill")
    elif kind == "connect":
        call(host, tally, "connect", "POST", f"/networks/{n}/connect", {"Container": c})
    elif kind == "disconnect":
        call(
            host,
            tally,
            "disconnect",
            "POST",
            f"/networks/{n}/disconnect",
            {"Container": c, "Force": rng.random() < 0.3},
        )
    elif kind == "rm":
        call(host, tally, "rm", "DELETE", f"/containers/{c}?force=1")
    elif kind == "net-create":
        call(
            host, tally, "net-create", "POST", "/networks/create", {"Name": n, "Internal": rng.random() < 0.2}
        )
    elif kind == "net-rm":
        call(host, tally, "net-rm", "DELETE", f"/networks/{n}")
    else:
        call(host, tally, "prune", "POST", "/networks/prune")


def stress(host: TestHost, seconds: float, seed: int) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + seconds

    def worker(index: int) -> None:
        rng = random.Random(seed * 100 + index)
        while time.monotonic() < deadline:
            one_op(host, tally, rng)

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for f in [pool.submit(worker, i) for i in range(WORKERS)]:
            f.result()
    return tally


def clean_up(host: TestHost) -> None:
    """Remove what the workers left, through the API, and check again."""
    for c in CONTAINERS:
        host.api("DELETE", f"/containers/{c}?force=1", timeout=REQUEST_TIMEOUT)
    for n in NETWORKS:
        host.api("DELETE", f"/networks/{n}", timeout=REQUEST_TIMEOUT)


STAYING = ("stay0", "stay1", "stay2", "stay3")


def race_round(host: TestHost, tally: Tally, round_: int) -> None:
    """``network rm racy`` sent over and over while ``network connect racy`` of each
    container of STAYING and two ``run --network racy`` are under way."""
    body = {"Image": "busybox", "Cmd": ["sleep", "1d"], "HostConfig": {"NetworkMode": "racy"}}
    barrier = threading.Barrier(len(STAYING) + 3)

    def connect(name: str) -> None:
        barrier.wait()
        call(host, tally, "connect", "POST", "/networks/racy/connect", {"Container": name})

    def run(name: str) -> None:
        barrier.wait()
        resp = call(host, tally, "create", "POST", f"/containers/create?name={name}", body)
        if resp is not None and resp.status == 201:
            call(host, tally, "start", "POST", f"/containers/{name}/start")

    def remove() -> None:
        # again and again until it is not refused for active endpoints: one of the tries
        # lands while the connects and runs are between their checks and their records
        barrier.wait()
        while not others_done.is_set():
            resp = call(host, tally, "net-rm", "DELETE", "/networks/racy")
            if resp is None or resp.status != 403:
                return
            time.sleep(0.002)

    others_done = threading.Event()
    with ThreadPoolExecutor(max_workers=len(STAYING) + 3) as pool:
        removal = pool.submit(remove)
        others = [pool.submit(connect, name) for name in STAYING]
        others += [pool.submit(run, f"r{round_}a"), pool.submit(run, f"r{round_}b")]
        for f in others:
            f.result()
        others_done.set()
        removal.result()


def test_network_rm_races_connect_and_run(fresh_cnmhost: TestHost) -> None:
    host = fresh_cnmhost
    for name in STAYING:
        assert (
            host.api(
                "POST", f"/containers/create?name={name}", {"Image": "busybox", "Cmd": ["sleep", "1d"]}
            ).status
            == 201
        )
        assert host.api("POST", f"/containers/{name}/start").status == 204
    tally = Tally()
    for round_ in range(12):
        assert host.api("POST", "/networks/create", {"Name": "racy"}).status == 201
        race_round(host, tally, round_)
        assert_consistent(host)
        for name in (f"r{round_}a", f"r{round_}b"):
            host.api("DELETE", f"/containers/{name}?force=1")
        for name in STAYING:
            host.api("POST", "/networks/racy/disconnect", {"Container": name, "Force": True})
        host.api("DELETE", "/networks/racy")
    print(f"\nnetwork rm against connect and run, {tally.total()} requests:\n{tally.report()}")
    assert tally.failures == []
    assert_consistent(host)


def test_stress(fresh_cnmhost: TestHost) -> None:
    host = fresh_cnmhost
    seconds = float(os.environ.get("CNM_STRESS_SECONDS", "15"))
    seed = int(os.environ.get("CNM_STRESS_SEED", str(random.randrange(1 << 16))))
    started = time.monotonic()
    tally = stress(host, seconds, seed)
    elapsed = time.monotonic() - started
    print(
        f"\nstress: seed {seed}, {WORKERS} workers, {elapsed:.1f} s, {tally.total()} requests "
        f"({tally.total() / elapsed:.1f}/s):\n{tally.report()}"
    )
    assert tally.failures == [], "\n".join(tally.failures[:30])
    assert_consistent(host)
    clean_up(host)
    assert_consistent(host)


def test_checker_sees_planted_faults(fresh_cnmhost: TestHost) -> None:
    """tests/consistency.py finds nothing on a quiet host and each fault planted behind
    cnmd's back: a deleted veth, a stray netns, an untracked tagged veth, a lost port
    element, a lost network element and one of a gone network, a foreign address in a
    sandbox, a sandbox whose 127.0.0.11 does not answer."""
    host = fresh_cnmhost
    host.cnm("network", "create", "--subnet", "10.77.0.0/24", "chk")
    host.cnm("run", "-d", "--name", "web", "--network", "chk", "-p", "18090:80", "busybox", "sleep", "1d")
    host.cnm("run", "-d", "--name", "db", "--network", "chk", "busybox", "sleep", "1d")
    assert problems(host) == []

    db = host.api("GET", "/containers/db/json").json()
    endpoint = db["NetworkSettings"]["Networks"]["chk"]["EndpointID"]
    host.run(["ip", "link", "del", f"veth{endpoint[:7]}"])
    netns_dir = host.exec_root / "netns"
    host.run(["touch", str(netns_dir / "stray")])
    host.run(["ip", "link", "add", "vethstray", "type", "veth", "peer", "name", "vethstray1"])
    host.run(["ip", "link", "set", "vethstray", "alias", "cnm:" + "f" * 64])
    host.run(["nft", "flush", "map", "ip", "cnm", "ports-any"])
    chk = host.api("GET", "/networks/chk").json()["Id"]
    host.run(["nft", "delete", "element", "ip", "cnm", "icc", f'{{ "br-{chk[:12]}" }}'])
    host.run(
        ["nft", "add", "element", "ip", "cnm", "bridges", '{ "br-gone" comment "cnm:' + "e" * 64 + '" }']
    )
    web_key = host.api("GET", "/containers/web/json").json()["NetworkSettings"]["SandboxKey"]
    host.netns_exec(web_key, ["ip", "addr", "add", "10.77.0.200/24", "dev", "eth0"])
    host.netns_exec(web_key, ["nft", "delete", "table", "ip", "cnm-dns"])  # 127.0.0.11 no longer answers

    found = "\n".join(problems(host))
    for expected in (
        f"no host veth veth{endpoint[:7]}",
        f"netns {netns_dir / 'stray'} that no sandbox owns",
        "veth vethstray of endpoint ffffffffffff, which is gone",
        "port tcp . 18090 of endpoint",
        f"network chk: nft set icc lacks br-{chk[:12]}",
        "nft set bridges: element br-gone of 'eeeeeeeeeeee', which is gone",
        "eth0 has ['10.77.0.2/24', '10.77.0.200/24'], recorded 10.77.0.2/24",
        "DNS from web (",
    ):
        assert expected in found, f"{expected!r} not in:\n{found}"


@pytest.mark.daemon_flags("--firewall-backend", "iptables")
def test_checker_sees_lost_dnat_rule_with_iptables(fresh_cnmhost: TestHost) -> None:
    host = fresh_cnmhost
    cid = host.cnm("run", "-d", "--name", "web", "-p", "18090:80", "busybox", "sleep", "1d").stdout.split()[
        -1
    ]
    assert problems(host) == []
    endpoint = host.api("GET", f"/containers/{cid}/json").json()["NetworkSettings"]["Networks"]["bridge"][
        "EndpointID"
    ]
    host.run(["iptables", "-t", "nat", "-F", f"CNM-P-{endpoint[:12]}"])
    assert f"port tcp/18090 of endpoint {endpoint[:12]}: no DNAT rule" in "\n".join(problems(host))
