"""``cnm explain CONTAINER`` and ``cnm network map``: cnm's own verbs for seeing inside.

cnmd gathers the facts from the kernel (``GET /cnm/v1/containers/{id}/explain``, ``GET
/cnm/v1/map``); this module prints them.  Every fact of ``explain`` is followed by the
command a person types to see it (a ``$`` line), so the output doubles as a lesson.
``render_explanation`` is a pure function of the JSON, for the tests.
"""

from __future__ import annotations

from cnm.cli import flags as F
from cnm.cli.client import quote
from cnm.cli.context import Cli
from cnm.cli.errors import CliError
from cnm.cli.format import join_host_port

EXPLAIN = F.Command(
    "cnm explain",
    "CONTAINER",
    "Show a container's networking as the kernel holds it, each fact with the command that shows it",
    [F.flag("--format", help="json: cnmd's answer as it is")],
    min_args=1,
    max_args=1,
)

MAP = F.Command(
    "cnm network map",
    "[NETWORK...]",
    "Draw the networks: bridges, veth pairs, containers, ports, links, tunnels",
    [
        F.flag(
            "--format",
            default="text",
            help="text (a tree), dot (Graphviz source), svg (drawn by Graphviz) or json",
        )
    ],
)
MAP_FORMATS = ("text", "dot", "svg", "json")


def _cmd(command: str, indent: str) -> list[str]:
    return [f"{indent}  $ {command}"] if command else []


def _index(value: int) -> str:
    return str(value) if value else "? (not in the kernel)"


