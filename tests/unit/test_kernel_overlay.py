"""The overlay's kernel primitives without root: the VXLAN device, FDB and neighbour
requests as rtnl packs them (decoded with pyroute2's parser, an independent reading of the
wire format), the specs' validation, and FakeKernel's rules and command log."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg

from cnm.errors import Conflict, InvalidArgument, KernelError
from cnm.kernel import rtnl
from cnm.kernel.api import FdbEntry, NeighEntry, VxlanSpec
from cnm.kernel.fake import FakeKernel

VTEP = IPv4Address("198.51.100.2")
MAC = "02:42:0a:00:00:21"


def decode(cls, req: rtnl.Request):
    header = struct.pack("=IHHII", 16 + len(req.body), req.type, 0, 1, 0)
    msg = cls(header + req.body)
    msg.decode()
    return msg


def spec(**kw) -> VxlanSpec:
    values = dict(
        owner="net1", name="vx-net1", vni=4096, local=IPv4Address("198.51.100.1"), bridge="ov-net1", mtu=1450
    )
    values.update(kw)
    return VxlanSpec(**values)


def test_new_vxlan_is_nolearning_proxy_on_port_4789_without_a_group():
    req = rtnl.new_vxlan(
        "vx-1", vni=4096, local=IPv4Address("198.51.100.1"), port=4789, mtu=1450, master=3, up=True
    )
    assert req.type == rtnl.RTM_NEWLINK and req.flags & rtnl.NLM_F_EXCL and req.flags & rtnl.NLM_F_ECHO
    msg = decode(ifinfmsg, req)
    assert msg.get("ifname") == "vx-1" and msg.get("mtu") == 1450 and msg.get("master") == 3
    assert msg["flags"] & rtnl.IFF_UP
    info = msg.get("linkinfo")
    assert info.get("kind") == "vxlan"
    data = dict(info.get("data")["attrs"])
    assert data == {
        "IFLA_VXLAN_ID": 4096,
        "IFLA_VXLAN_LOCAL": "198.51.100.1",
        "IFLA_VXLAN_PORT": 4789,
        "IFLA_VXLAN_LEARNING": 0,
        "IFLA_VXLAN_PROXY": 1,
    }


def test_fdb_requests_are_the_devices_own_permanent_entries():
    new = rtnl.replace_fdb(5, MAC, VTEP)
    assert new.type == rtnl.RTM_NEWNEIGH and new.flags == rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE
    msg = decode(ndmsg, new)
    assert (msg["family"], msg["ifindex"], msg["state"], msg["flags"]) == (rtnl.AF_BRIDGE, 5, 0x80, 0x02)
    assert msg.get("NDA_LLADDR") == MAC and msg.get("NDA_DST") == str(VTEP)
    gone = decode(ndmsg, rtnl.del_fdb(5, MAC, VTEP))
    assert gone["header"]["type"] == rtnl.RTM_DELNEIGH and gone["flags"] == 0x02
    assert gone.get("NDA_LLADDR") == MAC and gone.get("NDA_DST") == str(VTEP)


def test_neighbour_requests_are_permanent_ipv4_entries():
    new = rtnl.replace_neigh(5, IPv4Address("10.0.0.21"), MAC)
    assert new.flags == rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE
    msg = decode(ndmsg, new)
    assert (msg["family"], msg["ifindex"], msg["state"], msg["flags"]) == (2, 5, 0x80, 0)
    assert msg.get("NDA_DST") == "10.0.0.21" and msg.get("NDA_LLADDR") == MAC
    gone = decode(ndmsg, rtnl.del_neigh(5, IPv4Address("10.0.0.21")))
    assert gone["header"]["type"] == rtnl.RTM_DELNEIGH and gone.get("NDA_DST") == "10.0.0.21"


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"vni": 0}, "invalid VNI 0"),
        ({"vni": 1 << 24}, "invalid VNI 16777216"),
        ({"port": 0}, "invalid VXLAN port 0"),
        ({"mtu": 20}, "invalid MTU 20"),
    ],
)
def test_a_bad_vxlan_spec_is_refused_naming_what_is_wrong(kw, words):
    with pytest.raises(InvalidArgument, match=words):
        spec(**kw)


def test_entries_normalize_macs_and_refuse_bad_ones():
    assert FdbEntry("02:42:0A:00:00:21", VTEP).mac == MAC
    assert NeighEntry(IPv4Address("10.0.0.2"), "02:42:0A:00:00:21").mac == MAC
    for bad in ("02:42:0a:00:00", "zz:42:0a:00:00:21", "0242.0a00.0021"):
        with pytest.raises(InvalidArgument, match="invalid MAC address"):
            FdbEntry(bad, VTEP)


async def test_fake_vxlan_needs_its_bridge_a_free_name_and_a_free_vni():
    k = FakeKernel()
    with pytest.raises(KernelError, match="bridge ov-net1 does not exist"):
        await k.add_vxlan(spec())
    bridge = await k.ensure_bridge("ov-net1", owner="net1", mtu=1450, address=None)
    index = await k.add_vxlan(spec())
    link = k.link("vx-net1")
    assert link is not None and link.index == index and link.kind == "vxlan"
    assert (link.master, link.owner, link.daemon, link.mtu, link.up) == (bridge, "net1", k.DAEMON, 1450, True)
    assert k.link("ov-net1").addresses == []
    with pytest.raises(Conflict, match="a link has that name"):
        await k.add_vxlan(spec())
    with pytest.raises(Conflict, match="VNI 4096 on port 4789 is in use"):
        await k.add_vxlan(spec(name="vx-other"))
    await k.add_vxlan(spec(name="vx-other", vni=4097))
    assert k.commands[-2:] == [
        "ip link add vx-other mtu 1450 master ov-net1 up type vxlan id 4097 local 198.51.100.1 "
        "dstport 4789 nolearning proxy",
        f"ip link set vx-other alias cnm:{k.DAEMON}:net1",
    ]


async def test_fake_entries_replace_delete_list_and_go_with_their_device():
    k = FakeKernel()
    await k.ensure_bridge("ov-net1", owner="net1", mtu=1450, address=None)
    await k.add_vxlan(spec())
    other = IPv4Address("198.51.100.3")
    await k.replace_fdb("vx-net1", FdbEntry(MAC, VTEP))
    await k.replace_fdb("vx-net1", FdbEntry(MAC, other))  # the container moved to another host
    await k.replace_neigh("vx-net1", NeighEntry(IPv4Address("10.0.0.21"), MAC))
    assert await k.fdb_entries("vx-net1") == [FdbEntry(MAC, other)]
    assert await k.neigh_entries("vx-net1") == [NeighEntry(IPv4Address("10.0.0.21"), MAC)]

    await k.delete_fdb("vx-net1", FdbEntry(MAC, VTEP))  # the stale one: the moved entry stays
    assert await k.fdb_entries("vx-net1") == [FdbEntry(MAC, other)]
    await k.delete_fdb("vx-net1", FdbEntry(MAC, other))
    await k.delete_neigh("vx-net1", IPv4Address("10.0.0.21"))
    await k.delete_neigh("vx-net1", IPv4Address("10.0.0.21"))  # idempotent
    assert await k.fdb_entries("vx-net1") == [] and await k.neigh_entries("vx-net1") == []
    assert k.commands[-5:] == [
        f"bridge fdb replace {MAC} dev vx-net1 dst {VTEP} self permanent",
        f"bridge fdb replace {MAC} dev vx-net1 dst {other} self permanent",
        f"ip neigh replace 10.0.0.21 lladdr {MAC} dev vx-net1 nud permanent",
        f"bridge fdb del {MAC} dev vx-net1 dst {other} self",
        "ip neigh del 10.0.0.21 dev vx-net1",
    ]

    for call in (k.replace_fdb, k.delete_fdb):  # FDB remotes live on VXLAN devices
        with pytest.raises(KernelError, match="a bridge link, not a VXLAN device"):
            await call("ov-net1", FdbEntry(MAC, VTEP))
    await k.replace_fdb("vx-net1", FdbEntry(MAC, VTEP))
    await k.delete_link("vx-net1")
    for call in (k.fdb_entries("vx-net1"), k.replace_fdb("vx-net1", FdbEntry(MAC, VTEP))):
        with pytest.raises(KernelError, match="no such device"):
            await call
    await k.delete_fdb("vx-net1", FdbEntry(MAC, VTEP))  # gone with its device: success
    await k.delete_neigh("vx-net1", IPv4Address("10.0.0.21"))
