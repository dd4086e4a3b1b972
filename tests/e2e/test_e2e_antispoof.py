"""Anti-spoofing on the bridge: a container with NET_RAW (runc's default set, as Docker's)
tries to poison its neighbours' ARP caches and to send from a neighbour's address, and
fails; normal traffic still flows; a container that changes its MAC is cut off; the same
attack succeeds with ``--anti-spoofing=false``, so the test can tell.  The guard follows
endpoints (disconnect, rm, restart) and is put back after an outside flush, whichever
firewall backend is chosen.

The crafted frames are sent by ``rawframes.py`` (AF_PACKET) run with the host's python in
the attacker's network namespace: the busybox image has no python.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_util import inspect, pings, run_sleeper, sandbox_key
from harness import TestHost, wait_for

HERE = Path(__file__).resolve().parent
RAW = HERE / "rawframes.py"
NET = "spoofnet"
UDP_PORT = 9999
LOCKTIME = 1.2  # seconds: a neighbour entry younger than locktime (1 s) ignores unsolicited ARP


@dataclass(frozen=True)
class Ctr:
    name: str
    ip: str
    mac: str
    key: str  # sandbox (netns) path


def container(host: TestHost, name: str) -> Ctr:
    info = inspect(host, name)[0]["NetworkSettings"]["Networks"][NET]
    return Ctr(name, info["IPAddress"], info["MacAddress"], sandbox_key(host, name))


def send(host: TestHost, who: Ctr, frames: list[dict]) -> None:
    host.netns_exec(
        who.key, [sys.executable, str(RAW), "send", "--iface", "eth0", "--frames", json.dumps(frames)]
    )


class Sniffer:
    """``rawframes.py sniff`` on an interface of a namespace (None: the test host's own)."""

    def __init__(self, host: TestHost, key: str | None, iface: str, markers: list[str], seconds: float = 3.0):
        argv = [sys.executable, str(RAW), "sniff", "--iface", iface, "--seconds", str(seconds)]
        argv += [a for m in markers for a in ("--marker", m)]
        if key is not None:
            argv = ["nsenter", f"--net={key}", "--", *argv]
        self.proc = host.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline().strip()
        assert ready == "ready", self.proc.stderr.read() if self.proc.stderr else ready

    def counts(self) -> dict[str, int]:
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])


def neighbour(host: TestHost, who: Ctr | None, address: str, dev: str = "eth0") -> str | None:
    """The MAC ``who``'s (or the test host's) ARP cache holds for ``address``."""
    entries = host.ip_json("neigh", "show", "dev", dev, netns=who.key if who else None)
    return next((e.get("lladdr") for e in entries if e.get("dst") == address), None)


def guard_elements(host: TestHost) -> tuple[set[str], set[tuple[str, str, str]]] | None:
    """(ports, (port, mac, address)) in cnm's ``bridge cnm`` table; None when it is absent."""
    proc = host.run(["nft", "-j", "list", "table", "bridge", "cnm"], check=False)
    if proc.returncode:
        return None
    ports: set[str] = set()
    addrs: set[tuple[str, str, str]] = set()
    for obj in json.loads(proc.stdout)["nftables"]:
        s = obj.get("set")
        if not s:
            continue
        for item in s.get("elem", []):
            val = item["elem"]["val"] if isinstance(item, dict) and "elem" in item else item
            if s["name"] == "ports":
                ports.add(val)
            elif s["name"] == "addrs":
                addrs.add(tuple(val["concat"]))
    return ports, addrs


def host_port(host: TestHost, name: str) -> str:
    """The host end of ``name``'s veth on NET (the bridge port)."""
    cid = inspect(host, name)[0]["Id"]
    links = [link for link in host.ip_json("link", "show") if link.get("ifalias", "").startswith("cnm:")]
    mine = {json.loads(host.cnm("network", "inspect", NET).stdout)[0]["Containers"][cid]["EndpointID"]}
    return next(
        link["ifname"] for link in links if link["ifalias"].split(" ", 1)[0].rpartition(":")[2] in mine
    )


def bridge_name(host: TestHost) -> str:
    net_id = json.loads(host.cnm("network", "inspect", NET).stdout)[0]["Id"]
    return f"br-{net_id[:12]}"


# -- the attacks ---------------------------------------------------------------------------------


