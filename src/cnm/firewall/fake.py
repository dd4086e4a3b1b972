"""An in-memory ``Firewall`` for engine and driver unit tests: records every call and
holds the networks and published ports a real backend would have installed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cnm.errors import FirewallError
from cnm.firewall.api import BridgeRules, PortRule


def _overlap(a: PortRule, b: PortRule) -> bool:
    """Whether two rules claim a common (address, protocol, port), as the kernel's maps
    would refuse (a wildcard and a specific address live in different maps)."""
    return (
        a.protocol == b.protocol
        and a.host_ip == b.host_ip
        and a.host_port <= b.host_port_end
        and b.host_port <= a.host_port_end
    )


@dataclass
class FakeFirewall:
    """Behaves like a backend: ``networks`` and ``ports`` (endpoint id -> its rules) are
    what the kernel would hold.

    ``calls`` lists ``(method, argument)`` in order.  Set ``fail_on`` to a method name
    (``"add_network"``, ...) to make the next such call raise ``FirewallError`` without
    changing anything, for testing callers' undo paths."""

    networks: dict[str, BridgeRules] = field(default_factory=dict)
    ports: dict[str, tuple[PortRule, ...]] = field(default_factory=dict)
    calls: list[tuple[str, object]] = field(default_factory=list)
    is_setup: bool = False
    fail_on: str | None = None

    def _enter(self, method: str, arg: object = None) -> None:
        self.calls.append((method, arg))
        if self.fail_on == method:
            self.fail_on = None
            raise FirewallError(f"nft: injected failure in {method}")

    async def setup(self) -> None:
        self._enter("setup")
        self.is_setup = True

    async def sync(self, networks: Sequence[BridgeRules], ports: Sequence[PortRule] = ()) -> None:
        self._enter("sync", (tuple(networks), tuple(ports)))
        bridges: dict[str, str] = {}
        for rules in networks:
            if bridges.setdefault(rules.bridge, rules.owner) != rules.owner:
                raise FirewallError(f"nft: bridge {rules.bridge} claimed by two networks")
        by_owner: dict[str, list[PortRule]] = {}
        for rule in ports:
            for other in ports:
                if other.owner != rule.owner and _overlap(rule, other):
                    raise FirewallError(f"nft: Could not process rule: File exists (port {rule.host_port})")
            by_owner.setdefault(rule.owner, []).append(rule)
        self.networks = {n.owner: n for n in networks}
        self.ports = {k: tuple(v) for k, v in by_owner.items()}
        self.is_setup = True  # a real sync re-makes the skeleton too

    async def add_network(self, rules: BridgeRules) -> None:
        self._enter("add_network", rules)
        if not self.is_setup:
            raise FirewallError("nft: Could not process rule: No such file or directory (table ip cnm)")
        for other in self.networks.values():
            if other.bridge == rules.bridge and other.owner != rules.owner:
                raise FirewallError(f"nft: Could not process rule: File exists (bridge {rules.bridge})")
        self.networks[rules.owner] = rules

    async def remove_network(self, owner: str) -> None:
        self._enter("remove_network", owner)
        self.networks.pop(owner, None)

    async def add_ports(self, owner: str, rules: Sequence[PortRule]) -> None:
        """Replace ``owner``'s ports; refused (nothing changed) when a port is another
        endpoint's or the table is missing."""
        self._enter("add_ports", (owner, tuple(rules)))
        if not self.is_setup:
            raise FirewallError("nft: Could not process rule: No such file or directory (table ip cnm)")
        for rule in rules:
            if rule.owner != owner:
                raise FirewallError(f"add_ports({owner}) was given ports of another endpoint")
            for other_owner, others in self.ports.items():
                if other_owner != owner and any(_overlap(rule, o) for o in others):
                    raise FirewallError(f"nft: Could not process rule: File exists (port {rule.host_port})")
        if rules:
            self.ports[owner] = tuple(rules)
        else:
            self.ports.pop(owner, None)

    async def remove_ports(self, owner: str) -> None:
        self._enter("remove_ports", owner)
        self.ports.pop(owner, None)

    async def teardown(self) -> None:
        self._enter("teardown")
        self.networks.clear()
        self.ports.clear()
        self.is_setup = False

    async def healthy(self) -> bool:
        self._enter("healthy")
        return self.is_setup

    def flush_outside(self) -> None:
        """Simulate someone running ``nft flush ruleset``."""
        self.networks.clear()
        self.ports.clear()
        self.is_setup = False
