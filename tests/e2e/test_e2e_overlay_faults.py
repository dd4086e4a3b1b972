"""The overlay under faults, in the lab (tests/lab.py: hosts on an underlay, a 3-member etcd
on h1-h3, a cnmd in each): etcd unreachable (every member stopped, or one host cut off etcd
only), a host cut off the underlay and plugged back, etcd members restarted one by one
while containers talk; five hosts on one overlay; and the small rules of global networks
(``Peers``, ``network rm`` with endpoints on another host, the reserved ``cnm_gwbridge``).

Traffic between existing endpoints never needs etcd (the kernel's FDB and neighbour
entries carry it); changes do, and fail clearly while it is away; a host catches up from
its watch when it is back."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from harness import ROOT_SKIP_REASON, is_root, test_failed, venv_bin, wait_for
from lab import Lab, LabHost

HTTPD = "mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"
LEASE_TTL = 15  # the node lease (cnm.daemon.cluster.PRESENCE_TTL)

# A UDP echo server and client run with the host's python in a container's network
# namespace (busybox has no ``nc -u``): the datagrams still cross the overlay.
UDP_ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9999))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"""
UDP_ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
for _ in range(5):
    s.sendto(sys.argv[2].encode(), (sys.argv[1], 9999))
    try:
        print(s.recv(2048).decode())
        break
    except TimeoutError:
        continue
else:
    sys.exit("no UDP answer from " + sys.argv[1])
"""


def make_lab(request: pytest.FixtureRequest, busybox_tar: Any, size: int) -> Iterator[Lab]:
    if not is_root():
        pytest.skip(ROOT_SKIP_REASON)
    with Lab(size) as lab:
        for host in lab.hosts:
            host.start_cnmd("--cluster-advertise", "ul0")
            host.import_image(busybox_tar, "busybox")
        yield lab
        if test_failed(request):
            lab.dump()


@pytest.fixture
def lab(request: pytest.FixtureRequest, busybox_tar) -> Iterator[Lab]:
    """Three hosts, a 3-member etcd on them, cnmd in each with the busybox image."""
    yield from make_lab(request, busybox_tar, 3)


@pytest.fixture
def lab5(request: pytest.FixtureRequest, busybox_tar) -> Iterator[Lab]:
    yield from make_lab(request, busybox_tar, 5)


def eventually(predicate: Callable[[], bool], what: str, timeout: float = 15) -> None:
    assert wait_for(predicate, timeout, interval=0.2), what


def network_id(host: LabHost, name: str) -> str:
    return json.loads(host.cnm("network", "inspect", name).stdout)[0]["Id"]


def sees(host: LabHost, network: str) -> bool:
    return host.cnm("network", "inspect", network, check=False).returncode == 0


def endpoint(host: LabHost, container: str, network: str) -> dict[str, Any]:
    info = json.loads(host.cnm("inspect", container).stdout)[0]
    return info["NetworkSettings"]["Networks"][network]


def networks_of(host: LabHost, container: str) -> set[str]:
    return set(json.loads(host.cnm("inspect", container).stdout)[0]["NetworkSettings"]["Networks"])


def fdb(host: LabHost, dev: str) -> dict[str, str]:
    """The VXLAN device's remote entries: {MAC: VTEP} ({} without the device)."""
    got = host.run(["bridge", "-j", "fdb", "show", "dev", dev], check=False)
    return {e["mac"]: e["dst"] for e in json.loads(got.stdout or "[]") if e.get("dst")}


def neigh(host: LabHost, dev: str) -> dict[str, str]:
    """The VXLAN device's permanent neighbours: {IP: MAC}."""
    got = host.run(["ip", "-j", "neigh", "show", "dev", dev, "nud", "permanent"], check=False)
    return {e["dst"]: e["lladdr"] for e in json.loads(got.stdout or "[]")}


def overlay_links(host: LabHost) -> set[str]:
    return {
        link["ifname"] for link in host.ip_json("link", "show") if link["ifname"].startswith(("ov-", "vx-"))
    }


