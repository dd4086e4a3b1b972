"""The API over a fake controller, through a real aiohttp server on a unix socket.

Requests are written by hand on a raw socket so the tests see exactly the bytes a Docker
client sees: status lines, headers, chunking (or its absence), hijacked streams."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import struct
from dataclasses import dataclass

import pytest

from cnm.api.app import make_app, serve_unix
from cnm.api.schemas_system import VersionInfo

try:
    from test_api_fakes import FakeController
except ImportError:  # tests/ made a package
    from .test_api_fakes import FakeController  # type: ignore[no-redef]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    return status, headers


async def _read_body(
    reader: asyncio.StreamReader, headers: dict[str, str], status: int, method: str
) -> bytes:
    if method == "HEAD" or status in (204, 304):
        return b""
    if headers.get("transfer-encoding") == "chunked":
        out = b""
        while True:
            size = int((await reader.readline()).strip(), 16)
            if size == 0:
                await reader.readline()
                return out
            out += await reader.readexactly(size)
            await reader.readexactly(2)
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    return await reader.read()


class Client:
    def __init__(self, path: str) -> None:
        self.path = path

    async def open(
        self, method: str, url: str, body: bytes | dict | None = None, headers: dict[str, str] | None = None
    ):
        reader, writer = await asyncio.open_unix_connection(self.path)
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        hdrs = {"Host": "api.moby.localhost", **(headers or {})}
        if body is not None:
            hdrs["Content-Length"] = str(len(body))
            hdrs.setdefault("Content-Type", "application/json")
        head = f"{method} {url} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        writer.write(head.encode() + (body or b""))
        await writer.drain()
        return reader, writer

    async def request(
        self, method: str, url: str, body: bytes | dict | None = None, headers: dict[str, str] | None = None
    ) -> Reply:
        reader, writer = await self.open(method, url, body, headers)
        try:
            status, hdrs = await asyncio.wait_for(_read_head(reader), 5)
            data = await asyncio.wait_for(_read_body(reader, hdrs, status, method), 5)
        finally:
            writer.close()
        return Reply(status, hdrs, data)


@pytest.fixture
async def server(tmp_path):
    ctrl = FakeController()
    app = make_app(ctrl, version_info=VersionInfo(version="0.1.0"), tmp_dir=str(tmp_path / "uploads"))
    sock = str(tmp_path / "run" / "cnm.sock")
    runner = await serve_unix(app, sock, 0o660)
    yield ctrl, Client(sock), sock
    await runner.cleanup()


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    while data:
        stream, size = struct.unpack(">BxxxL", data[:8])
        out.append((stream, data[8 : 8 + size]))
        data = data[8 + size :]
    return out


# -- transport, versions, errors ----------------------------------------------------------------


async def test_socket_mode(server):
    _, _, sock = server
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
    assert stat.S_ISSOCK(os.stat(sock).st_mode)


async def test_ping_head_and_get(server):
    _, client, _ = server
    head = await client.request("HEAD", "/_ping")
    assert head.status == 200 and head.body == b""
    assert head.headers["api-version"] == "1.51"
    assert head.headers["ostype"] == "linux"
    assert head.headers["docker-experimental"] == "false"
    assert head.headers["swarm"] == "inactive"
    assert head.headers["builder-version"] == "2"
    assert head.headers["cache-control"] == "no-cache, no-store, must-revalidate"
    get = await client.request("GET", "/_ping")
    assert get.body == b"OK"


async def test_version_unversioned_and_prefixed(server):
    _, client, _ = server
    for url in ("/version", "/v1.51/version", "/v1.24/version"):
        reply = await client.request("GET", url)
        assert reply.status == 200, url
        body = reply.json()
        assert body["ApiVersion"] == "1.51" and body["MinAPIVersion"] == "1.24"
        assert body["Components"][0]["Name"] == "Engine"


async def test_version_bounds(server):
    _, client, _ = server
    old = await client.request("GET", "/v1.12/version")
    assert old.status == 400
    assert old.json()["message"].startswith(
        "client version 1.12 is too old. Minimum supported API version is 1.24"
    )
    new = await client.request("GET", "/v1.99/networks")
    assert new.status == 400
    assert new.json() == {"message": "client version 1.99 is too new. Maximum supported API version is 1.51"}


async def test_unknown_path_is_json_404(server):
    _, client, _ = server
    reply = await client.request("GET", "/v1.51/nothing/here")
    assert reply.status == 404
    assert reply.headers["content-type"] == "application/json"
    assert reply.body == b'{"message":"page not found"}\n'


async def test_inspect_fallbacks_are_404_json(server):
    _, client, _ = server
    for url in (
        "/v1.51/volumes/x",
        "/v1.51/plugins/x/json",
        "/v1.51/containers/x/json",
        "/v1.51/images/x/json",
        "/v1.51/networks/x",
    ):
        reply = await client.request("GET", url)
        assert reply.status == 404, url
        assert reply.headers["content-type"] == "application/json"
        assert "message" in reply.json()


async def test_info_and_swarm_leave(server):
    _, client, _ = server
    info = (await client.request("GET", "/info")).json()
    assert info["Plugins"]["Network"] == ["bridge", "host", "null", "overlay"]
    assert info["DefaultAddressPools"] == [{"Base": "172.17.0.0/16", "Size": 16}]
    assert info["FirewallBackend"] == {"Driver": "nftables"}
    assert info["Swarm"]["LocalNodeState"] == "inactive"
    leave = await client.request("POST", "/v1.45/swarm/leave?force=True")
    assert leave.status == 503 and leave.json() == {"message": "This node is not part of a swarm"}


# -- networks -----------------------------------------------------------------------------------


async def test_network_lifecycle(server):
    ctrl, client, _ = server
    created = await client.request(
        "POST",
        "/v1.51/networks/create",
        {
            "Name": "test 01",
            "Driver": "bridge",
            "IPAM": {"Driver": "default", "Options": {}, "Config": [{"Subnet": "10.10.0.0/24"}]},
            "Options": {},
            "Labels": {"a": "b"},
        },
    )
    assert created.status == 201
    net_id = created.json()["Id"]
    assert created.json() == {"Id": net_id, "Warning": ""}
    listed = (await client.request("GET", "/v1.51/networks")).json()
    assert sorted(n["Name"] for n in listed) == ["bridge", "host", "none", "test 01"]
    assert all(n["Containers"] == {} for n in listed)
    inspect = (await client.request("GET", "/v1.51/networks/test%2001")).json()
    assert list(inspect) == [
        "Name",
        "Id",
        "Created",
        "Scope",
        "Driver",
        "EnableIPv4",
        "EnableIPv6",
        "IPAM",
        "Internal",
        "Attachable",
        "Ingress",
        "ConfigFrom",
        "ConfigOnly",
        "Containers",
        "Options",
        "Labels",
    ]
    assert inspect["IPAM"] == {"Driver": "default", "Options": {}, "Config": [{"Subnet": "10.10.0.0/24"}]}
    dup = await client.request("POST", "/networks/create", {"Name": "test 01"})
    assert dup.status == 409 and dup.json()["message"] == "network with name test 01 already exists"
    predefined = await client.request("POST", "/networks/create", {"Name": "bridge"})
    assert predefined.status == 403
    assert predefined.json()["message"] == "operation is not permitted on predefined bridge network "
    removed = await client.request("DELETE", f"/v1.51/networks/{net_id[:10]}")
    assert removed.status == 204
    gone = await client.request("DELETE", f"/v1.51/networks/{net_id}")
    assert gone.status == 404 and gone.json() == {"message": f"network {net_id} not found"}
    bridge = await client.request("DELETE", "/networks/bridge")
    assert bridge.status == 403


async def test_network_create_validation(server):
    _, client, _ = server
    cases = [
        ({"Name": " "}, "invalid name: name is empty"),
        ({"Name": "n", "IPAM": {"Config": [{"Subnet": "10.0.0.1/24"}]}}, "host bits"),
        ({"Name": "n", "IPAM": {"Config": [{"Subnet": "nonsense"}]}}, "invalid CIDR block notation"),
        ({"Name": "n", "Options": {"com.docker.network.driver.mtu": "12"}}, "invalid MTU"),
    ]
    for body, fragment in cases:
        reply = await client.request("POST", "/networks/create", body)
        assert reply.status == 400, body
        assert fragment in reply.json()["message"], reply.json()


async def test_network_docker_py_null_ipam_options(server):
    _, client, _ = server
    body = {
        "Name": "py",
        "Driver": None,
        "IPAM": {
            "Driver": "default",
            "Config": [
                {
                    "Subnet": "132.124.0.0/16",
                    "IPRange": "132.124.0.0/24",
                    "Gateway": "132.124.0.1",
                    "AuxiliaryAddresses": {"a": "132.124.1.1", "b": "132.124.1.2"},
                },
            ],
            "Options": None,
        },
        "CheckDuplicate": None,
    }
    created = await client.request("POST", "/networks/create", body)
    assert created.status == 201, created.body
    ipam = (await client.request("GET", "/networks/py")).json()["IPAM"]
    assert ipam["Options"] is None
    assert ipam["Config"] == [
        {
            "Subnet": "132.124.0.0/16",
            "IPRange": "132.124.0.0/24",
            "Gateway": "132.124.0.1",
            "AuxiliaryAddresses": {"a": "132.124.1.1", "b": "132.124.1.2"},
        }
    ]
    host = (await client.request("GET", "/networks/host")).json()
    assert host["IPAM"]["Config"] is None and host["Driver"] == "host"


async def test_network_list_filters(server):
    ctrl, client, _ = server
    await client.request("POST", "/networks/create", {"Name": "myfoo2", "Labels": {"env": "prod"}})
    await client.request("POST", "/networks/create", {"Name": "other"})

    async def names(filters) -> list[str]:
        from urllib.parse import quote

        reply = await client.request("GET", "/networks?filters=" + quote(json.dumps(filters)))
        assert reply.status == 200, reply.body
        return sorted(n["Name"] for n in reply.json())

    assert await names({"name": {"foo": True}}) == ["myfoo2"]  # unanchored regex
    assert await names({"name": ["foo"]}) == ["myfoo2"]  # docker-py's legacy form
    assert await names({"driver": {"null": True}}) == ["none"]
    assert await names({"type": ["custom"]}) == ["myfoo2", "other"]
    assert await names({"type": ["builtin"]}) == ["bridge", "host", "none"]
    assert await names({"label": ["env=prod"]}) == ["myfoo2"]
    assert await names({"label": ["env=dev"]}) == []
    assert await names({"dangling": ["true"]}) == ["myfoo2", "other"]
    assert await names({"id": ["fdhjklfdfdshjkfds"]}) == []
    bridge_id = next(n.id for n in ctrl.networks() if n.name == "bridge")
    assert await names({"id": [bridge_id[:8]]}) == ["bridge"]
    from urllib.parse import quote

    bad = await client.request("GET", "/networks?filters=" + quote('{"colour":["red"]}'))
    assert bad.status == 400 and bad.json() == {"message": "invalid filter 'colour'"}
    badtype = await client.request("GET", "/networks?filters=" + quote('{"type":["x"]}'))
    assert badtype.status == 400 and badtype.json() == {"message": "invalid filter: 'type'='x'"}


async def test_network_prune(server):
    ctrl, client, _ = server
    await client.request("POST", "/networks/create", {"Name": "keep", "Labels": {"keep": "1"}})
    await client.request("POST", "/networks/create", {"Name": "drop"})
    from urllib.parse import quote

    reply = await client.request("POST", "/networks/prune?filters=" + quote('{"label!":["keep"]}'))
    assert reply.json() == {"NetworksDeleted": ["drop"]}
    reply = await client.request("POST", "/networks/prune")
    assert reply.json() == {"NetworksDeleted": ["keep"]}
    assert ctrl.pruned_with == [None]
    reply = await client.request("POST", "/networks/prune")
    assert reply.json() == {"NetworksDeleted": None}


# -- containers ---------------------------------------------------------------------------------


async def _create(client: Client, body: dict, name: str = "web") -> str:
    reply = await client.request("POST", f"/v1.51/containers/create?name={name}", body)
    assert reply.status == 201, reply.body
    assert reply.json()["Warnings"] == [] or reply.json()["Warnings"]
    return reply.json()["Id"]


async def test_container_create_inspect_running_and_stopped(server):
    ctrl, client, _ = server
    await client.request(
        "POST", "/networks/create", {"Name": "backend", "IPAM": {"Config": [{"Subnet": "10.10.0.0/24"}]}}
    )
    cid = await _create(
        client,
        {
            "Image": "busybox",
            "Cmd": ["httpd", "-f"],
            "Hostname": "api.local",
            "ExposedPorts": {"80/tcp": {}},
            "HostConfig": {"NetworkMode": "default", "Dns": [], "ExtraHosts": []},
            "NetworkingConfig": {"EndpointsConfig": {"default": {"MacAddress": "92:d0:c6:0a:29:33"}}},
        },
    )
    stopped = (await client.request("GET", f"/containers/{cid[:8]}/json")).json()
    assert stopped["Name"] == "/web" and stopped["State"]["Status"] == "created"
    assert stopped["HostConfig"]["NetworkMode"] == "bridge"
    assert stopped["Config"]["MacAddress"] == "92:d0:c6:0a:29:33"
    assert stopped["Config"]["Hostname"] == "api.local"
    assert stopped["NetworkSettings"]["Ports"] == {}
    assert stopped["NetworkSettings"]["SandboxKey"] == ""
    assert list(stopped["NetworkSettings"]["Networks"]) == ["bridge"]
    ep = stopped["NetworkSettings"]["Networks"]["bridge"]
    assert ep["EndpointID"] == "" and ep["IPAddress"] == "" and ep["NetworkID"]
    # connecting a stopped container records the request
    conn = await client.request(
        "POST",
        "/networks/backend/connect",
        {
            "Container": "web",
            "EndpointConfig": {"IPAMConfig": {"IPv4Address": "10.10.0.10"}, "Aliases": ["db"]},
        },
    )
    assert conn.status == 200, conn.body
    started = await client.request("POST", f"/v1.51/containers/{cid}/start")
    assert started.status == 204
    again = await client.request("POST", f"/v1.51/containers/{cid}/start")
    assert again.status == 304 and again.body == b""
    running = (await client.request("GET", "/containers/web/json")).json()
    assert list(running)[:5] == ["Id", "Created", "Path", "Args", "State"]
    assert running["Path"] == "httpd" and running["Args"] == ["-f"]
    assert running["State"]["Running"] is True
    ns = running["NetworkSettings"]
    assert list(ns)[:9] == [
        "Bridge",
        "SandboxID",
        "SandboxKey",
        "Ports",
        "HairpinMode",
        "LinkLocalIPv6Address",
        "LinkLocalIPv6PrefixLen",
        "SecondaryIPAddresses",
        "SecondaryIPv6Addresses",
    ]
    assert ns["SandboxKey"].startswith("/run/cnm/netns/")
    assert ns["Ports"] == {"80/tcp": None}
    assert ns["IPAddress"] == "172.17.0.2" and ns["MacAddress"] == "92:d0:c6:0a:29:33"  # from "bridge" only
    assert ns["Networks"]["backend"]["IPAddress"] == "10.10.0.10"
    assert ns["Networks"]["backend"]["IPAMConfig"] == {"IPv4Address": "10.10.0.10"}
    assert ns["Networks"]["backend"]["DNSNames"] == ["web", "db", cid[:12], "api.local"]
    assert ns["Networks"]["bridge"]["DNSNames"] is None
    assert running["ResolvConfPath"].endswith("/resolv.conf")
    net = (await client.request("GET", "/networks/backend")).json()
    assert net["Containers"][cid] == {
        "Name": "web",
        "EndpointID": ep_id(ctrl, cid, "backend"),
        "MacAddress": "02:42:ac:11:00:02",
        "IPv4Address": "10.10.0.10/24",
        "IPv6Address": "",
    }
    inuse = await client.request("DELETE", "/networks/backend")
    assert inuse.status == 403 and "has active endpoints" in inuse.json()["message"]
    stop = await client.request("POST", f"/containers/{cid}/stop?t=1")
    assert stop.status == 204
    assert (await client.request("POST", f"/containers/{cid}/stop")).status == 304
    after = (await client.request("GET", f"/containers/{cid}/json")).json()["NetworkSettings"]
    assert after["IPAddress"] == "" and after["Networks"]["backend"]["IPAddress"] == ""
    assert after["Networks"]["backend"]["IPAMConfig"] == {"IPv4Address": "10.10.0.10"}


def ep_id(ctrl: FakeController, cid: str, net_name: str) -> str:
    net = ctrl.find_network(net_name)
    return next(e.id for e in ctrl.endpoints[net.id] if e.container_id == cid)


async def test_container_create_validation_and_mac_warning(server):
    _, client, _ = server
    cases = [
        (
            {"Image": "b", "Hostname": "x", "HostConfig": {"NetworkMode": "container:web"}},
            "conflicting options: hostname and the network mode",
        ),
        (
            {"Image": "b", "HostConfig": {"NetworkMode": "container:"}},
            "invalid network mode: invalid container format container:<name|id>",
        ),
        (
            {"Image": "b", "ExposedPorts": {"80/tcp": {}}, "HostConfig": {"NetworkMode": "container:a"}},
            "conflicting options: port exposing and the container type network mode",
        ),
        (
            {"Image": "b", "MacAddress": "92:d0:c6:0a:29:33", "HostConfig": {"NetworkMode": "host"}},
            "conflicting options: mac-address and the network mode",
        ),
        (
            {"Image": "b", "HostConfig": {"NetworkMode": "host", "Links": ["a:b"]}},
            "conflicting options: host type networking can't be used with links. This would result in undefined behavior",
        ),
        (
            {"Image": "b", "NetworkingConfig": {"EndpointsConfig": {"n": {"MacAddress": "zz"}}}},
            "invalid MAC address zz",
        ),
    ]
    for body, message in cases:
        reply = await client.request("POST", "/containers/create", body)
        assert reply.status == 400, body
        assert reply.json()["message"] == message
    bad_name = await client.request("POST", "/containers/create?name=-x", {"Image": "b"})
    assert bad_name.status == 400 and "Invalid container name (-x)" in bad_name.json()["message"]
    ok = await client.request(
        "POST",
        "/containers/create?name=mac",
        {"Image": "b", "MacAddress": "92:d0:c6:0a:29:33", "HostConfig": {"NetworkMode": "bridge"}},
    )
    assert ok.status == 201
    assert ok.json()["Warnings"] == [
        "The container-wide MacAddress field is now deprecated. It should be specified in EndpointsConfig instead."
    ]
    mac = (await client.request("GET", "/containers/mac/json")).json()
    assert mac["Config"]["MacAddress"] == "92:d0:c6:0a:29:33"
    assert mac["NetworkSettings"]["Networks"]["bridge"]["MacAddress"] == "92:d0:c6:0a:29:33"


async def test_container_list_and_filters(server):
    ctrl, client, _ = server
    a = await _create(client, {"Image": "busybox", "Cmd": ["sleep", "1d"], "Labels": {"tier": "db"}}, "api")
    await _create(client, {"Image": "busybox", "Cmd": ["echo", "hello world"]}, "job")
    await client.request("POST", f"/containers/{a}/start")
    running = (await client.request("GET", "/v1.51/containers/json")).json()
    assert [c["Names"] for c in running] == [["/api"]]
    item = running[0]
    assert item["Command"] == "sleep 1d" and item["State"] == "running"
    assert item["Status"].startswith("Up ")
    assert isinstance(item["Created"], int) and item["Created"] > 1_700_000_000
    assert item["HostConfig"] == {"NetworkMode": "bridge"}
    assert item["NetworkSettings"]["Networks"]["bridge"]["IPAddress"] == "172.17.0.2"
    every = (await client.request("GET", "/containers/json?all=1")).json()
    assert sorted(c["Names"][0] for c in every) == ["/api", "/job"]
    job = next(c for c in every if c["Names"] == ["/job"])
    assert job["Command"] == "echo 'hello world'" and job["Status"] == "Created"
    from urllib.parse import quote

    async def ps(filters) -> list[str]:
        reply = await client.request("GET", "/containers/json?all=1&filters=" + quote(json.dumps(filters)))
        assert reply.status == 200, reply.body
        return sorted(c["Names"][0] for c in reply.json())

    assert await ps({"name": ["jo"]}) == ["/job"]
    assert await ps({"status": {"created": True}}) == ["/job"]
    assert await ps({"label": ["tier=db"]}) == ["/api"]
    assert await ps({"network": ["bridge"]}) == ["/api", "/job"]
    assert await ps({"id": [a[:6]]}) == ["/api"]
    bad = await client.request("GET", "/containers/json?filters=" + quote('{"status":["zombie"]}'))
    assert bad.status == 400 and bad.json()["message"] == "invalid filter 'status=zombie'"


async def test_kill_remove_and_errors(server):
    _, client, _ = server
    cid = await _create(client, {"Image": "busybox"}, "kk")
    notrunning = await client.request("POST", f"/containers/{cid}/kill")
    assert notrunning.status == 409 and notrunning.json()["message"] == f"container {cid} is not running"
    await client.request("POST", f"/containers/{cid}/start")
    assert (await client.request("POST", f"/containers/{cid}/kill?signal=SIGTERM")).status == 204
    await client.request("POST", f"/containers/{cid}/restart")
    busy = await client.request("DELETE", "/containers/kk")
    assert busy.status == 409
    assert (await client.request("DELETE", "/containers/kk?force=True&v=False&link=False")).status == 204
    missing = await client.request("DELETE", "/containers/kk?force=1")
    assert missing.status == 404 and missing.json() == {"message": "No such container: kk"}


async def test_wait_flushes_headers_before_the_exit(server):
    ctrl, client, _ = server
    cid = await _create(client, {"Image": "busybox"}, "w1")
    reader, writer = await client.open("POST", f"/v1.51/containers/{cid}/wait?condition=next-exit")
    status, headers = await asyncio.wait_for(_read_head(reader), 2)  # before the container even starts
    assert status == 200 and headers["content-type"] == "application/json"
    await client.request("POST", f"/containers/{cid}/start")
    await client.request("POST", f"/containers/{cid}/kill")
    body = await asyncio.wait_for(_read_body(reader, headers, status, "POST"), 2)
    assert json.loads(body) == {"StatusCode": 137, "Error": None}
    writer.close()
    bad = await client.request("POST", f"/containers/{cid}/wait?condition=never")
    assert bad.status == 400


async def test_wait_client_leaving_releases_the_waiter(server):
    ctrl, client, _ = server
    cid = await _create(client, {"Image": "busybox"}, "w2")
    reader, writer = await client.open("POST", f"/containers/{cid}/wait?condition=next-exit")
    await asyncio.wait_for(_read_head(reader), 2)
    writer.close()
    await asyncio.sleep(1.2)
    waiting = [t for t in asyncio.all_tasks() if "wait_container" in repr(t.get_coro())]
    assert waiting == []


async def test_logs_multiplexed_and_raw(server):
    ctrl, client, _ = server
    cid = await _create(client, {"Image": "busybox"}, "logs1")
    ctrl.logs[cid] = [(1, b"out\n"), (2, b"err\n")]
    ctrl.exited[cid].set()
    reply = await client.request("GET", f"/containers/{cid}/logs?stdout=1&stderr=1&tail=all")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/vnd.docker.multiplexed-stream"
    assert _frames(reply.body) == [(1, b"out\n"), (2, b"err\n")]
    only_err = await client.request("GET", f"/containers/{cid}/logs?stderr=1")
    assert _frames(only_err.body) == [(2, b"err\n")]
    none = await client.request("GET", f"/containers/{cid}/logs")
    assert none.status == 400
    assert none.json() == {"message": "Bad parameters: you must choose at least one stream"}
    tty = await _create(client, {"Image": "busybox", "Tty": True}, "tty1")
    ctrl.logs[tty] = [(1, b"raw")]
    ctrl.exited[tty].set()
    raw = await client.request("GET", f"/containers/{tty}/logs?stdout=1")
    assert raw.headers["content-type"] == "application/vnd.docker.raw-stream" and raw.body == b"raw"


# -- hijacked streams ---------------------------------------------------------------------------

_UPGRADE = {"Connection": "Upgrade", "Upgrade": "tcp"}


async def _start_running(ctrl: FakeController, client: Client, name: str) -> str:
    cid = await _create(client, {"Image": "busybox"}, name)
    await client.request("POST", f"/containers/{cid}/start")
    return cid


async def _exec(client: Client, cid: str, cmd: list[str], **opts) -> str:
    body = {
        "User": "",
        "Privileged": False,
        "Tty": False,
        "AttachStdin": False,
        "AttachStderr": True,
        "AttachStdout": True,
        "DetachKeys": "",
        "Env": [],
        "WorkingDir": "",
        "Cmd": cmd,
        **opts,
    }
    reply = await client.request("POST", f"/v1.51/containers/{cid}/exec", body)
    assert reply.status == 201, reply.body
    return reply.json()["Id"]


async def test_exec_hijack_half_close_keeps_output_flowing(server):
    ctrl, client, _ = server
    cid = await _start_running(ctrl, client, "ex")
    # stdin is echoed, then more output comes *after* the client's half-close
    script = "cat; echo after-eof; echo oops >&2; sleep 0.3; echo late; exit 3"
    exec_id = await _exec(client, cid, ["sh", "-c", script], AttachStdin=True)
    reader, writer = await client.open(
        "POST", f"/v1.51/exec/{exec_id}/start", {"Detach": False, "Tty": False}, _UPGRADE
    )
    status, headers = await asyncio.wait_for(_read_head(reader), 2)
    assert status == 101
    assert headers["upgrade"] == "tcp" and headers["connection"].lower() == "upgrade"
    assert headers["content-type"] == "application/vnd.docker.multiplexed-stream"
    assert "transfer-encoding" not in headers and "content-length" not in headers
    assert headers["api-version"] == "1.51"
    writer.write(b"hello stdin\n")
    await writer.drain()
    writer.write_eof()  # CloseWrite(), as the docker CLI does
    data = await asyncio.wait_for(reader.read(), 5)  # until the server closes
    frames = _frames(data)
    stdout = b"".join(d for s, d in frames if s == 1)
    stderr = b"".join(d for s, d in frames if s == 2)
    assert stdout == b"hello stdin\nafter-eof\nlate\n"
    assert stderr == b"oops\n"
    writer.close()
    info = (await client.request("GET", f"/v1.51/exec/{exec_id}/json")).json()
    assert info["ExitCode"] == 3 and info["Running"] is False
    assert info["ProcessConfig"] == {
        "tty": False,
        "entrypoint": "sh",
        "arguments": ["-c", script],
        "privileged": False,
        "user": "",
    }


async def test_exec_tty_is_raw(server):
    ctrl, client, _ = server
    cid = await _start_running(ctrl, client, "tt")
    exec_id = await _exec(client, cid, ["sh", "-c", "echo out; echo err >&2"], Tty=True)
    reader, writer = await client.open(
        "POST", f"/exec/{exec_id}/start", {"Detach": False, "Tty": True}, _UPGRADE
    )
    status, headers = await asyncio.wait_for(_read_head(reader), 2)
    assert status == 101 and headers["content-type"] == "application/vnd.docker.raw-stream"
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(), 5)
    assert sorted(data.splitlines()) == [b"err", b"out"]
    writer.close()


async def test_exec_stdin_sent_right_after_the_101_is_not_lost(server):
    """The Go client writes stdin the moment it has read the 101: nothing may be lost
    between aiohttp's parser and our take-over."""
    ctrl, client, _ = server
    cid = await _start_running(ctrl, client, "early")
    exec_id = await _exec(client, cid, ["cat"], AttachStdin=True)
    reader, writer = await client.open(
        "POST", f"/exec/{exec_id}/start", {"Detach": False, "Tty": False}, _UPGRADE
    )
    status, _ = await asyncio.wait_for(_read_head(reader), 2)
    assert status == 101
    writer.write(b"x" * 300_000)  # more than one read and more than the pipe buffer
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(), 5)
    assert b"".join(d for s, d in _frames(data) if s == 1) == b"x" * 300_000
    writer.close()


