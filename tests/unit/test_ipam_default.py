"""DefaultIpam: subnets from the default pools, addresses, persistence, Docker's errors --
one daemon on a MemoryStore (tests/unit/test_ipam_shared.py: several daemons on one store)."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from store_backends import BACKENDS

from cnm.errors import Conflict, Forbidden, InvalidArgument, NotFound, SystemFailure, Unavailable
from cnm.ipam.api import DEFAULT_POOLS, PoolSpec
from cnm.ipam.default import OWNER_GATEWAY, DefaultIpam, address_key, pool_key
from cnm.model.network import IpamConfig
from cnm.store.api import Store
from cnm.store.memory import MemoryStore

# The backends that run in this process (the unit tier starts no server; bench/ipam.py and
# the integration tier cover etcd).
IN_PROCESS = [name for name in ("memory", "sqlite") if name in BACKENDS]


async def started(store: Store | None = None, pools=DEFAULT_POOLS) -> DefaultIpam:
    ipam = DefaultIpam(store if store is not None else MemoryStore(), pools)
    await ipam.start()
    return ipam


@pytest.fixture
async def ipam():
    ipam = await started()
    yield ipam
    await ipam.close()


def cfg(subnet=None, ip_range=None, gateway=None, aux=None) -> IpamConfig:
    return IpamConfig(
        subnet=N(subnet) if subnet else None,
        ip_range=N(ip_range) if ip_range else None,
        gateway=A(gateway) if gateway else None,
        aux_addresses={k: A(v) for k, v in (aux or {}).items()},
    )


# -- default pools --------------------------------------------------------------------------


def expected_default_subnets() -> list[N]:
    return [N(f"172.{i}.0.0/16") for i in range(17, 32)] + [N(f"192.168.{16 * i}.0/20") for i in range(16)]


async def test_31_default_networks_then_exhaustion(ipam):
    got = [(await ipam.allocate_pool(f"net{i}", None)).subnet for i in range(31)]
    assert got == expected_default_subnets()
    assert ipam.pool("net0").gateway == A("172.17.0.1")
    assert ipam.pool("net30").gateway == A("192.168.240.1")
    with pytest.raises(
        InvalidArgument, match="could not find an available, non-overlapping IPv4 address pool"
    ):
        await ipam.allocate_pool("one-too-many", None)
    assert ipam.pool("one-too-many") is None


async def test_freed_subnet_is_reused_first(ipam):
    for i in range(5):
        await ipam.allocate_pool(f"net{i}", None)
    await ipam.release_pool("net2")  # 172.19.0.0/16
    await ipam.release_pool("net0")  # 172.17.0.0/16
    assert (await ipam.allocate_pool("a", None)).subnet == N("172.17.0.0/16")
    assert (await ipam.allocate_pool("b", None)).subnet == N("172.19.0.0/16")
    assert (await ipam.allocate_pool("c", None)).subnet == N("172.22.0.0/16")


async def test_reserved_host_prefixes_are_skipped(ipam):
    reserved = [N("172.17.5.0/24"), N("172.18.0.0/15"), N("172.21.0.0/16"), N("0.0.0.0/0")]
    assert (await ipam.allocate_pool("n1", None, reserved=reserved)).subnet == N("172.20.0.0/16")
    assert (await ipam.allocate_pool("n2", None, reserved=reserved)).subnet == N("172.22.0.0/16")


async def test_user_subnet_blocks_overlapping_default(ipam):
    await ipam.allocate_pool("user", cfg("172.17.128.0/24"))
    assert (await ipam.allocate_pool("dyn", None)).subnet == N("172.18.0.0/16")


async def test_partially_used_pool_gives_next_aligned_block():
    ipam = await started(MemoryStore(), [PoolSpec(N("10.0.0.0/16"), 24)])
    await ipam.allocate_pool("user", cfg("10.0.0.128/25"))
    await ipam.allocate_pool("user2", cfg("10.0.1.0/30"))
    assert (await ipam.allocate_pool("a", None)).subnet == N("10.0.2.0/24")
    assert (await ipam.allocate_pool("b", None, reserved=[N("10.0.3.7/32")])).subnet == N("10.0.4.0/24")
    assert (await ipam.allocate_pool("c", None)).subnet == N("10.0.3.0/24")


async def test_pools_in_given_order():
    pools = [PoolSpec(N("10.99.0.0/16"), 24), PoolSpec(N("10.1.0.0/16"), 24)]
    ipam = await started(MemoryStore(), pools)
    assert (await ipam.allocate_pool("a", None)).subnet == N("10.99.0.0/24")


async def test_many_small_default_subnets_stay_fast():
    ipam = await started(MemoryStore(), [PoolSpec(N("10.0.0.0/8"), 24)])
    got = {(await ipam.allocate_pool(f"n{i}", None)).subnet for i in range(3000)}
    assert len(got) == 3000 and N("10.0.11.0/24") in got


def test_bad_pool_specs_refused():
    with pytest.raises(InvalidArgument):
        DefaultIpam(MemoryStore(), [PoolSpec(N("10.0.0.0/16"), 8)])
    with pytest.raises(InvalidArgument):
        DefaultIpam(MemoryStore(), [PoolSpec(N("10.0.0.0/16"), 31)])


# -- user subnets and validation -------------------------------------------------------------


async def test_user_subnet_gateway_defaults_to_first_address(ipam):
    pool = await ipam.allocate_pool("n", cfg("10.10.0.0/24"))
    assert pool.subnet == N("10.10.0.0/24") and pool.gateway == A("10.10.0.1") and pool.ip_range is None
    assert ipam.owners("n") == {A("10.10.0.1"): OWNER_GATEWAY}


async def test_gateway_skips_an_aux_on_the_first_address(ipam):
    pool = await ipam.allocate_pool("n", cfg("10.10.0.0/24", aux={"r": "10.10.0.1"}))
    assert pool.gateway == A("10.10.0.2")


async def test_without_gateway(ipam):
    pool = await ipam.allocate_pool("n", cfg("10.10.0.0/24"), with_gateway=False)
    assert pool.gateway is None
    assert await ipam.allocate_address("n", "ep") == A("10.10.0.1")


async def test_overlapping_user_subnet_is_forbidden(ipam):
    await ipam.allocate_pool("a", cfg("10.10.0.0/16"))
    for subnet in ("10.10.0.0/16", "10.10.5.0/24", "10.0.0.0/8"):
        with pytest.raises(Forbidden, match="Pool overlaps with other one on this address space"):
            await ipam.allocate_pool("b", cfg(subnet))
    assert ipam.pool("b") is None
    await ipam.allocate_pool("c", cfg("10.11.0.0/16"))


async def test_same_network_twice_is_conflict(ipam):
    await ipam.allocate_pool("a", None)
    with pytest.raises(Conflict):
        await ipam.allocate_pool("a", cfg("10.0.0.0/24"))


@pytest.mark.parametrize(
    "config,needle",
    [
        (
            cfg("10.0.0.0/24", gateway="10.0.1.1"),
            "invalid gateway 10.0.1.1: parent subnet 10.0.0.0/24 doesn't contain this address",
        ),
        (cfg("10.0.0.0/24", gateway="10.0.0.0"), "invalid gateway 10.0.0.0: it is the network address"),
        (cfg("10.0.0.0/24", gateway="10.0.0.255"), "broadcast address"),
        (
            cfg("10.0.0.0/24", ip_range="10.0.1.0/25"),
            "invalid ip-range 10.0.1.0/25: parent subnet 10.0.0.0/24 doesn't contain ip-range",
        ),
        (
            cfg("10.0.0.0/24", ip_range="10.0.0.0/16"),
            "invalid ip-range 10.0.0.0/16: CIDR block is bigger than its parent subnet 10.0.0.0/24",
        ),
        (
            cfg("10.0.0.0/24", aux={"r": "10.9.0.1"}),
            "invalid auxiliary address r: parent subnet 10.0.0.0/24 doesn't contain this address",
        ),
        (
            cfg("10.0.0.0/24", gateway="10.0.0.9", aux={"r": "10.0.0.9"}),
            "invalid auxiliary address r: 10.0.0.9 is already the gateway",
        ),
        (cfg("10.0.0.0/24", aux={"a": "10.0.0.9", "b": "10.0.0.9"}), "is already auxiliary address a"),
        (cfg("10.0.0.0/31"), "invalid subnet 10.0.0.0/31: too small"),
        (cfg("10.0.0.0/32"), "too small"),
        (cfg(None, gateway="10.0.0.1"), "needs a subnet"),
    ],
)
async def test_validation_errors(ipam, config, needle):
    with pytest.raises(InvalidArgument) as info:
        await ipam.allocate_pool("n", config)
    assert needle in str(info.value)
    assert ipam.pool("n") is None and ipam.owners("n") == {}


async def test_all_validation_errors_reported_together(ipam):
    with pytest.raises(InvalidArgument) as info:
        await ipam.allocate_pool("n", cfg("10.0.0.0/24", gateway="10.1.0.1", ip_range="10.2.0.0/24"))
    assert str(info.value).startswith("invalid network config:\n")
    assert "invalid gateway" in str(info.value) and "invalid ip-range" in str(info.value)


async def test_smallest_network_is_a_30(ipam):
    await ipam.allocate_pool("n", cfg("10.0.0.0/30"))
    assert await ipam.allocate_address("n", "ep") == A("10.0.0.2")
    with pytest.raises(Unavailable, match="no available addresses on this pool"):
        await ipam.allocate_address("n", "ep2")


# -- addresses ------------------------------------------------------------------------------


async def test_lowest_free_and_reuse(ipam):
    await ipam.allocate_pool("n", cfg("10.0.0.0/24"))
    got = [await ipam.allocate_address("n", f"ep{i}") for i in range(3)]
    assert got == [A("10.0.0.2"), A("10.0.0.3"), A("10.0.0.4")]
    await ipam.release_address("n", A("10.0.0.3"))
    assert await ipam.allocate_address("n", "again") == A("10.0.0.3")
    assert await ipam.allocate_address("n", "next") == A("10.0.0.5")


async def test_fifty_allocations_distinct(ipam):
    await ipam.allocate_pool("n", None)
    got = [await ipam.allocate_address("n", f"ep{i}") for i in range(50)]
    assert len(set(got)) == 50
    assert got == [A(int(A("172.17.0.2")) + i) for i in range(50)]
    assert set(ipam.owners("n")) == set(got) | {A("172.17.0.1")}


async def test_gateway_aux_network_broadcast_never_handed_out(ipam):
    await ipam.allocate_pool(
        "n", cfg("10.0.0.0/28", gateway="10.0.0.5", aux={"a": "10.0.0.1", "b": "10.0.0.14"})
    )
    got = []
    with pytest.raises(Unavailable):
        while True:
            got.append(await ipam.allocate_address("n", "ep"))
    assert len(got) == 14 - 3
    assert not {A("10.0.0.0"), A("10.0.0.1"), A("10.0.0.5"), A("10.0.0.14"), A("10.0.0.15")} & set(got)
    owners = ipam.owners("n")
    assert owners[A("10.0.0.5")] == "gateway" and owners[A("10.0.0.1")] == "aux:a"
    assert owners[A("10.0.0.14")] == "aux:b"


async def test_ip_range_limits_dynamic_but_not_preferred(ipam):
    await ipam.allocate_pool("n", cfg("10.0.0.0/24", ip_range="10.0.0.128/30"))
    assert ipam.pool("n").ip_range == N("10.0.0.128/30")
    assert ipam.pool("n").gateway == A("10.0.0.1")
    got = [await ipam.allocate_address("n", f"e{i}") for i in range(4)]
    assert got == [A("10.0.0.128"), A("10.0.0.129"), A("10.0.0.130"), A("10.0.0.131")]
    with pytest.raises(Unavailable):
        await ipam.allocate_address("n", "full")
    assert await ipam.allocate_address("n", "static", A("10.0.0.10")) == A("10.0.0.10")
    assert ipam.available("n") == 0


async def test_ip_range_at_subnet_start_skips_network_address(ipam):
    await ipam.allocate_pool("n", cfg("10.0.0.0/24", ip_range="10.0.0.0/28"))
    assert await ipam.allocate_address("n", "e") == A("10.0.0.2")


async def test_preferred_address(ipam):
    await ipam.allocate_pool("n", cfg("10.10.0.0/24", aux={"r": "10.10.0.3"}))
    assert await ipam.allocate_address("n", "api", A("10.10.0.10")) == A("10.10.0.10")
    for taken in ("10.10.0.10", "10.10.0.1", "10.10.0.3", "10.10.0.0", "10.10.0.255"):
        with pytest.raises(Forbidden, match="^Address already in use$"):
            await ipam.allocate_address("n", "other", A(taken))
    with pytest.raises(InvalidArgument, match="requested address is out of range"):
        await ipam.allocate_address("n", "other", A("10.11.0.5"))
    # dynamic allocation walks around the static one
    got = [await ipam.allocate_address("n", f"e{i}") for i in range(8)]
    assert A("10.10.0.10") not in got and got[0] == A("10.10.0.2") and got[1] == A("10.10.0.4")
    assert ipam.owners("n")[A("10.10.0.10")] == "api"


async def test_release_is_idempotent(ipam):
    await ipam.allocate_pool("n", cfg("10.0.0.0/24"))
    a = await ipam.allocate_address("n", "e")
    await ipam.release_address("n", a)
    await ipam.release_address("n", a)
    await ipam.release_address("n", A("10.0.0.77"))
    await ipam.release_address("no-such-network", a)
    await ipam.release_pool("n")
    await ipam.release_pool("n")
    await ipam.release_pool("never")
    assert ipam.pool("n") is None and ipam.owners("n") == {}


async def test_unknown_network(ipam):
    with pytest.raises(NotFound):
        await ipam.allocate_address("nope", "e")


async def test_release_pool_forgets_addresses_in_store():
    store = MemoryStore()
    ipam = await started(store)
    await ipam.allocate_pool("n1", cfg("10.0.0.0/24"))
    await ipam.allocate_pool("n10", cfg("10.1.0.0/24"))
    await ipam.allocate_address("n1", "e")
    await ipam.allocate_address("n10", "e")
    await ipam.release_pool("n1")
    assert await store.get(pool_key("n1")) is None
    listing = await store.list("ipam/address/")
    assert [e.key for e in listing.entries] == [
        address_key("n10", A("10.1.0.1")),
        address_key("n10", A("10.1.0.2")),
    ]
    assert [e.doc for e in listing.entries] == [{"owner": "gateway"}, {"owner": "e"}]
    await ipam.close()


async def test_store_layout():
    """The keys every helper of the store agrees on (and the space marker)."""
    store = MemoryStore()
    ipam = await started(store)
    await ipam.allocate_pool("net1", cfg("10.0.0.0/24", aux={"r": "10.0.0.9"}))
    await ipam.allocate_address("net1", "ep1")
    listing = await store.list("")
    assert {e.key: e.doc for e in listing.entries} == {
        "ipam/pool/net1": {
            "network_id": "net1",
            "subnet": "10.0.0.0/24",
            "gateway": "10.0.0.1",
            "ip_range": None,
        },
        "ipam/address/net1/10.0.0.1": {"owner": "gateway"},
        "ipam/address/net1/10.0.0.9": {"owner": "aux:r"},
        "ipam/address/net1/10.0.0.2": {"owner": "ep1"},
        "ipam/space/default": {"network": "net1", "change": "allocate"},
    }
    await ipam.close()


# -- persistence and failure ----------------------------------------------------------------


@pytest.mark.parametrize("backend", IN_PROCESS)
async def test_state_survives_a_new_ipam_on_the_same_store(tmp_path, backend):
    """A restart: a new DefaultIpam on the same store loads what the first one left."""
    async with BACKENDS[backend](tmp_path) as store:
        ipam = await started(store)
        await ipam.allocate_pool("bridge", None)
        await ipam.allocate_pool(
            "backend", cfg("10.10.0.0/24", ip_range="10.10.0.0/25", aux={"r": "10.10.0.2"})
        )
        addrs = [await ipam.allocate_address("backend", f"ep{i}") for i in range(20)]
        await ipam.allocate_address("backend", "static", A("10.10.0.200"))
        await ipam.release_address("backend", addrs[5])
        await ipam.close()

        again = await started(store)
        assert again.pool("backend") == ipam.pool("backend")
        assert again.owners("backend") == ipam.owners("backend")
        assert await again.allocate_address("backend", "new") == addrs[5]  # the hole is reused
        assert await again.allocate_address("backend", "new2") == A(int(addrs[-1]) + 1)
        with pytest.raises(Forbidden):
            await again.allocate_address("backend", "dup", A("10.10.0.200"))
        assert (await again.allocate_pool("third", None)).subnet == N("172.18.0.0/16")
        await again.close()


class _FailingStore(MemoryStore):
    fail = False

    async def commit(self, ops, checks=()):
        if self.fail:
            raise SystemFailure("store: disk full")
        return await super().commit(ops, checks)


async def test_store_failure_changes_nothing_in_memory():
    store = _FailingStore()
    ipam = await started(store)
    await ipam.allocate_pool("n", cfg("10.0.0.0/24"))
    a = await ipam.allocate_address("n", "a")
    store.fail = True
    with pytest.raises(SystemFailure):
        await ipam.allocate_address("n", "e")
    with pytest.raises(SystemFailure):
        await ipam.allocate_pool("m", None)
    with pytest.raises(SystemFailure):
        await ipam.release_address("n", a)
    with pytest.raises(SystemFailure):
        await ipam.release_pool("n")
    store.fail = False
    assert ipam.pool("m") is None and ipam.pool("n") is not None
    assert ipam.owners("n")[a] == "a"
    assert await ipam.allocate_address("n", "e") == A("10.0.0.3")
    assert (await ipam.allocate_pool("m", None)).subnet == N("172.17.0.0/16")
    await ipam.close()


async def test_not_started_refuses_changes_and_start_is_once():
    ipam = DefaultIpam(MemoryStore())
    with pytest.raises(SystemFailure, match="not started"):
        await ipam.allocate_pool("n", cfg("10.0.0.0/24"))
    await ipam.start()
    task = ipam._mirror._task
    await ipam.start()  # the daemon and the controller may both call it
    assert ipam._mirror._task is task
    await ipam.allocate_pool("n", cfg("10.0.0.0/24"))
    await ipam.close()
    with pytest.raises(SystemFailure, match="not started"):
        await ipam.allocate_address("n", "e")


async def test_orphan_addresses_are_ignored_on_load():
    """Addresses of no pool (a crash between the two, or a pool not yet seen) answer for
    no network; keys that are not addresses or pools are skipped with a warning."""
    store = MemoryStore()
    await store.put("ipam/address/gone/10.0.0.5", {"owner": "e"})
    await store.put("ipam/address/net/not-an-ip", {"owner": "e"})
    await store.put("ipam/pool/bad", {"subnet": "not a subnet"})
    ipam = await started(store)
    assert ipam.owners("gone") == {} and ipam.pools() == {}
    await ipam.allocate_pool("n", cfg("10.0.0.0/24"))
    assert ipam.owners("n") == {A("10.0.0.1"): OWNER_GATEWAY}
    await ipam.close()


async def test_thousands_of_addresses_allocate_quickly():
    ipam = await started()
    await ipam.allocate_pool("n", cfg("10.0.0.0/16"))
    got = [await ipam.allocate_address("n", f"e{i}") for i in range(5000)]
    assert len(set(got)) == 5000
    for a in got[::2]:
        await ipam.release_address("n", a)
    again = [await ipam.allocate_address("n", f"f{i}") for i in range(2500)]
    assert sorted(again) == sorted(got[::2])
    await ipam.close()


def test_default_pools_constant_is_31_networks():
    total = sum(2 ** (spec.size - spec.base.prefixlen) for spec in DEFAULT_POOLS)
    assert total == 31


class _CountingStore(MemoryStore):
    def __init__(self):
        super().__init__()
        self.reads = 0

    async def get(self, key):
        self.reads += 1
        return await super().get(key)

    async def list(self, prefix):
        self.reads += 1
        return await super().list(prefix)


async def test_allocation_reads_memory_not_the_store():
    store = _CountingStore()
    ipam = await started(store)
    await ipam.allocate_pool("n", cfg("10.0.0.0/20"))
    store.reads = 0
    for i in range(1000):
        await ipam.allocate_address("n", f"e{i}")
    await ipam.release_address("n", A("10.0.1.1"))
    assert await ipam.allocate_address("n", "x") == A("10.0.1.1")
    assert store.reads == 0
    await ipam.close()


@pytest.mark.parametrize("backend", IN_PROCESS)
async def test_allocate_latency_is_printed(tmp_path, capsys, backend):
    """Not a timing assertion: allocate+release p50/p99 with 4000 addresses already taken
    in the pool (cost must not grow with their number), and the load of a new cache."""
    import statistics
    import time

    async with BACKENDS[backend](tmp_path) as store:
        ipam = await started(store)
        await ipam.allocate_pool("n", cfg("10.0.0.0/16"))
        for i in range(4000):
            await ipam.allocate_address("n", f"e{i}")
        times = []
        for i in range(1000):
            t0 = time.perf_counter()
            a = await ipam.allocate_address("n", f"x{i}")
            await ipam.release_address("n", a)
            times.append((time.perf_counter() - t0) * 1e6)
        times.sort()
        t0 = time.perf_counter()
        again = await started(store)
        load_ms = (time.perf_counter() - t0) * 1e3
        assert again.owners("n") == ipam.owners("n")
        with capsys.disabled():
            print(
                f"\nipam allocate+release ({backend}, 4000 in use) p50 {statistics.median(times):.1f} us "
                f"p99 {times[989]:.1f} us; cache loaded from the store in {load_ms:.1f} ms"
            )
        await again.close()
        await ipam.close()


_SMALL_POOLS = [PoolSpec(N("10.0.0.0/22"), 26), PoolSpec(N("10.0.8.0/24"), 28)]


def _brute_force(pools_taken: list[N], reserved: list[N]) -> N | None:
    for spec in _SMALL_POOLS:
        for cand in spec.base.subnets(new_prefix=spec.size):
            if not any(cand.overlaps(p) for p in pools_taken + reserved):
                return cand
    return None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1023 + 256), st.integers(24, 30)), max_size=12),
    st.lists(st.tuples(st.integers(0, 1023 + 256), st.integers(20, 32)), max_size=6),
    st.integers(0, 4),
)
def test_default_subnet_walk_matches_brute_force(user, reserved_raw, releases):
    """The interval walk picks exactly what trying every candidate in order would."""
    asyncio.run(_walk_matches_brute_force(user, reserved_raw, releases))


async def _walk_matches_brute_force(user, reserved_raw, releases):
    ipam = await started(MemoryStore(), _SMALL_POOLS)
    base = int(A("10.0.0.0"))
    taken: dict[str, N] = {}  # network id -> subnet, in allocation order
    for i, (offset, prefix) in enumerate(user):
        subnet = N((base + offset, prefix), strict=False)
        if any(subnet.overlaps(t) for t in taken.values()):
            with pytest.raises(Forbidden):
                await ipam.allocate_pool(f"u{i}", cfg(str(subnet)))
            continue
        await ipam.allocate_pool(f"u{i}", cfg(str(subnet)))
        taken[f"u{i}"] = subnet
    for nid in list(taken)[:releases]:
        await ipam.release_pool(nid)
        del taken[nid]
    reserved = [N((base + off, prefix), strict=False) for off, prefix in reserved_raw]
    for k in range(3):
        expected = _brute_force(list(taken.values()), reserved)
        if expected is None:
            with pytest.raises(InvalidArgument):
                await ipam.allocate_pool(f"d{k}", None, reserved=reserved)
            break
        assert (await ipam.allocate_pool(f"d{k}", None, reserved=reserved)).subnet == expected
        taken[f"d{k}"] = expected
