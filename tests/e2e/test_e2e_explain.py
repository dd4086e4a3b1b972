"""``cnm explain`` and ``cnm network map`` on a known topology, checked fact by fact against
the kernel of the test host; readable kernel objects (veth aliases, a debug log that
replays); ``cnmd --netns-names`` on and off.

The topology: networks ``front`` and ``back``; ``web`` on front publishing 8080 -> 80
(httpd); ``db`` on back; ``app`` on back with ``--link db:database``, then connected to
front as well.
"""

from __future__ import annotations

import json
import re
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_util import inspect, run_sleeper, sandbox_key
from harness import ROOT_SKIP_REASON, TestHost, is_root, wait_for

HOST_IP = "203.0.113.2"
CONTAINERS = ("web", "db", "app")


@pytest.fixture(scope="module")
def seehost(busybox_tar: Path) -> Iterator[TestHost]:
    if not is_root():
        pytest.skip(ROOT_SKIP_REASON)
    host = TestHost()
    try:
        host.start()
        host.start_daemon("--netns-names")
        host.import_image(busybox_tar, "busybox")
        host.cnm("network", "create", "front")
        host.cnm("network", "create", "back")
        script = "mkdir -p /www && echo hello-web > /www/index.html && exec httpd -f -p 80 -h /www"
        host.cnm(
            "run", "-d", "--name", "web", "--network", "front", "-p", "8080:80", "busybox", "sh", "-c", script
        )
        run_sleeper(host, "db", "--network", "back")
        run_sleeper(host, "app", "--network", "back", "--link", "db:database")
        host.cnm("network", "connect", "front", "app")
        yield host
    finally:
        host.close()


def inspect_network_id(host: TestHost, name: str) -> str:
    return json.loads(host.cnm("network", "inspect", name).stdout)[0]["Id"]


def explain(host: TestHost, name: str) -> dict[str, Any]:
    return json.loads(host.cnm("explain", "--format", "json", name).stdout)


def attachment(e: dict[str, Any], network: str) -> dict[str, Any]:
    (found,) = [a for a in e["attachments"] if a["network"] == network]
    return found


def fetch_world(host: TestHost, url: str) -> str | None:
    r = host.world(["busybox", "timeout", "3", "busybox", "wget", "-qO-", url], check=False, timeout=20)
    return r.stdout.strip() if r.returncode == 0 else None


def test_explain_matches_the_kernel_fact_by_fact(seehost: TestHost) -> None:
    e = explain(seehost, "web")
    netns = sandbox_key(seehost, "web")
    assert e["netns"] == netns and e["running"] is True
    a = attachment(e, "front")
    # inside: eth0's ifindex and iflink as the kernel reports them
    (eth0,) = seehost.ip_json("-d", "link", "show", "eth0", netns=netns)
    assert a["ifname"] == "eth0" and a["ifindex"] == eth0["ifindex"] and a["iflink"] == eth0["link_index"]
    assert a["mac"] == eth0["address"]
    # the host end: iflink == its ifindex, a port of front's bridge, alias naming both
    (veth,) = seehost.ip_json("-d", "link", "show", a["host_ifname"])
    assert a["iflink"] == a["host_ifindex"] == veth["ifindex"]
    assert veth["master"] == a["bridge"]
    assert a["host_alias"] == veth["ifalias"] and veth["ifalias"].endswith("(web on front)")
    (bridge,) = seehost.ip_json("link", "show", a["bridge"])
    assert a["bridge_ifindex"] == bridge["ifindex"]
    ip = inspect(seehost, "web")[0]["NetworkSettings"]["Networks"]["front"]["IPAddress"]
    assert a["address"].split("/")[0] == ip
    # routes inside, the default gateway, the files
    routes = seehost.ip_json("route", "show", netns=netns)
    assert [(r["dst"], r["gateway"], r["dev"]) for r in e["routes"]] == [
        (r["dst"], r.get("gateway", ""), r["dev"]) for r in routes
    ]
    assert e["default_gateway"] == a["gateway"] == next(r["gateway"] for r in routes if r["dst"] == "default")
    assert "nameserver" in e["resolv_conf"] and ip in e["hosts"]
    # the published port and the exact nft element serving it, as nft lists it
    port, twin = a["ports"]  # -p 8080:80 binds 0.0.0.0 and :: (Docker 27+)
    assert (twin["host_ip"], twin["host_port"]) == ("::", 8080)
    assert (port["host_port"], port["container_port"], port["protocol"]) == (8080, 80, "tcp")
    (rule,) = port["rules"]
    assert rule.startswith("tcp . 8080 ") and f": {ip} . 80" in rule
    listed = seehost.run(shlex.split(port["command"])).stdout
    assert re.search(
        rf"tcp \. 8080 comment \"cnm:[0-9a-f]+ \(web on front\)\" : {re.escape(ip)} \. 80", listed
    ), listed
    # readable kernel objects: the network's elements name it beside the tag
    front = inspect_network_id(seehost, "front")
    bridges = seehost.run(["nft", "list", "set", "ip", "cnm", "bridges"]).stdout
    assert f'"{a["bridge"]}" comment "cnm:{front} (front)"' in bridges, bridges
    # every command shown runs, as printed, inside the test host
    for command in [*e["commands"].values(), *a["commands"].values()]:
        if command.endswith(" sh") or "|" in command:
            continue  # an interactive shell; pipelines are run below
        seehost.run(shlex.split(command))


