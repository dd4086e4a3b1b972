#!/usr/bin/env python3
"""bench/store.py — the Store backends, and the etcd clients cnm could have used.

For every backend present (``memory``; ``sqlite`` when ``cnm.store.sqlite`` exists; ``etcd``
through ``cnm.store.etcd.EtcdStore``) and for each etcd client library installed (``aetcd``
and ``etcd3aio``, asyncio over gRPC; ``etcd3gw``, synchronous over etcd's JSON gateway,
called from a thread as an asyncio daemon would have to), the p50 and p90 per call of:

* put: a write of a small JSON document;
* get: a read of one key;
* CAS: a write conditional on the key's revision (etcd: a transaction);
* list 1,000: a read of every key under a prefix holding 1,000 (every client decodes the
  JSON documents, as the store does);
* watch: from a put returning to the watcher, on the same event loop, seeing that change.

etcd runs as one member of Debian's ``etcd-server`` started by ``tests/etcd_cluster.py``:
on 127.0.0.1, data on tmpfs, stopped at the end.  Nothing leaves this machine.  The
figures justify the client choice written in ``cnm/store/etcd.py``.

    .venv/bin/python bench/store.py [-n 300]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from common import pct  # noqa: E402
from etcd_cluster import EtcdCluster, available  # noqa: E402

DOC = {"name": "net1", "subnet": "10.1.0.0/24", "labels": {"a": "b"}}


async def timed(n: int, call: Callable[[int], Awaitable[Any]]) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await call(i)
        out.append((time.perf_counter() - t0) * 1000)
    return out


class Ops:
    """One client's way of doing each measured operation (async; a sync client in a thread)."""

    name = ""

    async def setup(self) -> None: ...
    async def put(self, key: str) -> Any: ...
    async def get(self, key: str) -> Any: ...
    async def cas(self, key: str) -> Any: ...
    async def list(self, prefix: str) -> int: ...
    async def watch(self, prefix: str, seen: Callable[[str], None]) -> None: ...
    async def close(self) -> None: ...


class StoreOps(Ops):
    """Any ``cnm.store.api.Store``."""

    def __init__(self, name: str, store: Any) -> None:
        self.name = name
        self.store = store
        self.revs: dict[str, int] = {}

    async def put(self, key: str) -> Any:
        self.revs[key] = await self.store.put(key, DOC)

    async def get(self, key: str) -> Any:
        return await self.store.get(key)

    async def cas(self, key: str) -> Any:
        self.revs[key] = await self.store.put(key, DOC, revision=self.revs.get(key, 0))

    async def list(self, prefix: str) -> int:
        return len((await self.store.list(prefix)).entries)

    async def watch(self, prefix: str, seen: Callable[[str], None]) -> None:
        listing = await self.store.list(prefix)
        async for change in self.store.watch(prefix, listing.revision + 1):
            seen(change.key)

    async def close(self) -> None:
        await self.store.close()


class AetcdOps(Ops):
    name = "aetcd.Client"

    def __init__(self, endpoint: str) -> None:
        import aetcd

        host, port = endpoint.rsplit(":", 1)
        self.client = aetcd.Client(host=host, port=int(port))
        self.revs: dict[str, int] = {}

    async def setup(self) -> None:
        await self.client.connect()

    async def put(self, key: str) -> Any:
        r = await self.client.put(b"/a/" + key.encode(), json.dumps(DOC).encode())
        self.revs[key] = r.header.revision

    async def get(self, key: str) -> Any:
        return json.loads((await self.client.get(b"/a/" + key.encode())).value)

    async def cas(self, key: str) -> Any:
        k = b"/a/" + key.encode()
        t = self.client.transactions
        ok, _ = await self.client.transaction(
            compare=[t.mod(k) == self.revs.get(key, 0)],
            success=[t.put(k, json.dumps(DOC).encode())],
            failure=[],
        )
        r = await self.client.get(k)  # aetcd returns no header revision from a transaction
        self.revs[key] = r.mod_revision

    async def list(self, prefix: str) -> int:
        r = await self.client.get_prefix(b"/a/" + prefix.encode())
        return len([json.loads(kv.value) for kv in r.kvs])

    async def watch(self, prefix: str, seen: Callable[[str], None]) -> None:
        async for event in await self.client.watch_prefix(b"/a/" + prefix.encode()):
            seen(event.kv.key.decode()[3:])

    async def close(self) -> None:
        await self.client.close()


