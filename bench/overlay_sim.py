#!/usr/bin/env python3
"""bench/overlay_sim.py — the overlay's control plane at scale, by simulation (issue 10).

``HOSTS`` cnmd-equivalents share one real etcd (Debian's etcd-server, one member on the
loopback of a throwaway host: tests/harness.py, nothing on this machine's network).  Each is
the real ``OverlayDriver`` with a client of its own (``EtcdStore``), beside it the engine's
``Mirror`` of the same ``endpoint/`` prefix (``State.global_endpoints``: so etcd serves the
two watches per host a real cnmd has there), a node lease kept alive as cnmd keeps it, and a
fake kernel (``cnm.kernel.fake``) whose FDB and neighbour changes are timestamped.  All of
them live in one process and one event loop: on this 2-core machine that is the fair
arrangement (20 processes would fight for the same cores), and it makes the latency
figures an upper bound: every host's reaction to a change waits for the others'.

1. Setup: one overlay network; each host has ``PER_HOST`` endpoints (20 x 200 = 4,000):
   its first by a driver join (which makes its data plane), the others as the same records
   written in batches of 100 (``--setup joins``: every one by a join, which costs each host
   a full reconcile per join and took over 20 minutes in one process here); the run waits
   until every host has every other host's endpoints.
2. Changes: ``CHANGES`` new endpoints, one at a time, on the hosts in turn; for each, the
   time from the join's start until the endpoint's FDB and neighbour entries are in the
   kernel of every other host (p50, p99), and the same for its leave (entries gone).
3. Load per change, from etcd's own ``/metrics`` (deltas over each phase, divided by the
   number of changes): puts, deletes, transactions, watch events sent, bytes sent to
   clients, lease renewals; and this process's CPU per change per host (decoding the
   event, reconciling the network's entries).  Plus the memory of one host's mirror of the
   4,000 endpoint records.

``--child`` is the part that runs inside the throwaway host (it starts etcd there);
without it this script makes the host and runs itself there.  Prints a report (bench/
overlay.py ``--parts sim`` shows it beside the data-plane figures).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, HarnessError, TestHost, pct  # noqa: E402

NETWORK_ID = "5" * 64
SUBNET = IPv4Network("10.128.0.0/14")  # room for 4,000 endpoints and the changes
# cnmd's node lease is 15 s (src/cnm/daemon/cluster.py), renewed every 5 s; here every host
# shares one event loop, which the setup keeps busy for longer than that, so the simulated
# nodes hold longer leases (renewed at the same third of their TTL)
LEASE_TTL = 600
METRICS = {
    "puts": "etcd_mvcc_put_total",
    "deletes": "etcd_mvcc_delete_total",
    "txns": "etcd_mvcc_txn_total",
    "ranges": "etcd_mvcc_range_total",
    "watch events sent": "etcd_debugging_mvcc_events_total",
    "lease renewals": "etcd_debugging_lease_renewed_total",
    "bytes to clients": "etcd_network_client_grpc_sent_bytes_total",
    "bytes from clients": "etcd_network_client_grpc_received_bytes_total",
}


# -- inside the throwaway host ------------------------------------------------------------------


def metrics(url: str, names: Iterable[str] = METRICS.values()) -> dict[str, float]:
    """etcd's metrics ``names`` (each summed over its labels)."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    totals = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        m = re.match(r"([a-z_]+)(\{[^}]*\})? ([0-9.e+]+)$", line)
        if m and m.group(1) in totals:
            totals[m.group(1)] += float(m.group(3))
    return totals


def progress(text: str) -> None:
    print(f"overlay_sim: {text}", file=sys.stderr, flush=True)


