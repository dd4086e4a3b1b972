"""FakeKernel keeps the kernel's rules that drivers and the engine rely on."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from cnm.errors import Conflict, KernelError
from cnm.kernel.api import Kernel, VethSpec, owned
from cnm.kernel.fake import FakeKernel

NS = "/run/cnm/netns/abc"


def veth(**kw) -> VethSpec:
    values = dict(
        owner="ep1",
        host_ifname="veth1234567",
        bridge="br0",
        netns_path=NS,
        ifname="eth0",
        mtu=1400,
        mac="02:42:0a:00:00:02",
        address=IPv4Interface("10.0.0.2/24"),
        gateway=IPv4Address("10.0.0.1"),
    )
    values.update(kw)
    return VethSpec(**values)


@pytest.fixture
async def kernel() -> FakeKernel:
    k = FakeKernel()
    await k.ensure_bridge("br0", owner="net1", mtu=1400, address=IPv4Interface("10.0.0.1/24"))
    await k.create_netns(NS)
    return k


def test_is_a_kernel():
    k: Kernel = FakeKernel()  # the protocol's shape, checked by type checkers
    assert k.netns_exists("/nowhere") is False


async def test_bridge_is_idempotent_and_tagged(kernel):
    index = kernel.link("br0").index
    assert (
        await kernel.ensure_bridge("br0", owner="net1", mtu=1400, address=IPv4Interface("10.0.0.1/24"))
        == index
    )
    assert kernel.link("br0").addresses == [IPv4Interface("10.0.0.1/24")]
    assert [link.name for link in owned(await kernel.links())] == ["br0"]
    assert "ip link add br0 mtu 1400 type bridge" in kernel.commands


async def test_veth_pairs_and_iflink(kernel):
    host_index = await kernel.add_veth(veth())
    inner = {link.name: link for link in await kernel.links(NS)}
    assert inner["eth0"].addresses == (IPv4Interface("10.0.0.2/24"),)
    assert kernel.link("eth0", NS).peer == (None, host_index)
    assert kernel.link("veth1234567").master == kernel.link("br0").index
    assert any(c.startswith(f"nsenter --net={NS} ip route add default via 10.0.0.1") for c in kernel.commands)


async def test_names_are_unique_per_namespace(kernel):
    await kernel.add_veth(veth())
    with pytest.raises(Conflict):
        await kernel.add_veth(veth(ifname="eth1"))  # host name taken
    with pytest.raises(Conflict):
        await kernel.add_veth(veth(host_ifname="vethother"))  # eth0 taken in NS
    with pytest.raises(Conflict):
        await kernel.create_netns(NS)


async def test_missing_bridge_namespace_or_offlink_gateway(kernel):
    with pytest.raises(KernelError):
        await kernel.add_veth(veth(bridge="nope"))
    with pytest.raises(KernelError):
        await kernel.add_veth(veth(netns_path="/run/none"))
    with pytest.raises(KernelError):
        await kernel.add_veth(veth(gateway=IPv4Address("192.0.2.1")))
    assert kernel.link_names() == ["br0", "lo"]


async def test_deleting_either_end_or_the_namespace_removes_the_pair(kernel):
    await kernel.add_veth(veth())
    await kernel.delete_link("eth0", NS)
    assert kernel.link("veth1234567") is None
    await kernel.add_veth(veth())
    await kernel.delete_netns(NS)
    assert kernel.link("veth1234567") is None
    await kernel.delete_netns(NS)  # idempotent
    await kernel.delete_link("veth1234567")
    assert not kernel.netns_exists(NS)


async def test_injected_failures_change_nothing(kernel):
    kernel.fail("add_veth")
    before = list(kernel.commands)
    with pytest.raises(KernelError):
        await kernel.add_veth(veth())
    assert kernel.commands == before
    await kernel.add_veth(veth())  # only the next call fails


async def test_host_networks_and_sysctl(kernel):
    kernel.extra_host_networks.append(IPv4Network("192.168.1.0/24"))
    assert await kernel.host_networks() == [
        IPv4Network("10.0.0.0/24"),
        IPv4Network("127.0.0.0/8"),
        IPv4Network("192.168.1.0/24"),
    ]
    assert await kernel.set_sysctl("net.ipv4.ip_forward", "1") == "1"
    assert await kernel.set_sysctl("net.ipv4.ip_forward", "0") == "1"
    assert await kernel.set_sysctl("net.ipv4.ip_forward", "0", NS) == "1"
    with pytest.raises(KernelError):
        await kernel.set_sysctl("x", "1", "/run/none")
