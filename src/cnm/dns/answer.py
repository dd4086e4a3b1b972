"""From one DNS query (bytes) to its answer: local for container names, else a forward.

Owns the wire-level rules of the embedded server (Docker's ``resolver.go``):

* A / AAAA / MX / PTR for container names are answered here, TTL 600, RA set, AA clear
  (Docker's ``createRespMsg``), several addresses shuffled by the ``NameTable``;
  a name with no address of the asked family gets an empty NOERROR, and MX for a
  container name an empty NOERROR (RFC 5321 implicit MX);
* everything else (other names, other types, other classes) is forwarded, except:
  a single-label A/AAAA when the user set ``ndots`` (empty answer, so the stub tries its
  search list) and a sandbox with no usable upstream (SERVFAIL, as Docker);
* UDP answers are cut to the client's EDNS size (512 without EDNS) with TC set;
* a local answer with at most one record is kept in ``AnswerCache`` keyed by the exact
  query bytes after the id, valid while the ``NameTable`` generation is unchanged (any
  change invalidates everything at once, so the next query sees it); answers with
  several records are built per query, to shuffle them;
* hostile input never raises: fewer than 12 bytes, or a *response* sent to us, is
  dropped (no reflection); anything else that does not parse gets FORMERR with the
  salvaged id; QDCOUNT != 1 gets FORMERR; opcodes other than QUERY get NOTIMP.

Forwarded names take a fast path: a plain query (one question whose labels are letters,
digits, ``-`` and ``_``; no records but at most one OPT; nothing after them) is read
straight from the wire -- name, type, class, EDNS payload -- and, when it is not a
container name, handed on as a ``Forward`` without building a dnspython message.  Every
other query, and every container name, goes through dnspython as before.  SERVFAIL and
the truncated form of a forwarded answer are built from the wire too.
"""

from __future__ import annotations

import logging
import struct
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cnm.dns.records import NameTable

if TYPE_CHECKING:  # imported by ``_dnspython`` when a query first needs it
    import dns.exception
    import dns.flags
    import dns.message
    import dns.name
    import dns.opcode
    import dns.rcode
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype
    import dns.rdtypes.ANY.PTR
    import dns.rdtypes.IN.A
    import dns.rdtypes.IN.AAAA
    import dns.renderer
    import dns.reversename
    import dns.rrset

log = logging.getLogger("cnm.dns")

TTL = 600
UDP_MIN = 512
TCP_MAX = 65535
_HEADER = 12
_QR = 0x8000
_OUR_EDNS_PAYLOAD = 4096
_OPCODE = 0x7800
_OPT_TYPE = 41
# bytes a label may hold on the fast path: those dnspython's to_text does not escape
_PLAIN = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
_OPT = b"\x00" + struct.pack("!HHIH", _OPT_TYPE, _OUR_EDNS_PAYLOAD, 0, 0)  # owner ".", no options
# RFC 1035's numbers, so that the wire-level paths need no dnspython
_A, _AAAA, _MX, _PTR = 1, 28, 15, 12  # types
_IN = 1  # class
_FORMERR, _SERVFAIL = 1, 2  # rcodes
_F_QR, _F_TC, _F_RD, _F_RA, _F_CD = 0x8000, 0x0200, 0x0100, 0x0080, 0x0010  # header flags


def _dnspython() -> None:
    """Import the parts of dnspython this module uses (binding the global ``dns``), before
    the first query that needs them: most queries are answered from the wire or the
    cache, and its imports are a good part of a daemon start that serves none yet."""
    global dns
    import dns.exception
    import dns.flags
    import dns.message
    import dns.name
    import dns.opcode
    import dns.rcode
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype
    import dns.rdtypes.ANY.PTR
    import dns.rdtypes.IN.A
    import dns.rdtypes.IN.AAAA
    import dns.renderer
    import dns.reversename
    import dns.rrset  # noqa: F401 -- (all of them reached through ``dns``)


def warm_up() -> None:
    """Import dnspython on a thread of its own, now (cnmd: once it serves), so that the
    first container name asked does not wait for it."""
    threading.Thread(target=_dnspython, name="dnspython import", daemon=True).start()


