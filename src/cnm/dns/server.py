"""The embedded DNS server: one for the whole host, serving every sandbox from cnmd's loop.

For each sandbox (container network namespace) it holds a UDP socket and a listening TCP
socket created *inside* that namespace on ``127.0.0.11`` (random ports, NAT from port 53:
see ``netns_sockets``; after a cnmd restart the same ports again, so the NAT stays as it
is), served with asyncio.  The socket a query arrives on tells which
sandbox asks, so names are scoped without looking at source addresses.

What the answers are is ``answer.respond`` over the engine's ``NameTable``; forwarding is
``Forwarder``.  This module owns the transports:

* UDP: container names are answered synchronously in ``datagram_received`` (no task);
  a forward is started there too (``Forwarder.submit``: callbacks, no task) and its
  answer sent from the forwarder's callback; bounded by the forwarder's in-flight limit
  (SERVFAIL beyond);
* TCP: RFC 7766 framing (2-byte length); one task per connection; queries on one
  connection answered in order; an idle connection is closed after ``TCP_IDLE``, a
  message must arrive whole within ``TCP_READ`` and a reply be taken within
  ``TCP_WRITE`` (slowloris); at most ``TCP_MAX_CONNECTIONS`` per sandbox, as one
  sandbox's clients must not exhaust cnmd.

Nothing here raises out of a handler: hostile input costs at most its own answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

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
_RECORD_NAME = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.-]{0,127}")  # a sandbox id as a file name


@dataclass(slots=True)
class _Listener:
    sandbox_id: str
    netns_path: str | None  # None: a listener in cnmd's own namespace (tests)
    ports: tuple[int, int]  # (udp, tcp)
    sockets: SocketSource | None  # for --dns upstreams dialed from the sandbox
    udp: asyncio.DatagramTransport | None = None
    tcp: asyncio.Server | None = None
    connections: set[asyncio.StreamWriter] = field(default_factory=set)


def _close_if_cancelled(sockets: ResolverSockets) -> Callable[[asyncio.Future[Any]], None]:
    """A task cancelled before it ran never saw its sockets: they are closed here (closing
    them again, after a failure undid them, is harmless)."""

    def done(task: asyncio.Future[Any]) -> None:
        if task.cancelled():
            sockets.close()

    return done


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
            with open(path) as f:
                udp, tcp, where = f.read().split(maxsplit=2)
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
        # all served at once: attaching a transport waits for the loop, so one after the
        # other would cost every sandbox a few loop iterations
        served: list[asyncio.Future[tuple[int, int] | CnmError]] = []
        for (sandbox_id, netns_path, recorded), sockets in pending:
            if isinstance(sockets, CnmError):
                results[sandbox_id] = sockets
                continue
            serving = asyncio.ensure_future(self._serve_opened(sandbox_id, netns_path, sockets, recorded))
            serving.add_done_callback(_close_if_cancelled(sockets))
            served.append(serving)
        try:
            await asyncio.gather(*served)
        except BaseException:
            for future in served:
                future.cancel()
            raise
        for ((sandbox_id, _, _), _), outcome in zip(
            [p for p in pending if not isinstance(p[1], CnmError)], served, strict=True
        ):
            results[sandbox_id] = outcome.result()
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
        self._close(listener)
        if listener.tcp is not None:
            try:
                await listener.tcp.wait_closed()
            except Exception as exc:  # noqa: BLE001 -- reported below
                errors.append(exc)
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
            self._close(listener)
        self.forwarder.close()
        for listener in listeners:
            if listener.tcp is not None:
                await listener.tcp.wait_closed()

    # -- transports --------------------------------------------------------------------

    async def _serve(self, listener: _Listener, sockets: ResolverSockets) -> None:
        """Attach asyncio to ``sockets`` and register ``listener``.  On failure nothing of
        what was attached stays (the caller closes the sockets)."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self, listener), sock=sockets.udp
        )
        try:
            listener.udp = transport
            listener.tcp = await asyncio.start_server(
                lambda r, w: self._serve_tcp(listener, r, w), sock=sockets.tcp, limit=answer.TCP_MAX + 2
            )
        except BaseException:
            transport.close()
            raise
        self._listeners[listener.sandbox_id] = listener

    def _close(self, listener: _Listener) -> None:
        if listener.udp is not None:
            listener.udp.close()
        if listener.tcp is not None:
            listener.tcp.close()
        for writer in list(listener.connections):
            writer.close()
        if listener.sockets is not None:
            # its forwards in flight end by themselves (a UDP answer is not sent on a closed
            # transport); those using its namespace's sockets fail over at once
            listener.sockets.close()
            self.forwarder.release(listener.sockets)

    def _forward_udp(
        self,
        listener: _Listener,
        request: answer.Forward,
        transport: asyncio.DatagramTransport,
        addr: tuple[str, int],
    ) -> None:
        """Start forwarding ``request``; its answer (or SERVFAIL) goes to ``addr`` from the
        forwarder's callback.  Counted in flight at once, so a burst read in one loop
        iteration cannot go past the bound."""

        def reply(wire: bytes | None) -> None:
            if transport.is_closing():
                return
            try:
                out = answer.servfail(request) if wire is None else answer.fit(request, wire)
            except Exception:  # a bug costs this answer (SERVFAIL), never the listener
                log.exception("dns: forwarding for sandbox %s failed", listener.sandbox_id[:12])
                out = answer.servfail(request)
            try:
                transport.sendto(out, addr)
            except Exception:  # runs inside the forwarder's socket reader: never raise there
                log.exception("dns: cannot answer a client of sandbox %s", listener.sandbox_id[:12])

        config = self.names.config(listener.sandbox_id)
        self.forwarder.submit(
            request.wire,
            config.usable_upstreams(),
            listener.sockets,
            question=request.question,
            on_answer=reply,
        )

    async def _serve_tcp(
        self, listener: _Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if len(listener.connections) >= TCP_MAX_CONNECTIONS:
            writer.close()
            return
        listener.connections.add(writer)
        try:
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
            listener.connections.discard(writer)
            writer.close()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer, listener: _Listener) -> None:
        self.server = server
        self.listener = listener
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        transport = self.transport
        if transport is None:
            return
        try:
            server = self.server
            result = answer.respond(
                server.names, self.listener.sandbox_id, data, tcp=False, cache=server._cache
            )
            if result is None:
                return
            if isinstance(result, bytes):
                transport.sendto(result, addr)
            elif server.forwarder.saturated:
                transport.sendto(answer.servfail(result), addr)
            else:
                server._forward_udp(self.listener, result, transport, addr)
        except Exception:  # never let one datagram stop the listener
            log.exception("dns: failed to answer a datagram for sandbox %s", self.listener.sandbox_id[:12])

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for replies to clients that went away: nothing to do
        log.debug("dns: sandbox %s: %s", self.listener.sandbox_id[:12], exc)
