"""Model dataclasses <-> store documents (JSON-able dicts), generically over their fields.

``encode`` walks a value: dataclasses become ``{field name: value}``, tuples become lists,
mappings become objects, IP addresses/networks/interfaces (either family) become their text.  ``decode``
follows the declared types (``typing.get_type_hints``, since the model modules use
``from __future__ import annotations``) and rebuilds the frozen objects: tuples as tuples,
mappings as read-only ``MappingProxyType``s.

Both are compiled once per type: the first use of a class turns its fields and their
declared types into a chain of small functions (a decoder per field, a field list per
encoded class), so a daemon start decoding every record pays for the reflection once,
not once per record.

Compatibility rules, so records written by one cnm version load in another:
unknown keys in a document are ignored, missing keys (and ``null`` for a field that
cannot be None) take the field's default; a dataclass with a ``from_text`` classmethod
also reads the text an earlier version stored in its place (``NetworkMode``).  A document that cannot be decoded raises
``SystemFailure`` naming the class, the field and the value.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import socket
import types
import typing
from collections.abc import Callable, Mapping
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import Any, TypeVar

from cnm.errors import CnmError, SystemFailure

T = TypeVar("T")

_IP_TYPES = (IPv4Address, IPv4Network, IPv4Interface, IPv6Address, IPv6Network, IPv6Interface)
_IPV6_TYPES = (IPv6Address, IPv6Network, IPv6Interface)
_SCALARS = (str, int, float, bool)


class _DecodeError(Exception):
    """Internal: a value does not fit its declared type; becomes SystemFailure at the top."""


# -- encode ------------------------------------------------------------------------------


def encode(obj: Any) -> dict[str, Any]:
    """The document of a model dataclass instance."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"encode() wants a dataclass instance, not {type(obj).__name__}")
    doc: dict[str, Any] = _encode_value(obj)
    return doc


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


@functools.cache
def _fields_getter(cls: type) -> tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]:
    """A dataclass's field names and one C-level call reading all their values."""
    names = _field_names(cls)
    if not names:
        return names, lambda obj: ()
    if len(names) == 1:
        (name,) = names
        return names, lambda obj: (getattr(obj, name),)
    getter: Callable[[Any], tuple[Any, ...]] = operator.attrgetter(*names)
    return names, getter


def _encode_value(value: Any) -> Any:
    # exact types first (the bulk of any record), then the general rules in their order;
    # a plain scalar inside a container is kept as it is without a call (most values are)
    kind: type = type(value)
    if kind in _PLAIN:
        return value
    if kind in _IP_TYPES:
        return str(value)
    if kind is tuple or kind is list:
        return [v if type(v) in _PLAIN else _encode_value(v) for v in value]
    if (kind is types.MappingProxyType or kind is dict) and all(type(k) is str for k in value):
        return {k: v if type(v) in _PLAIN else _encode_value(v) for k, v in value.items()}
    if hasattr(kind, "__dataclass_fields__") and kind is not type:
        names, get = _fields_getter(kind)
        return {
            n: v if type(v) in _PLAIN else _encode_value(v) for n, v in zip(names, get(value), strict=True)
        }
    return _encode_other(value)


_PLAIN = frozenset({str, int, float, bool, type(None)})


def _encode_other(value: Any) -> Any:
    if value is None or isinstance(value, _SCALARS):
        return value
    if isinstance(value, _IP_TYPES):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"cannot encode mapping key {k!r}: keys must be str")
            out[k] = _encode_value(v)
        return out
    if isinstance(value, (tuple, list, frozenset, set)):
        return [_encode_value(v) for v in value]
    raise TypeError(f"cannot encode {type(value).__name__} value {value!r}")


# -- decode ------------------------------------------------------------------------------

Decoder = Callable[[Any], Any]
"""Compiled for one declared type: the document's value -> the object (_DecodeError if it
does not fit)."""


def decode(cls: type[T], doc: Mapping[str, Any]) -> T:
    """Rebuild a ``cls`` instance from its document (see the module's compatibility rules)."""
    try:
        tp: type = cls
        value: T = _decoder(tp)(doc)
        return value
    except _DecodeError as exc:
        raise SystemFailure(f"cannot decode stored {cls.__name__}: {exc}") from None


def _has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _allows_none(tp: Any) -> bool:
    if tp is Any or tp is type(None):
        return True
    return _is_union(tp) and type(None) in typing.get_args(tp)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


