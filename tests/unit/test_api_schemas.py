"""Docker JSON <-> model, without a server: filters, network and container shapes."""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from cnm.api.errors import status_of
from cnm.api.filters import Filters
from cnm.api.schemas_container import (
    NetworkView,
    container_inspect_json,
    human_duration,
    parse_container_create,
    parse_time,
    status_text,
)
from cnm.api.schemas_network import (
    endpoint_settings_json,
    network_json,
    parse_endpoint_settings,
    parse_network_create,
)
from cnm.errors import (
    Conflict,
    FirewallError,
    Forbidden,
    InvalidArgument,
    KernelError,
    NotFound,
    NotModified,
    Unavailable,
)
from cnm.model.container import Container, ContainerState
from cnm.model.endpoint import EndpointRecord, EndpointRequest, SandboxRecord
from cnm.model.network import IpamConfig, NetworkRecord


def test_status_map() -> None:
    assert [
        status_of(e("x"))
        for e in (
            NotFound,
            InvalidArgument,
            Conflict,
            Forbidden,
            NotModified,
            Unavailable,
            KernelError,
            FirewallError,
        )
    ] == [404, 400, 409, 403, 304, 503, 500, 500]
    assert status_of(ValueError("x")) == 500


def test_filters_both_forms_and_matching() -> None:
    new = Filters.parse('{"name":{"foo":true},"label":{"a=b":true,"c":true}}', ("name", "label"))
    old = Filters.parse('{"name":["foo"],"label":["a=b","c"]}', ("name", "label"))
    for f in (new, old):
        assert f.match("name", "myfoo2") and not f.match("name", "bar")
        assert f.match_kv("label", {"a": "b", "c": "x"})
        assert not f.match_kv("label", {"a": "b"})  # every label must hold
        assert not f.match_kv("label", {"a": "z", "c": ""})
    assert Filters.parse("", ()).match("name", "anything")
    assert Filters.parse('{"name":["(bad"]}', ("name",)).match("name", "(bad")  # bad regex: exact only
    with pytest.raises(InvalidArgument, match="invalid filter 'x'"):
        Filters.parse('{"x":["1"]}', ("name",))
    with pytest.raises(InvalidArgument):
        Filters.parse('{"dangling":["true","false"]}', ("dangling",)).bool_value("dangling")
    assert Filters.parse('{"label":["k","a=b"]}', ("label",)).labels() == {"k": None, "a": "b"}


NOW = "2025-11-05T10:00:00.123456789Z"


def _net(**kw) -> NetworkRecord:
    base = dict(
        id="a" * 64,
        name="mynet",
        driver="bridge",
        created=NOW,
        ipam_options={},
        subnet=IPv4Network("172.18.0.0/16"),
        gateway=IPv4Address("172.18.0.1"),
    )
    return NetworkRecord(**{**base, **kw})


def test_network_json_echo_rules() -> None:
    allocated = network_json(_net())
    assert allocated["IPAM"] == {
        "Driver": "default",
        "Options": {},
        "Config": [{"Subnet": "172.18.0.0/16", "Gateway": "172.18.0.1"}],
    }
    verbatim = network_json(_net(ipam=(IpamConfig(subnet=IPv4Network("10.1.0.0/24")),), ipam_options=None))
    assert verbatim["IPAM"]["Config"] == [{"Subnet": "10.1.0.0/24"}]  # no Gateway key: none was given
    assert verbatim["IPAM"]["Options"] is None
    host = network_json(_net(name="host", driver="host", subnet=None, gateway=None))
    assert host["IPAM"]["Config"] is None and host["Containers"] == {} and host["Labels"] == {}
    ep = EndpointRecord(
        id="e" * 64,
        network_id="a" * 64,
        container_id="c" * 64,
        sandbox_id="",
        name="web",
        mac="02:42:ac:12:00:02",
        address=IPv4Interface("172.18.0.2/16"),
    )
    assert list(network_json(_net(), [ep])["Containers"]) == ["ep-" + "e" * 64]  # no sandbox


def test_parse_network_create() -> None:
    spec = parse_network_create(
        {
            "Name": "n",
            "Driver": "",
            "Internal": True,
            "Labels": None,
            "IPAM": {
                "Config": [
                    {
                        "Subnet": "10.0.0.0/24",
                        "Gateway": "10.0.0.254",
                        "IPRange": None,
                        "AuxiliaryAddresses": {"r": "10.0.0.9"},
                    }
                ]
            },
        }
    )
    assert spec.driver == "bridge" and spec.internal and spec.ipam_options is None
    assert spec.ipam[0].gateway == IPv4Address("10.0.0.254")
    assert spec.ipam[0].aux_addresses == {"r": IPv4Address("10.0.0.9")}
    for body in (
        {"Name": ""},
        {"Name": "n", "IPAM": {"Config": [{"Gateway": "10.0.0.1"}]}},
        {"Name": "n", "IPAM": {"Config": [{"Subnet": "fd00::/64", "Gateway": "10.0.0.1"}]}},
        {"Name": "n", "IPAM": {"Config": [{"Subnet": "fe80::/64"}]}},
        {"Name": "n", "IPAM": {"Config": [{"Subnet": "fd00::1/64"}]}},
        {"Name": "n", "EnableIPv4": False},
        {"Name": "n", "Labels": {"a": 1}},
    ):
        with pytest.raises(InvalidArgument):
            parse_network_create(body)


