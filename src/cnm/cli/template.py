"""A subset of Go's text/template, enough for Docker's ``-f/--format`` flags.

Supported: text and ``{{ }}`` actions with ``{{-``/``-}}`` trimming and ``{{/* */}}``
comments; fields ``.A.B`` (on maps, and on callables taking arguments such as ``.Label "k"``);
variables ``$``, ``$x``, ``$x.F``, ``{{$x := …}}``/``{{$x = …}}``; literals (strings,
raw strings, numbers, true/false/nil); pipelines ``a | f b``; parentheses;
``if``/``else if``/``else``, ``range`` (lists, maps in sorted key order, ``$i, $v :=``),
``with``, ``end``; the Go builtins ``and or not len index eq ne lt le gt ge print printf
println`` and Docker's ``json join split upper lower title pad truncate``.

Everything else (``define``, ``template``, ``block``, ``break``…) is a ``TemplateError``.
Values print as Go does: ``<no value>`` for a missing key, ``[a b]`` for lists,
``map[k:v]`` for maps, ``true``/``false``.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing/collections.abc costs start-up time
if TYPE_CHECKING:
    from collections.abc import Callable


class TemplateError(Exception):
    """A parse or execution error, worded like Go's (``template: :1: …``)."""


class _Missing:
    """Go's invalid reflect.Value: what a missing map key evaluates to."""

    def __repr__(self) -> str:
        return "<no value>"


MISSING = _Missing()

# -- lexing -----------------------------------------------------------------------------


def _pos(src: str, offset: int) -> str:
    line = src.count("\n", 0, offset) + 1
    col = offset - (src.rfind("\n", 0, offset) + 1)
    return f"{line}:{col}"


def _split(src: str) -> list[tuple[str, str, int]]:
    """Split ``src`` into ("text", s, off) and ("action", body, off) items, applying trims."""
    items: list[tuple[str, str, int]] = []
    i = 0
    while True:
        j = src.find("{{", i)
        if j < 0:
            items.append(("text", src[i:], i))
            break
        text = src[i:j]
        body_start = j + 2
        if (
            src.startswith("- ", body_start)
            or src.startswith("-\t", body_start)
            or src.startswith("-\n", body_start)
        ):
            text = text.rstrip(" \t\r\n")
            body_start += 1
        items.append(("text", text, i))
        k = src.find("}}", body_start)
        if src[body_start:].lstrip(" \t\r\n").startswith("/*"):
            end_comment = src.find("*/", body_start)
            if end_comment < 0:
                raise TemplateError(f"template: :{_pos(src, j).split(':')[0]}: unclosed comment")
            k = src.find("}}", end_comment)
        if k < 0:
            raise TemplateError(f"template: :{_pos(src, j).split(':')[0]}: unclosed action")
        body = src[body_start:k]
        i = k + 2
        if body.endswith(" -") or body.endswith("\t-") or body.endswith("\n-"):
            body = body[:-1]
            n = len(src)
            while i < n and src[i] in " \t\r\n":
                i += 1
        if not body.strip().startswith("/*"):
            items.append(("action", body, body_start))
    return items


_PUNCT = "()|,"


