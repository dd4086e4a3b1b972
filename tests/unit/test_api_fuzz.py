"""No input makes the API answer 500: every route, over the fake controller, gets bodies
that are not JSON, not objects, too deep, not UTF-8, hold NUL bytes, lone surrogates, huge
numbers, and good bodies with each field (at every depth) replaced by a value of the
wrong type; and query strings with the same kind of garbage.  Each answer must be a 4xx
(or a success) with Docker's JSON error body -- never a 500 carrying a Python message.

The hijacked and streaming routes (attach, logs, wait, exec start) are left out: they
wait on the container, and their input checks have tests of their own.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cnm.api.app import make_app
from cnm.api.schemas_system import VersionInfo

try:
    from test_api_fakes import FakeController
except ImportError:  # tests/ made a package
    from .test_api_fakes import FakeController  # type: ignore[no-redef]

# Bodies that are not a usable JSON object, as raw bytes.
RAW_BODIES: list[bytes] = [
    b"{",
    b"}",
    b"[",
    b"null",
    b"[]",
    b"[1,2]",
    b'"text"',
    b"1",
    b"-1e999",
    b"true",
    b"NaN",
    b'{"a": NaN}',
    b'{"a": Infinity}',
    b'{"a": -Infinity}',
    b"\xff\xfe\xfd",
    b'{"Name": "\xff"}',
    b"\x00",
    b'{"Name": "a\x00b"}',
    b'{"Name": "\\ud800"}',
    b'{"Name": "x", "Labels": {"\\udfff": "v"}}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 5000 + b"1" + b"}" * 5000,
    b'{"Name": "n", "Cmd": ' + b"[" * 900 + b"]" * 900 + b"}",
    b'{"Name": ' + b"9" * 5000 + b"}",
    b'{"Name": 1e400}',
    b"\xef\xbb\xbf{}",  # a UTF-8 byte order mark
]

# Values of the wrong type (or the right type with a wrong value) for any field.
BAD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**64,
    1.5,
    -1e300,
    "",
    "x",
    "\x00",
    "a\x00b",
    " ",
    "-",
    "9" * 400,
    [],
    [None],
    [1, "a"],
    {},
    {"": None},
    {"x": [1]},
    {"x": {"y": 1}},
]

GOOD_NETWORK = {
    "Name": "fuzznet",
    "Driver": "bridge",
    "Internal": False,
    "Attachable": True,
    "EnableIPv6": False,
    "Labels": {"a": "b"},
    "Options": {"com.docker.network.driver.mtu": "1500"},
    "IPAM": {
        "Driver": "default",
        "Options": {},
        "Config": [
            {
                "Subnet": "10.77.0.0/24",
                "IPRange": "10.77.0.0/25",
                "Gateway": "10.77.0.1",
                "AuxiliaryAddresses": {"r": "10.77.0.2"},
            }
        ],
    },
}
GOOD_ENDPOINT = {
    "IPAMConfig": {"IPv4Address": "10.77.0.9", "LinkLocalIPs": []},
    "Links": ["other:alias"],
    "Aliases": ["web"],
    "MacAddress": "02:42:0a:4d:00:09",
    "DriverOpts": {},
}
GOOD_CONTAINER = {
    "Image": "busybox",
    "Cmd": ["sleep", "1d"],
    "Entrypoint": None,
    "Env": ["A=1"],
    "WorkingDir": "/",
    "User": "root",
    "Tty": False,
    "OpenStdin": False,
    "StdinOnce": False,
    "AttachStdin": False,
    "AttachStdout": True,
    "AttachStderr": True,
    "Hostname": "h",
    "Domainname": "d",
    "Labels": {"k": "v"},
    "ExposedPorts": {"80/tcp": {}},
    "MacAddress": "",
    "StopSignal": "SIGTERM",
    "StopTimeout": 5,
    "HostConfig": {
        "NetworkMode": "fuzznet",
        "PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]},
        "PublishAllPorts": False,
        "Dns": ["192.0.2.53"],
        "DnsSearch": ["example.org"],
        "DnsOptions": ["ndots:1"],
        "ExtraHosts": ["h:10.0.0.1"],
        "Links": [],
        "AutoRemove": False,
    },
    "NetworkingConfig": {"EndpointsConfig": {"fuzznet": GOOD_ENDPOINT}},
}
GOOD_EXEC = {
    "Cmd": ["echo", "hi"],
    "AttachStdin": False,
    "AttachStdout": True,
    "AttachStderr": True,
    "Tty": False,
    "Env": ["A=1"],
    "User": "root",
    "WorkingDir": "/",
    "Privileged": False,
    "DetachKeys": "ctrl-p,ctrl-q",
    "ConsoleSize": [24, 80],
}

# (method, path, good body): the routes that read a JSON body.
BODY_ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/networks/create", GOOD_NETWORK),
    ("POST", "/networks/fuzznet/connect", {"Container": "c1", "EndpointConfig": GOOD_ENDPOINT}),
    ("POST", "/networks/fuzznet/disconnect", {"Container": "c1", "Force": False}),
    ("POST", "/containers/create?name=fuzz", GOOD_CONTAINER),
    ("POST", "/containers/c1/exec", GOOD_EXEC),
]

# Every other route, with path parameters that exist, that do not, and garbage.
PLAIN_ROUTES: list[tuple[str, str]] = [
    ("GET", "/_ping"),
    ("HEAD", "/_ping"),
    ("GET", "/version"),
    ("GET", "/info"),
    ("POST", "/swarm/leave"),
    ("GET", "/networks"),
    ("POST", "/networks/prune"),
    ("GET", "/networks/{net}"),
    ("DELETE", "/networks/{net}"),
    ("GET", "/containers/json"),
    ("GET", "/containers/{ctr}/json"),
    ("POST", "/containers/{ctr}/start"),
    ("POST", "/containers/{ctr}/stop"),
    ("POST", "/containers/{ctr}/kill"),
    ("POST", "/containers/{ctr}/rename"),
    ("POST", "/containers/{ctr}/restart"),
    ("POST", "/containers/{ctr}/resize"),
    ("DELETE", "/containers/{ctr}"),
    ("GET", "/exec/{ctr}/json"),
    ("POST", "/exec/{ctr}/resize"),
    ("POST", "/images/create"),
    ("GET", "/images/json"),
    ("GET", "/images/{img}/json"),
    ("DELETE", "/images/{img}"),
    ("GET", "/volumes/{img}"),
    ("GET", "/plugins/{img}/json"),
]
PATH_VALUES = ["c1", "fuzznet", "nosuch", "%00", "%ff%fe", "a%2Fb", "..", "x" * 300, "%F0%9F%90%B3"]
QUERY_KEYS = [
    "filters",
    "all",
    "limit",
    "size",
    "t",
    "signal",
    "name",
    "force",
    "v",
    "link",
    "h",
    "w",
    "scope",
    "verbose",
    "fromImage",
    "fromSrc",
    "repo",
    "tag",
    "condition",
    "follow",
    "tail",
    "since",
    "until",
]
QUERY_VALUES = [
    "",
    "x",
    "-1",
    "99999999999999999999999",
    "9" * 5000,
    "%00",
    "%ff",
    "{",
    "null",
    '{"name":"a"}',
    '{"name":{"a":true}}',
    '{"until":["x"]}',
    '{"dangling":["maybe"]}',
    '{"nosuchfilter":["x"]}',
    "SIGNOPE",
    " 5",
]


def mutations(value: Any) -> Iterator[Any]:
    """``value`` with one field (at any depth) replaced by each of BAD_VALUES, one at a
    time; plus the field removed."""
    if isinstance(value, dict):
        for key in value:
            for bad in BAD_VALUES:
                out = copy.deepcopy(value)
                out[key] = bad
                yield out
            out = copy.deepcopy(value)
            del out[key]
            yield out
            for inner in mutations(value[key]):
                out = copy.deepcopy(value)
                out[key] = inner
                yield out
    elif isinstance(value, list):
        for i, item in enumerate(value):
            for bad in BAD_VALUES:
                out = copy.deepcopy(value)
                out[i] = bad
                yield out
            for inner in mutations(item):
                out = copy.deepcopy(value)
                out[i] = inner
                yield out


@pytest.fixture
async def client(tmp_path) -> Iterator[TestClient]:
    ctrl = FakeController()
    app = make_app(ctrl, version_info=VersionInfo(version="0.1.0"), tmp_dir=str(tmp_path / "uploads"))
    async with TestClient(TestServer(app)) as c:
        reply = await c.post(
            "/networks/create", json={"Name": "fuzznet", "IPAM": {"Config": [{"Subnet": "10.77.0.0/24"}]}}
        )
        assert reply.status == 201
        reply = await c.post("/containers/create?name=c1", json={"Image": "busybox", "Cmd": ["true"]})
        assert reply.status in (201, 404), await reply.text()  # 404: the fake has no busybox
        yield c


class Failures:
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def check(self, client: TestClient, method: str, url: str, data: bytes | None = None) -> None:
        headers = {"Content-Type": "application/json"} if data is not None else {}
        async with client.request(method, url, data=data, headers=headers) as reply:
            body = await reply.read()
            if reply.status >= 500 and reply.status != 503:  # 503: Docker's "not a swarm", deliberate
                shown = data if data is None or len(data) < 300 else data[:300] + b"..."
                self.seen.append(f"{method} {url} {shown!r} -> {reply.status} {body[:300]!r}")
            elif reply.status >= 400 and method != "HEAD":
                assert reply.headers["Content-Type"] == "application/json", (method, url, body)
                assert json.loads(body)["message"], (method, url, body)

    def assert_none(self) -> None:
        assert not self.seen, f"{len(self.seen)} requests answered 5xx:\n" + "\n".join(self.seen[:40])


@pytest.mark.parametrize("method,path,good", BODY_ROUTES, ids=[p for _, p, _ in BODY_ROUTES])
async def test_malformed_bodies_are_4xx(client: TestClient, method: str, path: str, good: dict) -> None:
    failures = Failures()
    for raw in RAW_BODIES:
        await failures.check(client, method, path, raw)
    for body in mutations(good):
        await failures.check(client, method, path, json.dumps(body).encode())
    failures.assert_none()


async def test_malformed_paths_and_queries_are_4xx(client: TestClient) -> None:
    failures = Failures()
    for method, template in PLAIN_ROUTES:
        for value in PATH_VALUES:
            await failures.check(client, method, template.format(net=value, ctr=value, img=value))
        path = template.format(net="fuzznet", ctr="c1", img="busybox")
        for key in QUERY_KEYS:
            await asyncio.gather(*(failures.check(client, method, f"{path}?{key}={q}") for q in QUERY_VALUES))
    failures.assert_none()
