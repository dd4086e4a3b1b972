"""NftBridgeGuard against the real kernel, inside a throwaway net+mount+pid namespace: setup,
add/replace/remove, sync, remove_network, teardown, health and self-healing, removal by tag
after a restart (a new instance), and clashes refused.  It also prints the time of one
add_port/remove_port with 1 and 1,000 other guarded ports (timings are printed, never
asserted)."""

from __future__ import annotations

import pytest
from throwaway import check_ok, have, run_script

pytestmark = pytest.mark.root

SCRIPT = r"""
import asyncio, json, subprocess, time
from ipaddress import IPv4Address

from cnm.errors import Conflict, InvalidArgument
from cnm.firewall.api import PortGuard
from cnm.firewall.bridge_guard import NftBridgeGuard


def oid(i):
    return f"{i:012x}" + "e" * 52


def guard(i, net=1, addresses=None):
    addresses = addresses or (f"10.{i // 250}.{i % 250}.2",)
    return PortGuard(owner=oid(i), network=oid(100000 + net), port=f"veth{i:07x}",
                     mac=f"02:42:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                     addresses=tuple(IPv4Address(a) for a in addresses))


def table():
    proc = subprocess.run(["nft", "-j", "list", "table", "bridge", "cnm"], capture_output=True, text=True)
    if proc.returncode:
        return None
    return json.loads(proc.stdout)["nftables"]


def elements(objs):
    out = {"ports": {}, "addrs": {}}
    for o in objs or []:
        s = o.get("set")
        if s and s["name"] in out:
            for item in s.get("elem", []):
                val = item["elem"]["val"]
                key = val if isinstance(val, str) else tuple(val["concat"])
                out[s["name"]][key] = item["elem"].get("comment")
    return out


def expect(objs, *guards):
    got = elements(objs)
    want_ports = {g.port: "cnm:" + g.owner for g in guards}
    want_addrs = {(g.port, g.mac, str(a)): "cnm:" + g.owner for g in guards for a in g.addresses}
    assert got["ports"] == want_ports, (got["ports"], want_ports)
    assert got["addrs"] == want_addrs, (got["addrs"], want_addrs)


async def main():
    fw = NftBridgeGuard()
    await fw.setup()
    await fw.setup()  # idempotent: no duplicated rules
    objs = table()
    rules = [o["rule"] for o in objs if "rule" in o]
    assert [r["chain"] for r in rules] == ["prerouting", *["port-guard"] * 4, *["port-guard6"] * 7], rules
    assert await fw.healthy()

    a, b = guard(1), guard(2, net=2, addresses=("10.9.0.2", "10.9.1.2"))
    await fw.add_port(a)
    await fw.add_port(b)
    expect(table(), a, b)
    a2 = guard(1, addresses=("10.0.1.7",))
    await fw.add_port(a2)  # replace: the old address goes
    expect(table(), a2, b)
    try:
        await fw.add_port(PortGuard(oid(3), oid(100001), a.port, "02:42:00:00:00:03", ()))
        raise AssertionError("a port held by another endpoint was accepted")
    except Conflict:
        pass
    try:
        await fw.add_port(guard(4, addresses=("0.0.0.0",)))
        raise AssertionError("0.0.0.0 was accepted")
    except InvalidArgument:
        pass
    expect(table(), a2, b)

    await fw.remove_port(a2.owner)
    await fw.remove_port(a2.owner)  # idempotent
    expect(table(), b)

    # a new daemon (no memory, no sync yet) removes by the tag on the elements
    await fw.add_port(a)
    fresh = NftBridgeGuard()
    await fresh.remove_port(a.owner)
    expect(table(), b)

    # sync: exactly these
    c = guard(5, net=2)
    await fw.sync([a, c])
    expect(table(), a, c)
    await fw.remove_network(oid(100002))
    expect(table(), a)

    # flushed from outside: unhealthy, heal puts back what it remembers
    subprocess.run(["nft", "flush", "ruleset"], check=True)
    assert not await fw.healthy()
    assert await fw.heal() is True
    expect(table(), a)
    assert await fw.heal() is False
    # table gone and an add arrives before the heal: everything comes back with it
    subprocess.run(["nft", "delete", "table", "bridge", "cnm"], check=True)
    await fw.add_port(b)
    expect(table(), a, b)
    assert await fw.healthy()
    # a fixed rule deleted: unhealthy
    handle = [o["rule"]["handle"] for o in table() if "rule" in o and o["rule"]["chain"] == "port-guard"][-1]
    subprocess.run(["nft", "delete", "rule", "bridge", "cnm", "port-guard", "handle", str(handle)], check=True)
    assert not await fw.healthy()
    assert await fw.heal() is True and await fw.healthy()

    # the cost of one port does not depend on how many others are guarded
    timings = {}
    for others in (1, 1000):
        await fw.sync([guard(10000 + i) for i in range(others)])
        t0 = time.perf_counter()
        for i in range(20):
            await fw.add_port(guard(i + 20))
        t1 = time.perf_counter()
        for i in range(20):
            await fw.remove_port(oid(i + 20))
        t2 = time.perf_counter()
        timings[others] = ((t1 - t0) / 20 * 1e3, (t2 - t1) / 20 * 1e3)
        assert len(elements(table())["ports"]) == others
    for others, (add, rm) in timings.items():
        print(f"with {others} other ports: add_port {add:.2f} ms, remove_port {rm:.2f} ms")

    await fw.teardown()
    await fw.teardown()
    assert table() is None
    await fw.remove_port(a.owner)  # no table: success
    print("OK")


asyncio.run(main())
"""


@pytest.mark.skipif(not have("nft"), reason="needs root, unshare and nft")
def test_bridge_guard_against_the_kernel(tmp_path):
    check_ok(run_script(tmp_path, SCRIPT, name="bridge_guard.py"))


SCOPED = (
    SCRIPT[: SCRIPT.index("async def main")]
    + r"""
async def main():
    # the last run left the bridge driver's a and b and the overlay's o; b is gone since
    old = NftBridgeGuard()
    await old.setup()
    a, b, o = guard(1), guard(2), guard(3, net=3)
    await old.sync([a, b, o])
    fw = NftBridgeGuard(scopes=("bridge", "overlay"))  # the new daemon
    await fw.setup()
    expect(table(), a, b, o)  # setup keeps the elements
    await fw.sync([a], "bridge")
    expect(table(), a, b, o)  # nothing dropped until the overlay said which ports are its own
    await fw.sync([o], "overlay")
    expect(table(), a, o)  # their union, the stale one gone
    # after that, a scoped sync replaces only its own ports; a port added since is kept
    late = guard(4, net=3)
    await fw.add_port(late)
    await fw.sync([], "bridge")
    expect(table(), o, late)
    await fw.sync([a], "bridge")
    await fw.sync([late], "overlay")
    expect(table(), a, late)
    # a bad guard changes nothing
    try:
        await fw.sync([guard(5, addresses=("0.0.0.0",))], "bridge")
        raise AssertionError("0.0.0.0 was accepted")
    except InvalidArgument:
        pass
    expect(table(), a, late)
    await fw.teardown()
    print("OK")


asyncio.run(main())
"""
)


@pytest.mark.skipif(not have("nft"), reason="needs root, unshare and nft")
def test_scoped_syncs_never_drop_another_scopes_ports(tmp_path):
    check_ok(run_script(tmp_path, SCOPED, name="bridge_guard_scoped.py"))
