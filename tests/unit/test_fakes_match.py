"""The fakes the unit tier runs on stand in for the real thing only while they offer what it
offers (and so do the real backends): every method and attribute of the protocol (or, for the API's ``FakeController``,
of the engine facade the API calls), with the same parameters (names, kinds, which have
defaults) and the same async-ness (coroutine, async iterator, plain).

Nothing here lists methods: they are read from the protocols and from the API's code, so a
method added to a protocol, or a new call the API makes on the engine, fails this test
until the fakes follow.  Types are mypy's business; this checks what mypy cannot see,
because the fakes are never assigned to the protocol types in typed code.
"""

from __future__ import annotations

import ast
import functools
import inspect
import typing
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Protocol

import pytest

from cnm.api.context import Api
from cnm.firewall.api import Firewall, SpoofGuard
from cnm.firewall.fake import FakeFirewall, FakeSpoofGuard
from cnm.kernel.api import Kernel, WireGuard
from cnm.kernel.fake import FakeKernel, FakeWireGuard
from cnm.runtime.api import Process, Runtime
from cnm.runtime.fake import FakeRuntime, _FakeProcess
from cnm.store.api import Store
from cnm.store.memory import MemoryStore

try:
    from test_api_fakes import FakeController, FakeProcess
except ImportError:  # tests/ made a package
    from .test_api_fakes import FakeController, FakeProcess  # type: ignore[no-redef]

API_SRC = Path(__file__).resolve().parents[2] / "src" / "cnm" / "api"

# -- what a class offers --------------------------------------------------------------------

_ASYNC_ITERATORS = ("AsyncIterator", "AsyncGenerator", "AsyncIterable")


def flavour(fn: Callable[..., Any]) -> str:
    """How a caller uses ``fn``: awaits it, iterates it with ``async for``, or calls it.  A
    plain ``def`` annotated to return an async iterator is used like an ``async def`` with
    ``yield`` (an async generator), so the two are one flavour."""
    if inspect.isasyncgenfunction(fn):
        return "async iterator"
    if inspect.iscoroutinefunction(fn):
        return "coroutine"
    returns = str(getattr(fn, "__annotations__", {}).get("return", ""))
    return "async iterator" if returns.startswith(_ASYNC_ITERATORS) else "plain"


def _own_classes(cls: type) -> list[type]:
    """``cls`` and its bases that are the project's (not object, Protocol, Generic)."""
    return [c for c in cls.__mro__ if c.__module__ not in ("builtins", "typing", "typing_extensions")]


def methods(cls: type) -> dict[str, Callable[..., Any]]:
    """Public methods of ``cls`` (inherited ones included), as plain functions."""
    found: dict[str, Callable[..., Any]] = {}
    for klass in reversed(_own_classes(cls)):
        for name, value in vars(klass).items():
            if name.startswith("_"):
                continue
            if isinstance(value, staticmethod | classmethod):
                value = value.__func__
            if inspect.isfunction(value):
                found[name] = value
            else:
                found.pop(name, None)  # overridden by an attribute
    return found


