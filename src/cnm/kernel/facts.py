"""Facts read from the kernel the way a person would read them.

``cnm explain`` and ``cnm network map`` show what the kernel holds, not what the store
says it should, and each fact comes with the command a person types to see the same thing.
So each query here *runs* that command (its JSON form when the tool has one) and returns
its answer together with the command as printed (``shown``): what cnm saw and what the
learner types can never drift apart.  Queries only read; nothing here changes the host.

A query in another namespace runs as ``nsenter --net=<path> …`` (the path cnm
bind-mounted the namespace at); tools that are not installed raise ``Unavailable``
naming the Debian package to install.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cnm.errors import KernelError, Unavailable

QUERY_TIMEOUT = 10.0  # seconds: a listing of a busy conntrack table takes a while
_PACKAGES = {
    "ip": "iproute2",
    "nft": "nftables",
    "iptables-save": "iptables",
    "ip6tables-save": "iptables",
    "conntrack": "conntrack",
}


def shown(argv: Sequence[str], netns: str | None = None) -> str:
    """``argv`` as a person types it, inside ``netns`` through ``nsenter``."""
    text = shlex.join(argv)
    return f"nsenter --net={shlex.quote(netns)} {text}" if netns else text


async def run(argv: Sequence[str], netns: str | None = None) -> str:
    """The standard output of ``argv`` (in namespace ``netns``).  Unavailable when the tool
    is missing, KernelError when it fails or hangs."""
    if shutil.which(argv[0]) is None:
        package = _PACKAGES.get(argv[0], argv[0])
        raise Unavailable(f"{argv[0]} is not installed on the cnmd host (Debian package {package})")
    full = ["nsenter", f"--net={netns}", *argv] if netns else list(argv)
    proc = await asyncio.create_subprocess_exec(
        *full,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), QUERY_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise KernelError(f"{shown(argv, netns)}: no answer in {QUERY_TIMEOUT:.0f} s") from None
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip() or f"exit status {proc.returncode}"
        raise KernelError(f"{shown(argv, netns)}: {detail}")
    return out.decode(errors="replace")


async def run_json(argv: Sequence[str], netns: str | None = None) -> Any:
    text = await run(argv, netns)
    try:
        return json.loads(text) if text.strip() else []
    except ValueError as exc:
        raise KernelError(f"{shown(argv, netns)}: unreadable JSON: {exc}") from None


@dataclass(frozen=True, slots=True)
class Route:
    """One route of a namespace's main table, as ``ip route`` prints it."""

    dst: str  # "default" or a prefix
    dev: str = ""
    gateway: str = ""
    src: str = ""  # the preferred source address
    scope: str = ""
    protocol: str = ""

    @property
    def text(self) -> str:
        parts = [self.dst]
        if self.gateway:
            parts += ["via", self.gateway]
        if self.dev:
            parts += ["dev", self.dev]
        if self.protocol:
            parts += ["proto", self.protocol]
        if self.scope and self.scope != "global":
            parts += ["scope", self.scope]
        if self.src:
            parts += ["src", self.src]
        return " ".join(parts)


def parse_routes(rows: Any) -> list[Route]:
    """``ip -j route show``'s rows as ``Route`` values."""
    return [
        Route(
            dst=str(row.get("dst", "")),
            dev=str(row.get("dev", "")),
            gateway=str(row.get("gateway", "")),
            src=str(row.get("prefsrc", "")),
            scope=str(row.get("scope", "")),
            protocol=str(row.get("protocol", "")),
        )
        for row in rows
        if isinstance(row, dict)
    ]


ROUTES_ARGV = ("ip", "route", "show")
ROUTES6_ARGV = ("ip", "-6", "route", "show")


async def routes(netns: str | None = None, family: int = 4) -> list[Route]:
    """The main routing table of ``netns`` (of cnmd's namespace when None), of IPv4 or,
    when ``family`` is 6, of IPv6 (``ip -6 route``)."""
    return parse_routes(await run_json(["ip", "-j", f"-{family}", "route", "show"], netns))


@dataclass(frozen=True, slots=True)
class Neighbour:
    """One entry of a namespace's ARP table (``ip neigh``)."""

    ip: str
    dev: str
    mac: str
    state: str

    @property
    def text(self) -> str:
        mac = f" lladdr {self.mac}" if self.mac else ""
        return f"{self.ip} dev {self.dev}{mac} {self.state}".rstrip()


NEIGHBOURS_ARGV = ("ip", "neigh", "show")
NEIGHBOURS6_ARGV = ("ip", "-6", "neigh", "show")


async def neighbours(netns: str | None = None, family: int = 4) -> list[Neighbour]:
    """The ARP table of ``netns`` or, when ``family`` is 6, its IPv6 neighbour (NDP) table."""
    rows = await run_json(["ip", "-j", f"-{family}", "neigh", "show"], netns)
    return [
        Neighbour(
            ip=str(row.get("dst", "")),
            dev=str(row.get("dev", "")),
            mac=str(row.get("lladdr", "")),
            state=" ".join(str(s) for s in row.get("state", ())),
        )
        for row in rows
        if isinstance(row, dict)
    ]


async def nft_json(argv: Sequence[str]) -> list[dict[str, Any]]:
    """The ``nftables`` objects of ``nft -j <argv>`` (an absent map or table: [])."""
    try:
        answer = await run_json(["nft", "-j", *argv])
    except KernelError as exc:
        if "No such file or directory" in str(exc):
            return []
        raise
    objects = answer.get("nftables", []) if isinstance(answer, dict) else []
    return [o for o in objects if isinstance(o, dict)]


# conntrack filters one address field per run (-s, -d, -r: reply source after a DNAT ...),
# so the flows of an address in any field or direction are a grep of the whole table
CONNTRACK_ARGV = ("conntrack", "-L")
CONNTRACK6_ARGV = ("conntrack", "-L", "-f", "ipv6")  # -L alone lists only IPv4 flows


def _conntrack_argv(ip: str) -> tuple[str, ...]:
    return CONNTRACK6_ARGV if ":" in ip else CONNTRACK_ARGV


_IP_WORD = r"(^|[\s=]){}(\s|$)"


async def conntrack_entries(ip: str) -> list[str]:
    """The conntrack table's entries (of cnmd's namespace, where NAT happens) that name
    ``ip`` as a source or destination, in either direction."""
    text = await run(_conntrack_argv(ip))
    pattern = re.compile(_IP_WORD.format(re.escape(ip)))
    return [line.strip() for line in text.splitlines() if pattern.search(line)]


def conntrack_shown(ip: str) -> str:
    return f"{shown(_conntrack_argv(ip))} | grep -w {shlex.quote(ip)}"


def iptables_save(family: int = 4) -> str:
    """The command that lists the rules of ``iptables`` (4) or ``ip6tables`` (6)."""
    return "ip6tables-save" if family == 6 else "iptables-save"


async def iptables_rules(table: str, needle: str, family: int = 4) -> list[str]:
    """The rules of iptables ``table`` (``iptables-save -t TABLE``; ``ip6tables-save`` when
    ``family`` is 6) that mention ``needle``."""
    text = await run([iptables_save(family), "-t", table])
    return [line for line in text.splitlines() if line.startswith("-A ") and needle in line]


async def read_text(path: str, limit: int = 64 << 10) -> str:
    """A small file cnm wrote for a container (its hosts, resolv.conf): what ``cat`` shows."""

    def read() -> str:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(limit)

    try:
        return await asyncio.to_thread(read)
    except OSError as exc:
        raise KernelError(f"cannot read {path}: {exc.strerror}") from exc
