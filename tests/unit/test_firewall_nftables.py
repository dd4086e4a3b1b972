"""NftablesFirewall's logic over a scripted libnftables context (no root, no kernel)."""

from __future__ import annotations

import json
import logging
from ipaddress import IPv4Address, IPv4Network

import pytest

from cnm.errors import FirewallError
from cnm.firewall import common, libnft
from cnm.firewall import nftables as backend
from cnm.firewall import render_nft as r
from cnm.firewall.api import BridgeRules, PortRule

A = "a1" * 32
B = "b2" * 32


def net(owner: str = A, bridge: str = "br-a", **kw) -> BridgeRules:
    return BridgeRules(owner=owner, bridge=bridge, subnet=IPv4Network("10.10.0.0/24"), **kw)


class ScriptedNft:
    """Stands in for ``nftables.Nftables``: records commands, answers from ``replies``
    (a list of (rc, out, err) consumed in order; success when empty)."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.replies: list[tuple[int, str, str]] = []
        self.json = False
        self.terse = False

    def set_json_output(self, on: bool) -> None:
        self.json = on

    def set_terse_output(self, on: bool) -> None:
        self.terse = on

    def cmd(self, text: str) -> tuple[int, str, str]:
        self.log.append(text)
        if self.replies:
            return self.replies.pop(0)
        # unscripted listings (the IPv6 table's, after the scripted IPv4 ones) are empty
        return (0, '{"nftables": []}', "") if self.json and text.startswith("list ") else (0, "", "")


@pytest.fixture
def fw(monkeypatch):
    log: list[str] = []
    contexts: dict[bool, ScriptedNft] = {}

    def make(json_output: bool) -> ScriptedNft:
        contexts[json_output] = ScriptedNft(log)
        contexts[json_output].json = json_output
        return contexts[json_output]

    monkeypatch.setattr(libnft, "nft_context", make)
    monkeypatch.setattr(backend, "set_sysctl", lambda key, value: log.append(f"sysctl {key}={value}") or "0")
    monkeypatch.setattr(common, "set_sysctl", lambda key, value: log.append(f"sysctl {key}={value}") or "0")
    firewall = backend.NftablesFirewall()
    firewall.applied = contexts[False]  # type: ignore[attr-defined]
    firewall.lister = contexts[True]  # type: ignore[attr-defined]
    firewall.log = log  # type: ignore[attr-defined]
    return firewall


def table_json(
    chains: list[str],
    sets=(*r.NETWORK_SETS, r.SET_ENCRYPTED_VNIS),
    maps=tuple(r.PORT_MAPS),
    rules: dict[str, int] | None = None,
) -> str:
    """A terse ``nft -j list table ip cnm``: these chains, sets and maps, and ``rules``
    (chain -> how many; setup's counts by default)."""
    objs: list[dict] = [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "ip", "name": "cnm"}}]
    objs += [{"set": {"family": "ip", "table": "cnm", "name": s, "type": "ifname"}} for s in sets]
    objs += [
        {"map": {"family": "ip", "table": "cnm", "name": m, "type": "ifname", "map": "verdict"}} for m in maps
    ]
    objs += [{"chain": {"family": "ip", "table": "cnm", "name": c}} for c in chains]
    for chain, n in (rules if rules is not None else r.base_rule_counts()).items():
        objs += [{"rule": {"family": "ip", "table": "cnm", "chain": chain, "expr": []}}] * n
    return json.dumps({"nftables": objs})


def table6_json() -> str:
    """A terse ``nft -j list table ip6 cnm`` as setup leaves it."""
    objs: list[dict] = [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "ip6", "name": "cnm"}}]
    objs += [{"set": {"family": "ip6", "name": s}} for s in (*r.NETWORK_SETS6, r.SET_PUBLISHED)]
    objs += [{"map": {"family": "ip6", "name": m}} for m in r.PORT_MAPS6]
    objs += [{"chain": {"family": "ip6", "name": c}} for c in r.FIXED_CHAINS6]
    for chain, n in r.base_rule_counts(family="ip6").items():
        objs += [{"rule": {"family": "ip6", "chain": chain, "expr": []}}] * n
    return json.dumps({"nftables": objs})


TABLE6 = (0, table6_json(), "")


def set_json(set_name: str, elems: list) -> tuple[int, str, str]:
    """A reply to ``nft -j list set ip cnm <set_name>`` holding ``elems``."""
    return (0, json.dumps({"nftables": [{"set": {"name": set_name, "elem": elems}}]}), "")


