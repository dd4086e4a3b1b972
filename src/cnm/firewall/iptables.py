"""The iptables firewall backend: batches from ``render_ipt`` applied with one
``iptables-restore --noflush`` per change.

Works with either variant of iptables (Debian ships ``iptables-nft`` and
``iptables-legacy``): the variant of the ``iptables`` command given is detected once and
its own ``-save``/``-restore`` pair is used from then on, so cnm never writes half its
rules through one kernel API and half through the other.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
from collections.abc import Callable, Iterable, Sequence

from cnm.errors import FirewallError, Unavailable
from cnm.firewall import render_ipt
from cnm.firewall.api import BridgeRules, PortRule
from cnm.firewall.common import PortKey, claim_ports, enable_route_localnet, port_keys
from cnm.firewall.render_ipt import Rule, TableState
from cnm.kernel.cmdlog import log_script
from cnm.kernel.sysctl import set_sysctl

log = logging.getLogger(__name__)

_SHARED_CHAINS = frozenset(c for chains in render_ipt.SHARED6.values() for c in chains)
_VARIANT_RE = re.compile(r"\((nf_tables|legacy)\)")


class IptablesFirewall:
    """cnm's rules in iptables chains named ``CNM*`` (see ``render_ipt`` for the layout),
    and the same chains in ``ip6tables`` for networks with IPv6 and their v6 ports.

    Each family is its own set of tables, tools and memory (``_Family``): a change of a
    v4-only network or port touches ``iptables`` alone; a dual-stack one is one batch per
    family (iptables has no transaction across the two).  When ``ip6tables`` is not
    installed, everything v4 works and a v6 network or port is refused.

    Plain VXLAN from the underlay carrying an encrypted overlay network's VNI is dropped
    in CNM-VXLAN (a ``u32`` match on the VNI), which INPUT jumps to only while such a
    network is on this host."""

    def __init__(self, userland_proxy: bool = False, iptables: str = "iptables") -> None:
        self.userland_proxy = userland_proxy
        self.iptables = iptables
        self._lock = asyncio.Lock()  # one operation of either family at a time
        self._v4 = _Family(self, 4, iptables)
        self._v6 = _Family(self, 6, _ip6_tool(iptables))
        self._vnis: dict[str, int] = {}  # encrypted overlay network id -> its VNI (IPv4)

    @property
    def variant(self) -> str | None:
        """``nf_tables`` or ``legacy``, once detected (both families use the same)."""
        return self._v4.variant

    async def _exec(self, argv: list[str], stdin: str | None = None) -> str:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError as exc:
            raise Unavailable(f"{argv[0]} is not installed") from exc
        out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
        if proc.returncode:
            raise FirewallError(_error_message(argv[0], err.decode(errors="replace"), stdin))
        return out.decode(errors="replace")

    # -- Firewall protocol --------------------------------------------------------------

    async def setup(self) -> None:
        """Create cnm's chains if missing, rewrite the skeleton (fixed chains and the
        jumps from the built-in chains, CNM-USER first in FORWARD), in both families;
        turn on IPv4 forwarding (IPv6 forwarding is the bridge driver's, once a network
        has IPv6).  Built-in policies are never changed; CNM-USER is never flushed."""
        await self._v4.setup()
        await self._v6.setup()
        set_sysctl("net.ipv4.ip_forward", "1")

    async def sync(self, networks: Sequence[BridgeRules], ports: Sequence[PortRule] = ()) -> None:
        """Make cnm's chains hold exactly ``networks`` and ``ports``: one batch per family."""
        render_ipt.port_rules_by_owner(ports)  # validates before anything
        ports4 = [p for p in ports if p.container_ip.version == 4]
        self._localnet({p.bridge for p in ports4}, strict=False)
        await self._v4.sync(networks, ports4)
        await self._v6.sync(
            [n for n in networks if n.subnet6 is not None], [p for p in ports if p.container_ip.version == 6]
        )

    async def add_network(self, rules: BridgeRules) -> None:
        """Install or replace one network's chains and rules: one batch, and one more in
        ip6tables for a network with IPv6."""
        render_ipt.network_shared_rules(rules, self.userland_proxy)  # validates before anything
        if rules.subnet6 is None:
            await self._v4.add_network(rules)
        else:
            await self._v6.require()
            new = rules.owner not in self._v4.installed()
            await self._v4.add_network(rules)
            try:
                await self._v6.add_network(rules)
            except FirewallError:
                if new:  # all or nothing for a network that was not there
                    await self._v4.remove_network(rules.owner)
                raise
        if rules.subnet6 is None and self._v6.may_hold_network(rules.owner):
            await self._v6.remove_network(rules.owner)

    async def remove_network(self, owner: str) -> None:
        """Remove network ``owner``'s rules and chains; idempotent."""
        await self._v4.remove_network(owner)
        if self._v6.may_hold_network(owner):
            await self._v6.remove_network(owner)

    async def add_ports(self, owner: str, rules: Sequence[PortRule]) -> None:
        """Replace endpoint ``owner``'s DNAT rules with ``rules``: one batch per family
        it has (or had) ports of; its size depends only on this endpoint's ports.  Both
        families' claims are checked before anything is applied."""
        render_ipt.port_rules_by_owner(rules)  # validates before anything
        ports4 = [r for r in rules if r.container_ip.version == 4]
        ports6 = [r for r in rules if r.container_ip.version == 6]
        self._v4.claim(owner, ports4)
        self._v6.claim(owner, ports6)
        if ports6:
            await self._v6.require()
        if ports4 or not ports6:
            await self._v4.add_ports(owner, ports4)
        elif self._v4.may_hold_ports(owner):
            await self._v4.remove_ports(owner)
        if ports6:
            await self._v6.add_ports(owner, ports6)
        elif self._v6.may_hold_ports(owner):
            await self._v6.remove_ports(owner)

    async def remove_ports(self, owner: str) -> None:
        """Delete endpoint ``owner``'s DNAT rules; idempotent (no exec at all when memory
        says it has none)."""
        await self._v4.remove_ports(owner)
        if self._v6.may_hold_ports(owner):
            await self._v6.remove_ports(owner)

    async def add_encrypted_vni(self, owner: str, vni: int) -> None:
        """Drop plain VXLAN with ``vni`` from anywhere but the tunnel (replacing what
        ``owner`` had there), INPUT's jump made if missing (iptables only: overlay
        networks are IPv4)."""
        render_ipt.vni_rule(owner, vni)  # validates before anything
        await self._v4.set_vni(owner, vni, add=True)
        self._vnis[owner] = vni

    async def remove_encrypted_vni(self, owner: str, vni: int) -> None:
        """Remove ``owner``'s drop whether or not it is there; with the last one, INPUT's
        jump goes too."""
        await self._v4.set_vni(owner, vni, add=False)
        self._vnis.pop(owner, None)

    async def teardown(self) -> None:
        """Remove every cnm jump and chain (CNM-USER included) of both families, found by
        reading the kernel, so rules left by a previous daemon go too; idempotent."""
        await self._v4.teardown()
        await self._v6.teardown()
        self._vnis.clear()

    async def healthy(self) -> bool:
        """True when cnm's chains, the jumps to them and the skeleton's rules are present
        in both families (in ip6tables only when it is installed)."""
        return await self._v4.healthy() and await self._v6.healthy()

    # -- helpers ------------------------------------------------------------------------

    def installed(self) -> dict[str, str]:
        """network id -> bridge of the networks this instance installed."""
        return self._v4.installed()

    def _localnet(self, bridges: Iterable[str], strict: bool) -> None:
        if not self.userland_proxy:  # the proxy serves 127.0.0.1 itself
            enable_route_localnet(bridges, strict=strict)

    def _other(self, family: _Family) -> _Family:
        return self._v6 if family is self._v4 else self._v4


