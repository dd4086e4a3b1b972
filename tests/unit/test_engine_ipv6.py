"""The engine's IPv6 addresses over fakes: dual-stack networks, --ip6 on run and connect,
bad input that changes nothing, the default bridge's --ipv6/--fixed-cidr-v6, restart."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Address, IPv6Interface, IPv6Network

import pytest
from test_engine import World, run

from cnm.drivers.bridge import BridgeDriver
from cnm.drivers.host import HostDriver
from cnm.drivers.null import NullDriver
from cnm.engine.controller import Controller
from cnm.errors import Forbidden, InvalidArgument
from cnm.ipam.api import DEFAULT_POOLS, ula_pool
from cnm.ipam.default import DefaultIpam
from cnm.model.container import ContainerConfig
from cnm.model.endpoint import EndpointRequest
from cnm.model.network import IpamConfig, NetworkSpec
from cnm.model.network_mode import NetworkMode

ULA = ula_pool("feedfacecafebeef")
ULA_FIRST = IPv6Network((int(ULA.base.network_address), 64))


class World6(World):
    bridge_ipv6: IpamConfig | None = None

    async def controller(self, runc_states=None) -> Controller:
        ipam = DefaultIpam(self.store, DEFAULT_POOLS, pools6=(ULA,))
        ctl = Controller(
            store=self.store,
            ipam=ipam,
            kernel=self.kernel,
            firewall=self.firewall,
            drivers={
                "bridge": BridgeDriver(self.kernel, self.firewall),
                "host": HostDriver(),
                "null": NullDriver(),
            },
            runtime=self.runtime,
            data_root=str(self.tmp / "data"),
            exec_root=str(self.tmp / "exec"),
            bridge_ipv6=self.bridge_ipv6,
        )
        await ctl.start(runc_states)
        return ctl


@pytest.fixture
def world(tmp_path):
    return World6(tmp_path)


def v6net(name: str, subnet: str | None = "2001:db8:1::/64", **kw) -> NetworkSpec:
    ipam = (IpamConfig(subnet=IPv6Network(subnet)),) if subnet else ()
    return NetworkSpec(name=name, enable_ipv6=True, ipam=ipam, **kw)


async def test_dual_stack_network_and_endpoints(world):
    ctl = await world.controller()
    net = await ctl.create_network(v6net("dual"))
    assert net.enable_ipv6 and net.subnet.version == 4
    assert (net.subnet6, net.gateway6) == (IPv6Network("2001:db8:1::/64"), IPv6Address("2001:db8:1::1"))
    cid = await run(ctl, "web", network_mode=NetworkMode.parse("dual"))
    [(_, ep)] = ctl.container_endpoints(cid)
    assert ep.address6 == IPv6Interface("2001:db8:1::2/64")
    assert ep.gateway6 == IPv6Address("2001:db8:1::1") and ep.default_route
    cid2 = await run(ctl, "web2", network_mode=NetworkMode.parse("dual"))
    assert ctl.container_endpoints(cid2)[0][1].address6 == IPv6Interface("2001:db8:1::3/64")


async def test_ipv6_network_without_subnet_takes_a_64_of_the_ula_skipping_host_prefixes(world):
    world.kernel.extra_host_networks6 = [ULA_FIRST]
    ctl = await world.controller()
    net = await ctl.create_network(v6net("auto", subnet=None))
    assert net.subnet6 == IPv6Network((int(ULA.base.network_address) + (1 << 64), 64))
    assert net.gateway6 == net.subnet6.network_address + 1


async def test_network_without_ipv6_gives_no_v6_address(world):
    ctl = await world.controller()
    await ctl.create_network(NetworkSpec(name="v4only"))
    cid = await run(ctl, "web", network_mode=NetworkMode.parse("v4only"))
    [(_, ep)] = ctl.container_endpoints(cid)
    assert ep.address6 is None and ep.gateway6 is None


async def test_internal_v6_network_has_no_v6_gateway_route(world):
    ctl = await world.controller()
    await ctl.create_network(v6net("inner", internal=True))
    cid = await run(ctl, "web", network_mode=NetworkMode.parse("inner"))
    [(_, ep)] = ctl.container_endpoints(cid)
    assert ep.address6 == IPv6Interface("2001:db8:1::2/64") and ep.gateway6 is None


async def test_ip6_on_run_and_on_connect(world):
    ctl = await world.controller()
    await ctl.create_network(v6net("dual"))
    cid = await run(
        ctl,
        "api",
        network_mode=NetworkMode.parse("dual"),
        networks={"dual": EndpointRequest(ipv6_address=IPv6Address("2001:db8:1::f00d"))},
    )
    assert ctl.container_endpoints(cid)[0][1].address6 == IPv6Interface("2001:db8:1::f00d/64")
    other = await run(ctl, "other")
    await ctl.connect("dual", "other", EndpointRequest(ipv6_address=IPv6Address("2001:db8:1::beef")))
    eps = {n.name: ep for n, ep in ctl.container_endpoints(other)}
    assert eps["dual"].address6 == IPv6Interface("2001:db8:1::beef/64")
    # disconnect frees the address; connect again may take it
    await ctl.disconnect("dual", "other")
    await ctl.connect("dual", "other", EndpointRequest(ipv6_address=IPv6Address("2001:db8:1::beef")))


async def test_bad_ip6_changes_nothing(world):
    ctl = await world.controller()
    await ctl.create_network(v6net("dual"))
    await ctl.create_network(
        NetworkSpec(name="v4only", ipam=(IpamConfig(subnet=IPv4Network("10.9.0.0/24")),))
    )
    await ctl.create_network(v6net("auto", subnet=None))
    await run(
        ctl,
        "api",
        network_mode=NetworkMode.parse("dual"),
        networks={"dual": EndpointRequest(ipv6_address=IPv6Address("2001:db8:1::f00d"))},
    )
    other = await run(ctl, "other")
    before = (ctl.container_endpoints(other), sorted(world.kernel.commands))
    cases = [
        ("dual", "2001:db8:1::f00d", Forbidden, "Address already in use"),
        ("dual", "2001:db8:2::5", InvalidArgument, "no configured subnet"),
        ("v4only", "2001:db8:1::7", InvalidArgument, "has no IPv6"),
        ("auto", str(ULA_FIRST.network_address + 9), InvalidArgument, "user configured subnets"),
    ]
    for network, address, error, needle in cases:
        with pytest.raises(error, match=needle):
            await ctl.connect(network, "other", EndpointRequest(ipv6_address=IPv6Address(address)))
        assert (ctl.container_endpoints(other), sorted(world.kernel.commands)) == before


async def test_bad_ipv6_networks_change_nothing(world):
    ctl = await world.controller()
    await ctl.create_network(v6net("dual"))
    before = (len(ctl.networks()), sorted(world.kernel.commands))
    bad = [
        (v6net("overlap", "2001:db8:1::/80"), Forbidden, "overlaps"),
        (
            NetworkSpec(name="noflag", ipam=(IpamConfig(subnet=IPv6Network("2001:db8:5::/64")),)),
            InvalidArgument,
            "IPv6 is not enabled",
        ),
        (v6net("ll", "fe80::/64"), InvalidArgument, "link-local"),
        (
            NetworkSpec(
                name="two",
                enable_ipv6=True,
                ipam=(
                    IpamConfig(subnet=IPv6Network("2001:db8:5::/64")),
                    IpamConfig(subnet=IPv6Network("2001:db8:6::/64")),
                ),
            ),
            InvalidArgument,
            "only one IPv6 subnet",
        ),
    ]
    for spec, error, needle in bad:
        with pytest.raises(error, match=needle):
            await ctl.create_network(spec)
        assert (len(ctl.networks()), sorted(world.kernel.commands)) == before


async def test_v6_addresses_and_pools_survive_restart_and_are_released(world):
    ctl = await world.controller()
    net = await ctl.create_network(v6net("dual"))
    keep = await run(ctl, "keep", network_mode=NetworkMode.parse("dual"))
    address6 = ctl.container_endpoints(keep)[0][1].address6
    await ctl.close()
    ctl2 = await world.controller()
    assert ctl2.find_network("dual").subnet6 == net.subnet6
    assert ctl2.container_endpoints(keep)[0][1].address6 == address6
    new = await run(ctl2, "new", network_mode=NetworkMode.parse("dual"))
    assert ctl2.container_endpoints(new)[0][1].address6 == IPv6Interface("2001:db8:1::3/64")
    await ctl2.remove_container("new", force=True)
    await ctl2.remove_container("keep", force=True)
    await ctl2.remove_network("dual")
    # the v6 subnet is free again
    again = await ctl2.create_network(v6net("again"))
    assert again.subnet6 == IPv6Network("2001:db8:1::/64")


async def test_default_bridge_ipv6_flags(world):
    world.bridge_ipv6 = IpamConfig(subnet=IPv6Network("2001:db8:17::/64"))
    ctl = await world.controller()
    bridge = ctl.find_network("bridge")
    assert bridge.enable_ipv6 and bridge.subnet6 == IPv6Network("2001:db8:17::/64")
    cid = await run(ctl, "web")
    assert ctl.container_endpoints(cid)[0][1].address6 == IPv6Interface("2001:db8:17::2/64")
    await ctl.remove_container("web", force=True)
    await ctl.close()
    # a new --fixed-cidr-v6 re-creates the default bridge (nothing is attached to it)
    world.bridge_ipv6 = IpamConfig(subnet=IPv6Network("2001:db8:18::/64"))
    ctl2 = await world.controller()
    assert ctl2.find_network("bridge").subnet6 == IPv6Network("2001:db8:18::/64")
    await ctl2.close()
    # --ipv6 gone: the default bridge goes back to IPv4 only
    world.bridge_ipv6 = None
    ctl3 = await world.controller()
    assert not ctl3.find_network("bridge").enable_ipv6 and ctl3.find_network("bridge").subnet6 is None
    await ctl3.close()
    # --ipv6 without --fixed-cidr-v6: a /64 of the default IPv6 pool
    world.bridge_ipv6 = IpamConfig()
    ctl4 = await world.controller()
    assert ctl4.find_network("bridge").subnet6 == ULA_FIRST


async def test_default_bridge_keeps_its_v6_while_containers_use_it(world):
    world.bridge_ipv6 = IpamConfig(subnet=IPv6Network("2001:db8:17::/64"))
    ctl = await world.controller()
    cid = await run(ctl, "web")
    await ctl.close()
    world.bridge_ipv6 = None
    ctl2 = await world.controller()
    assert ctl2.find_network("bridge").subnet6 == IPv6Network("2001:db8:17::/64")
    assert ctl2.container_endpoints(cid)[0][1].address6 == IPv6Interface("2001:db8:17::2/64")


async def test_ip6_refused_at_create_on_a_network_without_ipv6(world):
    ctl = await world.controller()
    await ctl.create_network(
        NetworkSpec(name="v4only", ipam=(IpamConfig(subnet=IPv4Network("10.9.0.0/24")),))
    )
    with pytest.raises(InvalidArgument, match="has no IPv6"):
        await ctl.create_container(
            "aa",
            ContainerConfig(
                image="busybox",
                network_mode=NetworkMode.parse("v4only"),
                networks={"v4only": EndpointRequest(ipv6_address=IPv6Address("2001:db8::5"))},
            ),
        )
    with pytest.raises(InvalidArgument, match="user defined networks only"):
        await ctl.create_container(
            "bb",
            ContainerConfig(
                image="busybox", networks={"bridge": EndpointRequest(ipv6_address=IPv6Address("2001:db8::5"))}
            ),
        )
    assert ctl.containers() == []


async def test_orphan_v6_addresses_and_pools_are_released_at_restart(world):
    """A crash between IPAM and the records: a v6 address owned by no endpoint, and a v6
    pool of no network, go back at the next start; live ones stay."""
    ctl = await world.controller()
    net = await ctl.create_network(v6net("dual"))
    keep = await run(ctl, "keep", network_mode=NetworkMode.parse("dual"))
    live6 = ctl.container_endpoints(keep)[0][1].address6.ip
    await ctl.close()
    ipam = DefaultIpam(world.store, DEFAULT_POOLS, pools6=(ULA,))
    await ipam.start()
    orphan = await ipam.allocate_address(net.id, "e" * 64, v6=True)
    await ipam.allocate_pool6("gone" * 16, None)
    await ipam.close()

    ctl2 = await world.controller()
    await ctl2.close()
    check = DefaultIpam(world.store, DEFAULT_POOLS, pools6=(ULA,))
    await check.start()
    owners = check.owners(net.id)
    assert orphan not in owners and owners[live6] != ""
    assert check.pool6("gone" * 16) is None and check.pool6(net.id) is not None
    await check.close()
