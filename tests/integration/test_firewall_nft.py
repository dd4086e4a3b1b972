"""NftablesFirewall against the real kernel, inside a throwaway net+mount+pid namespace.

Two scripts run as root under ``unshare`` (everything they make vanishes with them):
- STRUCTURE drives setup/add/remove/sync/teardown and checks ``nft -j list table ip cnm``
  (fixed chains and rules; a network is tagged set elements);
  it also prints the time of one add_network/remove_network with 1 and 200 other networks.
- BEHAVIOUR builds two bridges with a "container" netns on each, an internal and a
  masquerade-off network, and a "world" netns (203.0.113.1/24 <-> host 203.0.113.2/24,
  host default route via world), and checks who reaches whom, and with which source
  address, before (control) and after the rules are installed.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from oldrelease import RELEASE, extract
from throwaway import have, run_script

pytestmark = pytest.mark.root

COMMON = r"""
import asyncio, json, os, subprocess, sys, time
from ipaddress import IPv4Network

from cnm.errors import FirewallError
from cnm.firewall.api import BridgeRules
from cnm.firewall.nftables import NftablesFirewall


def sh(*argv, check=True, input=None):
    proc = subprocess.run(argv, capture_output=True, text=True, input=input)
    if check and proc.returncode:
        raise AssertionError(f"{argv} failed: {proc.stderr}")
    return proc


def oid(i):
    return f"{i:012x}" + "e" * 52


def net(i, subnet_override=None, **kw):
    subnet = IPv4Network(subnet_override or f"10.{100 + i // 250}.{i % 250}.0/24")
    return BridgeRules(owner=oid(i), bridge=f"br-t{i}", subnet=subnet, **kw)


def table():
    proc = sh("nft", "-j", "list", "table", "ip", "cnm", check=False)
    if proc.returncode:
        return None
    return json.loads(proc.stdout)["nftables"]


def chains(objs):
    return {o["chain"]["name"]: o["chain"] for o in objs if "chain" in o}


def rules(objs, chain):
    return [o["rule"] for o in objs if "rule" in o and o["rule"]["chain"] == chain]


def elements(objs, set_name):
    # {key: owner tag} of a set's elements; a key is its text ("br-a", "br-a . br-a",
    # "br-a . 10.0.0.0/24")
    out = {}
    for o in objs:
        if "set" in o and o["set"]["name"] == set_name:
            for item in o["set"].get("elem", []):
                elem = item["elem"] if isinstance(item, dict) and "elem" in item else {"val": item}
                val = elem["val"]
                parts = val["concat"] if isinstance(val, dict) and "concat" in val else [val]
                text = " . ".join(
                    f"{p['prefix']['addr']}/{p['prefix']['len']}" if isinstance(p, dict) else str(p) for p in parts
                )
                out[text] = elem.get("comment")
    return out


def owners(objs):
    # {set: {key: owner}} of every network set
    return {s: elements(objs, s) for s in ("bridges", "same-bridge", "internal", "icc", "masquerading", "subnets")}
"""

STRUCTURE = r"""
FIXED = {"user", "forward", "postrouting", "prerouting", "output", "ports", "raw-prerouting"}


