"""WireGuard without root: keys, the UAPI text protocol, the peer plan, the logged commands,
MTUs, the key-rotation plan, and FakeWireGuard (the in-memory protocol drivers test on)."""

from __future__ import annotations

import base64
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from cnm.errors import Conflict, InvalidArgument, KernelError, NotFound
from cnm.kernel import wireguard as wg
from cnm.kernel import wireguard_go
from cnm.kernel.api import WgPeer, WgProcess, WgSpec
from cnm.kernel.fake import FakeKernel, FakeWireGuard

# RFC 7748, section 6.1: Alice's and Bob's X25519 key pairs.
ALICE_PRIVATE = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
ALICE_PUBLIC = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
BOB_PUBLIC = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"


def b64(hex_key: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_key)).decode()


def key(n: int) -> str:
    """A well-formed public key, distinct for each ``n``."""
    return base64.b64encode(bytes([n]) * 32).decode()


def net(text: str) -> IPv4Network:
    return IPv4Network(text)


EP1 = (IPv4Address("198.51.100.1"), 51820)
EP2 = (IPv4Address("198.51.100.2"), 51820)

# -- keys -------------------------------------------------------------------------------------------


def test_public_key_is_rfc7748s() -> None:
    assert wg.public_key(b64(ALICE_PRIVATE)) == b64(ALICE_PUBLIC)


def test_generated_pairs_are_clamped_as_wg_genkey_and_match() -> None:
    pairs = [wg.KeyPair.generate() for _ in range(4)]
    assert len({p.private for p in pairs}) == 4
    for pair in pairs:
        raw = base64.b64decode(pair.private)
        assert len(raw) == 32 and raw[0] & 7 == 0 and raw[31] & 0x80 == 0 and raw[31] & 0x40
        assert pair.public == wg.public_key(pair.private) == wg.KeyPair.from_private(pair.private).public


def test_a_key_pair_never_shows_its_private_half() -> None:
    pair = wg.KeyPair.generate()
    assert pair.private not in repr(pair) and pair.public in repr(pair)
    assert pair.private not in repr(
        WgSpec("wg0", "o", IPv4Interface("10.1.0.1/24"), private_key=pair.private)
    )


@pytest.mark.parametrize(
    "text,reason", [("not base64!", "not base64"), (base64.b64encode(b"x" * 31).decode(), "31 bytes")]
)
def test_bad_keys_are_named_and_private_ones_not_repeated(text: str, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason) as public:
        wg.check_key(text)
    assert "public key" in str(public.value) and repr(text) in str(public.value)
    with pytest.raises(InvalidArgument, match=reason) as private:
        wg.check_key(text, "private key")
    assert text not in str(private.value)


# -- UAPI -------------------------------------------------------------------------------------------


def test_encode_set_writes_the_uapi_lines_in_order() -> None:
    move = WgPeer(b64(BOB_PUBLIC), EP2, (net("10.99.0.2/32"), net("10.99.1.0/24")), 25)
    staged = WgPeer(key(3))
    text = wg.encode_set(
        private_key=b64(ALICE_PRIVATE), listen_port=51820, peers=[move, staged], remove=[key(4)]
    ).decode()
    assert text == (
        "set=1\n"
        f"private_key={ALICE_PRIVATE}\n"
        "listen_port=51820\n"
        f"public_key={BOB_PUBLIC}\n"
        "endpoint=198.51.100.2:51820\n"
        "persistent_keepalive_interval=25\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=10.99.0.2/32\n"
        "allowed_ip=10.99.1.0/24\n"
        f"public_key={(bytes([3]) * 32).hex()}\n"
        "persistent_keepalive_interval=0\n"
        "replace_allowed_ips=true\n"
        f"public_key={(bytes([4]) * 32).hex()}\n"
        "remove=true\n"
        "\n"
    )


def test_encode_set_refuses_a_bad_key_before_writing_anything() -> None:
    with pytest.raises(InvalidArgument, match="public key"):
        wg.encode_set(peers=[WgPeer("nope")])


