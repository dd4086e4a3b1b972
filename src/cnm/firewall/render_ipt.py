"""Render cnm's iptables rules from data: ``BridgeRules`` / ``PortRule`` (and, where a change
must know what is installed, a parsed ``iptables-save``) in, ``iptables-restore --noflush``
batch text out.

Pure functions, no I/O.  Docker's structure (its bridge driver's iptables chains) with
cnm's names; every rule carries ``-m comment --comment cnm:<owner>`` (``cnm:base`` for the
skeleton)::

    *raw     PREROUTING  -> CNM-PREROUTING   -d 127.0.0.0/8 ! -i lo -j DROP
    *filter  FORWARD     -> CNM-USER         (yours: created once, never flushed)
                         -> CNM-FORWARD      conntrack RELATED,ESTABLISHED ACCEPT
                                             -j CNM-INTO-BRIDGE   (-o <br> -j CNM-N-<id12>-IN, per network)
                                             -j CNM-FROM-BRIDGE   (-i <br> -j CNM-N-<id12>-OUT, per network)
             CNM-N-<id12>-IN   ctstate DNAT ACCEPT ; -i <br> ACCEPT|DROP (icc) ; DROP
             CNM-N-<id12>-OUT  [internal: ! -o <br> DROP] ; ACCEPT
             CNM-INTO-BRIDGE   [internal: -i <br> ! -o <br> DROP, first] ; the -o dispatches
             CNM-ISOLATE       (ip6tables) -i <br> DROP, per network; a routed network's -IN
                               chain jumps to it before accepting ICMPv6 from outside
             CNM-PUBLISHED     (ip6tables) -d <address6> -p P --dport N ACCEPT, per published
                               port; a routed network's -IN chain jumps to it after ICMPv6
    *nat     PREROUTING  -m addrtype --dst-type LOCAL -> CNM
             OUTPUT      [proxy: ! -d 127.0.0.0/8] -m addrtype --dst-type LOCAL -> CNM
             CNM         [proxy: -i <br> RETURN, per network] ; -j CNM-P-<id12> per endpoint
             CNM-P-<id12>  one endpoint's DNAT rules (a range on the same ports: one rule)
             POSTROUTING -> CNM-POSTROUTING  -s 127.0.0.0/8 ! -o lo ctstate DNAT MASQUERADE ; -j CNM-MASQUERADE
             CNM-MASQUERADE   -s <subnet> ! -o <br> MASQUERADE ; -s <subnet> -o <br> ctstate DNAT MASQUERADE (hairpin)
    *filter  INPUT       -> CNM-VXLAN        (only while an encrypted overlay network is here:
                                              -p udp --dport 4789 ! -i cnmwg0)
             CNM-VXLAN   -m u32 --u32 "0>>22&0x3C@12>>8=<VNI>" -j DROP   (per encrypted network)

IPv6 (``ip6tables``) has the same layout, for the v6 subnets of networks with IPv6 (a
function taking ``family`` renders for ``ip6tables-restore`` when it is 6): no loopback
masquerade (the kernel cannot DNAT from ::1: cnmd's proxy serves [::1]), DNAT only from
non-link-local sources (``! -s fe80::/10``, as Docker), and for a routed v6 subnet
(``gateway_mode_ipv6=routed``) no MASQUERADE but ICMPv6 and the published ports (at the
container's own address) accepted into the bridge, as the nftables backend does.

Chains whose content is cnm's skeleton only (``FIXED``) and per-network chains are
declared in a batch (``:CHAIN -``), which under ``--noflush`` flushes them: that is how
they are rewritten.  Chains holding rules of many owners (``SHARED``) are declared only
when missing, and their rules are added and deleted one by one (``-A``/``-D``), so one
change costs a batch the size of that owner's rules.  Each endpoint's DNAT rules live in a
chain of its own, so removing them is one ``-D`` of its jump and a chain flush: iptables
looks a ``-D`` rule up by comparing it with every rule of the chain (with 5,000 DNAT rules
in one chain, deleting 500 took 3.3 s through iptables-nft).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cnm.errors import InvalidArgument
from cnm.firewall.api import BridgeRules, PortRule
from cnm.firewall.common import OWNER_TAG, check_ifname, check_owner, check_port_rule, owner_comment

BASE_OWNER = "base"  # the skeleton's rules

USER_CHAIN = "CNM-USER"
FORWARD_CHAIN = "CNM-FORWARD"
INTO_CHAIN = "CNM-INTO-BRIDGE"
FROM_CHAIN = "CNM-FROM-BRIDGE"
DNAT_CHAIN = "CNM"
POSTROUTING_CHAIN = "CNM-POSTROUTING"
MASQ_CHAIN = "CNM-MASQUERADE"
RAW_CHAIN = "CNM-PREROUTING"
VXLAN_CHAIN = "CNM-VXLAN"  # drops plain VXLAN for encrypted overlay networks' VNIs
# ip6tables only: "-i <br> -j DROP" for every network's bridge, jumped to by a routed
# network's chain before it lets ICMPv6 in, so other networks stay isolated from it
ISOLATE_CHAIN = "CNM-ISOLATE"
# ip6tables only: "-d <container address6> -p P --dport N -j ACCEPT" per published port,
# jumped to by a routed network's chain: its published ports are reachable at the
# container's own address from outside (as the nftables backend's ``published`` set)
PUBLISHED_CHAIN = "CNM-PUBLISHED"

TABLES = ("raw", "filter", "nat")  # the order batches are written in
# Rewritten whole (flushed by declaration) by setup and sync.
FIXED: dict[str, tuple[str, ...]] = {
    "filter": (FORWARD_CHAIN,),
    "nat": (POSTROUTING_CHAIN,),
    "raw": (RAW_CHAIN,),
}
# Created when missing, never flushed by setup: they hold rules of many owners (or the user's).
SHARED: dict[str, tuple[str, ...]] = {
    "filter": (USER_CHAIN, INTO_CHAIN, FROM_CHAIN, VXLAN_CHAIN),
    "nat": (DNAT_CHAIN, MASQ_CHAIN),
    "raw": (),
}
# (the VXLAN guard is IPv4's: overlay networks are IPv4 only)
SHARED6: dict[str, tuple[str, ...]] = {
    **SHARED,
    "filter": (*(c for c in SHARED["filter"] if c != VXLAN_CHAIN), ISOLATE_CHAIN, PUBLISHED_CHAIN),
}


def shared_chains(family: int = 4) -> dict[str, tuple[str, ...]]:
    """The SHARED chains of ``iptables`` (4) or ``ip6tables`` (6), by table."""
    return SHARED6 if family == 6 else SHARED


BUILTIN = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})
LOOPBACK = "127.0.0.0/8"
LOOPBACK6 = "::1/128"
LINK_LOCAL6 = "fe80::/10"


def _loopback(family: int) -> str:
    return LOOPBACK6 if family == 6 else LOOPBACK


_NETWORK_CHAIN_RE = re.compile(r"^CNM-N-[0-9A-Za-z_-]{1,12}-(IN|OUT)$")
_PORT_CHAIN_RE = re.compile(r"^CNM-P-[0-9A-Za-z_-]{1,12}$")


def is_network_chain(name: str) -> bool:
    return bool(_NETWORK_CHAIN_RE.match(name))


def is_port_chain(name: str) -> bool:
    return bool(_PORT_CHAIN_RE.match(name))


def is_cnm_chain(name: str) -> bool:
    """Whether ``name`` is one of the chains cnm creates (by name: iptables chains carry
    no comment)."""
    return (
        is_network_chain(name)
        or is_port_chain(name)
        or any(name in c for c in (*FIXED.values(), *SHARED.values(), *SHARED6.values()))
    )


def port_chain(owner: str) -> str:
    """One endpoint's nat chain, named from its id."""
    return f"CNM-P-{check_owner(owner)[:12]}"


