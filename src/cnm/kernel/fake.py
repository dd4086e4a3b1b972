"""``FakeKernel``: the Kernel protocol in memory, for driver and engine unit tests.

It keeps the rules the real kernel enforces that callers depend on: names are unique per
namespace (Conflict), a veth needs its bridge and namespace (KernelError), deleting either
end of a pair deletes both, deleting a namespace destroys the pairs inside it, removal is
idempotent, a VXLAN device needs its bridge and a VNI+port no other device has, FDB entries
exist only on VXLAN devices and vanish with their device (so do neighbour entries).
``commands`` records, in order, the command a person would have typed for every change
(and every gratuitous ARP, also kept in ``announced``).  ``fail(method)`` makes the next
call(s) of a method raise, to test undo.
"""

from __future__ import annotations

import shlex
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import Any

from cnm.errors import Conflict, KernelError, NotFound
from cnm.kernel import sysctl as sysctls
from cnm.kernel import wireguard as wg
from cnm.kernel.api import (
    FdbEntry,
    LinkInfo,
    LinkStats,
    NeighEntry,
    VethSpec,
    VxlanSpec,
    WgPeer,
    WgPeerStatus,
    WgProcess,
    WgSpec,
    WgStatus,
    owner_alias,
)
from cnm.kernel.reaper import RETIRED_GROUP

ENV_USERSPACE = "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD"

HOST = None  # key of the host namespace in FakeKernel.namespaces


@dataclass
class FakeLink:
    index: int
    name: str
    kind: str
    owner: str = ""
    daemon: str = ""  # the cnmd that tagged it ("" for the old tag)
    master: int = 0
    mac: str = ""
    mtu: int = 1500
    up: bool = False
    addresses: list[IPv4Interface] = field(default_factory=list)
    peer: tuple[str | None, int] | None = None  # (namespace, index) of a veth's other end
    gateway: IPv4Address | None = None  # default route via this link (container side)
    ipv6: bool = False  # IPv6 on (a bridge of a v6 network, a container end of one)
    addresses6: list[IPv6Interface] = field(default_factory=list)  # global ones, added without DAD
    gateway6: IPv6Address | None = None  # IPv6 default route via this link (container side)
    isolated: bool = False
    hairpin: bool = False
    stats: LinkStats | None = None  # tests set counters here
    vxlan: VxlanSpec | None = None  # a VXLAN device's configuration
    fdb: dict[str, IPv4Address] = field(default_factory=dict)  # MAC -> VTEP (VXLAN devices)
    neigh: dict[IPv4Address, str] = field(default_factory=dict)  # permanent entries: IP -> MAC

    def info(self) -> LinkInfo:
        return LinkInfo(
            index=self.index,
            name=self.name,
            kind=self.kind,
            owner=self.owner,
            master=self.master,
            mac=self.mac,
            mtu=self.mtu,
            up=self.up,
            addresses=tuple(self.addresses),
            daemon=self.daemon,
            stats=self.stats,
        )


