"""The packet evaluator of ``cnm trace`` on rulesets rendered by ``render_nft`` itself: the
script is loaded into a throwaway user+network namespace's kernel (``unshare -Urn``,
nothing of the host's touched) and read back as ``nft -j`` JSON, as cnmd reads it."""

from __future__ import annotations

import json
import shutil
import subprocess
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from cnm.errors import InvalidArgument
from cnm.firewall import render_nft
from cnm.firewall.api import BridgeRules, PortRule
from cnm.firewall.trace_nft import Packet, evaluate_hook, parse_ruleset, rule_text

FRONT, BACK, QUIET, WEB, RANGE = "a1" * 32, "b2" * 32, "c3" * 32, "e4" * 32, "f5" * 32
NETWORKS = [
    BridgeRules(owner=FRONT, bridge="br-front", subnet=IPv4Network("10.1.0.0/24"), name="front"),
    BridgeRules(owner=BACK, bridge="br-back", subnet=IPv4Network("10.2.0.0/24"), internal=True, name="back"),
    BridgeRules(owner=QUIET, bridge="br-quiet", subnet=IPv4Network("10.3.0.0/24"), icc=False, name="quiet"),
]
PORTS = [
    PortRule(
        FRONT and WEB, FRONT, "br-front", "tcp", None, 8080, 8080, IPv4Address("10.1.0.2"), 80, "web on front"
    ),
    PortRule(
        RANGE,
        FRONT,
        "br-front",
        "udp",
        IPv4Address("203.0.113.2"),
        9000,
        9010,
        IPv4Address("10.1.0.3"),
        9000,
        "dns on front",
    ),
]


