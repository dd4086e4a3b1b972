"""BridgeDriver over FakeKernel and a recording firewall: create/join/leave/delete, undo on
failure, idempotent teardown, restore removing orphans."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Network

import pytest

from cnm.drivers.bridge import BridgeDriver
from cnm.errors import Conflict, FirewallError, InvalidArgument, KernelError, TeardownErrors
from cnm.firewall.api import BridgeRules
from cnm.kernel.fake import FakeKernel
from cnm.model.endpoint import EndpointRecord, SandboxRecord
from cnm.model.network import OPT_BRIDGE_NAME, OPT_ICC, OPT_MTU, IpamConfig, NetworkRecord, NetworkSpec

NET_ID = "a1" * 32
OTHER_ID = "b2" * 32


class RecordingFirewall:
    """Keeps the networks' rules in a dict; ``fail_add`` makes add_network raise."""

    def __init__(self) -> None:
        self.rules: dict[str, BridgeRules] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail_add = False
        self.fail_remove = False

    async def setup(self) -> None:
        self.calls.append(("setup", ""))

    async def sync(self, networks: Sequence[BridgeRules]) -> None:
        self.rules = {r.owner: r for r in networks}

    async def add_network(self, rules: BridgeRules) -> None:
        self.calls.append(("add", rules.owner))
        if self.fail_add:
            raise FirewallError("injected: nft -f failed")
        self.rules[rules.owner] = rules

    async def remove_network(self, owner: str) -> None:
        self.calls.append(("remove", owner))
        if self.fail_remove:
            raise FirewallError("injected: nft -f failed")
        self.rules.pop(owner, None)

    async def teardown(self) -> None:
        self.rules.clear()

    async def healthy(self) -> bool:
        return True


def network(net_id: str = NET_ID, name: str = "backend", subnet: str = "10.10.0.0/24", **kw) -> NetworkRecord:
    net = IPv4Network(subnet)
    values = dict(
        id=net_id,
        name=name,
        driver="bridge",
        created="2024-01-01T00:00:00.000000000Z",
        subnet=net,
        gateway=net.network_address + 1,
    )
    values.update(kw)
    return NetworkRecord(**values)


def endpoint(n: int, net: NetworkRecord, **kw) -> EndpointRecord:
    address = IPv4Interface(f"{net.subnet.network_address + n}/{net.subnet.prefixlen}")
    values = dict(
        id=f"{n:02x}" * 32,
        network_id=net.id,
        container_id=f"c{n}",
        sandbox_id=f"s{n}",
        name=f"ctr{n}",
        ifname="eth0",
        host_ifname=f"veth{n:07x}",
        mac=f"02:42:0a:0a:00:{n:02x}",
        address=address,
        gateway=net.gateway,
        default_route=True,
    )
    values.update(kw)
    return EndpointRecord(**values)


def sandbox(n: int) -> SandboxRecord:
    return SandboxRecord(id=f"s{n}", container_id=f"c{n}", key=f"/run/cnm/netns/s{n}")


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel()


@pytest.fixture
def firewall() -> RecordingFirewall:
    return RecordingFirewall()


@pytest.fixture
def driver(kernel: FakeKernel, firewall: RecordingFirewall) -> BridgeDriver:
    return BridgeDriver(kernel, firewall)


async def joined(kernel: FakeKernel, driver: BridgeDriver, net: NetworkRecord, n: int) -> EndpointRecord:
    sb = sandbox(n)
    await kernel.create_netns(sb.key)
    ep = endpoint(n, net)
    await driver.join(net, ep, sb)
    return ep


# -- networks --------------------------------------------------------------------------------


async def test_create_network_makes_tagged_bridge_with_gateway_and_rules(kernel, firewall, driver):
    net = network(options={OPT_MTU: "1400"})
    await driver.create_network(net)
    br = kernel.link("br-" + NET_ID[:12])
    assert br is not None and br.kind == "bridge" and br.owner == NET_ID and br.up
    assert br.addresses == [IPv4Interface("10.10.0.1/24")] and br.mtu == 1400
    assert firewall.rules[NET_ID] == BridgeRules(
        owner=NET_ID,
        bridge="br-" + NET_ID[:12],
        subnet=IPv4Network("10.10.0.0/24"),
        gateway=IPv4Address("10.10.0.1"),
        internal=False,
        icc=True,
        masquerade=True,
    )
    assert kernel.sysctls[(None, f"net.ipv6.conf.br-{NET_ID[:12]}.accept_ra")] == "0"


