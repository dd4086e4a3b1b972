"""Docker's IPv6 JSON: network create/inspect, endpoint settings in and out, container
inspect's v6 fields (also the deprecated top-level ones of the default bridge), and the
daemon's --ipv6/--fixed-cidr-v6/--default-address-pool flags."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network

import pytest

from cnm.api.schemas_container import NetworkView, container_inspect_json, parse_container_create
from cnm.api.schemas_network import (
    endpoint_resource_json,
    endpoint_settings_json,
    network_json,
    parse_endpoint_settings,
    parse_network_create,
)
from cnm.daemon.config import parse_args
from cnm.errors import InvalidArgument
from cnm.ipam.api import DEFAULT_POOLS, PoolSpec
from cnm.model.container import Container, ContainerState
from cnm.model.endpoint import EndpointRecord, EndpointRequest, SandboxRecord
from cnm.model.network import IpamConfig, NetworkRecord

NOW = "2026-12-02T10:00:00.000000000Z"


def _net(**kw) -> NetworkRecord:
    fields = {
        "id": "n" * 64,
        "name": "dual",
        "driver": "bridge",
        "created": NOW,
        "enable_ipv6": True,
        "subnet": IPv4Network("172.18.0.0/16"),
        "gateway": IPv4Address("172.18.0.1"),
        "subnet6": IPv6Network("fd12:3456:789a::/64"),
        "gateway6": IPv6Address("fd12:3456:789a::1"),
    }
    fields.update(kw)
    return NetworkRecord(**fields)


def _ep(net: NetworkRecord, request: EndpointRequest | None = None) -> EndpointRecord:
    return EndpointRecord(
        id="e" * 64,
        network_id=net.id,
        container_id="c" * 64,
        sandbox_id="s" * 64,
        name="web",
        mac="02:42:ac:12:00:02",
        address=IPv4Interface("172.18.0.2/16"),
        gateway=net.gateway,
        address6=IPv6Interface("fd12:3456:789a::2/64"),
        gateway6=net.gateway6,
        request=request or EndpointRequest(),
    )


def test_parse_create_with_v4_and_v6_entries():
    spec = parse_network_create(
        {
            "Name": "dual",
            "EnableIPv6": True,
            "IPAM": {
                "Config": [
                    {"Subnet": "10.1.0.0/24"},
                    {
                        "Subnet": "2001:db8:1::/64",
                        "IPRange": "2001:db8:1::/80",
                        "Gateway": "2001:db8:1::fe",
                        "AuxiliaryAddresses": {"r": "2001:db8:1::9"},
                    },
                ]
            },
        }
    )
    assert spec.enable_ipv6
    v4, v6 = spec.ipam
    assert not v4.is_v6 and v6.is_v6
    assert v6.subnet == IPv6Network("2001:db8:1::/64") and v6.gateway == IPv6Address("2001:db8:1::fe")
    assert v6.ip_range == IPv6Network("2001:db8:1::/80")
    assert v6.aux_addresses == {"r": IPv6Address("2001:db8:1::9")}


def test_enable_ipv6_option_is_the_fallback():
    assert parse_network_create(
        {"Name": "n", "Options": {"com.docker.network.enable_ipv6": "true"}}
    ).enable_ipv6
    assert not parse_network_create(
        {"Name": "n", "EnableIPv6": False, "Options": {"com.docker.network.enable_ipv6": "true"}}
    ).enable_ipv6


@pytest.mark.parametrize(
    "entry,needle",
    [
        ({"Subnet": "2001:db8::/64", "Gateway": "10.0.0.1"}, "IPv4 value but subnet"),
        ({"Subnet": "10.0.0.0/24", "Gateway": "2001:db8::1"}, "IPv6 value but subnet"),
        ({"Subnet": "2001:db8::/64", "IPRange": "10.0.0.0/25"}, "IPv4 value"),
        ({"Subnet": "fe80::/64"}, "link-local"),
        ({"Subnet": "ff05::/64"}, "multicast"),
        ({"Subnet": "2001:db8::1/64"}, "host bits"),
        ({"Subnet": "2001:db8::/64", "Gateway": "2001:zz::1"}, "invalid gateway"),
    ],
)
def test_bad_v6_entries(entry, needle):
    with pytest.raises(InvalidArgument, match=needle):
        parse_network_create({"Name": "n", "EnableIPv6": True, "IPAM": {"Config": [entry]}})


def test_endpoint_settings_ipv6_address_in_and_out():
    request = parse_endpoint_settings({"IPAMConfig": {"IPv6Address": "2001:db8:1::f00d"}})
    assert request.ipv6_address == IPv6Address("2001:db8:1::f00d")
    with pytest.raises(InvalidArgument, match="invalid IPv6 address"):
        parse_endpoint_settings({"IPAMConfig": {"IPv6Address": "10.0.0.1"}})
    out = endpoint_settings_json(request, endpoint=_ep(_net(), request))
    assert out["IPAMConfig"] == {"IPv6Address": "2001:db8:1::f00d"}
    assert out["GlobalIPv6Address"] == "fd12:3456:789a::2"
    assert out["GlobalIPv6PrefixLen"] == 64
    assert out["IPv6Gateway"] == "fd12:3456:789a::1"
    # without a live endpoint: the request only
    blank = endpoint_settings_json(request)
    assert (blank["GlobalIPv6Address"], blank["GlobalIPv6PrefixLen"], blank["IPv6Gateway"]) == ("", 0, "")


def test_network_inspect_ipam_config_v4_then_v6():
    net = _net()
    out = network_json(net, [_ep(net)])
    assert out["EnableIPv6"] is True
    assert out["IPAM"]["Config"] == [
        {"Subnet": "172.18.0.0/16", "Gateway": "172.18.0.1"},
        {"Subnet": "fd12:3456:789a::/64", "Gateway": "fd12:3456:789a::1"},
    ]
    assert out["Containers"]["c" * 64]["IPv6Address"] == "fd12:3456:789a::2/64"
    # the user's entries are echoed per family; the other family shows what IPAM chose
    given = _net(ipam=(IpamConfig(subnet=IPv6Network("fd12:3456:789a::/64")),))
    assert network_json(given)["IPAM"]["Config"] == [
        {"Subnet": "172.18.0.0/16", "Gateway": "172.18.0.1"},
        {"Subnet": "fd12:3456:789a::/64"},
    ]
    v4only = _net(enable_ipv6=False, subnet6=None, gateway6=None)
    assert network_json(v4only)["IPAM"]["Config"] == [{"Subnet": "172.18.0.0/16", "Gateway": "172.18.0.1"}]
    bare = EndpointRecord(id="e" * 64, network_id="n" * 64, container_id="c" * 64, sandbox_id="", name="x")
    assert endpoint_resource_json(bare)["IPv6Address"] == ""


def test_container_inspect_v6_fields_and_default_bridge_top_level():
    config, _ = parse_container_create({"Image": "b"})
    c = Container(
        id="c" * 64,
        name="web",
        created=NOW,
        config=config,
        state=ContainerState(status="running"),
        sandbox_id="s" * 64,
    )
    bridge = _net(name="bridge")
    view = NetworkView(
        [(bridge, _ep(bridge))], SandboxRecord(id="s" * 64, container_id=c.id, key="/k"), lambda r: bridge
    )
    ns = container_inspect_json(c, view, None)["NetworkSettings"]
    assert ns["GlobalIPv6Address"] == "fd12:3456:789a::2"
    assert ns["GlobalIPv6PrefixLen"] == 64
    assert ns["IPv6Gateway"] == "fd12:3456:789a::1"
    assert ns["Networks"]["bridge"]["GlobalIPv6Address"] == "fd12:3456:789a::2"


def test_daemon_ipv6_flags():
    config = parse_args([])
    assert not config.ipv6 and config.fixed_cidr_v6 is None
    config = parse_args(["--ipv6", "--fixed-cidr-v6", "2001:db8:17::/64"])
    assert config.ipv6 and config.fixed_cidr_v6 == IPv6Network("2001:db8:17::/64")
    with pytest.raises(InvalidArgument, match="without --ipv6"):
        parse_args(["--fixed-cidr-v6", "2001:db8:17::/64"])
    with pytest.raises(InvalidArgument, match="host bits"):
        parse_args(["--ipv6", "--fixed-cidr-v6", "2001:db8:17::1/64"])
    with pytest.raises(InvalidArgument, match="link-local"):
        parse_args(["--ipv6", "--fixed-cidr-v6", "fe80::/64"])


def test_daemon_v6_default_address_pool():
    v6 = PoolSpec(IPv6Network("fd12:3456::/48"), 64)
    # only a v6 pool given: Docker's IPv4 defaults stay, the v6 pool replaces the ULA
    assert parse_args(["--default-address-pool", "base=fd12:3456::/48,size=64"]).default_pools == (
        *DEFAULT_POOLS,
        v6,
    )
    both = parse_args(
        [
            "--default-address-pool",
            "base=10.10.0.0/16,size=24",
            "--default-address-pool",
            "base=fd12:3456::/48,size=64",
        ]
    )
    assert both.default_pools == (PoolSpec(IPv4Network("10.10.0.0/16"), 24), v6)