async def main():
    result = {}
    # someone else's table: cnm must never touch it
    sh("nft", "-f", "-", input="add table ip foreign\nadd chain ip foreign c { type filter hook forward priority 10 ; policy accept ; }\nadd rule ip foreign c counter\n")
    foreign_before = sh("nft", "list", "table", "ip", "foreign").stdout

    fw = NftablesFirewall()
    assert await fw.healthy() is False
    await fw.setup()
    await fw.setup()  # idempotent: no duplicated dispatch rules
    assert await fw.healthy() is True
    assert open("/proc/sys/net/ipv4/ip_forward").read().strip() == "1"
    objs = table()
    ch = chains(objs)
    assert set(ch) == FIXED, ch
    assert ch["forward"]["hook"] == "forward" and ch["forward"]["policy"] == "accept" and ch["forward"]["prio"] == 0
    assert ch["postrouting"]["type"] == "nat" and ch["postrouting"]["prio"] == 100
    assert ch["prerouting"]["type"] == "nat" and ch["prerouting"]["prio"] == -100
    assert ch["output"]["hook"] == "output" and ch["output"]["prio"] == -100
    assert all(c.get("policy", "accept") == "accept" for c in ch.values())
    assert len(rules(objs, "forward")) == 6 and len(rules(objs, "postrouting")) == 3
    assert ch["raw-prerouting"]["hook"] == "prerouting" and ch["raw-prerouting"]["prio"] == -300
    assert "jump" in rules(objs, "forward")[0]["expr"][0] and rules(objs, "forward")[0]["expr"][0]["jump"]["target"] == "user"

    # the user's rule in the user chain survives setup and sync
    sh("nft", "add", "rule", "ip", "cnm", "user", "ip", "saddr", "192.0.2.7", "accept", "comment", "mine")

    # -- add: tagged elements only, no chain, no rule -------------------------------------------
    rules_before = [o for o in objs if "rule" in o]
    await fw.add_network(net(1))
    await fw.add_network(net(1))  # idempotent
    await fw.add_network(net(2, internal=True))
    await fw.add_network(net(3, masquerade=False, icc=False))
    objs = table()
    assert set(chains(objs)) == FIXED and len([o for o in objs if "rule" in o]) == len(rules_before) + 1
    tag = {i: f"cnm:{oid(i)}" for i in range(1, 10)}
    assert owners(objs) == {
        "bridges": {"br-t1": tag[1], "br-t2": tag[2], "br-t3": tag[3]},
        "same-bridge": {f"br-t{i} . br-t{i}": tag[i] for i in (1, 2, 3)},
        "internal": {"br-t2": tag[2]},
        "icc": {"br-t1": tag[1], "br-t2": tag[2]},
        "masquerading": {"br-t1": tag[1]},
        "subnets": {"br-t1 . 10.100.1.0/24": tag[1], "br-t3 . 10.100.3.0/24": tag[3]},
    }, owners(objs)
    # same bridge claimed by another network: refused, nothing changed
    try:
        await fw.add_network(BridgeRules(owner=oid(9), bridge="br-t1", subnet=IPv4Network("10.250.0.0/24")))
        raise AssertionError("second network on br-t1 accepted")
    except FirewallError:
        pass
    assert table() == objs

    # -- replace on a renamed bridge: old elements gone ----------------------------------------
    await fw.add_network(BridgeRules(owner=oid(1), bridge="br-renamed", subnet=IPv4Network("10.100.1.0/24")))
    objs = table()
    assert "br-t1" not in elements(objs, "bridges") and "br-renamed . 10.100.1.0/24" in elements(objs, "subnets")
    assert not [k for keys in owners(objs).values() for k in keys if "br-t1" in k]

    # -- remove: idempotent, only that network --------------------------------------------------
    await fw.remove_network(oid(1))
    await fw.remove_network(oid(1))
    objs = table()
    assert set(elements(objs, "bridges")) == {"br-t2", "br-t3"}
    assert not [k for keys in owners(objs).values() for k, t in keys.items() if t == tag[1]]
    # a fresh instance (cnmd restarted, no sync yet) still removes by reading the sets
    await NftablesFirewall().remove_network(oid(2))
    assert {s: set(v.values()) for s, v in owners(table()).items() if v} == {
        s: {tag[3]} for s in ("bridges", "same-bridge", "subnets")
    }
    # a fresh instance adds over an element of the same bridge that the kernel refuses to
    # overlap (that bridge on a subnet starting where the new one does): read and replaced
    await NftablesFirewall().add_network(net(3, subnet_override="10.100.3.0/25"))
    assert set(elements(table(), "subnets")) == {"br-t3 . 10.100.3.0/25"}

    # -- sync: exactly the listed networks, user chain intact ---------------------------------
    await fw.add_network(net(4))
    sh("nft", "add", "chain", "ip", "cnm", "mine-too")  # a user's chain in our table: left alone
    await fw.sync([net(4), net(5, icc=False)])
    objs = table()
    assert set(chains(objs)) == FIXED | {"mine-too"}
    assert set(elements(objs, "bridges")) == {"br-t4", "br-t5"} and set(elements(objs, "icc")) == {"br-t4"}
    assert [r.get("comment") for r in rules(objs, "user")] == ["mine"]
    assert len(rules(objs, "forward")) == 6
    # recovery after an outside flush of the forward rules
    sh("nft", "flush", "chain", "ip", "cnm", "forward")
    assert await fw.healthy() is False
    await fw.sync([net(4)])
    assert await fw.healthy() is True
    assert set(elements(table(), "bridges")) == {"br-t4"}
    # recovery after the whole table was deleted
    sh("nft", "delete", "table", "ip", "cnm")
    await fw.sync([net(4)])
    assert await fw.healthy() is True and set(elements(table(), "bridges")) == {"br-t4"}

    # -- timing: one add/remove with 1 and with 200 other networks present -------------------------
    await fw.sync([net(1)])
    timing = {}
    for others in (1, 200):
        await fw.sync([net(i) for i in range(1, others + 1)])
        samples_add, samples_rm = [], []
        for k in range(50):
            probe = net(900)
            t0 = time.perf_counter()
            await fw.add_network(probe)
            t1 = time.perf_counter()
            await fw.remove_network(probe.owner)
            t2 = time.perf_counter()
            samples_add.append((t1 - t0) * 1e3)
            samples_rm.append((t2 - t1) * 1e3)
        samples_add.sort(); samples_rm.sort()
        timing[others] = {"add_p50_ms": round(samples_add[25], 3), "remove_p50_ms": round(samples_rm[25], 3),
                          "add_max_ms": round(samples_add[-1], 3), "remove_max_ms": round(samples_rm[-1], 3)}
    t0 = time.perf_counter()
    await fw.sync([net(i) for i in range(1, 201)])
    timing["sync_200_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
    result["timing"] = timing

    # -- teardown: cnm's table gone, the foreign table untouched; idempotent ----------------
    await fw.teardown()
    await fw.teardown()
    assert table() is None
    assert await fw.healthy() is False
    await fw.remove_network(oid(4))  # nothing left: still success
    assert sh("nft", "list", "table", "ip", "foreign").stdout == foreign_before
    result["ok"] = True
    print(json.dumps(result))

asyncio.run(main())
"""

BEHAVIOUR = r'''
PY = sys.executable
SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7777)); s.listen(64)
print("ready", flush=True)
while True:
    c, (addr, _) = s.accept()
    c.sendall(addr.encode()); c.close()
"""
CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], 7777), timeout=1.0)
    print(c.recv(64).decode())
