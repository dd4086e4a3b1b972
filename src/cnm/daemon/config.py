"""cnmd's command line, parsed into one typed, validated ``DaemonConfig``."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from cnm.errors import InvalidArgument
from cnm.ipam.api import DEFAULT_POOLS, PoolSpec
from cnm.ipam.default import parse_pool_spec
from cnm.model.values import parse_ifname

LOG_LEVELS = ("debug", "info", "warning", "error")
FIREWALL_BACKENDS = ("nftables", "iptables")


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    socket_path: str
    data_root: str
    exec_root: str
    bridge_name: str
    default_pools: tuple[PoolSpec, ...]
    log_level: str
    cgroup_parent: str
    firewall_backend: str
    userland_proxy: bool = False
    anti_spoofing: bool = True


def socket_path_of(host: str) -> str:
    if host.startswith("unix://"):
        path = host[len("unix://") :]
    elif host.startswith("/"):
        path = host
    else:
        raise InvalidArgument(f"unsupported host {host!r}: only unix:///path sockets are served")
    if not path:
        raise InvalidArgument("empty socket path")
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cnmd", description="cnm daemon: Docker's container networking in Python"
    )
    p.add_argument("-H", "--host", help="socket to serve the API on (default unix://<exec-root>/cnm.sock)")
    p.add_argument("--data-root", default="/var/lib/cnm", help="persistent state (default /var/lib/cnm)")
    p.add_argument(
        "--exec-root", default="/run/cnm", help="runtime state: netns, runc, sockets (default /run/cnm)"
    )
    p.add_argument("--bridge-name", default="cnm0", help="Linux bridge of the default network (default cnm0)")
    p.add_argument(
        "--default-address-pool",
        action="append",
        default=[],
        metavar="base=CIDR,size=N",
        help="address pool for new networks (repeatable; replaces Docker's defaults)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=LOG_LEVELS,
        help="debug prints every kernel change as the command a person would type",
    )
    p.add_argument("--cgroup-parent", default="cnm", help="parent cgroup of the containers (default cnm)")
    p.add_argument(
        "--firewall-backend",
        default="nftables",
        choices=FIREWALL_BACKENDS,
        help="nftables (default; maps, flat cost per port) or iptables (Docker's layout)",
    )
    p.add_argument(
        "--userland-proxy",
        nargs="?",
        const="true",
        default="false",
        metavar="BOOL",
        help="serve published ports to the host's loopback and hairpin traffic with one "
        "in-daemon proxy (default false: kernel NAT serves them, keeping client addresses)",
    )
    p.add_argument(
        "--anti-spoofing",
        nargs="?",
        const="true",
        default="true",
        metavar="BOOL",
        help="drop what a container sends into its bridge port from another MAC or IPv4 "
        "address, and ARP claiming one (default true; nftables bridge family, "
        "whichever --firewall-backend)",
    )
    return p


def parse_bool(flag: str, value: str) -> bool:
    low = value.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise InvalidArgument(f"invalid value {value!r} for {flag}: expected true or false")


def parse_args(argv: list[str] | None = None) -> DaemonConfig:
    args = build_parser().parse_args(argv)
    exec_root = os.path.abspath(args.exec_root)
    socket_path = socket_path_of(args.host) if args.host else os.path.join(exec_root, "cnm.sock")
    pools = tuple(parse_pool_spec(p) for p in args.default_address_pool) or DEFAULT_POOLS
    cgroup_parent = args.cgroup_parent.strip("/")
    if not cgroup_parent or ".." in cgroup_parent.split("/"):
        raise InvalidArgument(f"invalid cgroup parent {args.cgroup_parent!r}")
    return DaemonConfig(
        socket_path=socket_path,
        data_root=os.path.abspath(args.data_root),
        exec_root=exec_root,
        bridge_name=parse_ifname(args.bridge_name),
        default_pools=pools,
        log_level=args.log_level,
        cgroup_parent=cgroup_parent,
        firewall_backend=args.firewall_backend,
        userland_proxy=parse_bool("--userland-proxy", args.userland_proxy),
        anti_spoofing=parse_bool("--anti-spoofing", args.anti_spoofing),
    )
