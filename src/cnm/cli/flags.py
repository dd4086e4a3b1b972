"""A small flag parser with pflag's semantics (what Docker's CLI is built on).

Why not argparse: it costs ~3 ms to import (start-up time is a goal of the CLI), and it
does not model what Docker users type: ``-it``, ``-p80:80``, ``--rm=false``, repeated
flags accumulating, and *non-interspersed* commands (``run``/``exec``: everything after
the first positional belongs to the container's command, flags included).

A command declares ``Flag``s; ``parse`` returns the values by ``dest`` and the positionals.
Errors raise ``UsageError`` with pflag's wording.
"""

from __future__ import annotations

from cnm.cli.errors import UsageError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing/collections.abc costs start-up time
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

BOOL, STR, LIST, INT, MAP = "bool", "str", "list", "int", "map"
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


class Flag:
    """One flag: its names (``"-e"``, ``"--env"``), kind, destination and help text.

    ``validate`` maps a raw value to the stored one or raises ``ValueError(reason)``;
    the parser reports it as ``invalid argument "v" for "-e, --env" flag: reason``.
    (A plain class, not a dataclass: importing ``dataclasses`` costs start-up time.)
    """

    __slots__ = ("names", "kind", "key", "help", "default", "validate", "metavar")

    def __init__(
        self,
        names: tuple[str, ...],
        kind: str = STR,
        dest: str = "",
        help: str = "",
        default: object = None,
        validate: Callable[[str], object] | None = None,
        metavar: str = "",
    ) -> None:
        self.names, self.kind, self.help, self.default = names, kind, help, default
        self.validate, self.metavar = validate, metavar
        longs = [n for n in names if n.startswith("--")]
        self.key = dest or (longs[0][2:] if longs else names[0][1:]).replace("-", "_")

    def label(self) -> str:
        shorts = [n for n in self.names if not n.startswith("--")]
        longs = [n for n in self.names if n.startswith("--")]
        return ", ".join(shorts[:1] + longs[:1])


def flag(
    *names: str,
    kind: str = STR,
    dest: str = "",
    help: str = "",
    default: object = None,
    validate: Callable[[str], object] | None = None,
    metavar: str = "",
) -> Flag:
    return Flag(tuple(names), kind, dest, help, default, validate, metavar)


class Command:
    """A verb's declaration: usage line, one-line description, flags, argument bounds.

    ``interspersed=False`` stops flag parsing at the first positional (``run IMAGE CMD…``).
    """

    def __init__(
        self,
        path: str,
        usage: str,
        description: str,
        flags: Sequence[Flag] = (),
        min_args: int = 0,
        max_args: int | None = None,
        interspersed: bool = True,
        aliases: Sequence[str] = (),
    ) -> None:
        self.path, self.usage, self.description, self.flags = path, usage, description, flags
        self.min_args, self.max_args, self.interspersed, self.aliases = (
            min_args,
            max_args,
            interspersed,
            aliases,
        )

    def help_text(self) -> str:
        """The ``--help`` page: usage, description, options."""
        lines = [f"\nUsage:  {self.path} [OPTIONS] {self.usage}".rstrip(), "", self.description]
        if self.aliases:
            lines += ["", "Aliases:", "  " + ", ".join(self.aliases)]
        rows = []
        for f in self.flags:
            shorts = [n for n in f.names if not n.startswith("--")]
            longs = [n for n in f.names if n.startswith("--")]
            name = (f"{shorts[0]}, " if shorts else "    ") + (longs[0] if longs else "")
            if f.kind != BOOL:
                name += " " + (f.metavar or {INT: "int", LIST: "list", MAP: "map"}.get(f.kind, "string"))
            rows.append((name, f.help))
        rows.append(("    --help", "Print usage"))
        width = max(len(r[0]) for r in rows)
        lines += ["", "Options:"] + [f"  {n.ljust(width)}   {h}".rstrip() for n, h in rows]
        return "\n".join(lines) + "\n"

    def see_help(self) -> str:
        return f"See '{self.path} --help'."


class HelpRequested(Exception):
    """``--help`` was given: print the command's help and exit 0."""

    def __init__(self, command: Command) -> None:
        super().__init__(command.path)
        self.command = command


def _find(flags: Sequence[Flag], name: str) -> Flag | None:
    for f in flags:
        if name in f.names:
            return f
    return None