class FakeKernel:
    """In-memory kernel.  ``namespaces`` maps a netns path (``None`` = host) to its links by
    name; ``sysctls`` maps (netns path or None, key) to a value.  ``daemon_id`` tags every
    link it makes; ``others`` plays the other live cnmd ({daemon id: pid})."""

    DAEMON = "fa4ed0000000"

    def __init__(self, *, host_networks: Iterable[IPv4Network] = (), daemon_id: str = DAEMON) -> None:
        self.daemon_id = daemon_id
        self.others: dict[str, int] = {}
        self.namespaces: dict[str | None, dict[str, FakeLink]] = {HOST: {}}
        self.sysctls: dict[tuple[str | None, str], str] = {}
        self.commands: list[str] = []
        self.announced: list[tuple[str, NeighEntry]] = []  # (link, entry) of every gratuitous ARP
        self.extra_host_networks = list(host_networks)
        self.extra_host_networks6: list[IPv6Network] = []
        self.closed = False
        self.sysctl_default = "1"  # what an unset key reads as
        self._next_index = 1
        self._failures: dict[str, list[BaseException]] = {}
        self._add_link(HOST, "lo", "", up=True, addresses=[IPv4Interface("127.0.0.1/8")])

    # -- test helpers ---------------------------------------------------------------------

    def fail(self, method: str, error: BaseException | None = None, times: int = 1) -> None:
        """Make the next ``times`` calls of ``method`` raise ``error`` (a KernelError by
        default) before changing anything."""
        exc = error or KernelError(f"injected failure in {method}")
        self._failures.setdefault(method, []).extend([exc] * times)

    def add_foreign_link(
        self, name: str, kind: str = "bridge", owner: str = "", daemon: str = "", master: int = 0
    ) -> int:
        """A link this kernel's daemon did not create: the user's (no owner), or another
        cnmd's (``daemon``), or an old cnm's (``owner`` without ``daemon``)."""
        return self._add_link(HOST, name, kind, owner=owner, daemon=daemon, master=master).index

    @property
    def netns(self) -> set[str]:
        """Paths of the namespaces that exist (the host's not included)."""
        return {path for path in self.namespaces if path is not None}

    def link(self, name: str, netns_path: str | None = None) -> FakeLink | None:
        return self.namespaces.get(netns_path, {}).get(name)

    def link_names(self, netns_path: str | None = None) -> list[str]:
        return sorted(self.namespaces.get(netns_path, {}))

    # -- internals ------------------------------------------------------------------------

    def _maybe_fail(self, method: str) -> None:
        pending = self._failures.get(method)
        if pending:
            raise pending.pop(0)

    def _record(self, command: str, netns: str | None = None) -> None:
        self.commands.append(f"nsenter --net={netns} {command}" if netns else command)

    def _add_link(self, netns: str | None, name: str, kind: str, **values: Any) -> FakeLink:
        link = FakeLink(index=self._next_index, name=name, kind=kind, **values)
        self._next_index += 1
        self.namespaces[netns][name] = link
        return link

    def _by_index(self, netns: str | None, index: int) -> FakeLink | None:
        return next((x for x in self.namespaces.get(netns, {}).values() if x.index == index), None)

    def _remove(self, netns: str | None, link: FakeLink) -> None:
        """Remove ``link`` and, for a veth, its peer; ports of a removed bridge detach."""
        self.namespaces[netns].pop(link.name, None)
        if link.peer is not None:
            peer_ns, peer_index = link.peer
            peer = self._by_index(peer_ns, peer_index)
            if peer is not None:
                self.namespaces[peer_ns].pop(peer.name, None)
        if link.kind == "bridge":
            for port in self.namespaces[netns].values():
                if port.master == link.index:
                    port.master = 0

    # -- namespaces -----------------------------------------------------------------------

    async def create_netns(self, path: str) -> None:
        self._maybe_fail("create_netns")
        if path in self.namespaces:
            raise Conflict(f"network namespace {path} already exists")
        self._record(f"ip netns add {path}")
        self.namespaces[path] = {}
        self._add_link(path, "lo", "", up=True, addresses=[IPv4Interface("127.0.0.1/8")])

    async def delete_netns(self, path: str) -> None:
        self._maybe_fail("delete_netns")
        links = self.namespaces.get(path)
        if links is None:
            return
        self._record(f"ip netns delete {path}")
        for link in list(links.values()):
            self._remove(path, link)  # the kernel destroys the pairs with the namespace
        del self.namespaces[path]

    def netns_exists(self, path: str) -> bool:
        return path in self.namespaces

    def other_daemons(self) -> dict[str, int]:
        return dict(self.others)

    # -- links ----------------------------------------------------------------------------

    async def ensure_bridge(
        self,
        name: str,
        *,
        owner: str,
        mtu: int,
        address: IPv4Interface | None,
        address6: IPv6Interface | None = None,
    ) -> int:
        self._maybe_fail("ensure_bridge")
        link = self.link(name)
        if link is None:
            self._record(f"ip link add {name} mtu {mtu} type bridge")
            self._record(f"ip link set {name} alias {owner_alias(owner, self.daemon_id)}")
            link = self._add_link(HOST, name, "bridge", owner=owner, daemon=self.daemon_id, mtu=mtu)
        elif link.kind != "bridge":
            raise Conflict(f"cannot use {name} as a bridge: a {link.kind or 'non-bridge'} link has that name")
        if address is not None and address not in link.addresses:
            self._record(f"ip addr add {address} dev {name}")
            link.addresses.append(address)
        if not link.up:
            self._record(f"ip link set {name} up")
            link.up = True
        if address6 is not None:
            if link.mtu < 1280:
                raise KernelError(
                    f"cannot turn on IPv6 on bridge {name}: the host has no IPv6, or the bridge's MTU is below IPv6's 1280"
                )
            await self.set_sysctl(sysctls.conf_key("ipv6", name, "disable_ipv6"), "0")
            link.ipv6 = True
            if address6 not in link.addresses6:
                self._record(f"ip -6 addr add {address6} dev {name} nodad")
                link.addresses6.append(address6)
        return link.index

    async def add_veth(self, spec: VethSpec) -> int:
        self._maybe_fail("add_veth")
        bridge = self.link(spec.bridge)
        if bridge is None or bridge.kind != "bridge":
            raise KernelError(f"cannot attach {spec.host_ifname}: bridge {spec.bridge} does not exist")
        if spec.netns_path not in self.namespaces:
            raise KernelError(f"network namespace {spec.netns_path} does not exist")
        if spec.host_ifname in self.namespaces[HOST] or spec.ifname in self.namespaces[spec.netns_path]:
            raise Conflict(
                f"cannot create veth {spec.host_ifname}: the name is taken on the host "
                f"or {spec.ifname} exists in {spec.netns_path}"
            )
        if spec.gateway is not None and (spec.address is None or spec.gateway not in spec.address.network):
            raise KernelError(f"cannot configure {spec.ifname} in {spec.netns_path}: Network is unreachable")
        if spec.gateway6 is not None and (
            spec.address6 is None or spec.gateway6 not in spec.address6.network
        ):
            raise KernelError(f"cannot configure {spec.ifname} in {spec.netns_path}: Network is unreachable")
        if spec.ipv6:
            self._record("sysctl -w net.ipv6.conf.default.disable_ipv6=0", spec.netns_path)
        self._record(
            f"ip link add {spec.host_ifname} mtu {spec.mtu} master {spec.bridge} type veth "
            f"peer name {spec.ifname}{f' address {spec.mac}' if spec.mac else ''} mtu {spec.mtu} "
            f"netns {spec.netns_path}"
        )
        host = self._add_link(
            HOST,
            spec.host_ifname,
            "veth",
            owner=spec.owner,
            daemon=self.daemon_id,
            master=bridge.index,
            mtu=spec.mtu,
            up=True,
            hairpin=spec.hairpin,
            mac=f"02:00:00:00:00:{self._next_index & 0xFF:02x}",
        )
        inner = self._add_link(
            spec.netns_path,
            spec.ifname,
            "veth",
            mtu=spec.mtu,
            up=True,
            mac=spec.mac,
            addresses=([spec.address] if spec.address is not None else []) + list(spec.link_local),
            gateway=spec.gateway,
            peer=(HOST, host.index),
            ipv6=spec.ipv6,
            addresses6=[spec.address6] if spec.address6 is not None else [],
            gateway6=spec.gateway6,
        )
        host.peer = (spec.netns_path, inner.index)
        if spec.ipv6:
            self._record("sysctl -w net.ipv6.conf.default.disable_ipv6=1", spec.netns_path)
        self._record(
            f"ip link set {spec.host_ifname} alias {owner_alias(spec.owner, self.daemon_id, spec.label)} up"
        )
        self._record(f"ip link set {spec.ifname} up", spec.netns_path)
        if spec.address is not None:
            self._record(f"ip addr add {spec.address} dev {spec.ifname}", spec.netns_path)
        if spec.gateway is not None:
            self._record(f"ip route add default via {spec.gateway} dev {spec.ifname}", spec.netns_path)
        if spec.address6 is not None:
            self._record(f"ip -6 addr add {spec.address6} dev {spec.ifname} nodad", spec.netns_path)
        if spec.gateway6 is not None:
            self._record(f"ip -6 route add default via {spec.gateway6} dev {spec.ifname}", spec.netns_path)
        return host.index

    async def add_vxlan(self, spec: VxlanSpec) -> int:
        self._maybe_fail("add_vxlan")
        if spec.name in self.namespaces[HOST]:
            raise Conflict(f"cannot create vxlan {spec.name}: a link has that name")
        bridge = self.link(spec.bridge)
        if bridge is None or bridge.kind != "bridge":
            raise KernelError(f"cannot attach {spec.name}: bridge {spec.bridge} does not exist")
        for other in self.namespaces[HOST].values():
            if other.vxlan is not None and (other.vxlan.vni, other.vxlan.port) == (spec.vni, spec.port):
                raise Conflict(
                    f"cannot create vxlan {spec.name}: the name is taken or VNI {spec.vni} "
                    f"on port {spec.port} is in use by another device"
                )
        self._record(
            f"ip link add {spec.name} mtu {spec.mtu} master {spec.bridge} up type vxlan id {spec.vni}"
            f" local {spec.local} dstport {spec.port} nolearning proxy"
        )
        self._record(f"ip link set {spec.name} alias {owner_alias(spec.owner, self.daemon_id)}")
        link = self._add_link(
            HOST,
            spec.name,
            "vxlan",
            owner=spec.owner,
            daemon=self.daemon_id,
            master=bridge.index,
            mtu=spec.mtu,
            up=True,
            vxlan=spec,
            mac=f"02:00:00:00:01:{self._next_index & 0xFF:02x}",
        )
        return link.index

    def _device(self, dev: str, what: str, *, vxlan: bool) -> FakeLink:
        link = self.link(dev)
        if link is None:
            raise KernelError(f"cannot {what} of {dev}: no such device")
        if vxlan and link.vxlan is None:
            raise KernelError(
                f"cannot use the fdb of {dev}: a {link.kind or 'plain'} link, not a VXLAN device"
            )
        return link

    async def replace_fdb(self, dev: str, entry: FdbEntry) -> None:
        self._maybe_fail("replace_fdb")
        link = self._device(dev, "change the fdb", vxlan=True)
        self._record(f"bridge fdb replace {entry.mac} dev {dev} dst {entry.dst} self permanent")
        link.fdb[entry.mac] = entry.dst

    async def delete_fdb(self, dev: str, entry: FdbEntry) -> None:
        self._maybe_fail("delete_fdb")
        link = self.link(dev)
        if link is None:
            return
        self._device(dev, "change the fdb", vxlan=True)
        if link.fdb.get(entry.mac) != entry.dst:
            return
        self._record(f"bridge fdb del {entry.mac} dev {dev} dst {entry.dst} self")
        del link.fdb[entry.mac]

    async def fdb_entries(self, dev: str) -> list[FdbEntry]:
        self._maybe_fail("fdb_entries")
        link = self._device(dev, "list the fdb", vxlan=True)
        return sorted(FdbEntry(mac, dst) for mac, dst in link.fdb.items())

    async def replace_neigh(self, dev: str, entry: NeighEntry) -> None:
        self._maybe_fail("replace_neigh")
        link = self._device(dev, "change the neighbours", vxlan=False)
        self._record(f"ip neigh replace {entry.ip} lladdr {entry.mac} dev {dev} nud permanent")
        link.neigh[entry.ip] = entry.mac

    async def delete_neigh(self, dev: str, ip: IPv4Address) -> None:
        self._maybe_fail("delete_neigh")
        link = self.link(dev)
        if link is None or ip not in link.neigh:
            return
        self._record(f"ip neigh del {ip} dev {dev}")
        del link.neigh[ip]

    async def neigh_entries(self, dev: str) -> list[NeighEntry]:
        self._maybe_fail("neigh_entries")
        link = self._device(dev, "list the neighbours", vxlan=False)
        return sorted(NeighEntry(ip, mac) for ip, mac in link.neigh.items())

    async def announce(self, dev: str, entries: Sequence[NeighEntry]) -> None:
        self._maybe_fail("announce")
        link = self._device(dev, "announce addresses", vxlan=False)
        if not link.up:
            raise KernelError(f"cannot announce addresses on {dev}: the link is down")
        for entry in entries:
            self._record(f"arping -U -c 1 -I {dev} -s {entry.ip} {entry.ip}  # from {entry.mac}")
            self.announced.append((dev, entry))

    async def set_default_route(
        self, netns_path: str, gateway: IPv4Address | IPv6Address, ifname: str
    ) -> None:
        link = self.namespaces.get(netns_path, {}).get(ifname)
        if link is None:
            raise KernelError(f"no interface {ifname} in {netns_path}")
        if isinstance(gateway, IPv6Address):
            if not link.ipv6 or not any(gateway in a.network for a in link.addresses6):
                raise KernelError(f"cannot route {netns_path} via {gateway}: Network is unreachable")
            for other in self.namespaces[netns_path].values():
                other.gateway6 = None
            link.gateway6 = gateway
            self._record(f"ip -6 route replace default via {gateway} dev {ifname}", netns_path)
            return
        for other in self.namespaces[netns_path].values():
            other.gateway = None
        link.gateway = gateway
        self._record(f"ip route replace default via {gateway} dev {ifname}", netns_path)

    async def set_port_isolated(self, name: str, isolated: bool) -> None:
        """Bridge-port isolation on a host link (see LinuxKernel.set_port_isolated)."""
        self._maybe_fail("set_port_isolated")
        link = self.link(name)
        if link is None or not link.master:
            raise KernelError(f"cannot set isolation on bridge port {name}: No such device")
        self._record(f"ip link set dev {name} type bridge_slave isolated {'on' if isolated else 'off'}")
        link.isolated = isolated

    async def delete_link(self, name: str, netns_path: str | None = None) -> None:
        self._maybe_fail("delete_link")
        link = self.link(name, netns_path)
        if link is None:
            return
        self._record(f"ip link del {name}", netns_path)
        self._remove(netns_path, link)

    async def retire_link(self, name: str, netns_path: str | None = None, peer: str = "") -> None:
        """LinuxKernel retires a pair and deletes it in the background; here both happen at
        once (nothing observable waits in between)."""
        self._maybe_fail("retire_link")
        link = self.link(name)
        if link is None:
            return
        if netns_path and peer and self.link(peer, netns_path) is not None:
            self._record(f"ip link set {peer} down", netns_path)
        else:
            self._record(f"ip link set {name} down")
        self._record(f"ip link set {name} group {RETIRED_GROUP}")
        self._record(f"ip link del group {RETIRED_GROUP}")
        self._remove(HOST, link)

    async def links(self, netns_path: str | None = None) -> list[LinkInfo]:
        self._maybe_fail("links")
        if netns_path not in self.namespaces:
            raise KernelError(f"network namespace {netns_path} does not exist")
        return [link.info() for link in sorted(self.namespaces[netns_path].values(), key=lambda x: x.index)]

    async def lookup_link(self, name: str) -> LinkInfo | None:
        self._maybe_fail("lookup_link")
        found = self.namespaces[HOST].get(name)
        return found.info() if found is not None else None

    async def host_networks(self) -> list[IPv4Network]:
        self._maybe_fail("host_networks")
        found = set(self.extra_host_networks)
        for link in self.namespaces[HOST].values():
            found.update(a.network for a in link.addresses)
        return sorted(found)

    async def host_networks6(self) -> list[IPv6Network]:
        """``extra_host_networks6``: the tests say what the host has."""
        self._maybe_fail("host_networks6")
        return sorted(set(self.extra_host_networks6))

    # -- sysctl ---------------------------------------------------------------------------

    def _sysctl(self, netns: str | None, key: str) -> str:
        """``key``'s value: as set, else the kernel's default for IPv6 forwarding ("0"),
        else ``sysctl_default``."""
        fallback = "0" if key in sysctls.IPV6_FORWARDING else self.sysctl_default
        return self.sysctls.get((netns, key), fallback)

    async def set_sysctl(self, key: str, value: str, netns_path: str | None = None) -> str:
        self._maybe_fail("set_sysctl")
        if netns_path is not None and netns_path not in self.namespaces:
            raise KernelError(f"network namespace {netns_path} does not exist")
        previous = self._sysctl(netns_path, key)
        if previous != value:
            self._record(f"sysctl -w {key}={value}", netns_path)
        self.sysctls[(netns_path, key)] = value
        return previous

    async def enable_ipv6_forwarding(self) -> None:
        """As LinuxKernel's, on ``sysctls`` of the host (see ``_sysctl`` for unset keys)."""
        self._maybe_fail("enable_ipv6_forwarding")

        def read(key: str) -> str | None:
            return self._sysctl(HOST, key)

        if all(read(key) == "1" for key in sysctls.IPV6_FORWARDING):
            return
        uplinks = [
            link.name
            for link in self.namespaces[HOST].values()
            if not link.owner and not link.master and link.name != "lo"
        ]
        for key, value in sysctls.ipv6_forwarding_plan(read, uplinks):
            await self.set_sysctl(key, value)

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeDevice:
    """One WireGuard device of ``FakeWireGuard``."""

    ifname: str
    owner: str
    daemon: str
    netns: str | None
    private_key: str
    listen_port: int
    peers: dict[str, WgPeer] = field(default_factory=dict)
    handshakes: dict[str, float] = field(default_factory=dict)  # tests set these
    pid: int = 0