def tagged(val, owner: str) -> dict:
    return {"elem": {"val": val, "comment": f"cnm:{owner}"}}


NO_TABLE = (1, "", "Error: No such file or directory\nlist table ip cnm\n           ^^^\n")
NO_SETS = [set_json(s, []) for s in r.NETWORK_SETS]
LEGACY_MAP = (0, json.dumps({"nftables": [{"map": {"name": r.LEGACY_MAPS[0], "type": "ifname"}}]}), "")


async def test_setup_applies_the_skeleton_and_turns_on_forwarding(fw):
    fw.lister.replies = [NO_TABLE]
    await fw.setup()
    assert fw.log == ["list map ip cnm forward-into-bridge", r.render_setup(), "sysctl net.ipv4.ip_forward=1"]


async def test_setup_over_the_last_releases_layout_leaves_its_rules_serving(fw):
    fw.lister.replies = [LEGACY_MAP]
    await fw.setup()
    assert fw.log[1] == r.render_setup(legacy=True)


async def test_every_applied_script_is_logged_as_nft_f(fw, caplog):
    caplog.set_level(logging.DEBUG, logger="cnm.kernel")
    await fw.add_network(net())
    assert (
        caplog.records[-1].getMessage().startswith("nft -f - <<'EOF'\nadd element ip cnm bridges { \"br-a\" ")
    )


async def test_nft_failure_becomes_firewall_error_with_nfts_message(fw):
    fw.applied.replies = [(1, "", "Error: Could not process rule: File exists\nadd element ...\n   ^^^\n")]
    fw.lister.replies = list(NO_SETS)  # the kernel holds nothing of it: no retry
    with pytest.raises(
        FirewallError, match=f"^nft: Could not process rule: File exists \\(installing network {A}\\)$"
    ):
        await fw.add_network(net())
    assert fw.installed() == {}


async def test_add_remembers_the_network_and_remove_uses_it(fw):
    await fw.add_network(net())
    assert fw.installed() == {A: "br-a"}
    await fw.remove_network(A)
    assert fw.log[-1] == r.render_remove_network(A, r.network_elements(net()))
    assert fw.installed() == {}


async def test_replacing_a_network_on_a_new_bridge_drops_the_old_elements(fw):
    await fw.add_network(net())
    await fw.add_network(net(bridge="br-new"))
    assert fw.log[-1] == r.render_add_network(net(bridge="br-new"), previous=net())
    assert fw.installed() == {A: "br-new"}
    await fw.add_network(net(owner=B))  # br-a is free again
    assert fw.installed() == {A: "br-new", B: "br-a"}


async def test_two_networks_on_one_bridge_are_refused_before_touching_nft(fw):
    await fw.add_network(net())
    n = len(fw.log)
    with pytest.raises(FirewallError, match="already carries the rules of network"):
        await fw.add_network(net(owner=B))
    assert len(fw.log) == n


async def test_add_over_elements_a_previous_daemon_left_replaces_them(fw):
    # cnmd restarted (no memory): the same bridge on another subnet overlaps in the
    # interval set; the elements of that bridge are read and replaced in one transaction
    stale = [
        set_json("bridges", [tagged("br-a", B)]),
        set_json("same-bridge", []),
        set_json("internal", []),
        set_json("icc", []),
        set_json("masquerading", [tagged("br-x", B)]),  # another bridge: not touched
        set_json("subnets", [tagged({"concat": ["br-a", {"prefix": {"addr": "10.9.0.0", "len": 16}}]}, B)]),
    ]
    fw.applied.replies = [(1, "", "Error: Could not process rule: File exists\n")]
    fw.lister.replies = stale
    await fw.add_network(net())
    old = [r.SetElement("bridges", '"br-a"'), r.SetElement("subnets", '"br-a" . 10.9.0.0/16')]
    assert fw.log[-1] == r.render_network(A, old, r.network_elements(net()))
    assert fw.installed() == {A: "br-a"}