GET_ANSWER = (
    f"private_key={ALICE_PRIVATE}\n"
    "listen_port=51820\n"
    f"public_key={BOB_PUBLIC}\n"
    "preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n"
    "protocol_version=1\n"
    "endpoint=198.51.100.2:51820\n"
    "last_handshake_time_sec=1700000000\n"
    "last_handshake_time_nsec=500000000\n"
    "tx_bytes=1024\n"
    "rx_bytes=2048\n"
    "persistent_keepalive_interval=25\n"
    "allowed_ip=10.99.0.2/32\n"
    "allowed_ip=fd00::2/128\n"
    "some_future_key=1\n"
    f"public_key={(bytes([3]) * 32).hex()}\n"
    "endpoint=[fd00::3]:51820\n"
    "last_handshake_time_sec=0\n"
    "last_handshake_time_nsec=0\n"
    "tx_bytes=0\n"
    "rx_bytes=0\n"
    "persistent_keepalive_interval=0\n"
    "errno=0\n"
    "\n"
)


def test_decode_get_reads_keys_peers_and_handshakes() -> None:
    state = wg.decode_get(GET_ANSWER)
    assert state.private_key == b64(ALICE_PRIVATE) and state.listen_port == 51820
    bob, staged = state.peers
    assert bob.peer == WgPeer(b64(BOB_PUBLIC), EP2, (net("10.99.0.2/32"),), 25)  # IPv6 dropped
    assert (bob.last_handshake, bob.tx_bytes, bob.rx_bytes) == (1700000000.5, 1024, 2048)
    assert staged.peer == WgPeer(key(3)) and staged.last_handshake == 0.0


def test_decode_get_of_a_fresh_device() -> None:
    state = wg.decode_get("listen_port=40000\nerrno=0\n\n")
    assert (state.private_key, state.listen_port, state.peers) == ("", 40000, ())


@pytest.mark.parametrize(
    "answer,match",
    [
        ("errno=22\n\n", "errno=22"),
        ("listen_port=1\n\n", "no errno"),
        (f"private_key={ALICE_PRIVATE[:-2]}\nerrno=0\n\n", "private key of 31 bytes"),
        (f"private_key={ALICE_PRIVATE[:-1]}\nerrno=0\n\n", "malformed private key"),
        ("listen_port=x\nerrno=0\n\n", "malformed listen_port"),
    ],
)
def test_decode_get_refuses_errors_and_garbage(answer: str, match: str) -> None:
    with pytest.raises(KernelError, match=match) as err:
        wg.decode_get(answer)
    assert ALICE_PRIVATE[:20] not in str(err.value)


def test_decode_errno() -> None:
    wg.decode_errno("errno=0\n\n", "set")
    with pytest.raises(KernelError, match="set: .*errno=-98"):
        wg.decode_errno("errno=-98\n\n", "set")


# -- the peer plan ------------------------------------------------------------------------------------

A = WgPeer(key(1), EP1, (net("10.99.0.1/32"),), 25)
B = WgPeer(key(2), EP2, (net("10.99.0.2/32"),), 25)


def test_nothing_to_do_when_the_device_agrees() -> None:
    assert not wg.plan_peers([A, B], [B, A])
    reordered = WgPeer(key(1), EP1, (net("10.99.1.0/24"), net("10.99.0.1/32")), 25)
    assert not wg.plan_peers([reordered], [WgPeer(key(1), EP1, tuple(reversed(reordered.allowed_ips)), 25)])
    # An endpoint left open keeps the one the device learnt.
    assert not wg.plan_peers([A], [WgPeer(key(1), None, A.allowed_ips, 25)])