@dataclass(frozen=True, slots=True)
class Forward:
    """A query the sandbox's upstreams must answer: ``wire`` as the client sent it;
    ``question`` its question section (name, type, class) in wire form, lower-cased,
    which the upstream's answer must repeat; ``max_size`` what a UDP answer may take;
    ``edns`` whether the client sent an OPT record (answered with one)."""

    wire: bytes
    question: bytes
    max_size: int
    edns: bool

    @property
    def query(self) -> dns.message.Message:
        """The query parsed by dnspython (not needed to forward it; for tools and tests)."""
        _dnspython()
        return dns.message.from_wire(self.wire)


class AnswerCache:
    """Rendered local answers (see module doc); bounded, emptied when full or stale."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._generation = -1
        self._answers: dict[tuple[str, bool, bytes], bytes] = {}

    def get(self, names: NameTable, sandbox_id: str, data: bytes, tcp: bool) -> bytes | None:
        if self._generation != names.generation:
            self._answers.clear()
            self._generation = names.generation
            return None
        cached = self._answers.get((sandbox_id, tcp, data[2:]))
        return None if cached is None else data[:2] + cached

    def put(self, names: NameTable, sandbox_id: str, data: bytes, tcp: bool, reply: bytes) -> None:
        if self._generation != names.generation or len(self._answers) >= self.size:
            self._answers.clear()
            self._generation = names.generation
        self._answers[(sandbox_id, tcp, data[2:])] = reply[2:]


def respond(
    names: NameTable, sandbox_id: str, data: bytes, *, tcp: bool, cache: AnswerCache | None = None
) -> bytes | Forward | None:
    """The answer to ``data`` asked by ``sandbox_id``: bytes to send back, a ``Forward``,
    or None to drop it.  Never raises."""
    if cache is not None:
        cached = cache.get(names, sandbox_id, data, tcp)
        if cached is not None:
            return cached
    try:
        return _respond(names, sandbox_id, data, tcp, cache)
    except Exception:  # a bug must cost one answer, never the listener
        log.exception("dns: failed to answer a query from sandbox %s", sandbox_id[:12])
        return _error_from_header(data, _SERVFAIL)


def servfail(request: Forward) -> bytes:
    """SERVFAIL for a query that could not be forwarded (Docker's reply skeleton)."""
    return _wire_reply(request, _SERVFAIL)


def fit(request: Forward, wire: bytes) -> bytes:
    """A forwarded answer as it may go to a UDP client: as is when it fits, else an
    empty answer with the upstream's rcode and TC set (the client then asks again over
    TCP)."""
    if len(wire) <= request.max_size:
        return wire
    return _wire_reply(request, wire[3] & 0x0F, truncated=True)


def _wire_reply(request: Forward, rcode: int, *, truncated: bool = False) -> bytes:
    """``_reply`` built from the wire: the client's id, opcode, RD and CD; QR and RA;
    the question as asked; an OPT record (payload 4096) when the client sent one."""
    data = request.wire
    flags = (
        _F_QR
        | _F_RA
        | (int.from_bytes(data[2:4], "big") & (_F_RD | _F_CD | _OPCODE))
        | (_F_TC if truncated else 0)
        | rcode
    )
    question = data[_HEADER : _HEADER + len(request.question)]
    if len(question) != len(request.question) or question.lower() != request.question:
        question = request.question  # the client's name was compressed: send it plain
    head = data[:2] + struct.pack("!HHHHH", flags, 1, 0, 0, 1 if request.edns else 0)
    return head + question + (_OPT if request.edns else b"")


def _respond(
    names: NameTable, sandbox_id: str, data: bytes, tcp: bool, cache: AnswerCache | None
) -> bytes | Forward | None:
    if len(data) < _HEADER or int.from_bytes(data[2:4], "big") & _QR:
        return None
    forward = _fast_forward(names, sandbox_id, data, tcp)
    if forward is not None:
        return forward
    return _respond_parsed(names, sandbox_id, data, tcp, cache)


def _respond_parsed(
    names: NameTable, sandbox_id: str, data: bytes, tcp: bool, cache: AnswerCache | None
) -> bytes | Forward | None:
    """The answer to a query (at least a header, not a response) read by dnspython."""
    _dnspython()
    try:
        query = dns.message.from_wire(data)
    except Exception:  # dnspython raises many kinds on hostile input
        return _error_from_header(data, _FORMERR)
    if query.opcode() != dns.opcode.QUERY:
        return _reply(query, dns.rcode.NOTIMP, question=False).to_wire()
    if len(query.question) != 1:
        return _reply(query, dns.rcode.FORMERR, question=False).to_wire()
    max_size = TCP_MAX if tcp else max(UDP_MIN, min(query.payload, TCP_MAX)) if query.edns >= 0 else UDP_MIN
    question = query.question[0]
    if question.rdclass == _IN:
        local = _local(names, sandbox_id, query, question)
        if local is not None:
            wire = _render(local, max_size, tcp)
            if (
                cache is not None
                and (not local.answer or len(local.answer[0]) == 1)
                and not local.flags & dns.flags.TC
            ):
                cache.put(names, sandbox_id, data, tcp, wire)
            return wire
    config = names.config(sandbox_id)
    if (
        config.ndots_set
        and question.rdtype in (_A, _AAAA)
        and len(question.name.labels) <= 2  # one label and the root
    ):
        return _render(_reply(query), max_size, tcp)
    if not config.usable_upstreams():
        return _reply(query, dns.rcode.SERVFAIL).to_wire()
    # the question as dnspython read it, written out plain (the client's may be compressed)
    name = question.name.to_wire()
    assert name is not None  # no file given: the wire form is returned
    section = name + struct.pack("!HH", question.rdtype, question.rdclass)
    return Forward(data, section.lower(), max_size, query.edns >= 0)


def _fast_forward(names: NameTable, sandbox_id: str, data: bytes, tcp: bool) -> Forward | None:
    """The ``Forward`` for a plain query that is not a container name, read from the
    wire (see module doc); None when dnspython must look at it."""
    flags, qdcount, ancount, nscount, arcount = struct.unpack_from("!HHHHH", data, 2)
    if flags & _OPCODE or qdcount != 1 or ancount or nscount or arcount > 1:
        return None
    size = len(data)
    pos = _HEADER
    labels: list[bytes] = []
    while True:
        if pos >= size:
            return None
        length = data[pos]
        if length == 0:
            break
        if length > 63:  # compression or an extended label type
            return None
        label = data[pos + 1 : pos + 1 + length]
        if len(label) != length or label.translate(None, _PLAIN):  # cut short, or escapes
            return None
        labels.append(label)
        pos += 1 + length
    end = pos + 5
    if not labels or end - _HEADER > 255 + 4 or end > size:
        return None
    qtype, qclass = struct.unpack_from("!HH", data, pos + 1)
    max_size = TCP_MAX if tcp else UDP_MIN
    if arcount:  # it must be an OPT record, version 0, framed exactly
        if end + 11 > size or data[end] != 0:
            return None
        rtype, payload, _, version, _, rdlen = struct.unpack_from("!HHBBHH", data, end + 1)
        if rtype != _OPT_TYPE or version != 0 or end + 11 + rdlen != size:
            return None
        if not tcp:
            max_size = max(UDP_MIN, payload)
    elif end != size:  # trailing junk: dnspython's FORMERR
        return None
    if qclass == _IN and qtype in (_A, _AAAA, _MX, _PTR):
        if qtype == _PTR:  # maybe a container address: dnspython reads the reverse name
            return None
        if names.lookup_a(sandbox_id, b".".join(labels).decode("ascii")) is not None:
            return None  # a container name: answered locally
    config = names.config(sandbox_id)
    if config.ndots_set and qtype in (_A, _AAAA) and len(labels) == 1:
        return None  # an empty local answer
    if not config.usable_upstreams():
        return None  # SERVFAIL
    return Forward(data, data[_HEADER:end].lower(), max_size, bool(arcount))


def _local(
    names: NameTable, sandbox_id: str, query: dns.message.Message, question: dns.rrset.RRset
) -> dns.message.Message | None:
    """The local answer for a container name, or None to forward."""
    qtype = question.rdtype
    if qtype == _PTR:
        return _ptr(names, sandbox_id, query, question.name)
    if qtype not in (_A, _AAAA, _MX):
        return None
    text = question.name.to_text(omit_final_dot=True)
    if qtype == _MX:
        if names.lookup_a(sandbox_id, text) is None and names.lookup_aaaa(sandbox_id, text) is None:
            return None
        return _reply(query)
    rdata_type: type[dns.rdata.Rdata]
    if qtype == _A:
        found = names.lookup_a(sandbox_id, text)
        rdata_type = dns.rdtypes.IN.A.A
    else:
        found = names.lookup_aaaa(sandbox_id, text)  # type: ignore[assignment]
        rdata_type = dns.rdtypes.IN.AAAA.AAAA
    if found is None:
        return None
    reply = _reply(query)
    if found:
        rrset = dns.rrset.RRset(question.name, dns.rdataclass.IN, qtype)
        rrset.update_ttl(TTL)
        for address in found:
            rrset.add(rdata_type(_IN, qtype, str(address)))
        reply.answer.append(rrset)
    return reply


def _ptr(
    names: NameTable, sandbox_id: str, query: dns.message.Message, qname: dns.name.Name
) -> dns.message.Message | None:
    reverse = (dns.reversename.ipv4_reverse_domain, dns.reversename.ipv6_reverse_domain)
    if not any(qname.is_subdomain(domain) for domain in reverse):
        return None
    try:
        address = dns.reversename.to_address(qname)
    except (dns.exception.DNSException, ValueError):  # a partial name such as 10.in-addr.arpa
        return None
    target = names.lookup_ptr(sandbox_id, address)
    if target is None:
        return None
    try:
        target_name = dns.name.from_text(target)
    except dns.exception.DNSException:
        log.warning("dns: %r is not a valid DNS name; PTR %s not answered", target, address)
        return None
    reply = _reply(query)
    rrset = dns.rrset.RRset(qname, dns.rdataclass.IN, dns.rdatatype.PTR)
    rrset.update_ttl(TTL)
    rrset.add(dns.rdtypes.ANY.PTR.PTR(_IN, _PTR, target_name))
    reply.answer.append(rrset)
    return reply


def _reply(
    query: dns.message.Message, rcode: dns.rcode.Rcode | None = None, *, question: bool = True
) -> dns.message.Message:
    """Docker's reply skeleton: id, opcode, RD and CD copied; QR and RA set; AA clear;
    EDNS answered with EDNS."""
    reply = dns.message.Message(id=query.id)
    reply.flags = (
        dns.flags.QR
        | dns.flags.RA
        | (query.flags & (dns.flags.RD | dns.flags.CD))
        | dns.opcode.to_flags(query.opcode())
    )
    if question:
        reply.question = list(query.question)
    if query.edns >= 0:
        reply.use_edns(0, 0, _OUR_EDNS_PAYLOAD)
    reply.set_rcode(dns.rcode.NOERROR if rcode is None else rcode)
    return reply


def _render(reply: dns.message.Message, max_size: int, tcp: bool) -> bytes:
    """``reply`` in wire form within ``max_size``: answers dropped from the end until it
    fits, with TC set over UDP (Docker's ``truncateResp``)."""
    try:
        return reply.to_wire(max_size=max_size)
    except dns.exception.TooBig:
        pass
    rrset = reply.answer[0]
    items = list(rrset)
    low, high = 0, len(items)  # the largest prefix that fits, by bisection
    while low < high:
        mid = (low + high + 1) // 2
        rrset.clear()
        for rdata in items[:mid]:
            rrset.add(rdata)
        try:
            reply.to_wire(max_size=max_size)
            low = mid
        except dns.exception.TooBig:
            high = mid - 1
    rrset.clear()
    for rdata in items[:low]:
        rrset.add(rdata)
    if not tcp:
        reply.flags |= dns.flags.TC
    return reply.to_wire(max_size=max_size)


def _error_from_header(data: bytes, rcode: int) -> bytes | None:
    """An empty answer carrying ``rcode`` for a query that cannot be parsed, built from
    what the header still tells (id, opcode, RD); None when not even that survives."""
    if len(data) < _HEADER:
        return None
    _dnspython()
    flags = int.from_bytes(data[2:4], "big")
    reply = dns.message.Message(id=int.from_bytes(data[:2], "big"))
    reply.flags = dns.flags.QR | dns.flags.RA | (flags & (dns.flags.RD | 0x7800))  # 0x7800: opcode
    reply.set_rcode(dns.rcode.Rcode.make(rcode))
    return reply.to_wire()
