"""The walk of ``cnm trace`` without ``--live``: hop by hop from SRC, each fact read from
the kernel (``ip route get`` in SRC's namespace and on the host, the ARP tables, the
ports' isolation) and each nftables hook evaluated on cnm's live table by
``firewall/trace_nft``; each verdict said in cnm's names.
"""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address

from cnm.engine.lookup import find_container
from cnm.engine.naming import parse_link
from cnm.engine.trace_path import Done, End, Hop, Names, Target, comment_label
from cnm.errors import CnmError
from cnm.firewall import trace_nft
from cnm.firewall.render_nft import USER_CHAIN
from cnm.firewall.trace_nft import HookResult, IPAddress, Packet, Step
from cnm.kernel import facts, tracing
from cnm.model.endpoint import EndpointRecord
from cnm.model.network import NetworkRecord

BR_NETFILTER = "net.bridge.bridge-nf-call-iptables"  # bridged IPv4 also meets the IP hooks
BR_NETFILTER6 = "net.bridge.bridge-nf-call-ip6tables"  # and bridged IPv6


class Walk(Names):
    """The path, hop by hop (``walk``); ``verdict`` and ``reason`` once it ran to its end."""

    # -- the walk -------------------------------------------------------------------------

    async def walk(self, src: End, dst: End, t: Target) -> None:
        assert dst.address is not None
        daddr = dst.address
        if src.kind == "container":
            await self.from_container(src, dst, t, daddr)
        elif src.kind == "host":
            await self.from_host(src, dst, t, daddr)
        else:
            up = await self.uplink()
            assert src.address is not None
            iif = up.dev
            if src.kind == "address":
                r = await tracing.route_get(str(src.address))
                iif = r.dev or iif
            self.saddr = src.address
            self.hops.append(
                Hop("arrive", f"arrives on the host's {iif} from {src.label}", f"ip -d link show {iif}")
            )
            await self.on_host(iif, self.packet(src.address, daddr, t, iif=iif), dst)

    def packet(self, saddr: IPAddress, daddr: IPAddress, t: Target, **kw: object) -> Packet:
        proto = "ipv6-icmp" if t.protocol == "icmp" and daddr.version == 6 else t.protocol
        return Packet(saddr=saddr, daddr=daddr, l4proto=proto, dport=t.port, **kw)  # type: ignore[arg-type]

    async def from_container(self, src: End, dst: End, t: Target, daddr: IPAddress) -> None:
        r = await tracing.route_get(str(daddr), src.netns)
        self.saddr = src.address  # until the route names its source
        if r.kind == "unreachable":
            self.hops.append(
                Hop("route", f"in {src.container}'s namespace: no route to {daddr} ({r.error})", r.command)
            )
            internal = [
                self.networks[e.network_id].name
                for e in src.endpoints
                if self.networks.get(e.network_id) and self.networks[e.network_id].internal
            ]
            if internal and len(internal) == len(src.endpoints):
                raise Done(
                    "no route",
                    f"--internal: no route: {src.container} is only on internal network(s) "
                    f"{', '.join(repr(n) for n in internal)}, which get no default route, so {daddr} is unreachable",
                )
            raise Done("no route", f"no route from {src.container} to {daddr}: {r.error}")
        via = f" via {r.gateway}" if r.gateway else " (on link)"
        self.hops.append(
            Hop("route", f"in {src.container}'s namespace: {daddr}{via} dev {r.dev} src {r.src}", r.command)
        )
        ep = next((e for e in src.endpoints if e.ifname == r.dev), None)
        self.saddr = ip_address(r.src) if r.src else (self.ep_ip(ep) if ep else None)
        if ep is None or ep.network_id not in self.networks:
            raise Done("delivered", f"leaves {src.container} by {r.dev}, an interface cnm does not manage")
        network = self.networks[ep.network_id]
        bridge = network.bridge_name
        self.hops.append(
            Hop(
                "veth",
                f"out of {src.container}'s {r.dev} into its host end {ep.host_ifname}, a port of "
                f"{self.bridge_text(bridge)}",
                f"ip -d link show {ep.host_ifname}",
            )
        )
        nexthop = r.gateway or str(daddr)
        await self.neighbour(nexthop, src.netns, r.dev, f"{src.container}'s")
        assert self.saddr is not None
        if not r.gateway and str(daddr) != self.gateway_of(network):
            await self.switched(src, ep, network, daddr, t)
            return
        await self.on_host(bridge, self.packet(self.saddr, daddr, t, iif=bridge), dst)

    async def switched(
        self, src: End, ep: EndpointRecord, network: NetworkRecord, daddr: IPAddress, t: Target
    ) -> None:
        """A frame between two ports of one bridge: only isolation (icc=false) can stop it."""
        bridge = network.bridge_name
        peer = next(
            (e for e in self.svc.state.endpoints_of_network(network.id) if self.ep_ip(e) == daddr),
            None,
        )
        if peer is None:
            raise Done(
                "dropped",
                f"no container of {self.bridge_text(bridge)} has {daddr}: nothing answers "
                f"{'NDP' if self.family == 6 else 'ARP'} for it there",
            )
        name = self.container_name(peer)
        both = []
        for veth in (ep.host_ifname, peer.host_ifname):
            try:
                both.append(await tracing.port_isolated(veth))
            except CnmError as exc:
                self.problems.append(f"isolation of {veth}: {exc}")
                both.append(False)
        command = f"bridge -d link show dev {ep.host_ifname}; bridge -d link show dev {peer.host_ifname}"
        link = self.link_note(src, name)
        if all(both):
            self.hops.append(
                Hop(
                    "bridge",
                    f"{bridge}: ports {ep.host_ifname} and {peer.host_ifname} are both isolated "
                    f"(icc=false): the bridge forwards nothing between them",
                    command,
                )
            )
            raise Done(
                "dropped",
                f"dropped by icc=false: {self.bridge_text(bridge)} isolates its ports, so {src.container} "
                f"may not reach {name} ({daddr}){link}",
            )
        sysctl = BR_NETFILTER6 if self.family == 6 else BR_NETFILTER
        nf = sysctl in self.bridge_nf
        how = (
            f"with br_netfilter on ({sysctl}=1) the IP hooks see it too, as routed from {bridge} to {bridge}"
            if nf
            else "layer 2: no IP hook of the host sees it"
        )
        self.hops.append(
            Hop(
                "bridge",
                f"{bridge} switches the frame from {ep.host_ifname} to {peer.host_ifname} ({how})",
                command,
            )
        )
        if nf:
            p = self.packet(self.saddr or daddr, daddr, t, iif=bridge, oif=bridge)
            await self.hook("prerouting", p)
            await self.hook("forward", p)
            await self.hook("postrouting", p)
        self.hops.append(Hop("deliver", f"into {name}'s {peer.ifname} ({daddr})"))
        self.verdict = "delivered"
        self.reason = f"accepted: {src.container} and {name} share network '{network.name}'{link}"

    def link_note(self, src: End, target: str) -> str:
        """How a legacy ``--link`` from ``src`` to ``target`` takes part, if there is one."""
        try:
            container = find_container(self.svc.state, src.container)
        except CnmError:
            return ""
        links = list(container.config.links) + [link for e in src.endpoints for link in e.request.links]
        for value in links:
            try:
                name, alias = parse_link(value)
            except CnmError:
                continue
            if name.lstrip("/") == target:
                return (
                    f"; the --link {name.lstrip('/')}:{alias} names {target} '{alias}' in "
                    f"{src.container}'s /etc/hosts (the link's rule is the bridge's: cnm adds no firewall rule for it)"
                )
        return ""

    async def neighbour(self, ip: str, netns: str | None, dev: str, whose: str) -> None:
        command = facts.shown(["ip", "neigh", "show", ip, "dev", dev], netns)
        try:
            entries = [n for n in await facts.neighbours(netns, self.family) if n.ip == ip and n.dev == dev]
        except CnmError as exc:
            self.problems.append(f"neighbours: {exc}")
            return
        table = "neighbour (NDP)" if self.family == 6 else "ARP"
        if entries and entries[0].mac:
            text = f"{whose} {table} table: {ip} is at {entries[0].mac} ({entries[0].state.lower()})"
        else:
            text = f"{whose} {table} table has no entry for {ip} yet: the kernel asks for it on {dev}"
        self.hops.append(Hop("neighbour", text, command))

    async def from_host(self, src: End, dst: End, t: Target, daddr: IPAddress) -> None:
        r = await tracing.route_get(str(daddr))
        if r.kind == "unreachable":
            self.hops.append(Hop("route", f"on the host: no route to {daddr} ({r.error})", r.command))
            raise Done("no route", f"the host has no route to {daddr}: {r.error}")
        self.hops.append(Hop("route", f"on the host: {daddr} {r.kind} dev {r.dev} src {r.src}", r.command))
        self.saddr = ip_address(r.src or ("::1" if self.family == 6 else "127.0.0.1"))
        p = self.packet(self.saddr, daddr, t, oif=r.dev, local_daddr=r.kind == "local")
        out = await self.hook("output", p)
        if out is not None:
            p = out.packet or p
        if p.daddr != daddr:  # DNATed: routed again
            r = await tracing.route_get(str(p.daddr))
            self.hops.append(Hop("route", f"on the host, after DNAT: {p.daddr} dev {r.dev}", r.command))
            p = replace(p, oif=r.dev, local_daddr=r.kind == "local")
        if r.kind == "local":
            self.hops.append(Hop("deliver", f"to the host itself ({p.daddr}, over lo)"))
            self.reason = "delivered to the host's own stack (cnm keeps no input rules)"
            return
        await self.leave(p, r, dst)

    async def on_host(self, iif: str, p: Packet, dst: End) -> None:
        """A packet arriving on the host's ``iif``: prerouting, routing, then input or
        forward and postrouting."""
        first = await tracing.route_get(str(p.daddr))
        p = replace(p, local_daddr=first.kind == "local")
        pre = await self.hook("prerouting", p)
        if pre is not None and pre.packet is not None:
            p = pre.packet
        r = await tracing.route_get(str(p.daddr), None, str(p.saddr), iif)
        if r.kind == "unreachable":
            plain = await tracing.route_get(str(p.daddr))
            if plain.kind != "unreachable":
                self.problems.append(f"{r.command}: {r.error} (showing the route as sent from the host)")
                r = plain
        if r.kind == "unreachable":
            self.hops.append(Hop("route", f"on the host: no route to {p.daddr} ({r.error})", r.command))
            raise Done("no route", f"the host has no route to {p.daddr}: {r.error}")
        if r.kind == "local":
            self.hops.append(
                Hop("route", f"on the host: {p.daddr} is one of its own addresses (local)", r.command)
            )
            await self.hook("input", p)
            self.hops.append(Hop("deliver", f"to the host itself ({p.daddr})"))
            self.reason = f"delivered to the host ({p.daddr}); cnm keeps no input rules"
            return
        via = f" via {r.gateway}" if r.gateway else ""
        self.hops.append(Hop("route", f"on the host: {p.daddr}{via} dev {r.dev}", r.command))
        p = replace(p, oif=r.dev)
        await self.hook("forward", p)
        await self.leave(p, r, dst)

    async def leave(self, p: Packet, r: tracing.RouteLookup, dst: End) -> None:
        post = await self.hook("postrouting", p)
        oif = r.dev
        network = self.by_bridge.get(oif)
        if network is None:
            nexthop = r.gateway or str(p.daddr)
            await self.neighbour(nexthop, None, oif, "the host's")
            self.hops.append(Hop("deliver", f"out of the host by {oif} towards {self.addr_text(p.daddr)}"))
            masq = " (masqueraded)" if post is not None and post.nat == "masquerade" else ""
            self.reason = self.reason or f"leaves the host by {oif}{masq} towards {p.daddr}"
            return
        peer = next(
            (e for e in self.svc.state.endpoints_of_network(network.id) if self.ep_ip(e) == p.daddr),
            None,
        )
        await self.neighbour(str(p.daddr), None, oif, "the host's")
        if peer is None:
            raise Done("dropped", f"no container of {self.bridge_text(oif)} has {p.daddr}")
        name = self.container_name(peer)
        self.hops.append(
            Hop(
                "bridge",
                f"{self.bridge_text(oif)} forwards to port {peer.host_ifname}",
                f"bridge fdb show br {oif}",
            )
        )
        self.hops.append(Hop("deliver", f"into {name}'s {peer.ifname} ({p.daddr})"))
        self.reason = self.reason or f"delivered to {name} ({p.daddr})"

    # -- hooks ----------------------------------------------------------------------------

    async def ruleset(self) -> trace_nft.Ruleset | None:
        if self.backend != "nftables":
            return None
        if self._ruleset is None:
            family = "ip6" if self.family == 6 else "ip"
            self._ruleset = trace_nft.parse_ruleset(
                await facts.nft_json(["list", "table", family, self.table])
            )
        return self._ruleset

    async def hook(self, hook: str, p: Packet) -> HookResult | None:
        """Evaluate ``hook`` on the live ruleset, add its hop; a drop ends the walk."""
        command = f"nft list table {'ip6' if self.family == 6 else 'ip'} {self.table}"
        try:
            rs = await self.ruleset()
        except CnmError as exc:
            self.problems.append(f"ruleset: {exc}")
            return None
        if rs is None:
            self.unevaluated = True
            if hook == "forward":
                self.problems.append(
                    f"the {self.backend} backend's rules are not evaluated (nftables only): see iptables-save"
                )
            return None
        result = trace_nft.evaluate_hook(rs, hook, p)
        if not result.chains:
            if hook == "input":
                self.hops.append(
                    Hop(hook, "input: cnm has no chain here (the host's own rules decide)", command)
                )
            return result
        rules = tuple(self.step_text(s) for s in result.steps)
        text = self.hook_text(hook, result, p)
        self.hops.append(Hop(hook, text, command, rules))
        if result.verdict == "drop":
            raise Done("dropped", text)
        if result.nat == "dnat" and hook in ("prerouting", "output"):
            self.reason = text
        return result

    def step_text(self, s: Step) -> str:
        outcome = s.action or ("matched" if s.matched else (s.note or "no match"))
        names = ""
        if s.elements:
            names = " [" + "; ".join(dict.fromkeys(comment_label(c) for c in s.elements)) + "]"
        return f"{s.chain} #{s.handle}: {s.text} -> {outcome}{names}"

    def hook_text(self, hook: str, r: HookResult, p: Packet) -> str:
        step = r.decided_by
        iif = self.bridge_text(p.iif) if p.iif else "the host"
        oif = self.bridge_text(p.oif) if p.oif else ""
        if r.verdict == "drop" and step is not None:
            if step.chain == USER_CHAIN:
                return f"{hook}: dropped by your rule in chain user: {step.text}"
            if "@internal" in step.text:
                n = self.by_bridge.get(p.iif)
                return (
                    f"{hook}: dropped by --internal: network '{n.name if n else p.iif}' (bridge {p.iif}) "
                    f"may not send out of its bridge (to {p.oif})"
                )
            if "@bridges" in step.text and step.chain == "forward":
                into = self.by_bridge.get(p.oif)
                into_text = f"network '{into.name}'" if into else p.oif
                if p.iif in self.by_bridge:
                    return (
                        f"{hook}: dropped by isolation: network '{self.by_bridge[p.iif].name}' (bridge {p.iif}) "
                        f"may not forward to {into_text} (bridge {p.oif}) [rule: {step.text}]"
                    )
                return (
                    f"{hook}: dropped by isolation: nothing from {p.iif} enters {into_text} (bridge {p.oif}) "
                    f"but published ports and replies [rule: {step.text}]"
                )
            if "127.0.0.0/8" in step.text:
                return f"{hook}: dropped: 127.0.0.0/8 arriving on {p.iif} is forged [rule: {step.text}]"
            return f"{hook}: dropped in chain {step.chain} by: {step.text}"
        if r.verdict == "drop":
            return f"{hook}: dropped by the policy of chain {r.policy_chain}"
        if r.nat == "dnat" and step is not None and r.packet is not None:
            label = ", ".join(comment_label(c) for c in step.elements) or "a rule"
            target = self.addr_text(r.packet.daddr)
            name = target.split(" (")[0]
            return (
                f"{hook}: DNAT to {name} ({trace_nft.host_port(r.packet.daddr, r.packet.dport)}) by the published port "
                f"{p.dport}/{p.l4proto} ({label})"
            )
        if r.nat == "masquerade":
            n = self.by_bridge.get(p.iif) or self.by_bridge.get(p.oif)
            who = f"network '{n.name}'" if n else str(p.saddr)
            return f"{hook}: masquerade: {who} leaves by {p.oif} (source rewritten to {p.oif}'s address)"
        if step is not None:
            if "ct status dnat" in step.text and step.chain == "forward":
                return f"{hook}: accepted: a published port may enter {oif} [rule: {step.text}]"
            if "@icc" in step.text:
                return f"{hook}: accepted by icc on {oif} [rule: {step.text}]"
            if "established" in step.text:
                return f"{hook}: accepted as a reply (ct state established,related)"
            return f"{hook}: accepted by {step.chain}: {step.text}"
        if hook == "forward":
            return f"{hook}: accepted by the policy of chain {r.policy_chain}: nothing of cnm's stops {iif} -> {p.oif}"
        if hook == "postrouting":
            return f"{hook}: no NAT (the source stays {p.saddr})"
        return f"{hook}: no rule of cnm's applies"
