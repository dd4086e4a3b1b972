"""The live page without a kernel or a browser: ``--ui-addr`` validation, the token (file
mode, 403 on every path without it, read-only), the page's routes over a small fake engine
(map, explain, a port's path from the trace engine, the event stream), ``cnm ui``'s Engine API route, and
binding (a taken port is a clear error; port 0 reports the chosen one)."""

from __future__ import annotations

import asyncio
import fnmatch
import os
import socket
import stat
import tomllib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cnm.api.app import make_app
from cnm.api.schemas_system import VersionInfo
from cnm.api.ui import STATIC, TOKEN_FILE, make_ui_app, new_token, parse_port, serve_ui, trace_destination
from cnm.daemon.config import parse_args, parse_ui_addr
from cnm.daemon.main import main
from cnm.engine.events import Events
from cnm.engine.explain import Attachment, Explanation, PortPath
from cnm.engine.topology import Member, NetworkNode, Topology, Uplink
from cnm.engine.trace import Trace
from cnm.engine.trace_path import Hop
from cnm.errors import CnmError, InvalidArgument, NotFound, Unavailable
from cnm.model.container import RUNNING, Container, ContainerConfig, ContainerState
from cnm.model.network_mode import NetworkMode

WEB = "a" * 64
FRONT = "f" * 64
IDLE = "d" * 64
TOKEN = "t0ken-for-the-tests_0123456789abcdef"


def web_explanation() -> Explanation:
    attachment = Attachment(
        network="front", network_id=FRONT, driver="bridge", ifname="eth0", address="172.18.0.2/16",
        gateway="172.18.0.1", mac="02:42:ac:12:00:02", ifindex=2, iflink=9, host_ifname="veth1a",
        host_ifindex=9, bridge="br-ffffffffffff", bridge_ifindex=5,
        ports=(PortPath("tcp", "0.0.0.0", 8080, 80,
                        ('tcp . 8080 comment "cnm:x (web on front)" : 172.18.0.2 . 80  (map dnat)',),
                        "nft list map ip cnm dnat"),),
        commands={"inside": "nsenter --net=/n ip -d link show eth0", "bridge": "bridge link show master br-ffffffffffff"},
    )  # fmt: skip
    return Explanation(
        container="web", container_id=WEB, running=True, network_mode="front", netns="/n",
        attachments=(attachment,), commands={"conntrack 172.18.0.2": "conntrack -L -d 172.18.0.2"},
    )  # fmt: skip


UPLINK = Uplink(ifname="wan0", addresses=("203.0.113.2/24",), gateway="203.0.113.1")


class Engine:
    """What the page reads of the controller: topology, explain, trace, events."""

    def __init__(self) -> None:
        self.events = Events()
        self.traced: list[tuple[str, str, bool]] = []
        self.trace_fails: CnmError | None = None
        self.members: list[Member] = [
            Member(container="web", container_id=WEB, running=True, ifname="eth0", address="172.18.0.2/16",
                   mac="02:42:ac:12:00:02", host_ifname="veth1a", host_ifindex=9, ports=("0.0.0.0:8080->80/tcp",)),
        ]  # fmt: skip

    def containers(self) -> list[Container]:
        return [
            Container(id=WEB, name="web", created="", state=ContainerState(status=RUNNING, pid=7),
                      config=ContainerConfig(image="busybox", network_mode=NetworkMode.parse("front"))),
            Container(id=IDLE, name="idle", created="", config=ContainerConfig(image="busybox")),
        ]  # fmt: skip

    async def topology(self, network_refs: Sequence[str] = ()) -> Topology:
        node = NetworkNode(
            name="front", id=FRONT, driver="bridge", bridge="br-ffffffffffff", bridge_ifindex=5,
            subnet="172.18.0.0/16", gateway="172.18.0.1", internal=False, members=tuple(self.members),
        )  # fmt: skip
        return Topology(uplink=UPLINK, networks=(node,))

    async def explain_container(self, ref: str) -> Explanation:
        if not WEB.startswith(ref) and ref != "web":
            raise NotFound(f"No such container: {ref}")
        return web_explanation()

    async def trace(
        self, source: str, destination: str, live: bool = False, family: int | None = None
    ) -> Trace:
        self.traced.append((source, destination, live))
        if self.trace_fails is not None:
            raise self.trace_fails
        hops = (
            Hop("prerouting", "prerouting: DNAT to web (172.18.0.2:80) by the published port 8080/tcp",
                "nft list table ip cnm"),
            Hop("deliver", "into web's eth0 (172.18.0.2)"),
        )  # fmt: skip
        return Trace(
            source="world (203.0.113.1 via wan0)", destination="host (203.0.113.2):8080/tcp", protocol="tcp",
            port=8080, saddr="203.0.113.1", daddr="203.0.113.2", verdict="delivered", reason="", hops=hops,
        )  # fmt: skip