def test_explain_shows_a_live_conntrack_entry_after_a_connection(seehost: TestHost) -> None:
    assert wait_for(lambda: fetch_world(seehost, f"http://{HOST_IP}:8080/") == "hello-web", timeout=15)
    e = explain(seehost, "web")
    ip = attachment(e, "front")["address"].split("/")[0]
    entries = [c for c in e["conntrack"] if "dport=8080" in c and f"src={ip}" in c]
    assert entries, e["conntrack"]
    (command,) = [v for k, v in e["commands"].items() if k.startswith("conntrack ")]
    assert seehost.sh(command).stdout.strip(), command


def test_explain_text_gives_each_fact_a_command(seehost: TestHost) -> None:
    text = seehost.cnm("explain", "app").stdout
    key = sandbox_key(seehost, "app")
    assert text.startswith("container app (")
    assert f"\n  $ nsenter --net={key} sh\n" in text
    assert "network back (bridge driver" in text and "network front (bridge driver" in text
    assert "  --link database -> db" in text
    assert "$ ip netns exec cnm-app sh" in text
    assert "could not read" not in text, text


def test_map_text_json_dot_svg(seehost: TestHost) -> None:
    text = seehost.cnm("network", "map").stdout
    assert text.startswith("host uplink ") and " via 203.0.113.1" in text.splitlines()[0]
    for name in CONTAINERS:
        assert re.search(rf"<-> {name} eth\d", text), (name, text)
    assert "port 0.0.0.0:8080->80/tcp" in text and "link database -> db" in text
    data = json.loads(seehost.cnm("network", "map", "--format", "json", "front", "back").stdout)
    assert [n["name"] for n in data["networks"]] == ["front", "back"]
    host_links = {link["ifname"]: link for link in seehost.ip_json("link", "show")}
    for net in data["networks"]:
        assert host_links[net["bridge"]]["ifindex"] == net["bridge_ifindex"]
        for m in net["members"]:
            assert host_links[m["host_ifname"]]["ifindex"] == m["host_ifindex"]
            assert host_links[m["host_ifname"]]["master"] == net["bridge"]
    members = {(n["name"], m["container"]) for n in data["networks"] for m in n["members"]}
    assert members == {("front", "web"), ("front", "app"), ("back", "db"), ("back", "app")}
    dot = seehost.cnm("network", "map", "--format", "dot").stdout
    assert dot.startswith("graph cnm {")
    seehost.run(["dot", "-Tcanon"], input=dot)  # Graphviz accepts it
    svg = seehost.cnm("network", "map", "--format", "svg").stdout
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    words = {t.strip() for t in root.itertext()}
    for name in CONTAINERS:
        assert name in words, (name, sorted(words)[:50])
    bad = seehost.cnm("network", "map", "--format", "png", check=False)
    assert bad.returncode != 0 and "invalid --format 'png'" in bad.stderr
    missing = seehost.cnm("network", "map", "nosuch", check=False)
    assert missing.returncode != 0 and "nosuch" in missing.stderr


