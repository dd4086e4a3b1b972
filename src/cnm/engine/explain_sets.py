"""The set elements ``cnm explain`` shows beside a container's attachment, read from the
kernel by their owner's comment, each set with the command that lists it: the
anti-spoofing guard of its bridge port (``bridge cnm``: ``addrs``, and with IPv6
``addrs6``, ``targets6``) and how its network leaves the host (``ip cnm`` and, for a
network with IPv6, ``ip6 cnm``: ``masquerading``, ``routed``, ``subnets``; with the iptables
backend, its rules in the nat tables of iptables and ip6tables).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cnm.firewall import render_bridge, render_nft
from cnm.kernel import facts
from cnm.model.endpoint import EndpointRecord
from cnm.model.network import NetworkRecord

GUARD_SETS = (render_bridge.SET_ADDRS, render_bridge.SET_ADDRS6, render_bridge.SET_TARGETS6)
NAT_SETS = (render_nft.SET_MASQUERADE, render_nft.SET_ROUTED, render_nft.SET_SUBNETS)


async def owned(
    family: str, table: str, sets: Sequence[str], owner: str, key_text: Callable[[str, Any], str]
) -> tuple[list[str], list[str]]:
    """(elements as "FAMILY TABLE SET: KEY", the commands that list their sets) of the
    elements of ``sets`` tagged ``cnm:<owner>``; a set the table lacks is skipped."""
    found: list[str] = []
    commands: list[str] = []
    for name in sets:
        objects = await facts.nft_json(["list", "set", family, table, name])
        for obj in objects:
            body = obj.get("set")
            if not isinstance(body, dict):
                continue
            for item in body.get("elem") or ():
                key, comment = item, ""
                if isinstance(item, dict) and "elem" in item:
                    key, comment = item["elem"]["val"], str(item["elem"].get("comment", ""))
                if comment.split(" ", 1)[0] == f"cnm:{owner}":
                    found.append(f"{family} {table} {name}: {key_text(name, key)}")
                    command = f"nft list set {family} {table} {name}"
                    if command not in commands:
                        commands.append(command)
    return found, commands


async def guard(table: str, ep: EndpointRecord) -> tuple[list[str], list[str]]:
    """The guard elements of ``ep``'s bridge port (what it may send from)."""
    sets = GUARD_SETS if ep.address6 is not None else GUARD_SETS[:1]
    return await owned(
        render_bridge.FAMILY, table, sets, ep.id, lambda _, key: render_bridge.key_from_json(key)
    )


async def nat(table: str, network: NetworkRecord) -> tuple[list[str], list[str]]:
    """The elements that say how ``network``'s subnets leave the host (v4, and v6)."""
    families = [render_nft.FAMILY] + ([render_nft.FAMILY6] if network.subnet6 is not None else [])
    found: list[str] = []
    commands: list[str] = []
    for family in families:
        sets = [s for s in NAT_SETS if s in render_nft.network_sets(family)]
        more, cmds = await owned(family, table, sets, network.id, _network_key(family))
        found += more
        commands += cmds
    return found, commands


async def nat_iptables(network: NetworkRecord) -> tuple[list[str], list[str]]:
    """The iptables backend's nat rules of ``network`` (iptables, and ip6tables for a
    network with IPv6): its masquerade and hairpin rules."""
    found: list[str] = []
    commands: list[str] = []
    for family in (4, 6) if network.subnet6 is not None else (4,):
        save = facts.iptables_save(family)
        rules = await facts.iptables_rules("nat", f"cnm:{network.id}", family)
        found += [f"{save[: -len('-save')]} nat: {rule}" for rule in rules]
        if rules:
            commands.append(f"{save} -t nat | grep -- 'cnm:{network.id}'")
    return found, commands


def _network_key(family: str) -> Callable[[str, Any], str]:
    """The text of a key of a network set of table ``family``."""

    def text(set_name: str, key: Any) -> str:
        return render_nft.element_key_from_json(set_name, key, family)

    return text