def load(script: str, family: str = render_nft.FAMILY) -> list[dict]:
    if shutil.which("unshare") is None or shutil.which("nft") is None:
        pytest.skip(
            "needs unshare (util-linux) and nft (nftables) to load a ruleset into a throwaway namespace"
        )
    out = subprocess.run(
        [
            "unshare",
            "-Urn",
            "sh",
            "-c",
            f"nft -f - && nft -j list table {family} {render_nft.TABLE}",
        ],
        input=script,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0 and "Operation not permitted" in out.stderr:
        pytest.skip(f"user namespaces are not available here: {out.stderr.strip()}")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["nftables"]


@pytest.fixture(scope="module")
def ruleset():
    return parse_ruleset(load(render_nft.render_sync(NETWORKS, ports=PORTS)))


@pytest.fixture(scope="module")
def proxy_ruleset():
    return parse_ruleset(load(render_nft.render_sync(NETWORKS, ports=PORTS, userland_proxy=True)))


def pkt(src: str, dst: str, **kw) -> Packet:
    return Packet(saddr=IPv4Address(src), daddr=IPv4Address(dst), **kw)


def test_other_network_is_dropped_by_the_isolation_rule_naming_the_bridge(ruleset) -> None:
    r = evaluate_hook(
        ruleset, "forward", pkt("10.1.0.2", "10.3.0.2", iif="br-front", oif="br-quiet", dport=80)
    )
    assert r.verdict == "drop"
    assert r.decided_by is not None and r.decided_by.text == "oifname @bridges drop"
    assert r.decided_by.chain == "forward" and r.decided_by.elements == (f"cnm:{QUIET} (quiet)",)
    # the user chain was jumped to and returned; the rules before the drop did not match
    assert [s.action for s in r.steps][:1] == ["jump user"]
    assert not any(s.matched for s in r.steps[1:-1])


def test_a_reply_is_accepted_by_conntrack(ruleset) -> None:
    r = evaluate_hook(
        ruleset,
        "forward",
        pkt("10.1.0.2", "10.3.0.2", iif="br-front", oif="br-quiet", ct_state="established"),
    )
    assert r.verdict == "accept" and r.decided_by.text == "ct state established,related accept"


def test_a_container_to_the_world_leaves_by_policy_and_is_masqueraded(ruleset) -> None:
    p = pkt("10.1.0.2", "203.0.113.1", iif="br-front", oif="eth0", l4proto="icmp")
    fwd = evaluate_hook(ruleset, "forward", p)
    assert fwd.verdict == "accept" and fwd.decided_by is None and fwd.policy_chain == "forward"
    post = evaluate_hook(ruleset, "postrouting", p)
    assert post.verdict == "accept" and post.nat == "masquerade"
    assert post.decided_by.action == "masquerade"
    assert f"cnm:{FRONT} (front)" in post.decided_by.elements


def test_internal_network_may_not_leave(ruleset) -> None:
    r = evaluate_hook(
        ruleset, "forward", pkt("10.2.0.2", "203.0.113.1", iif="br-back", oif="eth0", l4proto="icmp")
    )
    assert (
        r.verdict == "drop"
        and r.decided_by.text == "iifname @internal iifname . oifname != @same-bridge drop"
    )
    assert r.decided_by.elements == (f"cnm:{BACK} (back)",)
    post = evaluate_hook(ruleset, "postrouting", pkt("10.2.0.2", "203.0.113.1", iif="br-back", oif="eth0"))
    assert post.nat == ""  # not in @subnets: never masqueraded


def test_published_port_from_the_world_is_dnated_then_forwarded(ruleset) -> None:
    p = pkt("203.0.113.1", "203.0.113.2", iif="eth0", dport=8080, local_daddr=True)
    pre = evaluate_hook(ruleset, "prerouting", p)
    assert pre.verdict == "accept" and pre.nat == "dnat"
    assert pre.decided_by.action == "dnat to 10.1.0.2:80" and pre.decided_by.chain == "ports"
    assert pre.decided_by.elements == (f"cnm:{WEB} (web on front)",)
    assert pre.packet.daddr == IPv4Address("10.1.0.2") and pre.packet.dport == 80
    assert "dnat" in pre.packet.ct_status
    fwd = evaluate_hook(ruleset, "forward", replace_oif(pre.packet, "br-front"))
    assert (
        fwd.verdict == "accept"
        and fwd.decided_by.text == "oifname @bridges oifname != @internal ct status dnat accept"
    )


def replace_oif(p: Packet, oif: str) -> Packet:
    from dataclasses import replace

    return replace(p, oif=oif)


def test_a_range_on_a_host_address_keeps_the_port(ruleset) -> None:
    p = pkt("203.0.113.1", "203.0.113.2", iif="eth0", l4proto="udp", dport=9005, local_daddr=True)
    pre = evaluate_hook(ruleset, "prerouting", p)
    assert pre.decided_by.action == "dnat to 10.1.0.3" and pre.packet.dport == 9005
    # another host address: no element, no DNAT (the map miss ends the rule)
    other = evaluate_hook(
        ruleset,
        "prerouting",
        pkt("203.0.113.1", "198.51.100.7", iif="eth0", l4proto="udp", dport=9005, local_daddr=True),
    )
    assert other.nat == "" and other.decided_by is None


def test_unpublished_port_and_icmp_are_not_nated(ruleset) -> None:
    for p in (
        pkt("203.0.113.1", "203.0.113.2", iif="eth0", dport=8081, local_daddr=True),
        pkt("203.0.113.1", "203.0.113.2", iif="eth0", l4proto="icmp", local_daddr=True),
        pkt("203.0.113.1", "10.1.0.2", iif="eth0", dport=8080),  # not a local address
    ):
        assert evaluate_hook(ruleset, "prerouting", p).nat == ""


def test_forged_loopback_is_dropped_in_raw(ruleset) -> None:
    r = evaluate_hook(
        ruleset, "prerouting", pkt("10.1.0.2", "127.0.0.1", iif="br-front", dport=22, local_daddr=True)
    )
    assert r.verdict == "drop" and r.decided_by.chain == "raw-prerouting"


def test_userland_proxy_leaves_hairpin_to_the_proxy(proxy_ruleset) -> None:
    r = evaluate_hook(
        proxy_ruleset,
        "prerouting",
        pkt("10.1.0.5", "203.0.113.2", iif="br-front", dport=8080, local_daddr=True),
    )
    assert r.nat == "" and any(
        s.action == "return" and s.elements == (f"cnm:{FRONT} (front)",) for s in r.steps
    )


def test_host_output_to_a_published_port_and_hairpin_masquerade(ruleset) -> None:
    out = evaluate_hook(ruleset, "output", pkt("203.0.113.2", "203.0.113.2", dport=8080, local_daddr=True))
    assert out.packet.daddr == IPv4Address("10.1.0.2")
    hairpin = pkt(
        "10.1.0.5", "10.1.0.2", iif="br-front", oif="br-front", dport=80, ct_status=frozenset({"dnat"})
    )
    post = evaluate_hook(ruleset, "postrouting", hairpin)
    assert post.nat == "masquerade" and post.decided_by.text.startswith("oifname . ip saddr @subnets")


def test_user_chain_rules_are_evaluated_and_unknown_ones_reported() -> None:
    script = render_nft.render_sync(NETWORKS) + (
        "add rule ip cnm user ip saddr 10.1.0.9 tcp dport { 22, 80 } counter drop\n"
        "add rule ip cnm user meta mark 0x1 accept\n"
    )
    rs = parse_ruleset(load(script))
    r = evaluate_hook(rs, "forward", pkt("10.1.0.9", "203.0.113.1", iif="br-front", oif="eth0", dport=80))
    assert r.verdict == "drop" and r.decided_by.chain == "user"
    r = evaluate_hook(rs, "forward", pkt("10.1.0.8", "203.0.113.1", iif="br-front", oif="eth0", dport=80))
    (unknown,) = [s for s in r.steps if s.note]
    assert unknown.chain == "user" and "meta mark" in unknown.note and r.verdict == "accept"


def test_hook_without_a_matching_rule_accepts_and_bad_hook_is_refused(ruleset) -> None:
    # cnm has no input chain without an encrypted overlay network
    r = evaluate_hook(ruleset, "input", pkt("10.1.0.2", "10.1.0.1"))
    assert r.verdict == "accept" and r.chains == ()
    # with one, its only input chain drops plain VXLAN for encrypted VNIs: nothing else matches
    guarded = parse_ruleset(load(render_nft.render_sync(NETWORKS, ports=PORTS, vnis={"a" * 64: 4097})))
    r = evaluate_hook(guarded, "input", pkt("10.1.0.2", "10.1.0.1"))
    assert r.verdict == "accept" and r.chains == ("vxlan-input",)
    with pytest.raises(InvalidArgument, match="unknown hook 'ingress'"):
        evaluate_hook(ruleset, "ingress", pkt("10.1.0.2", "10.1.0.1"))


def test_rule_text_reads_like_nft_list() -> None:
    exprs = [
        {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "lo"}},
        {
            "match": {
                "op": "==",
                "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                "right": {"prefix": {"addr": "127.0.0.0", "len": 8}},
            }
        },
        {"drop": None},
    ]
    assert rule_text(exprs) == "iifname != lo ip daddr 127.0.0.0/8 drop"