def port_jump(owner: str) -> Rule:
    """The jump from CNM to endpoint ``owner``'s chain (its only rule in a shared chain)."""
    return _rule("nat", DNAT_CHAIN, "", f"-j {port_chain(owner)}", owner)


def network_chains(owner: str) -> tuple[str, str]:
    """(in, out): one network's filter chains, named from its id."""
    prefix = f"CNM-N-{check_owner(owner)[:12]}"
    return f"{prefix}-IN", f"{prefix}-OUT"


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: ``spec`` is everything after ``-A <chain>`` (comment included)."""

    table: str
    chain: str
    spec: str
    first: bool = False  # inserted at the top of the chain instead of appended

    def add(self) -> str:
        return f"-I {self.chain} 1 {self.spec}" if self.first else f"-A {self.chain} {self.spec}"

    def delete(self) -> str:
        return f"-D {self.chain} {self.spec}"


def _rule(table: str, chain: str, match: str, target: str, owner: str, first: bool = False) -> Rule:
    tag = f"-m comment --comment {owner_comment(owner)}"
    return Rule(table, chain, " ".join(p for p in (match, tag, target) if p), first)


# -- parsed iptables-save --------------------------------------------------------------


@dataclass
class TableState:
    chains: set[str] = field(default_factory=set)
    rules: list[tuple[str, str]] = field(default_factory=list)  # (chain, spec) in order


def parse_save(text: str) -> dict[str, TableState]:
    """``iptables-save`` output -> table -> chains and rules (specs as saved)."""
    tables: dict[str, TableState] = {}
    current: TableState | None = None
    for line in text.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:].strip(), TableState())
        elif current is None or not line or line.startswith("#") or line == "COMMIT":
            continue
        elif line.startswith(":"):
            current.chains.add(line[1:].split()[0])
        elif line.startswith("-A "):
            chain, _, spec = line[3:].partition(" ")
            current.rules.append((chain, spec))
    return tables


def comment_of(spec: str) -> str | None:
    """The ``--comment`` of a saved rule spec, if any."""
    try:
        words = shlex.split(spec)
    except ValueError:
        return None
    for i, word in enumerate(words[:-1]):
        if word == "--comment":
            return words[i + 1]
    return None


def target_of(spec: str) -> str | None:
    words = spec.split()
    for i, word in enumerate(words[:-1]):
        if word in ("-j", "-g"):
            return words[i + 1]
    return None


def owned_rules(state: dict[str, TableState], owner: str, chains: Iterable[str] | None = None) -> list[Rule]:
    """Rules tagged ``cnm:<owner>`` (in ``chains`` when given), as they are installed."""
    tag = owner_comment(owner)
    wanted = set(chains) if chains is not None else None
    return [
        Rule(table, chain, spec)
        for table, st in state.items()
        for chain, spec in st.rules
        if (wanted is None or chain in wanted) and comment_of(spec) == tag
    ]


def cnm_jumps(state: dict[str, TableState]) -> list[Rule]:
    """cnm's rules in the built-in chains (jumps to cnm chains tagged ``cnm:``)."""
    out = []
    for table, st in state.items():
        for chain, spec in st.rules:
            comment = comment_of(spec) or ""
            target = target_of(spec) or ""
            if chain in BUILTIN and comment.startswith(OWNER_TAG) and is_cnm_chain(target):
                out.append(Rule(table, chain, spec))
    return out


