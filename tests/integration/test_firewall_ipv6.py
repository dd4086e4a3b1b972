"""IPv6 networks and published ports against the real kernel, for every firewall backend
(nftables, iptables-nft, iptables-legacy), inside a throwaway net+mount+pid namespace.

The script builds four dual-stack bridges with a "container" netns on each (two on br-a):
a masqueraded network, a second one, a routed one (``gateway_mode_ipv6=routed``) and an
internal one; a "world" netns (2001:db8:203::1/64 <-> host 2001:db8:203::2/64, the host's
v6 default route via the world, the world's route to fd00::/8 via the host) and a second
host address (2001:db8:198::1 on lo).  IPv6 forwarding is turned on in the namespace (the
bridge driver's job in cnmd).  Each container runs a server answering "<peer address>
<local port>" on TCP over IPv6, so a probe tells who answered and which source it saw.
Everything vanishes with the namespace.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from throwaway import have, run_script

pytestmark = pytest.mark.root

BACKENDS = ["nftables", "iptables-nft", "iptables-legacy"]

SCRIPT = r'''
import asyncio, json, subprocess, sys, time
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from cnm.firewall.api import BridgeRules, PortRule
from cnm.firewall.iptables import IptablesFirewall
from cnm.firewall.nftables import NftablesFirewall

BACKEND = sys.argv[1]
PY = sys.executable
procs = []

SERVER = """
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in [int(p) for p in sys.argv[1].split(",")]:
    s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port)); s.listen(64); sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        c, peer = key.fileobj.accept()
        c.sendall(f"{peer[0]} {c.getsockname()[1]}".encode()); c.close()
"""
CLIENT = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    c = socket.create_connection((host, port), timeout=1.0)
    print(c.recv(80).decode())
except OSError:
    print("FAIL")
"""

# one ICMPv6 echo request (the kernel fills in the checksum of a raw ICMPv6 socket)
PING = """
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6); s.settimeout(0.3)
s.sendto(bytes((128, 0, 0, 0, 0x12, 0x34, 0, 1)) + b"cnm", (sys.argv[1], 0))
end = time.time() + 1.0
while time.time() < end:
    try:
        data, peer = s.recvfrom(200)
    except socket.timeout:
        continue
    if data[0] == 129 and data[4:6] == bytes((0x12, 0x34)):
        print("PONG"); sys.exit()
print("NO ANSWER")
"""


def sh(*argv, check=True):
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(f"{argv} failed: {proc.stderr}")
    return proc


def ns(name, *argv, check=True):
    return sh("ip", "netns", "exec", name, *argv, check=check)


def spawn(argv):
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    procs.append(p)


def probe(src, host, port):
    argv = (PY, "-c", CLIENT, host, str(port))
    return (sh(*argv) if src == "host" else ns(src, *argv)).stdout.strip()


def ping(src, host):
    return ns(src, PY, "-c", PING, host).stdout.strip() == "PONG"


def make(proxy=False):
    if BACKEND == "nftables":
        return NftablesFirewall(userland_proxy=proxy)
    return IptablesFirewall(userland_proxy=proxy, iptables=BACKEND)


def dump():
    """Everything the backend's kernel API shows, comparable over time: iptables-save's
    "# Generated ... on <time>" lines and chain counters are dropped."""
    if BACKEND == "nftables":
        return sh("nft", "list", "ruleset").stdout
    text = sh(BACKEND.replace("iptables", "ip6tables") + "-save").stdout + sh(BACKEND + "-save").stdout
    lines = (line.split(" [")[0] if line.startswith(":") else line for line in text.splitlines())
    return "\n".join(line for line in lines if not line.startswith("#"))


def oid(i):
    return f"{i:012x}" + "e" * 52


def eid(i):
    return f"{i:012x}" + "f" * 52