def test_internal_network_may_not_reach_another_networks_published_port(ruleset) -> None:
    p = pkt("10.2.0.2", "203.0.113.2", iif="br-back", dport=8080, local_daddr=True)
    pre = evaluate_hook(ruleset, "prerouting", p)
    assert pre.nat == "dnat"
    fwd = evaluate_hook(ruleset, "forward", replace_oif(pre.packet, "br-front"))
    assert fwd.verdict == "drop"
    assert fwd.decided_by.text == "iifname @internal iifname . oifname != @same-bridge drop"


# -- IPv6: the ip6 table -----------------------------------------------------------------

NETWORKS6 = [
    BridgeRules(
        owner=FRONT, bridge="br-front", subnet=IPv4Network("10.1.0.0/24"), subnet6=IPv6Network("fd00:1::/64"),
        gateway6=IPv6Address("fd00:1::1"), name="front",
    ),
    BridgeRules(
        owner=QUIET, bridge="br-quiet", subnet=IPv4Network("10.3.0.0/24"), subnet6=IPv6Network("2001:db8:3::/64"),
        gateway6=IPv6Address("2001:db8:3::1"), routed6=True, name="quiet",
    ),
]  # fmt: skip
PORTS6 = [
    PortRule(WEB, FRONT, "br-front", "tcp", None, 8080, 8080, IPv6Address("fd00:1::2"), 80, "web on front"),
    PortRule(
        RANGE, QUIET, "br-quiet", "tcp", None, 8443, 8443, IPv6Address("2001:db8:3::2"), 443, "rt on quiet"
    ),
]


