"""The wire-level fast path of ``answer``: the same decisions as dnspython, without it.

A plain query that is not a container name is read straight from the wire and handed on
as a ``Forward``; everything else goes through dnspython.  The property: whenever the
fast path forwards a query, the dnspython path would have forwarded it too, with the same
question, size limit and EDNS flag.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnm.dns import answer
from cnm.dns.forwarder import question_section
from cnm.dns.records import NameTable, Upstream


def table(**config: bool) -> NameTable:
    names = NameTable()
    names.set_endpoint("sb", "n", "net", "api", ("api", "svc_1"), IPv4Address("10.1.0.3"))
    names.configure("sb", [Upstream(IPv4Address("192.0.2.53"), 53, True)], **config)
    return names


def slow(names: NameTable, data: bytes, tcp: bool) -> bytes | answer.Forward | None:
    """The dnspython path alone (the fast one switched off)."""
    return answer._respond_parsed(names, "sb", data, tcp, None)


def test_plain_queries_take_the_fast_path():
    names = table()
    for query in (
        dns.message.make_query("example.org", "A"),
        dns.message.make_query("Example.ORG", "AAAA", use_edns=0, payload=1232),
        dns.message.make_query("_sip._tcp.example.org", "SRV"),
        dns.message.make_query(
            "example.org", "TXT", use_edns=0, options=[dns.edns.GenericOption(10, b"12345678")]
        ),
    ):
        wire = query.to_wire()
        fast = answer._fast_forward(names, "sb", wire, False)
        assert isinstance(fast, answer.Forward), query
        assert fast == slow(names, wire, False)

    def max_size(wire: bytes, tcp: bool) -> int:
        forward = answer._fast_forward(names, "sb", wire, tcp)
        assert forward is not None
        return forward.max_size

    edns = dns.message.make_query("example.org", "A", use_edns=0, payload=1232).to_wire()
    assert max_size(edns, False) == 1232
    assert max_size(edns, True) == answer.TCP_MAX
    assert max_size(dns.message.make_query("x.org", "A").to_wire(), False) == 512


@pytest.mark.parametrize(
    "wire",
    [
        dns.message.make_query("api", "A").to_wire(),  # a container name: local
        dns.message.make_query("API.net", "MX").to_wire(),  # local (empty NOERROR)
        dns.message.make_query("3.0.1.10.in-addr.arpa", "PTR").to_wire(),  # maybe local
        dns.message.make_query("we.ird\\.name", "A").to_wire(),  # escapes in to_text
        dns.message.make_query("example.org", "A").to_wire() + b"\x00",  # trailing junk
        dns.message.make_query("example.org", "A", use_edns=1).to_wire(),  # EDNS version 1
    ],
)
def test_what_needs_dnspython_does_not_take_the_fast_path(wire: bytes):
    assert answer._fast_forward(table(), "sb", wire, False) is None


def test_fast_path_keeps_ndots_and_no_upstream_rules():
    single = dns.message.make_query("intranet", "A").to_wire()
    assert isinstance(answer._fast_forward(table(), "sb", single, False), answer.Forward)
    assert answer._fast_forward(table(ndots_set=True), "sb", single, False) is None
    reply = dns.message.from_wire(answer.respond(table(ndots_set=True), "sb", single, tcp=False))  # type: ignore[arg-type]
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer == []
    internal = table(internal_only=True)  # its only upstream is a host one: unusable
    assert answer._fast_forward(internal, "sb", single, False) is None
    reply = dns.message.from_wire(answer.respond(internal, "sb", single, tcp=False))  # type: ignore[arg-type]
    assert reply.rcode() == dns.rcode.SERVFAIL


def test_compressed_question_is_forwarded_with_a_plain_question():
    # a question whose name is a pointer to itself is a loop (FORMERR); one whose name is
    # written out is plain: dnspython's path gives the canonical question section
    query = dns.message.make_query("Example.org", "A")
    forward = answer.respond(table(), "sb", query.to_wire(), tcp=False)
    assert isinstance(forward, answer.Forward)
    assert forward.question == question_section(query.to_wire())
    assert forward.question == b"\x07example\x03org\x00\x00\x01\x00\x01"


def _mutate(data: bytes, positions: list[int], values: list[int]) -> bytes:
    out = bytearray(data)
    for pos, val in zip(positions, values, strict=False):
        out[pos % len(out)] = val
    return bytes(out)


queries = st.builds(
    lambda name, rdtype, edns, payload: dns.message.make_query(
        name, rdtype, use_edns=0 if edns else None, payload=payload
    ).to_wire(),
    st.from_regex(r"[A-Za-z0-9_-]{1,10}(\.[A-Za-z0-9_-]{1,10}){0,3}", fullmatch=True),
    st.sampled_from(["A", "AAAA", "MX", "TXT", "SRV", "PTR", "ANY", "OPT"]),
    st.booleans(),
    st.integers(0, 65535),
)
mutated = st.builds(
    _mutate, queries, st.lists(st.integers(0, 200), max_size=4), st.lists(st.integers(0, 255), max_size=4)
)


@settings(max_examples=600, deadline=None)
@given(data=st.one_of(queries, mutated, st.binary(min_size=12, max_size=80)), tcp=st.booleans())
def test_fast_path_agrees_with_dnspython(data: bytes, tcp: bool):
    names = table()
    if len(data) < 12 or data[2] & 0x80:
        return  # dropped before either path
    fast = answer._fast_forward(names, "sb", data, tcp)
    if fast is not None:
        assert fast == slow(names, data, tcp)


def _forward(wire: bytes, max_size: int = 512) -> answer.Forward:
    forward = answer.respond(table(), "sb", wire, tcp=max_size > 512)
    assert isinstance(forward, answer.Forward)
    return forward


@pytest.mark.parametrize("edns", [False, True])
def test_servfail_from_the_wire(edns: bool):
    query = dns.message.make_query("Example.org", "AAAA", use_edns=0 if edns else None)
    query.flags |= dns.flags.CD
    reply = dns.message.from_wire(answer.servfail(_forward(query.to_wire())))
    assert reply.id == query.id and reply.rcode() == dns.rcode.SERVFAIL
    assert reply.flags & dns.flags.QR and reply.flags & dns.flags.RA and reply.flags & dns.flags.RD
    assert reply.flags & dns.flags.CD and not reply.flags & dns.flags.AA
    assert reply.question == query.question and str(reply.question[0].name) == "Example.org."
    assert (reply.edns >= 0) == edns and (reply.payload == 4096 if edns else True)


def test_fit_passes_what_fits_and_truncates_the_rest():
    query = dns.message.make_query("example.org", "A")
    forward = _forward(query.to_wire())
    small = b"\x00" * 100
    assert answer.fit(forward, small) is small
    big = bytearray(600)
    big[3] = dns.rcode.NXDOMAIN
    reply = dns.message.from_wire(answer.fit(forward, bytes(big)))
    assert reply.flags & dns.flags.TC and reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.id == query.id and reply.question == query.question and reply.answer == []


def test_forward_query_property_parses_the_wire():
    query = dns.message.make_query("example.org", "A")
    assert _forward(query.to_wire()).query.question == query.question


def test_question_section():
    wire = dns.message.make_query("A.b", "MX").to_wire()
    assert question_section(wire) == b"\x01a\x01b\x00" + struct.pack("!HH", 15, 1)
    assert question_section(wire[:12] + b"\xc0\x0c\x00\x01\x00\x01") is None
    assert question_section(wire[:-1]) is None
    assert question_section(wire[:13]) is None


_FRESH = r"""
import struct, sys
from ipaddress import IPv4Address
from cnm.dns import answer, server  # what cnmd imports to serve
from cnm.dns.records import NameTable, Upstream

assert "dns.message" not in sys.modules, "dnspython imported before any query"
names = NameTable()
names.set_endpoint("sb", "n", "net", "api", ("api",), IPv4Address("10.1.0.3"))
names.configure("sb", [Upstream(IPv4Address("192.0.2.53"), 53, True)])
query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x07example\x03org\x00" + b"\x00\x01\x00\x01"
assert isinstance(answer.respond(names, "sb", query, tcp=False), answer.Forward)
assert "dns.message" not in sys.modules, "a forwarded plain query needed dnspython"
local = struct.pack("!HHHHHH", 0x4321, 0x0100, 1, 0, 0, 0) + b"\x03api\x00" + b"\x00\x01\x00\x01"
reply = answer.respond(names, "sb", local, tcp=False)
import dns.message
parsed = dns.message.from_wire(reply)
print(parsed.id, [rd.address for rrset in parsed.answer for rd in rrset])
"""


def test_dnspython_is_imported_by_the_first_query_that_needs_it_not_at_start():
    """cnmd's start imports no dnspython (a good part of a restart's imports): a plain
    forwarded query needs none, and the first container name loads it and is answered
    as before."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _FRESH], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["17185", "['10.1.0.3']"]