class Etcd3aioOps(Ops):
    name = "etcd3aio"

    def __init__(self, endpoint: str) -> None:
        from etcd3aio import Etcd3Client

        self.client = Etcd3Client([endpoint])
        self.revs: dict[str, int] = {}

    async def setup(self) -> None:
        await self.client.connect()

    async def put(self, key: str) -> Any:
        r = await self.client.kv.put(b"/b/" + key.encode(), json.dumps(DOC).encode())
        self.revs[key] = r.header.revision

    async def get(self, key: str) -> Any:
        return json.loads((await self.client.kv.get(b"/b/" + key.encode())).kvs[0].value)

    async def cas(self, key: str) -> Any:
        from etcd3aio._protobuf import rpc_pb2 as pb

        k = b"/b/" + key.encode()
        r = await self.client.kv.txn(
            compare=[
                pb.Compare(key=k, target=pb.Compare.MOD, result=pb.Compare.EQUAL, mod_revision=self.revs[key])
            ],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=k, value=json.dumps(DOC).encode()))],
        )
        self.revs[key] = r.header.revision

    async def list(self, prefix: str) -> int:
        from etcd3aio.kv import prefix_range_end

        k = b"/b/" + prefix.encode()
        return len(
            [json.loads(kv.value) for kv in (await self.client.kv.get(k, range_end=prefix_range_end(k))).kvs]
        )

    async def watch(self, prefix: str, seen: Callable[[str], None]) -> None:
        from etcd3aio.kv import prefix_range_end

        k = b"/b/" + prefix.encode()
        async for response in self.client.watch.watch(k, range_end=prefix_range_end(k)):
            for event in response.events:
                seen(event.kv.key.decode()[3:])

    async def close(self) -> None:
        await self.client.close()


class Etcd3gwOps(Ops):
    name = "etcd3gw in a thread"

    def __init__(self, endpoint: str) -> None:
        import etcd3gw

        host, port = endpoint.rsplit(":", 1)
        self.client = etcd3gw.client(host=host, port=int(port))
        self.revs: dict[str, int] = {}

    def _put(self, key: str) -> None:
        self.client.put("/c/" + key, json.dumps(DOC))

    async def put(self, key: str) -> Any:
        await asyncio.to_thread(self._put, key)

    async def get(self, key: str) -> Any:
        [(value, _)] = await asyncio.to_thread(self.client.get, "/c/" + key, metadata=True)
        return json.loads(value)

    def _cas(self, key: str) -> None:
        k = "/c/" + key
        [(_, meta)] = self.client.get(k, metadata=True)
        self.client.transaction(
            {
                "compare": [
                    {"key": _b64(k), "result": "EQUAL", "target": "MOD", "mod_revision": meta["mod_revision"]}
                ],
                "success": [{"request_put": {"key": _b64(k), "value": _b64(json.dumps(DOC))}}],
            }
        )

    async def cas(self, key: str) -> Any:
        await asyncio.to_thread(self._cas, key)

    async def list(self, prefix: str) -> int:
        return len(
            [json.loads(v) for v, _ in await asyncio.to_thread(self.client.get_prefix, "/c/" + prefix)]
        )

    async def watch(self, prefix: str, seen: Callable[[str], None]) -> None:
        loop = asyncio.get_running_loop()
        events, cancel = await asyncio.to_thread(self.client.watch_prefix, "/c/" + prefix)
        self._cancel = cancel

        def pump() -> None:
            for event in events:
                loop.call_soon_threadsafe(seen, event["kv"]["key"].decode()[3:])

        try:
            await asyncio.to_thread(pump)
        finally:
            cancel()

    async def close(self) -> None:
        if hasattr(self, "_cancel"):
            self._cancel()


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


