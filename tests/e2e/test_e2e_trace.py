"""``cnm trace`` against the kernel of a test host, without and with ``--live``: the six
cases of issue 11 (same network, another network, --internal to the world, a published
port from the world, icc=false, a --link), and bad input that changes nothing.

The topology: ``front`` with ``web`` (httpd, 8080 -> 80) and ``app`` (``--link web:www``);
``back`` with ``db``; ``vault`` (--internal) with ``secret``; ``quiet`` (icc=false) with
``q1`` and ``q2``.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_util import bridge_of, ip_on, run_sleeper
from harness import ROOT_SKIP_REASON, TestHost, is_root

HOST_IP = "203.0.113.2"  # the test host's address towards the world namespace
WORLD_IP = "203.0.113.1"


@pytest.fixture(scope="module")
def tracehost(busybox_tar: Path) -> Iterator[TestHost]:
    if not is_root():
        pytest.skip(ROOT_SKIP_REASON)
    host = TestHost()
    try:
        host.start()
        host.start_daemon()
        host.import_image(busybox_tar, "busybox")
        host.cnm("network", "create", "front")
        host.cnm("network", "create", "back")
        host.cnm("network", "create", "--internal", "vault")
        host.cnm("network", "create", "-o", "com.docker.network.bridge.enable_icc=false", "quiet")
        script = "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 80 -h /www"
        host.cnm(
            "run", "-d", "--name", "web", "--network", "front", "-p", "8080:80", "busybox", "sh", "-c", script
        )
        run_sleeper(host, "app", "--network", "front", "--link", "web:www")
        run_sleeper(host, "db", "--network", "back")
        run_sleeper(host, "secret", "--network", "vault")
        run_sleeper(host, "q1", "--network", "quiet")
        run_sleeper(host, "q2", "--network", "quiet")
        yield host
    finally:
        host.close()


def trace(host: TestHost, *args: str) -> dict[str, Any]:
    return json.loads(host.cnm("trace", "--format", "json", *args).stdout)


def hop(t: dict[str, Any], what: str) -> dict[str, Any]:
    found = [h for h in t["hops"] if h["what"] == what]
    assert found, f"no {what} hop in {t['hops']}"
    return found[0]


def test_same_network_is_accepted(tracehost: TestHost) -> None:
    t = trace(tracehost, "app", "web:80")
    print(json.dumps(t, indent=1))
    assert t["verdict"] == "delivered"
    assert t["saddr"] == ip_on(tracehost, "app", "front") and t["daddr"] == ip_on(tracehost, "web", "front")
    route = hop(t, "route")
    assert route["command"].startswith("nsenter --net=") and route["command"].endswith(
        f"ip route get {t['daddr']}"
    )
    assert (
        "switches the frame" in hop(t, "bridge")["text"]
        and bridge_of(tracehost, "front") in hop(t, "bridge")["text"]
    )
    assert "share network 'front'" in t["reason"]
    if br_netfilter(tracehost):  # switched frames meet the IP hooks too: icc lets them through
        assert hop(t, "forward")["text"].startswith("forward: accepted by icc on network 'front'")
    else:
        assert not any(h["what"] == "forward" for h in t["hops"])


def br_netfilter(host: TestHost) -> bool:
    r = host.run(["cat", "/proc/sys/net/bridge/bridge-nf-call-iptables"], check=False)
    return r.returncode == 0 and r.stdout.strip() == "1"


def test_other_network_is_dropped_by_isolation(tracehost: TestHost) -> None:
    t = trace(tracehost, "app", "db/icmp")
    print(json.dumps(t, indent=1))
    assert t["verdict"] == "dropped"
    fwd = hop(t, "forward")
    front, back = bridge_of(tracehost, "front"), bridge_of(tracehost, "back")
    assert (
        f"dropped by isolation: network 'front' (bridge {front}) may not forward to network 'back' (bridge {back})"
        in t["reason"]
    )
    assert "rule: oifname @bridges drop" in t["reason"]
    assert any(r.endswith("-> drop [back]") for r in fwd["rules"])


def test_internal_network_has_no_route_to_the_world(tracehost: TestHost) -> None:
    t = trace(tracehost, "secret", "world")
    print(json.dumps(t, indent=1))
    assert t["verdict"] == "no route" and t["reason"].startswith("--internal: no route")
    assert "'vault'" in t["reason"]


def test_published_port_from_the_world_is_dnated_to_the_container(tracehost: TestHost) -> None:
    t = trace(tracehost, "world", f"{HOST_IP}:8080")
    print(json.dumps(t, indent=1))
    assert t["destination"] == f"host ({HOST_IP}):8080/tcp"
    web = ip_on(tracehost, "web", "front")
    assert t["verdict"] == "delivered"
    pre = hop(t, "prerouting")
    assert f"DNAT to web ({web}:80) by the published port 8080/tcp (web on front)" in pre["text"]
    assert "a published port may enter" in hop(t, "forward")["text"]
    assert t["hops"][-1]["text"].startswith("into web's eth0")


def test_icc_false_is_dropped(tracehost: TestHost) -> None:
    t = trace(tracehost, "q1", "q2")
    print(json.dumps(t, indent=1))
    assert t["verdict"] == "dropped" and "dropped by icc=false" in t["reason"]
    assert bridge_of(tracehost, "quiet") in t["reason"]


def test_a_link_is_accepted_and_named(tracehost: TestHost) -> None:
    t = trace(tracehost, "app", "www:80")
    print(json.dumps(t, indent=1))
    assert t["verdict"] == "delivered" and t["daddr"] == ip_on(tracehost, "web", "front")
    assert "--link web:www" in t["reason"]


def test_to_the_world_is_masqueraded(tracehost: TestHost) -> None:
    t = trace(tracehost, "db", "world")
    print(json.dumps(t, indent=1))
    assert t["verdict"] == "delivered"
    assert "masquerade: network 'back' leaves by" in hop(t, "postrouting")["text"]


def test_text_output_shows_each_hop_with_its_command(tracehost: TestHost) -> None:
    out = tracehost.cnm("trace", "-v", "app", "db/icmp").stdout
    print(out)
    assert out.startswith("trace app (") and "$ nsenter --net=" in out and "=> dropped: " in out
    assert "forward #" in out  # -v: the rules each hook met
    out = tracehost.cnm("trace", "--live", "app", "db").stdout
    print(out)
    assert "\nlive: icmp probe " in out and "\n=> dropped in ip cnm chain forward by the rule" in out


# -- --live: one real probe, nft monitor trace ---------------------------------------------


def no_trace_table(host: TestHost) -> bool:
    tables = host.run(["nft", "list", "tables"]).stdout
    return "cnm-trace" not in tables


def test_live_same_network_and_link_are_answered(tracehost: TestHost) -> None:
    for dst in ("web:80", "www:80"):
        t = trace(tracehost, "--live", "app", dst)
        print(json.dumps({k: t[k] for k in ("probe", "live", "live_verdict")}, indent=1))
        assert t["probe"].endswith("connected (SYN-ACK)")
        assert any(
            line.startswith("[bridge prerouting] packet:") and "(app's veth)" in line for line in t["live"]
        )
        assert t["live_verdict"] == "passed every hook the trace saw"
    assert no_trace_table(tracehost)


def test_live_other_network_names_the_isolation_rule(tracehost: TestHost) -> None:
    t = trace(tracehost, "--live", "app", "db")
    print(json.dumps({k: t[k] for k in ("probe", "live", "live_verdict")}, indent=1))
    assert "no echo reply" in t["probe"]
    assert t["live_verdict"].startswith("dropped in ip cnm chain forward by the rule oifname @bridges drop")
    assert no_trace_table(tracehost)


def test_live_internal_to_the_world_sends_nothing(tracehost: TestHost) -> None:
    t = trace(tracehost, "--live", "secret", "world")
    assert t["live_verdict"] == "no route" and t["probe"].startswith("not sent: ")


def test_live_published_port_is_dnated(tracehost: TestHost) -> None:
    t = trace(tracehost, "--live", "db", f"{HOST_IP}:8080")
    print(json.dumps({k: t[k] for k in ("reason", "probe", "live", "live_verdict")}, indent=1))
    web = ip_on(tracehost, "web", "front")
    assert t["probe"].endswith("connected (SYN-ACK)")
    assert any("ip cnm ports:" in line and "@ports-any" in line for line in t["live"])
    assert any(f"ip daddr {web} (web)" in line for line in t["live"])  # after DNAT, named
    assert no_trace_table(tracehost)


def test_live_icc_false_is_not_answered(tracehost: TestHost) -> None:
    t = trace(tracehost, "--live", "q1", "q2")
    print(json.dumps({k: t[k] for k in ("probe", "live", "live_verdict")}, indent=1))
    assert "no echo reply" in t["probe"]
    assert "got no answer" in t["live_verdict"] and "dropped by icc=false" in t["live_verdict"]
    assert no_trace_table(tracehost)


def test_bad_input_is_refused_and_changes_nothing(tracehost: TestHost) -> None:
    before = tracehost.run(["nft", "list", "ruleset"]).stdout
    cases = [
        (("nosuch", "web"), "No such container: nosuch"),
        (("app", "web:99999"), "invalid port '99999'"),
        (("app", "web:80/gre"), "invalid protocol 'gre'"),
        (("app:80", "web"), "a port or protocol goes on the destination"),
        (("--live", "world", f"{HOST_IP}:8080"), "--live sends its probe from a container or the host"),
    ]
    for args, message in cases:
        r = tracehost.cnm("trace", *args, check=False)
        assert r.returncode != 0 and message in r.stderr, (args, r.stderr)
    assert tracehost.run(["nft", "list", "ruleset"]).stdout == before


def test_host_ends_and_the_world_to_a_container_address(tracehost: TestHost) -> None:
    web = ip_on(tracehost, "web", "front")
    t = trace(tracehost, "app", "host")
    assert t["verdict"] == "delivered" and t["reason"].startswith("delivered to the host")
    assert t["saddr"] == ip_on(tracehost, "app", "front")
    t = trace(tracehost, "host", f"{web}:80")
    assert t["verdict"] == "delivered" and t["hops"][-1]["text"] == f"into web's eth0 ({web})"
    assert any(h["what"] == "output" for h in t["hops"])
    # from outside straight to a container's address: isolation, not a published port
    t = trace(tracehost, "world", f"{web}:80")
    print(json.dumps(t, indent=1))
    assert t["verdict"] == "dropped"
    (default,) = tracehost.ip_json("route", "show", "default")
    assert f"dropped by isolation: nothing from {default['dev']} enters network 'front'" in t["reason"]
    t = trace(tracehost, "secret", "world")
    assert t["saddr"] == ip_on(tracehost, "secret", "vault")


def test_live_from_the_host_to_a_published_port(tracehost: TestHost) -> None:
    t = trace(tracehost, "--live", "host", f"{HOST_IP}:8080")
    print(json.dumps({k: t[k] for k in ("reason", "probe", "live", "live_verdict")}, indent=1))
    web = ip_on(tracehost, "web", "front")
    assert "output: DNAT to web" in hop(t, "output")["text"]
    assert t["probe"].endswith("connected (SYN-ACK)")
    assert any(line.startswith("ip cnm ports:") for line in t["live"])
    assert any(f"ip daddr {web} (web)" in line for line in t["live"])


@pytest.mark.daemon_flags("--firewall-backend", "iptables")
def test_iptables_nft_backend_traces_live_and_says_what_it_cannot_evaluate(fresh_cnmhost: TestHost) -> None:
    host = fresh_cnmhost
    if "nf_tables" not in host.run(["iptables", "-V"]).stdout:
        pytest.skip("iptables here is not iptables-nft")
    host.cnm("network", "create", "one")
    host.cnm("network", "create", "two")
    run_sleeper(host, "ta", "--network", "one")
    run_sleeper(host, "tb", "--network", "two")
    t = trace(host, "--live", "ta", "tb")
    print(json.dumps(t, indent=1))
    assert any("nftables only" in p for p in t["problems"])
    assert "no echo reply" in t["probe"]
    assert t["verdict"] == "routed" and "rules were not evaluated" in t["reason"]
    assert t["live_verdict"].startswith("dropped in ip filter chain CNM-N-")
    assert (
        "(network 'two') by the rule drop; the walk above did not evaluate these rules" in t["live_verdict"]
    )
    assert "cnm-trace" not in host.run(["nft", "list", "tables"]).stdout


def test_cnmd_removes_the_tables_of_a_live_trace_cut_short(fresh_cnmhost: TestHost) -> None:
    host = fresh_cnmhost
    # what a --live trace leaves when cnmd dies mid-probe
    host.sh("nft add table ip cnm-trace && nft add table bridge cnm-trace")
    host.kill_daemon(signal.SIGKILL)
    assert host.run(["nft", "list", "tables"]).stdout.count("cnm-trace") == 2
    host.start_daemon()
    assert no_trace_table(host), host.run(["nft", "list", "tables"]).stdout
    assert "table ip cnm\n" in host.run(["nft", "list", "tables"]).stdout + "\n"  # its own stays
    assert "removed what a cnm trace --live cut short left: table ip cnm-trace, table bridge cnm-trace" in (
        host.daemon_log.read_text()
    )


# -- IPv6: the ip6 cnm table ------------------------------------------------------------------

HOST_IP6 = "2001:db8:203::2"
WORLD_IP6 = "2001:db8:203::1"


@pytest.fixture(scope="module")
def trace6host(busybox_tar: Path) -> Iterator[TestHost]:
    """Two v6 networks: ``f6`` with ``web6`` (httpd, 8081 -> 80) and ``app6``, ``b6`` with
    ``db6``; the world reaches the host at 2001:db8:203::2."""
    if not is_root():
        pytest.skip(ROOT_SKIP_REASON)
    host = TestHost()
    try:
        host.start()
        if HOST_IP6 not in host.run(["ip", "-6", "addr", "show", "dev", "wan0"]).stdout:
            host.run(["ip", "-6", "addr", "add", f"{HOST_IP6}/64", "dev", "wan0", "nodad"])
            host.world(["ip", "-6", "addr", "add", f"{WORLD_IP6}/64", "dev", "eth0", "nodad"])
            host.run(["ip", "-6", "route", "replace", "default", "via", WORLD_IP6, "dev", "wan0"])
        host.start_daemon()
        host.import_image(busybox_tar, "busybox")
        host.cnm("network", "create", "--ipv6", "--subnet", "2001:db8:61::/64", "f6")
        host.cnm("network", "create", "--ipv6", "--subnet", "2001:db8:62::/64", "b6")
        script = "mkdir -p /www && echo hello6 > /www/index.html && exec httpd -f -p 80 -h /www"
        host.cnm(
            "run", "-d", "--name", "web6", "--network", "f6", "-p", "8081:80", "busybox", "sh", "-c", script
        )
        run_sleeper(host, "app6", "--network", "f6")
        run_sleeper(host, "db6", "--network", "b6")
        yield host
    finally:
        host.close()


def ip6_on(host: TestHost, name: str, network: str) -> str:
    return json.loads(host.cnm("inspect", name).stdout)[0]["NetworkSettings"]["Networks"][network][
        "GlobalIPv6Address"
    ]


def test_v6_same_network_is_switched(trace6host: TestHost) -> None:
    t = trace(trace6host, "-6", "app6", "web6:80")
    print(json.dumps(t, indent=1))
    assert t["verdict"] == "delivered"
    assert t["saddr"] == ip6_on(trace6host, "app6", "f6") and t["daddr"] == ip6_on(trace6host, "web6", "f6")
    assert hop(t, "route")["command"].endswith(f"ip route get {t['daddr']}")
    assert "switches the frame" in hop(t, "bridge")["text"] and "share network 'f6'" in t["reason"]


def test_v6_other_network_is_dropped_by_the_ip6_tables_isolation(trace6host: TestHost) -> None:
    t = trace(trace6host, "-6", "app6", "db6")
    print(json.dumps(t, indent=1))
    assert t["verdict"] == "dropped" and t["daddr"] == ip6_on(trace6host, "db6", "b6")
    fwd = hop(t, "forward")
    assert fwd["command"] == "nft list table ip6 cnm"
    assert "dropped by isolation: network 'f6'" in t["reason"] and "network 'b6'" in t["reason"]


def test_v6_to_the_world_is_masqueraded(trace6host: TestHost) -> None:
    t = trace(trace6host, "-6", "app6", "world")
    print(json.dumps(t, indent=1))
    assert t["verdict"] == "delivered" and t["daddr"] == WORLD_IP6
    assert "masquerade: network 'f6'" in hop(t, "postrouting")["text"]
    assert "(masqueraded)" in t["reason"]


def test_v6_published_port_from_the_world_is_dnated_to_the_v6_address(trace6host: TestHost) -> None:
    t = trace(trace6host, "world", f"[{HOST_IP6}]:8081")
    print(json.dumps(t, indent=1))
    web6 = ip6_on(trace6host, "web6", "f6")
    assert t["verdict"] == "delivered" and t["saddr"] == WORLD_IP6
    assert (
        f"DNAT to web6 ([{web6}]:80) by the published port 8081/tcp (web6 on f6)"
        in hop(t, "prerouting")["text"]
    )
    assert t["hops"][-1]["text"] == f"into web6's eth0 ({web6})"


def test_v6_live_probes_are_traced_in_the_ip6_table(trace6host: TestHost) -> None:
    web6 = ip6_on(trace6host, "web6", "f6")
    t = trace(trace6host, "--live", "db6", f"[{HOST_IP6}]:8081")
    print(json.dumps({k: t[k] for k in ("reason", "probe", "live", "live_verdict")}, indent=1))
    assert t["probe"].endswith("connected (SYN-ACK)")
    assert any("ip6 cnm ports:" in line and "@ports-any" in line for line in t["live"])
    assert any(f"ip6 daddr {web6} (web6)" in line for line in t["live"])
    t = trace(trace6host, "--live", "-6", "app6", "db6")
    print(json.dumps({k: t[k] for k in ("probe", "live", "live_verdict")}, indent=1))
    assert "no echo reply" in t["probe"]
    assert t["live_verdict"].startswith("dropped in ip6 cnm chain forward by the rule oifname @bridges drop")
    assert no_trace_table(trace6host)


def test_v6_ends_of_different_versions_are_refused(trace6host: TestHost) -> None:
    r = trace6host.cnm("trace", "app6", f"{HOST_IP}:8081", "-6", check=False)
    assert r.returncode != 0 and "different IP versions" in r.stderr


def test_v6_host_ends_and_the_world_to_a_v6_container_address(trace6host: TestHost) -> None:
    t = trace(trace6host, "-6", "app6", "host")
    print(json.dumps(t, indent=1))
    assert t["verdict"] == "delivered" and t["daddr"] == "2001:db8:61::1"  # the gateway6 it sees
    assert t["reason"].startswith("delivered to the host")
    web6 = ip6_on(trace6host, "web6", "f6")
    t = trace(trace6host, "host", f"[{web6}]:80")
    assert t["verdict"] == "delivered" and t["hops"][-1]["text"] == f"into web6's eth0 ({web6})"
    # from outside straight to a masqueraded network's v6 address: isolation
    t = trace(trace6host, "world", f"[{web6}]:80")
    print(json.dumps(t, indent=1))
    assert (
        t["verdict"] == "dropped"
        and "dropped by isolation: nothing from wan0 enters network 'f6'" in t["reason"]
    )
