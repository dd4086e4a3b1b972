"""The guard's per-port element changes sent over nfnetlink (``firewall/nft_elements.py``):
the bytes of each key as nft's datatypes lay them out, and the script logged for a change
being exactly ``render_bridge``'s (tests/integration/test_firewall_bridge_guard.py runs
them against the kernel and reads them back with ``nft``)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest

from cnm.errors import FirewallError
from cnm.firewall import render_bridge
from cnm.firewall.api import PortGuard
from cnm.firewall.bridge_guard import _drop_changes, _port_changes
from cnm.firewall.nft_elements import key_bytes

OWNER = "ab" * 32
GUARD = PortGuard(
    owner=OWNER,
    network="cd" * 32,
    port="veth1234567",
    mac="02:42:0a:55:00:03",
    addresses=(IPv4Address("10.85.0.3"), IPv4Address("10.85.1.9")),
)


def test_an_ifname_key_is_16_bytes_zero_padded() -> None:
    assert key_bytes('"veth1234567"') == b"veth1234567" + b"\0" * 5


def test_a_concatenation_pads_each_field_to_4_bytes() -> None:
    """ifname (16) . ether_addr (6, padded to 8) . ipv4_addr (4): nft's 28-byte key."""
    got = key_bytes('"veth1234567" . 02:42:0a:55:00:03 . 10.85.0.3')
    assert got == b"veth1234567" + b"\0" * 5 + bytes.fromhex("02420a550003") + b"\0\0" + bytes([10, 85, 0, 3])
    assert len(got) == 28


def test_ipv6_fields_are_16_bytes_and_a_raw_target_is_big_endian() -> None:
    """ifname (16) . ether_addr (8) . ipv6_addr (16); an ND target (``typeof @th,64,128``)
    is the address's bytes, as they are in the packet."""
    got = key_bytes('"veth1234567" . 02:42:0a:55:00:03 . fd00:1:2:3::5')
    assert got[24:] == IPv6Address("fd00:1:2:3::5").packed and len(got) == 40
    assert key_bytes('"veth1" . 0x20010db8000000000000000000000002')[16:] == IPv6Address("2001:db8::2").packed
    assert key_bytes('"veth1" . 0x1')[16:] == IPv6Address("::1").packed


@pytest.mark.parametrize(
    "key",
    ['""', '"a-name-far-too-long"', "02:42:zz:00:00:01", "10.0.0.300", "eth0", "fd00::g", "0x" + "f" * 33],
)
def test_what_cannot_be_encoded_is_a_firewall_error(key) -> None:
    with pytest.raises(FirewallError, match="nft: "):
        key_bytes(key)


def test_the_logged_script_is_render_bridges_script() -> None:
    """What is sent is what ``render_bridge`` renders for the same change, line by line."""
    old = render_bridge.guard_elements(GUARD)
    new = render_bridge.guard_elements(
        PortGuard(OWNER, GUARD.network, GUARD.port, GUARD.mac, (IPv4Address("10.85.0.4"),))
    )
    table = render_bridge.TABLE
    assert [c.line(table) for c in _port_changes(OWNER, old, new)] == render_bridge.port_lines(
        OWNER, old, new
    )
    assert [c.line(table) for c in _drop_changes(old)] == render_bridge.drop_lines(old)
    assert [c.line(table) for c in _port_changes(OWNER, [], new)] == render_bridge.port_lines(OWNER, [], new)
    for change in _port_changes(OWNER, old, new):
        assert key_bytes(change.key)  # every key the guard writes can be encoded
