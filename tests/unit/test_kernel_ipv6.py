"""IPv6 in the kernel layer, on the fake (the real kernel: tests/integration/test_kernel_ipv6_netns.py):
the bridge of a network with IPv6, the container interfaces on it and on v4-only networks,
the host's forwarding with its uplinks' accept_ra, the v6 default route's fail-over, and the
netlink messages that carry v6 addresses and routes."""

from __future__ import annotations

import socket
import struct
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg
from test_engine import World, run

from cnm.drivers.bridge import BridgeDriver
from cnm.engine.sandbox import Sandbox
from cnm.errors import InvalidArgument, KernelError
from cnm.firewall.fake import FakeFirewall
from cnm.kernel import rtnl
from cnm.kernel.api import VethSpec
from cnm.kernel.fake import FakeKernel
from cnm.kernel.sysctl import conf_key, ipv6_forwarding_plan
from cnm.model.endpoint import EndpointRecord, EndpointRequest, SandboxRecord
from cnm.model.network import OPT_MTU, IpamConfig, NetworkRecord, NetworkSpec
from cnm.model.network_mode import NetworkMode

FORWARDING = ("net.ipv6.conf.all.forwarding", "net.ipv6.conf.default.forwarding")


def network(i: int, *, v6: bool, internal: bool = False, **options: str) -> NetworkRecord:
    return NetworkRecord(
        id=f"{i:02d}" * 32,
        name=f"n{i}",
        driver="bridge",
        created="2026-12-02T00:00:00Z",
        internal=internal,
        enable_ipv6=v6,
        subnet=IPv4Network(f"10.9{i}.0.0/24"),
        gateway=IPv4Address(f"10.9{i}.0.1"),
        subnet6=IPv6Network(f"fd00:{i}::/64") if v6 else None,
        gateway6=IPv6Address(f"fd00:{i}::1") if v6 else None,
        options=options,
    )


def endpoint(
    net: NetworkRecord, n: int, *, default_route: bool = True, ifname: str = "eth0"
) -> EndpointRecord:
    return EndpointRecord(
        id=f"e{n}{net.id}"[:64],
        network_id=net.id,
        container_id=f"c{n}",
        sandbox_id="s",
        name=f"c{n}",
        ifname=ifname,
        host_ifname=f"veth{n}{net.name}",
        mac=f"02:42:0a:00:00:{n:02x}",
        address=IPv4Interface(f"{net.subnet.network_address + n}/24") if net.subnet else None,
        gateway=net.gateway,
        address6=IPv6Interface(f"{net.subnet6.network_address + n}/64") if net.subnet6 else None,
        gateway6=net.gateway6,
        default_route=default_route,
    )


@pytest.fixture
async def kit():
    kernel = FakeKernel()
    kernel.add_foreign_link("eth0", kind="veth")  # the host's uplink
    firewall = FakeFirewall()
    await firewall.setup()
    sandbox = SandboxRecord(id="s", container_id="c", key="/run/cnm/netns/s")
    await kernel.create_netns(sandbox.key)
    return kernel, BridgeDriver(kernel, firewall), sandbox


# -- the bridge and the host's forwarding ------------------------------------------------------


async def test_v6_bridge_gets_its_gateway_and_ipv6_on(kit) -> None:
    kernel, driver, _ = kit
    net = network(1, v6=True)
    await driver.create_network(net)
    bridge = kernel.link(net.bridge_name)
    assert bridge is not None and bridge.ipv6
    assert bridge.addresses6 == [IPv6Interface("fd00:1::1/64")]
    assert bridge.addresses == [IPv4Interface("10.91.0.1/24")]
    assert kernel.sysctls[(None, f"net.ipv6.conf.{net.bridge_name}.disable_ipv6")] == "0"
    assert kernel.sysctls[(None, f"net.ipv6.conf.{net.bridge_name}.accept_ra")] == "0"
    assert f"ip -6 addr add fd00:1::1/64 dev {net.bridge_name} nodad" in kernel.commands
    await driver.create_network(net)  # a restart's restore: nothing added twice
    assert bridge.addresses6 == [IPv6Interface("fd00:1::1/64")]


