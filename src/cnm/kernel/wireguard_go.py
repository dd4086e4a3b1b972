"""``WireGuardGo``: the WireGuard protocol (``cnm.kernel.api.WireGuard``) over wireguard-go.

This kernel has no WireGuard module, so each interface is a TUN device served by a
``wireguard-go`` process (Debian package ``wireguard-go``), configured through the UAPI text
protocol on its unix socket ``/run/wireguard/<ifname>.sock`` (wireguard-go's fixed directory:
interface names must differ between hosts that share a mount namespace).

Owns:

* starting the device: ``wireguard-go IFNAME`` forks the device process and exits once the
  TUN and the socket exist (its exit status is the readiness signal, its output the error).
  The process is *tagged at birth*: its environment carries ``CNM_OWNER=cnm:<daemon>:<owner>``
  from the exec on, inherited by the device process, so even a crash before the link gets its
  alias leaves a process a restart can attribute.  It runs in a session of its own, not as
  cnmd's child: like a container, it outlives a cnmd restart, and the restart adopts it;
* the link: wireguard-go makes the TUN; cnmd gives it the owner alias, MTU, tunnel address, up
  (``ip link set …``, ``ip addr add …``, over rtnetlink from inside the namespace);
* peers and keys through the UAPI (``cnm.kernel.wireguard`` encodes, decodes and plans);
* stopping: SIGTERM through a pidfd (no pid-reuse race), SIGKILL after ``STOP_TIMEOUT``; the
  TUN dies with its process.  ``reap`` stops this daemon's devices that nothing needs, found
  by the tag in ``/proc/<pid>/environ``, never by name; another daemon's are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
from collections.abc import Collection, Sequence
from ipaddress import IPv4Interface

from cnm.errors import Conflict, KernelError, NotFound
from cnm.kernel import netns as ns
from cnm.kernel import rtnl
from cnm.kernel.api import WgPeer, WgProcess, WgSpec, WgStatus, owner_alias, parse_alias
from cnm.kernel.cmdlog import log_command
from cnm.kernel.owner import check_daemon_id
from cnm.kernel.wireguard import (
    GET,
    DeviceState,
    check_ifname,
    check_key,
    check_spec,
    decode_errno,
    decode_get,
    device_command,
    encode_set,
    generate_private_key,
    plan_commands,
    plan_peers,
    public_key,
    remove_command,
)

SOCKET_DIR = "/run/wireguard"
BINARY = "wireguard-go"
ENV_OWNER = "CNM_OWNER"
# wireguard-go refuses to run on Linux without it (it would rather see the kernel module).
ENV_USERSPACE = "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
UAPI_TIMEOUT = 5.0
_UAPI_LIMIT = 1 << 20  # a get answer grows ~300 bytes per peer
_RTM_DELADDR = 21
_IFADDRMSG = struct.Struct("=BBBBI")


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _process(pid: int, proc: str = "/proc") -> WgProcess | None:
    """The wireguard-go device ``pid`` with its owner tag, or None (another program, an
    untagged device, a zombie, or gone)."""
    try:
        if _read(f"{proc}/{pid}/comm").strip() != BINARY.encode():
            return None
        stat = _read(f"{proc}/{pid}/stat")
        if stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] == b"Z":
            return None
        environ = _read(f"{proc}/{pid}/environ").split(b"\0")
        argv = _read(f"{proc}/{pid}/cmdline").split(b"\0")
    except (OSError, ValueError):
        return None
    prefix = f"{ENV_OWNER}=".encode()
    tag = next((e[len(prefix) :].decode(errors="replace") for e in environ if e.startswith(prefix)), "")
    daemon, owner = parse_alias(tag)
    args = [a.decode(errors="replace") for a in argv if a]
    if not owner or not args:
        return None
    return WgProcess(pid=pid, ifname=args[-1], daemon=daemon, owner=owner)


def devices(proc: str = "/proc") -> list[WgProcess]:
    """Every tagged wireguard-go device visible in ``proc`` (this pid namespace), any daemon's."""
    found = []
    try:
        entries = list(os.scandir(proc))
    except OSError as exc:
        raise KernelError(f"cannot list processes in {proc}: {exc.strerror}") from exc
    for entry in entries:
        if entry.name.isdigit():
            device = _process(int(entry.name), proc)
            if device is not None:
                found.append(device)
    return found


