"""``-o com.docker.network.bridge.host_binding_ipv4=IP``: the default host address of the
ports a network publishes (Docker's default binding IP), validated at network create."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from test_engine import PortWorld

from cnm.api.schemas_network import parse_network_create
from cnm.engine.ports import default_host_ip
from cnm.errors import InvalidArgument
from cnm.model.container import ContainerConfig, PortBindingRequest
from cnm.model.network import OPT_HOST_BINDING, NetworkRecord, NetworkSpec, parse_host_binding
from cnm.model.network_mode import NetworkMode
from cnm.model.ports import ANY, ANY6, PortRequest

LO = IPv4Address("127.0.0.1")


@pytest.mark.parametrize(
    "raw, expected",
    [(None, None), ("", None), ("0.0.0.0", None), ("127.0.0.1", LO), (" 10.1.2.3 ", IPv4Address("10.1.2.3"))],
)
def test_the_option_parses_to_an_address_or_every_address(raw, expected):
    assert parse_host_binding(raw) == expected


@pytest.mark.parametrize(
    "raw, why",
    [
        ("garbage", "not an IP address"),
        ("127.0.0.1/8", "not an IP address"),
        ("300.1.1.1", "not an IP address"),
        ("::1", "not an IPv4 address"),
        ("224.0.0.1", "not a unicast address"),
        ("255.255.255.255", "not a unicast address"),
    ],
)
def test_a_bad_value_is_refused_at_create_naming_the_option(raw, why):
    with pytest.raises(
        InvalidArgument, match=rf"invalid host binding IP '{raw}' .*{OPT_HOST_BINDING}: {why}"
    ):
        parse_network_create({"Name": "n", "Options": {OPT_HOST_BINDING: raw}})


def test_a_request_without_a_host_ip_takes_the_networks_default_and_an_explicit_one_stays():
    local = NetworkRecord(
        id="n" * 64, name="local", driver="bridge", created="t", options={OPT_HOST_BINDING: "127.0.0.1"}
    )
    plain = NetworkRecord(id="m" * 64, name="plain", driver="bridge", created="t")
    requests = [PortRequest("tcp", 80), PortRequest("tcp", 81, ANY, 8081, 8081), PortRequest("udp", 53, LO)]
    # the option names a v4 address: no ``::`` twin (Docker binds IPv6 only for 0.0.0.0)
    assert [[r.host_ip for r in g] for g in default_host_ip(local, requests)] == [[LO], [ANY], [LO]]
    assert [[r.host_ip for r in g] for g in default_host_ip(plain, requests)] == [[ANY, ANY6], [ANY], [LO]]
    assert [[r.host_ip for r in g] for g in default_host_ip(plain, requests, ipv6=False)] == [
        [ANY],
        [ANY],
        [LO],
    ]


async def test_ports_published_on_a_local_network_bind_to_its_address(tmp_path):
    world = PortWorld(tmp_path)
    ctl = await world.controller()
    await ctl.create_network(NetworkSpec(name="local", options={OPT_HOST_BINDING: "127.0.0.1"}))
    bindings = {
        "80/tcp": (PortBindingRequest(host_port="8080"),),
        "81/tcp": (PortBindingRequest(),),  # -p 81: an ephemeral port
        "82/tcp": (PortBindingRequest(host_ip="0.0.0.0", host_port="8082"),),  # given: kept
    }
    container, _ = await ctl.create_container(
        "web",
        ContainerConfig(image="busybox", network_mode=NetworkMode.parse("local"), port_bindings=bindings),
    )
    await ctl.start_container(container.id)
    [(_, ep)] = ctl.container_endpoints(container.id)
    assert {(m.container_port, str(m.host_ip)) for m in ep.ports} == {
        (80, "127.0.0.1"),
        (81, "127.0.0.1"),
        (82, "0.0.0.0"),
    }
    rules = {r.container_port: r.host_ip for r in world.firewall.ports[ep.id]}
    assert rules == {80: LO, 81: LO, 82: None}  # None: any local address
    # the default bridge is left alone (cnmd has no --ip flag)
    other, _ = await ctl.create_container(
        "other",
        ContainerConfig(image="busybox", port_bindings={"80/tcp": (PortBindingRequest(host_port="9090"),)}),
    )
    await ctl.start_container(other.id)
    [(_, ep2)] = ctl.container_endpoints(other.id)
    assert [str(m.host_ip) for m in ep2.ports] == ["0.0.0.0", "::"]


async def test_garbage_at_create_leaves_no_network(tmp_path):
    world = PortWorld(tmp_path)
    ctl = await world.controller()
    before = ({n.name for n in ctl.networks()}, {link.name for link in await world.kernel.links()})
    with pytest.raises(InvalidArgument, match="invalid host binding IP 'nope'"):
        await ctl.create_network(NetworkSpec(name="bad", options={OPT_HOST_BINDING: "nope"}))
    assert ({n.name for n in ctl.networks()}, {link.name for link in await world.kernel.links()}) == before
