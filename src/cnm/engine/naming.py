"""Names for a sandbox: /etc/hostname, /etc/hosts, /etc/resolv.conf, legacy ``--link``
environment, and the embedded DNS server's records and listener.

Docker's split (libnetwork's sandbox and resolver code): containers with an endpoint on a
user-defined network resolve names through the embedded server at 127.0.0.11 (names are
scoped to the networks they share); on the default bridge they get the host's resolvers
and only ``--link`` entries in /etc/hosts.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from ipaddress import IPv4Interface, ip_address

from cnm.dns import files
from cnm.dns.records import NameTable, Upstream
from cnm.dns.server import DnsServer
from cnm.engine.state import State
from cnm.errors import CnmError, InvalidArgument
from cnm.model.container import Container, ContainerConfig
from cnm.model.endpoint import EndpointRecord, SandboxRecord, dns_names
from cnm.model.network import GWBRIDGE_NAME, NetworkRecord
from cnm.model.values import HOST_GATEWAY, parse_extra_host, parse_nameserver
from cnm.runtime.api import ContainerFiles, Runtime

log = logging.getLogger("cnm.engine")

MAX_UPSTREAMS = 3  # Docker's maxExtDNS
REMOTE_PREFIX = "remote/"  # DNS records of other hosts' endpoints (global networks)
_ENV_NAME = re.compile(r"[^A-Za-z0-9]")
_LINK_ENV_SKIP = ("HOME", "PATH")


def parse_link(value: str) -> tuple[str, str]:
    """``NAME[:ALIAS]`` -> (name, alias); Docker's ``/parent/alias`` form is accepted too."""
    name, _, alias = value.partition(":")
    name = name.lstrip("/")
    alias = alias.rsplit("/", 1)[-1] if alias else name
    if not name or not alias:
        raise InvalidArgument(f"invalid link {value!r}: expected NAME[:ALIAS]")
    return name, alias


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


class Naming:
    def __init__(
        self,
        state: State,
        runtime: Runtime,
        *,
        names: NameTable | None = None,
        dns: DnsServer | None = None,
        host_resolv_conf: str = "/etc/resolv.conf",
    ) -> None:
        self._state = state
        self._runtime = runtime
        self._names = names
        self._dns = dns
        self._host_resolv_conf = host_resolv_conf
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

    def _host_gateway(self, pairs: Sequence[tuple[NetworkRecord, EndpointRecord]]) -> str:
        """``host-gateway``: the host's address on the container's network (the gateway of
        its default-route endpoint), else the default bridge's gateway."""
        for _net, ep in pairs:
            if ep.default_route and ep.gateway is not None:
                return str(ep.gateway)
        bridge = next((n for n in self._state.networks.values() if n.name == "bridge"), None)
        return str(bridge.gateway) if bridge is not None and bridge.gateway else "127.0.0.1"

    def _legacy_links(
        self, container: Container, strict: bool = False
    ) -> list[tuple[Container, str, IPv4Interface]]:
        """(target, alias, the address of the target's bridge endpoint) for ``--link`` on the default bridge.
        ``strict`` (at start): a target that is not running or not on the default bridge is
        an error, as in Docker; otherwise such links are skipped."""
        if not container.config.network_mode.is_default_bridge:
            return []
        found = []
        for link in container.config.links:
            name, alias = parse_link(link)
            target = next((c for c in self._state.containers.values() if c.name == name), None)
            if (target is None or not target.running) and not strict:
                continue
            if target is None or not target.running:
                raise InvalidArgument(
                    f"Cannot link to a non running container: /{name} AS /{container.name}/{alias}"
                )
            ep = next(
                (
                    e
                    for e in self._state.endpoints_of_container(target.id)
                    if self._state.networks.get(e.network_id) is not None
                    and self._state.networks[e.network_id].name == "bridge"
                ),
                None,
            )
            if (ep is None or ep.address is None) and not strict:
                continue
            if ep is None or ep.address is None:
                raise InvalidArgument(f"Cannot link to /{name}, as it does not belong to the default network")
            found.append((target, alias, ep.address))
        return found

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
            (name, gateway if ip == HOST_GATEWAY else ip)
            for name, ip in map(parse_extra_host, config.extra_hosts)
        ]
        self._write(paths.hostname, files.render_hostname(sandbox.hostname))
        if host_mode and not extra:
            try:
                with open("/etc/hosts") as f:
                    hosts = f.read()
            except OSError:
                hosts = files.render_hosts(sandbox.hostname, [])
        else:
            links = [
                (str(address.ip), f"{alias} {self._hostname_of(target)} {target.name}")
                for target, alias, address in self._legacy_links(container)
            ]
            hosts = files.render_hosts(
                sandbox.hostname,
                [] if host_mode else [str(ep.address.ip) for _, ep in pairs if ep.address is not None],
                domainname=config.domainname,
                extra_hosts=extra,
                links=links,
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
            )
            if fallback:
                comment = "No non-localhost nameservers were left; using default external servers."
        self._write(paths.resolv_conf, files.render_resolv_conf(conf, comment=comment))

    def _hostname_of(self, container: Container) -> str:
        sandbox = self._state.sandbox_of(container.id)
        return sandbox.hostname if sandbox is not None else (container.config.hostname or container.short_id)

    def link_env(self, container: Container) -> tuple[str, ...]:
        """Docker's ``ALIAS_PORT_80_TCP…``, ``ALIAS_NAME``, ``ALIAS_ENV_…`` variables for
        legacy links on the default bridge."""
        env: list[str] = []
        for target, alias, address in self._legacy_links(container, strict=True):
            prefix = _ENV_NAME.sub("_", alias).upper()
            ip = str(address.ip)
            env.append(f"{prefix}_NAME=/{container.name}/{alias}")
            ports = sorted(
                {_port_key(p) for p in (*target.config.exposed_ports, *target.config.port_bindings)},
            )
            for i, (port, proto) in enumerate(ports):
                base = f"{prefix}_PORT_{port}_{proto.upper()}"
                if i == 0:
                    env.append(f"{prefix}_PORT={proto}://{ip}:{port}")
                env += [
                    f"{base}={proto}://{ip}:{port}",
                    f"{base}_ADDR={ip}",
                    f"{base}_PORT={port}",
                    f"{base}_PROTO={proto}",
                ]
            for item in target.config.env:
                key, sep, value = item.partition("=")
                if sep and key not in _LINK_ENV_SKIP:
                    env.append(f"{prefix}_ENV_{key}={value}")
        return tuple(env)

    # -- embedded DNS ---------------------------------------------------------------------

    @staticmethod
    def _upstreams(config: ContainerConfig, host_conf: files.ResolvConf) -> list[Upstream]:
        """``--dns`` servers are asked from the container's namespace; otherwise the host's
        resolvers, asked from cnmd's own (so a 127.0.0.53 resolver works)."""
        if config.dns:
            servers = [(ip_address(parse_nameserver(d)), False) for d in config.dns]
        else:
            servers = []
            for n in host_conf.nameservers:
                try:
                    servers.append((ip_address(n.split("%", 1)[0]), True))
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


def _port_key(key: str) -> tuple[int, str]:
    port, _, proto = key.partition("/")
    return int(port.split("-", 1)[0]), (proto or "tcp")
