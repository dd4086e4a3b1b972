"""The embedded DNS server: one for the whole host, serving every sandbox from cnmd's loop.

For each sandbox (container network namespace) it holds a UDP socket and a listening TCP
socket created *inside* that namespace on ``127.0.0.11`` (random ports, NAT from port 53:
see ``netns_sockets``; after a cnmd restart the same ports again, so the NAT stays as it
is), served from cnmd's event loop.  The socket a query arrives on tells which
sandbox asks, so names are scoped without looking at source addresses.

What the answers are is ``answer.respond`` over the engine's ``NameTable``; forwarding is
``Forwarder``.  This module owns the sockets:

* both sockets of a sandbox are watched with ``loop.add_reader`` (no asyncio transport
  or server per sandbox: a daemon restart re-adds 1,000 sandboxes at once, and a
  transport and a server cost each of them several loop callbacks and futures);
* UDP: the datagrams waiting are read in the reader's callback (a bounded batch) and
  container names answered there, synchronously; a forward is started there too
  (``Forwarder.submit``: callbacks, no task) and its answer sent from the forwarder's
  callback; bounded by the forwarder's in-flight limit (SERVFAIL beyond).  A reply that
  finds the socket's buffer full is dropped, as a busy DNS server does (the client asks
  again);
* TCP: a connection is accepted in the reader's callback and served by a task of its own
  (asyncio streams); RFC 7766 framing (2-byte length); queries on one connection
  answered in order; an idle connection is closed after ``TCP_IDLE``, a message must
  arrive whole within ``TCP_READ`` and a reply be taken within ``TCP_WRITE``
  (slowloris); at most ``TCP_MAX_CONNECTIONS`` per sandbox, as one sandbox's clients
  must not exhaust cnmd (beyond, a connection is accepted and closed at once).

Nothing here raises out of a handler: hostile input costs at most its own answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from cnm.dns import answer
from cnm.dns.forwarder import Forwarder
from cnm.dns.netns_sockets import (
    RESOLVER_ADDRESS,
    NetnsSockets,
    ResolverRequest,
    ResolverSockets,
    SocketSource,
    bind_resolver_sockets,
    open_resolvers_in_netns,
    remove_resolver_nat,
)
from cnm.dns.records import NameTable
from cnm.errors import CnmError, Conflict, KernelError, TeardownErrors

log = logging.getLogger("cnm.dns")

TCP_IDLE = 10.0
TCP_READ = 5.0
TCP_WRITE = 5.0
TCP_MAX_CONNECTIONS = 64
_UDP_BATCH = 64  # datagrams read per wakeup: a busy sandbox must not hold the loop
_ACCEPT_BATCH = 16  # connections accepted per wakeup, likewise
_DATAGRAM_MAX = 65535  # the largest UDP payload
_RECORD_NAME = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.-]{0,127}")  # a sandbox id as a file name


@dataclass(slots=True)
class _Listener:
    sandbox_id: str
    netns_path: str | None  # None: a listener in cnmd's own namespace (tests)
    ports: tuple[int, int]  # (udp, tcp)
    sockets: SocketSource | None  # for --dns upstreams dialed from the sandbox
    udp: socket.socket | None = None  # watched by ``loop`` while served
    tcp: socket.socket | None = None
    loop: asyncio.AbstractEventLoop | None = None
    closed: bool = False
    connections: set[asyncio.Task[None]] = field(default_factory=set)  # one per TCP client


@dataclass(slots=True)
class _Prepared:
    """A sandbox's sockets being opened ahead: the ``index``-th result of ``trip``."""

    netns_path: str
    recorded: tuple[int, int] | None
    trip: asyncio.Future[list[ResolverSockets | CnmError]]
    index: int

    async def result(self) -> ResolverSockets | CnmError:
        return (await asyncio.shield(self.trip))[self.index]

    def discard(self) -> None:
        """Not wanted after all: its sockets are closed once the trip has them."""

        def close(trip: asyncio.Future[list[ResolverSockets | CnmError]]) -> None:
            if trip.cancelled() or trip.exception() is not None:
                return
            sockets = trip.result()[self.index]
            if isinstance(sockets, ResolverSockets):
                sockets.close()

        self.trip.add_done_callback(close)


