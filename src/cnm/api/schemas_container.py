"""Docker's container JSON <-> cnm's model: the ``containers/create`` body in,
inspect and list (``docker ps``) shapes out.

Create validation follows moby's ``runconfig`` (``validateNetContainerMode``, the
``conflicting options: ...`` messages) and ``handleMACAddressBC`` (the deprecated
container-wide ``MacAddress`` moved into the primary endpoint, with Docker's warning).
Checks that need state (names in use, networks, images) are the controller's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from cnm.api.http import get_bool, get_dict, get_str, get_str_list, get_str_map
from cnm.api.schemas_hostconfig import (
    mount_json,
    mount_point_json,
    parse_mounts,
    parse_restart_policy,
    refuse_unsupported,
)
from cnm.api.schemas_network import endpoint_settings_json, parse_endpoint_settings
from cnm.engine.controller import ContainerPaths
from cnm.errors import InvalidArgument
from cnm.model.container import (
    CREATED,
    DEAD,
    EXITED,
    FROM_MOUNTS,
    FROM_TMPFS,
    REMOVING,
    RESTARTING,
    RUNNING,
    ZERO_TIME,
    Container,
    ContainerConfig,
    PortBindingRequest,
)
from cnm.model.endpoint import EndpointRecord, EndpointRequest, SandboxRecord, dns_names
from cnm.model.network import GWBRIDGE_NAME, PREDEFINED, NetworkRecord
from cnm.model.network_mode import NetworkMode
from cnm.model.ports import PortMapping, host_ip_order
from cnm.model.values import parse_mac
from cnm.portmap.requests import expand_port_key, parse_port_key, port_requests
from cnm.runtime.logs import parse_log_config

MAC_DEPRECATED_WARNING = "The container-wide MacAddress field is now deprecated. It should be specified in EndpointsConfig instead."

# runconfig/errors.go
ERR_NET_LINKS = "conflicting options: container type network can't be used with links. This would result in undefined behavior"
ERR_HOST_LINKS = "conflicting options: host type networking can't be used with links. This would result in undefined behavior"
ERR_NET_DNS = "conflicting options: dns and the network mode"
ERR_NET_HOSTNAME = "conflicting options: hostname and the network mode"
ERR_NET_MAC = "conflicting options: mac-address and the network mode"
ERR_NET_HOSTS = "conflicting options: custom host-to-IP mapping and the network mode"
ERR_NET_PUBLISH = "conflicting options: port publishing and the container type network mode"
ERR_NET_EXPOSE = "conflicting options: port exposing and the container type network mode"


# -- in -------------------------------------------------------------------------------------


def _str_slice(body: dict[str, Any], key: str) -> tuple[str, ...] | None:
    """Docker's ``StrSlice``: a string or an array of strings; null is None."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise InvalidArgument(f"invalid {key}: expected a string or an array of strings")


def normalise_port(key: str) -> str:
    """``80`` -> ``80/tcp``; ``1000-1002/udp`` kept; anything else is a 400 with moby's
    ``invalid port specification: "<key>"``."""
    proto, lo, hi = parse_port_key(key)
    return f"{lo}/{proto}" if lo == hi else f"{lo}-{hi}/{proto}"


