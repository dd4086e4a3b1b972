"""The create body's mounts, restart policy and unsupported fields: parsed with moby's
wording, echoed by inspect as Docker does, refused when cnm would ignore them."""

from __future__ import annotations

import pytest

from cnm.api.schemas_container import NetworkView, container_inspect_json, parse_container_create
from cnm.errors import InvalidArgument
from cnm.model.container import Container

NOW = "2026-01-01T00:00:00Z"


def create(host: dict | None = None, **config) -> tuple:
    return parse_container_create({"Image": "busybox", "Cmd": ["true"], "HostConfig": host or {}, **config})


def inspect(host: dict | None = None, **config) -> dict:
    cfg, _ = create(host, **config)
    c = Container(id="c" * 64, name="web", created=NOW, config=cfg)
    return container_inspect_json(c, NetworkView([], None, lambda r: None), None)


# What the docker CLI sends for `docker run busybox true` (zero values everywhere).
DOCKER_CLI_HOST = {
    "Binds": None,
    "ContainerIDFile": "",
    "LogConfig": {"Type": "", "Config": {}},
    "NetworkMode": "default",
    "PortBindings": {},
    "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
    "AutoRemove": False,
    "VolumeDriver": "",
    "VolumesFrom": None,
    "ConsoleSize": [0, 0],
    "CapAdd": None,
    "CapDrop": None,
    "CgroupnsMode": "",
    "Dns": [],
    "DnsOptions": [],
    "DnsSearch": [],
    "ExtraHosts": None,
    "GroupAdd": None,
    "IpcMode": "",
    "Cgroup": "",
    "Links": None,
    "OomScoreAdj": 0,
    "PidMode": "",
    "Privileged": False,
    "PublishAllPorts": False,
    "ReadonlyRootfs": False,
    "SecurityOpt": None,
    "UTSMode": "",
    "UsernsMode": "",
    "ShmSize": 0,
    "Isolation": "",
    "CpuShares": 0,
    "Memory": 0,
    "NanoCpus": 0,
    "CgroupParent": "",
    "BlkioWeight": 0,
    "BlkioWeightDevice": [],
    "BlkioDeviceReadBps": [],
    "BlkioDeviceWriteBps": [],
    "BlkioDeviceReadIOps": [],
    "BlkioDeviceWriteIOps": [],
    "CpuPeriod": 0,
    "CpuQuota": 0,
    "CpuRealtimePeriod": 0,
    "CpuRealtimeRuntime": 0,
    "CpusetCpus": "",
    "CpusetMems": "",
    "Devices": [],
    "DeviceCgroupRules": None,
    "DeviceRequests": None,
    "MemoryReservation": 0,
    "MemorySwap": 0,
    "MemorySwappiness": None,
    "OomKillDisable": False,
    "PidsLimit": None,
    "Ulimits": None,
    "CpuCount": 0,
    "CpuPercent": 0,
    "IOMaximumIOps": 0,
    "IOMaximumBandwidth": 0,
    "MaskedPaths": None,
    "ReadonlyPaths": None,
}


def test_zero_values_from_the_docker_cli_pass():
    cfg, _ = create(DOCKER_CLI_HOST, Volumes=None, Healthcheck=None)
    assert cfg.restart_policy == "no" and cfg.mounts == ()


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("Privileged", True, "--privileged"),
        ("CapAdd", ["NET_ADMIN"], "--cap-add"),
        ("Memory", 1 << 20, "--memory"),
        ("Sysctls", {"net.ipv4.ip_forward": "1"}, "--sysctl"),
        ("ReadonlyRootfs", True, "--read-only"),
        ("VolumesFrom", ["other"], "--volumes-from"),
        ("PidMode", "host", "--pid"),
        ("MaskedPaths", [], "systempaths=unconfined"),
        ("Init", True, "--init"),
        ("ShmSize", 1 << 30, "--shm-size"),
        ("Devices", [{"PathOnHost": "/dev/fuse"}], "--device"),
    ],
)
def test_unsupported_host_fields_are_refused(field, value, flag):
    with pytest.raises(InvalidArgument) as err:
        create({field: value})
    assert f"HostConfig.{field}" in str(err.value) and flag in str(err.value)
    assert "not supported" in str(err.value)


def test_unsupported_config_fields_are_refused():
    with pytest.raises(InvalidArgument, match=r"Config.Volumes .*not supported"):
        create(Volumes={"/data": {}})
    with pytest.raises(InvalidArgument, match=r"Config.Healthcheck"):
        create(Healthcheck={"Test": ["CMD", "true"]})
    create(Healthcheck={"Test": ["NONE"]})  # disables: nothing to do


