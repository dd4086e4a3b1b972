"""``cnm explain`` and ``cnm network map`` without a kernel: the renderers (text, Graphviz
source, JSON) on a known topology, the CLI's text of a known explanation, and the routes
over the fake controller (formats, unknown names, bad input)."""

from __future__ import annotations

import json
import re

from cnm.api.routes_cnm import plain
from cnm.cli.commands.explain import render_explanation
from cnm.engine.explain import Attachment, Explanation, PortPath
from cnm.engine.topology import Member, NetworkNode, Topology, Tunnel, Uplink, render_dot, render_text
from cnm.kernel.facts import Route, parse_routes

try:
    from test_api_server import server  # noqa: F401 -- the fixture
except ImportError:  # tests/ made a package
    from .test_api_server import server  # type: ignore[no-redef]  # noqa: F401

WEB = "a" * 64
DB = "b" * 64
FRONT = "f" * 64
BACK = "e" * 64
OVER = "c" * 64


def known() -> Topology:
    """Two bridge networks (one internal), an overlay with a tunnel; web is on both bridges,
    publishes 8080 and links db; db's host veth is missing from the kernel."""
    web_front = Member(
        container="web", container_id=WEB, running=True, ifname="eth0", address="172.18.0.2/16",
        mac="02:42:ac:12:00:02", host_ifname="veth1a", host_ifindex=9,
        ports=("0.0.0.0:8080->80/tcp",), links=("database -> db",),
    )  # fmt: skip
    web_back = Member(
        container="web", container_id=WEB, running=True, ifname="eth1", address="172.19.0.2/16",
        mac="02:42:ac:13:00:02", host_ifname="veth1b", host_ifindex=11,
    )  # fmt: skip
    db_back = Member(
        container="db", container_id=DB, running=False, ifname="eth0", address="172.19.0.3/16",
        mac="02:42:ac:13:00:03", host_ifname="veth2a", host_ifindex=0,
    )  # fmt: skip
    return Topology(
        uplink=Uplink(ifname="eth0", addresses=("203.0.113.2/24",), gateway="203.0.113.1"),
        networks=(
            NetworkNode(name="front", id=FRONT, driver="bridge", bridge="br-ffffffffffff", bridge_ifindex=5,
                        subnet="172.18.0.0/16", gateway="172.18.0.1", internal=False, members=(web_front,)),
            NetworkNode(name="back", id=BACK, driver="bridge", bridge="br-eeeeeeeeeeee", bridge_ifindex=6,
                        subnet="172.19.0.0/16", gateway="172.19.0.1", internal=True, members=(db_back, web_back)),
            NetworkNode(name="over", id=OVER, driver="overlay", bridge="ov-cccccccccccc", bridge_ifindex=0,
                        subnet="10.0.1.0/24", gateway="10.0.1.1", internal=False,
                        tunnels=(Tunnel(device="vx-cccccccccccc", ifindex=12, peers=("198.51.100.2",)),)),
        ),
    )  # fmt: skip


def test_text_map_is_a_tree_per_network_naming_every_container():
    text = render_text(known())
    assert text.splitlines()[0] == "host uplink eth0 203.0.113.2/24 via 203.0.113.1"
    assert "network front (bridge, 172.18.0.0/16, gateway 172.18.0.1, NAT out via eth0)" in text
    assert "network back (bridge, 172.19.0.0/16, gateway 172.19.0.1, internal: no way out)" in text
    assert "`-- bridge br-ffffffffffff (ifindex 5)" in text
    assert "    `-- veth veth1a (ifindex 9) <-> web eth0 172.18.0.2/16 02:42:ac:12:00:02" in text
    assert "          port 0.0.0.0:8080->80/tcp" in text and "          link database -> db" in text
    # a host end the kernel lacks is shown as such, a stopped container as stopped
    assert "    |-- veth veth2a (missing from the kernel) <-> db (stopped) eth0 172.19.0.3/16" in text
    assert "vxlan vx-cccccccccccc (ifindex 12) -> 198.51.100.2" in text
    assert "`-- bridge ov-cccccccccccc (missing from the kernel)" in text


def test_text_map_without_uplink_or_containers():
    empty = Topology(uplink=None, networks=(NetworkNode("none", "1" * 64, "null", "", 0, "", "", False),))
    text = render_text(empty)
    assert text.startswith("host uplink: none (no default route)\n")
    assert "`-- no bridge (null driver)\n    `-- no containers\n" in text


