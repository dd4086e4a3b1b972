"""DefaultIpam's IPv6 side: the host's ULA pool, given v6 subnets, v6 addresses claimed
beside the v4 ones, overlaps, validation, release and restart."""

from __future__ import annotations

import asyncio
import hashlib
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N4
from ipaddress import IPv6Address as A6
from ipaddress import IPv6Network as N6

import pytest
from store_backends import BACKENDS

from cnm.errors import Conflict, Forbidden, InvalidArgument, NotFound, Unavailable
from cnm.ipam.api import DEFAULT_POOLS, PoolSpec, ula_pool
from cnm.ipam.default import OWNER_GATEWAY, DefaultIpam, address_key, pool6_key
from cnm.model.network import IpamConfig
from cnm.store.memory import MemoryStore

IN_PROCESS = [name for name in ("memory", "sqlite") if name in BACKENDS]
ULA = ula_pool("0123456789abcdef")


async def started(store=None, pools=DEFAULT_POOLS, pools6=(ULA,)) -> DefaultIpam:
    ipam = DefaultIpam(store if store is not None else MemoryStore(), pools, pools6=pools6)
    await ipam.start()
    return ipam


@pytest.fixture
async def ipam():
    ipam = await started()
    yield ipam
    await ipam.close()


def cfg6(subnet=None, ip_range=None, gateway=None, aux=None) -> IpamConfig:
    return IpamConfig(
        subnet=N6(subnet) if subnet else None,
        ip_range=N6(ip_range) if ip_range else None,
        gateway=A6(gateway) if gateway else None,
        aux_addresses={k: A6(v) for k, v in (aux or {}).items()},
    )


def test_ula_pool_is_docker_derivation():
    """fd + the low 40 bits of the first 8 bytes of sha256(host id), a /48 in /64s."""
    gid = int.from_bytes(hashlib.sha256(b"0123456789abcdef").digest()[:8], "big") & (2**40 - 1)
    assert ULA.size == 64 and ULA.base.prefixlen == 48
    assert int(ULA.base.network_address) >> 80 == (0xFD << 40) | gid
    assert ula_pool("0123456789abcdef") == ULA != ula_pool("fedcba9876543210")


async def test_default_v6_subnets_are_consecutive_64s_of_the_ula(ipam):
    got = [(await ipam.allocate_pool6(f"n{i}", None)).subnet for i in range(3)]
    base = int(ULA.base.network_address)
    assert got == [N6((base + (i << 64), 64)) for i in range(3)]
    pool = ipam.pool6("n0")
    assert pool.gateway == got[0].network_address + 1
    assert ipam.owners("n0") == {pool.gateway: OWNER_GATEWAY}


async def test_reserved_host_v6_prefixes_are_skipped(ipam):
    first = N6((int(ULA.base.network_address), 64))
    got = await ipam.allocate_pool6("n", None, reserved=[first, N6("::/0")])
    assert got.subnet == N6((int(ULA.base.network_address) + (1 << 64), 64))


async def test_given_v6_subnet_with_gateway_and_aux(ipam):
    pool = await ipam.allocate_pool6(
        "n", cfg6("2001:db8:1::/64", gateway="2001:db8:1::fe", aux={"r": "2001:db8:1::1"})
    )
    assert pool.subnet == N6("2001:db8:1::/64") and pool.gateway == A6("2001:db8:1::fe")
    assert await ipam.allocate_address("n", "ep", v6=True) == A6("2001:db8:1::2")


async def test_v4_and_v6_pools_of_one_network_live_side_by_side(ipam):
    v4 = await ipam.allocate_pool("n", None)
    v6 = await ipam.allocate_pool6("n", cfg6("2001:db8:1::/64"))
    assert ipam.pool("n") == v4 and ipam.pool6("n") == v6
    a4 = await ipam.allocate_address("n", "ep")
    a6 = await ipam.allocate_address("n", "ep", v6=True)
    assert (a4, a6) == (A("172.17.0.2"), A6("2001:db8:1::2"))
    assert list(ipam.owners("n").items()) == [
        (A("172.17.0.1"), OWNER_GATEWAY),
        (a4, "ep"),
        (A6("2001:db8:1::1"), OWNER_GATEWAY),
        (a6, "ep"),
    ]
    await ipam.release_pool("n")
    assert ipam.pool("n") is None and ipam.pool6("n") is None and ipam.owners("n") == {}