# -- batches ----------------------------------------------------------------------------


@dataclass
class Batch:
    """One ``iptables-restore --noflush`` input, assembled per table in a safe order:
    declarations (create / flush), deletions, chain removals, additions."""

    declare: dict[str, list[str]] = field(default_factory=dict)
    deletes: dict[str, list[str]] = field(default_factory=dict)
    removes: dict[str, list[str]] = field(default_factory=dict)
    adds: dict[str, list[str]] = field(default_factory=dict)

    def chain(self, table: str, name: str) -> None:
        self.declare.setdefault(table, []).append(f":{name} - [0:0]")

    def remove_chain(self, table: str, name: str) -> None:
        self.removes.setdefault(table, []).append(f"-X {name}")

    def delete(self, rules: Iterable[Rule]) -> None:
        for r in rules:
            self.deletes.setdefault(r.table, []).append(r.delete())

    def add(self, rules: Iterable[Rule]) -> None:
        for r in rules:
            self.adds.setdefault(r.table, []).append(r.add())

    def empty(self) -> bool:
        return not any(
            v for part in (self.declare, self.deletes, self.removes, self.adds) for v in part.values()
        )

    def render(self) -> str:
        out: list[str] = []
        for table in TABLES:
            body = [
                *dict.fromkeys(self.declare.get(table, [])),
                *self.deletes.get(table, []),
                *dict.fromkeys(self.removes.get(table, [])),
                *self.adds.get(table, []),
            ]
            if body:
                out += [f"*{table}", *body, "COMMIT"]
        return "\n".join(out) + "\n" if out else ""


