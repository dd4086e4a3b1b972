"""The overlay data plane across real hosts (tests/lab.py: hosts on an underlay, one etcd, a
cnmd in each): containers on different hosts of one overlay network ping each other and
talk TCP by IP over VXLAN; each host has the network's bridge and VXLAN device only while
it has a container on it, and the other hosts' endpoints as static FDB and neighbour
entries, which go when those containers disconnect or are removed; a container joining
later is reachable from the others; a cnmd restart keeps the data plane."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from harness import ROOT_SKIP_REASON, is_root, test_failed, wait_for
from lab import Lab, LabHost

HTTPD = "mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"


@pytest.fixture
def lab(request: pytest.FixtureRequest, busybox_tar) -> Iterator[Lab]:
    """Three hosts, one etcd, cnmd in each with the busybox image."""
    if not is_root():
        pytest.skip(ROOT_SKIP_REASON)
    with Lab(3) as lab:
        for host in lab.hosts:
            host.start_cnmd("--cluster-advertise", "ul0")
            host.import_image(busybox_tar, "busybox")
        yield lab
        if test_failed(request):
            lab.dump()


def eventually(predicate: Callable[[], bool], what: str, timeout: float = 15) -> None:
    assert wait_for(predicate, timeout, interval=0.2), what


def network_id(host: LabHost, name: str) -> str:
    return json.loads(host.cnm("network", "inspect", name).stdout)[0]["Id"]


def endpoint(host: LabHost, container: str, network: str) -> dict[str, Any]:
    info = json.loads(host.cnm("inspect", container).stdout)[0]
    return info["NetworkSettings"]["Networks"][network]


def fdb(host: LabHost, dev: str) -> dict[str, str]:
    """The VXLAN device's remote entries: {MAC: VTEP}."""
    out = host.run(["bridge", "-j", "fdb", "show", "dev", dev]).stdout
    return {e["mac"]: e["dst"] for e in json.loads(out or "[]") if e.get("dst")}


def neigh(host: LabHost, dev: str) -> dict[str, str]:
    """The VXLAN device's permanent neighbours: {IP: MAC}."""
    out = host.run(["ip", "-j", "neigh", "show", "dev", dev, "nud", "permanent"]).stdout
    return {e["dst"]: e["lladdr"] for e in json.loads(out or "[]")}


def links(host: LabHost) -> set[str]:
    return {link["ifname"] for link in host.ip_json("link", "show")}


def run(host: LabHost, name: str, network: str, *cmd: str, alias: str = "") -> dict[str, Any]:
    flags = ["--network-alias", alias] if alias else []
    host.cnm("run", "-d", "--name", name, "--network", network, *flags, "busybox", *(cmd or ("sleep", "1d")))
    return endpoint(host, name, network)


def test_containers_on_two_hosts_talk_over_the_overlay(lab) -> None:
    h1, h2, h3 = lab.hosts
    h1.cnm("network", "create", "-d", "overlay", "--attachable", "ov")
    nid = network_id(h1, "ov")
    br, vx = f"ov-{nid[:12]}", f"vx-{nid[:12]}"
    eventually(lambda: h2.cnm("network", "inspect", "ov", check=False).returncode == 0, "h2 never saw ov")
    assert br not in links(h1)  # nothing in the kernel before a container joins

    web = run(h1, "web", "ov", "sh", "-c", HTTPD, alias="www")
    db = run(h2, "db", "ov")
    # the data plane as the design says: bridge without an address, VXLAN device on it
    detail = h1.ip_json("-d", "link", "show", vx)[0]
    info = detail["linkinfo"]["info_data"]
    assert (info["id"], info["local"], info["port"], info["learning"], info["proxy"]) == (
        4096,
        h1.address,
        4789,
        False,
        True,
    )
    assert detail["mtu"] == 1450 and detail["master"] == br
    assert [a for e in h1.ip_json("-4", "addr", "show", br) for a in e.get("addr_info", [])] == []
    eventually(lambda: fdb(h1, vx) == {db["MacAddress"]: h2.address}, "h1 never programmed db")
    eventually(lambda: neigh(h1, vx) == {db["IPAddress"]: db["MacAddress"]}, "h1 has no neighbour db")
    eventually(lambda: fdb(h2, vx) == {web["MacAddress"]: h1.address}, "h2 never programmed web")

    h2.cnm("exec", "db", "ping", "-c", "2", "-W", "2", web["IPAddress"])
    h1.cnm("exec", "web", "ping", "-c", "2", "-W", "2", db["IPAddress"])
    url = f"http://{web['IPAddress']}:8080/"
    fetched: list[str] = []

    def fetch() -> bool:
        got = h2.cnm("exec", "db", "wget", "-q", "-O", "-", url, check=False)
        fetched.append(f"{got.returncode} {got.stdout!r} {got.stderr!r}")
        return got.returncode == 0

    eventually(fetch, "no HTTP over the overlay")
    # names across hosts: the embedded DNS of h2 answers h1's container name and alias
    for name in ("web", "www"):
        got = h2.cnm("exec", "db", "nslookup", name, "127.0.0.11").stdout
        assert web["IPAddress"] in got, got
    hostname = h1.cnm("inspect", "-f", "{{.Config.Hostname}}", "web").stdout.strip()
    assert fetched[-1].split(" ", 1)[1].startswith(repr(f"hello from {hostname}\n")), fetched[-1]

    # a third host joins later: reachable from the first, and it reaches the second
    late = run(h3, "late", "ov")
    eventually(lambda: late["MacAddress"] in fdb(h1, vx), "h1 never programmed late")
    h1.cnm("exec", "web", "ping", "-c", "1", "-W", "2", late["IPAddress"])
    h3.cnm("exec", "late", "ping", "-c", "1", "-W", "2", db["IPAddress"])
    # cnm network map draws the tunnel: the VXLAN device and the hosts it sends to
    (drawn,) = json.loads(h1.cnm("network", "map", "--format", "json", "ov").stdout)["networks"]
    assert (drawn["driver"], drawn["bridge"]) == ("overlay", br) and drawn["bridge_ifindex"]
    assert [m["container"] for m in drawn["members"]] == ["web"]
    (tunnel,) = drawn["tunnels"]
    assert tunnel["device"] == vx and sorted(tunnel["peers"]) == sorted([h2.address, h3.address]), tunnel
    assert f"vxlan {vx} (ifindex {tunnel['ifindex']}) -> " in h1.cnm("network", "map", "ov").stdout

    # a disconnect on h2 removes db everywhere; h2 has no container on ov left: no devices
    h2.cnm("network", "disconnect", "ov", "db")
    eventually(lambda: db["MacAddress"] not in fdb(h1, vx), "h1 kept db's FDB entry")
    eventually(lambda: db["IPAddress"] not in neigh(h3, vx), "h3 kept db's neighbour entry")
    assert {br, vx}.isdisjoint(links(h2))
    # an rm on h3 does the same
    h3.cnm("rm", "-f", "late")
    eventually(lambda: fdb(h1, vx) == {}, "h1 kept late's FDB entry")
    assert h1.cnm("exec", "web", "ping", "-c", "1", "-W", "1", late["IPAddress"], check=False).returncode != 0