def poison_arp(host: TestHost, attacker: Ctr, victim: Ctr, observer: Ctr, gateway_mac: str) -> None:
    """``attacker`` claims ``victim``'s address in every way ARP allows: a reply to the
    observer, a gratuitous request to all, the same from the victim's MAC, and a reply to
    the host (the gateway)."""
    claim = dict(kind="arp", sender_ip=victim.ip, repeat=3)
    send(
        host,
        attacker,
        [
            {
                **claim,
                "src": attacker.mac,
                "dst": observer.mac,
                "op": 2,
                "sender_mac": attacker.mac,
                "target_mac": observer.mac,
                "target_ip": observer.ip,
            },
            {
                **claim,
                "src": attacker.mac,
                "dst": "ff:ff:ff:ff:ff:ff",
                "op": 1,
                "sender_mac": attacker.mac,
                "target_mac": "00:00:00:00:00:00",
                "target_ip": victim.ip,
            },
            # frame from the victim's MAC, ARP sender the attacker's: caches would take the latter
            {
                **claim,
                "src": victim.mac,
                "dst": observer.mac,
                "op": 2,
                "sender_mac": attacker.mac,
                "target_mac": observer.mac,
                "target_ip": observer.ip,
            },
            {
                **claim,
                "src": attacker.mac,
                "dst": gateway_mac,
                "op": 2,
                "sender_mac": attacker.mac,
                "target_mac": gateway_mac,
                "target_ip": observer.ip,
            },
        ],
    )


def spoof_udp(
    host: TestHost, attacker: Ctr, victim: Ctr, to: Ctr | None, to_ip: str, to_mac: str
) -> dict[str, str]:
    """UDP to ``to_ip`` that claims to come from ``victim`` (with the attacker's MAC, with the
    victim's MAC, 802.1Q-tagged from the attacker's own address), plus the attacker's own
    honest packet; returns marker -> what it was."""
    frames = {
        "spoof-src-ip": dict(src=attacker.mac, src_ip=victim.ip),
        "spoof-src-mac": dict(src=victim.mac, src_ip=victim.ip),
        "spoof-vlan": dict(src=attacker.mac, src_ip=attacker.ip, vlan=5),
        "honest": dict(src=attacker.mac, src_ip=attacker.ip),
    }
    send(
        host,
        attacker,
        [
            {
                "kind": "udp",
                "dst": to_mac,
                "dst_ip": to_ip,
                "dport": UDP_PORT,
                "data": marker,
                "repeat": 3,
                **f,
            }
            for marker, f in frames.items()
        ],
    )
    return {m: m for m in frames}


def attack(host: TestHost, a: Ctr, b: Ctr, c: Ctr, gateway_ip: str, gateway_mac: str, bridge: str) -> dict:
    """A impersonates B towards C and the host; what C's and the host's caches hold for B
    afterwards, and which crafted packets C and the host received."""
    # fresh, confirmed entries for B on C and on the host, older than locktime
    assert pings(host, c.name, b.ip)
    assert host.run(["busybox", "ping", "-c", "1", "-W", "2", b.ip], check=False).returncode == 0
    time.sleep(LOCKTIME)
    poison_arp(host, a, b, c, gateway_mac)
    time.sleep(0.3)
    caches = {"c": neighbour(host, c, b.ip), "host": neighbour(host, None, b.ip, dev=bridge)}
    markers = ["spoof-src-ip", "spoof-src-mac", "spoof-vlan", "honest"]
    at_c = Sniffer(host, c.key, "eth0", markers)
    at_host = Sniffer(host, None, bridge, markers)
    spoof_udp(host, a, b, c, c.ip, c.mac)
    spoof_udp(host, a, b, None, gateway_ip, gateway_mac)
    return {"caches": caches, "at_c": at_c.counts(), "at_host": at_host.counts()}


def setup_three(host: TestHost) -> tuple[Ctr, Ctr, Ctr, str, str, str]:
    host.cnm("network", "create", NET)
    for name in ("alice", "bob", "carol"):
        run_sleeper(host, name, "--network", NET)
    a, b, c = (container(host, n) for n in ("alice", "bob", "carol"))
    bridge = bridge_name(host)
    gateway_ip = json.loads(host.cnm("network", "inspect", NET).stdout)[0]["IPAM"]["Config"][0]["Gateway"]
    gateway_mac = host.ip_json("link", "show", "dev", bridge)[0]["address"]
    return a, b, c, gateway_ip, gateway_mac, bridge


def has_net_raw(host: TestHost, name: str) -> bool:
    status = host.cnm("exec", name, "cat", "/proc/self/status").stdout
    eff = int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")), 16)
    return bool(eff & (1 << 13))  # CAP_NET_RAW


# -- tests ---------------------------------------------------------------------------------------