def fixed_rules(userland_proxy: bool, family: int = 4) -> list[Rule]:
    """The content of the FIXED chains (of ``ip6tables`` when ``family`` is 6)."""
    b = BASE_OWNER
    out = [
        _rule("filter", FORWARD_CHAIN, "-m conntrack --ctstate RELATED,ESTABLISHED", "-j ACCEPT", b),
        _rule("filter", FORWARD_CHAIN, "", f"-j {INTO_CHAIN}", b),  # into a bridge first: isolation
        _rule("filter", FORWARD_CHAIN, "", f"-j {FROM_CHAIN}", b),
    ]
    if family == 4:
        # the host reaching a published port through 127.0.0.1 (route_localnet on the bridge)
        out.append(
            _rule(
                "nat",
                POSTROUTING_CHAIN,
                f"-s {LOOPBACK} ! -o lo -m conntrack --ctstate DNAT",
                "-j MASQUERADE",
                b,
            )
        )
    out += [
        _rule("nat", POSTROUTING_CHAIN, "", f"-j {MASQ_CHAIN}", b),
        # loopback from outside is forged: it must not reach a port bound to loopback
        _rule("raw", RAW_CHAIN, f"-d {_loopback(family)} ! -i lo", "-j DROP", b),
    ]
    return out


def jump_rules(userland_proxy: bool, family: int = 4) -> list[Rule]:
    """The jumps from the built-in chains, each inserted at the top, in this order (so
    the last one listed ends up first: CNM-USER before CNM-FORWARD)."""
    b = BASE_OWNER
    local = "-m addrtype --dst-type LOCAL"
    # The host's own connections to a loopback address go to the proxy, not the DNAT: with
    # the proxy on, or always for IPv6 (the kernel cannot route a DNATed packet from ::1).
    output = f"! -d {_loopback(family)} {local}" if userland_proxy or family == 6 else local
    return [
        _rule("filter", "FORWARD", "", f"-j {FORWARD_CHAIN}", b, first=True),
        _rule("filter", "FORWARD", "", f"-j {USER_CHAIN}", b, first=True),
        _rule("nat", "PREROUTING", local, f"-j {DNAT_CHAIN}", b, first=True),
        _rule("nat", "OUTPUT", output, f"-j {DNAT_CHAIN}", b, first=True),
        _rule("nat", "POSTROUTING", "", f"-j {POSTROUTING_CHAIN}", b, first=True),
        _rule("raw", "PREROUTING", "", f"-j {RAW_CHAIN}", b, first=True),
    ]


def _skeleton(
    batch: Batch, state: dict[str, TableState], userland_proxy: bool, flush_shared: bool, family: int = 4
) -> None:
    for table in TABLES:
        existing = state.get(table, TableState()).chains
        for name in FIXED[table]:
            batch.chain(table, name)
        for name in shared_chains(family)[table]:
            # CNM-USER is the user's: never flushed (only created)
            if name not in existing or (flush_shared and name != USER_CHAIN):
                batch.chain(table, name)
    # re-inserted below, in the right order; the VXLAN guard's jump is left serving
    # (render_sync and render_vni decide whether it is wanted)
    batch.delete(j for j in cnm_jumps(state) if target_of(j.spec) != VXLAN_CHAIN)
    batch.add(fixed_rules(userland_proxy, family))
    batch.add(jump_rules(userland_proxy, family))


