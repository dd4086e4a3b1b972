"""The userland proxy: every published port of the host, served inside cnmd.

docker-proxy runs one process per published port and address family; cnm runs none.
``UserlandProxy`` serves the reserved sockets the allocator holds (it never opens or
closes them), on a small fixed pool of worker threads, each running its own asyncio
loop: a listener and all its connections and flows live on one worker (listeners are
spread round-robin), so the hot path never crosses threads, and the splice syscalls run
without the GIL.  ``workers=0`` serves everything on the caller's loop instead.

Errno policy (trio's ``serve_listeners``): EMFILE/ENFILE/ENOMEM/ENOBUFS on accept pause
that listener for a moment and it keeps serving; an error of one connection (a dead
backend, a reset) closes that connection only.  SCTP is not proxied (the kernel's DNAT
still serves it); a warning says so.  Either family on either side: a listener on ``::``
may serve a container's IPv6 address or, when it has none, its IPv4 one (as docker-proxy
does for an IPv4-only container).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import itertools
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from cnm.portmap import hostsock
from cnm.portmap.allocator import Reservation
from cnm.portmap.relay import Relay
from cnm.portmap.udp import UdpForwarder, family_of

log = logging.getLogger("cnm.portmap")

ACCEPT_BATCH = 64
BACKOFF = 0.1  # seconds a listener pauses when the process is out of fds or memory
_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS)
# accept() errors that concern the one connection being accepted (Linux passes pending
# network errors of the new socket to accept).
_ONE_CONNECTION = (
    errno.ECONNABORTED,
    errno.EPROTO,
    errno.EPERM,
    errno.ENETDOWN,
    errno.ENOPROTOOPT,
    errno.EHOSTDOWN,
    errno.ENONET,
    errno.EHOSTUNREACH,
    errno.EOPNOTSUPP,
    errno.ENETUNREACH,
    errno.ETIMEDOUT,
    errno.EINTR,
)


@dataclass(eq=False)
class _TcpListener:
    """One published TCP port on one worker, and the connections it accepted."""

    worker: _Worker
    sock: socket.socket
    target: tuple[str, int]
    splice: bool
    relays: set[Relay] = field(default_factory=set)
    connecting: dict[socket.socket, socket.socket] = field(default_factory=dict)  # upstream -> client
    paused: asyncio.TimerHandle | None = None
    closed: bool = False

    def start(self) -> None:
        self.worker.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.paused is not None:
            self.paused.cancel()
        else:
            self.worker.loop.remove_reader(self.sock.fileno())
        for up, client in list(self.connecting.items()):
            self.worker.loop.remove_writer(up.fileno())
            up.close()
            client.close()
        self.connecting.clear()
        for relay in list(self.relays):
            relay.close()

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                client, _addr = self.sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _RESOURCES:
                    log.warning("proxy %s: %s; pausing accepts for %.1fs", self.target, exc, BACKOFF)
                    self.worker.loop.remove_reader(self.sock.fileno())
                    self.paused = self.worker.loop.call_later(BACKOFF, self._resume)
                    return
                if exc.errno in _ONE_CONNECTION:
                    continue
                log.error("proxy %s: accept failed, listener stopped: %s", self.target, exc)
                self.worker.loop.remove_reader(self.sock.fileno())
                self.paused = None
                self.closed = True
                return
            self._dial(client)

    def _resume(self) -> None:
        self.paused = None
        if not self.closed:
            self.worker.loop.add_reader(self.sock.fileno(), self._accept)

    def _dial(self, client: socket.socket) -> None:
        client.setblocking(False)
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            up = socket.socket(
                family_of(self.target), socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
            )
        except OSError as exc:
            log.warning("proxy %s: cannot open a connection to the container: %s", self.target, exc)
            _reset(client)
            return
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = up.connect_ex(self.target)
        if code not in (0, errno.EINPROGRESS):
            up.close()
            _reset(client)
            return
        self.connecting[up] = client
        self.worker.loop.add_writer(up.fileno(), self._connected, client, up)

    def _connected(self, client: socket.socket, up: socket.socket) -> None:
        self.worker.loop.remove_writer(up.fileno())
        self.connecting.pop(up, None)
        code = up.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            log.debug("proxy: %s:%d unreachable: %s", *self.target, errno.errorcode.get(code, code))
            up.close()
            _reset(client)
            return
        try:
            relay = Relay(self.worker.loop, client, up, self.relays.discard, splice=self.splice)
        except OSError as exc:  # out of fds for the pipes
            log.warning("proxy %s: %s; connection dropped", self.target, exc)
            up.close()
            _reset(client)
            return
        self.relays.add(relay)
        relay.start()


def _hp(ip: IPv4Address | IPv6Address, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _reset(client: socket.socket) -> None:
    """Close ``client`` with a RST, so it learns at once that the backend is not there."""
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    except OSError:
        pass
    client.close()


class _Worker:
    """An asyncio loop that listeners live on: a thread of its own, or the caller's loop."""

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.listeners: dict[str, list[Any]] = {}
        if loop is not None:
            self.loop = loop
            self.thread: threading.Thread | None = None
            return
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), name=name, daemon=True)
        self.thread.start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on this worker's loop and wait for it."""
        if self.thread is None:
            return fn(*args)
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # handed to the caller
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return await asyncio.wrap_future(fut)

    def stop(self) -> None:
        if self.thread is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()


