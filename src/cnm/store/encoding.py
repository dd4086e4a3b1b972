"""How every Store backend keeps keys and documents: a document is stored as compact JSON
text (``dump_doc``/``load_doc``: what is not JSON is refused, a stored text that is not a
JSON object is a SystemFailure naming the key), and a prefix is the key range
``[prefix, prefix_successor(prefix))`` in code-point order.

A module of its own so the backends (SQLite, etcd, the in-memory reference, the document
store of release 1) share it without importing one another.
"""

from __future__ import annotations

import json

from cnm.errors import SystemFailure
from cnm.store.api import Document


def dump_doc(key: str, doc: Document) -> str:
    """JSON text of ``doc``, or SystemFailure naming the key."""
    try:
        return json.dumps(doc, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SystemFailure(f"cannot store {key}: document is not JSON: {exc}") from exc


def load_doc(key: str, text: str) -> Document:
    """The document stored as ``text``; SystemFailure if it is not a JSON object."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise SystemFailure(f"stored document {key} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise SystemFailure(f"stored document {key} is not a JSON object")
    return doc


def prefix_successor(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (in
    code-point order), or None when there is none (empty prefix, or only U+10FFFF)."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            nxt = last + 1
            if 0xD800 <= nxt <= 0xDFFF:  # surrogates are not encodable in UTF-8: skip them
                nxt = 0xE000
            return "".join(chars) + chr(nxt)
    return None
