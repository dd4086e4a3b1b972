#!/usr/bin/env python3
"""Craft and watch raw Ethernet frames on one interface (AF_PACKET), for the
anti-spoofing tests: what a container with NET_RAW could send.

Run it in a container's network namespace from the test host (the busybox image has no
python): ``nsenter --net=<SandboxKey> python3 rawframes.py send … | sniff …``.

    send --iface eth0 --frames JSON   one frame per object (see ``build``), sent in order
    sniff --iface eth0 --marker M [--marker N …] --seconds S
                                       prints "ready", then after S seconds one JSON object:
                                       {"M": n, …} counting received frames carrying each
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time
from typing import Any

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100


def mac_bytes(mac: str) -> bytes:
    return bytes(int(b, 16) for b in mac.split(":"))


def ip_bytes(address: str) -> bytes:
    return socket.inet_aton(address)


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def arp_payload(op: int, sender_mac: str, sender_ip: str, target_mac: str, target_ip: str) -> bytes:
    """Ethernet/IPv4 ARP (op 1 request, 2 reply)."""
    return (
        struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, op)
        + mac_bytes(sender_mac)
        + ip_bytes(sender_ip)
        + mac_bytes(target_mac)
        + ip_bytes(target_ip)
    )


def udp_payload(src_ip: str, dst_ip: str, dport: int, data: bytes) -> bytes:
    """An IPv4/UDP packet (UDP checksum 0: allowed for IPv4)."""
    udp = struct.pack("!HHHH", 40000, dport, 8 + len(data), 0) + data
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0x1234, 0, 64, 17, 0, ip_bytes(src_ip), ip_bytes(dst_ip)
    )
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + udp


def ipv6_packet(src_ip: str, dst_ip: str, next_header: int, body: bytes, hop_limit: int = 64) -> bytes:
    """An IPv6 header (no extension headers) and ``body``."""
    return (
        struct.pack("!IHBB", 6 << 28, len(body), next_header, hop_limit)
        + socket.inet_pton(socket.AF_INET6, src_ip)
        + socket.inet_pton(socket.AF_INET6, dst_ip)
        + body
    )


def checksum6(src_ip: str, dst_ip: str, next_header: int, body: bytes) -> int:
    """The UDP/ICMPv6 checksum over the IPv6 pseudo-header and ``body`` (checksum field 0)."""
    pseudo = (
        socket.inet_pton(socket.AF_INET6, src_ip)
        + socket.inet_pton(socket.AF_INET6, dst_ip)
        + struct.pack("!IxxxB", len(body), next_header)
    )
    return checksum(pseudo + body)


def udp6_payload(src_ip: str, dst_ip: str, dport: int, data: bytes) -> bytes:
    """An IPv6/UDP packet with its (mandatory) checksum."""
    udp = struct.pack("!HHHH", 40000, dport, 8 + len(data), 0) + data
    udp = udp[:6] + struct.pack("!H", checksum6(src_ip, dst_ip, 17, udp) or 0xFFFF) + udp[8:]
    return ipv6_packet(src_ip, dst_ip, 17, udp)


def icmp6_payload(src_ip: str, dst_ip: str, icmp_type: int, code: int, body: bytes) -> bytes:
    """An IPv6/ICMPv6 packet, hop limit 255 (what neighbour discovery and router
    advertisements must carry to be accepted)."""
    msg = struct.pack("!BBH", icmp_type, code, 0) + body
    msg = msg[:2] + struct.pack("!H", checksum6(src_ip, dst_ip, 58, msg)) + msg[4:]
    return ipv6_packet(src_ip, dst_ip, 58, msg, hop_limit=255)


def build(spec: dict[str, Any]) -> bytes:
    """One frame: ``{"kind": "arp", "src": MAC, "dst": MAC, "op": 1|2, "sender_mac", "sender_ip",
    "target_mac", "target_ip"}``, ``{"kind": "udp", "src", "dst", "src_ip", "dst_ip", "dport",
    "data"}`` (``"udp6"``: the same over IPv6) or ``{"kind": "icmp6", "src", "dst", "src_ip",
    "dst_ip", "type", "code", "body": HEX, "data"}`` (the ICMPv6 message after its checksum is
    ``body`` then ``data``); any with ``"vlan": id`` for an 802.1Q tag."""
    if spec["kind"] == "udp6":
        ethertype = ETH_P_IPV6
        payload = udp6_payload(spec["src_ip"], spec["dst_ip"], spec["dport"], spec["data"].encode())
    elif spec["kind"] == "icmp6":
        ethertype = ETH_P_IPV6
        body = bytes.fromhex(spec.get("body", "")) + spec.get("data", "").encode()
        payload = icmp6_payload(spec["src_ip"], spec["dst_ip"], spec["type"], spec.get("code", 0), body)
    elif spec["kind"] == "arp":
        ethertype = ETH_P_ARP
        payload = arp_payload(
            spec["op"], spec["sender_mac"], spec["sender_ip"], spec["target_mac"], spec["target_ip"]
        )
    elif spec["kind"] == "udp":
        ethertype = ETH_P_IP
        payload = udp_payload(spec["src_ip"], spec["dst_ip"], spec["dport"], spec["data"].encode())
    else:
        raise SystemExit(f"unknown frame kind {spec['kind']!r}")
    header = mac_bytes(spec["dst"]) + mac_bytes(spec["src"])
    if "vlan" in spec:
        header += struct.pack("!HH", ETH_P_8021Q, spec["vlan"])
    frame = header + struct.pack("!H", ethertype) + payload
    return frame.ljust(60, b"\0")


def send(iface: str, frames: list[dict[str, Any]]) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((iface, 0))
        for spec in frames:
            for _ in range(spec.get("repeat", 1)):
                s.send(build(spec))
                time.sleep(0.01)
    print(json.dumps({"sent": sum(f.get("repeat", 1) for f in frames)}), flush=True)


def sniff(iface: str, markers: list[str], seconds: float) -> None:
    counts = dict.fromkeys(markers, 0)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as s:
        s.bind((iface, 0))
        s.settimeout(0.1)
        print("ready", flush=True)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data, addr = s.recvfrom(65535)
            except TimeoutError:
                continue
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            for marker in markers:
                if marker.encode() in data:
                    counts[marker] += 1
    print(json.dumps(counts), flush=True)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="rawframes")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send")
    s.add_argument("--iface", required=True)
    s.add_argument("--frames", required=True, help="JSON list of frame specs")
    r = sub.add_parser("sniff")
    r.add_argument("--iface", required=True)
    r.add_argument("--marker", action="append", required=True)
    r.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args(argv)
    if args.cmd == "send":
        send(args.iface, json.loads(args.frames))
    else:
        sniff(args.iface, args.marker, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
