"""Set elements added and deleted over nfnetlink directly, for the per-endpoint changes of
the anti-spoofing guard (``bridge_guard``).

libnftables 1.0.6 fills its cache before every command: an ``add element`` dumps every
table, chain, set and object of the namespace, a ``delete element`` the sets' elements
too.  That is ~0.3 ms in a namespace holding only cnm's two tables, grows with every
table there, and is paid twice on each ``network connect`` + ``disconnect``.  Here the
same changes go to the kernel as one nf_tables batch (``NFT_MSG_NEWSETELEM`` /
``NFT_MSG_DELSETELEM`` between batch begin and end: one transaction, all or nothing),
~20 µs, nothing read first.  The caller still logs the change as the ``nft`` script a
person would type (``render_bridge``); what is sent is exactly that script.

Only what the guard's two sets hold is encoded: keys made of an interface name (``ifname``,
16 bytes), a MAC address, an IPv4 or IPv6 address and a raw 128-bit ND target, concatenated as nft does (each field padded
to 4 bytes), and the element's comment as libnftnl's user data.  The wire format is the
kernel's UAPI (``linux/netfilter/nfnetlink.h``, ``linux/netfilter/nf_tables.h``) and
``libnftnl/udata.h``.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import ip_address

from cnm.errors import FirewallError
from cnm.kernel.rtnl import attr, attr_nest, attr_str

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = 12, 14
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE = 0x1, 0x4, 0x400
NFPROTO_BRIDGE = 7

NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_USERDATA = 1, 6
NFTA_DATA_VALUE = 1
NFTNL_UDATA_SET_ELEM_COMMENT = 0
IFNAMSIZ = 16

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (big endian)
_RECV_TIMEOUT = 5.0
_seq = itertools.count(1)
_MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")


@dataclass(frozen=True, slots=True)
class ElementChange:
    """One line of the script: ``add`` (with ``comment``, "" for none) or ``delete`` of
    the element ``key`` (nft's syntax, as ``render_bridge`` writes it) in set ``set``."""

    op: str
    set: str
    key: str
    comment: str = ""

    def line(self, table: str, family: str = "bridge") -> str:
        """The change as a line of an ``nft -f`` script."""
        comment = f' comment "{self.comment}"' if self.op == "add" and self.comment else ""
        return f"{self.op} element {family} {table} {self.set} {{ {self.key}{comment} }}"


def key_bytes(key: str) -> bytes:
    """The kernel's bytes of a key in nft's syntax: ``"<ifname>"``, a MAC address, an
    IPv4 or IPv6 address or a 128-bit ``0x`` integer, or a concatenation of them
    (`` . ``); each field padded to 4 bytes."""
    out = b""
    for part in key.split(" . "):
        if part.startswith('"') and part.endswith('"') and len(part) >= 2:
            name = part[1:-1].encode()
            if not name or len(name) >= IFNAMSIZ:
                raise FirewallError(f"nft: bad interface name {part} in element {key}")
            field = name.ljust(IFNAMSIZ, b"\0")
        elif _MAC_RE.match(part):
            field = bytes.fromhex(part.replace(":", ""))
        elif part.startswith("0x"):  # a raw 128-bit payload (an ND target), big endian
            try:
                field = int(part, 16).to_bytes(16, "big")
            except (ValueError, OverflowError):
                raise FirewallError(f"nft: cannot encode {part!r} in element {key}") from None
        else:
            try:
                field = ip_address(part).packed
            except ValueError:
                raise FirewallError(f"nft: cannot encode {part!r} in element {key}") from None
        out += field + b"\0" * (-len(field) % 4)
    return out


def _comment(text: str) -> bytes:
    """libnftnl's user data holding a comment: type, length, the text with its NUL."""
    value = text.encode() + b"\0"
    if len(value) > 255:
        raise FirewallError(f"nft: comment too long: {text!r}")
    return bytes((NFTNL_UDATA_SET_ELEM_COMMENT, len(value))) + value


def _message(kind: int, flags: int, seq: int, family: int, body: bytes, res_id: int = 0) -> bytes:
    payload = _NFGENMSG.pack(family, 0, socket.htons(res_id)) + body
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), kind, NLM_F_REQUEST | flags, seq, 0)
    return header + payload + b"\0" * (-len(payload) % 4)


