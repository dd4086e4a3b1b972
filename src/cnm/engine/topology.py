"""``cnm network map``: the networks as the kernel wires them, and three ways to draw them.

``Topology`` is what a learner needs to picture the host: the uplink (the interface of
the default route, where published ports come in and masqueraded traffic goes out), and
per network its bridge, the veth pairs on it and the containers at their other ends
(name, interface, IP, MAC), their published ports and ``--link``s, and for an overlay the
VXLAN device and the remote hosts (VTEPs) it sends to.  Bridges, veth host ends, VXLAN
devices and their peers are read from the kernel; an object the store expects but the
kernel lacks shows with ifindex 0 ("missing"), which is itself worth seeing.

``render_text`` (a tree, like a ``brctl show`` that knows containers) and ``render_dot``
(Graphviz source) are pure functions of a ``Topology``; ``render_svg`` runs Graphviz's
``dot`` on the latter.  The API turns the values into JSON; the live page reuses them.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Sequence
from dataclasses import dataclass

from cnm.engine.naming import parse_link
from cnm.engine.services import Services
from cnm.errors import CnmError, KernelError, Unavailable
from cnm.kernel import facts
from cnm.kernel.api import LinkInfo
from cnm.model.endpoint import EndpointRecord
from cnm.model.network import OVERLAY_BRIDGE_PREFIX, NetworkRecord
from cnm.model.ports import join_host_port

FORMATS = ("text", "dot", "svg", "json")
DOT_TIMEOUT = 30.0  # seconds for Graphviz to lay out a map


def link_labels(values: Sequence[str]) -> tuple[str, ...]:
    """``--link`` values as a person reads them, ``ALIAS -> NAME``; malformed ones (create
    refuses them, so only a hand-edited record has one) are left out."""
    labels = []
    for value in values:
        try:
            name, alias = parse_link(value)
        except CnmError:
            continue
        labels.append(f"{alias} -> {name}")
    return tuple(labels)


@dataclass(frozen=True, slots=True)
class Member:
    """A container on a network: its end of the veth pair and the host's end."""

    container: str
    container_id: str
    running: bool
    ifname: str
    address: str
    mac: str
    host_ifname: str
    host_ifindex: int  # 0: the host end is not in the kernel
    ports: tuple[str, ...] = ()  # "0.0.0.0:8080->80/tcp"
    links: tuple[str, ...] = ()  # "ALIAS -> NAME" (legacy --link)
    address6: str = ""  # "": no IPv6 address (a network without IPv6)


@dataclass(frozen=True, slots=True)
class Tunnel:
    """An overlay's VXLAN device and the remote hosts (VTEP addresses) it sends to."""

    device: str
    ifindex: int
    peers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NetworkNode:
    name: str
    id: str
    driver: str
    bridge: str  # "" for drivers without one (host, null)
    bridge_ifindex: int  # 0: not in the kernel (yet: an overlay has none before a local join)
    subnet: str
    gateway: str
    internal: bool
    members: tuple[Member, ...] = ()
    tunnels: tuple[Tunnel, ...] = ()
    subnet6: str = ""  # "": the network has no IPv6
    gateway6: str = ""


@dataclass(frozen=True, slots=True)
class Uplink:
    """The host's default-route interface."""

    ifname: str
    addresses: tuple[str, ...] = ()
    gateway: str = ""


@dataclass(frozen=True, slots=True)
class Topology:
    uplink: Uplink | None
    networks: tuple[NetworkNode, ...]
    problems: tuple[str, ...] = ()  # facts that could not be read, and why


# -- gathering ----------------------------------------------------------------------------


async def gather(svc: Services, networks: Sequence[NetworkRecord]) -> Topology:
    """The topology of ``networks`` (in that order) from the records and the kernel."""
    problems: list[str] = []
    host: dict[str, LinkInfo] = {}
    try:
        host = {link.name: link for link in await svc.kernel.links()}
    except CnmError as exc:
        problems.append(f"host interfaces: {exc}")
    uplink = None
    try:
        routes = await facts.routes()
        default = next((r for r in routes if r.dst == "default"), None)
        if default is not None:
            link = host.get(default.dev)
            addresses = tuple(str(a) for a in link.addresses) if link is not None else ()
            uplink = Uplink(ifname=default.dev, addresses=addresses, gateway=default.gateway)
    except CnmError as exc:
        problems.append(f"host routes: {exc}")
    nodes = []
    for network in networks:
        try:
            nodes.append(await _network(svc, network, host))
        except CnmError as exc:
            problems.append(f"network {network.name}: {exc}")
    return Topology(uplink=uplink, networks=tuple(nodes), problems=tuple(problems))


def _bridge_of(network: NetworkRecord) -> str:
    if network.driver == "bridge":
        return network.bridge_name
    if network.driver == "overlay":
        return OVERLAY_BRIDGE_PREFIX + network.id[:12]
    return ""