@pytest.fixture
async def page() -> AsyncIterator[tuple[Engine, TestClient]]:
    engine = Engine()
    client = TestClient(TestServer(make_ui_app(engine, TOKEN)))  # type: ignore[arg-type]
    await client.start_server()
    try:
        yield engine, client
    finally:
        await client.close()


# -- --ui-addr ----------------------------------------------------------------------------


def test_ui_addr_accepts_loopback_addresses_and_port_zero():
    assert parse_ui_addr("127.0.0.1:8088") == ("127.0.0.1", 8088)
    assert parse_ui_addr("127.1.2.3:0") == ("127.1.2.3", 0)
    assert parse_ui_addr("[::1]:9000") == ("::1", 9000)
    assert parse_args(["--ui-addr", "127.0.0.1:8088"]).ui_addr == ("127.0.0.1", 8088)
    assert parse_args([]).ui_addr is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0.0.0.0:8088", "not a loopback address"),
        ("203.0.113.2:8088", "not a loopback address"),
        ("[::]:8088", "not a loopback address"),
        ("localhost:8088", "not an IP address"),
        ("127.0.0.1", "expected IP:PORT"),
        (":8088", "expected IP:PORT"),
        ("127.0.0.1:http", "not a number in 0-65535"),
        ("127.0.0.1:65536", "not a number in 0-65535"),
        ("::1:8088", "in brackets, e.g. [::1]:8088"),
    ],
)
def test_ui_addr_refusals_name_the_flag_and_the_fault(value: str, message: str):
    with pytest.raises(InvalidArgument) as info:
        parse_ui_addr(value)
    assert f"invalid --ui-addr {value!r}" in str(info.value) and message in str(info.value)


def test_cnmd_refuses_a_non_loopback_page_before_doing_anything(capsys, tmp_path):
    root = tmp_path / "data"
    assert main(["--ui-addr", "0.0.0.0:8088", "--data-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnmd: invalid --ui-addr '0.0.0.0:8088': 0.0.0.0 is not a loopback address")
    assert not root.exists()


# -- the token ----------------------------------------------------------------------------


def test_token_file_is_private_and_new_at_each_start(tmp_path):
    first = new_token(str(tmp_path))
    path = tmp_path / TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == first and len(first) >= 40
    os.chmod(path, 0o644)  # a file someone loosened is replaced, not reused
    second = new_token(str(tmp_path))
    assert second != first and stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "path", ["/", "/ui.js", "/map", "/explain/web", "/path/web?port=8080/tcp", "/events", "/nosuch"]
)
async def test_every_path_is_403_without_the_token(page, path: str):
    _, client = page
    for query in ("", "?token=", "?token=wrong", f"?token={TOKEN}x"):
        target = path + (query.replace("?", "&") if "?" in path else query)
        reply = await client.get(target)
        assert reply.status == 403, target
        assert "token" in (await reply.json())["message"]


async def test_the_page_is_read_only(page):
    _, client = page
    for method in ("POST", "PUT", "DELETE"):
        reply = await client.request(method, f"/map?token={TOKEN}")
        assert reply.status == 403 and "read-only" in (await reply.json())["message"]
    # nothing of the Engine API is served there
    assert (await client.get(f"/containers/json?token={TOKEN}")).status == 404
    assert (await client.get(f"/cnm/v1/map?token={TOKEN}")).status == 404