def _tokens(body: str, base: int, src: str) -> list[tuple[str, object, int]]:
    """Tokenize an action body: (kind, value, offset) with kinds field/var/str/num/ident/punct."""
    toks: list[tuple[str, object, int]] = []
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        off = base + i
        if c in " \t\r\n":
            i += 1
        elif c == ":" and body.startswith(":=", i):
            toks.append(("punct", ":=", off))
            i += 2
        elif c == "=":
            toks.append(("punct", "=", off))
            i += 1
        elif c in _PUNCT:
            toks.append(("punct", c, off))
            i += 1
        elif c == '"':
            j = i + 1
            while j < n and body[j] != '"':
                j += 2 if body[j] == "\\" else 1
            if j >= n:
                raise TemplateError(f"template: :{_pos(src, off).split(':')[0]}: unterminated quoted string")
            import json

            try:
                toks.append(("str", json.loads(body[i : j + 1]), off))
            except ValueError:
                raise TemplateError(
                    f"template: :{_pos(src, off).split(':')[0]}: invalid syntax: {body[i : j + 1]}"
                ) from None
            i = j + 1
        elif c == "`":
            j = body.find("`", i + 1)
            if j < 0:
                raise TemplateError(
                    f"template: :{_pos(src, off).split(':')[0]}: unterminated raw quoted string"
                )
            toks.append(("str", body[i + 1 : j], off))
            i = j + 1
        elif c == "." or c == "$":
            j = i + 1
            while j < n and (body[j].isalnum() or body[j] in "_."):
                j += 1
            word = body[i:j]
            if c == ".":
                names = [p for p in word.split(".") if p]
                if word != "." and (word.endswith(".") or "" in word[1:].split(".")):
                    raise TemplateError(
                        f"template: :{_pos(src, off).split(':')[0]}: bad character in field {word!r}"
                    )
                toks.append(("field", names, off))
            else:
                name, *fields = word.split(".")
                toks.append(("var", (name, fields), off))
            i = j
        elif c.isdigit() or (c in "+-" and i + 1 < n and body[i + 1].isdigit()):
            j = i + 1
            while j < n and (body[j].isalnum() or body[j] in "._+-"):
                j += 1
            word = body[i:j]
            try:
                value: object = int(word, 0)
            except ValueError:
                try:
                    value = float(word)
                except ValueError:
                    raise TemplateError(
                        f"template: :{_pos(src, off).split(':')[0]}: bad number syntax: {word!r}"
                    ) from None
            toks.append(("num", value, off))
            i = j
        elif c.isalpha() or c == "_":
            j = i + 1
            while j < n and (body[j].isalnum() or body[j] == "_"):
                j += 1
            toks.append(("ident", body[i:j], off))
            i = j
            # a field chained on an identifier is not Go syntax we support
        else:
            raise TemplateError(f"template: :{_pos(src, off).split(':')[0]}: unexpected {c!r} in command")
    return toks


# -- parsing ----------------------------------------------------------------------------
# Nodes are tuples: ("text", s) ("action", pipe) ("if"|"range"|"with", pipe, list, else_list)
# pipe = (decl_vars, assign: bool, [command]); command = [arg]; arg = token or ("pipe", pipe, off)
# or ("chain", arg, fields, off).

_KEYWORDS = {"if", "range", "with", "else", "end", "define", "template", "block", "break", "continue"}


