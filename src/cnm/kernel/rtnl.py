"""Hand-packed rtnetlink requests for the attach/detach hot path.

pyroute2 builds a message through layers of request filters and an NLA class tree: about
0.3 ms of Python for a veth ``RTM_NEWLINK`` and 0.05-0.1 ms for an address, then as much
again to parse the answer (measured on the machines cnm targets).  The handful of fixed
requests that ``network connect``/``disconnect`` send are packed here with ``struct``
instead (~10 us each), and several go to the kernel in *one* ``sendmsg``: rtnetlink runs
every message of a datagram in order, in the sender's context, and queues one answer per
message before ``sendmsg`` returns.  Queries and dumps stay on pyroute2.

The wire format is the kernel's UAPI (``linux/netlink.h``, ``linux/rtnetlink.h``,
``linux/if_link.h``, ``linux/veth.h``, ``linux/neighbour.h``); only what cnm sends is defined.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

# -- constants (UAPI) ---------------------------------------------------------------------------

NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE = 24
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_ECHO = 0x8
NLM_F_DUMP = 0x300
NLM_F_DUMP_INTR = 0x10
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

IFF_UP = 0x1

IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINK = 5
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_IFALIAS = 20
IFLA_STATS64 = 23
IFLA_GROUP = 27
IFLA_NET_NS_FD = 28

IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
IFLA_INFO_SLAVE_KIND = 4
IFLA_INFO_SLAVE_DATA = 5
VETH_INFO_PEER = 1
IFLA_VXLAN_ID = 1
IFLA_VXLAN_LOCAL = 4
IFLA_VXLAN_LEARNING = 7
IFLA_VXLAN_PROXY = 11
IFLA_VXLAN_PORT = 15  # network byte order
IFLA_BRPORT_MODE = 4  # hairpin

IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_F_NODAD = 0x02  # ifaddrmsg.ifa_flags: an IPv6 address usable at once, no duplicate detection

NDA_DST = 1
NDA_LLADDR = 2
NDA_IFINDEX = 8
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
AF_BRIDGE = 7

RTA_OIF = 4
RTA_GATEWAY = 5
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4  # what ``ip route add`` and pyroute2 record
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_NDMSG = struct.Struct("=BBHiHBB")  # family, pad, pad, ifindex, state, flags, type
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, proto, scope, type, flags
_NLATTR = struct.Struct("=HH")
_NLMSGERR = struct.Struct("=i")

SOL_NETLINK = 270
NETLINK_GET_STRICT_CHK = 12  # dumps honour the header's filters (ifindex), in the kernel

RECV_TIMEOUT = 5.0  # seconds; answers are queued before sendmsg returns, this is a safety net
_RECV_BUFFER = 1 << 16


# -- attributes ---------------------------------------------------------------------------------


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    return _pad(_NLATTR.pack(_NLATTR.size + len(payload), kind) + payload)


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def attr_str(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def attr_mac(kind: int, mac: str) -> bytes:
    return attr(kind, bytes.fromhex(mac.replace(":", "")))


def attr_nest(kind: int, *children: bytes) -> bytes:
    return attr(kind, b"".join(children))


def ifinfomsg(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)


# -- messages -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One rtnetlink request: type, extra header flags, body (fixed header + attributes),
    and what it is, for error messages."""

    type: int
    flags: int
    body: bytes
    what: str


def new_veth(
    name: str, *, mtu: int, master: int, up: bool, peer_name: str, peer_netns_fd: int, peer_mac: str = ""
) -> Request:
    """``ip link add NAME mtu MTU master MASTER [up] type veth peer name PEER [address MAC]
    mtu MTU netns FD``, echoed back (the answer carries the host end's index and, in
    IFLA_LINK, the peer's).  The peer cannot be created up: veth refuses to open before
    its other end exists."""
    peer = (
        ifinfomsg()
        + attr_str(IFLA_IFNAME, peer_name)
        + attr_u32(IFLA_MTU, mtu)
        + attr_u32(IFLA_NET_NS_FD, peer_netns_fd)
        + (attr_mac(IFLA_ADDRESS, peer_mac) if peer_mac else b"")
    )
    body = (
        ifinfomsg(flags=IFF_UP if up else 0, change=IFF_UP if up else 0)
        + attr_str(IFLA_IFNAME, name)
        + attr_u32(IFLA_MTU, mtu)
        + attr_u32(IFLA_MASTER, master)
        + attr_nest(
            IFLA_LINKINFO,
            attr_str(IFLA_INFO_KIND, "veth"),
            attr_nest(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer)),
        )
    )
    return Request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO, body, f"create veth {name}")