def _ip6_tool(iptables: str) -> str:
    """The ip6tables of the same variant as ``iptables`` (``iptables-nft`` ->
    ``ip6tables-nft``, a path kept)."""
    head, sep, base = iptables.rpartition("/")
    if base.startswith("iptables"):
        base = "ip6" + base[2:]
    return f"{head}{sep}{base}"


class _Family:
    """One family's tables (``iptables`` or ``ip6tables``): its tools, its memory, and
    the operations of ``IptablesFirewall`` for it.

    Keeps, in memory, each owner's rules in the chains it shares with other owners, so a
    change is one batch the size of that owner's rules; after a restart the daemon calls
    ``sync`` first.  A change the memory cannot explain (rules deleted from outside, or
    left by a previous daemon) is retried once with the rules read from ``*-save``.
    ``teardown`` reads everything it removes from the kernel (no memory needed).

    One operation at a time (reads included): a batch is rendered from what was read or
    remembered, so no other batch of this daemon may land in between, and iptables-nft
    never has to replay a transaction another cnm batch overtook.  A batch rendered from
    a read that the kernel no longer matches when it is applied (another program changed
    the chains in between) is rendered again from a fresh read, once; when cnm's own
    chains are what vanished, they are put back first, so the change still lands."""

    def __init__(self, fw: IptablesFirewall, family: int, tool: str) -> None:
        self._fw = fw  # its exec boundary and proxy mode
        self.family = family
        self.tool = tool
        self.variant: str | None = None  # "nf_tables" | "legacy", once detected
        self.missing = False  # ip6tables is not installed: v6 is refused, v4 unaffected
        self._save_cmd: list[str] = []
        self._restore_cmd: list[str] = []
        self._rules: dict[str, list[Rule]] = {}  # owner -> its rules in SHARED chains
        self._bridges: dict[str, str] = {}  # network id -> bridge
        # (host ip or None, protocol, host port) -> endpoint: iptables would happily hold
        # two DNAT rules for one port, so a port of another endpoint is refused here (the
        # nftables backend's maps refuse it in the kernel)
        self._port_owner: dict[PortKey, str] = {}
        self._port_keys: dict[str, list[PortKey]] = {}  # endpoint -> its keys
        self._known = False  # memory matches the kernel (after sync / teardown)
        # one for both families (the firewall's): held by every operation, from its first
        # read to its last batch, so one iptables process runs at a time
        self._lock = fw._lock

    @property
    def userland_proxy(self) -> bool:
        return self._fw.userland_proxy

    # -- exec boundary ------------------------------------------------------------------

    async def _tools(self) -> None:
        if self._restore_cmd:
            return
        if self.family == 6:  # the variant the v4 tools were found to be
            await self._fw._v4._tools()
            self.variant = self._fw._v4.variant
        else:
            out = await self._fw._exec([self.tool, "--version"])
            match = _VARIANT_RE.search(out)
            if not match:
                raise Unavailable(f"cannot tell which iptables {self.tool!r} is: {out.strip()!r}")
            self.variant = match.group(1)
        short = "nft" if self.variant == "nf_tables" else "legacy"
        name = "ip6tables" if self.family == 6 else "iptables"
        base = f"{name}-{short}" if shutil.which(f"{name}-{short}-restore") else self.tool
        if self.family == 6 and not shutil.which(f"{base}-restore"):
            self.missing = True
        self._save_cmd = [f"{base}-save"]
        self._restore_cmd = [f"{base}-restore", "-w", "--noflush"]

    async def _state(self) -> dict[str, TableState]:
        """What the kernel holds now (all tables, as ``*-save`` prints them)."""
        await self._tools()
        return render_ipt.parse_save(await self._fw._exec(self._save_cmd))

    async def _restore(self, batch: str) -> None:
        """Apply ``batch`` with one ``*-restore --noflush``."""
        if not batch:
            return
        await self._tools()
        log_script(" ".join(self._restore_cmd), batch)
        await self._fw._exec(self._restore_cmd, batch)

    async def _usable(self, needed: bool) -> bool:
        """Whether this family's tools are there; when they are not (no ip6tables) and
        ``needed`` (a v6 network or port), Unavailable naming them."""
        await self._tools()
        if self.missing and needed:
            raise Unavailable(f"{self._save_cmd[0][: -len('-save')]} is not installed: no IPv6 firewall")
        return not self.missing

    async def require(self) -> None:
        """Unavailable when this family's tools are missing (before any change of a
        dual-stack network or endpoint, so that nothing of it is half made)."""
        async with self._lock:
            await self._usable(needed=True)

    async def _installed(self, owner: str) -> list[Rule]:
        """``owner``'s rules in shared chains: from memory, or read from the kernel."""
        if owner in self._rules or self._known:
            return list(self._rules.get(owner, []))
        return render_ipt.owned_rules(await self._state(), owner, _SHARED_CHAINS)

    async def _apply_read(self, render: Callable[[dict[str, TableState]], str]) -> None:
        """Apply ``render(state)`` for the state read now; when the kernel changed before
        the batch landed, once more from a fresh read (the first error is the one raised)."""
        try:
            await self._restore(render(await self._state()))
        except FirewallError as first:
            try:
                await self._restore(render(await self._state()))
            except FirewallError:
                raise first from None

    async def _apply_owner(self, owner: str, render: Callable[[list[Rule]], str], new: list[Rule]) -> None:
        """Apply ``render(old)`` for ``owner``, retrying once with the rules the kernel
        really holds when memory was wrong -- after putting cnm's skeleton back if that is
        what is missing (someone removed cnm's chains) -- then remember ``new``."""
        old = await self._installed(owner)
        try:
            await self._restore(render(old))
        except FirewallError as first:
            state = await self._state()
            try:
                problems = render_ipt.health_problems(state, self.userland_proxy, self.family)
                if problems:
                    log.warning(
                        "%s: cnm's chains were changed from outside (%s); putting them back",
                        self._save_cmd[0][: -len("-save")],
                        "; ".join(problems),
                    )
                    await self._restore(render_ipt.render_setup(state, self.userland_proxy, self.family))
                    # whoever removed them removed the other family's too, most likely:
                    # leave both healthy, as one setup would
                    await self._fw._other(self)._setup_locked()
                await self._restore(render(render_ipt.owned_rules(state, owner, _SHARED_CHAINS)))
            except FirewallError:
                raise first from None
        if new:
            self._rules[owner] = new
        else:
            self._rules.pop(owner, None)

    # -- operations ---------------------------------------------------------------------

    async def setup(self) -> None:
        async with self._lock:
            await self._setup_locked()

    async def _setup_locked(self) -> None:
        """``setup`` for a caller that holds the lock."""
        if not await self._usable(needed=False):
            log.warning("%s is not installed: IPv6 networks will be refused", self.tool)
            return
        await self._apply_read(lambda state: render_ipt.render_setup(state, self.userland_proxy, self.family))

    async def sync(self, networks: Sequence[BridgeRules], ports: Sequence[PortRule]) -> None:
        by_owner = render_ipt.port_rules_by_owner(ports, self.family)
        async with self._lock:
            if not await self._usable(needed=bool(networks or ports)):
                self._remember(networks, ports, by_owner)
                return
            await self._apply_read(
                lambda state: render_ipt.render_sync(
                    state, networks, ports, self.userland_proxy, self.family, self._fw._vnis
                )
            )
            self._remember(networks, ports, by_owner)

    def _remember(
        self, networks: Sequence[BridgeRules], ports: Sequence[PortRule], by_owner: dict[str, list[Rule]]
    ) -> None:
        """Memory after a sync: exactly ``networks`` and ``ports``."""
        self._rules = {
            n.owner: render_ipt.network_shared_rules(n, self.userland_proxy, self.family) for n in networks
        }
        self._rules.update(
            {
                owner: [render_ipt.port_jump(owner), *render_ipt.published_rules(owned)]
                for owner, owned in by_owner.items()
            }
        )
        self._bridges = {n.owner: n.bridge for n in networks}
        self._port_keys = {}
        for r in ports:
            self._port_keys.setdefault(r.owner, []).extend(port_keys([r]))
        self._port_owner = {key: o for o, keys in self._port_keys.items() for key in keys}
        self._known = True

    def may_hold_network(self, owner: str) -> bool:
        """Whether network ``owner`` may have rules here (remembered, or not yet synced)."""
        return owner in self._bridges or not self._known

    def may_hold_ports(self, owner: str) -> bool:
        """Whether endpoint ``owner`` may have DNAT rules here."""
        return owner in self._rules or not self._known

    async def add_network(self, rules: BridgeRules) -> None:
        new = render_ipt.network_shared_rules(rules, self.userland_proxy, self.family)
        async with self._lock:
            await self._usable(needed=True)
            for other, bridge in self._bridges.items():
                if other != rules.owner and bridge == rules.bridge:
                    raise FirewallError(f"bridge {rules.bridge} already carries the rules of network {other}")
                if other != rules.owner and other[:12] == rules.owner[:12]:
                    raise FirewallError(f"networks {other} and {rules.owner} share an id prefix")
            await self._apply_owner(
                rules.owner,
                lambda old: render_ipt.render_add_network(rules, old, self.userland_proxy, self.family),
                new,
            )
            self._bridges[rules.owner] = rules.bridge

    async def remove_network(self, owner: str) -> None:
        async with self._lock:
            if not await self._usable(needed=False):
                return
            await self._apply_owner(owner, lambda old: render_ipt.render_remove_network(owner, old), [])
            self._bridges.pop(owner, None)

    def claim(self, owner: str, rules: Sequence[PortRule]) -> list[PortKey]:
        """The keys ``rules`` claim here (FirewallError when another endpoint holds one)."""
        return claim_ports(owner, rules, self._port_owner)

    async def add_ports(self, owner: str, rules: Sequence[PortRule]) -> None:
        new = render_ipt.port_rules_by_owner(rules, self.family).get(owner, [])
        async with self._lock:
            await self._usable(needed=bool(rules))
            keys = self.claim(owner, rules)
            if self.family == 4:
                self._fw._localnet({r.bridge for r in rules}, strict=True)
            jump = [render_ipt.port_jump(owner), *render_ipt.published_rules(new)] if new else []
            await self._apply_owner(owner, lambda old: render_ipt.render_ports(owner, old, new), jump)
            self._forget_ports(owner)
            self._port_owner.update(dict.fromkeys(keys, owner))
            if keys:
                self._port_keys[owner] = keys

    async def remove_ports(self, owner: str) -> None:
        async with self._lock:
            if self._known and owner not in self._rules:
                return
            if not await self._usable(needed=False):
                return
            await self._apply_owner(owner, lambda old: render_ipt.render_ports(owner, old, []), [])
            self._forget_ports(owner)

    def _forget_ports(self, owner: str) -> None:
        for key in self._port_keys.pop(owner, []):
            self._port_owner.pop(key, None)

    async def set_vni(self, owner: str, vni: int, add: bool) -> None:
        """Add (or remove) ``owner``'s drop of ``vni`` in CNM-VXLAN and make INPUT's jump
        match; one batch, from a fresh read (a VNI changes rarely: with an encrypted
        network's first or last endpoint here)."""
        async with self._lock:
            await self._usable(needed=True)
            await self._apply_read(lambda state: render_ipt.render_vni(state, owner, vni, add=add))

    async def teardown(self) -> None:
        async with self._lock:
            if await self._usable(needed=False):
                await self._apply_read(render_ipt.render_teardown)
            self._rules.clear()
            self._bridges.clear()
            self._port_owner.clear()
            self._port_keys.clear()
            self._known = True

    async def healthy(self) -> bool:
        async with self._lock:
            if not await self._usable(needed=False):
                return True
            problems = render_ipt.health_problems(await self._state(), self.userland_proxy, self.family)
        if problems:
            log.info("%s: %s", self._save_cmd[0][: -len("-save")], "; ".join(problems))
        return not problems

    def installed(self) -> dict[str, str]:
        return dict(self._bridges)


def _error_message(tool: str, err: str, batch: str | None) -> str:
    """The tool's first message, and the batch line it names (``Error occurred at line: N``)."""
    lines = [line.strip() for line in err.splitlines() if line.strip() and not line.startswith("Try `")]
    text = "; ".join(lines[:2]) or "failed"
    match = re.search(r"line:? (\d+)", err)
    if match and batch:
        numbered = batch.splitlines()
        n = int(match.group(1))
        if 0 < n <= len(numbered):
            text += f" (at {numbered[n - 1]!r})"
    return f"{tool}: {text}"
