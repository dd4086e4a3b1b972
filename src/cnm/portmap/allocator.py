"""Host port reservations: which owner holds which host IP / protocol / port.

Owns the bookkeeping of published host ports (moby's ``portallocator``) and the bound
sockets that make them real (``hostsock``): while a reservation exists, no other program
can bind its port, and cnm never hands the same port out twice.

- A 0.0.0.0 binding conflicts with every IPv4 binding of the same port and protocol, a
  ``::`` binding with every IPv6 one, and a specific-IP binding with the same IP and with
  its family's unspecified address.  The families never conflict with each other.
- A group of requests (the ``0.0.0.0`` and ``::`` twins of one ``-p 80``) gets one port
  that is free for every member.
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

from cnm.errors import InvalidArgument, KernelError, SystemFailure
from cnm.model.ports import HostIP, PortMapping, PortRequest, any_of, join_host_port
from cnm.portmap import hostsock, ranges

log = logging.getLogger("cnm.portmap")

Opener = Callable[[str, HostIP, int], "socket.socket | None"]


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


def _addr(ip: HostIP, port: int | str) -> str:
    return join_host_port(ip, port)


class PortAllocator:
    """The host's published ports.  Not thread-safe: call it from cnmd's event loop."""

    def __init__(
        self,
        ephemeral: tuple[int, int] | None = None,
        *,
        reserved: Iterable[int] | None = None,
        opener: Opener = hostsock.open_reserved,
        ipv6: bool | None = None,
    ) -> None:
        self.ephemeral = ephemeral or ranges.ephemeral_range()
        # whether a port without a host address also gets its ``::`` twin (None: ask the kernel)
        self.ipv6 = hostsock.ipv6_available() if ipv6 is None else ipv6
        self._reserved = frozenset(ranges.reserved_ports() if reserved is None else reserved)
        self._open = opener
        # (protocol, port) -> {host ip -> reservation}: the conflict checks are O(1).
        self._ports: dict[tuple[str, int], dict[HostIP, Reservation]] = {}
        self._owners: dict[str, list[Reservation]] = {}
        self._last: dict[tuple[str, int, int], int] = {}  # (protocol, first, last) -> last pick

    # -- queries --------------------------------------------------------------------------

    def reservations(self, owner: str) -> list[Reservation]:
        return list(self._owners.get(owner, ()))

    def owners(self) -> list[str]:
        return list(self._owners)

    def holder(self, protocol: str, host_ip: HostIP, port: int) -> str | None:
        """The owner whose reservation conflicts with ``host_ip:port/protocol``, if any."""
        held = self._ports.get((protocol, port))
        if not held:
            return None
        if host_ip.is_unspecified:
            hit = next((r for ip, r in held.items() if ip.version == host_ip.version), None)
        else:
            hit = held.get(host_ip) or held.get(any_of(host_ip))
        return hit.owner if hit else None

    # -- reserve / release ----------------------------------------------------------------

    def reserve(
        self, owner: str, requests: Sequence[PortRequest], container_ip: HostIP | None = None
    ) -> list[Reservation]:
        """Hold a host port for every request, all or nothing; the new reservations in
        request order.  ``container_ip`` only makes error messages Docker's.  Raises
        ``PortConflict`` (taken) or ``KernelError`` (any other bind failure) and then
        holds nothing new."""
        return self.reserve_groups(owner, [(r,) for r in requests], container_ip)

    def reserve_groups(
        self, owner: str, groups: Sequence[Sequence[PortRequest]], container_ip: HostIP | None = None
    ) -> list[Reservation]:
        """As ``reserve``, where the requests of one group (same protocol, container port
        and host port range; different host addresses, e.g. ``0.0.0.0`` and ``::``) get
        the same host port, one free for every member; the reservations in order."""
        done: list[Reservation] = []
        try:
            for group in groups:
                done.extend(self._reserve_group(owner, group, container_ip))
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

    def _reserve_group(
        self, owner: str, group: Sequence[PortRequest], container_ip: HostIP | None
    ) -> list[Reservation]:
        if not group:
            return []
        req = group[0]
        for r in group:
            if r.host_ip is None:  # the engine resolves it from the publishing network first
                raise InvalidArgument(f"no host address for port {r.container_port}/{r.protocol}")
            if (r.protocol, r.host_port, r.host_port_end) != (req.protocol, req.host_port, req.host_port_end):
                raise InvalidArgument(f"port requests {req} and {r} cannot share one host port")
        if req.host_port and req.host_port_end in (0, req.host_port):
            return self._take_all(owner, group, req.host_port, container_ip)
        if req.host_port == 0 and req.host_port_end == 0:
            first, last = self.ephemeral
            skip = self._reserved
        else:
            first, last = req.host_port, req.host_port_end
            skip = frozenset()
        return self._take_in_range(owner, group, first, last, skip, container_ip)

    def _take_in_range(
        self,
        owner: str,
        group: Sequence[PortRequest],
        first: int,
        last: int,
        skip: frozenset[int],
        container_ip: HostIP | None,
    ) -> list[Reservation]:
        req = group[0]
        key = (req.protocol, first, last)
        size = last - first + 1
        start = self._last.get(key, last) + 1  # round robin: after the last one handed out
        for i in range(size):
            port = first + (start - first + i) % size
            if port in skip or any(self.holder(req.protocol, _ip(r), port) is not None for r in group):
                continue
            try:
                taken = self._take_all(owner, group, port, container_ip)
            except PortConflict:
                continue  # another program holds it: try the next one
            self._last[key] = port
            return taken
        where = _addr(_ip(req), f"{first}-{last}")
        raise PortConflict(f"Bind for {where} failed: all ports are allocated")

    def _take_all(
        self, owner: str, group: Sequence[PortRequest], port: int, container_ip: HostIP | None
    ) -> list[Reservation]:
        """``port`` on every member's address, all or none."""
        taken: list[Reservation] = []
        try:
            for r in group:
                taken.append(self._take(owner, r, _ip(r), port, container_ip))
        except BaseException:
            for t in reversed(taken):
                self._forget(t)
            raise
        return taken

    def _take(
        self, owner: str, req: PortRequest, host_ip: HostIP, port: int, container_ip: HostIP | None
    ) -> Reservation:
        if self.holder(req.protocol, host_ip, port) is not None:
            raise PortConflict(f"Bind for {_addr(host_ip, port)} failed: port is already allocated")
        try:
            sock = self._open(req.protocol, host_ip, port)
        except OSError as exc:
            target = (
                join_host_port(container_ip, req.container_port) if container_ip else str(req.container_port)
            )
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


def _ip(r: PortRequest) -> HostIP:
    if r.host_ip is None:
        raise InvalidArgument(f"no host address for port {r.container_port}/{r.protocol}")
    return r.host_ip


def _describe(m: PortMapping) -> str:
    return f"{_addr(m.host_ip, m.host_port)}/{m.protocol}"