async def test_remove_of_unknown_network_falls_back_to_reading_its_tagged_elements(fw):
    fw.lister.replies = [
        set_json("bridges", [tagged("br-old", A), tagged("br-b", B), "untagged"]),
        set_json("same-bridge", [tagged({"concat": ["br-old", "br-old"]}, A)]),
        set_json("internal", []),
        set_json("icc", []),
        set_json("masquerading", []),
        set_json("subnets", [tagged({"concat": ["br-old", {"prefix": {"addr": "10.9.0.0", "len": 24}}]}, A)]),
    ]
    await fw.remove_network(A)
    assert fw.log[-1] == r.render_remove_network(
        A,
        [
            r.SetElement("bridges", '"br-old"'),
            r.SetElement("same-bridge", '"br-old" . "br-old"'),
            r.SetElement("subnets", '"br-old" . 10.9.0.0/24'),
        ],
    )
    assert "br-b" not in fw.log[-1]


async def test_remove_of_a_network_unknown_after_sync_touches_nothing(fw):
    fw.lister.replies = [NO_TABLE]
    await fw.sync([net()])
    n = len(fw.log)
    await fw.remove_network(B)
    assert len(fw.log) == n


async def test_remove_when_the_table_is_gone_is_success(fw):
    fw.lister.replies = [NO_TABLE]
    await fw.remove_network(A)
    assert not [line for line in fw.log if not line.startswith("list ")]


async def test_remove_keeps_a_real_failure(fw):
    await fw.add_network(net())
    fw.applied.replies = [(1, "", "Error: boom\n"), (1, "", "Error: still boom\n")]
    fw.lister.replies = [set_json("bridges", [tagged("br-a", A)]), *NO_SETS[1:]]
    with pytest.raises(FirewallError, match="still boom"):
        await fw.remove_network(A)


async def test_sync_reads_the_table_tersely_and_replaces_memory(fw):
    await fw.add_network(net(owner=B, bridge="br-b"))
    fw.lister.replies = [(0, table_json([*r.FIXED_CHAINS, "mine"]), "")]
    await fw.sync([net()])
    assert fw.lister.terse is True
    assert fw.log[-2] == "list table ip cnm"
    assert fw.log[-1] == r.render_sync([net()], [*r.FIXED_CHAINS, "mine", *r.PORT_MAPS])
    assert fw.installed() == {A: "br-a"}


async def test_sync_on_an_empty_ruleset_builds_everything(fw):
    fw.lister.replies = [NO_TABLE]
    await fw.sync([net()])
    assert fw.log[-1] == r.render_sync([net()], [])


async def test_a_restart_over_the_last_releases_ruleset_converges_to_the_sets(fw):
    """The upgrade from v0.1.0 as cnmd's start drives it: setup finds the old layout and
    leaves it serving; the networks are added (elements only); sync then lists the table
    and swaps in one transaction, deleting the old dispatch maps and per-network chains;
    the table is healthy after and not before."""
    legacy_chains = [f"n-{A[:12]}-{role}" for role in ("in", "out", "nat")]
    legacy_table = table_json(
        [*r.FIXED_CHAINS, *legacy_chains],
        sets=(),
        maps=(*r.LEGACY_MAPS, *r.PORT_MAPS),
        rules={"forward": 4, "postrouting": 3, "prerouting": 1, "output": 1, "raw-prerouting": 1, "ports": 4},
    )
    fw.lister.replies = [(0, legacy_table, "")]
    assert await fw.healthy() is False  # the daemon's heal would set up and sync too
    fw.lister.replies = [LEGACY_MAP]
    await fw.setup()
    assert fw.log[-2] == r.render_setup(legacy=True)
    await fw.add_network(net())
    assert fw.log[-1] == r.render_add_network(net())
    fw.lister.replies = [(0, legacy_table, "")]
    await fw.sync([net()])
    script = fw.log[-1]
    assert script == r.render_sync([net()], [*r.FIXED_CHAINS, *legacy_chains, *r.LEGACY_MAPS, *r.PORT_MAPS])
    for m in r.LEGACY_MAPS:
        assert f"delete map ip cnm {m}\n" in script
    for c in legacy_chains:
        assert f"delete chain ip cnm {c}\n" in script
    fw.lister.replies = [(0, table_json(list(r.FIXED_CHAINS)), ""), TABLE6]
    assert await fw.healthy() is True


