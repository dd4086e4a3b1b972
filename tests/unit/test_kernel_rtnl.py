"""cnm.kernel.rtnl: hand-packed rtnetlink messages, decoded back with pyroute2's parser
(an independent implementation of the same wire format), and the batch/answer logic over a
fake socket."""

from __future__ import annotations

import errno
import socket
import struct
from ipaddress import IPv4Address

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from cnm.kernel import rtnl


def decode(cls, req: rtnl.Request):
    header = struct.pack("=IHHII", 16 + len(req.body), req.type, 0, 1, 0)
    msg = cls(header + req.body)
    msg.decode()
    return msg


def test_new_veth_decodes_as_iproute2_would_send_it():
    req = rtnl.new_veth(
        "vethabc",
        mtu=1450,
        master=7,
        up=True,
        peer_name="eth1",
        peer_netns_fd=9,
        peer_mac="02:42:0a:00:00:05",
    )
    assert req.type == rtnl.RTM_NEWLINK
    assert req.flags & rtnl.NLM_F_CREATE and req.flags & rtnl.NLM_F_EXCL and req.flags & rtnl.NLM_F_ECHO
    msg = decode(ifinfmsg, req)
    assert msg["flags"] & rtnl.IFF_UP and msg["change"] & rtnl.IFF_UP
    assert msg.get("ifname") == "vethabc" and msg.get("mtu") == 1450 and msg.get("master") == 7
    info = msg.get("linkinfo")
    assert info.get("kind") == "veth"
    peer = info.get("data").get("VETH_INFO_PEER")
    assert peer.get("ifname") == "eth1" and peer.get("mtu") == 1450
    assert peer.get("net_ns_fd") == 9 and peer.get("address") == "02:42:0a:00:00:05"
    assert peer["flags"] == 0  # a veth peer cannot be created up


def test_set_link_carries_only_what_was_asked():
    msg = decode(ifinfmsg, rtnl.set_link(name="vethabc", up=False, master=0, group=rtnl_group()))
    assert msg["index"] == 0 and msg.get("ifname") == "vethabc"
    assert msg["change"] == rtnl.IFF_UP and msg["flags"] == 0
    assert msg.get("master") == 0 and msg.get("group") == rtnl_group()
    plain = decode(ifinfmsg, rtnl.set_link(index=5, up=True))
    assert plain["index"] == 5 and plain["flags"] == plain["change"] == rtnl.IFF_UP
    assert plain.get("ifname") is None and plain.get("master") is None
    tag = decode(ifinfmsg, rtnl.set_link(name="v", alias="cnm:ep1"))
    assert tag["change"] == 0 and tag.get("ifalias") == "cnm:ep1"


def test_hairpin_is_a_bridge_port_attribute_sent_as_newlink():
    req = rtnl.set_link(name="v", hairpin=True)
    # RTM_SETLINK would ignore IFLA_LINKINFO; RTM_NEWLINK without NLM_F_CREATE changes the link
    assert req.type == rtnl.RTM_NEWLINK and not req.flags & rtnl.NLM_F_CREATE
    info = decode(ifinfmsg, req).get("linkinfo")
    assert info.get("slave_kind") == "bridge"
    # IFLA_INFO_SLAVE_DATA { IFLA_BRPORT_MODE = 1 }
    mode = struct.pack("=HH", 5, rtnl.IFLA_BRPORT_MODE) + b"\x01\0\0\0"
    assert struct.pack("=HH", 4 + len(mode), rtnl.IFLA_INFO_SLAVE_DATA) + mode in req.body


def test_address_and_route():
    msg = decode(ifaddrmsg, rtnl.add_address(3, IPv4Address("10.1.2.3"), 16))
    assert msg["family"] == socket.AF_INET and msg["prefixlen"] == 16 and msg["index"] == 3
    assert msg.get("local") == msg.get("address") == "10.1.2.3"
    assert msg.get("broadcast") is None
    route = decode(rtmsg, rtnl.add_default_route(IPv4Address("10.1.0.1"), 3))
    assert route["dst_len"] == 0 and route["table"] == 254 and route["proto"] == rtnl.RTPROT_STATIC
    assert route["type"] == rtnl.RTN_UNICAST and route.get("gateway") == "10.1.0.1" and route.get("oif") == 3


def test_delete_by_group_or_name():
    assert decode(ifinfmsg, rtnl.del_link(group=42)).get("group") == 42
    by_name = decode(ifinfmsg, rtnl.del_link(name="vethx"))
    assert by_name["index"] == 0 and by_name.get("ifname") == "vethx"


def test_parse_link_reads_index_and_peer():
    body = rtnl.ifinfomsg(index=12) + rtnl.attr_str(rtnl.IFLA_IFNAME, "v") + rtnl.attr_u32(rtnl.IFLA_LINK, 2)
    assert rtnl.parse_link(body) == rtnl.LinkEcho(index=12, link=2)


class FakeSocket:
    """Answers each request of a datagram with an ack (or the scripted errno), an echo
    before the ack when asked; in separate datagrams, as the kernel may."""

    def __init__(self, errors: dict[int, int] | None = None) -> None:
        self.errors = errors or {}
        self.sent: list[bytes] = []
        self.queue: list[bytes] = []
        self.timeout = None

    def gettimeout(self):
        return self.timeout

    def settimeout(self, value):
        self.timeout = value

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        offset, i = 0, 0
        while offset < len(data):
            length, kind, flags, seq, _ = struct.unpack_from("=IHHII", data, offset)
            if flags & rtnl.NLM_F_ECHO:
                echo = rtnl.ifinfomsg(index=40 + i) + rtnl.attr_u32(rtnl.IFLA_LINK, 2)
                self.queue.append(struct.pack("=IHHII", 16 + len(echo), kind, 0, seq, 0) + echo)
            err = struct.pack("=i", -self.errors.get(i, 0)) + data[offset : offset + 16]
            self.queue.append(struct.pack("=IHHII", 16 + len(err), rtnl.NLMSG_ERROR, 0, seq, 0) + err)
            offset += (length + 3) & ~3
            i += 1
        return len(data)

    def recv(self, size: int) -> bytes:
        if not self.queue:
            raise TimeoutError
        return self.queue.pop(0)


def test_transact_batches_in_one_datagram_and_matches_answers():
    sock = FakeSocket(errors={1: errno.ENODEV})
    reqs = [
        rtnl.new_veth("v", mtu=1500, master=1, up=True, peer_name="eth0", peer_netns_fd=3),
        rtnl.set_link(name="v", alias="cnm:x"),
        rtnl.set_link(index=2, up=True),
    ]
    answers = rtnl.transact(sock, reqs)
    assert len(sock.sent) == 1
    assert [a.error for a in answers] == [0, errno.ENODEV, 0]
    assert rtnl.parse_link(answers[0].echo) == rtnl.LinkEcho(index=40, link=2)
    assert answers[1].echo is None
    with pytest.raises(rtnl.NetlinkError) as err:
        rtnl.check(answers, reqs)
    assert err.value.errno == errno.ENODEV and "configure link v" in str(err.value)
    rtnl.check(answers, reqs, ok=(errno.ENODEV,))
    assert sock.timeout is None  # restored


def test_transact_times_out_as_oserror():
    class Silent(FakeSocket):
        def send(self, data):
            return len(data)

    with pytest.raises(OSError) as err:
        rtnl.transact(Silent(), [rtnl.set_link(index=1, up=True)])
    assert err.value.errno == errno.ETIMEDOUT


def rtnl_group() -> int:
    from cnm.kernel.reaper import RETIRED_GROUP

    return RETIRED_GROUP