@pytest.fixture(scope="module")
def ruleset6():
    return parse_ruleset(load(render_nft.render_sync(NETWORKS6, ports=PORTS6), render_nft.FAMILY6))


def pkt6(src: str, dst: str, **kw) -> Packet:
    return Packet(saddr=IPv6Address(src), daddr=IPv6Address(dst), **kw)


def test_a_v6_published_port_is_dnated_to_the_containers_v6_address(ruleset6) -> None:
    p = pkt6("2001:db8:203::1", "2001:db8:203::2", iif="eth0", dport=8080, local_daddr=True)
    pre = evaluate_hook(ruleset6, "prerouting", p)
    assert pre.nat == "dnat" and pre.decided_by.action == "dnat to [fd00:1::2]:80"
    assert pre.decided_by.elements == (f"cnm:{WEB} (web on front)",)
    assert pre.packet.daddr == IPv6Address("fd00:1::2") and pre.packet.dport == 80
    fwd = evaluate_hook(ruleset6, "forward", replace_oif(pre.packet, "br-front"))
    assert fwd.verdict == "accept" and "ct status dnat" in fwd.decided_by.text
    # a link-local source is not DNATed (as Docker's ip6tables)
    ll = evaluate_hook(ruleset6, "prerouting", pkt6("fe80::1", "2001:db8:203::2", iif="eth0", dport=8080))
    assert ll.nat == ""


def test_v6_to_the_world_is_masqueraded_unless_routed(ruleset6) -> None:
    out = pkt6("fd00:1::2", "2001:db8:203::1", iif="br-front", oif="eth0", l4proto="ipv6-icmp")
    assert evaluate_hook(ruleset6, "forward", out).verdict == "accept"
    assert evaluate_hook(ruleset6, "postrouting", out).nat == "masquerade"
    routed = pkt6("2001:db8:3::2", "2001:db8:203::1", iif="br-quiet", oif="eth0", l4proto="ipv6-icmp")
    assert evaluate_hook(ruleset6, "postrouting", routed).nat == ""


def test_the_world_reaches_a_routed_network_by_icmpv6_and_published_ports_only(ruleset6) -> None:
    def fwd(**kw):
        return evaluate_hook(
            ruleset6, "forward", pkt6("2001:db8:203::1", "2001:db8:3::2", iif="eth0", oif="br-quiet", **kw)
        )

    assert fwd(l4proto="ipv6-icmp").verdict == "accept"
    assert fwd(dport=443).verdict == "accept"  # published (8443 -> 443) at the container's own address
    assert fwd(dport=22).verdict == "drop"
    # a masqueraded network is closed to the world
    closed = pkt6("2001:db8:203::1", "fd00:1::2", iif="eth0", oif="br-front", l4proto="ipv6-icmp")
    assert evaluate_hook(ruleset6, "forward", closed).verdict == "drop"


def test_an_ip_rule_does_not_match_a_v6_packet() -> None:
    rs = parse_ruleset(
        [
            {"chain": {"name": "c", "hook": "forward", "prio": 0, "policy": "accept"}},
            {"rule": {"chain": "c", "handle": 1, "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "10.0.0.1"}},
                {"drop": None},
            ]}},
            {"rule": {"chain": "c", "handle": 2, "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}},
                           "right": {"prefix": {"addr": "2001:db8::", "len": 32}}}},
                {"drop": None},
            ]}},
        ]
    )  # fmt: skip
    r = evaluate_hook(rs, "forward", pkt6("2001:db8::5", "2001:db8::6"))
    assert r.verdict == "drop" and r.decided_by.handle == 2
    assert evaluate_hook(rs, "forward", pkt6("fd00::5", "2001:db8::6")).verdict == "accept"