async def test_exec_without_upgrade_streams_200(server):
    ctrl, client, _ = server
    cid = await _start_running(ctrl, client, "plain")
    exec_id = await _exec(client, cid, ["echo", "hi"])
    reply = await client.request("POST", f"/exec/{exec_id}/start", {"Detach": False, "Tty": False})
    assert reply.status == 200
    assert _frames(reply.body) == [(1, b"hi\n")]


async def test_exec_detach_and_errors(server):
    ctrl, client, _ = server
    cid = await _start_running(ctrl, client, "dd")
    exec_id = await _exec(client, cid, ["sh", "-c", "echo x; exit 5"])
    reply = await client.request("POST", f"/exec/{exec_id}/start", {"Detach": True, "Tty": False})
    assert reply.status == 200 and reply.body == b""
    for _ in range(100):
        info = (await client.request("GET", f"/exec/{exec_id}/json")).json()
        if info["ExitCode"] is not None:
            break
        await asyncio.sleep(0.02)
    assert info["ExitCode"] == 5
    missing = await client.request("POST", "/exec/nope/start", {"Detach": False}, _UPGRADE)
    assert missing.status == 404 and missing.json() == {"message": "No such exec instance: nope"}
    empty = await client.request("POST", f"/containers/{cid}/exec", {"Cmd": []})
    assert empty.status == 400 and empty.json() == {"message": "No exec command specified"}
    stopped = await _create(client, {"Image": "busybox"}, "st")
    conflict = await client.request("POST", f"/containers/{stopped}/exec", {"Cmd": ["true"]})
    assert conflict.status == 409 and conflict.json() == {"message": f"container {stopped} is not running"}


