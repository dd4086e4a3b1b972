"""Request bodies the CLI builds, compared with what Docker's CLI sends (research notes §3.4, §3.5, §4.2)."""

from __future__ import annotations

import pytest

from cnm.cli import flags as F
from cnm.cli.commands import network as netcmd
from cnm.cli.commands.exec import EXEC, exec_body
from cnm.cli.commands.run import CREATE, RUN
from cnm.cli.errors import CliError
from cnm.cli.runopts import create_body, validate_extra_host

ZERO_EP = {
    "IPAMConfig": None,
    "Links": None,
    "Aliases": None,
    "MacAddress": "",
    "DriverOpts": None,
    "GwPriority": 0,
    "NetworkID": "",
    "EndpointID": "",
    "Gateway": "",
    "IPAddress": "",
    "IPPrefixLen": 0,
    "IPv6Gateway": "",
    "GlobalIPv6Address": "",
    "GlobalIPv6PrefixLen": 0,
    "DNSNames": None,
}


def run_body(*argv: str, env: dict | None = None) -> dict:
    v, args, changed = F.parse(RUN, list(argv))
    return create_body(v, changed, args[0], args[1:], v["detach"], env or {})


def test_no_network_flag_sends_default_endpoint():
    body = run_body("-d", "busybox")
    assert body["HostConfig"]["NetworkMode"] == "default"
    assert body["NetworkingConfig"] == {"EndpointsConfig": {"default": ZERO_EP}}
    assert body["Cmd"] is None and body["Image"] == "busybox"
    assert body["AttachStdout"] is False and body["AttachStderr"] is False


def test_single_plain_network_sends_no_endpoint():
    for net in ("bridge", "host", "none", "container:web", "backend"):
        body = run_body("--network", net, "busybox")
        assert body["HostConfig"]["NetworkMode"] == net
        assert body["NetworkingConfig"]["EndpointsConfig"] == {}


def test_ip_mac_alias_go_to_the_first_network():
    body = run_body(
        "--net",
        "backend",
        "--ip",
        "10.10.0.10",
        "--mac-address",
        "92:d0:c6:0a:29:33",
        "--alias",
        "api",
        "--link",
        "db:d",
        "busybox",
    )
    ep = body["NetworkingConfig"]["EndpointsConfig"]["backend"]
    assert ep["IPAMConfig"] == {"IPv4Address": "10.10.0.10"}
    assert ep["MacAddress"] == "92:d0:c6:0a:29:33"
    assert ep["Aliases"] == ["api"] and ep["Links"] == ["db:d"]
    assert "MacAddress" not in body  # cleared at API >= 1.44
    assert body["HostConfig"]["Links"] == ["db:d"]


def test_default_network_keeps_mac_and_legacy_links():
    body = run_body("--mac-address", "92:d0:c6:0a:29:33", "--link", "db", "busybox")
    ep = body["NetworkingConfig"]["EndpointsConfig"]["default"]
    assert ep["MacAddress"] == "92:d0:c6:0a:29:33" and ep["Links"] is None
    assert body["HostConfig"]["Links"] == ["db"]


def test_long_network_syntax_and_multiple_networks():
    body = run_body(
        "--network", "name=front,alias=w,ip=10.0.0.5,driver-opt=k=V", "--network", "back", "busybox"
    )
    eps = body["NetworkingConfig"]["EndpointsConfig"]
    assert eps["front"]["Aliases"] == ["w"] and eps["front"]["DriverOpts"] == {"k": "v"}
    assert eps["front"]["IPAMConfig"] == {"IPv4Address": "10.0.0.5"}
    assert eps["back"] == ZERO_EP
    assert body["HostConfig"]["NetworkMode"] == "front"


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--network", "bridge", "--alias", "x", "busybox"],
            "network-scoped aliases are only supported for user-defined networks",
        ),
        (
            ["--network", "host", "--network", "backend", "busybox"],
            "conflicting options: cannot attach both user-defined and non-user-defined network-modes",
        ),
        (["--mac-address", "zz", "busybox"], "zz is not a valid mac address"),
        (["--network", "a", "--network", "a", "busybox"], 'network "a" is specified multiple times'),
        (["-p", "1-2:3-5", "busybox"], "invalid ranges specified for container and host Ports: 3-5 and 1-2"),
    ],
)
def test_client_side_validation(argv, message):
    with pytest.raises(ValueError) as err:
        run_body(*argv)
    assert str(err.value) == message


