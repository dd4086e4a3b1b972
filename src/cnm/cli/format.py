"""Docker's CLI presentation helpers: tables, IDs, durations, sizes, ports, natural sort.

Each function reproduces the Go code Docker's CLI uses (``text/tabwriter`` with Docker's
settings, ``go-units.HumanDuration``/``HumanSizeWithPrecision``, ``stringid.TruncateID``,
``formatter.Ellipsis``, ``formatter.DisplayablePorts``, ``sortorder.NaturalLess``).
"""

from __future__ import annotations

import time

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing/collections.abc costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence


def truncate_id(ident: str) -> str:
    """``stringid.TruncateID``: drop an ``algo:`` prefix, keep 12 characters."""
    if ":" in ident:
        ident = ident.split(":", 1)[1]
    return ident[:12]


def ellipsis(text: str, width: int) -> str:
    """``formatter.Ellipsis``: cut to ``width`` characters, the last one being ``…``."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    return text[: width - 1] + "…"


def tabwrite(lines: Iterable[str], minwidth: int = 10, padding: int = 3) -> str:
    """``tabwriter.NewWriter(out, 10, 1, 3, ' ', 0)`` over tab-separated lines.

    Every tab-terminated cell of a column is padded to the column's width (the widest cell
    plus ``padding``, at least ``minwidth``); the last cell of a line is not padded.
    """
    rows = [line.split("\t") for line in lines]
    widths: list[int] = []
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            w = max(minwidth, len(cell) + padding)
            if i >= len(widths):
                widths.append(w)
            elif w > widths[i]:
                widths[i] = w
    out = []
    for row in rows:
        out.append("".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + row[-1])
    return "".join(line + "\n" for line in out)


def human_duration(seconds: float) -> str:
    """``go-units.HumanDuration``: "Less than a second", "5 seconds", "About a minute", …"""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(round(seconds / 3600))
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def since(unix_seconds: float, now: float | None = None) -> str:
    """Docker's CREATED column: ``HumanDuration(now - created) + " ago"``."""
    now = time.time() if now is None else now
    return human_duration(max(0.0, now - unix_seconds)) + " ago"


_DECIMAL = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
_BINARY = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")


def _go_g(value: float, precision: int) -> str:
    """Go's ``%.{precision}g`` (no exponent for the magnitudes sizes take)."""
    text = f"{value:.{precision}g}"
    return text


def human_size(size: float, precision: int = 4) -> str:
    """``go-units.HumanSizeWithPrecision``: decimal units, ``%.4g`` (``images`` uses 3)."""
    i = 0
    while size >= 1000.0 and i < len(_DECIMAL) - 1:
        size /= 1000.0
        i += 1
    return _go_g(size, precision) + _DECIMAL[i]


def bytes_size(size: float) -> str:
    """``go-units.BytesSize``: binary units with ``%.4g`` ("15.54GiB")."""
    i = 0
    while size >= 1024.0 and i < len(_BINARY) - 1:
        size /= 1024.0
        i += 1
    return _go_g(size, 4) + _BINARY[i]


def join_host_port(host: str, port: object) -> str:
    """``net.JoinHostPort``: brackets around hosts containing a colon."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def displayable_ports(ports: Sequence[dict]) -> str:
    """Docker's PORTS column (``formatter.DisplayablePorts``).

    Ports published to the same number are grouped into ranges per ``IP/proto``; ports
    published to another number print as ``ip:pub->priv/proto`` after the groups; exposed
    only ports print as ``priv/proto``.
    """

    def key(p: dict) -> tuple:
        return (
            p.get("PrivatePort", 0),
            p.get("IP", "") or "",
            p.get("PublicPort", 0) or 0,
            p.get("Type", ""),
        )

    groups: dict[str, list[int]] = {}
    order: list[str] = []
    result: list[str] = []
    mappings: list[str] = []
    for p in sorted(ports, key=key):
        current = p.get("PrivatePort", 0)
        proto = p.get("Type", "")
        ip = p.get("IP", "") or ""
        pkey = proto
        if ip:
            public = p.get("PublicPort", 0) or 0
            if public != current:
                mappings.append(f"{join_host_port(ip, public)}->{current}/{proto}")
                continue
            pkey = f"{ip}/{proto}"
        group = groups.get(pkey)
        if group is None:
            groups[pkey] = [current, current]
            order.append(pkey)
            continue
        if current == group[1] + 1:
            group[1] = current
            continue
        result.append(_form_group(pkey, group[0], group[1]))
        groups[pkey] = [current, current]
    for pkey in order:
        g = groups[pkey]
        result.append(_form_group(pkey, g[0], g[1]))
    return ", ".join(result + mappings)


def _form_group(pkey: str, start: int, last: int) -> str:
    ip, _, proto = pkey.rpartition("/")
    group = str(start) if start == last else f"{start}-{last}"
    if ip:
        group = f"{join_host_port(ip, group)}->{group}"
    return f"{group}/{proto}"


def _natural_key(text: str) -> list:
    parts: list = []
    num = ""
    word = ""
    for ch in text:
        if ch.isdigit():
            if word:
                parts.append((1, word, 0))
                word = ""
            num += ch
        else:
            if num:
                parts.append((0, "", int(num)))
                num = ""
            word += ch
    if num:
        parts.append((0, "", int(num)))
    if word:
        parts.append((1, word, 0))
    return parts


def natural_sorted(items: Iterable[str]) -> list[str]:
    """``sortorder.NaturalLess`` order: digit runs compare as numbers."""
    return sorted(items, key=_natural_key)


def go_time(unix_seconds: float) -> str:
    """Go's ``time.Time.String()`` for a unix time, in local time: ``2025-11-05 10:00:00 +0000 UTC``."""
    t = time.localtime(unix_seconds)
    return time.strftime("%Y-%m-%d %H:%M:%S %z ", t) + time.strftime("%Z", t)


def parse_rfc3339(text: str) -> float:
    """RFC 3339 (nanosecond precision allowed) → unix seconds; 0 for Go's zero time."""
    if not text or text.startswith("0001-01-01"):
        return 0.0
    import datetime

    main, frac, tz = text, "", ""
    if text.endswith("Z"):
        main, tz = text[:-1], "+00:00"
    elif len(text) > 6 and text[-6] in "+-" and text[-3] == ":":
        main, tz = text[:-6], text[-6:]
    if "." in main:
        main, frac = main.split(".", 1)
    dt = datetime.datetime.fromisoformat(main + (tz or "+00:00"))
    return dt.timestamp() + (float("0." + frac) if frac else 0.0)
