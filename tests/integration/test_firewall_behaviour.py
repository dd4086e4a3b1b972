"""Published ports, masquerade and isolation against the real kernel, for every firewall
backend (nftables, iptables-nft, iptables-legacy), inside a throwaway net+mount+pid
namespace.

The script builds two bridges with "container" netns on them (two on br-a), an internal
network, a second host address (198.51.100.1 on lo) and a "world" netns
(203.0.113.1/24 <-> host 203.0.113.2/24, host default route via world).  Each container
runs a tiny server that answers "<peer address> <local port>" on TCP and UDP, so a probe
tells who answered and which source address it saw.  Everything vanishes with the
namespace.  Latencies are printed, never asserted.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from throwaway import have, run_script

pytestmark = pytest.mark.root

BACKENDS = ["nftables", "iptables-nft", "iptables-legacy"]

COMMON = r'''
import asyncio, json, os, socket, struct, subprocess, sys, time
from ipaddress import IPv4Address, IPv4Network

from cnm.firewall.api import BridgeRules, PortRule
from cnm.firewall.iptables import IptablesFirewall
from cnm.firewall.nftables import NftablesFirewall

BACKEND = sys.argv[1]
PY = sys.executable


def sh(*argv, check=True, input=None):
    proc = subprocess.run(argv, capture_output=True, text=True, input=input)
    if check and proc.returncode:
        raise AssertionError(f"{argv} failed: {proc.stderr}")
    return proc


def make(backend=None, proxy=False):
    backend = backend or BACKEND
    if backend == "nftables":
        return NftablesFirewall(userland_proxy=proxy)
    return IptablesFirewall(userland_proxy=proxy, iptables=backend)


def dump(backend=None):
    """Everything the backend's kernel API shows (to look for cnm's tags), comparable over
    time: iptables-save's "# Generated ... on <time>" lines and chain counters are dropped."""
    backend = backend or BACKEND
    if backend == "nftables":
        return sh("nft", "list", "ruleset").stdout
    text = sh(f"{backend}-save").stdout
    lines = (line.split(" [")[0] if line.startswith(":") else line for line in text.splitlines())
    return "\n".join(line for line in lines if not line.startswith("#"))


def oid(i):
    return f"{i:012x}" + "e" * 52


def eid(i):
    return f"{i:012x}" + "f" * 52
'''

BEHAVIOUR = r'''
SERVER = """
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in [int(p) for p in sys.argv[1].split(",")]:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64); sel.register(s, selectors.EVENT_READ, "tcp")
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 7777))
sel.register(u, selectors.EVENT_READ, "udp")
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        s = key.fileobj
        if key.data == "tcp":
            c, (addr, _) = s.accept()
            c.sendall(f"{addr} {c.getsockname()[1]}".encode()); c.close()
        else:
            _, (addr, port) = s.recvfrom(100)
            s.sendto(f"{addr} 7777".encode(), (addr, port))
"""
CLIENT = """
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if proto == "tcp":
        c = socket.create_connection((host, port), timeout=1.0)
        print(c.recv(64).decode())
    else:
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.settimeout(1.0)
        c.sendto(b"x", (host, port)); print(c.recv(64).decode())
except OSError:
    print("FAIL")
"""
# Sniffs eth0 of a netns for a TCP SYN to port 7777 from the world (the crafted packet below).
SNIFF = """
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800)); s.bind(("eth0", 0)); s.settimeout(0.2)
print("ready", flush=True)
end = time.time() + 2.0
while time.time() < end:
    try:
        frame = s.recv(2048)
    except socket.timeout:
        continue
    ip = frame[14:]
    if ip[9] == 6 and socket.inet_ntoa(ip[12:16]) == "203.0.113.1":
        tcp = ip[(ip[0] & 15) * 4:]
        if int.from_bytes(tcp[2:4], "big") == 7777:
            print("SEEN"); sys.exit()
print("NOT SEEN")
"""
# Sends one Ethernet frame to the host: IPv4 203.0.113.1 -> 127.0.0.1, TCP SYN to port 8082.
CRAFT = """
import socket, struct, sys
dst_mac = bytes.fromhex(sys.argv[1].replace(":", ""))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(("eth0", 0))
src_mac = s.getsockname()[4]
def csum(data):
    if len(data) % 2: data += b"\\0"
    total = sum(struct.unpack(f"!{len(data)//2}H", data)); total = (total >> 16) + (total & 0xFFFF); total += total >> 16
    return ~total & 0xFFFF
src, dst = socket.inet_aton("203.0.113.1"), socket.inet_aton("127.0.0.1")
tcp = struct.pack("!HHIIBBHHH", 40000, 8082, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
tcp = tcp[:16] + struct.pack("!H", csum(src + dst + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)) + tcp[18:]
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, src, dst)
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
s.send(dst_mac + src_mac + b"\\x08\\x00" + ip + tcp)
"""
procs = []


