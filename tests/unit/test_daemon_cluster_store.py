"""cnmd's --cluster-store and --cluster-store-opt (Docker's old flags): parsed into
endpoints and TLS files, bad values refused naming the flag before anything starts, and
what /info shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnm.api.schemas_system import VersionInfo, info_json
from cnm.daemon.config import parse_args
from cnm.daemon.main import main
from cnm.engine.controller import EngineInfo
from cnm.errors import InvalidArgument
from cnm.store.etcd import TlsFiles


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