def test_plan_adds_updates_and_removes() -> None:
    moved = WgPeer(key(1), EP2, A.allowed_ips, 25)
    plan = wg.plan_peers([A, B], [moved, WgPeer(key(3))])
    assert plan.upsert == (moved, WgPeer(key(3))) and plan.remove == (key(2),)
    assert wg.plan_peers([A, B], [moved], exact=False) == wg.PeerPlan(upsert=(moved,))


@pytest.mark.parametrize(
    "peers,match",
    [
        ([A, A], "given twice"),
        ([A, WgPeer(key(2), EP2, A.allowed_ips)], "given to two WireGuard peers"),
        ([WgPeer(key(1), keepalive=70000)], "keepalive"),
        ([WgPeer(key(1), (IPv4Address("198.51.100.1"), 0))], "endpoint port"),
        ([WgPeer("short")], "public key 'short'"),
    ],
)
def test_plan_refuses_bad_peers(peers: list[WgPeer], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        wg.plan_peers([], peers)


def test_commands_say_what_the_plan_does_without_secrets() -> None:
    plan = wg.plan_peers([A, B], [WgPeer(key(1), EP1, (net("10.99.0.1/32"), net("10.99.1.0/24")), 0)])
    assert [" ".join(c) for c in wg.plan_commands("wg-cnm", plan)] == [
        f"wg set wg-cnm peer {key(1)} endpoint 198.51.100.1:51820 persistent-keepalive off "
        "allowed-ips 10.99.0.1/32,10.99.1.0/24",
        f"wg set wg-cnm peer {key(2)} remove",
    ]
    assert wg.device_command("wg-cnm", listen_port=51820, private_key=True) == [
        "wg", "set", "wg-cnm", "listen-port", "51820", "private-key", "/dev/stdin",
    ]  # fmt: skip


def test_mtus() -> None:
    assert (wg.tunnel_mtu(1500), wg.vxlan_mtu_over_tunnel(1500)) == (1440, 1390)
    with pytest.raises(InvalidArgument, match="too small"):
        wg.tunnel_mtu(600)


# -- rotation -----------------------------------------------------------------------------------------


def test_rotation_policy_is_checked() -> None:
    for bad in (
        {"interval": -1},
        {"interval": 10, "grace": 10},
        {"interval": float("nan")},
        {"interval": 60, "grace": -1},
    ):
        with pytest.raises(InvalidArgument):
            wg.RotationPolicy(**bad)
    wg.RotationPolicy(interval=0, grace=30)  # never rotates: grace unused


def test_rotation_announces_then_switches_then_waits_a_whole_interval() -> None:
    policy = wg.RotationPolicy(interval=3600, grace=10)
    first = wg.KeyPair.generate()
    state = wg.KeyState(current=first, since=1000.0)
    assert wg.rotation_step(state, policy, 1000.0)[0] is wg.Step.WAIT
    step, same, when = wg.rotation_step(state, policy, 4589.0)
    assert (step, same, when) == (wg.Step.WAIT, state, 4590.0)

    step, announced, when = wg.rotation_step(state, policy, 4590.0)
    assert step is wg.Step.ANNOUNCE and when == 4600.0
    assert announced.next is not None and announced.next != first
    assert announced.published == (first.public, announced.next.public)
    assert wg.rotation_step(announced, policy, 4599.0)[:2] == (wg.Step.WAIT, announced)

    step, switched, when = wg.rotation_step(announced, policy, 4600.0)
    assert step is wg.Step.SWITCH and switched == wg.KeyState(current=announced.next, since=4600.0)
    assert switched.published == (announced.next.public, "") and when == 4600.0 + 3590
    assert wg.rotation_step(wg.KeyState(first, 0.0), wg.RotationPolicy(interval=0), 1e12)[0] is wg.Step.WAIT


def test_desired_peers_stage_an_announced_key_without_addresses() -> None:
    node = wg.NodeTunnel(key(1), EP1, IPv4Address("10.99.0.1"))
    assert wg.desired_peers([node]) == [A]
    announced = wg.NodeTunnel(key(1), EP1, IPv4Address("10.99.0.1"), next_public_key=key(5))
    assert wg.desired_peers([announced]) == [A, WgPeer(key(5), EP1)]
    # A handshake on the staged key: the node switched before its record said so.
    promoted = wg.desired_peers([announced], handshakes={key(1): 100.0, key(5): 200.0})
    assert promoted == [WgPeer(key(5), EP1, A.allowed_ips, 25)]
    assert wg.desired_peers([announced], handshakes={key(1): 300.0, key(5): 200.0}) == [
        A,
        WgPeer(key(5), EP1),
    ]


def test_the_switch_is_one_set_moving_the_address_before_removing_the_old_key() -> None:
    staged = wg.desired_peers([wg.NodeTunnel(key(1), EP1, IPv4Address("10.99.0.1"), key(5))])
    switched = wg.desired_peers([wg.NodeTunnel(key(5), EP1, IPv4Address("10.99.0.1"))])
    plan = wg.plan_peers(staged, switched)
    assert plan.upsert == (WgPeer(key(5), EP1, A.allowed_ips, 25),) and plan.remove == (key(1),)
    text = wg.encode_set(peers=plan.upsert, remove=plan.remove).decode()
    assert text.index("allowed_ip=10.99.0.1/32") < text.index("remove=true")


async def test_a_rotation_between_two_fake_hosts_never_leaves_an_address_without_a_peer() -> None:
    """A rotates; at every step B has exactly one peer for A's tunnel address, and once the
    record says so it is A's new key."""
    kernel = FakeKernel()
    await kernel.create_netns("/run/netns/b")
    b = FakeWireGuard(kernel)
    await b.up(WgSpec("wg-b", "o", IPv4Interface("10.99.0.2/24")), "/run/netns/b")
    policy = wg.RotationPolicy(interval=100, grace=5)
    state = wg.KeyState(current=wg.KeyPair.generate(), since=0.0)
    tunnel_a = IPv4Network("10.99.0.1/32")

    async def b_follows(state: wg.KeyState) -> None:
        public, following = state.published
        record = wg.NodeTunnel(public, EP1, IPv4Address("10.99.0.1"), following)
        await b.set_peers("wg-b", wg.desired_peers([record]), "/run/netns/b")
        routing = [k for k, p in b.devices["wg-b"].peers.items() if tunnel_a in p.allowed_ips]
        assert routing == [public]

    await b_follows(state)
    step, state, now = wg.rotation_step(state, policy, 0.0)
    assert (step, now) == (wg.Step.WAIT, 95.0)
    for _ in range(3):
        assert wg.rotation_step(state, policy, now - 0.5)[0] is wg.Step.WAIT
        step, state, now = wg.rotation_step(state, policy, now)
        assert step is wg.Step.ANNOUNCE and state.next is not None
        await b_follows(state)
        assert set(b.devices["wg-b"].peers) == {state.current.public, state.next.public}
        step, state, now = wg.rotation_step(state, policy, now)
        assert step is wg.Step.SWITCH
        await b_follows(state)
        assert set(b.devices["wg-b"].peers) == {state.current.public}
    before = list(kernel.commands)
    await b_follows(state)
    assert kernel.commands == before  # idempotent: nothing to change, nothing sent


# -- FakeWireGuard ----------------------------------------------------------------------------------


async def test_fake_up_is_idempotent_and_logs_what_the_real_one_logs() -> None:
    kernel = FakeKernel()
    fake = FakeWireGuard(kernel)
    pair = wg.KeyPair.generate()
    spec = WgSpec("wg-cnm", "n1", IPv4Interface("10.99.0.1/24"), private_key=pair.private)
    status = await fake.up(spec)
    assert status.public_key == pair.public and status.listen_port == 51820
    assert kernel.commands == [
        "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 wireguard-go wg-cnm",
        "wg set wg-cnm listen-port 51820 private-key /dev/stdin",
        f"ip link set wg-cnm alias cnm:{kernel.daemon_id}:n1 mtu 1440 up",
        "ip addr add 10.99.0.1/24 dev wg-cnm",
    ]
    assert pair.private not in " ".join(kernel.commands)
    link = kernel.link("wg-cnm")
    assert link is not None and (link.kind, link.owner, link.daemon) == ("tun", "n1", kernel.daemon_id)
    kernel.commands.clear()
    assert (await fake.up(WgSpec("wg-cnm", "n1", IPv4Interface("10.99.0.1/24")))).public_key == pair.public
    assert kernel.commands == []  # adopted: the key stays, nothing changes
    await fake.up(WgSpec("wg-cnm", "n1", IPv4Interface("10.99.0.9/24"), mtu=1400))
    assert kernel.commands == [
        f"ip link set wg-cnm alias cnm:{kernel.daemon_id}:n1 mtu 1400 up",
        "ip addr del 10.99.0.1/24 dev wg-cnm",
        "ip addr add 10.99.0.9/24 dev wg-cnm",
    ]


async def test_fake_peers_update_remove_and_status() -> None:
    fake = FakeWireGuard()
    await fake.up(WgSpec("wg-cnm", "n1", IPv4Interface("10.99.0.3/24")))
    await fake.set_peers("wg-cnm", [A, B])
    await fake.update_peer("wg-cnm", WgPeer(key(2), None, (net("10.99.0.2/32"), net("10.99.2.0/24")), 25))
    status = await fake.status("wg-cnm")
    assert [p.peer for p in status.peers] == [
        A,
        WgPeer(key(2), EP2, (net("10.99.0.2/32"), net("10.99.2.0/24")), 25),
    ]
    await fake.remove_peer("wg-cnm", key(1))
    await fake.remove_peer("wg-cnm", key(1))
    assert [p.peer.public_key for p in (await fake.status("wg-cnm")).peers] == [key(2)]
    with pytest.raises(NotFound):
        await fake.status("wg-other")


async def test_fake_cleanup_is_by_owner() -> None:
    kernel = FakeKernel()
    fake = FakeWireGuard(kernel)
    fake.add_foreign_device("wg-theirs", daemon="0123456789abcdef")
    with pytest.raises(Conflict, match="another cnmd"):
        await fake.up(WgSpec("wg-theirs", "n1", IPv4Interface("10.99.0.1/24")))
    kernel.add_foreign_link("wg-user", kind="dummy")
    with pytest.raises(Conflict, match="a link of that name exists"):
        await fake.up(WgSpec("wg-user", "n1", IPv4Interface("10.99.0.1/24")))
    for name in ("wg-a", "wg-b"):
        await fake.up(WgSpec(name, "n1", IPv4Interface("10.99.0.1/24")))
    assert sorted(d.ifname for d in await fake.running()) == ["wg-a", "wg-b"]
    assert await fake.reap(keep={"wg-b"}) == ["wg-a"]
    await fake.down("wg-theirs")  # not ours: untouched
    await fake.down("wg-a")  # gone already: fine
    assert set(fake.devices) == {"wg-theirs", "wg-b"} and kernel.link("wg-a") is None
    assert kernel.link("wg-theirs") is not None


# -- WireGuardGo: finding devices by their owner tag ---------------------------------------------


def fake_proc(
    root: Path, pid: int, comm: str, env: dict[str, str], argv: list[str], state: str = "S"
) -> None:
    entry = root / str(pid)
    entry.mkdir()
    (entry / "comm").write_text(comm + "\n")
    (entry / "stat").write_text(f"{pid} ({comm}) {state} 1 1 1 0 -1\n")
    (entry / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()))
    (entry / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))


