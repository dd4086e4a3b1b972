"""The names the embedded DNS server answers for: an in-memory index the engine updates.

Docker's rules (libnetwork's resolver), kept here so the server stays a thin
wire-format layer:

* every endpoint on a user-defined network publishes its names (container name,
  ``--network-alias``es, short id, hostname) and its address *in that network only*;
* a sandbox sees the names of the networks it is attached to, searched in the order it
  was attached; the first network that knows the name answers (all of its addresses);
* ``a.b.c`` is tried as ``a.b.c`` in every attached network, then ``a.b`` in network ``c``,
  then ``a`` in network ``b.c``;
* lookups are case-insensitive; a trailing dot is ignored;
* PTR answers ``<container name>.<network name>``.

Every update is a few dict operations and is visible to the very next query: nothing is
cached.  A query costs O(number of labels + networks of the asking sandbox), independent
of the number of containers.  Not thread-safe: the engine and the server share cnmd's
event loop.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import NamedTuple, TypeVar

from cnm.errors import InvalidArgument

IPAddress = IPv4Address | IPv6Address
A = TypeVar("A", IPv4Address, IPv6Address)


class Upstream(NamedTuple):
    """A DNS server queries are forwarded to.  ``via_host_netns``: dialed from cnmd's own
    namespace (servers taken from the host's resolv.conf, so ``127.0.0.53`` works);
    otherwise from the container's namespace (``--dns`` servers, as Docker does)."""

    address: IPAddress
    port: int = 53
    via_host_netns: bool = False


@dataclass(frozen=True, slots=True)
class ResolverConfig:
    """How one sandbox's unanswered queries are forwarded.

    ``internal_only``: the sandbox has no way out (only ``--internal`` networks), so host
    upstreams are not used (Docker's proxyDNS=false); ``--dns`` ones still are.
    ``ndots_set``: the user chose ``ndots`` themselves; a single-label A/AAAA query that
    is not a container name then gets an empty answer instead of being forwarded, so the
    stub resolver goes on with its search domains (Docker's ``serveDNS``)."""

    upstreams: tuple[Upstream, ...] = ()
    internal_only: bool = False
    ndots_set: bool = False

    def usable_upstreams(self) -> tuple[Upstream, ...]:
        if not self.internal_only:
            return self.upstreams
        return tuple(u for u in self.upstreams if not u.via_host_netns)


_NO_CONFIG = ResolverConfig()


def normalize(name: str) -> str:
    """The key a name is indexed under: lower case, no trailing dot."""
    return name.rstrip(".").lower()


@dataclass(slots=True)
class _Endpoint:
    network_id: str
    network_name: str
    container_name: str
    names: tuple[str, ...]  # normalized, deduplicated, container name first
    address: IPv4Address | None
    address6: IPv6Address | None
    links: dict[str, str] = field(default_factory=dict)  # alias -> name (legacy --link)


@dataclass(slots=True)
class _Network:
    name: str
    # name -> {sandbox id -> endpoint}; insertion-ordered, O(1) add/remove
    by_name: dict[str, dict[str, _Endpoint]] = field(default_factory=dict)
    # address -> (sandbox id, "<container>.<network>") for PTR
    by_address: dict[IPAddress, tuple[str, str]] = field(default_factory=dict)
    endpoints: int = 0


class NameTable:
    """Names per network and the networks each sandbox is attached to (see module doc)."""

    def __init__(self, *, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._networks: dict[str, _Network] = {}  # network id -> names in it
        self._network_ids: dict[str, str] = {}  # normalized network name -> id
        # sandbox id -> {network id -> its endpoint}, in attach order
        self._sandboxes: dict[str, dict[str, _Endpoint]] = {}
        self._configs: dict[str, ResolverConfig] = {}
        # bumped by every change, so derived answers can tell they are stale (answer.py)
        self.generation = 0

    # -- updates (engine) --------------------------------------------------------------

    def set_endpoint(
        self,
        sandbox_id: str,
        network_id: str,
        network_name: str,
        container_name: str,
        names: Iterable[str],
        address: IPv4Address | None,
        *,
        address6: IPv6Address | None = None,
        links: Mapping[str, str] | None = None,
    ) -> None:
        """Publish (or replace, e.g. after a rename) the endpoint of ``sandbox_id`` on
        ``network_id``.  ``names`` are the container name, aliases, short id and hostname;
        ``container_name`` is always among them and gives the PTR answer.  ``links`` maps
        a legacy ``--link`` alias to the container name it stands for, seen only by this
        sandbox on this network."""
        if not sandbox_id or not network_id:
            raise InvalidArgument("a DNS record needs a sandbox id and a network id")
        if not container_name.strip("."):
            raise InvalidArgument("a DNS record needs a container name")
        self.remove_endpoint(sandbox_id, network_id)
        self.generation += 1
        ordered = dict.fromkeys(normalize(n) for n in (container_name, *names) if n.strip("."))
        endpoint = _Endpoint(
            network_id=network_id,
            network_name=network_name,
            container_name=container_name.lstrip("/"),
            names=tuple(ordered),
            address=address,
            address6=address6,
            links={normalize(k): normalize(v) for k, v in (links or {}).items()},
        )
        network = self._networks.get(network_id)
        if network is None:
            network = self._networks[network_id] = _Network(name=network_name)
            self._network_ids[normalize(network_name)] = network_id
        network.endpoints += 1
        for name in endpoint.names:
            network.by_name.setdefault(name, {})[sandbox_id] = endpoint
        ptr = f"{endpoint.container_name}.{network_name}"
        for addr in (address, address6):
            if addr is not None:
                network.by_address[addr] = (sandbox_id, ptr)
        self._sandboxes.setdefault(sandbox_id, {})[network_id] = endpoint

    def remove_endpoint(self, sandbox_id: str, network_id: str) -> None:
        """Withdraw the names of ``sandbox_id`` on ``network_id``; idempotent."""
        attached = self._sandboxes.get(sandbox_id)
        endpoint = attached.pop(network_id, None) if attached is not None else None
        if endpoint is None:
            return
        self.generation += 1
        if not attached:
            del self._sandboxes[sandbox_id]
        network = self._networks[network_id]
        for name in endpoint.names:
            holders = network.by_name.get(name)
            if holders is not None:
                holders.pop(sandbox_id, None)
                if not holders:
                    del network.by_name[name]
        for addr in (endpoint.address, endpoint.address6):
            # another sandbox may hold the address by now (a stale record was replaced)
            if addr is not None and network.by_address.get(addr, ("",))[0] == sandbox_id:
                del network.by_address[addr]
        network.endpoints -= 1
        if network.endpoints == 0:
            del self._networks[network_id]
            key = normalize(network.name)
            if self._network_ids.get(key) == network_id:
                del self._network_ids[key]

    def remove_sandbox(self, sandbox_id: str) -> None:
        """Withdraw every name of ``sandbox_id`` and forget its resolver config; idempotent."""
        for network_id in list(self._sandboxes.get(sandbox_id, ())):
            self.remove_endpoint(sandbox_id, network_id)
        self._configs.pop(sandbox_id, None)
        self.generation += 1

    def configure(
        self,
        sandbox_id: str,
        upstreams: Sequence[Upstream | tuple[object, ...]] = (),
        *,
        internal_only: bool = False,
        ndots_set: bool = False,
    ) -> None:
        """Set how ``sandbox_id``'s other queries are forwarded (see ``ResolverConfig``).
        Upstreams may be given as ``(address, port, via_host_netns)`` tuples."""
        parsed = tuple(_upstream(u) for u in upstreams)
        self._configs[sandbox_id] = ResolverConfig(parsed, internal_only, ndots_set)
        self.generation += 1

    # -- queries (server) --------------------------------------------------------------

    def config(self, sandbox_id: str) -> ResolverConfig:
        return self._configs.get(sandbox_id, _NO_CONFIG)

    def knows_sandbox(self, sandbox_id: str) -> bool:
        return sandbox_id in self._sandboxes

    def lookup_a(self, sandbox_id: str, qname: str) -> list[IPv4Address] | None:
        """IPv4 addresses of ``qname`` as seen from ``sandbox_id``, shuffled.  None: not a
        container name (forward it); []: the name exists without an IPv4 address."""
        found = self._resolve(sandbox_id, qname)
        if found is None:
            return None
        return self._shuffled([e.address for e in found if e.address is not None])

    def lookup_aaaa(self, sandbox_id: str, qname: str) -> list[IPv6Address] | None:
        """As ``lookup_a`` for IPv6: [] (an empty NOERROR, not forwarded) when the name
        exists with IPv4 only, as Docker answers."""
        found = self._resolve(sandbox_id, qname)
        if found is None:
            return None
        return self._shuffled([e.address6 for e in found if e.address6 is not None])

    def lookup_ptr(self, sandbox_id: str, address: IPAddress | str) -> str | None:
        """``<container name>.<network name>`` for an address on one of the networks
        ``sandbox_id`` is attached to; None otherwise (forward it)."""
        try:
            addr = address if not isinstance(address, str) else ip_address(address)
        except ValueError:
            return None
        for network_id in self._sandboxes.get(sandbox_id, ()):
            held = self._networks[network_id].by_address.get(addr)
            if held is not None:
                return held[1]
        return None

    def _resolve(self, sandbox_id: str, qname: str) -> list[_Endpoint] | None:
        attached = self._sandboxes.get(sandbox_id)
        if not attached:
            return None
        name = normalize(qname)
        if not name:
            return None
        found = self._in_networks(attached, name, attached)
        if found is not None:
            return found
        # "a.b.c": a.b in network c, then a in network b.c
        labels = name.split(".")
        for cut in range(len(labels) - 1, 0, -1):
            network_id = self._network_ids.get(".".join(labels[cut:]))
            if network_id is None or network_id not in attached:
                continue
            found = self._in_networks(attached, ".".join(labels[:cut]), (network_id,))
            if found is not None:
                return found
        return None

    def _in_networks(
        self, attached: dict[str, _Endpoint], name: str, network_ids: Iterable[str]
    ) -> list[_Endpoint] | None:
        """The endpoints called ``name`` in the first of ``network_ids`` that has it; the
        asking sandbox's ``--link`` aliases on that network are tried first."""
        for network_id in network_ids:
            target = attached[network_id].links.get(name, name)
            holders = self._networks[network_id].by_name.get(target)
            if holders:
                return list(holders.values())
        return None

    def _shuffled(self, addresses: list[A]) -> list[A]:
        if len(addresses) > 1:
            self._rng.shuffle(addresses)  # Docker's only load spreading for shared aliases
        return addresses


def _upstream(value: Upstream | tuple[object, ...]) -> Upstream:
    if isinstance(value, Upstream):
        return value
    try:
        address, *rest = value
        port = int(rest[0]) if rest else 53  # type: ignore[call-overload]
        via_host = bool(rest[1]) if len(rest) > 1 else False
        parsed = ip_address(str(address))
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"invalid DNS upstream {value!r}: {exc}") from exc
    if not 0 < port < 65536:
        raise InvalidArgument(f"invalid DNS upstream port {port} for {parsed}")
    return Upstream(parsed, port, via_host)