def dual_stack() -> Topology:
    web = Member(
        container="web", container_id=WEB, running=True, ifname="eth0", address="172.18.0.2/16",
        mac="02:42:ac:12:00:02", host_ifname="veth1a", host_ifindex=9, address6="2001:db8:1::2/64",
        ports=("0.0.0.0:8080->80/tcp", "[::]:8080->80/tcp"),
    )  # fmt: skip
    net = NetworkNode(
        name="v6", id=FRONT, driver="bridge", bridge="br-ffffffffffff", bridge_ifindex=5, subnet="172.18.0.0/16",
        gateway="172.18.0.1", internal=False, members=(web,), subnet6="2001:db8:1::/64", gateway6="2001:db8:1::1",
    )  # fmt: skip
    return Topology(uplink=None, networks=(net,))


def test_map_of_a_dual_stack_network_shows_its_v6_subnet_gateway_and_addresses():
    text = render_text(dual_stack())
    assert (
        "network v6 (bridge, 172.18.0.0/16, gateway 172.18.0.1, 2001:db8:1::/64, gateway 2001:db8:1::1)"
        in text
    )
    assert "<-> web eth0 172.18.0.2/16 2001:db8:1::2/64 02:42:ac:12:00:02" in text
    assert "port [::]:8080->80/tcp" in text
    source = render_dot(dual_stack())
    assert 'label="network v6\\n172.18.0.0/16\\n2001:db8:1::/64";' in source
    assert '[label="eth0 172.18.0.2/16\\n2001:db8:1::2/64\\n02:42:ac:12:00:02"]' in source
    data = json.loads(json.dumps(plain(dual_stack())))
    assert data["networks"][0]["subnet6"] == "2001:db8:1::/64"
    assert data["networks"][0]["members"][0]["address6"] == "2001:db8:1::2/64"


def _dot_statements(source: str) -> list[str]:
    return [line.strip() for line in source.splitlines()]


def test_dot_map_has_one_cluster_per_network_and_one_node_per_container():
    source = render_dot(known())
    assert source.startswith("graph cnm {\n") and source.endswith("}\n")
    assert source.count("subgraph ") == 3
    for net in (FRONT, BACK, OVER):
        assert f'subgraph "cluster_{net}" {{' in source
    # web is on two networks but is one node
    assert len(re.findall(rf'^\s*"c:{WEB}" \[label="web"', source, re.M)) == 1
    assert f'"c:{DB}" [label="db", shape="box3d"];' in source
    statements = _dot_statements(source)
    assert f'"br:{FRONT}" -- "veth:{FRONT}:veth1a";' in statements
    assert (
        f'"veth:{FRONT}:veth1a" -- "c:{WEB}" [label="eth0 172.18.0.2/16\\n02:42:ac:12:00:02"];' in statements
    )
    assert f'"br:{FRONT}" -- "uplink" [label="NAT", style="dashed"];' in statements
    assert not any(s.startswith(f'"br:{BACK}" -- "uplink"') for s in statements)  # internal: no NAT
    assert f'"port:0.0.0.0:8080->80/tcp" -- "c:{WEB}" [label="published", style="bold"];' in statements
    assert f'"c:{WEB}" -- "c:{DB}" [label="--link database", style="dotted"];' in statements
    assert '"vx:vx-cccccccccccc" -- "vtep:198.51.100.2" [label="VXLAN", style="dashed"];' in statements


def test_dot_quotes_what_it_is_given():
    net = NetworkNode('we"ird\\net', "2" * 64, "bridge", "br-x", 1, "", "", False)
    source = render_dot(Topology(uplink=None, networks=(net,)))
    assert 'label="network we\\"ird\\\\net";' in source


def test_json_of_the_map_keeps_every_fact():
    data = json.loads(json.dumps(plain(known())))
    assert data["uplink"] == {"ifname": "eth0", "addresses": ["203.0.113.2/24"], "gateway": "203.0.113.1"}
    front = data["networks"][0]
    assert front["name"] == "front" and front["bridge_ifindex"] == 5
    assert front["members"][0]["ports"] == ["0.0.0.0:8080->80/tcp"]
    assert data["networks"][2]["tunnels"] == [
        {"device": "vx-cccccccccccc", "ifindex": 12, "peers": ["198.51.100.2"]}
    ]


def test_routes_parse_from_ip_json_and_print_as_ip_does():
    rows = [
        {"dst": "default", "gateway": "172.18.0.1", "dev": "eth0", "flags": []},
        {
            "dst": "172.18.0.0/16",
            "dev": "eth0",
            "protocol": "kernel",
            "scope": "link",
            "prefsrc": "172.18.0.2",
        },
    ]
    assert [r.text for r in parse_routes(rows)] == [
        "default via 172.18.0.1 dev eth0",
        "172.18.0.0/16 dev eth0 proto kernel scope link src 172.18.0.2",
    ]