async def _network(svc: Services, network: NetworkRecord, host: dict[str, LinkInfo]) -> NetworkNode:
    bridge = _bridge_of(network)
    bridge_link = host.get(bridge) if bridge else None
    members = tuple(
        _member(svc, network, ep, host)
        for ep in sorted(svc.state.endpoints_of_network(network.id), key=lambda e: (e.name, e.id))
    )
    tunnels = []
    for link in host.values():
        if link.kind == "vxlan" and link.owner == network.id:
            peers = sorted({str(e.dst) for e in await svc.kernel.fdb_entries(link.name)})
            tunnels.append(Tunnel(device=link.name, ifindex=link.index, peers=tuple(peers)))
    return NetworkNode(
        name=network.name,
        id=network.id,
        driver=network.driver,
        bridge=bridge,
        bridge_ifindex=bridge_link.index if bridge_link is not None else 0,
        subnet=str(network.subnet) if network.subnet is not None else "",
        gateway=str(network.gateway) if network.gateway is not None else "",
        internal=network.internal,
        members=members,
        tunnels=tuple(sorted(tunnels, key=lambda t: t.device)),
        subnet6=str(network.subnet6) if network.subnet6 is not None else "",
        gateway6=str(network.gateway6) if network.gateway6 is not None else "",
    )


def _member(svc: Services, network: NetworkRecord, ep: EndpointRecord, host: dict[str, LinkInfo]) -> Member:
    container = svc.state.containers.get(ep.container_id)
    peer = host.get(ep.host_ifname) if ep.host_ifname else None
    requested = list(ep.request.links)
    if network.is_default_bridge and container is not None:
        requested += list(container.config.links)
    return Member(
        container=container.name if container is not None else ep.name,
        container_id=ep.container_id,
        running=container.running if container is not None else False,
        ifname=ep.ifname,
        address=str(ep.address) if ep.address is not None else "",
        mac=ep.mac,
        host_ifname=ep.host_ifname,
        host_ifindex=peer.index if peer is not None else 0,
        ports=tuple(
            f"{join_host_port(p.host_ip, p.host_port)}->{p.container_port}/{p.protocol}" for p in ep.ports
        ),
        links=link_labels(requested),
        address6=str(ep.address6) if ep.address6 is not None else "",
    )


# -- text -------------------------------------------------------------------------------


def _index(ifindex: int) -> str:
    return f"ifindex {ifindex}" if ifindex else "missing from the kernel"


def render_text(topology: Topology) -> str:
    """A tree per network: bridge, then each veth pair and the container at its end."""
    lines: list[str] = []
    up = topology.uplink
    if up is not None:
        via = f" via {up.gateway}" if up.gateway else ""
        lines.append(f"host uplink {up.ifname} {' '.join(up.addresses)}{via}".replace("  ", " ").rstrip())
    else:
        lines.append("host uplink: none (no default route)")
    for net in topology.networks:
        lines.append("")
        what = [net.driver]
        if net.subnet:
            what.append(net.subnet)
        if net.gateway:
            what.append(f"gateway {net.gateway}")
        if net.subnet6:
            what.append(net.subnet6)
        if net.gateway6:
            what.append(f"gateway {net.gateway6}")
        if net.internal:
            what.append("internal: no way out")
        elif net.driver == "bridge" and up is not None:
            what.append(f"NAT out via {up.ifname}")
        lines.append(f"network {net.name} ({', '.join(what)})")
        children: list[tuple[str, list[str]]] = []
        for tunnel in net.tunnels:
            peers = ", ".join(tunnel.peers) or "no remote hosts yet"
            children.append((f"vxlan {tunnel.device} ({_index(tunnel.ifindex)}) -> {peers}", []))
        for m in net.members:
            state = "" if m.running else " (stopped)"
            head = (
                f"veth {m.host_ifname or '-'} ({_index(m.host_ifindex)}) <-> "
                f"{m.container}{state} {m.ifname} {m.address or '-'}{f' {m.address6}' if m.address6 else ''}"
                f" {m.mac or '-'}"
            )
            extra = [f"port {p}" for p in m.ports] + [f"link {link}" for link in m.links]
            children.append((head, extra))
        if net.bridge:
            lines.append(f"`-- bridge {net.bridge} ({_index(net.bridge_ifindex)})")
        else:
            lines.append(f"`-- no bridge ({net.driver} driver)")
        prefix = "    "
        if not children:
            lines.append(f"{prefix}`-- no containers")
        for i, (head, extra) in enumerate(children):
            last = i == len(children) - 1
            lines.append(f"{prefix}{'`-- ' if last else '|-- '}{head}")
            inner = prefix + ("    " if last else "|   ")
            lines += [f"{inner}  {e}" for e in extra]
    for problem in topology.problems:
        lines.append(f"! {problem}")
    return "\n".join(lines) + "\n"


# -- Graphviz ---------------------------------------------------------------------------