async def test_exec_resize_reaches_the_process(server):
    ctrl, client, _ = server
    cid = await _start_running(ctrl, client, "rs")
    exec_id = await _exec(client, cid, ["sleep", "0.5"], Tty=True)
    reader, writer = await client.open(
        "POST", f"/exec/{exec_id}/start", {"Detach": False, "Tty": True}, _UPGRADE
    )
    assert (await asyncio.wait_for(_read_head(reader), 2))[0] == 101
    assert (await client.request("POST", f"/exec/{exec_id}/resize?h=40&w=120")).status == 200
    assert ctrl.execs[exec_id].process.resized == [(40, 120)]
    await asyncio.wait_for(reader.read(), 5)
    writer.close()


async def test_attach_before_start_streams_output_and_stdin(server):
    ctrl, client, _ = server
    cid = await _create(client, {"Image": "busybox", "OpenStdin": True, "AttachStdin": True}, "at")
    reader, writer = await client.open(
        "POST",
        f"/v1.51/containers/{cid}/attach?stderr=1&stdin=1&stdout=1&stream=1",
        headers={**_UPGRADE, "Content-Type": "text/plain"},
    )
    status, headers = await asyncio.wait_for(_read_head(reader), 2)  # 101 before the start
    assert status == 101 and headers["content-type"] == "application/vnd.docker.multiplexed-stream"
    writer.write(b"typed\n")
    await writer.drain()
    writer.write_eof()
    await client.request("POST", f"/containers/{cid}/start")
    ctrl.logs[cid] = [(1, b"first\n")]
    await asyncio.sleep(0.05)
    ctrl.logs[cid].append((2, b"second\n"))
    await asyncio.sleep(0.05)
    ctrl._exit(ctrl.find_container(cid), 0)
    data = await asyncio.wait_for(reader.read(), 5)
    assert _frames(data) == [(1, b"first\n"), (2, b"second\n")]
    await asyncio.wait_for(ctrl.stdin_closed, 2)  # stdin reached the container, then EOF
    assert bytes(ctrl.stdin_data[cid]) == b"typed\n"
    writer.close()


