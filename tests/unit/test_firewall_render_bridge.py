"""The anti-spoofing renderer: fixed rules reading sets, one port's elements, checks of
every field, and per-port cost (no root)."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network

import pytest

from cnm.errors import FirewallError, InvalidArgument
from cnm.firewall import render_bridge as r
from cnm.firewall.api import PortGuard, port_guard
from cnm.model.endpoint import EndpointRecord
from cnm.model.network import NetworkRecord

A = "a1" * 32
B = "b2" * 32
NET = "ee" * 32


def guard(
    owner: str = A,
    port: str = "vetha1a1a1a",
    mac: str = "02:42:0a:0a:00:02",
    addresses: tuple[str, ...] = ("10.10.0.2",),
    network: str = NET,
) -> PortGuard:
    return PortGuard(
        owner=owner, network=network, port=port, mac=mac, addresses=tuple(IPv4Address(a) for a in addresses)
    )


def lines(script: str) -> list[str]:
    return [line for line in script.splitlines() if line]


def rules_of(script: str, chain: str) -> list[str]:
    prefix = f"add rule bridge cnm {chain} "
    return [line[len(prefix) :] for line in lines(script) if line.startswith(prefix)]


# -- skeleton ---------------------------------------------------------------------------


def test_setup_makes_a_tagged_bridge_table_with_sets_and_an_accepting_prerouting_hook():
    script = r.render_setup()
    first = lines(script)[0]
    assert first.startswith("add table bridge cnm {") and 'comment "cnm:' in first
    assert 'add set bridge cnm ports { type ifname ; comment "cnm:' in script
    assert 'add set bridge cnm addrs { type ifname . ether_addr . ipv4_addr ; comment "cnm:' in script
    assert (
        "add chain bridge cnm prerouting { type filter hook prerouting priority filter ; policy accept ; }"
        in script
    )
    # the fixed rules are rewritten, never the sets
    assert "flush chain bridge cnm prerouting" in script and "flush chain bridge cnm port-guard" in script
    assert "flush set" not in script and "add element" not in script


def test_only_guarded_ports_are_checked_and_anything_unlisted_is_dropped():
    script = r.render_setup()
    assert rules_of(script, "prerouting") == ["iifname @ports jump port-guard"]
    guard_rules = rules_of(script, "port-guard")
    # the link-layer type, not nft's implicit "meta protocol" (which a VLAN tag hides)
    assert guard_rules[0] == "ether type ip iifname . ether saddr . ip saddr @addrs return"
    arp = guard_rules[1]
    # Ethernet/IPv4 ARP only; the frame's source and the ARP sender are both checked
    assert arp.startswith("ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 ")
    assert "iifname . ether saddr . arp saddr ip @addrs" in arp
    assert "iifname . arp saddr ether . arp saddr ip @addrs" in arp and arp.endswith(" return")
    # IPv6 goes to its own chain; everything else (other MACs, addresses, ethertypes,
    # VLAN tags) is dropped
    assert guard_rules[2:] == ["ether type ip6 goto port-guard6", "drop"]


def test_base_rule_counts_match_setup():
    assert r.base_rule_counts() == {"prerouting": 1, "port-guard": 4, "port-guard6": 7}


def test_teardown_is_idempotent_by_construction():
    assert lines(r.render_teardown()) == ["add table bridge cnm", "delete table bridge cnm"]


def test_another_table_name():
    assert all(" bridge test " in line or "bridge test" in line for line in lines(r.render_setup("test")))


# -- one port ---------------------------------------------------------------------------


def test_a_port_is_its_name_and_one_mac_address_triple_per_address():
    g = guard(mac="02:42:0A:0A:00:02", addresses=("10.10.0.2", "10.10.1.2", "10.10.0.2"))
    assert r.guard_elements(g) == [
        r.GuardElement("ports", '"vetha1a1a1a"'),
        r.GuardElement("addrs", '"vetha1a1a1a" . 02:42:0a:0a:00:02 . 10.10.0.2'),
        r.GuardElement("addrs", '"vetha1a1a1a" . 02:42:0a:0a:00:02 . 10.10.1.2'),
    ]


def test_adding_a_port_adds_only_its_elements_tagged_with_its_endpoint():
    script = r.render_port(A, (), r.guard_elements(guard()))
    assert lines(script) == [
        f'add element bridge cnm ports {{ "vetha1a1a1a" comment "cnm:{A}" }}',
        f'add element bridge cnm addrs {{ "vetha1a1a1a" . 02:42:0a:0a:00:02 . 10.10.0.2 comment "cnm:{A}" }}',
    ]


def test_replacing_drops_the_old_elements_whether_present_or_not_then_adds():
    old = r.guard_elements(guard())
    new = r.guard_elements(guard(addresses=("10.10.0.9",)))
    out = lines(r.render_port(A, old, new))
    assert out[:4] == [
        'add element bridge cnm ports { "vetha1a1a1a" }',
        'delete element bridge cnm ports { "vetha1a1a1a" }',
        'add element bridge cnm addrs { "vetha1a1a1a" . 02:42:0a:0a:00:02 . 10.10.0.2 }',
        'delete element bridge cnm addrs { "vetha1a1a1a" . 02:42:0a:0a:00:02 . 10.10.0.2 }',
    ]
    assert out[4:] == [line for line in lines(r.render_port(A, (), new))]


def test_removing_a_port_is_idempotent_by_construction():
    out = lines(r.render_drop(r.guard_elements(guard())))
    assert [line.split()[0] for line in out] == ["add", "delete", "add", "delete"]


def test_a_port_without_an_address_sends_nothing_but_is_still_guarded():
    assert r.guard_elements(guard(addresses=())) == [r.GuardElement("ports", '"vetha1a1a1a"')]


@pytest.mark.parametrize(
    "field,value",
    [
        ("mac", "02:42:0a:0a:00"),
        ("mac", "not a mac"),
        ("mac", "01:00:5e:00:00:01"),  # multicast
        ("mac", "ff:ff:ff:ff:ff:ff"),
        ("mac", "00:00:00:00:00:00"),
        ("mac", '02:42:0a:0a:00:02" ; flush ruleset'),
        ("port", ""),
        ("port", "veth with space"),
        ("port", 'a"b'),
        ("port", "x" * 16),
        ("owner", "bad owner"),
        ("network", "../x"),
    ],
)
def test_bad_fields_are_refused_with_a_clear_error(field, value):
    with pytest.raises(InvalidArgument):
        r.guard_elements(guard(**{field: value}))


@pytest.mark.parametrize(
    "address",
    ["0.0.0.0", "224.0.0.1", "239.255.255.255", "127.0.0.1", "127.255.255.254", "255.255.255.255"],
)
def test_addresses_no_container_can_own_are_refused(address):
    with pytest.raises(InvalidArgument, match=address):
        r.guard_elements(guard(addresses=(address,)))


@pytest.mark.parametrize(
    "address", ["0.0.0.1", "126.255.255.255", "128.0.0.1", "223.255.255.255", "240.0.0.1", "255.255.255.254"]
)
def test_unicast_addresses_next_to_the_refused_ranges_are_guarded(address):
    elements = r.guard_elements(guard(addresses=(address,)))
    assert elements[-1].key.endswith(f" . {address}")


def test_an_address_must_be_an_ipv4_address():
    g = PortGuard(owner=A, network=NET, port="veth1", mac="02:42:0a:0a:00:02", addresses=("10.0.0.2",))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        r.guard_elements(g)


def test_port_script_size_does_not_grow_with_other_ports():
    one = r.render_port(A, (), r.guard_elements(guard()))
    assert len(lines(one)) == 2  # whatever else the sets hold


# -- whole table ------------------------------------------------------------------------


def test_sync_remakes_the_skeleton_empties_both_sets_and_refills_them():
    a, b = guard(), guard(B, port="vethb2b2b2b", mac="02:42:0a:0a:00:03", addresses=("10.10.0.3",))
    out = lines(r.render_sync([a, b]))
    assert out[: len(r.setup_lines())] == r.setup_lines()
    rest = out[len(r.setup_lines()) :]
    assert rest[:4] == [f"flush set bridge cnm {name}" for name in ("ports", "addrs", "addrs6", "targets6")]
    assert rest[4:] == lines(r.render_port(A, (), r.guard_elements(a))) + lines(
        r.render_port(B, (), r.guard_elements(b))
    )


def test_sync_given_the_checked_elements_renders_the_same_script():
    a, b = guard(), guard(B, port="vethb2b2b2b", mac="02:42:0a:0a:00:03", addresses=("10.10.0.3",))
    elements = r.elements_by_owner([a, b])
    assert r.render_sync([a, b], elements=elements) == r.render_sync([a, b])


def test_sync_of_nothing_empties_the_sets():
    assert lines(r.render_sync([]))[-4:] == [
        f"flush set bridge cnm {name}" for name in ("ports", "addrs", "addrs6", "targets6")
    ]


def test_sync_refuses_a_port_claimed_twice_or_an_endpoint_guarded_twice():
    with pytest.raises(InvalidArgument, match="claimed by endpoints"):
        r.render_sync([guard(), guard(B)])
    with pytest.raises(InvalidArgument, match="guarded twice"):
        r.render_sync([guard(), guard(port="veth2")])


def test_keys_read_back_from_nft_json_are_the_keys_written():
    for e in r.guard_elements(guard(addresses=("10.10.0.2",))):
        if e.set == "ports":
            value: object = "vetha1a1a1a"
        else:
            value = {"concat": ["vetha1a1a1a", "02:42:0a:0a:00:02", "10.10.0.2"]}
        assert r.key_from_json(value) == e.key
    with pytest.raises(FirewallError):
        r.key_from_json({"range": [1, 2]})


# -- the engine's view ------------------------------------------------------------------


def test_port_guard_of_an_endpoint():
    net = NetworkRecord(id=NET, name="n", driver="bridge", created="x", subnet=IPv4Network("10.10.0.0/24"))
    ep = EndpointRecord(
        id=A,
        network_id=NET,
        container_id="c",
        sandbox_id="s",
        name="c",
        ifname="eth0",
        host_ifname="vetha1a1a1a",
        mac="02:42:0a:0a:00:02",
        address=IPv4Interface("10.10.0.2/24"),
    )
    assert port_guard(net, ep) == guard()
    with pytest.raises(InvalidArgument, match="MAC"):
        port_guard(net, replace(ep, mac=""))
    with pytest.raises(InvalidArgument, match="host interface"):
        port_guard(net, replace(ep, host_ifname=""))


# -- IPv6 -------------------------------------------------------------------------------


def guard6(addresses6: tuple[str, ...] = ("fd00:10::2",), **kw: object) -> PortGuard:
    return replace(guard(**kw), addresses6=tuple(IPv6Address(a) for a in addresses6))  # type: ignore[arg-type]


def test_the_ipv6_chain_refuses_ra_and_redirects_foreign_sources_and_foreign_na():
    assert rules_of(r.render_setup(), "port-guard6") == [
        "icmpv6 type { nd-router-advert, nd-redirect } drop",
        "iifname . ether saddr . ip6 saddr != @addrs6 drop",
        "icmpv6 type nd-neighbor-advert iifname . @th,64,128 != @targets6 drop",
        "ip6 saddr != :: return",
        # from :: only duplicate address detection of its own addresses and MLDv2 reports
        "icmpv6 type nd-neighbor-solicit iifname . @th,64,128 @targets6 return",
        "icmpv6 type mld2-listener-report return",
        "drop",
    ]
    script = r.render_setup()
    assert "add set bridge cnm addrs6 { type ifname . ether_addr . ipv6_addr ;" in script
    assert "add set bridge cnm targets6 { typeof iifname . @th,64,128 ;" in script


def test_link_local_is_the_kernels_eui64_of_the_mac():
    assert r.link_local("02:42:0a:0a:00:02") == IPv6Address("fe80::42:aff:fe0a:2")
    assert r.link_local("00:16:3E:00:00:01") == IPv6Address("fe80::216:3eff:fe00:1")


def test_a_port_with_ipv6_may_send_from_its_addresses_its_link_local_and_unspecified():
    port, mac = '"vetha1a1a1a"', "02:42:0a:0a:00:02"
    assert r.guard_elements(guard6(("fd00:10::2", "2001:db8::2", "fd00:10::2"))) == [
        r.GuardElement("ports", port),
        r.GuardElement("addrs", f"{port} . {mac} . 10.10.0.2"),
        r.GuardElement("addrs6", f"{port} . {mac} . fd00:10::2"),
        r.GuardElement("addrs6", f"{port} . {mac} . 2001:db8::2"),
        r.GuardElement("addrs6", f"{port} . {mac} . fe80::42:aff:fe0a:2"),
        r.GuardElement("addrs6", f"{port} . {mac} . ::"),
        r.GuardElement("targets6", f"{port} . 0xfd000010000000000000000000000002"),
        r.GuardElement("targets6", f"{port} . 0x20010db8000000000000000000000002"),
        r.GuardElement("targets6", f"{port} . 0xfe8000000000000000420afffe0a0002"),
    ]


def test_a_port_without_ipv6_addresses_has_no_ipv6_element():
    assert {e.set for e in r.guard_elements(guard())} == {"ports", "addrs"}


@pytest.mark.parametrize("address", ["::", "::1", "ff02::1", "fe80::1", "::ffff:a00:1"])
def test_ipv6_addresses_no_container_can_own_are_refused(address):
    with pytest.raises(InvalidArgument, match=f"{address} cannot be the IPv6 address"):
        r.guard_elements(guard6((address,)))


def test_an_ipv6_address_must_be_an_ipv6_address():
    bad = replace(guard(), addresses6=("fd00::2",))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="invalid IPv6 address"):
        r.guard_elements(bad)


def test_ipv6_keys_read_back_from_nft_json_are_the_keys_written():
    for e in r.guard_elements(guard6(("::a:2",))):  # a target nft prints without leading zeros
        if e.set == "addrs6":
            address = e.key.split(" . ")[2]
            value: object = {"concat": ["vetha1a1a1a", "02:42:0a:0a:00:02", address]}
        elif e.set == "targets6":
            raw = int(e.key.split(" . ")[1], 16)
            value = {"concat": ["vetha1a1a1a", hex(raw)]}
        else:
            continue
        assert r.key_from_json(value) == e.key


def test_port_guard_of_a_dual_stack_endpoint():
    net = NetworkRecord(
        id=NET,
        name="n",
        driver="bridge",
        created="x",
        subnet=IPv4Network("10.10.0.0/24"),
        enable_ipv6=True,
        subnet6=IPv6Network("fd00:10::/64"),
    )
    ep = EndpointRecord(
        id=A,
        network_id=NET,
        container_id="c",
        sandbox_id="s",
        name="c",
        ifname="eth0",
        host_ifname="vetha1a1a1a",
        mac="02:42:0a:0a:00:02",
        address=IPv4Interface("10.10.0.2/24"),
        address6=IPv6Interface("fd00:10::2/64"),
    )
    assert port_guard(net, ep) == guard6()
