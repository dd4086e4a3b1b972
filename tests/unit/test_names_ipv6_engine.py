"""IPv6 names through the engine (fakes): the v6 address IPAM gives an endpoint reaches the
embedded DNS server's records and /etc/hosts, follows connect, disconnect and a daemon
restart, and host-gateway and --link on a dual-stack default bridge."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv6Address, IPv6Network

import pytest
from test_engine import run
from test_engine_ipv6 import ULA, World6

from cnm.dns.records import NameTable
from cnm.drivers.bridge import BridgeDriver
from cnm.drivers.host import HostDriver
from cnm.drivers.null import NullDriver
from cnm.engine.controller import Controller
from cnm.ipam.api import DEFAULT_POOLS
from cnm.ipam.default import DefaultIpam
from cnm.model.endpoint import EndpointRequest
from cnm.model.network import IpamConfig, NetworkSpec
from cnm.model.network_mode import NetworkMode


class NamedWorld6(World6):
    """World6 with a name table, a host resolv.conf and cnmd's --host-gateway-ip."""

    def __init__(self, tmp_path) -> None:  # type: ignore[no-untyped-def]
        super().__init__(tmp_path)
        self.names = NameTable()
        self.resolv = tmp_path / "host-resolv.conf"
        self.resolv.write_text("nameserver 2001:db8:53::53\nnameserver 192.0.2.53\n")
        self.host_gateway_ips: tuple[IPv4Address | IPv6Address, ...] = ()

    async def controller(self, runc_states=None) -> Controller:  # type: ignore[no-untyped-def]
        ctl = Controller(
            store=self.store,
            ipam=DefaultIpam(self.store, DEFAULT_POOLS, pools6=(ULA,)),
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
            names=self.names,
            host_resolv_conf=str(self.resolv),
            host_gateway_ips=self.host_gateway_ips,
        )
        await ctl.start(runc_states)
        return ctl


@pytest.fixture
def world(tmp_path):  # type: ignore[no-untyped-def]
    return NamedWorld6(tmp_path)


def v6net(name: str, subnet: str) -> NetworkSpec:
    return NetworkSpec(name=name, enable_ipv6=True, ipam=(IpamConfig(subnet=IPv6Network(subnet)),))


def sandbox_id(ctl: Controller, cid: str) -> str:
    sandbox = ctl.container_sandbox(cid)
    assert sandbox is not None
    return sandbox.id


async def test_v6_addresses_reach_the_dns_records_and_follow_connect_and_restart(world) -> None:
    ctl = await world.controller()
    await ctl.create_network(v6net("front", "2001:db8:1::/64"))
    await ctl.create_network(v6net("back", "2001:db8:2::/64"))
    web = await run(
        ctl,
        "web",
        network_mode=NetworkMode.parse("front"),
        networks={"front": EndpointRequest(aliases=("www",))},
    )
    api = await run(ctl, "api", network_mode=NetworkMode.parse("front"))
    web6 = ctl.container_endpoints(web)[0][1].address6
    assert web6 is not None
    names, sb_api = world.names, sandbox_id(ctl, api)
    assert names.lookup_aaaa(sb_api, "web") == [web6.ip] == names.lookup_aaaa(sb_api, "www")
    assert names.lookup_ptr(sb_api, web6.ip) == "web.front"
    # web joins back: its back address answers there; disconnect takes it away again
    await ctl.connect("back", "web", EndpointRequest())
    db = await run(ctl, "db", network_mode=NetworkMode.parse("back"))
    back6 = next(ep.address6 for net, ep in ctl.container_endpoints(web) if net.name == "back")
    assert back6 is not None and back6.ip in IPv6Network("2001:db8:2::/64")
    assert names.lookup_aaaa(sandbox_id(ctl, db), "web") == [back6.ip]
    await ctl.disconnect("back", "web")
    assert names.lookup_aaaa(sandbox_id(ctl, db), "web") is None
    assert names.lookup_ptr(sandbox_id(ctl, db), back6.ip) is None
    # a daemon restart publishes the stored v6 addresses again
    await ctl.close()
    world.names = NameTable()
    ctl = await world.controller(asyncio.ensure_future(world.runtime.states()))
    assert world.names.lookup_aaaa(sandbox_id(ctl, api), "web") == [web6.ip]


async def test_hosts_and_resolv_conf_of_a_dual_stack_container(world) -> None:
    world.host_gateway_ips = (IPv4Address("192.0.2.1"), IPv6Address("2001:db8:ffff::1"))
    ctl = await world.controller()
    await ctl.create_network(v6net("front", "2001:db8:1::/64"))
    web = await run(
        ctl,
        "web",
        network_mode=NetworkMode.parse("front"),
        extra_hosts=("gw:host-gateway", "v6host:2001:db8:9::9"),
    )
    [(_, ep)] = ctl.container_endpoints(web)
    assert ep.address is not None and ep.address6 is not None
    hosts = open(ctl.container_paths(web).hosts).read()
    assert "::1\tlocalhost ip6-localhost ip6-loopback\n" in hosts
    assert "192.0.2.1\tgw\n2001:db8:ffff::1\tgw\n2001:db8:9::9\tv6host\n" in hosts
    assert hosts.endswith(f"{ep.address.ip}\t{web[:12]}\n{ep.address6.ip}\t{web[:12]}\n")
    resolv = open(ctl.container_paths(web).resolv_conf).read()
    assert "nameserver 127.0.0.11" in resolv and resolv.count("nameserver ") == 1


async def test_default_bridge_with_ipv6_links_host_gateway_and_resolv_conf(world) -> None:
    world.bridge_ipv6 = IpamConfig(subnet=IPv6Network("2001:db8:17::/64"))
    ctl = await world.controller()
    db = await run(ctl, "db")
    db_ep = ctl.container_endpoints(db)[0][1]
    assert db_ep.address is not None and db_ep.address6 is not None
    app = await run(ctl, "app", links=("db:database",), extra_hosts=("gw:host-gateway",))
    hosts = open(ctl.container_paths(app).hosts).read()
    assert "172.17.0.1\tgw\n2001:db8:17::1\tgw\n" in hosts  # the bridge's gateways, both families
    names = f"database {db[:12]} db"
    assert hosts.endswith(f"{db_ep.address.ip}\t{names}\n{db_ep.address6.ip}\t{names}\n")
    resolv = open(ctl.container_paths(app).resolv_conf).read()
    assert "nameserver 2001:db8:53::53\nnameserver 192.0.2.53\n" in resolv  # legacy, with IPv6
