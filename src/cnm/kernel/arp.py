"""Gratuitous ARP: telling the hosts on a bridge where an address is, at once.

A container whose ARP request for a remote endpoint left before the VXLAN device's proxy
could answer it (the neighbour entry was not programmed yet) holds an INCOMPLETE entry and
asks again only after ``retrans_time`` (1 s by default).  A gratuitous ARP (sender IP =
target IP) completes such an entry, or refreshes a STALE one, as soon as it arrives: Linux
updates an existing entry from one even with ``arp_accept=0`` (and creates none).

The frame is an ARP request (what ``arping -U`` sends), broadcast on the bridge from the
host side through an AF_PACKET socket in the caller's network namespace.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from ipaddress import IPv4Address

ETH_P_ARP = 0x0806
ARPHRD_ETHER = 1
ARPOP_REQUEST = 1
BROADCAST = b"\xff" * 6


def mac_bytes(mac: str) -> bytes:
    """The six bytes of ``mac`` (``aa:bb:cc:dd:ee:ff``, already checked by its caller)."""
    return bytes.fromhex(mac.replace(":", ""))


def gratuitous_frame(ip: IPv4Address, mac: str) -> bytes:
    """An Ethernet frame, broadcast from ``mac``, carrying the ARP request "who has ``ip``?
    tell ``ip`` at ``mac``" (sender IP = target IP: gratuitous)."""
    sender = mac_bytes(mac)
    header = BROADCAST + sender + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", ARPHRD_ETHER, 0x0800, 6, 4, ARPOP_REQUEST)
    arp += sender + ip.packed + b"\x00" * 6 + ip.packed
    return header + arp


def send_gratuitous(ifname: str, announced: Sequence[tuple[IPv4Address, str]]) -> None:
    """Send one gratuitous ARP per (IP, MAC) of ``announced`` out of link ``ifname`` of the
    calling thread's namespace, through one socket.  Raises OSError (ENODEV: no such
    link; ENETDOWN: the link is down; EPERM: no CAP_NET_RAW)."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_NONBLOCK, 0) as sock:
        for ip, mac in announced:
            sock.sendto(gratuitous_frame(ip, mac), (ifname, ETH_P_ARP))