def render_setup(state: dict[str, TableState], userland_proxy: bool = False, family: int = 4) -> str:
    """Create what is missing and rewrite the skeleton; per-network and per-port rules
    (in SHARED chains and per-network chains) are kept."""
    batch = Batch()
    _skeleton(batch, state, userland_proxy, flush_shared=False, family=family)
    return batch.render()


def render_teardown(state: dict[str, TableState]) -> str:
    """Remove cnm's jumps from the built-in chains and every cnm chain (CNM-USER too)."""
    batch = Batch()
    batch.delete(cnm_jumps(state))
    for table, st in state.items():
        for name in sorted(c for c in st.chains if is_cnm_chain(c)):
            batch.chain(table, name)  # flushed first: chains may reference each other
            batch.remove_chain(table, name)
    return batch.render()


# -- networks ---------------------------------------------------------------------------


def network_chain_rules(rules: BridgeRules, family: int = 4) -> list[Rule]:
    """The content of one network's own chains (in ``ip6tables`` when ``family`` is 6)."""
    owner = check_owner(rules.owner)
    br = check_ifname(rules.bridge)
    inbound, outbound = network_chains(owner)
    out = []
    if not rules.internal:
        # published ports (DNATed by the nat CNM chain), before icc: they are public
        out.append(_rule("filter", inbound, "-m conntrack --ctstate DNAT", "-j ACCEPT", owner))
    out.append(_rule("filter", inbound, f"-i {br}", "-j ACCEPT" if rules.icc else "-j DROP", owner))
    if family == 6 and rules.routed6 and not rules.internal:
        # routed mode: the world (not another network: CNM-ISOLATE drops what comes from
        # a cnm bridge) reaches the v6 subnet without NAT, for ICMPv6 (as Docker)
        out.append(_rule("filter", inbound, "", f"-j {ISOLATE_CHAIN}", owner))
        out.append(_rule("filter", inbound, f"! -i {br} -p ipv6-icmp", "-j ACCEPT", owner))
        out.append(_rule("filter", inbound, f"! -i {br}", f"-j {PUBLISHED_CHAIN}", owner))
    out.append(_rule("filter", inbound, "", "-j DROP", owner))
    if rules.internal:
        out.append(_rule("filter", outbound, f"! -o {br}", "-j DROP", owner))
    out.append(_rule("filter", outbound, "", "-j ACCEPT", owner))
    return out


def network_shared_rules(rules: BridgeRules, userland_proxy: bool, family: int = 4) -> list[Rule]:
    """One network's rules in SHARED chains (dispatch, masquerade, proxy exemption); for
    ``family`` 6 those of its v6 subnet (InvalidArgument when it has none)."""
    owner = check_owner(rules.owner)
    br = check_ifname(rules.bridge)
    inbound, outbound = network_chains(owner)
    if family == 6 and rules.subnet6 is None:
        raise InvalidArgument(f"network {owner} has no IPv6 subnet for ip6tables")
    subnet = rules.subnet6 if family == 6 else rules.subnet
    out = [
        _rule("filter", INTO_CHAIN, f"-o {br}", f"-j {inbound}", owner),
        _rule("filter", FROM_CHAIN, f"-i {br}", f"-j {outbound}", owner),
    ]
    if family == 6:
        out.append(_rule("filter", ISOLATE_CHAIN, f"-i {br}", "-j DROP", owner))
    if rules.internal:
        # nothing leaves an internal network, a published port of another network included:
        # dropped before any network's chain accepts it as DNATed (Docker's isolation)
        out.append(_rule("filter", INTO_CHAIN, f"-i {br} ! -o {br}", "-j DROP", owner, first=True))
    if rules.masquerade and not rules.internal and not (family == 6 and rules.routed6):
        out.append(_rule("nat", MASQ_CHAIN, f"-s {subnet} ! -o {br}", "-j MASQUERADE", owner))
    if not rules.internal:
        # hairpin: a container reaching a published port of its own bridge via the host
        out.append(
            _rule(
                "nat",
                MASQ_CHAIN,
                f"-s {subnet} -o {br} -m conntrack --ctstate DNAT",
                "-j MASQUERADE",
                owner,
            )
        )
        if userland_proxy:
            # containers reach published ports through the proxy (as in Docker)
            out.append(_rule("nat", DNAT_CHAIN, f"-i {br}", "-j RETURN", owner, first=True))
    return out


