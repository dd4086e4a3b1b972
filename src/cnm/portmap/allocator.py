"""Host port reservations: which owner holds which host IP / protocol / port.

Owns the bookkeeping of published host ports (moby's ``portallocator``) and the bound
sockets that make them real (``hostsock``): while a reservation exists, no other program
can bind its port, and cnm never hands the same port out twice.

- A 0.0.0.0 binding conflicts with every binding of the same port and protocol, and a
  specific-IP binding conflicts with the same IP and with 0.0.0.0.
- Ranges and ephemeral ports are scanned round-robin from the port after the last one
  handed out in that range (so a just-released port is not reused at once); ephemeral
  picks skip ``ip_local_reserved_ports``; a port another program holds is skipped.
- ``reserve`` is all or nothing.

Conflicts carry Docker's messages; Docker answers them with HTTP 500 (the daemon wraps
them in "driver failed programming external connectivity on endpoint ..."), so they are
``SystemFailure``s here too.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from cnm.errors import InvalidArgument, KernelError, SystemFailure
from cnm.model.ports import ANY, PortMapping, PortRequest
from cnm.portmap import hostsock, ranges

log = logging.getLogger("cnm.portmap")

Opener = Callable[[str, IPv4Address, int], "socket.socket | None"]


class PortConflict(SystemFailure):
    """The host port is taken: by another of cnm's mappings ("port is already allocated")
    or by another program ("address already in use")."""


@dataclass(eq=False, slots=True)
class Reservation:
    """A host port held for ``owner``: the mapping it will serve and the socket holding it
    (None only for SCTP on a kernel without SCTP, see ``hostsock.open_reserved``)."""

    owner: str
    mapping: PortMapping
    sock: socket.socket | None = field(default=None, repr=False)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _addr(ip: IPv4Address, port: int | str) -> str:
    return f"{ip}:{port}"


class PortAllocator:
    """The host's published ports.  Not thread-safe: call it from cnmd's event loop."""

    def __init__(
        self,
        ephemeral: tuple[int, int] | None = None,
        *,
        reserved: Iterable[int] | None = None,
        opener: Opener = hostsock.open_reserved,
    ) -> None:
        self.ephemeral = ephemeral or ranges.ephemeral_range()
        self._reserved = frozenset(ranges.reserved_ports() if reserved is None else reserved)
        self._open = opener
        # (protocol, port) -> {host ip -> reservation}: the conflict checks are O(1).
        self._ports: dict[tuple[str, int], dict[IPv4Address, Reservation]] = {}
        self._owners: dict[str, list[Reservation]] = {}
        self._last: dict[tuple[str, int, int], int] = {}  # (protocol, first, last) -> last pick

    # -- queries --------------------------------------------------------------------------

    def reservations(self, owner: str) -> list[Reservation]:
        return list(self._owners.get(owner, ()))

    def owners(self) -> list[str]:
        return list(self._owners)

    def holder(self, protocol: str, host_ip: IPv4Address, port: int) -> str | None:
        """The owner whose reservation conflicts with ``host_ip:port/protocol``, if any."""
        held = self._ports.get((protocol, port))
        if not held:
            return None
        if host_ip == ANY:
            return next(iter(held.values())).owner
        hit = held.get(host_ip) or held.get(ANY)
        return hit.owner if hit else None

    # -- reserve / release ----------------------------------------------------------------

    def reserve(
        self, owner: str, requests: Sequence[PortRequest], container_ip: IPv4Address | None = None
    ) -> list[Reservation]:
        """Hold a host port for every request, all or nothing; the new reservations in
        request order.  ``container_ip`` only makes error messages Docker's.  Raises
        ``PortConflict`` (taken) or ``KernelError`` (any other bind failure) and then
        holds nothing new."""
        done: list[Reservation] = []
        try:
            for request in requests:
                done.append(self._reserve_one(owner, request, container_ip))
        except BaseException:
            for r in reversed(done):
                self._forget(r)
            raise
        self._owners.setdefault(owner, []).extend(done)
        if done:
            log.debug("reserved %s for %s", ", ".join(_describe(r.mapping) for r in done), owner[:12])
        return done

    def restore(
        self, owner: str, mappings: Sequence[PortMapping]
    ) -> tuple[list[Reservation], list[tuple[PortMapping, Exception]]]:
        """Re-reserve exactly these mappings (after a daemon restart): each on its own,
        so one that fails does not stop the others.  Returns (held, [(mapping, error)])."""
        held: list[Reservation] = []
        failed: list[tuple[PortMapping, Exception]] = []
        for m in mappings:
            request = PortRequest(m.protocol, m.container_port, m.host_ip, m.host_port, m.host_port)
            try:
                held.extend(self.reserve(owner, [request]))
            except (PortConflict, KernelError) as exc:
                failed.append((m, exc))
        return held, failed

    def release(self, owner: str) -> None:
        """Give back every port ``owner`` holds (closing their sockets); idempotent."""
        for r in self._owners.pop(owner, ()):
            self._forget(r)

    def close(self) -> None:
        """Release everything (daemon shutdown)."""
        for owner in list(self._owners):
            self.release(owner)

    # -- internals ------------------------------------------------------------------------

    def _forget(self, r: Reservation) -> None:
        key = (r.mapping.protocol, r.mapping.host_port)
        held = self._ports.get(key)
        if held is not None and held.get(r.mapping.host_ip) is r:
            del held[r.mapping.host_ip]
            if not held:
                del self._ports[key]
        r.close()

    def _reserve_one(self, owner: str, req: PortRequest, container_ip: IPv4Address | None) -> Reservation:
        host_ip = req.host_ip
        if host_ip is None:  # the engine resolves it from the publishing network first
            raise InvalidArgument(f"no host address for port {req.container_port}/{req.protocol}")
        if req.host_port and req.host_port_end in (0, req.host_port):
            return self._take(owner, req, host_ip, req.host_port, container_ip)
        if req.host_port == 0 and req.host_port_end == 0:
            first, last = self.ephemeral
            skip = self._reserved
        else:
            first, last = req.host_port, req.host_port_end
            skip = frozenset()
        return self._take_in_range(owner, req, host_ip, first, last, skip, container_ip)

    def _take_in_range(
        self,
        owner: str,
        req: PortRequest,
        host_ip: IPv4Address,
        first: int,
        last: int,
        skip: frozenset[int],
        container_ip: IPv4Address | None,
    ) -> Reservation:
        key = (req.protocol, first, last)
        size = last - first + 1
        start = self._last.get(key, last) + 1  # round robin: after the last one handed out
        for i in range(size):
            port = first + (start - first + i) % size
            if port in skip or self.holder(req.protocol, host_ip, port) is not None:
                continue
            try:
                r = self._take(owner, req, host_ip, port, container_ip)
            except PortConflict:
                continue  # another program holds it: try the next one
            self._last[key] = port
            return r
        raise PortConflict(f"Bind for {_addr(host_ip, f'{first}-{last}')} failed: all ports are allocated")

    def _take(
        self, owner: str, req: PortRequest, host_ip: IPv4Address, port: int, container_ip: IPv4Address | None
    ) -> Reservation:
        if self.holder(req.protocol, host_ip, port) is not None:
            raise PortConflict(f"Bind for {_addr(host_ip, port)} failed: port is already allocated")
        try:
            sock = self._open(req.protocol, host_ip, port)
        except OSError as exc:
            target = f"{container_ip}:{req.container_port}" if container_ip else str(req.container_port)
            where = f"{_addr(host_ip, port)}:{target}/{req.protocol}"
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            if exc.errno == errno.EADDRINUSE:
                raise PortConflict(f"failed to bind host port for {where}: {reason}") from exc
            if exc.errno == errno.EADDRNOTAVAIL:  # the user's HostIp: bad input, not a failure
                raise InvalidArgument(
                    f"failed to bind host port for {where}: {reason}: "
                    f"{host_ip} is not an address of this host"
                ) from exc
            raise KernelError(f"failed to bind host port for {where}: {reason}") from exc
        mapping = PortMapping(req.protocol, req.container_port, host_ip, port)
        r = Reservation(owner, mapping, sock)
        self._ports.setdefault((req.protocol, port), {})[host_ip] = r
        return r


def _describe(m: PortMapping) -> str:
    return f"{m.host_ip}:{m.host_port}/{m.protocol}"