def test_everything_after_image_is_the_command():
    body = run_body(
        "-it",
        "--rm",
        "-e",
        "A=1",
        "-eB",
        "-w",
        "/tmp",
        "-u",
        "1000",
        "busybox",
        "sh",
        "-c",
        "ls -l",
        "-d",
        env={"B": "from-cli"},
    )
    assert body["Cmd"] == ["sh", "-c", "ls -l", "-d"]
    assert body["Env"] == ["A=1", "B=from-cli"]
    assert body["Tty"] and body["OpenStdin"] and body["StdinOnce"] and body["AttachStdin"]
    assert body["WorkingDir"] == "/tmp" and body["User"] == "1000"
    assert body["HostConfig"]["AutoRemove"] is True


def test_ports_dns_hosts_labels_entrypoint():
    body = run_body(
        "-p",
        "8080:80",
        "-P",
        "--expose",
        "443",
        "--dns",
        "1.1.1.1",
        "--dns-search",
        "x.local",
        "--dns-opt",
        "ndots:2",
        "--add-host",
        "db=10.0.0.2",
        "--add-host",
        "v6:[::1]",
        "-l",
        "a=b",
        "-l",
        "flag",
        "--entrypoint",
        "",
        "busybox",
    )
    assert body["ExposedPorts"] == {"443/tcp": {}, "80/tcp": {}}
    hc = body["HostConfig"]
    assert hc["PortBindings"] == {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}
    assert hc["PublishAllPorts"] is True
    assert (hc["Dns"], hc["DnsSearch"], hc["DnsOptions"]) == (["1.1.1.1"], ["x.local"], ["ndots:2"])
    assert hc["ExtraHosts"] == ["db:10.0.0.2", "v6:::1"]
    assert body["Labels"] == {"a": "b", "flag": ""}
    assert body["Entrypoint"] == [""]


def test_flag_validation_errors_exit_125():
    with pytest.raises(CliError) as err:
        F.parse(CREATE, ["--dns", "nope", "busybox"])
    assert err.value.exit_code == 125
    assert str(err.value).startswith(
        'invalid argument "nope" for "--dns" flag: IP address is not correctly formatted'
    )
    with pytest.raises(ValueError, match='bad format for add-host: "x"'):
        validate_extra_host("x")


def test_env_file(tmp_path):
    f = tmp_path / "env"
    f.write_text("# comment\n\nA=1\n  B=two words\nFROM_CLI\nUNSET\n")
    body = run_body("--env-file", str(f), "-e", "C=3", "busybox", env={"FROM_CLI": "yes"})
    assert body["Env"] == ["A=1", "B=two words", "FROM_CLI=yes", "C=3"]


def network_body(*argv: str) -> dict:
    v, (name,), changed = F.parse(netcmd.CREATE, list(argv))
    return netcmd.create_body(name, v, changed)


def test_network_create_defaults():
    assert network_body("mynet") == {
        "Name": "mynet",
        "Driver": "bridge",
        "Scope": "",
        "IPAM": {"Driver": "default", "Config": [], "Options": {}},
        "Internal": False,
        "Attachable": False,
        "Ingress": False,
        "ConfigOnly": False,
        "Options": {},
        "Labels": {},
    }


