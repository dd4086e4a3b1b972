"""``LinuxKernel``: the Kernel protocol over rtnetlink (pyroute2), for cnmd's event loop.

One long-lived ``AsyncIPRoute`` serves the host namespace (the namespace the kernel object
was first used in).  A container namespace gets a netlink socket opened on a short-lived
thread (see ``cnm.kernel.netns``), used for the few requests that configure it, and closed.

Every change is logged as the iproute2 command a person would type.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from socket import AF_INET, AF_INET6
from typing import Any, TypeVar

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkDumpInterrupted, NetlinkError

from cnm.errors import Conflict, KernelError
from cnm.kernel import arp, rtnl, sysctl
from cnm.kernel import netns as ns
from cnm.kernel.api import (
    FdbEntry,
    LinkInfo,
    LinkStats,
    NeighEntry,
    VethSpec,
    VxlanSpec,
    owner_alias,
    parse_alias,
)
from cnm.kernel.cmdlog import log_command
from cnm.kernel.faults import crash_point
from cnm.kernel.owner import check_daemon_id, live_daemons
from cnm.kernel.reaper import LinkReaper

T = TypeVar("T")

log = logging.getLogger("cnm.kernel")

IFF_UP = 0x1
DUMP_ATTEMPTS = 5  # a dump the kernel interrupted (links changed meanwhile) is run again
RTN_UNICAST = 1
RT_TABLE_MAIN = 254

# Written inside a container namespace before its interface arrives: a device created in
# a namespace takes that namespace's "default" devconf, so eth0 comes up with IPv6 off --
# no link-local address, no DAD delay.  An interface of a network with IPv6 is created
# while the default says on (written through a file opened inside the namespace, kept for
# the sandbox's life: no thread has to enter it again), and the default goes back to off.
_IPV6_DEFAULT_OFF = "net.ipv6.conf.default.disable_ipv6"
_IPV6_DEFAULT_PATH = "/proc/sys/net/ipv6/conf/default/disable_ipv6"


def _random_mac() -> str:
    """A unicast, locally administered MAC (as Docker gives its bridges, so the bridge's
    MAC does not change as ports come and go)."""
    first = (secrets.randbits(8) & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in bytes([first]) + secrets.token_bytes(5))


async def _retried(dump: Callable[[], Awaitable[T]]) -> T:
    """Run ``dump`` again when the kernel interrupted it: a dump that races a change of
    the links or addresses it lists ends with EBUSY / NLM_F_DUMP_INTR (seen under
    concurrent ``network create`` and container starts)."""
    for attempt in range(DUMP_ATTEMPTS):
        try:
            return await dump()
        except NetlinkError as exc:
            interrupted = isinstance(exc, NetlinkDumpInterrupted) or exc.code == errno.EBUSY
            if not interrupted or attempt == DUMP_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")


def _failure(what: str, exc: BaseException) -> KernelError:
    if isinstance(exc, NetlinkError):
        detail = os.strerror(exc.code) if exc.code else str(exc)
    elif isinstance(exc, OSError):
        detail = exc.strerror or str(exc)
    else:
        detail = str(exc)
    return KernelError(f"{what}: {detail}")


def _prepare_container_ns(path: str) -> None:
    """Runs inside the container namespace at ``path`` (fresh thread): IPv6 off for the
    interfaces to come."""
    if ns.read_proc_sys(_IPV6_DEFAULT_OFF) not in (None, "1"):
        ns.write_proc_sys(_IPV6_DEFAULT_OFF, "1", netns=path)


@dataclass
class _Sandbox:
    """What LinuxKernel keeps open for one container namespace: its netlink socket and its
    ``net.ipv6.conf.default.disable_ipv6`` (-1 when the kernel has no IPv6)."""

    sock: socket.socket
    ipv6_default: int = -1

    def close(self) -> None:
        self.sock.close()
        if self.ipv6_default >= 0:
            os.close(self.ipv6_default)
            self.ipv6_default = -1


def _open_container_ns(path: str) -> _Sandbox:
    """Runs inside the container namespace at ``path`` (fresh thread): IPv6 off for the
    interfaces to come; its socket and IPv6 default opened."""
    _prepare_container_ns(path)
    sock = ns.open_netlink_socket()
    try:
        fd = os.open(_IPV6_DEFAULT_PATH, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = -1
    except BaseException:
        sock.close()
        raise
    return _Sandbox(sock, fd)


def _link_info(msg: Any, addresses: dict[int, list[IPv4Interface]]) -> LinkInfo:
    daemon, owner = parse_alias(msg.get("ifalias") or "")
    linkinfo = msg.get("linkinfo")
    kind = (linkinfo.get("kind") if linkinfo is not None else None) or ""
    index = msg["index"]
    return LinkInfo(
        index=index,
        name=msg.get("ifname") or "",
        kind=kind,
        owner=owner,
        daemon=daemon,
        master=msg.get("master") or 0,
        mac=msg.get("address") or "",
        mtu=msg.get("mtu") or 0,
        up=bool(msg["flags"] & IFF_UP),
        addresses=tuple(addresses.get(index, ())),
        stats=_link_stats(msg.get("stats64")),
        iflink=msg.get("link") or 0,
        alias=msg.get("ifalias") or "",
    )


def _dumped_link(link: rtnl.LinkDump, addresses: dict[int, list[IPv4Interface]]) -> LinkInfo:
    daemon, owner = parse_alias(link.alias)
    stats = None
    if link.stats is not None:  # rtnl_link_stats64's order: rx/tx packets, bytes, errors, dropped
        rx_packets, tx_packets, rx_bytes, tx_bytes, rx_errors, tx_errors, rx_dropped, tx_dropped = link.stats
        stats = LinkStats(
            rx_bytes=rx_bytes,
            rx_packets=rx_packets,
            rx_errors=rx_errors,
            rx_dropped=rx_dropped,
            tx_bytes=tx_bytes,
            tx_packets=tx_packets,
            tx_errors=tx_errors,
            tx_dropped=tx_dropped,
        )
    return LinkInfo(
        index=link.index,
        name=link.name,
        kind=link.kind,
        owner=owner,
        daemon=daemon,
        master=link.master,
        mac=link.mac,
        mtu=link.mtu,
        up=bool(link.flags & IFF_UP),
        addresses=tuple(addresses.get(link.index, ())),
        stats=stats,
        iflink=link.link,
        alias=link.alias,
    )


def _link_stats(nla: Any) -> LinkStats | None:
    if nla is None:
        return None
    return LinkStats(**{f: int(nla.get(f) or 0) for f in LinkStats.__dataclass_fields__})


MIN_AVOIDED_PREFIX = 8  # routes shorter than this do not block an address pool
MIN_AVOIDED_PREFIX6 = 16  # the same for IPv6 (2000::/3 and such block nothing)


class LinuxKernel:
    """The real kernel.  Create it anywhere; it binds to the running event loop on first use
    and must then be used from that loop only.  ``close()`` releases the host socket.

    ``daemon_id`` goes into every owner tag (default: a fresh id, for tools and tests that
    run no daemon)."""

    def __init__(self, daemon_id: str = "") -> None:
        self.daemon_id = check_daemon_id(daemon_id) if daemon_id else secrets.token_hex(8)
        self._host: AsyncIPRoute | None = None
        self._host_sock: socket.socket | None = None
        self._fast: socket.socket | None = None  # host socket for rtnl.transact (not shared with pyroute2)
        self._strict: socket.socket | None = None  # host socket for dumps the kernel filters
        self._ns_socks: dict[str, _Sandbox] = {}  # netns path -> its socket etc., for the sandbox's life
        self._bridges: dict[str, int] = {}  # bridge name -> ifindex
        self._devices: dict[
            str, tuple[int, str]
        ] = {}  # link name -> (ifindex, kind), for FDB/neighbour entries
        self._retiring: dict[str, tuple[str | None, asyncio.Future[None]]] = {}  # host end -> (netns, done)
        self._reaper = LinkReaper()

    # -- sockets --------------------------------------------------------------------------

    @property
    def host(self) -> AsyncIPRoute:
        if self._host is None:
            self._host_sock = ns.open_netlink_socket()
            self._host = AsyncIPRoute(use_socket=self._host_sock)
        return self._host

    def _fast_host(self) -> socket.socket:
        if self._fast is None:
            self._fast = rtnl.open_route_socket()
        return self._fast

    def _strict_host(self) -> socket.socket:
        if self._strict is None:
            self._strict = rtnl.open_strict_socket()
        return self._strict

    def _addresses(self, index: int) -> set[IPv4Interface]:
        """The IPv4 addresses of host link ``index``: a dump the kernel filters to that
        link (pyroute2's ``index=`` filter decodes every link's addresses first)."""
        return {IPv4Interface(f"{ip}/{plen}") for ip, plen in rtnl.addresses(self._strict_host(), index)}

    async def _host_links(self) -> list[LinkInfo]:
        """Every link of the host namespace with its addresses, decoded by ``rtnl`` (a
        restart lists them all: pyroute2 spends ~2 ms of Python per link).  A dump the
        kernel interrupted is run again."""
        for attempt in range(DUMP_ATTEMPTS):
            try:
                addresses: dict[int, list[IPv4Interface]] = {}
                for index, ip, plen in rtnl.all_addresses(self._strict_host()):
                    addresses.setdefault(index, []).append(IPv4Interface(f"{ip}/{plen}"))
                return [_dumped_link(link, addresses) for link in rtnl.links(self._strict_host())]
            except rtnl.DumpInterrupted:
                if attempt == DUMP_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _ns_socket(self, path: str) -> socket.socket:
        """The netlink socket kept for the namespace at ``path`` (opened on a fresh thread
        the first time, which also turns IPv6 off there); closed by ``delete_netns``."""
        return (await self._ns_handle(path)).sock

    async def _ns_handle(self, path: str) -> _Sandbox:
        """What is kept open for the namespace at ``path`` (see ``_ns_socket``)."""
        handle = self._ns_socks.get(path)
        if handle is not None:
            return handle
        handle = await ns.call_in_netns(path, functools.partial(_open_container_ns, path))
        if path in self._ns_socks:  # raced with another opener: keep one
            handle.close()
        else:
            self._ns_socks[path] = handle
        return self._ns_socks[path]

    def _forget_ns_socket(self, path: str) -> None:
        handle = self._ns_socks.pop(path, None)
        if handle is not None:
            handle.close()

    @asynccontextmanager
    async def _in_netns(
        self, path: str, prepare: Callable[[], None] | None = None
    ) -> AsyncIterator[AsyncIPRoute]:
        """A short-lived netlink client inside the namespace at ``path``."""
        async with self._client(await ns.socket_in_netns(path, prepare)) as ipr:
            yield ipr

    @asynccontextmanager
    async def _client(self, sock: socket.socket) -> AsyncIterator[AsyncIPRoute]:
        """A netlink client over ``sock``; closes both on exit."""
        ipr = AsyncIPRoute(use_socket=sock)
        try:
            yield ipr
        finally:
            ipr.close()
            sock.close()

    def close(self) -> None:
        """Finish the pending deletions (blocking, bounded), then release every socket."""
        self._reaper.close()
        for path in list(self._ns_socks):
            self._forget_ns_socket(path)
        if self._host is not None:
            self._host.close()
            self._host = None
        if self._host_sock is not None:
            self._host_sock.close()
            self._host_sock = None
        for sock in (self._fast, self._strict):
            if sock is not None:
                sock.close()
        self._fast = self._strict = None

    # -- retired links ----------------------------------------------------------------------

    async def retire_link(self, name: str, netns_path: str | None = None, peer: str = "") -> None:
        """Take the veth pair whose host end is ``name`` out of service now and delete it in
        the background (see ``cnm.kernel.reaper``).  Out of service: its container end
        ``peer`` goes down inside ``netns_path`` (routes through it go; frames sent to it
        are dropped), or, without a namespace, the host end goes down.  Downing the
        container side is the cheap one: the bridge's port bookkeeping, which grows with
        its number of ports, then happens off this request.  Idempotent.  Until the
        deletion is done, ``add_veth`` into ``netns_path``, ``delete_netns`` of it,
        ``delete_link``, ``links`` and ``close`` wait for it."""
        if name in self._retiring:
            return
        try:
            if netns_path and peer and ns.netns_exists(netns_path):
                log_command(["ip", "link", "set", peer, "down"], netns=netns_path)
                sock = await self._ns_socket(netns_path)
            else:
                log_command(["ip", "link", "set", name, "down"])
                sock, peer = self._fast_host(), name
            (answer,) = rtnl.transact(sock, [rtnl.set_link(name=peer, up=False)])
        except OSError as exc:
            raise _failure(f"cannot take link {name} out of service", exc) from exc
        if answer.error and answer.error not in (
            errno.ENODEV,
            errno.ENOENT,
        ):  # gone: the reaper finds it gone
            raise KernelError(f"cannot take link {name} out of service: {os.strerror(answer.error)}")
        done = self._reaper.submit(name)
        self._retiring[name] = (netns_path, done)
        done.add_done_callback(lambda _f: self._retiring.pop(name, None))

    async def _settle(self, *, netns: str | None = None, everything: bool = False) -> None:
        """Wait until the retired links of ``netns`` (or all of them) are deleted; a
        failed deletion is raised."""
        waits = [
            done
            for path, done in self._retiring.values()
            if everything or (netns is not None and path == netns)
        ]
        if not waits:
            return
        results = await asyncio.gather(*waits, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise _failure("cannot delete a retired link", result)

    # -- namespaces -----------------------------------------------------------------------

    async def create_netns(self, path: str) -> None:
        """The namespace, ``lo`` up, IPv6 off for interfaces to come; its netlink socket is
        kept for the endpoints that join it."""

        handle = await ns.create_netns(path, functools.partial(_open_container_ns, path))
        crash_point("netns-created")
        try:
            log_command(["ip", "link", "set", "lo", "up"], netns=path)
            request = rtnl.set_link(index=1, up=True)
            rtnl.check(rtnl.transact(handle.sock, [request]), [request])
        except OSError as exc:
            handle.close()
            ns.delete_netns(path)
            raise _failure(f"cannot bring up lo in {path}", exc) from exc
        self._forget_ns_socket(path)
        self._ns_socks[path] = handle

    async def delete_netns(self, path: str) -> None:
        await self._settle(netns=path)
        self._forget_ns_socket(path)
        ns.delete_netns(path)

    def netns_exists(self, path: str) -> bool:
        return ns.netns_exists(path)

    def other_daemons(self) -> dict[str, int]:
        return {d: pid for d, pid in live_daemons().items() if d != self.daemon_id}

    # -- queries --------------------------------------------------------------------------

    async def _get_link(self, ipr: AsyncIPRoute, name: str) -> Any | None:
        """The link named ``name`` or None."""
        try:
            return (await ipr.link("get", ifname=name))[0]
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise _failure(f"cannot look up link {name}", exc) from exc

    async def _dump(self, ipr: AsyncIPRoute) -> list[LinkInfo]:
        return await _retried(functools.partial(self._dump_once, ipr))

    async def _dump_once(self, ipr: AsyncIPRoute) -> list[LinkInfo]:
        addresses: dict[int, list[IPv4Interface]] = {}
        async for msg in await ipr.addr("dump", family=AF_INET):
            iface = IPv4Interface(f"{msg.get('address')}/{msg['prefixlen']}")
            addresses.setdefault(msg["index"], []).append(iface)
        return [_link_info(msg, addresses) async for msg in await ipr.link("dump")]

    async def links(self, netns_path: str | None = None) -> list[LinkInfo]:
        await self._settle(netns=netns_path, everything=netns_path is None)
        try:
            if netns_path is None:
                return await self._host_links()
            async with self._in_netns(netns_path) as ipr:
                return await self._dump(ipr)
        except (NetlinkError, OSError) as exc:
            raise _failure(f"cannot list links of {netns_path or 'the host'}", exc) from exc

    async def lookup_link(self, name: str) -> LinkInfo | None:
        """One ``link get`` and one address dump of that link: network create asks for its
        bridge by name, and a dump of every link costs ~0.2 ms per link."""
        retiring = self._retiring.get(name)
        if retiring is not None:  # the name is free only once its deletion is done
            await self._settle(netns=retiring[0])
        try:
            msg = await self._get_link(self.host, name)
            if msg is None:
                return None
            index = msg["index"]
            addresses = self._addresses(index)
        except (NetlinkError, OSError) as exc:
            raise _failure(f"cannot look up link {name}", exc) from exc
        return _link_info(msg, {index: sorted(addresses)})

    async def host_networks(self) -> list[IPv4Network]:
        try:
            return await _retried(self._host_networks_once)
        except (NetlinkError, OSError) as exc:
            raise _failure("cannot list host addresses and routes", exc) from exc

    async def _host_networks_once(self) -> list[IPv4Network]:
        found = await self._host_prefixes(AF_INET, MIN_AVOIDED_PREFIX)
        return sorted({IPv4Network(text, strict=False) for text in found})

    async def host_networks6(self) -> list[IPv6Network]:
        try:
            return await _retried(self._host_networks6_once)
        except (NetlinkError, OSError) as exc:
            raise _failure("cannot list host IPv6 addresses and routes", exc) from exc

    async def _host_networks6_once(self) -> list[IPv6Network]:
        found = {
            IPv6Network(text, strict=False)
            for text in await self._host_prefixes(AF_INET6, MIN_AVOIDED_PREFIX6)
        }
        return sorted(n for n in found if not (n.is_link_local or n.is_multicast or n.is_loopback))

    async def _host_prefixes(self, family: int, shortest: int) -> set[str]:
        """The prefixes (``addr/len`` text) of ``family`` the host uses: its addresses'
        networks and every route of the main table, on-link or via a gateway (a VPN's
        routed subnets must not be shadowed), but not the default route nor routes shorter
        than ``shortest`` (VPN split defaults such as 0.0.0.0/1 would block all)."""
        found: set[str] = set()
        async for msg in await self.host.addr("dump", family=family):
            found.add(f"{msg.get('address')}/{msg['prefixlen']}")
        async for msg in await self.host.route("dump", family=family):
            if (
                msg["type"] == RTN_UNICAST
                and msg["dst_len"] >= shortest
                and msg.get("table") == RT_TABLE_MAIN
            ):
                found.add(f"{msg.get('dst')}/{msg['dst_len']}")
        return found

    # -- bridges --------------------------------------------------------------------------

    async def ensure_bridge(
        self,
        name: str,
        *,
        owner: str,
        mtu: int,
        address: IPv4Interface | None,
        address6: IPv6Interface | None = None,
    ) -> int:
        ipr = self.host
        link = await self._get_link(ipr, name)
        if link is None:
            link = await self._add_bridge(ipr, name, owner, mtu)
        linkinfo = link.get("linkinfo")
        kind = linkinfo.get("kind") if linkinfo is not None else None
        if kind != "bridge":
            raise Conflict(f"cannot use {name} as a bridge: a {kind or 'non-bridge'} link has that name")
        index: int = link["index"]
        try:
            if address is not None:
                present = self._addresses(index)
                if address not in present:
                    log_command(["ip", "addr", "add", str(address), "dev", name])
                    await ipr.addr(
                        "add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen
                    )
            if not link["flags"] & IFF_UP:
                log_command(["ip", "link", "set", name, "up"])
                await ipr.link("set", index=index, state="up")
        except NetlinkError as exc:
            if exc.code == errno.EEXIST and address is not None:
                raise Conflict(f"cannot add {address} to bridge {name}: address in use") from exc
            raise _failure(f"cannot configure bridge {name}", exc) from exc
        if address6 is not None:
            self._bridge_ipv6(name, index, address6)
        self._bridges[name] = index
        return index

    def _bridge_ipv6(self, name: str, index: int, address6: IPv6Interface) -> None:
        """IPv6 on for bridge ``name`` and ``address6`` on it (no DAD: the gateway answers
        at once); nothing when it is there already."""
        key = sysctl.conf_key("ipv6", name, "disable_ipv6")
        if sysctl.read_sysctl(key) is None:
            raise KernelError(
                f"cannot turn on IPv6 on bridge {name}: the host has no IPv6, or the bridge's MTU "
                "is below IPv6's 1280"
            )
        sysctl.set_sysctl(key, "0")
        try:
            present = {
                ip
                for ip, plen in rtnl.addresses6(self._strict_host(), index)
                if plen == address6.network.prefixlen
            }
            if address6.ip in present:
                return
            log_command(["ip", "-6", "addr", "add", str(address6), "dev", name, "nodad"])
            request = rtnl.add_address(index, address6.ip, address6.network.prefixlen, nodad=True)
            (answer,) = rtnl.transact(self._fast_host(), [request])
        except OSError as exc:
            raise _failure(f"cannot add {address6} to bridge {name}", exc) from exc
        if answer.error == errno.EEXIST:
            raise Conflict(f"cannot add {address6} to bridge {name}: address in use")
        if answer.error:
            raise KernelError(f"cannot add {address6} to bridge {name}: {os.strerror(answer.error)}")

    async def _add_bridge(self, ipr: AsyncIPRoute, name: str, owner: str, mtu: int) -> Any:
        """Create bridge ``name`` tagged with ``owner``; return its link message.

        The kernel ignores IFLA_IFALIAS in the RTM_NEWLINK that creates a link, so the tag
        is a second message -- in the *same* datagram: the kernel runs both inside one
        ``sendmsg`` and a SIGKILL only takes effect when it returns, so no crash can leave
        the bridge untagged (a restart would then never attribute it)."""
        mac = _random_mac()
        alias = owner_alias(owner, self.daemon_id)
        log_command(["ip", "link", "add", name, "address", mac, "mtu", str(mtu), "type", "bridge"])
        log_command(["ip", "link", "set", name, "alias", alias])
        requests = [
            rtnl.new_bridge(name, mtu=mtu, mac=mac),
            rtnl.set_link(name=name, alias=alias),  # by name: ENODEV when the creation failed
        ]
        try:
            created, tagged = rtnl.transact(self._fast_host(), requests)
        except OSError as exc:
            raise _failure(f"cannot create bridge {name}", exc) from exc
        if created.error == errno.EEXIST:
            # Raced with another creator in the microseconds since the caller's lookup: the
            # caller re-checks the link.  (The tag message then hit that link: netlink has no
            # "only if the first succeeded"; the same holds for veths.)
            log.warning("link %s appeared while cnm created it", name)
            return await self._get_link(ipr, name)
        if created.error:
            raise KernelError(f"cannot create bridge {name}: {os.strerror(created.error)}")
        crash_point("bridge-created")
        if tagged.error:
            await self._delete(ipr, name, None)
            raise KernelError(f"cannot tag link {name} with its owner: {os.strerror(tagged.error)}")
        link = await self._get_link(ipr, name)
        if link is None:
            raise KernelError(f"bridge {name} vanished right after it was created")
        return link

    # -- veth pairs -----------------------------------------------------------------------

    async def _bridge_index(self, name: str, *, fresh: bool = False) -> int:
        """The ifindex of bridge ``name``, cached (bridges live as long as their network;
        a stale entry is caught by the kernel refusing the master and looked up again)."""
        index = None if fresh else self._bridges.get(name)
        if index is None:
            link = await self._get_link(self.host, name)
            if link is None:
                self._bridges.pop(name, None)
                raise KernelError(f"bridge {name} does not exist")
            index = self._bridges[name] = link["index"]
        return index

    async def add_veth(self, spec: VethSpec) -> int:
        """Two datagrams on the hot path: on the host, create the pair (host end up, on
        the bridge; echoed, for both indices) and tag the host end; in the namespace, raise
        the peer, address it and route it.  The namespace's socket is kept per sandbox."""
        await self._settle(netns=spec.netns_path)  # a retired eth1 there must be gone first
        handle = await self._ns_handle(spec.netns_path)
        inner = handle.sock
        try:
            bridge = await self._bridge_index(spec.bridge)
        except KernelError:
            raise KernelError(
                f"cannot attach {spec.host_ifname}: bridge {spec.bridge} does not exist"
            ) from None
        if spec.ipv6:  # logged before the pair, as a person would have to type it
            self._ipv6_default(handle, spec.netns_path, on=True)
        try:
            log_command(
                [
                    "ip",
                    "link",
                    "add",
                    spec.host_ifname,
                    "mtu",
                    str(spec.mtu),
                    "master",
                    spec.bridge,
                    "up",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    spec.ifname,
                    *(["address", spec.mac] if spec.mac else []),
                    "mtu",
                    str(spec.mtu),
                    "netns",
                    spec.netns_path,
                ]
            )
            log_command(
                [
                    "ip",
                    "link",
                    "set",
                    spec.host_ifname,
                    "alias",
                    owner_alias(spec.owner, self.daemon_id, spec.label),
                    *(["type", "bridge_slave", "hairpin", "on"] if spec.hairpin else []),
                ]
            )
            host_index, peer_index = await self._create_pair(spec, bridge)
        except BaseException:
            if spec.ipv6:
                with contextlib.suppress(KernelError):  # the failure to report is the one above
                    self._ipv6_default(handle, spec.netns_path, on=False)
            raise
        if spec.ipv6:
            try:
                self._ipv6_default(handle, spec.netns_path, on=False)
            except KernelError:
                await self._delete(self.host, spec.host_ifname, None)  # takes the peer with it
                raise
        crash_point("veth-created")
        try:
            await self._configure_peer(inner, spec, peer_index)
        except BaseException:
            await self._delete(self.host, spec.host_ifname, None)  # takes the peer with it
            raise
        return host_index

    @staticmethod
    def _ipv6_default(handle: _Sandbox, path: str, *, on: bool) -> None:
        """IPv6 on (or back off) for the interfaces created next in the namespace at ``path``
        (its ``default`` devconf, through the file kept open for it)."""
        if handle.ipv6_default < 0:
            raise KernelError(f"cannot turn on IPv6 in {path}: the kernel has no IPv6")
        value = "0" if on else "1"
        log_command(["sysctl", "-w", f"{_IPV6_DEFAULT_OFF}={value}"], netns=path)
        try:
            os.pwrite(handle.ipv6_default, value.encode(), 0)
        except OSError as exc:
            raise _failure(f"cannot set {_IPV6_DEFAULT_OFF}={value} in {path}", exc) from exc

    async def _create_pair(self, spec: VethSpec, bridge: int) -> tuple[int, int]:
        """Create and tag the pair; return (host end index, peer index).  Retries once
        with a fresh bridge index when the cached one was stale."""
        fd = os.open(spec.netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            for attempt in (0, 1):
                requests = [
                    rtnl.new_veth(
                        spec.host_ifname,
                        mtu=spec.mtu,
                        master=bridge,
                        up=True,
                        peer_name=spec.ifname,
                        peer_netns_fd=fd,
                        peer_mac=spec.mac,
                    ),
                    # by name: fails harmlessly (ENODEV) when the creation failed
                    rtnl.set_link(
                        name=spec.host_ifname,
                        alias=owner_alias(spec.owner, self.daemon_id, spec.label),
                        hairpin=True if spec.hairpin else None,
                    ),
                ]
                created, tagged = rtnl.transact(self._fast_host(), requests)
                if created.error and attempt == 0 and created.error != errno.EEXIST:
                    fresh = await self._bridge_index(spec.bridge, fresh=True)
                    if fresh != bridge:
                        bridge = fresh
                        continue
                break
        except OSError as exc:
            raise _failure(f"cannot create veth {spec.host_ifname}", exc) from exc
        finally:
            os.close(fd)
        if created.error == errno.EEXIST:
            raise Conflict(
                f"cannot create veth {spec.host_ifname}: the name is taken on the host "
                f"or {spec.ifname} exists in {spec.netns_path}"
            )
        if created.error:
            raise KernelError(f"cannot create veth {spec.host_ifname}: {os.strerror(created.error)}")
        if tagged.error:
            await self._delete(self.host, spec.host_ifname, None)
            raise KernelError(
                f"cannot tag link {spec.host_ifname} with its owner: {os.strerror(tagged.error)}"
            )
        if created.echo is not None:
            echo = rtnl.parse_link(created.echo)
            return echo.index, echo.link
        link = await self._get_link(self.host, spec.host_ifname)  # kernels before 6.3 do not echo
        if link is None:
            raise KernelError(f"veth {spec.host_ifname} vanished right after it was created")
        return link["index"], link.get("link")

    async def _configure_peer(self, inner: socket.socket, spec: VethSpec, index: int) -> None:
        """Raise, address and route the container end (one datagram)."""
        path = spec.netns_path
        requests = [rtnl.set_link(index=index, up=True)]
        log_command(["ip", "link", "set", spec.ifname, "up"], netns=path)
        if spec.address is not None:
            log_command(["ip", "addr", "add", str(spec.address), "dev", spec.ifname], netns=path)
            requests.append(rtnl.add_address(index, spec.address.ip, spec.address.network.prefixlen))
        for extra in spec.link_local:
            log_command(["ip", "addr", "add", str(extra), "dev", spec.ifname], netns=path)
            requests.append(rtnl.add_address(index, extra.ip, extra.network.prefixlen))
        if spec.gateway is not None:
            log_command(
                ["ip", "route", "add", "default", "via", str(spec.gateway), "dev", spec.ifname], netns=path
            )
            requests.append(rtnl.add_default_route(spec.gateway, index))
        if spec.address6 is not None:
            log_command(
                ["ip", "-6", "addr", "add", str(spec.address6), "dev", spec.ifname, "nodad"], netns=path
            )
            requests.append(
                rtnl.add_address(index, spec.address6.ip, spec.address6.network.prefixlen, nodad=True)
            )
        if spec.gateway6 is not None:
            log_command(
                ["ip", "-6", "route", "add", "default", "via", str(spec.gateway6), "dev", spec.ifname],
                netns=path,
            )
            requests.append(rtnl.add_default_route(spec.gateway6, index))
        try:
            answers = rtnl.transact(inner, requests)
            rtnl.check(answers, requests)
        except OSError as exc:
            raise _failure(f"cannot configure {spec.ifname} in {path}", exc) from exc

    async def set_default_route(
        self, netns_path: str, gateway: IPv4Address | IPv6Address, ifname: str
    ) -> None:
        v6 = gateway.version == 6
        log_command(
            [
                "ip",
                *(["-6"] if v6 else []),
                "route",
                "replace",
                "default",
                "via",
                str(gateway),
                "dev",
                ifname,
            ],
            netns=netns_path,
        )
        try:
            async with self._in_netns(netns_path) as ipr:
                index = (await ipr.link_lookup(ifname=ifname) or [0])[0]
                if not index:
                    raise KernelError(f"no interface {ifname} in {netns_path}")
                await ipr.route(
                    "replace",
                    dst="::/0" if v6 else "0.0.0.0/0",
                    family=socket.AF_INET6 if v6 else AF_INET,
                    gateway=str(gateway),
                    oif=index,
                )
        except (NetlinkError, OSError) as exc:
            raise _failure(f"cannot route {netns_path} via {gateway}", exc) from exc

    async def set_port_isolated(self, name: str, isolated: bool) -> None:
        """Bridge-port isolation on host link ``name`` (``ip link set dev X type bridge_slave
        isolated on``): isolated ports cannot exchange frames with each other, only with
        non-isolated ports and the bridge itself.  (Not in the Kernel protocol yet.)"""
        log_command(
            [
                "ip",
                "link",
                "set",
                "dev",
                name,
                "type",
                "bridge_slave",
                "isolated",
                "on" if isolated else "off",
            ]
        )
        try:
            await self.host.link("set", ifname=name, kind="bridge_slave", isolated=int(isolated))
        except NetlinkError as exc:
            raise _failure(f"cannot set isolation on bridge port {name}", exc) from exc

    # -- overlay: VXLAN devices, their FDB and neighbour entries ------------------------------

    async def add_vxlan(self, spec: VxlanSpec) -> int:
        """One datagram: create the device (a port of the bridge, up) and tag it.  The name
        is looked up first: the tag message, sent by name, must never retag someone else's
        link that holds it."""
        if await self._get_link(self.host, spec.name) is not None:
            raise Conflict(f"cannot create vxlan {spec.name}: a link has that name")
        try:
            bridge = await self._bridge_index(spec.bridge, fresh=True)
        except KernelError:
            raise KernelError(f"cannot attach {spec.name}: bridge {spec.bridge} does not exist") from None
        alias = owner_alias(spec.owner, self.daemon_id)
        log_command(
            f"ip link add {spec.name} mtu {spec.mtu} master {spec.bridge} up type vxlan id {spec.vni}"
            f" local {spec.local} dstport {spec.port} nolearning proxy"
        )
        log_command(["ip", "link", "set", spec.name, "alias", alias])
        requests = [
            rtnl.new_vxlan(
                spec.name,
                vni=spec.vni,
                local=spec.local,
                port=spec.port,
                mtu=spec.mtu,
                master=bridge,
                up=True,
            ),
            rtnl.set_link(name=spec.name, alias=alias),  # by name: ENODEV when the creation failed
        ]
        try:
            created, tagged = rtnl.transact(self._fast_host(), requests)
        except OSError as exc:
            raise _failure(f"cannot create vxlan {spec.name}", exc) from exc
        if created.error == errno.EEXIST:
            raise Conflict(
                f"cannot create vxlan {spec.name}: the name is taken or VNI {spec.vni} "
                f"on port {spec.port} is in use by another device"
            )
        if created.error:
            raise KernelError(f"cannot create vxlan {spec.name}: {os.strerror(created.error)}")
        crash_point("vxlan-created")
        if tagged.error:
            await self._delete(self.host, spec.name, None)
            raise KernelError(f"cannot tag link {spec.name} with its owner: {os.strerror(tagged.error)}")
        if created.echo is not None:
            index = rtnl.parse_link(created.echo).index
        else:  # kernels before 6.3 do not echo
            link = await self._get_link(self.host, spec.name)
            if link is None:
                raise KernelError(f"vxlan {spec.name} vanished right after it was created")
            index = link["index"]
        self._devices[spec.name] = (index, "vxlan")
        return index

    async def _device_index(self, name: str, *, fresh: bool = False, vxlan: bool = False) -> int | None:
        """The ifindex of host link ``name`` (cached: FDB and neighbour entries of one device
        come in runs), None when there is no such link.  ``vxlan``: KernelError unless it is
        a VXLAN device (the kernel would take a remote FDB entry on a bridge as a local one,
        dropping its VTEP)."""
        cached = None if fresh else self._devices.get(name)
        if cached is None:
            link = await self._get_link(self.host, name)
            if link is None:
                self._devices.pop(name, None)
                return None
            linkinfo = link.get("linkinfo")
            kind = (linkinfo.get("kind") if linkinfo is not None else None) or ""
            cached = self._devices[name] = (link["index"], kind)
        if vxlan and cached[1] != "vxlan":
            raise KernelError(
                f"cannot use the fdb of {name}: a {cached[1] or 'plain'} link, not a VXLAN device"
            )
        return cached[0]

    async def _on_device(
        self, dev: str, build: Callable[[int], rtnl.Request], *, removal: bool, vxlan: bool
    ) -> None:
        """Send the request ``build(ifindex of dev)``; a stale cached index (ENODEV) is
        looked up again once.  ``removal``: a missing device or entry is success."""
        for attempt in (0, 1):
            index = await self._device_index(dev, fresh=attempt == 1, vxlan=vxlan)
            if index is None:
                if removal:
                    return
                raise KernelError(f"cannot change the entries of {dev}: no such device")
            request = build(index)
            try:
                (answer,) = rtnl.transact(self._fast_host(), [request])
            except OSError as exc:
                raise _failure(f"cannot {request.what} on {dev}", exc) from exc
            if answer.error == errno.ENODEV and attempt == 0:
                continue
            if removal and answer.error in (errno.ENOENT, errno.ENODEV):
                return
            if answer.error:
                raise KernelError(f"cannot {request.what} on {dev}: {os.strerror(answer.error)}")
            return

    async def replace_fdb(self, dev: str, entry: FdbEntry) -> None:
        log_command(f"bridge fdb replace {entry.mac} dev {dev} dst {entry.dst} self permanent")
        await self._on_device(
            dev, lambda i: rtnl.replace_fdb(i, entry.mac, entry.dst), removal=False, vxlan=True
        )

    async def delete_fdb(self, dev: str, entry: FdbEntry) -> None:
        log_command(f"bridge fdb del {entry.mac} dev {dev} dst {entry.dst} self")
        await self._on_device(dev, lambda i: rtnl.del_fdb(i, entry.mac, entry.dst), removal=True, vxlan=True)

    async def replace_neigh(self, dev: str, entry: NeighEntry) -> None:
        log_command(f"ip neigh replace {entry.ip} lladdr {entry.mac} dev {dev} nud permanent")
        await self._on_device(
            dev, lambda i: rtnl.replace_neigh(i, entry.ip, entry.mac), removal=False, vxlan=False
        )

    async def delete_neigh(self, dev: str, ip: IPv4Address) -> None:
        log_command(f"ip neigh del {ip} dev {dev}")
        await self._on_device(dev, lambda i: rtnl.del_neigh(i, ip), removal=True, vxlan=False)

    async def announce(self, dev: str, entries: Sequence[NeighEntry]) -> None:
        """One AF_PACKET socket for the batch; the sends do not block (a bridge queues
        nothing)."""
        for entry in entries:
            # arping would send the link's own MAC: the frame carries the endpoint's
            log_command(f"arping -U -c 1 -I {dev} -s {entry.ip} {entry.ip}  # from {entry.mac}")
        try:
            arp.send_gratuitous(dev, [(entry.ip, entry.mac) for entry in entries])
        except OSError as exc:
            raise _failure(f"cannot announce addresses on {dev}", exc) from exc

    async def fdb_entries(self, dev: str) -> list[FdbEntry]:
        found = await self._dump_device(dev, "fdb", rtnl.fdb, vxlan=True)
        return sorted(FdbEntry(mac, dst) for mac, dst in found)

    async def neigh_entries(self, dev: str) -> list[NeighEntry]:
        found = await self._dump_device(dev, "neighbours", rtnl.neighbours, vxlan=False)
        return sorted(NeighEntry(ip, mac) for ip, mac in found)

    async def _dump_device(
        self, dev: str, what: str, dump: Callable[[socket.socket, int], list[T]], *, vxlan: bool
    ) -> list[T]:
        """``dump(strict socket, ifindex of dev)``, run again when the kernel interrupted it."""
        index = await self._device_index(dev, fresh=True, vxlan=vxlan)
        if index is None:
            raise KernelError(f"cannot list the {what} of {dev}: no such device")
        for attempt in range(DUMP_ATTEMPTS):
            try:
                return dump(self._strict_host(), index)
            except rtnl.DumpInterrupted:
                if attempt == DUMP_ATTEMPTS - 1:
                    raise KernelError(
                        f"cannot list the {what} of {dev}: the dump kept being interrupted"
                    ) from None
                await asyncio.sleep(0.01 * (attempt + 1))
            except OSError as exc:
                raise _failure(f"cannot list the {what} of {dev}", exc) from exc
        raise AssertionError("unreachable")

    async def delete_link(self, name: str, netns_path: str | None = None) -> None:
        """Synchronous delete; waits for retired links first, so that after removing a
        bridge (``network rm``) nothing of the network is left."""
        await self._settle(netns=netns_path, everything=netns_path is None)
        if netns_path is None:
            self._bridges.pop(name, None)
            self._devices.pop(name, None)
        try:
            if netns_path is None:
                await self._delete(self.host, name, None)
            elif ns.netns_exists(netns_path):
                async with self._in_netns(netns_path) as ipr:
                    await self._delete(ipr, name, netns_path)
        except (NetlinkError, OSError) as exc:
            raise _failure(f"cannot delete link {name}", exc) from exc

    async def _delete(self, ipr: AsyncIPRoute, name: str, netns_path: str | None) -> None:
        link = await self._get_link(ipr, name)
        if link is None:
            return
        log_command(["ip", "link", "del", name], netns=netns_path)
        try:
            await ipr.link("del", index=link["index"])
        except NetlinkError as exc:
            if exc.code not in (errno.ENODEV, errno.ENOENT):  # raced: gone is success
                raise

    # -- sysctl ---------------------------------------------------------------------------

    async def enable_ipv6_forwarding(self) -> None:
        if all(sysctl.read_sysctl(key) == "1" for key in sysctl.IPV6_FORWARDING):
            return  # on already: the uplinks are not looked at (nor listed)
        links = await self.links()
        uplinks = [link.name for link in links if not link.owner and not link.master and link.name != "lo"]
        for key, value in sysctl.ipv6_forwarding_plan(sysctl.read_sysctl, uplinks):
            sysctl.set_sysctl(key, value)

    async def set_sysctl(self, key: str, value: str, netns_path: str | None = None) -> str:
        if netns_path is None:
            return sysctl.set_sysctl(key, value)
        return await ns.call_in_netns(netns_path, lambda: ns.write_proc_sys(key, value, netns_path))