async def test_overlapping_v6_subnets_are_forbidden(ipam):
    await ipam.allocate_pool6("a", cfg6("2001:db8:1::/64"))
    with pytest.raises(Forbidden, match="overlaps"):
        await ipam.allocate_pool6("b", cfg6("2001:db8:1::/80"))
    with pytest.raises(Forbidden, match="overlaps"):
        await ipam.allocate_pool6("b", cfg6("2001:db8::/32"))
    with pytest.raises(Conflict):
        await ipam.allocate_pool6("a", cfg6("2001:db8:2::/64"))
    # a default subnet never lands on a given one
    ula_first = N6((int(ULA.base.network_address), 64))
    await ipam.allocate_pool6("c", IpamConfig(subnet=ula_first))
    assert (await ipam.allocate_pool6("d", None)).subnet != ula_first


@pytest.mark.parametrize(
    "config,needle",
    [
        (cfg6("fe80::/64"), "link-local"),
        (cfg6("ff02::/64"), "multicast"),
        (cfg6("::/96"), "loopback"),
        (cfg6("2001:db8::/127"), "too small"),
        (cfg6("2001:db8::/64", gateway="2001:db9::1"), "doesn't contain"),
        (cfg6("2001:db8::/64", gateway="2001:db8::"), "network address"),
        (cfg6("2001:db8::/64", ip_range="2001:db8:0:1::/80"), "doesn't contain ip-range"),
        (cfg6("2001:db8::/64", ip_range="2001:db8::/48"), "bigger than"),
        (IpamConfig(subnet=N6("2001:db8::/64"), gateway=A("10.0.0.1")), "different IP versions"),
        (cfg6(gateway="2001:db8::1"), "needs a subnet"),
    ],
)
async def test_v6_validation_errors_change_nothing(ipam, config, needle):
    with pytest.raises(InvalidArgument, match=needle):
        await ipam.allocate_pool6("n", config)
    assert ipam.pool6("n") is None and ipam.owners("n") == {}


async def test_family_mismatch_between_pool_calls(ipam):
    with pytest.raises(InvalidArgument, match="not an IPv4 subnet"):
        await ipam.allocate_pool("n", cfg6("2001:db8::/64"))
    with pytest.raises(InvalidArgument, match="not an IPv6 subnet"):
        await ipam.allocate_pool6("n", IpamConfig(subnet=N4("10.0.0.0/24")))
    assert ipam.pool("n") is None


async def test_v6_addresses_lowest_free_preferred_taken_and_outside(ipam):
    await ipam.allocate_pool6("n", cfg6("2001:db8::/64"))
    assert await ipam.allocate_address("n", "a", v6=True) == A6("2001:db8::2")
    assert await ipam.allocate_address("n", "b", A6("2001:db8::f00d")) == A6("2001:db8::f00d")
    with pytest.raises(Forbidden, match="Address already in use"):
        await ipam.allocate_address("n", "c", A6("2001:db8::f00d"))
    with pytest.raises(Forbidden, match="Address already in use"):
        await ipam.allocate_address("n", "c", A6("2001:db8::1"))  # the gateway
    with pytest.raises(InvalidArgument, match="out of range"):
        await ipam.allocate_address("n", "c", A6("2001:db9::5"))
    await ipam.release_address("n", A6("2001:db8::2"))
    assert await ipam.allocate_address("n", "d", v6=True) == A6("2001:db8::2")
    with pytest.raises(NotFound, match="IPv6 address pool"):
        await ipam.allocate_address("other", "x", v6=True)


async def test_last_address_of_a_v6_subnet_is_usable(ipam):
    """IPv6 has no broadcast address: a /126 holds the gateway and two containers."""
    await ipam.allocate_pool6("n", cfg6("2001:db8::/126"))
    got = [await ipam.allocate_address("n", f"e{i}", v6=True) for i in range(2)]
    assert got == [A6("2001:db8::2"), A6("2001:db8::3")]
    with pytest.raises(Unavailable):
        await ipam.allocate_address("n", "full", v6=True)