async def test_restore_puts_a_v6_bridge_address_back(kit) -> None:
    kernel, driver, _ = kit
    net = network(1, v6=True)
    await driver.create_network(net)
    bridge = kernel.link(net.bridge_name)
    assert bridge is not None
    bridge.addresses6.clear()  # removed by hand while cnmd was down
    await driver.restore([net], [])
    assert bridge.addresses6 == [IPv6Interface("fd00:1::1/64")]


async def test_v4_bridge_leaves_ipv6_and_forwarding_alone(kit) -> None:
    kernel, driver, _ = kit
    net = network(1, v6=False)
    await driver.create_network(net)
    bridge = kernel.link(net.bridge_name)
    assert bridge is not None and not bridge.ipv6 and bridge.addresses6 == []
    assert not [c for c in kernel.commands if "forwarding" in c or "disable_ipv6" in c or "ip -6" in c]


async def test_first_v6_network_turns_forwarding_on_after_uplinks_accept_ra_2(kit) -> None:
    kernel, driver, _ = kit
    kernel.sysctls[(None, "net.ipv6.conf.eth0.accept_ra")] = "1"
    kernel.add_foreign_link("wlan0", kind="")
    kernel.sysctls[(None, "net.ipv6.conf.wlan0.accept_ra")] = "0"
    await driver.create_network(network(1, v6=False))
    assert all(kernel.sysctls.get((None, key)) is None for key in FORWARDING)
    v6 = network(2, v6=True)
    await driver.create_network(v6)
    assert kernel.sysctls[(None, "net.ipv6.conf.eth0.accept_ra")] == "2"
    assert kernel.sysctls[(None, "net.ipv6.conf.wlan0.accept_ra")] == "0"
    assert all(kernel.sysctls[(None, key)] == "1" for key in FORWARDING)
    sysctl_lines = [
        c for c in kernel.commands if c.startswith("sysctl -w") and "accept_ra=2" in c or "forwarding" in c
    ]
    assert sysctl_lines == [
        "sysctl -w net.ipv6.conf.eth0.accept_ra=2",
        "sysctl -w net.ipv6.conf.all.forwarding=1",
        "sysctl -w net.ipv6.conf.default.forwarding=1",
    ]
    # the cnm bridges (accept_ra 0, and cnm's) and bridge ports are no uplinks
    assert not [c for c in kernel.commands if "br-" in c and "accept_ra=2" in c]
    before = list(kernel.commands)
    await driver.create_network(network(3, v6=True))  # on already: nothing more to do
    assert not [c for c in kernel.commands[len(before) :] if "forwarding" in c or "accept_ra=2" in c]


async def test_forwarding_on_already_changes_no_uplink(kit) -> None:
    kernel, driver, _ = kit
    for key in FORWARDING:
        kernel.sysctls[(None, key)] = "1"
    kernel.sysctls[(None, "net.ipv6.conf.eth0.accept_ra")] = "1"
    await driver.create_network(network(1, v6=True))
    assert kernel.sysctls[(None, "net.ipv6.conf.eth0.accept_ra")] == "1"


def test_forwarding_plan() -> None:
    values = {
        "net.ipv6.conf.all.forwarding": "0",
        "net.ipv6.conf.default.forwarding": "0",
        "net.ipv6.conf.eth0/100.accept_ra": "1",  # VLAN eth0.100: a dot is a slash in a key
        "net.ipv6.conf.eth1.accept_ra": "2",
    }
    plan = ipv6_forwarding_plan(values.get, ["eth0.100", "eth1", "gone0"])
    assert plan == [
        ("net.ipv6.conf.eth0/100.accept_ra", "2"),
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.ipv6.conf.default.forwarding", "1"),
    ]
    assert (
        ipv6_forwarding_plan(
            {**values, "net.ipv6.conf.all.forwarding": "1", "net.ipv6.conf.default.forwarding": "1"}.get,
            ["eth0.100"],
        )
        == []
    )
    with pytest.raises(KernelError, match="no IPv6"):
        ipv6_forwarding_plan({}.get, ["eth0"])
    assert conf_key("ipv6", "eth0.100", "accept_ra") == "net.ipv6.conf.eth0/100.accept_ra"


