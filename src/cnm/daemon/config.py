"""cnmd's command line, parsed into one typed, validated ``DaemonConfig``."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cnm.errors import InvalidArgument
from cnm.ipam.api import DEFAULT_POOLS, PoolSpec
from cnm.ipam.default import parse_pool_spec
from cnm.model.values import check_usable_subnet6, parse_ifname, parse_ipv6_network

if TYPE_CHECKING:
    from cnm.store.etcd import TlsFiles

NETNS_NAMES_DIR = "/run/netns"  # where iproute2 looks a namespace name up
LOG_LEVELS = ("debug", "info", "warning", "error")
FIREWALL_BACKENDS = ("nftables", "iptables")
DEFAULT_TUNNEL_POOL = ipaddress.IPv4Network("100.64.0.0/10")  # shared address space, RFC 6598
DEFAULT_KEY_ROTATION = 12 * 3600.0  # as swarm rotates its overlay keys
MIN_KEY_ROTATION = 2.0  # the announce-to-switch grace is half of it, and must reach every host
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


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
    # --cluster-store: etcd endpoints shared with other cnmd (global scope); () = none.
    cluster_store: tuple[str, ...] = ()
    cluster_store_tls: TlsFiles | None = None
    # --cluster-advertise: an IPv4 address or an interface name (resolved at start, in
    # the daemon's network namespace); "" = the address that routes to the cluster store.
    cluster_advertise: str = ""
    # --node-name: this daemon's name in the cluster (default: the hostname).
    node_name: str = ""
    # --overlay-key-rotation: seconds between WireGuard key rotations of encrypted
    # overlays (0 = never).
    overlay_key_rotation: float = DEFAULT_KEY_ROTATION
    # --overlay-tunnel-pool: where nodes take their WireGuard tunnel addresses (the same on
    # every node of a cluster).
    overlay_tunnel_pool: ipaddress.IPv4Network = DEFAULT_TUNNEL_POOL
    # --netns-names: each container's namespace also at /run/netns/cnm-<name> ("" = off)
    netns_names: str = ""
    # --ui-addr: the live page's loopback (host, port); None = no page
    ui_addr: tuple[str, int] | None = None
    # --host-gateway-ip (at most one IPv4 and one IPv6): what --add-host NAME:host-gateway
    # stands for; () = the gateways of the container's networks
    host_gateway_ips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    # --ipv6 / --fixed-cidr-v6: IPv6 on the default bridge, and its subnet (None: one
    # from the default IPv6 pool)
    ipv6: bool = False
    fixed_cidr_v6: ipaddress.IPv6Network | None = None


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
        help="address pool for new networks (repeatable; replaces Docker's defaults of its family: "
        "an IPv6 base replaces the host's unique local /48)",
    )
    p.add_argument("--ipv6", action="store_true", help="enable IPv6 on the default bridge network")
    p.add_argument(
        "--fixed-cidr-v6",
        metavar="CIDR",
        help="IPv6 subnet of the default bridge (with --ipv6; default: a /64 of the default IPv6 pool)",
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
    p.add_argument(
        "--cluster-store",
        metavar="etcd://HOST:PORT[,HOST:PORT...]",
        help="etcd cluster shared with other cnmd (global scope): cnmd joins it at start",
    )
    p.add_argument(
        "--cluster-store-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="TLS to the cluster store: kv.cacertfile=, kv.certfile=, kv.keyfile= (repeatable)",
    )
    p.add_argument(
        "--cluster-advertise",
        metavar="IP|IFACE[:PORT]",
        help="the underlay address other hosts send overlay traffic to: an IPv4 address or an "
        "interface (its first IPv4 address); a port is accepted, as Docker's syntax, and unused "
        "(default: the address this host reaches the cluster store from)",
    )
    p.add_argument(
        "--netns-names",
        action="store_true",
        help="also mount each container's network namespace as /run/netns/cnm-<container name>, "
        "so `ip netns exec cnm-NAME ...` enters it (removed when the container stops; default off)",
    )
    p.add_argument(
        "--ui-addr",
        metavar="IP:PORT",
        help="serve the live page (the network map, explain, port paths; read-only, behind a "
        "token that `cnm ui` prints) on this loopback address, e.g. 127.0.0.1:8088; port 0 "
        "picks a free one (default off)",
    )
    p.add_argument(
        "--node-name",
        metavar="NAME",
        help="this daemon's name in the cluster, unique among live daemons (default: the hostname)",
    )
    p.add_argument(
        "--overlay-key-rotation",
        metavar="DURATION",
        help="how often encrypted overlays' WireGuard keys rotate: a Go duration (90s, 30m, 12h), "
        "0 = never (default 12h)",
    )
    p.add_argument(
        "--overlay-tunnel-pool",
        metavar="CIDR",
        help="IPv4 network the nodes take their WireGuard tunnel addresses from, the same on "
        "every node (default 100.64.0.0/10)",
    )
    p.add_argument(
        "--host-gateway-ip",
        action="append",
        default=[],
        metavar="IP",
        help="the address --add-host NAME:host-gateway stands for; give it twice for one IPv4 "
        "and one IPv6 address (default: the host's addresses on the container's network)",
    )
    return p


def parse_host_gateway_ips(values: list[str]) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    """``--host-gateway-ip``, repeatable as dockerd's: at most one IPv4 and one IPv6
    unicast address, in the order given."""
    found: dict[int, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}
    for value in values:
        what = f"invalid --host-gateway-ip {value!r}"
        try:
            address = ipaddress.ip_address(value.strip())
        except ValueError:
            raise InvalidArgument(f"{what}: not an IP address") from None
        if address.is_unspecified or address.is_multicast:
            raise InvalidArgument(f"{what}: {address} is not a unicast address")
        if address.version in found:
            raise InvalidArgument(
                f"{what}: one IPv{address.version} address was given already "
                f"({found[address.version]}); give at most one IPv4 and one IPv6 address"
            )
        found[address.version] = address
    return tuple(found.values())


CLUSTER_STORE_OPTS = ("kv.cacertfile", "kv.certfile", "kv.keyfile")


def parse_cluster_store(url: str | None, opts: list[str]) -> tuple[tuple[str, ...], TlsFiles | None]:
    """``--cluster-store`` and ``--cluster-store-opt`` as endpoints and TLS files (None:
    plain TCP); InvalidArgument naming the flag and what is wrong."""
    if url is None:
        if opts:
            raise InvalidArgument("--cluster-store-opt given without --cluster-store")
        return (), None
    from cnm.store.etcd import TlsFiles, parse_cluster_url  # grpc: imported only when used

    try:
        endpoints = parse_cluster_url(url)
    except InvalidArgument as exc:
        raise InvalidArgument(f"invalid --cluster-store: {exc}") from exc
    files: dict[str, str] = {}
    for opt in opts:
        key, sep, value = opt.partition("=")
        if not sep or not value:
            raise InvalidArgument(f"invalid --cluster-store-opt {opt!r}: expected KEY=VALUE")
        if key not in CLUSTER_STORE_OPTS:
            raise InvalidArgument(
                f"invalid --cluster-store-opt {opt!r}: unknown option {key!r} "
                f"(known: {', '.join(CLUSTER_STORE_OPTS)})"
            )
        if key in files:
            raise InvalidArgument(f"invalid --cluster-store-opt {opt!r}: {key} given twice")
        if not os.path.isfile(value) or not os.access(value, os.R_OK):
            raise InvalidArgument(f"invalid --cluster-store-opt {opt!r}: {value} is not a readable file")
        files[key.removeprefix("kv.")] = os.path.abspath(value)
    if not files:
        return endpoints, None
    try:
        tls = TlsFiles(**files)
    except InvalidArgument as exc:
        raise InvalidArgument(f"invalid --cluster-store-opt: {exc}") from exc
    return endpoints, tls


_NODE_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,62})$")


def parse_node_name(name: str) -> str:
    """``--node-name``: 1 to 63 letters, digits, ``_``, ``.`` or ``-``, starting with a
    letter or digit (a hostname's label; it is a key in the cluster store)."""
    if not _NODE_NAME.match(name):
        raise InvalidArgument(
            f"invalid --node-name {name!r}: 1 to 63 characters of [A-Za-z0-9_.-], "
            "starting with a letter or digit"
        )
    return name


def parse_advertise(value: str) -> str:
    """``--cluster-advertise IP|IFACE[:PORT]`` without its port: an IPv4 unicast address
    (as text) or an interface name, which the daemon resolves at start.  A port, when
    given, must be a number in 1-65535; it is not used (cnm's VXLAN port is 4789)."""
    what = f"invalid --cluster-advertise {value!r}"
    host, sep, port = value.rpartition(":")
    if not sep:
        host = value
    elif not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InvalidArgument(f"{what}: port {port!r} is not a number in 1-65535")
    if not host:
        raise InvalidArgument(f"{what}: expected IP|IFACE[:PORT]")
    if ":" in host or host.startswith("["):
        raise InvalidArgument(f"{what}: IPv6 is not supported, give an IPv4 address or an interface")
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        if re.fullmatch(r"[0-9.]+", host):
            raise InvalidArgument(f"{what}: {host!r} is not an IPv4 address") from None
        try:
            return parse_ifname(host)
        except InvalidArgument:
            raise InvalidArgument(
                f"{what}: {host!r} is neither an IPv4 address nor an interface name"
            ) from None
    if address.is_unspecified or address.is_multicast or address == ipaddress.IPv4Address("255.255.255.255"):
        raise InvalidArgument(f"{what}: {address} is not a unicast address")
    return str(address)


def parse_duration(flag: str, value: str) -> float:
    """A Go-style duration (``12h``, ``1h30m``, ``90s``, ``500ms``; a bare ``0``) in seconds."""
    text = value.strip()
    if text == "0":
        return 0.0
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise InvalidArgument(f"invalid {flag} {value!r}: expected a duration such as 90s, 30m or 12h, or 0")
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def parse_key_rotation(value: str) -> float:
    """``--overlay-key-rotation``: 0 (never) or at least ``MIN_KEY_ROTATION`` seconds."""
    seconds = parse_duration("--overlay-key-rotation", value)
    if 0 < seconds < MIN_KEY_ROTATION:
        raise InvalidArgument(
            f"invalid --overlay-key-rotation {value!r}: at least {MIN_KEY_ROTATION:g}s, or 0 for never"
        )
    return seconds


def parse_tunnel_pool(value: str) -> ipaddress.IPv4Network:
    """``--overlay-tunnel-pool``: an IPv4 network with room for two nodes at least."""
    what = f"invalid --overlay-tunnel-pool {value!r}"
    try:
        pool = ipaddress.IPv4Network(value.strip())
    except ValueError as exc:
        raise InvalidArgument(f"{what}: {exc}") from None
    if pool.prefixlen > 30:
        raise InvalidArgument(f"{what}: a /{pool.prefixlen} has no room for a cluster, give /30 or larger")
    if pool.is_multicast or pool.is_loopback or pool.is_link_local or pool.is_unspecified:
        raise InvalidArgument(f"{what}: not a unicast network")
    return pool


def parse_ui_addr(value: str) -> tuple[str, int]:
    """``--ui-addr IP:PORT`` (``[IPv6]:PORT`` for IPv6) as (host, port).  Loopback only
    (127.0.0.0/8, ::1): the page shows every container's addresses and rules, and a token
    in a URL is no protection on a network; reach it from elsewhere through an SSH tunnel.
    Port 0: any free port (``cnm ui`` prints the one chosen)."""
    what = f"invalid --ui-addr {value!r}"
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise InvalidArgument(f"{what}: expected IP:PORT, e.g. 127.0.0.1:8088")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgument(f"{what}: port {port!r} is not a number in 0-65535")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise InvalidArgument(f"{what}: {host!r} is not an IP address (give 127.0.0.1 or [::1])") from None
    if address.version == 6 and not bracketed:
        raise InvalidArgument(f"{what}: write an IPv6 address in brackets, e.g. [::1]:8088")
    if not address.is_loopback:
        raise InvalidArgument(
            f"{what}: {address} is not a loopback address; the page is served on 127.0.0.0/8 or ::1 "
            "only (reach it from another machine through an SSH tunnel)"
        )
    return str(address), int(port)


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
    pools = tuple(parse_pool_spec(p) for p in args.default_address_pool)
    if not any(p.base.version == 4 for p in pools):
        pools = DEFAULT_POOLS + pools  # only IPv6 pools given: Docker's IPv4 defaults stay
    fixed_cidr_v6 = None
    if args.fixed_cidr_v6 is not None:
        if not args.ipv6:
            raise InvalidArgument("--fixed-cidr-v6 given without --ipv6")
        fixed_cidr_v6 = check_usable_subnet6(parse_ipv6_network(args.fixed_cidr_v6, "--fixed-cidr-v6"))
    cgroup_parent = args.cgroup_parent.strip("/")
    if not cgroup_parent or ".." in cgroup_parent.split("/"):
        raise InvalidArgument(f"invalid cgroup parent {args.cgroup_parent!r}")
    cluster_store, cluster_store_tls = parse_cluster_store(args.cluster_store, args.cluster_store_opt)
    for flag, given in (
        ("--cluster-advertise", args.cluster_advertise),
        ("--node-name", args.node_name),
        ("--overlay-key-rotation", args.overlay_key_rotation),
        ("--overlay-tunnel-pool", args.overlay_tunnel_pool),
    ):
        if given is not None and not cluster_store:
            raise InvalidArgument(f"{flag} given without --cluster-store")
    advertise = parse_advertise(args.cluster_advertise) if args.cluster_advertise is not None else ""
    rotation = DEFAULT_KEY_ROTATION
    if args.overlay_key_rotation is not None:
        rotation = parse_key_rotation(args.overlay_key_rotation)
    tunnel_pool = DEFAULT_TUNNEL_POOL
    if args.overlay_tunnel_pool is not None:
        tunnel_pool = parse_tunnel_pool(args.overlay_tunnel_pool)
    node_name = ""
    if cluster_store and args.node_name is not None:
        node_name = parse_node_name(args.node_name)
    elif cluster_store:
        try:
            node_name = parse_node_name(socket.gethostname())
        except InvalidArgument:
            raise InvalidArgument(
                f"the hostname {socket.gethostname()!r} is not a valid node name: give --node-name"
            ) from None
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
        cluster_store=cluster_store,
        cluster_store_tls=cluster_store_tls,
        cluster_advertise=advertise,
        node_name=node_name,
        overlay_key_rotation=rotation,
        overlay_tunnel_pool=tunnel_pool,
        netns_names=NETNS_NAMES_DIR if args.netns_names else "",
        ui_addr=parse_ui_addr(args.ui_addr) if args.ui_addr is not None else None,
        host_gateway_ips=parse_host_gateway_ips(args.host_gateway_ip),
        ipv6=args.ipv6,
        fixed_cidr_v6=fixed_cidr_v6,
    )