async def test_internal_network_bridge_still_gets_the_gateway(kernel, firewall, driver):
    await driver.create_network(network(internal=True))
    assert kernel.link("br-" + NET_ID[:12]).addresses == [IPv4Interface("10.10.0.1/24")]
    assert firewall.rules[NET_ID].internal


async def test_firewall_failure_removes_the_new_bridge(kernel, firewall, driver):
    firewall.fail_add = True
    with pytest.raises(FirewallError):
        await driver.create_network(network())
    assert kernel.link("br-" + NET_ID[:12]) is None
    assert NET_ID not in firewall.rules


async def test_firewall_failure_keeps_a_users_bridge(kernel, firewall, driver):
    kernel.add_foreign_link("mybr0")
    firewall.fail_add = True
    with pytest.raises(FirewallError):
        await driver.create_network(network(options={OPT_BRIDGE_NAME: "mybr0"}))
    assert kernel.link("mybr0") is not None


async def test_users_bridge_is_used_but_never_deleted(kernel, firewall, driver):
    kernel.add_foreign_link("mybr0")
    net = network(options={OPT_BRIDGE_NAME: "mybr0"})
    await driver.create_network(net)
    assert kernel.link("mybr0").owner == ""  # not tagged as cnm's
    assert IPv4Interface("10.10.0.1/24") in kernel.link("mybr0").addresses
    await driver.delete_network(net)
    assert kernel.link("mybr0") is not None
    assert NET_ID not in firewall.rules


async def test_bridge_name_of_another_cnm_network_is_refused(kernel, driver):
    await driver.create_network(network(OTHER_ID, options={OPT_BRIDGE_NAME: "shared0"}))
    with pytest.raises(Conflict):
        await driver.create_network(network(options={OPT_BRIDGE_NAME: "shared0"}))
    assert kernel.link("shared0").owner == OTHER_ID


async def test_name_taken_by_a_non_bridge_is_a_conflict_and_changes_nothing(kernel, firewall, driver):
    kernel.add_foreign_link("eth7", kind="veth")
    with pytest.raises(Conflict):
        await driver.create_network(network(options={OPT_BRIDGE_NAME: "eth7"}))
    assert kernel.link("eth7").kind == "veth" and not firewall.rules


async def test_delete_network_is_idempotent(kernel, firewall, driver):
    net = network()
    await driver.create_network(net)
    await driver.delete_network(net)
    await driver.delete_network(net)
    assert kernel.link_names() == ["lo"]
    assert not firewall.rules


async def test_delete_network_keeps_going_and_reports(kernel, firewall, driver):
    net = network()
    await driver.create_network(net)
    firewall.fail_remove = True
    with pytest.raises(TeardownErrors) as info:
        await driver.delete_network(net)
    assert "nft -f failed" in str(info.value)
    assert kernel.link("br-" + NET_ID[:12]) is None  # the bridge went anyway


def test_validate(driver):
    driver.validate(NetworkSpec(name="x", options={OPT_ICC: "false", OPT_MTU: "9000"}))
    with pytest.raises(InvalidArgument):
        driver.validate(NetworkSpec(name="x", options={OPT_MTU: "abc"}))
    with pytest.raises(InvalidArgument):
        driver.validate(NetworkSpec(name="x", options={OPT_BRIDGE_NAME: "a-very-long-bridge-name"}))
    driver.validate(NetworkSpec(name="x", enable_ipv6=True))
    v6 = IpamConfig(subnet=IPv6Network("2001:db8::/64"))
    driver.validate(NetworkSpec(name="x", enable_ipv6=True, ipam=(IpamConfig(), v6)))
    with pytest.raises(InvalidArgument, match="one IPv4 and one IPv6 subnet"):
        driver.validate(
            NetworkSpec(
                name="x", enable_ipv6=True, ipam=(v6, IpamConfig(subnet=IPv6Network("2001:db9::/64")))
            )
        )


