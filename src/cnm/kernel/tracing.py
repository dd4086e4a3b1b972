"""Kernel queries and actions for ``cnm trace``: the kernel's own route lookup, a bridge
port's isolation, and for ``--live`` one real probe and ``nft monitor trace``.

Like ``facts``, every query runs the command a person would type (``ip -j route get …``)
and returns it beside the answer (``shown``).  The live parts change one thing only: a
table of cnm's own (``cnm-trace``) that marks the probe's packets with ``nftrace``, always
removed again (``trace_table``), whatever happens meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import re
import shutil
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from cnm.errors import InvalidArgument, KernelError, Unavailable
from cnm.kernel import facts
from cnm.kernel import netns as ns
from cnm.kernel.cmdlog import log_script

TRACE_TABLE = "cnm-trace"
TRACE_FAMILIES = ("ip", "ip6", "bridge")  # a probe's tables: its IP version's and the bridge's
TRACE_COMMENT = "cnm trace --live: marks one probe, removed when it ends"
TRACE_PRIORITY = -350  # ahead of every cnm chain (raw is -300) and conntrack (-200)


@dataclass(frozen=True, slots=True)
class RouteLookup:
    """The answer of ``ip route get``: ``kind`` "unicast", "local" (one of the namespace's
    own addresses), or "unreachable" (``error`` says why)."""

    dst: str
    kind: str = "unicast"
    dev: str = ""
    gateway: str = ""
    src: str = ""
    error: str = ""
    command: str = ""


def route_get_argv(dst: str, src: str = "", iif: str = "") -> list[str]:
    argv = ["ip", "route", "get", dst]
    if iif:  # as a packet arriving on iif from src (the input route), not one sent from here
        argv += ["from", src, "iif", iif]
    return argv


async def route_get(dst: str, netns: str | None = None, src: str = "", iif: str = "") -> RouteLookup:
    """The route the kernel of ``netns`` picks for ``dst`` (arriving on ``iif`` from
    ``src`` when given).  No route is an answer ("unreachable"), not an error."""
    argv = route_get_argv(dst, src, iif)
    command = facts.shown(argv, netns)
    try:
        rows = await facts.run_json(["ip", "-j", *argv[1:]], netns)
    except KernelError as exc:
        text = str(exc)
        if "unreachable" in text or "No route" in text or "Invalid argument" in text:
            reason = text.rsplit(": ", 1)[-1]
            return RouteLookup(dst=dst, kind="unreachable", error=reason, command=command)
        raise
    row: dict[str, Any] = rows[0] if rows and isinstance(rows[0], dict) else {}
    kind = str(row.get("type", "unicast"))
    if kind in ("unreachable", "blackhole", "prohibit"):
        return RouteLookup(dst=dst, kind="unreachable", error=kind, command=command)
    return RouteLookup(
        dst=dst,
        kind=kind,
        dev=str(row.get("dev", "")),
        gateway=str(row.get("gateway", "")),
        src=str(row.get("prefsrc", "")),
        command=command,
    )


def port_isolated_argv(ifname: str) -> list[str]:
    return ["ip", "-d", "link", "show", "dev", ifname]


async def port_isolated(ifname: str) -> bool:
    """Whether bridge port ``ifname`` (a host veth end) is isolated (icc=false): isolated
    ports forward to the bridge's other ports but never to another isolated one."""
    rows = await facts.run_json(["ip", "-j", *port_isolated_argv(ifname)[1:]])
    for row in rows:
        data = (row.get("linkinfo") or {}).get("info_slave_data") or {}
        return bool(data.get("isolated", False))
    return False


# -- --live: the trace table, the monitor, the probe --------------------------------------


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """The probe's 5-tuple (``sport`` is chosen when the probe's socket is bound)."""

    saddr: IPv4Address | IPv6Address
    daddr: IPv4Address | IPv6Address
    protocol: str  # icmp | tcp | udp (icmp: ICMPv6 when the addresses are IPv6)
    dport: int | None = None
    sport: int | None = None