async def test_server_survives_a_client_that_vanishes_mid_stream(server):
    ctrl, client, _ = server
    cid = await _start_running(ctrl, client, "vv")
    exec_id = await _exec(
        client, cid, ["sh", "-c", "i=0; while [ $i -lt 200 ]; do echo line $i; i=$((i+1)); sleep 0.005; done"]
    )
    reader, writer = await client.open("POST", f"/exec/{exec_id}/start", {"Detach": False}, _UPGRADE)
    assert (await asyncio.wait_for(_read_head(reader), 2))[0] == 101
    await reader.read(64)
    writer.transport.abort()  # a full, rude close
    for _ in range(200):
        if ctrl.execs[exec_id].exit_code is not None:
            break
        await asyncio.sleep(0.02)
    assert ctrl.execs[exec_id].exit_code == 0  # the process was not blocked by a full pipe
    assert (await client.request("GET", "/_ping")).status == 200


# -- images -------------------------------------------------------------------------------------


async def test_image_import_list_inspect_remove(server):
    ctrl, client, _ = server
    reply = await client.request(
        "POST",
        "/v1.51/images/create?fromSrc=-&repo=busybox&tag=1.36",
        b"TARDATA",
        {"Content-Type": "application/x-tar"},
    )
    assert reply.status == 200, reply.body
    assert reply.json() == {"status": "sha256:" + "cd" * 32}
    assert ctrl.imported == [("busybox:1.36", b"TARDATA")]
    images = (await client.request("GET", "/images/json")).json()
    assert images[0]["RepoTags"] == ["busybox:1.36"] and isinstance(images[0]["Created"], int)
    inspect = await client.request("GET", "/images/busybox:1.36/json")
    assert inspect.json()["Id"] == "sha256:" + "cd" * 32 and inspect.json()["Os"] == "linux"
    pull = await client.request("POST", "/images/create?fromImage=alpine&tag=3.10")
    assert pull.status == 404 and "cnm image import" in pull.json()["message"]
    deleted = await client.request("DELETE", "/images/busybox:1.36")
    assert deleted.json() == [{"Untagged": "busybox:1.36"}, {"Deleted": "sha256:" + "cd" * 32}]


