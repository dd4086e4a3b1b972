"""The anti-spoofing guard's IPv6 rules against the real kernel, inside a throwaway
net+mount+pid namespace: raw frames sent from a guarded port (what a container with
NET_RAW could send) are sniffed on another port of the bridge, so each check is "did this
frame cross the bridge".

A port with v6 addresses may send from them, from its EUI-64 link-local address, and from
``::`` only for duplicate address detection of its own addresses and MLDv2 reports; its
neighbour advertisements must advertise its own addresses; router advertisements and
redirects never pass; router solicitations and solicitations for others' addresses do.  A
port without v6 addresses sends no IPv6 at all.  Every frame carries a marker in its
payload; the frames are broadcast, so the bridge floods them to the sniffing port.
"""

from __future__ import annotations

import json

import pytest
from throwaway import have, run_script

pytestmark = pytest.mark.root

SCRIPT = r'''
import asyncio, json, socket, struct, subprocess, sys, time
from ipaddress import IPv4Address, IPv6Address

from cnm.firewall.api import PortGuard
from cnm.firewall.bridge_guard import NftBridgeGuard
from cnm.firewall.render_bridge import link_local

PY = sys.executable

SNIFF = """
import json, socket, sys, time
markers = sys.argv[1].split(",")
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)); s.bind(("eth0", 0)); s.settimeout(0.1)
print("ready", flush=True)
seen = dict.fromkeys(markers, 0)
end = time.time() + float(sys.argv[2])
while time.time() < end:
    try:
        frame = s.recv(4096)
    except socket.timeout:
        continue
    for m in markers:
        if m.encode() in frame:
            seen[m] += 1
print(json.dumps(seen), flush=True)
"""

SEND = """
import json, socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(("eth0", 0))
for frame in json.loads(sys.stdin.read()):
    s.send(bytes.fromhex(frame))
"""


def sh(*argv, check=True, input=None):
    proc = subprocess.run(argv, capture_output=True, text=True, input=input)
    if check and proc.returncode:
        raise AssertionError(f"{argv} failed: {proc.stderr}")
    return proc


def ns(name, *argv, **kw):
    return sh("ip", "netns", "exec", name, *argv, **kw)


def mac_of(netns):
    return json.loads(ns(netns, "ip", "-j", "link", "show", "eth0").stdout)[0]["address"]


def csum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv6(src_mac, src, dst, next_header, payload, dst_mac="ff:ff:ff:ff:ff:ff", hop_limit=255):
    """An Ethernet frame carrying IPv6 ``src`` -> ``dst`` with ``payload`` (upper-layer
    checksum filled in at bytes 2-3 for ICMPv6, 6-7 for UDP)."""
    s, d = IPv6Address(src).packed, IPv6Address(dst).packed
    pseudo = s + d + struct.pack("!IxxxB", len(payload), next_header)
    at = 2 if next_header == 58 else 6
    payload = payload[:at] + struct.pack("!H", csum(pseudo + payload[:at] + b"\0\0" + payload[at + 2:])) + payload[at + 2:]
    header = struct.pack("!IHBB", 0x60000000, len(payload), next_header, hop_limit) + s + d
    eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) + b"\x86\xdd"
    return eth + header + payload


def udp6(src_mac, src, marker):
    data = marker.encode()
    return ipv6(src_mac, src, "ff02::1", 17, struct.pack("!HHHH", 40000, 9999, 8 + len(data), 0) + data)


def icmp6(src_mac, src, kind, body, marker, dst="ff02::1"):
    return ipv6(src_mac, src, dst, 58, struct.pack("!BBH", kind, 0, 0) + body + marker.encode())


def ns_(target):  # neighbour solicitation body: reserved, target
    return b"\0" * 4 + IPv6Address(target).packed


def na_(target):  # neighbour advertisement body: flags (override), target
    return struct.pack("!I", 0x20000000) + IPv6Address(target).packed


def arp_like_v4(src_mac, src, marker):  # an IPv4 UDP frame, to show v4 is unaffected
    data = marker.encode()
    udp = struct.pack("!HHHH", 40000, 9999, 8 + len(data), 0) + data
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     IPv4Address(src).packed, IPv4Address("10.0.0.255").packed)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return b"\xff" * 6 + bytes.fromhex(src_mac.replace(":", "")) + b"\x08\x00" + ip + udp


def exchange(sender, frames):
    """Send ``frames`` (marker -> frame) from ``sender``; which markers reached c2."""
    sniffer = subprocess.Popen(["ip", "netns", "exec", "c2", PY, "-c", SNIFF, ",".join(frames), "1.5"],
                               stdout=subprocess.PIPE, text=True)
    assert sniffer.stdout.readline().strip() == "ready"
    ns(sender, PY, "-c", SEND, input=json.dumps([f.hex() for f in frames.values()]))
    seen = json.loads(sniffer.stdout.readline())
    sniffer.wait()
    return sorted(m for m, n in seen.items() if n)


async def main():
    out = {}
    sh("ip", "link", "add", "br0", "type", "bridge")
    sh("ip", "link", "set", "br0", "up")
    for name in ("c1", "c2", "c3"):
        sh("ip", "netns", "add", name)
        sh("ip", "link", "add", f"v-{name}", "type", "veth", "peer", "name", "eth0", "netns", name)
        sh("ip", "link", "set", f"v-{name}", "master", "br0", "up")
        ns(name, "ip", "link", "set", "eth0", "up")
    m1, m2, m3 = mac_of("c1"), mac_of("c2"), mac_of("c3")
    own, other = "fd00:1::2", "fd00:1::3"
    ll = str(link_local(m1))
    guard = NftBridgeGuard()
    await guard.setup()
    await guard.add_port(PortGuard("e1" * 32, "ee" * 32, "v-c1", m1, (IPv4Address("10.0.0.2"),), (IPv6Address(own),)))
    await guard.add_port(PortGuard("e3" * 32, "ee" * 32, "v-c3", m3, (IPv4Address("10.0.0.4"),)))
    out["healthy"] = await guard.healthy()

    frames = {
        "own-src": udp6(m1, own, "own-src"),
        "link-local-src": udp6(m1, ll, "link-local-src"),
        "v4-own": arp_like_v4(m1, "10.0.0.2", "v4-own"),
        "spoofed-src": udp6(m1, "fd00:1::99", "spoofed-src"),
        "other-containers-src": udp6(m1, other, "other-containers-src"),
        "foreign-link-local": udp6(m1, str(link_local(m2)), "foreign-link-local"),
        "foreign-mac": udp6(m2, own, "foreign-mac"),
        "unspecified-udp": udp6(m1, "::", "unspecified-udp"),
        "na-own": icmp6(m1, own, 136, na_(own), "na-own"),
        "na-own-link-local": icmp6(m1, ll, 136, na_(ll), "na-own-link-local"),
        "na-foreign-target": icmp6(m1, own, 136, na_(other), "na-foreign-target"),
        "na-gateway-target": icmp6(m1, ll, 136, na_("fd00:1::1"), "na-gateway-target"),
        "ns-for-a-neighbour": icmp6(m1, own, 135, ns_("fd00:1::1"), "ns-for-a-neighbour", dst="ff02::1:ff00:1"),
        "dad-own": icmp6(m1, "::", 135, ns_(own), "dad-own", dst="ff02::1:ff00:2"),
        "dad-foreign": icmp6(m1, "::", 135, ns_(other), "dad-foreign", dst="ff02::1:ff00:3"),
        "router-solicitation": icmp6(m1, ll, 133, b"\0" * 4, "router-solicitation", dst="ff02::2"),
        "router-advertisement": icmp6(m1, ll, 134, b"\x40\0\x07\x08" + b"\0" * 8, "router-advertisement"),
        "ra-from-unspecified": icmp6(m1, "::", 134, b"\x40\0\x07\x08" + b"\0" * 8, "ra-from-unspecified"),
        "redirect": icmp6(m1, ll, 137, b"\0" * 4 + IPv6Address(ll).packed + IPv6Address(other).packed, "redirect",
                          dst=other),
        "mld-report-unspecified": icmp6(m1, "::", 143, b"\0\0\0\0", "mld-report-unspecified", dst="ff02::16"),
        "mld-report": icmp6(m1, ll, 143, b"\0\0\0\0", "mld-report", dst="ff02::16"),
        "echo-from-unspecified": icmp6(m1, "::", 128, b"\0\0\0\0", "echo-from-unspecified"),
    }
    out["c1"] = exchange("c1", frames)
    out["c3"] = exchange("c3", {
        "v6-link-local": udp6(m3, str(link_local(m3)), "v6-link-local"),
        "v6-rs": icmp6(m3, str(link_local(m3)), 133, b"\0" * 4, "v6-rs", dst="ff02::2"),
        "v4-own3": arp_like_v4(m3, "10.0.0.4", "v4-own3"),
    })
    # the control: unguarded, the dropped frames cross the bridge
    await guard.teardown()
    out["unguarded"] = exchange("c1", {k: frames[k] for k in ("spoofed-src", "na-foreign-target", "router-advertisement")})
    print(json.dumps(out))


asyncio.run(main())
'''


@pytest.mark.skipif(not have("nft"), reason="needs root, unshare and nft")
def test_the_guard_filters_what_a_port_sends_over_ipv6(tmp_path):
    proc = run_script(tmp_path, SCRIPT, name="bridge_guard6.py")
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["healthy"] is True
    assert r["c1"] == sorted(
        [
            "own-src",
            "link-local-src",
            "v4-own",
            "na-own",
            "na-own-link-local",
            "ns-for-a-neighbour",
            "dad-own",
            "router-solicitation",
            "mld-report-unspecified",
            "mld-report",
        ]
    )
    # (dropped: spoofed and foreign sources, a foreign MAC, :: but for DAD and MLD, foreign
    # neighbour advertisements and DAD, router advertisements, redirects)
    assert r["c3"] == ["v4-own3"]  # no v6 addresses: no IPv6 at all
    assert r["unguarded"] == ["na-foreign-target", "router-advertisement", "spoofed-src"]
