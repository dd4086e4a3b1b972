"""Rendering of list commands (``ps``, ``network ls``, ``images``) the way Docker's formatter does.

A row is a dict of field name → value (callables for methods such as ``.Label "k"``).
The format is Docker's: empty or ``table`` → the command's default table, ``json`` →
``{{json .}}``, ``table …`` → a header row plus tab-aligned columns, anything else → one
template execution per row. ``\\t`` and ``\\n`` typed literally are turned into tab and newline.
"""

from __future__ import annotations

from cnm.cli.errors import CliError
from cnm.cli.format import tabwrite


def normalise(fmt: str, default_table: str) -> tuple[bool, str]:
    """(is_table, template source) for a ``--format`` value."""
    fmt = fmt or "table"
    if fmt == "table":
        fmt = default_table
    elif fmt == "json":
        fmt = "{{json .}}"
    table = fmt.startswith("table")
    if table:
        fmt = fmt[len("table") :]
    fmt = fmt.strip(" ").replace("\\t", "\t").replace("\\n", "\n")
    return table, fmt


def render(rows: list[dict], fmt: str, default_table: str, headers: dict[str, str]) -> str:
    """The command's whole output for ``rows`` (a ``CliError`` for a bad template)."""
    from cnm.cli.template import Template, TemplateError, header_funcs

    table, src = normalise(fmt, default_table)
    try:
        tmpl = Template(src)
        lines = [tmpl.execute(row) for row in rows]
        if not table:
            return "".join(line + "\n" for line in lines)
        head = dict(headers, Label=_label_header)
        header = Template(src, funcs=header_funcs(set(headers.values()))).execute(head)
    except TemplateError as exc:
        raise CliError(f"template parsing error: {exc}") from None
    text = "\n".join([header] + lines)
    return tabwrite(text.split("\n"))


def filters_param(values: list[str]) -> str | None:
    """``-f k=v`` flags → Docker's ``filters`` query value ``{"k":{"v":true}}`` (None if empty)."""
    if not values:
        return None
    import json

    out: dict[str, dict[str, bool]] = {}
    for item in values:
        k, eq, v = item.partition("=")
        if not eq:
            raise CliError("bad format of filter (expected name=value)")
        out.setdefault(k.strip().lower(), {})[v] = True
    return json.dumps(out, separators=(",", ":"))


def bool_str(value: object) -> str:
    return "true" if value else "false"


def labels_str(labels: dict | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items()))


def _label_header(name: str) -> str:
    """Docker's header for ``.Label "com.example.my-label"``: ``MY LABEL``."""
    return name.split(".")[-1].replace("-", " ").replace("_", " ").upper()