class ElementWriter:
    """A NETLINK_NETFILTER socket of the namespace of the thread that constructs it (as
    ``libnft.nft_context``: create it at start-up), sending element batches."""

    def __init__(self, family: int = NFPROTO_BRIDGE) -> None:
        self._family = family
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            self._sock.bind((0, 0))
        except OSError as exc:
            raise FirewallError(f"nft: cannot open a netfilter netlink socket: {exc}") from exc
        self._sock.settimeout(_RECV_TIMEOUT)

    def close(self) -> None:
        self._sock.close()

    def apply(self, table: str, changes: Sequence[ElementChange]) -> None:
        """Play ``changes`` in order as one transaction; FirewallError (nothing changed)
        when the kernel refuses one, named by its line."""
        if not changes:
            return
        first = next(_seq)
        seqs = {first + 1 + i: change for i, change in enumerate(changes)}
        for _ in range(len(changes) + 1):
            next(_seq)
        chunks = [_message(NFNL_MSG_BATCH_BEGIN, 0, first, socket.AF_UNSPEC, b"", NFNL_SUBSYS_NFTABLES)]
        for seq, change in seqs.items():
            elem = attr_nest(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, key_bytes(change.key)))
            if change.op == "add" and change.comment:
                elem += attr(NFTA_SET_ELEM_USERDATA, _comment(change.comment))
            body = (
                attr_str(NFTA_SET_ELEM_LIST_TABLE, table)
                + attr_str(NFTA_SET_ELEM_LIST_SET, change.set)
                + attr_nest(NFTA_SET_ELEM_LIST_ELEMENTS, attr_nest(NFTA_LIST_ELEM, elem))
            )
            if change.op == "add":
                kind, flags = NFT_MSG_NEWSETELEM, NLM_F_CREATE | NLM_F_ACK
            elif change.op == "delete":
                kind, flags = NFT_MSG_DELSETELEM, NLM_F_ACK
            else:
                raise FirewallError(f"nft: unknown element operation {change.op!r}")
            chunks.append(_message((NFNL_SUBSYS_NFTABLES << 8) | kind, flags, seq, self._family, body))
        chunks.append(
            _message(
                NFNL_MSG_BATCH_END, 0, first + len(changes) + 1, socket.AF_UNSPEC, b"", NFNL_SUBSYS_NFTABLES
            )
        )
        errors = self._exchange(b"".join(chunks), first, set(seqs))
        failed = [(seq, code) for seq, code in sorted(errors.items()) if code]
        if failed:
            seq, code = failed[0]
            line = (
                f" ({seqs[seq].op} element {self._family_name()} {table} {seqs[seq].set} {{ {seqs[seq].key} }})"
                if seq in seqs
                else ""
            )
            raise FirewallError(f"nft: Could not process rule: {os.strerror(code)}{line}")

    def _family_name(self) -> str:
        return "bridge" if self._family == NFPROTO_BRIDGE else str(self._family)

    def _exchange(self, datagram: bytes, begin: int, waiting: set[int]) -> dict[int, int]:
        """Send the batch and collect the answer (0 or an errno) of every message in
        ``waiting``: each asked for an ack, and the kernel answers every message of a
        batch, also after one failed; or the one answer to the whole batch (at the batch
        begin's sequence number) when its commit failed."""
        answers: dict[int, int] = {}
        waiting = waiting | {begin}
        try:
            self._sock.send(datagram)
            while begin not in answers and waiting - answers.keys() - {begin}:
                data = self._sock.recv(1 << 16)
                offset = 0
                while offset + _NLMSGHDR.size <= len(data):
                    length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
                    if length < _NLMSGHDR.size:
                        break
                    if kind == NLMSG_ERROR and seq in waiting:
                        (code,) = struct.unpack_from("=i", data, offset + _NLMSGHDR.size)
                        answers[seq] = -code
                    offset += (length + 3) & ~3
        except TimeoutError as exc:
            raise FirewallError(f"nft: no answer from the kernel: {os.strerror(errno.ETIMEDOUT)}") from exc
        except OSError as exc:
            raise FirewallError(f"nft: netlink: {exc}") from exc
        return answers
