"""The CLI's HTTP client pieces that need no server: JSON bodies, URL encoding, host parsing."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cnm.cli.client import dumps, encode_query, parse_host, quote
from cnm.cli.errors import ConnectError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(json_values)
def test_dumps_round_trips_through_json(value):
    assert json.loads(dumps(value)) == value


def test_dumps_is_compact_and_keeps_order():
    assert dumps({"b": [1, True, None], "a": "é\n"}) == '{"b":[1,true,null],"a":"é\\n"}'.encode()


def test_quote_and_query():
    assert quote("test 01") == "test%2001"
    assert quote("busybox:1.36", "/:") == "busybox:1.36"
    assert (
        encode_query({"filters": '{"name":{"x":true}}', "all": None})
        == "?filters=%7B%22name%22%3A%7B%22x%22%3Atrue%7D%7D"
    )
    assert encode_query({}) == ""


def test_parse_host():
    assert parse_host("unix:///run/cnm/cnm.sock") == ("unix", "/run/cnm/cnm.sock")
    assert parse_host("tcp://127.0.0.1:2375") == ("tcp", ("127.0.0.1", 2375))
    with pytest.raises(ConnectError, match="only unix:// and tcp://"):
        parse_host("ssh://x")
