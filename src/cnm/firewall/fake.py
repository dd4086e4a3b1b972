"""An in-memory ``Firewall`` and ``SpoofGuard`` for engine and driver unit tests: record
every call and hold what a real backend / guard would have installed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cnm.errors import Conflict, FirewallError
from cnm.firewall.api import BridgeRules, PortGuard, PortRule
from cnm.firewall.guard_scopes import GuardScopes


def _overlap(a: PortRule, b: PortRule) -> bool:
    """Whether two rules claim a common (address, protocol, port), as the kernel's maps
    would refuse (a wildcard and a specific address live in different maps; each family
    has its own)."""
    return (
        a.protocol == b.protocol
        and a.container_ip.version == b.container_ip.version
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
    vnis: dict[str, int] = field(default_factory=dict)  # encrypted overlay network -> VNI
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

    async def add_encrypted_vni(self, owner: str, vni: int) -> None:
        self._enter("add_encrypted_vni", (owner, vni))
        if not self.is_setup:
            raise FirewallError("nft: Could not process rule: No such file or directory (table ip cnm)")
        self.vnis[owner] = vni

    async def remove_encrypted_vni(self, owner: str, vni: int) -> None:
        self._enter("remove_encrypted_vni", (owner, vni))
        self.vnis.pop(owner, None)

    async def teardown(self) -> None:
        self._enter("teardown")
        self.networks.clear()
        self.ports.clear()
        self.vnis.clear()
        self.is_setup = False

    async def healthy(self) -> bool:
        self._enter("healthy")
        return self.is_setup

    def flush_outside(self) -> None:
        """Simulate someone running ``nft flush ruleset``."""
        self.networks.clear()
        self.ports.clear()
        self.is_setup = False


@dataclass
class FakeSpoofGuard:
    """Behaves like the bridge-port guard: ``ports`` (endpoint id -> its guard) is what
    the kernel would hold.  ``calls`` and ``fail_on`` work as in ``FakeFirewall``;
    ``observe``, when set, is called with each call's name before it does anything (to
    check what the kernel looked like at that moment)."""

    ports: dict[str, PortGuard] = field(default_factory=dict)
    calls: list[tuple[str, object]] = field(default_factory=list)
    is_setup: bool = False
    fail_on: str | None = None
    observe: Callable[[str], None] | None = None
    # the drivers whose scoped syncs are awaited at start-up (as NftBridgeGuard's scopes)
    scopes: tuple[str, ...] = ()
    _remembered: dict[str, PortGuard] = field(default_factory=dict)
    _scoping: GuardScopes = field(init=False)

    def __post_init__(self) -> None:
        self._scoping = GuardScopes(self.scopes)

    def _enter(self, method: str, arg: object = None) -> None:
        self.calls.append((method, arg))
        if self.observe is not None:
            self.observe(method)
        if self.fail_on == method:
            self.fail_on = None
            raise FirewallError(f"nft: injected failure in {method}")

    async def setup(self) -> None:
        self._enter("setup")
        self.is_setup = True

    async def sync(self, guards: Sequence[PortGuard], scope: str | None = None) -> None:
        self._enter("sync", tuple(guards))
        _check_ports(guards)
        wanted = list(guards) if scope is None else self._scoping.wanted(scope, guards, self._remembered)
        if wanted is None:
            return
        _check_ports(wanted)
        self.ports = {g.owner: g for g in wanted}
        self._remembered = dict(self.ports)
        self.is_setup = True
        self._scoping.applied(None, wanted)
        if scope is not None:
            self._scoping.applied(scope, wanted, guards)

    async def add_port(self, guard: PortGuard) -> None:
        self._enter("add_port", guard)
        for other in self._remembered.values():
            if other.port == guard.port and other.owner != guard.owner:
                raise Conflict(f"port {guard.port} is already guarded for endpoint {other.owner[:12]}")
        self._remembered[guard.owner] = guard
        if not self.is_setup:  # the real guard re-installs what it remembers
            self.ports = dict(self._remembered)
            self.is_setup = True
        self.ports[guard.owner] = guard

    async def remove_port(self, owner: str) -> None:
        self._enter("remove_port", owner)
        self.ports.pop(owner, None)
        self._remembered.pop(owner, None)
        self._scoping.forget(owner)

    async def remove_network(self, network: str) -> None:
        self._enter("remove_network", network)
        for owner in [o for o, g in self._remembered.items() if g.network == network]:
            self.ports.pop(owner, None)
            self._remembered.pop(owner, None)

    async def teardown(self) -> None:
        self._enter("teardown")
        self.ports.clear()
        self._remembered.clear()
        self.is_setup = False

    async def healthy(self) -> bool:
        self._enter("healthy")
        return self.is_setup

    async def heal(self) -> bool:
        self._enter("heal")
        if self.is_setup:
            return False
        self.ports = dict(self._remembered)
        self.is_setup = True
        return True

    def flush_outside(self) -> None:
        """Simulate someone running ``nft flush ruleset``."""
        self.ports.clear()
        self.is_setup = False


def _check_ports(guards: Sequence[PortGuard]) -> None:
    """FirewallError when two endpoints claim one port (as nft refuses it)."""
    owners: dict[str, str] = {}
    for guard in guards:
        if owners.setdefault(guard.port, guard.owner) != guard.owner:
            raise FirewallError(f"port {guard.port} claimed by two endpoints")