def trace_table_script(spec: ProbeSpec, table: str = TRACE_TABLE) -> str:
    """The ``nft -f`` script of two tables (``ip`` and ``bridge``) whose chains, ahead of
    every other at prerouting and output, set ``nftrace`` on the probe's packets only (its
    5-tuple).  The bridge family's sees what a bridge switches, which no IP hook does."""
    if spec.protocol not in ("icmp", "tcp", "udp"):
        raise InvalidArgument(f"invalid protocol {spec.protocol!r}: expected tcp, udp or icmp")
    v6 = spec.daddr.version == 6
    ip = "ip6" if v6 else "ip"
    match = f"{ip} saddr {spec.saddr} {ip} daddr {spec.daddr} meta l4proto "
    if spec.protocol == "icmp":
        match += "ipv6-icmp icmpv6 type echo-request" if v6 else "icmp icmp type echo-request"
    else:
        match += spec.protocol
    if spec.protocol != "icmp":
        if spec.sport is not None:
            match += f" th sport {spec.sport}"
        if spec.dport is not None:
            match += f" th dport {spec.dport}"
        if spec.protocol == "tcp":
            match += " tcp flags & (syn | ack) == syn"  # the SYN alone: one packet, not the handshake
    lines = []
    for family in (ip, "bridge"):
        t = f"{family} {table}"
        # a leftover (a cnmd killed mid-trace) is replaced; the comment says whose it is
        lines += [f"add table {t}", f"delete table {t}", f'add table {t} {{ comment "{TRACE_COMMENT}" ; }}']
        for hook in ("prerouting", "output"):
            lines.append(f"add chain {t} {hook} {{ type filter hook {hook} priority {TRACE_PRIORITY} ; }}")
            lines.append(f"add rule {t} {hook} {match} meta nftrace set 1")
    return "\n".join(lines) + "\n"


def trace_teardown_script(table: str = TRACE_TABLE) -> str:
    return "".join(f"add table {f} {table}\ndelete table {f} {table}\n" for f in TRACE_FAMILIES)


async def leftover_trace_tables(table: str = TRACE_TABLE) -> list[str]:
    """The marking tables (``"ip cnm-trace"``, ``"bridge cnm-trace"``) the kernel holds: none
    while no ``--live`` trace runs, unless one was cut short (cnmd killed mid-probe).  [] when
    nft is not installed (then no trace could have made one)."""
    if shutil.which("nft") is None:
        return []
    tables = [
        o["table"] for o in await facts.nft_json(["list", "tables"]) if isinstance(o.get("table"), dict)
    ]
    return [
        f"{t.get('family')} {table}"
        for t in tables
        if t.get("name") == table and t.get("family") in TRACE_FAMILIES
    ]


async def remove_leftover_trace_tables(table: str = TRACE_TABLE) -> list[str]:
    """Delete the marking tables a ``--live`` trace cut short left behind (at cnmd's start,
    when no other cnmd shares the namespace: no trace can be running); returns those it
    deleted.  Nothing left: no change, nothing logged."""
    found = await leftover_trace_tables(table)
    if found:
        await _nft_script("".join(f"delete table {name}\n" for name in found))
    return found