# -- the page's routes ----------------------------------------------------------------------


async def test_index_carries_the_token_to_its_script_and_forbids_leaks(page):
    _, client = page
    reply = await client.get(f"/?token={TOKEN}")
    assert reply.status == 200 and reply.content_type == "text/html"
    html = await reply.text()
    assert f'<script src="ui.js?token={TOKEN}"></script>' in html and "{{TOKEN}}" not in html
    assert "http" not in html.replace('"http-equiv', "")  # nothing fetched from elsewhere
    assert reply.headers["Referrer-Policy"] == "no-referrer" and reply.headers["Cache-Control"] == "no-store"
    assert "script-src 'self'" in reply.headers["Content-Security-Policy"]
    js = await client.get(f"/ui.js?token={TOKEN}")
    assert js.status == 200 and js.content_type == "application/javascript"
    assert "EventSource" in await js.text()


async def test_map_has_the_topology_and_graphviz_drawing(page):
    _, client = page
    reply = await client.get(f"/map?token={TOKEN}")
    assert reply.status == 200
    body = await reply.json()
    (net,) = body["topology"]["networks"]
    assert [m["container"] for m in net["members"]] == ["web"]
    # every container, also one on no network of the drawing
    assert [(c["name"], c["running"]) for c in body["containers"]] == [("idle", False), ("web", True)]
    if body["svg"]:  # Graphviz installed: its SVG names the container's node by id
        assert body["svg"].lstrip().startswith("<?xml") and f"<title>c:{WEB}</title>" in body["svg"]
    else:
        assert any("Graphviz" in p for p in body["problems"])


async def test_explain_and_a_port_path_from_the_trace_engine(page):
    engine, client = page
    body = await (await client.get(f"/explain/{WEB[:12]}?token={TOKEN}")).json()
    assert body["container"] == "web" and body["attachments"][0]["ports"][0]["host_port"] == 8080
    reply = await client.get(f"/explain/nosuch?token={TOKEN}")
    assert reply.status == 404 and "nosuch" in (await reply.json())["message"]
    body = await (await client.get(f"/path/web?port=8080/tcp&token={TOKEN}")).json()
    assert engine.traced == [("world", "host:8080/tcp", False)], "the static walk: the page sends no probe"
    assert (
        body["source"] == "world (203.0.113.1 via wan0)"
        and body["destination"] == "host (203.0.113.2):8080/tcp"
    )
    assert [s["step"] for s in body["steps"]] == ["prerouting", "deliver"]
    assert body["steps"][0]["text"].startswith("prerouting: DNAT to web") and body["verdict"] == "delivered"
    assert body["steps"][0]["command"] == "nft list table ip cnm"
    reply = await client.get(f"/path/web?port=9999/tcp&token={TOKEN}")
    assert reply.status == 404 and "no port 9999/tcp" in (await reply.json())["message"]
    reply = await client.get(f"/path/web?port=80/icmp&token={TOKEN}")
    assert reply.status == 400 and "invalid port '80/icmp'" in (await reply.json())["message"]
    assert len(engine.traced) == 1, "a port the container does not publish is not traced"


async def test_a_port_path_the_trace_engine_cannot_walk_says_why(page):
    engine, client = page
    engine.trace_fails = InvalidArgument(
        "world: the cnmd host has no default route, so there is no world to trace"
    )
    reply = await client.get(f"/path/web?port=8080/tcp&token={TOKEN}")
    body = await reply.json()
    assert reply.status == 200 and body["verdict"] == "" and body["source"] == ""
    assert body["problems"] == [
        "no trace of this port: world: the cnmd host has no default route, so there is no world to trace"
    ]
    # what explain knows of the port is still shown: its DNAT element
    assert body["steps"] == [
        {
            "step": "dnat",
            "text": 'tcp . 8080 comment "cnm:x (web on front)" : 172.18.0.2 . 80  (map dnat)',
            "command": "nft list map ip cnm dnat",
        }
    ]


