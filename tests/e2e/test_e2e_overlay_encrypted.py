"""Encrypted overlay networks across real hosts (tests/lab.py: two hosts on an underlay, one
etcd, a cnmd in each; wireguard-go in each host's private /run): containers on an
``-o encrypted`` network ping each other and talk TCP through each host's WireGuard
interface, and counters on the lab's underlay bridge show no plain VXLAN between the hosts
while they do -- only WireGuard's UDP -- where a plain network's traffic does show as VXLAN;
a killed wireguard-go leaks nothing and is started again; keys rotate while a ping runs; a
restarted cnmd keeps its key and the tunnel."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from harness import ROOT_SKIP_REASON, is_root, test_failed, wait_for
from lab import Lab, LabHost

HTTPD = "mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"
WG_PORT = 51820
TABLE = "crypt_watch"  # the test's own counters, in the lab's root (the underlay's side)


@pytest.fixture
def lab(request: pytest.FixtureRequest, busybox_tar) -> Iterator[Lab]:
    """Two hosts, one etcd (in the lab's root), cnmd in each with the busybox image and the
    extra flags of ``request.param`` (parametrized indirectly), if any."""
    if not is_root():
        pytest.skip(ROOT_SKIP_REASON)
    with Lab(2) as lab:
        for host in lab.hosts:
            host.start_cnmd("--cluster-advertise", "ul0", *getattr(request, "param", ()))
            host.import_image(busybox_tar, "busybox")
        watch_underlay(lab)
        yield lab
        if test_failed(request):
            lab.dump()
            for host in lab.hosts:
                print(f"---- {host.name}: wg show ----")
                print(host.run(["wg", "show"], check=False).stdout)


def watch_underlay(lab: Lab) -> None:
    """Counters on the frames bridged in the lab's root (its one bridge is the underlay's)
    from host to host: VXLAN (UDP 4789) and WireGuard (UDP 51820)."""
    script = f"""