class DnsServer:
    """The host's embedded DNS server (see module doc).  ``names`` is shared with the
    engine, which updates it; changes are seen by the next query."""

    def __init__(
        self,
        names: NameTable,
        forwarder: Forwarder | None = None,
        *,
        address: str = RESOLVER_ADDRESS,
        state_dir: str | None = None,
    ) -> None:
        """``state_dir`` (cnmd: ``<exec-root>/dns``): where the ports each sandbox's NAT
        points at are written, so that the next cnmd binds the same ones and leaves the
        NAT alone (None: nothing written, a restart re-installs every NAT)."""
        self.names = names
        self.forwarder = forwarder or Forwarder()
        self.address = address
        self.state_dir = state_dir
        self._listeners: dict[str, _Listener] = {}
        self._cache = answer.AnswerCache()
        self._prepared: dict[str, _Prepared] = {}  # sockets opened ahead (``prepare``)

    # -- the ports each sandbox's NAT points at, for the next cnmd -----------------------

    def _record_path(self, sandbox_id: str) -> str | None:
        if self.state_dir is None or not _RECORD_NAME.fullmatch(sandbox_id):
            return None
        return os.path.join(self.state_dir, sandbox_id)

    def _recorded(self, sandbox_id: str, netns_path: str) -> tuple[int, int] | None:
        """The (udp, tcp) ports a previous cnmd's NAT in ``netns_path`` points at, if it
        wrote them down (for that same namespace)."""
        path = self._record_path(sandbox_id)
        if path is None:
            return None
        try:
            # raw system calls: a restart reads this for every sandbox
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                text = os.read(fd, 4096).decode()
            finally:
                os.close(fd)
            udp, tcp, where = text.split(maxsplit=2)
            return (int(udp), int(tcp)) if where.strip() == netns_path else None
        except (OSError, ValueError):
            return None

    def _record(self, sandbox_id: str, netns_path: str, ports: tuple[int, int]) -> None:
        path = self._record_path(sandbox_id)
        if path is None:
            return
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            with open(path + ".tmp", "w") as f:
                f.write(f"{ports[0]} {ports[1]} {netns_path}\n")
            os.replace(path + ".tmp", path)
        except OSError as exc:  # the next cnmd re-installs this NAT: slower, not wrong
            log.warning("dns: cannot record the ports of sandbox %s: %s", sandbox_id[:12], exc)

    def _forget_record(self, sandbox_id: str) -> None:
        path = self._record_path(sandbox_id)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    # -- sandboxes ---------------------------------------------------------------------

    async def add_sandbox(self, sandbox_id: str, netns_path: str) -> tuple[int, int]:
        """Serve ``sandbox_id`` at ``127.0.0.11:53`` (UDP and TCP) inside the namespace at
        ``netns_path``; returns the (udp, tcp) ports the NAT points at.  Idempotent for the
        same namespace; Conflict if the sandbox is served elsewhere.  Re-adding after a
        cnmd restart replaces the old NAT table in one transaction."""
        result = (await self.add_sandboxes([(sandbox_id, netns_path)]))[sandbox_id]
        if isinstance(result, CnmError):
            raise result
        return result

    async def add_sandboxes(
        self, sandboxes: Sequence[tuple[str, str]]
    ) -> dict[str, tuple[int, int] | CnmError]:
        """``add_sandbox`` for each (sandbox id, namespace path), the sockets of all of
        them made in one trip through their namespaces (a daemon restart re-adds every
        sandbox: one thread, not one per sandbox).  By sandbox id: its ports, or the error
        that sandbox alone got (the others are served all the same).  A sandbox listed
        twice is added in the last namespace given."""
        results: dict[str, tuple[int, int] | CnmError] = {}
        todo: list[tuple[str, str, tuple[int, int] | None]] = []
        ahead: list[tuple[tuple[str, str, tuple[int, int] | None], _Prepared]] = []
        for sandbox_id, netns_path in dict(sandboxes).items():
            current = self._listeners.get(sandbox_id)
            prepared = self._prepared.pop(sandbox_id, None)
            if prepared is not None and (current is not None or prepared.netns_path != netns_path):
                prepared.discard()
                prepared = None
            if current is None and prepared is not None:
                ahead.append(((sandbox_id, netns_path, prepared.recorded), prepared))
            elif current is None:
                todo.append((sandbox_id, netns_path, self._recorded(sandbox_id, netns_path)))
            elif current.netns_path == netns_path:
                results[sandbox_id] = current.ports
            else:
                results[sandbox_id] = Conflict(
                    f"DNS for sandbox {sandbox_id[:12]} is already served in {current.netns_path}"
                )
        pending: list[tuple[tuple[str, str, tuple[int, int] | None], ResolverSockets | CnmError]] = []
        try:
            for item, prepared in ahead:
                pending.append((item, await prepared.result()))
            opened = await open_resolvers_in_netns(
                [ResolverRequest(path, recorded) for _, path, recorded in todo], self.address
            )
        except BaseException:
            for _, prepared in ahead:
                prepared.discard()
            for _, sockets in pending:
                if isinstance(sockets, ResolverSockets):
                    sockets.close()
            raise
        pending += zip(todo, opened, strict=True)
        # serving takes no trip through the loop (readers are added at once), so one after
        # the other costs nothing
        for index, ((sandbox_id, netns_path, recorded), sockets) in enumerate(pending):
            if isinstance(sockets, CnmError):
                results[sandbox_id] = sockets
                continue
            try:
                results[sandbox_id] = await self._serve_opened(sandbox_id, netns_path, sockets, recorded)
            except BaseException:
                for _, rest in pending[index:]:  # not served: nobody else closes them
                    if isinstance(rest, ResolverSockets) and rest is not sockets:
                        rest.close()
                raise
        return results

    async def _serve_opened(
        self, sandbox_id: str, netns_path: str, sockets: ResolverSockets, recorded: tuple[int, int] | None
    ) -> tuple[int, int] | CnmError:
        try:
            return await self._serve_sandbox(sandbox_id, netns_path, sockets, recorded)
        except CnmError as exc:
            return exc

    def prepare(self, sandboxes: Sequence[tuple[str, str]]) -> None:
        """Start opening the sockets of these (sandbox id, namespace path) in one trip, in
        the background: a later ``add_sandbox(es)`` of one of them takes its sockets from
        there.  A daemon start calls it while it waits for something else (runc's
        listing), before it knows which sandboxes it keeps; ``discard_prepared`` closes
        what was not taken."""
        todo = [
            (sandbox_id, netns_path, self._recorded(sandbox_id, netns_path))
            for sandbox_id, netns_path in dict(sandboxes).items()
            if sandbox_id not in self._listeners and sandbox_id not in self._prepared
        ]
        if not todo:
            return
        trip = asyncio.ensure_future(
            open_resolvers_in_netns(
                [ResolverRequest(path, recorded) for _, path, recorded in todo], self.address
            )
        )
        for index, (sandbox_id, netns_path, recorded) in enumerate(todo):
            self._prepared[sandbox_id] = _Prepared(netns_path, recorded, trip, index)

    def discard_prepared(self) -> None:
        """Close the sockets ``prepare`` opened that no ``add_sandbox`` took (now, or
        when their trip ends)."""
        prepared, self._prepared = self._prepared, {}
        for entry in prepared.values():
            entry.discard()

    async def _serve_sandbox(
        self, sandbox_id: str, netns_path: str, sockets: ResolverSockets, recorded: tuple[int, int] | None
    ) -> tuple[int, int]:
        """Serve the sockets just opened in ``netns_path``; on failure they are closed and
        the NAT removed."""
        async with AsyncExitStack() as undo:
            undo.callback(sockets.close)
            undo.push_async_callback(remove_resolver_nat, netns_path)
            listener = _Listener(sandbox_id, netns_path, sockets.ports, NetnsSockets(netns_path))
            await self._serve(listener, sockets)
            undo.pop_all()
        if listener.ports != recorded:
            self._record(sandbox_id, netns_path, listener.ports)
        log.debug(
            "dns: serving sandbox %s in %s (udp %d, tcp %d)", sandbox_id[:12], netns_path, *listener.ports
        )
        return listener.ports

    async def add_listener(self, sandbox_id: str, host: str = "127.0.0.1", port: int = 0) -> tuple[int, int]:
        """Serve ``sandbox_id`` on ``host`` in cnmd's own namespace (no NAT; tests and
        tools); returns the (udp, tcp) ports.  Conflict if it is already served."""
        if sandbox_id in self._listeners:
            raise Conflict(f"DNS for sandbox {sandbox_id[:12]} is already served")
        try:
            sockets = bind_resolver_sockets(host, port)
        except OSError as exc:
            raise KernelError(f"cannot bind the DNS listener on {host} port {port}: {exc.strerror}") from exc
        listener = _Listener(sandbox_id, None, sockets.ports, None)
        try:
            await self._serve(listener, sockets)
        except BaseException:
            sockets.close()
            raise
        return listener.ports

    async def remove_sandbox(self, sandbox_id: str) -> None:
        """Stop serving ``sandbox_id``: close its sockets and connections and delete its
        NAT table (if the namespace still exists).  Idempotent; does not touch the
        names (the engine withdraws them from the ``NameTable``)."""
        self._forget_record(sandbox_id)  # before the NAT goes: a record never outlives it
        prepared = self._prepared.pop(sandbox_id, None)
        if prepared is not None:
            prepared.discard()
        listener = self._listeners.pop(sandbox_id, None)
        if listener is None:
            return
        errors: list[BaseException] = []
        await self._close(listener)
        if listener.netns_path is not None:
            try:
                await remove_resolver_nat(listener.netns_path)
            except Exception as exc:  # noqa: BLE001 -- reported below
                errors.append(exc)
        if errors:
            raise TeardownErrors(f"DNS of sandbox {sandbox_id[:12]}", errors)

    def serving(self, sandbox_id: str) -> tuple[int, int] | None:
        """The (udp, tcp) ports ``sandbox_id`` is served on, or None."""
        listener = self._listeners.get(sandbox_id)
        return listener.ports if listener is not None else None

    async def close(self) -> None:
        """Close every listener (cnmd shutting down).  The NAT tables stay: containers
        keep running, and the next cnmd re-adds their sandboxes on the same ports (written
        under ``state_dir``) when they are still free, else replacing the NAT."""
        self.discard_prepared()
        listeners = list(self._listeners.values())
        self._listeners.clear()
        for listener in listeners:
            await self._close(listener)
        self.forwarder.close()

    # -- sockets ---------------------------------------------------------------------

    async def _serve(self, listener: _Listener, sockets: ResolverSockets) -> None:
        """Watch ``sockets`` from the loop and register ``listener`` (no suspension: the
        readers are added at once).  On failure nothing of what was added stays (the
        caller closes the sockets)."""
        loop = asyncio.get_running_loop()
        loop.add_reader(sockets.udp.fileno(), self._on_datagrams, listener)
        try:
            loop.add_reader(sockets.tcp.fileno(), self._on_connections, listener)
        except BaseException:
            loop.remove_reader(sockets.udp.fileno())
            raise
        listener.udp, listener.tcp, listener.loop = sockets.udp, sockets.tcp, loop
        self._listeners[listener.sandbox_id] = listener

    async def _close(self, listener: _Listener) -> None:
        """Stop watching and close the listener's sockets (the readers go first: a closed
        descriptor's number is soon another's), end its TCP connections and give back
        its sockets for forwarding."""
        listener.closed = True
        for sock in (listener.udp, listener.tcp):
            if sock is not None and listener.loop is not None:
                listener.loop.remove_reader(sock.fileno())
                sock.close()
        connections = list(listener.connections)
        for task in connections:
            task.cancel()
        if listener.sockets is not None:
            # its forwards in flight end by themselves (no answer is sent on a closed
            # listener); those using its namespace's sockets fail over at once
            listener.sockets.close()
            self.forwarder.release(listener.sockets)
        await asyncio.gather(*connections, return_exceptions=True)

    def _on_datagrams(self, listener: _Listener) -> None:
        """The UDP socket is readable: answer the datagrams waiting (at most a batch; the
        loop calls again for the rest)."""
        sock = listener.udp
        if sock is None or listener.closed:
            return
        for _ in range(_UDP_BATCH):
            try:
                data, addr = sock.recvfrom(_DATAGRAM_MAX)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # ICMP errors for replies to clients that went away: nothing to do
                log.debug("dns: sandbox %s: %s", listener.sandbox_id[:12], exc)
                continue
            try:
                self._datagram(listener, sock, data, addr)
            except Exception:  # never let one datagram stop the listener
                log.exception("dns: failed to answer a datagram for sandbox %s", listener.sandbox_id[:12])

    def _datagram(self, listener: _Listener, sock: socket.socket, data: bytes, addr: tuple[str, int]) -> None:
        result = answer.respond(self.names, listener.sandbox_id, data, tcp=False, cache=self._cache)
        if result is None:
            return
        if isinstance(result, bytes):
            _send(listener, sock, result, addr)
        elif self.forwarder.saturated:
            _send(listener, sock, answer.servfail(result), addr)
        else:
            self._forward_udp(listener, result, sock, addr)

    def _forward_udp(
        self,
        listener: _Listener,
        request: answer.Forward,
        sock: socket.socket,
        addr: tuple[str, int],
    ) -> None:
        """Start forwarding ``request``; its answer (or SERVFAIL) goes to ``addr`` from the
        forwarder's callback.  Counted in flight at once, so a burst read in one loop
        iteration cannot go past the bound."""

        def reply(wire: bytes | None) -> None:
            if listener.closed:
                return
            try:
                out = answer.servfail(request) if wire is None else answer.fit(request, wire)
            except Exception:  # a bug costs this answer (SERVFAIL), never the listener
                log.exception("dns: forwarding for sandbox %s failed", listener.sandbox_id[:12])
                out = answer.servfail(request)
            _send(listener, sock, out, addr)  # (runs inside the forwarder's socket reader: never raises)

        config = self.names.config(listener.sandbox_id)
        self.forwarder.submit(
            request.wire,
            config.usable_upstreams(),
            listener.sockets,
            question=request.question,
            on_answer=reply,
        )

    def _on_connections(self, listener: _Listener) -> None:
        """The TCP socket has clients waiting: accept them (at most a batch), each served
        by a task of its own; beyond ``TCP_MAX_CONNECTIONS``, closed at once."""
        sock = listener.tcp
        if sock is None or listener.closed or listener.loop is None:
            return
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # e.g. out of descriptors: the clients wait in the backlog
                log.warning("dns: sandbox %s: cannot accept a TCP client: %s", listener.sandbox_id[:12], exc)
                return
            if len(listener.connections) >= TCP_MAX_CONNECTIONS:
                conn.close()
                continue
            conn.setblocking(False)
            task = listener.loop.create_task(self._serve_tcp(listener, conn))
            listener.connections.add(task)
            task.add_done_callback(listener.connections.discard)

    async def _serve_tcp(self, listener: _Listener, conn: socket.socket) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=answer.TCP_MAX + 2)
            while True:
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
                    size = int.from_bytes(head, "big")
                    if size < 12:  # not even a DNS header: the stream cannot be trusted
                        break
                    data = await asyncio.wait_for(reader.readexactly(size), TCP_READ)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    break
                result = answer.respond(self.names, listener.sandbox_id, data, tcp=True, cache=self._cache)
                if isinstance(result, answer.Forward):
                    request = result
                    config = self.names.config(listener.sandbox_id)
                    try:
                        result = await self.forwarder.forward(
                            request.wire,
                            config.usable_upstreams(),
                            listener.sockets,
                            question=request.question,
                        ) or answer.servfail(request)
                    except Exception:  # a bug costs this answer, not the connection
                        log.exception("dns: forwarding for sandbox %s failed", listener.sandbox_id[:12])
                        result = answer.servfail(request)
                if result is None:
                    continue
                writer.write(len(result).to_bytes(2, "big") + result)
                try:
                    await asyncio.wait_for(writer.drain(), TCP_WRITE)
                except (TimeoutError, ConnectionError):
                    break
        except asyncio.CancelledError:
            pass  # the listener is closing
        except Exception:
            log.exception("dns: TCP connection of sandbox %s failed", listener.sandbox_id[:12])
        finally:
            if writer is not None:
                writer.close()
            else:
                conn.close()


def _send(listener: _Listener, sock: socket.socket, data: bytes, addr: tuple[str, int]) -> None:
    """One UDP reply; one the socket cannot take now is dropped (see module doc)."""
    if listener.closed:
        return
    try:
        sock.sendto(data, addr)
    except OSError as exc:
        log.debug("dns: sandbox %s: reply to %s dropped: %s", listener.sandbox_id[:12], addr, exc)