class FakeWireGuard:
    """The WireGuard protocol in memory, on a ``FakeKernel``: a device is a ``tun`` link in the
    kernel's namespace, tagged like the real one; its commands go to ``kernel.commands`` and
    are the real backend's (``cnm.kernel.wireguard`` renders both).  ``add_foreign_device``
    plays another cnmd's device; ``fail(method)`` makes a call raise before changing anything."""

    def __init__(self, kernel: FakeKernel | None = None) -> None:
        self.kernel = kernel if kernel is not None else FakeKernel()
        self.daemon_id = self.kernel.daemon_id
        self.devices: dict[str, FakeDevice] = {}
        self._next_pid = 1000

    # -- test helpers ---------------------------------------------------------------------

    def fail(self, method: str, error: BaseException | None = None, times: int = 1) -> None:
        self.kernel.fail(f"wg.{method}", error, times)

    def add_foreign_device(self, ifname: str, daemon: str, owner: str = "other") -> None:
        self.devices[ifname] = FakeDevice(
            ifname, owner, daemon, None, wg.generate_private_key(), 51820, pid=1
        )
        self.kernel.add_foreign_link(ifname, kind="tun", owner=owner, daemon=daemon)

    # -- internals ------------------------------------------------------------------------

    def _record(self, argv: list[str], netns: str | None) -> None:
        self.kernel._record(shlex.join(argv), netns)

    def _device(self, ifname: str) -> FakeDevice:
        device = self.devices.get(ifname)
        if device is None:
            raise NotFound(f"no WireGuard device {ifname}")
        return device

    # -- the protocol ---------------------------------------------------------------------

    async def up(self, spec: WgSpec, netns_path: str | None = None) -> WgStatus:
        self.kernel._maybe_fail("wg.up")
        ifname = wg.check_spec(spec).ifname
        device = self.devices.get(ifname)
        if device is not None and device.daemon != self.daemon_id:
            raise Conflict(f"WireGuard interface {ifname} belongs to another cnmd ({device.daemon})")
        links = self.kernel.namespaces.get(netns_path)
        if links is None:
            raise KernelError(f"network namespace {netns_path} does not exist")
        if device is None:
            if ifname in links:
                raise Conflict(f"cannot start WireGuard interface {ifname}: a link of that name exists")
            self._record([f"{ENV_USERSPACE}=1", "wireguard-go", ifname], netns_path)
            device = FakeDevice(ifname, spec.owner, self.daemon_id, netns_path, "", 0, pid=self._next_pid)
            self._next_pid += 1
            self.devices[ifname] = device
            self.kernel._add_link(netns_path, ifname, "tun", owner=spec.owner, daemon=self.daemon_id)
        private = spec.private_key or device.private_key or wg.generate_private_key()
        new_key, new_port = private != device.private_key, spec.listen_port != device.listen_port
        if new_key or new_port:
            port = spec.listen_port if new_port else None
            self._record(wg.device_command(ifname, listen_port=port, private_key=new_key), netns_path)
            device.private_key, device.listen_port = private, spec.listen_port
        link = links[ifname]
        alias = owner_alias(spec.owner, self.daemon_id)
        if (link.owner, link.daemon, link.mtu, link.up) != (spec.owner, self.daemon_id, spec.mtu, True):
            self._record(
                ["ip", "link", "set", ifname, "alias", alias, "mtu", str(spec.mtu), "up"], netns_path
            )
            link.owner, link.daemon, link.mtu, link.up = spec.owner, self.daemon_id, spec.mtu, True
        for address in [a for a in link.addresses if a != spec.address]:
            self._record(["ip", "addr", "del", str(address), "dev", ifname], netns_path)
            link.addresses.remove(address)
        if spec.address not in link.addresses:
            self._record(["ip", "addr", "add", str(spec.address), "dev", ifname], netns_path)
            link.addresses.append(spec.address)
        return await self.status(ifname, netns_path)

    async def set_peers(self, ifname: str, peers: Sequence[WgPeer], netns_path: str | None = None) -> None:
        self._apply(ifname, peers, True, netns_path)

    async def update_peer(self, ifname: str, peer: WgPeer, netns_path: str | None = None) -> None:
        self._apply(ifname, [peer], False, netns_path)

    def _apply(self, ifname: str, peers: Sequence[WgPeer], exact: bool, netns: str | None) -> None:
        self.kernel._maybe_fail("wg.set_peers")
        device = self._device(ifname)
        plan = wg.plan_peers(device.peers.values(), peers, exact=exact)
        for argv in wg.plan_commands(ifname, plan):
            self._record(argv, netns)
        for peer in plan.upsert:
            old = device.peers.get(peer.public_key)
            if peer.endpoint is None and old is not None:
                peer = replace(peer, endpoint=old.endpoint)
            for other in device.peers.values():  # an allowed IP has one peer: it moves
                if other.public_key != peer.public_key and set(other.allowed_ips) & set(peer.allowed_ips):
                    kept = tuple(n for n in other.allowed_ips if n not in peer.allowed_ips)
                    device.peers[other.public_key] = replace(other, allowed_ips=kept)
            device.peers[peer.public_key] = peer
        for key in plan.remove:
            device.peers.pop(key, None)
            device.handshakes.pop(key, None)

    async def remove_peer(self, ifname: str, public_key: str, netns_path: str | None = None) -> None:
        wg.check_key(public_key)
        device = self._device(ifname)
        if public_key in device.peers:
            self._record(wg.remove_command(ifname, public_key), netns_path)
            del device.peers[public_key]
            device.handshakes.pop(public_key, None)

    async def set_private_key(self, ifname: str, private_key: str, netns_path: str | None = None) -> None:
        wg.check_key(private_key, "private key")
        device = self._device(ifname)
        if device.private_key != private_key:
            self._record(wg.device_command(ifname, private_key=True), netns_path)
            device.private_key = private_key
            device.handshakes.clear()  # wireguard-go drops every session with the old key

    async def status(self, ifname: str, netns_path: str | None = None) -> WgStatus:
        device = self._device(ifname)
        return WgStatus(
            ifname=ifname,
            public_key=wg.public_key(device.private_key) if device.private_key else "",
            listen_port=device.listen_port,
            peers=tuple(
                WgPeerStatus(peer=p, last_handshake=device.handshakes.get(k, 0.0))
                for k, p in device.peers.items()
            ),
        )

    async def down(self, ifname: str, netns_path: str | None = None) -> None:
        self.kernel._maybe_fail("wg.down")
        device = self.devices.get(ifname)
        if device is None or device.daemon != self.daemon_id:
            return
        self._record(["kill", "-TERM", str(device.pid)], None)
        del self.devices[ifname]
        link = self.kernel.link(ifname, device.netns)
        if link is not None:
            self.kernel._remove(device.netns, link)  # the TUN dies with its process

    async def running(self) -> list[WgProcess]:
        return [
            WgProcess(pid=d.pid, ifname=d.ifname, daemon=d.daemon, owner=d.owner)
            for d in self.devices.values()
            if d.daemon == self.daemon_id
        ]

    async def reap(self, keep: Collection[str]) -> list[str]:
        stopped = [d.ifname for d in await self.running() if d.ifname not in keep]
        for ifname in stopped:
            await self.down(ifname)
        return stopped