@functools.cache
def _decoder(tp: Any) -> Decoder:
    """The decoder of the declared type ``tp``, built once.  The rules, in this order: Any
    takes anything; None only null; a union the first member that fits; dataclasses,
    IP values, bool, int (not bool), float (int too), str; tuples, mappings, lists and
    sets of their declared items.  Any other type fails when a value meets it."""
    if tp is Any:
        return _any
    if tp is type(None):
        return _none
    if _is_union(tp):
        return _union_decoder(typing.get_args(tp))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass_decoder(tp)
    if tp in _IP_TYPES:
        return _ip_decoder(tp)
    if tp in _SCALAR_DECODERS:
        return _SCALAR_DECODERS[tp]
    origin = typing.get_origin(tp) or tp
    args = typing.get_args(tp)
    if origin is tuple:
        return _tuple_decoder(args)
    if origin in (Mapping, dict, typing.Mapping) or (
        isinstance(origin, type) and issubclass(origin, Mapping)
    ):
        return _mapping_decoder(args[1] if len(args) == 2 else Any, read_only=origin is not dict)
    if origin in (list, frozenset, set):
        return _collection_decoder(origin, args[0] if args else Any)
    return _unsupported(tp)


def _any(raw: Any) -> Any:
    return raw


def _none(raw: Any) -> None:
    if raw is not None:
        raise _DecodeError(f"expected null, got {raw!r}")