def render_explanation(e: dict) -> str:
    """The text of ``cnm explain`` for cnmd's JSON ``e``."""
    cmds = e.get("commands") or {}
    state = "running" if e.get("running") else "not running"
    out = [
        f"container {e['container']} ({e['container_id'][:12]}), {state}, network mode {e['network_mode']}"
    ]
    if e.get("netns"):
        out.append(f"network namespace {e['netns']}")
        out += _cmd(cmds.get("enter", ""), "")
        if e.get("netns_name"):
            out.append(f"named {e['netns_name']} in /run/netns (cnmd --netns-names)")
            out += _cmd(cmds.get("netns name", ""), "")
    elif e.get("running"):
        out.append("no network namespace of its own")
    else:
        out.append("no network namespace: the container is not running (the store's view only)")
    for a in e.get("attachments") or ():
        ac = a.get("commands") or {}
        out.append("")
        out.append(f"network {a['network']} ({a['driver']} driver, id {a['network_id'][:12]})")
        if a.get("ifname"):
            peer = (
                " = the host veth's ifindex"
                if a.get("iflink") and a.get("iflink") == a.get("host_ifindex")
                else ""
            )
            out.append(
                f"  {a['ifname']}: ifindex {_index(a.get('ifindex', 0))}, iflink {_index(a.get('iflink', 0))}{peer}, "
                f"MAC {a.get('mac') or '-'}, IP {a.get('address') or '-'}"
                + (f", IPv6 {a['address6']}" if a.get("address6") else "")
            )
            out += _cmd(ac.get("inside", ""), "  ")
        if a.get("host_ifname"):
            alias = f', alias "{a["host_alias"]}"' if a.get("host_alias") else ""
            out.append(f"  host veth {a['host_ifname']}: ifindex {_index(a.get('host_ifindex', 0))}{alias}")
            out += _cmd(ac.get("host", ""), "  ")
        if a.get("bridge"):
            out.append(f"  bridge {a['bridge']}: ifindex {_index(a.get('bridge_ifindex', 0))}")
            out += _cmd(ac.get("bridge", ""), "  ")
        if a.get("guard"):
            out.append("  anti-spoofing guard of its port (what it may send from)")
            out += [f"    {g}" for g in a["guard"]]
            out += [line for k, c in ac.items() if k.startswith("guard ") for line in _cmd(c, "  ")]
        if a.get("nat"):
            out.append("  how its network leaves the host")
            out += [f"    {n}" for n in a["nat"]]
            out += [line for k, c in ac.items() if k.startswith("nat ") for line in _cmd(c, "  ")]
        if a.get("gateway"):
            out.append(f"  gateway {a['gateway']}")
        if a.get("gateway6"):
            out.append(f"  IPv6 gateway {a['gateway6']}")
        for p in a.get("ports") or ():
            out.append(
                f"  published {join_host_port(p['host_ip'], p['host_port'])} -> {p['container_port']}/{p['protocol']}"
            )
            if p.get("note") and not p.get("rules"):
                out.append(f"    {p['note']}")
            elif not p.get("rules"):
                out.append("    no firewall entry serves it in the kernel")
            out += [f"    {rule}" for rule in p.get("rules") or ()]
            out += _cmd(p.get("command", ""), "  ")
        for link in a.get("links") or ():
            out.append(f"  --link {link}")
    if e.get("netns"):
        out.append("")
        out.append("routes inside")
        out += [f"  {r['text']}" for r in e.get("routes") or ()] or ["  (none)"]
        out += _cmd(cmds.get("routes", ""), "")
        out.append(f"default gateway {e.get('default_gateway') or 'none (no default route)'}")
        if "routes6" in cmds:
            out.append("IPv6 routes inside")
            out += [f"  {r['text']}" for r in e.get("routes6") or ()] or ["  (none)"]
            out += _cmd(cmds["routes6"], "")
            out.append(f"IPv6 default gateway {e.get('default_gateway6') or 'none (no default route)'}")
        out.append("neighbours inside (ARP" + (", NDP)" if "neighbours6" in cmds else ")"))
        out += [f"  {n['text']}" for n in e.get("neighbours") or ()] or ["  (none yet)"]
        out += _cmd(cmds.get("neighbours", ""), "")
        out += _cmd(cmds.get("neighbours6", ""), "")
    for key, field in (("resolv.conf", "resolv_conf"), ("hosts", "hosts")):
        if key in cmds:
            out.append("")
            out.append(key)
            out += [f"  {line}" for line in (e.get(field) or "").splitlines()] or ["  (empty)"]
            out += _cmd(cmds[key], "")
    conntrack_cmds = [v for k, v in cmds.items() if k.startswith("conntrack ")]
    if conntrack_cmds:
        out.append("")
        entries = e.get("conntrack") or ()
        out.append(f"conntrack: {len(entries)} live entr{'y' if len(entries) == 1 else 'ies'}")
        out += [f"  {line}" for line in entries]
        for command in conntrack_cmds:
            out += _cmd(command, "")
    if e.get("problems"):
        out.append("")
        out += [f"could not read: {p}" for p in e["problems"]]
    return "\n".join(out) + "\n"


def cmd_explain(cli: Cli, argv: list[str]) -> int:
    v, (ref,), _ = F.parse(EXPLAIN, argv)
    if v["format"] not in (None, "", "json"):
        raise CliError(f"invalid --format {v['format']!r}: expected json (or none, for text)")
    resp = cli.client.request("GET", f"/cnm/v1/containers/{quote(ref)}/explain")
    try:
        body = resp.read()
    finally:
        resp.close()
    if v["format"] == "json":
        cli.out(body.decode() + "\n")
        return 0
    import json

    cli.out(render_explanation(json.loads(body)))
    return 0


def cmd_map(cli: Cli, argv: list[str]) -> int:
    v, networks, _ = F.parse(MAP, argv)
    fmt = v["format"]
    if fmt not in MAP_FORMATS:
        raise CliError(f"invalid --format {fmt!r}: expected one of {', '.join(MAP_FORMATS)}")
    query = "&".join([f"format={quote(fmt)}", *(f"network={quote(n)}" for n in networks)])
    resp = cli.client.request("GET", f"/cnm/v1/map?{query}")
    try:
        body = resp.read().decode()
    finally:
        resp.close()
    cli.out(body if body.endswith("\n") else body + "\n")
    return 0
