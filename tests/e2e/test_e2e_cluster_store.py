"""cnmd --cluster-store on a real etcd (Debian's etcd-server) running in the test host's own
network namespace, where cnmd runs: the daemon joins at start, keeps its node record
``node/<node name>`` on a lease, shows the store, its node name and advertise address in
/info, and removes the key at shutdown; a cnmd whose etcd is down refuses to start, saying
so, having changed nothing."""

from __future__ import annotations

import base64
import json
import signal
import socket
from collections.abc import Iterator

import pytest
from etcd_cluster import EtcdCluster
from harness import ROOT_SKIP_REASON, HarnessError, TestHost, dump_host, is_root, test_failed

NODE_PREFIX = "/cnm/v2/node/"


@pytest.fixture
def host_with_etcd(request: pytest.FixtureRequest) -> Iterator[tuple[TestHost, EtcdCluster]]:
    """A test host (no cnmd yet) with one etcd member on its 127.0.0.1:2379 (speaking TLS
    to clients when parametrized indirectly with True)."""
    if not is_root():
        pytest.skip(ROOT_SKIP_REASON)
    tls = bool(getattr(request, "param", False))
    with TestHost() as host:
        cluster = EtcdCluster(1, inside=host.inside, root=host.tmp / "etcd", tls=tls)
        try:
            cluster.start()
            yield host, cluster
            if test_failed(request):
                dump_host(host)
                print(cluster.logs())
        finally:
            if host.daemon_running():
                host.kill_daemon(signal.SIGTERM)
            cluster.close()


def presence(cluster: EtcdCluster) -> dict[str, dict]:
    """The node/ keys in etcd (key -> {"doc": …, "lease": …}), read with etcdctl."""
    out = json.loads(cluster.etcdctl("get", "--prefix", NODE_PREFIX, "-w", "json").stdout)
    found = {}
    for kv in out.get("kvs", []):
        key = base64.b64decode(kv["key"]).decode()
        found[key] = {"doc": json.loads(base64.b64decode(kv["value"])), "lease": kv.get("lease", 0)}
    return found


def test_cnmd_joins_the_cluster_store_and_leaves_it(host_with_etcd) -> None:
    host, cluster = host_with_etcd
    assert cluster.url == "etcd://127.0.0.1:2379"
    host.start_daemon("--cluster-store", cluster.url)
    daemon_id = (host.data_root / "daemon-id").read_text().strip()
    name = socket.gethostname()  # --node-name's default (the test host shares our UTS namespace)

    nodes = presence(cluster)
    assert list(nodes) == [NODE_PREFIX + name]
    node = nodes[NODE_PREFIX + name]
    assert node["doc"]["ID"] == daemon_id and node["doc"]["Pid"] > 0 and node["doc"]["Name"] == name
    # no --cluster-advertise: the address this host reaches etcd from
    assert node["doc"]["Address"] == "127.0.0.1"
    assert node["lease"] != 0  # it goes when the daemon stops refreshing
    ttl = cluster.etcdctl("lease", "timetolive", format(node["lease"], "x")).stdout
    assert "remaining" in ttl and "granted with TTL(15s)" in ttl

    info = host.api("GET", "/info").json()
    assert info["ClusterStore"] == "etcd://127.0.0.1:2379"
    assert (info["Name"], info["ClusterAdvertise"]) == (name, "127.0.0.1")

    assert host.kill_daemon(signal.SIGTERM) == 0
    assert presence(cluster) == {}  # revoked at shutdown, not left to expire


@pytest.mark.parametrize("host_with_etcd", [True], indirect=True, ids=["tls"])
def test_cnmd_joins_over_tls_with_the_cluster_store_opts(host_with_etcd) -> None:
    host, cluster = host_with_etcd
    certs = cluster.certs
    assert certs is not None
    opts = [f"kv.cacertfile={certs.ca}", f"kv.certfile={certs.client_cert}", f"kv.keyfile={certs.client_key}"]
    host.start_daemon(
        "--cluster-store",
        cluster.url,
        *[x for opt in opts for x in ("--cluster-store-opt", opt)],
        "--node-name",
        "tls1",
    )
    assert list(presence(cluster)) == [NODE_PREFIX + "tls1"]
    assert host.kill_daemon(signal.SIGTERM) == 0
    assert presence(cluster) == {}


def test_cnmd_without_the_flag_shows_no_cluster_store(host_with_etcd) -> None:
    host, cluster = host_with_etcd
    host.start_daemon()
    assert host.api("GET", "/info").json()["ClusterStore"] == ""
    assert presence(cluster) == {}


def test_cnmd_whose_etcd_is_down_refuses_to_start_clearly(host_with_etcd) -> None:
    host, cluster = host_with_etcd
    cluster.stop_member(0)
    with pytest.raises(HarnessError) as err:
        host.start_daemon("--cluster-store", cluster.url)
    message = str(err.value)
    assert "cnmd exited 1" in message
    assert "cannot join --cluster-store etcd://127.0.0.1:2379" in message
    assert "did not answer" in message and "Traceback" not in message
    # Nothing was started: no bridge, no API socket.
    assert "cnm0" not in {link["ifname"] for link in host.ip_json("link", "show")}
    assert not host.socket_path.exists()
