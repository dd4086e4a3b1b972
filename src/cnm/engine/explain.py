"""``cnm explain CONTAINER``: every fact of a container's networking, read from the kernel,
each with the command a person types to see it.

The store says which networks a container is on and which ports it publishes; everything
else is what the kernel holds right now: the interfaces in the container's namespace
(ifindex, iflink, MAC, addresses), their host ends (ifindex, bridge, alias), the routes and
neighbours inside, the nftables map elements (or iptables rules) that serve each published
port, and the conntrack entries of the container's addresses.  A fact that cannot be read
(a tool not installed, a namespace going away) becomes a ``problem`` line instead of an
error: the rest is still worth showing.

The values are typed and free of presentation, so the API turns them into JSON and later
readers (the live page, ``cnm trace``) reuse them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from cnm.engine import explain_sets
from cnm.engine.lookup import find_container
from cnm.engine.sandbox import netns_name_path
from cnm.engine.services import Services
from cnm.engine.topology import link_labels
from cnm.errors import CnmError
from cnm.firewall import render_nft
from cnm.kernel import facts
from cnm.kernel import netns as ns
from cnm.kernel.api import LinkInfo
from cnm.model.endpoint import EndpointRecord
from cnm.model.network import NetworkRecord
from cnm.model.ports import PortMapping

log = logging.getLogger("cnm.engine")

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class PortPath:
    """One published port and the firewall entries that serve it, as the kernel holds them
    (nftables map elements, or iptables rules with that backend)."""

    protocol: str
    host_ip: str  # "0.0.0.0": every address
    host_port: int
    container_port: int
    rules: tuple[str, ...]  # empty: the kernel holds none (say so, it is a fault, unless ``note``)
    command: str
    note: str = ""  # who serves it when no firewall entry does (cnmd's proxy)


@dataclass(frozen=True, slots=True)
class Attachment:
    """The container on one network: its interface inside, the veth's host end and the
    bridge, as the kernel reports them.  An index of 0 means "not found in the kernel"."""

    network: str
    network_id: str
    driver: str
    ifname: str
    address: str
    gateway: str
    mac: str = ""
    ifindex: int = 0
    iflink: int = 0  # the peer's ifindex: equals host_ifindex for a veth pair
    host_ifname: str = ""
    host_ifindex: int = 0
    host_alias: str = ""
    bridge: str = ""
    bridge_ifindex: int = 0
    ports: tuple[PortPath, ...] = ()
    links: tuple[str, ...] = ()  # "ALIAS -> NAME": legacy --link entries on this network
    commands: Mapping[str, str] = field(default_factory=lambda: _EMPTY)  # "inside", "host", "bridge"
    address6: str = ""  # "": no IPv6 on this network
    gateway6: str = ""
    guard: tuple[str, ...] = ()  # its bridge port's anti-spoofing elements (commands "guard …")
    nat: tuple[str, ...] = ()  # how its network leaves the host, ip and ip6 tables (commands "nat …")


@dataclass(frozen=True, slots=True)
class Explanation:
    container: str
    container_id: str
    running: bool
    network_mode: str
    netns: str = ""  # where cnm bind-mounted the namespace ("": none of its own)
    netns_name: str = ""  # /run/netns/<this>, with cnmd --netns-names
    attachments: tuple[Attachment, ...] = ()
    routes: tuple[facts.Route, ...] = ()
    default_gateway: str = ""
    neighbours: tuple[facts.Neighbour, ...] = ()
    resolv_conf: str = ""
    hosts: str = ""
    conntrack: tuple[str, ...] = ()
    commands: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    problems: tuple[str, ...] = ()  # facts that could not be read, and why
    routes6: tuple[facts.Route, ...] = ()  # read when the container has an IPv6 address
    default_gateway6: str = ""


def enter_command(netns: str) -> str:
    return f"nsenter --net={netns} sh"


class Explainer:
    """Gathers an ``Explanation``; holds the services and how the firewall is set up."""

    def __init__(self, svc: Services, *, firewall_backend: str, firewall_table: str) -> None:
        self._svc = svc
        self._backend = firewall_backend
        self._table = firewall_table

    def netns_name(self, container_name: str, netns: str) -> str:
        """The name ``ip netns`` knows the namespace at ``netns`` by (cnmd --netns-names),
        "" when off, or when that name is not a mount of this namespace."""
        if not self._svc.netns_names or not netns:
            return ""
        path = netns_name_path(self._svc, container_name)
        return os.path.basename(path) if ns.same_netns(path, netns) else ""

    async def explain(self, ref: str) -> Explanation:
        container = find_container(self._svc.state, ref)
        state = self._svc.state
        sandbox = state.sandbox_of(container.id)
        pairs = [
            (state.networks[ep.network_id], ep)
            for ep in sorted(state.endpoints_of_container(container.id), key=lambda e: e.created_seq)
            if ep.network_id in state.networks
        ]
        problems: list[str] = []
        netns = sandbox.key if sandbox is not None and container.running else ""
        inside: dict[str, LinkInfo] = {}
        if netns:
            try:
                inside = {link.name: link for link in await self._svc.kernel.links(netns)}
            except CnmError as exc:
                problems.append(f"interfaces inside: {exc}")
        host: dict[str, LinkInfo] = {}
        try:
            host = {link.name: link for link in await self._svc.kernel.links()}
        except CnmError as exc:
            problems.append(f"host interfaces: {exc}")
        by_index = {link.index: link for link in host.values()}
        port_rules = await self._port_rules([ep for _, ep in pairs], problems)
        attachments = tuple(
            [
                await self._sets(
                    self._attachment(
                        network, ep, inside, host, by_index, port_rules, netns, container.config.links
                    ),
                    network,
                    ep,
                    problems,
                )
                for network, ep in pairs
            ]
        )
        commands: dict[str, str] = {}
        routes: list[facts.Route] = []
        routes6: list[facts.Route] = []
        neighbours: list[facts.Neighbour] = []
        v6 = any(a.address6 for a in attachments)
        if netns:
            commands["enter"] = enter_command(netns)
            commands["routes"] = facts.shown(facts.ROUTES_ARGV, netns)
            commands["neighbours"] = facts.shown(facts.NEIGHBOURS_ARGV, netns)
            if v6:
                commands["routes6"] = facts.shown(facts.ROUTES6_ARGV, netns)
                commands["neighbours6"] = facts.shown(facts.NEIGHBOURS6_ARGV, netns)
            for family in (4, 6) if v6 else (4,):
                try:
                    (routes6 if family == 6 else routes).extend(await facts.routes(netns, family))
                except CnmError as exc:
                    problems.append(f"routes (IPv{family}): {exc}")
                try:
                    neighbours += await facts.neighbours(netns, family)
                except CnmError as exc:
                    problems.append(f"neighbours (IPv{family}): {exc}")
        name = self.netns_name(container.name, netns)
        if name:
            commands["netns name"] = f"ip netns exec {name} sh"
        root = self._svc.runtime.container_dir(container.id)
        files: dict[str, str] = {}
        for key in ("resolv.conf", "hosts"):
            path = os.path.join(root, key)
            commands[key] = f"cat {path}"
            try:
                files[key] = await facts.read_text(path)
            except CnmError as exc:
                problems.append(f"{key}: {exc}")
        conntrack: list[str] = []
        addresses = [a.address.split("/")[0] for a in attachments if a.address]
        addresses += [a.address6.split("/")[0] for a in attachments if a.address6]
        for ip in addresses:
            commands[f"conntrack {ip}"] = facts.conntrack_shown(ip)
            try:
                conntrack += [e for e in await facts.conntrack_entries(ip) if e not in conntrack]
            except CnmError as exc:
                problems.append(f"conntrack: {exc}")
        gateway = next((r.gateway for r in routes if r.dst == "default"), "")
        gateway6 = next((r.gateway for r in routes6 if r.dst == "default"), "")
        return Explanation(
            container=container.name,
            container_id=container.id,
            running=container.running,
            network_mode=str(container.config.network_mode),
            netns=netns,
            netns_name=name,
            attachments=attachments,
            routes=tuple(routes),
            default_gateway=gateway,
            neighbours=tuple(neighbours),
            resolv_conf=files.get("resolv.conf", ""),
            hosts=files.get("hosts", ""),
            conntrack=tuple(conntrack),
            commands=MappingProxyType(commands),
            problems=tuple(problems),
            routes6=tuple(routes6),
            default_gateway6=gateway6,
        )

    def _attachment(
        self,
        network: NetworkRecord,
        ep: EndpointRecord,
        inside: Mapping[str, LinkInfo],
        host: Mapping[str, LinkInfo],
        by_index: Mapping[int, LinkInfo],
        port_rules: Mapping[str, list[tuple[int, str, str]]],
        netns: str,
        legacy_links: tuple[str, ...],
    ) -> Attachment:
        link = inside.get(ep.ifname)
        peer = host.get(ep.host_ifname) if ep.host_ifname else None
        bridge = by_index.get(peer.master) if peer is not None and peer.master else None
        commands: dict[str, str] = {}
        if netns and ep.ifname:
            commands["inside"] = facts.shown(["ip", "-d", "link", "show", ep.ifname], netns)
            commands["addresses"] = facts.shown(["ip", "addr", "show", ep.ifname], netns)
        if ep.host_ifname:
            commands["host"] = f"ip -d link show {ep.host_ifname}"
        bridge_name = (
            bridge.name if bridge is not None else network.bridge_name if network.driver == "bridge" else ""
        )
        if bridge_name:
            commands["bridge"] = f"bridge link show master {bridge_name}"
        requested = list(ep.request.links)
        if network.is_default_bridge:
            requested += list(legacy_links)
        ports = tuple(self._port_path(pm, ep, port_rules.get(ep.id, [])) for pm in ep.ports)
        return Attachment(
            network=network.name,
            network_id=network.id,
            driver=network.driver,
            ifname=ep.ifname,
            address=str(ep.address) if ep.address is not None else "",
            gateway=str(ep.gateway) if ep.gateway is not None else "",
            mac=link.mac if link is not None else ep.mac,
            ifindex=link.index if link is not None else 0,
            iflink=link.iflink if link is not None else 0,
            host_ifname=ep.host_ifname,
            host_ifindex=peer.index if peer is not None else 0,
            host_alias=peer.alias if peer is not None else "",
            bridge=bridge_name,
            bridge_ifindex=bridge.index if bridge is not None else 0,
            ports=ports,
            links=link_labels(requested),
            commands=MappingProxyType(commands),
            address6=str(ep.address6) if ep.address6 is not None else "",
            gateway6=str(ep.gateway6) if ep.gateway6 is not None else "",
        )

    async def _sets(
        self, a: Attachment, network: NetworkRecord, ep: EndpointRecord, problems: list[str]
    ) -> Attachment:
        """``a`` with its port's guard elements and its network's NAT elements (nftables set
        elements, or the iptables backend's nat rules)."""
        if network.driver != "bridge":
            return a
        commands = dict(a.commands)
        found: dict[str, list[str]] = {}
        for key in ("guard", "nat"):
            try:
                if key == "guard":
                    found[key], listed = await explain_sets.guard(self._table, ep)
                elif self._backend == "iptables":
                    found[key], listed = await explain_sets.nat_iptables(network)
                else:
                    found[key], listed = await explain_sets.nat(self._table, network)
            except CnmError as exc:
                problems.append(f"{key} elements: {exc}")
                continue
            for command in listed:  # "nft list set FAMILY TABLE SET" as "KEY FAMILY SET"
                words = command.split()
                commands[f"{key} {words[3]} {words[5]}" if words[0] == "nft" else f"{key} {words[0]}"] = (
                    command
                )
        guard, nat = tuple(found.get("guard", ())), tuple(found.get("nat", ()))
        return replace(a, guard=guard, nat=nat, commands=MappingProxyType(commands))

    # -- published ports ----------------------------------------------------------------

    async def _port_rules(
        self, endpoints: list[EndpointRecord], problems: list[str]
    ) -> dict[str, list[tuple[int, str, str]]]:
        """{endpoint id: [(IP version, rule text, command that lists it)]} of the endpoints'
        published ports, read back from the kernel (the ``ip`` and ``ip6`` tables, or
        iptables and ip6tables) and matched by their owner comment."""
        wanted = {ep.id for ep in endpoints if ep.ports}
        families = (4, 6) if any(ep.address6 is not None for ep in endpoints if ep.ports) else (4,)
        out: dict[str, list[tuple[int, str, str]]] = {}
        for family in families if wanted else ():
            try:
                if self._backend == "iptables":
                    for ep_id in wanted:
                        command = f"{facts.iptables_save(family)} -t nat | grep -- 'cnm:{ep_id}'"
                        rules = await facts.iptables_rules("nat", f"cnm:{ep_id}", family)
                        out.setdefault(ep_id, []).extend((family, rule, command) for rule in rules)
                    continue
                table = render_nft.FAMILY6 if family == 6 else render_nft.FAMILY
                for map_name in render_nft.port_maps(table):
                    command = f"nft list map {table} {self._table} {map_name}"
                    objects = await facts.nft_json(["list", "map", table, self._table, map_name])
                    for key, comment, data in _map_elements(objects):
                        owner = comment.split(" ", 1)[0].removeprefix("cnm:")
                        if owner in wanted:
                            out.setdefault(owner, []).append(
                                (family, f'{key} comment "{comment}" : {data}  (map {map_name})', command)
                            )
            except CnmError as exc:
                problems.append(f"published ports (IPv{family}): {exc}")
        return out

    @staticmethod
    def _port_path(pm: PortMapping, ep: EndpointRecord, rules: list[tuple[int, str, str]]) -> PortPath:
        """The port mapping ``pm`` and those of ``rules`` (of its host address's IP version)
        whose key is its host port.  A v6 binding of a container without a v6 address, and
        the host's own [::1], are cnmd's proxy's: no firewall entry is expected then."""
        family = pm.host_ip.version
        same = [(text, cmd) for version, text, cmd in rules if version == family]
        mine = [(text, cmd) for text, cmd in same if _serves(text, pm)]
        command = mine[0][1] if mine else (same[0][1] if same else "")
        note = ""
        if family == 6 and (ep.address6 is None or pm.host_ip.is_loopback) and not mine:
            target = ep.address.ip if ep.address is not None else "the container"
            note = f"cnmd's proxy carries it to {target}:{pm.container_port} (no IPv6 DNAT for it)"
        return PortPath(
            note=note,
            protocol=pm.protocol,
            host_ip=str(pm.host_ip),
            host_port=pm.host_port,
            container_port=pm.container_port,
            rules=tuple(text for text, _ in mine),
            command=command,
        )


def _serves(text: str, pm: PortMapping) -> bool:
    """Whether rule or element ``text`` is the one for ``pm``'s host port."""
    if text.startswith("-A "):  # iptables: "--dport 8080" (or a range "8000:8010")
        words = text.split()
        for i, word in enumerate(words[:-1]):
            if word == "--dport":
                first, _, last = words[i + 1].partition(":")
                return int(first) <= pm.host_port <= int(last or first) and f"-p {pm.protocol}" in text
        return False
    key = text.split(" comment ", 1)[0].split(" . ")
    if len(key) < 2 or key[-2] != pm.protocol:
        return False
    first, _, last = key[-1].partition("-")
    return int(first) <= pm.host_port <= int(last or first)


def _map_elements(objects: list[dict[str, object]]) -> list[tuple[str, str, str]]:
    """(key, comment, data) of a map's elements in ``nft -j list map``'s objects."""
    found = []
    for obj in objects:
        body = obj.get("map")
        if not isinstance(body, dict):
            continue
        for pair in body.get("elem", ()) or ():
            key, data = pair if isinstance(pair, list) and len(pair) == 2 else (pair, "")
            comment = ""
            if isinstance(key, dict) and "elem" in key:
                comment = str(key["elem"].get("comment", ""))
                key = key["elem"]["val"]
            found.append((render_nft.port_key_from_json(key), comment, render_nft.port_data_from_json(data)))
    return found