async def test_bridge_with_a_mtu_ipv6_cannot_take_is_refused(kit) -> None:
    kernel, driver, _ = kit
    net = network(1, v6=True, **{OPT_MTU: "1200"})
    with pytest.raises(KernelError, match="1280"):
        await driver.create_network(net)
    assert kernel.link(net.bridge_name) is None  # undone


# -- container interfaces ----------------------------------------------------------------------


async def test_join_v6_network_ipv6_on_with_address_and_default_route(kit) -> None:
    kernel, driver, sandbox = kit
    net = network(1, v6=True)
    await driver.create_network(net)
    await driver.join(net, endpoint(net, 2), sandbox)
    eth0 = kernel.link("eth0", sandbox.key)
    assert eth0 is not None and eth0.ipv6
    assert eth0.addresses6 == [IPv6Interface("fd00:1::2/64")]
    assert eth0.gateway6 == IPv6Address("fd00:1::1") and eth0.gateway == IPv4Address("10.91.0.1")
    ns = f"nsenter --net={sandbox.key} "
    inside = [c[len(ns) :] for c in kernel.commands if c.startswith(ns)]
    assert inside == [
        "sysctl -w net.ipv6.conf.default.disable_ipv6=0",  # eth0 is created with IPv6 on
        "sysctl -w net.ipv6.conf.default.disable_ipv6=1",  # and off again for what comes next
        "ip link set eth0 up",
        "ip addr add 10.91.0.2/24 dev eth0",
        "ip route add default via 10.91.0.1 dev eth0",
        "ip -6 addr add fd00:1::2/64 dev eth0 nodad",
        "ip -6 route add default via fd00:1::1 dev eth0",
    ]


async def test_join_v4_network_keeps_ipv6_off(kit) -> None:
    kernel, driver, sandbox = kit
    net = network(1, v6=False)
    await driver.create_network(net)
    await driver.join(net, endpoint(net, 2), sandbox)
    eth0 = kernel.link("eth0", sandbox.key)
    assert eth0 is not None and not eth0.ipv6 and eth0.addresses6 == [] and eth0.gateway6 is None
    assert not [c for c in kernel.commands if "disable_ipv6" in c or "ip -6" in c]


async def test_v6_endpoint_without_the_default_route_or_internal_gets_no_v6_route(kit) -> None:
    kernel, driver, sandbox = kit
    net = network(1, v6=True)
    internal = network(2, v6=True, internal=True)
    for n in (net, internal):
        await driver.create_network(n)
    await driver.join(net, endpoint(net, 2, default_route=False), sandbox)
    await driver.join(internal, endpoint(internal, 3, ifname="eth1"), sandbox)
    for ifname in ("eth0", "eth1"):
        link = kernel.link(ifname, sandbox.key)
        assert link is not None and link.ipv6 and link.addresses6 and link.gateway6 is None


def test_veth_spec_refuses_v6_values_with_ipv6_off() -> None:
    with pytest.raises(InvalidArgument, match="ipv6=True"):
        VethSpec(
            owner="e",
            host_ifname="vethx",
            bridge="br",
            netns_path="/n",
            ifname="eth0",
            address6=IPv6Interface("fd00::2/64"),
        )