async def _nft_script(script: str) -> None:
    log_script("nft -f -", script)  # a kernel change: logged as the command that makes it
    if shutil.which("nft") is None:
        raise Unavailable("nft is not installed on the cnmd host (Debian package nftables)")
    proc = await asyncio.create_subprocess_exec(
        "nft",
        "-f",
        "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(script.encode()), facts.QUERY_TIMEOUT)
    if proc.returncode != 0:
        raise KernelError(f"nft -f -: {err.decode(errors='replace').strip()}")


@contextlib.asynccontextmanager
async def trace_table(spec: ProbeSpec, table: str = TRACE_TABLE) -> AsyncIterator[str]:
    """The marking table installed for the duration of the block (yields its name),
    deleted afterwards, also on error or cancellation."""
    await _nft_script(trace_table_script(spec, table))
    try:
        yield table
    finally:
        # shielded: a cancelled trace must still not leave its table behind
        await asyncio.shield(_nft_script(trace_teardown_script(table)))


@contextlib.asynccontextmanager
async def monitor_trace() -> AsyncIterator[list[str]]:
    """``nft monitor trace`` running for the duration of the block; the list it yields
    holds the lines read so far (complete once the block ends)."""
    if shutil.which("nft") is None:
        raise Unavailable("nft is not installed on the cnmd host (Debian package nftables)")
    proc = await asyncio.create_subprocess_exec(
        "nft",
        "monitor",
        "trace",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    lines: list[str] = []

    async def read() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            lines.append(raw.decode(errors="replace").rstrip("\n"))

    reader = asyncio.create_task(read())
    try:
        await asyncio.sleep(0.2)  # its netlink subscription is in place before any probe
        yield lines
        await asyncio.sleep(0.3)  # the last events of the probe are still on their way
    finally:
        if proc.returncode is None:
            proc.terminate()
        with contextlib.suppress(ProcessLookupError):
            await proc.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(reader, 2)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What the prober saw: ``answered`` a reply (echo reply, SYN-ACK or RST, a UDP
    answer or ICMP error), ``outcome`` in words."""

    answered: bool
    outcome: str
    sport: int | None = None


PROBE_TIMEOUT = 1.5  # seconds without an answer: no answer


_ICMP_IDENT = 0x636E  # "cn": our echo requests' identifier


def _open_probe(spec: ProbeSpec) -> socket.socket:
    """The probe's socket, bound to its source (opened in the calling thread's namespace,
    it stays there wherever it is used)."""
    af = socket.AF_INET6 if spec.daddr.version == 6 else socket.AF_INET
    if spec.protocol == "icmp":
        sock = socket.socket(
            af, socket.SOCK_RAW, socket.IPPROTO_ICMPV6 if af == socket.AF_INET6 else socket.IPPROTO_ICMP
        )
        sock.bind((str(spec.saddr), 0))
        return sock
    sock = socket.socket(af, socket.SOCK_STREAM if spec.protocol == "tcp" else socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((str(spec.saddr), spec.sport or 0))
    except OSError:
        sock.close()
        raise
    return sock


def _probe(sock: socket.socket, spec: ProbeSpec) -> ProbeResult:
    """Send one probe on ``sock`` and wait for its answer (blocking; closes ``sock``)."""
    with sock:
        sock.settimeout(PROBE_TIMEOUT)
        if spec.protocol == "icmp" and spec.daddr.version == 6:
            return _probe_icmp6(sock, spec)
        if spec.protocol == "icmp":
            body = struct.pack("!BBHHH", 8, 0, 0, _ICMP_IDENT, 1) + b"cnm trace"
            body = body[:2] + struct.pack("!H", _checksum(body)) + body[4:]
            sock.sendto(body, (str(spec.daddr), 0))
            deadline = time.monotonic() + PROBE_TIMEOUT
            while time.monotonic() < deadline:
                try:
                    data, peer = sock.recvfrom(2048)
                except TimeoutError:
                    break
                header = (data[0] & 0x0F) * 4
                kind, _, _, rid = struct.unpack("!BBHH", data[header : header + 6])
                if kind == 0 and rid == _ICMP_IDENT and peer[0] == str(spec.daddr):
                    return ProbeResult(True, f"echo reply from {peer[0]}")
                if kind == 3:
                    return ProbeResult(True, f"ICMP destination unreachable from {peer[0]}")
            return ProbeResult(False, f"no echo reply in {PROBE_TIMEOUT} s")
        sport = sock.getsockname()[1]
        if spec.protocol == "tcp":
            try:
                sock.connect((str(spec.daddr), spec.dport or 0))
            except TimeoutError:
                return ProbeResult(False, f"no answer to the SYN in {PROBE_TIMEOUT} s", sport)
            except ConnectionRefusedError:
                return ProbeResult(True, "connection refused (RST)", sport)
            except OSError as exc:
                return ProbeResult(exc.errno == errno.EHOSTUNREACH, f"connect: {exc.strerror}", sport)
            return ProbeResult(True, "connected (SYN-ACK)", sport)
        sock.connect((str(spec.daddr), spec.dport or 0))
        sock.send(b"cnm trace\n")
        try:
            sock.recv(2048)
        except TimeoutError:
            return ProbeResult(False, f"no answer in {PROBE_TIMEOUT} s (UDP: silence proves nothing)", sport)
        except ConnectionRefusedError:
            return ProbeResult(True, "port unreachable (ICMP)", sport)
        return ProbeResult(True, "a datagram came back", sport)


def _probe_icmp6(sock: socket.socket, spec: ProbeSpec) -> ProbeResult:
    """An ICMPv6 echo request (the kernel fills in the checksum of a raw ICMPv6 socket,
    and hands back the ICMPv6 message without the IPv6 header)."""
    sock.sendto(struct.pack("!BBHHH", 128, 0, 0, _ICMP_IDENT, 1) + b"cnm trace", (str(spec.daddr), 0))
    deadline = time.monotonic() + PROBE_TIMEOUT
    while time.monotonic() < deadline:
        try:
            data, peer = sock.recvfrom(2048)
        except TimeoutError:
            break
        kind, _, _, rid = struct.unpack("!BBHH", data[:6])
        if kind == 129 and rid == _ICMP_IDENT and peer[0] == str(spec.daddr):
            return ProbeResult(True, f"echo reply from {peer[0]}")
        if kind == 1:
            return ProbeResult(True, f"ICMPv6 destination unreachable from {peer[0]}")
    return ProbeResult(False, f"no echo reply in {PROBE_TIMEOUT} s")


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int(v) for v in struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


async def send_probe(spec: ProbeSpec, netns: str | None = None) -> ProbeResult:
    """Send one probe from ``netns`` (cnmd's own when None) and wait for its answer.  The
    socket is opened on a fresh thread inside ``netns``; the waiting happens outside."""
    try:
        sock = await ns.call_in_netns(netns, lambda: _open_probe(spec)) if netns else _open_probe(spec)
    except OSError as exc:
        raise KernelError(f"cannot open the probe's socket on {spec.saddr}: {exc.strerror or exc}") from exc
    return await asyncio.to_thread(_probe, sock, spec)


# -- nft monitor trace's lines --------------------------------------------------------------

_TRACE_RE = re.compile(
    r"^trace id (?P<id>[0-9a-f]+) (?P<family>\S+) (?P<table>\S+) (?P<chain>\S+) (?P<rest>.*)$"
)


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One line of ``nft monitor trace``: ``kind`` "packet", "rule", "verdict" or
    "policy"; ``verdict`` what the rule or chain decided ("continue", "accept", "drop",
    "jump ports", ...)."""

    trace_id: str
    family: str
    table: str
    chain: str
    kind: str
    text: str
    verdict: str = ""


# the fields of a traced packet worth reading (nft prints every header field it decodes)
_PACKET_FIELDS = re.compile(
    r'(?:iif|oif) "[^"]*"|ip6? (?:saddr|daddr|protocol|nexthdr) \S+|(?:tcp|udp) (?:sport|dport) \d+'
    r"|tcp flags == \S+|icmp(?:v6)? type \S+"
)


_COUNTER = re.compile(r"\bcounter packets \d+ bytes \d+")


def packet_summary(text: str) -> str:
    """A ``packet:`` line of ``nft monitor trace`` cut to interfaces, addresses, ports."""
    return " ".join(_PACKET_FIELDS.findall(text)) or text


def parse_trace_lines(lines: list[str]) -> list[TraceEvent]:
    """The events of ``nft monitor trace`` output (other lines are ignored)."""
    out = []
    for line in lines:
        m = _TRACE_RE.match(line.strip())
        if m is None:
            continue
        rest = m["rest"]
        kind, _, text = rest.partition(" ")
        kind = kind.rstrip(":")
        verdict = ""
        if kind == "rule":
            found = re.search(r"\(verdict ([^)]*)\)\s*$", text)
            if found:
                verdict = found[1]
                text = text[: found.start()].rstrip()
            # iptables-nft's rules carry their counters: noise in a trace
            text = " ".join(_COUNTER.sub("", text).split())
        elif kind in ("verdict", "policy"):
            verdict = text.strip()
        out.append(TraceEvent(m["id"], m["family"], m["table"], m["chain"], kind, text, verdict))
    return out