async def test_devices_are_found_by_the_tag_they_were_started_with(tmp_path: Path) -> None:
    ours, theirs = "0123456789abcdef", "fedcba9876543210"
    tag = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1", "WG_PROCESS_FOREGROUND": "1"}
    fake_proc(
        tmp_path, 10, "wireguard-go", {**tag, "CNM_OWNER": f"cnm:{ours}:net1"}, ["wireguard-go", "wg-a"]
    )
    fake_proc(
        tmp_path, 11, "wireguard-go", {**tag, "CNM_OWNER": f"cnm:{theirs}:net2"}, ["wireguard-go", "wg-b"]
    )
    fake_proc(tmp_path, 12, "wireguard-go", tag, ["wireguard-go", "wg-user"])  # not cnm's
    fake_proc(tmp_path, 13, "wireguard-go", {"CNM_OWNER": f"cnm:{ours}:net3"}, ["wireguard-go", "wg-c"], "Z")
    fake_proc(tmp_path, 14, "sleep", {"CNM_OWNER": f"cnm:{ours}:net4"}, ["sleep", "wg-d"])  # not a device
    (tmp_path / "self").mkdir()
    assert sorted(wireguard_go.devices(str(tmp_path)), key=lambda d: d.pid) == [
        WgProcess(pid=10, ifname="wg-a", daemon=ours, owner="net1"),
        WgProcess(pid=11, ifname="wg-b", daemon=theirs, owner="net2"),
    ]
    engine = wireguard_go.WireGuardGo(ours, proc=str(tmp_path), socket_dir=str(tmp_path / "run"))
    assert await engine.running() == [WgProcess(pid=10, ifname="wg-a", daemon=ours, owner="net1")]
    with pytest.raises(Conflict, match=f"another cnmd \\({theirs}\\)"):
        await engine.up(WgSpec("wg-b", "net1", IPv4Interface("10.99.0.1/24")))
    with pytest.raises(NotFound, match="no WireGuard device wg-a"):
        await engine.status("wg-a")  # nothing answers on its socket
    await engine.down("wg-zz")  # not running: nothing to do