def explanation() -> Explanation:
    netns = "/run/cnm/netns/0123456789ab"
    return Explanation(
        container="web", container_id=WEB, running=True, network_mode="front", netns=netns, netns_name="cnm-web",
        attachments=(
            Attachment(
                network="front", network_id=FRONT, driver="bridge", ifname="eth0", address="172.18.0.2/16",
                gateway="172.18.0.1", mac="02:42:ac:12:00:02", ifindex=2, iflink=9, host_ifname="veth1a",
                host_ifindex=9, host_alias="cnm:d:ep (web on front)", bridge="br-ffffffffffff", bridge_ifindex=5,
                ports=(PortPath("tcp", "0.0.0.0", 8080, 80,
                                ('tcp . 8080 comment "cnm:ep" : 172.18.0.2 . 80  (map ports-any)',),
                                "nft list map ip cnm ports-any"),
                       PortPath("udp", "0.0.0.0", 53, 53, (), "")),
                links=("database -> db",),
                commands={"inside": f"nsenter --net={netns} ip -d link show eth0", "host": "ip -d link show veth1a"},
            ),
        ),
        routes=(Route("default", "eth0", "172.18.0.1"),),
        default_gateway="172.18.0.1",
        resolv_conf="nameserver 127.0.0.11\n",
        hosts="127.0.0.1\tlocalhost\n",
        conntrack=("tcp 6 117 TIME_WAIT src=203.0.113.1 dst=203.0.113.2 sport=1 dport=8080 ...",),
        commands={
            "enter": f"nsenter --net={netns} sh", "netns name": "ip netns exec cnm-web sh",
            "routes": f"nsenter --net={netns} ip route show", "neighbours": f"nsenter --net={netns} ip neigh show",
            "resolv.conf": "cat /c/resolv.conf", "hosts": "cat /c/hosts",
            "conntrack 172.18.0.2": "conntrack -L | grep -w 172.18.0.2",
        },
        problems=("neighbours: ip is not installed",),
    )  # fmt: skip


def test_explain_text_prints_each_fact_then_its_command():
    text = render_explanation(json.loads(json.dumps(plain(explanation()))))
    lines = text.splitlines()

    def followed_by(fact: str, command: str) -> None:
        i = next(i for i, line in enumerate(lines) if fact in line)
        assert lines[i + 1].strip() == f"$ {command}", (fact, lines[i : i + 3])

    assert lines[0] == f"container web ({WEB[:12]}), running, network mode front"
    followed_by(
        "network namespace /run/cnm/netns/0123456789ab", "nsenter --net=/run/cnm/netns/0123456789ab sh"
    )
    followed_by("named cnm-web in /run/netns", "ip netns exec cnm-web sh")
    followed_by(
        "eth0: ifindex 2, iflink 9 = the host veth's ifindex, MAC 02:42:ac:12:00:02, IP 172.18.0.2/16",
        "nsenter --net=/run/cnm/netns/0123456789ab ip -d link show eth0",
    )
    followed_by('host veth veth1a: ifindex 9, alias "cnm:d:ep (web on front)"', "ip -d link show veth1a")
    i = lines.index("  published 0.0.0.0:8080 -> 80/tcp")
    assert lines[i + 1:i + 3] == [
        '    tcp . 8080 comment "cnm:ep" : 172.18.0.2 . 80  (map ports-any)', "    $ nft list map ip cnm ports-any",
    ]  # fmt: skip
    i = lines.index("  published 0.0.0.0:53 -> 53/udp")
    assert lines[i + 1] == "    no firewall entry serves it in the kernel"
    assert "  --link database -> db" in lines
    followed_by(
        "  default via 172.18.0.1 dev eth0", "nsenter --net=/run/cnm/netns/0123456789ab ip route show"
    )
    assert "default gateway 172.18.0.1" in lines
    followed_by("  nameserver 127.0.0.11", "cat /c/resolv.conf")
    i = lines.index("conntrack: 1 live entry")
    assert lines[i + 2] == "  $ conntrack -L | grep -w 172.18.0.2"
    assert lines[-1] == "could not read: neighbours: ip is not installed"


def test_explain_text_of_a_stopped_container_says_so():
    e = Explanation(container="db", container_id=DB, running=False, network_mode="bridge")
    text = render_explanation(json.loads(json.dumps(plain(e))))
    assert "not running (the store's view only)" in text and "routes" not in text


