"""Container lifecycle over fakes: network state kept as Docker keeps it (``network_mode``
and ``NetworkSettings.Networks``), create-time checks, failed starts that leave nothing,
and restart policies."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Network

import pytest
from test_engine import World, netns_paths, run

from cnm.engine.controller import Controller
from cnm.errors import InvalidArgument, NotFound, RuntimeFailure
from cnm.model.container import ContainerConfig
from cnm.model.endpoint import EndpointRequest
from cnm.model.network import IpamConfig, NetworkSpec
from cnm.model.network_mode import NetworkMode


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


async def subnet_net(ctl: Controller, name: str, subnet: str) -> None:
    await ctl.create_network(NetworkSpec(name=name, ipam=(IpamConfig(subnet=IPv4Network(subnet)),)))


def addresses(world: World, ctl: Controller, network: str) -> dict:
    return dict(ctl._ipam.owners(ctl.find_network(network).id))


# -- network state ---------------------------------------------------------------------------


async def test_create_records_the_primary_network_by_name(world):
    ctl = await world.controller()
    net = await ctl.create_network(NetworkSpec(name="front"))
    c, _ = await ctl.create_container(
        "web", ContainerConfig(image="busybox", network_mode=NetworkMode.parse(net.id[:12]))
    )
    assert str(c.config.network_mode) == net.id[:12]
    assert list(c.config.networks) == ["front"]
    plain, _ = await ctl.create_container("plain", ContainerConfig(image="busybox"))
    assert list(plain.config.networks) == ["bridge"]


async def test_disconnect_of_created_container_keeps_its_mode(world):
    ctl = await world.controller()
    await ctl.create_network(NetworkSpec(name="a"))
    c, _ = await ctl.create_container(
        "web", ContainerConfig(image="busybox", network_mode=NetworkMode.parse("a"))
    )
    await ctl.disconnect("a", "web")
    c = ctl.find_container("web")
    assert str(c.config.network_mode) == "a"
    assert dict(c.config.networks) == {}
    # started now, it is on no network at all (only lo), as in Docker, and never on "none"
    await ctl.start_container("web")
    assert ctl.container_endpoints(c.id) == []
    assert str(ctl.find_container("web").config.network_mode) == "a"


async def test_compose_sequence_leaves_a_and_b_only(world):
    """Compose: create on A, disconnect A, connect A with aliases, start, connect B."""
    ctl = await world.controller()
    await ctl.create_network(NetworkSpec(name="a"))
    await ctl.create_network(NetworkSpec(name="b"))
    c, _ = await ctl.create_container(
        "web", ContainerConfig(image="busybox", network_mode=NetworkMode.parse("a"))
    )
    await ctl.disconnect("a", "web")
    await ctl.connect("a", "web", EndpointRequest(aliases=("api", "www")))
    await ctl.start_container("web")
    await ctl.connect("b", "web", EndpointRequest())
    eps = ctl.container_endpoints(c.id)
    assert [(n.name, ep.ifname) for n, ep in eps] == [("a", "eth0"), ("b", "eth1")]
    assert eps[0][1].aliases == ("api", "www")
    assert eps[0][1].default_route
    c = ctl.find_container("web")
    assert str(c.config.network_mode) == "a"
    assert list(c.config.networks) == ["a", "b"]
    # a stop and a start join the same two networks
    await ctl.stop_container("web", timeout=0)
    await ctl.start_container("web")
    assert [n.name for n, _ in ctl.container_endpoints(c.id)] == ["a", "b"]


async def test_disconnect_of_stopped_container_from_a_second_network(world):
    ctl = await world.controller()
    await ctl.create_network(NetworkSpec(name="b"))
    cid = await run(ctl, "web")
    await ctl.connect("b", "web", EndpointRequest())
    await ctl.stop_container("web", timeout=0)
    await ctl.disconnect("bridge", "web")
    c = ctl.find_container("web")
    assert str(c.config.network_mode) == "bridge" and list(c.config.networks) == ["b"]
    await ctl.start_container("web")
    assert [n.name for n, _ in ctl.container_endpoints(cid)] == ["b"]
    with pytest.raises(NotFound, match="not connected"):
        await ctl.disconnect("bridge", "web")


async def test_disconnect_not_connected_is_a_client_error(world):
    """404 naming both, as for an endpoint that does not exist (Docker itself answers 500)."""
    ctl = await world.controller()
    await ctl.create_network(NetworkSpec(name="b"))
    await ctl.create_container("web", ContainerConfig(image="busybox"))
    with pytest.raises(NotFound, match="is not connected to the network b"):
        await ctl.disconnect("b", "web")
    await run(ctl, "up")
    with pytest.raises(NotFound, match="is not connected to network b"):
        await ctl.disconnect("b", "up")


async def test_connect_stopped_twice_is_refused(world):
    ctl = await world.controller()
    await ctl.create_container("web", ContainerConfig(image="busybox"))
    with pytest.raises(Exception, match="already exists in network bridge"):
        await ctl.connect("bridge", "web", EndpointRequest())


# -- create-time checks ------------------------------------------------------------------------


async def test_ip_outside_subnet_refused_at_create(world):
    ctl = await world.controller()
    await subnet_net(ctl, "n", "10.30.0.0/24")
    with pytest.raises(InvalidArgument, match="10.99.0.5"):
        await ctl.create_container(
            "web",
            ContainerConfig(
                image="busybox",
                network_mode=NetworkMode.parse("n"),
                networks={"n": EndpointRequest(ipv4_address=IPv4Address("10.99.0.5"))},
            ),
        )
    assert ctl.containers() == []


async def test_unknown_secondary_network_refused_at_create(world):
    ctl = await world.controller()
    with pytest.raises(InvalidArgument, match="network nosuch not found"):
        await ctl.create_container(
            "web",
            ContainerConfig(
                image="busybox", networks={"bridge": EndpointRequest(), "nosuch": EndpointRequest()}
            ),
        )
    assert ctl.containers() == []


async def test_unknown_container_mode_target_refused_at_create(world):
    ctl = await world.controller()
    with pytest.raises(NotFound, match="No such container: ghost"):
        await ctl.create_container(
            "web", ContainerConfig(image="busybox", network_mode=NetworkMode.parse("container:ghost"))
        )
    await run(ctl, "main")
    c, _ = await ctl.create_container(
        "side", ContainerConfig(image="busybox", network_mode=NetworkMode.parse("container:main"))
    )
    assert dict(c.config.networks) == {}


async def test_no_command_refused_at_create(world):
    ctl = await world.controller()
    world.runtime.add_image("scratchy", image_id="sha256:" + "cd" * 32, cmd=())
    with pytest.raises(InvalidArgument, match="No command specified"):
        await ctl.create_container("web", ContainerConfig(image="scratchy"))
    c, _ = await ctl.create_container("web", ContainerConfig(image="scratchy", cmd=("true",)))
    assert c.config.cmd == ("true",)


# -- failed starts leave nothing -----------------------------------------------------------------


async def test_failed_start_with_auto_remove_leaves_no_container(world):
    ctl = await world.controller()
    await subnet_net(ctl, "n", "10.31.0.0/24")
    world.runtime.fail_start = True
    c, _ = await ctl.create_container(
        "web",
        ContainerConfig(
            image="busybox",
            network_mode=NetworkMode.parse("n"),
            auto_remove=True,
            networks={"n": EndpointRequest(ipv4_address=IPv4Address("10.31.0.9"))},
        ),
    )
    with pytest.raises(RuntimeFailure):
        await ctl.start_container("web")
    with pytest.raises(NotFound):
        ctl.find_container(c.id)
    assert not netns_paths(world.kernel)
    assert "10.31.0.9" not in {str(a) for a in addresses(world, ctl, "n")}
    world.runtime.fail_start = False
    # the same address can be taken again
    await run(
        ctl,
        "again",
        network_mode=NetworkMode.parse("n"),
        networks={"n": EndpointRequest(ipv4_address=IPv4Address("10.31.0.9"))},
    )


async def test_failed_start_without_auto_remove_keeps_a_created_container(world):
    ctl = await world.controller()
    world.runtime.fail_start = True
    c, _ = await ctl.create_container("web", ContainerConfig(image="busybox"))
    with pytest.raises(RuntimeFailure):
        await ctl.start_container("web")
    c = ctl.find_container(c.id)
    assert c.state.status == "created"
    assert c.state.error  # Docker records the start error
    assert ctl.container_endpoints(c.id) == []


# -- restart policies ----------------------------------------------------------------------------


async def until(predicate, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def state(ctl: Controller, name: str):
    return ctl.find_container(name).state


async def test_on_failure_restarts_up_to_its_limit(world):
    ctl = await world.controller()
    cid = await run(ctl, "web", restart_policy="on-failure", restart_max=2)
    for count in (1, 2):
        pid = state(ctl, "web").pid
        world.runtime.exit(cid, 1)
        await until(lambda old=pid: state(ctl, "web").status == "running" and state(ctl, "web").pid != old)
        assert state(ctl, "web").restart_count == count
    world.runtime.exit(cid, 1)
    await until(lambda: state(ctl, "web").status == "exited")
    await asyncio.sleep(0.3)  # past the next backoff step: still exited
    assert state(ctl, "web").status == "exited" and state(ctl, "web").restart_count == 2
    assert ctl.container_endpoints(cid) == []


async def test_on_failure_does_not_restart_a_clean_exit(world):
    ctl = await world.controller()
    cid = await run(ctl, "web", restart_policy="on-failure")
    world.runtime.exit(cid, 0)
    await until(lambda: state(ctl, "web").status == "exited")
    await asyncio.sleep(0.2)
    assert state(ctl, "web").status == "exited"


async def test_always_restarts_until_stopped(world):
    ctl = await world.controller()
    cid = await run(ctl, "web", restart_policy="always")
    pid = state(ctl, "web").pid
    world.runtime.exit(cid, 0)
    await until(lambda: (state(ctl, "web").status == "running") and state(ctl, "web").pid != pid)
    assert ctl.container_endpoints(cid)  # on its network again
    await ctl.stop_container("web", timeout=0)
    await asyncio.sleep(0.3)
    assert state(ctl, "web").status == "exited" and state(ctl, "web").stopped_by_user
    # a start by the user starts a new life
    await ctl.start_container("web")
    assert state(ctl, "web").restart_count == 0 and not state(ctl, "web").stopped_by_user


async def test_stop_during_backoff_cancels_the_restart(world):
    ctl = await world.controller()
    cid = await run(ctl, "web", restart_policy="always")
    ctl._exits._delays[cid] = 30.0  # the next delay is a minute: it sits in "restarting"
    world.runtime.exit(cid, 0)
    await until(lambda: state(ctl, "web").status == "restarting")
    with pytest.raises(Exception, match="restarting"):
        await ctl.remove_container("web")
    await ctl.stop_container("web")
    assert state(ctl, "web").status == "exited"
    assert not ctl._exits._restarts


async def test_no_policy_never_restarts(world):
    ctl = await world.controller()
    cid = await run(ctl, "web")
    world.runtime.exit(cid, 1)
    await until(lambda: state(ctl, "web").status == "exited")
    await asyncio.sleep(0.2)
    assert state(ctl, "web").status == "exited"


async def test_policies_kept_across_a_daemon_restart(world):
    ctl = await world.controller()
    always = await run(ctl, "always", restart_policy="always")
    unless = await run(ctl, "unless", restart_policy="unless-stopped")
    stopped = await run(ctl, "stopped", restart_policy="unless-stopped")
    plain = await run(ctl, "plain")
    await ctl.stop_container("stopped", timeout=0)
    await ctl.close()
    for cid in (always, unless, plain):
        world.runtime.exit(cid, 137)  # they die while the daemon is down
    ctl2 = await world.controller()
    await until(
        lambda: state(ctl2, "always").status == "running" and state(ctl2, "unless").status == "running"
    )
    assert [n.name for n, _ in ctl2.container_endpoints(always)] == ["bridge"]
    await asyncio.sleep(0.2)
    assert state(ctl2, "stopped").status == "exited"
    assert state(ctl2, "plain").status == "exited"
    assert stopped and plain


async def test_a_failed_restart_leaves_the_container_exited(world):
    ctl = await world.controller()
    cid = await run(ctl, "web", restart_policy="always")
    world.runtime.fail_start = True
    world.runtime.exit(cid, 0)
    await until(lambda: state(ctl, "web").status == "exited")
    assert "fake failure" in state(ctl, "web").error
    await asyncio.sleep(0.3)
    assert state(ctl, "web").status == "exited" and not ctl._exits._restarts
    assert ctl.container_endpoints(cid) == [] and not netns_paths(world.kernel)


async def test_records_from_before_networks_held_the_primary_are_upgraded(world):
    """An older cnm kept the primary network implied by network_mode: such a record still
    starts on it after an upgrade."""
    from dataclasses import replace

    ctl = await world.controller()
    await ctl.create_network(NetworkSpec(name="front"))
    c, _ = await ctl.create_container(
        "web", ContainerConfig(image="busybox", network_mode=NetworkMode.parse("front"))
    )
    old_style = replace(c.config, networks={}, networks_complete=False)
    await ctl._state.commit(put=[replace(c, config=old_style)])
    await ctl.close()
    ctl2 = await world.controller()
    upgraded = ctl2.find_container("web").config
    assert list(upgraded.networks) == ["front"] and upgraded.networks_complete
    await ctl2.start_container("web")
    assert [n.name for n, _ in ctl2.container_endpoints(c.id)] == ["front"]


@pytest.mark.parametrize(
    ("policy", "max_", "stopped", "count", "code", "running_daemon", "daemon_start"),
    [
        ("no", 0, False, 0, 1, False, False),
        ("always", 0, False, 0, 0, True, True),
        ("always", 0, True, 0, 0, False, True),  # Docker: back at daemon start even if stopped
        ("unless-stopped", 0, False, 0, 0, True, True),
        ("unless-stopped", 0, True, 0, 0, False, False),
        ("on-failure", 0, False, 7, 1, True, True),
        ("on-failure", 0, False, 0, 0, False, False),
        ("on-failure", 3, False, 2, 1, True, True),
        ("on-failure", 3, False, 3, 1, False, False),
    ],
)
def test_should_restart_table(policy, max_, stopped, count, code, running_daemon, daemon_start):
    from cnm.engine.exits import should_restart
    from cnm.model.container import ContainerState

    config = ContainerConfig(image="busybox", restart_policy=policy, restart_max=max_)
    st = ContainerState(status="exited", restart_count=count, stopped_by_user=stopped)
    assert should_restart(config, st, code, daemon_start=False) is running_daemon
    assert should_restart(config, st, code, daemon_start=True) is daemon_start


def test_backoff_doubles_up_to_a_minute_and_resets_after_a_long_run():
    from cnm.engine.exits import next_delay

    delays = [0.0]
    for _ in range(12):
        delays.append(next_delay(delays[-1], ran_for=0.5))
    assert delays[1:5] == [0.1, 0.2, 0.4, 0.8]
    assert max(delays) == 60.0 and delays[-1] == 60.0
    assert next_delay(60.0, ran_for=10.0) == 0.1
