"""The encoding every Store backend shares: JSON documents and prefix ranges."""

from __future__ import annotations

import pytest

from cnm.errors import SystemFailure
from cnm.store.encoding import dump_doc, load_doc, prefix_successor


@pytest.mark.parametrize(
    "prefix,expected",
    [
        ("", None),
        ("a", "b"),
        ("n1/", "n10"),
        ("a\U0010ffff", "b"),
        ("\U0010ffff", None),
        ("\ud7ff", "\ue000"),
    ],
)
def test_prefix_successor(prefix: str, expected: str | None) -> None:
    assert prefix_successor(prefix) == expected


def test_documents_round_trip_as_compact_json() -> None:
    doc = {"name": "n\u00e9t", "n": [1, 2.5, None, True], "sub": {"lone": "\ud800"}}
    text = dump_doc("network/a", doc)
    assert text.isascii() and " " not in text
    assert load_doc("network/a", text) == doc


@pytest.mark.parametrize("bad", [{"s": {1}}, {"nan": float("inf")}, {"o": object()}, {1: {2: object()}}])
def test_what_is_not_json_is_refused_naming_the_key(bad: dict) -> None:
    with pytest.raises(SystemFailure, match="cannot store network/a: document is not JSON"):
        dump_doc("network/a", bad)


@pytest.mark.parametrize("text,why", [("not json", "not valid JSON"), ("[1]", "not a JSON object")])
def test_a_stored_text_that_is_no_document_is_a_system_failure(text: str, why: str) -> None:
    with pytest.raises(SystemFailure, match=f"stored document network/a is {why}"):
        load_doc("network/a", text)