class _Parser:
    def __init__(self, src: str, funcs: dict[str, Callable]) -> None:
        self.src = src
        self.funcs = funcs
        self.items = _split(src)
        self.k = 0

    def err(self, off: int, msg: str) -> TemplateError:
        return TemplateError(f"template: :{_pos(self.src, off).split(':')[0]}: {msg}")

    def parse(self) -> list:
        nodes, stop = self.parse_list()
        if stop is not None:
            raise self.err(stop[2], f"unexpected {{{{{stop[0]}}}}}")
        return nodes

    def parse_list(self) -> tuple[list, tuple | None]:
        """Parse until {{end}}/{{else}} (returned as the stop item) or the end of input."""
        nodes: list = []
        while self.k < len(self.items):
            kind, body, off = self.items[self.k]
            self.k += 1
            if kind == "text":
                if body:
                    nodes.append(("text", body))
                continue
            toks = _tokens(body, off, self.src)
            if not toks:
                raise self.err(off, "missing value for command")
            first = toks[0]
            if first[0] == "ident" and first[1] in _KEYWORDS:
                word = first[1]
                if word in ("end", "else"):
                    return nodes, (word, toks[1:], off)
                if word not in ("if", "range", "with"):
                    raise self.err(off, f"{{{{{word}}}}} is not supported by cnm's template subset")
                nodes.append(self.parse_control(word, toks[1:], off))
                continue
            nodes.append(("action", self.parse_pipe(toks, off, allow_decl=True)))
        return nodes, None

    def parse_control(self, word: str, toks: list, off: int) -> tuple:
        if not toks:
            raise self.err(off, f"missing value for {word}")
        pipe = self.parse_pipe(toks, off, allow_decl=True, range_decl=word == "range")
        body, stop = self.parse_list()
        if stop is None:
            raise self.err(off, "unexpected EOF")
        else_list: list = []
        if stop[0] == "else":
            rest = stop[1]
            if rest and rest[0][0] == "ident" and rest[0][1] in ("if", "with") and word == rest[0][1]:
                # {{else if …}}: an if nested in the else branch, sharing our {{end}}
                else_list = [self.parse_control(rest[0][1], rest[1:], stop[2])]
                return (word, pipe, body, else_list)
            if rest:
                raise self.err(stop[2], "unexpected tokens after else")
            else_list, stop2 = self.parse_list()
            if stop2 is None or stop2[0] != "end":
                raise self.err(off, "expected end; found " + ("EOF" if stop2 is None else stop2[0]))
        return (word, pipe, body, else_list)

    def parse_pipe(self, toks: list, off: int, allow_decl: bool = False, range_decl: bool = False) -> tuple:
        decl: list[str] = []
        assign = False
        # declarations: $x := …  or  $i, $v := …  (range)
        if allow_decl and toks and toks[0][0] == "var":
            if len(toks) > 1 and toks[1][0] == "punct" and toks[1][1] in (":=", "="):
                decl, assign, toks = [toks[0][1][0]], toks[1][1] == "=", toks[2:]
            elif (
                range_decl
                and len(toks) > 3
                and toks[1][:2] == ("punct", ",")
                and toks[2][0] == "var"
                and toks[3][0] == "punct"
                and toks[3][1] == ":="
            ):
                decl, toks = [toks[0][1][0], toks[2][1][0]], toks[4:]
        cmds: list[list] = []
        pos = 0

        def parse_operand() -> object:
            nonlocal pos
            tok = toks[pos]
            pos += 1
            if tok[0] == "punct" and tok[1] == "(":
                depth, start = 1, pos
                while pos < len(toks) and depth:
                    if toks[pos][0] == "punct" and toks[pos][1] in "()":
                        depth += 1 if toks[pos][1] == "(" else -1
                    pos += 1
                if depth:
                    raise self.err(tok[2], "unclosed left paren")
                node: object = ("pipe", self.parse_pipe(toks[start : pos - 1], tok[2]), tok[2])
                if (
                    pos < len(toks)
                    and toks[pos][0] == "field"
                    and toks[pos][1]
                    and self.src[toks[pos][2] - 1] == ")"
                ):
                    node = ("chain", node, toks[pos][1], toks[pos][2])
                    pos += 1
                return node
            if tok[0] == "punct":
                raise self.err(tok[2], f"unexpected {tok[1]!r} in operand")
            if tok[0] == "ident":
                name = tok[1]
                if name in ("true", "false"):
                    return ("bool", name == "true", tok[2])
                if name == "nil":
                    return ("nil", None, tok[2])
                if name in _KEYWORDS:
                    raise self.err(tok[2], f"unexpected <{name}> in command")
                if name not in self.funcs:
                    raise self.err(tok[2], f'function "{name}" not defined')
            return tok

        while pos < len(toks):
            cmd: list = []
            while pos < len(toks) and not (toks[pos][0] == "punct" and toks[pos][1] == "|"):
                cmd.append(parse_operand())
            if not cmd:
                raise self.err(off, "missing value for command")
            cmds.append(cmd)
            pos += 1  # skip '|'
        if not cmds:
            raise self.err(off, "missing value for command")
        if toks and toks[-1][0] == "punct" and toks[-1][1] == "|":
            raise self.err(off, "missing value for command")
        return (decl, assign, cmds)


# -- values -----------------------------------------------------------------------------


