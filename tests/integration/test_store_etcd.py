"""EtcdStore against real etcd clusters (Debian's etcd-server, tests/etcd_cluster.py) when
members fail: a restart or a kill of the member a watch talks to (nothing lost, nothing
repeated), a single member's restart, lease expiry done by the server with no client
left, every member down (a clear Unavailable, in bounded time), and endpoints refused.

The contract itself is held by tests/integration/test_store_conformance.py (its ``etcd``
entry); these are the cases only a real cluster can show.  No root needed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from etcd_cluster import EtcdCluster

from cnm.errors import InvalidArgument, NotFound, Unavailable
from cnm.store.api import Change, StaleRevision
from cnm.store.etcd import EtcdStore, TlsFiles

NEEDS_ROOT = False
BOUND = 30.0  # a failing case must end; a passing one is far quicker


@pytest.fixture
def cluster3() -> Iterator[EtcdCluster]:
    with EtcdCluster(3) as cluster:
        yield cluster


@pytest.fixture
def cluster1() -> Iterator[EtcdCluster]:
    with EtcdCluster(1) as cluster:
        yield cluster


def new_store(cluster: EtcdCluster, **kw: object) -> EtcdStore:
    return EtcdStore(cluster.endpoints, namespace=f"/cnm-test/{uuid.uuid4().hex}/", **kw)  # type: ignore[arg-type]


class Follower:
    """A watch consumed in the background into ``changes``."""

    def __init__(self, store: EtcdStore, prefix: str, from_revision: int) -> None:
        self.changes: list[Change] = []
        self._watch = store.watch(prefix, from_revision)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for change in self._watch:
            self.changes.append(change)

    async def until(self, key: str) -> None:
        async def wait() -> None:
            while not any(c.key == key for c in self.changes):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(wait(), BOUND)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def writes_during(
    store: EtcdStore, prefix: str, fault: asyncio.Future[None] | None, count: int
) -> list[int]:
    """Puts of keys ``prefix<i>``, each retried until it lands: ``count`` of them, and
    while ``fault`` runs, until it is done and ``count`` more landed after it; the
    revision of each.  A put that failed with Unavailable may have been applied: the
    retry is a create-only put, which then says so (StaleRevision, with its revision)."""
    revisions: list[int] = []
    after = 0
    while after < count:
        try:  # create-only: a retry after "may or may not have been applied" cannot write twice
            revisions.append(
                await store.put(f"{prefix}{len(revisions):03d}", {"i": len(revisions)}, revision=0)
            )
        except Unavailable:
            await asyncio.sleep(0.05)  # a leader election, or a member going away: try again
            continue
        except StaleRevision as exc:  # it had been applied after all
            revisions.append(exc.actual)
        if fault is None or fault.done():
            after += 1
        await asyncio.sleep(0.01)
    if fault is not None:
        await fault
    return revisions


def assert_exactly(changes: list[Change], prefix: str, revisions: list[int]) -> None:
    seen = [(c.key, c.revision) for c in changes if c.key.startswith(prefix)]
    assert seen == [(f"{prefix}{i:03d}", rev) for i, rev in enumerate(revisions)]


@pytest.fixture
async def store3(cluster3: EtcdCluster) -> AsyncIterator[EtcdStore]:
    store = new_store(cluster3)
    try:
        yield store
    finally:
        await store.close()


async def test_member_restart_under_an_open_watch_loses_and_repeats_nothing(
    cluster3: EtcdCluster, store3: EtcdStore, caplog: pytest.LogCaptureFixture
) -> None:
    start = await store3.connect() + 1
    follower = Follower(store3, "w/", start)  # on member 0, the store's first endpoint
    await store3.put("w/before", {})
    await follower.until("w/before")

    fault = asyncio.ensure_future(asyncio.to_thread(cluster3.restart_member, 0))
    revisions = await writes_during(store3, "w/k", fault, 20)
    await store3.put("w/after", {})
    await follower.until("w/after")
    await follower.stop()
    assert "etcd watch of w/ at " + cluster3.endpoints[0] + " lost" in caplog.text  # it did break
    assert_exactly(follower.changes, "w/k", revisions)
    assert len(follower.changes) == len(revisions) + 2


async def test_killing_the_member_a_watch_talks_to_moves_it_to_another(
    cluster3: EtcdCluster, store3: EtcdStore, caplog: pytest.LogCaptureFixture
) -> None:
    start = await store3.connect() + 1
    follower = Follower(store3, "w/", start)
    await store3.put("w/before", {})
    await follower.until("w/before")
    first = await writes_during(store3, "w/x", None, 10)
    cluster3.kill_member(0)  # the watch's connection is gone, and the member stays down
    rest = await writes_during(store3, "w/y", None, 10)
    await store3.put("w/after", {})
    await follower.until("w/after")
    await follower.stop()
    assert_exactly(follower.changes, "w/x", first)
    assert_exactly(follower.changes, "w/y", rest)
    assert len(follower.changes) == 22
    assert "etcd watch of w/ at " + cluster3.endpoints[0] + " lost" in caplog.text
    revisions = [c.revision for c in follower.changes]
    assert revisions == sorted(set(revisions))


async def test_single_member_restart_resumes_the_watch_from_where_it_was(cluster1: EtcdCluster) -> None:
    store = new_store(cluster1)
    try:
        start = await store.connect() + 1
        follower = Follower(store, "w/", start)
        before = await writes_during(store, "w/x", None, 5)
        await follower.until("w/x004")
        await asyncio.to_thread(cluster1.kill_member, 0)
        other = EtcdStore(cluster1.endpoints, timeout=1)
        with pytest.raises(Unavailable):  # nobody answers meanwhile
            await other.get("x")
        await other.close()
        await asyncio.to_thread(cluster1.start_member, 0)
        after = await writes_during(store, "w/y", None, 5)
        await follower.until("w/y004")
        await follower.stop()
        assert_exactly(follower.changes, "w/x", before)
        assert_exactly(follower.changes, "w/y", after)
        assert len(follower.changes) == 10
    finally:
        await store.close()


async def test_the_server_expires_a_lease_when_its_holder_is_gone(cluster3: EtcdCluster) -> None:
    namespace = f"/cnm-test/{uuid.uuid4().hex}/"
    holder = EtcdStore(cluster3.endpoints, namespace=namespace)
    lease = await holder.grant(1)
    rev = await holder.put("node/me", {"pid": 1}, lease=lease)
    await holder.close()  # no client keeps it alive now; no client deletes the key either

    observer = EtcdStore(list(reversed(cluster3.endpoints)), namespace=namespace)
    try:
        entry = await observer.get("node/me")
        assert entry is not None and entry.lease == lease
        follower = Follower(observer, "node/", rev + 1)
        await follower.until("node/me")
        await follower.stop()
        assert [(c.key, c.deleted) for c in follower.changes] == [("node/me", True)]
        assert await observer.get("node/me") is None
        with pytest.raises(NotFound, match="lease"):
            await observer.refresh(lease)
    finally:
        await observer.close()


async def test_every_member_down_is_unavailable_naming_the_endpoints(cluster3: EtcdCluster) -> None:
    store = new_store(cluster3, timeout=2)
    try:
        await store.put("a", {})
        for i in range(3):
            cluster3.kill_member(i)
        for call in (store.get("a"), store.put("a", {}), store.list(""), store.grant(5)):
            with pytest.raises(Unavailable) as err:
                await asyncio.wait_for(call, BOUND)  # bounded by the store's timeout, not hanging
            message = str(err.value)
            assert all(endpoint in message for endpoint in cluster3.endpoints), message
            assert "did not answer" in message and "within 2s" in message
    finally:
        await store.close()


async def test_no_quorum_is_unavailable_not_a_hang(cluster3: EtcdCluster) -> None:
    """Two of three members down: the last one is up but has no leader."""
    store = EtcdStore([cluster3.endpoints[2]], namespace="/cnm-test/q/", timeout=2)
    try:
        await store.put("a", {})
        cluster3.kill_member(0)
        cluster3.kill_member(1)
        with pytest.raises(Unavailable, match=cluster3.endpoints[2]):
            await asyncio.wait_for(store.put("a", {"v": 2}), BOUND)
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("endpoint", "why"),
    [
        ("http://127.0.0.1:2379", "without a scheme"),
        ("127.0.0.1", "expected HOST:PORT"),
        ("127.0.0.1:0", "not a number in 1-65535"),
        ("127.0.0.1:70000", "not a number in 1-65535"),
        ("127.0.0.1:port", "not a number in 1-65535"),
        ("bad host:2379", "not a host name"),
        ("[::1:2379", "not an IPv6 address"),
        (":2379", "expected HOST:PORT"),
    ],
)
def test_bad_endpoints_are_refused_clearly(endpoint: str, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why) as err:
        EtcdStore([endpoint])
    assert repr(endpoint) in str(err.value)


def test_bad_namespace_and_empty_endpoints_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="no endpoint"):
        EtcdStore([])
    with pytest.raises(InvalidArgument, match="namespace"):
        EtcdStore(["127.0.0.1:2379"], namespace="cnm")


async def test_tls_with_client_certificates(tmp_path) -> None:
    """``--cluster-store-opt kv.*file=``: the store speaks TLS and presents its certificate;
    without the certificate, or without TLS, the member refuses, and the error says so."""
    with EtcdCluster(1, tls=True) as cluster:
        certs = cluster.certs
        assert certs is not None
        store = new_store(cluster, tls=TlsFiles(certs.ca, certs.client_cert, certs.client_key))
        try:
            rev = await store.put("a", {"tls": True})
            entry = await store.get("a")
            assert entry is not None and entry.revision == rev and entry.doc == {"tls": True}
        finally:
            await store.close()
        for refused in (new_store(cluster, timeout=2), new_store(cluster, timeout=2, tls=TlsFiles(certs.ca))):
            try:
                with pytest.raises(Unavailable, match=cluster.endpoints[0]):
                    await asyncio.wait_for(refused.get("a"), BOUND)
            finally:
                await refused.close()


def test_unreadable_tls_files_are_refused_naming_the_option(tmp_path) -> None:
    with pytest.raises(InvalidArgument, match=r"cannot read kv.cacertfile .*/missing.pem"):
        EtcdStore(["127.0.0.1:2379"], tls=TlsFiles(cacertfile=str(tmp_path / "missing.pem")))


async def test_a_watch_outlives_the_loss_of_quorum(
    cluster3: EtcdCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Two members of three die: the watch's own member is up but without a leader (it
    cancels watches that asked for one); when the two come back, the watch resumes and
    sees what was written before and after, once."""
    store = EtcdStore(list(reversed(cluster3.endpoints)), namespace=f"/cnm-test/{uuid.uuid4().hex}/")
    try:
        start = await store.connect() + 1
        follower = Follower(store, "w/", start)  # on member 2
        before = await writes_during(store, "w/x", None, 5)
        await follower.until("w/x004")
        cluster3.kill_member(0)
        cluster3.kill_member(1)
        lost = f"at {cluster3.endpoints[2]} lost (etcdserver: no leader)"

        async def cut() -> None:  # member 2 notices it has no leader and cancels the watch
            while lost not in caplog.text:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(cut(), BOUND)
        await asyncio.to_thread(cluster3.start_member, 0)
        await asyncio.to_thread(cluster3.start_member, 1)
        after = await writes_during(store, "w/y", None, 5)
        await follower.until("w/y004")
        await follower.stop()
        assert_exactly(follower.changes, "w/x", before)
        assert_exactly(follower.changes, "w/y", after)
        assert len(follower.changes) == 10
    finally:
        await store.close()


