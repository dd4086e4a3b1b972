"""A host's first endpoint on an overlay network must be able to answer the moment any other
host can reach it: its host programs the other hosts' endpoints before it records the new
endpoint in the cluster store.  Recorded first, another host programs the new endpoint and
sends to it at once; the new container's ARP request for the sender then finds no
neighbour entry for the VXLAN device's proxy to answer with, and the kernel asks again
only a second later (bench/overlay.py's connect part measured that second)."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import pytest
from overlay_hosts import two_hosts, until

from cnm.kernel.api import FdbEntry, NeighEntry
from cnm.model.network import NetworkSpec
from cnm.store.api import Put


@pytest.fixture
async def hosts(tmp_path):
    async with two_hosts(tmp_path) as pair:
        yield pair


async def test_the_first_join_programs_the_remote_endpoints_before_recording_its_own(hosts):
    a, b = hosts
    assert a.ctl is not None and b.ctl is not None
    net = await a.ctl.create_network(NetworkSpec(name="ov", driver="overlay", attachable=True))
    await until(lambda: net.id in b.ctl._state.networks)
    remote = await b.run("db", "ov")
    assert remote.address is not None
    await until(lambda: any(p.id == remote.id for p in a.driver.peers()))

    # what h1's kernel had when h1's new endpoint became visible to the other hosts
    seen: dict[str, tuple[set[FdbEntry], set[NeighEntry]]] = {}
    commit = a.cluster_store.commit

    async def watching_commit(ops: Any, *args: Any, **kwargs: Any) -> int:
        for op in ops:
            if isinstance(op, Put) and op.key.startswith("endpoint/") and op.doc.get("node") == "h1":
                seen[op.key] = (a.fdb(net.id), a.neigh(net.id))
        return await commit(ops, *args, **kwargs)

    a.cluster_store.commit = watching_commit  # type: ignore[method-assign]
    try:
        web = await a.run("web", "ov")
    finally:
        a.cluster_store.commit = commit  # type: ignore[method-assign]
    assert seen[f"endpoint/{web.id}"] == (
        {FdbEntry(remote.mac, IPv4Address(b.address))},
        {NeighEntry(remote.address.ip, remote.mac)},
    )
