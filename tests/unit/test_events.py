"""The event log: the engine's ring and subscriptions, moby's filter rules, Docker's time
formats, the JSON message, ``GET /events`` over a real unix socket, and ``cnm events``'s
default line."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from cnm.api.app import make_app, serve_unix
from cnm.api.filters import Filters
from cnm.api.routes_events import ACCEPTED, matcher, message, parse_time
from cnm.api.schemas_system import VersionInfo
from cnm.cli.commands.events import pretty
from cnm.engine.events import Event, Events
from cnm.errors import InvalidArgument
from cnm.model.container import Container, ContainerConfig
from cnm.model.network import NetworkRecord

S = 1_000_000_000


class Clock:
    def __init__(self, start: int = 1_800_000_000 * S) -> None:
        self.now = start

    def __call__(self) -> int:
        self.now += 1000
        return self.now


def _container(name: str = "web", labels: dict[str, str] | None = None) -> Container:
    return Container(
        id="c" * 64,
        name=name,
        created="2026-12-01T00:00:00Z",
        config=ContainerConfig(image="busybox", labels=labels or {}),
    )


def _network(name: str = "front") -> NetworkRecord:
    return NetworkRecord(id="n" * 64, name=name, driver="bridge", created="2026-12-01T00:00:00Z")


def _filters(**fields: list[str]) -> Filters:
    return Filters.parse(json.dumps(fields), ACCEPTED)


# -- the ring -------------------------------------------------------------------------------


def test_ring_keeps_the_last_capacity_events_in_order() -> None:
    events = Events(capacity=3, clock=Clock())
    for i in range(5):
        events.emit("container", "start", f"id{i}", {})
    assert [e.actor_id for e in events.recent()] == ["id2", "id3", "id4"]


def test_recent_is_bounded_by_since_and_until_inclusive() -> None:
    events = Events(clock=Clock())
    stamps = [events.emit("network", "create", f"n{i}", {}).time_nano for i in range(4)]
    got = events.recent(since=stamps[1], until=stamps[2])
    assert [e.actor_id for e in got] == ["n1", "n2"]


def test_a_clock_stepping_back_does_not_reorder_the_log() -> None:
    ticks = iter([10, 5, 20])
    events = Events(clock=lambda: next(ticks))
    stamps = [events.emit("image", "tag", str(i), {}).time_nano for i in range(3)]
    assert stamps == sorted(stamps)


async def test_subscription_sees_the_past_then_live_events_without_gap() -> None:
    events = Events(clock=Clock())
    events.emit("container", "create", "a", {})
    assert events.subscribe().past == []  # no since, no until: live events only, as in moby
    sub = events.subscribe(since=0)
    events.emit("container", "start", "a", {})
    assert [e.action for e in sub.past] == ["create"]
    live = await asyncio.wait_for(sub.next(), 1)
    assert live is not None and live.action == "start"
    sub.close()
    assert await asyncio.wait_for(sub.next(), 1) is None  # closed: the reader is told


async def test_subscription_applies_its_match_and_until_to_live_events() -> None:
    clock = Clock()
    events = Events(clock=clock)
    sub = events.subscribe(until=clock.now + 2500, match=lambda e: e.type == "network")
    events.emit("container", "start", "c", {})  # filtered out
    events.emit("network", "create", "n1", {})
    events.emit("network", "create", "n2", {})  # after until
    first = await asyncio.wait_for(sub.next(), 1)
    assert first is not None and first.actor_id == "n1"
    sub.close()
    assert await sub.next() is None


async def test_a_subscriber_that_falls_behind_is_dropped() -> None:
    events = Events(capacity=2, clock=Clock())
    sub = events.subscribe()
    for i in range(3):
        events.emit("container", "start", str(i), {})
    assert sub.dropped
    seen = []
    while (e := await asyncio.wait_for(sub.next(), 1)) is not None:
        seen.append(e.actor_id)
    assert seen == ["1"]  # the oldest made room for the end marker
    events.emit("container", "start", "late", {})  # no longer delivered, no error


def test_container_attributes_labels_then_image_and_name() -> None:
    events = Events(clock=Clock())
    e = events.container("die", _container(labels={"name": "spoof", "tier": "web"}), exitCode="3")
    assert e.attributes == {"name": "web", "image": "busybox", "tier": "web", "exitCode": "3"}


def test_network_connect_names_the_container() -> None:
    events = Events(clock=Clock())
    e = events.network("connect", _network(), "c" * 64)
    assert e.attributes == {"name": "front", "type": "bridge", "container": "c" * 64}
    assert events.network("create", _network()).attributes == {"name": "front", "type": "bridge"}


# -- moby's filter rules ----------------------------------------------------------------------


def _include(ev: Event, /, **fields: list[str]) -> bool:
    return matcher(_filters(**fields))(ev)


def test_filters_type_and_event_are_exact() -> None:
    e = Event("container", "start", "c" * 64, {"name": "web", "image": "busybox"}, 1)
    assert _include(e)
    assert _include(e, type=["container"], event=["start", "die"])
    assert not _include(e, type=["network"])
    assert not _include(e, event=["sta"])


def test_filters_exec_events_match_by_prefix() -> None:
    e = Event("container", "exec_start: sh -c true", "c" * 64, {"name": "web"}, 1)
    assert _include(e, event=["exec_start"])


def test_filters_container_and_network_by_id_prefix_or_name() -> None:
    c = Event("container", "start", "abc123" + "0" * 58, {"name": "web"}, 1)
    n = Event("network", "connect", "def456" + "0" * 58, {"name": "front", "container": c.actor_id}, 1)
    assert _include(c, container=["abc"]) and _include(c, container=["web"])
    assert not _include(c, container=["db"])
    assert _include(n, network=["front"]) and _include(n, network=["def4"])
    # moby: a container filter keeps only events whose actor is that container
    assert not _include(n, container=["web"])
    assert not _include(c, network=["front"])


def test_filters_image_exact_with_or_without_tag() -> None:
    c = Event("container", "start", "c" * 64, {"name": "web", "image": "busybox:latest"}, 1)
    i = Event("image", "tag", "sha256:" + "f" * 64, {"name": "mine:1"}, 1)
    assert _include(c, image=["busybox"]) and _include(c, image=["busybox:latest"])
    assert not _include(c, image=["busy"])
    assert _include(i, image=["mine"]) and _include(i, image=["sha256:" + "f" * 64])


def test_filters_label_key_and_key_value() -> None:
    e = Event("container", "start", "c" * 64, {"name": "web", "tier": "front"}, 1)
    assert _include(e, label=["tier"]) and _include(e, label=["tier=front"])
    assert not _include(e, label=["tier=back"]) and not _include(e, label=["other"])


def test_filters_unknown_field_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="invalid filter 'colour'"):
        _filters(colour=["red"])


# -- time formats ---------------------------------------------------------------------------


NOW = 1_800_000_000 * S


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("1700000000", 1_700_000_000 * S),
        ("1700000000.5", 1_700_000_000 * S + S // 2),
        ("1700000000.000000001", 1_700_000_000 * S + 1),
        ("10m", NOW - 600 * S),
        ("1h30m", NOW - 5400 * S),
        ("1.5s", NOW - 1500_000_000),
        ("2026-12-01T22:00:00Z", 1_796_162_400 * S),
        ("2026-12-01T22:00:00.25Z", 1_796_162_400 * S + S // 4),
        ("2026-12-01T23:00:00+01:00", 1_796_162_400 * S),
    ],
)
def test_parse_time_docker_formats(raw: str, want: int) -> None:
    assert parse_time(raw, NOW) == want


def test_parse_time_naive_is_local_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "Etc/GMT-2")  # POSIX sign: two hours east of UTC
    time.tzset()
    try:
        assert parse_time("2026-12-01T22:00:00", NOW) == (1_796_162_400 - 7200) * S
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


@pytest.mark.parametrize("raw", ["yesterday", "10 minutes", "2026-13-01", "1700000000x"])
def test_parse_time_refuses_the_rest(raw: str) -> None:
    with pytest.raises(InvalidArgument, match="failed to parse value as time or duration"):
        parse_time(raw, NOW)


# -- the JSON message and the CLI line --------------------------------------------------------


def test_message_container_has_the_legacy_fields() -> None:
    e = Event("container", "start", "c" * 64, {"name": "web", "image": "busybox"}, 1_796_162_400_123_456_789)
    assert message(e) == {
        "status": "start",
        "id": "c" * 64,
        "from": "busybox",
        "Type": "container",
        "Action": "start",
        "Actor": {"ID": "c" * 64, "Attributes": {"name": "web", "image": "busybox"}},
        "scope": "local",
        "time": 1_796_162_400,
        "timeNano": 1_796_162_400_123_456_789,
    }
    assert list(message(e))[:3] == ["status", "id", "from"]


def test_message_network_has_no_legacy_fields() -> None:
    m = message(Event("network", "destroy", "n" * 64, {"name": "front", "type": "bridge"}, 5))
    assert "status" not in m and "id" not in m and m["Action"] == "destroy"


def test_pretty_is_dockers_default_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    e = Event("container", "start", "c" * 64, {"name": "web", "image": "busybox"}, 1_796_162_400_123_456_789)
    assert pretty(message(e)) == (
        f"2026-12-01T22:00:00.123456789Z container start {'c' * 64} (image=busybox, name=web)\n"
    )


# -- GET /events over a unix socket ----------------------------------------------------------


async def _get(sock: str, target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: docker\r\n\r\n".encode())
    status = int((await reader.readline()).split()[1])
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    return reader, writer, status


async def _chunk(reader: asyncio.StreamReader) -> bytes:
    size = int((await reader.readline()).strip(), 16)
    data = await reader.readexactly(size + 2)
    return data[:-2]


@pytest.fixture
async def api(tmp_path):
    events = Events()
    app = make_app(
        SimpleNamespace(events=events),  # type: ignore[arg-type]
        version_info=VersionInfo(version="0.1.0"),
        tmp_dir=str(tmp_path / "uploads"),
    )
    sock = str(tmp_path / "cnm.sock")
    runner = await serve_unix(app, sock, 0o600)
    yield events, sock
    await runner.cleanup()


async def test_get_events_past_until_returns_matches_and_ends(api) -> None:
    events, sock = api
    events.container("create", _container())
    events.network("create", _network())
    events.container("start", _container())
    from urllib.parse import quote

    filters = quote(json.dumps({"type": ["container"]}))
    import time

    until = f"{time.time():.9f}"  # in the past once the request arrives
    reader, writer, status = await _get(sock, f"/v1.47/events?since=0&until={until}&filters={filters}")
    assert status == 200
    body = b""
    while chunk := await _chunk(reader):
        body += chunk
    writer.close()
    actions = [json.loads(line)["Action"] for line in body.splitlines()]
    assert actions == ["create", "start"]


async def test_get_events_streams_live_until_the_client_goes(api) -> None:
    events, sock = api
    reader, writer, status = await _get(sock, "/events")
    assert status == 200
    await asyncio.sleep(0.05)
    events.network("connect", _network(), "c" * 64)
    line = json.loads(await asyncio.wait_for(_chunk(reader), 5))
    assert line["Type"] == "network" and line["Actor"]["Attributes"]["container"] == "c" * 64
    writer.close()
    for _ in range(100):  # the handler notices the client left and unsubscribes
        if not events._subscribers:
            break
        await asyncio.sleep(0.05)
    assert not events._subscribers


async def test_get_events_bad_input_is_400(api) -> None:
    _, sock = api
    for target in ("/events?since=yesterday", "/events?since=200&until=100", '/events?filters={"x":["1"]}'):
        reader, writer, status = await _get(sock, target)
        writer.close()
        assert status == 400, target


async def test_get_events_future_until_streams_then_ends(api) -> None:
    import time

    events, sock = api
    until = f"{time.time() + 0.5:.9f}"
    reader, writer, status = await _get(sock, f"/events?until={until}")
    assert status == 200
    await asyncio.sleep(0.05)
    events.container("start", _container())
    first = json.loads(await asyncio.wait_for(_chunk(reader), 5))
    assert first["Action"] == "start"
    assert await asyncio.wait_for(_chunk(reader), 5) == b""  # the last chunk: until has passed
    writer.close()
    assert not events._subscribers


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--since", "yesterday"], "--since"),
        (["--until", "soon"], "--until"),
        (["--filter", "typecontainer"], "filter"),
        (["--format", "{{.Type"], "template"),
    ],
)
def test_cnm_events_bad_input_is_refused_before_any_request(tmp_path, args: list[str], named: str) -> None:
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[2] / "src")
    res = subprocess.run(
        [sys.executable, "-m", "cnm.cli", "-H", f"unix://{tmp_path}/absent.sock", "events", *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": src, "CNM_NO_AUTOSTART": "1"},
        timeout=30,
    )
    assert res.returncode != 0 and named in res.stderr, res.stderr
    assert "absent.sock" not in res.stderr  # refused before connecting