async def test_healthy(fw):
    fw.lister.replies = [NO_TABLE]
    assert await fw.healthy() is False
    fw.lister.replies = [(0, table_json(list(r.FIXED_CHAINS)), ""), TABLE6]
    assert await fw.healthy() is True
    fw.lister.replies = [(0, table_json([c for c in r.FIXED_CHAINS if c != "user"]), "")]
    assert await fw.healthy() is False
    fw.lister.replies = [(0, table_json(list(r.FIXED_CHAINS), sets=("bridges",)), "")]
    assert await fw.healthy() is False
    fw.lister.replies = [(0, table_json(list(r.FIXED_CHAINS), maps=tuple(r.PORT_MAPS)[:2]), "")]
    assert await fw.healthy() is False
    fw.lister.replies = [(0, table_json(list(r.FIXED_CHAINS), rules={"forward": 0}), "")]
    assert await fw.healthy() is False  # someone flushed the forward rules
    fw.lister.replies = [(0, table_json(list(r.FIXED_CHAINS)), ""), NO_TABLE]
    assert await fw.healthy() is False  # the IPv6 table is gone
    fw.lister.replies = [(0, table_json(list(r.FIXED_CHAINS), maps=(*r.PORT_MAPS, r.LEGACY_MAPS[0])), "")]
    assert await fw.healthy() is False  # v0.1.0's layout is still there


async def test_teardown_forgets_everything(fw):
    await fw.add_network(net())
    await fw.teardown()
    assert fw.log[-1] == r.render_teardown()
    assert fw.installed() == {}


# -- published ports --------------------------------------------------------------------

E1 = "e1" * 32
E2 = "e2" * 32


def prule(owner=E1, host_port=8080, end=None, container_port=80, bridge="br-a", host_ip=None) -> PortRule:
    return PortRule(owner=owner, network=A, bridge=bridge, protocol="tcp",
                    host_ip=IPv4Address(host_ip) if host_ip else None, host_port=host_port,
                    host_port_end=end or host_port, container_ip=IPv4Address("10.10.0.2"),
                    container_port=container_port)  # fmt: skip


async def synced(fw, ports=()):
    fw.lister.replies = [NO_TABLE]
    await fw.sync([net()], list(ports))
    fw.log.clear()


async def test_add_ports_is_one_transaction_of_this_endpoints_elements_and_sets_route_localnet(fw):
    await synced(fw, [prule(E2, 9999)])
    await fw.add_ports(E1, [prule(), prule(host_port=8000, end=8010, container_port=8000)])
    new = r.port_elements(prule()) + r.port_elements(prule(host_port=8000, end=8010, container_port=8000))
    assert fw.log == ["sysctl net.ipv4.conf.br-a.route_localnet=1", r.render_ports(E1, [], new)]
    assert E2 not in fw.log[-1] and "9999" not in fw.log[-1]  # other endpoints are not rewritten
    # replacing: the old elements go in the same transaction
    await fw.add_ports(E1, [prule(host_port=8081)])
    assert fw.log[-1] == r.render_ports(E1, new, r.port_elements(prule(host_port=8081)))


async def test_proxy_mode_does_not_touch_route_localnet(monkeypatch):
    log: list[str] = []
    contexts: dict[bool, ScriptedNft] = {}

    def make(json_output: bool) -> ScriptedNft:
        contexts[json_output] = ScriptedNft(log)
        contexts[json_output].json = json_output
        return contexts[json_output]

    monkeypatch.setattr(libnft, "nft_context", make)
    monkeypatch.setattr(backend, "set_sysctl", lambda key, value: log.append(f"sysctl {key}={value}") or "0")
    monkeypatch.setattr(common, "set_sysctl", lambda key, value: log.append(f"sysctl {key}={value}") or "0")
    fw = backend.NftablesFirewall(userland_proxy=True)
    contexts[True].replies = [NO_TABLE]
    await fw.setup()
    assert log[1] == r.render_setup(userland_proxy=True)
    contexts[True].replies = [NO_TABLE]
    await fw.sync([net()])
    assert log[-1] == r.render_sync([net()], [], userland_proxy=True)
    await fw.add_ports(E1, [prule()])
    assert not [line for line in log if "route_localnet" in line]


async def test_a_port_of_another_endpoint_is_refused_before_touching_nft(fw):
    await synced(fw)
    await fw.add_ports(E1, [prule(host_port=8000, end=8010, container_port=8000)])
    n = len(fw.log)
    with pytest.raises(FirewallError, match="already published by endpoint"):
        await fw.add_ports(E2, [prule(E2, host_port=8005)])
    assert len(fw.log) == n
    await fw.add_ports(E2, [prule(E2, host_port=8005, host_ip="192.0.2.1")])  # another address: fine
    await fw.remove_ports(E1)
    await fw.add_ports(E2, [prule(E2, host_port=8005)])  # free again


