"""Several daemons' IPAM on one real etcd (Debian's etcd-server, tests/etcd_cluster.py):
two DefaultIpam, each with its own etcd client, allocating 1,000 addresses each from one
pool at once, and creating overlapping pools at once; then the same allocation with the
daemons as two processes.  The checks are tests/ipam_sharing.py's, which the unit tier
runs on a MemoryStore.  No root needed: the cluster listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from etcd_cluster import EtcdCluster
from ipam_sharing import (
    SHARED_NETWORK,
    SHARED_SUBNET,
    StoreOpener,
    assert_disjoint,
    assert_store_holds,
    check_overlapping_pools,
    check_parallel_allocation,
    run_daemon,
)

from cnm.store.api import Store
from cnm.store.etcd import EtcdStore

NEEDS_ROOT = False
TESTS = Path(__file__).resolve().parent.parent


def opener(endpoints: list[str], namespace: str) -> StoreOpener:
    """A new etcd client per daemon, all on one namespace (one shared store)."""

    @contextlib.asynccontextmanager
    async def open_store() -> AsyncIterator[Store]:
        store = EtcdStore(endpoints, namespace=namespace)
        try:
            yield store
        finally:
            await store.close()

    return open_store


@pytest.fixture(scope="module")
def cluster() -> Iterator[EtcdCluster]:
    with EtcdCluster(1) as cluster:
        yield cluster


def fresh_namespace() -> str:
    return f"/cnm-test/{uuid.uuid4().hex}/"


async def test_two_daemons_allocate_1000_each_from_one_pool(cluster, capsys):
    figures = await check_parallel_allocation(opener(cluster.endpoints, fresh_namespace()), count=1000)
    with capsys.disabled():
        print(
            f"\nipam: 2 daemons x 1000 allocations on one etcd in {figures.seconds:.2f} s "
            f"({figures.allocations / figures.seconds:.0f}/s), {figures.conflicts} lost compare-and-swaps"
        )


async def test_overlapping_pools_have_exactly_one_winner(cluster):
    await check_overlapping_pools(opener(cluster.endpoints, fresh_namespace()), rounds=5)


def test_two_processes_allocate_1000_each_from_one_pool(cluster):
    """Two processes, each a daemon's IPAM with its own client: no address held twice,
    and the store holds exactly what they hold."""
    namespace = fresh_namespace()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    endpoints = json.dumps(list(cluster.endpoints))
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, endpoints, namespace, f"p{i}"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    try:
        outputs = [proc.communicate(timeout=240)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [proc.returncode for proc in procs] == [0, 0]
    holdings = [{IPv4Address(a): o for a, o in json.loads(out).items()} for out in outputs]
    assert_disjoint(holdings, SHARED_SUBNET)

    async def stored() -> None:
        async with opener(cluster.endpoints, namespace)() as store:
            await assert_store_holds(store, SHARED_NETWORK, {**holdings[0], **holdings[1]})

    asyncio.run(stored())


if __name__ == "__main__":  # one daemon process of the test above
    endpoints, namespace, tag = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    held = asyncio.run(run_daemon(opener(endpoints, namespace), 1000, tag, seed=int(tag[1:])))
    print(json.dumps(held))
