"""Docker's ``filters`` query parameter: parsing (both JSON forms) and matching.

The Go CLI sends ``{"name":{"foo":true}}``; docker-py sends the legacy ``{"name":["foo"]}``.
Matching follows moby's ``api/types/filters``: ``match`` is exact or an unanchored regex,
``exact`` is equality, ``match_kv`` is the label test (every ``k`` / ``k=v`` must hold).
An absent field matches everything.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

from cnm.errors import InvalidArgument


class Filters:
    """Parsed filters: field -> values (in the order given)."""

    def __init__(self, fields: Mapping[str, list[str]] | None = None) -> None:
        self._fields: dict[str, list[str]] = {k: list(v) for k, v in (fields or {}).items() if v}

    @classmethod
    def parse(cls, raw: str | None, accepted: Iterable[str]) -> Filters:
        """Parse ``raw`` (the query value, possibly empty); a field outside ``accepted``
        is 400 ``invalid filter '<field>'``."""
        if raw is None or not raw.strip():
            return cls()
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise InvalidArgument(f"invalid filter: {exc}") from None
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise InvalidArgument("invalid filter: expected a JSON object")
        allowed = set(accepted)
        fields: dict[str, list[str]] = {}
        for key, value in data.items():
            if key not in allowed:
                raise InvalidArgument(f"invalid filter '{key}'")
            if isinstance(value, dict):
                values = [str(k) for k, on in value.items() if on]
            elif isinstance(value, list):
                values = [str(v) for v in value]
            elif isinstance(value, str):
                values = [value]
            else:
                raise InvalidArgument(f"invalid filter '{key}'")
            fields[key] = values
        return cls(fields)

    def __contains__(self, key: str) -> bool:
        return key in self._fields

    def __bool__(self) -> bool:
        return bool(self._fields)

    def values(self, key: str) -> list[str]:
        return list(self._fields.get(key, ()))

    def match(self, key: str, source: str) -> bool:
        """True when ``key`` is absent, or some value equals ``source`` or is a regex
        found anywhere in it (Go's unanchored ``regexp.MatchString``)."""
        values = self._fields.get(key)
        if not values:
            return True
        for value in values:
            if value == source:
                return True
            try:
                if re.search(value, source):
                    return True
            except re.error:
                continue
        return False

    def exact(self, key: str, source: str) -> bool:
        values = self._fields.get(key)
        return not values or source in values

    def match_kv(self, key: str, labels: Mapping[str, str]) -> bool:
        """Every ``k`` must be a label and every ``k=v`` must hold (moby's MatchKVList)."""
        values = self._fields.get(key)
        if not values:
            return True
        for value in values:
            name, sep, want = value.partition("=")
            if name not in labels:
                return False
            if sep and labels[name] != want:
                return False
        return True

    def labels(self, key: str = "label") -> dict[str, str | None]:
        """``label`` values as a dict: ``k`` -> None (any value), ``k=v`` -> ``v``."""
        out: dict[str, str | None] = {}
        for value in self._fields.get(key, ()):
            name, sep, want = value.partition("=")
            out[name] = want if sep else None
        return out

    def bool_value(self, key: str) -> bool | None:
        """A single boolean (``dangling``): None when absent; 400 when several or bad."""
        values = self._fields.get(key)
        if not values:
            return None
        if len(values) > 1:
            raise InvalidArgument(f"got more than one value for filter key '{key}'")
        raw = values[0].lower()
        if raw in ("true", "1"):
            return True
        if raw in ("false", "0"):
            return False
        raise InvalidArgument(f"invalid filter '{key}={values[0]}'")
