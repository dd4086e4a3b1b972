"""The nftables renderer: structure, owner tags, and per-network cost (no root)."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from cnm.errors import FirewallError, InvalidArgument
from cnm.firewall import render_nft as r
from cnm.firewall.api import BridgeRules, PortRule
from cnm.firewall.common import comment_owner

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


def test_setup_creates_table_sets_maps_user_and_base_chains_with_accept_policy():
    script = r.render_setup()
    assert lines(script)[0] == "add table ip cnm"
    assert "add set ip cnm bridges { type ifname ; }" in script
    assert "add set ip cnm same-bridge { type ifname . ifname ; }" in script
    assert "add set ip cnm subnets { type ifname . ipv4_addr ; flags interval ; }" in script
    for s in r.NETWORK_SETS:
        assert re.search(rf"^add set ip cnm {s} \{{ type ", script, re.M)
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


def test_forward_jumps_to_user_chain_first_then_reads_the_network_sets():
    script = r.render_setup()
    assert rules_of(script, "forward") == [
        "jump user",
        "ct state established,related accept",
        # nothing leaves an internal network, not even for another network's published port
        "iifname @internal iifname . oifname != @same-bridge drop",
        "oifname @bridges oifname != @internal ct status dnat accept",
        "iifname . oifname @same-bridge oifname @icc accept",
        "oifname @bridges drop",
    ]
    assert rules_of(script, "postrouting") == [
        "iifname . ip saddr @subnets iifname @masquerading iifname . oifname != @same-bridge masquerade",
        "oifname . ip saddr @subnets ct status dnat masquerade",
        "ip saddr 127.0.0.0/8 ct status dnat masquerade",
    ]
    assert r.base_rule_counts() == {
        "forward": 6, "postrouting": 3, "prerouting": 1, "output": 1, "raw-prerouting": 1, "ports": 4,
    }  # fmt: skip


def test_no_chain_and_no_rule_belongs_to_a_network():
    # the issue-9 promise: whatever the networks, the chains and rules are setup's
    for script in (r.render_add_network(net()), r.render_remove_network(A, r.network_elements(net()))):
        for line in lines(script):
            assert line.split()[1] == "element", line
    assert {
        line.split()[4] for line in lines(r.render_setup()) if line.startswith("add rule")
    } <= r.FIXED_CHAINS


def test_no_script_ever_flushes_or_deletes_the_user_chain():
    scripts = [
        r.render_setup(),
        r.render_setup(legacy=True),
        r.render_add_network(net()),
        r.render_remove_network(A, r.network_elements(net())),
        r.render_sync(
            [net()], ["user", "forward", "n-a1a1a1a1a1a1-in", "n-b2b2b2b2b2b2-out", *r.LEGACY_MAPS]
        ),
    ]
    for script in scripts:
        assert not re.search(r"^(flush|delete) chain ip cnm user$", script, re.M), script


def test_setup_is_idempotent_by_flushing_base_chains_before_adding_their_rules():
    ls = lines(r.render_setup())
    for chain in r.BASE_CHAINS:
        flush = ls.index(f"flush chain ip cnm {chain}")
        adds = [i for i, line in enumerate(ls) if line.startswith(f"add rule ip cnm {chain} ")]
        assert all(i > flush for i in adds)
    assert not [line for line in ls if line.startswith(("flush set", "flush map"))]  # elements kept


def test_setup_over_the_last_releases_layout_creates_the_sets_but_leaves_its_rules_serving():
    ls = [
        line for line in lines(r.render_setup(legacy=True)) if " ip cnm" in line or line == "add table ip cnm"
    ]
    assert [line for line in ls if line.startswith("add set")] == [
        line for line in lines(r.render_setup()) if line.startswith("add set ip ")
    ]
    assert not [line for line in ls if line.split()[0] in ("flush", "delete") or line.startswith("add rule")]


def test_teardown_deletes_only_cnms_table_even_when_absent():
    assert lines(r.render_teardown()) == [
        "add table ip cnm",
        "delete table ip cnm",
        "add table ip6 cnm",
        "delete table ip6 cnm",
    ]


# -- one network ------------------------------------------------------------------------


def elements_of(script: str) -> dict[str, list[str]]:
    """set -> keys added, from ``add element ip cnm <set> { <key> comment "…" }`` lines."""
    out: dict[str, list[str]] = {}
    for line in lines(script):
        m = re.match(r'^add element ip cnm (\S+) \{ (.*) comment "cnm:[^"]+" \}$', line)
        assert m, line
        out.setdefault(m[1], []).append(m[2])
    return out


def test_every_network_element_carries_the_owner_tag():
    script = r.render_add_network(net())
    assert lines(script)
    for line in lines(script):
        assert f'comment "cnm:{A}"' in line, line


def test_network_comments_name_the_network_beside_the_tag_that_owns():
    script = r.render_add_network(net(name="front"))
    for line in lines(script):
        assert f'comment "cnm:{A} (front)"' in line, line
    sync = r.render_sync([net(name='we"ird net')])
    assert f'comment "cnm:{A} (we_ird net)"' in sync  # a name can never break out of the string
    assert comment_owner(f"cnm:{A} (front)") == comment_owner(f"cnm:{A}") == A
    assert comment_owner("someone else's") == ""


def test_port_comments_name_the_container_and_network():
    rule = prule(label="web on front")
    script = r.render_ports(E1, [], r.port_elements(rule), label=rule.label)
    assert (
        f'add element ip cnm ports-any {{ tcp . 8080 comment "cnm:{E1} (web on front)" : 10.10.0.2 . 80 }}'
        in script
    )
    sync = r.render_sync([net(name="front")], ports=[rule])
    assert f'comment "cnm:{E1} (web on front)" : 10.10.0.2 . 80' in sync


def test_default_network_is_masqueraded_isolated_and_icc():
    br = '"br-a1a1a1a1a1a1"'
    assert elements_of(r.render_add_network(net())) == {
        "bridges": [br],
        "same-bridge": [f"{br} . {br}"],
        "icc": [br],
        "masquerading": [br],
        "subnets": [f"{br} . 10.10.0.0/24"],  # masquerade + hairpin
    }


def test_masquerade_off_network_keeps_only_the_hairpin_masquerade():
    sets = elements_of(r.render_add_network(net(masquerade=False)))
    assert "masquerading" not in sets
    assert sets["subnets"] == ['"br-a1a1a1a1a1a1" . 10.10.0.0/24']


def test_internal_network_neither_leaves_nor_is_entered_nor_masqueraded():
    sets = elements_of(r.render_add_network(net(internal=True)))
    assert sets["internal"] == ['"br-a1a1a1a1a1a1"']
    assert "masquerading" not in sets and "subnets" not in sets  # no NAT, no published port
    assert sets["bridges"] == ['"br-a1a1a1a1a1a1"']  # isolated like every network


def test_icc_false_leaves_the_bridge_out_of_the_icc_set():
    sets = elements_of(r.render_add_network(net(icc=False)))
    assert "icc" not in sets and sets["same-bridge"]


def test_add_network_script_does_not_depend_on_other_networks_or_the_subnet():
    small = r.render_add_network(net())
    assert small == r.render_add_network(net())
    assert len(lines(small)) == len(lines(r.render_add_network(net(subnet="10.0.0.0/8")))) == 5


def test_replacing_a_network_deletes_what_it_no_longer_has_first_and_adds_the_rest():
    old = net(bridge="br-old")
    new = net(bridge="br-new", icc=False)
    ls = lines(r.render_add_network(new, previous=old))
    tag = f'comment "cnm:{A}"'
    deleted = [line for line in ls if line.startswith("delete element")]
    assert len(deleted) == 5 and all('"br-old"' in line for line in deleted)
    for line in deleted:
        # add-then-delete: deleting an element that is already gone is not an error
        added = line.replace("delete element", "add element", 1)[: -len(" }")] + f" {tag} }}"
        assert ls[ls.index(line) - 1] == added
    last_delete = max(ls.index(line) for line in deleted)
    assert all(ls.index(line) > last_delete for line in ls if '"br-new"' in line)
    assert elements_of("\n".join(line for line in ls if '"br-new"' in line)) == elements_of(
        r.render_add_network(new)
    )


def test_replacing_a_network_by_itself_only_adds_its_elements_again():
    assert r.render_add_network(net(), previous=net()) == r.render_add_network(net())
    ls = lines(r.render_add_network(net(icc=False), previous=net()))
    assert ls[:2] == [
        f'add element ip cnm icc {{ "br-a1a1a1a1a1a1" comment "cnm:{A}" }}',
        'delete element ip cnm icc { "br-a1a1a1a1a1a1" }',
    ]
    assert len(ls) == 2 + 4


def test_remove_network_is_idempotent_and_touches_only_its_own_elements():
    elements = r.network_elements(net())
    ls = lines(r.render_remove_network(A, elements))
    assert len(ls) == 2 * len(elements) == 10
    for add, delete in zip(ls[::2], ls[1::2], strict=True):
        assert add.startswith("add element") and f'comment "cnm:{A}"' in add
        assert delete.startswith("delete element") and '"br-a1a1a1a1a1a1"' in delete


def test_remove_network_with_nothing_known_is_empty():
    assert lines(r.render_remove_network(A, [])) == []


@pytest.mark.parametrize("bridge", ["", "a" * 16, 'br"x', "br x", "br/x", "br\\x", "br:x"])
def test_bad_bridge_names_are_refused(bridge):
    with pytest.raises(InvalidArgument):
        r.render_add_network(net(bridge=bridge))


@pytest.mark.parametrize("owner", ["", "-x", 'a"b', "a b", "a;b", "x" * 101])
def test_bad_owner_ids_are_refused(owner):
    with pytest.raises(InvalidArgument):
        r.render_add_network(net(owner=owner))
    with pytest.raises(InvalidArgument):
        r.render_remove_network(owner, [])


def test_network_keys_read_back_from_nft_json_are_the_text_they_were_written_as():
    for element in r.network_elements(net()):
        kinds = r.NETWORK_SETS[element.set]
        parts = [
            p.strip('"') if k == "ifname" else p for k, p in zip(kinds, element.key.split(" . "), strict=True)
        ]
        if element.set == "subnets":
            parts[1] = {"prefix": {"addr": "10.10.0.0", "len": 24}}
        value = {"concat": parts} if len(parts) > 1 else parts[0]
        assert r.element_key_from_json(element.set, value) == element.key
    with pytest.raises(FirewallError):
        r.element_key_from_json("same-bridge", "br-x")


# -- sync -------------------------------------------------------------------------------


def test_sync_rebuilds_skeleton_and_refills_every_set():
    ls = lines(r.render_sync([net(), net(owner=B, bridge="br-b", subnet="10.11.0.0/24")], ["user", "mine"]))
    assert ls[: len(r.setup_lines())] == r.setup_lines()
    flushes = [ls.index(f"flush set ip cnm {s}") for s in r.NETWORK_SETS]
    first_element = min(i for i, line in enumerate(ls) if line.startswith("add element"))
    assert first_element > max(flushes)
    assert not [line for line in ls if line.startswith("delete")]  # nothing of v0.1.0 there
    assert len([line for line in ls if line.startswith("add element")]) == 10


def test_sync_to_nothing_empties_the_sets_but_keeps_the_skeleton():
    script = r.render_sync([])
    assert "add element" not in script
    assert all(f"flush set ip cnm {s}" in script for s in r.NETWORK_SETS)
    assert "delete table" not in script


def test_sync_refuses_two_networks_on_one_bridge():
    with pytest.raises(InvalidArgument, match="claimed"):
        r.render_sync([net(), net(owner=B)])


def test_legacy_chain_names_are_the_last_releases_per_network_chains():
    assert all(r.is_legacy_chain(f"n-a1a1a1a1a1a1-{role}") for role in ("in", "out", "nat"))
    assert not any(r.is_legacy_chain(c) for c in (*r.FIXED_CHAINS, "mine", "n-x-y", "n-a1a1a1a1a1a1-in-x"))


def test_sync_over_the_last_releases_layout_swaps_to_the_sets_in_one_transaction():
    """The upgrade from v0.1.0: its four dispatch maps and three chains per network go,
    after the base chains that read them were rewritten, and the networks are installed
    as elements -- all in the one script, so no packet meets a half-built table.  A
    user's chain in cnm's table is left alone."""
    legacy = [f"n-{p}-{role}" for p in ("a1a1a1a1a1a1", "c3c3c3c3c3c3") for role in ("in", "out", "nat")]
    existing = ["user", "forward", "postrouting", "ports", "mine", *r.LEGACY_MAPS, *legacy, *r.PORT_MAPS]
    ls = lines(r.render_sync([net()], existing))
    rewritten = max(i for i, line in enumerate(ls) if line.startswith("add rule ip cnm "))
    map_deletes = [ls.index(f"delete map ip cnm {m}") for m in r.LEGACY_MAPS]
    assert min(map_deletes) > rewritten
    for chain in legacy:
        flush, delete = ls.index(f"flush chain ip cnm {chain}"), ls.index(f"delete chain ip cnm {chain}")
        assert max(map_deletes) < flush < delete  # the maps' elements no longer hold it
    deleted = {line.split()[-1] for line in ls if line.startswith("delete")}
    assert deleted == {*r.LEGACY_MAPS, *legacy}  # not "mine", not the user chain, no port map
    assert elements_of("\n".join(line for line in ls if line.startswith("add element"))) == elements_of(
        r.render_add_network(net())
    )


# -- published ports --------------------------------------------------------------------

E1 = "e1" * 32


def prule(
    host_port=8080, container_port=80, end=None, host_ip=None, proto="tcp", owner=E1, label=""
) -> PortRule:
    return PortRule(
        owner=owner, network=A, bridge="br-a", protocol=proto,
        host_ip=IPv4Address(host_ip) if host_ip else None, host_port=host_port,
        host_port_end=end or host_port, container_ip=IPv4Address("10.10.0.2"), container_port=container_port,
        label=label,
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
        "iifname @bridges return",
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


# -- encrypted overlay networks' VNIs -------------------------------------------------------


GUARD_CHAIN = "add chain ip cnm vxlan-input { type filter hook input priority raw ; policy accept ; }"
GUARD_RULE = 'iifname != "cnmwg0" udp dport 4789 @th,96,24 @encrypted-vnis counter drop'


def test_setup_makes_the_vni_set_but_no_chain_on_the_input_hook():
    script = r.render_setup()
    assert "add set ip cnm encrypted-vnis { typeof @th,96,24 ; }" in script
    assert "vxlan-input" not in script
    assert not [line for line in lines(script) if "hook input" in line]
    assert r.VXLAN_CHAIN not in r.FIXED_CHAINS


def test_the_guard_drops_plain_vxlan_for_encrypted_vnis_unless_it_came_through_the_tunnel():
    on = lines(r.render_vni(A, 4097, add=True, guard=True))
    assert on == [
        f'add element ip cnm encrypted-vnis {{ 4097 comment "cnm:{A}" }}',
        GUARD_CHAIN,
        "flush chain ip cnm vxlan-input",  # idempotent: never two copies of the rule
        f"add rule ip cnm vxlan-input {GUARD_RULE}",
    ]
    assert rules_of("\n".join(on), "vxlan-input") == [GUARD_RULE]


def test_the_last_vni_takes_the_guard_chain_with_it_whether_or_not_it_is_there():
    off = lines(r.render_vni(A, 4097, add=False, guard=False))
    assert off == [
        f'add element ip cnm encrypted-vnis {{ 4097 comment "cnm:{A}" }}',
        "delete element ip cnm encrypted-vnis { 4097 }",
        GUARD_CHAIN,
        "flush chain ip cnm vxlan-input",
        "delete chain ip cnm vxlan-input",
    ]
    # guard=None: the chain is left as it is
    assert "vxlan-input" not in r.render_vni(A, 4097, add=False)


def test_the_vni_offset_is_bytes_4_to_6_of_the_vxlan_header_after_the_udp_header():
    # UDP header (8 bytes), then VXLAN: flags (1), reserved (3), VNI (3), reserved (1)
    offset, length = (int(x) for x in r.VNI_PAYLOAD.removeprefix("@th,").split(","))
    assert (offset, length) == ((8 + 4) * 8, 3 * 8)


def test_the_tunnel_interface_is_the_overlays():
    from cnm.drivers.overlay_crypt import IFNAME

    assert r.TUNNEL_IFNAME == IFNAME


def test_an_encrypted_vni_is_one_tagged_element_removed_whether_or_not_it_is_there():
    assert lines(r.render_vni(A, 4097, add=True)) == [
        f'add element ip cnm encrypted-vnis {{ 4097 comment "cnm:{A}" }}'
    ]
    assert lines(r.render_vni(A, 4097, add=False)) == [
        f'add element ip cnm encrypted-vnis {{ 4097 comment "cnm:{A}" }}',
        "delete element ip cnm encrypted-vnis { 4097 }",
    ]


@pytest.mark.parametrize("vni", [0, -1, 1 << 24, True, "4097"])
def test_bad_vnis_are_refused(vni):
    with pytest.raises(InvalidArgument, match="VNI"):
        r.render_vni(A, vni, add=True)


def test_sync_refills_the_encrypted_vnis_and_empties_them_without_any():
    script = r.render_sync([net()], vnis={A: 4097, B: 4098})
    flush = script.index("flush set ip cnm encrypted-vnis")
    assert script.index(f'add element ip cnm encrypted-vnis {{ 4097 comment "cnm:{A}" }}') > flush
    assert script.index(f'add element ip cnm encrypted-vnis {{ 4098 comment "cnm:{B}" }}') > flush
    assert rules_of(script, "vxlan-input") == [GUARD_RULE]
    assert "flush set ip cnm encrypted-vnis" in r.render_sync([])
    assert "add element ip cnm encrypted-vnis" not in r.render_sync([])
    # without VNIs: no chain, and one left by an earlier daemon (or release) is deleted
    assert "vxlan-input" not in r.render_sync([])
    assert (
        lines(r.render_sync([], existing=[*r.FIXED_CHAINS, "vxlan-input"]))[-1]
        == "delete chain ip cnm vxlan-input"
    )


# -- IPv6 -------------------------------------------------------------------------------


def net6(owner: str = A, bridge: str = "br-a1a1a1a1a1a1", subnet6: str = "fd00:10::/64", **kw) -> BridgeRules:
    return net(owner, bridge, subnet6=IPv6Network(subnet6), **kw)


def rules6_of(script: str, chain: str) -> list[str]:
    prefix = f"add rule ip6 cnm {chain} "
    return [line[len(prefix) :] for line in lines(script) if line.startswith(prefix)]


def port6(host_ip: str | None = None, first: int = 8080, last: int = 8080, cport: int = 80, **kw) -> PortRule:
    return PortRule(
        owner=kw.pop("owner", A),
        network=B,
        bridge="br-a1a1a1a1a1a1",
        protocol=kw.pop("protocol", "tcp"),
        host_ip=IPv6Address(host_ip) if host_ip else None,
        host_port=first,
        host_port_end=last,
        container_ip=IPv6Address(kw.pop("container_ip", "fd00:10::2")),
        container_port=cport,
    )


def test_the_ipv6_table_mirrors_the_ipv4_one_without_loopback_or_vxlan_rules():
    script = r.render_setup()
    assert "add table ip6 cnm" in lines(script)
    assert "add set ip6 cnm subnets { type ifname . ipv6_addr ; flags interval ; }" in script
    assert (
        "add map ip6 cnm ports-any { type inet_proto . inet_service : ipv6_addr . inet_service ; }" in script
    )
    assert "add set ip6 cnm published { type ipv6_addr . inet_proto . inet_service ; }" in script
    assert not [line for line in lines(script) if " ip6 cnm " in line and ("raw-" in line or "vxlan" in line)]
    assert "policy drop" not in script
    assert rules6_of(script, "forward") == [
        "jump user",
        "ct state established,related accept",
        "iifname @internal iifname . oifname != @same-bridge drop",
        "oifname @bridges oifname != @internal ct status dnat accept",
        "iifname . oifname @same-bridge oifname @icc accept",
        # routed: from outside cnm's bridges only (other networks stay isolated)
        "oifname @routed iifname != @bridges meta l4proto ipv6-icmp accept",
        "oifname @routed iifname != @bridges ip6 daddr . meta l4proto . th dport @published accept",
        "oifname @bridges drop",
    ]
    assert rules6_of(script, "postrouting") == [
        "iifname . ip6 saddr @subnets iifname @masquerading iifname . oifname != @same-bridge masquerade",
        "oifname . ip6 saddr @subnets ct status dnat masquerade",
    ]
    # Docker's ip6tables DNAT skips link-local sources
    assert all(rule.startswith("ip6 saddr != fe80::/10 ") for rule in rules6_of(script, "ports"))
    assert len(rules6_of(script, "ports")) == 4
    assert r.base_rule_counts(family="ip6") == {
        "forward": 8,
        "postrouting": 2,
        "prerouting": 1,
        "output": 1,
        "ports": 4,
    }
    assert rules6_of(r.render_setup(userland_proxy=True), "prerouting")[0] == "iifname @bridges return"


def test_a_v4_only_network_has_nothing_in_the_ipv6_table():
    assert {e.family for e in r.network_elements(net())} == {"ip"}
    assert " ip6 " not in r.render_add_network(net())


def test_a_dual_stack_network_is_masqueraded_isolated_and_icc_in_both_tables():
    br = '"br-a1a1a1a1a1a1"'
    six = [e for e in r.network_elements(net6()) if e.family == "ip6"]
    assert six == [
        r.SetElement("bridges", br, "ip6"),
        r.SetElement("same-bridge", f"{br} . {br}", "ip6"),
        r.SetElement("icc", br, "ip6"),
        r.SetElement("masquerading", br, "ip6"),
        r.SetElement("subnets", f"{br} . fd00:10::/64", "ip6"),
    ]
    assert f"add element ip6 cnm subnets {{ {br} . fd00:10::/64 comment " in r.render_add_network(net6())
    assert [e for e in r.network_elements(net6()) if e.family == "ip"] == r.network_elements(net())


def test_a_routed_ipv6_subnet_is_not_masqueraded_and_is_in_routed():
    sets = {e.set for e in r.network_elements(net6(routed6=True)) if e.family == "ip6"}
    assert "routed" in sets and "masquerading" not in sets and "subnets" in sets
    # the v4 side keeps its NAT
    assert "masquerading" in {e.set for e in r.network_elements(net6(routed6=True)) if e.family == "ip"}


def test_an_internal_or_unmasqueraded_ipv6_network():
    internal = {e.set for e in r.network_elements(net6(internal=True, routed6=True)) if e.family == "ip6"}
    assert internal == {"bridges", "same-bridge", "internal", "icc"}
    plain = {e.set for e in r.network_elements(net6(masquerade=False)) if e.family == "ip6"}
    assert "masquerading" not in plain and "subnets" in plain
    no_icc = {e.set for e in r.network_elements(net6(icc=False)) if e.family == "ip6"}
    assert "icc" not in no_icc


def test_removing_a_dual_stack_network_deletes_its_elements_in_both_tables():
    out = lines(r.render_remove_network(A, r.network_elements(net6())))
    assert 'delete element ip cnm bridges { "br-a1a1a1a1a1a1" }' in out
    assert 'delete element ip6 cnm bridges { "br-a1a1a1a1a1a1" }' in out


def test_ipv6_network_keys_read_back_from_nft_json():
    value = {"concat": ["br-a1a1a1a1a1a1", {"prefix": {"addr": "fd00:10::", "len": 64}}]}
    assert r.element_key_from_json("subnets", value, "ip6") == '"br-a1a1a1a1a1a1" . fd00:10::/64'
    assert r.element_key_from_json("routed", "br-a1a1a1a1a1a1", "ip6") == '"br-a1a1a1a1a1a1"'


def test_an_ipv6_port_is_an_element_of_the_ipv6_maps_and_of_published():
    elements = r.port_elements(port6())
    assert elements == [
        r.PortElement("ports-any", "tcp . 8080", "fd00:10::2 . 80", "ip6"),
        r.PortElement("published", "fd00:10::2 . tcp . 80", "", "ip6"),
    ]
    script = r.render_ports(A, (), elements)
    assert f'add element ip6 cnm ports-any {{ tcp . 8080 comment "cnm:{A}" : fd00:10::2 . 80 }}' in script
    assert f'add element ip6 cnm published {{ fd00:10::2 . tcp . 80 comment "cnm:{A}" }}' in script
    assert lines(r.render_ports(A, elements, ())) == [
        "delete element ip6 cnm ports-any { tcp . 8080 }",
        "delete element ip6 cnm published { fd00:10::2 . tcp . 80 }",
    ]


def test_an_ipv6_host_address_and_ranges():
    assert r.port_elements(port6("2001:db8::1", 9000, 9002, 9000))[0] == r.PortElement(
        "ports-ip-range", "2001:db8::1 . tcp . 9000-9002", "fd00:10::2", "ip6"
    )
    shifted = r.port_elements(port6("2001:db8::1", 9000, 9001, 80))
    assert [e.map for e in shifted] == ["ports-ip", "ports-ip", "published", "published"]


def test_two_ports_on_one_container_port_share_its_published_element():
    both = r.port_elements_by_owner([port6(first=8080, last=8080), port6("2001:db8::1", 8081, 8081)])[A]
    assert [e.map for e in both] == ["ports-any", "published", "ports-ip"]


def test_a_rule_mixing_families_is_refused():
    mixed = PortRule(A, B, "br-a1a1a1a1a1a1", "tcp", IPv6Address("::1"), 80, 80, IPv4Address("10.0.0.2"), 80)
    with pytest.raises(InvalidArgument, match="one family per rule"):
        r.port_elements(mixed)


def test_sync_flushes_and_refills_the_ipv6_table_too():
    out = lines(r.render_sync([net6()], ports=[port6()]))
    for name in (*r.NETWORK_SETS6, "published"):
        assert f"flush set ip6 cnm {name}" in out
    for name in r.PORT_MAPS6:
        assert f"flush map ip6 cnm {name}" in out
    assert out.index("flush set ip6 cnm subnets") < next(
        i for i, line in enumerate(out) if line.startswith("add element ip6 cnm subnets")
    )
    assert any(line.startswith("add element ip6 cnm ports-any") for line in out)