async def measure(ops: Ops, n: int) -> dict[str, list[float]]:
    await ops.setup()
    keys = [f"k/{i:05d}" for i in range(n)]
    out: dict[str, list[float]] = {}
    out["put"] = await timed(n, lambda i: ops.put(keys[i]))
    out["get"] = await timed(n, lambda i: ops.get(keys[i]))
    out["CAS"] = await timed(n, lambda i: ops.cas(keys[i]))
    for i in range(1000):
        await ops.put(f"big/{i:05d}")
    assert await ops.list("big/") == 1000
    out["list 1,000"] = await timed(max(5, n // 20), lambda i: ops.list("big/"))
    # watch: the time from just before a put until the watcher sees that key
    arrived: dict[str, asyncio.Event] = {}
    watcher = asyncio.create_task(ops.watch("w/", lambda k: arrived[k].set() if k in arrived else None))
    await asyncio.sleep(0.3)  # the watch is created

    out["watch"] = []
    for i in range(max(20, n // 3)):
        key = f"w/{i:05d}"
        arrived[key] = asyncio.Event()
        t0 = time.perf_counter()
        await ops.put(key)
        await asyncio.wait_for(arrived[key].wait(), 10)
        out["watch"].append((time.perf_counter() - t0) * 1000)
    watcher.cancel()
    await ops.close()
    await asyncio.gather(watcher, return_exceptions=True)
    return out


def fmt(ms: float) -> str:
    return f"{ms * 1000:.0f} µs" if ms < 1 else f"{ms:.2f} ms"


BACKENDS = ("memory", "sqlite", "etcd", "aetcd", "etcd3aio", "etcd3gw")


def make_ops(name: str, endpoint: str, tmp: str) -> Ops:
    """The measured client ``name``; ImportError when its module is absent."""
    if name == "memory":
        from cnm.store.memory import MemoryStore

        return StoreOps("memory", MemoryStore())
    if name == "sqlite":
        sqlite = importlib.import_module("cnm.store.sqlite")
        return StoreOps("sqlite", sqlite.SqliteStore(str(Path(tmp) / "s.db")))
    if name == "etcd":
        from cnm.store.etcd import EtcdStore

        return StoreOps("etcd: EtcdStore", EtcdStore([endpoint], namespace="/bench/"))
    importlib.import_module(name)
    return {"aetcd": AetcdOps, "etcd3aio": Etcd3aioOps, "etcd3gw": Etcd3gwOps}[name](endpoint)


def measure_one(name: str, endpoint: str, n: int) -> None:
    """In a child process (aetcd and etcd3aio register the same protobuf names, so they
    cannot share one): measure ``name`` and print its figures as JSON."""
    with tempfile.TemporaryDirectory(prefix="cnm-bench-store-") as tmp:

        async def go() -> None:
            try:
                ops = make_ops(name, endpoint, tmp)  # on the loop: a grpc.aio channel belongs to one
            except ImportError as exc:
                print(json.dumps({"absent": str(exc)}))
                return
            print(json.dumps({"name": ops.name, "figures": await measure(ops, n)}))

        asyncio.run(go())


def run(n: int) -> None:
    cluster = None
    endpoint = ""
    names = list(BACKENDS)
    if available():
        cluster = EtcdCluster(1).__enter__()  # closed below; on a failed start, by __enter__
        endpoint = cluster.endpoints[0]
    else:
        print("etcd: /usr/bin/etcd missing (apt-get install etcd-server) -- etcd not measured")
        names = ["memory", "sqlite"]
    try:
        rows = []
        for name in names:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", name, "--endpoint", endpoint, "-n", str(n)],
                capture_output=True,
                text=True,
                timeout=600,
            )
            lines = proc.stdout.strip().splitlines()
            if proc.returncode != 0 or not lines:
                # one client failing must not hide the others' figures
                print(f"{name}: failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
                continue
            result = json.loads(lines[-1])
            if "absent" in result:
                print(f"{name}: not measured ({result['absent']})")
                continue
            rows.append((result["name"], result["figures"]))
        cols = ["put", "get", "CAS", "list 1,000", "watch"]
        print(f"\np50 / p90 per call, n={n} (list 1,000: n/20 calls; watch: n/3)")
        print(f"{'client':<20}" + "".join(f"{c:>21}" for c in cols))
        for label, figures in rows:
            cells = [f"{fmt(pct(figures[c], 50))} / {fmt(pct(figures[c], 90))}" for c in cols]
            print(f"{label:<20}" + "".join(f"{c:>21}" for c in cells))
    finally:
        if cluster is not None:
            cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=300, help="calls per measured operation (default 300)")
    parser.add_argument("--child", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure_one(args.child, args.endpoint, args.n)
    else:
        run(args.n)


if __name__ == "__main__":
    main()
