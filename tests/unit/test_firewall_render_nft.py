"""The nftables renderer: structure, owner tags, and per-network cost (no root)."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network

import pytest

from cnm.errors import InvalidArgument
from cnm.firewall import render_nft as r
from cnm.firewall.api import BridgeRules, PortRule

A = "a1" * 32
B = "b2" * 32


def net(owner: str = A, bridge: str = "br-a1a1a1a1a1a1", subnet: str = "10.10.0.0/24", **kw) -> BridgeRules:
    return BridgeRules(owner=owner, bridge=bridge, subnet=IPv4Network(subnet), **kw)


def lines(script: str) -> list[str]:
    return [line for line in script.splitlines() if line]


def rules_of(script: str, chain: str) -> list[str]:
    prefix = f"add rule ip cnm {chain} "
    return [line[len(prefix) :] for line in lines(script) if line.startswith(prefix)]


# -- skeleton ---------------------------------------------------------------------------


def test_setup_creates_table_maps_user_and_base_chains_with_accept_policy():
    script = r.render_setup()
    assert lines(script)[0] == "add table ip cnm"
    for m in r.MAPS:
        assert f"add map ip cnm {m} {{ type ifname : verdict ; }}" in script
    assert re.search(r"^add chain ip cnm user \{ comment .* \}$", script, re.M)
    hooks = {
        "forward": "type filter hook forward priority filter",
        "postrouting": "type nat hook postrouting priority srcnat",
        "prerouting": "type nat hook prerouting priority dstnat",
        "output": "type nat hook output priority -100",
        "raw-prerouting": "type filter hook prerouting priority raw",
    }
    for chain, hook in hooks.items():
        assert f"add chain ip cnm {chain} {{ {hook} ; policy accept ; }}" in script
    assert "policy drop" not in script


def test_forward_jumps_to_user_chain_first_then_dispatches_by_interface():
    script = r.render_setup()
    assert rules_of(script, "forward") == [
        "jump user",
        "ct state established,related accept",
        "oifname vmap @forward-into-bridge",
        "iifname vmap @forward-from-bridge",
    ]
    assert rules_of(script, "postrouting") == [
        "iifname vmap @nat-from-bridge",
        "oifname vmap @nat-into-bridge",
        "ip saddr 127.0.0.0/8 ct status dnat masquerade",
    ]
    assert r.base_rule_counts() == {
        "forward": 4, "postrouting": 3, "prerouting": 1, "output": 1, "raw-prerouting": 1, "ports": 4,
    }  # fmt: skip


def test_no_script_ever_flushes_or_deletes_the_user_chain():
    scripts = [
        r.render_setup(),
        r.render_add_network(net()),
        r.render_remove_network(A, ["br-x"]),
        r.render_sync([net()], ["user", "forward", "n-a1a1a1a1a1a1-in", "n-b2b2b2b2b2b2-out"]),
    ]
    for script in scripts:
        assert not re.search(r"^(flush|delete) chain ip cnm user$", script, re.M), script


def test_setup_is_idempotent_by_flushing_base_chains_before_adding_their_rules():
    ls = lines(r.render_setup())
    for chain in r.BASE_CHAINS:
        flush = ls.index(f"flush chain ip cnm {chain}")
        adds = [i for i, line in enumerate(ls) if line.startswith(f"add rule ip cnm {chain} ")]
        assert all(i > flush for i in adds)


def test_teardown_deletes_only_cnms_table_even_when_absent():
    assert lines(r.render_teardown()) == ["add table ip cnm", "delete table ip cnm"]


# -- one network ------------------------------------------------------------------------


def test_chain_names_come_from_the_network_id():
    ch = r.chains_for(A)
    assert ch.all() == ("n-a1a1a1a1a1a1-in", "n-a1a1a1a1a1a1-out", "n-a1a1a1a1a1a1-nat")
    assert all(r.is_network_chain(c) for c in ch.all())
    assert not any(r.is_network_chain(c) for c in (*r.FIXED_CHAINS, "mine", "n-x-y"))


def test_every_network_rule_chain_and_element_carries_the_owner_tag():
    script = r.render_add_network(net())
    body = [line for line in lines(script) if not line.startswith("flush ")]
    assert body
    for line in body:
        assert f'comment "cnm:{A}"' in line, line


def test_add_network_touches_only_its_own_chains_and_bridge():
    script = r.render_add_network(net())
    own = set(r.chains_for(A).all())
    for line in lines(script):
        words = line.split()
        if words[1] in ("chain", "rule"):
            assert words[4] in own, line
        elif words[1] == "element":
            assert words[4] in r.MAPS and '"br-a1a1a1a1a1a1"' in line, line
        else:
            raise AssertionError(f"unexpected statement {line}")


def test_default_network_is_masqueraded_and_isolated():
    script = r.render_add_network(net())
    ch = r.chains_for(A)
    tag = f'comment "cnm:{A}"'
    assert rules_of(script, ch.nat) == [
        f'oifname != "br-a1a1a1a1a1a1" ip saddr 10.10.0.0/24 masquerade {tag}',
        f'oifname "br-a1a1a1a1a1a1" ip saddr 10.10.0.0/24 ct status dnat masquerade {tag}',  # hairpin
    ]
    assert rules_of(script, ch.inbound) == [
        f"ct status dnat accept {tag}",  # published ports
        f'iifname "br-a1a1a1a1a1a1" accept {tag}',
        f"drop {tag}",
    ]
    assert rules_of(script, ch.outbound) == [f"accept {tag}"]
    for m, chain in ch.for_map():
        assert f'add element ip cnm {m} {{ "br-a1a1a1a1a1a1" {tag} : jump {chain} }}' in script


def test_masquerade_off_network_keeps_only_the_hairpin_masquerade():
    script = r.render_add_network(net(masquerade=False))
    assert rules_of(script, r.chains_for(A).nat) == [
        f'oifname "br-a1a1a1a1a1a1" ip saddr 10.10.0.0/24 ct status dnat masquerade comment "cnm:{A}"'
    ]


def test_internal_network_neither_leaves_nor_is_entered_nor_masqueraded():
    script = r.render_add_network(net(internal=True))
    ch = r.chains_for(A)
    tag = f'comment "cnm:{A}"'
    assert "masquerade" not in script
    assert "ct status dnat" not in script  # no published port enters an internal network
    assert rules_of(script, ch.outbound)[0] == f'oifname != "br-a1a1a1a1a1a1" drop {tag}'
    assert rules_of(script, ch.inbound)[-1] == f"drop {tag}"
    assert f"add chain ip cnm {ch.nat} " in script  # still there, so dispatch is uniform


def test_icc_false_drops_routed_traffic_within_the_bridge():
    script = r.render_add_network(net(icc=False))
    assert rules_of(script, r.chains_for(A).inbound)[1] == f'iifname "br-a1a1a1a1a1a1" drop comment "cnm:{A}"'


def test_add_network_script_does_not_depend_on_other_networks():
    # the renderer takes one network: its script is the same whatever else exists, and
    # its size does not grow with the subnet or the number of networks
    small = r.render_add_network(net())
    again = r.render_add_network(net())
    assert small == again
    assert len(lines(small)) == 3 * 2 + 6 + 4  # chains (add+flush), rules, elements


def test_rename_of_bridge_removes_the_old_elements_in_the_same_transaction():
    script = r.render_add_network(net(bridge="br-new"), previous_bridge="br-old")
    ls = lines(script)
    for m, chain in r.chains_for(A).for_map():
        delete = ls.index(f'delete element ip cnm {m} {{ "br-old" }}')
        # add-then-delete: deleting an element that is already gone is not an error
        assert ls[delete - 1] == f'add element ip cnm {m} {{ "br-old" comment "cnm:{A}" : jump {chain} }}'
        assert ls.index(f'add element ip cnm {m} {{ "br-new" comment "cnm:{A}" : jump {chain} }}') > delete


def test_remove_network_is_idempotent_and_touches_only_its_own_objects():
    ls = lines(r.render_remove_network(A, ["br-a1a1a1a1a1a1"]))
    own = r.chains_for(A).all()
    # chains are "added" first so the deletes cannot fail on absence; elements too
    assert ls[:3] == [f'add chain ip cnm {c} {{ comment "cnm:{A}" ; }}' for c in own]
    assert ls[-6:] == [x for c in own for x in (f"flush chain ip cnm {c}", f"delete chain ip cnm {c}")]
    for line in ls:
        assert any(c in line for c in own) or '"br-a1a1a1a1a1a1"' in line, line
    assert len(ls) == 3 + 8 + 6


def test_remove_network_without_known_bridge_only_deletes_chains():
    ls = lines(r.render_remove_network(A))
    assert not [line for line in ls if "element" in line]


@pytest.mark.parametrize("bridge", ["", "a" * 16, 'br"x', "br x", "br/x", "br\\x", "br:x"])
def test_bad_bridge_names_are_refused(bridge):
    with pytest.raises(InvalidArgument):
        r.render_add_network(net(bridge=bridge))


@pytest.mark.parametrize("owner", ["", "-x", 'a"b', "a b", "a;b", "x" * 101])
def test_bad_owner_ids_are_refused(owner):
    with pytest.raises(InvalidArgument):
        r.render_add_network(net(owner=owner))
    with pytest.raises(InvalidArgument):
        r.render_remove_network(owner)


# -- sync -------------------------------------------------------------------------------


def test_sync_rebuilds_skeleton_replaces_elements_and_deletes_stale_network_chains_only():
    existing = ["user", "forward", "postrouting", "prerouting", "output", "ports", "raw-prerouting", "mine",
                *r.chains_for(A).all(), *r.chains_for(B).all()]  # fmt: skip
    script = r.render_sync([net()], existing)
    ls = lines(script)
    assert ls[: len(r.setup_lines())] == r.setup_lines()
    for m in r.MAPS:
        assert f"flush map ip cnm {m}" in ls
    deleted = {line.split()[-1] for line in ls if line.startswith("delete chain")}
    assert deleted == set(r.chains_for(B).all())  # not A's (listed), not the skeleton, not "mine"
    # A is re-installed after the maps were flushed
    first_element = min(i for i, line in enumerate(ls) if line.startswith("add element"))
    assert first_element > max(ls.index(f"flush map ip cnm {m}") for m in r.MAPS)
    assert len(rules_of(script, r.chains_for(A).nat)) == 2


def test_sync_to_nothing_empties_the_table_but_keeps_the_skeleton():
    script = r.render_sync([], r.chains_for(B).all())
    assert "add element" not in script
    assert {line.split()[-1] for line in lines(script) if line.startswith("delete chain")} == set(
        r.chains_for(B).all()
    )
    assert "delete table" not in script


def test_sync_refuses_two_networks_on_one_bridge_or_one_id_prefix():
    with pytest.raises(InvalidArgument, match="claimed"):
        r.render_sync([net(), net(owner=B)])
    with pytest.raises(InvalidArgument, match="prefix"):
        r.render_sync([net(), net(owner=A[:12] + "f" * 52, bridge="br-other")])


# -- published ports --------------------------------------------------------------------

E1 = "e1" * 32


def prule(host_port=8080, container_port=80, end=None, host_ip=None, proto="tcp", owner=E1) -> PortRule:
    return PortRule(
        owner=owner, network=A, bridge="br-a", protocol=proto,
        host_ip=IPv4Address(host_ip) if host_ip else None, host_port=host_port,
        host_port_end=end or host_port, container_ip=IPv4Address("10.10.0.2"), container_port=container_port,
    )  # fmt: skip


def test_port_maps_are_created_by_setup_and_read_by_four_fixed_rules():
    script = r.render_setup()
    assert (
        "add map ip cnm ports-any { type inet_proto . inet_service : ipv4_addr . inet_service ; }" in script
    )
    assert (
        "add map ip cnm ports-any-range { type inet_proto . inet_service : ipv4_addr ; flags interval ; }"
        in script
    )
    assert rules_of(script, "ports") == [
        "meta l4proto { tcp, udp, sctp } dnat ip to ip daddr . meta l4proto . th dport map @ports-ip",
        "meta l4proto { tcp, udp, sctp } dnat ip to ip daddr . meta l4proto . th dport map @ports-ip-range",
        "meta l4proto { tcp, udp, sctp } dnat ip to meta l4proto . th dport map @ports-any",
        "meta l4proto { tcp, udp, sctp } dnat ip to meta l4proto . th dport map @ports-any-range",
    ]
    assert rules_of(script, "prerouting") == ["fib daddr type local jump ports"]
    assert rules_of(script, "output") == ["fib daddr type local jump ports"]
    assert rules_of(script, "raw-prerouting") == ['iifname != "lo" ip daddr 127.0.0.0/8 drop']
    # setup never empties a map: published ports survive a re-setup
    assert "flush map" not in script


def test_proxy_mode_leaves_localhost_and_bridge_traffic_to_the_proxy():
    script = r.render_setup(userland_proxy=True)
    assert rules_of(script, "prerouting") == [
        "iifname @forward-from-bridge return",
        "fib daddr type local jump ports",
    ]
    assert rules_of(script, "output") == ["ip daddr 127.0.0.0/8 return", "fib daddr type local jump ports"]
    assert r.base_rule_counts(True)["prerouting"] == 2


def test_a_single_port_is_one_hash_element_keyed_by_protocol_and_port():
    assert r.port_elements(prule()) == [r.PortElement("ports-any", "tcp . 8080", "10.10.0.2 . 80")]
    assert r.port_elements(prule(host_ip="127.0.0.1", proto="udp")) == [
        r.PortElement("ports-ip", "127.0.0.1 . udp . 8080", "10.10.0.2 . 80")
    ]


def test_a_range_on_the_same_ports_is_one_interval_element_whatever_its_size():
    assert r.port_elements(prule(8000, 8000, end=9000)) == [
        r.PortElement("ports-any-range", "tcp . 8000-9000", "10.10.0.2")
    ]
    assert r.port_elements(prule(8000, 8000, end=8010, host_ip="192.0.2.1")) == [
        r.PortElement("ports-ip-range", "192.0.2.1 . tcp . 8000-8010", "10.10.0.2")
    ]


def test_a_shifted_range_is_one_element_per_port_keeping_the_offset():
    assert r.port_elements(prule(9000, 80, end=9002)) == [
        r.PortElement("ports-any", f"tcp . {9000 + i}", f"10.10.0.2 . {80 + i}") for i in range(3)
    ]


@pytest.mark.parametrize(
    "bad",
    [dict(proto="icmp"), dict(host_port=0), dict(host_port=70000), dict(host_port=10, end=5),
     dict(container_port=65535, host_port=100, end=101), dict(owner='x"y')],
)  # fmt: skip
def test_bad_port_rules_are_refused(bad):
    with pytest.raises(InvalidArgument):
        r.port_elements_by_owner([prule(**bad)])


def test_ports_script_deletes_old_elements_and_adds_new_tagged_ones_only():
    old = r.port_elements(prule(7000, 70))
    new = r.port_elements(prule()) + r.port_elements(prule(8000, 8000, end=8010))
    ls = lines(r.render_ports(E1, old, new))
    assert ls == [
        "delete element ip cnm ports-any { tcp . 7000 }",
        f'add element ip cnm ports-any {{ tcp . 8080 comment "cnm:{E1}" : 10.10.0.2 . 80 }}',
        f'add element ip cnm ports-any-range {{ tcp . 8000-8010 comment "cnm:{E1}" : 10.10.0.2 }}',
    ]


def test_sync_refills_the_port_maps_after_flushing_them():
    ls = lines(r.render_sync([net()], [], ports=[prule()]))
    flush = ls.index("flush map ip cnm ports-any")
    add = ls.index(f'add element ip cnm ports-any {{ tcp . 8080 comment "cnm:{E1}" : 10.10.0.2 . 80 }}')
    assert add > flush
    assert all(f"flush map ip cnm {m}" in ls for m in r.PORT_MAPS)


def test_port_keys_read_back_from_nft_json_are_the_text_they_were_written_as():
    assert r.port_key_from_json({"concat": ["tcp", {"range": [8000, 8010]}]}) == "tcp . 8000-8010"
    assert r.port_key_from_json({"concat": ["127.0.0.1", "udp", 53]}) == "127.0.0.1 . udp . 53"
    assert (
        r.port_key_from_json({"concat": [{"prefix": {"addr": "0.0.0.0", "len": 0}}, "tcp", 1]})
        == "0.0.0.0/0 . tcp . 1"
    )
    assert r.port_data_from_json({"concat": ["10.0.0.2", 80]}) == "10.0.0.2 . 80"