def test_a_container_cannot_impersonate_a_neighbour(fresh_cnmhost: TestHost) -> None:
    host = fresh_cnmhost
    a, b, c, gateway_ip, gateway_mac, bridge = setup_three(host)
    assert has_net_raw(host, "alice"), "containers are expected to have NET_RAW, as on Docker"

    guarded = attack(host, a, b, c, gateway_ip, gateway_mac, bridge)
    print("guarded:", guarded)
    assert guarded["caches"] == {"c": b.mac, "host": b.mac}, "ARP caches poisoned"
    for where in ("at_c", "at_host"):
        assert guarded[where]["honest"] == 3, f"{where}: the attacker's honest packets must arrive"
        assert guarded[where]["spoof-src-ip"] == 0, f"{where}: a packet from B's address arrived"
        assert guarded[where]["spoof-src-mac"] == 0, f"{where}: a packet from B's MAC arrived"
        assert guarded[where]["spoof-vlan"] == 0, f"{where}: a VLAN-tagged frame arrived"
    # the bridge did not learn B's MAC on A's port either
    fdb = json.loads(host.run(["bridge", "-j", "fdb", "show", "br", bridge]).stdout)
    ports = {e["ifname"] for e in fdb if e.get("mac") == b.mac}
    assert ports == {host_port(host, "bob")}, fdb

    # normal traffic: ping and TCP, both ways
    assert pings(host, "alice", b.ip) and pings(host, "bob", a.ip) and pings(host, "alice", gateway_ip)
    host.cnm("exec", "-d", "bob", "httpd", "-p", "8080", "-h", "/etc")
    assert wait_for(
        lambda: (
            host.cnm(
                "exec", "alice", "wget", "-q", "-O", "-", f"http://{b.ip}:8080/hostname", check=False
            ).returncode
            == 0
        ),
        timeout=10,
    )

    # A changes its MAC (as root in its netns: what NET_ADMIN would allow): cut off
    host.netns_exec(a.key, ["ip", "link", "set", "eth0", "address", "02:00:00:00:00:99"])
    host.netns_exec(a.key, ["ip", "neigh", "flush", "dev", "eth0"])
    assert not pings(host, "alice", b.ip) and not pings(host, "alice", gateway_ip)
    host.netns_exec(a.key, ["ip", "link", "set", "eth0", "address", a.mac])
    assert pings(host, "alice", b.ip)

    # control: without the guard the same attack works, so the checks above can fail
    host.kill_daemon()
    host.start_daemon("--anti-spoofing=false")
    assert guard_elements(host) is None, "--anti-spoofing=false must remove the guard"
    open_ = attack(host, a, b, c, gateway_ip, gateway_mac, bridge)
    print("unguarded:", open_)
    assert open_["caches"]["c"] == a.mac, "control: the attack should poison C's cache without the guard"
    assert open_["at_c"]["spoof-src-ip"] == 3

    # back on: restore guards exactly the live endpoints again
    host.kill_daemon()
    host.start_daemon()
    ports, addrs = guard_elements(host) or (set(), set())
    expected = {host_port(host, x.name): x for x in (a, b, c)}
    assert ports == set(expected)
    assert addrs == {(p, x.mac, x.ip) for p, x in expected.items()}


def test_the_guard_follows_endpoints_and_comes_back_after_a_flush(fresh_cnmhost: TestHost) -> None:
    host = fresh_cnmhost
    host.cnm("network", "create", NET)
    host.cnm("network", "create", "other")
    run_sleeper(host, "alice", "--network", NET)
    run_sleeper(host, "bob", "--network", NET)
    a, b = container(host, "alice"), container(host, "bob")
    port_a, port_b = host_port(host, "alice"), host_port(host, "bob")
    assert guard_elements(host) == ({port_a, port_b}, {(port_a, a.mac, a.ip), (port_b, b.mac, b.ip)})

    # someone flushes the whole ruleset: the guard is back within a few seconds
    host.run(["nft", "flush", "ruleset"])
    assert wait_for(
        lambda: guard_elements(host) == ({port_a, port_b}, {(port_a, a.mac, a.ip), (port_b, b.mac, b.ip)}),
        timeout=10,
    )

    # connect adds a port, disconnect and rm take theirs away
    host.cnm("network", "connect", "other", "alice")
    ports, addrs = guard_elements(host) or (set(), set())
    assert len(ports) == 3 and len(addrs) == 3
    host.cnm("network", "disconnect", "other", "alice")
    assert guard_elements(host) == ({port_a, port_b}, {(port_a, a.mac, a.ip), (port_b, b.mac, b.ip)})
    host.cnm("rm", "-f", "bob")
    assert guard_elements(host) == ({port_a}, {(port_a, a.mac, a.ip)})
    host.cnm("rm", "-f", "alice")
    assert guard_elements(host) == (set(), set())
    host.cnm("network", "rm", NET, "other")
    assert guard_elements(host) == (set(), set())
    # every change was logged as the command a person would type
    log = host.daemon_log.read_text(errors="replace")
    assert f'add element bridge cnm ports {{ "{port_a}" comment "cnm:' in log
    assert f'delete element bridge cnm ports {{ "{port_b}" }}' in log


@pytest.mark.daemon_flags("--firewall-backend", "iptables")
def test_the_iptables_backend_gets_the_guard_too(fresh_cnmhost: TestHost) -> None:
    host = fresh_cnmhost
    a, b, c, gateway_ip, gateway_mac, bridge = setup_three(host)
    ports, _ = guard_elements(host) or (set(), set())
    assert ports == {host_port(host, n) for n in ("alice", "bob", "carol")}
    result = attack(host, a, b, c, gateway_ip, gateway_mac, bridge)
    assert result["caches"] == {"c": b.mac, "host": b.mac}
    assert result["at_c"]["spoof-src-ip"] == 0 and result["at_c"]["honest"] == 3