def _parse_port_bindings(raw: Any) -> dict[str, tuple[PortBindingRequest, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidArgument("invalid PortBindings: expected an object")
    out: dict[str, tuple[PortBindingRequest, ...]] = {}
    for key, bindings in raw.items():
        if bindings is not None and not isinstance(bindings, list):
            raise InvalidArgument(f"invalid port bindings for {key}: expected an array")
        items = []
        for b in bindings or ():
            if not isinstance(b, dict):
                raise InvalidArgument(f"invalid port binding for {key}: expected an object")
            items.append(PortBindingRequest(host_ip=get_str(b, "HostIp"), host_port=get_str(b, "HostPort")))
        key = normalise_port(key)
        out[key] = tuple(items)
        port_requests(ContainerConfig(image="", port_bindings={key: out[key]}))  # moby validates at create
    port_requests(ContainerConfig(image="", port_bindings=out))  # one host port asked for twice
    return out


def _validate_net_mode(config: dict[str, Any], host: dict[str, Any], mode: NetworkMode) -> None:
    """moby ``validateNetContainerMode`` / ``validateNetMode``."""
    is_container = bool(mode.container)
    if is_container:
        if get_str(config, "Hostname"):
            raise InvalidArgument(ERR_NET_HOSTNAME)
        if get_str_list(host, "Links"):
            raise InvalidArgument(ERR_NET_LINKS)
        if get_str_list(host, "Dns"):
            raise InvalidArgument(ERR_NET_DNS)
        if get_str_list(host, "ExtraHosts"):
            raise InvalidArgument(ERR_NET_HOSTS)
    if (is_container or mode.is_host) and get_str(config, "MacAddress"):
        raise InvalidArgument(ERR_NET_MAC)
    if is_container and (get_dict(host, "PortBindings") or get_bool(host, "PublishAllPorts")):
        raise InvalidArgument(ERR_NET_PUBLISH)
    if is_container and get_dict(config, "ExposedPorts"):
        raise InvalidArgument(ERR_NET_EXPOSE)
    if mode.is_host and get_str_list(host, "Links"):
        raise InvalidArgument(ERR_HOST_LINKS)


def _endpoints_config(body: dict[str, Any]) -> dict[str, EndpointRequest]:
    """``NetworkingConfig.EndpointsConfig`` with ``default`` renamed ``bridge``.  docker-py
    may send ``{"NetworkingConfig": {"<net>": null}}`` with no EndpointsConfig: ignored."""
    raw = get_dict(get_dict(body, "NetworkingConfig"), "EndpointsConfig")
    out: dict[str, EndpointRequest] = {}
    for key, settings in raw.items():
        out["bridge" if key == "default" else key] = parse_endpoint_settings(settings)
    return out


def _move_container_mac(
    mac: str, mode: NetworkMode, networks: dict[str, EndpointRequest], warnings: list[str]
) -> None:
    """moby ``handleMACAddressBC`` (API >= 1.44): the container-wide MAC goes into the
    endpoint of the primary network; a mismatch or an unmatched network is a 400."""
    if not mac:
        return
    if mode.own_sandbox and not mode.is_none:
        primary = mode.network
        parsed = parse_mac(mac)
        if not networks:
            networks[primary] = EndpointRequest(mac_address=parsed)
        else:
            ep = networks.get(primary)
            if ep is None:
                raise InvalidArgument(
                    "if a container-wide MAC address is supplied, HostConfig.NetworkMode must match "
                    "the identity of a network in NetworkSettings.Networks"
                )
            if ep.mac_address is None:
                networks[primary] = replace(ep, mac_address=parsed)
            elif ep.mac_address != parsed:
                raise InvalidArgument(
                    "the container-wide MAC address must match the endpoint-specific MAC address for "
                    "the main network, or be left empty"
                )
    warnings.append(MAC_DEPRECATED_WARNING)


def parse_container_create(body: dict[str, Any]) -> tuple[ContainerConfig, list[str]]:
    """Validate a ``POST /containers/create`` body; returns the config and the warnings
    the API itself adds (the controller adds its own)."""
    host = get_dict(body, "HostConfig")
    image = get_str(body, "Image")
    if not image:
        raise InvalidArgument("config cannot be empty in order to create a container")
    refuse_unsupported(body, host)
    mode = NetworkMode.parse(get_str(host, "NetworkMode"))  # the one place the text is read
    _validate_net_mode(body, host, mode)
    mounts, binds, tmpfs = parse_mounts(host)
    restart_policy, restart_max = parse_restart_policy(host)
    networks = _endpoints_config(body)
    warnings: list[str] = []
    _move_container_mac(get_str(body, "MacAddress"), mode, networks, warnings)
    primary = networks.get(mode.network)
    exposed = get_dict(body, "ExposedPorts")
    bindings = _parse_port_bindings(host.get("PortBindings"))
    exposed_ports = tuple(dict.fromkeys([*(normalise_port(k) for k in exposed), *bindings]))
    stop_timeout = body.get("StopTimeout")
    if stop_timeout is not None and not isinstance(stop_timeout, int):
        raise InvalidArgument("invalid StopTimeout: expected an integer")
    config = ContainerConfig(
        image=image,
        cmd=_str_slice(body, "Cmd") or (),
        entrypoint=_str_slice(body, "Entrypoint"),
        env=tuple(get_str_list(body, "Env") or ()),
        workdir=get_str(body, "WorkingDir"),
        user=get_str(body, "User"),
        tty=get_bool(body, "Tty"),
        open_stdin=get_bool(body, "OpenStdin"),
        stdin_once=get_bool(body, "StdinOnce"),
        attach_stdin=get_bool(body, "AttachStdin"),
        attach_stdout=get_bool(body, "AttachStdout"),
        attach_stderr=get_bool(body, "AttachStderr"),
        hostname=get_str(body, "Hostname"),
        domainname=get_str(body, "Domainname"),
        labels=get_str_map(body, "Labels") or {},
        exposed_ports=exposed_ports,
        network_mode=mode,
        networks=networks,
        mac_address=(primary.mac_address or "") if primary is not None else "",
        port_bindings=bindings,
        publish_all=get_bool(host, "PublishAllPorts"),
        dns=tuple(get_str_list(host, "Dns") or ()),
        dns_search=tuple(get_str_list(host, "DnsSearch") or ()),
        dns_options=tuple(get_str_list(host, "DnsOptions") or ()),
        extra_hosts=tuple(get_str_list(host, "ExtraHosts") or ()),
        links=tuple(get_str_list(host, "Links") or ()),
        auto_remove=get_bool(host, "AutoRemove"),
        stop_signal=get_str(body, "StopSignal") or "SIGTERM",
        stop_timeout=10 if stop_timeout is None else stop_timeout,
        mounts=mounts,
        binds=binds,
        tmpfs=tmpfs,
        restart_policy=restart_policy,
        restart_max=restart_max,
        **_log_and_console(host),
    )
    return config, warnings


def _log_and_console(host: dict[str, Any]) -> dict[str, Any]:
    """``HostConfig.LogConfig`` (json-file with max-size/max-file, or none; anything else
    is refused) and ``HostConfig.ConsoleSize``, as ContainerConfig fields."""
    log_config = get_dict(host, "LogConfig")
    driver = get_str(log_config, "Type") or "json-file"
    opts = get_str_map(log_config, "Config") or {}
    parse_log_config(driver, opts)
    size = host.get("ConsoleSize") or [0, 0]
    if not (
        isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and 0 <= v < 65536 for v in size)
    ):
        raise InvalidArgument("invalid ConsoleSize: expected [height, width]")
    return {"log_driver": driver, "log_opts": opts, "console_size": (size[0], size[1])}


# -- time and status ------------------------------------------------------------------------


_RFC3339 = re.compile(r"^(?P<head>[^.]+?)(?:\.(?P<frac>\d+))?(?P<tz>Z|[+-]\d\d:\d\d)?$")


def parse_time(value: str) -> datetime | None:
    """RFC 3339 (nanoseconds allowed) -> aware datetime; None for Go's zero time."""
    if not value or value.startswith("0001-01-01"):
        return None
    m = _RFC3339.match(value.strip())
    if m is None:
        return None
    frac = f".{m['frac'][:6]}" if m["frac"] else ""  # Python keeps microseconds
    tz = m["tz"] or "Z"
    try:
        parsed = datetime.fromisoformat(m["head"] + frac + ("+00:00" if tz == "Z" else tz))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def unix_time(value: str) -> int:
    parsed = parse_time(value)
    return int(parsed.timestamp()) if parsed else 0


def human_duration(seconds: float) -> str:
    """go-units ``HumanDuration``, as ``docker ps`` prints it."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def status_name(c: Container) -> str:
    """Docker's ``State.Status``: a paused container is "paused" (and still Running)."""
    return "paused" if c.state.status == RUNNING and c.state.paused else c.state.status


def status_text(c: Container, now: datetime | None = None) -> str:
    """moby ``State.String``: ``Up 3 seconds``, ``Exited (0) 2 minutes ago``, ``Created``."""
    now = now or datetime.now(UTC)
    status = c.state.status
    if status == RUNNING:
        started = parse_time(c.state.started_at)
        up = "Up " + human_duration((now - started).total_seconds() if started else 0)
        return up + " (Paused)" if c.state.paused else up
    if status == REMOVING:
        return "Removal In Progress"
    if status == RESTARTING:
        finished = parse_time(c.state.finished_at)
        ago = human_duration((now - finished).total_seconds()) if finished else "Less than a second"
        return f"Restarting ({c.state.exit_code}) {ago} ago"
    if status == DEAD:
        return "Dead"
    if status == CREATED:
        return "Created"
    if status == EXITED:
        finished = parse_time(c.state.finished_at)
        if finished is None:
            return ""
        return f"Exited ({c.state.exit_code}) {human_duration((now - finished).total_seconds())} ago"
    return status.capitalize()


# -- out ------------------------------------------------------------------------------------


def argv(c: Container) -> tuple[str, ...]:
    return tuple(c.config.entrypoint or ()) + tuple(c.config.cmd)


def command_text(c: Container) -> str:
    """``docker ps`` COMMAND: path and args, args with spaces quoted."""
    return " ".join(a if " " not in a else f"'{a}'" for a in argv(c)) if argv(c) else ""


@dataclass(frozen=True, slots=True)
class NetworkView:
    """What the container schemas need from the engine, gathered by the route."""

    endpoints: list[tuple[NetworkRecord, EndpointRecord]]
    sandbox: SandboxRecord | None
    find_network: Callable[[str], NetworkRecord | None]


def _dns_names(c: Container, net: NetworkRecord, request: EndpointRequest, hostname: str) -> list[str] | None:
    # (cnm_gwbridge's endpoints are anonymous: no names, as on Docker's docker_gwbridge)
    if net.driver not in ("bridge", "overlay") or net.name in (*PREDEFINED, GWBRIDGE_NAME):
        return None
    return dns_names(c.name, request.aliases, c.short_id, hostname)


def networks_json(c: Container, view: NetworkView, hostname: str) -> dict[str, Any]:
    """``NetworkSettings.Networks``: live endpoints when running, the stored requests
    (operational fields blank) when not: the networks the next start joins, which after a
    ``network disconnect`` may not include ``NetworkMode``'s.  ``container:X`` mode has none."""
    if c.config.network_mode.container:
        return {}
    out: dict[str, Any] = {}
    if c.running and view.endpoints:
        for net, ep in view.endpoints:
            out[net.name] = endpoint_settings_json(
                ep.request, endpoint=ep, dns_names=_dns_names(c, net, ep.request, hostname)
            )
        return out
    for key, request in c.config.networks.items():
        found = view.find_network(key)
        out[key] = endpoint_settings_json(
            request,
            network_id=found.id if found else "",
            dns_names=_dns_names(c, found, request, hostname) if found else None,
        )
    return out


_DEPRECATED_KEYS = (
    ("EndpointID", "EndpointID", ""),
    ("Gateway", "Gateway", ""),
    ("GlobalIPv6Address", "GlobalIPv6Address", ""),
    ("GlobalIPv6PrefixLen", "GlobalIPv6PrefixLen", 0),
    ("IPAddress", "IPAddress", ""),
    ("IPPrefixLen", "IPPrefixLen", 0),
    ("IPv6Gateway", "IPv6Gateway", ""),
    ("MacAddress", "MacAddress", ""),
)


def published(view: NetworkView) -> list[PortMapping]:
    """The mappings the engine installed, over all of the container's endpoints."""
    return sorted(
        {m for _, ep in view.endpoints for m in ep.ports},
        key=lambda m: (m.protocol, m.container_port, host_ip_order(m.host_ip), m.host_port),
    )


def ports_json(c: Container, view: NetworkView) -> dict[str, Any]:
    """``NetworkSettings.Ports`` (moby ``getPortMapInfo``): for a running container every
    exposed port (ranges expanded) and every published one, ``null`` when not published,
    else one ``{"HostIp","HostPort"}`` per binding (``0.0.0.0`` before its ``::`` twin).  ``{}``
    when not running or in host mode.  Keys sorted as Go's JSON encoder sorts map keys."""
    if not c.running or c.config.network_mode.is_host:
        return {}
    out: dict[str, list[dict[str, str]] | None] = {}
    for key in c.config.exposed_ports:
        for port in expand_port_key(key):
            out[port] = None
    for m in published(view):
        out[m.key] = [*(out.get(m.key) or ()), {"HostIp": str(m.host_ip), "HostPort": str(m.host_port)}]
    return dict(sorted(out.items()))


def network_settings_json(c: Container, view: NetworkView, hostname: str) -> dict[str, Any]:
    networks = networks_json(c, view, hostname)
    bridge = networks.get("bridge") or {}
    sandbox = view.sandbox if c.running else None
    out: dict[str, Any] = {
        "Bridge": "",
        "SandboxID": sandbox.id if sandbox is not None else "",
        "SandboxKey": sandbox.key if sandbox is not None else "",
        "Ports": ports_json(c, view),
        "HairpinMode": False,
        "LinkLocalIPv6Address": "",
        "LinkLocalIPv6PrefixLen": 0,
        "SecondaryIPAddresses": None,
        "SecondaryIPv6Addresses": None,
    }
    for key, src, zero in _DEPRECATED_KEYS:  # only from the network named "bridge"
        out[key] = bridge.get(src, zero) if c.running else zero
    out["Networks"] = networks
    return out


def _port_bindings_json(c: Container) -> dict[str, Any]:
    return {
        port: [{"HostIp": b.host_ip, "HostPort": b.host_port} for b in bindings]
        for port, bindings in c.config.port_bindings.items()
    }


def _links_json(c: Container) -> list[str] | None:
    if not c.config.links or not c.config.network_mode.is_default_bridge:
        return None
    out = []
    for link in c.config.links:
        target, _, alias = link.partition(":")
        out.append(f"/{target.lstrip('/')}:/{c.name}/{alias or target.lstrip('/')}")
    return out


def host_config_json(c: Container) -> dict[str, Any]:
    cfg = c.config
    out: dict[str, Any] = {
        "Binds": list(cfg.binds) if cfg.binds else None,
        "ContainerIDFile": "",
        "LogConfig": {"Type": cfg.log_driver, "Config": dict(cfg.log_opts)},
        "NetworkMode": str(cfg.network_mode),
        "PortBindings": _port_bindings_json(c),
        "RestartPolicy": {"Name": cfg.restart_policy, "MaximumRetryCount": cfg.restart_max},
        "AutoRemove": cfg.auto_remove,
        "VolumeDriver": "",
        "VolumesFrom": None,
        "ConsoleSize": list(cfg.console_size),
        "CapAdd": None,
        "CapDrop": None,
        "CgroupnsMode": "private",
        "Dns": list(cfg.dns),
        "DnsOptions": list(cfg.dns_options),
        "DnsSearch": list(cfg.dns_search),
        "ExtraHosts": list(cfg.extra_hosts),
        "GroupAdd": None,
        "IpcMode": "private",
        "Cgroup": "",
        "Links": _links_json(c),
        "OomScoreAdj": 0,
        "PidMode": "",
        "Privileged": False,
        "PublishAllPorts": cfg.publish_all,
        "ReadonlyRootfs": False,
        "SecurityOpt": None,
        "UTSMode": "",
        "UsernsMode": "",
        "ShmSize": 67108864,
        "Runtime": "runc",
        "Isolation": "",
    }
    given = [mount_json(m) for m in cfg.mounts if m.origin == FROM_MOUNTS]
    if given:  # omitempty in moby
        out["Mounts"] = given
    if cfg.tmpfs:
        out["Tmpfs"] = dict(cfg.tmpfs)
    return out


def config_json(c: Container, hostname: str, mappings: list[PortMapping] | None = None) -> dict[str, Any]:
    """``Config``; ``ExposedPorts`` also holds the keys of ``mappings`` (a ``-P`` of an
    image's exposed port is exposed too)."""
    cfg = c.config
    out: dict[str, Any] = {
        "Hostname": hostname,
        "Domainname": cfg.domainname,
        "User": cfg.user,
        "AttachStdin": cfg.attach_stdin,
        "AttachStdout": cfg.attach_stdout,
        "AttachStderr": cfg.attach_stderr,
    }
    exposed = dict.fromkeys([*cfg.exposed_ports, *(m.key for m in mappings or ())])
    if exposed:
        out["ExposedPorts"] = {p: {} for p in sorted(exposed)}
    out.update(
        {
            "Tty": cfg.tty,
            "OpenStdin": cfg.open_stdin,
            "StdinOnce": cfg.stdin_once,
            "Env": list(cfg.env),
            "Cmd": list(cfg.cmd) if cfg.cmd else None,
            "Image": cfg.image,
            "Volumes": None,
            "WorkingDir": cfg.workdir,
            "Entrypoint": list(cfg.entrypoint) if cfg.entrypoint is not None else None,
        }
    )
    if cfg.mac_address and cfg.network_mode.own_sandbox and not cfg.network_mode.is_none:
        out["MacAddress"] = cfg.mac_address
    out["OnBuild"] = None
    out["Labels"] = dict(cfg.labels)
    out["StopSignal"] = cfg.stop_signal
    out["StopTimeout"] = cfg.stop_timeout
    return out


def mount_points_json(c: Container) -> list[dict[str, Any]]:
    """Inspect's and ``ps``'s ``Mounts``: binds and ``--mount type=tmpfs`` (moby lists no
    ``HostConfig.Tmpfs`` entry there)."""
    return [mount_point_json(m) for m in c.config.mounts if m.origin != FROM_TMPFS]


def state_json(c: Container) -> dict[str, Any]:
    s = c.state
    return {
        "Status": status_name(c),
        "Running": s.status == RUNNING,
        "Paused": s.paused,
        "Restarting": s.status == RESTARTING,
        "OOMKilled": s.oom_killed,
        "Dead": s.status == DEAD,
        "Pid": s.pid,
        "ExitCode": s.exit_code,
        "Error": s.error,
        "StartedAt": s.started_at or ZERO_TIME,
        "FinishedAt": s.finished_at or ZERO_TIME,
    }


def hostname_of(c: Container, sandbox: SandboxRecord | None) -> str:
    return c.config.hostname or (sandbox.hostname if sandbox else "") or c.short_id


def container_inspect_json(c: Container, view: NetworkView, paths: ContainerPaths | None) -> dict[str, Any]:
    """``GET /containers/{id}/json``, keys in moby's order."""
    args = argv(c)
    hostname = hostname_of(c, view.sandbox)
    return {
        "Id": c.id,
        "Created": c.created,
        "Path": args[0] if args else "",
        "Args": list(args[1:]),
        "State": state_json(c),
        "Image": c.config.image_id,
        "ResolvConfPath": paths.resolv_conf if paths else "",
        "HostnamePath": paths.hostname if paths else "",
        "HostsPath": paths.hosts if paths else "",
        "LogPath": paths.log if paths else "",
        "Name": "/" + c.name,
        "RestartCount": c.state.restart_count,
        "Driver": "overlay",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": None,
        "HostConfig": host_config_json(c),
        "GraphDriver": {"Data": {}, "Name": "overlay"},
        "Mounts": mount_points_json(c),
        "Config": config_json(c, hostname, published(view)),
        "NetworkSettings": network_settings_json(c, view, hostname),
    }


def port_items(c: Container, view: NetworkView) -> list[dict[str, Any]]:
    """``Ports`` of a ``docker ps`` item (moby ``container/view.go``), from the same map as
    inspect: ``{"IP","PrivatePort","PublicPort","Type"}`` per binding, ``{"PrivatePort",
    "Type"}`` per exposed-only port; none when not running."""
    items: list[dict[str, Any]] = []
    for key, bindings in ports_json(c, view).items():
        number, _, proto = key.partition("/")
        if not bindings:
            items.append({"PrivatePort": int(number), "Type": proto})
            continue
        for b in bindings:
            items.append(
                {
                    "IP": b["HostIp"],
                    "PrivatePort": int(number),
                    "PublicPort": int(b["HostPort"]),
                    "Type": proto,
                }
            )
    return items


def container_summary_json(c: Container, view: NetworkView, now: datetime | None = None) -> dict[str, Any]:
    """One ``GET /containers/json`` item (``docker ps``)."""
    hostname = hostname_of(c, view.sandbox)
    mode = str(c.config.network_mode)
    return {
        "Id": c.id,
        "Names": ["/" + c.name],
        "Image": c.config.image,
        "ImageID": c.config.image_id,
        "Command": command_text(c),
        "Created": unix_time(c.created),
        "Ports": port_items(c, view),
        "Labels": dict(c.config.labels),
        "State": status_name(c),
        "Status": status_text(c, now),
        "HostConfig": {"NetworkMode": mode},
        "NetworkSettings": {"Networks": networks_json(c, view, hostname)},
        "Mounts": mount_points_json(c),
    }


def network_keys(c: Container, view: NetworkView) -> list[tuple[str, str]]:
    """(name, id) of every network the container is on or asked for (``network`` filter)."""
    if c.running and view.endpoints:
        return [(n.name, n.id) for n, _ in view.endpoints]
    out = []
    for key in c.config.networks:
        net = view.find_network(key)
        out.append((net.name, net.id) if net else (key, ""))
    return out
