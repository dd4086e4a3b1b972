"""Overlay networks' control plane across real hosts (tests/lab.py: two hosts on an underlay,
one etcd, a cnmd in each): a global network created on one host is listed and inspected on
the other without a restart, removed from either, refused while a host has an endpoint on
it; names are unique across hosts both ways; two cnmd creating networks at once never get
one subnet or VNI twice; the node name and the advertise address are validated and shown;
Docker's CLI and SDK read the network as Docker's own."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from harness import ROOT_SKIP_REASON, HarnessError, is_root, test_failed, wait_for
from lab import Lab, LabHost

VXLANID = "com.docker.network.driver.overlay.vxlanid_list"
DOCKER = "/usr/local/bin/docker"


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """Two hosts, one etcd; cnmd runs in neither yet."""
    if not is_root():
        pytest.skip(ROOT_SKIP_REASON)
    with Lab(2) as lab:
        yield lab
        if test_failed(request):
            lab.dump()


@pytest.fixture
def hosts(lab: Lab) -> tuple[LabHost, LabHost]:
    """h1 advertising its underlay interface, h2 its address."""
    h1, h2 = lab.hosts
    h1.start_cnmd("--cluster-advertise", "ul0")
    h2.start_cnmd("--cluster-advertise", f"{h2.address}:2376")
    return h1, h2


def inspect(host: LabHost, name: str) -> dict[str, Any]:
    return json.loads(host.cnm("network", "inspect", name).stdout)[0]


def listed(host: LabHost) -> dict[str, str]:
    """``network ls`` as {name: scope}."""
    out = host.cnm("network", "ls", "--format", "{{.Name}} {{.Scope}}").stdout
    return dict(line.split() for line in out.splitlines())


def eventually(predicate: Callable[[], bool], what: str, timeout: float = 10) -> None:
    assert wait_for(predicate, timeout, interval=0.1), what


def test_created_on_one_host_is_listed_inspected_and_removed_on_the_other(hosts) -> None:
    h1, h2 = hosts
    links_before = {link["ifname"] for link in h1.ip_json("link", "show")}
    h1.cnm(
        "network", "create", "-d", "overlay", "--attachable", "-o", "encrypted",
        "-o", "com.docker.network.driver.mtu=1400", "ov",
    )  # fmt: skip
    eventually(lambda: listed(h2).get("ov") == "global", "h2 never listed ov")
    assert listed(h1)["ov"] == "global" and listed(h1)["bridge"] == "local"
    net = inspect(h2, "ov")
    assert (net["Driver"], net["Scope"], net["Attachable"]) == ("overlay", "global", True)
    assert net["Options"] == {"encrypted": "", "com.docker.network.driver.mtu": "1400", VXLANID: "4096"}
    assert net["IPAM"]["Config"] == [{"Subnet": "10.0.0.0/24", "Gateway": "10.0.0.1"}]
    assert "Peers" not in net  # the nodes with an endpoint on it: none yet (omitted, as Docker)
    assert inspect(h1, "ov")["Id"] == net["Id"]
    assert "Peers" not in inspect(h1, "bridge")
    # the network is the cluster's: no kernel object on the host that created it
    assert {link["ifname"] for link in h1.ip_json("link", "show")} == links_before

    h2.cnm("network", "rm", "ov")
    eventually(lambda: "ov" not in listed(h1), "h1 still lists ov")
    assert "ov" not in listed(h2)


def test_rm_is_refused_while_a_host_has_an_endpoint_on_it(lab, hosts) -> None:
    h1, h2 = hosts
    net_id = h1.cnm("network", "create", "-d", "overlay", "ov").stdout.strip()
    eventually(lambda: "ov" in listed(h2), "h2 never listed ov")
    # h1's endpoint as the data plane records it: in etcd (on h1's lease, there)
    endpoint = {"id": "e" * 64, "network_id": net_id, "container_id": "c" * 64, "sandbox_id": "s",
                "name": "web1", "node": "h1"}  # fmt: skip
    lab.etcdctl("put", f"/cnm/v2/endpoint/{'e' * 64}", json.dumps(endpoint))
    refused = None

    def refused_now() -> bool:
        nonlocal refused
        refused = h2.cnm("network", "rm", "ov", check=False)
        return refused.returncode != 0

    eventually(refused_now, "rm was not refused")
    assert 'network ov has active endpoints (name:"web1"' in refused.stderr
    assert "ov" in listed(h1) and "ov" in listed(h2)
    lab.etcdctl("del", f"/cnm/v2/endpoint/{'e' * 64}")
    eventually(lambda: h2.cnm("network", "rm", "ov", check=False).returncode == 0, "rm still refused")
    eventually(lambda: "ov" not in listed(h1), "h1 still lists ov")


def test_a_restart_never_frees_an_address_another_host_holds_in_a_global_pool(lab, hosts) -> None:
    h1, h2 = hosts
    net_id = h1.cnm("network", "create", "-d", "overlay", "ov").stdout.strip()
    # an address some host's endpoint holds (as IPAM records it: its owner is that
    # endpoint's id, which no record of h1 or h2 names)
    key = f"/cnm/v2/ipam/address/{net_id}/10.0.0.5"
    lab.etcdctl("put", key, json.dumps({"owner": "e" * 64}))
    for host in (h1, h2):
        host.stop_cnmd()
        host.start_cnmd("--cluster-advertise", "ul0")
    assert json.loads(lab.etcdctl("get", key, "--print-value-only").stdout) == {"owner": "e" * 64}
    assert inspect(h2, "ov")["Id"] == net_id  # and the network is still everyone's


def test_names_are_unique_across_hosts_both_ways(hosts) -> None:
    h1, h2 = hosts
    h2.cnm("network", "create", "web")  # a local network of h2
    eventually(lambda: h1.cnm("network", "create", "-d", "overlay", "web", check=False).returncode != 0, "")
    clash = h1.cnm("network", "create", "-d", "overlay", "web", check=False)
    assert "network with name web already exists: it is a local network on node h2" in clash.stderr
    assert "web" not in listed(h1)

    h1.cnm("network", "create", "-d", "overlay", "ov")
    for host in (h1, h2):
        clash = host.cnm("network", "create", "ov", check=False)
        assert clash.returncode != 0 and "network with name ov already exists" in clash.stderr
    clash = h2.cnm("network", "create", "-d", "overlay", "ov", check=False)
    assert clash.returncode != 0 and "network with name ov already exists" in clash.stderr
    assert [n for n in listed(h2) if n == "ov"] == ["ov"] and listed(h2)["ov"] == "global"

    # two hosts creating one global name at once: one wins, the other gets Conflict (409)
    with ThreadPoolExecutor(2) as pool:
        replies = list(
            pool.map(
                lambda h: h.api("POST", "/networks/create", {"Name": "same", "Driver": "overlay"}), hosts
            )
        )
    assert sorted(r.status for r in replies) == [201, 409], [(r.status, r.message) for r in replies]
    eventually(lambda: listed(h1).get("same") == listed(h2).get("same") == "global", "not seen on both")


def test_two_cnmd_creating_networks_at_once_never_share_a_subnet_or_a_vni(hosts) -> None:
    """Issue 9's "two cnmd on one etcd allocate from one global pool", through real cnmd:
    60 overlay networks without --subnet on each host, all at once."""
    h1, h2 = hosts
    count = 60

    def create(job: tuple[LabHost, int]) -> int:
        host, i = job
        return host.api(
            "POST", "/networks/create", {"Name": f"{host.name}-{i}", "Driver": "overlay"}, 120
        ).status

    jobs = [(h, i) for i in range(count) for h in (h1, h2)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        statuses = list(pool.map(create, jobs))
    assert statuses == [201] * len(jobs)

    def globals_of(host: LabHost) -> list[dict[str, Any]]:
        return [n for n in host.api("GET", "/networks").json() if n["Scope"] == "global"]

    eventually(lambda: len(globals_of(h1)) == len(globals_of(h2)) == 2 * count, "not all seen", 30)
    for host in (h1, h2):
        nets = globals_of(host)
        subnets = [n["IPAM"]["Config"][0]["Subnet"] for n in nets]
        vnis = [int(n["Options"][VXLANID]) for n in nets]
        assert len(set(subnets)) == len(subnets) == 2 * count, sorted(subnets)
        assert len(set(vnis)) == len(vnis) == 2 * count, sorted(vnis)
        assert min(vnis) >= 4096 and all(s.startswith("10.") and s.endswith("/24") for s in subnets)


def test_a_node_name_held_by_a_live_daemon_is_refused(lab) -> None:
    h1, h2 = lab.hosts
    h1.start_cnmd()
    with pytest.raises(HarnessError) as err:
        h2.start_cnmd("--node-name", "h1")
    assert "node name 'h1' is taken by another live cnmd" in str(err.value)
    assert "give this daemon another --node-name" in str(err.value) and "Traceback" not in str(err.value)
    h2.start_cnmd("--node-name", "h2b")
    assert h2.api("GET", "/info").json()["Name"] == "h2b"
    # a clean stop frees the name at once (its lease is revoked)
    h1.stop_cnmd()
    assert "/cnm/v2/node/h1" not in lab.etcdctl("get", "--prefix", "--keys-only", "/cnm/v2/node/").stdout
    h1.start_cnmd()
    assert h1.api("GET", "/info").json()["Name"] == "h1"


@pytest.mark.parametrize(
    ("flags", "why"),
    [
        (["--cluster-advertise", "nosuch0"], "invalid --cluster-advertise: no interface 'nosuch0'"),
        (
            ["--cluster-advertise", "192.0.2.9"],
            "invalid --cluster-advertise: 192.0.2.9 is not an address of this host",
        ),
        (["--cluster-advertise", "198.51.100.1:99999"], "port '99999' is not a number in 1-65535"),
        (["--node-name", "a/b"], "invalid --node-name 'a/b'"),
    ],
)
def test_bad_cluster_flags_stop_cnmd_clearly(lab, flags, why) -> None:
    h1 = lab.hosts[0]
    with pytest.raises(HarnessError) as err:
        h1.start_cnmd(*flags)
    assert why in str(err.value) and "Traceback" not in str(err.value)
    assert not h1.socket_path.exists()
    assert "/cnm/v2/node/" not in lab.etcdctl("get", "--prefix", "--keys-only", "/cnm/v2/").stdout


def test_overlay_without_a_cluster_store_is_refused_naming_the_flag(lab) -> None:
    h1 = lab.hosts[0]
    h1.start_cnmd(cluster_store=False)
    reply = h1.api("POST", "/networks/create", {"Name": "ov", "Driver": "overlay"})
    assert reply.status == 400 and "--cluster-store" in reply.message, reply.message
    out = h1.cnm("network", "create", "-d", "overlay", "ov", check=False)
    assert out.returncode != 0 and "start cnmd with --cluster-store" in out.stderr
    assert "ov" not in listed(h1)


def test_dockers_cli_and_sdk_read_a_global_network(hosts) -> None:
    h1, h2 = hosts
    env = {"DOCKER_HOST": f"unix://{h1.socket_path}", "DOCKER_CONFIG": str(h1.tmp / "docker-config")}
    out = h1.run(
        [DOCKER, "network", "create", "-d", "overlay", "--attachable", "-o", "encrypted", "ov"], env=env
    )
    net_id = out.stdout.strip()
    shown = json.loads(h1.run([DOCKER, "network", "inspect", "ov"], env=env).stdout)[0]
    assert (shown["Id"], shown["Scope"], shown["Driver"]) == (net_id, "global", "overlay")
    assert shown["Options"] == {"encrypted": "", VXLANID: "4096"}
    assert "Peers" not in shown  # nobody is on it yet
    ls = h1.run([DOCKER, "network", "ls", "--filter", "scope=global", "--format", "{{.Name}} {{.Driver}} {{.Scope}}"],
                env=env).stdout.split("\n")  # fmt: skip
    assert "ov overlay global" in ls
    docker_sdk = pytest.importorskip("docker", reason="the Docker SDK comes with the test extras")
    client = docker_sdk.DockerClient(base_url=f"unix://{h2.socket_path}", version="1.45")
    try:
        deadline = time.monotonic() + 10
        while not client.networks.list(names=["ov"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        net = client.networks.get("ov")
        assert net.id == net_id and net.attrs["Scope"] == "global" and net.attrs["Driver"] == "overlay"
        assert net.attrs["Options"][VXLANID] == "4096"
        assert [n.name for n in client.networks.list(filters={"driver": "overlay"})] == ["ov"]
        client.networks.get("ov").remove()  # from the other host
    finally:
        client.close()
    assert "ov" not in listed(h2)