async def test_fake_default_route_v6_needs_an_on_link_gateway(kit) -> None:
    kernel, driver, sandbox = kit
    net = network(1, v6=True)
    await driver.create_network(net)
    await driver.join(net, endpoint(net, 2, default_route=False), sandbox)
    with pytest.raises(KernelError, match="unreachable"):
        await kernel.set_default_route(sandbox.key, IPv6Address("fd00:9::1"), "eth0")
    await kernel.set_default_route(sandbox.key, IPv6Address("fd00:1::1"), "eth0")
    eth0 = kernel.link("eth0", sandbox.key)
    assert eth0 is not None and eth0.gateway6 == IPv6Address("fd00:1::1") and eth0.gateway is None


# -- the gateway's fail-over carries the v6 default route ------------------------------------


async def test_gateway_fail_over_moves_the_v6_default_route(tmp_path) -> None:
    """The v6 records and interface are written in here after the connect, as a network
    with IPv6 would have made them (addressing them is the engine's and IPAM's business,
    tested with them): the sandbox's v6 default route follows its v4 one."""
    world = World(tmp_path)
    ctl = await world.controller()
    svc = ctl._svc
    for name, subnet in (("one", "10.81.0.0/24"), ("two", "10.82.0.0/24")):
        await ctl.create_network(NetworkSpec(name=name, ipam=(IpamConfig(subnet=IPv4Network(subnet)),)))
    cid = await run(ctl, "web", network_mode=NetworkMode.parse("one"))
    await ctl.connect("two", "web", EndpointRequest())
    two = ctl.find_network("two")
    svc.state.networks[two.id] = replace(
        two, enable_ipv6=True, subnet6=IPv6Network("fd00:82::/64"), gateway6=IPv6Address("fd00:82::1")
    )
    sandbox = Sandbox.of(svc, ctl.find_container(cid))
    assert sandbox is not None and sandbox.netns is not None
    (ep,) = [e for e in sandbox.endpoints() if e.network_id == two.id]
    assert not ep.default_route
    svc.state.endpoints[ep.id] = replace(
        ep, address6=IPv6Interface("fd00:82::2/64"), gateway6=IPv6Address("fd00:82::1")
    )
    eth1 = world.kernel.link(ep.ifname, sandbox.netns)
    assert eth1 is not None and eth1.gateway6 is None
    eth1.ipv6, eth1.addresses6 = True, [IPv6Interface("fd00:82::2/64")]  # what its join made
    await ctl.disconnect("one", "web")
    assert eth1.gateway == IPv4Address("10.82.0.1") and eth1.gateway6 == IPv6Address("fd00:82::1")
    route = f"nsenter --net={sandbox.netns} ip -6 route replace default via fd00:82::1 dev eth1"
    assert route in world.kernel.commands


# -- netlink messages ----------------------------------------------------------------------------


def decode(cls, req: rtnl.Request):
    header = struct.pack("=IHHII", 16 + len(req.body), req.type, 0, 1, 0)
    msg = cls(header + req.body)
    msg.decode()
    return msg


def test_v6_address_nodad_and_default_route_messages() -> None:
    msg = decode(ifaddrmsg, rtnl.add_address(3, IPv6Address("fd00:1::2"), 64, nodad=True))
    assert msg["family"] == socket.AF_INET6 and msg["prefixlen"] == 64 and msg["index"] == 3
    assert msg["flags"] & rtnl.IFA_F_NODAD
    assert msg.get("local") == msg.get("address") == "fd00:1::2"
    v4 = decode(ifaddrmsg, rtnl.add_address(3, IPv4Address("10.0.0.2"), 24, nodad=True))
    assert v4["family"] == socket.AF_INET and v4["flags"] == 0  # nodad is IPv6's
    route = decode(rtmsg, rtnl.add_default_route(IPv6Address("fd00:1::1"), 3))
    assert route["family"] == socket.AF_INET6 and route["dst_len"] == 0 and route["table"] == 254
    assert route.get("gateway") == "fd00:1::1" and route.get("oif") == 3