def _configure_link(ifname: str, alias: str, address: IPv4Interface, mtu: int, netns: str | None) -> None:
    """On a fresh thread, inside the device's namespace: alias, MTU, up, and exactly the one
    tunnel address (``ip link set …``, ``ip addr del/add …``), changing only what differs."""
    if netns is not None:
        ns.enter_netns(netns)
    index = socket.if_nametoindex(ifname)
    sock = rtnl.open_route_socket()
    strict = rtnl.open_strict_socket()
    try:
        have = set(rtnl.addresses(strict, index))
        link = next((x for x in rtnl.links(strict) if x.index == index), None)
        requests = []
        if link is None or link.alias != alias or link.mtu != mtu or not link.flags & rtnl.IFF_UP:
            body = (
                rtnl.ifinfomsg(index=index, flags=rtnl.IFF_UP, change=rtnl.IFF_UP)
                + rtnl.attr_u32(rtnl.IFLA_MTU, mtu)
                + rtnl.attr_str(rtnl.IFLA_IFALIAS, alias)
            )
            requests.append(rtnl.Request(rtnl.RTM_NEWLINK, 0, body, f"configure link {ifname}"))
            log_command(["ip", "link", "set", ifname, "alias", alias, "mtu", str(mtu), "up"], netns)
        wanted = (address.ip, address.network.prefixlen)
        for ip, plen in sorted(have - {wanted}):
            log_command(["ip", "addr", "del", f"{ip}/{plen}", "dev", ifname], netns)
            packed = ip.packed
            body = _IFADDRMSG.pack(socket.AF_INET, plen, 0, 0, index) + rtnl.attr(rtnl.IFA_LOCAL, packed)
            requests.append(rtnl.Request(_RTM_DELADDR, 0, body, f"delete address {ip}/{plen}"))
        if wanted not in have:
            log_command(["ip", "addr", "add", str(address), "dev", ifname], netns)
            requests.append(rtnl.add_address(index, address.ip, address.network.prefixlen))
        if requests:
            rtnl.check(rtnl.transact(sock, requests), requests)
    finally:
        sock.close()
        strict.close()


def _link_exists(ifname: str, netns: str | None) -> bool:
    if netns is not None:
        ns.enter_netns(netns)
    try:
        socket.if_nametoindex(ifname)
    except OSError:
        return False
    return True