# -- restart policy ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({"Name": "on-failure", "MaximumRetryCount": 2}, ("on-failure", 2)),
        ({"Name": "always"}, ("always", 0)),
        ({"Name": "unless-stopped", "MaximumRetryCount": 0}, ("unless-stopped", 0)),
        ({"Name": ""}, ("no", 0)),
    ],
)
def test_restart_policy(policy, expected):
    cfg, _ = create({"RestartPolicy": policy})
    assert (cfg.restart_policy, cfg.restart_max) == expected
    assert inspect({"RestartPolicy": policy})["HostConfig"]["RestartPolicy"] == {
        "Name": expected[0],
        "MaximumRetryCount": expected[1],
    }


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ({"RestartPolicy": {"Name": "sometimes"}}, "unknown policy 'sometimes'"),
        ({"RestartPolicy": {"Name": "always", "MaximumRetryCount": 3}}, "can only be used with 'on-failure'"),
        ({"RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": -1}}, "cannot be negative"),
        ({"RestartPolicy": {"Name": "always"}, "AutoRemove": True}, "AutoRemove"),
    ],
)
def test_bad_restart_policy(host, message):
    with pytest.raises(InvalidArgument, match=message):
        create(host)


# -- mounts ------------------------------------------------------------------------------------


def test_binds_mounts_and_tmpfs_are_parsed_and_echoed():
    host = {
        "Binds": ["/tmp:/host:ro", "/srv/data:/data"],
        "Mounts": [
            {"Type": "bind", "Source": "/etc", "Target": "/hostetc", "ReadOnly": True},
            {"Type": "tmpfs", "Target": "/scratch", "TmpfsOptions": {"SizeBytes": 1048576, "Mode": 0o700}},
        ],
        "Tmpfs": {"/run": "rw,size=64m"},
    }
    cfg, _ = create(host)
    assert [(m.type, m.source, m.target, m.read_only) for m in cfg.mounts] == [
        ("bind", "/tmp", "/host", True),
        ("bind", "/srv/data", "/data", False),
        ("bind", "/etc", "/hostetc", True),
        ("tmpfs", "", "/scratch", False),
        ("tmpfs", "", "/run", False),
    ]
    out = inspect(host)
    assert out["HostConfig"]["Binds"] == ["/tmp:/host:ro", "/srv/data:/data"]
    assert out["HostConfig"]["Mounts"] == host["Mounts"]
    assert out["HostConfig"]["Tmpfs"] == {"/run": "rw,size=64m"}
    assert out["Mounts"] == [
        {
            "Type": "bind",
            "Source": "/tmp",
            "Destination": "/host",
            "Mode": "ro",
            "RW": False,
            "Propagation": "rprivate",
        },
        {
            "Type": "bind",
            "Source": "/srv/data",
            "Destination": "/data",
            "Mode": "",
            "RW": True,
            "Propagation": "rprivate",
        },
        {
            "Type": "bind",
            "Source": "/etc",
            "Destination": "/hostetc",
            "Mode": "",
            "RW": False,
            "Propagation": "rprivate",
        },
        {"Type": "tmpfs", "Source": "", "Destination": "/scratch", "Mode": "", "RW": True, "Propagation": ""},
    ]


def test_no_mounts_echo_as_docker():
    out = inspect()
    assert out["HostConfig"]["Binds"] is None
    assert "Mounts" not in out["HostConfig"] and "Tmpfs" not in out["HostConfig"]
    assert out["Mounts"] == []


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ({"Binds": ["myvol:/data"]}, "named volumes are not supported"),
        ({"Binds": ["/tmp"]}, "invalid volume specification"),
        ({"Binds": ["/tmp:data"]}, "must be absolute"),
        ({"Binds": ["/tmp:/"]}, "destination can't be '/'"),
        ({"Binds": ["/tmp:/x:bogus"]}, "invalid mode: bogus"),
        ({"Binds": ["/a:/x", "/b:/x"]}, "Duplicate mount point: /x"),
        ({"Mounts": [{"Type": "volume", "Source": "v", "Target": "/x"}]}, "volumes are not supported"),
        ({"Mounts": [{"Type": "bind", "Target": "/x"}]}, "Source must not be empty"),
        ({"Mounts": [{"Type": "bind", "Source": "/a"}]}, "Target must not be empty"),
        ({"Mounts": [{"Type": "nfs", "Source": "/a", "Target": "/x"}]}, "mount type unknown"),
        ({"Mounts": [{"Type": "tmpfs", "Source": "/a", "Target": "/x"}]}, "Source must not be specified"),
        ({"Tmpfs": {"/x": "size=1m,bogus"}}, "invalid tmpfs option"),
    ],
)
def test_bad_mounts(host, message):
    with pytest.raises(InvalidArgument, match=message):
        create(host)
