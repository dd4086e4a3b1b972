"""Which driver guards which ports: the bookkeeping of a ``SpoofGuard``'s scoped ``sync``.

Several drivers (bridge, overlay) guard their ports in one table, and each reconciles its
own ports at start-up with ``sync(guards, scope=<driver>)``.  A scoped sync must never
drop another driver's ports, and right after a restart nobody remembers whose ports the
kernel holds.  So:

- until every declared scope has reported once, a scoped sync only records its guards
  and the kernel is left as it is (what the previous run installed keeps guarding);
- the report that completes the set makes the kernel guard exactly the union, in one
  transaction (stale ports of every scope go then);
- after that, a scoped sync replaces the ports that scope named before and keeps every
  other port (another scope's, or one added since by ``add_port``).

With no declared scope (one driver) the first scoped sync is applied at once.  The guard
keeps one of these and asks it what to install; this module does no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from cnm.firewall.api import PortGuard


class GuardScopes:
    """The scopes a guard waits for at start-up and, once settled, which scope named
    which endpoint."""

    def __init__(self, scopes: Collection[str] = ()) -> None:
        self._expected = frozenset(scopes)
        self._reported: dict[str, list[PortGuard]] = {}
        self._settled = False
        self._scope_of: dict[str, str] = {}  # endpoint id -> the scope that synced it

    def wanted(
        self, scope: str, guards: Sequence[PortGuard], current: Mapping[str, PortGuard]
    ) -> list[PortGuard] | None:
        """What the kernel should guard after scope ``scope`` synced ``guards``, given
        ``current`` (endpoint id -> guard the caller remembers); None: nothing to apply
        yet (other scopes have not reported since the start)."""
        if not self._settled:
            self._reported[scope] = list(guards)
            if not self._expected <= self._reported.keys():
                return None
            merged = {g.owner: g for gs in self._reported.values() for g in gs}
            return list(merged.values())
        kept = {o: g for o, g in current.items() if self._scope_of.get(o) != scope}
        kept.update({g.owner: g for g in guards})
        return list(kept.values())

    def applied(
        self, scope: str | None, installed: Sequence[PortGuard], named: Sequence[PortGuard] = ()
    ) -> None:
        """The kernel now guards exactly ``installed``, after a sync of ``scope`` that
        named ``named`` (None: an unscoped sync, which keeps each remaining endpoint's
        scope)."""
        if scope is not None and not self._settled:
            self._scope_of = {g.owner: s for s, gs in self._reported.items() for g in gs}
            self._reported.clear()
            self._settled = True
        elif scope is not None:
            self._scope_of = {o: s for o, s in self._scope_of.items() if s != scope}
            self._scope_of.update({g.owner: scope for g in named})
        owners = {g.owner for g in installed}
        self._scope_of = {o: s for o, s in self._scope_of.items() if o in owners}

    def forget(self, owner: str) -> None:
        """Endpoint ``owner`` is no longer guarded."""
        self._scope_of.pop(owner, None)