def test_netns_names_on_enter_by_name_and_go_with_the_container(seehost: TestHost) -> None:
    for name in CONTAINERS:
        by_name = seehost.run(
            ["ip", "netns", "exec", f"cnm-{name}", "ip", "-j", "link", "show", "eth0"]
        ).stdout
        (by_path,) = seehost.ip_json("link", "show", "eth0", netns=sandbox_key(seehost, name))
        assert json.loads(by_name)[0]["address"] == by_path["address"]
        assert explain(seehost, name)["netns_name"] == f"cnm-{name}"
    run_sleeper(seehost, "brief", "--network", "front")
    assert "cnm-brief" in seehost.run(["ip", "netns", "list"]).stdout
    seehost.cnm("stop", "-t", "0", "brief")
    assert "cnm-brief" not in seehost.run(["ip", "netns", "list"]).stdout
    seehost.cnm("rm", "brief")
    assert not seehost.sh("ls /run/netns | grep -x cnm-brief", check=False).stdout


def test_netns_names_follow_a_rename_and_leave_a_foreign_name_alone(seehost: TestHost) -> None:
    run_sleeper(seehost, "before", "--network", "front")
    seehost.cnm("rename", "before", "after")
    listing = seehost.run(["ip", "netns", "list"]).stdout.split()
    assert "cnm-after" in listing and "cnm-before" not in listing
    seehost.cnm("rm", "-f", "after")
    assert "cnm-after" not in seehost.run(["ip", "netns", "list"]).stdout.split()
    # a name that holds a namespace cnm did not make is never replaced nor removed
    seehost.run(["ip", "netns", "add", "cnm-squatted"])
    try:
        run_sleeper(seehost, "squatted", "--network", "front")
        assert explain(seehost, "squatted")["netns_name"] == ""
        seehost.cnm("rm", "-f", "squatted")
        assert "cnm-squatted" in seehost.run(["ip", "netns", "list"]).stdout.split()
        assert "already holds another network namespace" in seehost.daemon_log_tail(400)
    finally:
        seehost.run(["ip", "netns", "delete", "cnm-squatted"], check=False)


def test_netns_names_are_off_by_default(fresh_cnmhost: TestHost) -> None:
    run_sleeper(fresh_cnmhost, "plain")
    listing = fresh_cnmhost.run(["ip", "netns", "list"]).stdout
    assert "cnm-plain" not in listing
    e = explain(fresh_cnmhost, "plain")
    assert e["netns_name"] == "" and "netns name" not in e["commands"]


@pytest.mark.daemon_flags("--firewall-backend", "iptables")
def test_explain_shows_the_iptables_rules_of_a_port_with_that_backend(fresh_cnmhost: TestHost) -> None:
    run_sleeper(fresh_cnmhost, "ipt", "-p", "8081:80", "-p", "9000-9001:9000-9001/udp")
    e = explain(fresh_cnmhost, "ipt")
    ip = e["attachments"][0]["address"].split("/")[0]
    ports = e["attachments"][0]["ports"]
    by_port = {p["host_port"]: p for p in ports if p["host_ip"] == "0.0.0.0"}  # the v4 rules' ports
    (rule,) = by_port[8081]["rules"]
    assert "-p tcp" in rule and "--dport 8081" in rule and f"--to-destination {ip}:80" in rule, rule
    assert any("-p udp" in r and "9000:9001" in r for r in by_port[9000]["rules"]), by_port[9000]
    saved = fresh_cnmhost.sh(by_port[8081]["command"]).stdout
    assert rule in saved.splitlines(), (rule, saved)


def _kernel_log_since(host: TestHost, offset: int) -> list[str]:
    """The ``cnm.kernel`` debug records written after ``offset``, heredocs joined back."""
    text = host.daemon_log.read_text(errors="replace")[offset:]
    records: list[str] = []
    for line in text.splitlines():
        m = re.match(r"^\d{4}-\d\d-\d\d [\d:,]+ (\w+)\s+([\w.]+): (.*)$", line)
        if m:
            records.append(m.group(3) if m.group(2) == "cnm.kernel" else "")
        elif records and records[-1]:
            records[-1] += "\n" + line
    return [r for r in records if r]