def _bool(raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise _DecodeError(f"expected bool, got {raw!r}")
    return raw


def _int(raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise _DecodeError(f"expected int, got {raw!r}")
    return raw


def _float(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise _DecodeError(f"expected number, got {raw!r}")
    return float(raw)


def _str(raw: Any) -> str:
    if not isinstance(raw, str):
        raise _DecodeError(f"expected str, got {raw!r}")
    return raw


_SCALAR_DECODERS: dict[Any, Decoder] = {bool: _bool, int: _int, float: _float, str: _str}


def _unsupported(tp: Any) -> Decoder:
    def fail(raw: Any) -> Any:
        raise _DecodeError(f"unsupported type {tp!r}")

    return fail


def _union_decoder(args: tuple[Any, ...]) -> Decoder:
    nullable = type(None) in args
    members = [_decoder(a) for a in args if a is not type(None)]

    def union(raw: Any) -> Any:
        if raw is None:
            if nullable:
                return None
            raise _DecodeError("null is not allowed")
        errors = []
        for member in members:
            try:
                return member(raw)
            except _DecodeError as exc:
                errors.append(str(exc))
        raise _DecodeError("; ".join(errors))

    return union


def _ip_decoder(tp: type) -> Decoder:
    def ip(raw: Any) -> Any:
        if not isinstance(raw, str):
            raise _DecodeError(f"expected {tp.__name__} text, got {raw!r}")
        try:
            return _packed_ip(tp, raw)
        except ValueError:
            pass  # not the plain form: ``tp`` reads the text itself (and names the fault)
        try:
            return tp(raw)
        except ValueError as exc:
            raise _DecodeError(f"invalid {tp.__name__} {raw!r}: {exc}") from None

    return ip


def _packed_ip(tp: type, text: str) -> Any:
    """``tp(text)`` for the plain forms a store holds (``a.b.c.d``, ``a.b.c.d/len``), the
    address read by ``inet_pton`` (as strict as ``ipaddress``: four decimal octets, no
    leading zeros) and given packed, which ``ipaddress`` takes several times faster than
    text; ValueError for anything else (IPv6 values included: ``tp`` reads their text)."""
    if tp in _IPV6_TYPES:
        raise ValueError(text)
    address, slash, prefix = text.partition("/")
    try:
        packed = socket.inet_pton(socket.AF_INET, address)
    except OSError:
        raise ValueError(text) from None
    if not slash:
        if tp is not IPv4Address:
            raise ValueError(text)  # a network or interface without its length
        return IPv4Address(packed)
    if tp is IPv4Address or not (prefix.isascii() and prefix.isdigit()):
        raise ValueError(text)
    return tp((packed, int(prefix)))


def _tuple_decoder(args: tuple[Any, ...]) -> Decoder:
    if len(args) == 2 and args[1] is Ellipsis:
        item = _decoder(args[0])

        def variadic(raw: Any) -> tuple[Any, ...]:
            if not isinstance(raw, list):
                raise _DecodeError(f"expected a list, got {raw!r}")
            return tuple([item(v) for v in raw])

        return variadic
    items = [_decoder(a) for a in args]

    def fixed(raw: Any) -> tuple[Any, ...]:
        if not isinstance(raw, list):
            raise _DecodeError(f"expected a list, got {raw!r}")
        if not items:
            return tuple(raw)
        if len(items) != len(raw):
            raise _DecodeError(f"expected {len(items)} items, got {raw!r}")
        return tuple([dec(v) for dec, v in zip(items, raw, strict=True)])

    return fixed


def _mapping_decoder(value_type: Any, *, read_only: bool) -> Decoder:
    value = _decoder(value_type)

    def mapping(raw: Any) -> Any:
        if not isinstance(raw, dict):
            raise _DecodeError(f"expected an object, got {raw!r}")
        decoded = {k: value(v) for k, v in raw.items()}
        # A field declared ``dict`` gets a dict; a ``Mapping`` (the model's choice) a
        # read-only view, as immutable as the frozen record holding it.
        return types.MappingProxyType(decoded) if read_only else decoded

    return mapping


def _collection_decoder(origin: Any, item_type: Any) -> Decoder:
    item = _decoder(item_type)

    def collection(raw: Any) -> Any:
        if not isinstance(raw, list):
            raise _DecodeError(f"expected a list, got {raw!r}")
        return origin(item(v) for v in raw)

    return collection


_MISSING: Any = object()


def _dataclass_decoder(cls: type) -> Decoder:
    """The decoder of a dataclass: its fields' decoders are looked up at the first document
    (not here), so classes may refer to each other, or to themselves.

    Two paths: a function written for the class at its first document (``_unrolled``),
    which takes a plain ``dict`` whose fields all fit, and the general one below, which
    takes the rest -- and any document the first refuses, so every error is the general
    path's, word for word."""
    name = cls.__name__
    from_text = getattr(cls, "from_text", None)
    # (field name, its decoder, has a default, takes null) for each field __init__ takes
    plan: list[tuple[str, Decoder, bool, bool]] | None = None
    fast: Decoder | None = None

    def compile_fields() -> list[tuple[str, Decoder, bool, bool]]:
        hints = typing.get_type_hints(cls)
        return [
            (f.name, _decoder(hints[f.name]), _has_default(f), _allows_none(hints[f.name]))
            for f in dataclasses.fields(cls)
            if f.init
        ]

    def dataclass(doc: Any) -> Any:
        nonlocal fast
        if type(doc) is dict:
            if fast is None:
                fast = _unrolled(cls, compile_fields(), general)
            return fast(doc)
        return general(doc)

    def general(doc: Any) -> Any:
        nonlocal plan
        if isinstance(doc, str) and from_text is not None:  # an earlier version stored its text
            try:
                return from_text(doc)
            except (ValueError, CnmError) as exc:
                raise _DecodeError(f"invalid {name} {doc!r}: {exc}") from None
        if not isinstance(doc, Mapping):
            raise _DecodeError(f"{name} wants an object, got {doc!r}")
        if plan is None:
            plan = compile_fields()
        kwargs: dict[str, Any] = {}
        for field_name, field_decoder, has_default, nullable in plan:
            raw = doc.get(field_name, _MISSING)
            if raw is _MISSING:
                if not has_default:
                    raise _DecodeError(f"{name}.{field_name} is missing")
                continue  # the dataclass supplies the default
            if raw is None and not nullable and has_default:
                continue
            try:
                kwargs[field_name] = field_decoder(raw)
            except _DecodeError as exc:
                raise _DecodeError(f"{name}.{field_name}: {exc}") from None
        try:
            return cls(**kwargs)
        except (ValueError, CnmError) as exc:  # the class's own checks refused the values
            raise _DecodeError(f"{name}: {exc}") from None

    return dataclass


_INLINE: dict[Decoder, str] = {_str: "str", _bool: "bool", _int: "int"}  # checks written inline


def _unrolled(cls: type, plan: list[tuple[str, Decoder, bool, bool]], general: Decoder) -> Decoder:
    """``cls``'s decoder for a ``dict``, written out field by field (no loop over a plan,
    the common scalar checks inline): the rules of the general path, which it hands the
    document to at the first thing that does not fit (a missing field without default,
    a value of another type, the class refusing the values)."""
    env: dict[str, Any] = {"cls": cls, "general": general, "MISSING": _MISSING, "Error": _DecodeError}
    lines = ["def decode(doc):", "    get = doc.get", "    kw = {}", "    try:"]
    for i, (field_name, field_decoder, has_default, nullable) in enumerate(plan):
        env[f"d{i}"] = field_decoder
        key = repr(field_name)
        lines.append(f"        raw = get({key}, MISSING)")
        if has_default:
            skip = "raw is not MISSING" if nullable else "raw is not MISSING and raw is not None"
            lines.append(f"        if {skip}:")
            indent = "            "
        else:
            lines.append("        if raw is MISSING:")
            lines.append("            return general(doc)")
            indent = "        "
        inline = _INLINE.get(field_decoder)
        if inline is not None and not nullable:
            lines.append(f"{indent}kw[{key}] = raw if raw.__class__ is {inline} else d{i}(raw)")
        else:
            lines.append(f"{indent}kw[{key}] = d{i}(raw)")
    lines += [
        "        return cls(**kw)",
        "    except (Error, ValueError, CnmError):",
        "        return general(doc)",
    ]
    env["CnmError"] = CnmError
    exec("\n".join(lines), env)  # noqa: S102 -- our own text, built from field names above
    decode: Decoder = env["decode"]
    return decode