async def test_image_tag(server):
    ctrl, client, _ = server
    await client.request(
        "POST", "/images/create?fromSrc=-&repo=busybox", b"T", {"Content-Type": "application/x-tar"}
    )
    tagged = await client.request("POST", "/v1.51/images/busybox/tag?repo=localhost:5000/team/box&tag=v1")
    assert tagged.status == 201 and tagged.body == b""
    assert "localhost:5000/team/box:v1" in ctrl.find_image("busybox").repo_tags
    missing = await client.request("POST", "/images/nope/tag?repo=x&tag=1")
    assert missing.status == 404 and missing.json()["message"] == "No such image: nope"
    for query in ("repo=Bad%20Name", "repo=", "tag=1"):
        bad = await client.request("POST", f"/images/busybox/tag?{query}")
        assert bad.status == 400 and "invalid reference format" in bad.json()["message"], query
    clash = await client.request("POST", "/images/busybox/tag?repo=x:1&tag=2")
    assert clash.status == 400


async def test_image_load_and_save_refused(server):
    ctrl, client, _ = server
    reply = await client.request(
        "POST", "/v1.51/images/load?quiet=0", b"ARCHIVE", {"Content-Type": "application/x-tar"}
    )
    assert reply.status == 200 and reply.headers["content-type"].startswith("application/json")
    assert [json.loads(line) for line in reply.body.splitlines()] == [
        {"stream": "Loaded image: app:1\n"},
        {"stream": "Loaded image ID: sha256:" + "12" * 32 + "\n"},
    ]
    assert ctrl.loaded == [b"ARCHIVE"]
    for url in ("/images/get?names=app:1", "/v1.51/images/app:1/get"):
        refused = await client.request("GET", url)
        assert refused.status == 403 and "cnm export -o FILE CONTAINER" in refused.json()["message"]