def new_bridge(name: str, *, mtu: int, mac: str) -> Request:
    """``ip link add NAME address MAC mtu MTU type bridge``, echoed back (the answer carries
    the new link's index)."""
    body = (
        ifinfomsg()
        + attr_str(IFLA_IFNAME, name)
        + attr_u32(IFLA_MTU, mtu)
        + attr_mac(IFLA_ADDRESS, mac)
        + attr_nest(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "bridge"))
    )
    return Request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO, body, f"create bridge {name}")


def set_link(
    *,
    index: int = 0,
    name: str = "",
    up: bool | None = None,
    alias: str | None = None,
    master: int | None = None,
    group: int | None = None,
    hairpin: bool | None = None,
) -> Request:
    """``ip link set`` on the link ``index`` (or ``name`` when index is 0): any of up/down,
    alias, master (0 = nomaster), group, bridge-port hairpin -- in one request.

    Sent as RTM_NEWLINK without NLM_F_CREATE, as iproute2 does: RTM_SETLINK ignores
    IFLA_LINKINFO, so bridge-port options would be dropped without an error."""
    change = IFF_UP if up is not None else 0
    body = ifinfomsg(index=index, flags=IFF_UP if up else 0, change=change)
    if name and not index:
        body += attr_str(IFLA_IFNAME, name)
    if alias is not None:
        body += attr_str(IFLA_IFALIAS, alias)
    if master is not None:
        body += attr_u32(IFLA_MASTER, master)
    if group is not None:
        body += attr_u32(IFLA_GROUP, group)
    if hairpin is not None:
        body += attr_nest(
            IFLA_LINKINFO,
            attr_str(IFLA_INFO_SLAVE_KIND, "bridge"),
            attr_nest(IFLA_INFO_SLAVE_DATA, attr(IFLA_BRPORT_MODE, bytes([hairpin]))),
        )
    return Request(RTM_NEWLINK, 0, body, f"configure link {name or index}")


def del_link(*, index: int = 0, name: str = "", group: int | None = None) -> Request:
    """``ip link del`` by index, by name, or every link of ``group``."""
    body = ifinfomsg(index=index)
    if name and not index:
        body += attr_str(IFLA_IFNAME, name)
    if group is not None:
        body += attr_u32(IFLA_GROUP, group)
    what = f"delete link group {group}" if group is not None else f"delete link {name or index}"
    return Request(RTM_DELLINK, 0, body, what)


def new_vxlan(
    name: str, *, vni: int, local: IPv4Address, port: int, mtu: int, master: int, up: bool
) -> Request:
    """``ip link add NAME mtu MTU master MASTER [up] type vxlan id VNI local LOCAL dstport
    PORT nolearning proxy``, echoed back (the answer carries the new link's index)."""
    body = (
        ifinfomsg(flags=IFF_UP if up else 0, change=IFF_UP if up else 0)
        + attr_str(IFLA_IFNAME, name)
        + attr_u32(IFLA_MTU, mtu)
        + attr_u32(IFLA_MASTER, master)
        + attr_nest(
            IFLA_LINKINFO,
            attr_str(IFLA_INFO_KIND, "vxlan"),
            attr_nest(
                IFLA_INFO_DATA,
                attr_u32(IFLA_VXLAN_ID, vni),
                attr(IFLA_VXLAN_LOCAL, local.packed),
                attr(IFLA_VXLAN_PORT, struct.pack("!H", port)),
                attr(IFLA_VXLAN_LEARNING, b"\0"),
                attr(IFLA_VXLAN_PROXY, b"\1"),
            ),
        )
    )
    return Request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO, body, f"create vxlan {name}")


