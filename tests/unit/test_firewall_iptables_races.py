"""IptablesFirewall when something else moves: its own concurrent operations, another program
changing the chains between iptables-save and iptables-restore, cnm's chains removed from
outside (over a scripted exec: no root, no kernel)."""

from __future__ import annotations

import asyncio

from test_firewall_iptables import E1, E2, fw, net, prule  # noqa: F401 (fw is a fixture)

from cnm.errors import FirewallError
from cnm.firewall import render_ipt as r

USER_ONLY = "*filter\n:FORWARD ACCEPT [0:0]\n:CNM-USER - [0:0]\nCOMMIT\n"


async def test_operations_never_overlap(fw):  # noqa: F811
    """One iptables process at a time: a batch rendered from a read (or from memory) must
    land before any other operation reads or writes."""
    active, most = 0, 0
    scripted = fw.ex

    async def slow(argv, stdin=None):  # noqa: ANN001
        nonlocal active, most
        active += 1
        most = max(most, active)
        try:
            await asyncio.sleep(0.01)
            return await scripted(argv, stdin)
        finally:
            active -= 1

    fw._exec = slow
    await fw.sync([net()])
    await asyncio.gather(
        fw.add_ports(E1, [prule()]),
        fw.add_ports(E2, [prule(E2, host_port=9090)]),
        fw.healthy(),
        fw.add_network(net()),
        fw.setup(),
        fw.remove_ports(E1),
    )
    assert most == 1


async def test_setup_renders_again_when_the_chains_changed_after_the_read(fw):  # noqa: F811
    # read: CNM-USER exists (so it is not declared); gone before the batch lands
    fw.ex.saves = [USER_ONLY, ""]
    fw.ex.fail_restores = [FirewallError("iptables-nft-restore: Chain 'CNM-USER' does not exist")]
    await fw.setup()
    first, again = fw.ex.restores()
    assert ":CNM-USER - [0:0]" not in first and ":CNM-USER - [0:0]" in again
    assert again == r.render_setup({})


async def test_sync_renders_again_when_the_chains_changed_after_the_read(fw):  # noqa: F811
    fw.ex.saves = [USER_ONLY, ""]
    fw.ex.fail_restores = [FirewallError("iptables-nft-restore: Chain 'CNM-USER' does not exist")]
    await fw.sync([net()], [prule()])
    assert fw.ex.restores()[-1] == r.render_sync({}, [net()], [prule()])


async def test_teardown_renders_again_when_the_chains_changed_after_the_read(fw):  # noqa: F811
    fw.ex.saves = [USER_ONLY, ""]
    fw.ex.fail_restores = [
        FirewallError("iptables-nft-restore: line 3 failed: No chain/target/match by that name.")
    ]
    await fw.teardown()  # read again: nothing of cnm's is left, so nothing more to run
    [first] = fw.ex.restores()
    assert "-X CNM-USER" in first
    assert r.render_teardown({}) == ""


async def test_a_change_puts_back_the_chains_someone_removed(fw):  # noqa: F811
    """Another program (or a second daemon's clean-up) removed every cnm chain: the next
    change puts the skeleton back and lands, instead of failing the user's ``run``."""
    await fw.sync([net()])
    fw.ex.fail_restores = [
        FirewallError("iptables-nft-restore: line 5 failed: No chain/target/match by that name.")
    ]
    fw.ex.saves = [""]  # what the kernel holds now: nothing of cnm's
    await fw.add_ports(E1, [prule()])
    *_, skeleton, ports = fw.ex.restores()
    assert skeleton == r.render_setup({})
    assert ports == r.render_ports(E1, [], r.port_rules(prule()))
    # whoever removed them removed ip6tables' too: put back as well
    assert fw.ex.restores6()[-1] == r.render_setup({}, family=6)


async def test_a_change_that_fails_twice_reports_the_first_error(fw):  # noqa: F811
    await fw.sync([net()])
    fw.ex.fail_restores = [FirewallError("first"), FirewallError("second"), FirewallError("third")]
    fw.ex.saves = [""]
    try:
        await fw.add_ports(E1, [prule()])
    except FirewallError as exc:
        assert str(exc) == "first"
    else:
        raise AssertionError("add_ports succeeded")
    await fw.add_ports(E1, [prule()])  # memory was not changed by the failure: a plain retry works
