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

from cnm.errors import FirewallError, InvalidArgument
from cnm.firewall import render_nft
from cnm.firewall.api import BridgeRules, PortRule
from cnm.firewall.common import PortKey, claim_ports, comment_owner, enable_route_localnet, port_keys
from cnm.firewall.libnft import Session
from cnm.firewall.render_nft import PortElement, SetElement
from cnm.kernel.sysctl import set_sysctl

log = logging.getLogger(__name__)


class NftablesFirewall:
    """cnm's rules in the nftables tables ``ip <table>`` and ``ip6 <table>`` (see
    ``render_nft`` for the layout; the IPv6 table holds only networks with IPv6).

    Keeps, in memory, what each installed network was (so its set elements are known)
    and which port-map elements each endpoint owns, so that every change is one small
    transaction that lists nothing; after a restart the daemon calls ``sync`` (which
    refills that memory) once its networks are back.  A change the memory cannot explain
    falls back to reading cnm's sets and maps (elements carry their owner's id).

    ``userland_proxy=False`` (cnm's default): the kernel DNATs every path to a published
    port, 127.0.0.1 included (``route_localnet`` is turned on for the bridges that carry
    published ports).  ``True`` (Docker's default): the host's traffic to 127.0.0.0/8 and
    traffic from cnm bridges are left to the proxy listening on the reserved sockets."""

    def __init__(self, table: str = render_nft.TABLE, userland_proxy: bool = False) -> None:
        self.table = table
        self.userland_proxy = userland_proxy
        self._nft = Session()  # applies scripts, reads cnm's table back
        self._networks: dict[str, BridgeRules] = {}  # owner -> what it was installed as
        self._bridge_owner: dict[str, str] = {}  # bridge -> owner (O(1) clash checks)
        # True once sync/teardown made the memory of networks match the kernel: a
        # network absent from it then has no elements (no need to read the sets)
        self._networks_known = False
        self._ports: dict[str, list[PortElement]] = {}  # endpoint id -> its port-map elements
        # (host ip or None, protocol, host port) -> endpoint.  A single port and a range are
        # in different maps, which the kernel does not compare: overlaps are refused here.
        self._port_owner: dict[PortKey, str] = {}
        self._port_keys: dict[str, list[PortKey]] = {}
        # True once sync/teardown made the memory of ports match the kernel: an endpoint
        # absent from it then has no elements (no need to read the maps)
        self._ports_known = False
        self._vnis: dict[str, int] = {}  # encrypted overlay network id -> its VNI
        # True once sync/teardown made the memory of VNIs match the kernel: only then may
        # the last removal delete ``vxlan-input`` (before, the set may hold VNIs of a
        # previous daemon's networks that still need it)
        self._vnis_known = False

    def _remember(self, rules: BridgeRules) -> None:
        self._forget(rules.owner)
        self._networks[rules.owner] = rules
        self._bridge_owner[rules.bridge] = rules.owner

    def _forget(self, owner: str | None = None) -> None:
        """Forget network ``owner`` (every network when None)."""
        if owner is None:
            self._networks.clear()
            self._bridge_owner.clear()
            return
        rules = self._networks.pop(owner, None)
        if rules is not None:
            self._bridge_owner.pop(rules.bridge, None)

    # -- libnftables boundary -----------------------------------------------------------

    def _table_objects(self, family: str = render_nft.FAMILY) -> list[dict[str, Any]] | None:
        return self._nft.list_json(f"table {family} {self.table}", terse=True)

    def _legacy(self) -> bool:
        """Whether the table still holds v0.1.0's layout (its first dispatch map)."""
        what = f"map {render_nft.FAMILY} {self.table} {render_nft.LEGACY_MAPS[0]}"
        return self._nft.list_json(what, terse=True) is not None

    # -- Firewall protocol --------------------------------------------------------------

    async def setup(self) -> None:
        """Create the table, sets, maps, base chains and user chain if missing and rewrite
        the base chains' rules (for this instance's proxy mode), in both tables; turn on
        IPv4 forwarding (IPv6 forwarding is the bridge driver's, only once a network has
        IPv6).  Policies stay accept; elements are kept.  On a table still laid out by v0.1.0
        the old rules are left serving: ``sync`` replaces them in one transaction."""
        self._nft.apply(render_nft.render_setup(self.table, self.userland_proxy, legacy=self._legacy()))
        set_sysctl("net.ipv4.ip_forward", "1")

    async def sync(self, networks: Sequence[BridgeRules], ports: Sequence[PortRule] = ()) -> None:
        """Make the table hold exactly ``networks`` and ``ports`` (skeleton re-made, every
        set and map refilled, v0.1.0's maps and chains deleted), in one transaction."""
        elements = render_nft.port_elements_by_owner(ports)  # validates before anything
        self._localnet({p.bridge for p in ports if p.container_ip.version == 4}, strict=False)
        objects = self._table_objects() or []
        existing = [o[kind]["name"] for o in objects for kind in ("chain", "map") if kind in o]
        script = render_nft.render_sync(
            networks, existing, self.table, ports, self.userland_proxy, self._vnis
        )
        self._nft.apply(script)
        self._forget()
        for n in networks:
            self._remember(n)
        self._networks_known = True
        self._ports = elements
        self._ports_known = True
        self._vnis_known = True
        self._port_owner.clear()
        self._port_keys.clear()
        for rule in ports:
            self._port_keys.setdefault(rule.owner, []).extend(port_keys([rule]))
        self._port_owner = {key: o for o, keys in self._port_keys.items() for key in keys}

    async def add_network(self, rules: BridgeRules) -> None:
        """Install or replace one network's set elements in one transaction that adds
        (and, for a replacement, deletes) elements only: no chain, no rule, no listing,
        so its cost does not grow with the networks there."""
        if self._bridge_owner.get(rules.bridge, rules.owner) != rules.owner:
            raise FirewallError(
                f"bridge {rules.bridge} already carries the rules of network {self._bridge_owner[rules.bridge]}"
            )
        new = render_nft.network_elements(rules)  # validates before anything
        previous = self._networks.get(rules.owner)
        old = render_nft.network_elements(previous) if previous is not None else []
        try:
            self._nft.apply(render_nft.render_network(rules.owner, old, new, self.table, rules.name))
        except FirewallError as exc:
            # our memory may be wrong (elements left by a previous daemon, e.g. the same
            # bridge on another subnet): retry once, replacing what the kernel holds of
            # this network or this bridge
            actual = self._read_elements(rules.owner, rules.bridge)
            if not actual or actual == old:
                raise FirewallError(f"{exc} (installing network {rules.owner})") from exc
            self._nft.apply(render_nft.render_network(rules.owner, actual, new, self.table, rules.name))
        self._remember(rules)

    async def remove_network(self, owner: str) -> None:
        """Remove network ``owner``'s elements; idempotent (an absent table or element is
        success)."""
        previous = self._networks.get(owner)
        if previous is not None:
            try:
                old = render_nft.network_elements(previous)
                self._nft.apply(render_nft.render_remove_network(owner, old, self.table))
                self._forget(owner)
                return
            except FirewallError:
                pass  # our memory is wrong: read what the kernel holds
        elif self._networks_known:
            return  # known to have nothing installed
        actual = self._read_elements(owner)  # (cnmd restarted and no sync yet, or the above)
        if actual:  # None: no table; []: already gone
            self._nft.apply(render_nft.render_remove_network(owner, actual, self.table))
        self._forget(owner)

    async def add_ports(self, owner: str, rules: Sequence[PortRule]) -> None:
        """Install every published port of endpoint ``owner`` (replacing what it had) as
        map elements, in one transaction that deletes its old elements and adds the new
        ones: its size depends only on this endpoint's ports.  A port (or part of a
        range) already published by another endpoint fails the whole transaction."""
        new = render_nft.port_elements_by_owner(rules).get(owner, [])
        label = next((r.label for r in rules if r.owner == owner), "")
        keys = claim_ports(owner, rules, self._port_owner)
        if not self.userland_proxy:
            self._localnet({r.bridge for r in rules if r.container_ip.version == 4}, strict=True)
        old = self._ports_of(owner)
        try:
            self._nft.apply(render_nft.render_ports(owner, old, new, self.table, label))
        except FirewallError as exc:
            # our memory may be wrong (elements deleted from outside, or left by a previous
            # daemon): retry once with what the kernel really holds
            actual = self._read_ports(owner)
            if actual is None or actual == old:
                raise FirewallError(f"{exc} (publishing the ports of endpoint {owner})") from exc
            self._nft.apply(render_nft.render_ports(owner, actual, new, self.table, label))
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

    async def add_encrypted_vni(self, owner: str, vni: int) -> None:
        """One element of ``encrypted-vnis`` (kept in memory: ``sync`` puts it back), and
        the ``vxlan-input`` chain that drops it from the underlay (made with the first VNI,
        so its counter keeps counting while others come), in one transaction."""
        guard = None if self._vnis else True
        self._nft.apply(render_nft.render_vni(owner, vni, add=True, table=self.table, guard=guard))
        self._vnis[owner] = vni

    async def remove_encrypted_vni(self, owner: str, vni: int) -> None:
        """Delete that element whether or not it is there; with the last one (when the
        memory is known to be complete) the ``vxlan-input`` chain goes too."""
        rest = {o: v for o, v in self._vnis.items() if o != owner}
        guard = False if self._vnis_known and not rest else None
        self._nft.apply(render_nft.render_vni(owner, vni, add=False, table=self.table, guard=guard))
        self._vnis = rest

    async def teardown(self) -> None:
        """Delete cnm's table (the user chain with it); idempotent."""
        self._nft.apply(render_nft.render_teardown(self.table))
        self._forget()
        self._networks_known = True
        self._ports.clear()
        self._port_owner.clear()
        self._port_keys.clear()
        self._ports_known = True
        self._vnis.clear()
        self._vnis_known = True

    async def healthy(self) -> bool:
        """True when the table, its sets and maps, the user chain and the fixed chains
        with their rules are all present, and nothing of v0.1.0's layout is left (reads
        only cnm's table, tersely)."""
        for family, fixed, wanted in (
            (
                render_nft.FAMILY,
                render_nft.FIXED_CHAINS,
                {*render_nft.NETWORK_SETS, *render_nft.PORT_MAPS, render_nft.SET_ENCRYPTED_VNIS},
            ),
            (
                render_nft.FAMILY6,
                render_nft.FIXED_CHAINS6,
                {*render_nft.NETWORK_SETS6, *render_nft.PORT_MAPS6, render_nft.SET_PUBLISHED},
            ),
        ):
            objects = self._table_objects(family)
            if objects is None:
                return False
            chains = {o["chain"]["name"] for o in objects if "chain" in o}
            sets = {o[kind]["name"] for o in objects for kind in ("set", "map") if kind in o}
            rules: dict[str, int] = {}
            for o in objects:
                if "rule" in o:
                    rules[o["rule"]["chain"]] = rules.get(o["rule"]["chain"], 0) + 1
            if not fixed <= chains or not wanted <= sets or sets & set(render_nft.LEGACY_MAPS):
                return False
            expected = render_nft.base_rule_counts(self.userland_proxy, family)
            if family == render_nft.FAMILY and self._vnis:  # the encrypted networks' VNI guard
                expected[render_nft.VXLAN_CHAIN] = 1
            if any(rules.get(c, 0) != n for c, n in expected.items()):
                return False
        return True

    # -- helpers ------------------------------------------------------------------------

    def installed(self) -> dict[str, str]:
        """owner -> bridge of the networks this instance installed (for reconcile/debug)."""
        return {owner: rules.bridge for owner, rules in self._networks.items()}

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
        found: list[PortElement] = []
        for family in (render_nft.FAMILY, render_nft.FAMILY6):
            for map_name in render_nft.port_maps(family):
                objects = self._nft.list_json(f"map {family} {self.table} {map_name}", terse=False)
                if objects is None:
                    if family == render_nft.FAMILY6:
                        break  # a table made before IPv6: nothing of this endpoint there
                    return None
                for obj in objects:
                    for key, data in obj.get("map", {}).get("elem", []):
                        elem = key.get("elem", {}) if isinstance(key, dict) else {}
                        if comment_owner(elem.get("comment", "")) == owner:
                            found.append(
                                PortElement(
                                    map_name,
                                    render_nft.port_key_from_json(elem["val"]),
                                    render_nft.port_data_from_json(data),
                                    family,
                                )
                            )
        what = f"set {render_nft.FAMILY6} {self.table} {render_nft.SET_PUBLISHED}"
        for obj in self._nft.list_json(what, terse=False) or []:
            for item in obj.get("set", {}).get("elem", []):
                elem = item.get("elem", {}) if isinstance(item, dict) else {}
                if comment_owner(elem.get("comment", "")) == owner:
                    key = render_nft.port_key_from_json(elem["val"])
                    found.append(PortElement(render_nft.SET_PUBLISHED, key, "", render_nft.FAMILY6))
        return found

    def _localnet(self, bridges: Iterable[str], strict: bool) -> None:
        if not self.userland_proxy:  # the proxy serves 127.0.0.1 itself
            enable_route_localnet(bridges, strict=strict)

    def _read_elements(self, owner: str, bridge: str | None = None) -> list[SetElement] | None:
        """The network-set elements the kernel holds that are tagged with ``owner``, or
        keyed by ``bridge`` (whoever tagged them); None when cnm's table is absent."""
        quoted = f'"{bridge}"' if bridge is not None else None
        found: list[SetElement] = []
        for family in (render_nft.FAMILY, render_nft.FAMILY6):
            for set_name in render_nft.network_sets(family):
                objects = self._nft.list_json(f"set {family} {self.table} {set_name}", terse=False)
                if objects is None:
                    if family == render_nft.FAMILY6:
                        continue  # a table made before IPv6: nothing of this network there
                    return None
                for obj in objects:
                    for item in obj.get("set", {}).get("elem", []):
                        elem = item.get("elem", {}) if isinstance(item, dict) else {}
                        value = elem.get("val", item)
                        try:
                            key = render_nft.element_key_from_json(set_name, value, family)
                        except (FirewallError, InvalidArgument):
                            continue  # not an element cnm could have written
                        if comment_owner(elem.get("comment", "")) == owner or (
                            quoted is not None and key.split(" . ")[0] == quoted
                        ):
                            found.append(SetElement(set_name, key, family))
        return found
