"""Issue 7's input probe against a real cnmd: each request that was a 500 or was accepted
where Docker refuses is now a 4xx with a message naming what is wrong, and the kernel and
the daemon's lists are the same before and after."""

from __future__ import annotations

import pytest
from e2e_util import daemon_state, diff_states, kernel_state, run_sleeper
from harness import TestHost, _UnixHTTPConnection


@pytest.fixture(scope="module")
def world(cnmhost: TestHost) -> TestHost:
    cnmhost.cnm("network", "create", "--subnet", "10.30.0.0/24", "pnet")
    run_sleeper(cnmhost, "p1", "--network", "pnet")
    run_sleeper(cnmhost, "p2")
    cnmhost.cnm("create", "--name", "p3", "--network", "pnet", "busybox", "sleep", "1d")
    return cnmhost


def _net(name: str, subnet: str | None = None, driver: str | None = None) -> dict:
    ipam: dict = {"Config": [{"Subnet": subnet}] if subnet else []}
    if driver:
        ipam["Driver"] = driver
    return {"Name": name, "IPAM": ipam}


def _ctr(**host: object) -> dict:
    return {"Image": "busybox", "Cmd": ["sleep", "1d"], "HostConfig": host}


# (method, path, body, status, words the message must hold)
CASES = {
    "ipam-driver-unknown-404": ("POST", "/networks/create", _net("ipn", driver="nope"), 404, ["nope"]),
    "subnet-loopback-400": ("POST", "/networks/create", _net("lo8", "127.0.0.0/8"), 400, ["127.0.0.0/8"]),
    "subnet-multicast-400": ("POST", "/networks/create", _net("mc4", "224.0.0.0/4"), 400, ["224.0.0.0/4"]),
    "subnet-this-network-400": ("POST", "/networks/create", _net("zero8", "0.0.0.0/8"), 400, ["0.0.0.0/8"]),
    "subnet-class-e-400": ("POST", "/networks/create", _net("e4", "240.0.0.0/4"), 400, ["240.0.0.0/4"]),
    "name-nul-400": ("POST", "/networks/create", _net("a\x00b"), 400, ["invalid network name"]),
    "disconnect-running-not-connected-404": (
        "POST",
        "/networks/pnet/disconnect",
        {"Container": "p2"},
        404,
        ["not connected"],
    ),
    "disconnect-created-not-connected-404": (
        "POST",
        "/networks/bridge/disconnect",
        {"Container": "p3"},
        404,
        ["not connected"],
    ),
    "connect-zero-mac-400": (
        "POST",
        "/networks/pnet/connect",
        {"Container": "p2", "EndpointConfig": {"MacAddress": "00:00:00:00:00:00"}},
        400,
        ["00:00:00:00:00:00"],
    ),
    "create-zero-mac-400": (
        "POST",
        "/containers/create?name=zmac",
        {**_ctr(NetworkMode="pnet"), "MacAddress": "00:00:00:00:00:00"},
        400,
        ["00:00:00:00:00:00"],
    ),
    "create-host-port-twice-400": (
        "POST",
        "/containers/create?name=twice",
        _ctr(PortBindings={"80/tcp": [{"HostPort": "8080"}], "81/tcp": [{"HostPort": "8080"}]}),
        400,
        ["8080", "twice"],
    ),
}


def _state(host: TestHost) -> dict:
    return {**kernel_state(host), **daemon_state(host)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_probe_request_is_a_clear_4xx(world: TestHost, case: str) -> None:
    method, path, body, status, words = CASES[case]
    before = _state(world)
    resp = world.api(method, path, body)
    assert resp.status == status, (resp.status, resp.body)
    assert resp.headers.get("Content-Type", "").startswith("application/json")
    for word in words:
        assert word in resp.message, resp.message
    assert diff_states(before, _state(world)) == {}


def test_deeply_nested_json_is_400(world: TestHost) -> None:
    before = _state(world)
    conn = _UnixHTTPConnection(str(world.socket_path), 30)
    try:
        conn.request(
            "POST",
            "/networks/create",
            body=b'{"Name":"deep","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            headers={"Content-Type": "application/json"},
        )
        reply = conn.getresponse()
        assert reply.status == 400 and b"nested too deeply" in reply.read()
    finally:
        conn.close()
    assert diff_states(before, _state(world)) == {}


def test_host_ip_not_on_this_host_is_400_at_start(world: TestHost) -> None:
    """Docker fails the start with a 500 ("cannot assign requested address"); cnm says 400
    and names the address.  The container stays Created, as with Docker."""
    resp = world.api(
        "POST",
        "/containers/create?name=farip",
        _ctr(PortBindings={"80/tcp": [{"HostIp": "8.8.8.8", "HostPort": "8082"}]}),
    )
    assert resp.status == 201, resp.body
    try:
        before = kernel_state(world)
        resp = world.api("POST", "/containers/farip/start")
        assert resp.status == 400, (resp.status, resp.body)
        assert "8.8.8.8 is not an address of this host" in resp.message
        assert diff_states(before, kernel_state(world)) == {}
    finally:
        world.cnm("rm", "-f", "farip")
