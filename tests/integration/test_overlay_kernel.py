"""The overlay's data plane from the Kernel primitives alone, across two lab hosts: on each
host a bridge without an address and a VXLAN device (nolearning, proxy) made by
LinuxKernel, two container-like namespaces on the bridge, and static FDB + neighbour
entries for the other host's containers.  Containers reach each other across hosts (ping,
TCP) in VXLAN on UDP 4789 over the underlay; the device answers ARP from its neighbour
table, and nothing is flooded: without the entries, no reply and no packet on the underlay.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import test_failed, wait_for
from lab import Lab, LabHost

VNI = 4096
BRIDGE = "ov-test"
VXLAN = "vx-test"
OWNER = "ab" * 32
MTU = 1450  # the underlay's 1500 minus VXLAN's 50

# Runs inside a lab host: one Kernel call sequence per invocation, the result as JSON on
# stdout, the kernel's command log (logger cnm.kernel) on stderr.
SCRIPT = r"""
import asyncio, json, logging, sys
from ipaddress import IPv4Address, IPv4Interface
from cnm.kernel.api import FdbEntry, NeighEntry, VethSpec, VxlanSpec
from cnm.kernel.netlink import LinuxKernel

logging.basicConfig(stream=sys.stderr, level=logging.DEBUG, format="%(name)s %(message)s")
logging.getLogger("pyroute2").setLevel(logging.WARNING)


async def main(op, arg):
    k = LinuxKernel()
    try:
        if op == "setup":
            await k.ensure_bridge(arg["bridge"], owner=arg["owner"], mtu=arg["mtu"], address=None)
            await k.add_vxlan(VxlanSpec(
                owner=arg["owner"], name=arg["vxlan"], vni=arg["vni"], local=IPv4Address(arg["local"]),
                bridge=arg["bridge"], mtu=arg["mtu"],
            ))
            for c in arg["containers"]:
                path = "/run/netns/" + c["name"]
                await k.create_netns(path)
                await k.add_veth(VethSpec(
                    owner=c["name"], host_ifname="ve-" + c["name"], bridge=arg["bridge"], netns_path=path,
                    ifname="eth0", mtu=arg["mtu"], mac=c["mac"], address=IPv4Interface(c["ip"] + "/24"),
                ))
        elif op == "entries":
            for e in arg.get("delete_fdb", []):
                await k.delete_fdb(arg["vxlan"], FdbEntry(e["mac"], IPv4Address(e["vtep"])))
            for e in arg.get("delete_neigh", []):
                await k.delete_neigh(arg["vxlan"], IPv4Address(e["ip"]))
            for e in arg.get("fdb", []):
                await k.replace_fdb(arg["vxlan"], FdbEntry(e["mac"], IPv4Address(e["vtep"])))
            for e in arg.get("neigh", []):
                await k.replace_neigh(arg["vxlan"], NeighEntry(IPv4Address(e["ip"]), e["mac"]))
        links = {l.name: l for l in await k.links()}
        vx = links.get(arg["vxlan"])
        out = {
            "fdb": [[e.mac, str(e.dst)] for e in await k.fdb_entries(arg["vxlan"])] if vx else None,
            "neigh": [[str(e.ip), e.mac] for e in await k.neigh_entries(arg["vxlan"])] if vx else None,
            "links": {n: {"kind": l.kind, "owner": l.owner, "master": l.master, "mtu": l.mtu, "up": l.up,
                          "index": l.index, "addresses": [str(a) for a in l.addresses]}
                      for n, l in links.items()},
        }
        print(json.dumps(out))
    finally:
        k.close()


asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
"""


def containers(host: LabHost) -> list[dict[str, str]]:
    """Two containers per host: c<h><k>, 10.0.0.<h><k>, MAC 02:42:0a:00:00:<h><k>."""
    n = host.name[1:]
    return [{"name": f"c{n}{k}", "ip": f"10.0.0.{n}{k}", "mac": f"02:42:0a:00:00:{n}{k}"} for k in (1, 2)]


def remote_entries(other: LabHost) -> dict[str, list[dict[str, str]]]:
    cs = containers(other)
    return {
        "fdb": [{"mac": c["mac"], "vtep": other.address} for c in cs],
        "neigh": [{"ip": c["ip"], "mac": c["mac"]} for c in cs],
    }


class Overlay:
    """The two hosts and the Kernel script run in them."""

    def __init__(self, lab: Lab, script: Path) -> None:
        self.lab = lab
        self.script = script
        self.log: dict[str, list[str]] = {}

    def kernel(self, host: LabHost, op: str, **arg: object) -> dict:
        arg = {"vxlan": VXLAN, **arg}
        proc = host.run([sys.executable, str(self.script), op, json.dumps(arg)], timeout=60)
        self.log.setdefault(host.name, []).extend(
            line.removeprefix("cnm.kernel ")
            for line in proc.stderr.splitlines()
            if line.startswith("cnm.kernel ")
        )
        return json.loads(proc.stdout)

    def in_container(
        self, host: LabHost, name: str, argv: list[str], check: bool = True, timeout: float = 30
    ):
        return host.run(["nsenter", f"--net=/run/netns/{name}", "--", *argv], check=check, timeout=timeout)

    def ping(self, host: LabHost, name: str, ip: str) -> bool:
        """One echo request answered within 2 s (the negative checks: nothing got through)."""
        return (
            self.in_container(host, name, ["busybox", "ping", "-c1", "-W2", ip], check=False).returncode == 0
        )

    def reaches(self, host: LabHost, name: str, ip: str) -> bool:
        """An echo request answered within 15 s of tries: a path that works is not failed
        for a first packet that waited out a neighbour entry still resolving (or failed)
        from the step before, on a loaded machine."""
        return wait_for(lambda: self.ping(host, name, ip), 15, interval=0.1)

    def neighbour(self, host: LabHost, name: str, ip: str) -> dict:
        """The container's neighbour entry for ``ip`` (``ip -j neigh``), {} if none."""
        out = self.in_container(host, name, ["ip", "-j", "neigh", "show", ip]).stdout
        entries = json.loads(out or "[]")
        return entries[0] if entries else {}

    def flush_neighbours(self, host: LabHost, name: str) -> None:
        self.in_container(host, name, ["ip", "neigh", "flush", "all"])

    def counters(self) -> dict[str, int]:
        """Packets the underlay bridge forwarded: VXLAN from h1, and plain (unencapsulated)
        container traffic, which must never be there."""
        out = json.loads(self.lab.root.run(["nft", "-j", "list", "table", "bridge", "lab"]).stdout)
        found = {}
        for item in out["nftables"]:
            rule = item.get("rule")
            if rule:
                counter = next(e["counter"] for e in rule["expr"] if "counter" in e)
                found[rule["comment"]] = counter["packets"]
        return found


COUNTERS = """
table bridge lab {
    chain forward {
        type filter hook forward priority 0; policy accept;
        ip saddr 198.51.100.1 udp dport 4789 counter comment "vxlan-from-h1"
        ip saddr 198.51.100.2 udp dport 4789 counter comment "vxlan-from-h2"
        ip saddr 10.0.0.0/24 counter comment "plain"
        arp daddr ip 10.0.0.0/24 counter comment "arp"
    }
}
"""


@pytest.fixture
def overlay(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Overlay]:
    script = tmp_path / "kernel_script.py"
    script.write_text(SCRIPT)
    with Lab(2, etcd=False) as lab:
        lab.root.run(["nft", "-f", "-"], input=COUNTERS)
        yield Overlay(lab, script)
        if test_failed(request):
            for host in lab.hosts:
                print(f"---- {host.name} ----")
                print(host.run(["ip", "-d", "link"], check=False).stdout)
                print(host.run(["bridge", "fdb", "show", "dev", VXLAN], check=False).stdout)
                print(host.run(["ip", "neigh", "show", "dev", VXLAN], check=False).stdout)


