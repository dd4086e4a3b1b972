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

_SHARED_CHAINS = frozenset(c for chains in render_ipt.SHARED.values() for c in chains)
_VARIANT_RE = re.compile(r"\((nf_tables|legacy)\)")


class IptablesFirewall:
    """cnm's rules in iptables chains named ``CNM*`` (see ``render_ipt`` for the layout).

    Keeps, in memory, each owner's rules in the chains it shares with other owners, so a
    change is one batch the size of that owner's rules; after a restart the daemon calls
    ``sync`` first.  A change the memory cannot explain (rules deleted from outside, or
    left by a previous daemon) is retried once with the rules read from ``iptables-save``.
    ``teardown`` reads everything it removes from the kernel (no memory needed).

    One operation at a time (reads included): a batch is rendered from what was read or
    remembered, so no other batch of this daemon may land in between, and iptables-nft
    never has to replay a transaction another cnm batch overtook.  A batch rendered from
    a read that the kernel no longer matches when it is applied (another program changed
    the chains in between) is rendered again from a fresh read, once; when cnm's own
    chains are what vanished, they are put back first, so the change still lands.

    Plain VXLAN from the underlay carrying an encrypted overlay network's VNI is dropped
    in CNM-VXLAN (a ``u32`` match on the VNI), which INPUT jumps to only while such a
    network is on this host."""

    def __init__(self, userland_proxy: bool = False, iptables: str = "iptables") -> None:
        self.userland_proxy = userland_proxy
        self.iptables = iptables
        self.variant: str | None = None  # "nf_tables" | "legacy", once detected
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
        self._vnis: dict[str, int] = {}  # encrypted overlay network id -> its VNI
        self._lock = asyncio.Lock()  # held by every operation, from its first read to its last batch

    # -- exec boundary ------------------------------------------------------------------

    async def _tools(self) -> None:
        if self._restore_cmd:
            return
        out = await self._exec([self.iptables, "--version"])
        match = _VARIANT_RE.search(out)
        if not match:
            raise Unavailable(f"cannot tell which iptables {self.iptables!r} is: {out.strip()!r}")
        self.variant = match.group(1)
        short = "nft" if self.variant == "nf_tables" else "legacy"
        base = f"iptables-{short}" if shutil.which(f"iptables-{short}-restore") else self.iptables
        self._save_cmd = [f"{base}-save"]
        self._restore_cmd = [f"{base}-restore", "-w", "--noflush"]

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

    async def _state(self) -> dict[str, TableState]:
        """What the kernel holds now (all tables, as ``iptables-save`` prints them)."""
        await self._tools()
        return render_ipt.parse_save(await self._exec(self._save_cmd))

    async def _restore(self, batch: str) -> None:
        """Apply ``batch`` with one ``iptables-restore --noflush``."""
        if not batch:
            return
        await self._tools()
        log_script(" ".join(self._restore_cmd), batch)
        await self._exec(self._restore_cmd, batch)

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
                problems = render_ipt.health_problems(state, self.userland_proxy)
                if problems:
                    log.warning(
                        "iptables: cnm's chains were changed from outside (%s); putting them back",
                        "; ".join(problems),
                    )
                    await self._restore(render_ipt.render_setup(state, self.userland_proxy))
                await self._restore(render(render_ipt.owned_rules(state, owner, _SHARED_CHAINS)))
            except FirewallError:
                raise first from None
        if new:
            self._rules[owner] = new
        else:
            self._rules.pop(owner, None)

    # -- Firewall protocol --------------------------------------------------------------

    async def setup(self) -> None:
        """Create cnm's chains if missing, rewrite the skeleton (fixed chains and the
        jumps from the built-in chains, CNM-USER first in FORWARD); turn on IPv4
        forwarding.  Built-in policies are never changed; CNM-USER is never flushed."""
        async with self._lock:
            await self._apply_read(lambda state: render_ipt.render_setup(state, self.userland_proxy))
        set_sysctl("net.ipv4.ip_forward", "1")

    async def sync(self, networks: Sequence[BridgeRules], ports: Sequence[PortRule] = ()) -> None:
        """Make cnm's chains hold exactly ``networks`` and ``ports``, in one batch."""
        by_owner = render_ipt.port_rules_by_owner(ports)  # validates before anything
        self._localnet({p.bridge for p in ports}, strict=False)
        async with self._lock:
            await self._apply_read(
                lambda state: render_ipt.render_sync(state, networks, ports, self.userland_proxy, self._vnis)
            )
            self._remember(networks, ports, by_owner)

    def _remember(
        self, networks: Sequence[BridgeRules], ports: Sequence[PortRule], by_owner: dict[str, list[Rule]]
    ) -> None:
        """Memory after a sync: exactly ``networks`` and ``ports``."""
        self._rules = {n.owner: render_ipt.network_shared_rules(n, self.userland_proxy) for n in networks}
        self._rules.update({owner: [render_ipt.port_jump(owner)] for owner in by_owner})
        self._bridges = {n.owner: n.bridge for n in networks}
        self._port_keys = {}
        for r in ports:
            self._port_keys.setdefault(r.owner, []).extend(port_keys([r]))
        self._port_owner = {key: o for o, keys in self._port_keys.items() for key in keys}
        self._known = True

    async def add_network(self, rules: BridgeRules) -> None:
        """Install or replace one network's chains and rules in one batch."""
        new = render_ipt.network_shared_rules(rules, self.userland_proxy)
        async with self._lock:
            for other, bridge in self._bridges.items():
                if other != rules.owner and bridge == rules.bridge:
                    raise FirewallError(f"bridge {rules.bridge} already carries the rules of network {other}")
                if other != rules.owner and other[:12] == rules.owner[:12]:
                    raise FirewallError(f"networks {other} and {rules.owner} share an id prefix")
            await self._apply_owner(
                rules.owner, lambda old: render_ipt.render_add_network(rules, old, self.userland_proxy), new
            )
            self._bridges[rules.owner] = rules.bridge

    async def remove_network(self, owner: str) -> None:
        """Remove network ``owner``'s rules and chains; idempotent."""
        async with self._lock:
            await self._apply_owner(owner, lambda old: render_ipt.render_remove_network(owner, old), [])
            self._bridges.pop(owner, None)

    async def add_ports(self, owner: str, rules: Sequence[PortRule]) -> None:
        """Replace endpoint ``owner``'s DNAT rules with ``rules`` in one batch (its size
        depends only on this endpoint's ports)."""
        new = render_ipt.port_rules_by_owner(rules).get(owner, [])
        async with self._lock:
            keys = claim_ports(owner, rules, self._port_owner)
            self._localnet({r.bridge for r in rules}, strict=True)
            jump = [render_ipt.port_jump(owner)] if new else []
            await self._apply_owner(owner, lambda old: render_ipt.render_ports(owner, old, new), jump)
            self._forget_ports(owner)
            self._port_owner.update(dict.fromkeys(keys, owner))
            if keys:
                self._port_keys[owner] = keys

    async def remove_ports(self, owner: str) -> None:
        """Delete endpoint ``owner``'s DNAT rules; idempotent (no exec at all when memory
        says it has none)."""
        async with self._lock:
            if self._known and owner not in self._rules:
                return
            await self._apply_owner(owner, lambda old: render_ipt.render_ports(owner, old, []), [])
            self._forget_ports(owner)

    def _forget_ports(self, owner: str) -> None:
        for key in self._port_keys.pop(owner, []):
            self._port_owner.pop(key, None)

    async def add_encrypted_vni(self, owner: str, vni: int) -> None:
        """Drop plain VXLAN with ``vni`` from anywhere but the tunnel (replacing what
        ``owner`` had there), INPUT's jump made if missing; one batch, from a fresh read
        (a VNI changes rarely: with an encrypted network's first or last endpoint)."""
        render_ipt.vni_rule(owner, vni)  # validates before anything
        async with self._lock:
            await self._apply_read(lambda state: render_ipt.render_vni(state, owner, vni, add=True))
            self._vnis[owner] = vni

    async def remove_encrypted_vni(self, owner: str, vni: int) -> None:
        """Remove ``owner``'s drop whether or not it is there; with the last one, INPUT's
        jump goes too."""
        async with self._lock:
            await self._apply_read(lambda state: render_ipt.render_vni(state, owner, vni, add=False))
            self._vnis.pop(owner, None)

    async def teardown(self) -> None:
        """Remove every cnm jump and chain (CNM-USER included), found by reading the
        kernel, so rules left by a previous daemon go too; idempotent."""
        async with self._lock:
            await self._apply_read(render_ipt.render_teardown)
            self._rules.clear()
            self._bridges.clear()
            self._port_owner.clear()
            self._port_keys.clear()
            self._known = True
            self._vnis.clear()

    async def healthy(self) -> bool:
        """True when cnm's chains, the jumps to them and the skeleton's rules are present."""
        async with self._lock:
            problems = render_ipt.health_problems(await self._state(), self.userland_proxy)
        if problems:
            log.info("iptables: %s", "; ".join(problems))
        return not problems

    # -- helpers ------------------------------------------------------------------------

    def installed(self) -> dict[str, str]:
        """network id -> bridge of the networks this instance installed."""
        return dict(self._bridges)

    def _localnet(self, bridges: Iterable[str], strict: bool) -> None:
        if not self.userland_proxy:  # the proxy serves 127.0.0.1 itself
            enable_route_localnet(bridges, strict=strict)


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