def _ndmsg(family: int, index: int, state: int = 0, flags: int = 0) -> bytes:
    return _NDMSG.pack(family, 0, 0, index, state, flags, 0)


def replace_fdb(index: int, mac: str, dst: IPv4Address) -> Request:
    """``bridge fdb replace MAC dev INDEX dst DST self permanent`` (a VXLAN device's own
    entry: the MAC's remote VTEP)."""
    body = (
        _ndmsg(AF_BRIDGE, index, NUD_PERMANENT, NTF_SELF)
        + attr_mac(NDA_LLADDR, mac)
        + attr(NDA_DST, dst.packed)
    )
    return Request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body, f"replace fdb entry {mac} dst {dst}")


def del_fdb(index: int, mac: str, dst: IPv4Address) -> Request:
    """``bridge fdb del MAC dev INDEX dst DST self`` (ENOENT when there is no such entry)."""
    body = _ndmsg(AF_BRIDGE, index, 0, NTF_SELF) + attr_mac(NDA_LLADDR, mac) + attr(NDA_DST, dst.packed)
    return Request(RTM_DELNEIGH, 0, body, f"delete fdb entry {mac} dst {dst}")


def replace_neigh(index: int, ip: IPv4Address, mac: str) -> Request:
    """``ip neigh replace IP lladdr MAC dev INDEX nud permanent``."""
    body = _ndmsg(socket.AF_INET, index, NUD_PERMANENT) + attr(NDA_DST, ip.packed) + attr_mac(NDA_LLADDR, mac)
    return Request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body, f"replace neighbour {ip} lladdr {mac}")


def del_neigh(index: int, ip: IPv4Address) -> Request:
    """``ip neigh del IP dev INDEX`` (ENOENT when there is no such entry)."""
    body = _ndmsg(socket.AF_INET, index) + attr(NDA_DST, ip.packed)
    return Request(RTM_DELNEIGH, 0, body, f"delete neighbour {ip}")


def add_address(
    index: int, address: IPv4Address | IPv6Address, prefixlen: int, *, nodad: bool = False
) -> Request:
    """``ip addr add ADDRESS/PREFIXLEN dev INDEX`` (no broadcast, as iproute2 and pyroute2);
    an IPv6 address with ``nodad``: ``ip -6 addr add ... nodad`` (valid at once, no DAD)."""
    packed = address.packed
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    flags = IFA_F_NODAD if nodad and address.version == 6 else 0
    body = (
        _IFADDRMSG.pack(family, prefixlen, flags, 0, index)
        + attr(IFA_LOCAL, packed)
        + attr(IFA_ADDRESS, packed)
    )
    return Request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body, f"add address {address}/{prefixlen}")


def add_default_route(gateway: IPv4Address | IPv6Address, oif: int) -> Request:
    """``ip [-6] route add default via GATEWAY dev OIF`` (table main, proto static); the
    family is the gateway's."""
    family = socket.AF_INET6 if gateway.version == 6 else socket.AF_INET
    body = (
        _RTMSG.pack(family, 0, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
        + attr(RTA_GATEWAY, gateway.packed)
        + attr_u32(RTA_OIF, oif)
    )
    return Request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body, f"add default route via {gateway}")


# -- answers ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkEcho:
    """What cnm reads from an echoed RTM_NEWLINK."""

    index: int
    link: int  # IFLA_LINK: for a veth, the peer's index in its own namespace


def parse_link(body: bytes) -> LinkEcho:
    _family, _type, index, _flags, _change = _IFINFOMSG.unpack_from(body)
    link = 0
    offset = _IFINFOMSG.size
    while offset + _NLATTR.size <= len(body):
        length, kind = _NLATTR.unpack_from(body, offset)
        if length < _NLATTR.size:
            break
        if kind & 0x3FFF == IFLA_LINK:
            (link,) = struct.unpack_from("=I", body, offset + _NLATTR.size)
        offset += (length + 3) & ~3
    return LinkEcho(index=index, link=link)


class NetlinkError(OSError):
    """A request the kernel refused: ``errno`` is the kernel's, ``what`` the request."""

    def __init__(self, code: int, what: str) -> None:
        super().__init__(code, os.strerror(code))
        self.what = what

    def __str__(self) -> str:
        return f"{self.what}: {self.strerror}"


