"""50 containers started in parallel on one network get 50 distinct addresses and all
connect (each pings the gateway; each has its own port on the bridge)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from e2e_util import bridge_of, bridge_ports, inspect, pings
from harness import TestHost

COUNT = 50


def test_fifty_parallel_containers(fresh_cnmhost: TestHost) -> None:
    host = fresh_cnmhost
    host.cnm("network", "create", "--subnet", "10.50.0.0/24", "par")
    names = [f"p{i:02d}" for i in range(COUNT)]

    def start(name: str) -> int:
        proc = host.cnm(
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "par",
            "busybox",
            "sleep",
            "1d",
            check=False,
            timeout=240,
        )
        return proc.returncode if proc.returncode == 0 else (proc.returncode, proc.stderr)

    with ThreadPoolExecutor(max_workers=COUNT) as pool:
        results = dict(zip(names, pool.map(start, names), strict=True))
    assert {n: r for n, r in results.items() if r != 0} == {}

    infos = inspect(host, *names)
    ips = [i["NetworkSettings"]["Networks"]["par"]["IPAddress"] for i in infos]
    macs = [i["NetworkSettings"]["Networks"]["par"]["MacAddress"] for i in infos]
    assert len(set(ips)) == COUNT and all(ip.startswith("10.50.0.") for ip in ips), ips
    assert "10.50.0.1" not in ips
    assert len(set(macs)) == COUNT
    assert len(bridge_ports(host, bridge_of(host, "par"))) == COUNT

    with ThreadPoolExecutor(max_workers=8) as pool:
        reached = dict(
            zip(names, pool.map(lambda n: pings(host, n, "10.50.0.1", wait=3), names), strict=True)
        )
    assert [n for n, ok in reached.items() if not ok] == []