def render_add_network(
    rules: BridgeRules, old_shared: Sequence[Rule], userland_proxy: bool = False, family: int = 4
) -> str:
    """Install or replace one network: its chains declared (flushed) and refilled, its
    ``old_shared`` rules (as installed) deleted and the new ones added."""
    batch = Batch()
    for name in network_chains(rules.owner):
        batch.chain("filter", name)
    batch.delete(old_shared)
    batch.add(network_chain_rules(rules, family))
    batch.add(network_shared_rules(rules, userland_proxy, family))
    return batch.render()


def render_remove_network(owner: str, old_shared: Sequence[Rule]) -> str:
    """Remove one network: its shared rules (as installed) and its chains (whether or
    not they exist)."""
    batch = Batch()
    batch.delete(old_shared)
    for name in network_chains(owner):
        batch.chain("filter", name)
        batch.remove_chain("filter", name)
    return batch.render()


# -- ports ------------------------------------------------------------------------------


def port_rules(rule: PortRule) -> list[Rule]:
    """The DNAT rules of one ``PortRule``: one rule for a range published on the same
    container ports (``--dport 8000:8010 -j DNAT --to-destination ip``), else one per port;
    for IPv6, then the ACCEPT rules of ``PUBLISHED_CHAIN`` (for a routed network)."""
    owner = check_owner(rule.owner)
    first, last = check_port_rule(rule)
    v6 = rule.container_ip.version == 6
    published = [
        _rule(
            "filter",
            PUBLISHED_CHAIN,
            f"-d {rule.container_ip}/128 -p {rule.protocol} -m {rule.protocol} --dport {p}",
            "-j ACCEPT",
            owner,
        )
        for p in range(rule.container_port, rule.container_port + last - first + 1)
        if v6
    ]
    source = f"! -s {LINK_LOCAL6} " if v6 else ""  # Docker's ip6tables DNAT skips link-local
    dest = f"-d {rule.host_ip}/{rule.host_ip.max_prefixlen} " if rule.host_ip is not None else ""
    proto = f"{source}{dest}-p {rule.protocol} -m {rule.protocol}"
    to = f"[{rule.container_ip}]" if v6 else str(rule.container_ip)
    chain = port_chain(owner)
    if rule.container_port == first:
        span = str(first) if first == last else f"{first}:{last}"
        return [
            _rule(
                "nat",
                chain,
                f"{proto} --dport {span}",
                f"-j DNAT --to-destination {rule.container_ip}",
                owner,
            ),
            *published,
        ]
    shift = rule.container_port - first
    return [
        *(
            _rule(
                "nat",
                chain,
                f"{proto} --dport {p}",
                f"-j DNAT --to-destination {to}:{p + shift}",
                owner,
            )
            for p in range(first, last + 1)
        ),
        *published,
    ]


def port_rules_by_owner(rules: Iterable[PortRule], family: int | None = None) -> dict[str, list[Rule]]:
    """The DNAT rules of ``rules`` by owner (and, for IPv6, their ``PUBLISHED_CHAIN``
    rules, each once); only those of ``family`` when given."""
    out: dict[str, list[Rule]] = {}
    for rule in rules:
        if family is None or rule.container_ip.version == family:
            out.setdefault(rule.owner, []).extend(port_rules(rule))
    # two ports published on the same container port share its ACCEPT rule
    return {owner: list(dict.fromkeys(owned)) for owner, owned in out.items()}


