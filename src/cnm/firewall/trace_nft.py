"""Evaluate one packet against an nftables ruleset read back as JSON (``nft -j list table``):
which rule of which chain decides it at each hook, and what it does (accept, drop, DNAT
to where, masquerade).

Pure functions, no I/O: ``cnm trace`` (``engine/trace.py``) reads the live table and the
routes, and asks this module what each hook does to the packet it expects.  The evaluator
knows the expressions cnm's own rules use (``render_nft``) and the common ones a user may
put in the user chain: ``meta iifname|oifname|l4proto``, ``ip|ip6 saddr|daddr``, ``th|tcp|udp
dport|sport``, ``ct state|status``, ``fib daddr type``, concatenations, named and
anonymous sets (prefixes, ranges, intervals), maps in ``dnat``, and the verdicts
``accept``, ``drop``, ``reject``, ``jump``, ``goto``, ``return`` and ``continue``.  A rule
using anything else is reported as not evaluated (assumed not to match) rather than
guessed at.

At one hook the base chains run in priority order; a drop ends the packet, an accept ends
only its own chain.  NAT statements are terminal in their chain (``dnat``, ``snat``,
``masquerade``), and a map lookup that misses ends the rule without effect, as in the
kernel.  The element of a named set or map that matched is reported with its comment, so
the caller can name the network or container that owns it (``cnm:<id> (<name>)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any

from cnm.errors import InvalidArgument

HOOKS = ("prerouting", "input", "forward", "output", "postrouting")
PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "sctp": 132, "ipv6-icmp": 58}
IPAddress = IPv4Address | IPv6Address
VERDICTS = ("accept", "drop", "reject", "return", "continue")
_MAX_DEPTH = 16  # jumps deep: the kernel's own limit is 16 too


class Unsupported(Exception):
    """An expression the evaluator does not know (the rule is reported, not guessed)."""


@dataclass(frozen=True, slots=True)
class Packet:
    """The header fields and kernel state the rules can look at, for one packet.

    ``iif``/``oif``: interface names ("" when there is none at that hook: no input
    interface for the host's own traffic, no output interface before routing).
    ``local_daddr``: ``fib daddr type local`` (the destination is one of the host's
    addresses).  ``ct_status``: "dnat" once a NAT rule rewrote the destination.  An IPv6
    packet (evaluated against the ``ip6`` table) has IPv6 addresses and, for ICMP,
    ``l4proto`` "ipv6-icmp"."""

    saddr: IPAddress
    daddr: IPAddress
    l4proto: str = "tcp"
    dport: int | None = None
    sport: int | None = None
    iif: str = ""
    oif: str = ""
    ct_state: str = "new"
    ct_status: frozenset[str] = frozenset()
    local_daddr: bool = False


@dataclass(frozen=True, slots=True)
class Step:
    """One rule met on the way: where it is, its text, whether it matched, what it did.
    ``elements``: comments of the set or map elements whose lookup decided the rule
    (matched, or for a negated lookup the element that made it fail)."""

    chain: str
    handle: int
    text: str
    matched: bool
    action: str = ""  # "accept", "drop", "jump user", "dnat to 10.0.0.2:80", "masquerade", ...
    elements: tuple[str, ...] = ()
    note: str = ""  # why it was not evaluated


@dataclass(frozen=True, slots=True)
class HookResult:
    """What one hook did: ``verdict`` "accept" or "drop"; ``decided_by`` the rule whose
    verdict ended the last chain that ran (None: every chain ended by its policy, or
    the hook has no chain).  ``packet`` is the packet as it leaves the hook (DNAT
    applied); ``nat`` says which NAT statement ran ("dnat", "snat", "masquerade")."""

    hook: str
    verdict: str
    steps: tuple[Step, ...] = ()
    decided_by: Step | None = None
    packet: Packet | None = None
    nat: str = ""
    chains: tuple[str, ...] = ()  # the base chains that ran, in order
    policy_chain: str = ""  # the chain whose policy gave the verdict, when none decided


# -- the ruleset --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Chain:
    name: str
    hook: str = ""
    priority: int = 0
    policy: str = "accept"
    rules: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class Ruleset:
    """The chains and named sets and maps of one table, from ``nft -j list table``."""

    table: str
    chains: Mapping[str, Chain] = field(default_factory=dict)
    sets: Mapping[str, tuple[tuple[Any, Any, str], ...]] = field(default_factory=dict)  # (key, data, comment)


def parse_ruleset(objects: Iterable[Mapping[str, Any]]) -> Ruleset:
    """A ``Ruleset`` from the objects of ``nft -j list table …`` (the list under
    ``"nftables"``, or the whole answer)."""
    if isinstance(objects, Mapping):
        objects = objects.get("nftables", [])
    table = ""
    heads: dict[str, Chain] = {}
    rules: dict[str, list[Mapping[str, Any]]] = {}
    sets: dict[str, tuple[tuple[Any, Any, str], ...]] = {}
    for obj in objects:
        if "table" in obj:
            table = str(obj["table"].get("name", ""))
        elif "chain" in obj:
            c = obj["chain"]
            heads[c["name"]] = Chain(
                name=c["name"],
                hook=str(c.get("hook", "")),
                priority=int(c.get("prio", 0)),
                policy=str(c.get("policy", "accept")),
            )
        elif "rule" in obj:
            rules.setdefault(obj["rule"]["chain"], []).append(obj["rule"])
        elif "set" in obj or "map" in obj:
            body = obj["set"] if "set" in obj else obj["map"]
            sets[body["name"]] = tuple(_elements(body.get("elem") or ()))
    chains = {name: replace(chain, rules=tuple(rules.get(name, ()))) for name, chain in heads.items()}
    return Ruleset(table=table, chains=chains, sets=sets)


def _elements(raw: Iterable[Any]) -> Iterable[tuple[Any, Any, str]]:
    for item in raw:
        key, data = (item[0], item[1]) if isinstance(item, list) and len(item) == 2 else (item, None)
        comment = ""
        if isinstance(key, dict) and "elem" in key:
            comment = str(key["elem"].get("comment", ""))
            key = key["elem"]["val"]
        yield key, data, comment


# -- evaluation ---------------------------------------------------------------------------


def evaluate_hook(ruleset: Ruleset, hook: str, packet: Packet) -> HookResult:
    """Run ``packet`` through every base chain of ``ruleset`` at ``hook``, in priority order."""
    if hook not in HOOKS:
        raise InvalidArgument(f"unknown hook {hook!r}: expected one of {', '.join(HOOKS)}")
    bases = sorted((c for c in ruleset.chains.values() if c.hook == hook), key=lambda c: c.priority)
    steps: list[Step] = []
    decided: Step | None = None
    policy_chain = ""
    nat = ""
    for base in bases:
        run = _ChainRun(ruleset, packet, steps)
        verdict, step = run.chain(base.name, 0)
        packet = run.packet
        nat = nat or run.nat
        if verdict in ("", "return", "continue"):
            verdict, step, policy_chain = base.policy, None, base.name
        else:
            policy_chain = ""
        decided = step
        if verdict in ("drop", "reject"):
            return HookResult(
                hook, "drop", tuple(steps), step, packet, nat, tuple(b.name for b in bases), policy_chain
            )
    return HookResult(
        hook, "accept", tuple(steps), decided, packet, nat, tuple(b.name for b in bases), policy_chain
    )


class _ChainRun:
    """One base chain's evaluation: follows jumps, records each rule met."""

    def __init__(self, ruleset: Ruleset, packet: Packet, steps: list[Step]) -> None:
        self.ruleset = ruleset
        self.packet = packet
        self.steps = steps
        self.nat = ""

    def chain(self, name: str, depth: int) -> tuple[str, Step | None]:
        """(verdict, the step that gave it) of chain ``name``: "" when it ran off its end."""
        if depth > _MAX_DEPTH:
            raise InvalidArgument(f"chain {name}: jumps nested deeper than {_MAX_DEPTH}")
        chain = self.ruleset.chains.get(name)
        if chain is None:
            raise InvalidArgument(f"table {self.ruleset.table} has no chain {name!r}")
        for rule in chain.rules:
            verdict, step = self.rule(name, rule, depth)
            if verdict == "return":
                return "", step
            if verdict:
                return verdict, step
        return "", None

    def rule(self, chain: str, rule: Mapping[str, Any], depth: int) -> tuple[str, Step | None]:
        handle = int(rule.get("handle", 0))
        exprs = rule.get("expr", ())
        text = rule_text(exprs)
        elements: list[str] = []
        try:
            for expr in exprs:
                if "match" in expr:
                    if not self.match(expr["match"], elements):
                        self.steps.append(Step(chain, handle, text, False, elements=tuple(elements)))
                        return "", None
                    continue
                outcome = self.statement(expr, elements)
                if outcome is None:  # a non-terminal statement (counter, log, mark, ...)
                    continue
                if outcome == "":  # a map lookup missed: the rule ends, no effect
                    self.steps.append(Step(chain, handle, text, False, elements=tuple(elements)))
                    return "", None
                step = Step(chain, handle, text, True, outcome, tuple(elements))
                self.steps.append(step)
                kind = outcome.split()[0]
                if kind in ("jump", "goto"):
                    target = outcome.split()[1]
                    verdict, inner = self.chain(target, depth + 1)
                    if verdict or kind == "goto":
                        return (verdict or "return"), (inner if verdict else step)
                    return "", None  # the jumped-to chain returned: on to the next rule
                if kind in ("dnat", "snat", "masquerade"):
                    return "accept", step
                return kind, step
        except Unsupported as exc:
            self.steps.append(Step(chain, handle, text, False, note=f"not evaluated: {exc}"))
            return "", None
        self.steps.append(Step(chain, handle, text, True, elements=tuple(elements)))
        return "", None

    # -- matches ----------------------------------------------------------------------

    def match(self, m: Mapping[str, Any], elements: list[str]) -> bool:
        op = m.get("op", "==")
        left = self.value(m["left"])
        right = m["right"]
        if isinstance(right, str) and right.startswith("@"):
            hit = self.lookup(right[1:], left)
            if hit is not None and hit[2]:
                elements.append(hit[2])
            found = hit is not None
            return found if op in ("==", "in") else not found
        if op == "in" or isinstance(right, list):  # flags: ct state established,related
            wanted = right if isinstance(right, list) else [right]
            have = left if isinstance(left, frozenset) else frozenset([left])
            found = any(str(w) in have for w in wanted)
            return found if op in ("==", "in") else not found
        if isinstance(right, dict) and "set" in right:
            found = any(_element_matches(e, left) for e in right["set"])
            return found if op == "==" else not found
        equal = _element_matches(right, left)
        if op == "==":
            return equal
        if op == "!=":
            return not equal
        raise Unsupported(f"operator {op}")

    def value(self, expr: Any) -> Any:
        """The packet's value of a left-hand expression."""
        p = self.packet
        if isinstance(expr, dict) and "concat" in expr:
            return tuple(self.value(e) for e in expr["concat"])
        if isinstance(expr, dict) and "meta" in expr:
            key = expr["meta"]["key"]
            if key in ("iifname", "oifname"):
                return p.iif if key == "iifname" else p.oif
            if key == "l4proto":
                return p.l4proto
            if key == "nfproto":
                return "ipv6" if p.daddr.version == 6 else "ipv4"
            raise Unsupported(f"meta {key}")
        if isinstance(expr, dict) and "payload" in expr:
            proto, name = expr["payload"].get("protocol"), expr["payload"].get("field")
            if proto in ("ip", "ip6") and name in ("saddr", "daddr"):
                if (proto == "ip6") != (p.daddr.version == 6):
                    return None  # an ip match never matches an IPv6 packet, and the reverse
                return p.saddr if name == "saddr" else p.daddr
            if proto in ("th", "tcp", "udp", "sctp") and name in ("dport", "sport"):
                if proto != "th" and proto != p.l4proto:
                    return None  # a tcp match never matches a udp packet
                return p.dport if name == "dport" else p.sport
            raise Unsupported(f"{proto} {name}")
        if isinstance(expr, dict) and "ct" in expr:
            key = expr["ct"]["key"]
            if key == "state":
                return frozenset([p.ct_state])
            if key == "status":
                return p.ct_status
            raise Unsupported(f"ct {key}")
        if isinstance(expr, dict) and "fib" in expr:
            fib = expr["fib"]
            if fib.get("result") == "type" and fib.get("flags") == ["daddr"]:
                return "local" if p.local_daddr else "unicast"
            raise Unsupported(f"fib {' '.join(fib.get('flags', []))} {fib.get('result')}")
        raise Unsupported(f"expression {_short(expr)}")

    def lookup(self, name: str, key: Any) -> tuple[Any, Any, str] | None:
        if name not in self.ruleset.sets:
            raise Unsupported(f"set @{name} absent")
        for element in self.ruleset.sets[name]:
            if _element_matches(element[0], key):
                return element
        return None

    # -- statements -------------------------------------------------------------------

    def statement(self, expr: Mapping[str, Any], elements: list[str]) -> str | None:
        """The action of a statement ("" a map lookup missed; None: not terminal)."""
        ((kind, body),) = expr.items()
        if kind in ("accept", "drop", "reject", "return", "continue"):
            return kind
        if kind in ("jump", "goto"):
            return f"{kind} {body['target']}"
        if kind in ("counter", "log", "limit", "comment", "mangle", "notrack"):
            return None
        if kind == "masquerade":
            self.nat = "masquerade"
            return "masquerade"
        if kind in ("dnat", "snat"):
            addr, port = self.nat_target(body, elements)
            if addr is None:
                return ""
            self.nat = kind
            if kind == "dnat":
                self.packet = replace(
                    self.packet,
                    daddr=addr,
                    dport=port if port is not None else self.packet.dport,
                    ct_status=self.packet.ct_status | {"dnat"},
                )
            else:
                self.packet = replace(self.packet, ct_status=self.packet.ct_status | {"snat"})
            return f"{kind} to {host_port(addr, port)}"
        raise Unsupported(f"statement {kind}")

    def nat_target(self, body: Mapping[str, Any], elements: list[str]) -> tuple[IPAddress | None, int | None]:
        addr = body.get("addr")
        port = body.get("port")
        if isinstance(addr, dict) and "map" in addr:
            data_ref = addr["map"]["data"]
            if not (isinstance(data_ref, str) and data_ref.startswith("@")):
                raise Unsupported("an anonymous NAT map")
            hit = self.lookup(data_ref[1:], self.value(addr["map"]["key"]))
            if hit is None:
                return None, None
            if hit[2]:
                elements.append(hit[2])
            data = hit[1]
            if isinstance(data, dict) and "concat" in data:
                return ip_address(data["concat"][0]), int(data["concat"][1])
            return ip_address(str(data)), None
        if isinstance(addr, str):
            return ip_address(addr), int(port) if isinstance(port, int) else None
        raise Unsupported(f"NAT target {_short(addr)}")


def host_port(addr: IPAddress | str, port: int | None) -> str:
    """``addr:port`` as people write it: ``[addr]:port`` for IPv6; ``addr`` without a port."""
    if port is None:
        return str(addr)
    return f"[{addr}]:{port}" if ":" in str(addr) else f"{addr}:{port}"


def _element_matches(element: Any, value: Any) -> bool:
    """Whether a set element (or a literal on a rule's right) holds ``value``."""
    if isinstance(element, dict) and "concat" in element:
        parts = element["concat"]
        return (
            isinstance(value, tuple)
            and len(value) == len(parts)
            and all(_element_matches(e, v) for e, v in zip(parts, value, strict=True))
        )
    if isinstance(element, dict) and "elem" in element:
        return _element_matches(element["elem"]["val"], value)
    if value is None:
        return False
    if isinstance(element, dict) and "prefix" in element:
        net = ip_network(f"{element['prefix']['addr']}/{element['prefix']['len']}", strict=False)
        return isinstance(value, (IPv4Address, IPv6Address)) and value.version == net.version and value in net
    if isinstance(element, dict) and "range" in element:
        low, high = element["range"]
        if isinstance(value, (IPv4Address, IPv6Address)):
            lo, hi = ip_address(low), ip_address(high)
            return lo.version == hi.version == value.version and int(lo) <= int(value) <= int(hi)
        return isinstance(value, int) and int(low) <= value <= int(high)
    if isinstance(value, (IPv4Address, IPv6Address)):
        try:
            return ip_address(str(element)) == value
        except ValueError:
            return False
    if isinstance(value, int) and not isinstance(element, int):
        return str(element) == str(value)
    if isinstance(value, str) and isinstance(element, int):  # a protocol by number
        return PROTOCOLS.get(value) == element
    if isinstance(value, frozenset):
        return str(element) in value
    if isinstance(element, str) and isinstance(value, str) and element.endswith("*"):
        return value.startswith(element[:-1])  # an interface wildcard: "veth*"
    return bool(element == value)


# -- text ---------------------------------------------------------------------------------


def rule_text(exprs: Sequence[Mapping[str, Any]]) -> str:
    """A rule's JSON back to (close to) the text ``nft list`` prints."""
    return " ".join(_expr_text(e) for e in exprs)


def _operand(expr: Any) -> str:
    if isinstance(expr, dict):
        if "concat" in expr:
            return " . ".join(_operand(e) for e in expr["concat"])
        if "meta" in expr:
            key = expr["meta"]["key"]
            return key if key in ("iifname", "oifname", "iif", "oif") else f"meta {key}"
        if "payload" in expr:
            return f"{expr['payload'].get('protocol')} {expr['payload'].get('field')}"
        if "ct" in expr:
            return f"ct {expr['ct']['key']}"
        if "fib" in expr:
            return f"fib {' . '.join(expr['fib'].get('flags', []))} {expr['fib'].get('result')}"
        if "prefix" in expr:
            return f"{expr['prefix']['addr']}/{expr['prefix']['len']}"
        if "range" in expr:
            return f"{expr['range'][0]}-{expr['range'][1]}"
        if "set" in expr:
            return "{ " + ", ".join(_operand(e) for e in expr["set"]) + " }"
        if "map" in expr:
            return f"{_operand(expr['map']['key'])} map {_operand(expr['map']['data'])}"
        return _short(expr)
    if isinstance(expr, list):
        return ",".join(_operand(e) for e in expr)
    if isinstance(expr, str) and not expr.startswith("@") and any(c in expr for c in "-."):
        try:
            ip_address(expr)
        except ValueError:
            return f'"{expr}"'
    return str(expr)


def _expr_text(expr: Mapping[str, Any]) -> str:
    ((kind, body),) = expr.items()
    if kind == "match":
        op = body.get("op", "==")
        shown = "" if op in ("==", "in") else f"{op} "
        return f"{_operand(body['left'])} {shown}{_operand(body['right'])}"
    if kind in ("jump", "goto"):
        return f"{kind} {body['target']}"
    if kind in ("dnat", "snat"):
        target = _operand(body.get("addr"))
        port = f":{body['port']}" if "port" in body else ""
        family = f" {body['family']}" if body.get("family") else ""
        return f"{kind}{family} to {target}{port}"
    if body is None:
        return kind
    return f"{kind} {_short(body)}"


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."
