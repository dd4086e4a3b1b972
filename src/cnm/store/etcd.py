"""The Store protocol on etcd v3 (global scope): what several cnmd share.

Every key lives under a namespace (``/cnm/v2/`` by default; tests give each case its
own), documents are JSON, and the store's revisions are etcd's: ``Entry.revision`` is the
key's ``mod_revision``, ``Entry.created`` its ``create_revision``, and every call returns
the ``header.revision`` etcd answered with.  Compare-and-swap and ``commit`` are one etcd
transaction each (``mod_revision == N``; 0 matches an absent key), leases are etcd leases
(whole seconds, at least etcd's minimum TTL), ``watch`` is an etcd watch.

The client.  The etcd API is spoken through ``grpc.aio`` with the generated etcd v3 stubs
of ``aetcd`` (``aetcd.rpc``), not through ``aetcd.Client`` itself: that client takes one
endpoint and has no TLS, and cnmd needs several endpoints with failover and TLS
(``--cluster-store-opt kv.cacertfile=…``).  ``bench/store.py`` measured the candidates on
this machine kind (one etcd 3.4.23 member on loopback, data on tmpfs, the machine shared
and loaded, so the figures move by tens of percent between runs; p50 per call)::

    client                     put      get      CAS      list 1,000  watch event
    aetcd.Client (asyncio)     0.75 ms  0.82 ms  1.56 ms  21.8 ms     1.8 ms
    etcd3aio (asyncio)         0.52 ms  0.57 ms  0.63 ms  21.8 ms     1.8 ms
    etcd3gw in a thread        3.5 ms   4.0 ms   8.5 ms   57 ms       4.5 ms
    EtcdStore (this module)    1.0 ms   0.82 ms  0.91 ms  24.4 ms     0.92 ms

(aetcd.Client's CAS is two calls: its transaction returns no revision.)  The asyncio gRPC
clients are 3-9x faster than etcd's JSON gateway called from a thread (etcd3gw, the
maintained synchronous one), and a watch costs no thread.  Of the two asyncio clients,
``aetcd`` is at a stable 1.0 and keeps its generated code in its own package;
``etcd3aio`` (0.3) puts its proto directory on ``sys.path`` (top-level ``etcd`` and
``google.api`` packages) and registers the same protobuf names, so the two cannot even be
loaded in one process.  Their figures are within each other's run-to-run noise, so cnm
pins ``aetcd`` for its stubs.

Failover.  Each endpoint has its own channel.  A call goes to the endpoint that answered
last; when that one cannot be connected to (refused, reset, or no leader) the next is
tried, until the store's ``timeout`` runs out: then ``Unavailable`` names every endpoint
and the last error.  A read is retried on another member after any transport error; a
write only when it never left this process (the channel was not connected) or the member
refused it for want of a leader, as etcd's own client does: a write that reached a member
otherwise may have been applied, and the caller is told so.

Watches reconnect on their own: after a broken stream (member killed or restarted,
connection lost) the watch is created again, on whichever member answers, from the last
revision it yielded + 1, so nothing is lost or repeated.  A watch asks for a member with a
leader (``hasleader``), so a member cut off from the quorum cancels it rather than going
quiet.  A compacted start revision raises ``Compacted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from aetcd import rpc

from cnm.errors import InvalidArgument, NotFound, SystemFailure, Unavailable
from cnm.store.api import Change, Check, CommitStore, Compacted, Entry, Listing, Op, Put, Scope, StaleRevision
from cnm.store.encoding import dump_doc, load_doc

log = logging.getLogger("cnm.store.etcd")

DEFAULT_NAMESPACE = "/cnm/v2/"
DEFAULT_TIMEOUT = 5.0  # seconds a call may take, failover included, before Unavailable
_WATCH_METADATA = (("hasleader", "true"),)
_CHANNEL_OPTIONS = [
    # A restarted member is found again within a second, not after gRPC's 120 s backoff.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]
# Transport failures after which another member may answer (INTERNAL: gRPC's own "error
# from Core" when a connection breaks under a call being sent).
_RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL)
# What no other member or later try can mend: a watch raises these instead of retrying.
_FATAL_WATCH_CODES = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
)
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)

T = TypeVar("T")


# -- configuration ---------------------------------------------------------------------------


def parse_endpoint(text: str) -> str:
    """``HOST:PORT`` validated (an IPv4 address, ``[IPv6]`` or a host name; a port
    1-65535); InvalidArgument naming what is wrong."""
    value = text.strip()
    if "://" in value:
        raise InvalidArgument(f"etcd endpoint {text!r}: give HOST:PORT, without a scheme")
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise InvalidArgument(f"etcd endpoint {text!r}: expected HOST:PORT")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"etcd endpoint {text!r}: port {port!r} is not a number in 1-65535")
    if host.startswith("["):
        try:
            if not host.endswith("]"):
                raise ValueError(host)
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise InvalidArgument(f"etcd endpoint {text!r}: {host!r} is not an IPv6 address") from None
    elif not _HOSTNAME.match(host):
        raise InvalidArgument(f"etcd endpoint {text!r}: {host!r} is not a host name or IPv4 address")
    return f"{host}:{int(port)}"


def parse_cluster_url(url: str) -> tuple[str, ...]:
    """The endpoints of ``etcd://HOST:PORT[,HOST:PORT…]`` (Docker's ``--cluster-store``
    form; a trailing path is refused); InvalidArgument naming what is wrong."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        raise InvalidArgument(f"cluster store {url!r}: expected etcd://HOST:PORT[,HOST:PORT...]")
    if scheme != "etcd":
        raise InvalidArgument(f"cluster store {url!r}: unsupported backend {scheme!r} (only etcd)")
    if "/" in rest.rstrip("/"):
        raise InvalidArgument(
            f"cluster store {url!r}: a path is not supported (cnm keeps its keys under /cnm/v2/)"
        )
    parts = [p for p in rest.rstrip("/").split(",")]
    if not rest.rstrip("/") or any(not p.strip() for p in parts):
        raise InvalidArgument(f"cluster store {url!r}: an empty endpoint")
    endpoints = tuple(parse_endpoint(p) for p in parts)
    if len(set(endpoints)) != len(endpoints):
        raise InvalidArgument(f"cluster store {url!r}: an endpoint is given twice")
    return endpoints


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """TLS to etcd: the CA that signed the members' certificates, and the client's own
    certificate and key (both or neither), as PEM files."""

    cacertfile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None

    def __post_init__(self) -> None:
        if (self.certfile is None) != (self.keyfile is None):
            raise InvalidArgument("etcd TLS: kv.certfile and kv.keyfile go together")

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC credentials from the files; InvalidArgument naming a file that cannot be read."""

        def read(what: str, path: str | None) -> bytes | None:
            if path is None:
                return None
            try:
                with open(path, "rb") as fh:
                    return fh.read()
            except OSError as exc:
                raise InvalidArgument(f"etcd TLS: cannot read {what} {path}: {exc.strerror}") from exc

        return grpc.ssl_channel_credentials(
            root_certificates=read("kv.cacertfile", self.cacertfile),
            private_key=read("kv.keyfile", self.keyfile),
            certificate_chain=read("kv.certfile", self.certfile),
        )


def _range_end(prefix: bytes) -> bytes:
    """The end of etcd's range for every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


