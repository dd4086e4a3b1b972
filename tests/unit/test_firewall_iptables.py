"""IptablesFirewall's logic over a scripted exec (no root, no kernel)."""

from __future__ import annotations

import logging
from ipaddress import IPv4Address, IPv4Network

import pytest

from cnm.errors import FirewallError, Unavailable
from cnm.firewall import common
from cnm.firewall import iptables as backend
from cnm.firewall import render_ipt as r
from cnm.firewall.api import BridgeRules, PortRule

A = "a1" * 32
E1 = "e1" * 32
E2 = "e2" * 32


def net(owner: str = A, bridge: str = "br-a") -> BridgeRules:
    return BridgeRules(owner=owner, bridge=bridge, subnet=IPv4Network("10.10.0.0/24"))


def prule(owner=E1, host_port=8080, end=None, container_port=80, bridge="br-a") -> PortRule:
    return PortRule(owner=owner, network=A, bridge=bridge, protocol="tcp", host_ip=None, host_port=host_port,
                    host_port_end=end or host_port, container_ip=IPv4Address("10.10.0.2"),
                    container_port=container_port)  # fmt: skip


class Exec:
    """Stands in for processes: records (argv, stdin); answers from ``replies`` keyed by
    the tool (a list of stdout strings or exceptions, consumed in order)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str | None]] = []
        self.saves: list[str] = []
        self.fail_restores: list[Exception] = []
        self.saves6: list[str] = []  # ip6tables' (unscripted: nothing of cnm's)
        self.fail_restores6: list[Exception] = []

    async def __call__(self, argv, stdin=None):  # noqa: ANN001
        self.calls.append((argv, stdin))
        if argv[-1] == "--version":
            return "iptables v1.8.9 (legacy)\n"
        v6 = argv[0].startswith("ip6tables")
        if argv[0].endswith("-save"):
            saves = self.saves6 if v6 else self.saves
            return saves.pop(0) if saves else ""
        fail = self.fail_restores6 if v6 else self.fail_restores
        if fail:
            raise fail.pop(0)
        return ""

    def restores(self) -> list[str]:
        """The iptables (IPv4) batches."""
        return [stdin for argv, stdin in self.calls if "--noflush" in argv and argv[0].startswith("iptables")]

    def restores6(self) -> list[str]:
        """The ip6tables batches."""
        return [
            stdin for argv, stdin in self.calls if "--noflush" in argv and argv[0].startswith("ip6tables")
        ]


@pytest.fixture
def fw(monkeypatch):
    ex = Exec()
    sysctl: list[str] = []
    monkeypatch.setattr(backend, "set_sysctl", lambda key, value: sysctl.append(f"{key}={value}") or "0")
    monkeypatch.setattr(common, "set_sysctl", lambda key, value: sysctl.append(f"{key}={value}") or "0")
    monkeypatch.setattr(backend.shutil, "which", lambda name: f"/usr/sbin/{name}")
    firewall = backend.IptablesFirewall()
    monkeypatch.setattr(firewall, "_exec", ex)
    firewall.ex = ex  # type: ignore[attr-defined]
    firewall.sysctl = sysctl  # type: ignore[attr-defined]
    return firewall


async def test_the_variant_is_detected_once_and_its_own_tools_are_used(fw):
    await fw.setup()
    await fw.healthy()
    argvs = [argv for argv, _ in fw.ex.calls]
    assert argvs[0] == ["iptables", "--version"]
    assert fw.variant == "legacy"
    assert ["iptables-legacy-save"] in argvs and ["iptables-legacy-restore", "-w", "--noflush"] in argvs
    assert sum(1 for a in argvs if a[-1] == "--version") == 1
    assert fw.sysctl == ["net.ipv4.ip_forward=1"]


async def test_every_change_is_one_logged_restore_batch(fw, caplog):
    caplog.set_level(logging.DEBUG, logger="cnm.kernel")
    await fw.sync([net()])
    n = len(fw.ex.restores())
    await fw.add_network(net())
    await fw.add_ports(E1, [prule(), prule(host_port=9000, end=9009, container_port=80)])
    assert len(fw.ex.restores()) == n + 2
    assert caplog.records[-1].getMessage().startswith("iptables-legacy-restore -w --noflush <<'EOF'\n*nat")
    assert fw.sysctl[-1] == "net.ipv4.conf.br-a.route_localnet=1"


async def test_add_ports_batch_depends_only_on_this_endpoint(fw):
    others = [prule(f"{i:064x}", 20000 + i) for i in range(100)]
    await fw.sync([net()], others)
    await fw.add_ports(E1, [prule()])
    batch = fw.ex.restores()[-1]
    assert batch == r.render_ports(E1, [], r.port_rules(prule()))
    await fw.remove_ports(E1)
    assert fw.ex.restores()[-1] == r.render_ports(E1, [r.port_jump(E1)], [])
    n = len(fw.ex.calls)
    await fw.remove_ports(E1)  # nothing left and memory is authoritative: no exec
    assert len(fw.ex.calls) == n


async def test_a_port_of_another_endpoint_is_refused_before_any_exec(fw):
    await fw.sync([net()], [prule(host_port=8000, end=8010, container_port=8000)])
    n = len(fw.ex.calls)
    with pytest.raises(FirewallError, match="already published by endpoint"):
        await fw.add_ports(E2, [prule(E2, host_port=8010)])
    assert len(fw.ex.calls) == n


async def test_stale_memory_is_retried_with_the_rules_read_back(fw):
    await fw.sync([net()])
    await fw.add_ports(E1, [prule()])
    fw.ex.fail_restores = [FirewallError("iptables-legacy-restore: Bad rule")]
    fw.ex.saves = ["*nat\n:CNM - [0:0]\nCOMMIT\n"]  # the jump is gone already
    await fw.add_ports(E1, [prule(host_port=8081)])
    assert fw.ex.restores()[-1] == r.render_ports(E1, [], r.port_rules(prule(host_port=8081)))


async def test_a_fresh_instance_reads_the_kernel_to_remove_a_network(fw):
    fw.ex.saves = [
        f'*filter\n:CNM-INTO-BRIDGE - [0:0]\n-A CNM-INTO-BRIDGE -o br-old -m comment --comment "cnm:{A}" -j X\nCOMMIT\n'
    ]
    await fw.remove_network(A)
    assert '-D CNM-INTO-BRIDGE -o br-old -m comment --comment "cnm:' + A + '" -j X' in fw.ex.restores()[-1]


async def test_teardown_reads_everything_it_removes(fw):
    fw.ex.saves = [
        '*filter\n:FORWARD ACCEPT [0:0]\n:CNM-USER - [0:0]\n-A FORWARD -m comment --comment "cnm:base" -j CNM-USER\nCOMMIT\n'
    ]
    await fw.teardown()
    assert fw.ex.restores()[-1] == (
        '*filter\n:CNM-USER - [0:0]\n-D FORWARD -m comment --comment "cnm:base" -j CNM-USER\n-X CNM-USER\nCOMMIT\n'
    )


async def test_restore_errors_name_the_failing_line(monkeypatch):
    firewall = backend.IptablesFirewall(iptables="/nonexistent/iptables")
    with pytest.raises(Unavailable):
        await firewall.setup()
    msg = backend._error_message(
        "iptables-restore",
        "iptables-restore: line 2 failed\nError occurred at line: 2\n",
        "*nat\n-A CNM -j X\nCOMMIT\n",
    )
    assert (
        msg
        == "iptables-restore: iptables-restore: line 2 failed; Error occurred at line: 2 (at '-A CNM -j X')"
    )


async def test_an_encrypted_vni_is_one_batch_from_a_fresh_read_and_survives_a_sync(fw):
    await fw.add_encrypted_vni(A, 4097)
    (batch,) = fw.ex.restores()
    assert batch == r.render_vni({}, A, 4097, add=True)
    await fw.sync([])
    assert f'"0>>22&0x3C@12>>8=4097" -m comment --comment cnm:{A} -j DROP' in fw.ex.restores()[-1]
    await fw.remove_encrypted_vni(A, 4097)
    await fw.sync([])
    assert "=4097" not in fw.ex.restores()[-1]


async def test_a_bad_vni_changes_nothing(fw):
    with pytest.raises(Exception, match="VNI"):
        await fw.add_encrypted_vni(A, 1 << 24)
    assert fw.ex.calls == []


# -- IPv6 ---------------------------------------------------------------------------------


def net6(owner: str = A, bridge: str = "br-a", **kw) -> BridgeRules:
    from ipaddress import IPv6Network

    return BridgeRules(
        owner=owner,
        bridge=bridge,
        subnet=IPv4Network("10.10.0.0/24"),
        subnet6=IPv6Network("fd00:10::/64"),
        **kw,
    )


def prule6(owner=E1, host_port=8080) -> PortRule:
    from ipaddress import IPv6Address

    return PortRule(owner=owner, network=A, bridge="br-a", protocol="tcp", host_ip=None, host_port=host_port,
                    host_port_end=host_port, container_ip=IPv6Address("fd00:10::2"), container_port=80)  # fmt: skip


async def test_setup_and_health_cover_ip6tables_of_the_same_variant(fw):
    await fw.setup()
    argvs = [argv for argv, _ in fw.ex.calls]
    assert ["ip6tables-legacy-save"] in argvs
    assert fw.ex.restores6() == [r.render_setup({}, family=6)]
    assert sum(1 for a in argvs if a[-1] == "--version") == 1
    assert await fw.healthy() is False  # the scripted saves hold nothing


async def test_a_v4_only_network_and_port_touch_iptables_alone(fw):
    await fw.sync([net()], [prule()])
    n = len(fw.ex.restores6())
    await fw.add_network(net())
    await fw.add_ports(E1, [prule(host_port=8081)])
    await fw.remove_ports(E1)
    await fw.remove_network(A)
    assert len(fw.ex.restores6()) == n


async def test_a_dual_stack_network_and_ports_are_one_batch_per_family(fw):
    await fw.sync([])
    await fw.add_network(net6())
    assert fw.ex.restores6()[-1] == r.render_add_network(net6(), [], family=6)
    await fw.add_ports(E1, [prule(), prule6()])
    assert fw.ex.restores()[-1] == r.render_ports(E1, [], r.port_rules(prule()))
    assert fw.ex.restores6()[-1] == r.render_ports(E1, [], r.port_rules(prule6()))
    assert fw.sysctl[-1] == "net.ipv4.conf.br-a.route_localnet=1"  # for the v4 port only
    await fw.add_ports(E1, [prule()])  # the v6 port goes
    # its jump and its CNM-PUBLISHED accept (for a routed network) go with it
    published = r.published_rules(r.port_rules(prule6()))
    assert published and fw.ex.restores6()[-1] == r.render_ports(E1, [r.port_jump(E1), *published], [])
    await fw.remove_network(A)
    assert "-X CNM-N-a1a1a1a1a1a1-IN" in fw.ex.restores6()[-1]


async def test_a_v6_port_clash_is_refused_before_any_exec(fw):
    await fw.sync([net6()], [prule6()])
    n = len(fw.ex.calls)
    with pytest.raises(FirewallError, match="8080/tcp on :: is already published"):
        await fw.add_ports(E2, [prule(E2), prule6(E2)])
    assert len(fw.ex.calls) == n


async def test_without_ip6tables_v4_works_and_v6_is_refused(fw, monkeypatch):
    monkeypatch.setattr(backend.shutil, "which", lambda name: None if "ip6" in name else f"/usr/sbin/{name}")
    await fw.setup()
    assert fw.ex.restores6() == []
    await fw.add_network(net())  # v4 works
    assert fw.ex.restores()[-1] == r.render_add_network(net(), [])
    n = len(fw.ex.restores())
    with pytest.raises(Unavailable, match="ip6tables is not installed"):
        await fw.add_network(net6("b2" * 32, "br-b"))
    with pytest.raises(Unavailable, match="ip6tables is not installed"):
        await fw.add_ports(E1, [prule(), prule6()])
    assert fw.ex.restores6() == [] and len(fw.ex.restores()) == n  # nothing half made


async def test_a_dual_stack_network_whose_v6_half_fails_leaves_nothing(fw):
    await fw.sync([])
    fw.ex.fail_restores6 = [FirewallError("boom"), FirewallError("boom again")]
    with pytest.raises(FirewallError, match="boom"):
        await fw.add_network(net6())
    assert fw.installed() == {}
    assert "-X CNM-N-a1a1a1a1a1a1-IN" in fw.ex.restores()[-1]