except OSError as e:
    print("FAIL")
"""
servers = []


def ns(name, *argv, check=True):
    return sh("ip", "netns", "exec", name, *argv, check=check)


def serve(name):
    p = subprocess.Popen(["ip", "netns", "exec", name, PY, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    servers.append(p)


def probe(src, dst_ip):
    """What the server at dst_ip saw as our source address, or FAIL."""
    argv = (PY, "-c", CLIENT, dst_ip)
    proc = sh(*argv) if src == "host" else ns(src, *argv)
    return proc.stdout.strip()


def container(name, bridge, ip, gw):
    sh("ip", "netns", "add", name)
    sh("ip", "link", "add", f"v-{name}", "type", "veth", "peer", "name", "eth0", "netns", name)
    sh("ip", "link", "set", f"v-{name}", "master", bridge, "up")
    ns(name, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
    ns(name, "ip", "link", "set", "eth0", "up")
    ns(name, "ip", "link", "set", "lo", "up")
    ns(name, "ip", "route", "add", "default", "via", gw)
    serve(name)


def routed_container(name, bridge, ip, gw):
    """A container whose only on-link address is its own (/32): everything it sends, to
    its bridge neighbours too, is routed by the host (in and out of the same bridge)."""
    sh("ip", "netns", "add", name)
    sh("ip", "link", "add", f"v-{name}", "type", "veth", "peer", "name", "eth0", "netns", name)
    sh("ip", "link", "set", f"v-{name}", "master", bridge, "up")
    ns(name, "sysctl", "-qw", "net.ipv4.conf.all.accept_redirects=0")
    ns(name, "ip", "addr", "add", f"{ip}/32", "dev", "eth0")
    ns(name, "ip", "link", "set", "eth0", "up")
    ns(name, "ip", "link", "set", "lo", "up")
    ns(name, "ip", "route", "add", gw, "dev", "eth0")
    ns(name, "ip", "route", "add", "default", "via", gw)


NETS = {  # name: (index, bridge, subnet prefix, rules kwargs)
    "ca": (1, "br-a", "10.201.1", {}),
    "cb": (2, "br-b", "10.201.2", {}),
    "ci": (3, "br-i", "10.201.3", {"internal": True}),
    "cm": (4, "br-m", "10.201.4", {"masquerade": False}),
    "cn": (5, "br-n", "10.201.5", {"icc": False}),
}
ROUTED = {"ca2": "ca", "cn2": "cn"}  # routed container -> the container on its bridge


def rules_for(name):
    i, bridge, prefix, kw = NETS[name]
    return BridgeRules(owner=oid(i), bridge=bridge, subnet=IPv4Network(f"{prefix}.0/24"), **kw)


def matrix():
    pairs = [("ca", "203.0.113.1"), ("cb", "203.0.113.1"), ("ci", "203.0.113.1"), ("cm", "203.0.113.1"),
             ("ca", "10.201.2.2"), ("cb", "10.201.1.2"), ("ci", "10.201.1.2"), ("ca", "10.201.3.2"),
             ("host", "10.201.1.2"), ("host", "10.201.2.2"), ("host", "10.201.3.2"), ("host", "10.201.4.2"),
             ("world", "10.201.1.2"), ("world", "10.201.4.2"), ("cn", "203.0.113.1"),
             # routed from a bridge back into it: icc decides, and it is not masqueraded
             ("ca2", "10.201.1.2"), ("cn2", "10.201.5.2")]
    return {f"{s}->{d}": probe(s, d) for s, d in pairs}


def legacy_renderer(src):
    """The last release's render_nft (its sources at ``src``), beside today's."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("legacy_render_nft", f"{src}/cnm/firewall/render_nft.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


