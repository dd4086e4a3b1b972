"""Anti-spoofing on overlay ports, across real hosts (tests/lab.py): a container on an
overlay network forges frames toward a container on another host -- from a neighbour's
IPv4 address, from a neighbour's MAC, VLAN-tagged -- and none of them arrives, while its
honest packets do; a cnmd restart (with a bridge network's container beside, whose
driver restores the same guard table) keeps the overlay port guarded.  With
``--anti-spoofing=false`` the same forgeries arrive, so the test can tell.

The frames are sent and counted by ``rawframes.py`` (see test_e2e_antispoof).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from e2e_util import sandbox_key
from harness import ROOT_SKIP_REASON, is_root, test_failed, wait_for
from lab import Lab, LabHost
from test_e2e_antispoof import UDP_PORT, Ctr, Sniffer, guard_elements, send

NET = "ovspoof"
MARKERS = ("ov-spoof-src-ip", "ov-spoof-src-mac", "ov-spoof-vlan", "ov-honest")


def start(lab: Lab, busybox_tar, *extra: str) -> None:
    for host in lab.hosts:
        host.start_cnmd("--cluster-advertise", "ul0", *extra)
        host.import_image(busybox_tar, "busybox")


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """Two hosts, one etcd; each test starts cnmd as it needs."""
    if not is_root():
        pytest.skip(ROOT_SKIP_REASON)
    with Lab(2) as lab:
        yield lab
        if test_failed(request):
            lab.dump()


def member(host: LabHost, name: str, network: str = NET) -> Ctr:
    info = json.loads(host.cnm("inspect", name).stdout)[0]["NetworkSettings"]["Networks"][network]
    return Ctr(name, info["IPAddress"], info["MacAddress"], sandbox_key(host, name))


def setup(lab: Lab) -> tuple[Ctr, Ctr, Ctr]:
    """alice and bob on host 1, carol on host 2, all on one overlay network; alice can
    reach carol (the remote entries are programmed)."""
    h1, h2 = lab.hosts
    h1.cnm("network", "create", "-d", "overlay", "--attachable", NET)
    assert wait_for(lambda: h2.cnm("network", "inspect", NET, check=False).returncode == 0, 15)
    for host, name in ((h1, "alice"), (h1, "bob"), (h2, "carol")):
        host.cnm("run", "-d", "--name", name, "--network", NET, "busybox", "sleep", "1d")
    a, b, c = member(h1, "alice"), member(h1, "bob"), member(h2, "carol")
    assert wait_for(
        lambda: h1.cnm("exec", "alice", "ping", "-c", "1", "-W", "1", c.ip, check=False).returncode == 0, 20
    ), "alice never reached carol over the overlay"
    return a, b, c


def forge(lab: Lab, attacker: Ctr, victim: Ctr, target: Ctr) -> dict[str, int]:
    """``attacker`` (host 1) sends UDP to ``target`` (host 2) as ``victim`` in three ways
    and once honestly; what ``target`` received, by marker."""
    h1, h2 = lab.hosts
    sniffer = Sniffer(h2, target.key, "eth0", list(MARKERS))
    frames = {
        "ov-spoof-src-ip": dict(src=attacker.mac, src_ip=victim.ip),
        "ov-spoof-src-mac": dict(src=victim.mac, src_ip=victim.ip),
        "ov-spoof-vlan": dict(src=attacker.mac, src_ip=attacker.ip, vlan=5),
        "ov-honest": dict(src=attacker.mac, src_ip=attacker.ip),
    }
    send(
        h1,
        attacker,
        [
            {
                "kind": "udp",
                "dst": target.mac,
                "dst_ip": target.ip,
                "dport": UDP_PORT,
                "data": m,
                "repeat": 3,
                **f,
            }
            for m, f in frames.items()
        ],
    )
    return sniffer.counts()


def assert_guarded(got: dict[str, int]) -> None:
    assert got["ov-honest"] == 3, f"the attacker's honest packets must arrive: {got}"
    assert got["ov-spoof-src-ip"] == 0, f"a packet from bob's address crossed the overlay: {got}"
    assert got["ov-spoof-src-mac"] == 0, f"a packet from bob's MAC crossed the overlay: {got}"
    assert got["ov-spoof-vlan"] == 0, f"a VLAN-tagged frame crossed the overlay: {got}"


def test_an_overlay_container_cannot_send_as_another(lab, busybox_tar) -> None:
    start(lab, busybox_tar)
    h1, _ = lab.hosts
    a, b, c = setup(lab)
    assert_guarded(forge(lab, a, b, c))

    # a bridge network's container beside it: after a restart both drivers restore the
    # guard table, and neither may drop the other's ports
    h1.cnm("network", "create", "local")
    h1.cnm("run", "-d", "--name", "dave", "--network", "local", "busybox", "sleep", "1d")
    dave = member(h1, "dave", "local")
    h1.stop_cnmd()
    h1.start_cnmd("--cluster-advertise", "ul0")
    elements = guard_elements(h1)
    assert elements is not None, "no guard table after the restart"
    addrs = {address for _, _, address in elements[1]}
    assert {a.ip, b.ip, dave.ip} <= addrs, f"a port lost its guard in the restart: {elements}"
    assert_guarded(forge(lab, a, b, c))

    # disconnect unguards the port (with the veth gone), a reconnect guards it again
    h1.cnm("network", "disconnect", NET, "alice")
    after = guard_elements(h1)
    assert after is not None and a.ip not in {address for _, _, address in after[1]}, after


def test_without_anti_spoofing_the_forgeries_arrive(lab, busybox_tar) -> None:
    start(lab, busybox_tar, "--anti-spoofing=false")
    a, b, c = setup(lab)
    got = forge(lab, a, b, c)
    assert got["ov-honest"] == 3, got
    assert got["ov-spoof-src-ip"] == 3 and got["ov-spoof-src-mac"] == 3, got
