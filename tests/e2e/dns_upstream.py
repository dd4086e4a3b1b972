#!/usr/bin/env python3
"""dns_upstream.py ADDRESS — a tiny authoritative stand-in for the Internet's DNS (UDP and TCP).

Answers ``*.example``: ``ext.example`` A 198.51.100.7, ``ext6.example`` AAAA 2001:db8:7::7,
``big.example`` 60 A records (too big
for 512-byte UDP: truncated, so clients retry over TCP), ``broken.example`` SERVFAIL, anything
else NXDOMAIN.  Every answer carries a TXT-free marker: the A records of ``who.example`` are
this server's own address (an AAAA record when ADDRESS is IPv6; the server then listens on
IPv6), so a test can tell which upstream answered.  Prints READY.
"""

from __future__ import annotations

import socket
import sys
import threading

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rrset

ADDRESS = sys.argv[1]
FAMILY = socket.AF_INET6 if ":" in ADDRESS else socket.AF_INET


def answer(wire: bytes, tcp: bool) -> bytes:
    query = dns.message.from_wire(wire)
    reply = dns.message.make_response(query)
    q = query.question[0]
    name = q.name.to_text().rstrip(".").lower()
    if name == "ext.example":
        reply.answer.append(dns.rrset.from_text(q.name, 60, "IN", "A", "198.51.100.7"))
    elif name == "ext6.example":
        reply.answer.append(dns.rrset.from_text(q.name, 60, "IN", "AAAA", "2001:db8:7::7"))
    elif name == "who.example":
        kind = "AAAA" if FAMILY == socket.AF_INET6 else "A"
        reply.answer.append(dns.rrset.from_text(q.name, 60, "IN", kind, ADDRESS))
    elif name == "big.example":
        reply.answer.append(
            dns.rrset.from_text_list(q.name, 60, "IN", "A", [f"198.51.100.{i}" for i in range(1, 61)])
        )
    elif name == "broken.example":
        reply.set_rcode(dns.rcode.SERVFAIL)
    else:
        reply.set_rcode(dns.rcode.NXDOMAIN)
    try:
        return reply.to_wire(max_size=65535 if tcp else 512)
    except dns.exception.TooBig:  # classic UDP: no records, TC set, ask again over TCP
        reply.answer.clear()
        reply.flags |= dns.flags.TC
        return reply.to_wire()


def serve_udp(sock: socket.socket) -> None:
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            sock.sendto(answer(data, tcp=False), peer)
        except Exception:  # noqa: BLE001 - a test helper keeps serving
            pass


def serve_tcp(sock: socket.socket) -> None:
    while True:
        conn, _ = sock.accept()
        with conn:
            try:
                size = int.from_bytes(conn.recv(2), "big")
                data = b""
                while len(data) < size:
                    data += conn.recv(size - len(data))
                out = answer(data, tcp=True)
                conn.sendall(len(out).to_bytes(2, "big") + out)
            except Exception:  # noqa: BLE001
                pass


def main() -> None:
    udp = socket.socket(FAMILY, socket.SOCK_DGRAM)
    udp.bind((ADDRESS, 53))
    tcp = socket.socket(FAMILY, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((ADDRESS, 53))
    tcp.listen(16)
    threading.Thread(target=serve_tcp, args=(tcp,), daemon=True).start()
    print("READY", flush=True)
    serve_udp(udp)


if __name__ == "__main__":
    main()