def published_rules(rules: Iterable[Rule]) -> list[Rule]:
    """Those of ``rules`` (an endpoint's) that live in the shared ``PUBLISHED_CHAIN``."""
    return [r for r in rules if r.chain == PUBLISHED_CHAIN]


def render_ports(owner: str, old_jumps: Sequence[Rule], new: Sequence[Rule]) -> str:
    """Replace endpoint ``owner``'s DNAT rules with ``new``: its chain declared (flushed)
    and refilled, its jump and ``PUBLISHED_CHAIN`` rules (``old_jumps``, as installed)
    re-made; with no ``new`` rules, the chain is removed whether or not it exists."""
    batch = Batch()
    chain = port_chain(owner)
    batch.chain("nat", chain)
    batch.delete(old_jumps)
    if new:
        batch.add(new)
        batch.add([port_jump(owner)])
    else:
        batch.remove_chain("nat", chain)
    return batch.render()


# -- whole state ------------------------------------------------------------------------


def render_sync(
    state: dict[str, TableState],
    networks: Sequence[BridgeRules],
    ports: Sequence[PortRule] = (),
    userland_proxy: bool = False,
    family: int = 4,
    vnis: Mapping[str, int] | None = None,
) -> str:
    """One batch leaving exactly ``networks``, ``ports`` and (IPv4 only) ``vnis``
    (encrypted overlay networks' VNIs by network id): every cnm chain but CNM-USER
    flushed and refilled, stale per-network chains removed, jumps re-made.  For
    ``family`` 6: ``networks`` must all have a v6 subnet, and only v6 ports are kept."""
    seen: dict[str, str] = {}
    for rules in networks:
        for key in (f"bridge {rules.bridge}", f"id prefix {network_chains(rules.owner)[0]}"):
            other = seen.setdefault(key, rules.owner)
            if other != rules.owner:
                raise InvalidArgument(f"networks {other} and {rules.owner} share the {key}")
    by_owner = port_rules_by_owner(ports, family)
    batch = Batch()
    _skeleton(batch, state, userland_proxy, flush_shared=True, family=family)
    wanted = {c for rules in networks for c in network_chains(rules.owner)}
    wanted |= {port_chain(owner) for owner in by_owner}
    for table in ("filter", "nat"):
        for name in sorted(state.get(table, TableState()).chains):
            if (is_network_chain(name) or is_port_chain(name)) and name not in wanted:
                batch.chain(table, name)
                batch.remove_chain(table, name)
    for rules in networks:
        for name in network_chains(rules.owner):
            batch.chain("filter", name)
        batch.add(network_chain_rules(rules, family))
        batch.add(network_shared_rules(rules, userland_proxy, family))
    for owner, owned in by_owner.items():
        batch.chain("nat", port_chain(owner))
        batch.add(owned)
        batch.add([port_jump(owner)])
    if family == 4:
        vni_rules = [vni_rule(owner, vni) for owner, vni in (vnis or {}).items()]
        batch.add(vni_rules)  # CNM-VXLAN was flushed with the other shared chains
        _guard_jump(batch, state, bool(vni_rules))
    return batch.render()


def health_problems(state: dict[str, TableState], userland_proxy: bool = False, family: int = 4) -> list[str]:
    """What is missing from cnm's skeleton (empty: healthy): a chain, a jump from a
    built-in chain, or a rule of a FIXED chain (someone ran ``iptables -F``)."""
    problems = []
    for table in TABLES:
        chains = state.get(table, TableState()).chains
        for name in (*FIXED[table], *shared_chains(family)[table]):
            if name not in chains:
                problems.append(f"chain {table}/{name} missing")
    jumps = {(r.table, r.chain, target_of(r.spec)) for r in cnm_jumps(state)}
    for rule in jump_rules(userland_proxy, family):
        if (rule.table, rule.chain, target_of(rule.spec)) not in jumps:
            problems.append(f"jump {rule.table}/{rule.chain} -> {target_of(rule.spec)} missing")
    expected: dict[tuple[str, str], int] = {}
    for rule in fixed_rules(userland_proxy, family):
        expected[(rule.table, rule.chain)] = expected.get((rule.table, rule.chain), 0) + 1
    for (table, chain), n in expected.items():
        have = sum(1 for c, _ in state.get(table, TableState()).rules if c == chain)
        if have != n:
            problems.append(f"chain {table}/{chain} holds {have} rules, not {n}")
    return problems