BAD_SPECS = [
    (WgSpec("", "n", IPv4Interface("10.99.0.1/24")), "interface name ''"),
    (WgSpec("wg/0", "n", IPv4Interface("10.99.0.1/24")), "interface name 'wg/0'"),
    (WgSpec("a" * 16, "n", IPv4Interface("10.99.0.1/24")), "interface name 'aaaa"),
    (WgSpec("..", "n", IPv4Interface("10.99.0.1/24")), "interface name '..'"),
    (WgSpec("wg0", "n", IPv4Interface("10.99.0.1/24"), listen_port=0), "listen port 0"),
    (WgSpec("wg0", "n", IPv4Interface("10.99.0.1/24"), mtu=100), "MTU 100"),
    (WgSpec("wg0", "n", IPv4Interface("10.99.0.1/24"), private_key="secret=="), "private key: 4 bytes"),
]


@pytest.mark.parametrize("spec,match", BAD_SPECS)
async def test_bad_specs_are_refused_before_anything_starts(spec: WgSpec, match: str, tmp_path: Path) -> None:
    kernel = FakeKernel()
    for engine in (FakeWireGuard(kernel), wireguard_go.WireGuardGo(binary=str(tmp_path / "never-run"))):
        with pytest.raises(InvalidArgument, match=match):
            await engine.up(spec)
    assert kernel.commands == [] and kernel.link_names() == ["lo"]


async def test_a_missing_namespace_is_a_kernel_error_and_starts_nothing(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    engine = wireguard_go.WireGuardGo(proc=str(tmp_path / "proc"), binary=str(tmp_path / "never-run"))
    with pytest.raises(KernelError, match="wg-x in /nonexistent/netns"):
        await engine.up(WgSpec("wg-x", "n", IPv4Interface("10.99.0.1/24")), "/nonexistent/netns")
    kernel = FakeKernel()
    with pytest.raises(KernelError, match="/nonexistent/netns does not exist"):
        await FakeWireGuard(kernel).up(
            WgSpec("wg-x", "n", IPv4Interface("10.99.0.1/24")), "/nonexistent/netns"
        )
    assert kernel.commands == []
