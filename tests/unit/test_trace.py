"""``cnm trace`` without a kernel: SRC/DST parsing and its refusals, the --live marking
script, the parsing of ``nft monitor trace`` lines, the CLI's text, the --live backend
check, and the route over the fake controller."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from ipaddress import IPv4Address

import pytest

from cnm.api.routes_cnm import plain
from cnm.cli.commands.trace import render_trace
from cnm.engine import trace as engine_trace
from cnm.engine.trace import Trace, Tracer
from cnm.engine.trace_path import Hop, Target, parse_target
from cnm.errors import InvalidArgument
from cnm.kernel import tracing
from cnm.kernel.tracing import ProbeSpec, packet_summary, parse_trace_lines, trace_table_script

try:
    from test_api_server import server  # noqa: F401 -- the fixture
except ImportError:  # tests/ made a package
    from .test_api_server import server  # type: ignore[no-redef]  # noqa: F401


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("web", Target("web", None, "icmp")),
        ("web:80", Target("web", 80, "tcp")),
        ("web:53/udp", Target("web", 53, "udp")),
        ("10.0.0.2/icmp", Target("10.0.0.2", None, "icmp")),
        ("host:8080/tcp", Target("host", 8080, "tcp")),
        ("2001:db8::2", Target("2001:db8::2", None, "icmp")),
        ("[2001:db8::2]:8080", Target("2001:db8::2", 8080, "tcp")),
        ("[::1]:53/udp", Target("::1", 53, "udp")),
    ],
)
def test_destinations_parse(text: str, expected: Target) -> None:
    assert parse_target(text, destination=True) == expected


@pytest.mark.parametrize(
    ("text", "destination", "message"),
    [
        ("web:0", True, "invalid port '0' in 'web:0': expected 1-65535"),
        ("web:http", True, "invalid port 'http'"),
        ("web:70000", True, "expected 1-65535"),
        ("web:80/sctp", True, "invalid protocol 'sctp' in 'web:80/sctp': expected one of tcp, udp, icmp"),
        ("web/tcp", True, "tcp needs a port"),
        ("web:80/icmp", True, "icmp has no ports"),
        (":80", True, "no container, host, world or address"),
        ("", True, "invalid trace destination ''"),
        ("web:80", False, "a port or protocol goes on the destination"),
        ("web/udp", False, "a port or protocol goes on the destination"),
        ("[2001:db8::2", True, "IPV6]:PORT"),
        ("[2001:db8::2]80", True, "IPV6]:PORT"),
        ("2001:db8::2/tcp", True, "tcp needs a port"),
    ],
)
def test_bad_targets_are_refused_naming_what_is_wrong(text: str, destination: bool, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_target(text, destination=destination)


def test_marking_script_marks_only_the_probe_in_both_families() -> None:
    spec = ProbeSpec(IPv4Address("10.0.0.2"), IPv4Address("10.0.1.2"), "tcp", 80, 40000)
    script = trace_table_script(spec)
    rules = [line for line in script.splitlines() if line.startswith("add rule")]
    assert len(rules) == 4 and {r.split()[2] for r in rules} == {"ip", "bridge"}
    for rule in rules:
        assert "ip saddr 10.0.0.2 ip daddr 10.0.1.2 meta l4proto tcp th sport 40000 th dport 80" in rule
        assert "tcp flags & (syn | ack) == syn" in rule and rule.endswith("meta nftrace set 1")
    assert "priority -350" in script  # ahead of raw (-300), conntrack and cnm's chains
    icmp = trace_table_script(ProbeSpec(IPv4Address("10.0.0.2"), IPv4Address("10.0.1.2"), "icmp"))
    assert "icmp type echo-request meta nftrace set 1" in icmp and "dport" not in icmp
    assert tracing.trace_teardown_script().count("delete table") == 3  # ip, ip6, bridge
    with pytest.raises(InvalidArgument, match="invalid protocol 'sctp'"):
        trace_table_script(ProbeSpec(IPv4Address("10.0.0.2"), IPv4Address("10.0.1.2"), "sctp", 1))


MONITOR = """\
trace id 1c2d3e4f bridge cnm-trace prerouting packet: iif "veth1" ether saddr 02:42:ac:12:00:03 ip saddr 172.18.0.3 ip daddr 172.19.0.2 ip dscp cs0 ip ttl 64 ip id 5 ip protocol icmp icmp type echo-request icmp code net-unreachable
trace id 1c2d3e4f bridge cnm-trace prerouting rule ip saddr 172.18.0.3 ip daddr 172.19.0.2 meta l4proto icmp meta nftrace set 1 (verdict continue)
trace id 1c2d3e4f ip cnm forward rule jump user (verdict jump user)
trace id 1c2d3e4f ip cnm forward rule oifname @bridges drop (verdict drop)
trace id 1c2d3e4f ip cnm postrouting policy accept
something else entirely
"""


def test_monitor_lines_parse_into_events() -> None:
    events = parse_trace_lines(MONITOR.splitlines())
    assert [(e.family, e.table, e.chain, e.kind, e.verdict) for e in events] == [
        ("bridge", "cnm-trace", "prerouting", "packet", ""),
        ("bridge", "cnm-trace", "prerouting", "rule", "continue"),
        ("ip", "cnm", "forward", "rule", "jump user"),
        ("ip", "cnm", "forward", "rule", "drop"),
        ("ip", "cnm", "postrouting", "policy", "accept"),
    ]
    assert events[3].text == "oifname @bridges drop"
    (legacy,) = parse_trace_lines(
        ["trace id 9 ip filter CNM-N-a3ef40990385-IN rule  counter packets 0 bytes 0 drop (verdict drop)"]
    )
    assert legacy.text == "drop" and legacy.verdict == "drop"  # iptables-nft's counters are noise
    assert packet_summary(events[0].text) == (
        'iif "veth1" ip saddr 172.18.0.3 ip daddr 172.19.0.2 ip protocol icmp icmp type echo-request'
    )


def test_text_lists_hops_commands_rules_and_the_live_part() -> None:
    t = Trace(
        source="app (10.0.0.3)",
        destination="db (10.0.1.2)/icmp",
        protocol="icmp",
        port=None,
        saddr="10.0.0.3",
        daddr="10.0.1.2",
        verdict="dropped",
        reason="forward: dropped by isolation",
        hops=(
            Hop("route", "in app's namespace: 10.0.1.2 via 10.0.0.1 dev eth0", "ip route get 10.0.1.2"),
            Hop(
                "forward",
                "forward: dropped by isolation",
                "nft list table ip cnm",
                ("forward #4: x -> drop",),
            ),
        ),
        live=("ip cnm forward: oifname @bridges drop -> drop",),
        probe="icmp probe 10.0.0.3 -> 10.0.1.2: no echo reply in 1.5 s",
        live_verdict="dropped in ip cnm chain forward by the rule oifname @bridges drop",
        problems=("something unreadable",),
    )
    data = json.loads(json.dumps(plain(t)))
    text = render_trace(data)
    assert text.splitlines()[:3] == [
        "trace app (10.0.0.3) -> db (10.0.1.2)/icmp  (10.0.0.3 -> 10.0.1.2)",
        " 1. in app's namespace: 10.0.1.2 via 10.0.0.1 dev eth0",
        "      $ ip route get 10.0.1.2",
    ]
    assert "forward #4" not in text and "forward #4: x -> drop" in render_trace(data, verbose=True)
    assert "=> dropped: forward: dropped by isolation" in text
    assert "live: icmp probe" in text and "=> dropped in ip cnm chain forward" in text
    assert text.endswith("note: something unreadable\n")


@pytest.mark.parametrize(
    ("version", "refused"),
    [("iptables v1.8.9 (legacy)\n", True), ("iptables v1.8.9 (nf_tables)\n", False)],
)
def test_live_needs_nftables_or_iptables_nft(monkeypatch, version: str, refused: bool) -> None:
    async def run(argv, netns=None):
        assert argv == ["iptables", "-V"]
        return version

    monkeypatch.setattr(engine_trace.facts, "run", run)
    tracer = Tracer.__new__(Tracer)
    tracer._backend = "iptables"
    if refused:
        with pytest.raises(InvalidArgument, match="--live needs the nftables backend or iptables-nft"):
            asyncio.run(tracer._check_live())
    else:
        asyncio.run(tracer._check_live())


async def test_trace_route_refusals(server):  # noqa: F811
    _, client, _ = server
    reply = await client.request("POST", "/cnm/v1/trace?source=nosuch&destination=host")
    assert reply.status == 404 and "nosuch" in reply.json()["message"]
    reply = await client.request("POST", "/cnm/v1/trace?source=host&destination=world:0")
    assert reply.status == 400 and "invalid port '0'" in reply.json()["message"]
    reply = await client.request("POST", "/cnm/v1/trace?source=host")
    assert reply.status == 400 and "both source and destination" in reply.json()["message"]
    reply = await client.request("POST", "/cnm/v1/trace?source=host&destination=world&live=maybe")
    assert reply.status == 400 and "invalid live 'maybe'" in reply.json()["message"]
    reply = await client.request("GET", "/cnm/v1/trace?source=host&destination=world")
    assert reply.status in (404, 405)
    reply = await client.request("POST", "/cnm/v1/trace?source=host&destination=world")
    assert reply.status == 200 and reply.json()["verdict"] == "delivered"


CUT_SHORT = """\
import asyncio, json, subprocess, sys
from ipaddress import IPv4Address
from cnm.kernel import tracing
spec = tracing.ProbeSpec(IPv4Address("10.0.0.2"), IPv4Address("10.0.1.2"), "icmp")
# what a --live trace installs, left behind as by a crash; and tables that are not its own
script = tracing.trace_table_script(spec) + "add table ip cnm\\nadd table inet cnm-trace\\n"
subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True)
first = asyncio.run(tracing.remove_leftover_trace_tables())
again = asyncio.run(tracing.remove_leftover_trace_tables())
left = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
print(json.dumps({"first": first, "again": again, "left": left.splitlines()}))
"""


def test_start_removes_the_tables_of_a_live_trace_cut_short() -> None:
    """Real nft in a throwaway user+network namespace (``unshare -Urn``): the ip and bridge
    ``cnm-trace`` tables go, other tables stay, and a second pass finds nothing to do."""
    if shutil.which("unshare") is None or shutil.which("nft") is None:
        pytest.skip("needs unshare (util-linux) and nft (nftables) for a throwaway namespace")
    out = subprocess.run(
        ["unshare", "-Urn", sys.executable, "-c", CUT_SHORT], capture_output=True, text=True, check=False
    )
    if out.returncode != 0 and "Operation not permitted" in out.stderr:
        pytest.skip(f"user namespaces are not available here: {out.stderr.strip()}")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["first"] == ["ip cnm-trace", "bridge cnm-trace"]
    assert result["again"] == []
    assert sorted(result["left"]) == ["table inet cnm-trace", "table ip cnm"]


def test_marking_script_of_a_v6_probe_uses_the_ip6_and_bridge_tables() -> None:
    from ipaddress import IPv6Address

    spec = ProbeSpec(IPv6Address("fd00::2"), IPv6Address("2001:db8::1"), "tcp", 80, 40000)
    rules = [line for line in trace_table_script(spec).splitlines() if line.startswith("add rule")]
    assert {r.split()[2] for r in rules} == {"ip6", "bridge"}
    assert all("ip6 saddr fd00::2 ip6 daddr 2001:db8::1 meta l4proto tcp th sport 40000" in r for r in rules)
    icmp = trace_table_script(ProbeSpec(IPv6Address("fd00::2"), IPv6Address("2001:db8::1"), "icmp"))
    assert "meta l4proto ipv6-icmp icmpv6 type echo-request meta nftrace set 1" in icmp
    assert packet_summary("ip6 saddr fd00::2 ip6 daddr 2001:db8::1 ip6 nexthdr tcp tcp dport 80") == (
        "ip6 saddr fd00::2 ip6 daddr 2001:db8::1 ip6 nexthdr tcp tcp dport 80"
    )


async def test_the_ends_of_a_trace_must_be_of_one_ip_version() -> None:
    tracer = Tracer.__new__(Tracer)
    with pytest.raises(InvalidArgument, match="different IP versions"):
        await tracer.trace("10.0.0.2", "2001:db8::2")
    with pytest.raises(InvalidArgument, match="different IP versions"):
        await tracer.trace("web", "10.0.0.2", family=6)
    with pytest.raises(InvalidArgument, match="invalid IP version 5"):
        await tracer.trace("web", "host", family=5)