# -- encrypted overlay networks ---------------------------------------------------------
#
# The kernel's VXLAN socket takes a frame from whoever sends it, so plain VXLAN from the
# underlay carrying an encrypted network's VNI would be decapsulated into that network.
# Such frames must come through the WireGuard interface.  The VNI is bytes 4-6 of the
# VXLAN header, after the 8-byte UDP header: u32 reads the IP header length
# (``0>>22&0x3C``), moves to the transport header (``@``) and takes the 32 bits at byte
# 12 there, shifted right by 8 (the last byte is reserved).  INPUT jumps to CNM-VXLAN only
# while one of its rules is there: no encrypted network, nothing on the input path.

VXLAN_PORT = 4789
TUNNEL_IFNAME = "cnmwg0"  # the overlay's WireGuard interface (drivers.overlay_crypt.IFNAME)
MAX_VNI = (1 << 24) - 1


def check_vni(vni: int) -> int:
    """``vni`` when it is a VXLAN network identifier (1..2^24-1), else InvalidArgument."""
    if isinstance(vni, bool) or not isinstance(vni, int) or not 0 < vni <= MAX_VNI:
        raise InvalidArgument(f"invalid VXLAN VNI {vni!r}: expected 1..{MAX_VNI}")
    return vni


def vni_rule(owner: str, vni: int) -> Rule:
    """The drop of encrypted network ``owner``'s VNI in CNM-VXLAN, tagged with the owner."""
    match = f'-m u32 --u32 "0>>22&0x3C@12>>8={check_vni(vni)}"'
    return _rule("filter", VXLAN_CHAIN, match, "-j DROP", check_owner(owner))


def guard_jump() -> Rule:
    """INPUT's jump to CNM-VXLAN: plain VXLAN that did not come through the tunnel."""
    match = f"-p udp -m udp --dport {VXLAN_PORT} ! -i {TUNNEL_IFNAME}"
    return _rule("filter", "INPUT", match, f"-j {VXLAN_CHAIN}", BASE_OWNER)


def _guard_jumps(state: dict[str, TableState]) -> list[Rule]:
    return [j for j in cnm_jumps(state) if target_of(j.spec) == VXLAN_CHAIN]


def _guard_jump(batch: Batch, state: dict[str, TableState], wanted: bool) -> None:
    """Make INPUT hold exactly one jump to CNM-VXLAN when ``wanted``, none otherwise."""
    installed = _guard_jumps(state)
    if wanted and len(installed) == 1:
        return
    batch.delete(installed)
    if wanted:
        batch.add([guard_jump()])


def render_vni(state: dict[str, TableState], owner: str, vni: int, add: bool) -> str:
    """Add (or remove) encrypted network ``owner``'s VNI drop, replacing whatever rules of
    ``owner`` CNM-VXLAN holds in ``state``; CNM-VXLAN is created if missing, and INPUT
    jumps to it exactly while it holds a rule (other owners' rules, a previous daemon's
    included, count)."""
    batch = Batch()
    if VXLAN_CHAIN not in state.get("filter", TableState()).chains:
        batch.chain("filter", VXLAN_CHAIN)
    mine = owned_rules(state, check_owner(owner), [VXLAN_CHAIN])
    batch.delete(mine)
    held = sum(1 for chain, _ in state.get("filter", TableState()).rules if chain == VXLAN_CHAIN)
    others = held - len(mine)
    if add:
        batch.add([vni_rule(owner, vni)])
    else:
        check_vni(vni)
    _guard_jump(batch, state, add or others > 0)
    return batch.render()