def ns(name, *argv, check=True):
    return sh("ip", "netns", "exec", name, *argv, check=check)


def spawn(argv):
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    procs.append(p)
    return p


def probe(src, host, port, proto="tcp"):
    """'<address the server saw> <its local port>', or FAIL."""
    argv = (PY, "-c", CLIENT, proto, host, str(port))
    proc = sh(*argv) if src == "host" else ns(src, *argv)
    return proc.stdout.strip()


def seen(src, host, port, proto="tcp"):
    return probe(src, host, port, proto).split()[0]


def container(name, bridge, ip, gw):
    sh("ip", "netns", "add", name)
    sh("ip", "link", "add", f"v-{name}", "type", "veth", "peer", "name", "eth0", "netns", name)
    sh("ip", "link", "set", f"v-{name}", "master", bridge, "up")
    ns(name, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
    ns(name, "ip", "link", "set", "eth0", "up")
    ns(name, "ip", "link", "set", "lo", "up")
    ns(name, "ip", "route", "add", "default", "via", gw)
    # what the bridge driver must do in kernel mode: with br_netfilter loaded, a container
    # reaching its own published port is bridged back out of the port it came in on
    sh("ip", "link", "set", f"v-{name}", "type", "bridge_slave", "hairpin", "on")
    ports = ",".join(str(p) for p in [7777, 7778, 7779, *range(8000, 8011)])
    spawn(["ip", "netns", "exec", name, PY, "-c", SERVER, ports])


BRIDGES = {"br-a": (1, "10.201.1"), "br-b": (2, "10.201.2"), "br-i": (3, "10.201.3")}
CONTAINERS = {"ca": ("br-a", "10.201.1.2"), "ca2": ("br-a", "10.201.1.3"), "cb": ("br-b", "10.201.2.2"),
              "ci": ("br-i", "10.201.3.2")}


def networks():
    return [BridgeRules(owner=oid(i), bridge=br, subnet=IPv4Network(f"{p}.0/24"), internal=(br == "br-i"))
            for br, (i, p) in BRIDGES.items()]


def port(owner, proto, host_port, container_port, host_ip=None, end=None, ip="10.201.1.2", bridge="br-a", net=1):
    return PortRule(owner=owner, network=oid(net), bridge=bridge, protocol=proto,
                    host_ip=IPv4Address(host_ip) if host_ip else None, host_port=host_port,
                    host_port_end=end or host_port, container_ip=IPv4Address(ip), container_port=container_port)


A, B = eid(1), eid(2)
PORTS_A = [
    port(A, "tcp", 8080, 7777),
    port(A, "udp", 8081, 7777),
    port(A, "tcp", 8000, 8000, end=8010),          # a range on the same ports: one element / rule
    port(A, "tcp", 9100, 7777, end=9102),          # a shifted range: per port
    port(A, "tcp", 8082, 7777, host_ip="127.0.0.1"),
    port(A, "tcp", 9001, 7777, host_ip="198.51.100.1"),
]
PORTS_B = [port(B, "tcp", 8090, 7777, ip="10.201.2.2", bridge="br-b", net=2)]


def craft_loopback_probe():
    """Send 203.0.113.1 -> 127.0.0.1:8082 from the world as a raw frame; did ca see it?"""
    mac = json.loads(sh("ip", "-j", "link", "show", "to-world").stdout)[0]["address"]
    sniffer = spawn(["ip", "netns", "exec", "ca", PY, "-c", SNIFF])
    ns("world", PY, "-c", CRAFT, mac)
    return sniffer.stdout.readline().strip()


def reachability():
    return {
        "world->8080": probe("world", "203.0.113.2", 8080),
        "world->8081/udp": probe("world", "203.0.113.2", 8081, "udp"),
        "world->8000": probe("world", "203.0.113.2", 8000),
        "world->8010": probe("world", "203.0.113.2", 8010),
        "world->9101": probe("world", "203.0.113.2", 9101),
        "world->8090": probe("world", "203.0.113.2", 8090),
        "host->127.0.0.1:8080": probe("host", "127.0.0.1", 8080),
        "host->203.0.113.2:8080": probe("host", "203.0.113.2", 8080),
        "host->127.0.0.1:8081/udp": probe("host", "127.0.0.1", 8081, "udp"),
        "host->127.0.0.1:8082": probe("host", "127.0.0.1", 8082),
        "world->8082": probe("world", "203.0.113.2", 8082),
        "world->198.51.100.1:9001": probe("world", "198.51.100.1", 9001),
        "world->203.0.113.2:9001": probe("world", "203.0.113.2", 9001),
        "ca->own:8080": probe("ca", "203.0.113.2", 8080),
        "ca2->sibling:8080": probe("ca2", "203.0.113.2", 8080),
        "cb->other-bridge:8080": probe("cb", "203.0.113.2", 8080),
        "ca->203.0.113.1": probe("ca", "203.0.113.1", 7777),
        "ca->10.201.2.2": probe("ca", "10.201.2.2", 7777),
        "world->10.201.1.2": probe("world", "10.201.1.2", 7777),
        "ci->203.0.113.1": probe("ci", "203.0.113.1", 7777),
    }


async def main():
    out = {}
    sh("ip", "netns", "add", "world")
    sh("ip", "link", "add", "to-world", "type", "veth", "peer", "name", "eth0", "netns", "world")
    sh("ip", "addr", "add", "203.0.113.2/24", "dev", "to-world")
    sh("ip", "link", "set", "to-world", "up")
    ns("world", "ip", "addr", "add", "203.0.113.1/24", "dev", "eth0")
    ns("world", "ip", "link", "set", "eth0", "up")
    ns("world", "ip", "link", "set", "lo", "up")
    ns("world", "ip", "route", "add", "10.201.0.0/16", "via", "203.0.113.2")
    ns("world", "ip", "route", "add", "198.51.100.1/32", "via", "203.0.113.2")
    sh("ip", "route", "add", "default", "via", "203.0.113.1")
    sh("ip", "addr", "add", "198.51.100.1/32", "dev", "lo")  # a second host address
    spawn(["ip", "netns", "exec", "world", PY, "-c", SERVER, "7777"])
    for br, (_, prefix) in BRIDGES.items():
        sh("ip", "link", "add", br, "type", "bridge")
        sh("ip", "addr", "add", f"{prefix}.1/24", "dev", br)
        sh("ip", "link", "set", br, "up")
    for name, (br, ip) in CONTAINERS.items():
        container(name, br, ip, BRIDGES[br][1] + ".1")

    # -- kernel mode --------------------------------------------------------------------
    fw = make()
    await fw.setup()
    for n in networks():
        await fw.add_network(n)
    await fw.add_ports(A, PORTS_A)
    await fw.add_ports(A, PORTS_A)  # idempotent replace
    await fw.add_ports(B, PORTS_B)
    out["route_localnet"] = open("/proc/sys/net/ipv4/conf/br-a/route_localnet").read().strip()
    out["kernel"] = reachability()
    out["crafted_loopback"] = craft_loopback_probe()
    # the control: without cnm's raw drop, would the forged packet get through?
    if BACKEND == "nftables":
        sh("nft", "flush", "chain", "ip", "cnm", "raw-prerouting")
    else:
        sh(BACKEND, "-t", "raw", "-F", "CNM-PREROUTING")
    out["crafted_loopback_without_drop"] = craft_loopback_probe()
    out["healthy_without_drop"] = await fw.healthy()
    await fw.setup()
    out["healthy_after_setup"] = await fw.healthy()

    # a port taken by another endpoint is refused, and nothing changes
    before = dump()
    try:
        await fw.add_ports(eid(3), [port(eid(3), "tcp", 8005, 8005)])
        out["overlap"] = "accepted"
    except Exception as exc:
        out["overlap"] = type(exc).__name__
    out["overlap_left_nothing"] = dump() == before

    # remove_ports leaves nothing of A's (and B still answers)
    await fw.remove_ports(A)
    await fw.remove_ports(A)
    out["after_remove"] = {"world->8080": probe("world", "203.0.113.2", 8080),
                           "host->127.0.0.1:8082": probe("host", "127.0.0.1", 8082),
                           "world->8090": probe("world", "203.0.113.2", 8090)}
    out["a_tag_left"] = f"cnm:{A}" in dump()
    await fw.add_ports(A, PORTS_A)

    # a fresh instance (cnmd restarted, no sync yet) removes A's ports by reading the kernel
    await make().remove_ports(A)
    out["fresh_remove_left"] = f"cnm:{A}" in dump()
    await fw.add_ports(A, PORTS_A)  # memory is stale now: add_ports must still succeed
    out["stale_memory_add"] = probe("world", "203.0.113.2", 8080)

    # an outside flush is detected and repaired by setup + sync
    if BACKEND == "nftables":
        sh("nft", "flush", "ruleset")
    else:
        for table in ("filter", "nat", "raw"):
            sh(BACKEND, "-t", table, "-F")
    out["flushed"] = {"healthy": await fw.healthy(), "world->8080": probe("world", "203.0.113.2", 8080)}
    await fw.setup()
    await fw.sync(networks(), PORTS_A + PORTS_B)
    out["after_sync"] = {"healthy": await fw.healthy(), **reachability()}

    # -- userland-proxy mode --------------------------------------------------------------
    # a stand-in for cnm's proxy, listening on the host on 8080
    spawn([PY, "-c", "import socket\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
           "s.bind(('0.0.0.0', 8080)); s.listen(8); print('ready', flush=True)\n"
           "while True:\n    c, _ = s.accept(); c.sendall(b'proxy 0'); c.close()\n"])
    proxy_fw = make(proxy=True)
    await proxy_fw.setup()
    await proxy_fw.sync(networks(), PORTS_A + PORTS_B)
    out["proxy"] = {
        "healthy": await proxy_fw.healthy(),
        "host->127.0.0.1:8080": probe("host", "127.0.0.1", 8080),
        "ca->own:8080": probe("ca", "203.0.113.2", 8080),
        "host->203.0.113.2:8080": probe("host", "203.0.113.2", 8080),
        "world->8080": probe("world", "203.0.113.2", 8080),
    }

    # -- teardown by a fresh instance ---------------------------------------------------------
    await make().teardown()
    await make().teardown()
    out["after_teardown"] = {"cnm_left": "cnm:" in dump() or "CNM" in dump(),
                             "ca->203.0.113.1": probe("ca", "203.0.113.1", 7777)}
    print(json.dumps(out))

try:
    asyncio.run(main())
finally:
    for p in procs:
        p.kill()
'''

TIMING = r"""
def rules(owner, n, first, bridge="br-x", net=1, ip="10.50.0.2"):
    return [PortRule(owner=owner, network=oid(net), bridge=bridge, protocol="tcp", host_ip=None,
                     host_port=first + i, host_port_end=first + i, container_ip=IPv4Address(ip),
                     container_port=80) for i in range(n)]


async def main():
    sh("ip", "link", "add", "br-x", "type", "bridge")
    fw = make()
    await fw.setup()
    net = BridgeRules(owner=oid(1), bridge="br-x", subnet=IPv4Network("10.50.0.0/16"))
    out = {}
    for others in (0, 5000):
        # 5,000 other mappings: 500 endpoints x 10 ports (ports 20000-24999)
        other = [r for e in range(others // 10) for r in rules(eid(1000 + e), 10, 20000 + 10 * e)]
        await fw.sync([net], other)
        for n in (1, 50, 500):
            probe = rules(eid(1), n, 40000)
            add, rm = [], []
            for _ in range(5):
                t0 = time.perf_counter(); await fw.add_ports(eid(1), probe)
                t1 = time.perf_counter(); await fw.remove_ports(eid(1))
                t2 = time.perf_counter()
                add.append((t1 - t0) * 1e3); rm.append((t2 - t1) * 1e3)
            out[f"{n} ports, {others} others"] = {"add_ms": round(sorted(add)[2], 2), "remove_ms": round(sorted(rm)[2], 2)}
        rng = [PortRule(owner=eid(1), network=oid(1), bridge="br-x", protocol="tcp", host_ip=None, host_port=40000,
                        host_port_end=40499, container_ip=IPv4Address("10.50.0.2"), container_port=40000)]
        t0 = time.perf_counter(); await fw.add_ports(eid(1), rng)
        t1 = time.perf_counter(); await fw.remove_ports(eid(1))
        t2 = time.perf_counter()
        out[f"range of 500, {others} others"] = {"add_ms": round((t1 - t0) * 1e3, 2), "remove_ms": round((t2 - t1) * 1e3, 2)}
        assert await fw.healthy()
    await fw.teardown()
    print(json.dumps(out))

asyncio.run(main())
"""

CROSS_TEARDOWN = r"""
async def main():
    sh("ip", "link", "add", "br-x", "type", "bridge")
    net = BridgeRules(owner=oid(1), bridge="br-x", subnet=IPv4Network("10.50.0.0/16"))
    p = PortRule(owner=eid(1), network=oid(1), bridge="br-x", protocol="tcp", host_ip=None, host_port=8080,
                 host_port_end=8080, container_ip=IPv4Address("10.50.0.2"), container_port=80)
    out = {}
    for backend in ("nftables", "iptables-nft", "iptables-legacy"):
        fw = make(backend)
        await fw.setup()
        await fw.add_network(net)
        await fw.add_ports(eid(1), [p])
        # the user's rule in the user chain, never touched but by teardown
        if backend == "nftables":
            sh("nft", "add", "rule", "ip", "cnm", "user", "counter")
        else:
            sh(backend, "-A", "CNM-USER", "-j", "RETURN")
        await fw.setup()  # idempotent, keeps the user's rule
        out[f"{backend} user rule kept"] = ("counter" if backend == "nftables" else "-A CNM-USER -j RETURN") in dump(backend)
    # each backend removes what a previous daemon left, without memory; a foreign rule stays
    sh("iptables-nft", "-A", "FORWARD", "-s", "192.0.2.1", "-j", "ACCEPT")
    sh("iptables-legacy", "-t", "nat", "-A", "POSTROUTING", "-s", "192.0.2.1", "-j", "MASQUERADE")
    for backend in ("iptables-legacy", "nftables", "iptables-nft"):
        await make(backend).teardown()
        await make(backend).teardown()
    for backend in ("iptables-legacy", "nftables", "iptables-nft"):
        out[f"{backend} left"] = [line for line in dump(backend).splitlines() if "cnm" in line.lower()]
    out["foreign kept"] = ("-A FORWARD -s 192.0.2.1/32 -j ACCEPT" in dump("iptables-nft")
                           and "-A POSTROUTING -s 192.0.2.1/32 -j MASQUERADE" in dump("iptables-legacy"))
    print(json.dumps(out))

asyncio.run(main())
"""


def _run(tmp_path, body: str, backend: str) -> dict:
    proc = run_script(
        tmp_path, textwrap.dedent(COMMON) + textwrap.dedent(body), backend, name="fw_script.py", timeout=300
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


needs_root = pytest.mark.skipif(
    not have("nft", "iptables-nft-restore", "iptables-legacy-restore"),
    reason="needs root, unshare, nft and both iptables variants",
)


def _addr(answer: str) -> str:
    return answer.split()[0]


@needs_root
@pytest.mark.parametrize("backend", BACKENDS)
def test_published_ports_masquerade_and_isolation(tmp_path, backend):
    r = _run(tmp_path, BEHAVIOUR, backend)
    k = r["kernel"]
    assert r["route_localnet"] == "1"
    # from the world through the host's address: the container sees the client's address
    assert k["world->8080"] == "203.0.113.1 7777"
    assert k["world->8081/udp"] == "203.0.113.1 7777"
    assert k["world->8090"] == "203.0.113.1 7777"
    # a range on the same ports, and a shifted range (9101 -> 7778)
    assert k["world->8000"] == "203.0.113.1 8000" and k["world->8010"] == "203.0.113.1 8010"
    assert k["world->9101"] == "203.0.113.1 7778"
    # from the host through 127.0.0.1 (masqueraded to the bridge address) and its own address
    assert k["host->127.0.0.1:8080"] == "10.201.1.1 7777"
    assert _addr(k["host->203.0.113.2:8080"]) in ("203.0.113.2", "10.201.1.1")
    assert k["host->127.0.0.1:8081/udp"] == "10.201.1.1 7777"
    # a 127.0.0.1 binding answers on localhost only
    assert k["host->127.0.0.1:8082"] == "10.201.1.1 7777"
    assert k["world->8082"] == "FAIL"
    # a binding to one host address answers only there
    assert k["world->198.51.100.1:9001"] == "203.0.113.1 7777"
    assert k["world->203.0.113.2:9001"] == "FAIL"
    # hairpin: own port, a sibling on the same bridge, a container of another network
    assert k["ca->own:8080"] == "10.201.1.1 7777"
    assert k["ca2->sibling:8080"] == "10.201.1.1 7777"
    assert k["cb->other-bridge:8080"] == "10.201.1.1 7777"
    # networks as before: masquerade, isolation, internal
    assert _addr(k["ca->203.0.113.1"]) == "203.0.113.2"
    assert k["ca->10.201.2.2"] == "FAIL"
    assert k["world->10.201.1.2"] == "FAIL"
    assert k["ci->203.0.113.1"] == "FAIL"
    # a forged packet to 127.0.0.1:8082 from the world: dropped; without the drop rule the
    # DNAT would have forwarded it to the container (moby#41872), so the check can fail
    assert r["crafted_loopback"] == "NOT SEEN"
    print(
        f"\n{backend}: forged 127.0.0.1 packet without cnm's raw drop: {r['crafted_loopback_without_drop']}"
    )
    assert r["healthy_without_drop"] is False and r["healthy_after_setup"] is True
    # a port of another endpoint is refused without changing anything
    assert r["overlap"] in ("FirewallError",) and r["overlap_left_nothing"]
    # remove_ports leaves nothing of that endpoint, and only that endpoint
    assert r["after_remove"]["world->8080"] == "FAIL"
    assert r["after_remove"]["host->127.0.0.1:8082"] == "FAIL"
    assert r["after_remove"]["world->8090"] == "203.0.113.1 7777"
    assert r["a_tag_left"] is False and r["fresh_remove_left"] is False
    assert r["stale_memory_add"] == "203.0.113.1 7777"
    # an outside flush is detected; setup + sync restore everything
    assert r["flushed"]["healthy"] is False
    s = r["after_sync"]
    assert s["healthy"] is True
    for key in (
        "world->8080",
        "world->8000",
        "host->127.0.0.1:8080",
        "ca->own:8080",
        "world->198.51.100.1:9001",
    ):
        assert s[key] == k[key], key
    assert s["ca->10.201.2.2"] == "FAIL" and s["world->8082"] == "FAIL"
    # proxy mode: localhost and containers reach the proxy; the rest is DNATed in the kernel
    p = r["proxy"]
    assert p["healthy"] is True
    assert p["host->127.0.0.1:8080"] == "proxy 0"
    assert p["ca->own:8080"] == "proxy 0"
    assert _addr(p["host->203.0.113.2:8080"]) in ("203.0.113.2", "10.201.1.1")
    assert p["world->8080"] == "203.0.113.1 7777"
    # teardown by a fresh instance removes everything cnm made
    assert r["after_teardown"]["cnm_left"] is False
    assert _addr(r["after_teardown"]["ca->203.0.113.1"]) == "10.201.1.2"


@needs_root
@pytest.mark.parametrize("backend", BACKENDS)
def test_add_remove_ports_latency(tmp_path, backend):
    r = _run(tmp_path, TIMING, backend)
    print(f"\n{backend} add_ports / remove_ports (p50 of 5):")
    for case, t in r.items():
        print(f"  {case:28s} add {t['add_ms']:8.2f} ms   remove {t['remove_ms']:8.2f} ms")


@needs_root
def test_each_backend_tears_down_what_a_previous_daemon_left(tmp_path):
    r = _run(tmp_path, CROSS_TEARDOWN, "nftables")
    for backend in BACKENDS:
        assert r[f"{backend} user rule kept"], backend
        assert r[f"{backend} left"] == [], backend
    assert r["foreign kept"]
