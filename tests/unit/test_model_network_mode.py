"""NetworkMode: Docker's HostConfig.NetworkMode parsed once into a typed value, stored as
an object, and read back from the text that records of v0.1.0 hold."""

from __future__ import annotations

import pytest

from cnm.errors import InvalidArgument, SystemFailure
from cnm.model.container import Container, ContainerConfig
from cnm.model.network_mode import NetworkMode
from cnm.store import codec


@pytest.mark.parametrize(
    ("text", "kind", "ref", "shown"),
    [
        ("", "bridge", "", "bridge"),
        ("default", "bridge", "", "bridge"),
        ("bridge", "bridge", "", "bridge"),
        ("host", "host", "", "host"),
        ("none", "none", "", "none"),
        ("container:web", "container", "web", "container:web"),
        ("container:0123456789ab", "container", "0123456789ab", "container:0123456789ab"),
        ("front", "network", "front", "front"),
    ],
)
def test_parse_and_text(text: str, kind: str, ref: str, shown: str) -> None:
    mode = NetworkMode.parse(text)
    assert (mode.kind, mode.ref) == (kind, ref)
    assert str(mode) == shown
    assert NetworkMode.parse(str(mode)) == mode


def test_what_each_mode_means() -> None:
    bridge, host, none = NetworkMode.parse("bridge"), NetworkMode.parse("host"), NetworkMode.parse("none")
    shared, user = NetworkMode.parse("container:web"), NetworkMode.parse("front")
    assert [m.network for m in (bridge, host, none, shared, user)] == ["bridge", "host", "none", "", "front"]
    assert [m.container for m in (bridge, host, none, shared, user)] == ["", "", "", "web", ""]
    assert [m.own_sandbox for m in (bridge, host, none, shared, user)] == [True, False, True, False, True]
    assert bridge.is_default_bridge and not user.is_default_bridge
    assert host.is_host and none.is_none


def test_container_mode_needs_a_name() -> None:
    with pytest.raises(InvalidArgument, match="invalid container format container:<name|id>"):
        NetworkMode.parse("container:")


@pytest.mark.parametrize(("kind", "ref"), [("bogus", ""), ("container", ""), ("network", ""), ("host", "x")])
def test_malformed_values_are_refused(kind: str, ref: str) -> None:
    with pytest.raises(InvalidArgument):
        NetworkMode(kind, ref)


def _doc(mode: object) -> dict:
    container = Container(
        id="c" * 64,
        name="web",
        created="2026-01-01T00:00:00.000000000Z",
        config=ContainerConfig(image="busybox"),
    )
    doc = codec.encode(container)
    doc["config"]["network_mode"] = mode
    return doc


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ("bridge", NetworkMode("bridge")),  # v0.1.0 kept the text
        ("host", NetworkMode("host")),
        ("container:db", NetworkMode("container", "db")),
        ("front", NetworkMode("network", "front")),
        ({"kind": "container", "ref": "db"}, NetworkMode("container", "db")),  # since: an object
        ({"kind": "none", "ref": ""}, NetworkMode("none")),
    ],
)
def test_stored_records_of_both_forms_load(stored: object, expected: NetworkMode) -> None:
    container = codec.decode(Container, _doc(stored))
    assert container.config.network_mode == expected


def test_new_records_store_an_object_that_loads_back() -> None:
    config = ContainerConfig(image="busybox", network_mode=NetworkMode.parse("container:db"))
    doc = codec.encode(config)
    assert doc["network_mode"] == {"kind": "container", "ref": "db"}
    assert codec.decode(ContainerConfig, doc) == config


@pytest.mark.parametrize("stored", ["container:", 7, {"kind": "teleport", "ref": ""}])
def test_a_broken_stored_mode_names_the_field(stored: object) -> None:
    with pytest.raises(SystemFailure, match="network_mode"):
        codec.decode(Container, _doc(stored))