def test_debug_log_of_a_run_replays_in_a_fresh_namespace(seehost: TestHost) -> None:
    """Replay every command cnmd logged for a ``run`` (namespace, veth, addresses, routes,
    sysctls; not the firewall) in a fresh network and mount namespace of its own, with the
    exec root moved to a tmpfs there: each must run as printed."""
    offset = len(seehost.daemon_log.read_text(errors="replace"))
    run_sleeper(seehost, "replayed", "--network", "front")
    try:
        records = _kernel_log_since(seehost, offset)
    finally:
        seehost.cnm("rm", "-f", "replayed")
    assert not any(r.startswith("ip netns add") for r in records), records
    netns_lines = [r for r in records if r.startswith(("touch ", "unshare --net="))]
    assert len(netns_lines) >= 2, records
    path = shlex.split(netns_lines[0])[1]
    # the network's commands (the rootfs mounts and runc are the runtime's, the cnm table's
    # elements need the table, and /run/netns/cnm-NAME is the running host's)
    commands = [
        r
        for r in records
        if r.split(" ", 1)[0] in ("ip", "nsenter", "touch", "unshare", "sysctl", "bridge")
        and "/run/netns/" not in r
    ]
    veths = [shlex.split(c) for c in commands if c.startswith("ip link add ")]
    assert veths, commands
    bridge = veths[0][veths[0].index("master") + 1]
    exec_root = str(seehost.exec_root)
    script = "\n".join(
        [
            "set -ex",
            f"mount -t tmpfs replay {shlex.quote(exec_root)}",
            f"mkdir -p {shlex.quote(str(Path(path).parent))}",
            "ip link set lo up",
            f"ip link add {shlex.quote(bridge)} type bridge",
            f"ip link set {shlex.quote(bridge)} up",
            *commands,
        ]
    )
    r = seehost.run(
        ["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c", script],
        check=False,
        timeout=60,
    )
    assert r.returncode == 0, f"replay failed:\n{r.stderr}"


def test_explain_of_a_dual_stack_container_reads_the_v6_table_and_routes(fresh_cnmhost: TestHost) -> None:
    check_dual_stack_explain(fresh_cnmhost, "nftables")


@pytest.mark.daemon_flags("--firewall-backend", "iptables")
def test_explain_of_a_dual_stack_container_reads_ip6tables_with_that_backend(fresh_cnmhost: TestHost) -> None:
    check_dual_stack_explain(fresh_cnmhost, "iptables")


def check_dual_stack_explain(host: TestHost, backend: str) -> None:
    """A container on a network with IPv6: its v6 address, gateway, routes, the [::]
    binding's entry in the v6 table (or ip6tables), each command runnable as shown."""
    host.cnm("network", "create", "--ipv6", "--subnet", "2001:db8:7::/64", "six")
    run_sleeper(host, "dual", "--network", "six", "-p", "8082:80")
    e = explain(host, "dual")
    a = attachment(e, "six")
    assert a["address6"].startswith("2001:db8:7::") and a["gateway6"] == "2001:db8:7::1"
    ip6 = a["address6"].split("/")[0]
    netns = sandbox_key(host, "dual")
    routes6 = host.ip_json("-6", "route", "show", netns=netns)
    assert [r["dst"] for r in e["routes6"]] == [r["dst"] for r in routes6]
    assert e["default_gateway6"] == "2001:db8:7::1"
    (v6,) = [p for p in a["ports"] if p["host_ip"] == "::"]
    (rule,) = v6["rules"]
    assert ip6 in rule and "8082" in rule, rule
    assert ("ip6tables-save" if backend == "iptables" else "nft list map ip6 cnm") in v6["command"]
    listed = host.sh(v6["command"]).stdout
    assert ip6 in listed, listed
    for key in ("routes6", "neighbours6"):
        host.run(shlex.split(e["commands"][key]))
    assert f"conntrack {ip6}" in e["commands"] and "-f ipv6" in e["commands"][f"conntrack {ip6}"]
    # the port's v6 guard and (nftables) the v6 subnet's NAT, each set listed as shown
    assert any(g.startswith("bridge cnm addrs6: ") and ip6 in g for g in a["guard"]), a["guard"]
    if backend == "nftables":
        assert any(n.startswith("ip6 cnm masquerading: ") for n in a["nat"]), a["nat"]
        assert any(n.startswith("ip6 cnm subnets: ") and "2001:db8:7::/64" in n for n in a["nat"]), a["nat"]
        assert "2001:db8:7::/64" in host.sh(a["commands"]["nat ip6 subnets"]).stdout
    else:
        assert any(n.startswith("ip6tables nat: ") and "-s 2001:db8:7::/64" in n for n in a["nat"]), a["nat"]
        assert "2001:db8:7::/64" in host.sh(a["commands"]["nat ip6tables-save"]).stdout
    assert ip6 in host.sh(a["commands"]["guard bridge addrs6"]).stdout
    assert e["problems"] == [], e["problems"]
