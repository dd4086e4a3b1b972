"""Published ports of an endpoint: host ports held, firewall rules, and the userland proxy.

One ``Publisher`` per daemon.  Which endpoint publishes is the engine's rule (Docker's):
the one carrying the container's default route; containers only on internal networks, in
``host`` or ``none`` mode publish nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import replace
from ipaddress import IPv4Address

from cnm.errors import CnmError
from cnm.firewall.api import Firewall, PortRule
from cnm.model.endpoint import EndpointRecord
from cnm.model.network import NetworkRecord
from cnm.model.ports import ANY, PortMapping, PortRequest
from cnm.portmap.allocator import PortAllocator, PortConflict
from cnm.portmap.proxy import UserlandProxy

log = logging.getLogger("cnm.engine")


def port_rules(
    network: NetworkRecord, endpoint: EndpointRecord, mappings: Iterable[PortMapping]
) -> list[PortRule]:
    """Firewall rules for ``mappings``, consecutive ports with the same offset merged into
    one rule (``-p 8000-8010:8000-8010`` arrives as eleven bindings, is one rule)."""
    if endpoint.address is None:
        return []
    rules: list[PortRule] = []
    ordered = sorted(mappings, key=lambda m: (m.protocol, m.host_ip, m.host_port))
    for m in ordered:
        host_ip: IPv4Address | None = None if m.host_ip == ANY else m.host_ip
        last = rules[-1] if rules else None
        if (
            last is not None
            and last.protocol == m.protocol
            and last.host_ip == host_ip
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
                container_ip=endpoint.address.ip,
                container_port=m.container_port,
                label=f"{endpoint.name} on {network.name}",
            )
        )
    return rules


def default_host_ip(network: NetworkRecord, requests: Sequence[PortRequest]) -> list[PortRequest]:
    """``requests`` with every missing host IP replaced by ``network``'s default binding
    address (``com.docker.network.bridge.host_binding_ipv4``, else 0.0.0.0), as Docker's
    bridge driver does: the option keeps ``-p 80`` local when it names 127.0.0.1."""
    default = network.host_binding_ipv4 or ANY
    return [r if r.host_ip is not None else replace(r, host_ip=default) for r in requests]


class Publisher:
    def __init__(
        self, allocator: PortAllocator, firewall: Firewall, proxy: UserlandProxy | None = None
    ) -> None:
        self._allocator = allocator
        self._firewall = firewall
        self._proxy = proxy

    async def publish(
        self,
        stack: AsyncExitStack,
        network: NetworkRecord,
        endpoint: EndpointRecord,
        requests: Sequence[PortRequest],
    ) -> EndpointRecord:
        """Hold the host ports, install the rules (and proxy listeners); undo on ``stack``.
        A request without a host IP binds to ``network``'s default binding address.
        Returns the endpoint with its ``ports``."""
        if not requests or endpoint.address is None:
            return endpoint
        requests = default_host_ip(network, requests)
        try:
            held = self._allocator.reserve(endpoint.id, requests, endpoint.address.ip)
        except PortConflict as exc:  # Docker's wording around the allocator's message
            raise PortConflict(
                f"driver failed programming external connectivity on endpoint {endpoint.name} "
                f"({endpoint.id[:12]}): {exc.message}"
            ) from exc
        stack.callback(self._allocator.release, endpoint.id)
        mappings = tuple(r.mapping for r in held)
        await self._firewall.add_ports(endpoint.id, port_rules(network, endpoint, mappings))
        stack.push_async_callback(self._firewall.remove_ports, endpoint.id)
        if self._proxy is not None:
            await self._proxy.add(endpoint.id, held, endpoint.address.ip)
            stack.push_async_callback(self._proxy.remove, endpoint.id)
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
        if self._proxy is not None and held:
            await self._proxy.add(endpoint.id, held, endpoint.address.ip)

    @staticmethod
    def rules(pairs: Iterable[tuple[NetworkRecord, EndpointRecord]]) -> list[PortRule]:
        return [rule for net, ep in pairs for rule in port_rules(net, ep, ep.ports)]

    async def close(self) -> None:
        if self._proxy is not None:
            await self._proxy.close()
        self._allocator.close()
