"""cnmd's --cluster-store and --cluster-store-opt (Docker's old flags): parsed into
endpoints and TLS files, bad values refused naming the flag before anything starts, and
what /info shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnm.api.schemas_system import VersionInfo, info_json
from cnm.daemon.cluster import ClusterMembership, resolve_advertise
from cnm.daemon.config import parse_args
from cnm.daemon.main import main
from cnm.engine.info import EngineInfo
from cnm.errors import Conflict, InvalidArgument
from cnm.store.etcd import TlsFiles
from cnm.store.memory import MemoryStore


def test_without_the_flag_there_is_no_cluster_store():
    config = parse_args([])
    assert config.cluster_store == () and config.cluster_store_tls is None


@pytest.mark.parametrize(
    ("url", "endpoints"),
    [
        ("etcd://127.0.0.1:2379", ("127.0.0.1:2379",)),
        (
            "etcd://10.0.0.1:2379,10.0.0.2:2379,etcd-3.example:12379",
            ("10.0.0.1:2379", "10.0.0.2:2379", "etcd-3.example:12379"),
        ),
        ("etcd://[::1]:2379/", ("[::1]:2379",)),
        ("etcd://localhost:02379", ("localhost:2379",)),
    ],
)
def test_endpoints_are_parsed(url, endpoints):
    assert parse_args(["--cluster-store", url]).cluster_store == endpoints


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("127.0.0.1:2379", "expected etcd://"),
        ("consul://127.0.0.1:8500", "unsupported backend 'consul'"),
        ("zk://h:2181", "unsupported backend 'zk'"),
        ("etcd://", "an empty endpoint"),
        ("etcd://127.0.0.1:2379,", "an empty endpoint"),
        ("etcd://127.0.0.1", "expected HOST:PORT"),
        ("etcd://127.0.0.1:99999", "not a number in 1-65535"),
        ("etcd://127.0.0.1:2379/cnm", "a path is not supported"),
        ("etcd://a_b:2379", "not a host name"),
        ("etcd://h:1,h:1", "given twice"),
    ],
)
def test_bad_urls_are_refused_naming_the_flag(url, why):
    with pytest.raises(InvalidArgument, match=why) as err:
        parse_args(["--cluster-store", url])
    assert str(err.value).startswith("invalid --cluster-store:")


def test_tls_files_are_taken_from_the_options(tmp_path: Path):
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("PEM")
    config = parse_args(
        [
            "--cluster-store=etcd://127.0.0.1:2379",
            f"--cluster-store-opt=kv.cacertfile={tmp_path}/ca.pem",
            "--cluster-store-opt",
            f"kv.certfile={tmp_path}/cert.pem",
            "--cluster-store-opt",
            f"kv.keyfile={tmp_path}/key.pem",
        ]
    )
    assert config.cluster_store_tls == TlsFiles(
        cacertfile=f"{tmp_path}/ca.pem", certfile=f"{tmp_path}/cert.pem", keyfile=f"{tmp_path}/key.pem"
    )
    only_ca = parse_args(
        ["--cluster-store=etcd://h:1", f"--cluster-store-opt=kv.cacertfile={tmp_path}/ca.pem"]
    )
    assert only_ca.cluster_store_tls == TlsFiles(cacertfile=f"{tmp_path}/ca.pem")


@pytest.mark.parametrize(
    ("opt", "why"),
    [
        ("kv.cacertfile", "expected KEY=VALUE"),
        ("kv.cacertfile=", "expected KEY=VALUE"),
        ("kv.path=/cnm", "unknown option 'kv.path'"),
        ("kv.cacertfile=/nonexistent/ca.pem", "is not a readable file"),
        ("kv.certfile={tmp}/x.pem", "kv.certfile and kv.keyfile go together"),
    ],
)
def test_bad_options_are_refused_naming_the_flag(tmp_path: Path, opt, why):
    (tmp_path / "x.pem").write_text("PEM")
    with pytest.raises(InvalidArgument, match=why) as err:
        parse_args(["--cluster-store=etcd://h:1", "--cluster-store-opt", opt.format(tmp=tmp_path)])
    assert "--cluster-store-opt" in str(err.value)


def test_an_option_without_the_store_is_refused(tmp_path: Path):
    (tmp_path / "ca.pem").write_text("PEM")
    with pytest.raises(InvalidArgument, match="--cluster-store-opt given without --cluster-store"):
        parse_args([f"--cluster-store-opt=kv.cacertfile={tmp_path}/ca.pem"])


def test_cnmd_with_a_bad_value_exits_before_starting_anything(tmp_path: Path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    code = main(["--data-root", str(data), "--exec-root", str(run), "--cluster-store", "etcd://h"])
    assert code == 2
    assert "cnmd: invalid --cluster-store:" in capsys.readouterr().err
    assert not data.exists() and not run.exists()


def test_info_shows_the_cluster_store_as_docker_did():
    engine = EngineInfo(
        containers=0,
        running=0,
        stopped=0,
        images=0,
        debug=False,
        data_root="/var/lib/cnm",
        exec_root="/run/cnm",
        bridge_name="cnm0",
        default_pools=(),
        firewall_backend="nftables",
    )
    shown = info_json(engine, VersionInfo(version="0.1.0", cluster_store="etcd://10.0.0.1:2379"))
    assert (shown["ClusterStore"], shown["ClusterAdvertise"]) == ("etcd://10.0.0.1:2379", "")
    assert info_json(engine, VersionInfo(version="0.1.0"))["ClusterStore"] == ""
    cluster = VersionInfo(
        version="0.1.0", cluster_store="etcd://h:1", node_name="h7", cluster_advertise="198.51.100.7"
    )
    shown = info_json(engine, cluster)
    assert (shown["Name"], shown["ClusterAdvertise"]) == ("h7", "198.51.100.7")


# -- --cluster-advertise and --node-name -------------------------------------------------


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("198.51.100.7", "198.51.100.7"),
        ("198.51.100.7:2376", "198.51.100.7"),  # Docker's syntax: the port is accepted, unused
        ("eth0", "eth0"),
        ("ul0:4789", "ul0"),
    ],
)
def test_the_advertise_address_is_an_ip_or_an_interface(value, parsed):
    config = parse_args(["--cluster-store", "etcd://h:1", "--cluster-advertise", value])
    assert config.cluster_advertise == parsed


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("198.51.100.7:0", "port '0' is not a number in 1-65535"),
        ("198.51.100.7:http", "port 'http' is not a number"),
        (":2376", "expected IP|IFACE"),
        ("0.0.0.0", "0.0.0.0 is not a unicast address"),
        ("224.0.0.5", "is not a unicast address"),
        ("300.1.1.1", "'300.1.1.1' is not an IPv4 address"),
        ("[2001:db8::1]:2376", "IPv6 is not supported"),
        ("an interface name far too long", "neither an IPv4 address nor an interface name"),
    ],
)
def test_bad_advertise_values_are_refused_naming_the_flag(value, why):
    with pytest.raises(InvalidArgument, match=why) as err:
        parse_args(["--cluster-store", "etcd://h:1", "--cluster-advertise", value])
    assert str(err.value).startswith("invalid --cluster-advertise")


def test_the_node_name_defaults_to_the_hostname(monkeypatch):
    monkeypatch.setattr("socket.gethostname", lambda: "host-7.lab")
    assert parse_args(["--cluster-store", "etcd://h:1"]).node_name == "host-7.lab"
    assert parse_args(["--cluster-store", "etcd://h:1", "--node-name", "n1"]).node_name == "n1"
    monkeypatch.setattr("socket.gethostname", lambda: "-odd")
    with pytest.raises(
        InvalidArgument, match="the hostname '-odd' is not a valid node name: give --node-name"
    ):
        parse_args(["--cluster-store", "etcd://h:1"])


@pytest.mark.parametrize("name", ["", "-x", "a/b", "a b", "x" * 64, "é"])
def test_bad_node_names_are_refused(name):
    with pytest.raises(InvalidArgument, match="invalid --node-name"):
        parse_args(["--cluster-store", "etcd://h:1", f"--node-name={name}"])


@pytest.mark.parametrize("flag", [["--cluster-advertise", "10.0.0.1"], ["--node-name", "n1"]])
def test_cluster_flags_without_the_store_are_refused(flag):
    with pytest.raises(InvalidArgument, match=f"{flag[0]} given without --cluster-store"):
        parse_args(flag)


def test_the_advertise_address_is_resolved_on_this_host():
    """An address must be one of this host's; an interface gives its first IPv4 address;
    nothing given: the address this host reaches the cluster store from (a UDP connect:
    nothing is sent).  Read-only on the real host: lo only."""
    assert resolve_advertise("127.0.0.1", ("h:1",)) == "127.0.0.1"
    assert resolve_advertise("lo", ("h:1",)) == "127.0.0.1"
    assert resolve_advertise("", ("127.0.0.1:2379",)) == "127.0.0.1"
    with pytest.raises(InvalidArgument, match="192.0.2.77 is not an address of this host"):
        resolve_advertise("192.0.2.77", ("h:1",))
    with pytest.raises(InvalidArgument, match="no interface 'nosuchif0'"):
        resolve_advertise("nosuchif0", ("h:1",))


# -- the node record ----------------------------------------------------------------------


def membership(store: MemoryStore, daemon: str, name: str = "h1") -> ClusterMembership:
    member = ClusterMembership(("127.0.0.1:1",), daemon, node_name=name, address="198.51.100.1", ttl=5)
    member.store = store  # type: ignore[assignment]  # the claim logic over the reference store
    return member


async def test_the_node_record_is_on_the_lease_and_a_live_name_is_not_taken_twice():
    store = MemoryStore("global")
    first = membership(store, "a" * 16)
    await first._announce()
    entry = await store.get("node/h1")
    assert entry is not None and entry.lease == first.lease != 0
    assert entry.doc["Name"] == "h1" and entry.doc["ID"] == "a" * 16
    assert entry.doc["Address"] == "198.51.100.1" and entry.doc["WireguardKey"] == ""
    other = membership(store, "b" * 16)
    with pytest.raises(
        Conflict, match="node name 'h1' is taken by another live cnmd.*give this daemon another --node-name"
    ):
        await other._announce()
    assert (await store.get("node/h1")).doc["ID"] == "a" * 16  # unchanged
    # the same daemon (its data root) restarting before its old lease ran out takes it back
    again = membership(store, "a" * 16)
    await again._announce()
    entry = await store.get("node/h1")
    assert entry.lease == again.lease != first.lease
    await store.revoke(first.lease)  # the old lease running out takes nothing now
    assert await store.get("node/h1") is not None
    # once the holder's lease is gone, the name is free
    await store.revoke(again.lease)
    await other._announce()
    assert (await store.get("node/h1")).doc["ID"] == "b" * 16
    await other.update(WireguardKey="pub")
    assert (await store.get("node/h1")).doc["WireguardKey"] == "pub"
