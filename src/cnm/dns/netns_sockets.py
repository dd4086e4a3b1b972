"""Sockets inside a container's network namespace, and the NAT that puts them on port 53.

A socket belongs to the namespace it was *created* in, whichever thread uses it later.
So cnm enters a container's namespace on a fresh, short-lived thread
(``cnm.kernel.netns.call_in_netns``), creates what it needs there, and serves or uses the
sockets from cnmd's event loop; no pooled thread ever sits in another namespace.

Per sandbox, inside its namespace (Docker's ``resolver_unix.go:setupIptablesNAT``, as an
nftables table like Docker 29's ``ip docker-dns``)::

    table ip cnm-dns {
      chain output      { type nat hook output priority -100;   # dstnat
        ip daddr 127.0.0.11 udp dport 53 dnat to 127.0.0.11:<udp port>
        ip daddr 127.0.0.11 tcp dport 53 dnat to 127.0.0.11:<tcp port> }
      chain postrouting { type nat hook postrouting priority srcnat;
        ip saddr 127.0.0.11 udp sport <udp port> snat to 127.0.0.11:53
        ip saddr 127.0.0.11 tcp sport <tcp port> snat to 127.0.0.11:53 }
    }

(nft 1.0.6 refuses the ``dstnat`` keyword on the output hook, hence ``-100``.)  The table
is replaced atomically (``add``, ``delete``, ``add`` in one transaction), so re-adding a
sandbox after a cnmd restart swaps the old ports for the new ones without a gap.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cnm.errors import CnmError, FirewallError, KernelError, Unavailable
from cnm.kernel.cmdlog import log_script
from cnm.kernel.netns import call_in_netns, enter_netns, netns_exists, run_on_fresh_thread

Socket = socket.socket  # in annotations: inside the classes below, `socket` is a method

RESOLVER_ADDRESS = "127.0.0.11"
DNS_TABLE = "cnm-dns"
_TCP_BACKLOG = 128
_SOCKET_BATCH = 4  # sockets made per trip into a namespace for forwarding


def render_dns_nat(udp_port: int, tcp_port: int, address: str = RESOLVER_ADDRESS) -> str:
    """The nft script that (re)installs the table mapping ``address:53`` to the ports."""
    return (
        f"table ip {DNS_TABLE} {{}}\n"
        f"delete table ip {DNS_TABLE}\n"
        f"table ip {DNS_TABLE} {{\n"
        "\tchain output {\n"
        "\t\ttype nat hook output priority -100; policy accept;\n"
        f"\t\tip daddr {address} udp dport 53 dnat to {address}:{udp_port}\n"
        f"\t\tip daddr {address} tcp dport 53 dnat to {address}:{tcp_port}\n"
        "\t}\n"
        "\tchain postrouting {\n"
        "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        f"\t\tip saddr {address} udp sport {udp_port} snat to {address}:53\n"
        f"\t\tip saddr {address} tcp sport {tcp_port} snat to {address}:53\n"
        "\t}\n"
        "}\n"
    )


NFT_TIMEOUT = 10  # seconds
REMOVE_DNS_NAT = f"table ip {DNS_TABLE} {{}}\ndelete table ip {DNS_TABLE}\n"


def _apply_nft(script: str, netns_path: str) -> None:
    """Run ``script`` with ``nft -f -`` in the *calling thread's* namespace (a child forked
    from this thread starts in it).

    Not libnftables in-process: its netlink code waits with select(), which aborts the
    whole daemon once its socket's descriptor is >= FD_SETSIZE (1024) -- and cnmd holds a
    few descriptors per container.  A fresh ``nft`` process has low descriptors; it costs
    a few milliseconds, once per sandbox."""
    log_script(f"nsenter --net={netns_path} nft -f -", script)
    try:
        done = subprocess.run(
            ["nft", "-f", "-"], input=script.encode(), capture_output=True, timeout=NFT_TIMEOUT, check=False
        )
    except FileNotFoundError as exc:  # pragma: no cover - depends on the host
        raise Unavailable("nft is not installed (Debian package nftables)") from exc
    except subprocess.TimeoutExpired as exc:
        raise FirewallError(f"nft in {netns_path}: no answer within {NFT_TIMEOUT} s") from exc
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace")
        first = next((line for line in err.splitlines() if line.strip()), "unknown error")
        raise FirewallError(f"nft in {netns_path}: {first}")


@dataclass(slots=True)
class ResolverSockets:
    """The bound UDP socket and listening TCP socket of one sandbox's resolver."""

    udp: socket.socket
    tcp: socket.socket

    @property
    def ports(self) -> tuple[int, int]:
        return self.udp.getsockname()[1], self.tcp.getsockname()[1]

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()


