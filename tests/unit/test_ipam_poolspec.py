"""parse_pool_spec: cnmd's --default-address-pool base=CIDR,size=N."""

from __future__ import annotations

from ipaddress import IPv4Network as N
from ipaddress import IPv6Network as N6

import pytest

from cnm.errors import InvalidArgument
from cnm.ipam.api import PoolSpec
from cnm.ipam.default import DefaultIpam, parse_pool_spec
from cnm.store.memory import MemoryStore


@pytest.mark.parametrize(
    "text,spec",
    [
        ("base=10.10.0.0/16,size=24", PoolSpec(N("10.10.0.0/16"), 24)),
        ("size=20, BASE=192.168.0.0/16", PoolSpec(N("192.168.0.0/16"), 20)),
        ("base=10.0.0.0/8,size=8", PoolSpec(N("10.0.0.0/8"), 8)),
        ("base=10.0.0.0/24,size=30", PoolSpec(N("10.0.0.0/24"), 30)),
        ("base=fd12:3456::/48,size=64", PoolSpec(N6("fd12:3456::/48"), 64)),
        ("base=2001:db8::/56,size=120", PoolSpec(N6("2001:db8::/56"), 120)),
    ],
)
def test_valid(text, spec):
    assert parse_pool_spec(text) == spec


@pytest.mark.parametrize(
    "text,needle",
    [
        ("base=10.10.0.0/16", "expected base=CIDR,size=N"),
        ("size=24", "expected base=CIDR,size=N"),
        ("10.10.0.0/16,size=24", "invalid field '10.10.0.0/16' must be a key=value pair"),
        ("base=10.10.0.0/16,size=24,gateway=1.2.3.4", "unexpected key 'gateway' in 'gateway=1.2.3.4'"),
        ("base=10.10.0.0/16,size=big", "invalid size value: 'big' (must be integer)"),
        ("base=10.10.0.0,size=24", "invalid CIDR block notation"),
        ("base=10.10.0.1/16,size=24", "host bits are set"),
        ("base=fd00::/48,size=40", "size must be between"),
        ("base=fd00::/48,size=127", "size must be between"),
        ("base=fe80::/64,size=64", "link-local"),
        ("base=ff02::/64,size=64", "multicast"),
        ("base=fd00::1/48,size=64", "host bits"),
        ("base=10.10.0.0/16,size=8", "size must be between the base's prefix length (16) and 30"),
        ("base=10.10.0.0/16,size=31", "size must be between the base's prefix length (16) and 30"),
    ],
)
def test_invalid(text, needle):
    with pytest.raises(InvalidArgument) as info:
        parse_pool_spec(text)
    assert needle in str(info.value)


async def test_configured_pool_is_used():
    ipam = DefaultIpam(MemoryStore(), [parse_pool_spec("base=10.10.0.0/16,size=24")])
    await ipam.start()
    assert [(await ipam.allocate_pool(f"n{i}", None)).subnet for i in range(3)] == [
        N("10.10.0.0/24"),
        N("10.10.1.0/24"),
        N("10.10.2.0/24"),
    ]
    assert ipam.pool("n1").gateway.exploded == "10.10.1.1"
    await ipam.close()