class UserlandProxy:
    """Serves reservations: ``add`` starts forwarding an owner's ports to its container,
    ``remove`` stops it and closes every connection and flow it had."""

    def __init__(
        self, *, workers: int = 1, udp_timeout: float = 90.0, splice: bool = True, max_udp_flows: int = 4096
    ) -> None:
        self._n_workers = workers
        self._udp_timeout = udp_timeout
        self._splice = splice
        self._max_udp_flows = max_udp_flows
        self._workers: list[_Worker] = []
        self._next = itertools.count()
        self._owners: dict[str, list[tuple[_Worker, Any]]] = {}

    def _pick(self) -> _Worker:
        if not self._workers:
            if self._n_workers <= 0:
                self._workers = [_Worker("cnm-proxy", asyncio.get_running_loop())]
            else:
                self._workers = [_Worker(f"cnm-proxy-{i}") for i in range(self._n_workers)]
        return self._workers[next(self._next) % len(self._workers)]

    async def add(
        self,
        owner: str,
        reservations: Sequence[Reservation],
        container_ip: IPv4Address | IPv6Address,
        container_ip6: IPv6Address | None = None,
    ) -> None:
        """Forward every reserved port of ``owner`` to the container: an IPv6 host binding
        to ``container_ip6`` when given, everything else to ``container_ip``.  Its sockets
        stop dropping packets and start being served.  Adding an owner again replaces it."""
        await self.remove(owner)
        started: list[tuple[_Worker, Any]] = []
        self._owners[owner] = started
        for r in reservations:
            m = r.mapping
            if r.sock is None or m.protocol == "sctp":
                log.warning(
                    "userland proxy: %s/%s not proxied (SCTP); kernel NAT serves it", m.host_port, m.protocol
                )
                continue
            to = container_ip6 if m.host_ip.version == 6 and container_ip6 is not None else container_ip
            target = (str(to), m.container_port)
            worker = self._pick()
            listener = await worker.call(self._start, worker, r.sock, m.protocol, target)
            started.append((worker, listener))
            log.debug(
                "userland proxy: %s/%s -> %s", _hp(m.host_ip, m.host_port), m.protocol, _hp(to, target[1])
            )

    def _start(self, worker: _Worker, sock: socket.socket, protocol: str, target: tuple[str, int]) -> Any:
        hostsock.accept_all(sock)
        if protocol == "udp":
            listener: Any = UdpForwarder(
                worker.loop, sock, target, timeout=self._udp_timeout, max_flows=self._max_udp_flows
            )
        else:
            listener = _TcpListener(worker, sock, target, self._splice)
        listener.start()
        return listener

    async def remove(self, owner: str) -> None:
        """Stop serving ``owner``'s ports; when this returns no worker touches its sockets
        any more (the allocator may close them).  Idempotent."""
        for worker, listener in self._owners.pop(owner, ()):
            await worker.call(self._stop, listener)

    @staticmethod
    def _stop(listener: Any) -> None:
        listener.close()
        if listener.sock.fileno() != -1:  # the allocator may already have released it
            hostsock.drop_all(listener.sock)

    def stats(self) -> dict[str, int]:
        """Owners, TCP connections and UDP flows being served (approximate across threads)."""
        listeners = [lst for started in self._owners.values() for _, lst in started]
        return {
            "owners": len(self._owners),
            "connections": sum(len(lst.relays) for lst in listeners if isinstance(lst, _TcpListener)),
            "flows": sum(len(lst.flows) for lst in listeners if isinstance(lst, UdpForwarder)),
        }

    async def close(self) -> None:
        """Stop serving everything and stop the worker threads; idempotent."""
        for owner in list(self._owners):
            await self.remove(owner)
        for worker in self._workers:
            worker.stop()
        self._workers = []