# bridge -> (index, v4 prefix, v6 prefix, routed, internal)
BRIDGES = {
    "br-a": (1, "10.201.1", "fd00:a", False, False),
    "br-b": (2, "10.201.2", "fd00:b", False, False),
    "br-r": (3, "10.201.3", "fd00:c", True, False),
    "br-i": (4, "10.201.4", "fd00:d", False, True),
}
CONTAINERS = {"ca": ("br-a", 2), "ca2": ("br-a", 3), "cb": ("br-b", 2), "cr": ("br-r", 2), "ci": ("br-i", 2)}


def networks():
    return [
        BridgeRules(owner=oid(i), bridge=br, subnet=IPv4Network(f"{p4}.0/24"), internal=internal,
                    subnet6=IPv6Network(f"{p6}::/64"), gateway6=IPv6Address(f"{p6}::1"), routed6=routed)
        for br, (i, p4, p6, routed, internal) in BRIDGES.items()
    ]


def v6(name):
    br, host = CONTAINERS[name]
    return f"{BRIDGES[br][2]}::{host}"


def port6(owner, host_port, container_port, name="ca", host_ip=None):
    br = CONTAINERS[name][0]
    return PortRule(owner=owner, network=oid(BRIDGES[br][0]), bridge=br, protocol="tcp",
                    host_ip=IPv6Address(host_ip) if host_ip else None, host_port=host_port,
                    host_port_end=host_port, container_ip=IPv6Address(v6(name)), container_port=container_port)


A, R = eid(1), eid(2)
PORTS_A = [port6(A, 8080, 7777), port6(A, 9001, 7777, host_ip="2001:db8:198::1")]
PORTS_R = [port6(R, 8090, 7777, name="cr")]


def reachability():
    return {
        "ca->world": probe("ca", "2001:db8:203::1", 7777),
        "ca->cb": probe("ca", v6("cb"), 7777),
        "world->ca": probe("world", v6("ca"), 7777),
        "ci->world": probe("ci", "2001:db8:203::1", 7777),
        "cr->world": probe("cr", "2001:db8:203::1", 7777),
        "world->cr:7777": probe("world", v6("cr"), 7777),
        "world->cr:7778": probe("world", v6("cr"), 7778),
        "world ping cr": ping("world", v6("cr")),
        "world ping ca": ping("world", v6("ca")),
        "ca ping cr": ping("ca", v6("cr")),
        "ca->cr:7777": probe("ca", v6("cr"), 7777),
        "world->8080": probe("world", "2001:db8:203::2", 8080),
        "world->8090": probe("world", "2001:db8:203::2", 8090),
        "world->198::1:9001": probe("world", "2001:db8:198::1", 9001),
        "world->203::2:9001": probe("world", "2001:db8:203::2", 9001),
        "host->8080": probe("host", "2001:db8:203::2", 8080),
        "ca->own:8080": probe("ca", "2001:db8:203::2", 8080),
        "ca2->sibling:8080": probe("ca2", "2001:db8:203::2", 8080),
        "cb->other-bridge:8080": probe("cb", "2001:db8:203::2", 8080),
        "ci->8080": probe("ci", "2001:db8:203::2", 8080),
    }