# -- endpoints -------------------------------------------------------------------------------


async def test_join_makes_the_pair_with_everything_the_engine_resolved(kernel, driver):
    net = network(options={OPT_MTU: "1400"})
    await driver.create_network(net)
    ep = await joined(kernel, driver, net, 2)
    host = kernel.link(ep.host_ifname)
    inner = kernel.link("eth0", sandbox(2).key)
    assert host.owner == ep.id and host.master == kernel.link(net.bridge_name).index and host.up
    assert not host.isolated
    assert inner.peer == (None, host.index)  # iflink = host end's ifindex
    assert inner.mac == "02:42:0a:0a:00:02" and inner.mtu == 1400 and host.mtu == 1400
    assert inner.addresses == [IPv4Interface("10.10.0.2/24")]
    assert inner.gateway == IPv4Address("10.10.0.1")


async def test_internal_network_gets_no_default_route(kernel, driver):
    net = network(internal=True)
    await driver.create_network(net)
    await joined(kernel, driver, net, 2)
    assert kernel.link("eth0", sandbox(2).key).gateway is None


async def test_icc_false_isolates_each_port(kernel, driver):
    net = network(options={OPT_ICC: "false"})
    await driver.create_network(net)
    a = await joined(kernel, driver, net, 2)
    b = await joined(kernel, driver, net, 3)
    assert kernel.link(a.host_ifname).isolated and kernel.link(b.host_ifname).isolated
    assert any("isolated on" in c for c in kernel.commands)


async def test_join_failure_in_isolation_undoes_the_pair(kernel, driver):
    net = network(options={OPT_ICC: "false"})
    await driver.create_network(net)
    await kernel.create_netns(sandbox(2).key)
    kernel.fail("set_port_isolated")
    with pytest.raises(KernelError):
        await driver.join(net, endpoint(2, net), sandbox(2))
    assert kernel.link_names() == ["br-" + NET_ID[:12], "lo"]
    assert kernel.link_names(sandbox(2).key) == ["lo"]


async def test_join_without_a_namespace_is_refused(kernel, driver):
    net = network()
    await driver.create_network(net)
    with pytest.raises(InvalidArgument):
        await driver.join(net, endpoint(2, net), SandboxRecord(id="s", container_id="c", key=""))
    with pytest.raises(KernelError):
        await driver.join(net, endpoint(2, net), sandbox(2))  # key names no namespace


async def test_leave_is_idempotent_and_removes_both_ends(kernel, driver):
    net = network()
    await driver.create_network(net)
    ep = await joined(kernel, driver, net, 2)
    await driver.leave(net, ep, sandbox(2))
    await driver.leave(net, ep, sandbox(2))
    await driver.leave(net, ep, None)
    assert kernel.link(ep.host_ifname) is None
    assert kernel.link_names(sandbox(2).key) == ["lo"]


async def test_leave_after_the_namespace_is_gone(kernel, driver):
    net = network()
    await driver.create_network(net)
    ep = await joined(kernel, driver, net, 2)
    await kernel.delete_netns(sandbox(2).key)  # container stopped: the pair died with it
    assert kernel.link(ep.host_ifname) is None
    await driver.leave(net, ep, None)


# -- restore ---------------------------------------------------------------------------------


async def test_restore_recreates_missing_bridge_and_rules(kernel, firewall, driver):
    net = network()
    await driver.restore([net], [])
    assert kernel.link(net.bridge_name).owner == NET_ID
    assert NET_ID in firewall.rules


