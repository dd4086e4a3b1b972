"""``cnm trace SRC DST[:PORT][/tcp|udp|icmp]``: the path a packet takes, hop by hop, from
the kernel's real state, and with ``--live`` what one real probe met.

Without ``--live`` nothing is sent: the route lookup is the kernel's own (``ip route get``
in SRC's namespace, then on the host as a packet arriving on the bridge or uplink), the
veth and bridge come from the endpoint that owns that interface, the neighbour from the
ARP table, and each nftables hook (prerouting, input or forward, postrouting; output for
the host's own packets) is evaluated on the live ruleset of cnm's table by
``firewall/trace_nft``.  Traffic between two containers of one bridge is switched, never
routed: no IP hook sees it, and only the ports' isolation (icc=false) can stop it.

With ``--live`` (from a container or the host; nftables backend or iptables-nft), a table
of cnm's own marks the probe's packets with ``nftrace`` for as long as one probe takes;
``nft monitor trace`` is read meanwhile and each line printed with cnm's names.

Every verdict is said in cnm's names: networks by name with their bridge, containers by
name with their address, published ports as ``8080/tcp``.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, replace
from ipaddress import ip_address

from cnm.engine.explain import Explainer
from cnm.engine.trace_path import Done, End, Hop, Target, parse_target
from cnm.engine.trace_walk import Walk
from cnm.errors import CnmError, InvalidArgument
from cnm.firewall.trace_nft import host_port
from cnm.kernel import facts, tracing

_LIVE = asyncio.Lock()


@dataclass(frozen=True, slots=True)
class Trace:
    """The path of one packet.  ``verdict``: "delivered", "dropped", "no route", or "routed"
    (delivered as far as the walk can tell: the iptables backend's rules are not evaluated);
    ``reason`` says why in cnm's names.  With ``--live``: ``live`` the monitor's lines
    (names substituted), ``probe`` what the sender saw, ``live_verdict`` where it was
    dropped (and whether the walk expected it), or why no hook saw it."""

    source: str
    destination: str
    protocol: str
    port: int | None
    saddr: str
    daddr: str
    verdict: str
    reason: str
    hops: tuple[Hop, ...] = ()
    live: tuple[str, ...] = ()
    probe: str = ""
    live_verdict: str = ""
    problems: tuple[str, ...] = ()


class Tracer(Explainer):
    """Traces packets; an ``Explainer`` (the services, how the firewall is set up) that
    also walks paths."""

    async def trace(
        self, source: str, destination: str, live: bool = False, family: int | None = None
    ) -> Trace:
        """The path from ``source`` to ``destination`` (see the module), over IPv``family``
        (None: IPv6 when an end is an IPv6 address, else IPv4)."""
        src_t = parse_target(source, destination=False)
        dst_t = parse_target(destination, destination=True)
        literal = {_version(t.ref) for t in (src_t, dst_t)} - {0}
        if family not in (None, 4, 6):
            raise InvalidArgument(f"invalid IP version {family!r}: expected 4 or 6")
        if len(literal) > 1 or (family is not None and literal and literal != {family}):
            raise InvalidArgument(f"trace {source} -> {destination}: the ends are of different IP versions")
        if live:
            await self._check_live()
        run = Walk(self._svc, self._backend, self._table)
        run.family = family or (literal.pop() if literal else 4)
        src = await run.resolve(src_t.ref, None)
        dst = await run.resolve(dst_t.ref, src)
        if live and src.kind not in ("container", "host"):
            raise InvalidArgument(
                f"--live sends its probe from a container or the host, not from {src_t.ref!r}"
            )
        if dst.address is None:
            raise InvalidArgument(f"{dst_t.ref!r} has no IPv{run.family} address to trace to")
        try:
            await run.walk(src, dst, dst_t)
            verdict, reason = run.verdict, run.reason
        except Done as done:
            verdict, reason = done.verdict, done.reason
        if verdict == "delivered" and run.unevaluated:
            verdict = "routed"
            reason = (
                f"{reason + '; ' if reason else ''}the {self._backend} backend's rules were not evaluated "
                "(nftables only): --live shows what they do"
            )
        result = Trace(
            source=src.label,
            destination=dst.label + (f":{dst_t.port}" if dst_t.port else "") + f"/{dst_t.protocol}",
            protocol=dst_t.protocol,
            port=dst_t.port,
            saddr=str(run.saddr or ""),
            daddr=str(dst.address),
            verdict=verdict,
            reason=reason,
            hops=tuple(run.hops),
            problems=tuple(run.problems),
        )
        if live:
            result = await self._live(run, result, src, dst, dst_t)
        return result

    async def _check_live(self) -> None:
        if self._backend == "nftables":
            return
        try:
            version = await facts.run(["iptables", "-V"])
        except CnmError as exc:
            raise InvalidArgument(f"--live: cannot tell which iptables this is: {exc}") from exc
        if "nf_tables" not in version:
            raise InvalidArgument(
                "--live needs the nftables backend or iptables-nft: this cnmd uses iptables-legacy "
                f"({version.strip()}), whose rules nft monitor trace cannot see"
            )

    async def _live(self, run: Walk, result: Trace, src: End, dst: End, t: Target) -> Trace:
        """``result`` with what one real probe met (see the module)."""
        assert dst.address is not None
        if src.kind == "container":
            r = await tracing.route_get(str(dst.address), src.netns)
        else:
            r = await tracing.route_get(str(dst.address))
        if r.kind == "unreachable":
            return replace(
                result,
                probe=f"not sent: {src.label} has no route to {dst.address} ({r.error})",
                live_verdict="no route",
            )
        loopback = ip_address("::1" if dst.address.version == 6 else "127.0.0.1")
        saddr = ip_address(r.src) if r.src else (src.address or loopback)
        sport = random.randint(33000, 60999) if t.protocol != "icmp" else None
        spec = tracing.ProbeSpec(saddr, dst.address, t.protocol, t.port, sport)
        async with _LIVE, tracing.trace_table(spec):  # one at a time: one marking table
            async with tracing.monitor_trace() as lines:
                probe = await tracing.send_probe(spec, src.netns or None)
        events = tracing.parse_trace_lines(lines)
        shown: list[str] = []
        dropped = last_packet = ""
        for e in events:
            where = f"{e.family} {e.table} {e.chain}"
            if e.kind == "packet":
                summary = tracing.packet_summary(e.text)
                if summary != last_packet:  # each chain repeats it: shown when it changed
                    shown.append(run.names_in(f"[{e.family} {e.chain}] packet: {summary}"))
                    last_packet = summary
                continue
            if e.table == tracing.TRACE_TABLE:
                continue  # the marking rule itself
            if e.kind == "rule":
                shown.append(run.names_in(f"{where}: {e.text} -> {e.verdict}"))
            else:
                shown.append(run.names_in(f"{where}: {e.kind} {e.verdict}"))
            if e.verdict == "drop" and not dropped:
                what = f"by the rule {e.text}" if e.kind == "rule" else "by its policy"
                dropped = run.names_in(f"dropped in {e.family} {e.table} chain {e.chain} {what}")
        if dropped:
            expected = (
                f"as expected: {result.reason}"
                if result.verdict == "dropped"
                else "the walk above did not evaluate these rules"
                if result.verdict == "routed"
                else f"not what cnm expected ({result.verdict}): the kernel differs from the walk above"
            )
            verdict = f"{dropped}; {expected}"
        elif not events:
            verdict = await self._unseen(src, r, result)
        else:
            verdict = "passed every hook the trace saw"
        return replace(
            result,
            live=tuple(shown),
            probe=f"{t.protocol} probe {host_port(saddr, sport)} -> {host_port(dst.address, t.port)}: {probe.outcome}",
            live_verdict=verdict,
        )

    async def _unseen(self, src: End, r: tracing.RouteLookup, result: Trace) -> str:
        """Why no hook saw the probe: it never left SRC (its ARP went unanswered), or a
        bridge switched it without any netfilter hook."""
        nexthop = r.gateway or r.dst
        state = ""
        if src.kind == "container":
            try:
                state = next(
                    (
                        n.state
                        for n in await facts.neighbours(src.netns)
                        if n.ip == nexthop and n.dev == r.dev
                    ),
                    "",
                )
            except CnmError:
                state = ""
        why = f"; {result.reason}" if result.verdict == "dropped" else ""
        if state and ("FAILED" in state or "INCOMPLETE" in state):
            return (
                f"the probe never left {src.label}: its ARP request for {nexthop} on {r.dev} got no answer "
                f"(neighbour {state}){why}"
            )
        return f"no hook of the host saw the probe: it was switched by a bridge (layer 2) or never left {src.label}{why}"


class Tracing:
    """The controller's ``trace`` verb (a mixin: the controller holds a ``Tracer``)."""

    _explainer: Tracer

    async def trace(
        self, source: str, destination: str, live: bool = False, family: int | None = None
    ) -> Trace:
        """A packet's path from ``source`` to ``destination`` (see the module)."""
        return await self._explainer.trace(source, destination, live, family)


def _version(ref: str) -> int:
    """4 or 6 when ``ref`` is an IP address, else 0."""
    try:
        return ip_address(ref).version
    except ValueError:
        return 0