async def main():
    out = {}
    sh("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
    sh("ip", "netns", "add", "world")
    sh("ip", "link", "add", "to-world", "type", "veth", "peer", "name", "eth0", "netns", "world")
    sh("ip", "addr", "add", "2001:db8:203::2/64", "dev", "to-world", "nodad")
    sh("ip", "link", "set", "to-world", "up")
    ns("world", "ip", "addr", "add", "2001:db8:203::1/64", "dev", "eth0", "nodad")
    ns("world", "ip", "link", "set", "eth0", "up")
    ns("world", "ip", "link", "set", "lo", "up")
    ns("world", "ip", "-6", "route", "add", "fd00::/8", "via", "2001:db8:203::2")
    ns("world", "ip", "-6", "route", "add", "2001:db8:198::1/128", "via", "2001:db8:203::2")
    sh("ip", "-6", "route", "add", "default", "via", "2001:db8:203::1")
    sh("ip", "addr", "add", "2001:db8:198::1/128", "dev", "lo")
    spawn(["ip", "netns", "exec", "world", PY, "-c", SERVER, "7777,7778"])
    for br, (_, p4, p6, _, _) in BRIDGES.items():
        sh("ip", "link", "add", br, "type", "bridge")
        sh("ip", "addr", "add", f"{p4}.1/24", "dev", br)
        sh("ip", "addr", "add", f"{p6}::1/64", "dev", br, "nodad")
        sh("ip", "link", "set", br, "up")
    for name, (br, host) in CONTAINERS.items():
        sh("ip", "netns", "add", name)
        sh("ip", "link", "add", f"v-{name}", "type", "veth", "peer", "name", "eth0", "netns", name)
        sh("ip", "link", "set", f"v-{name}", "master", br, "up")
        sh("ip", "link", "set", f"v-{name}", "type", "bridge_slave", "hairpin", "on")
        ns(name, "ip", "addr", "add", f"{BRIDGES[br][2]}::{host}/64", "dev", "eth0", "nodad")
        ns(name, "ip", "link", "set", "eth0", "up")
        ns(name, "ip", "link", "set", "lo", "up")
        ns(name, "ip", "-6", "route", "add", "default", "via", f"{BRIDGES[br][2]}::1")
        spawn(["ip", "netns", "exec", name, PY, "-c", SERVER, "7777,7778"])

    # no firewall yet: every container is routable both ways (the control), once the
    # link-local addresses have passed duplicate address detection.  On port 7778: a
    # straggling packet of these connections, picked up by conntrack once the firewall
    # is there, must not make a later probe on 7777 look established.
    for name in CONTAINERS:
        for _ in range(20):
            if probe("world", v6(name), 7778) != "FAIL" and probe(name, "2001:db8:203::1", 7778) != "FAIL":
                break
            time.sleep(0.25)
    out["before"] = {"world->ca": probe("world", v6("ca"), 7778)}
    fw = make()
    await fw.setup()
    for n in networks():
        await fw.add_network(n)
    await fw.add_ports(A, PORTS_A)
    await fw.add_ports(A, PORTS_A)  # idempotent replace
    await fw.add_ports(R, PORTS_R)
    out["healthy"] = await fw.healthy()
    out["kernel"] = reachability()

    # a v6 port of another endpoint is refused, and nothing changes
    before = dump()
    try:
        await fw.add_ports(eid(3), [port6(eid(3), 8080, 7777, name="cb")])
        out["overlap"] = "accepted"
    except Exception as exc:
        out["overlap"] = type(exc).__name__
    out["overlap_left_nothing"] = dump() == before

    await fw.remove_ports(A)
    out["after_remove"] = {"world->8080": probe("world", "2001:db8:203::2", 8080),
                           "world->8090": probe("world", "2001:db8:203::2", 8090)}
    out["a_tag_left"] = f"cnm:{A}" in dump()
    await fw.add_ports(A, PORTS_A)
    await make().remove_ports(A)  # a fresh instance reads the kernel
    out["fresh_remove_left"] = f"cnm:{A}" in dump()

    # a fresh instance (cnmd restarted) syncs, then removes a network
    fresh = make()
    await fresh.setup()
    await fresh.sync(networks(), PORTS_A + PORTS_R)
    out["after_sync"] = {"healthy": await fresh.healthy(), **reachability()}
    await fresh.remove_network(oid(1))
    out["a_net_left"] = f"cnm:{oid(1)}" in dump()
    out["after_net_remove"] = {"ca->world": probe("ca", "2001:db8:203::1", 7777)}

    # someone flushes the v6 rules: unhealthy, setup + sync repair them
    if BACKEND == "nftables":
        sh("nft", "delete", "table", "ip6", "cnm")
    else:
        for table in ("filter", "nat", "raw"):
            sh(BACKEND.replace("iptables", "ip6tables"), "-t", table, "-F")
    out["flushed_healthy"] = await fresh.healthy()
    await fresh.setup()
    await fresh.sync(networks(), PORTS_A + PORTS_R)
    out["repaired"] = {"healthy": await fresh.healthy(),
                       "world->8080": probe("world", "2001:db8:203::2", 8080),
                       "ca->cb": probe("ca", v6("cb"), 7777)}

    await make().teardown()
    await make().teardown()
    out["cnm_left"] = "cnm:" in dump() or "CNM" in dump()
    print(json.dumps(out))

try:
    asyncio.run(main())
finally:
    for p in procs:
        p.kill()
'''


def _run(tmp_path, backend: str) -> dict:
    proc = run_script(tmp_path, textwrap.dedent(SCRIPT), backend, name="fw6_script.py", timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


needs_root = pytest.mark.skipif(
    not have("nft", "iptables-nft-restore", "iptables-legacy-restore", "ip6tables-nft-restore"),
    reason="needs root, unshare, nft and both iptables variants with ip6tables",
)


@needs_root
@pytest.mark.parametrize("backend", BACKENDS)
def test_ipv6_masquerade_isolation_internal_routed_and_published_ports(tmp_path, backend):
    r = _run(tmp_path, backend)
    assert r["before"]["world->ca"] == "2001:db8:203::1 7778"  # the control: routable
    assert r["healthy"] is True
    k = r["kernel"]
    # the v6 subnet is masqueraded behind the host's address; networks are isolated from
    # each other and from the world; an internal network reaches nothing
    assert k["ca->world"] == "2001:db8:203::2 7777"
    assert k["ca->cb"] == "FAIL"
    assert k["world->ca"] == "FAIL" and k["world ping ca"] is False
    assert k["ci->world"] == "FAIL"
    # routed: no NAT on the way out; from the world ICMPv6 and nothing unpublished
    assert k["cr->world"] == "fd00:c::2 7777"
    assert k["world ping cr"] is True
    assert k["world->cr:7778"] == "FAIL"
    # ... but not from another network: isolation holds for routed networks too
    assert k["ca ping cr"] is False and k["ca->cr:7777"] == "FAIL"
    # a published port of a routed network, at the container's address (both backends)
    assert k["world->cr:7777"] == "2001:db8:203::1 7777"
    # published ports over IPv6: DNAT keeps the client's address; a host-address binding
    # answers only there
    assert k["world->8080"] == "2001:db8:203::1 7777"
    assert k["world->8090"] == "2001:db8:203::1 7777"
    assert k["world->198::1:9001"] == "2001:db8:203::1 7777"
    assert k["world->203::2:9001"] == "FAIL"
    assert k["host->8080"].endswith(" 7777")
    # hairpin: own port, a sibling, another network's container; never into an internal one
    assert k["ca->own:8080"] == "fd00:a::1 7777"
    assert k["ca2->sibling:8080"] == "fd00:a::1 7777"
    assert k["cb->other-bridge:8080"] == "fd00:a::1 7777"
    assert k["ci->8080"] == "FAIL"
    assert r["overlap"] == "FirewallError" and r["overlap_left_nothing"]
    assert r["after_remove"] == {"world->8080": "FAIL", "world->8090": "2001:db8:203::1 7777"}
    assert r["a_tag_left"] is False and r["fresh_remove_left"] is False
    s = r["after_sync"]
    assert s.pop("healthy") is True
    assert s == k
    assert r["a_net_left"] is False
    assert r["after_net_remove"]["ca->world"] != "2001:db8:203::2 7777"  # no masquerade any more
    assert r["flushed_healthy"] is False
    assert r["repaired"] == {"healthy": True, "world->8080": "2001:db8:203::1 7777", "ca->cb": "FAIL"}
    assert r["cnm_left"] is False
