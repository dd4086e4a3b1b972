"""cnmd's entry point: build the engine from concrete parts, reconcile, serve, shut down.

Shutdown (SIGTERM/SIGINT) leaves containers running (Docker's live-restore): the next
cnmd reconciles the store with the kernel.

One daemon, its own state: a pid file in *each* root (``cnmd.pid``), held with ``flock``
for the daemon's life, keeps a second daemon off either root.  The data root names the
daemon (``daemon-id``, made on first start): that id is in the owner tag of every link it
creates, and a beacon (``cnm.kernel.owner``) tells other daemons in the same network
namespace that it is alive, so none of them removes what it owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import resource
import secrets
import signal
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from cnm import __version__
from cnm.daemon.config import DaemonConfig, parse_args
from cnm.errors import CnmError, Unavailable

if TYPE_CHECKING:  # the concrete classes are imported where they are built (startup cost)
    from cnm.daemon.cluster import ClusterMembership
    from cnm.dns.server import DnsServer
    from cnm.engine.controller import Controller
    from cnm.firewall.api import Firewall, SpoofGuard
    from cnm.kernel.api import Kernel
    from cnm.runtime.api import Runtime
    from cnm.store.api import Store

log = logging.getLogger("cnm.daemon")

FIREWALL_CHECK_INTERVAL = 2.0  # seconds; the issue asks for repair within 5 s

# bench/scale.py's switch: profile the start (until cnmd serves) into this file
START_PROFILE_ENV = "CNM_START_PROFILE"


PID_FILE = "cnmd.pid"
DAEMON_ID_FILE = "daemon-id"
_DAEMON_ID = re.compile(r"^[0-9a-f]{16}$")


def lock_root(root: str, what: str) -> int:
    """Hold ``<root>/cnmd.pid`` locked (``flock``) for this process's life and write our pid
    into it; the fd (closing it releases the lock).  Unavailable, naming the root and the
    holder's pid, when another daemon holds it."""
    path = os.path.join(root, PID_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise Unavailable(f"cannot open {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise Unavailable(f"another cnmd (pid {holder}) is running with {what} {root}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def lock_roots(data_root: str, exec_root: str) -> list[int]:
    """Both roots locked, the data root first; nothing held on failure."""
    fds = [lock_root(data_root, "data root")]
    try:
        fds.append(lock_root(exec_root, "exec root"))
    except BaseException:
        os.close(fds[0])
        raise
    return fds


def daemon_id(data_root: str) -> str:
    """The id of the daemon owning ``data_root`` (16 hex digits), made on first use.  Call
    with the data root locked."""
    path = os.path.join(data_root, DAEMON_ID_FILE)
    try:
        with open(path, encoding="ascii") as fh:
            value = fh.read().strip()
        if _DAEMON_ID.match(value):
            return value
        log.warning("replacing malformed %s", path)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        raise Unavailable(f"cannot read {path}: {exc}") from exc
    value = secrets.token_hex(8)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write(value + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return value


def firewall_table(bridge_name: str) -> str:
    """cnm's nftables table: ``cnm`` for the daemon of the default bridge ``cnm0``, else
    ``cnm-<bridge name>``: daemons sharing a network namespace must differ in bridge name,
    so each gets a table of its own and never rewrites another's."""
    if bridge_name == "cnm0":
        return "cnm"
    if re.fullmatch(r"[A-Za-z0-9_.-]+", bridge_name):
        return f"cnm-{bridge_name}"
    return "cnm-x" + bridge_name.encode().hex()


def _build(
    config: DaemonConfig,
    daemon: str,
    others: dict[str, int],
    runtime: Runtime,
    cluster: ClusterMembership | None = None,
) -> tuple[Controller, Store, Kernel, DnsServer, list[Firewall | SpoofGuard], SpoofGuard | None]:
    """The composition root: the only place naming concrete implementations (the runtime
    is built first, by ``serve``).  ``others``: the other cnmd alive in this network
    namespace ({daemon id: pid}); ``cluster``: this daemon's membership of the cluster
    store, joined (global networks live there)."""
    from ipaddress import IPv4Address

    from cnm.dns.records import NameTable
    from cnm.dns.server import DnsServer
    from cnm.drivers.api import NetworkDriver
    from cnm.drivers.bridge import BridgeDriver
    from cnm.drivers.host import HostDriver
    from cnm.drivers.null import NullDriver
    from cnm.drivers.overlay import ClusterLink, OverlayDriver
    from cnm.drivers.overlay_crypt import Tunnel
    from cnm.engine.cluster import GLOBAL_POOL, Cluster
    from cnm.engine.controller import Controller
    from cnm.engine.ports import Publisher
    from cnm.firewall.bridge_guard import NftBridgeGuard
    from cnm.firewall.iptables import IptablesFirewall
    from cnm.firewall.nftables import NftablesFirewall
    from cnm.ipam.api import ula_pool
    from cnm.ipam.default import DefaultIpam
    from cnm.kernel.netlink import LinuxKernel
    from cnm.kernel.wireguard import RotationPolicy
    from cnm.kernel.wireguard_go import WireGuardGo
    from cnm.model.network import IpamConfig
    from cnm.portmap.allocator import PortAllocator
    from cnm.portmap.proxy import UserlandProxy
    from cnm.store.sqlite import SqliteStore

    store = SqliteStore(os.path.join(config.data_root, "cnm.db"))
    # Docker 27+: with no IPv6 --default-address-pool, the host's own unique local /48
    ipam = DefaultIpam(store, config.default_pools, pools6=(ula_pool(daemon),))
    kernel = LinuxKernel(daemon)
    table = firewall_table(config.bridge_name)
    if others and config.firewall_backend == "iptables":
        raise Unavailable(
            "another cnmd is running in this network namespace "
            f"({', '.join(f'pid {pid}' for pid in others.values())}): the iptables backend's chains "
            "(CNM, CNM-FORWARD ...) cannot be shared; use --firewall-backend nftables"
        )
    backends: dict[str, Callable[[], Firewall]] = {
        "nftables": lambda: NftablesFirewall(table=table, userland_proxy=config.userland_proxy),
        "iptables": lambda: IptablesFirewall(userland_proxy=config.userland_proxy),
    }
    firewall = backends[config.firewall_backend]()
    # What another backend left (a daemon run with the other choice, or iptables' other
    # variant) is removed at start -- unless another cnmd is alive here: then it may be
    # that daemon's.
    leftovers: list[Firewall | SpoofGuard] = []
    if not others and config.firewall_backend != "nftables":
        leftovers.append(backends["nftables"]())
    elif not others:
        leftovers += [IptablesFirewall(iptables=variant) for variant in ("iptables-nft", "iptables-legacy")]
    # Anti-spoofing on the bridge and overlay networks' ports, whichever backend does the
    # L3 rules, in a bridge table of this daemon's own (named as its ip table), restored by
    # both drivers (it waits for both at start-up); turned off, what a previous run of this
    # daemon installed goes with the leftovers.
    guard: SpoofGuard | None = NftBridgeGuard(table=table, scopes=("bridge", "overlay"))
    if not config.anti_spoofing:
        leftovers.append(NftBridgeGuard(table=table))
        guard = None
    drivers: dict[str, NetworkDriver] = {
        "bridge": BridgeDriver(kernel, firewall, hairpin=not config.userland_proxy, guard=guard),
        "host": HostDriver(),
        "null": NullDriver(),
    }
    if cluster is None:  # joins are refused (the driver says why)
        drivers["overlay"] = OverlayDriver(kernel, guard=guard)
    else:
        interval = config.overlay_key_rotation
        # the next key is announced half an interval (at most 10 s) before it is used
        policy = RotationPolicy(interval, grace=min(10.0, interval / 2))
        tunnel = Tunnel(
            WireGuardGo(daemon),
            cluster.store,
            cluster.node_name,
            IPv4Address(cluster.address),
            key_path=os.path.join(config.data_root, "wireguard.json"),
            publish=lambda fields: cluster.update(**fields),
            rotation=policy,
            pool=config.overlay_tunnel_pool,
            firewall=firewall,
        )
        link = ClusterLink(
            cluster.store, cluster.node_name, IPv4Address(cluster.address), lambda: cluster.lease
        )
        drivers["overlay"] = OverlayDriver(kernel, link, tunnel, guard=guard)
    engine_cluster = None
    if cluster is not None:
        # global networks' pools: one address space for the whole cluster, on its store
        global_ipam = DefaultIpam(cluster.store, (GLOBAL_POOL,))
        engine_cluster = Cluster(
            cluster.store, cluster.node_name, cluster.address, global_ipam, lease=lambda: cluster.lease
        )
    names = NameTable()
    # one server for the host, a listener per sandbox; its NAT ports are kept for the next start
    dns = DnsServer(names, state_dir=os.path.join(config.exec_root, "dns"))
    controller = Controller(
        store=store,
        ipam=ipam,
        kernel=kernel,
        firewall=firewall,
        drivers=drivers,
        runtime=runtime,
        data_root=config.data_root,
        exec_root=config.exec_root,
        bridge_name=config.bridge_name,
        firewall_backend=config.firewall_backend,
        default_pools=config.default_pools,
        debug=config.log_level == "debug",
        names=names,
        dns=dns,
        publisher=Publisher(PortAllocator(), firewall, UserlandProxy(), userland_proxy=config.userland_proxy),
        cluster=engine_cluster,
        firewall_table=table,
        netns_names=config.netns_names,
        host_gateway_ips=config.host_gateway_ips,
        bridge_ipv6=IpamConfig(subnet=config.fixed_cidr_v6) if config.ipv6 else None,
    )
    return controller, store, kernel, dns, leftovers, guard


async def _remove_trace_tables() -> None:
    """Delete the marking tables of a ``cnm trace --live`` cut short by a crash: left, they
    would keep setting nftrace on packets like its probe's, for nobody."""
    from cnm.kernel.tracing import remove_leftover_trace_tables

    try:
        removed = await remove_leftover_trace_tables()
    except CnmError as exc:
        log.warning("could not remove the tables a cut-short cnm trace --live left: %s", exc)
        return
    if removed:
        log.info("removed what a cnm trace --live cut short left: table %s", ", table ".join(removed))


async def check_bridge_name(kernel: Kernel, bridge_name: str, others: dict[str, int]) -> None:
    """Refuse to start on a default bridge another cnmd tagged: daemons sharing a network
    namespace must differ in bridge name (it also names the nftables table, which the
    firewall's start would otherwise rewrite under the other daemon)."""
    link = await kernel.lookup_link(bridge_name)  # by name: a dump would grow with containers
    if link is None or not link.daemon or link.daemon == kernel.daemon_id:
        return
    state = f"running, pid {others[link.daemon]}" if link.daemon in others else "not running"
    raise Unavailable(
        f"bridge {bridge_name} belongs to another cnmd (daemon {link.daemon}, {state}): "
        "give each daemon in a network namespace its own --bridge-name"
    )


def _raise_fd_limit() -> None:
    """cnmd holds a few descriptors per container (exit pidfd, DNS sockets, stdin pipes):
    lift the soft limit to the hard one, as dockerd does, or a few hundred containers
    would exhaust the default 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _quiet_pyroute2() -> None:
    """pyroute2 logs every netlink message at DEBUG (and sets levels on its own loggers when
    imported); cnm.kernel already says what changed, as commands."""
    for name in list(logging.root.manager.loggerDict):
        if name == "pyroute2" or name.startswith("pyroute2."):
            logging.getLogger(name).setLevel(logging.WARNING)


async def _watch_firewall(controller: Controller, guard: SpoofGuard | None) -> None:
    """Self-healing: put cnm's rules back if someone flushed the ruleset."""
    while True:
        await asyncio.sleep(FIREWALL_CHECK_INTERVAL)
        try:
            await controller.heal_firewall()
        except CnmError as exc:
            log.error("firewall repair failed: %s", exc)
        try:
            if guard is not None:
                await guard.heal()
        except CnmError as exc:
            log.error("anti-spoofing repair failed: %s", exc)


@contextlib.contextmanager
def _no_default_ca_store() -> Iterator[None]:
    """While importing aiohttp: SSL contexts made meanwhile do not read the system's CA
    store.  aiohttp's connector builds two client contexts at import, each parsing every
    CA certificate (~0.1 s, a tenth of cnmd's start); cnmd serves its API on a unix socket
    and never makes an HTTPS request through them (etcd's TLS is grpc's, with its own
    CA file).  Should anything use them, verification fails: closed, never open."""
    import ssl

    ssl.SSLContext.set_default_verify_paths = _no_verify_paths  # type: ignore[method-assign]
    try:
        yield
    finally:
        del ssl.SSLContext.set_default_verify_paths  # the inherited method again


def _no_verify_paths(self: object) -> None:
    """``SSLContext.set_default_verify_paths`` while aiohttp is imported: nothing loaded."""


async def serve(config: DaemonConfig) -> None:
    from cnm.dns.answer import warm_up as dns_warm_up
    from cnm.kernel.owner import DaemonBeacon, live_daemons
    from cnm.runtime.process import become_subreaper
    from cnm.runtime.runc import RuncRuntime

    for path in (config.data_root, config.exec_root, os.path.dirname(config.socket_path)):
        os.makedirs(path, mode=0o711, exist_ok=True)
    lock_fds = lock_roots(config.data_root, config.exec_root)
    daemon = daemon_id(config.data_root)
    beacon = DaemonBeacon(daemon, os.getpid())  # before any kernel work: others see us alive
    others = {d: pid for d, pid in live_daemons().items() if d != daemon}
    if others:
        log.info(
            "other cnmd running in this network namespace: %s (their links and rules are left alone)",
            ", ".join(f"{d} (pid {pid})" for d, pid in others.items()),
        )
    cluster = None
    if config.cluster_store:  # before any kernel work: an unreachable cluster stops the start
        from cnm.daemon.cluster import ClusterMembership, resolve_advertise

        cluster = ClusterMembership(
            config.cluster_store,
            daemon,
            node_name=config.node_name,
            address=resolve_advertise(config.cluster_advertise, config.cluster_store),
            tls=config.cluster_store_tls,
            version=__version__,
        )
        await cluster.start()
    become_subreaper()
    _raise_fd_limit()
    runtime = RuncRuntime(config.data_root, config.exec_root, cgroup_parent=config.cgroup_parent)
    # runc lists the containers it runs (with 1,000 of them, most of a second of its own)
    # while this process imports the rest of cnm and the API: its first step starts runc
    runc_states = asyncio.ensure_future(runtime.states())
    await asyncio.sleep(0)
    try:
        controller, store, kernel, dns, leftovers, guard = _build(config, daemon, others, runtime, cluster)
        with _no_default_ca_store():
            from cnm.api.app import make_app, serve_unix
        from cnm.api.schemas_system import VersionInfo

        _quiet_pyroute2()  # before the first netlink call: a "no such device" answer is not news
        await check_bridge_name(kernel, config.bridge_name, others)
        for other in leftovers:
            try:
                await other.teardown()
            except CnmError as exc:  # e.g. that variant is not installed: nothing to remove
                log.debug("no leftovers removed by %s: %s", type(other).__name__, exc)
        if not others:  # else a live trace may be the other cnmd's, running now
            await _remove_trace_tables()
    except BaseException:
        runc_states.cancel()
        raise
    ui_runner = None
    ui_url = ui_token_path = ""
    if config.ui_addr is not None:  # bound before the engine starts: a taken port stops the start
        try:
            with _no_default_ca_store():
                from cnm.api.ui import TOKEN_FILE, serve_ui
            ui_token_path = os.path.join(config.exec_root, TOKEN_FILE)
            ui_runner, ui_url = await serve_ui(controller, config.ui_addr, config.exec_root)
        except BaseException:
            runc_states.cancel()
            raise
    await controller.start(runc_states)
    tmp_dir = os.path.join(config.exec_root, "tmp")
    os.makedirs(tmp_dir, exist_ok=True)
    version_info = VersionInfo(
        version=__version__,
        cluster_store=cluster.describe() if cluster else "",
        node_name=cluster.node_name if cluster else "",
        cluster_advertise=cluster.address if cluster else "",
    )
    app = make_app(controller, version_info=version_info, tmp_dir=tmp_dir, ui_url=ui_url)
    runner = await serve_unix(app, config.socket_path)
    _started()
    log.info("cnmd %s serving on unix://%s", __version__, config.socket_path)
    dns_warm_up()  # dnspython, which the start did not need, before the first query does

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = loop.create_task(_watch_firewall(controller, guard))
    try:
        await stop.wait()
    finally:
        log.info("cnmd shutting down (containers keep running)")
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await runner.cleanup()
        if ui_runner is not None:
            await ui_runner.cleanup()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(ui_token_path)
        await controller.close()
        await dns.close()  # listeners go; the NAT tables in containers stay for the next cnmd
        with contextlib.suppress(FileNotFoundError):
            os.unlink(config.socket_path)
        await store.close()
        if cluster is not None:
            await cluster.close()
        kernel.close()
        beacon.close()
        for fd in lock_fds:
            os.close(fd)


class _StartProfile:
    """The start under cProfile, timed by the main thread's CPU clock (not the wall clock:
    a loaded machine or another thread holding the GIL would be charged to whatever ran
    then), written to ``path`` once cnmd serves; off unless ``CNM_START_PROFILE`` names
    a file (bench/scale.py's ``--profile``)."""

    def __init__(self, path: str) -> None:
        import cProfile
        import time

        self.path = path
        self.profile = cProfile.Profile(time.thread_time)
        self.profile.enable()

    def done(self) -> None:
        self.profile.disable()
        self.profile.dump_stats(self.path)


_start_profile: _StartProfile | None = None


def _started() -> None:
    """cnmd serves: the CPU its start took, in the debug log (with what runc and nft
    used meanwhile: the children waited for), and the profile written if one runs."""
    global _start_profile
    times = os.times()
    log.log(
        logging.DEBUG if _start_profile is None else logging.INFO,
        "start took %.2f s of CPU (children %.2f s)",
        times.user + times.system,
        times.children_user + times.children_system,
    )
    if _start_profile is not None:
        _start_profile.done()
        _start_profile = None


def main(argv: list[str] | None = None) -> int:
    global _start_profile
    if os.environ.get(START_PROFILE_ENV):
        _start_profile = _StartProfile(os.environ[START_PROFILE_ENV])
    try:
        config = parse_args(argv)
    except CnmError as exc:
        print(f"cnmd: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper()),
        format="%(asctime)s %(levelname)-5s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if os.geteuid() != 0:
        print("cnmd: must run as root (it programs the kernel's network stack)", file=sys.stderr)
        return 1
    try:
        asyncio.run(serve(config))
    except CnmError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
