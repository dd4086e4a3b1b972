"""The anti-spoofing guard of cnm's bridge ports: scripts from ``render_bridge`` applied
through libnftables, in the table ``bridge cnm``.

It runs beside whichever backend does the L3 rules (nftables or iptables): it is what
ebtables would do, and the ``bridge`` family is there whenever nftables is.  Like the
nftables backend it runs inline on the event loop (~25 µs per small transaction) and acts
on the network namespace of the thread that constructed it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence

from cnm.errors import Conflict, FirewallError
from cnm.firewall import render_bridge
from cnm.firewall.api import PortGuard
from cnm.firewall.common import comment_owner, owner_comment
from cnm.firewall.guard_scopes import GuardScopes
from cnm.firewall.libnft import Session
from cnm.firewall.nft_elements import ElementChange, ElementWriter
from cnm.firewall.render_bridge import GuardElement
from cnm.kernel.cmdlog import log_script

log = logging.getLogger(__name__)


class NftBridgeGuard:
    """cnm's anti-spoofing rules (see ``render_bridge`` for the layout).

    Keeps, in memory, the guard of every port it installed: removals are one small
    transaction, and ``heal`` re-installs everything after an outside flush without asking
    anyone.  After a restart each driver calls ``sync`` with its own ``scope`` (one of
    ``scopes``; see ``guard_scopes``): the union is installed once all have reported,
    which refills that memory; a removal before it reads the endpoint's elements back
    from the kernel by their tag."""

    def __init__(self, table: str = render_bridge.TABLE, scopes: Collection[str] = ()) -> None:
        self.table = table
        self._scopes = GuardScopes(scopes)  # which driver synced which ports
        self._nft = Session()  # applies scripts, reads cnm's table back
        # a port's elements, added and deleted without libnftables' cache fill (nft_elements)
        self._writer = ElementWriter()
        self._guards: dict[str, PortGuard] = {}  # endpoint id -> its guard
        self._elements: dict[str, list[GuardElement]] = {}  # endpoint id -> its elements
        self._port_owner: dict[str, str] = {}  # port -> endpoint id (O(1) clash checks)
        # True once sync/teardown made the memory match the kernel: an endpoint absent
        # from it then has no elements (no need to read the sets)
        self._known = False

    # -- SpoofGuard protocol ------------------------------------------------------------

    async def setup(self) -> None:
        """Create the table, sets and chains if missing and rewrite the fixed rules;
        elements are kept."""
        self._nft.apply(render_bridge.render_setup(self.table))

    async def sync(self, guards: Sequence[PortGuard], scope: str | None = None) -> None:
        """Make the table guard exactly ``guards`` (skeleton re-made, every set refilled),
        in one transaction; with a ``scope``, exactly ``guards`` among that scope's ports
        and every other port as it is (``GuardScopes``: nothing is written until each
        declared scope has reported once since the start)."""
        elements = render_bridge.elements_by_owner(guards)  # validates before anything
        if scope is None:
            self._install(guards, elements)
            return
        wanted = self._scopes.wanted(scope, guards, self._guards)
        if wanted is None:
            log.debug("anti-spoofing: %d ports of %s wait for the other drivers", len(guards), scope)
            return
        self._install(wanted, render_bridge.elements_by_owner(wanted))
        self._scopes.applied(scope, wanted, guards)

    def _install(self, guards: Sequence[PortGuard], elements: dict[str, list[GuardElement]]) -> None:
        """The table re-made to guard exactly ``guards`` (``elements``: theirs)."""
        self._nft.apply(render_bridge.render_sync(guards, self.table, elements))
        self._remember_all(guards, elements)

    async def add_port(self, guard: PortGuard) -> None:
        """Guard ``guard.port`` (replacing what its endpoint had) in one transaction whose
        size depends only on this port.  When the table is gone (flushed from outside, and
        not yet healed) everything remembered is re-installed with it."""
        new = render_bridge.guard_elements(guard)
        other = self._port_owner.get(guard.port, guard.owner)
        if other != guard.owner:
            raise Conflict(f"port {guard.port} is already guarded for endpoint {other[:12]}")
        old = self._elements.get(guard.owner, [])
        try:
            self._apply_elements(_port_changes(guard.owner, old, new))
        except FirewallError as exc:
            if self._nft.list_json(f"table {render_bridge.FAMILY} {self.table}", terse=True) is not None:
                raise FirewallError(
                    f"{exc} (guarding port {guard.port} of endpoint {guard.owner[:12]})"
                ) from exc
            log.warning("cnm's anti-spoofing table was removed from outside; putting it back")
            others = [g for owner, g in self._guards.items() if owner != guard.owner]
            await self.sync([*others, guard])
            return
        self._remember(guard, new)

    async def remove_port(self, owner: str) -> None:
        """Delete endpoint ``owner``'s elements; idempotent (absent table or elements are
        success)."""
        elements = self._elements.get(owner)
        if elements is None and not self._known:
            elements = self._read_elements(owner)
        if elements:
            try:
                self._apply_elements(_drop_changes(elements))
            except FirewallError:
                if self._nft.list_json(f"table {render_bridge.FAMILY} {self.table}", terse=True) is not None:
                    raise
        self._forget(owner)

    async def remove_network(self, network: str) -> None:
        """Delete the elements of every port of network ``network`` this instance knows."""
        owners = [owner for owner, g in self._guards.items() if g.network == network]
        elements = [e for owner in owners for e in self._elements.get(owner, [])]
        if elements:
            try:
                self._nft.apply(render_bridge.render_drop(elements, self.table))
            except FirewallError:
                if self._nft.list_json(f"table {render_bridge.FAMILY} {self.table}", terse=True) is not None:
                    raise
        for owner in owners:
            self._forget(owner)

    async def teardown(self) -> None:
        """Delete cnm's table; idempotent."""
        self._nft.apply(render_bridge.render_teardown(self.table))
        self._remember_all((), {})

    async def healthy(self) -> bool:
        """True when the table, both sets, both chains and the fixed rules are present
        (reads only cnm's table, tersely)."""
        objects = self._nft.list_json(f"table {render_bridge.FAMILY} {self.table}", terse=True)
        if objects is None:
            return False
        chains = {o["chain"]["name"] for o in objects if "chain" in o}
        sets = {o["set"]["name"] for o in objects if "set" in o}
        rules: dict[str, int] = {}
        for o in objects:
            if "rule" in o:
                rules[o["rule"]["chain"]] = rules.get(o["rule"]["chain"], 0) + 1
        if not set(render_bridge.CHAINS) <= chains or not set(render_bridge.SETS) <= sets:
            return False
        return all(rules.get(c, 0) == n for c, n in render_bridge.base_rule_counts().items())

    async def heal(self) -> bool:
        """Re-install every remembered guard if the skeleton was damaged; True when it
        had to."""
        if await self.healthy():
            return False
        log.warning("cnm's anti-spoofing rules were removed from outside; putting them back")
        await self.sync(list(self._guards.values()))
        return True

    # -- helpers ------------------------------------------------------------------------

    def _apply_elements(self, changes: list[ElementChange]) -> None:
        """One transaction of element changes, logged as its ``nft`` script."""
        log_script("nft -f -", "\n".join(c.line(self.table, render_bridge.FAMILY) for c in changes) + "\n")
        self._writer.apply(self.table, changes)

    def installed(self) -> dict[str, PortGuard]:
        """endpoint id -> the guard this instance installed (for reconcile/debug)."""
        return dict(self._guards)

    def _remember(self, guard: PortGuard, elements: list[GuardElement]) -> None:
        self._forget(guard.owner)
        self._guards[guard.owner] = guard
        self._elements[guard.owner] = elements
        self._port_owner[guard.port] = guard.owner

    def _remember_all(self, guards: Sequence[PortGuard], elements: dict[str, list[GuardElement]]) -> None:
        self._guards = {g.owner: g for g in guards}
        self._elements = dict(elements)
        self._port_owner = {g.port: g.owner for g in guards}
        self._known = True
        self._scopes.applied(None, guards)

    def _forget(self, owner: str) -> None:
        guard = self._guards.pop(owner, None)
        self._elements.pop(owner, None)
        self._scopes.forget(owner)
        if guard is not None and self._port_owner.get(guard.port) == owner:
            del self._port_owner[guard.port]

    def _read_elements(self, owner: str) -> list[GuardElement]:
        """Endpoint ``owner``'s elements as the kernel holds them (by their tag); none
        when cnm's table is absent."""
        found: list[GuardElement] = []
        for name in render_bridge.SETS:
            objects = self._nft.list_json(f"set {render_bridge.FAMILY} {self.table} {name}", terse=False)
            for obj in objects or []:
                for item in obj.get("set", {}).get("elem", []):
                    elem = item.get("elem", {}) if isinstance(item, dict) else {}
                    if comment_owner(elem.get("comment", "")) == owner:
                        found.append(GuardElement(name, render_bridge.key_from_json(elem["val"])))
        return found


def _drop_changes(elements: Sequence[GuardElement]) -> list[ElementChange]:
    """``render_bridge.drop_lines``: each element deleted whether present or not."""
    changes: list[ElementChange] = []
    for e in elements:
        changes += [ElementChange("add", e.set, e.key), ElementChange("delete", e.set, e.key)]
    return changes


def _port_changes(
    owner: str, old: Sequence[GuardElement], new: Sequence[GuardElement]
) -> list[ElementChange]:
    """``render_bridge.port_lines``: ``old`` dropped, ``new`` added with the owner's tag."""
    return _drop_changes(old) + [ElementChange("add", e.set, e.key, owner_comment(owner)) for e in new]
