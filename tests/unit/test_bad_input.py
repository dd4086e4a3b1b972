"""Issue 7's input probe, case by case: each was a 500 or was accepted where Docker refuses.
Now each is a 4xx naming what is wrong, and nothing changes (over the fake controller for
the API, over the engine's fakes for the engine's own checks)."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cnm.api.app import make_app
from cnm.api.schemas_system import VersionInfo
from cnm.errors import InvalidArgument, NotFound
from cnm.ipam.default import parse_pool_spec
from cnm.model.container import ContainerConfig
from cnm.model.endpoint import EndpointRequest
from cnm.model.network import IpamConfig, NetworkSpec
from cnm.model.values import check_usable_subnet, parse_mac, parse_network_name

try:
    from test_api_fakes import FakeController
    from test_engine import World, run
except ImportError:  # tests/ made a package
    from .test_api_fakes import FakeController  # type: ignore[no-redef]
    from .test_engine import World, run  # type: ignore[no-redef]

RESERVED = [
    "127.0.0.0/8",
    "127.1.0.0/16",
    "224.0.0.0/4",
    "239.1.0.0/16",
    "0.0.0.0/8",
    "240.0.0.0/4",
    "255.255.255.252/30",
    "0.0.0.0/0",
]


@pytest.fixture
async def api(tmp_path):
    ctrl = FakeController()
    app = make_app(ctrl, version_info=VersionInfo(version="0.1.0"), tmp_dir=str(tmp_path / "uploads"))
    async with TestClient(TestServer(app)) as client:
        yield ctrl, client


async def refused(client: TestClient, method: str, path: str, status: int, *words: str, **kw) -> str:
    async with client.request(method, path, **kw) as reply:
        body = await reply.json()
        assert reply.status == status, (reply.status, body)
        for word in words:
            assert word in body["message"], body
        return body["message"]


# -- the body ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"Name":' + b'{"a":' * 3000 + b"1" + b"}" * 3001,
    ],
)
async def test_deeply_nested_json_is_400(api, raw: bytes) -> None:
    ctrl, client = api
    before = set(ctrl.nets)
    await refused(client, "POST", "/networks/create", 400, "nested too deeply", data=raw)
    assert set(ctrl.nets) == before


@pytest.mark.parametrize(
    "raw,word",
    [
        (b'{"Name": "n", "Labels": {"k": "\\ud800"}}', "surrogate"),
        (b'{"Name": "n", "Labels": {"k": NaN}}', "NaN"),
        (b'{"Name": "\xff"}', "invalid JSON"),
    ],
)
async def test_json_go_would_not_decode_is_400(api, raw: bytes, word: str) -> None:
    ctrl, client = api
    before = set(ctrl.nets)
    await refused(client, "POST", "/networks/create", 400, word, data=raw)
    assert set(ctrl.nets) == before


# -- networks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["a\x00b", "tab\there", "new\nline", "esc\x1b[31m", "del\x7f", "zw\u200bsp", "a/b"]
)
async def test_network_name_with_control_characters_is_400(api, name: str) -> None:
    ctrl, client = api
    before = set(ctrl.nets)
    await refused(client, "POST", "/networks/create", 400, "invalid network name", json={"Name": name})
    assert set(ctrl.nets) == before


def test_network_names_docker_takes_still_pass() -> None:
    for name in ("front", "my net", "-abc", "a.b_c-d", "ünï", "x" * 200):
        assert parse_network_name(name) == name


async def test_unknown_ipam_driver_is_dockers_404_and_other_builtins_400(api) -> None:
    ctrl, client = api
    before = set(ctrl.nets)
    await refused(
        client,
        "POST",
        "/networks/create",
        404,
        "could not find plugin nope",
        json={"Name": "n", "IPAM": {"Driver": "nope"}},
    )
    await refused(
        client, "POST", "/networks/create", 400, "'null'", json={"Name": "n", "IPAM": {"Driver": "null"}}
    )
    assert set(ctrl.nets) == before
    async with client.post("/networks/create", json={"Name": "n", "IPAM": {"Driver": "default"}}) as reply:
        assert reply.status == 201


@pytest.mark.parametrize("subnet", RESERVED)
async def test_reserved_subnets_are_400_naming_the_range(api, subnet: str) -> None:
    ctrl, client = api
    before = set(ctrl.nets)
    message = await refused(
        client,
        "POST",
        "/networks/create",
        400,
        subnet,
        "overlaps",
        json={"Name": "n", "IPAM": {"Config": [{"Subnet": subnet}]}},
    )
    assert any(r in message for r in ("0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4"))
    assert set(ctrl.nets) == before


def test_usable_subnets_pass_and_pools_in_reserved_ranges_are_refused() -> None:
    for ok in ("10.0.0.0/8", "172.17.0.0/16", "192.168.0.0/24", "169.254.0.0/16", "223.255.255.0/24"):
        check_usable_subnet(IPv4Network(ok))
    with pytest.raises(InvalidArgument, match="127.0.0.0/8"):
        parse_pool_spec("base=127.0.0.0/8,size=24")


async def test_reserved_subnet_is_refused_by_the_engine_too(tmp_path) -> None:
    ctl = await World(tmp_path).controller()
    before = [n.name for n in ctl.networks()]
    with pytest.raises(InvalidArgument, match="224.0.0.0/4"):
        await ctl.create_network(
            NetworkSpec(name="m", ipam=(IpamConfig(subnet=IPv4Network("224.1.0.0/16")),))
        )
    assert [n.name for n in ctl.networks()] == before


# -- MAC addresses ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mac", ["00:00:00:00:00:00", "00-00-00-00-00-00", "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01"]
)
def test_zero_and_group_macs_are_refused(mac: str) -> None:
    with pytest.raises(InvalidArgument, match=f"invalid MAC address {mac}"):
        parse_mac(mac)


async def test_zero_mac_is_400_on_create_and_connect(api) -> None:
    ctrl, client = api
    await client.post("/networks/create", json={"Name": "n1"})
    body = {
        "Image": "busybox",
        "Cmd": ["true"],
        "HostConfig": {"NetworkMode": "n1"},
        "MacAddress": "00:00:00:00:00:00",
    }
    await refused(client, "POST", "/containers/create?name=z1", 400, "00:00:00:00:00:00", json=body)
    body = {
        "Image": "busybox",
        "Cmd": ["true"],
        "HostConfig": {"NetworkMode": "n1"},
        "NetworkingConfig": {"EndpointsConfig": {"n1": {"MacAddress": "00:00:00:00:00:00"}}},
    }
    await refused(client, "POST", "/containers/create?name=z2", 400, "00:00:00:00:00:00", json=body)
    assert not ctrl.ctrs
    async with client.post("/containers/create?name=ok", json={"Image": "busybox", "Cmd": ["true"]}) as reply:
        assert reply.status == 201
    await refused(
        client,
        "POST",
        "/networks/n1/connect",
        400,
        "00:00:00:00:00:00",
        json={"Container": "ok", "EndpointConfig": {"MacAddress": "00:00:00:00:00:00"}},
    )
    assert not any(ctrl.endpoints.values())


# -- ports ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bindings,where",
    [
        ({"80/tcp": [{"HostPort": "8080"}], "81/tcp": [{"HostPort": "8080"}]}, "0.0.0.0:8080/tcp"),
        (
            {"80/tcp": [{"HostPort": "8080"}], "81/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]},
            "127.0.0.1:8080/tcp",
        ),
        (
            {
                "80/udp": [{"HostIp": "127.0.0.1", "HostPort": "53"}],
                "81/udp": [{"HostIp": "127.0.0.1", "HostPort": "53"}],
            },
            "127.0.0.1:53/udp",
        ),
        (
            {"80/tcp": [{"HostPort": "8080"}, {"HostIp": "127.0.0.1", "HostPort": "8080"}]},
            "127.0.0.1:8080/tcp",
        ),
    ],
)
async def test_one_host_port_twice_in_a_request_is_400_naming_it(api, bindings: dict, where: str) -> None:
    ctrl, client = api
    body = {"Image": "busybox", "Cmd": ["true"], "HostConfig": {"PortBindings": bindings}}
    await refused(client, "POST", "/containers/create?name=pp", 400, where, "twice", json=body)
    assert not ctrl.ctrs


@pytest.mark.parametrize(
    "bindings",
    [
        {"80/tcp": [{"HostPort": "8080"}], "80/udp": [{"HostPort": "8080"}]},  # other protocol
        {
            "80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}],
            "81/tcp": [{"HostIp": "127.0.0.2", "HostPort": "8080"}],
        },
        {"80/tcp": [{"HostPort": "8080"}, {"HostPort": "8080"}]},  # the very same binding twice: one
        {
            "80/tcp": [{"HostPort": "8000-8010"}],
            "81/tcp": [{"HostPort": "8000-8010"}],
        },  # any free port of a range
        {"80/tcp": [{"HostPort": ""}], "81/tcp": [{"HostPort": "0"}]},
    ],
)
async def test_host_ports_that_can_coexist_are_accepted(api, bindings: dict) -> None:
    _, client = api
    body = {"Image": "busybox", "Cmd": ["true"], "HostConfig": {"PortBindings": bindings}}
    async with client.post("/containers/create?name=pp", json=body) as reply:
        assert reply.status == 201, await reply.text()


@pytest.mark.parametrize("value", [True, 5, 1.5, "8080", {"HostPort": "8080"}])
async def test_port_bindings_of_the_wrong_type_are_400(api, value) -> None:
    _, client = api
    body = {"Image": "busybox", "Cmd": ["true"], "HostConfig": {"PortBindings": {"80/tcp": value}}}
    await refused(client, "POST", "/containers/create?name=pp", 400, "80/tcp", json=body)


# -- disconnect -------------------------------------------------------------------------------


async def test_disconnect_of_a_container_not_connected_is_404(tmp_path) -> None:
    ctl = await World(tmp_path).controller()
    await ctl.create_network(NetworkSpec(name="other"))
    await run(ctl, "running")
    await ctl.create_container("created", ContainerConfig(image="busybox"))
    with pytest.raises(NotFound, match="is not connected to network other"):
        await ctl.disconnect("other", "running")
    with pytest.raises(NotFound, match="is not connected to the network other"):
        await ctl.disconnect("other", "created")
    await ctl.connect("other", "running", EndpointRequest())
    await ctl.disconnect("other", "running")  # connected: still fine


async def test_disconnect_not_connected_maps_to_404(api) -> None:
    ctrl, client = api
    await client.post("/networks/create", json={"Name": "n1"})
    await client.post("/containers/create?name=c1", json={"Image": "busybox", "Cmd": ["true"]})
    await refused(
        client, "POST", "/networks/n1/disconnect", 404, "is not connected", json={"Container": "c1"}
    )


async def test_an_unexpected_failure_is_a_500_that_says_it_is_cnmds(api) -> None:
    ctrl, client = api

    def broken() -> list:
        raise ValueError("boom")

    ctrl.networks = broken  # type: ignore[method-assign]
    message = await refused(client, "GET", "/networks", 500, "internal error in cnmd", "ValueError", "boom")
    assert "log" in message