async def test_restore_removes_orphans_and_keeps_what_records_name(kernel, firewall, driver):
    keep, gone = network(), network(OTHER_ID, name="old", subnet="10.20.0.0/24")
    for net in (keep, gone):
        await driver.create_network(net)
    live = await joined(kernel, driver, keep, 2)
    stale = await joined(kernel, driver, keep, 3)
    on_gone = await joined(kernel, driver, gone, 4)
    kernel.add_foreign_link("docker0")  # not cnm's: untouched
    kernel.add_foreign_link("vethuser", kind="veth")

    await driver.restore([keep], [live])

    names = kernel.link_names()
    assert keep.bridge_name in names and live.host_ifname in names
    assert stale.host_ifname not in names and on_gone.host_ifname not in names
    assert gone.bridge_name not in names and OTHER_ID not in firewall.rules
    assert "docker0" in names and "vethuser" in names
    assert kernel.link_names(sandbox(3).key) == ["lo"]


async def test_restore_ignores_other_drivers_networks(kernel, firewall, driver):
    host_net = NetworkRecord(id=OTHER_ID, name="host", driver="host", created="x")
    await driver.restore([host_net], [])
    assert kernel.link_names() == ["lo"] and not firewall.rules


async def test_restore_keeps_going_and_reports(kernel, firewall, driver):
    good, bad = network(), network(OTHER_ID, name="bad", subnet="10.20.0.0/24")
    kernel.add_foreign_link(bad.bridge_name, kind="veth")  # name taken: that one fails
    with pytest.raises(TeardownErrors):
        await driver.restore([bad, good], [])
    assert kernel.link(good.bridge_name).owner == NET_ID


async def test_only_the_default_route_endpoint_gets_a_route(kernel, driver):
    """A second network's endpoint shows its gateway but must not add a second default route."""
    net = network()
    await driver.create_network(net)
    sb = SandboxRecord(id="s9", container_id="c9", key="/run/test/ns9")
    await kernel.create_netns(sb.key)
    ep = endpoint(9, net, default_route=False)
    await driver.join(net, ep, sb)
    veth_calls = [c for c in kernel.commands if "route" in c]
    assert not veth_calls


# -- restore next to another cnmd ----------------------------------------------------------------

OTHER_DAEMON = "0123456789abcdef"


async def test_restore_never_removes_another_daemons_links(kernel, firewall, driver):
    """Another cnmd in the same namespace: its bridge and veths are not this daemon's
    orphans, whether it is alive or down (its own restart reconciles them)."""
    for alive in (True, False):
        kernel.others = {OTHER_DAEMON: 42} if alive else {}
        br = kernel.add_foreign_link("br-theirs", owner=OTHER_ID, daemon=OTHER_DAEMON)
        kernel.add_foreign_link("veththeirs", kind="veth", owner="cd" * 32, daemon=OTHER_DAEMON, master=br)
        await driver.restore([], [])
        assert {"br-theirs", "veththeirs"} <= set(kernel.link_names()), f"alive={alive}"
        assert ("remove", OTHER_ID) not in firewall.calls
        await kernel.delete_link("br-theirs")
        await kernel.delete_link("veththeirs")


async def test_restore_removes_its_own_orphans_next_to_a_live_daemon(kernel, firewall, driver):
    kernel.others = {OTHER_DAEMON: 42}
    gone = network(OTHER_ID, name="old", subnet="10.20.0.0/24")
    await driver.create_network(gone)
    await driver.restore([], [])
    assert gone.bridge_name not in kernel.link_names()


async def test_restore_removes_old_untagged_daemon_links_only_when_alone(kernel, firewall, driver):
    """A link with the old tag (no daemon id) may be any cnmd's: removed only when no
    other cnmd is alive here."""
    kernel.add_foreign_link("br-old", owner=OTHER_ID)
    kernel.others = {OTHER_DAEMON: 42}
    await driver.restore([], [])
    assert "br-old" in kernel.link_names()
    kernel.others = {}
    await driver.restore([], [])
    assert "br-old" not in kernel.link_names()


async def test_bridge_of_another_daemon_is_a_conflict(kernel, firewall, driver):
    net = network(options={OPT_BRIDGE_NAME: "shared0"})
    kernel.add_foreign_link("shared0", owner=OTHER_ID, daemon=OTHER_DAEMON)
    with pytest.raises(Conflict, match=f"another cnmd \\(daemon {OTHER_DAEMON}"):
        await driver.create_network(net)
    assert kernel.link("shared0").owner == OTHER_ID