def deep_size(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of ``obj`` and what it holds (dicts, tuples, slotted dataclasses), once each."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, list | tuple | set | frozenset):
        size += sum(deep_size(x, seen) for x in obj)
    elif hasattr(obj, "__slots__"):
        size += sum(deep_size(getattr(obj, s), seen) for s in obj.__slots__ if hasattr(obj, s))
    elif hasattr(obj, "__dict__"):
        size += deep_size(vars(obj), seen)
    return size


async def child(opts: argparse.Namespace) -> None:
    # imported here: the parent needs neither cnm nor grpc
    from etcd_cluster import EtcdCluster

    from cnm.drivers.overlay import ClusterLink, OverlayDriver
    from cnm.engine.state import _global_endpoint
    from cnm.kernel.api import FdbEntry, NeighEntry
    from cnm.kernel.fake import HOST, FakeKernel
    from cnm.model.endpoint import EndpointRecord, SandboxRecord
    from cnm.model.network import OPT_VXLANID_LIST, NetworkRecord
    from cnm.model.values import mac_from_ip
    from cnm.store import codec
    from cnm.store.api import Put
    from cnm.store.etcd import EtcdStore
    from cnm.store.mirror import Mirror

    class TimedKernel(FakeKernel):
        """A fake kernel that says when each remote MAC's FDB and neighbour entries are both
        in (``added``) and when both are out (``removed``)."""

        def __init__(self, sim: Sim) -> None:
            super().__init__()
            self.sim = sim
            self.fdb_in: set[str] = set()
            self.neigh_in: set[str] = set()

        def _record(self, command: str, netns: str | None = None) -> None:
            pass  # the fake's command log would grow by 8,000 lines a host

        async def replace_fdb(self, dev: str, entry: FdbEntry) -> None:
            await super().replace_fdb(dev, entry)
            self.fdb_in.add(entry.mac)
            if entry.mac in self.neigh_in:
                self.sim.arrived(entry.mac, self)

        async def replace_neigh(self, dev: str, entry: NeighEntry) -> None:
            await super().replace_neigh(dev, entry)
            self.neigh_in.add(entry.mac)
            if entry.mac in self.fdb_in:
                self.sim.arrived(entry.mac, self)

        async def delete_fdb(self, dev: str, entry: FdbEntry) -> None:
            await super().delete_fdb(dev, entry)
            self.fdb_in.discard(entry.mac)
            if entry.mac not in self.neigh_in:
                self.sim.left(entry.mac, self)

        async def delete_neigh(self, dev: str, ip: IPv4Address) -> None:
            mac = mac_from_ip(ip)
            await super().delete_neigh(dev, ip)
            self.neigh_in.discard(mac)
            if mac not in self.fdb_in:
                self.sim.left(mac, self)

    @dataclass
    class Node:
        name: str
        address: IPv4Address
        store: EtcdStore
        kernel: TimedKernel
        driver: OverlayDriver
        engine: Mirror[Any]
        lease: int = 0
        endpoints: list[EndpointRecord] = field(default_factory=list)

    @dataclass
    class Sim:
        """Who is waiting for which MAC to arrive on (or leave) how many hosts."""

        waiting: dict[str, tuple[set[int], asyncio.Event]] = field(default_factory=dict)

        def expect(self, mac: str, hosts: set[int]) -> asyncio.Event:
            event = asyncio.Event()
            self.waiting[mac] = (set(hosts), event)
            return event

        def _done(self, mac: str, kernel: TimedKernel) -> None:
            entry = self.waiting.get(mac)
            if entry is not None:
                entry[0].discard(id(kernel))
                if not entry[0]:
                    entry[1].set()
                    del self.waiting[mac]

        arrived = _done
        left = _done

    cluster = EtcdCluster(1)
    cluster.start(timeout=60)
    url = f"http://{cluster.endpoints[0]}"
    network = NetworkRecord(
        id=NETWORK_ID,
        name="simov",
        driver="overlay",
        created="2026-01-01T00:00:00.000000000Z",
        scope="global",
        attachable=True,
        subnet=SUBNET,
        gateway=SUBNET.network_address + 1,
        options={OPT_VXLANID_LIST: "4096"},
    )
    sim = Sim()
    nodes: list[Node] = []
    addresses = SUBNET.hosts()
    next(addresses)  # the gateway's
    keepalive: list[asyncio.Task[None]] = []

    async def keep(node: Node) -> None:
        while True:
            await asyncio.sleep(LEASE_TTL / 3)
            await node.store.refresh(node.lease)

    seq = iter(range(1, 10**9))

    def endpoint_of(node: Node) -> EndpointRecord:
        n = next(seq)
        ip = next(addresses)
        return EndpointRecord(
            id=f"{n:064x}",
            network_id=NETWORK_ID,
            container_id=f"c{n:063x}",
            sandbox_id=f"s{n:063x}",
            name=f"{node.name}-ctr{n}",
            ifname="eth0",
            host_ifname=f"veth{n:07x}",
            mac=mac_from_ip(ip),
            address=IPv4Interface(f"{ip}/{SUBNET.prefixlen}"),
        )

    async def join(node: Node, ep: EndpointRecord) -> None:
        key = f"/run/netns/{ep.sandbox_id}"
        await node.kernel.create_netns(key)
        await node.driver.join(network, ep, SandboxRecord(ep.sandbox_id, ep.container_id, key))
        node.endpoints.append(ep)

    try:
        for i in range(opts.hosts):
            store = EtcdStore(cluster.endpoints, namespace="/sim/")
            kernel = TimedKernel(sim)
            address = IPv4Address(f"198.18.{i // 250}.{i % 250 + 1}")
            kernel._add_link(
                HOST, "ul0", "veth", up=True, mtu=1500, addresses=[IPv4Interface(f"{address}/16")]
            )
            # the engine's own watch of endpoint/ (State.global_endpoints: names, "in use")
            engine: Mirror[Any] = Mirror(store, "endpoint/", _global_endpoint)
            await engine.start()
            node = Node(f"n{i + 1}", address, store, kernel, None, engine)  # type: ignore[arg-type]
            node.lease = await store.grant(LEASE_TTL)
            node.driver = OverlayDriver(
                kernel, ClusterLink(store, node.name, address, lease=lambda n=node: n.lease)
            )
            nodes.append(node)
            keepalive.append(asyncio.create_task(keep(node)))

        # 1. setup: every host joins its endpoints, all hosts at once
        t0 = time.monotonic()
        cpu0 = time.process_time()

        async def fill(node: Node) -> None:
            await join(node, endpoint_of(node))  # the data plane, through the driver
            rest = [endpoint_of(node) for _ in range(opts.per_host - 1)]
            if opts.setup == "joins":
                for k, ep in enumerate(rest):
                    await join(node, ep)
                    if node is nodes[0] and (k + 2) % max(1, opts.per_host // 10) == 0:
                        progress(f"setup: {node.name} joined {k + 2}/{opts.per_host}")
                return
            # the records the driver's joins would write (_publish), 100 to a transaction
            for k in range(0, len(rest), 100):
                ops = []
                for ep in rest[k : k + 100]:
                    doc = dict(codec.encode(ep))
                    doc.update(node=node.name, vtep=str(node.address))
                    ops.append(Put(f"endpoint/{ep.id}", doc, node.lease))
                await node.store.commit(ops)

        await asyncio.gather(*(fill(node) for node in nodes))
        progress("setup: every record written; waiting for every host to program the others'")
        total = opts.hosts * opts.per_host
        remote = total - opts.per_host

        def complete() -> bool:
            return all(len(n.kernel.fdb_in) == remote and len(n.kernel.neigh_in) == remote for n in nodes)

        while not complete():
            await asyncio.sleep(0.05)
        setup_s, setup_cpu = time.monotonic() - t0, time.process_time() - cpu0
        progress(f"setup: every host has every other host's endpoints after {setup_s:.0f} s")
        mirror = deep_size(nodes[0].driver._peers.items) if nodes[0].driver._peers is not None else 0
        engine_mirror = deep_size(nodes[0].engine.items)
        await asyncio.sleep(1)  # let the last programming settle before counting

        # 2. changes: one new endpoint at a time, then its leave
        others = {i: {id(n.kernel) for j, n in enumerate(nodes) if j != i} for i in range(len(nodes))}
        phases: dict[str, dict[str, Any]] = {}
        added: list[tuple[int, EndpointRecord]] = []
        for phase in ("join", "leave"):
            before, cpu0 = metrics(url), time.process_time()
            times: list[float] = []
            for c in range(opts.changes):
                if phase == "join":
                    i = c % len(nodes)
                    ep = endpoint_of(nodes[i])
                    added.append((i, ep))
                else:
                    i, ep = added[c]
                done = sim.expect(ep.mac, others[i])
                start = time.monotonic()
                if phase == "join":
                    await join(nodes[i], ep)
                else:
                    await nodes[i].driver.leave(network, ep, None)
                await asyncio.wait_for(done.wait(), 60)
                times.append((time.monotonic() - start) * 1000)
                await asyncio.sleep(0.02)  # one change at a time: the others' work settles
            progress(f"{phase}: {opts.changes} changes, p50 {pct(times, 50):.1f} ms")
            after = metrics(url)
            phases[phase] = {
                "times": times,
                "cpu": (time.process_time() - cpu0) / opts.changes / len(nodes) * 1000,
                "load": {k: (after[m] - before[m]) / opts.changes for k, m in METRICS.items()},
            }
        gauges = metrics(url, ("etcd_debugging_mvcc_watcher_total", "etcd_debugging_mvcc_watch_stream_total"))

        h, e = opts.hosts, total
        print(
            f"control plane at scale (simulated): {h} hosts on one etcd, {e:,} endpoints on one overlay network"
        )
        how = "joins" if opts.setup == "joins" else "records (one join a host, the rest written in batches)"
        print(f"  setup: {e:,} {how}, all hosts at once,")
        print(
            f"         fully programmed everywhere in {setup_s:.1f} s "
            f"({setup_cpu / e * 1000:.2f} ms CPU per endpoint for all {h} hosts together)"
        )
        print(
            f"  then {opts.changes} changes one at a time; time until the entries are in (out of) "
            f"the fake kernel of every other host ({h - 1}):"
        )
        print(f"  {'change':<8} {'p50':>9} {'p99':>9} {'max':>9}  {'CPU/host':>9}")
        for phase, fig in phases.items():
            t = fig["times"]
            print(
                f"  {phase:<8} {pct(t, 50):6.1f} ms {pct(t, 99):6.1f} ms {max(t):6.1f} ms  {fig['cpu']:6.2f} ms"
            )
        print(
            "  etcd load per change (its /metrics, deltas / changes; lease renewals are all hosts' keepalives):"
        )
        names = list(METRICS)
        print("  " + f"{'':<8}" + "".join(f"{n:>20}" for n in names))
        for phase, fig in phases.items():
            print("  " + f"{phase:<8}" + "".join(f"{fig['load'][n]:20.1f}" for n in names))
        print(
            f"  etcd holds {gauges['etcd_debugging_mvcc_watcher_total']:.0f} watchers on "
            f"{gauges['etcd_debugging_mvcc_watch_stream_total']:.0f} streams; every host watches all of "
            f"endpoint/ twice (engine, driver), so each change is sent {2 * h} times (the writer's own included)"
        )
        print(
            f"  memory of one host's mirrors of {e:,} endpoint records: driver {mirror / 2**20:.1f} MiB "
            f"({mirror / e:.0f} B each), engine {engine_mirror / 2**20:.1f} MiB ({engine_mirror / e:.0f} B each);\n"
            f"  kernel entries per host: {remote:,} FDB + {remote:,} neighbour"
        )
        print(
            "  (one process, one event loop for every host: latencies are an upper bound on 2 shared cores)"
        )
    finally:
        for task in keepalive:
            task.cancel()
        for node in nodes:
            with contextlib.suppress(Exception):
                await node.driver.close()
            with contextlib.suppress(Exception):
                await node.engine.close()
            with contextlib.suppress(Exception):
                await node.store.close()
        cluster.close()


# -- outside: the throwaway host ----------------------------------------------------------------


@contextlib.contextmanager
def throwaway_host() -> Iterator[TestHost]:
    with TestHost() as host:
        host.run(["ip", "link", "set", "lo", "up"])
        yield host


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--per-host", type=int, default=200, help="endpoints each host joins first")
    parser.add_argument(
        "--changes", type=int, default=50, help="endpoints added (then removed) one at a time"
    )
    parser.add_argument(
        "--setup",
        choices=("records", "joins"),
        default="records",
        help="fill the cluster with the endpoint records written in batches (default), or with "
        "one driver join each (O(E) programming per join on every host: slow in one process)",
    )
    parser.add_argument("--quick", action="store_true", help="5 hosts x 50 endpoints, 10 changes")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.quick:
        opts.hosts, opts.per_host, opts.changes = 5, 50, 10
    if opts.hosts < 2 or opts.per_host < 1 or opts.changes < 1 or opts.hosts > 250 * 250:
        parser.error("--hosts >= 2, --per-host >= 1 and --changes >= 1")
    if opts.child:
        sys.path.insert(0, str(REPO / "tests"))
        asyncio.run(child(opts))
        return 0
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", "--hosts", str(opts.hosts)]
    argv += ["--per-host", str(opts.per_host), "--changes", str(opts.changes), "--setup", opts.setup]
    try:
        with throwaway_host() as host:
            proc = host.spawn(argv, stdout=subprocess.PIPE, text=True)  # progress on stderr
            try:
                out, _ = proc.communicate(timeout=3000)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    except (HarnessError, subprocess.TimeoutExpired) as exc:
        print(f"bench/overlay_sim.py: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(out)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