def test_a_restarted_cnmd_keeps_the_data_plane_and_its_records(lab) -> None:
    h1, h2, _ = lab.hosts
    h1.cnm("network", "create", "-d", "overlay", "--attachable", "ov")
    nid = network_id(h1, "ov")
    vx = f"vx-{nid[:12]}"
    eventually(lambda: h2.cnm("network", "inspect", "ov", check=False).returncode == 0, "h2 never saw ov")
    web = run(h1, "web", "ov")
    db = run(h2, "db", "ov")
    eventually(lambda: fdb(h2, vx) == {web["MacAddress"]: h1.address}, "h2 never programmed web")
    h1.stop_cnmd()
    h1.run(["ip", "link", "del", vx])  # lost while cnmd was down
    h1.start_cnmd("--cluster-advertise", "ul0")
    eventually(lambda: fdb(h1, vx) == {db["MacAddress"]: h2.address}, "h1 never programmed db again")
    # its record went with the old lease; the new one carries it, so h2 has web again
    eventually(lambda: fdb(h2, vx) == {web["MacAddress"]: h1.address}, "h2 lost web", timeout=30)
    h2.cnm("exec", "db", "ping", "-c", "2", "-W", "2", web["IPAddress"])


def test_overlay_containers_reach_out_and_are_published_through_cnm_gwbridge(lab) -> None:
    h1, h2, _ = lab.hosts
    h1.cnm("network", "create", "-d", "overlay", "--attachable", "ov")
    eventually(lambda: h2.cnm("network", "inspect", "ov", check=False).returncode == 0, "h2 never saw ov")
    h1.cnm("run", "-d", "--name", "web", "--network", "ov", "-p", "8081:8080", "busybox", "sh", "-c", HTTPD)
    info = json.loads(h1.cnm("inspect", "web").stdout)[0]["NetworkSettings"]["Networks"]
    assert set(info) == {"ov", "cnm_gwbridge"}
    hostname = h1.cnm("inspect", "-f", "{{.Config.Hostname}}", "web").stdout.strip()
    assert info["ov"]["DNSNames"] == ["web", hostname] and info["cnm_gwbridge"]["DNSNames"] is None
    routes = h1.cnm("exec", "web", "ip", "route").stdout
    assert f"default via {info['cnm_gwbridge']['Gateway']} dev eth1" in routes, routes
    # out: the lab's root (outside every host) answers, masqueraded behind h1's address
    h1.cnm("exec", "web", "ping", "-c", "1", "-W", "2", "198.51.100.254")
    # in: another host reaches the published port on h1's underlay address
    got: list[str] = []

    def fetch() -> bool:
        res = h2.run(["wget", "-q", "-O", "-", f"http://{h1.address}:8081/"], check=False)
        got.append(res.stdout)
        return res.returncode == 0

    eventually(fetch, "the published port of an overlay container never answered")
    assert got[-1].startswith("hello from ")


def test_a_dead_hosts_endpoints_vanish_from_the_others_with_its_lease(lab) -> None:
    h1, h2, _ = lab.hosts
    h1.cnm("network", "create", "-d", "overlay", "--attachable", "ov")
    vx = f"vx-{network_id(h1, 'ov')[:12]}"
    eventually(lambda: h2.cnm("network", "inspect", "ov", check=False).returncode == 0, "h2 never saw ov")
    run(h1, "web", "ov")
    db = run(h2, "db", "ov")
    eventually(lambda: fdb(h1, vx) == {db["MacAddress"]: h2.address}, "h1 never programmed db")
    h2.kill_cnmd()  # a crash: nobody deletes db's record, its lease runs out (15 s)
    eventually(lambda: fdb(h1, vx) == {} and neigh(h1, vx) == {}, "h1 kept a dead host's entries", timeout=40)