def _assigned_on_self(cls: type) -> set[str]:
    """Names a class's own methods assign as ``self.<name> = ...``."""
    names: set[str] = set()
    for klass in _own_classes(cls):
        try:
            tree = ast.parse(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for target in targets:
                if isinstance(target, ast.Attribute) and getattr(target.value, "id", "") == "self":
                    names.add(target.attr)
    return names


def attributes(cls: type) -> set[str]:
    """Public data attributes of ``cls``: annotated, set on the class, or set on ``self``."""
    names = set(_assigned_on_self(cls))
    for klass in _own_classes(cls):
        names |= set(getattr(klass, "__annotations__", {}))
        names |= {n for n, v in vars(klass).items() if not inspect.isfunction(v)}
    return {n for n in names if not n.startswith("_")}


def _shape(fn: Callable[..., Any]) -> list[tuple[str, str, bool]]:
    """(name, kind, has a default) of every parameter after ``self``."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    return [(p.name, p.kind.description, p.default is not p.empty) for p in params]


def differences(real: Callable[..., Any], fake: Callable[..., Any]) -> list[str]:
    """How ``fake`` would fail a caller written against ``real`` (empty: it would not)."""
    problems = []
    if flavour(real) != flavour(fake):
        problems.append(f"is {flavour(fake)}, the real one is {flavour(real)}")
    want, have = _shape(real), _shape(fake)
    if [(n, k) for n, k, _ in want] != [(n, k) for n, k, _ in have]:
        problems.append(f"takes ({_show(have)}), the real one takes ({_show(want)})")
    else:
        for (name, _, default), (_, _, fake_default) in zip(want, have, strict=True):
            if default and not fake_default:
                problems.append(f"has no default for {name}, the real one has")
    return problems


def _show(shape: list[tuple[str, str, bool]]) -> str:
    return ", ".join(f"{n} [{k}{', default' if d else ''}]" for n, k, d in shape)


def mismatches(real: type, fake: type, names: Collection[str] | None = None) -> list[str]:
    """What ``fake`` lacks or does differently among ``real``'s public members (only
    ``names`` when given); methods both have are compared even when not in ``names``."""
    real_methods, fake_methods = methods(real), methods(fake)
    wanted = set(real_methods) | attributes(real) if names is None else names
    problems = []
    for name in sorted(wanted):
        if name in real_methods:
            if name not in fake_methods:
                problems.append(f"{fake.__name__}.{name} is missing ({real.__name__} has it)")
        elif name not in attributes(fake) and name not in fake_methods:
            problems.append(f"{fake.__name__}.{name} is missing (an attribute of {real.__name__})")
    for name in sorted(set(real_methods) & set(fake_methods)):
        for problem in differences(real_methods[name], fake_methods[name]):
            problems.append(f"{fake.__name__}.{name} {problem}")
    return problems


# -- the protocols and their fakes ------------------------------------------------------------

PAIRS: list[tuple[type, type]] = [
    (Kernel, FakeKernel),
    (WireGuard, FakeWireGuard),
    (Firewall, FakeFirewall),
    (SpoofGuard, FakeSpoofGuard),
    (Runtime, FakeRuntime),
    (Process, FakeProcess),
    (Process, _FakeProcess),
    (Store, MemoryStore),
]


@pytest.mark.parametrize("protocol,fake", PAIRS, ids=lambda c: c.__name__)
def test_fake_offers_what_its_protocol_promises(protocol: type, fake: type) -> None:
    assert issubclass(protocol, Protocol)  # type: ignore[arg-type]
    assert methods(protocol), f"{protocol.__name__} has no methods: nothing was compared"
    assert mismatches(protocol, fake) == []


def _backends() -> list[tuple[type, type]]:
    """The concrete backends the daemon wires (imported here only: a unit test)."""
    from cnm.drivers.api import NetworkDriver
    from cnm.drivers.bridge import BridgeDriver
    from cnm.drivers.host import HostDriver
    from cnm.drivers.null import NullDriver
    from cnm.firewall.bridge_guard import NftBridgeGuard
    from cnm.firewall.iptables import IptablesFirewall
    from cnm.firewall.nftables import NftablesFirewall
    from cnm.ipam.api import Ipam
    from cnm.ipam.default import DefaultIpam
    from cnm.kernel.netlink import LinuxKernel
    from cnm.kernel.wireguard_go import WireGuardGo
    from cnm.runtime.runc import ExecProcess, RuncRuntime
    from cnm.store.etcd import EtcdStore
    from cnm.store.sqlite import SqliteStore

    return [
        (Kernel, LinuxKernel),
        (WireGuard, WireGuardGo),
        (Firewall, NftablesFirewall),
        (Firewall, IptablesFirewall),
        (SpoofGuard, NftBridgeGuard),
        (Runtime, RuncRuntime),
        (Process, ExecProcess),
        (Store, SqliteStore),
        (Store, EtcdStore),
        (Ipam, DefaultIpam),
        (NetworkDriver, BridgeDriver),
        (NetworkDriver, HostDriver),
        (NetworkDriver, NullDriver),
    ]


@pytest.mark.parametrize("protocol,backend", _backends(), ids=lambda c: c.__name__)
def test_backend_offers_what_its_protocol_promises(protocol: type, backend: type) -> None:
    """The same check on the real implementations: the fakes and the backends agree."""
    assert mismatches(protocol, backend) == []


# -- the engine facade the API calls, and FakeController ------------------------------------------


@functools.cache
def facade() -> tuple[str, type]:
    """The field of the API's context that holds the engine, and its class (read from the
    type hints of ``cnm.api.context.Api``, so it follows whatever the engine offers)."""
    hints = typing.get_type_hints(Api)
    engine = {
        name: hint
        for name, hint in hints.items()
        if isinstance(hint, type) and hint.__module__.startswith("cnm.engine")
    }
    assert len(engine) == 1, f"expected one engine object in Api, found {engine}"
    return next(iter(engine.items()))


@functools.cache
def called_by_api(field: str, facade_name: str) -> frozenset[str]:
    """Every attribute the API's code reaches on the engine object: ``<x>.<field>.name``,
    and ``name`` on a variable bound to ``<x>.<field>`` or annotated with the facade."""
    names: set[str] = set()
    for path in sorted(API_SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        bound = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and _is_facade(node.value, field, set()):
                bound |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            elif isinstance(node, ast.arg) and node.annotation is not None:
                if ast.unparse(node.annotation).split(".")[-1].strip("'\"") == facade_name:
                    bound.add(node.arg)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _is_facade(node.value, field, bound):
                names.add(node.attr)
    return frozenset(names)


def _is_facade(node: ast.expr, field: str, bound: set[str]) -> bool:
    if isinstance(node, ast.Attribute) and node.attr == field:
        return True
    return isinstance(node, ast.Name) and node.id in bound


def test_the_api_is_seen_calling_the_engine() -> None:
    """The scan below finds the calls (a scan that found nothing would prove nothing)."""
    field, cls = facade()
    called = called_by_api(field, cls.__name__)
    assert {"create_network", "find_container"} <= called
    unknown = called - set(methods(cls)) - attributes(cls)
    assert unknown == set(), f"the API calls what {cls.__name__} does not have"


def test_fake_controller_offers_what_the_api_calls() -> None:
    field, cls = facade()
    assert mismatches(cls, FakeController, called_by_api(field, cls.__name__)) == []


# -- each check can fail -----------------------------------------------------------------------


def _without(cls: type, name: str) -> type:
    """A copy of ``cls`` without method ``name``."""
    body = {k: v for k, v in vars(cls).items() if k not in (name, "__dict__", "__weakref__")}
    return type(f"{cls.__name__}Without_{name}", (), body)


def _with(cls: type, **replacements: Any) -> type:
    return type(f"{cls.__name__}Changed", (cls,), replacements)


async def _ensure_bridge_positional(self, name, owner, mtu, address):  # type: ignore[no-untyped-def]
    return 1


async def _links_renamed(self, netns=None):  # type: ignore[no-untyped-def]
    return []


async def _links_no_default(self, netns_path):  # type: ignore[no-untyped-def]
    return []


def _create_netns_sync(self, path):  # type: ignore[no-untyped-def]
    return None


async def _watch_coroutine(self, prefix, from_revision):  # type: ignore[no-untyped-def]
    return []


async def _set_sysctl_extra(self, key, value, netns_path=None, force=False):  # type: ignore[no-untyped-def]
    return ""


class _NoDaemonId:
    """Has every method of FakeKernel but not its ``daemon_id`` attribute."""


for _name, _fn in methods(FakeKernel).items():
    setattr(_NoDaemonId, _name, _fn)


@pytest.mark.parametrize(
    "protocol,fake,needle",
    [
        (Kernel, _without(FakeKernel, "add_veth"), "add_veth is missing"),
        (Kernel, _NoDaemonId, "daemon_id is missing"),
        (Kernel, _with(FakeKernel, ensure_bridge=_ensure_bridge_positional), "ensure_bridge takes"),
        (Kernel, _with(FakeKernel, links=_links_renamed), "links takes"),
        (Kernel, _with(FakeKernel, links=_links_no_default), "no default for netns_path"),
        (Kernel, _with(FakeKernel, create_netns=_create_netns_sync), "create_netns is plain"),
        (Kernel, _with(FakeKernel, set_sysctl=_set_sysctl_extra), "set_sysctl takes"),
        (Firewall, _without(FakeFirewall, "healthy"), "healthy is missing"),
        (SpoofGuard, _without(FakeSpoofGuard, "heal"), "heal is missing"),
        (Runtime, _without(FakeRuntime, "exec"), "exec is missing"),
        (Store, _with(MemoryStore, watch=_watch_coroutine), "watch is coroutine"),
        (Store, _without(MemoryStore, "commit"), "commit is missing"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_fake_that_drifted_is_caught(protocol: type, fake: type, needle: str) -> None:
    found = mismatches(protocol, fake)
    assert any(needle in problem for problem in found), found


def test_a_fake_controller_missing_a_call_of_the_api_is_caught() -> None:
    field, cls = facade()
    called = called_by_api(field, cls.__name__) & set(methods(cls))
    name = sorted(called)[0]
    found = mismatches(cls, _without(FakeController, name), called)
    assert f"{name} is missing" in " ".join(found), found