def go_str(value: object) -> str:
    """Go's ``fmt.Sprint`` of a decoded-JSON value."""
    if value is MISSING or value is None:
        return "<no value>"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value)) if abs(value) < 1e6 else _go_float(value)
        return _go_float(value)
    if isinstance(value, list):
        return "[" + " ".join(go_str(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "map[" + " ".join(f"{k}:{go_str(v)}" for k, v in sorted(value.items()) if not callable(v)) + "]"
        )
    return str(value)


def _go_float(value: float) -> str:
    text = repr(value)
    if "e" in text:
        mant, exp = text.split("e")
        sign = "-" if exp.startswith("-") else "+"
        text = f"{mant}e{sign}{abs(int(exp)):02d}"
    return text


def truth(value: object) -> bool:
    if value is MISSING or value is None:
        return False
    if isinstance(value, (bool, int, float, str, list, dict, tuple)):
        return bool(value)
    return True


def go_json(value: object) -> str:
    """``json.Marshal`` as Go writes it: compact, HTML-escaped, callables left out."""
    import json

    def clean(v: object) -> object:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if not callable(x)}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return None if v is MISSING else v

    text = json.dumps(clean(value), separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _index(item: object, *keys: object) -> object:
    for key in keys:
        if isinstance(item, dict):
            item = item.get(key, None) if isinstance(key, str) else None
        elif isinstance(item, (list, str)):
            if not isinstance(key, int) or not 0 <= key < len(item):
                raise TemplateError(f"error calling index: index out of range: {key}")
            item = item[key]
        elif item is None or item is MISSING:
            raise TemplateError("error calling index: index of untyped nil")
        else:
            raise TemplateError(f"error calling index: can't index item of type {type(item).__name__}")
    return item


def _sprint(*args: object) -> str:
    out = []
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(go_str(a))
    return "".join(out)


def _printf(fmt: str, *args: object) -> str:
    out, i, ai = [], 0, 0
    while i < len(fmt):
        c = fmt[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        j = i + 1
        while j < len(fmt) and fmt[j] in "-+# 0123456789.":
            j += 1
        if j >= len(fmt):
            out.append("%!(NOVERB)")
            break
        spec, verb = fmt[i + 1 : j], fmt[j]
        i = j + 1
        if verb == "%":
            out.append("%")
            continue
        if ai >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[ai]
        ai += 1
        if verb in "vs":
            out.append(("%" + spec + "s") % go_str(arg))
        elif verb == "q":
            import json

            out.append(("%" + spec + "s") % json.dumps(go_str(arg), ensure_ascii=False))
        elif verb == "t":
            out.append(("%" + spec + "s") % go_str(bool(arg)))
        elif verb in "dxXobeEfFgG" and isinstance(arg, (int, float)) and not isinstance(arg, bool):
            out.append(("%" + spec + verb) % arg)
        else:
            out.append(f"%!{verb}({type(arg).__name__}={go_str(arg)})")
    return "".join(out)


def _cmp(op: str) -> Callable:
    def compare(a: object, *bs: object) -> bool:
        if op == "eq":
            if not bs:
                raise TemplateError("error calling eq: missing argument for comparison")
            return any(a == b for b in bs)
        if len(bs) != 1:
            raise TemplateError(f"wrong number of args for {op}: want 2 got {len(bs) + 1}")
        b = bs[0]
        try:
            return bool({"ne": a != b, "lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[op])  # type: ignore[operator]
        except TypeError:
            raise TemplateError(f"error calling {op}: incompatible types for comparison") from None

    return compare


def _len(v: object) -> int:
    try:
        return len(v)  # type: ignore[arg-type]
    except TypeError:
        raise TemplateError(f"error calling len: len of type {type(v).__name__}") from None


def _join(items: object, sep: str) -> str:
    if not isinstance(items, list):
        raise TemplateError("error calling join: argument must be a list")
    return sep.join(go_str(x) for x in items)


def _short_circuit(*_args: object) -> object:
    """Stands for ``and``/``or``, which the executor evaluates itself (lazily)."""
    raise AssertionError("and/or are evaluated by the executor")


FUNCS: dict[str, Callable] = {
    "and": _short_circuit,
    "or": _short_circuit,
    "not": lambda v: not truth(v),
    "len": _len,
    "index": _index,
    "eq": _cmp("eq"),
    "ne": _cmp("ne"),
    "lt": _cmp("lt"),
    "le": _cmp("le"),
    "gt": _cmp("gt"),
    "ge": _cmp("ge"),
    "print": _sprint,
    "printf": _printf,
    "println": lambda *a: " ".join(go_str(x) for x in a) + "\n",
    "json": go_json,
    "join": _join,
    "split": lambda s, sep: str(s).split(sep),
    "upper": lambda s: go_str(s).upper(),
    "lower": lambda s: go_str(s).lower(),
    "title": lambda s: go_str(s).title(),
    "pad": lambda s, before, after: " " * int(before) + go_str(s) + " " * int(after),
    "truncate": lambda s, n: go_str(s)[: int(n)],
}


# -- execution --------------------------------------------------------------------------


class Template:
    """A parsed template; ``execute(data)`` renders it.

    ``missingkey="error"`` makes a missing map key an error (Docker's inspect fallback);
    the default prints ``<no value>`` as Go does.
    """

    def __init__(
        self, src: str, missingkey: str = "default", funcs: dict[str, Callable] | None = None
    ) -> None:
        self.src = src
        self.missingkey = missingkey
        self.funcs = FUNCS if funcs is None else funcs
        self.nodes = _Parser(src, FUNCS).parse()

    def execute(self, data: object) -> str:
        out: list[str] = []
        self._run(self.nodes, data, [("$", data)], out)
        return "".join(out)

    # scopes: a list of (name, value), searched from the end
    def _run(self, nodes: list, dot: object, scope: list, out: list[str]) -> None:
        for node in nodes:
            kind = node[0]
            if kind == "text":
                out.append(node[1])
            elif kind == "action":
                value = self._pipe(node[1], dot, scope)
                if not node[1][0]:  # declarations print nothing
                    out.append(go_str(value))
            elif kind == "if":
                mark = len(scope)
                if truth(self._pipe(node[1], dot, scope)):
                    self._run(node[2], dot, scope, out)
                else:
                    self._run(node[3], dot, scope, out)
                del scope[mark:]
            elif kind == "with":
                mark = len(scope)
                value = self._pipe(node[1], dot, scope)
                if truth(value):
                    self._run(node[2], value, scope, out)
                else:
                    self._run(node[3], dot, scope, out)
                del scope[mark:]
            elif kind == "range":
                self._range(node, dot, scope, out)

    def _range(self, node: tuple, dot: object, scope: list, out: list[str]) -> None:
        decl, _assign, cmds = node[1]
        value = self._pipe(([], False, cmds), dot, scope)
        if isinstance(value, dict):
            pairs = [(k, value[k]) for k in sorted(value)]
        elif isinstance(value, (list, tuple)):
            pairs = list(enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            pairs = [(i, i) for i in range(value)]
        elif value is None or value is MISSING:
            pairs = []
        else:
            raise TemplateError(
                f"template: :{_pos(self.src, 0).split(':')[0]}: range can't iterate over {go_str(value)}"
            )
        if not pairs:
            self._run(node[3], dot, scope, out)
            return
        for k, v in pairs:
            mark = len(scope)
            if len(decl) == 1:
                scope.append((decl[0], v))
            elif len(decl) == 2:
                scope += [(decl[0], k), (decl[1], v)]
            self._run(node[2], v, scope, out)
            del scope[mark:]

    def _lookup_var(self, name: str, scope: list, off: int) -> object:
        for n, v in reversed(scope):
            if n == name:
                return v
        raise self._err(off, f"undefined variable: {name}", at=name)

    def _err(self, off: int, msg: str, at: str = "") -> TemplateError:
        where = f'executing "" at <{at}>: ' if at else ""
        return TemplateError(f"template: :{_pos(self.src, off)}: {where}{msg}")

    def _pipe(self, pipe: tuple, dot: object, scope: list) -> object:
        decl, assign, cmds = pipe
        value: object = MISSING
        first = True
        for cmd in cmds:
            value = self._command(cmd, dot, scope, None if first else value, not first)
            first = False
        if decl:
            if assign:
                for idx in range(len(scope) - 1, -1, -1):
                    if scope[idx][0] == decl[0]:
                        scope[idx] = (decl[0], value)
                        break
                else:
                    raise TemplateError(f"template: :1: undefined variable: {decl[0]}")
            else:
                scope.append((decl[0], value))
        return value

    def _command(self, cmd: list, dot: object, scope: list, piped: object, has_piped: bool) -> object:
        head = cmd[0]
        if head[0] == "ident":
            name = head[1]
            if name in ("and", "or"):
                args = [self._arg(a, dot, scope) for a in cmd[1:]] + ([piped] if has_piped else [])
                if not args:
                    raise self._err(head[2], f"wrong number of args for {name}: want at least 1 got 0", name)
                for a in args:
                    if truth(a) != (name == "and"):
                        return a
                return args[-1]
            args = [self._arg(a, dot, scope) for a in cmd[1:]] + ([piped] if has_piped else [])
            try:
                return self.funcs[name](*args)
            except TemplateError as exc:
                raise self._err(head[2], str(exc), name) from None
            except TypeError:
                raise self._err(head[2], f"wrong number of args for {name}", name) from None
        if len(cmd) > 1 or has_piped:
            if head[0] in ("field", "var", "chain"):
                args = [self._arg(a, dot, scope) for a in cmd[1:]] + ([piped] if has_piped else [])
                return self._arg(head, dot, scope, args)
            raise self._err(
                head[2] if len(head) > 2 else 0, "can't give argument to non-function " + _describe(head)
            )
        return self._arg(head, dot, scope)

    def _arg(self, node: tuple, dot: object, scope: list, call_args: list | None = None) -> object:
        kind = node[0]
        if kind == "field":
            return self._fields(dot, node[1], node[2], "." + ".".join(node[1]), call_args)
        if kind == "var":
            name, fields = node[1]
            base = self._lookup_var(name, scope, node[2])
            return self._fields(base, fields, node[2], name + "".join("." + f for f in fields), call_args)
        if kind == "chain":
            base = self._arg(node[1], dot, scope)
            return self._fields(base, node[2], node[3], "." + ".".join(node[2]), call_args)
        if kind == "pipe":
            return self._pipe(node[1], dot, scope)
        if kind == "ident":
            return self._command([node], dot, scope, None, False)
        return node[1]  # str / num / bool / nil

    def _fields(self, value: object, names: list[str], off: int, text: str, call_args: list | None) -> object:
        for i, name in enumerate(names):
            last = i == len(names) - 1
            if isinstance(value, dict):
                if name in value:
                    value = value[name]
                elif self.missingkey == "error":
                    raise self._err(off, f'map has no entry for key "{name}"', text)
                else:
                    value = MISSING
            elif value is None or value is MISSING:
                raise self._err(off, f"nil pointer evaluating interface {{}}.{name}", text)
            else:
                raise self._err(off, f"can't evaluate field {name} in type {_go_type(value)}", text)
            if callable(value):
                value = value(*(call_args or [])) if last else value()
                if last:
                    call_args = None
        if call_args:
            raise self._err(off, f"{names[-1] if names else '.'} is not a method but has arguments", text)
        return value


def _go_type(value: object) -> str:
    if isinstance(value, list):
        return "[]interface {}"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (int, float)):
        return "float64"
    return type(value).__name__


def _describe(node: tuple) -> str:
    return repr(node[1])


def header_funcs(headers: set[str]) -> dict[str, Callable]:
    """Docker's ``HeaderFunctions``: when rendering a table header, functions pass the header through."""

    def passthrough(*args: object) -> object:
        for a in args:
            if a in headers:
                return a
        return args[0] if args else ""

    funcs: dict[str, Callable] = {name: passthrough for name in FUNCS}
    funcs["and"] = funcs["or"] = _short_circuit
    funcs["println"] = FUNCS["println"]
    return funcs


def render(src: str, data: object, missingkey: str = "default") -> str:
    """Parse and execute ``src`` against ``data`` (a convenience for one-off use)."""
    return Template(src, missingkey).execute(data)