async def _exited(pidfd: int, timeout: float) -> bool:
    """Whether the process of ``pidfd`` ends within ``timeout`` (a pidfd turns readable when
    its process exits, child or not, reaped or not)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(pidfd, ready)
    try:
        await asyncio.wait_for(done, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(pidfd)


class WireGuardGo:
    """WireGuard interfaces served by wireguard-go, for daemon ``daemon_id`` (default: a fresh
    id, for tools and tests that run no daemon).  ``socket_dir`` and ``binary`` are
    wireguard-go's; ``proc`` is where processes are listed (this pid namespace's /proc)."""

    def __init__(
        self, daemon_id: str = "", *, socket_dir: str = SOCKET_DIR, binary: str = BINARY, proc: str = "/proc"
    ) -> None:
        self.daemon_id = check_daemon_id(daemon_id) if daemon_id else os.urandom(8).hex()
        self._socket_dir = socket_dir
        self._binary = binary
        self._proc = proc

    # -- UAPI -----------------------------------------------------------------------------------

    def _socket(self, ifname: str) -> str:
        return os.path.join(self._socket_dir, f"{check_ifname(ifname)}.sock")

    async def _uapi(self, ifname: str, request: bytes, what: str) -> str:
        path = self._socket(ifname)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(path, limit=_UAPI_LIMIT), UAPI_TIMEOUT
            )
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotFound(f"no WireGuard device {ifname} (nothing answers on {path})") from None
        except (OSError, TimeoutError) as exc:
            raise KernelError(f"{what}: cannot reach {path}: {exc}") from exc
        try:
            writer.write(request)
            await writer.drain()
            answer = await asyncio.wait_for(reader.readuntil(b"\n\n"), UAPI_TIMEOUT)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise KernelError(f"{what}: no answer on {path}: {exc!r}") from exc
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return answer.decode("ascii", errors="replace")

    async def _get(self, ifname: str) -> DeviceState:
        return decode_get(await self._uapi(ifname, GET, f"wg show {ifname}"), f"wg show {ifname}")

    async def _set(self, ifname: str, request: bytes, what: str) -> None:
        decode_errno(await self._uapi(ifname, request, what), what)

    # -- processes --------------------------------------------------------------------------

    def _device(self, ifname: str) -> WgProcess | None:
        return next((d for d in devices(self._proc) if d.ifname == ifname), None)

    async def running(self) -> list[WgProcess]:
        return [d for d in devices(self._proc) if d.daemon == self.daemon_id]

    async def _start(self, ifname: str, owner: str, netns_path: str | None) -> None:
        try:
            exists = await ns.run_on_fresh_thread(lambda: _link_exists(ifname, netns_path))
        except OSError as exc:
            raise KernelError(f"cannot start WireGuard interface {ifname} in {netns_path}: {exc}") from exc
        if exists:
            raise Conflict(f"cannot start WireGuard interface {ifname}: a link of that name exists")
        argv = [self._binary, ifname]
        if netns_path is not None:  # nsenter, not `ip netns exec`: that would remount /sys
            argv = ["nsenter", f"--net={netns_path}", *argv]
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            ENV_USERSPACE: "1",
            ENV_OWNER: owner_alias(owner, self.daemon_id),
        }
        log_command(f"{ENV_USERSPACE}=1 {self._binary} {ifname}", netns_path)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # the device outlives cnmd, like a container
            )
        except OSError as exc:
            raise KernelError(f"cannot start {self._binary} for {ifname}: {exc.strerror}") from exc
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), START_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise KernelError(f"{self._binary} {ifname} did not start within {START_TIMEOUT:g} s") from None
        if proc.returncode != 0:
            # The banner (a box of ─│ lines) says nothing about the failure; the rest does.
            lines = [ln for ln in output.decode(errors="replace").splitlines() if ln.strip("─│┌┐└┘ ")]
            raise KernelError(f"cannot start {self._binary} {ifname}: {' '.join(lines) or proc.returncode}")

    async def _stop(self, device: WgProcess) -> None:
        try:
            pidfd = os.pidfd_open(device.pid)
        except ProcessLookupError:
            return
        try:
            # Still the same process?  A pid can be reused; the pidfd cannot.
            if _process(device.pid, self._proc) != device:
                return
            log_command(["kill", "-TERM", str(device.pid)])
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGTERM)
            if not await _exited(pidfd, STOP_TIMEOUT):
                log_command(["kill", "-KILL", str(device.pid)])
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                if not await _exited(pidfd, STOP_TIMEOUT):
                    raise KernelError(f"wireguard-go {device.ifname} (pid {device.pid}) does not stop")
        finally:
            os.close(pidfd)
        # A clean exit removes the socket; a killed process leaves it behind.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._socket(device.ifname))

    # -- the protocol -----------------------------------------------------------------------

    async def up(self, spec: WgSpec, netns_path: str | None = None) -> WgStatus:
        ifname = check_spec(spec).ifname
        device = self._device(ifname)
        if device is not None and device.daemon != self.daemon_id:
            raise Conflict(f"WireGuard interface {ifname} belongs to another cnmd ({device.daemon})")
        started = device is None
        if started:
            await self._start(ifname, spec.owner, netns_path)
        try:
            state = await self._get(ifname)
            private = spec.private_key or state.private_key or generate_private_key()
            new_key = private != state.private_key
            new_port = spec.listen_port != state.listen_port
            if new_key or new_port:
                log_command(
                    device_command(
                        ifname, listen_port=spec.listen_port if new_port else None, private_key=new_key
                    ),
                    netns_path,
                )
                request = encode_set(
                    private_key=private if new_key else None,
                    listen_port=spec.listen_port if new_port else None,
                )
                await self._set(ifname, request, f"configure WireGuard interface {ifname}")
            alias = owner_alias(spec.owner, self.daemon_id)
            try:
                await ns.run_on_fresh_thread(
                    lambda: _configure_link(ifname, alias, spec.address, spec.mtu, netns_path)
                )
            except OSError as exc:
                raise KernelError(f"cannot configure WireGuard interface {ifname}: {exc}") from exc
            return await self.status(ifname, netns_path)
        except BaseException:
            if started:
                device = self._device(ifname)
                if device is not None:
                    await self._stop(device)
            raise

    async def set_peers(self, ifname: str, peers: Sequence[WgPeer], netns_path: str | None = None) -> None:
        await self._apply(ifname, peers, exact=True, netns_path=netns_path)

    async def update_peer(self, ifname: str, peer: WgPeer, netns_path: str | None = None) -> None:
        await self._apply(ifname, [peer], exact=False, netns_path=netns_path)

    async def _apply(
        self, ifname: str, peers: Sequence[WgPeer], *, exact: bool, netns_path: str | None
    ) -> None:
        state = await self._get(ifname)
        plan = plan_peers([p.peer for p in state.peers], peers, exact=exact)
        if not plan:
            return
        for argv in plan_commands(ifname, plan):
            log_command(argv, netns_path)
        request = encode_set(peers=plan.upsert, remove=plan.remove)
        await self._set(ifname, request, f"set the peers of WireGuard interface {ifname}")

    async def remove_peer(self, ifname: str, public_key: str, netns_path: str | None = None) -> None:
        check_key(public_key)
        state = await self._get(ifname)
        if all(p.peer.public_key != public_key for p in state.peers):
            return
        log_command(remove_command(ifname, public_key), netns_path)
        await self._set(
            ifname, encode_set(remove=[public_key]), f"remove a peer of WireGuard interface {ifname}"
        )

    async def set_private_key(self, ifname: str, private_key: str, netns_path: str | None = None) -> None:
        check_key(private_key, "private key")
        state = await self._get(ifname)
        if state.private_key == private_key:
            return
        log_command(device_command(ifname, private_key=True), netns_path)
        await self._set(
            ifname, encode_set(private_key=private_key), f"set the key of WireGuard interface {ifname}"
        )

    async def status(self, ifname: str, netns_path: str | None = None) -> WgStatus:
        state = await self._get(ifname)
        return WgStatus(
            ifname=ifname,
            public_key=public_key(state.private_key) if state.private_key else "",
            listen_port=state.listen_port,
            peers=state.peers,
        )

    async def down(self, ifname: str, netns_path: str | None = None) -> None:
        check_ifname(ifname)
        for device in await self.running():
            if device.ifname == ifname:
                await self._stop(device)

    async def reap(self, keep: Collection[str]) -> list[str]:
        stopped = []
        for device in await self.running():
            if device.ifname not in keep:
                await self._stop(device)
                stopped.append(device.ifname)
        return stopped
