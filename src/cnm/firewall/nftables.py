"""The nftables firewall backend: scripts from ``render_nft`` applied through libnftables.

libnftables runs in-process (~25 µs per small transaction here, against milliseconds for
an ``nft`` exec), so calls run inline on the event loop.  Its netlink socket is opened
when the context is created: an ``NftablesFirewall`` acts on the network namespace of the
thread that constructed it (cnmd's own), whichever thread calls it later.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from cnm.errors import FirewallError
from cnm.firewall import render_nft
from cnm.firewall.api import BridgeRules, PortRule
from cnm.firewall.common import PortKey, claim_ports, enable_route_localnet, owner_comment, port_keys
from cnm.firewall.libnft import Session
from cnm.firewall.render_nft import PortElement
from cnm.kernel.sysctl import set_sysctl

log = logging.getLogger(__name__)


class NftablesFirewall:
    """cnm's rules in the nftables table ``ip <table>`` (see ``render_nft`` for the layout).

    Keeps, in memory, which bridge each installed network's map elements are keyed by
    and which port-map elements each endpoint owns, so that removals are one small
    transaction; after a restart the daemon calls ``sync`` (which refills that memory)
    before anything else.  A removal the memory cannot explain falls back to reading
    cnm's maps.

    ``userland_proxy=False`` (cnm's default): the kernel DNATs every path to a published
    port, 127.0.0.1 included (``route_localnet`` is turned on for the bridges that carry
    published ports).  ``True`` (Docker's default): the host's traffic to 127.0.0.0/8 and
    traffic from cnm bridges are left to the proxy listening on the reserved sockets."""

    def __init__(self, table: str = render_nft.TABLE, userland_proxy: bool = False) -> None:
        self.table = table
        self.userland_proxy = userland_proxy
        self._nft = Session()  # applies scripts, reads cnm's table back
        self._bridges: dict[str, str] = {}  # owner -> bridge its elements are keyed by
        self._bridge_owner: dict[str, str] = {}  # bridge -> owner (O(1) clash checks)
        self._chain_owner: dict[str, str] = {}  # n-<id12>-in -> owner
        self._ports: dict[str, list[PortElement]] = {}  # endpoint id -> its port-map elements
        # (host ip or None, protocol, host port) -> endpoint.  A single port and a range are
        # in different maps, which the kernel does not compare: overlaps are refused here.
        self._port_owner: dict[PortKey, str] = {}
        self._port_keys: dict[str, list[PortKey]] = {}
        # True once sync/teardown made the memory of ports match the kernel: an endpoint
        # absent from it then has no elements (no need to read the maps)
        self._ports_known = False

    def _remember(self, owner: str, bridge: str) -> None:
        self._forget(owner)
        self._bridges[owner] = bridge
        self._bridge_owner[bridge] = owner
        self._chain_owner[render_nft.chains_for(owner).inbound] = owner

    def _forget(self, owner: str | None = None) -> None:
        """Forget ``owner`` (everything when None)."""
        if owner is None:
            self._bridges.clear()
            self._bridge_owner.clear()
            self._chain_owner.clear()
            return
        bridge = self._bridges.pop(owner, None)
        if bridge is not None:
            self._bridge_owner.pop(bridge, None)
            self._chain_owner.pop(render_nft.chains_for(owner).inbound, None)

    # -- libnftables boundary -----------------------------------------------------------

    def _table_objects(self) -> list[dict[str, Any]] | None:
        return self._nft.list_json(f"table {render_nft.FAMILY} {self.table}", terse=True)

    # -- Firewall protocol --------------------------------------------------------------

    async def setup(self) -> None:
        """Create the table, maps, base chains and user chain if missing and rewrite the
        base chains' dispatch rules (for this instance's proxy mode); turn on IPv4
        forwarding.  Policies stay accept; map elements are kept."""
        self._nft.apply(render_nft.render_setup(self.table, self.userland_proxy))
        set_sysctl("net.ipv4.ip_forward", "1")

    async def sync(self, networks: Sequence[BridgeRules], ports: Sequence[PortRule] = ()) -> None:
        """Make the table hold exactly ``networks`` and ``ports`` (skeleton re-made, every
        map refilled, stale per-network chains deleted), in one transaction."""
        elements = render_nft.port_elements_by_owner(ports)  # validates before anything
        self._localnet({p.bridge for p in ports}, strict=False)
        objects = self._table_objects() or []
        existing = [o["chain"]["name"] for o in objects if "chain" in o]
        self._nft.apply(render_nft.render_sync(networks, existing, self.table, ports, self.userland_proxy))
        self._forget()
        for n in networks:
            self._remember(n.owner, n.bridge)
        self._ports = elements
        self._ports_known = True
        self._port_owner.clear()
        self._port_keys.clear()
        for rule in ports:
            self._port_keys.setdefault(rule.owner, []).extend(port_keys([rule]))
        self._port_owner = {key: o for o, keys in self._port_keys.items() for key in keys}

    async def add_network(self, rules: BridgeRules) -> None:
        """Install or replace one network's chains and map elements in one transaction
        whose size does not depend on the number of other networks.  (Its time still
        grows slowly with them: libnftables reads every chain on the host before a
        transaction that adds chains or rules, about 1 µs per chain here.)"""
        chain = render_nft.chains_for(rules.owner).inbound
        if self._chain_owner.get(chain, rules.owner) != rules.owner:
            raise FirewallError(f"networks {self._chain_owner[chain]} and {rules.owner} share an id prefix")
        if self._bridge_owner.get(rules.bridge, rules.owner) != rules.owner:
            raise FirewallError(
                f"bridge {rules.bridge} already carries the rules of network {self._bridge_owner[rules.bridge]}"
            )
        previous = self._bridges.get(rules.owner)
        self._nft.apply(render_nft.render_add_network(rules, previous, self.table))
        self._remember(rules.owner, rules.bridge)

    async def remove_network(self, owner: str) -> None:
        """Remove network ``owner``'s elements and chains; idempotent (absent table,
        chains or elements are success)."""
        bridge = self._bridges.get(owner)
        try:
            self._nft.apply(render_nft.render_remove_network(owner, [bridge] if bridge else [], self.table))
        except FirewallError:
            if self._table_objects() is None:
                self._forget(owner)
                return  # no table, nothing of ours left
            # Elements keyed by a bridge we do not remember (e.g. cnmd restarted without
            # a sync) still point at the chains: find them by their target and retry.
            self._nft.apply(
                render_nft.render_remove_network(owner, self._bridges_pointing_at(owner), self.table)
            )
        self._forget(owner)

    async def add_ports(self, owner: str, rules: Sequence[PortRule]) -> None:
        """Install every published port of endpoint ``owner`` (replacing what it had) as
        map elements, in one transaction that deletes its old elements and adds the new
        ones: its size depends only on this endpoint's ports.  A port (or part of a
        range) already published by another endpoint fails the whole transaction."""
        new = render_nft.port_elements_by_owner(rules).get(owner, [])
        keys = claim_ports(owner, rules, self._port_owner)
        if not self.userland_proxy:
            self._localnet({r.bridge for r in rules}, strict=True)
        old = self._ports_of(owner)
        try:
            self._nft.apply(render_nft.render_ports(owner, old, new, self.table))
        except FirewallError as exc:
            # our memory may be wrong (elements deleted from outside, or left by a previous
            # daemon): retry once with what the kernel really holds
            actual = self._read_ports(owner)
            if actual is None or actual == old:
                raise FirewallError(f"{exc} (publishing the ports of endpoint {owner})") from exc
            self._nft.apply(render_nft.render_ports(owner, actual, new, self.table))
        self._set_ports(owner, new)
        self._index_ports(owner, keys)

    async def remove_ports(self, owner: str) -> None:
        """Delete endpoint ``owner``'s port elements; idempotent."""
        old = self._ports_of(owner)
        if not old:
            self._ports.pop(owner, None)
            self._index_ports(owner, [])
            return
        try:
            self._nft.apply(render_nft.render_ports(owner, old, (), self.table))
        except FirewallError:
            actual = self._read_ports(owner)
            if actual:  # None: no table; []: already gone
                self._nft.apply(render_nft.render_ports(owner, actual, (), self.table))
        self._ports.pop(owner, None)
        self._index_ports(owner, [])

    async def teardown(self) -> None:
        """Delete cnm's table (the user chain with it); idempotent."""
        self._nft.apply(render_nft.render_teardown(self.table))
        self._forget()
        self._ports.clear()
        self._port_owner.clear()
        self._port_keys.clear()
        self._ports_known = True

    async def healthy(self) -> bool:
        """True when the table, its maps, the user chain and the fixed chains with their
        dispatch rules are all present (reads only cnm's table, tersely)."""
        objects = self._table_objects()
        if objects is None:
            return False
        chains = {o["chain"]["name"] for o in objects if "chain" in o}
        maps = {o["map"]["name"] for o in objects if "map" in o}
        rules: dict[str, int] = {}
        for o in objects:
            if "rule" in o:
                rules[o["rule"]["chain"]] = rules.get(o["rule"]["chain"], 0) + 1
        if not render_nft.FIXED_CHAINS <= chains or not {*render_nft.MAPS, *render_nft.PORT_MAPS} <= maps:
            return False
        expected = render_nft.base_rule_counts(self.userland_proxy)
        return all(rules.get(c, 0) == n for c, n in expected.items())

    # -- helpers ------------------------------------------------------------------------

    def installed(self) -> dict[str, str]:
        """owner -> bridge of the networks this instance installed (for reconcile/debug)."""
        return dict(self._bridges)

    def installed_ports(self) -> dict[str, list[PortElement]]:
        """endpoint id -> the port-map elements this instance installed (for debug)."""
        return {k: list(v) for k, v in self._ports.items()}

    def _index_ports(self, owner: str, keys: list[tuple[str | None, str, int]]) -> None:
        for key in self._port_keys.pop(owner, []):
            self._port_owner.pop(key, None)
        if keys:
            self._port_keys[owner] = keys
            self._port_owner.update(dict.fromkeys(keys, owner))

    def _set_ports(self, owner: str, elements: list[PortElement]) -> None:
        if elements:
            self._ports[owner] = elements
        else:
            self._ports.pop(owner, None)

    def _ports_of(self, owner: str) -> list[PortElement]:
        """What ``owner`` holds: from memory, or (before the first sync) from the kernel."""
        if owner in self._ports or self._ports_known:
            return list(self._ports.get(owner, []))
        return self._read_ports(owner) or []

    def _read_ports(self, owner: str) -> list[PortElement] | None:
        """Endpoint ``owner``'s elements as the kernel holds them (by their comment);
        None when cnm's table is absent."""
        tag = owner_comment(owner)
        found: list[PortElement] = []
        for map_name in render_nft.PORT_MAPS:
            objects = self._nft.list_json(f"map {render_nft.FAMILY} {self.table} {map_name}", terse=False)
            if objects is None:
                return None
            for obj in objects:
                for key, data in obj.get("map", {}).get("elem", []):
                    elem = key.get("elem", {}) if isinstance(key, dict) else {}
                    if elem.get("comment") == tag:
                        found.append(
                            PortElement(
                                map_name,
                                render_nft.port_key_from_json(elem["val"]),
                                render_nft.port_data_from_json(data),
                            )
                        )
        return found

    def _localnet(self, bridges: Iterable[str], strict: bool) -> None:
        if not self.userland_proxy:  # the proxy serves 127.0.0.1 itself
            enable_route_localnet(bridges, strict=strict)

    def _bridges_pointing_at(self, owner: str) -> list[str]:
        targets = set(render_nft.chains_for(owner).all())
        found: list[str] = []
        for map_name in render_nft.MAPS:
            objects = self._nft.list_json(f"map {render_nft.FAMILY} {self.table} {map_name}", terse=False)
            found += _elements_jumping_to(objects or [], targets)
        return found


def _elements_jumping_to(objects: Iterable[dict[str, Any]], targets: set[str]) -> list[str]:
    """Keys of verdict-map elements (nft JSON) whose verdict jumps to one of ``targets``."""
    keys: list[str] = []
    for obj in objects:
        for elem in obj.get("map", {}).get("elem", []):
            key, verdict = elem
            if isinstance(key, dict):  # {"elem": {"val": "br-x", "comment": ...}}
                key = key.get("elem", {}).get("val", key)
            target = (verdict.get("jump") or verdict.get("goto") or {}).get("target")
            if target in targets and isinstance(key, str):
                keys.append(key)
    return keys