def test_network_create_groups_ipam_by_subnet():
    body = network_body(
        "--subnet",
        "172.28.0.0/16",
        "--ip-range",
        "172.28.5.0/24",
        "--gateway",
        "172.28.5.254",
        "--subnet",
        "10.9.0.0/24",
        "--aux-address",
        "a=172.28.1.5",
        "--aux-address",
        "b=10.9.0.7",
        "--internal",
        "--ipv6",
        "-o",
        "com.docker.network.bridge.enable_icc=false",
        "n",
    )
    assert body["IPAM"]["Config"] == [
        {
            "Subnet": "172.28.0.0/16",
            "IPRange": "172.28.5.0/24",
            "Gateway": "172.28.5.254",
            "AuxiliaryAddresses": {"a": "172.28.1.5"},
        },
        {"Subnet": "10.9.0.0/24", "AuxiliaryAddresses": {"b": "10.9.0.7"}},
    ]
    assert body["EnableIPv6"] is True and "EnableIPv4" not in body
    assert body["Internal"] is True
    assert body["Options"] == {"com.docker.network.bridge.enable_icc": "false"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--gateway", "10.0.0.1", "n"], "every ip-range or gateway must have a corresponding subnet"),
        (
            ["--subnet", "10.0.0.0/8", "--subnet", "10.1.0.0/16", "n"],
            "multiple overlapping subnet configuration is not supported",
        ),
        (
            ["--subnet", "10.0.0.0/24", "--ip-range", "10.1.0.0/25", "n"],
            "no matching subnet for range 10.1.0.0/25",
        ),
        (
            ["--subnet", "10.0.0.0/24", "--aux-address", "x=10.2.0.1", "n"],
            "no matching subnet for aux-address 10.2.0.1",
        ),
        (["--subnet", "bogus", "n"], "invalid subnet: invalid CIDR address: bogus"),
    ],
)
def test_network_create_client_errors(argv, message):
    with pytest.raises(CliError) as err:
        network_body(*argv)
    assert str(err.value) == message


def test_connect_body_is_a_full_endpoint_settings():
    v, (_net, ctr), _ = F.parse(netcmd.CONNECT, ["--ip", "10.0.0.3", "--driver-opt", "K=V", "n", "web"])
    body = netcmd.connect_body(ctr, v)
    expected = dict(ZERO_EP, IPAMConfig={"IPv4Address": "10.0.0.3"}, DriverOpts={"k": "v"})
    assert body == {"Container": "web", "EndpointConfig": expected}


def test_exec_body_matches_docker():
    v, args, _ = F.parse(EXEC, ["web", "ip", "addr"])
    assert exec_body(v, args[1:], {}, None) == {
        "User": "",
        "Privileged": False,
        "Tty": False,
        "AttachStdin": False,
        "AttachStderr": True,
        "AttachStdout": True,
        "Detach": False,
        "DetachKeys": "",
        "Env": [],
        "WorkingDir": "",
        "Cmd": ["ip", "addr"],
    }


def test_volumes_mounts_tmpfs_and_restart():
    body = run_body(
        "-v",
        "/tmp:/host:ro",
        "-v",
        "/data",
        "--mount",
        "type=bind,src=/etc,dst=/e,readonly",
        "--mount",
        "type=tmpfs,target=/t,tmpfs-size=64m,tmpfs-mode=1770",
        "--tmpfs",
        "/run:rw,size=1m",
        "--restart",
        "on-failure:3",
        "busybox",
    )
    host = body["HostConfig"]
    assert host["Binds"] == ["/tmp:/host:ro"]
    assert body["Volumes"] == {"/data": {}}  # an anonymous volume: the daemon says no
    assert host["Mounts"] == [
        {"Type": "bind", "Source": "/etc", "Target": "/e", "ReadOnly": True},
        {"Type": "tmpfs", "Target": "/t", "TmpfsOptions": {"SizeBytes": 64 << 20, "Mode": 0o1770}},
    ]
    assert host["Tmpfs"] == {"/run": "rw,size=1m"}
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    plain = run_body("busybox")["HostConfig"]
    assert plain["RestartPolicy"] == {"Name": "no", "MaximumRetryCount": 0} and plain["Binds"] is None
    assert "Mounts" not in plain and "Tmpfs" not in plain


def test_relative_volume_source_is_made_absolute():
    import os

    assert run_body("-v", "./sub:/x", "busybox")["HostConfig"]["Binds"] == [os.path.abspath("./sub") + ":/x"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--restart", ":3"], "no policy provided before colon"),
        (["--restart", "on-failure:x"], "maximum retry count must be an integer"),
        (["--rm", "--restart", "always"], "cannot specify both --restart and --rm"),
        (["--mount", "type=bind,src=/a"], "target is required"),
        (["--mount", "type=bind,src=/a,dst=/b,nonsense=1"], "unexpected key 'nonsense'"),
        (["--mount", "type=tmpfs,dst=/b,tmpfs-size=lots"], "invalid size"),
    ],
)
def test_bad_mount_and_restart_flags(argv, message):
    with pytest.raises(ValueError, match=message):
        run_body(*argv, "busybox")
