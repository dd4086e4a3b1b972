"""An in-memory ``Firewall`` for engine and driver unit tests: records every call and
holds the networks a real backend would have installed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cnm.errors import FirewallError
from cnm.firewall.api import BridgeRules


@dataclass
class FakeFirewall:
    """Behaves like a backend: ``networks`` is what the kernel would hold.

    ``calls`` lists ``(method, argument)`` in order.  Set ``fail_on`` to a method name
    (``"add_network"``, ...) to make the next such call raise ``FirewallError`` without
    changing anything, for testing callers' undo paths."""

    networks: dict[str, BridgeRules] = field(default_factory=dict)
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

    async def sync(self, networks: Sequence[BridgeRules]) -> None:
        self._enter("sync", tuple(networks))
        bridges: dict[str, str] = {}
        for rules in networks:
            if bridges.setdefault(rules.bridge, rules.owner) != rules.owner:
                raise FirewallError(f"nft: bridge {rules.bridge} claimed by two networks")
        self.networks = {n.owner: n for n in networks}
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

    async def teardown(self) -> None:
        self._enter("teardown")
        self.networks.clear()
        self.is_setup = False

    async def healthy(self) -> bool:
        self._enter("healthy")
        return self.is_setup

    def flush_outside(self) -> None:
        """Simulate someone running ``nft flush ruleset``."""
        self.networks.clear()
        self.is_setup = False
