"""A container's /etc/hostname, /etc/hosts and /etc/resolv.conf, rendered from data.

Pure functions (no I/O) plus ``write_in_place``: the files are bind-mounted into the
container, so updates must keep the inode (truncate and rewrite, never rename).
Contents follow Docker's (libnetwork's etchosts and resolvconf packages).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass

_LOCALHOST_V6 = (
    "::1\tlocalhost ip6-localhost ip6-loopback",
    "fe00::\tip6-localnet",
    "ff00::\tip6-mcastprefix",
    "ff02::1\tip6-allnodes",
    "ff02::2\tip6-allrouters",
)

FALLBACK_NAMESERVERS = ("8.8.8.8", "8.8.4.4")
FALLBACK_NAMESERVERS_V6 = ("2001:4860:4860::8888", "2001:4860:4860::8844")


def render_hostname(hostname: str) -> str:
    return hostname + "\n"


def host_names(hostname: str, domainname: str = "") -> str:
    """Docker's "FQDN short" rule for the container's own line."""
    if domainname:
        return f"{hostname}.{domainname} {hostname}"
    if "." in hostname:
        return f"{hostname} {hostname.split('.', 1)[0]}"
    return hostname


def render_hosts(
    hostname: str,
    addresses: Sequence[str],
    *,
    domainname: str = "",
    extra_hosts: Sequence[tuple[str, str]] = (),
    links: Sequence[tuple[str, str]] = (),
    ipv6: bool = True,
) -> str:
    """A container's /etc/hosts, Docker's lines in Docker's order: localhost, the IPv6
    defaults, ``extra_hosts`` ((name, ip) from ``--add-host``), one line per address of the
    container (``addresses``: each endpoint's IPv4 then IPv6 address), and ``links``
    ((ip, names) lines of legacy ``--link`` on the default bridge).

    ``ipv6``: IPv6 is on inside the container (its loopback has ``::1``).  Without it,
    as Docker's ``BuildNoIPv6``, neither the IPv6 defaults nor any line whose address is
    IPv6 (an ``--add-host``, the container's own, a link's) is written."""
    lines = ["127.0.0.1\tlocalhost"]
    if ipv6:
        lines.extend(_LOCALHOST_V6)
    names = host_names(hostname, domainname)
    records = [
        *((ip, name) for name, ip in extra_hosts),
        *((addr, names) for addr in addresses),
        *links,
    ]
    lines.extend(f"{ip}\t{text}" for ip, text in records if ipv6 or not _is_v6(ip))
    return "\n".join(lines) + "\n"


def _is_v6(address: str) -> bool:
    return ":" in address


@dataclass(frozen=True, slots=True)
class ResolvConf:
    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    other: tuple[str, ...] = ()  # directives copied through (sortlist, domain, ...)


def parse_resolv_conf(text: str) -> ResolvConf:
    ns: list[str] = []
    search: list[str] = []
    options: list[str] = []
    other: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        word, _, rest = line.partition(" ")
        rest = rest.strip()
        if word == "nameserver" and rest:
            ns.append(rest.split()[0])
        elif word == "search":
            search = rest.split()
        elif word == "options":
            options.extend(rest.split())
        else:
            other.append(line)
    return ResolvConf(tuple(ns), tuple(search), tuple(options), tuple(other))


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def container_resolv_conf(
    host: ResolvConf,
    *,
    dns: Sequence[str] = (),
    dns_search: Sequence[str] = (),
    dns_options: Sequence[str] = (),
    host_mode: bool = False,
    ipv6: bool = False,
) -> tuple[ResolvConf, bool]:
    """The resolver configuration a container gets (Docker's legacy, non-embedded-DNS
    rules): the host's file with ``--dns*`` overrides; outside host mode, loopback
    nameservers are dropped (they would point at the container's own lo), IPv6 ones too
    unless ``ipv6`` (the container has an IPv6 address), and, if none is left, Google's
    public servers are used (their IPv6 ones too with ``ipv6``).  Returns (conf,
    used_fallback)."""
    nameservers = tuple(dns) if dns else host.nameservers
    fallback = False
    if not host_mode and not dns:
        nameservers = tuple(n for n in nameservers if not _is_loopback(n) and (ipv6 or not _is_v6(n)))
        if not nameservers:
            fallback = True
            nameservers = FALLBACK_NAMESERVERS + (FALLBACK_NAMESERVERS_V6 if ipv6 else ())
    search = tuple(s for s in dns_search if s != ".") if dns_search else host.search
    options = tuple(dns_options) if dns_options else host.options
    return ResolvConf(nameservers, search, options, host.other), fallback


EMBEDDED_DNS = "127.0.0.11"


def embedded_resolv_conf(
    host: ResolvConf, *, dns_search: Sequence[str] = (), dns_options: Sequence[str] = ()
) -> ResolvConf:
    """The resolver configuration of a container served by the embedded DNS server: only
    ``nameserver 127.0.0.11``, the search list, and ``ndots:0`` unless ndots was set (the
    server needs it to see single-label names first, as Docker's does)."""
    search = tuple(s for s in dns_search if s != ".") if dns_search else host.search
    options = tuple(dns_options) if dns_options else host.options
    if not any(o.startswith("ndots:") for o in options):
        options = (*options, "ndots:0")
    return ResolvConf((EMBEDDED_DNS,), search, options, host.other)


def ndots_set(options: Sequence[str]) -> bool:
    return any(o.startswith("ndots:") for o in options)


def render_resolv_conf(conf: ResolvConf, *, comment: str = "") -> str:
    lines = ["# Generated by cnm."]
    if comment:
        lines.append(f"# {comment}")
    lines.extend(conf.other)
    if conf.search:
        lines.append("search " + " ".join(conf.search))
    lines.extend(f"nameserver {n}" for n in conf.nameservers)
    if conf.options:
        lines.append("options " + " ".join(conf.options))
    return "\n".join(lines) + "\n"


def write_in_place(path: str, content: str) -> os.stat_result:
    """Write ``content`` to ``path`` keeping the inode (the file may be bind-mounted); return
    the file's stat.  New bytes first, then the truncation to their length: ext4 flushes a
    file at close when it was truncated to zero and rewritten (``auto_da_alloc``), which
    cost ~0.2 ms per file."""
    data = content.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        return os.fstat(fd)
    finally:
        os.close(fd)