async def test_two_clients_on_different_members_never_both_win_a_cas(cluster3: EtcdCluster) -> None:
    """Two daemons' stores, each talking to another member, take "free" keys (create-only
    puts, as IPAM takes addresses) from one pool in parallel: every key goes to one of
    them, and each sees the other's takes through a watch."""
    namespace = f"/cnm-test/{uuid.uuid4().hex}/"
    stores = [
        EtcdStore(cluster3.endpoints, namespace=namespace),
        EtcdStore(list(reversed(cluster3.endpoints)), namespace=namespace),
    ]
    try:
        start = await stores[0].connect() + 1
        follower = Follower(stores[1], "pool/", start)
        won: list[list[str]] = [[], []]

        async def take(i: int) -> None:
            for n in range(60):
                key = f"pool/{n:03d}"
                try:
                    await stores[i].put(key, {"owner": i}, revision=0)
                    won[i].append(key)
                except StaleRevision:
                    pass
                await asyncio.sleep(0)

        await asyncio.wait_for(asyncio.gather(take(0), take(1)), BOUND)
        assert sorted(won[0] + won[1]) == [f"pool/{n:03d}" for n in range(60)]  # each key once
        await follower.until("pool/059")
        await follower.stop()
        seen = {c.key: c.doc for c in follower.changes}
        assert seen == {key: {"owner": i} for i in (0, 1) for key in won[i]}
    finally:
        for store in stores:
            await store.close()