async def test_container_export(server):
    ctrl, client, _ = server
    created = await client.request("POST", "/containers/create?name=web", {"Image": "busybox"})
    cid = created.json()["Id"]
    reply = await client.request("GET", "/v1.51/containers/web/export")
    assert reply.status == 200 and reply.headers["content-type"] == "application/x-tar"
    assert reply.body == "".join(f"{cid[:12]}-{i};" for i in range(3)).encode()
    missing = await client.request("GET", "/containers/nope/export")
    assert missing.status == 404 and "nope" in missing.json()["message"]


async def test_image_labels_listed_and_filtered(server):
    from dataclasses import replace
    from urllib.parse import quote

    ctrl, client, _ = server

    await client.request(
        "POST", "/images/create?fromSrc=-&repo=plain", b"T", {"Content-Type": "application/x-tar"}
    )
    plain = ctrl.find_image("plain")
    ctrl.imgs["sha256:" + "ef" * 32] = replace(
        plain, id="sha256:" + "ef" * 32, repo_tags=("app:1",), labels={"tier": "web", "team": "a"}
    )
    query = quote(json.dumps({"label": ["tier=web"]}))
    listed = (await client.request("GET", f"/images/json?filters={query}")).json()
    assert [i["RepoTags"] for i in listed] == [["app:1"]] and listed[0]["Labels"] == {
        "tier": "web",
        "team": "a",
    }
    query = quote(json.dumps({"label": ["tier=db"]}))
    assert (await client.request("GET", f"/images/json?filters={query}")).json() == []
    inspect = (await client.request("GET", "/images/app:1/json")).json()
    assert inspect["Config"]["Labels"] == {"tier": "web", "team": "a"}
    assert (await client.request("GET", "/images/plain/json")).json()["Config"]["Labels"] is None


