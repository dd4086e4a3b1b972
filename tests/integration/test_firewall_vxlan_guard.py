"""Plain VXLAN for an encrypted overlay network's VNI is dropped unless it came through the
WireGuard interface, against the real kernel (the nftables backend, and the iptables
backend through both iptables variants), in a throwaway namespace.

The host has an underlay veth (``ul0``, 10.0.0.1) and a stand-in for the tunnel interface
(a veth named ``cnmwg0``, 10.9.0.1), both to a "peer" netns that sends VXLAN datagrams
built by hand (flags, VNI in bytes 4-6) to UDP 4789.  A plain UDP socket bound to 4789 on
the host shows which datagrams got past the input hook: that checks the payload offset.
The drop rule's chain is on the input path only while an encrypted VNI is there.
"""

from __future__ import annotations

import json

import pytest
from throwaway import check_ok, have, run_script

pytestmark = pytest.mark.root

SCRIPT = r'''
import asyncio, json, socket, struct, subprocess, sys

from cnm.firewall.iptables import IptablesFirewall
from cnm.firewall.nftables import NftablesFirewall

OWNER = "ab" * 32
BACKEND = sys.argv[1]  # nftables | iptables-nft | iptables-legacy


def sh(*argv):
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode:
        raise AssertionError(f"{argv} failed: {proc.stderr}")
    return proc.stdout


sh("ip", "netns", "add", "peer")
for host_if, peer_if, net in (("ul0", "ul1", "10.0.0"), ("cnmwg0", "wg1", "10.9.0")):
    sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if, "netns", "peer")
    sh("ip", "addr", "add", f"{net}.1/24", "dev", host_if)
    sh("ip", "link", "set", host_if, "up")
    sh("ip", "-n", "peer", "addr", "add", f"{net}.2/24", "dev", peer_if)
    sh("ip", "-n", "peer", "link", "set", peer_if, "up")

listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
listener.bind(("0.0.0.0", 4789))
listener.settimeout(1.0)

fw = NftablesFirewall() if BACKEND == "nftables" else IptablesFirewall(iptables=BACKEND)


def send(dst, vni):
    """One VXLAN datagram from the peer: flags 0x08 (VNI valid), VNI, an inner frame."""
    header = struct.pack("!B3xI", 0x08, vni << 8)
    payload = (header + bytes(64)).hex()
    code = (
        "import socket,sys; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
        f"s.sendto(bytes.fromhex('{payload}'),('{dst}',4789))"
    )
    sh("ip", "netns", "exec", "peer", sys.executable, "-c", code)


def arrived():
    try:
        data = listener.recv(2048)
    except TimeoutError:
        return None
    return struct.unpack("!I", data[4:8])[0] >> 8


def input_chains():
    """nftables: the base chains on the input hook, of any table; iptables: the targets
    INPUT jumps to."""
    if BACKEND == "nftables":
        ruleset = json.loads(sh("nft", "-j", "list", "ruleset"))["nftables"]
        return sorted(o["chain"]["name"] for o in ruleset if o.get("chain", {}).get("hook") == "input")
    rules = sh(BACKEND, "-w", "-S", "INPUT").splitlines()
    return sorted(line.split(" -j ")[1] for line in rules if line.startswith("-A INPUT"))


def dropped():
    if BACKEND == "nftables":
        chain = json.loads(sh("nft", "-j", "list", "chain", "ip", "cnm", "vxlan-input"))
        return sum(e["counter"]["packets"] for o in chain["nftables"] if "rule" in o
                   for e in o["rule"]["expr"] if "counter" in e)
    rows = sh(BACKEND, "-w", "-L", "CNM-VXLAN", "-v", "-x", "-n").splitlines()[2:]
    return sum(int(row.split()[0]) for row in rows)


async def main():
    await fw.setup()
    await fw.sync([])
    results = {"input chains, no encrypted VNI": input_chains()}
    send("10.0.0.1", 4097); results["underlay, nothing encrypted"] = arrived()
    await fw.add_encrypted_vni(OWNER, 4097)
    results["input chains, one encrypted VNI"] = input_chains()
    send("10.0.0.1", 4097); results["underlay, encrypted VNI"] = (arrived(), dropped())
    send("10.0.0.1", 4098); results["underlay, other VNI"] = (arrived(), dropped())
    send("10.9.0.1", 4097); results["tunnel, encrypted VNI"] = (arrived(), dropped())
    await fw.sync([])  # a rebuilt table keeps the VNI
    send("10.0.0.1", 4097); results["underlay after sync"] = (arrived(), dropped())
    await fw.add_encrypted_vni("cd" * 32, 4099)
    await fw.remove_encrypted_vni(OWNER, 4097)  # 4099 still guarded
    send("10.0.0.1", 4097); results["underlay, 4097 removed"] = (arrived(), dropped())
    send("10.0.0.1", 4099); results["underlay, 4099 kept"] = (arrived(), dropped())
    await fw.remove_encrypted_vni("cd" * 32, 4099)
    results["input chains, last VNI removed"] = input_chains()
    send("10.0.0.1", 4099); results["underlay after the last removal"] = arrived()
    print(json.dumps(results))
    print("OK")


asyncio.run(main())
'''


GUARD = {"nftables": "vxlan-input", "iptables-nft": "CNM-VXLAN", "iptables-legacy": "CNM-VXLAN"}


@pytest.mark.parametrize("backend", list(GUARD))
def test_plain_vxlan_with_an_encrypted_vni_is_dropped_unless_it_came_through_the_tunnel(tmp_path, backend):
    tool = "nft" if backend == "nftables" else backend
    if not have(tool, "ip"):
        pytest.skip(f"needs root, unshare, {tool} and ip")
    results = json.loads(check_ok(run_script(tmp_path, SCRIPT, backend)).strip().splitlines()[-2])
    guard = GUARD[backend]
    # the drop counter: nftables has one rule for every VNI (its counter is new after a
    # sync); iptables one rule per VNI (4097's count goes with its rule)
    kept = 1 if backend == "nftables" else 0
    assert results == {
        "input chains, no encrypted VNI": [],  # nothing on the input path for nothing
        "underlay, nothing encrypted": 4097,
        "input chains, one encrypted VNI": [guard],
        "underlay, encrypted VNI": [None, 1],
        "underlay, other VNI": [4098, 1],
        "tunnel, encrypted VNI": [4097, 1],
        "underlay after sync": [None, 1],
        "underlay, 4097 removed": [4097, kept],
        "underlay, 4099 kept": [None, kept + 1],
        "input chains, last VNI removed": [],
        "underlay after the last removal": 4099,
    }