# -- the store -------------------------------------------------------------------------------


class _Endpoint:
    """One member's address and, once used, its channel with the stubs on it (made on the
    event loop that uses it: a ``grpc.aio`` channel belongs to one loop)."""

    def __init__(self, address: str, credentials: grpc.ChannelCredentials | None) -> None:
        self.address = address
        self._credentials = credentials
        self._channel: grpc.aio.Channel | None = None

    @property
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self.address, options=_CHANNEL_OPTIONS)
            else:
                self._channel = grpc.aio.secure_channel(
                    self.address, self._credentials, options=_CHANNEL_OPTIONS
                )
            self.kv = rpc.KVStub(self._channel)
            self.lease = rpc.LeaseStub(self._channel)
            self.watch = rpc.WatchStub(self._channel)
        return self._channel

    def failed(self) -> bool:
        """Whether the last connection attempt failed (gRPC is backing off)."""
        return self.channel.get_state() == grpc.ChannelConnectivity.TRANSIENT_FAILURE

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    async def connected(self, timeout: float) -> bool:
        """Whether the channel is (or becomes, within ``timeout``) connected; False at once
        when the last attempt failed and gRPC is backing off."""
        deadline = time.monotonic() + timeout
        state = self.channel.get_state(try_to_connect=True)
        while state != grpc.ChannelConnectivity.READY:
            if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.channel.wait_for_state_change(state), left)
            state = self.channel.get_state(try_to_connect=True)
        return True