async def test_events_stream_a_change_per_map_event_and_skip_the_rest(page):
    engine, client = page
    reply = await client.get(f"/events?token={TOKEN}")
    assert reply.status == 200 and reply.content_type == "text/event-stream"
    assert await asyncio.wait_for(reply.content.readuntil(b"\n\n"), 5) == b"retry: 1000\n: live\n\n"
    engine.events.emit("container", "exec_start: sh", WEB, {"name": "web"})  # cannot change the map
    engine.events.emit("network", "connect", FRONT, {"name": "front", "container": WEB})
    frame = await asyncio.wait_for(reply.content.readuntil(b"\n\n"), 5)
    assert frame.startswith(b"event: change\ndata: ") and b'"action": "connect"' in frame
    assert b'"name": "front"' in frame
    reply.close()


# -- a port's path ---------------------------------------------------------------------------


def test_trace_destination_is_the_host_or_the_address_the_port_is_bound_to():
    def port(host_ip: str, proto: str = "tcp") -> PortPath:
        return PortPath(proto, host_ip, 8080, 80, (), "")

    assert trace_destination(port("0.0.0.0")) == "host:8080/tcp"
    assert trace_destination(port("")) == "host:8080/tcp"
    assert trace_destination(port("::", "udp")) == "host:8080/udp"
    assert trace_destination(port("203.0.113.2")) == "203.0.113.2:8080/tcp"
    assert trace_destination(port("2001:db8::1")) == "[2001:db8::1]:8080/tcp"  # the trace walks IPv6


def test_parse_port():
    assert parse_port("8080/tcp") == (8080, "tcp") and parse_port("53/udp") == (53, "udp")
    assert parse_port("8080") == (8080, "tcp")
    for bad in ("", "0/tcp", "70000/tcp", "x/tcp", "80/icmp"):
        with pytest.raises(InvalidArgument):
            parse_port(bad)


# -- cnm ui's route and binding --------------------------------------------------------------


async def test_engine_api_hands_out_the_url_only_when_the_page_runs(tmp_path):
    for ui_url, status in (("", 503), ("http://127.0.0.1:8088/?token=abc", 200)):
        app = make_app(Engine(), version_info=VersionInfo(version="0.1.0"), ui_url=ui_url)  # type: ignore[arg-type]
        async with TestClient(TestServer(app)) as client:
            reply = await client.get("/cnm/v1/ui")
            body = await reply.json()
            assert reply.status == status
            assert body == {"url": ui_url} if ui_url else "--ui-addr" in body["message"]


async def test_serve_ui_binds_port_zero_and_refuses_a_taken_port(tmp_path):
    runner, url = await serve_ui(Engine(), ("127.0.0.1", 0), str(tmp_path))  # type: ignore[arg-type]
    try:
        token = (tmp_path / TOKEN_FILE).read_text().strip()
        port = runner.addresses[0][1]
        assert port != 0 and url == f"http://127.0.0.1:{port}/?token={token}"
        (tmp_path / "x").mkdir()
        with pytest.raises(Unavailable) as info:
            await serve_ui(Engine(), ("127.0.0.1", port), str(tmp_path / "x"))  # type: ignore[arg-type]
        assert f"--ui-addr 127.0.0.1:{port}" in str(info.value)
    finally:
        await runner.cleanup()
    assert isinstance(info.value, CnmError)
    with socket.socket() as s:  # the port is free again after cleanup
        s.bind(("127.0.0.1", port))


def test_the_page_files_ship_as_package_data():
    repo = Path(__file__).resolve().parents[2]
    globs = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["cnm"]
    shipped = sorted(p.name for p in STATIC.iterdir() if p.is_file())
    assert shipped == ["index.html", "ui.js"]
    for name in shipped:
        assert any(fnmatch.fnmatch(f"api/static/{name}", g) for g in globs), name