table bridge {TABLE} {{
    counter vxlan {{ }}
    counter wireguard {{ }}
    chain forward {{
        type filter hook forward priority 0; policy accept;
        udp dport 4789 counter name vxlan
        udp dport {WG_PORT} counter name wireguard
    }}
}}
"""
    lab.root.run(["nft", "-f", "-"], input=script)


def counters(lab: Lab, reset: bool = False) -> dict[str, int]:
    """{counter: packets} (``reset``: read and set to zero)."""
    verb = "reset" if reset else "list"
    out = lab.root.run(["nft", "-j", verb, "counters", "table", "bridge", TABLE]).stdout
    found = {}
    for item in json.loads(out)["nftables"]:
        if "counter" in item:
            found[item["counter"]["name"]] = int(item["counter"]["packets"])
    return found


def eventually(predicate, what: str, timeout: float = 15) -> None:
    assert wait_for(predicate, timeout, interval=0.2), what


def endpoint(host: LabHost, container: str, network: str) -> dict[str, Any]:
    info = json.loads(host.cnm("inspect", container).stdout)[0]
    return info["NetworkSettings"]["Networks"][network]


def run(host: LabHost, name: str, network: str, *cmd: str) -> dict[str, Any]:
    host.cnm("run", "-d", "--name", name, "--network", network, "busybox", *(cmd or ("sleep", "1d")))
    return endpoint(host, name, network)


def network_id(host: LabHost, name: str) -> str:
    return json.loads(host.cnm("network", "inspect", name).stdout)[0]["Id"]


def wg_show(host: LabHost, what: str) -> str:
    return host.run(["wg", "show", "cnmwg0", what]).stdout.strip()


def fdb(host: LabHost, dev: str) -> dict[str, str]:
    out = host.run(["bridge", "-j", "fdb", "show", "dev", dev]).stdout
    return {e["mac"]: e["dst"] for e in json.loads(out or "[]") if e.get("dst")}


def fetch(host: LabHost, container: str, url: str) -> bool:
    got = host.cnm("exec", container, "timeout", "5", "wget", "-q", "-O", "-", url, check=False)
    return got.returncode == 0 and got.stdout.startswith("hello from ")


def shared(lab: Lab, name: str, *opts: str) -> None:
    h1, h2 = lab.hosts
    h1.cnm("network", "create", "-d", "overlay", "--attachable", *opts, name)
    eventually(
        lambda: h2.cnm("network", "inspect", name, check=False).returncode == 0, f"h2 never saw {name}"
    )


def input_chains(host: LabHost) -> list[str]:
    """The nftables base chains on the input hook in ``host`` (cnm's or anyone's)."""
    ruleset = json.loads(host.run(["nft", "-j", "list", "ruleset"]).stdout)["nftables"]
    return sorted(o["chain"]["name"] for o in ruleset if o.get("chain", {}).get("hook") == "input")


def guarded_vnis(host: LabHost) -> list[int]:
    out = host.run(["nft", "-j", "list", "set", "ip", "cnm", "encrypted-vnis"]).stdout
    (found,) = [o["set"] for o in json.loads(out)["nftables"] if "set" in o]
    return sorted(e["elem"]["val"] if isinstance(e, dict) else e for e in found.get("elem", []))


def test_an_encrypted_network_crosses_the_underlay_only_inside_wireguard(lab) -> None:
    h1, h2 = lab.hosts
    # no encrypted network here yet: nothing of cnm's on the input path
    assert input_chains(h1) == input_chains(h2) == []
    shared(lab, "sec", "-o", "encrypted")
    vx = f"vx-{network_id(h1, 'sec')[:12]}"
    web = run(h1, "web", "sec", "sh", "-c", HTTPD)
    db = run(h2, "db", "sec")
    # each host: one WireGuard interface with its own tunnel address; the VXLAN device
    # sends from it, with room for both headers, and points at the peer's tunnel address
    t1 = h1.ip_json("-4", "addr", "show", "cnmwg0")[0]["addr_info"][0]["local"]
    t2 = h2.ip_json("-4", "addr", "show", "cnmwg0")[0]["addr_info"][0]["local"]
    assert t1 != t2 and t1.startswith("100.") and t2.startswith("100.")
    detail = h1.ip_json("-d", "link", "show", vx)[0]
    assert (detail["linkinfo"]["info_data"]["local"], detail["mtu"]) == (t1, 1390)
    eventually(lambda: fdb(h1, vx) == {db["MacAddress"]: t2}, "h1 never programmed db behind h2's tunnel")
    eventually(lambda: fdb(h2, vx) == {web["MacAddress"]: t1}, "h2 never programmed web behind h1's tunnel")
    # the peers: the other host's key, at its underlay address, for its tunnel address
    key1 = wg_show(h1, "public-key")
    assert wg_show(h2, "endpoints").split() == [key1, f"{h1.address}:{WG_PORT}"]
    assert wg_show(h2, "allowed-ips").split() == [key1, f"{t1}/32"]
    # the private key stays in h1's data root, readable by root only
    keyfile = h1.data_root / "wireguard.json"
    assert keyfile.stat().st_mode & 0o777 == 0o600
    # plain VXLAN with the network's VNI is dropped unless it comes through the tunnel
    vni = int(detail["linkinfo"]["info_data"]["id"])
    for host in lab.hosts:
        assert input_chains(host) == ["vxlan-input"] and guarded_vnis(host) == [vni], host.name

    counters(lab, reset=True)
    h2.cnm("exec", "db", "ping", "-c", "3", "-W", "2", web["IPAddress"])
    eventually(
        lambda: fetch(h2, "db", f"http://{web['IPAddress']}:8080/"), "no TCP over the encrypted overlay"
    )
    h1.cnm("exec", "web", "ping", "-c", "3", "-W", "2", db["IPAddress"])
    seen = counters(lab)
    assert seen["vxlan"] == 0 and seen["wireguard"] >= 12, seen  # 12: the pings alone, both ways

    # wireguard-go dies on h1: meanwhile nothing of the network leaves in the clear (its
    # VXLAN sends from the tunnel address, then no address of h1), and cnmd starts it again
    # (a fallback route to the tunnel addresses over the underlay, as a default route would
    # be: the kernel still sends nothing from an address the host no longer has)
    h1.run(["ip", "route", "add", "100.64.0.0/10", "via", h2.address, "metric", "1000"])
    counters(lab, reset=True)
    pid = h1.run(["pidof", "wireguard-go"]).stdout.split()
    h1.run(["kill", "-KILL", *pid])
    h1.cnm("exec", "web", "ping", "-c", "3", "-i", "0.2", "-W", "1", db["IPAddress"], check=False)

    def revived() -> bool:
        now = h1.run(["pidof", "wireguard-go"], check=False).stdout.split()
        return bool(now) and now != pid

    eventually(revived, "cnmd never started wireguard-go again")
    eventually(
        lambda: (
            h1.cnm("exec", "web", "ping", "-c", "1", "-W", "1", db["IPAddress"], check=False).returncode == 0
        ),
        "no traffic once wireguard-go was back",
        timeout=30,
    )
    assert wg_show(h1, "public-key") == key1
    assert counters(lab)["vxlan"] == 0

    # the same counters do see a plain network's VXLAN
    shared(lab, "plain")
    pa = run(h1, "pa", "plain")
    run(h2, "pb", "plain")
    counters(lab, reset=True)
    eventually(
        lambda: (
            h2.cnm("exec", "pb", "ping", "-c", "1", "-W", "1", pa["IPAddress"], check=False).returncode == 0
        ),
        "the plain network never answered",
    )
    assert counters(lab)["vxlan"] >= 2

    # the last encrypted endpoint of h2 leaves: its tunnel goes, and h1 drops the peer
    h2.cnm("rm", "-f", "db")
    eventually(
        lambda: "cnmwg0" not in {x["ifname"] for x in h2.ip_json("link", "show")}, "h2 kept its tunnel"
    )
    eventually(lambda: wg_show(h1, "peers") == "", "h1 kept h2 as a peer")
    # and its guard: nothing of it left on h2's input path (the plain network needs none)
    assert input_chains(h2) == [] and guarded_vnis(h2) == []
    assert input_chains(h1) == ["vxlan-input"]


# keys rotate every 8 s, the next one announced 4 s before it is used
@pytest.mark.parametrize("lab", [("--overlay-key-rotation", "8s")], indirect=True)
def test_keys_rotate_under_traffic_and_a_restart_keeps_the_key(lab) -> None:
    h1, h2 = lab.hosts
    shared(lab, "sec", "-o", "encrypted")
    web = run(h1, "web", "sec", "sh", "-c", HTTPD)
    run(h2, "db", "sec")
    eventually(
        lambda: fetch(h2, "db", f"http://{web['IPAddress']}:8080/"), "no TCP over the encrypted overlay"
    )
    first = wg_show(h1, "public-key")
    # 20 s of pings, 5 a second: two rotations of h1's key (and of h2's) happen meanwhile
    ping = h2.cnm("exec", "db", "ping", "-i", "0.2", "-c", "100", "-W", "1", web["IPAddress"], check=False)
    received = int(re.search(r"(\d+) packets received", ping.stdout).group(1))  # type: ignore[union-attr]
    print("across the rotations:", ping.stdout.strip().splitlines()[-2])
    assert wg_show(h1, "public-key") != first
    # a rotation costs at most a few handshakes' worth of pings, never the connection
    assert received >= 90, ping.stdout
    assert fetch(h2, "db", f"http://{web['IPAddress']}:8080/")

    # a restart keeps the key (rotation off for it: an interval may have passed meanwhile)
    # and adopts the running device
    h1.stop_cnmd()
    key1 = wg_show(h1, "public-key")
    pid = h1.run(["pidof", "wireguard-go"]).stdout.split()
    h1.start_cnmd("--cluster-advertise", "ul0", "--overlay-key-rotation", "0")
    assert wg_show(h1, "public-key") == key1
    assert h1.run(["pidof", "wireguard-go"]).stdout.split() == pid
    eventually(lambda: key1 in wg_show(h2, "peers").split(), "h2 never took h1's key back")
    eventually(lambda: fetch(h2, "db", f"http://{web['IPAddress']}:8080/"), "no TCP after the restart")


def guard_rules(host: LabHost) -> tuple[list[str], list[str]]:
    """(INPUT's jumps to CNM-VXLAN, CNM-VXLAN's rules) of the iptables backend."""
    jumps = [r for r in host.run(["iptables", "-w", "-S", "INPUT"]).stdout.splitlines() if "CNM-VXLAN" in r]
    listed = host.run(["iptables", "-w", "-S", "CNM-VXLAN"], check=False).stdout.splitlines()
    return jumps, [r for r in listed if r.startswith("-A ")]


@pytest.mark.parametrize("lab", [("--firewall-backend", "iptables")], indirect=True)
def test_the_iptables_backend_guards_the_encrypted_vni_while_it_is_here(lab) -> None:
    h1, h2 = lab.hosts
    assert guard_rules(h1) == guard_rules(h2) == ([], [])  # nothing on the input path yet
    shared(lab, "sec", "-o", "encrypted")
    vx = f"vx-{network_id(h1, 'sec')[:12]}"
    web = run(h1, "web", "sec", "sh", "-c", HTTPD)
    run(h2, "db", "sec")
    vni = int(h1.ip_json("-d", "link", "show", vx)[0]["linkinfo"]["info_data"]["id"])
    for host in lab.hosts:
        jumps, rules = guard_rules(host)
        assert len(jumps) == 1 and "--dport 4789" in jumps[0] and "! -i cnmwg0" in jumps[0], jumps
        assert len(rules) == 1 and f"=0x{vni:x}" in rules[0] and rules[0].endswith("-j DROP"), rules
    eventually(
        lambda: fetch(h2, "db", f"http://{web['IPAddress']}:8080/"), "no TCP over the encrypted overlay"
    )
    counters(lab, reset=True)
    h2.cnm("exec", "db", "ping", "-c", "3", "-W", "2", web["IPAddress"])
    assert counters(lab)["vxlan"] == 0
    # h2's last encrypted endpoint leaves: its guard goes with it, h1's stays
    h2.cnm("rm", "-f", "db")
    eventually(lambda: guard_rules(h2) == ([], []), "h2 kept its VXLAN guard")
    assert len(guard_rules(h1)[1]) == 1