async def test_remove_ports_deletes_only_this_endpoints_elements_and_is_idempotent(fw):
    await synced(fw)
    await fw.add_ports(E1, [prule()])
    await fw.remove_ports(E1)
    assert fw.log[-1] == r.render_ports(E1, r.port_elements(prule()), [])
    n = len(fw.log)
    await fw.remove_ports(E1)  # known to have nothing: no transaction at all
    await fw.remove_ports(E2)
    assert len(fw.log) == n


def port_map_json(map_name: str, elems: list) -> tuple[int, str, str]:
    return (0, json.dumps({"nftables": [{"map": {"name": map_name, "elem": elems}}]}), "")


async def test_a_fresh_instance_removes_ports_by_reading_their_comments(fw):
    # no sync yet (cnmd restarted): the maps are read, only E1's elements are deleted
    fw.lister.replies = [
        port_map_json("ports-ip", []),
        port_map_json("ports-ip-range", []),
        port_map_json("ports-any", [
            [{"elem": {"val": {"concat": ["tcp", 8080]}, "comment": f"cnm:{E1}"}}, {"concat": ["10.10.0.2", 80]}],
            [{"elem": {"val": {"concat": ["tcp", 9999]}, "comment": f"cnm:{E2}"}}, {"concat": ["10.10.0.3", 80]}],
        ]),
        port_map_json("ports-any-range", [
            [{"elem": {"val": {"concat": ["udp", {"range": [5000, 5010]}]}, "comment": f"cnm:{E1}"}}, "10.10.0.2"],
        ]),
    ]  # fmt: skip
    await fw.remove_ports(E1)
    assert (
        fw.log[-1]
        == "delete element ip cnm ports-any { tcp . 8080 }\ndelete element ip cnm ports-any-range { udp . 5000-5010 }\n"
    )


async def test_comments_with_names_are_still_owned_by_their_tag(fw):
    # elements written with names beside the tag ("cnm:<id> (web on front)") are E1's;
    # another endpoint whose id E1 is a prefix of is not
    fw.lister.replies = [
        port_map_json("ports-ip", []),
        port_map_json("ports-ip-range", []),
        port_map_json("ports-any", [
            [{"elem": {"val": {"concat": ["tcp", 8080]}, "comment": f"cnm:{E1} (web on front)"}}, {"concat": ["10.10.0.2", 80]}],
            [{"elem": {"val": {"concat": ["tcp", 9999]}, "comment": f"cnm:{E1}x (db on front)"}}, {"concat": ["10.10.0.3", 80]}],
        ]),
        port_map_json("ports-any-range", []),
    ]  # fmt: skip
    await fw.remove_ports(E1)
    assert fw.log[-1] == "delete element ip cnm ports-any { tcp . 8080 }\n"


async def test_add_ports_retries_with_what_the_kernel_holds_when_memory_is_stale(fw):
    await synced(fw)
    await fw.add_ports(E1, [prule()])
    # someone deleted the element from outside: deleting it fails; the kernel says E1 has nothing
    fw.applied.replies = [(1, "", "Error: Could not process rule: No such file or directory\n")]
    fw.lister.replies = [port_map_json(m, []) for m in r.PORT_MAPS]
    await fw.add_ports(E1, [prule(host_port=8081)])
    assert fw.log[-1] == r.render_ports(E1, [], r.port_elements(prule(host_port=8081)))


async def test_a_kernel_refusal_is_a_firewall_error_naming_the_endpoint(fw):
    await synced(fw)
    fw.applied.replies = [(1, "", "Error: Could not process rule: File exists\n")]
    fw.lister.replies = [port_map_json(m, []) for m in r.PORT_MAPS]
    with pytest.raises(FirewallError, match=f"File exists.*endpoint {E1}"):
        await fw.add_ports(E1, [prule()])
    assert fw.installed_ports() == {}


async def test_sync_with_ports_remembers_them(fw):
    await synced(fw, [prule(), prule(E2, 9999)])
    assert set(fw.installed_ports()) == {E1, E2}
    with pytest.raises(FirewallError, match="already published"):
        await fw.add_ports(E2, [prule(E2, 8080)])


