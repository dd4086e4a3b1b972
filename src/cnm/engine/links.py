"""Legacy ``--link`` on the default bridge: which running containers a container links
to, the /etc/hosts lines they give it and the environment variables they add to its
process (Docker's ``ALIAS_PORT_80_TCP…``).

On user-defined networks a ``--link`` is only a DNS alias (``engine/naming.py`` hands it
to the embedded server); nothing here applies to them.
"""

from __future__ import annotations

import re

from cnm.engine.state import State
from cnm.errors import InvalidArgument
from cnm.model.container import Container
from cnm.model.endpoint import EndpointRecord

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


def linked(
    state: State, container: Container, strict: bool = False
) -> list[tuple[Container, str, EndpointRecord]]:
    """(target, alias, the target's bridge endpoint, which has an IPv4 address) for each
    ``--link`` of ``container`` on the default bridge.  ``strict`` (at start): a target
    that is not running or not on the default bridge is an error, as in Docker; otherwise
    such links are skipped."""
    if not container.config.network_mode.is_default_bridge:
        return []
    found = []
    for link in container.config.links:
        name, alias = parse_link(link)
        target = next((c for c in state.containers.values() if c.name == name), None)
        if (target is None or not target.running) and not strict:
            continue
        if target is None or not target.running:
            raise InvalidArgument(
                f"Cannot link to a non running container: /{name} AS /{container.name}/{alias}"
            )
        ep = next(
            (
                e
                for e in state.endpoints_of_container(target.id)
                if state.networks.get(e.network_id) is not None
                and state.networks[e.network_id].name == "bridge"
            ),
            None,
        )
        if (ep is None or ep.address is None) and not strict:
            continue
        if ep is None or ep.address is None:
            raise InvalidArgument(f"Cannot link to /{name}, as it does not belong to the default network")
        found.append((target, alias, ep))
    return found


def legacy_links(state: State, container: Container) -> list[tuple[EndpointRecord, str]]:
    """(the target's bridge endpoint, the names its /etc/hosts lines carry: alias, the
    target's hostname and name) for each live ``--link``; the caller writes one line per
    address of the endpoint (IPv4, and IPv6 when it has one, as Docker)."""
    return [
        (ep, f"{alias} {_hostname_of(state, target)} {target.name}")
        for target, alias, ep in linked(state, container)
    ]


def _hostname_of(state: State, container: Container) -> str:
    sandbox = state.sandbox_of(container.id)
    return sandbox.hostname if sandbox is not None else (container.config.hostname or container.short_id)


def link_env(state: State, container: Container) -> tuple[str, ...]:
    """Docker's ``ALIAS_PORT_80_TCP…``, ``ALIAS_NAME``, ``ALIAS_ENV_…`` variables for
    legacy links on the default bridge (IPv4 addresses, as Docker's)."""
    env: list[str] = []
    for target, alias, ep in linked(state, container, strict=True):
        prefix = _ENV_NAME.sub("_", alias).upper()
        ip = str(ep.address.ip) if ep.address is not None else ""
        env.append(f"{prefix}_NAME=/{container.name}/{alias}")
        ports = sorted({_port_key(p) for p in (*target.config.exposed_ports, *target.config.port_bindings)})
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


def _port_key(key: str) -> tuple[int, str]:
    port, _, proto = key.partition("/")
    return int(port.split("-", 1)[0]), (proto or "tcp")