async def main():
    # world: 203.0.113.1/24, host 203.0.113.2/24, host default route via world; world routes
    # the container subnets back to the host (so only the firewall decides reachability)
    sh("ip", "netns", "add", "world")
    sh("ip", "link", "add", "to-world", "type", "veth", "peer", "name", "eth0", "netns", "world")
    sh("ip", "addr", "add", "203.0.113.2/24", "dev", "to-world")
    sh("ip", "link", "set", "to-world", "up")
    ns("world", "ip", "addr", "add", "203.0.113.1/24", "dev", "eth0")
    ns("world", "ip", "link", "set", "eth0", "up")
    ns("world", "ip", "link", "set", "lo", "up")
    ns("world", "ip", "route", "add", "10.201.0.0/16", "via", "203.0.113.2")
    sh("ip", "route", "add", "default", "via", "203.0.113.1")
    serve("world")
    for name, (_, bridge, prefix, _) in NETS.items():
        sh("ip", "link", "add", bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{prefix}.1/24", "dev", bridge)
        sh("ip", "link", "set", bridge, "up")
        sh("sysctl", "-qw", f"net.ipv4.conf.{bridge}.send_redirects=0")
        container(name, bridge, f"{prefix}.2", f"{prefix}.1")
    sh("sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0")
    for name, neighbour in ROUTED.items():
        _, bridge, prefix, _ = NETS[neighbour]
        routed_container(name, bridge, f"{prefix}.3", f"{prefix}.1")

    fw = NftablesFirewall()
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("1")  # control: plain routing, no rules
    before = matrix()
    await fw.setup()
    for name in NETS:
        await fw.add_network(rules_for(name))
    after = matrix()
    # the user chain comes first and can override cnm's isolation
    sh("nft", "add", "rule", "ip", "cnm", "user", "iifname", "br-a", "oifname", "br-b", "accept")
    user_override = probe("ca", "10.201.2.2")
    user_override_back = probe("cb", "10.201.1.2")  # not overridden in that direction
    sh("nft", "flush", "chain", "ip", "cnm", "user")
    await fw.remove_network(oid(2))
    after_remove = {"ca->cb": probe("ca", "10.201.2.2")}
    await fw.teardown()
    after_teardown = {"ca->world": probe("ca", "203.0.113.1")}

    # the last release's layout (per-network chains), then today's code restarting over
    # it as cnmd does (setup, the networks, sync): the same verdicts at every step
    legacy = legacy_renderer(sys.argv[1])
    script = legacy.render_setup() + "".join(legacy.render_add_network(rules_for(n)) for n in NETS)
    sh("nft", "-f", "-", input=script)
    legacy_matrix = matrix()
    fresh = NftablesFirewall()
    await fresh.setup()
    for name in NETS:
        await fresh.add_network(rules_for(name))
    restoring = matrix()  # before sync: the old rules still serve
    await fresh.sync([rules_for(name) for name in NETS])
    migrated = matrix()
    objs = table()
    left = sorted([o["chain"]["name"] for o in objs if "chain" in o] + [o["map"]["name"] for o in objs if "map" in o])
    print(json.dumps({"before": before, "after": after, "user_override": user_override,
                      "user_override_back": user_override_back, "after_remove": after_remove,
                      "after_teardown": after_teardown, "legacy": legacy_matrix, "restoring": restoring,
                      "migrated": migrated, "migrated_left": left, "migrated_healthy": await fresh.healthy()}))

try:
    asyncio.run(main())
finally:
    for p in servers:
        p.kill()
'''


def _run(tmp_path, body: str, *args: str) -> dict:
    proc = run_script(tmp_path, textwrap.dedent(COMMON) + textwrap.dedent(body), *args, name="fw_script.py")
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not have("nft"), reason="needs root, unshare and nft")
def test_nftables_firewall_structure_in_throwaway_namespace(tmp_path):
    result = _run(tmp_path, STRUCTURE)
    assert result["ok"]
    t = result["timing"]
    print(
        f"\nnft add_network p50 {t['1']['add_p50_ms']} ms / remove p50 {t['1']['remove_p50_ms']} ms with 1 other network; "
        f"add p50 {t['200']['add_p50_ms']} ms / remove p50 {t['200']['remove_p50_ms']} ms with 200; "
        f"sync of 200 networks {t['sync_200_ms']} ms"
    )


@pytest.mark.skipif(not have("nft"), reason="needs root, unshare and nft")
def test_nftables_firewall_behaviour_in_throwaway_namespace(tmp_path):
    release = extract(tmp_path / RELEASE)
    r = _run(tmp_path, BEHAVIOUR, str(release.src))
    before, after = r["before"], r["after"]
    # control: without rules everything routes and nothing is translated, so each check
    # below can fail
    assert before["ca->203.0.113.1"] == "10.201.1.2"
    assert before["ca->10.201.2.2"] == "10.201.1.2"
    assert before["ci->203.0.113.1"] == "10.201.3.2"
    assert before["world->10.201.1.2"] == "203.0.113.1"

    # egress is masqueraded to the host's address
    assert after["ca->203.0.113.1"] == "203.0.113.2"
    assert after["cb->203.0.113.1"] == "203.0.113.2"
    # masquerade off: the world sees the container's own address
    assert after["cm->203.0.113.1"] == "10.201.4.2"
    # internal: nothing out, nothing in
    assert after["ci->203.0.113.1"] == "FAIL"
    assert after["ci->10.201.1.2"] == "FAIL"
    assert after["ca->10.201.3.2"] == "FAIL"
    # networks are isolated from each other, in both directions
    assert after["ca->10.201.2.2"] == "FAIL"
    assert after["cb->10.201.1.2"] == "FAIL"
    # the world cannot route to containers
    assert after["world->10.201.1.2"] == "FAIL"
    assert after["world->10.201.4.2"] == "FAIL"
    # the host reaches every container (OUTPUT path), from its bridge address
    assert after["host->10.201.1.2"] == "10.201.1.1"
    assert after["host->10.201.2.2"] == "10.201.2.1"
    assert after["host->10.201.3.2"] == "10.201.3.1"
    assert after["host->10.201.4.2"] == "10.201.4.1"
    # the user chain is evaluated first: an accept there overrides isolation (one way);
    # like Docker's "-s <subnet> ! -o <br> MASQUERADE", leaving br-a for br-b is masqueraded
    assert r["user_override"] == "10.201.2.1"
    assert r["user_override_back"] == "FAIL"
    # removing network B's rules: traffic into br-b is no longer cnm's business
    assert r["after_remove"]["ca->cb"] == "10.201.2.1"
    # teardown removes the NAT as well
    assert r["after_teardown"]["ca->world"] == "10.201.1.2"
    # icc: traffic routed from a bridge back into it passes (not masqueraded) with icc
    # on, and is dropped with icc off (bridged traffic is the bridge driver's business)
    assert before["ca2->10.201.1.2"] == "10.201.1.3" and before["cn2->10.201.5.2"] == "10.201.5.3"
    assert after["ca2->10.201.1.2"] == "10.201.1.3"
    assert after["cn2->10.201.5.2"] == "FAIL"
    assert after["cn->203.0.113.1"] == "203.0.113.2"
    # the same verdicts as the last release's rules, before, while and after a restart of
    # today's code converges its table to the sets (none of its maps or chains left)
    assert r["legacy"] == after
    assert r["restoring"] == after
    assert r["migrated"] == after
    assert r["migrated_left"] == sorted(
        ["user", "forward", "postrouting", "prerouting", "output", "ports", "raw-prerouting",
         "ports-ip", "ports-ip-range", "ports-any", "ports-any-range"]
    )  # fmt: skip
    assert r["migrated_healthy"] is True
