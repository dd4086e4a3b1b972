"""Published ports of an endpoint: host ports held, firewall rules, and the userland proxy.

One ``Publisher`` per daemon.  Which endpoint publishes is the engine's rule (Docker's):
the one carrying the container's default route; containers only on internal networks, in
``host`` or ``none`` mode publish nothing.

Both families (Docker 27+): a port without a host address binds ``0.0.0.0`` and ``::``
with one host port.  The kernel's NAT serves a host binding of the container's own family
(IPv4 always; IPv6 when the endpoint has an IPv6 address).  cnmd's proxy serves what NAT
cannot: every IPv6 host binding (``[::1]`` cannot be DNATed; a container without an IPv6
address is reached on its IPv4 one), and with ``--userland-proxy`` everything.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import replace

from cnm.errors import CnmError
from cnm.firewall.api import Firewall, PortRule
from cnm.model.endpoint import EndpointRecord
from cnm.model.network import NetworkRecord
from cnm.model.ports import ANY, ANY6, LOOPBACK6, HostIP, PortMapping, PortRequest, host_ip_order
from cnm.portmap.allocator import PortAllocator, PortConflict, Reservation
from cnm.portmap.proxy import UserlandProxy

log = logging.getLogger("cnm.engine")


def _rule_target(endpoint: EndpointRecord, m: PortMapping) -> HostIP | None:
    """The container address the kernel's NAT sends ``m`` to, or None when NAT cannot
    serve it: an IPv6 host binding of an endpoint without an IPv6 address, or ``[::1]``."""
    if m.host_ip.version == 4:
        return endpoint.address.ip if endpoint.address is not None else None
    if endpoint.address6 is None or m.host_ip == LOOPBACK6:
        return None
    return endpoint.address6.ip


def port_rules(
    network: NetworkRecord, endpoint: EndpointRecord, mappings: Iterable[PortMapping]
) -> list[PortRule]:
    """Firewall rules for ``mappings``, one family per rule (an IPv6 host binding becomes
    a rule only when the endpoint has an IPv6 address, never for ``[::1]``), consecutive
    ports with the same offset merged into one rule (``-p 8000-8010:8000-8010`` arrives as
    eleven bindings, is one rule)."""
    rules: list[PortRule] = []
    ordered = sorted(mappings, key=lambda m: (m.protocol, host_ip_order(m.host_ip), m.host_port))
    for m in ordered:
        target = _rule_target(endpoint, m)
        if target is None:
            continue
        host_ip: HostIP | None = None if m.host_ip.is_unspecified else m.host_ip
        last = rules[-1] if rules else None
        if (
            last is not None
            and last.protocol == m.protocol
            and last.host_ip == host_ip
            and last.container_ip == target
            and m.host_port == last.host_port_end + 1
            and m.container_port - m.host_port == last.container_port - last.host_port
        ):
            rules[-1] = replace(last, host_port_end=m.host_port)
            continue
        rules.append(
            PortRule(
                owner=endpoint.id,
                network=network.id,
                bridge=network.bridge_name,
                protocol=m.protocol,
                host_ip=host_ip,
                host_port=m.host_port,
                host_port_end=m.host_port,
                container_ip=target,
                container_port=m.container_port,
                label=f"{endpoint.name} on {network.name}",
            )
        )
    return rules


def default_host_ip(
    network: NetworkRecord, requests: Sequence[PortRequest], *, ipv6: bool = True
) -> list[list[PortRequest]]:
    """``requests`` with every missing host IP filled in, as Docker's bridge driver does,
    in groups that must share one host port: without ``network``'s
    ``com.docker.network.bridge.host_binding_ipv4`` a request binds ``0.0.0.0`` and (when
    ``ipv6``: the host can listen on IPv6) ``::``, one group of two; when the option names
    an address (``127.0.0.1`` keeps ``-p 80`` local) only that one.  A request with a host
    address is a group of its own."""
    default = network.host_binding_ipv4
    groups: list[list[PortRequest]] = []
    for r in requests:
        if r.host_ip is not None:
            groups.append([r])
        elif default is not None:
            groups.append([replace(r, host_ip=default)])
        elif ipv6:
            groups.append([replace(r, host_ip=ANY), replace(r, host_ip=ANY6)])
        else:
            groups.append([replace(r, host_ip=ANY)])
    return groups


class Publisher:
    """Holds host ports, installs their NAT rules and serves what NAT cannot.  ``proxy``
    serves the IPv6 host bindings always and, when ``userland_proxy``, every binding
    (Docker's ``--userland-proxy``); without a proxy only NAT serves."""

    def __init__(
        self,
        allocator: PortAllocator,
        firewall: Firewall,
        proxy: UserlandProxy | None = None,
        *,
        userland_proxy: bool = True,
    ) -> None:
        self._allocator = allocator
        self._firewall = firewall
        self._proxy = proxy
        self._proxy_all = userland_proxy

    def _proxied(self, held: Sequence[Reservation]) -> list[Reservation]:
        """The reservations the proxy serves (every IPv6 one; all with ``userland_proxy``)."""
        return [r for r in held if self._proxy_all or r.mapping.host_ip.version == 6]

    async def _serve(self, endpoint: EndpointRecord, held: Sequence[Reservation]) -> None:
        """Start the proxy for the bindings it serves: IPv6 ones to the endpoint's IPv6
        address when it has one, everything else to its IPv4 address."""
        served = self._proxied(held)
        if self._proxy is None or endpoint.address is None or not served:
            return
        address6 = endpoint.address6.ip if endpoint.address6 is not None else None
        await self._proxy.add(endpoint.id, served, endpoint.address.ip, address6)

    async def publish(
        self,
        stack: AsyncExitStack,
        network: NetworkRecord,
        endpoint: EndpointRecord,
        requests: Sequence[PortRequest],
    ) -> EndpointRecord:
        """Hold the host ports, install the rules (and proxy listeners); undo on ``stack``.
        A request without a host IP binds to ``network``'s default binding addresses
        (``0.0.0.0`` and ``::`` with one port).  Returns the endpoint with its ``ports``."""
        if not requests or endpoint.address is None:
            return endpoint
        groups = default_host_ip(network, requests, ipv6=self._allocator.ipv6)
        try:
            held = self._allocator.reserve_groups(endpoint.id, groups, endpoint.address.ip)
        except PortConflict as exc:  # Docker's wording around the allocator's message
            raise PortConflict(
                f"driver failed programming external connectivity on endpoint {endpoint.name} "
                f"({endpoint.id[:12]}): {exc.message}"
            ) from exc
        stack.callback(self._allocator.release, endpoint.id)
        mappings = tuple(r.mapping for r in held)
        await self._firewall.add_ports(endpoint.id, port_rules(network, endpoint, mappings))
        stack.push_async_callback(self._firewall.remove_ports, endpoint.id)
        if self._proxy is not None and self._proxied(held):
            # registered first: a listener started before a failure is stopped too
            stack.push_async_callback(self._proxy.remove, endpoint.id)
            await self._serve(endpoint, held)
        return replace(endpoint, ports=mappings)

    async def unpublish(self, endpoint: EndpointRecord) -> list[BaseException]:
        """Idempotent; returns errors instead of stopping at the first."""
        if not endpoint.ports:
            return []
        errors: list[BaseException] = []
        if self._proxy is not None:  # stop serving first, then the rules, then the ports
            try:
                await self._proxy.remove(endpoint.id)
            except CnmError as exc:
                errors.append(exc)
        try:
            await self._firewall.remove_ports(endpoint.id)
        except CnmError as exc:
            errors.append(exc)
        self._allocator.release(endpoint.id)
        return errors

    async def restore(self, endpoint: EndpointRecord) -> None:
        """After a daemon restart: hold the recorded ports again and restart their proxy
        listeners (the rules come back with the firewall's sync)."""
        if not endpoint.ports or endpoint.address is None:
            return
        held, failed = self._allocator.restore(endpoint.id, endpoint.ports)
        for mapping, exc in failed:
            log.error(
                "cannot hold %s/%s again for %s: %s", mapping.host_port, mapping.protocol, endpoint.name, exc
            )
        await self._serve(endpoint, held)

    @staticmethod
    def rules(pairs: Iterable[tuple[NetworkRecord, EndpointRecord]]) -> list[PortRule]:
        return [rule for net, ep in pairs for rule in port_rules(net, ep, ep.ports)]

    async def close(self) -> None:
        if self._proxy is not None:
            await self._proxy.close()
        self._allocator.close()