async def test_container_export_failing_midway_cuts_the_stream(server):
    """A failure after the 200 went out cannot become an error status: the chunked stream
    ends without its last chunk, which every client reports as a broken transfer."""
    from cnm.errors import RuntimeFailure

    ctrl, client, _ = server

    async def failing():
        yield b"first;"
        raise RuntimeFailure("export failed: disk on fire")

    ctrl.export_container = lambda ref: failing()  # type: ignore[method-assign]
    reader, writer = await client.open("GET", "/containers/any/export")
    try:
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"first;" in body
    assert not body.endswith(b"0\r\n\r\n") and b"HTTP/1.1" not in body


async def test_restarting_container_is_listed_without_all(server):
    """docker ps shows a container waiting for its restart policy: "Restarting (1) …"."""
    from dataclasses import replace

    ctrl, client, _ = server
    cid = await _create(
        client,
        {"Image": "busybox", "Cmd": ["false"], "HostConfig": {"RestartPolicy": {"Name": "always"}}},
        "flaky",
    )
    c = ctrl.ctrs[cid]
    ctrl.ctrs[cid] = replace(
        c, state=replace(c.state, status="restarting", exit_code=1, finished_at="2026-01-01T00:00:00Z")
    )
    items = (await client.request("GET", "/containers/json")).json()
    assert [i["Names"] for i in items] == [["/flaky"]]
    assert items[0]["Status"].startswith("Restarting (1) ")
    data = (await client.request("GET", f"/containers/{cid}/json")).json()
    assert data["State"]["Restarting"] is True and data["State"]["Status"] == "restarting"
    assert data["HostConfig"]["RestartPolicy"] == {"Name": "always", "MaximumRetryCount": 0}