def _q(text: str) -> str:
    """A DOT quoted string (its ``\\n`` escapes are kept as line breaks)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _node(node_id: str, label: str, **attrs: str) -> str:
    extra = "".join(f", {k}={_q(v)}" for k, v in attrs.items())
    return f"{_q(node_id)} [label={_q(label)}{extra}];"


def _edge(a: str, b: str, label: str = "", **attrs: str) -> str:
    parts = [f"label={_q(label)}"] if label else []
    parts += [f"{k}={_q(v)}" for k, v in attrs.items()]
    return f"{_q(a)} -- {_q(b)}" + (f" [{', '.join(parts)}]" if parts else "") + ";"


def render_dot(topology: Topology) -> str:
    """Graphviz source: one cluster per network (its bridge, veth host ends, tunnels), the
    containers beside them (a container on two networks is one node), the uplink, the
    published ports as entry points and ``--link``s as dotted edges."""
    out = [
        "graph cnm {",
        "  rankdir=LR;",
        '  fontname="sans-serif";',
        '  node [fontname="sans-serif", fontsize=10];',
        '  edge [fontname="sans-serif", fontsize=9];',
    ]
    up = topology.uplink
    if up is not None:
        out.append(
            "  "
            + _node("uplink", "\n".join([f"uplink {up.ifname}", *up.addresses]), shape="box", style="bold")
        )
    containers: dict[str, str] = {}  # id -> name
    for net in topology.networks:
        for m in net.members:
            containers.setdefault(m.container_id, m.container)
    for cid, name in containers.items():
        out.append("  " + _node(f"c:{cid}", name, shape="box3d"))
    by_name = {name: cid for cid, name in containers.items()}
    for net in topology.networks:
        bridge_id = f"br:{net.id}"
        out.append(f"  subgraph {_q('cluster_' + net.id)} {{")
        title = "\n".join([f"network {net.name}", *(s for s in (net.subnet, net.subnet6) if s)])
        out.append(f"    label={_q(title)};")
        bridge_label = (
            f"{net.bridge or 'no bridge'}\n{_index(net.bridge_ifindex)}" if net.bridge else "no bridge"
        )
        out.append("    " + _node(bridge_id, bridge_label, shape="box", style="rounded"))
        for m in net.members:
            out.append(
                "    "
                + _node(
                    f"veth:{net.id}:{m.host_ifname or m.container_id}",
                    f"{m.host_ifname or '-'}\n{_index(m.host_ifindex)}",
                    shape="ellipse",
                )
            )
        for t in net.tunnels:
            out.append(
                "    " + _node(f"vx:{t.device}", f"vxlan {t.device}\n{_index(t.ifindex)}", shape="hexagon")
            )
        out.append("  }")
        if up is not None and net.bridge and not net.internal and net.driver == "bridge":
            out.append("  " + _edge(bridge_id, "uplink", "NAT", style="dashed"))
        for m in net.members:
            veth = f"veth:{net.id}:{m.host_ifname or m.container_id}"
            out.append("  " + _edge(bridge_id, veth))
            out.append(
                "  "
                + _edge(
                    veth,
                    f"c:{m.container_id}",
                    "\n".join(x for x in (f"{m.ifname} {m.address}", m.address6, m.mac) if x),
                )
            )
            for port in m.ports:
                out.append("  " + _node(f"port:{port}", port, shape="cds"))
                out.append("  " + _edge(f"port:{port}", f"c:{m.container_id}", "published", style="bold"))
                if up is not None:
                    out.append("  " + _edge("uplink", f"port:{port}", style="dotted"))
            for link in m.links:
                alias, _, target = link.partition(" -> ")
                if target in by_name:
                    out.append(
                        "  "
                        + _edge(
                            f"c:{m.container_id}", f"c:{by_name[target]}", f"--link {alias}", style="dotted"
                        )
                    )
        for t in net.tunnels:
            out.append("  " + _edge(bridge_id, f"vx:{t.device}"))
            for peer in t.peers:
                out.append("  " + _node(f"vtep:{peer}", f"remote host\n{peer}", shape="box", style="dashed"))
                out.append("  " + _edge(f"vx:{t.device}", f"vtep:{peer}", "VXLAN", style="dashed"))
    out.append("}")
    return "\n".join(out) + "\n"


async def render_svg(dot_source: str) -> str:
    """SVG laid out by Graphviz (``dot -Tsvg``); Unavailable when Graphviz is missing."""
    if shutil.which("dot") is None:
        raise Unavailable("Graphviz's dot is not installed on the cnmd host (Debian package graphviz)")
    proc = await asyncio.create_subprocess_exec(
        "dot", "-Tsvg",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(dot_source.encode()), DOT_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise KernelError(f"dot -Tsvg: no answer in {DOT_TIMEOUT:.0f} s") from None
    if proc.returncode != 0:
        raise KernelError(f"dot -Tsvg: {err.decode(errors='replace').strip()}")
    return out.decode()