@dataclass(frozen=True, slots=True)
class Answer:
    """The outcome of one request of a batch: 0 or a (positive) errno, and the echoed
    message body, if the request asked for an echo."""

    error: int
    echo: bytes | None = None


_seq = itertools.count(1)


def transact(sock: socket.socket, requests: Sequence[Request]) -> list[Answer]:
    """Send ``requests`` in one datagram over the NETLINK_ROUTE socket ``sock`` and
    collect one answer per request, in order.  The kernel handles them one after the
    other; a failed request does not stop the ones after it (callers order them so that
    a later one fails harmlessly when an earlier one did).  Raises OSError if the socket
    fails or the answers do not arrive within RECV_TIMEOUT."""
    if not requests:
        return []
    first = next(_seq)
    seqs = {}
    chunks = []
    for i, req in enumerate(requests):
        seq = first + i
        seqs[seq] = i
        header = _NLMSGHDR.pack(
            _NLMSGHDR.size + len(req.body), req.type, NLM_F_REQUEST | NLM_F_ACK | req.flags, seq, 0
        )
        chunks.append(_pad(header + req.body))
    # Keep the process-wide counter ahead of the numbers just used.
    for _ in range(len(requests) - 1):
        next(_seq)
    errors: list[int | None] = [None] * len(requests)
    echoes: list[bytes | None] = [None] * len(requests)
    previous_timeout = sock.gettimeout()
    sock.settimeout(RECV_TIMEOUT)
    try:
        sock.send(b"".join(chunks))
        while any(e is None for e in errors):
            data = sock.recv(_RECV_BUFFER)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    break
                body = data[offset + _NLMSGHDR.size : offset + length]
                offset += (length + 3) & ~3
                index = seqs.get(seq)
                if index is None:
                    continue  # an answer to an earlier request that timed out
                if kind == NLMSG_ERROR:
                    (code,) = _NLMSGERR.unpack_from(body)
                    errors[index] = -code
                elif kind != NLMSG_DONE:
                    echoes[index] = body  # NLM_F_ECHO: the kernel's notification, before the ack
    except TimeoutError as exc:
        raise OSError(errno.ETIMEDOUT, "no answer from the kernel over netlink") from exc
    finally:
        sock.settimeout(previous_timeout)
    return [Answer(error=e or 0, echo=echoes[i]) for i, e in enumerate(errors)]


def check(answers: Sequence[Answer], requests: Sequence[Request], *, ok: tuple[int, ...] = ()) -> None:
    """Raise NetlinkError for the first request that failed with an errno not in ``ok``."""
    for answer, req in zip(answers, requests, strict=True):
        if answer.error and answer.error not in ok:
            raise NetlinkError(answer.error, req.what)