async def test_adding_a_network_lists_nothing_and_names_no_other_network(fw):
    """Issue 9: network create must not grow with the networks there.  cnm itself reads
    nothing back (no ``list``) and each transaction names only its own network: its
    size is the same for the first network and the fortieth."""
    import hashlib

    fw.lister.replies = [NO_TABLE]
    await fw.setup()
    owners = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(40)]
    sizes = []
    for i, owner in enumerate(owners):
        fw.log.clear()
        await fw.add_network(
            BridgeRules(owner=owner, bridge=f"br-{owner[:12]}", subnet=IPv4Network(f"10.64.{10 + i}.0/24"))
        )
        assert not [c for c in fw.log if c.startswith("list")], fw.log
        (script,) = fw.log
        assert all(other[:12] not in script for other in owners if other != owner)
        sizes.append(len(script))
    assert len(set(sizes)) == 1, sizes


async def test_encrypted_vnis_are_one_element_each_and_survive_a_sync(fw):
    await fw.add_encrypted_vni(A, 4097)
    assert fw.log[-1] == r.render_vni(A, 4097, add=True, guard=True)
    fw.lister.replies = [(0, table_json(list(r.FIXED_CHAINS)), "")]
    await fw.sync([net()])
    assert f'add element ip cnm encrypted-vnis {{ 4097 comment "cnm:{A}" }}' in fw.log[-1]
    assert "add rule ip cnm vxlan-input " in fw.log[-1]
    await fw.add_encrypted_vni(B, 4098)
    assert fw.log[-1] == r.render_vni(B, 4098, add=True)  # the chain is there: its counter kept
    await fw.remove_encrypted_vni(A, 4097)  # B's VNI still needs the guard
    assert fw.log[-1] == r.render_vni(A, 4097, add=False)
    await fw.remove_encrypted_vni(B, 4098)  # the last: the chain goes with it
    assert fw.log[-1] == r.render_vni(B, 4098, add=False, guard=False)
    fw.lister.replies = [(0, table_json(list(r.FIXED_CHAINS)), "")]
    await fw.sync([])
    assert "add element ip cnm encrypted-vnis" not in fw.log[-1]
    assert "vxlan-input" not in fw.log[-1]


async def test_before_the_first_sync_the_last_known_vni_leaves_the_guard_in_place(fw):
    # a restarted cnmd does not know which VNIs its predecessor left in the set
    await fw.add_encrypted_vni(A, 4097)
    await fw.remove_encrypted_vni(A, 4097)
    assert fw.log[-1] == r.render_vni(A, 4097, add=False)
    assert "delete chain" not in fw.log[-1]


async def test_the_guard_chain_counts_in_health_only_while_a_vni_is_there(fw):
    await fw.add_encrypted_vni(A, 4097)
    fw.lister.replies = [(0, table_json(list(r.FIXED_CHAINS)), "")]
    assert await fw.healthy() is False  # vxlan-input missing
    with_guard = {**r.base_rule_counts(), "vxlan-input": 1}
    fw.lister.replies = [(0, table_json([*r.FIXED_CHAINS, "vxlan-input"], rules=with_guard), ""), TABLE6]
    assert await fw.healthy() is True


async def test_a_table_without_the_encrypted_vnis_set_is_not_healthy(fw):
    fw.lister.replies = [(0, table_json(list(r.FIXED_CHAINS), sets=tuple(r.NETWORK_SETS)), "")]
    assert await fw.healthy() is False
    fw.lister.replies = [(0, table_json(list(r.FIXED_CHAINS)), ""), TABLE6]
    assert await fw.healthy() is True


async def test_ipv6_ports_need_no_route_localnet_and_any_port_is_claimed_per_family(fw):
    from ipaddress import IPv6Address

    v6 = PortRule(A, B, "br-a", "tcp", None, 8080, 8080, IPv6Address("fd00:10::2"), 80)
    await fw.add_ports(A, [v6])
    assert not [entry for entry in fw.log if "route_localnet" in entry]
    assert fw.log[-1] == r.render_ports(A, (), r.port_elements(v6))
    # another endpoint's IPv4 wildcard on the same port is another map of another table
    v4 = PortRule(B, B, "br-a", "tcp", None, 8080, 8080, IPv4Address("10.10.0.3"), 80)
    await fw.add_ports(B, [v4])
    with pytest.raises(FirewallError, match="8080/tcp on :: is already published by endpoint"):
        await fw.add_ports(
            B, [v4, PortRule(B, B, "br-a", "tcp", None, 8080, 8080, IPv6Address("fd00:10::3"), 80)]
        )
