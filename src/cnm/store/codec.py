"""Model dataclasses <-> store documents (JSON-able dicts), generically over their fields.

``encode`` walks a value: dataclasses become ``{field name: value}``, tuples become lists,
mappings become objects, IPv4 addresses/networks/interfaces become their text.  ``decode``
walks the declared types (``typing.get_type_hints``, since the model modules use
``from __future__ import annotations``) and rebuilds the frozen objects: tuples as tuples,
mappings as read-only ``MappingProxyType``s.

Compatibility rules, so records written by one cnm version load in another:
unknown keys in a document are ignored, missing keys (and ``null`` for a field that
cannot be None) take the field's default; a dataclass with a ``from_text`` classmethod
also reads the text an earlier version stored in its place (``NetworkMode``).  A document that cannot be decoded raises
``SystemFailure`` naming the class, the field and the value.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, TypeVar

from cnm.errors import CnmError, SystemFailure

T = TypeVar("T")

_IP_TYPES = (IPv4Address, IPv4Network, IPv4Interface)
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


def _encode_value(value: Any) -> Any:
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


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def _fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(cls)


def decode(cls: type[T], doc: Mapping[str, Any]) -> T:
    """Rebuild a ``cls`` instance from its document (see the module's compatibility rules)."""
    try:
        value: T = _decode_dataclass(cls, doc)
        return value
    except _DecodeError as exc:
        raise SystemFailure(f"cannot decode stored {cls.__name__}: {exc}") from None


def _has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _decode_dataclass(cls: type, doc: Any) -> Any:
    from_text = getattr(cls, "from_text", None)
    if isinstance(doc, str) and from_text is not None:  # an earlier version stored its text
        try:
            return from_text(doc)
        except (ValueError, CnmError) as exc:
            raise _DecodeError(f"invalid {cls.__name__} {doc!r}: {exc}") from None
    if not isinstance(doc, Mapping):
        raise _DecodeError(f"{cls.__name__} wants an object, got {doc!r}")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in _fields(cls):
        if not f.init:
            continue
        if f.name not in doc:
            if not _has_default(f):
                raise _DecodeError(f"{cls.__name__}.{f.name} is missing")
            continue  # the dataclass supplies the default
        raw = doc[f.name]
        tp = hints[f.name]
        if raw is None and not _allows_none(tp) and _has_default(f):
            continue
        try:
            kwargs[f.name] = _decode_value(tp, raw)
        except _DecodeError as exc:
            raise _DecodeError(f"{cls.__name__}.{f.name}: {exc}") from None
    try:
        return cls(**kwargs)
    except (ValueError, CnmError) as exc:  # the class's own checks refused the values
        raise _DecodeError(f"{cls.__name__}: {exc}") from None


def _allows_none(tp: Any) -> bool:
    if tp is Any or tp is type(None):
        return True
    return _is_union(tp) and type(None) in typing.get_args(tp)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _decode_value(tp: Any, raw: Any) -> Any:
    if tp is Any:
        return raw
    if tp is type(None):
        if raw is not None:
            raise _DecodeError(f"expected null, got {raw!r}")
        return None
    if _is_union(tp):
        args = typing.get_args(tp)
        if raw is None:
            if type(None) in args:
                return None
            raise _DecodeError("null is not allowed")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _decode_value(arg, raw)
            except _DecodeError as exc:
                errors.append(str(exc))
        raise _DecodeError("; ".join(errors))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _decode_dataclass(tp, raw)
    if tp in _IP_TYPES:
        if not isinstance(raw, str):
            raise _DecodeError(f"expected {tp.__name__} text, got {raw!r}")
        try:
            return tp(raw)
        except ValueError as exc:
            raise _DecodeError(f"invalid {tp.__name__} {raw!r}: {exc}") from None
    if tp is bool:
        if not isinstance(raw, bool):
            raise _DecodeError(f"expected bool, got {raw!r}")
        return raw
    if tp is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise _DecodeError(f"expected int, got {raw!r}")
        return raw
    if tp is float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise _DecodeError(f"expected number, got {raw!r}")
        return float(raw)
    if tp is str:
        if not isinstance(raw, str):
            raise _DecodeError(f"expected str, got {raw!r}")
        return raw
    origin = typing.get_origin(tp) or tp
    args = typing.get_args(tp)
    if origin is tuple:
        if not isinstance(raw, list):
            raise _DecodeError(f"expected a list, got {raw!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode_value(args[0], v) for v in raw)
        if not args:
            return tuple(raw)
        if len(args) != len(raw):
            raise _DecodeError(f"expected {len(args)} items, got {raw!r}")
        return tuple(_decode_value(a, v) for a, v in zip(args, raw, strict=True))
    if origin in (Mapping, dict, typing.Mapping) or (
        isinstance(origin, type) and issubclass(origin, Mapping)
    ):
        if not isinstance(raw, dict):
            raise _DecodeError(f"expected an object, got {raw!r}")
        value_type = args[1] if len(args) == 2 else Any
        decoded = {k: _decode_value(value_type, v) for k, v in raw.items()}
        # A field declared ``dict`` gets a dict; a ``Mapping`` (the model's choice) a
        # read-only view, as immutable as the frozen record holding it.
        return decoded if origin is dict else types.MappingProxyType(decoded)
    if origin in (list, frozenset, set):
        if not isinstance(raw, list):
            raise _DecodeError(f"expected a list, got {raw!r}")
        item = args[0] if args else Any
        return origin(_decode_value(item, v) for v in raw)
    raise _DecodeError(f"unsupported type {tp!r}")
