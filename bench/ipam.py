#!/usr/bin/env python3
"""bench/ipam.py -- IPAM's hot path before and after it moved onto the async Store.

In-process, no root, no network: nothing here touches the machine.  Figures, each for the
release given with ``--before`` (default ``v0.1.0``: its ``cnm/ipam/default.py`` over the
synchronous document stores, memory and SQLite) and for the code of this tree (over every
Store backend registered in tests/store_backends.py):

* allocate + release of one address with ``--in-use`` addresses already taken in the pool
  (p50, p99, in µs): the cost of a container's attach/detach in IPAM;
* create + release of a pool with an explicit subnet, with 0 and ``--pools`` pools there
  (p50, µs): what ``network create`` pays in IPAM, which must stay flat;
* loading ``--in-use`` addresses into a new cache (ms): IPAM's share of a restart;
* now only: two daemons (two caches on one MemoryStore, calls interleaved as round trips
  would) allocating 1,000 addresses each at once: wall time and lost compare-and-swaps.

Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from ipaddress import IPv4Network
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import oldrelease  # noqa: E402
from ipam_sharing import LatencyStore, check_parallel_allocation  # noqa: E402
from store_backends import BACKENDS  # noqa: E402
from store_v1 import memory as docs_memory  # noqa: E402
from store_v1 import sqlite as docs_sqlite  # noqa: E402

from cnm.ipam.default import DefaultIpam  # noqa: E402
from cnm.model.network import IpamConfig  # noqa: E402
from cnm.store.api import Store  # noqa: E402
from cnm.store.memory import MemoryStore  # noqa: E402

SUBNET = IpamConfig(subnet=IPv4Network("10.0.0.0/16"))


def old_module(rev: str) -> ModuleType:
    """``cnm/ipam/default.py`` as it was at ``rev``, imported on its own: from the release's
    archive when ``rev`` is a release kept in tests/releases, else from git."""
    try:
        text = oldrelease.read("src/cnm/ipam/default.py", rev)
    except oldrelease.OldReleaseError:
        text = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{rev}:src/cnm/ipam/default.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    module = ModuleType("ipam_before")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(text, f"{rev}:src/cnm/ipam/default.py", "exec"), module.__dict__)
    return module


def p50(values: list[float]) -> float:
    return statistics.median(values)


def p99(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.99)]


def row(name: str, figures: dict[str, str]) -> None:
    print(f"  {name:<34} " + "  ".join(f"{k} {v}" for k, v in figures.items()), flush=True)


# -- before: the synchronous IPAM ------------------------------------------------------------


def bench_before(mod: ModuleType, make_store: Callable[[], Any], args: argparse.Namespace) -> dict[str, str]:
    store = make_store()
    ipam = mod.DefaultIpam(store)
    ipam.allocate_pool("n", SUBNET)
    for i in range(args.in_use):
        ipam.allocate_address("n", f"e{i}")
    times = []
    for i in range(args.rounds):
        t0 = time.perf_counter()
        a = ipam.allocate_address("n", f"x{i}")
        ipam.release_address("n", a)
        times.append((time.perf_counter() - t0) * 1e6)
    t0 = time.perf_counter()
    mod.DefaultIpam(store)
    load_ms = (time.perf_counter() - t0) * 1e3
    pools = {}
    for label, count in (("0", 0), (str(args.pools), args.pools)):
        for k in range(count):
            ipam.allocate_pool(f"p{label}-{k}", IpamConfig(subnet=IPv4Network((0x0B000000 + (k << 8), 24))))
        pool_times = []
        for k in range(200):
            t0 = time.perf_counter()
            ipam.allocate_pool("q", IpamConfig(subnet=IPv4Network((0x0C000000 + (k << 8), 24))))
            ipam.release_pool("q")
            pool_times.append((time.perf_counter() - t0) * 1e6)
        pools[label] = p50(pool_times)
        for k in range(count):
            ipam.release_pool(f"p{label}-{k}")
    return figures(times, pools, load_ms)


def figures(times: list[float], pools: dict[str, float], load_ms: float) -> dict[str, str]:
    out = {"alloc+rel p50": f"{p50(times):6.1f} us", "p99": f"{p99(times):7.1f} us"}
    out.update({f"pool@{k} p50": f"{v:6.0f} us" for k, v in pools.items()})
    out["load"] = f"{load_ms:6.1f} ms"
    return out


# -- now: the async IPAM over a Store ---------------------------------------------------------


async def bench_now(store: Store, args: argparse.Namespace) -> dict[str, str]:
    ipam = DefaultIpam(store)
    await ipam.start()
    await ipam.allocate_pool("n", SUBNET)
    for i in range(args.in_use):
        await ipam.allocate_address("n", f"e{i}")
    times = []
    for i in range(args.rounds):
        t0 = time.perf_counter()
        a = await ipam.allocate_address("n", f"x{i}")
        await ipam.release_address("n", a)
        times.append((time.perf_counter() - t0) * 1e6)
        if i % 64 == 0:
            await asyncio.sleep(0)  # let the watch run, as it does between requests
    t0 = time.perf_counter()
    again = DefaultIpam(store)
    await again.start()
    load_ms = (time.perf_counter() - t0) * 1e3
    await again.close()
    pools = {}
    for label, count in (("0", 0), (str(args.pools), args.pools)):
        for k in range(count):
            await ipam.allocate_pool(
                f"p{label}-{k}", IpamConfig(subnet=IPv4Network((0x0B000000 + (k << 8), 24)))
            )
        pool_times = []
        for k in range(200):
            t0 = time.perf_counter()
            await ipam.allocate_pool("q", IpamConfig(subnet=IPv4Network((0x0C000000 + (k << 8), 24))))
            await ipam.release_pool("q")
            pool_times.append((time.perf_counter() - t0) * 1e6)
        pools[label] = p50(pool_times)
        for k in range(count):
            await ipam.release_pool(f"p{label}-{k}")
    await ipam.close()
    return figures(times, pools, load_ms)


async def bench_two_daemons() -> dict[str, str]:
    inner = MemoryStore()
    stores = iter([LatencyStore(inner, seed=1), LatencyStore(inner, seed=2)])

    @contextlib.asynccontextmanager
    async def open_store() -> AsyncIterator[Store]:
        yield next(stores)

    got = await check_parallel_allocation(open_store, count=1000, release_ratio=0.0)
    await inner.close()
    return {
        "2 x 1000 in": f"{got.seconds * 1e3:.0f} ms",
        "rate": f"{got.allocations / got.seconds:.0f}/s",
        "lost CAS": str(got.conflicts),
    }


async def run_backends(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="cnm-bench-ipam-") as tmp:
        for name in sorted(BACKENDS):
            factory: Callable[[Path], Any] = BACKENDS[name]
            async with factory(Path(tmp) / name) as store:
                row(f"now, {name}", await bench_now(store, args))
    row("now, two daemons on one memory store", await bench_two_daemons())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="v0.1.0", help="git revision to compare with")
    parser.add_argument("--in-use", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--pools", type=int, default=300)
    args = parser.parse_args()
    print(f"IPAM, {args.in_use} addresses in use, {args.rounds} rounds; pools with explicit subnets")
    before = old_module(args.before)
    row(f"{args.before}, docs memory", bench_before(before, docs_memory.MemoryStore, args))
    with tempfile.TemporaryDirectory(prefix="cnm-bench-ipam-") as tmp:
        row(
            f"{args.before}, docs sqlite",
            bench_before(before, lambda: docs_sqlite.SqliteStore(Path(tmp) / "cnm.db"), args),
        )
    asyncio.run(run_backends(args))


if __name__ == "__main__":
    main()