def parse(cmd: Command, argv: Sequence[str]) -> tuple[dict[str, Any], list[str], set[str]]:
    """Parse ``argv`` for ``cmd``; return (values by key, positionals, keys given explicitly).

    Every flag has a value in the result (its default, ``False``, ``[]`` or ``{}``).
    Argument counts are checked against ``cmd.min_args``/``max_args`` (exit 1, cobra's text).
    """
    values: dict[str, Any] = {}  # each flag's kind says what its value is
    for declared in cmd.flags:
        default: Any = declared.default
        if declared.kind == BOOL:
            values[declared.key] = bool(default)
        elif declared.kind == LIST:
            values[declared.key] = list(default or [])
        elif declared.kind == MAP:
            values[declared.key] = dict(default or {})
        else:
            values[declared.key] = default
    changed: set[str] = set()
    positionals: list[str] = []
    args = list(argv)
    i = 0

    def fail(msg: str) -> UsageError:
        return UsageError(f"{msg}\n{cmd.see_help()}", 125)

    def store(f: Flag, raw: str) -> None:
        changed.add(f.key)
        if f.kind == BOOL:
            if raw in _TRUE:
                values[f.key] = True
            elif raw in _FALSE:
                values[f.key] = False
            else:
                raise fail(
                    f'invalid argument "{raw}" for "{f.label()}" flag: strconv.ParseBool: '
                    f'parsing "{raw}": invalid syntax'
                )
            return
        value: object = raw
        try:
            if f.validate is not None:
                value = f.validate(raw)
            if f.kind == INT:
                value = int(raw, 10)
        except ValueError as exc:
            reason = (
                str(exc)
                if f.kind != INT or f.validate
                else f'strconv.ParseInt: parsing "{raw}": invalid syntax'
            )
            raise fail(f'invalid argument "{raw}" for "{f.label()}" flag: {reason}') from None
        if f.kind == LIST:
            values[f.key].append(value)
        elif f.kind == MAP:
            k, _, v = str(value).partition("=")
            values[f.key][k] = v
        else:
            values[f.key] = value

    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            positionals.extend(args[i:])
            break
        if arg == "--help":
            raise HelpRequested(cmd)
        if arg.startswith("--") and len(arg) > 2:
            name, eq, raw = arg.partition("=")
            f = _find(cmd.flags, name)
            if f is None:
                raise fail(f"unknown flag: {name}")
            if eq:
                store(f, raw)
            elif f.kind == BOOL:
                store(f, "true")
            elif i < len(args):
                store(f, args[i])
                i += 1
            else:
                raise fail(f"flag needs an argument: {name}")
            continue
        if arg.startswith("-") and len(arg) > 1:
            j = 1
            while j < len(arg):
                c = arg[j]
                f = _find(cmd.flags, "-" + c)
                if f is None:
                    if c == "h":
                        raise HelpRequested(cmd)
                    raise fail(f"unknown shorthand flag: '{c}' in {arg}")
                rest = arg[j + 1 :]
                if f.kind == BOOL:
                    if rest.startswith("="):
                        store(f, rest[1:])
                        break
                    store(f, "true")
                    j += 1
                    continue
                if rest:
                    store(f, rest[1:] if rest.startswith("=") else rest)
                elif i < len(args):
                    store(f, args[i])
                    i += 1
                else:
                    raise fail(f"flag needs an argument: '{c}' in {arg}")
                break
            continue
        positionals.append(arg)
        if not cmd.interspersed:
            positionals.extend(args[i:])
            break

    n = len(positionals)
    if n < cmd.min_args or (cmd.max_args is not None and n > cmd.max_args):
        raise UsageError(_count_message(cmd, n), 1)
    return values, positionals, changed


def _count_message(cmd: Command, n: int) -> str:
    lo, hi = cmd.min_args, cmd.max_args

    def plural(k: int) -> str:
        return "argument" if k == 1 else "arguments"

    if hi == 0:
        what = f'"{cmd.path}" accepts no arguments.'
    elif hi == lo:
        what = f'"{cmd.path}" requires exactly {lo} {plural(lo)}.'
    elif n < lo:
        what = f'"{cmd.path}" requires at least {lo} {plural(lo)}.'
    else:
        what = f'"{cmd.path}" requires at most {hi} {plural(hi or 0)}.'
    return f"{what}\n{cmd.see_help()}\n\nUsage:  {cmd.path} [OPTIONS] {cmd.usage}\n\n{cmd.description}"