def bind_resolver_sockets(host: str, port: int = 0, tcp_port: int | None = None) -> ResolverSockets:
    """A UDP and a TCP socket bound to ``host`` (random ports when ``port`` is 0; the TCP
    one on ``tcp_port`` when given), in the calling thread's namespace."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    udp = socket.socket(family, socket.SOCK_DGRAM)
    tcp = socket.socket(family, socket.SOCK_STREAM)
    try:
        udp.bind((host, port))
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((host, port if tcp_port is None else tcp_port))
        tcp.listen(_TCP_BACKLOG)
        udp.setblocking(False)
        tcp.setblocking(False)
    except BaseException:
        udp.close()
        tcp.close()
        raise
    return ResolverSockets(udp, tcp)


@dataclass(slots=True)
class ResolverRequest:
    """One sandbox's resolver to open: its namespace, and the (udp, tcp) ports its NAT
    already points at (a previous cnmd's), if known."""

    netns_path: str
    reuse: tuple[int, int] | None = None


@dataclass(slots=True)
class _Opened:
    """What a trip opened, in request order: sockets, or the error of that request."""

    results: list[ResolverSockets | CnmError] = field(default_factory=list)

    def close(self) -> None:  # a cancelled trip: nobody will use them
        for result in self.results:
            if isinstance(result, ResolverSockets):
                result.close()


async def open_resolvers_in_netns(
    requests: Sequence[ResolverRequest], address: str = RESOLVER_ADDRESS
) -> list[ResolverSockets | CnmError]:
    """For each request, inside its namespace: bind the resolver's sockets on ``address``
    and install the NAT from port 53 to them -- all in ONE trip: one fresh thread enters
    the namespaces in turn and ends after the last (a daemon restart with 1,000 sandboxes
    pays one thread, not 1,000).  The result of each request in order: its sockets, or its
    error (KernelError: no such namespace; FirewallError: the NAT refused); a failed
    request leaves nothing behind (sockets closed; the table replaced whole or not at all).

    ``reuse``: the ports the namespace's NAT already points at: bound again when they are
    free, and then the NAT is left as it is -- a restart pays no ``nft`` process per
    sandbox.  When they are taken, random ports and a new NAT, as without."""

    def open_one(request: ResolverRequest) -> ResolverSockets:
        if not netns_exists(request.netns_path):
            raise FileNotFoundError(request.netns_path)
        enter_netns(request.netns_path)
        if request.reuse is not None:
            try:
                return bind_resolver_sockets(address, *request.reuse)
            except OSError:
                pass  # taken meanwhile (by the container?): new ports, new NAT
        sockets = bind_resolver_sockets(address)
        try:
            _apply_nft(render_dns_nat(*sockets.ports, address=address), request.netns_path)
        except BaseException:
            sockets.close()
            raise
        return sockets

    def work() -> _Opened:  # on a fresh thread, which ends in the last namespace
        opened = _Opened()
        try:
            for request in requests:
                try:
                    opened.results.append(open_one(request))
                except CnmError as exc:
                    opened.results.append(exc)
                except FileNotFoundError:
                    opened.results.append(
                        KernelError(f"network namespace {request.netns_path} does not exist")
                    )
                except OSError as exc:
                    opened.results.append(
                        KernelError(f"cannot enter network namespace {request.netns_path}: {exc}")
                    )
        except BaseException:
            opened.close()
            raise
        return opened

    if not requests:
        return []
    opened = await run_on_fresh_thread(work)
    return opened.results


async def remove_resolver_nat(netns_path: str) -> None:
    """Delete the resolver's NAT table inside ``netns_path``; a namespace or table that
    is already gone is success."""
    if not netns_exists(netns_path):
        return

    await call_in_netns(netns_path, lambda: _apply_nft(REMOVE_DNS_NAT, netns_path))


# -- sockets for forwarding ----------------------------------------------------------------


class SocketSource(Protocol):
    """Where the forwarder gets fresh, unconnected sockets for talking to upstreams, in
    the namespace the source stands for."""

    async def socket(self, family: int, kind: int) -> Socket:
        """A socket, waiting for a trip into the namespace when none is at hand."""
        ...

    def take(self, family: int, kind: int) -> Socket | None:
        """A socket at once, or None when one is not at hand yet (never waits)."""
        ...

    def close(self) -> None: ...


class HostSockets:
    """Sockets in cnmd's own namespace (the host's upstreams, e.g. 127.0.0.53)."""

    async def socket(self, family: int, kind: int) -> Socket:
        return self._new(family, kind)

    def take(self, family: int, kind: int) -> Socket | None:
        return self._new(family, kind)

    @staticmethod
    def _new(family: int, kind: int) -> Socket:
        sock = socket.socket(family, kind)
        sock.setblocking(False)
        return sock

    def close(self) -> None:
        pass


@dataclass(slots=True)
class _Batch:
    sockets: list[socket.socket] = field(default_factory=list)

    def close(self) -> None:  # a cancelled trip: nobody will use them
        for sock in self.sockets:
            sock.close()


class NetnsSockets:
    """Sockets created inside a container's namespace (for ``--dns`` upstreams, which
    Docker dials from there, so ``--dns 127.0.0.1`` means the container's own loopback).

    A trip into the namespace costs a thread start, so each trip makes a small batch of
    unconnected sockets kept in a stash.  The forwarder keeps the sockets it takes open
    for many queries (see ``forwarder``), so trips are rare; ``take`` never waits: when
    it empties the stash it starts a trip in the background for the next caller.  The
    stash keeps the namespace alive: ``close`` it when the sandbox goes."""

    def __init__(self, netns_path: str, batch: int = _SOCKET_BATCH) -> None:
        self.netns_path = netns_path
        self._batch = batch
        self._stash: dict[tuple[int, int], list[socket.socket]] = {}
        self._trips: dict[tuple[int, int], asyncio.Task[None]] = {}
        self._closed = False

    async def socket(self, family: int, kind: int) -> Socket:
        key = (family, kind)
        while True:
            self._check_open()
            stash = self._stash.get(key)
            if stash:
                return stash.pop()
            trip = self._refill(key)
            await asyncio.wait((trip,))  # not shielded: our cancellation must not cancel the trip
            if not trip.cancelled() and trip.exception() is not None:
                raise trip.exception()  # type: ignore[misc]

    def take(self, family: int, kind: int) -> Socket | None:
        if self._closed:
            return None
        key = (family, kind)
        stash = self._stash.get(key)
        sock = stash.pop() if stash else None
        if not stash:
            self._refill(key)
        return sock

    def _check_open(self) -> None:
        if self._closed:
            raise KernelError(f"sockets of network namespace {self.netns_path} are closed")

    def _refill(self, key: tuple[int, int]) -> asyncio.Task[None]:
        """The trip filling the stash for ``key``: the one under way, or a new one."""
        trip = self._trips.get(key)
        if trip is None:
            trip = self._trips[key] = asyncio.ensure_future(self._trip(key))
            trip.add_done_callback(lambda t: self._trip_done(key, t))
        return trip

    def _trip_done(self, key: tuple[int, int], trip: asyncio.Task[None]) -> None:
        if self._trips.get(key) is trip:
            del self._trips[key]
        if not trip.cancelled():
            trip.exception()  # retrieved: a waiting ``socket`` re-raises it, ``take`` retries later

    async def _trip(self, key: tuple[int, int]) -> None:
        family, kind = key

        def work() -> _Batch:  # on a fresh thread inside the namespace
            batch = _Batch()
            try:
                for _ in range(self._batch):
                    sock = socket.socket(family, kind)
                    sock.setblocking(False)
                    batch.sockets.append(sock)
            except BaseException:
                batch.close()
                raise
            return batch

        batch = await call_in_netns(self.netns_path, work)
        if self._closed:
            batch.close()
            return
        self._stash.setdefault(key, []).extend(batch.sockets)

    def close(self) -> None:
        self._closed = True
        for trip in self._trips.values():
            trip.cancel()
        self._trips.clear()
        for stash in self._stash.values():
            for sock in stash:
                sock.close()
        self._stash.clear()