async def test_map_route_formats_and_refusals(server):  # noqa: F811
    ctrl, client, _ = server
    reply = await client.request("GET", "/cnm/v1/map")
    assert reply.status == 200
    assert [n["name"] for n in reply.json()["networks"]] == ["bridge", "host", "none"]
    reply = await client.request("GET", "/cnm/v1/map?network=bridge&format=text")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    assert (
        reply.body.decode().startswith("host uplink: none")
        and "network bridge (bridge" in reply.body.decode()
    )
    reply = await client.request("GET", "/cnm/v1/map?network=bridge&format=dot")
    assert reply.status == 200 and reply.body.startswith(b"graph cnm {")
    reply = await client.request("GET", "/cnm/v1/map?format=png")
    assert reply.status == 400 and "invalid map format 'png'" in reply.json()["message"]
    reply = await client.request("GET", "/cnm/v1/map?network=nosuch")
    assert reply.status == 404 and "nosuch" in reply.json()["message"]


async def test_explain_route_unknown_container_is_404(server):  # noqa: F811
    _, client, _ = server
    reply = await client.request("GET", "/cnm/v1/containers/nosuch/explain")
    assert reply.status == 404 and "nosuch" in reply.json()["message"]


def test_explain_text_of_a_dual_stack_container_shows_v6_facts_and_commands():
    netns = "/run/cnm/netns/0123456789ab"
    e = Explanation(
        container="web", container_id=WEB, running=True, network_mode="v6", netns=netns,
        attachments=(
            Attachment(
                network="v6", network_id=FRONT, driver="bridge", ifname="eth0", address="172.18.0.2/16",
                gateway="172.18.0.1", address6="2001:db8:1::2/64", gateway6="2001:db8:1::1",
                guard=('bridge cnm addrs6: "veth1a" . 02:42:ac:12:00:02 . 2001:db8:1::2',),
                nat=('ip6 cnm masquerading: "br-ffffffffffff"',),
                commands={
                    "guard bridge addrs6": "nft list set bridge cnm addrs6",
                    "nat ip6 masquerading": "nft list set ip6 cnm masquerading",
                },
                ports=(PortPath("tcp", "::", 8080, 80,
                                ('tcp . 8080 comment "cnm:ep" : 2001:db8:1::2 . 80  (map ports-any)',),
                                "nft list map ip6 cnm ports-any"),
                       PortPath("tcp", "::1", 8081, 81, (), "",
                                note="cnmd's proxy carries it to 172.18.0.2:81 (no IPv6 DNAT for it)")),
            ),
        ),
        routes6=(Route("default", "eth0", "2001:db8:1::1"), Route("2001:db8:1::/64", "eth0")),
        default_gateway6="2001:db8:1::1",
        commands={
            "routes": f"nsenter --net={netns} ip route show",
            "routes6": f"nsenter --net={netns} ip -6 route show",
            "neighbours": f"nsenter --net={netns} ip neigh show",
            "neighbours6": f"nsenter --net={netns} ip -6 neigh show",
        },
    )  # fmt: skip
    lines = render_explanation(json.loads(json.dumps(plain(e)))).splitlines()
    assert any(line.endswith("IP 172.18.0.2/16, IPv6 2001:db8:1::2/64") for line in lines)
    assert "  IPv6 gateway 2001:db8:1::1" in lines
    i = lines.index("  published [::]:8080 -> 80/tcp")
    assert lines[i + 1 : i + 3] == [
        '    tcp . 8080 comment "cnm:ep" : 2001:db8:1::2 . 80  (map ports-any)',
        "    $ nft list map ip6 cnm ports-any",
    ]
    i = lines.index("  published [::1]:8081 -> 81/tcp")
    assert lines[i + 1] == "    cnmd's proxy carries it to 172.18.0.2:81 (no IPv6 DNAT for it)"
    i = lines.index("IPv6 routes inside")
    assert lines[i + 1 : i + 4] == [
        "  default via 2001:db8:1::1 dev eth0",
        "  2001:db8:1::/64 dev eth0",
        f"  $ nsenter --net={netns} ip -6 route show",
    ]
    assert "IPv6 default gateway 2001:db8:1::1" in lines
    i = lines.index("  anti-spoofing guard of its port (what it may send from)")
    assert lines[i + 1 : i + 3] == [
        '    bridge cnm addrs6: "veth1a" . 02:42:ac:12:00:02 . 2001:db8:1::2',
        "    $ nft list set bridge cnm addrs6",
    ]
    i = lines.index("  how its network leaves the host")
    assert lines[i + 1 : i + 3] == [
        '    ip6 cnm masquerading: "br-ffffffffffff"',
        "    $ nft list set ip6 cnm masquerading",
    ]
    assert "neighbours inside (ARP, NDP)" in lines and f"  $ nsenter --net={netns} ip -6 neigh show" in lines
