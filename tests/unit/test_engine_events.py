"""The engine emits its events where changes are recorded: a container's life on a user
network, a restart, image tags, through the controller over fakes (no kernel)."""

from __future__ import annotations

import asyncio

import pytest
from test_engine import World, run

from cnm.engine.images import familiar
from cnm.model.container import ExecSpec
from cnm.model.endpoint import EndpointRequest
from cnm.model.network import NetworkSpec
from cnm.model.network_mode import NetworkMode


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def _log(ctl) -> list[tuple[str, str, str]]:
    return [(e.type, e.action, e.attributes.get("name", "")) for e in ctl.events.recent()]


async def _wait_for(predicate) -> None:
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_a_container_life_on_a_user_network(world) -> None:
    ctl = await world.controller()
    net = await ctl.create_network(NetworkSpec(name="front"))
    cid = await run(ctl, "web", network_mode=NetworkMode.parse("front"), labels={"tier": "web"})
    await ctl.rename_container("web", "web2")
    await ctl.kill_container("web2", "SIGTERM")
    await _wait_for(lambda: not ctl.find_container(cid).running)
    await ctl.remove_container("web2")
    await ctl.remove_network("front")
    assert [(t, a, n) for t, a, n in _log(ctl) if n in ("front", "web", "web2")] == [
        ("network", "create", "front"),
        ("container", "create", "web"),
        ("network", "connect", "front"),
        ("container", "start", "web"),
        ("container", "rename", "web2"),
        ("container", "kill", "web2"),
        ("network", "disconnect", "front"),
        ("container", "die", "web2"),
        ("container", "destroy", "web2"),
        ("network", "destroy", "front"),
    ]
    by_action = {e.action: e for e in ctl.events.recent() if e.type == "container"}
    assert by_action["die"].attributes["exitCode"] == "143"
    assert by_action["kill"].attributes["signal"] == "15"
    assert by_action["rename"].attributes["oldName"] == "/web"
    assert by_action["start"].attributes == {"tier": "web", "image": "busybox", "name": "web"}
    connects = [e for e in ctl.events.recent() if e.action == "connect"]
    assert connects[0].actor_id == net.id and connects[0].attributes["container"] == cid


async def test_connect_of_a_running_container_and_stop_and_restart(world) -> None:
    ctl = await world.controller()
    await ctl.create_network(NetworkSpec(name="back"))
    await run(ctl, "api")
    await ctl.connect("back", "api", EndpointRequest())
    await ctl.disconnect("back", "api")
    start = len(ctl.events.recent())
    await ctl.restart_container("api", 1)
    actions = [(e.type, e.action) for e in ctl.events.recent()[start:]]
    assert actions[0] == ("container", "kill") and actions[-1] == ("container", "restart")
    assert ("container", "stop") in actions and actions.index(("container", "stop")) < actions.index(
        ("container", "start")
    )
    nets = [(e.action, e.attributes["name"]) for e in ctl.events.recent() if e.type == "network"]
    assert ("connect", "back") in nets and ("disconnect", "back") in nets


async def test_image_tag_untag_and_delete(world) -> None:
    ctl = await world.controller()
    image = ctl.find_image("busybox")
    await ctl.tag_image("busybox", "mine:1")
    await ctl.remove_image("mine:1")  # the fake runtime drops every tag of the image at once
    assert [(e.action, e.attributes["name"]) for e in ctl.events.recent() if e.type == "image"] == [
        ("tag", "mine:1"),
        ("untag", image.id),
        ("delete", image.id),
    ]


def test_familiar_reference() -> None:
    assert familiar("docker.io/library/x") == "x:latest"
    assert familiar("docker.io/me/x:2") == "me/x:2"
    assert familiar("registry:5000/x:1") == "registry:5000/x:1"


async def test_exec_create_start_die(world) -> None:
    ctl = await world.controller()
    await run(ctl, "sh1")
    exec_id = ctl.create_exec("sh1", ExecSpec(container_id="", cmd=("echo", "hi")))
    await ctl.start_exec(exec_id)
    await _wait_for(lambda: any(e.action == "exec_die" for e in ctl.events.recent()))
    execs = [e for e in ctl.events.recent() if e.action.startswith("exec_")]
    assert [e.action for e in execs] == ["exec_create: echo hi", "exec_start: echo hi", "exec_die"]
    assert {e.attributes["execID"] for e in execs} == {exec_id}
    assert execs[-1].attributes["exitCode"] == "0" and execs[-1].attributes["name"] == "sh1"