def run(host: LabHost, name: str, network: str, *cmd: str) -> dict[str, Any]:
    host.cnm("run", "-d", "--name", name, "--network", network, "busybox", *(cmd or ("sleep", "1d")))
    return endpoint(host, name, network)


def ping(host: LabHost, container: str, target: str, count: int = 1) -> None:
    host.cnm("exec", container, "ping", "-c", str(count), "-W", "2", target)


def etcd_keys(lab: Lab, prefix: str) -> list[str]:
    out = lab.etcdctl("get", "--prefix", "--keys-only", f"/cnm/v2/{prefix}").stdout
    return sorted(line[len("/cnm/v2/") :] for line in out.split() if line)


def cluster_records(lab: Lab) -> list[str]:
    """The keys of what overlay changes write beside endpoints: networks, names, VNIs, IPAM."""
    return [k for p in ("network/", "globalname/", "vni/", "ipam/") for k in etcd_keys(lab, p)]


def pid_of(host: LabHost, container: str) -> str:
    return host.cnm("inspect", "-f", "{{.State.Pid}}", container).stdout.strip()


def udp_echo(host: LabHost, container: str) -> subprocess.Popen:
    """A UDP echo server on port 9999 in ``container``'s network namespace."""
    return host.spawn(
        ["nsenter", "-t", pid_of(host, container), "-n", "python3", "-c", UDP_ECHO],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def udp_ask(host: LabHost, container: str, address: str, text: str) -> str:
    argv = ["nsenter", "-t", pid_of(host, container), "-n", "python3", "-c", UDP_ASK, address, text]
    return host.run(argv, timeout=30).stdout.strip()


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(timeout=10)


def refused(got: subprocess.CompletedProcess, *words: str) -> str:
    """The error of a command that had to fail, checked to name every one of ``words``."""
    assert got.returncode != 0, got.stdout
    for word in words:
        assert word in got.stderr, got.stderr
    return got.stderr


# -- etcd unreachable ------------------------------------------------------------------------


def test_with_every_etcd_member_stopped_only_overlay_changes_fail(lab) -> None:
    h1, h2, h3 = lab.hosts
    h1.cnm("network", "create", "-d", "overlay", "ov")
    vx = f"vx-{network_id(h1, 'ov')[:12]}"
    eventually(lambda: sees(h2, "ov") and sees(h3, "ov"), "ov never reached h2 and h3")
    for host in (h1, h3):
        host.cnm("network", "create", "br")  # each its own local network
    h1.cnm("network", "create", "spare")
    h2.cnm("network", "create", "-d", "overlay", "idle")
    eventually(lambda: sees(h1, "idle"), "idle never reached h1")
    a = run(h1, "ca", "ov")
    b = run(h2, "cb", "ov")
    eventually(lambda: fdb(h1, vx) == {b["MacAddress"]: h2.address}, "h1 never programmed b")
    eventually(lambda: fdb(h2, vx) == {a["MacAddress"]: h1.address}, "h2 never programmed a")
    h3.cnm("run", "-d", "--name", "cc", "--network", "br", "busybox", "sleep", "1d")

    before = cluster_records(lab)
    assert "localname/spare/h1" in etcd_keys(lab, "localname/")
    for member in range(3):
        lab.etcd_stop(member)

    # traffic between existing endpoints: the kernel's entries carry it
    ping(h1, "ca", b["IPAddress"], 3)
    ping(h2, "cb", a["IPAddress"], 3)
    assert b["IPAddress"] in h1.cnm("exec", "ca", "nslookup", "cb", "127.0.0.11").stdout  # names too
    # local networks keep working: run, connect, names, rm
    h1.cnm("run", "-d", "--name", "l1", "--network", "br", "busybox", "sleep", "1d")
    h1.cnm("run", "-d", "--name", "l2", "--network", "br", "busybox", "sleep", "1d")
    ping(h1, "l2", "l1")
    h1.cnm("network", "connect", "br", "ca")
    ping(h1, "l1", "ca")
    h1.cnm("rm", "-f", "l1", "l2")
    h1.cnm("network", "disconnect", "br", "ca")
    h1.cnm("network", "rm", "spare")
    # a new local name needs the cluster (it must not be a global network's): refused clearly
    refused(h1.cnm("network", "create", "br2", check=False, timeout=120), "etcd")
    assert not sees(h1, "br2")
    # what the mirrors know is still shown
    assert {"ov", "idle", "br", "cnm_gwbridge"} <= set(
        h1.cnm("network", "ls", "--format", "{{.Name}}").stdout.split()
    )
    assert (
        len(json.loads(h1.cnm("network", "inspect", "ov").stdout)[0]["Containers"]) == 2
    )  # one on each of two hosts
    # overlay changes fail, naming etcd, and leave nothing behind
    refused(h1.cnm("network", "rm", "idle", check=False, timeout=120), "etcd")
    assert sees(h1, "idle")
    refused(h1.cnm("network", "create", "-d", "overlay", "ov2", check=False, timeout=120), "etcd")
    assert not sees(h1, "ov2")
    refused(h3.cnm("network", "connect", "ov", "cc", check=False, timeout=120), "etcd")
    assert networks_of(h3, "cc") == {"br"}
    assert overlay_links(h3) == set()
    refused(
        h2.cnm(
            "run", "-d", "--name", "cd", "--network", "ov", "busybox", "sleep", "1d", check=False, timeout=120
        ),
        "etcd",
    )
    # (as docker run: the container was made, its start failed; it runs nowhere)
    assert h2.cnm("inspect", "-f", "{{.State.Running}}", "cd").stdout.strip() == "false"
    h2.cnm("rm", "cd")
    assert networks_of(h2, "cb") == {"ov", "cnm_gwbridge"}

    lab.etcd_start_all()
    # no half-made record, name, VNI, pool or address claim of the refused changes
    assert cluster_records(lab) == before
    assert etcd_keys(lab, "endpoint/") == sorted(f"endpoint/{e['EndpointID']}" for e in (a, b))
    # the leases ran out while etcd was away (revoked here, as if expired): every node
    # announces itself again and puts its endpoints back on the new lease
    for lease in re.findall(r"\b([0-9a-f]{8,})\b", lab.etcdctl("lease", "list").stdout):
        lab.etcdctl("lease", "revoke", lease, check=False)
    eventually(
        lambda: etcd_keys(lab, "node/") == ["node/h1", "node/h2", "node/h3"], "the nodes never came back", 30
    )
    eventually(
        lambda: etcd_keys(lab, "endpoint/") == sorted(f"endpoint/{e['EndpointID']}" for e in (a, b)),
        "the endpoint records never came back",
        30,
    )
    # the name of the local network removed meanwhile is free again in the cluster
    eventually(lambda: "localname/spare/h1" not in etcd_keys(lab, "localname/"), "spare is still h1's", 30)
    h2.cnm("network", "create", "-d", "overlay", "spare")
    # changes work again
    h3.cnm("network", "connect", "ov", "cc")
    c = endpoint(h3, "cc", "ov")
    eventually(lambda: c["MacAddress"] in fdb(h1, vx), "h1 never programmed c")
    ping(h1, "ca", c["IPAddress"])
    ping(h3, "cc", b["IPAddress"])


def test_a_host_cut_off_etcd_catches_up_from_its_watch(lab) -> None:
    h1, h2, h3 = lab.hosts
    h1.cnm("network", "create", "-d", "overlay", "ov")
    vx = f"vx-{network_id(h1, 'ov')[:12]}"
    eventually(lambda: sees(h2, "ov") and sees(h3, "ov"), "ov never reached h2 and h3")
    a = run(h1, "ca", "ov")
    b = run(h2, "cb", "ov")
    c = run(h3, "cc", "ov")
    eventually(
        lambda: fdb(h3, vx) == {a["MacAddress"]: h1.address, b["MacAddress"]: h2.address},
        "h3 never programmed a and b",
    )

    lab.cut_etcd(h3)
    try:
        ping(h3, "cc", a["IPAddress"], 2)
        refused(h3.cnm("network", "create", "-d", "overlay", "ov2", check=False, timeout=120), "etcd")
        # meanwhile elsewhere: one endpoint comes, one goes
        x = run(h1, "cx", "ov")
        h2.cnm("rm", "-f", "cb")
    finally:
        lab.restore_etcd(h3)
    eventually(
        lambda: fdb(h3, vx) == {a["MacAddress"]: h1.address, x["MacAddress"]: h1.address},
        "h3 never caught up",
        30,
    )
    eventually(
        lambda: neigh(h3, vx) == {a["IPAddress"]: a["MacAddress"], x["IPAddress"]: x["MacAddress"]},
        "h3's neighbours",
    )
    ping(h3, "cc", x["IPAddress"])
    # its own endpoint is (again) in etcd and programmed elsewhere
    eventually(lambda: f"endpoint/{c['EndpointID']}" in etcd_keys(lab, "endpoint/"), "c's record is gone", 30)
    eventually(lambda: c["MacAddress"] in fdb(h1, vx), "h1 lost c", 30)
    ping(h1, "cx", c["IPAddress"])


# -- the underlay -------------------------------------------------------------------------


def test_a_host_cut_off_the_underlay_comes_back_and_reconciles(lab) -> None:
    h1, h2, h3 = lab.hosts
    h1.cnm("network", "create", "-d", "overlay", "ov")
    vx = f"vx-{network_id(h1, 'ov')[:12]}"
    eventually(lambda: sees(h2, "ov") and sees(h3, "ov"), "ov never reached h2 and h3")
    a = run(h1, "ca", "ov")
    b = run(h2, "cb", "ov")
    c = run(h3, "cc", "ov")
    eventually(
        lambda: c["MacAddress"] in fdb(h1, vx) and c["MacAddress"] in fdb(h2, vx), "c never programmed"
    )

    lab.cut(h3)
    # its lease runs out: the others drop its endpoint (and its node)
    eventually(
        lambda: c["MacAddress"] not in fdb(h1, vx) and c["MacAddress"] not in fdb(h2, vx),
        "h1 and h2 kept a cut host's endpoint",
        LEASE_TTL + 30,
    )
    assert c["IPAddress"] not in neigh(h1, vx)
    assert "node/h3" not in etcd_keys(lab, "node/")
    # meanwhile: an endpoint comes on h1, one goes on h2
    x = run(h1, "cx", "ov")
    h2.cnm("rm", "-f", "cb")

    lab.restore(h3)
    # it announces itself again, puts its endpoint back, and its kernel follows etcd
    eventually(lambda: "node/h3" in etcd_keys(lab, "node/"), "h3 never announced itself again", 45)
    eventually(lambda: fdb(h1, vx).get(c["MacAddress"]) == h3.address, "h1 never got c back", 45)
    want = {a["MacAddress"]: h1.address, x["MacAddress"]: h1.address}
    eventually(lambda: fdb(h3, vx) == want, f"h3's FDB never became {want}: {fdb(h3, vx)}", 45)
    assert neigh(h3, vx) == {a["IPAddress"]: a["MacAddress"], x["IPAddress"]: x["MacAddress"]}
    assert b["MacAddress"] not in fdb(h1, vx)
    ping(h3, "cc", x["IPAddress"])
    ping(h1, "cx", c["IPAddress"])
    ping(h1, "ca", c["IPAddress"])


def test_a_network_removed_while_a_host_was_cut_off_goes_there_with_its_last_endpoint(lab) -> None:
    h1, h2, h3 = lab.hosts
    h1.cnm("network", "create", "-d", "overlay", "ov")
    nid = network_id(h1, "ov")
    vx = f"vx-{nid[:12]}"
    eventually(lambda: sees(h3, "ov"), "ov never reached h3")
    run(h1, "ca", "ov")
    c = run(h3, "cc", "ov")
    eventually(lambda: c["MacAddress"] in fdb(h1, vx), "h1 never programmed c")
    lab.cut(h3)
    eventually(lambda: c["MacAddress"] not in fdb(h1, vx), "h1 kept a cut host's endpoint", LEASE_TTL + 30)
    # nobody else has an endpoint on it now: the rm is allowed
    h1.cnm("rm", "-f", "ca")
    h1.cnm("network", "rm", "ov")
    lab.restore(h3)
    eventually(lambda: not sees(h3, "ov"), "h3 still has ov", 45)
    eventually(lambda: "node/h3" in etcd_keys(lab, "node/"), "h3 never announced itself again", 45)
    # its endpoint is not put back on a network that is gone
    assert [k for k in etcd_keys(lab, "") if nid in k] == []
    assert networks_of(h3, "cc") <= {"ov", "cnm_gwbridge"}
    h3.cnm("rm", "-f", "cc")
    eventually(lambda: overlay_links(h3) == set(), "h3 kept the devices of a removed network")
    assert [k for k in etcd_keys(lab, "") if nid in k] == []
    assert h3.cnm("ps", "-aq").stdout.strip() == ""


# -- etcd members restarted -----------------------------------------------------------------


def test_etcd_members_restarted_one_by_one_lose_nothing(lab) -> None:
    h1, h2, h3 = lab.hosts
    h1.cnm("network", "create", "-d", "overlay", "ov")
    vx = f"vx-{network_id(h1, 'ov')[:12]}"
    eventually(lambda: sees(h2, "ov") and sees(h3, "ov"), "ov never reached h2 and h3")
    a = run(h1, "ca", "ov")
    b = run(h2, "cb", "ov")
    eventually(lambda: fdb(h1, vx) == {b["MacAddress"]: h2.address}, "h1 never programmed b")
    # a container talks to another host the whole time (5 pings a second)
    # until told to stop, in batches of 5 pings (each batch prints its count)
    loop = f"while [ ! -e /stop ]; do ping -c 5 -i 0.2 -W 1 {b['IPAddress']}; done"
    pinger = h1.spawn(
        [venv_bin("cnm"), "-H", f"unix://{h1.socket_path}", "exec", "ca", "sh", "-c", loop],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert pinger.stdout is not None
    first = pinger.stdout.readline()  # "PING …": it runs; now the restarts
    try:
        c: dict[str, Any] = {}
        for member in range(3):
            if member == 0:
                lab.etcd_kill(member)  # a crash
            else:
                lab.etcd_stop(member)
            if member == 1:  # a change while a member is down: the others have a quorum
                c = run(h3, "cc", "ov")
            lab.etcd_start(member)
        # the watches resumed: a change after the restarts reaches every host
        d = run(h2, "cd", "ov")
        want = {b["MacAddress"]: h2.address, c["MacAddress"]: h3.address, d["MacAddress"]: h2.address}
        eventually(lambda: fdb(h1, vx) == want, f"h1's FDB never became {want}: {fdb(h1, vx)}", 30)
        eventually(
            lambda: a["MacAddress"] in fdb(h3, vx) and d["MacAddress"] in fdb(h3, vx), "h3 missed a change"
        )
        ping(h3, "cc", d["IPAddress"])
        # nothing lost: every node and endpoint record is there
        assert etcd_keys(lab, "node/") == ["node/h1", "node/h2", "node/h3"]
        assert etcd_keys(lab, "endpoint/") == sorted(f"endpoint/{e['EndpointID']}" for e in (a, b, c, d))
    finally:
        h1.cnm("exec", "ca", "touch", "/stop")
        out, _ = pinger.communicate(timeout=30)
        out = first + out
    batches = [
        (int(t), int(r)) for t, r in re.findall(r"(\d+) packets transmitted, (\d+) packets received", out)
    ]
    sent, got = sum(t for t, _ in batches), sum(r for _, r in batches)
    assert sent >= 10 and got == sent, out[-600:]


# -- five hosts ---------------------------------------------------------------------------


def test_five_hosts_on_one_overlay_talk_ping_tcp_udp_dns_and_publish(lab5) -> None:
    hosts = lab5.hosts
    h1 = hosts[0]
    h1.cnm("network", "create", "-d", "overlay", "ov")
    vx = f"vx-{network_id(h1, 'ov')[:12]}"
    eventually(lambda: all(sees(h, "ov") for h in hosts), "ov never reached every host")
    eps = {f"c{i}": (h, run(h, f"c{i}", "ov")) for i, h in enumerate(hosts, 1)}
    h1.cnm("run", "-d", "--name", "web", "--network", "ov", "-p", "8081:8080", "busybox", "sh", "-c", HTTPD)
    eps["web"] = (h1, endpoint(h1, "web", "ov"))
    for host in hosts:
        want = {ep["MacAddress"]: h.address for h, ep in eps.values() if h is not host}
        eventually(
            lambda host=host, want=want: fdb(host, vx) == want, f"{host.name} never programmed the others"
        )
    # network inspect on any host: every host's containers, and every host as a peer
    info = json.loads(hosts[2].cnm("network", "inspect", "ov").stdout)[0]
    assert {c["Name"] for c in info["Containers"].values()} == set(eps)
    assert [(p["Name"], p["IP"]) for p in info["Peers"]] == [(h.name, h.address) for h in hosts]
    # each pings every other, by name (the embedded DNS answers other hosts' names)
    for name, (host, _) in eps.items():
        if name == "web":
            continue
        for other, (_, ep) in eps.items():
            if other == name:
                continue
            got = host.cnm("exec", name, "nslookup", other, "127.0.0.11").stdout
            assert ep["IPAddress"] in got, got
        script = " && ".join(f"ping -c 1 -W 2 {other}" for other in eps if other != name)
        host.cnm("exec", name, "sh", "-c", script, timeout=120)
    # TCP across hosts
    for name, (host, _) in eps.items():
        if name != "web":
            assert "hello from" in host.cnm("exec", name, "wget", "-q", "-O", "-", "http://web:8080/").stdout
    # UDP across hosts: an echo server in c1 answers every other host
    server = udp_echo(h1, "c1")
    try:
        for name, (host, _) in eps.items():
            if host is not h1:
                assert udp_ask(host, name, eps["c1"][1]["IPAddress"], f"hi from {name}") == f"hi from {name}"
    finally:
        stop(server)
    # the published port, from the world (the lab's root, outside every host)
    got: list[str] = []

    def fetch() -> bool:
        res = lab5.root.run(["wget", "-q", "-O", "-", f"http://{h1.address}:8081/"], check=False)
        got.append(res.stdout)
        return res.returncode == 0

    eventually(fetch, "the published port of an overlay container never answered the world")
    assert got[-1].startswith("hello from ")


# -- the rules of global networks -----------------------------------------------------------


def test_peers_rm_with_remote_endpoints_and_the_reserved_gwbridge_name(lab) -> None:
    h1, h2, h3 = lab.hosts
    h1.cnm("network", "create", "-d", "overlay", "ov")
    nid = network_id(h1, "ov")
    eventually(lambda: sees(h2, "ov") and sees(h3, "ov"), "ov never reached h2 and h3")
    run(h1, "ca", "ov")
    b = run(h2, "cb", "ov")

    def peers(host: LabHost) -> list[tuple[str, str]]:
        info = json.loads(host.cnm("network", "inspect", "ov").stdout)[0]
        return [(p["Name"], p["IP"]) for p in info.get("Peers") or []]

    both = [("h1", h1.address), ("h2", h2.address)]
    eventually(lambda: peers(h3) == both, "h3's Peers are not the nodes with an endpoint on ov")
    assert peers(h1) == both
    # Docker's rule: no rm while any host has an endpoint on it
    refused(h3.cnm("network", "rm", "ov", check=False), "has active endpoints")
    h1.cnm("rm", "-f", "ca")
    got = refused(h3.cnm("network", "rm", "ov", check=False), "has active endpoints")
    assert b["EndpointID"][:12] in got
    h2.cnm("rm", "-f", "cb")
    eventually(lambda: h3.cnm("network", "rm", "ov", check=False).returncode == 0, "ov could not be removed")
    eventually(lambda: not sees(h1, "ov") and not sees(h2, "ov"), "ov outlived its rm")
    for host in lab.hosts:
        assert overlay_links(host) == set(), host.name
    assert [k for k in etcd_keys(lab, "") if nid in k] == []
    # cnm_gwbridge is cnmd's
    for driver in ("bridge", "overlay"):
        refused(h1.cnm("network", "create", "-d", driver, "cnm_gwbridge", check=False), "reserved")
