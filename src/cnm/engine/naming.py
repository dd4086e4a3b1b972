"""Names for a sandbox: /etc/hostname, /etc/hosts, /etc/resolv.conf, legacy ``--link``
environment, and the embedded DNS server's records and listener.

Docker's split (libnetwork's sandbox and resolver code): containers with an endpoint on a
user-defined network resolve names through the embedded server at 127.0.0.11 (names are
scoped to the networks they share); on the default bridge they get the host's resolvers
and only ``--link`` entries in /etc/hosts.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address

from cnm.dns import files
from cnm.dns.records import IPAddress, NameTable, Upstream
from cnm.dns.server import DnsServer
from cnm.engine.links import legacy_links, link_env
from cnm.engine.links import parse_link as parse_link  # re-exported: callers import it from here
from cnm.engine.state import State
from cnm.errors import CnmError
from cnm.model.container import Container, ContainerConfig
from cnm.model.endpoint import EndpointRecord, SandboxRecord, dns_names
from cnm.model.network import GWBRIDGE_NAME, NetworkRecord
from cnm.model.values import HOST_GATEWAY, parse_extra_host, parse_nameserver
from cnm.runtime.api import ContainerFiles, Runtime

log = logging.getLogger("cnm.engine")

MAX_UPSTREAMS = 3  # Docker's maxExtDNS
REMOTE_PREFIX = "remote/"  # DNS records of other hosts' endpoints (global networks)


def validate_names(config: ContainerConfig) -> None:
    """What ``create`` refuses up front: malformed ``--add-host``, ``--dns``, ``--link``."""
    for entry in config.extra_hosts:
        parse_extra_host(entry)
    for server in config.dns:
        parse_nameserver(server)
    for link in config.links:
        parse_link(link)


def user_defined(network: NetworkRecord) -> bool:
    """Does the embedded DNS serve names on ``network``?  Not on the predefined ones, nor
    on ``cnm_gwbridge`` (its endpoints are anonymous, as on Docker's docker_gwbridge)."""
    return not network.predefined and network.name != GWBRIDGE_NAME


@functools.cache
def kernel_ipv6() -> bool:
    """Does this kernel do IPv6 at all?  Then every sandbox's loopback has ``::1`` (cnm,
    as Docker 26+, never turns IPv6 off on ``lo``), which is Docker's test for "IPv6 is
    on inside the container" (its /etc/hosts gets the IPv6 lines)."""
    return os.path.exists("/proc/net/if_inet6")


class Naming:
    def __init__(
        self,
        state: State,
        runtime: Runtime,
        names: NameTable | None = None,
        dns: DnsServer | None = None,
        host_resolv_conf: str = "/etc/resolv.conf",
        host_gateway_ips: Sequence[IPAddress] = (),
    ) -> None:
        """``host_gateway_ips``: cnmd's ``--host-gateway-ip``s (at most one per family), what
        ``--add-host NAME:host-gateway`` stands for; () = the gateways of the container's
        networks (see ``_host_gateway``)."""
        self._state = state
        self._runtime = runtime
        self._names = names
        self._dns = dns
        self._host_resolv_conf = host_resolv_conf
        self._host_gateway_ips = tuple(host_gateway_ips)
        self._host_conf: tuple[tuple[int, int, int], files.ResolvConf] | None = None  # (stat key, parsed)
        self._written: dict[str, tuple[str, tuple[int, int, int]]] = {}  # path -> (content, stat key)
        state.listen_global_endpoints(self._remote_changed)

    # -- files ----------------------------------------------------------------------------

    def paths(self, container_id: str) -> ContainerFiles:
        root = self._runtime.container_dir(container_id)
        return ContainerFiles(
            hostname=os.path.join(root, "hostname"),
            hosts=os.path.join(root, "hosts"),
            resolv_conf=os.path.join(root, "resolv.conf"),
        )

    def _host_resolv(self) -> files.ResolvConf:
        """The host's resolv.conf, parsed again only when the file changed (every connect
        and disconnect asks for it)."""
        try:
            key = _stat_key(os.stat(self._host_resolv_conf))
            if self._host_conf is not None and self._host_conf[0] == key:
                return self._host_conf[1]
            with open(self._host_resolv_conf) as f:
                conf = files.parse_resolv_conf(f.read())
        except OSError:
            self._host_conf = None
            return files.ResolvConf()
        self._host_conf = (key, conf)
        return conf

    def _write(self, path: str, content: str) -> None:
        """Rewrite ``path`` in place (it is bind-mounted) unless it still holds what cnm
        wrote last (connect/disconnect rewrite them often)."""
        cached = self._written.get(path)
        if cached is not None and cached[0] == content:
            try:
                if _stat_key(os.stat(path)) == cached[1]:
                    return
            except OSError:
                pass
        self._written[path] = (content, _stat_key(files.write_in_place(path, content)))

    def forget(self, container_id: str) -> None:
        """Drop what is remembered of ``container_id``'s files (its sandbox is gone)."""
        paths = self.paths(container_id)
        for path in (paths.hostname, paths.hosts, paths.resolv_conf):
            self._written.pop(path, None)

    def _networked(self, endpoints: Sequence[EndpointRecord]) -> list[tuple[NetworkRecord, EndpointRecord]]:
        return [
            (self._state.networks[ep.network_id], ep)
            for ep in endpoints
            if ep.network_id in self._state.networks
        ]

    def _host_gateway(self, pairs: Sequence[tuple[NetworkRecord, EndpointRecord]]) -> list[str]:
        """What ``host-gateway`` stands for: cnmd's ``--host-gateway-ip``s when given; else
        the host's addresses on the container's network (the IPv4 and IPv6 gateways of its
        default-route endpoint), else the default bridge's, else 127.0.0.1.  IPv4 first;
        ``render_hosts`` drops the IPv6 one when IPv6 is off inside the container."""
        if self._host_gateway_ips:
            return [str(ip) for ip in self._host_gateway_ips]
        v4: IPv4Address | None = None
        v6: IPv6Address | None = None
        for _net, ep in pairs:
            if ep.default_route:
                v4 = v4 or ep.gateway
                v6 = v6 or (ep.gateway6 if ep.address6 is not None else None)
        bridge = next((n for n in self._state.networks.values() if n.name == "bridge"), None)
        if bridge is not None:
            v4 = v4 or bridge.gateway
            v6 = v6 or (bridge.gateway6 if bridge.enable_ipv6 else None)
        return [str(v4 or "127.0.0.1"), *([str(v6)] if v6 is not None else [])]

    def write_files(
        self,
        container: Container,
        sandbox: SandboxRecord,
        endpoints: Sequence[EndpointRecord],
        *,
        host_mode: bool,
    ) -> None:
        """(Re)write the three files, in place (they are bind-mounted)."""
        config = container.config
        paths = self.paths(container.id)
        pairs = self._networked(endpoints)
        gateway = self._host_gateway(pairs)
        extra = [
            (name, address)
            for name, ip in map(parse_extra_host, config.extra_hosts)
            for address in (gateway if ip == HOST_GATEWAY else [ip])
        ]
        has_v6 = not host_mode and any(ep.address6 is not None for _, ep in pairs)
        self._write(paths.hostname, files.render_hostname(sandbox.hostname))
        if host_mode and not extra:
            try:
                with open("/etc/hosts") as f:
                    hosts = f.read()
            except OSError:
                hosts = files.render_hosts(sandbox.hostname, [], ipv6=kernel_ipv6())
        else:
            links = [
                (address, names)
                for ep, names in legacy_links(self._state, container)
                for address in _addresses(ep)
            ]
            hosts = files.render_hosts(
                sandbox.hostname,
                [] if host_mode else [a for _, ep in pairs for a in _addresses(ep)],
                domainname=config.domainname,
                extra_hosts=extra,
                links=links,
                ipv6=kernel_ipv6(),
            )
        self._write(paths.hosts, hosts)
        host_conf = self._host_resolv()
        comment = ""
        if not host_mode and any(user_defined(net) for net, _ in pairs):
            conf = files.embedded_resolv_conf(
                host_conf, dns_search=config.dns_search, dns_options=config.dns_options
            )
            comment = "Names are served by cnmd's embedded DNS server; other names go to: " + ", ".join(
                str(u.address) for u in self._upstreams(config, host_conf)
            )
        else:
            conf, fallback = files.container_resolv_conf(
                host_conf,
                dns=config.dns,
                dns_search=config.dns_search,
                dns_options=config.dns_options,
                host_mode=host_mode,
                ipv6=has_v6,
            )
            if fallback:
                comment = "No non-localhost nameservers were left; using default external servers."
        self._write(paths.resolv_conf, files.render_resolv_conf(conf, comment=comment))

    def link_env(self, container: Container) -> tuple[str, ...]:
        """Docker's ``ALIAS_PORT_80_TCP…``, ``ALIAS_NAME``, ``ALIAS_ENV_…`` variables for
        legacy links on the default bridge (``engine/links.py``)."""
        return link_env(self._state, container)

    # -- embedded DNS ---------------------------------------------------------------------

    @staticmethod
    def _upstreams(config: ContainerConfig, host_conf: files.ResolvConf) -> list[Upstream]:
        """``--dns`` servers are asked from the container's namespace; otherwise the host's
        resolvers, asked from cnmd's own (so a 127.0.0.53 resolver works).  Either may be
        IPv6; a link-local one keeps its zone (``fe80::1%eth0``), the interface it is
        reached through."""
        if config.dns:
            servers = [(ip_address(parse_nameserver(d)), False) for d in config.dns]
        else:
            servers = []
            for n in host_conf.nameservers:
                try:
                    servers.append((ip_address(n), True))
                except ValueError:
                    log.warning("ignoring malformed nameserver %r in %s", n, "the host's resolv.conf")
        return [Upstream(ip, 53, via_host) for ip, via_host in servers][:MAX_UPSTREAMS]

    async def publish(
        self,
        container: Container,
        sandbox: SandboxRecord,
        endpoints: Sequence[EndpointRecord],
        *,
        listen: bool = True,
    ) -> None:
        """Make the DNS records of ``sandbox`` match its endpoints (a record per
        user-network endpoint) and make sure it has a listener (``listen=False``: the
        caller adds listeners for many sandboxes at once, with ``listen``).

        The listener lives as long as the sandbox, whatever its networks (Docker starts its
        resolver once per sandbox too): setting it up costs a thread trip and an nft
        transaction in the container's namespace, which belongs at start, not on every
        ``network connect``.  resolv.conf decides whether the container uses it."""
        if self._names is None or not sandbox.key:
            return
        pairs = [(n, e) for n, e in self._networked(endpoints) if user_defined(n)]
        self._names.remove_sandbox(sandbox.id)
        config = container.config
        for net, ep in pairs:
            links = dict(parse_link(link)[::-1] for link in ep.request.links)
            if config.network_mode.network in (net.name, net.id):
                links.update(parse_link(link)[::-1] for link in config.links)
            self._names.set_endpoint(
                sandbox.id,
                net.id,
                net.name,
                container.name,
                dns_names(container.name, ep.aliases, container.short_id, sandbox.hostname),
                ep.address.ip if ep.address is not None else None,
                address6=ep.address6.ip if ep.address6 is not None else None,
                links=links or None,
            )
        if self._dns is None:
            return
        host_conf = self._host_resolv()
        self._names.configure(
            sandbox.id,
            self._upstreams(config, host_conf),
            internal_only=bool(pairs) and all(net.internal for net, _ in pairs),
            ndots_set=files.ndots_set(config.dns_options or host_conf.options),
        )
        if listen and not self._dns.serving(sandbox.id):
            await self._dns.add_sandbox(sandbox.id, sandbox.key)

    def prepare(self, sandboxes: Sequence[SandboxRecord]) -> None:
        """Start opening the listeners' sockets of sandboxes ``listen`` may be asked for
        (in the background: a daemon start does it while runc lists its containers);
        ``discard_prepared`` closes those ``listen`` did not take."""
        if self._names is not None and self._dns is not None:
            self._dns.prepare([(s.id, s.key) for s in sandboxes if s.key])

    def discard_prepared(self) -> None:
        if self._dns is not None:
            self._dns.discard_prepared()

    async def listen(self, sandboxes: Sequence[SandboxRecord]) -> dict[str, CnmError]:
        """The listeners of many sandboxes published with ``listen=False`` (a daemon start
        restores every sandbox), their sockets made in one trip through the namespaces;
        the errors by sandbox id (the other sandboxes are served all the same)."""
        if self._names is None or self._dns is None:
            return {}
        dns = self._dns
        wanted = [(s.id, s.key) for s in sandboxes if s.key and not dns.serving(s.id)]
        results = await dns.add_sandboxes(wanted)
        return {sandbox_id: r for sandbox_id, r in results.items() if isinstance(r, CnmError)}

    def _remote_changed(self, _id: str, old: EndpointRecord | None, new: EndpointRecord | None) -> None:
        """Another host's endpoint on a global network came, changed or went: its names
        (container name, aliases, short id) answer on that network here too, under a
        sandbox id of its own (``remote/<endpoint id>``).  This host's own endpoints are
        published by ``publish`` (their sandbox is one of this host's)."""
        if self._names is None:
            return
        for record in (old, new):
            if record is not None:
                self._names.remove_sandbox(REMOTE_PREFIX + record.id)
        if new is None or new.sandbox_id in self._state.sandboxes or not new.name:
            return
        network = self._state.networks.get(new.network_id)
        if network is None or new.address is None:
            return
        self._names.set_endpoint(
            REMOTE_PREFIX + new.id,
            network.id,
            network.name,
            new.name,
            dns_names(new.name, new.aliases, new.container_id[:12], ""),
            new.address.ip,
            address6=new.address6.ip if new.address6 is not None else None,
        )

    async def withdraw(self, sandbox: SandboxRecord) -> list[BaseException]:
        """The sandbox is going away: drop its records and listener (idempotent)."""
        self.forget(sandbox.container_id)
        if self._names is not None:
            self._names.remove_sandbox(sandbox.id)
        if self._dns is None:
            return []
        try:
            await self._dns.remove_sandbox(sandbox.id)
        except CnmError as exc:
            return [exc]
        return []


def _stat_key(st: os.stat_result) -> tuple[int, int, int]:
    """What tells that a file changed: inode, size, modification time."""
    return st.st_ino, st.st_size, st.st_mtime_ns


def _addresses(ep: EndpointRecord) -> list[str]:
    """An endpoint's addresses as /etc/hosts lists them: IPv4, then IPv6."""
    return [str(a.ip) for a in (ep.address, ep.address6) if a is not None]
