"""Encrypted overlay networks on fake kernels (two hosts with a WireGuard tunnel each, see
overlay_hosts.py): the tunnel comes up with the first encrypted network on a host and goes
with the last; each node gets its own tunnel address and key pair, only the public key in
its node record; the encrypted network's VXLAN device sends from the tunnel address and its
remote entries point at the peers' tunnel addresses; the WireGuard peers follow the node
records; a restart keeps the key; keys rotate without the peers losing the node."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest
from overlay_hosts import Host, until

from cnm.daemon.config import DEFAULT_TUNNEL_POOL, parse_args, parse_key_rotation, parse_tunnel_pool
from cnm.drivers import overlay_crypt
from cnm.drivers.overlay import bridge_of, vxlan_of
from cnm.drivers.overlay_crypt import IFNAME, OWNER, Tunnel, load_keys, node_of
from cnm.errors import InvalidArgument, SystemFailure, TeardownErrors, Unavailable
from cnm.kernel.api import FdbEntry, WgPeer, WgSpec
from cnm.kernel.fake import FakeWireGuard
from cnm.kernel.wireguard import KeyPair, RotationPolicy
from cnm.model.network import NetworkSpec
from cnm.store.memory import MemoryStore

ENCRYPTED = {"encrypted": ""}


@pytest.fixture
async def hosts(tmp_path):
    shared = MemoryStore("global")
    a = Host(tmp_path, "h1", "198.51.100.1", shared, tunnel=True)
    b = Host(tmp_path, "h2", "198.51.100.2", shared, tunnel=True)
    await a.start()
    await b.start()
    yield a, b
    for host in (a, b):
        if host.ctl is not None:
            await host.stop()


async def shared_network(a: Host, b: Host, name: str = "sec", options=ENCRYPTED):
    assert a.ctl is not None and b.ctl is not None
    net = await a.ctl.create_network(
        NetworkSpec(name=name, driver="overlay", attachable=True, options=options)
    )
    await until(lambda: net.id in b.ctl._state.networks)
    return net


async def node_doc(host: Host) -> dict:
    entry = await host.cluster_store.get(f"node/{host.name}")
    assert entry is not None
    return dict(entry.doc)


def device(host: Host):
    assert host.wireguard is not None
    return host.wireguard.devices.get(IFNAME)


async def test_an_encrypted_network_sends_its_vxlan_between_tunnel_addresses(hosts):
    a, b = hosts
    net = await shared_network(a, b)
    assert device(a) is None  # nothing before the first encrypted endpoint
    web = await a.run("web", "sec")
    db = await b.run("db", "sec")
    ta, tb = IPv4Address("100.64.0.1"), IPv4Address("100.64.0.2")
    # one WireGuard interface per host, its tunnel address in the shared pool, MTU for it
    for host, mine in ((a, ta), (b, tb)):
        link = host.link(IFNAME)
        assert link.kind == "tun" and [str(x) for x in link.addresses] == [f"{mine}/10"]
        assert link.mtu == 1440 and device(host).listen_port == 51820
    # the VXLAN device sends from the tunnel address, with room for both headers
    vx = a.link(vxlan_of(net.id))
    assert (vx.vxlan.local, vx.vxlan.mtu, a.link(web.host_ifname).mtu) == (ta, 1390, 1390)
    # the records name the tunnel addresses as VTEPs, so the entries point into the tunnel
    assert (await a.cluster_store.get(f"endpoint/{web.id}")).doc["vtep"] == str(ta)
    await until(lambda: a.fdb(net.id) == {FdbEntry(db.mac, tb)})
    await until(lambda: b.fdb(net.id) == {FdbEntry(web.mac, ta)})
    # only the public key is in the cluster store, with the tunnel address and port
    keys_a = load_keys(str(a.tmp / "wireguard.json"))
    assert keys_a is not None and device(a).private_key == keys_a.current.private
    doc = await node_doc(a)
    assert (doc["WireguardKey"], doc["TunnelAddress"], doc["WireguardPort"], doc["WireguardNextKey"]) == (
        keys_a.current.public,
        str(ta),
        51820,
        "",
    )
    dump = json.dumps([e.doc for e in (await a.cluster_store.list("")).entries])
    assert keys_a.current.private not in dump
    assert stat.S_IMODE(os.stat(a.tmp / "wireguard.json").st_mode) == 0o600
    # each peer: the other node's key, its underlay address, its tunnel address only
    await until(lambda: list(device(b).peers.values()) != [])
    assert list(device(b).peers.values()) == [
        WgPeer(keys_a.current.public, (IPv4Address(a.address), 51820), (IPv4Network(f"{ta}/32"),), 25)
    ]
    key_b = (await node_doc(b))["WireguardKey"]
    await until(lambda: [p.public_key for p in device(a).peers.values()] == [key_b])
    # the commands a person would type, in the order cnmd ran them
    assert any(
        c.startswith("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 wireguard-go cnmwg0")
        for c in a.kernel.commands
    )
    assert (
        f"wg set cnmwg0 peer {key_b} endpoint 198.51.100.2:51820 persistent-keepalive 25 allowed-ips 100.64.0.2/32"
        in a.kernel.commands
    )


async def test_a_plain_network_is_unchanged_and_starts_no_tunnel(hosts):
    a, b = hosts
    net = await shared_network(a, b, "ov", options={})
    web = await a.run("web", "ov")
    assert device(a) is None and a.link(IFNAME) is None
    assert a.link(vxlan_of(net.id)).vxlan.local == IPv4Address(a.address)
    assert (await a.cluster_store.get(f"endpoint/{web.id}")).doc["vtep"] == a.address
    assert "WireguardKey" not in await node_doc(a)


async def test_the_tunnel_goes_with_the_last_encrypted_network_and_its_peer_everywhere(hosts):
    a, b = hosts
    one = await shared_network(a, b, "one")
    two = await shared_network(a, b, "two")
    await a.run("w1", "one")
    await a.run("w2", "two")
    await b.run("db", "one")
    await until(lambda: device(b) is not None and len(device(b).peers) == 1)
    assert a.ctl is not None
    await a.ctl.remove_container("w1", force=True)
    assert device(a) is not None  # "two" still needs it
    await a.ctl.remove_container("w2", force=True)
    assert device(a) is None and a.link(IFNAME) is None
    assert a.link(bridge_of(one.id)) is None and a.link(bridge_of(two.id)) is None
    assert (await node_doc(a))["WireguardKey"] == ""  # offers no tunnel: no longer a peer
    await until(lambda: device(b).peers == {})


async def test_encrypted_vnis_are_guarded_while_their_data_plane_is_here(hosts):
    a, b = hosts
    sec = await shared_network(a, b, "sec")
    assert a.firewall.vnis == {}  # nothing before the data plane
    await a.run("web", "sec")
    vni = a.link(vxlan_of(sec.id)).vxlan.vni
    assert a.firewall.vnis == {sec.id: vni}
    assert b.firewall.vnis == {}  # no data plane there
    await b.run("db", "sec")
    assert b.firewall.vnis == {sec.id: vni}
    await until(lambda: device(b) is not None and len(device(b).peers) == 1)


async def test_a_restart_guards_the_adopted_encrypted_network_again(hosts):
    a, b = hosts
    sec = await shared_network(a, b, "sec")
    await a.run("web", "sec")
    await a.stop()
    a.firewall.vnis.clear()  # as if the ruleset had been rebuilt meanwhile
    await a.start()
    await until(lambda: a.firewall.vnis == {sec.id: a.link(vxlan_of(sec.id)).vxlan.vni})


async def test_a_firewall_refusing_the_vni_leaves_no_tunnel_and_no_data_plane(hosts):
    a, b = hosts
    sec = await shared_network(a, b, "sec")
    a.firewall.fail_on = "add_encrypted_vni"
    with pytest.raises(Exception, match="injected failure"):
        await a.run("web", "sec")
    assert device(a) is None and a.link(IFNAME) is None
    assert a.link(vxlan_of(sec.id)) is None and a.link(bridge_of(sec.id)) is None
    assert (await node_doc(a)).get("WireguardKey", "") == ""


async def test_a_node_whose_record_goes_is_no_longer_a_peer(hosts):
    a, b = hosts
    await shared_network(a, b)
    await a.run("web", "sec")
    await b.run("db", "sec")
    await until(lambda: len(device(a).peers) == 1)
    await a.cluster_store.delete("node/h2")  # its lease ran out
    await until(lambda: device(a).peers == {})


async def test_a_restart_keeps_the_key_and_adopts_the_device(hosts):
    a, b = hosts
    net = await shared_network(a, b)
    await a.run("web", "sec")
    db = await b.run("db", "sec")
    public = (await node_doc(a))["WireguardKey"]
    pid = device(a).pid
    await a.stop()
    await a.start()
    assert device(a).pid == pid  # adopted, not started again
    await until(lambda: a.fdb(net.id) == {FdbEntry(db.mac, IPv4Address("100.64.0.2"))})
    doc = await node_doc(a)
    assert (doc["WireguardKey"], doc["TunnelAddress"]) == (public, "100.64.0.1")


async def test_a_device_that_dies_is_started_again_with_its_key_and_peers(hosts, monkeypatch):
    monkeypatch.setattr(overlay_crypt, "RECONCILE_S", 0.02)
    a, b = hosts
    await shared_network(a, b)
    await a.run("web", "sec")
    await b.run("db", "sec")
    await until(lambda: len(device(a).peers) == 1)
    before = device(a)
    assert a.wireguard is not None
    del a.wireguard.devices[IFNAME]  # wireguard-go killed: its TUN goes with it
    a.kernel._remove(None, a.link(IFNAME))
    await until(lambda: device(a) is not None and len(device(a).peers) == 1)
    assert device(a).private_key == before.private_key and device(a).peers == before.peers
    assert [str(x) for x in a.link(IFNAME).addresses] == ["100.64.0.1/10"]


async def test_no_record_or_entry_of_an_encrypted_network_points_outside_the_tunnel(hosts):
    a, b = hosts
    net = await shared_network(a, b)
    web = await a.run("web", "sec")
    db = await b.run("db", "sec")
    # a record naming an underlay address as VTEP (a host without the tunnel, a bug): frames
    # for it would leave in the clear, so it is never programmed
    doc = dict((await b.cluster_store.get(f"endpoint/{db.id}")).doc)
    doc.update(node="h9", vtep="198.51.100.9", mac="02:42:0a:00:00:99", address="10.0.0.99/24")
    await b.cluster_store.put("endpoint/stray", doc)
    await b.run("db2", "sec")
    await until(lambda: len(a.fdb(net.id)) == 2)
    assert {e.dst for e in a.fdb(net.id)} == {IPv4Address("100.64.0.2")}
    # a restart whose tunnel cannot come up publishes no record of its endpoint at all
    await a.stop()
    await a.cluster_store.delete(f"endpoint/{web.id}")  # gone with the old lease
    assert a.wireguard is not None
    a.wireguard.fail("up", times=100)
    with pytest.raises(TeardownErrors, match="injected failure in wg.up"):
        await a.start()
    assert await a.cluster_store.get(f"endpoint/{web.id}") is None


async def test_a_restart_without_an_encrypted_endpoint_stops_the_device_it_finds(tmp_path):
    shared = MemoryStore("global")
    a = Host(tmp_path, "h1", "198.51.100.1", shared, tunnel=True)
    await a.start()
    await a.stop()
    assert a.wireguard is not None  # a device of this daemon, left by an earlier run
    await a.wireguard.up(WgSpec(IFNAME, OWNER, IPv4Interface("100.64.0.1/10")))
    a.wireguard.add_foreign_device("wg-other", daemon="another")
    await a.start()
    try:
        assert device(a) is None and a.link(IFNAME) is None
        assert "wg-other" in a.wireguard.devices  # never another daemon's
    finally:
        await a.stop()


async def test_keys_rotate_and_the_peer_follows_without_losing_the_node(tmp_path):
    shared = MemoryStore("global")
    policy = RotationPolicy(0.6, grace=0.3)
    a = Host(tmp_path, "h1", "198.51.100.1", shared, tunnel=True, rotation=policy)
    b = Host(tmp_path, "h2", "198.51.100.2", shared, tunnel=True)
    await a.start()
    await b.start()
    try:
        await shared_network(a, b)
        await a.run("web", "sec")
        await b.run("db", "sec")
        first = (await node_doc(a))["WireguardKey"]
        await until(lambda: list(device(b).peers) == [first])
        # announced: b stages the next key beside the current one, without addresses
        staged: list[str] = []

        def announced() -> bool:
            peers = device(b).peers
            staged[:] = [k for k in peers if k != first]
            return len(peers) == 2

        await until(announced, timeout=5)
        assert device(b).peers[staged[0]].allowed_ips == ()
        assert device(b).peers[first].allowed_ips == (IPv4Network("100.64.0.1/32"),)
        # switched: a uses the new key, b moves a's address to it and drops the old one
        await until(lambda: list(device(b).peers) != [first] and len(device(b).peers) == 1, timeout=5)
        now = list(device(b).peers.values())[0]
        assert now.public_key != first and now.allowed_ips == (IPv4Network("100.64.0.1/32"),)
        keys = load_keys(str(a.tmp / "wireguard.json"))
        assert keys is not None and KeyPair.from_private(device(a).private_key).public != first
        assert keys.current.private == device(a).private_key or keys.next is not None
        assert "wg set cnmwg0 private-key /dev/stdin" in a.kernel.commands
    finally:
        for host in (a, b):
            await host.stop()


async def test_a_switch_the_record_missed_is_published_again(tmp_path):
    a = Host(
        tmp_path, "h1", "198.51.100.1", MemoryStore("global"), tunnel=True, rotation=RotationPolicy(2, 0.2)
    )
    ctl = await a.start()
    try:
        await ctl.create_network(
            NetworkSpec(name="sec", driver="overlay", attachable=True, options=ENCRYPTED)
        )
        await a.run("web", "sec")
        first = (await node_doc(a))["WireguardKey"]
        assert a.tunnel is not None
        real, missed = a.tunnel._publish, []

        async def flaky(fields: dict) -> None:
            if fields["WireguardKey"] not in ("", first) and not missed:  # the switch's write
                missed.append(fields)
                raise Unavailable("the cluster store is unreachable")
            await real(fields)

        a.tunnel._publish = flaky
        await until(lambda: bool(missed), timeout=5)
        now = KeyPair.from_private(device(a).private_key).public
        assert now != first
        # written again after a pause, before the next announce (1.8 s after the switch)
        for _ in range(150):
            doc = await node_doc(a)
            if (doc["WireguardKey"], doc["WireguardNextKey"]) == (now, ""):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"the switch never reached the record: {doc}")
    finally:
        await a.stop()


async def test_tunnel_addresses_are_unique_and_kept_by_node_name(tmp_path):
    store = MemoryStore("global")
    await store.put("tunnel/100.64.0.1", {"Node": "old"})  # a node long gone keeps its address

    def tunnel(node: str) -> Tunnel:
        async def publish(_fields: dict) -> None:
            return None

        return Tunnel(
            FakeWireGuard(),
            store,
            node,
            IPv4Address("198.51.100.9"),
            key_path=str(tmp_path / node),
            publish=publish,
        )

    first, second = await tunnel("n1").address(), await tunnel("n2").address()
    assert (first, second) == (IPv4Address("100.64.0.2"), IPv4Address("100.64.0.3"))
    assert await tunnel("n1").address() == first  # the same node name: its address again
    assert (await store.get("tunnel/100.64.0.3")).doc == {"Node": "n2"}


def test_a_malformed_key_file_is_named_and_its_content_never_shown(tmp_path):
    path = tmp_path / "wireguard.json"
    path.write_text('{"private": "c2VjcmV0", "since": 0}')
    with pytest.raises(SystemFailure, match=f"cannot read the WireGuard key file {path}") as err:
        load_keys(str(path))
    assert "c2VjcmV0" not in str(err.value)


def test_a_node_record_with_a_bad_tunnel_is_no_peer():
    good = KeyPair.generate().public
    base = {"Address": "198.51.100.2", "TunnelAddress": "100.64.0.2", "WireguardPort": 51820}
    assert node_of("h2", {**base, "WireguardKey": good}).tunnel is not None
    assert node_of("h2", {**base, "WireguardKey": ""}).tunnel is None
    assert node_of("h2", {**base, "WireguardKey": "not-a-key"}).tunnel is None
    assert node_of("h2", {**base, "WireguardKey": good, "TunnelAddress": "x"}).tunnel is None
    assert node_of("h2", {**base, "WireguardKey": good, "WireguardPort": 0}).tunnel is None


def test_the_rotation_flag_is_a_duration_or_zero_and_needs_a_cluster():
    assert parse_key_rotation("12h") == 43200 and parse_key_rotation("1h30m") == 5400
    assert parse_key_rotation("0") == 0 and parse_key_rotation("90s") == 90
    for bad in ("soon", "-5s", "12", "1s", "5x"):
        with pytest.raises(InvalidArgument, match="--overlay-key-rotation"):
            parse_key_rotation(bad)
    with pytest.raises(InvalidArgument, match="--overlay-key-rotation given without --cluster-store"):
        parse_args(["--overlay-key-rotation", "1h"])


def test_the_tunnel_pool_flag_is_a_unicast_network_with_room_and_needs_a_cluster():
    assert parse_tunnel_pool("10.250.0.0/16") == IPv4Network("10.250.0.0/16")
    assert DEFAULT_TUNNEL_POOL == IPv4Network("100.64.0.0/10")
    for bad, why in (
        ("10.250.0.1/16", "has host bits set"),
        ("10.250.0.0/31", "no room"),
        ("224.0.0.0/8", "not a unicast network"),
        ("fd00::/64", "Expected 4 octets"),
    ):
        with pytest.raises(InvalidArgument, match=f"invalid --overlay-tunnel-pool .*{why}"):
            parse_tunnel_pool(bad)
    with pytest.raises(InvalidArgument, match="--overlay-tunnel-pool given without --cluster-store"):
        parse_args(["--overlay-tunnel-pool", "10.250.0.0/16"])


async def test_a_tunnel_takes_its_address_from_its_pool(tmp_path):
    async def publish(_fields: dict) -> None:
        return None

    tunnel = Tunnel(
        FakeWireGuard(),
        MemoryStore("global"),
        "n1",
        IPv4Address("198.51.100.9"),
        key_path=str(tmp_path / "k"),
        publish=publish,
        pool=IPv4Network("10.250.0.0/16"),
    )
    assert await tunnel.address() == IPv4Address("10.250.0.1")
    assert tunnel.carries(IPv4Address("10.250.9.9")) and not tunnel.carries(IPv4Address("100.64.0.1"))
