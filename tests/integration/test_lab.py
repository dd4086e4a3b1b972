"""The multi-host lab itself (tests/lab.py): hosts reach each other over the underlay, each
cnmd joins the lab's etcd, a cut host is unreachable until restored, an etcd member can die
and come back, and nothing of the lab remains once it is torn down."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from harness import HostSnapshot, cgroup_dirs, pids_in_pidns, test_failed, wait_for
from lab import ROOT_ADDR, Lab, LabHost

NODE_PREFIX = "/cnm/v2/node/"


@pytest.fixture
def lab3(request: pytest.FixtureRequest) -> Iterator[Lab]:
    with Lab(3) as lab:
        yield lab
        if test_failed(request):
            lab.dump()


def reaches(src: LabHost, address: str) -> bool:
    return src.run(["busybox", "ping", "-c1", "-W1", address], check=False, timeout=10).returncode == 0


def etcdctl_after_election(lab: Lab, *args: str) -> str:
    """``etcdctl ARGS``'s output, retried while the cluster elects a leader: a request
    pending when the leader died fails ("request timed out, possibly due to previous leader
    failure") and etcd leaves the retry to the client."""
    done: list[str] = []

    def attempt() -> bool:
        proc = lab.etcdctl(*args, check=False)
        if proc.returncode == 0:
            done.append(proc.stdout)
        return bool(done)

    assert wait_for(attempt, 45, interval=0.5), lab.etcdctl(*args, check=False).stderr
    return done[0]


def presence_keys(lab: Lab) -> list[str]:
    return lab.etcdctl("get", "--prefix", "--keys-only", NODE_PREFIX).stdout.split()


@pytest.mark.parametrize("size", [2, 3, 5])
def test_lab_hosts_reach_each_other_run_cnmd_on_its_etcd_and_leave_nothing(size: int) -> None:
    before = HostSnapshot.take()
    lab = Lab(size)
    try:
        lab.start()
        assert [h.name for h in lab.hosts] == [f"h{i}" for i in range(1, size + 1)]
        for host in lab.hosts:
            assert host.run(["hostname"]).stdout.strip() == host.name
            addrs = host.ip_json("-4", "addr", "show", "dev", "ul0")[0]["addr_info"]
            assert [(a["local"], a["prefixlen"]) for a in addrs] == [(host.address, 24)]
            for other in lab.hosts:
                assert reaches(host, other.address), f"{host.name} -> {other.name}"
            assert reaches(host, ROOT_ADDR)

        # etcd: 3 members in h1..h3 over the underlay, or one in the root.
        assert lab.cluster is not None
        expected = [f"{h.address}:2379" for h in lab.hosts[:3]] if size >= 3 else [f"{ROOT_ADDR}:2379"]
        assert lab.cluster.endpoints == expected
        members = json.loads(lab.etcdctl("member", "list", "-w", "json").stdout)["members"]
        assert len(members) == len(expected)

        for host in lab.hosts:
            host.start_cnmd()
        for host in lab.hosts:
            assert host.ping()
            info = host.api("GET", "/info").json()
            assert info["ClusterStore"] == "etcd://" + ",".join(expected)
            # the node name is the host's hostname; the advertise address its underlay one
            assert (info["Name"], info["ClusterAdvertise"]) == (host.name, host.address)
        ids = {(h.data_root / "daemon-id").read_text().strip() for h in lab.hosts}
        assert len(ids) == size
        assert sorted(presence_keys(lab)) == sorted(NODE_PREFIX + h.name for h in lab.hosts)
        hosts = [lab.root, *lab.hosts]
        pidns = [h._pidns for h in hosts]
        assert all(pidns)
    finally:
        lab.close()

    # Nothing remains: no process of any host (cnmd, etcd) nor its directory, cgroup, link.
    for host, ns in zip(hosts, pidns, strict=True):
        assert ns is not None and pids_in_pidns(ns) == []
        assert not host.tmp.exists()
        assert cgroup_dirs(host.cgroup_parent) == []
    new = HostSnapshot.take().new_since(before)
    ours = {"underlay", "ul0", *(f"ul-h{i}" for i in range(1, size + 1))}
    assert not {link for link in new.get("links", set()) if link.split(":", 1)[1] in ours}
    assert not [m for m in new.get("mounts", set()) if "/cnm-test-" in m]


def test_a_cut_host_is_unreachable_until_restored_and_etcd_keeps_a_quorum(lab3: Lab) -> None:
    h1, h2, h3 = lab3.hosts
    for host in lab3.hosts:
        host.start_cnmd()

    lab3.cut(h3)
    assert not reaches(h1, h3.address)
    assert not reaches(h3, h2.address)
    assert reaches(h1, h2.address)
    # The cut host keeps its own address and routes: only the cable is gone.
    assert h3.ip_json("-4", "addr", "show", "dev", "ul0")[0]["addr_info"][0]["local"] == h3.address
    # Two members of three still make a quorum: etcd answers writes.
    etcdctl_after_election(lab3, "put", "lab/probe", "1")
    assert h1.ping() and h2.ping()

    lab3.restore("h3")
    # A neighbour entry that failed while the cable was out is resolved again on a later probe.
    assert wait_for(lambda: reaches(h1, h3.address), 15)
    assert wait_for(lambda: reaches(h3, h2.address), 15)
    lab3.cluster.wait_healthy(60)  # m2, in h3, caught up with the others


def test_an_etcd_member_killed_and_restarted_rejoins(lab3: Lab) -> None:
    lab3.etcd_kill(0)
    assert lab3.cluster is not None and not lab3.cluster.members[0].running
    etcdctl_after_election(lab3, "put", "lab/k", "v1")  # m1 and m2 keep the quorum
    lab3.etcd_start(0)
    etcdctl_after_election(lab3, "put", "lab/k", "v2")
    lab3.etcd_kill(1)  # m0 and m2 are the quorum now
    got = etcdctl_after_election(lab3, "get", "lab/k", "--print-value-only")
    assert got.strip() == "v2"  # a quorum read needs m0: it rejoined


def test_a_tls_lab_gives_cnmd_its_client_certificates() -> None:
    with Lab(2, tls=True) as lab:
        assert lab.cluster is not None and lab.cluster.certs is not None
        assert lab.cluster.url == f"etcd://{ROOT_ADDR}:2379"
        plain = lab.root.run(["etcdctl", "--endpoints", f"http://{ROOT_ADDR}:2379", "get", "x"], check=False)
        assert plain.returncode != 0  # no way in without TLS
        for host in lab.hosts:
            host.start_cnmd()
        assert len(presence_keys(lab)) == 2
        assert all(h.api("GET", "/info").json()["ClusterStore"] == lab.cluster.url for h in lab.hosts)


def test_a_lab_needs_one_to_nine_hosts() -> None:
    for size in (0, 10):
        with pytest.raises(ValueError, match="1 to 9 hosts"):
            Lab(size)