def test_vxlan_overlay_across_two_hosts_from_the_kernel_primitives(overlay: Overlay) -> None:
    h1, h2 = overlay.lab.hosts
    for host in (h1, h2):
        out = overlay.kernel(
            host,
            "setup",
            bridge=BRIDGE,
            owner=OWNER,
            mtu=MTU,
            vni=VNI,
            local=host.address,
            containers=containers(host),
        )
        bridge, vx = out["links"][BRIDGE], out["links"][VXLAN]
        assert bridge["kind"] == "bridge" and bridge["addresses"] == [] and bridge["up"]
        assert vx["kind"] == "vxlan" and vx["owner"] == OWNER and vx["up"]
        assert vx["master"] == bridge["index"] and vx["mtu"] == MTU
        assert out["fdb"] == [] and out["neigh"] == []
        # What iproute2 sees: the device is configured as the design says.
        (detail,) = host.ip_json("-d", "link", "show", "dev", VXLAN)
        data = detail["linkinfo"]["info_data"]
        assert data["id"] == VNI and data["local"] == host.address and data["port"] == 4789
        assert data["learning"] is False and data["proxy"] is True
        assert "group" not in data and "remote" not in data  # nothing to flood to
        assert detail["ifalias"].endswith(f":{OWNER}")

    # The entries of the other host's containers, both ways; listed back as written.
    for host, other in ((h1, h2), (h2, h1)):
        want = remote_entries(other)
        out = overlay.kernel(host, "entries", **want)
        assert out["fdb"] == sorted([e["mac"], e["vtep"]] for e in want["fdb"])
        assert out["neigh"] == sorted([e["ip"], e["mac"]] for e in want["neigh"])
        shown = json.loads(host.run(["bridge", "-j", "fdb", "show", "dev", VXLAN]).stdout)
        remote = {(e["mac"], e["dst"]) for e in shown if "dst" in e}
        assert remote == {(e["mac"], e["vtep"]) for e in want["fdb"]}
        assert all("permanent" in e.get("state", "") for e in shown if "dst" in e)
        neigh = host.ip_json("neigh", "show", "dev", VXLAN)
        assert {(n["dst"], n["lladdr"], tuple(n["state"])) for n in neigh} == {
            (e["ip"], e["mac"], ("PERMANENT",)) for e in want["neigh"]
        }

    # Ping across hosts, both ways, in VXLAN on the underlay and never in the clear.
    before = overlay.counters()
    assert overlay.reaches(h1, "c11", "10.0.0.21")
    assert overlay.reaches(h1, "c11", "10.0.0.22")
    assert overlay.reaches(h2, "c22", "10.0.0.12")
    after = overlay.counters()
    assert after["vxlan-from-h1"] > before["vxlan-from-h1"]
    assert after["vxlan-from-h2"] > before["vxlan-from-h2"]
    assert after["plain"] == 0
    # The container's ARP was answered on its own host, from the neighbour table.
    assert overlay.neighbour(h1, "c11", "10.0.0.21")["lladdr"] == "02:42:0a:00:00:21"

    # TCP across hosts: 1 MiB to c21, which answers with its digest.
    payload = bytes(range(256)) * 4096
    server = h2.spawn(
        ["nsenter", "--net=/run/netns/c21", "--", sys.executable, "-c", TCP_SERVER],
        stdout=-1,
        stderr=-1,
    )
    try:
        assert wait_for(lambda: overlay.in_container(h2, "c21", ["ss", "-ltnH"]).stdout.strip() != "", 15)
        client = overlay.in_container(h1, "c12", [sys.executable, "-c", TCP_CLIENT], timeout=60)
        assert client.stdout.strip() == hashlib.sha256(payload).hexdigest()
    finally:
        server.kill()
        server.wait()

    # No FDB entry for c21's MAC: ARP is still answered (the proxy, locally), but the
    # unicast that follows is dropped on h1, not flooded: nothing leaves h1 on 4789.
    overlay.kernel(h1, "entries", delete_fdb=[{"mac": "02:42:0a:00:00:21", "vtep": h2.address}])
    overlay.flush_neighbours(h1, "c11")
    before = overlay.counters()
    assert not overlay.ping(h1, "c11", "10.0.0.21")
    assert overlay.neighbour(h1, "c11", "10.0.0.21").get("lladdr") == "02:42:0a:00:00:21"
    assert overlay.counters()["vxlan-from-h1"] == before["vxlan-from-h1"]
    assert overlay.reaches(h1, "c11", "10.0.0.22")  # the other entries still work

    # The FDB entry back, the neighbour entry gone: ARP gets no answer and is not flooded.
    out = overlay.kernel(
        h1,
        "entries",
        fdb=[{"mac": "02:42:0a:00:00:21", "vtep": h2.address}],
        delete_neigh=[{"ip": "10.0.0.21"}],
    )
    assert ["10.0.0.21", "02:42:0a:00:00:21"] not in out["neigh"]
    overlay.flush_neighbours(h1, "c11")
    before = overlay.counters()
    assert not overlay.ping(h1, "c11", "10.0.0.21")
    assert "lladdr" not in overlay.neighbour(h1, "c11", "10.0.0.21")
    after = overlay.counters()
    assert after["vxlan-from-h1"] == before["vxlan-from-h1"]
    assert after["arp"] == before["arp"]  # nor in the clear

    # Both entries back: reachable again.  Removal is idempotent.
    overlay.kernel(h1, "entries", **remote_entries(h2))
    assert overlay.reaches(h1, "c11", "10.0.0.21")
    gone = {"mac": "02:42:0a:00:00:99", "vtep": h2.address}
    out = overlay.kernel(h1, "entries", delete_fdb=[gone], delete_neigh=[{"ip": "10.0.0.99"}])
    assert len(out["fdb"]) == 2 and len(out["neigh"]) == 2

    # What the kernel log said is what a person would type: every change, in order.
    log = overlay.log["h1"]
    assert f"ip link add {BRIDGE} " in log[0] and log[0].endswith(" type bridge")
    assert (
        f"ip link add {VXLAN} mtu {MTU} master {BRIDGE} up type vxlan id {VNI} local {h1.address} "
        "dstport 4789 nolearning proxy"
    ) in log
    assert f"bridge fdb replace 02:42:0a:00:00:21 dev {VXLAN} dst {h2.address} self permanent" in log
    assert f"ip neigh replace 10.0.0.21 lladdr 02:42:0a:00:00:21 dev {VXLAN} nud permanent" in log
    assert f"bridge fdb del 02:42:0a:00:00:21 dev {VXLAN} dst {h2.address} self" in log
    assert f"ip neigh del 10.0.0.21 dev {VXLAN}" in log


TCP_SERVER = """
import hashlib, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5001)); s.listen(1)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while n < 1 << 20:
    b = c.recv(65536)
    if not b: break
    h.update(b); n += len(b)
c.sendall(h.hexdigest().encode()); c.close()
"""

TCP_CLIENT = """
import socket
c = socket.create_connection(("10.0.0.21", 5001), timeout=20)
c.sendall(bytes(range(256)) * 4096)
print(c.makefile().read())
"""