# -- issue 7: logs options, resize, detach ------------------------------------------------------


async def test_logs_timestamps_since_until(server):
    ctrl, client, _ = server
    cid = await _create(client, {"Image": "busybox"}, "logs2")
    ctrl.logs[cid] = [(1, b"a\n"), (2, b"b\n"), (1, b"c\n")]  # the fake stamps them 1 s, 2 s, 3 s
    ctrl.exited[cid].set()
    reply = await client.request("GET", f"/containers/{cid}/logs?stdout=1&stderr=1&timestamps=1&since=2")
    assert _frames(reply.body) == [
        (2, b"1970-01-01T00:00:02.000000000Z b\n"),
        (1, b"1970-01-01T00:00:03.000000000Z c\n"),
    ]
    reply = await client.request("GET", f"/containers/{cid}/logs?stdout=1&stderr=1&until=1.5")
    assert _frames(reply.body) == [(1, b"a\n")]
    bad = await client.request("GET", f"/containers/{cid}/logs?stdout=1&since=yesterday")
    assert bad.status == 400 and "since" in bad.json()["message"]


async def test_resize_reaches_the_container_tty(server):
    ctrl, client, _ = server
    cid = await _create(client, {"Image": "busybox", "Tty": True}, "rz")
    assert (await client.request("POST", f"/containers/{cid}/resize?h=40&w=120")).status == 200
    assert ctrl.tty_sizes[cid] == [(40, 120)]
    assert (await client.request("POST", f"/containers/{cid}/resize?h=-1&w=5")).status == 400
    assert (await client.request("POST", "/containers/nope/resize?h=1&w=1")).status == 404


async def test_attach_detach_keys_end_the_attach_only(server):
    ctrl, client, _ = server
    cid = await _create(client, {"Image": "busybox", "Tty": True, "OpenStdin": True}, "dk")
    await client.request("POST", f"/containers/{cid}/start")
    reader, writer = await client.open(
        "POST",
        f"/containers/{cid}/attach?stdin=1&stdout=1&stderr=1&stream=1&detachKeys=ctrl-a,x",
        headers={**_UPGRADE, "Content-Type": "text/plain"},
    )
    assert (await asyncio.wait_for(_read_head(reader), 2))[0] == 101
    writer.write(b"ls\n\x01x")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the daemon closed the stream
    assert ctrl.find_container(cid).running  # the container goes on
    await asyncio.sleep(0.1)
    assert bytes(ctrl.stdin_data[cid]) == b"ls\n"  # the keys themselves were not sent
    writer.close()


# -- swarm: Docker's answers on a node that is not in a swarm --------------------------------------

NOT_MANAGER = (
    'This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" to '
    "connect this node to swarm and try again."
)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1.51/swarm"),
        ("POST", "/v1.51/swarm/init"),
        ("POST", "/swarm/join"),
        ("POST", "/v1.45/swarm/update?version=1"),
        ("GET", "/swarm/unlockkey"),
        ("GET", "/v1.51/services"),
        ("POST", "/v1.51/services/create"),
        ("GET", "/services/web"),
        ("DELETE", "/v1.51/services/web"),
        ("GET", "/services/web/logs"),
        ("GET", "/v1.51/nodes"),
        ("GET", "/nodes/abc"),
        ("DELETE", "/nodes/abc?force=1"),
        ("GET", "/v1.51/tasks"),
        ("GET", "/tasks/abc"),
        ("GET", "/v1.51/secrets"),
        ("POST", "/secrets/create"),
        ("DELETE", "/secrets/s1"),
        ("GET", "/v1.51/configs"),
        ("POST", "/configs/c1/update"),
    ],
)
async def test_swarm_only_paths_say_not_a_swarm_manager(server, method, path):
    _, client, _ = server
    reply = await client.request(method, path)
    assert reply.status == 503, (method, path, reply.status)
    assert reply.json() == {"message": NOT_MANAGER}


@pytest.mark.parametrize(
    "extra",
    [{"Scope": "swarm"}, {"Ingress": True}, {"Driver": "overlay", "Scope": "swarm"}],
)
async def test_swarm_networks_say_not_a_swarm_manager_and_create_nothing(server, extra):
    ctrl, client, _ = server
    reply = await client.request("POST", "/v1.51/networks/create", {"Name": "ov", **extra})
    assert reply.status == 503 and reply.json() == {"message": NOT_MANAGER}, (extra, reply.json())
    names = [n["Name"] for n in (await client.request("GET", "/networks")).json()]
    assert "ov" not in names


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"Driver": "overlay", "Scope": "local"}, "scope 'local' is not supported for overlay networks"),
        ({"Driver": "bridge", "Scope": "global"}, "scope 'global' is not supported for bridge networks"),
    ],
)
async def test_a_scope_other_than_the_drivers_is_refused(server, extra, why):
    """Overlay networks are global (the cluster store's), bridge networks local: asking
    for the other scope is a 400 naming both, and creates nothing."""
    _, client, _ = server
    reply = await client.request("POST", "/v1.51/networks/create", {"Name": "ov", **extra})
    assert reply.status == 400 and why in reply.json()["message"], reply.json()
    names = [n["Name"] for n in (await client.request("GET", "/networks")).json()]
    assert "ov" not in names