async def test_v6_claim_settle_abandon(ipam):
    await ipam.allocate_pool6("n", cfg6("2001:db8::/64"))
    claim = ipam.claim_address("n", "ep", v6=True)
    assert claim.address == A6("2001:db8::2")
    assert ipam.claim_address("n", "ep2", v6=True).address == A6("2001:db8::3")
    ipam.abandon(claim)
    again = ipam.claim_address("n", "ep3", v6=True)
    assert again.address == A6("2001:db8::2")
    store = ipam._store
    revision = await store.commit(list(again.ops), list(again.checks))
    ipam.settle(again, revision)
    assert ipam.owners("n")[A6("2001:db8::2")] == "ep3"
    assert (await store.get(address_key("n", A6("2001:db8::2")))).doc == {"owner": "ep3"}
    release = ipam.release_change("n", A6("2001:db8::2"))
    ipam.settle(release, await store.commit(list(release.ops), list(release.checks)))
    assert A6("2001:db8::2") not in ipam.owners("n")


@pytest.mark.parametrize("backend", IN_PROCESS)
async def test_v6_state_survives_a_new_ipam_on_the_same_store(tmp_path, backend):
    async with BACKENDS[backend](tmp_path) as store:
        ipam = await started(store)
        await ipam.allocate_pool("n", None)
        await ipam.allocate_pool6("n", None)
        await ipam.allocate_pool6("m", cfg6("2001:db8::/64"))
        addrs = [await ipam.allocate_address("n", f"ep{i}", v6=True) for i in range(5)]
        await ipam.release_address("n", addrs[1])
        assert (await store.get(pool6_key("m"))) is not None
        await ipam.close()

        again = await started(store)
        assert again.pool6("n") == ipam.pool6("n") and again.pool6("m") == ipam.pool6("m")
        assert again.owners("n") == ipam.owners("n")
        assert set(again.pools6()) == {"n", "m"}
        assert await again.allocate_address("n", "new", v6=True) == addrs[1]
        with pytest.raises(Forbidden, match="overlaps"):
            await again.allocate_pool6("x", cfg6("2001:db8::/56"))
        await again.close()


async def test_given_v6_pools_replace_the_ula():
    ipam = await started(pools=[*DEFAULT_POOLS, PoolSpec(N6("fd12:3456::/48"), 64)])
    assert (await ipam.allocate_pool6("n", None)).subnet == N6("fd12:3456::/64")
    assert (await ipam.allocate_pool("n", None)).subnet.version == 4
    await ipam.close()


async def test_exhausted_v6_pools():
    ipam = await started(pools6=[PoolSpec(N6("fd12:3456::/63"), 64)])
    await ipam.allocate_pool6("a", None)
    await ipam.allocate_pool6("b", None)
    with pytest.raises(InvalidArgument, match="IPv6 address pool"):
        await ipam.allocate_pool6("c", None)
    await ipam.close()


async def test_two_daemons_share_v6_pools_and_addresses():
    """Two IPAM caches on one store: a v6 pool one takes is an overlap for the other, and
    v6 addresses claimed by both at once are all distinct."""
    store = MemoryStore()
    a, b = await started(store), await started(store)
    await a.allocate_pool6("n", cfg6("2001:db8::/64"))
    for _ in range(1000):  # the watch brings a's pool to b
        if b.pool6("n") is not None:
            break
        await asyncio.sleep(0.01)
    assert b.pool6("n") == a.pool6("n")
    with pytest.raises(Forbidden, match="overlaps"):
        await b.allocate_pool6("m", cfg6("2001:db8::/96"))
    got = await asyncio.gather(
        *(
            ipam.allocate_address("n", f"{name}{i}", v6=True)
            for i in range(30)
            for name, ipam in (("a", a), ("b", b))
        )
    )
    assert len(set(got)) == 60 and all(x in N6("2001:db8::/64") for x in got)
    await a.close()
    await b.close()
