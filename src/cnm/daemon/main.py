"""cnmd's entry point: build the engine from concrete parts, reconcile, serve, shut down.

Shutdown (SIGTERM/SIGINT) leaves containers running (Docker's live-restore): the next
cnmd reconciles the store with the kernel.  A pid file under the exec root, held with
``flock``, keeps two daemons off the same roots.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import resource
import signal
import sys

from cnm import __version__
from cnm.daemon.config import DaemonConfig, parse_args
from cnm.errors import CnmError, Unavailable

log = logging.getLogger("cnm.daemon")

FIREWALL_CHECK_INTERVAL = 2.0  # seconds; the issue asks for repair within 5 s


def _lock_pidfile(exec_root: str) -> int:
    path = os.path.join(exec_root, "cnmd.pid")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Unavailable(f"another cnmd is running with exec root {exec_root}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _build(config: DaemonConfig):
    """The composition root: the only place naming concrete implementations."""
    from cnm.dns.records import NameTable
    from cnm.dns.server import DnsServer
    from cnm.drivers.bridge import BridgeDriver
    from cnm.drivers.host import HostDriver
    from cnm.drivers.null import NullDriver
    from cnm.engine.controller import Controller
    from cnm.engine.ports import Publisher
    from cnm.firewall.bridge_guard import NftBridgeGuard
    from cnm.firewall.iptables import IptablesFirewall
    from cnm.firewall.nftables import NftablesFirewall
    from cnm.ipam.default import DefaultIpam
    from cnm.kernel.netlink import LinuxKernel
    from cnm.portmap.allocator import PortAllocator
    from cnm.portmap.proxy import UserlandProxy
    from cnm.runtime.runc import RuncRuntime
    from cnm.store.sqlite import SqliteStore

    store = SqliteStore(os.path.join(config.data_root, "cnm.db"))
    ipam = DefaultIpam(store, config.default_pools)
    kernel = LinuxKernel()
    backends = {
        "nftables": lambda: NftablesFirewall(userland_proxy=config.userland_proxy),
        "iptables": lambda: IptablesFirewall(userland_proxy=config.userland_proxy),
    }
    firewall = backends[config.firewall_backend]()
    # What another backend left (a daemon run with the other choice, or iptables' other
    # variant) is removed at start.
    leftovers = []
    if config.firewall_backend != "nftables":
        leftovers.append(backends["nftables"]())
    else:
        leftovers += [IptablesFirewall(iptables=variant) for variant in ("iptables-nft", "iptables-legacy")]
    # Anti-spoofing on the bridge ports, whichever backend does the L3 rules; turned off,
    # what a previous daemon installed goes with the leftovers.
    guard = NftBridgeGuard()
    if not config.anti_spoofing:
        leftovers.append(guard)
        guard = None
    drivers = {
        "bridge": BridgeDriver(kernel, firewall, hairpin=not config.userland_proxy, guard=guard),
        "host": HostDriver(),
        "null": NullDriver(),
    }
    runtime = RuncRuntime(config.data_root, config.exec_root, cgroup_parent=config.cgroup_parent)
    names = NameTable()
    dns = DnsServer(names)  # one server for the host, a listener per sandbox
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
        publisher=Publisher(
            PortAllocator(), firewall, UserlandProxy() if config.userland_proxy else None
        ),
    )
    return controller, store, kernel, dns, leftovers, guard


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


async def _watch_firewall(controller, guard) -> None:
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


async def serve(config: DaemonConfig) -> None:
    from cnm.api.app import make_app, serve_unix
    from cnm.api.schemas_system import VersionInfo
    from cnm.runtime.process import become_subreaper

    for path in (config.data_root, config.exec_root, os.path.dirname(config.socket_path)):
        os.makedirs(path, mode=0o711, exist_ok=True)
    pid_fd = _lock_pidfile(config.exec_root)
    become_subreaper()
    _raise_fd_limit()
    controller, store, kernel, dns, leftovers, guard = _build(config)
    for other in leftovers:
        try:
            await other.teardown()
        except CnmError as exc:  # e.g. that variant is not installed: nothing to remove
            log.debug("no leftovers removed by %s: %s", type(other).__name__, exc)
    _quiet_pyroute2()
    await controller.start()
    tmp_dir = os.path.join(config.exec_root, "tmp")
    os.makedirs(tmp_dir, exist_ok=True)
    app = make_app(controller, version_info=VersionInfo(version=__version__), tmp_dir=tmp_dir)
    runner = await serve_unix(app, config.socket_path)
    log.info("cnmd %s serving on unix://%s", __version__, config.socket_path)

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
        await controller.close()
        await dns.close()  # listeners go; the NAT tables in containers stay for the next cnmd
        with contextlib.suppress(FileNotFoundError):
            os.unlink(config.socket_path)
        store.close()
        kernel.close()
        os.close(pid_fd)


def main(argv: list[str] | None = None) -> int:
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
