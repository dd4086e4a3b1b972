"""Does cnmd's store agree with the kernel of its test host?  A checker for any e2e test.

``problems(host)`` reads cnmd's SQLite store (read-only, beside the running daemon), its API
and the test host's kernel, and returns every disagreement as a sentence (empty: they
agree).  ``assert_consistent(host)`` waits a little for background work to settle (retired
veths are deleted by a reaper) and fails with the list.

What it proves, for every record in the store:

* networks: a bridge network has its bridge (tagged ``cnm:<daemon id>:<network id>``, the gateway
  address), its IPAM pool, and its nft set elements (tagged with its id: its bridge, its
  same-bridge pair, internal / icc / masquerading as recorded, its bridge . subnet unless
  internal);
* endpoints: a running container's sandbox holds them; each has its veth (host end tagged
  ``cnm:<daemon id>:<endpoint id>``, a port of the network's bridge, up; the peer named ``ifname`` in
  the sandbox's netns with the MAC and address recorded, the default route where recorded),
  its address in IPAM owned by it, its DNS record (asked from the netns of every container
  that shares a user-defined network with it, through 127.0.0.11), and for each published
  port its nft map element (nftables backend; with iptables, its DNAT rule in the
  endpoint's own chain) and the socket that holds the host port;
* containers: running ones have a live process, runc's state and a sandbox, stopped ones
  neither sandbox nor endpoints; the API lists what the store holds; runc runs nothing
  the store does not know as running.

And the other way round: no cnm-tagged link, netns, IPAM address or nft element exists that
no record owns, no network holds an element its record does not call for, and nothing of
the last release's nft layout (dispatch maps, ``n-<id12>-*`` chains) is left; no address
(per network, in the kernel too) and no host port is held twice.

Run as a script (``python consistency.py dns NAME…`` inside a netns) it is the DNS probe.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, ip_interface
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
RETIRED_GROUP = 0x636E6D  # cnm.kernel.reaper: links retired and waiting for deletion
DNS_ADDR = ("127.0.0.11", 53)
PORT_MAPS = ("ports-ip", "ports-ip-range", "ports-any", "ports-any-range")
NETWORK_SETS = ("bridges", "same-bridge", "internal", "icc", "masquerading", "subnets")
NETWORK_SETS6 = (*NETWORK_SETS, "routed")  # the ip6 table's; and "published" (checked per port)
OPT_GATEWAY_MODE_V6 = "com.docker.network.bridge.gateway_mode_ipv6"
LEGACY_MAPS = ("forward-into-bridge", "forward-from-bridge", "nat-from-bridge", "nat-into-bridge")


# -- the DNS probe (runs inside a sandbox's netns; stdlib only) ------------------------------


def _dns_query(name: str, timeout: float = 2.0, qtype: int = 1) -> list[str] | str:
    """A (``qtype`` 1) or AAAA (28) records of ``name`` from 127.0.0.11, or the rcode /
    "timeout" as text."""
    qid = os.getpid() & 0xFFFF
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    packet = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question + struct.pack("!HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(packet, DNS_ADDR)
            reply, _ = sock.recvfrom(4096)
        except TimeoutError:
            return "timeout"
    _, flags, qd, an, _, _ = struct.unpack("!HHHHHH", reply[:12])
    if flags & 0xF:
        return f"rcode {flags & 0xF}"
    pos = 12
    for _ in range(qd):
        pos = _skip_name(reply, pos) + 4
    found = []
    for _ in range(an):
        pos = _skip_name(reply, pos)
        rtype, _, _, length = struct.unpack("!HHIH", reply[pos : pos + 10])
        pos += 10
        if rtype == qtype == 1 and length == 4:
            found.append(str(IPv4Address(reply[pos : pos + 4])))
        if rtype == qtype == 28 and length == 16:
            found.append(str(IPv6Address(reply[pos : pos + 16])))
        pos += length
    return found


def _skip_name(data: bytes, pos: int) -> int:
    while True:
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        pos += length + 1


# -- what cnmd recorded ------------------------------------------------------------------------


@dataclass
class Store:
    """cnmd's records, as JSON documents by id."""

    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    sandboxes: dict[str, dict[str, Any]] = field(default_factory=dict)
    containers: dict[str, dict[str, Any]] = field(default_factory=dict)
    pools: dict[str, dict[str, Any]] = field(default_factory=dict)
    pools6: dict[str, dict[str, Any]] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)  # "<network id>/<address>" -> owner

    @classmethod
    def read(cls, data_root: Path) -> Store:
        conn = sqlite3.connect(f"file:{data_root / 'cnm.db'}?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute("SELECT key, doc FROM kv").fetchall()
        finally:
            conn.close()
        store = cls()
        tables = {
            "network/": store.networks,
            "endpoint/": store.endpoints,
            "sandbox/": store.sandboxes,
            "container/": store.containers,
            "ipam/pool/": store.pools,
            "ipam/pool6/": store.pools6,
        }
        for key, doc in rows:
            for prefix, table in tables.items():
                if key.startswith(prefix):
                    table[key[len(prefix) :]] = json.loads(doc)
            if key.startswith("ipam/address/"):
                store.addresses[key[len("ipam/address/") :]] = json.loads(doc).get("owner", "")
        return store


def bridge_name(network: dict[str, Any]) -> str:
    """cnm.model.network.NetworkRecord.bridge_name, from the document."""
    options = network.get("options") or {}
    name = options.get("com.docker.network.bridge.name")
    if name:
        return name
    return f"br-{network['id'][:12]}"


def predefined(network: dict[str, Any]) -> bool:
    return network["name"] in ("bridge", "host", "none")


def running(container: dict[str, Any]) -> bool:
    return container["state"]["status"] in ("running", "paused", "restarting")


# -- what the kernel holds ---------------------------------------------------------------------


@dataclass
class Link:
    index: int
    name: str
    kind: str
    alias: str
    master: str
    mac: str
    up: bool
    group: int
    peer_index: int
    addresses: list[str]
    addresses6: list[str] = field(default_factory=list)  # global scope (no fe80::)

    @property
    def owner(self) -> str:
        # cnm:<daemon id>:<owner id> (older links: cnm:<owner id>)
        return self.alias.split(" ", 1)[0].rpartition(":")[2] if self.alias.startswith("cnm:") else ""

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Link:
        group = raw.get("group", 0)
        if isinstance(group, str):
            group = 0 if group == "default" else int(group, 0)
        return cls(
            index=raw["ifindex"],
            name=raw["ifname"],
            kind=(raw.get("linkinfo") or {}).get("info_kind", ""),
            alias=raw.get("ifalias", ""),
            master=raw.get("master", ""),
            mac=raw.get("address", ""),
            up="UP" in raw.get("flags", []),
            group=group,
            peer_index=raw.get("link_index", 0),
            addresses=[
                f"{a['local']}/{a['prefixlen']}"
                for a in raw.get("addr_info", [])
                if a.get("family") == "inet"
            ],
            addresses6=[
                f"{a['local']}/{a['prefixlen']}"
                for a in raw.get("addr_info", [])
                if a.get("family") == "inet6" and a.get("scope") == "global"
            ],
        )


def links(host: Any, netns: str | None = None) -> dict[str, Link]:
    argv = ["ip", "-j", "-d", "addr", "show"]
    if netns is not None:
        argv = ["nsenter", f"--net={netns}", "--", *argv]
    proc = host.run(argv, check=False)
    if proc.returncode != 0:
        raise LookupError(proc.stderr.strip())
    return {link.name: link for link in map(Link.parse, json.loads(proc.stdout or "[]"))}


def default_route(host: Any, netns: str, family: int = 4) -> tuple[str, str] | None:
    """(gateway, dev) of the netns's default route (IPv6's when ``family`` is 6), or None."""
    argv = ["nsenter", f"--net={netns}", "--", "ip", "-j", f"-{family}", "route", "show", "default"]
    proc = host.run(argv, check=False)
    routes = json.loads(proc.stdout or "[]") if proc.returncode == 0 else []
    return (routes[0].get("gateway", ""), routes[0].get("dev", "")) if routes else None


def nft_table(host: Any, family: str = "ip") -> list[dict[str, Any]]:
    proc = host.run(["nft", "-j", "list", "table", family, "cnm"], check=False)
    if proc.returncode != 0:
        return []
    return json.loads(proc.stdout or "{}").get("nftables", [])


def listening(host: Any) -> set[tuple[str, str, int]]:
    """(protocol, address, port) of the test host's bound TCP listeners and UDP sockets."""
    found = set()
    for proto, flag in (("tcp", "-t"), ("udp", "-u")):
        out = host.run(["ss", "-Hln", flag], check=False).stdout
        for line in out.splitlines():
            local = line.split()[3]
            addr, _, port = local.rpartition(":")
            addr = addr.strip("[]").split("%", 1)[0]  # ss writes [::]:80, [fe80::1%eth0]:80
            if port.isdigit():
                found.add((proto, "0.0.0.0" if addr in ("*", "0.0.0.0") else addr, int(port)))
    return found


def dns_answers(host: Any, netns: str, names: list[str], verb: str = "dns") -> dict[str, list[str] | str]:
    """``verb`` "dns": A records; "dns6": AAAA records."""
    proc = host.run(
        ["nsenter", f"--net={netns}", "--", sys.executable, str(HERE), verb, *names], check=False, timeout=60
    )
    if proc.returncode != 0:
        return dict.fromkeys(names, f"probe failed: {proc.stderr.strip()[-200:]}")
    return json.loads(proc.stdout)


# -- the checks --------------------------------------------------------------------------------


def problems(host: Any) -> list[str]:
    """Every disagreement between cnmd's records and the test host's kernel (see the module)."""
    out: list[str] = []
    store = Store.read(Path(host.data_root))
    out += _check_records(store)
    out += _check_api(host, store)
    out += _check_links(host, store)
    backend = (host.api("GET", "/info").json().get("FirewallBackend") or {}).get("Driver", "nftables")
    if backend == "nftables":
        out += _check_nft(host, store)
        out += _check_nft(host, store, "ip6")
    else:
        out += _check_iptables(host, store)
        out += _check_iptables(host, store, "ip6")
    out += _check_ports(host, store)
    out += _check_dns(host, store)
    out += _check_runc(host, store)
    return out


def assert_consistent(host: Any, settle: float = 10.0) -> None:
    """Fail with every disagreement that remains after ``settle`` seconds of retries."""
    deadline = time.monotonic() + settle
    while True:
        found = problems(host)
        if not found or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    assert not found, "store and kernel disagree:\n  " + "\n  ".join(found)


def _own_sandbox(mode: Any) -> bool:
    """Whether a running container with this stored network mode has a sandbox of its own:
    not ``host`` nor ``container:X`` (stored as text before NetworkMode, an object since)."""
    kind = (
        mode.get("kind")
        if isinstance(mode, dict)
        else ("container" if mode.startswith("container:") else mode)
    )
    return kind not in ("host", "container")


def _name(store: Store, container_id: str) -> str:
    c = store.containers.get(container_id)
    return f"{c['name']} ({container_id[:12]})" if c else container_id[:12]


def _check_records(store: Store) -> list[str]:
    """The records among themselves and with IPAM."""
    out = []
    sandbox_of: dict[str, dict[str, Any]] = {}
    for sb in store.sandboxes.values():
        c = store.containers.get(sb["container_id"])
        if c is None or not running(c):
            out.append(
                f"sandbox {sb['id'][:12]} of {_name(store, sb['container_id'])}: container not running"
            )
        if sb["container_id"] in sandbox_of:
            out.append(f"{_name(store, sb['container_id'])} has two sandboxes")
        sandbox_of[sb["container_id"]] = sb
    for c in store.containers.values():
        if running(c) and _own_sandbox(c["config"]["network_mode"]) and c["id"] not in sandbox_of:
            out.append(f"running {_name(store, c['id'])} has no sandbox")
    seen: Counter[tuple[str, str]] = Counter()
    for ep in store.endpoints.values():
        who = f"endpoint {ep['id'][:12]} of {_name(store, ep['container_id'])}"
        network = store.networks.get(ep["network_id"])
        if network is None:
            out.append(f"{who}: its network {ep['network_id'][:12]} is gone")
        sb = store.sandboxes.get(ep["sandbox_id"])
        if sb is None or sb["container_id"] != ep["container_id"]:
            out.append(f"{who}: its sandbox {ep['sandbox_id'][:12]} is not the container's")
        c = store.containers.get(ep["container_id"])
        if c is None or not running(c):
            out.append(f"{who}: container missing or not running")
        if ep.get("address6") and not (network or {}).get("enable_ipv6"):
            out.append(f"{who}: an IPv6 address {ep['address6']} on a network without IPv6")
        for ip in _ips(ep):
            seen[(ep["network_id"], ip)] += 1
            owner = store.addresses.get(f"{ep['network_id']}/{ip}")
            if owner != ep["id"]:
                out.append(f"{who}: its address {ip} is held in IPAM by {owner!r}")
    out += [
        f"address {ip} on network {net[:12]} held by {n} endpoints" for (net, ip), n in seen.items() if n > 1
    ]
    for key, owner in store.addresses.items():
        net, _, ip = key.partition("/")
        if net not in store.networks:
            out.append(f"IPAM address {ip} of network {net[:12]} that is gone")
        if owner == "gateway" or owner.startswith("aux:"):
            continue
        ep = store.endpoints.get(owner)
        if ep is None or ep["network_id"] != net or ip not in _ips(ep):
            out.append(
                f"IPAM address {ip} of network {net[:12]} held by {owner[:12]}, which is no endpoint with it"
            )
    for net_id, net in store.networks.items():
        if net["driver"] == "bridge" and net_id not in store.pools:
            out.append(f"network {net['name']} has no IPAM pool")
        if net["driver"] == "bridge" and net.get("enable_ipv6"):
            if not net.get("subnet6"):
                out.append(f"network {net['name']} has IPv6 but no v6 subnet")
            elif net_id not in store.pools6:
                out.append(f"network {net['name']} has no IPv6 IPAM pool")
    out += [f"IPAM pool of network {n[:12]} that is gone" for n in store.pools if n not in store.networks]
    out += [
        f"IPv6 IPAM pool of network {n[:12]} that is gone" for n in store.pools6 if n not in store.networks
    ]
    return out


def _ips(ep: dict[str, Any]) -> list[str]:
    """The addresses (v4, then v6) an endpoint record holds, without prefix length."""
    return [str(ip_interface(ep[k]).ip) for k in ("address", "address6") if ep.get(k)]


def _check_api(host: Any, store: Store) -> list[str]:
    """What cnmd serves is what it recorded (memory and store agree)."""
    out = []
    listed = host.api("GET", "/containers/json?all=1").json()
    api_running = {c["Id"] for c in listed if c["State"] == "running"}
    if {c["Id"] for c in listed} != set(store.containers):
        out.append(
            f"API lists containers {sorted(c['Id'][:12] for c in listed)}, "
            f"the store {sorted(k[:12] for k in store.containers)}"
        )
    stored_running = {k for k, c in store.containers.items() if running(c)}
    if api_running != stored_running:
        out.append(
            f"API running {sorted(k[:12] for k in api_running)}, store {sorted(k[:12] for k in stored_running)}"
        )
    networks = {n["Id"] for n in host.api("GET", "/networks").json()}
    if networks != set(store.networks):
        out.append(
            f"API lists networks {sorted(n[:12] for n in networks)}, the store {sorted(store.networks)}"
        )
    return out


def _check_links(host: Any, store: Store) -> list[str]:
    out = []
    root = links(host)
    bridges = {}
    for net in store.networks.values():
        if net["driver"] != "bridge":
            continue
        br = root.get(bridge_name(net))
        bridges[net["id"]] = br
        if br is None or br.kind != "bridge":
            out.append(f"network {net['name']}: no bridge {bridge_name(net)}")
            continue
        if br.owner != net["id"]:
            out.append(f"network {net['name']}: bridge {br.name} tagged {br.alias!r}")
        if net.get("gateway") and net.get("subnet"):
            want = f"{net['gateway']}/{net['subnet'].split('/')[1]}"
            if want not in br.addresses:
                out.append(f"network {net['name']}: bridge {br.name} lacks {want} (has {br.addresses})")
        if net.get("gateway6") and net.get("subnet6"):
            want = f"{net['gateway6']}/{net['subnet6'].split('/')[1]}"
            if want not in br.addresses6:
                out.append(f"network {net['name']}: bridge {br.name} lacks {want} (has {br.addresses6})")
    for link in root.values():
        if not link.owner:
            continue
        if link.kind == "bridge" and link.owner not in store.networks:
            out.append(f"bridge {link.name} of network {link.owner[:12]}, which is gone")
        if link.kind == "veth" and link.owner not in store.endpoints:
            state = " (retired, not deleted yet)" if link.group == RETIRED_GROUP else ""
            out.append(f"veth {link.name} of endpoint {link.owner[:12]}, which is gone{state}")
    netns_dir = Path(host.exec_root) / "netns"
    present = {str(netns_dir / e) for e in host.run(["ls", "-A", str(netns_dir)], check=False).stdout.split()}
    keys = {sb["key"] for sb in store.sandboxes.values() if sb["key"]}
    out += [f"netns {p} that no sandbox owns" for p in sorted(present - keys)]
    out += [f"sandbox netns {p} is missing" for p in sorted(keys - present)]
    kernel_addrs: Counter[str] = Counter()
    for sb in store.sandboxes.values():
        if not sb["key"] or sb["key"] not in present:
            continue
        who = _name(store, sb["container_id"])
        try:
            inside = links(host, sb["key"])
        except LookupError as exc:
            out.append(f"sandbox of {who}: cannot enter {sb['key']}: {exc}")
            continue
        mine = [ep for ep in store.endpoints.values() if ep["sandbox_id"] == sb["id"]]
        wanted = {ep["ifname"] for ep in mine if ep.get("ifname")} | {"lo"}
        out += [
            f"sandbox of {who}: interface {n} that no endpoint owns" for n in sorted(set(inside) - wanted)
        ]
        for link in inside.values():
            kernel_addrs.update(a for a in [*link.addresses, *link.addresses6] if not a.startswith("127."))
        route = default_route(host, sb["key"])
        gateway_eps = [ep for ep in mine if ep.get("default_route")]
        if gateway_eps:
            ep = gateway_eps[0]
            if route != (ep["gateway"], ep["ifname"]):
                out.append(
                    f"sandbox of {who}: default route {route}, recorded via {ep['gateway']} dev {ep['ifname']}"
                )
        elif route is not None:
            out.append(f"sandbox of {who}: default route {route} that no endpoint carries")
        route6 = default_route(host, sb["key"], 6)
        if gateway_eps and gateway_eps[0].get("gateway6"):
            ep = gateway_eps[0]
            if route6 != (ep["gateway6"], ep["ifname"]):
                out.append(
                    f"sandbox of {who}: IPv6 default route {route6}, "
                    f"recorded via {ep['gateway6']} dev {ep['ifname']}"
                )
        elif route6 is not None and route6 not in {(e.get("gateway6"), e["ifname"]) for e in mine}:
            out.append(f"sandbox of {who}: IPv6 default route {route6} that no endpoint carries")
        for ep in mine:
            if not ep.get("host_ifname"):
                continue
            what = f"endpoint {ep['id'][:12]} of {who}"
            host_end = root.get(ep["host_ifname"])
            net = store.networks.get(ep["network_id"])
            if host_end is None:
                out.append(f"{what}: no host veth {ep['host_ifname']}")
                continue
            if host_end.owner != ep["id"] or not host_end.up or host_end.group == RETIRED_GROUP:
                out.append(f"{what}: host veth {host_end.name} tagged {host_end.alias!r}, up={host_end.up}")
            if net is not None and host_end.master != bridge_name(net):
                out.append(
                    f"{what}: host veth {host_end.name} on {host_end.master!r}, not {bridge_name(net)}"
                )
            peer = inside.get(ep["ifname"])
            if peer is None:
                out.append(f"{what}: no {ep['ifname']} in its sandbox")
                continue
            if peer.peer_index != host_end.index:
                out.append(f"{what}: {ep['ifname']} is not the peer of {host_end.name}")
            if ep.get("address") and peer.addresses != [ep["address"]]:
                out.append(f"{what}: {ep['ifname']} has {peer.addresses}, recorded {ep['address']}")
            if peer.addresses6 != ([ep["address6"]] if ep.get("address6") else []):
                out.append(
                    f"{what}: {ep['ifname']} has IPv6 {peer.addresses6}, recorded {ep.get('address6') or 'none'}"
                )
            if ep.get("mac") and peer.mac != ep["mac"]:
                out.append(f"{what}: {ep['ifname']} has MAC {peer.mac}, recorded {ep['mac']}")
            if not peer.up:
                out.append(f"{what}: {ep['ifname']} is down")
    out += [f"address {a} is on {n} interfaces" for a, n in kernel_addrs.items() if n > 1]
    for c in store.containers.values():
        pid = c["state"].get("pid", 0)
        if running(c) and (not pid or host.run(["test", "-d", f"/proc/{pid}"], check=False).returncode != 0):
            out.append(f"running {_name(store, c['id'])}: no process {pid}")
    return out


def _elements(objects: list[dict[str, Any]], map_name: str) -> list[tuple[str, str, str]]:
    """(key, comment, data) of the elements of map or set ``map_name``, as text (data is
    empty for a set; keys unquoted: ``br-x . 10.0.0.0/24``)."""
    from cnm.firewall.render_nft import port_key_from_json

    found = []
    for obj in objects:
        m = obj.get("map") or obj.get("set")
        if not m or m.get("name") != map_name:
            continue
        for item in m.get("elem", []):
            key, data = item if "map" in obj else (item, None)
            comment = ""
            if isinstance(key, dict) and "elem" in key:
                comment = key["elem"].get("comment", "")
                key = key["elem"]["val"]
            data_text = "" if data is None else port_key_from_json(data)
            found.append((port_key_from_json(key), comment, data_text))
    return found


def _network_elements(net: dict[str, Any], family: str = "ip") -> set[tuple[str, str]]:
    """(set, key) of what a bridge network's record calls for in the table of ``family``
    (render_nft's layout, written out again from the record: the checker must not trust the
    renderer); in ``ip6``, for a network with IPv6, its v6 subnet routed or masqueraded."""
    br = bridge_name(net)
    options = net.get("options") or {}

    def on(key: str) -> bool:
        return str(options.get(key, "true")).strip().lower() not in ("0", "f", "false", "no", "off")

    wanted = {("bridges", br), ("same-bridge", f"{br} . {br}")}
    if net.get("internal"):
        wanted.add(("internal", br))
    if on("com.docker.network.bridge.enable_icc"):
        wanted.add(("icc", br))
    if not net.get("internal"):
        routed = family == "ip6" and options.get(OPT_GATEWAY_MODE_V6) == "routed"
        if routed:
            wanted.add(("routed", br))
        elif on("com.docker.network.bridge.enable_ip_masquerade"):
            wanted.add(("masquerading", br))
        wanted.add(("subnets", f"{br} . {net['subnet6' if family == 'ip6' else 'subnet']}"))
    return wanted


def _dnat_target(ep: dict[str, Any], binding: dict[str, Any], family: str) -> str | None:
    """The container address a host binding is DNATed to in the table of ``family``, or
    None: a binding of the other family, or a v6 one cnmd's proxy serves ([::1], or a
    container without an IPv6 address)."""
    v6 = ":" in binding["host_ip"]
    if v6 != (family == "ip6"):
        return None
    if not v6:
        return str(IPv4Interface(ep["address"]).ip)
    if binding["host_ip"] == "::1" or not ep.get("address6"):
        return None
    return str(ip_interface(ep["address6"]).ip)


def _check_nft(host: Any, store: Store, family: str = "ip") -> list[str]:
    """The nft table ``family cnm``: network set elements and port map elements (and, in
    ``ip6``, the ``published`` set) exactly as the records call for."""
    out = []
    objects = nft_table(host, family)
    v6_networks = any(n.get("enable_ipv6") for n in store.networks.values())
    if not objects:
        return [f"nft table {family} cnm is missing"] if family == "ip" or v6_networks else []
    for o in objects:
        name = (o.get("chain") or o.get("map") or {}).get("name", "")
        parts = name.split("-")
        if name in LEGACY_MAPS or ("chain" in o and len(parts) == 3 and parts[0] == "n"):
            out.append(f"nft {'map' if 'map' in o else 'chain'} {name} of the last release's layout is left")
    subnet = "subnet6" if family == "ip6" else "subnet"
    t = "ip6 " if family == "ip6" else ""  # in messages
    bridge_nets = {n["id"]: n for n in store.networks.values() if n["driver"] == "bridge" and n.get(subnet)}
    held = {
        (set_name, key): comment.split(" ", 1)[0][len("cnm:") :]
        for set_name in (NETWORK_SETS6 if family == "ip6" else NETWORK_SETS)
        for key, comment, _ in _elements(objects, set_name)
    }
    called_for = {
        element: net_id for net_id, net in bridge_nets.items() for element in _network_elements(net, family)
    }
    for (set_name, key), net_id in called_for.items():
        if held.get((set_name, key)) != net_id:
            out.append(
                f"network {bridge_nets[net_id]['name']}: nft {t}set {set_name} lacks {key} "
                f"(holds it for {held.get((set_name, key))!r})"
            )
    for (set_name, key), owner in held.items():
        if owner not in bridge_nets:
            out.append(f"nft {t}set {set_name}: element {key} of {owner[:12]!r}, which is gone")
        elif (set_name, key) not in called_for:
            out.append(
                f"nft {t}set {set_name}: element {key} of network {bridge_nets[owner]['name']}, not called for"
            )
    wanted: dict[tuple[str, str], tuple[str, str]] = {}  # (map, key) -> (owner, data)
    for ep in store.endpoints.values():
        for m in ep.get("ports") or []:
            ip = _dnat_target(ep, m, family)
            if ip is None:
                continue  # the other table's, or the proxy's
            if family == "ip6":
                wanted[("published", f"{ip} . {m['protocol']} . {m['container_port']}")] = (ep["id"], "")
            any_ip = m["host_ip"] in ("0.0.0.0", "::")
            key = (
                f"{m['protocol']} . {m['host_port']}"
                if any_ip
                else f"{m['host_ip']} . {m['protocol']} . {m['host_port']}"
            )
            map_name = "ports-any" if any_ip else "ports-ip"
            wanted[(map_name, key)] = (ep["id"], f"{ip} . {m['container_port']}")
    have = {}
    for map_name in (*PORT_MAPS, "published") if family == "ip6" else PORT_MAPS:
        for key, comment, data in _elements(objects, map_name):
            have[(map_name, key)] = (comment.split(" ", 1)[0][len("cnm:") :], data)
    for k, (owner, data) in wanted.items():
        got = have.get(k)
        if got != (owner, data):
            out.append(
                f"port {k[1]} of endpoint {owner[:12]}: nft {t}{k[0]} holds {got}, want {data or 'the element'}"
            )
    for k, (owner, data) in have.items():
        if k not in wanted and k[0] in ("ports-any", "ports-ip", "published"):
            out.append(
                f"nft {t}{k[0]} element {k[1]} -> {data} of endpoint {owner[:12]}, which publishes no such port"
            )
        if k[0].endswith("-range") and owner not in store.endpoints:
            out.append(f"nft {t}{k[0]} element {k[1]} of endpoint {owner[:12]}, which is gone")
    return out


def _saved(host: Any, tool: str, table: str) -> str:
    """``<tool>-nft-save`` and ``<tool>-legacy-save`` of ``table``, where cnm has chains."""
    saved = ""
    for variant in (f"{tool}-nft-save", f"{tool}-legacy-save"):
        proc = host.run([variant, "-t", table], check=False)
        if proc.returncode == 0 and ":CNM" in proc.stdout:
            saved += proc.stdout
    return saved


def _check_iptables(host: Any, store: Store, family: str = "ip") -> list[str]:
    """The iptables backend's nat table (ip6tables' for ``family`` ``ip6``): a
    CNM-P-<endpoint> chain with one DNAT rule per published port of that family, reached
    from CNM, for each endpoint that publishes; no such chain and no per-network chain of
    anything gone; in ip6tables, CNM-PUBLISHED's ACCEPT of each DNATed port."""
    tool = "ip6tables" if family == "ip6" else "iptables"
    saved = _saved(host, tool, "nat")
    if ":CNM " not in saved:
        v6_networks = any(n.get("enable_ipv6") for n in store.networks.values())
        return [f"{tool}: no nat chain CNM in either variant"] if family == "ip" or v6_networks else []
    chains = {line[1:].split()[0] for line in saved.splitlines() if line.startswith(":")}
    rules = [line.split() for line in saved.splitlines() if line.startswith("-A ")]
    out = []
    publishing = {  # the bindings of this family DNATed to the container (not the proxy's)
        ep["id"][:12]: ep
        for ep in store.endpoints.values()
        if any(_dnat_target(ep, m, family) for m in ep.get("ports") or [])
    }
    networks = {n[:12] for n in store.networks}
    for chain in chains:
        if chain.startswith("CNM-P-") and chain[len("CNM-P-") :] not in publishing:
            out.append(f"{tool} chain {chain} of an endpoint that publishes nothing (or is gone)")
        if chain.startswith("CNM-N-") and chain.split("-")[2] not in networks:
            out.append(f"{tool} chain {chain} of a network that is gone")
    for prefix, ep in publishing.items():
        chain = f"CNM-P-{prefix}"
        if chain not in chains or not any(r[1] == "CNM" and r[-1] == chain for r in rules if "-j" in r):
            out.append(f"endpoint {ep['id'][:12]}: no {tool} chain {chain} reached from CNM")
            continue
        mine = [r for r in rules if r[1] == chain]
        for m in ep["ports"]:
            ip = _dnat_target(ep, m, family)
            if ip is None:
                continue  # the other family's rules, or the proxy's
            bracketed = f"[{ip}]" if family == "ip6" else ip
            dest = {f"{bracketed}:{m['container_port']}"} | (
                {ip} if m["host_port"] == m["container_port"] else set()
            )
            if not any(
                str(m["host_port"]) in r and r[r.index("--to-destination") + 1] in dest
                for r in mine
                if "--dport" in r and "--to-destination" in r
            ):
                out.append(
                    f"port {m['protocol']}/{m['host_port']} of endpoint {ep['id'][:12]}: no DNAT rule in {chain} ({tool})"
                )
    if family == "ip6":
        out += _check_ip6tables_published(host, store)
    return out


def _check_ip6tables_published(host: Any, store: Store) -> list[str]:
    """ip6tables' CNM-PUBLISHED: an ACCEPT of (address6, protocol, container port) for each
    v6 binding DNATed to a container, tagged with its endpoint, and nothing else."""
    saved = _saved(host, "ip6tables", "filter")
    wanted = {
        (f"{ip}/128", m["protocol"], str(m["container_port"])): ep["id"]
        for ep in store.endpoints.values()
        for m in ep.get("ports") or []
        if (ip := _dnat_target(ep, m, "ip6")) is not None
    }
    have: dict[tuple[str, str, str], str] = {}
    for line in saved.splitlines():
        words = line.split()
        if line.startswith("-A CNM-PUBLISHED ") and "-d" in words and "--dport" in words and "-p" in words:
            key = (
                words[words.index("-d") + 1],
                words[words.index("-p") + 1],
                words[words.index("--dport") + 1],
            )
            tag = re.search(r'--comment "?cnm:([0-9a-f]+)', line)
            have[key] = tag.group(1) if tag else ""
    out = [
        f"ip6tables CNM-PUBLISHED lacks {d} {p}/{port} of endpoint {owner[:12]} (holds {have.get((d, p, port))!r})"
        for (d, p, port), owner in wanted.items()
        if have.get((d, p, port)) != owner
    ]
    out += [
        f"ip6tables CNM-PUBLISHED accepts {d} {p}/{port} for {owner[:12]!r}, which publishes no such port"
        for (d, p, port), owner in have.items()
        if (d, p, port) not in wanted
    ]
    return out


def _check_ports(host: Any, store: Store) -> list[str]:
    """No host port held twice; every published port's socket is held."""
    out = []
    held: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for ep in store.endpoints.values():
        for m in ep.get("ports") or []:
            held.setdefault((m["protocol"], m["host_port"]), []).append((m["host_ip"], ep["id"]))
    for (proto, port), holders in held.items():
        for i, (ip_a, ep_a) in enumerate(holders):
            for ip_b, ep_b in holders[i + 1 :]:
                same_family = (":" in ip_a) == (":" in ip_b)
                if same_family and (ip_a == ip_b or {ip_a, ip_b} & {"0.0.0.0", "::"}):
                    out.append(
                        f"host port {proto}/{port} held by endpoints {ep_a[:12]} ({ip_a}) and {ep_b[:12]} ({ip_b})"
                    )
    if held:
        sockets = listening(host)
        for (proto, port), holders in held.items():
            for ip, ep in holders:
                if (proto, ip, port) not in sockets:
                    out.append(f"host port {proto} {ip}:{port} of endpoint {ep[:12]}: no socket holds it")
    return out


def _check_dns(host: Any, store: Store) -> list[str]:
    """From each sandbox on a user-defined network: every container sharing one resolves
    to its address on the first shared network (in the asker's connect order); and to its
    IPv6 address there (AAAA), when it has one."""
    out = []
    user_eps: dict[str, list[dict[str, Any]]] = {}  # container id -> its user-network endpoints, in order
    for ep in sorted(store.endpoints.values(), key=lambda e: e.get("created_seq", 0)):
        net = store.networks.get(ep["network_id"])
        if net is not None and not predefined(net):
            user_eps.setdefault(ep["container_id"], []).append(ep)
    for asker, eps in user_eps.items():
        sb = next((s for s in store.sandboxes.values() if s["container_id"] == asker), None)
        if sb is None or not sb["key"]:
            continue
        expected: dict[str, str] = {}
        expected6: dict[str, str] = {}
        for target, target_eps in user_eps.items():
            on = {e["network_id"]: e for e in target_eps}
            first = next((on[e["network_id"]] for e in eps if e["network_id"] in on), None)
            if first is not None and first.get("address"):
                expected[store.containers[target]["name"]] = str(IPv4Interface(first["address"]).ip)
            if first is not None and first.get("address6"):
                expected6[store.containers[target]["name"]] = str(ip_interface(first["address6"]).ip)
        for verb, wanted in (("dns", expected), ("dns6", expected6)):
            if not wanted:
                continue
            answers = dns_answers(host, sb["key"], sorted(wanted), verb)
            kind = "AAAA" if verb == "dns6" else ""
            for name, ip in wanted.items():
                if answers.get(name) != [ip]:
                    out.append(
                        f"DNS from {_name(store, asker)}: {name} {kind + ' ' if kind else ''}-> "
                        f"{answers.get(name)}, want [{ip}]"
                    )
    return out


def _check_runc(host: Any, store: Store) -> list[str]:
    """runc's own list (under cnmd's ``--root``) and the store agree on what runs."""
    proc = host.run(
        ["runc", "--root", str(Path(host.exec_root) / "runc"), "list", "--format", "json"], check=False
    )
    if proc.returncode != 0:
        return [f"runc list: {proc.stderr.strip()}"]
    listed = {c["id"]: c for c in json.loads(proc.stdout or "null") or []}
    out = []
    for cid, c in listed.items():
        if c["status"] not in ("running", "paused", "created"):
            continue
        stored = store.containers.get(cid)
        if stored is None or not running(stored):
            out.append(
                f"runc has {cid[:12]} {c['status']} (pid {c['pid']}), the store "
                f"{'has no such container' if stored is None else stored['state']['status']}"
            )
        elif stored["state"].get("pid") != c["pid"]:
            out.append(
                f"{_name(store, cid)}: runc says pid {c['pid']}, the store {stored['state'].get('pid')}"
            )
    for cid, c in store.containers.items():
        if running(c) and listed.get(cid, {}).get("status") not in ("running", "paused"):
            out.append(
                f"running {_name(store, cid)}: runc has it {listed.get(cid, {}).get('status', 'not at all')}"
            )
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("dns", "dns6"):
        qtype = 28 if sys.argv[1] == "dns6" else 1
        print(json.dumps({name: _dns_query(name, qtype=qtype) for name in sys.argv[2:]}))
    else:
        sys.exit("usage: consistency.py dns|dns6 NAME…  (inside a sandbox's netns)")