def test_endpoint_settings_null_vs_empty() -> None:
    cli = parse_endpoint_settings(
        {"IPAMConfig": {"IPv4Address": ""}, "Links": None, "Aliases": [], "DriverOpts": {}}
    )
    assert cli.ipv4_address is None and cli.aliases_given and not cli.links_given
    out = endpoint_settings_json(cli)
    assert (
        out["Aliases"] == []
        and out["Links"] is None
        and out["DriverOpts"] == {}
        and out["IPAMConfig"] is None
    )
    py = endpoint_settings_json(parse_endpoint_settings(None))
    assert py["Aliases"] is None and py["DriverOpts"] is None


def test_container_create_normalisation() -> None:
    config, warnings = parse_container_create(
        {
            "Image": "busybox",
            "Cmd": "sh",
            "ExposedPorts": {"80": {}},
            "HostConfig": {
                "NetworkMode": "",
                "PortBindings": {"443/tcp": [{"HostIp": "", "HostPort": "8443"}]},
            },
            "NetworkingConfig": {"EndpointsConfig": {"default": {"Aliases": ["x"]}}},
        }
    )
    assert str(config.network_mode) == "bridge" and list(config.networks) == ["bridge"]
    assert config.cmd == ("sh",) and config.exposed_ports == ("80/tcp", "443/tcp")
    assert warnings == []
    config, _ = parse_container_create({"Image": "b", "NetworkingConfig": {"mynet": None}})  # docker-py quirk
    assert dict(config.networks) == {}
    with pytest.raises(InvalidArgument, match="must match the identity"):
        parse_container_create(
            {
                "Image": "b",
                "MacAddress": "02:00:00:00:00:01",
                "NetworkingConfig": {"EndpointsConfig": {"other": {}}},
            }
        )
    with pytest.raises(InvalidArgument, match="must match the endpoint-specific"):
        parse_container_create(
            {
                "Image": "b",
                "MacAddress": "02:00:00:00:00:01",
                "HostConfig": {"NetworkMode": "n"},
                "NetworkingConfig": {"EndpointsConfig": {"n": {"MacAddress": "02:00:00:00:00:02"}}},
            }
        )
    with pytest.raises(InvalidArgument, match="invalid port"):
        parse_container_create({"Image": "b", "ExposedPorts": {"http": {}}})


def test_time_and_status_text() -> None:
    assert parse_time(NOW) == datetime(2025, 11, 5, 10, 0, 0, 123456, tzinfo=UTC)
    assert parse_time("0001-01-01T00:00:00Z") is None
    assert [
        human_duration(s) for s in (0.5, 1, 3, 60, 150, 3600, 7200, 3 * 86400, 20 * 86400, 90 * 86400)
    ] == [
        "Less than a second",
        "1 second",
        "3 seconds",
        "About a minute",
        "2 minutes",
        "About an hour",
        "2 hours",
        "3 days",
        "2 weeks",
        "3 months",
    ]
    now = datetime(2025, 11, 5, 10, 2, 0, tzinfo=UTC)
    c = Container(id="c" * 64, name="web", created=NOW, config=parse_container_create({"Image": "b"})[0])
    assert status_text(c, now) == "Created"
    up = Container(
        id=c.id,
        name="web",
        created=NOW,
        config=c.config,
        state=ContainerState(status="running", started_at="2025-11-05T10:01:57Z"),
    )
    assert status_text(up, now) == "Up 3 seconds"
    done = Container(
        id=c.id,
        name="web",
        created=NOW,
        config=c.config,
        state=ContainerState(status="exited", exit_code=2, finished_at="2025-11-05T10:00:00Z"),
    )
    assert status_text(done, now) == "Exited (2) 2 minutes ago"


def test_inspect_deprecated_fields_only_from_bridge_and_container_mode() -> None:
    config, _ = parse_container_create({"Image": "b", "HostConfig": {"NetworkMode": "mynet"}})
    c = Container(
        id="c" * 64,
        name="web",
        created=NOW,
        config=config,
        state=ContainerState(status="running"),
        sandbox_id="s" * 64,
    )
    net = _net()
    ep = EndpointRecord(
        id="e" * 64,
        network_id=net.id,
        container_id=c.id,
        sandbox_id="s" * 64,
        name="web",
        mac="02:42:ac:12:00:02",
        address=IPv4Interface("172.18.0.2/16"),
        gateway=net.gateway,
        request=EndpointRequest(),
    )
    view = NetworkView(
        [(net, ep)], SandboxRecord(id="s" * 64, container_id=c.id, key="/run/cnm/netns/ssss"), lambda r: net
    )
    ns = container_inspect_json(c, view, None)["NetworkSettings"]
    assert ns["IPAddress"] == "" and ns["MacAddress"] == ""  # not the network named "bridge"
    assert (
        ns["Networks"]["mynet"]["IPAddress"] == "172.18.0.2" and ns["Networks"]["mynet"]["IPPrefixLen"] == 16
    )
    assert ns["SandboxID"] == "s" * 64
    shared, _ = parse_container_create({"Image": "b", "HostConfig": {"NetworkMode": "container:web"}})
    other = Container(id="d" * 64, name="side", created=NOW, config=shared)
    assert (
        container_inspect_json(other, NetworkView([], None, lambda r: None), None)["NetworkSettings"][
            "Networks"
        ]
        == {}
    )