def open_route_socket() -> socket.socket:
    """A NETLINK_ROUTE socket bound in the calling thread's namespace (blocking, for
    ``transact``)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def open_strict_socket() -> socket.socket:
    """A NETLINK_ROUTE socket with strict checking on: the kernel (>= 4.20) filters a dump
    by the fields of its request header (``addresses``: one link's, not every link's)."""
    sock = open_route_socket()
    try:
        sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
    except BaseException:
        sock.close()
        raise
    return sock


class DumpInterrupted(OSError):
    """The kernel flagged a dump as interrupted (NLM_F_DUMP_INTR: what it lists changed
    meanwhile); run it again."""


def dump(sock: socket.socket, kind: int, body: bytes, what: str) -> list[tuple[int, bytes]]:
    """One dump request (``kind``, header ``body``) over ``sock``: every answer's (type,
    body) until NLMSG_DONE.  Raises NetlinkError (the kernel refused), DumpInterrupted,
    OSError (no answer within RECV_TIMEOUT)."""
    seq = next(_seq)
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    found: list[tuple[int, bytes]] = []
    interrupted = False
    previous_timeout = sock.gettimeout()
    sock.settimeout(RECV_TIMEOUT)
    try:
        sock.send(header + body)
        while True:
            data = sock.recv(_RECV_BUFFER)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, got_kind, flags, got, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    break
                msg = data[offset + _NLMSGHDR.size : offset + length]
                offset += (length + 3) & ~3
                if got != seq:
                    continue  # an answer to an earlier request that timed out
                interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)
                if got_kind == NLMSG_DONE:
                    if interrupted:
                        raise DumpInterrupted(errno.EINTR, f"{what}: interrupted by a change")
                    return found
                if got_kind == NLMSG_ERROR:
                    (code,) = _NLMSGERR.unpack_from(msg)
                    if code:
                        raise NetlinkError(-code, what)
                    continue
                found.append((got_kind, msg))
    except TimeoutError as exc:
        raise OSError(errno.ETIMEDOUT, "no answer from the kernel over netlink") from exc
    finally:
        sock.settimeout(previous_timeout)


def addresses(sock: socket.socket, index: int) -> list[tuple[IPv4Address, int]]:
    """The IPv4 addresses (address, prefix length) of link ``index``, dumped over the
    strict socket ``sock`` (``open_strict_socket``): the kernel sends that link's only, so
    the cost does not grow with the number of links.  Raises NetlinkError / OSError."""
    body = _IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, index)
    found = []
    for kind, msg in dump(sock, RTM_GETADDR, body, f"ip -4 addr show (ifindex {index})"):
        address = _ifaddr(msg, index) if kind == RTM_NEWADDR else None
        if address is not None:
            found.append(address[1:])
    return found


def addresses6(sock: socket.socket, index: int) -> list[tuple[IPv6Address, int]]:
    """The IPv6 addresses (address, prefix length) of link ``index``, link-local ones
    included, dumped over the strict socket ``sock`` like ``addresses``."""
    body = _IFADDRMSG.pack(socket.AF_INET6, 0, 0, 0, index)
    found = []
    for kind, msg in dump(sock, RTM_GETADDR, body, f"ip -6 addr show (ifindex {index})"):
        if kind != RTM_NEWADDR:
            continue
        family, prefixlen, _flags, _scope, got = _IFADDRMSG.unpack_from(msg)
        if family != socket.AF_INET6 or got != index:
            continue
        attrs = _attrs(msg, _IFADDRMSG.size)
        value = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
        if value is not None and len(value) == 16:
            found.append((IPv6Address(value), prefixlen))
    return found


def all_addresses(sock: socket.socket) -> list[tuple[int, IPv4Address, int]]:
    """Every IPv4 address of the namespace: (ifindex, address, prefix length)."""
    body = _IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0)
    found = []
    for kind, msg in dump(sock, RTM_GETADDR, body, "ip -4 addr show"):
        address = _ifaddr(msg, 0) if kind == RTM_NEWADDR else None
        if address is not None:
            found.append(address)
    return found


@dataclass(frozen=True, slots=True)
class LinkDump:
    """One link of a dump, as cnm reads it."""

    index: int
    name: str
    kind: str  # IFLA_INFO_KIND: "bridge", "veth" ... ("" when none)
    alias: str
    master: int
    mac: str
    mtu: int
    flags: int
    stats: tuple[int, ...] | None  # rtnl_link_stats64's first eight counters, in its order
    link: int = 0  # IFLA_LINK ("iflink"): a veth's peer index, in the peer's namespace


def links(sock: socket.socket) -> list[LinkDump]:
    """Every link of the namespace ``sock`` is bound in (pyroute2 takes ~2 ms of Python
    per link to decode a dump; this, a few microseconds)."""
    found = []
    for kind, msg in dump(sock, RTM_GETLINK, ifinfomsg(), "ip link show"):
        if kind == RTM_NEWLINK:
            found.append(_link(msg))
    return found


def _mac(value: bytes | None) -> str:
    return ":".join(f"{b:02x}" for b in value or b"")


def fdb(sock: socket.socket, index: int) -> list[tuple[str, IPv4Address]]:
    """(MAC, VTEP) of every remote entry of VXLAN device ``index`` (its own entries with a
    destination; the bridge's entries learned on that port are left out), dumped over the
    strict socket ``sock``: the kernel sends that device's only."""
    found = []
    for kind, msg in dump(sock, RTM_GETNEIGH, _ndmsg(AF_BRIDGE, index), f"bridge fdb show dev {index}"):
        if kind != RTM_NEWNEIGH:
            continue
        family, _p1, _p2, got, _state, flags, _type = _NDMSG.unpack_from(msg)
        attrs = _attrs(msg, _NDMSG.size)
        dst = attrs.get(NDA_DST)
        if family == AF_BRIDGE and got == index and flags & NTF_SELF and dst and len(dst) == 4:
            found.append((_mac(attrs.get(NDA_LLADDR)), IPv4Address(dst)))
    return found


def neighbours(sock: socket.socket, index: int) -> list[tuple[IPv4Address, str]]:
    """(IP, MAC) of every permanent IPv4 neighbour entry of link ``index``, dumped over the
    strict socket ``sock`` (filtered by the kernel to that link)."""
    found = []
    body = _ndmsg(socket.AF_INET, 0) + attr_u32(NDA_IFINDEX, index)
    for kind, msg in dump(sock, RTM_GETNEIGH, body, f"ip neigh show dev {index}"):
        if kind != RTM_NEWNEIGH:
            continue
        family, _p1, _p2, got, state, _flags, _type = _NDMSG.unpack_from(msg)
        attrs = _attrs(msg, _NDMSG.size)
        dst = attrs.get(NDA_DST)
        if family == socket.AF_INET and got == index and state & NUD_PERMANENT and dst and len(dst) == 4:
            found.append((IPv4Address(dst), _mac(attrs.get(NDA_LLADDR))))
    return found


def _attrs(body: bytes, offset: int) -> dict[int, bytes]:
    out = {}
    while offset + _NLATTR.size <= len(body):
        length, kind = _NLATTR.unpack_from(body, offset)
        if length < _NLATTR.size:
            break
        out[kind & 0x3FFF] = body[offset + _NLATTR.size : offset + length]
        offset += (length + 3) & ~3
    return out


def _text(value: bytes | None) -> str:
    return value.split(b"\0", 1)[0].decode(errors="replace") if value else ""


def _u32(value: bytes | None) -> int:
    return struct.unpack_from("=I", value)[0] if value and len(value) >= 4 else 0


def _link(body: bytes) -> LinkDump:
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(body)
    attrs = _attrs(body, _IFINFOMSG.size)
    info = _attrs(attrs[IFLA_LINKINFO], 0) if IFLA_LINKINFO in attrs else {}
    raw_stats = attrs.get(IFLA_STATS64)
    stats = struct.unpack_from("=8Q", raw_stats) if raw_stats and len(raw_stats) >= 64 else None
    mac = attrs.get(IFLA_ADDRESS, b"")
    return LinkDump(
        index=index,
        name=_text(attrs.get(IFLA_IFNAME)),
        kind=_text(info.get(IFLA_INFO_KIND)),
        alias=_text(attrs.get(IFLA_IFALIAS)),
        master=_u32(attrs.get(IFLA_MASTER)),
        mac=":".join(f"{b:02x}" for b in mac),
        mtu=_u32(attrs.get(IFLA_MTU)),
        flags=flags,
        stats=stats,
        link=_u32(attrs.get(IFLA_LINK)),
    )


def _ifaddr(body: bytes, index: int) -> tuple[int, IPv4Address, int] | None:
    """(ifindex; IFA_LOCAL, else IFA_ADDRESS; prefix length) of an RTM_NEWADDR of link
    ``index`` (0: of any link)."""
    family, prefixlen, _flags, _scope, got = _IFADDRMSG.unpack_from(body)
    if family != socket.AF_INET or index and got != index:  # a kernel without strict dumps
        return None
    local = address = None
    offset = _IFADDRMSG.size
    while offset + _NLATTR.size <= len(body):
        length, kind = _NLATTR.unpack_from(body, offset)
        if length < _NLATTR.size:
            break
        value = body[offset + _NLATTR.size : offset + length]
        if kind == IFA_LOCAL and len(value) == 4:
            local = IPv4Address(value)
        elif kind == IFA_ADDRESS and len(value) == 4:
            address = IPv4Address(value)
        offset += (length + 3) & ~3
    chosen = local or address
    return (got, chosen, prefixlen) if chosen is not None else None