class EtcdStore(CommitStore):
    """The Store protocol over an etcd v3 cluster; see the module docstring.

    ``endpoints``: ``HOST:PORT`` of one or more members.  ``namespace``: the key prefix
    all of this store's keys live under.  ``timeout``: how long a call may take before
    ``Unavailable``.  Channels connect lazily; ``connect`` checks the cluster answers."""

    scope: Scope = "global"

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        namespace: str = DEFAULT_NAMESPACE,
        tls: TlsFiles | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not endpoints:
            raise InvalidArgument("etcd: no endpoint given")
        addresses = [parse_endpoint(e) for e in endpoints]
        if not namespace.startswith("/") or not namespace.endswith("/"):
            raise InvalidArgument(f"etcd namespace {namespace!r} must start and end with '/'")
        if timeout <= 0:
            raise InvalidArgument(f"etcd timeout {timeout!r} must be positive")
        credentials = tls.credentials() if tls is not None else None
        self.namespace = namespace
        self.timeout = timeout
        self.tls = tls
        self._ns = namespace.encode()
        self._endpoints = [_Endpoint(a, credentials) for a in addresses]
        self._current = 0  # the endpoint that answered last
        self._closed = False
        self._watches: set[grpc.aio.StreamStreamCall] = set()
        self._closing = asyncio.Event()

    @property
    def endpoints(self) -> list[str]:
        return [e.address for e in self._endpoints]

    def describe(self) -> str:
        """``etcd://h:p,h:p`` (what ``/info`` shows as ``ClusterStore``)."""
        return "etcd://" + ",".join(self.endpoints)

    # -- keys ------------------------------------------------------------------------------

    def _key(self, key: str) -> bytes:
        return self._ns + key.encode()

    def _name(self, raw: bytes) -> str:
        return raw[len(self._ns) :].decode()

    def _entry(self, kv: Any) -> Entry:
        key = self._name(kv.key)
        return Entry(key, load_doc(key, kv.value.decode()), kv.mod_revision, kv.create_revision, kv.lease)

    # -- calls with failover ---------------------------------------------------------------

    def _unavailable(self, what: str, error: object) -> Unavailable:
        return Unavailable(
            f"etcd at {', '.join(self.endpoints)} did not answer {what} within {self.timeout:g}s"
            f" (last error: {error})"
        )

    async def _call(
        self, what: str, fn: Callable[[_Endpoint, float], Awaitable[T]], *, idempotent: bool
    ) -> T:
        """``fn(endpoint, timeout)`` on the endpoint that answered last, then the others,
        until it answers or the store's timeout runs out (Unavailable).  Errors other than
        a transport failure are translated and raised at once."""
        self._live()
        deadline = time.monotonic() + self.timeout
        error: object = "no member could be connected to"
        count = len(self._endpoints)
        attempt = 0
        while True:
            endpoint = self._endpoints[(self._current + attempt) % count]
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._unavailable(what, error)
            per_try = left if count == 1 else min(left, max(self.timeout / count, 0.5))
            ready = await endpoint.connected(min(per_try, 1.0))
            if ready or endpoint.failed():
                # A failed channel fails the call at once, without sending it, and the
                # call's error says why (refused, TLS handshake ...): worth the words.
                timeout = per_try if ready and idempotent else deadline - time.monotonic()
                try:
                    result = await fn(endpoint, max(timeout if ready else min(timeout, 0.25), 0.001))
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in _RETRY_CODES:
                        raise _translate(exc, what) from exc
                    error = f"{endpoint.address}: {exc.details() or exc.code().name}"
                    if ready and not idempotent and _maybe_applied(exc):
                        raise Unavailable(f"etcd: {what} may or may not have been applied: {error}") from exc
                else:
                    self._current = (self._current + attempt) % count
                    return result
            else:
                error = f"{endpoint.address}: no answer to a connection attempt"
            attempt += 1
            if attempt % count == 0:  # every member tried: wait a little for one to come back
                await asyncio.sleep(min(0.1, max(deadline - time.monotonic(), 0)))

    # -- reads -----------------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        request = rpc.RangeRequest(key=self._key(key))
        response = await self._call(
            f"get {key}", lambda e, t: e.kv.Range(request, timeout=t), idempotent=True
        )
        return self._entry(response.kvs[0]) if response.kvs else None

    async def list(self, prefix: str) -> Listing:
        start = self._key(prefix)
        request = rpc.RangeRequest(key=start, range_end=_range_end(start))
        response = await self._call(
            f"list {prefix or '(all)'}", lambda e, t: e.kv.Range(request, timeout=t), idempotent=True
        )
        # etcd sorts by key bytes: UTF-8 byte order is code point order.
        return Listing([self._entry(kv) for kv in response.kvs], response.header.revision)

    # -- writes ----------------------------------------------------------------------------

    def _request_op(self, op: Op) -> Any:
        if isinstance(op, Put):
            put = rpc.PutRequest(
                key=self._key(op.key), value=dump_doc(op.key, op.doc).encode(), lease=op.lease
            )
            return rpc.RequestOp(request_put=put)
        return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=self._key(op.key)))

    async def commit(self, ops: Sequence[Op], checks: Sequence[Check] = ()) -> int:
        # etcd refuses a transaction that writes one key twice; the outcome of several ops on
        # a key at one revision is that of the last, so only the last is sent.
        last: dict[str, Op] = {}
        for op in ops:
            last.pop(op.key, None)
            last[op.key] = op
        request = rpc.TxnRequest(
            compare=[
                rpc.Compare(
                    key=self._key(c.key),
                    target=rpc.Compare.MOD,
                    result=rpc.Compare.EQUAL,
                    mod_revision=c.revision,
                )
                for c in checks
            ],
            success=[self._request_op(op) for op in last.values()],
            # On a failed comparison, read the checked keys to say which one changed.
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=self._key(c.key))) for c in checks],
        )
        what = f"commit of {', '.join(last) or 'nothing'}"
        response = await self._call(what, lambda e, t: e.kv.Txn(request, timeout=t), idempotent=False)
        if not response.succeeded:
            for check, result in zip(checks, response.responses, strict=True):
                kvs = result.response_range.kvs
                actual = kvs[0].mod_revision if kvs else 0
                if actual != check.revision:
                    raise StaleRevision(check.key, check.revision, actual)
            raise SystemFailure(f"etcd: {what} failed a comparison no key explains")
        return int(response.header.revision)

    # -- leases ----------------------------------------------------------------------------

    async def grant(self, ttl: float) -> int:
        if not ttl > 0:
            raise InvalidArgument(f"lease ttl {ttl!r} must be positive")
        request = rpc.LeaseGrantRequest(TTL=max(1, math.ceil(ttl)))
        response = await self._call(
            "lease grant", lambda e, t: e.lease.LeaseGrant(request, timeout=t), idempotent=False
        )
        if response.error:
            raise SystemFailure(f"etcd: lease grant failed: {response.error}")
        return int(response.ID)

    async def refresh(self, lease: int) -> None:
        async def keepalive(endpoint: _Endpoint, timeout: float) -> int:
            call = endpoint.lease.LeaseKeepAlive(timeout=timeout)
            try:
                await call.write(rpc.LeaseKeepAliveRequest(ID=lease))
                reply = await call.read()
            finally:
                call.cancel()
            if reply is grpc.aio.EOF:
                raise SystemFailure("etcd: lease keep-alive stream ended without an answer")
            return int(reply.TTL)

        ttl = await self._call(f"refresh of lease {lease:x}", keepalive, idempotent=True)
        if ttl <= 0:
            raise NotFound(f"store: lease {lease:x} not found (expired or revoked)")

    async def revoke(self, lease: int) -> None:
        request = rpc.LeaseRevokeRequest(ID=lease)
        try:
            await self._call(
                f"revoke of lease {lease:x}",
                lambda e, t: e.lease.LeaseRevoke(request, timeout=t),
                idempotent=True,
            )
        except NotFound:
            pass  # already expired or revoked: idempotent

    # -- watches ---------------------------------------------------------------------------

    async def watch(self, prefix: str, from_revision: int) -> AsyncIterator[Change]:
        start = self._key(prefix)
        next_revision = max(from_revision, 1)
        failures = 0
        while not self._closed:
            endpoint = self._endpoints[self._current]
            stream = self._watch_once(endpoint, prefix, start, next_revision)
            try:
                async for change in stream:
                    failures = 0
                    next_revision = change.revision + 1
                    yield change
                if self._closed:
                    return
                error: object = "stream ended"
            except grpc.aio.AioRpcError as exc:
                if self._closed:
                    return
                if exc.code() in _FATAL_WATCH_CODES:
                    raise _translate(exc, f"watch of {prefix or '(all)'}") from exc
                error = exc.details() or exc.code().name
            except _Reconnect as exc:
                error = exc
            finally:
                await stream.aclose()
            # Lost: try the next member, pausing a little once every member was tried.
            failures += 1
            if failures == 1 or failures % 50 == 0:
                log.warning(
                    "etcd watch of %s at %s lost (%s); resuming from revision %d",
                    prefix or "(all)",
                    endpoint.address,
                    error,
                    next_revision,
                )
            self._current = (self._current + 1) % len(self._endpoints)
            if failures % len(self._endpoints) == 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), min(0.05 * failures, 1.0))

    async def _watch_once(
        self, endpoint: _Endpoint, prefix: str, start: bytes, from_revision: int
    ) -> AsyncGenerator[Change, None]:
        """One watch stream on one member: its changes until the stream breaks (raises)."""
        if not await endpoint.connected(min(self.timeout, 1.0)):
            raise _Reconnect(f"{endpoint.address}: cannot connect")
        call = endpoint.watch.Watch(metadata=_WATCH_METADATA)
        self._watches.add(call)
        try:
            create = rpc.WatchCreateRequest(
                key=start, range_end=_range_end(start), start_revision=from_revision
            )
            await call.write(rpc.WatchRequest(create_request=create))
            while True:
                try:
                    response = await call.read()
                except asyncio.CancelledError:
                    # ``close`` cancels the stream: the watch ends, as the contract says;
                    # a cancellation of the consumer's own task goes on.
                    task = asyncio.current_task()
                    if self._closed and (task is None or not task.cancelling()):
                        return
                    raise
                if response is grpc.aio.EOF:
                    return
                if response.compact_revision:
                    raise Compacted(from_revision, int(response.compact_revision))
                if response.canceled:
                    raise _Reconnect(f"watch canceled by {endpoint.address}: {response.cancel_reason}")
                for event in response.events:
                    kv = event.kv
                    key = self._name(kv.key)
                    doc = None if event.type == rpc.Event.DELETE else load_doc(key, kv.value.decode())
                    yield Change(key, doc, int(kv.mod_revision))
        finally:
            self._watches.discard(call)
            call.cancel()

    # -- maintenance and lifecycle ---------------------------------------------------------

    async def connect(self) -> int:
        """Check the cluster answers (a read of the namespace's revision); returns the
        store revision.  Unavailable, naming the endpoints, when it does not."""
        request = rpc.RangeRequest(key=self._ns, range_end=_range_end(self._ns), count_only=True)
        response = await self._call(
            "a first read", lambda e, t: e.kv.Range(request, timeout=t), idempotent=True
        )
        return int(response.header.revision)

    async def compact(self, revision: int) -> None:
        """Drop etcd's history before ``revision`` (whole cluster: every namespace)."""
        request = rpc.CompactionRequest(revision=revision, physical=True)
        await self._call(
            f"compaction to {revision}", lambda e, t: e.kv.Compact(request, timeout=t), idempotent=True
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        for call in list(self._watches):
            call.cancel()
        for endpoint in self._endpoints:
            await endpoint.close()

    def _live(self) -> None:
        if self._closed:
            raise SystemFailure("store is closed")


class _Reconnect(Exception):
    """A watch stream ended in a way that another try may mend."""


def _maybe_applied(exc: grpc.aio.AioRpcError) -> bool:
    """Whether a failed write may have reached a member.  etcd answers "no leader" or a
    leader change before applying; a deadline or a broken connection says nothing."""
    details = exc.details() or ""
    if exc.code() == grpc.StatusCode.UNAVAILABLE and (
        "no leader" in details
        or "leader changed" in details
        or "failed to connect" in details.lower()
        or "connection refused" in details.lower()
    ):
        return False
    return True


def _translate(exc: grpc.aio.AioRpcError, what: str) -> Exception:
    """An etcd error as cnm's."""
    details = exc.details() or exc.code().name
    code = exc.code()
    if code == grpc.StatusCode.NOT_FOUND or "lease not found" in details:
        return NotFound(f"store: {what}: {details.removeprefix('etcdserver: ')} (expired or revoked)")
    if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
        return SystemFailure(f"etcd: {what}: {details}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(f"etcd: {what}: {details}")
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return Unavailable(f"etcd: {what}: {details}")
    return SystemFailure(f"etcd: {what}: {details}")
