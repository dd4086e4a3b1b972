"""``cnm create``/``cnm run`` flags and the create body Docker's CLI builds from them.

Owns: the flag declarations shared by ``create`` and ``run``, the client-side validation
Docker's CLI does (``--add-host``, ``--dns``, ``--mac-address``, ports, network modes),
and ``create_body`` which returns the exact JSON for ``POST /containers/create``
(``Config`` fields at the top level, ``HostConfig``, ``NetworkingConfig``), following
``cli/command/container/opts.go`` at API 1.51.
"""

from __future__ import annotations

import os

from cnm.cli import flags as F
from cnm.cli.portspec import parse_expose, parse_publish

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping


def _valid_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def validate_extra_host(val: str) -> str:
    """``opts.ValidateExtraHost``: ``h:ip``, ``h=ip``, ``h:[v6]`` → ``h:ip``."""
    k, eq, v = val.partition("=")
    if not eq:
        k, eq, v = val.partition(":")
    if not eq or not k or ":" in k:
        raise ValueError(f'bad format for add-host: "{val}"')
    if v != "host-gateway":
        if len(v) > 2 and v[0] == "[" and v[-1] == "]":
            v = v[1:-1]
        if not _valid_ip(v):
            raise ValueError(f'invalid IP address in add-host: "{v}"')
    return f"{k}:{v}"


def validate_ip(val: str) -> str:
    if not _valid_ip(val.strip()):
        raise ValueError(f"IP address is not correctly formatted: {val}")
    return val.strip()


def valid_mac(val: str) -> bool:
    parts = val.strip().replace("-", ":").split(":")
    return len(parts) in (6, 8, 20) and all(
        len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts
    )


def validate_env(val: str) -> str:
    """The check ``opts.ValidateEnv`` does at flag time: a variable name is required."""
    if not val.partition("=")[0]:
        raise ValueError(f"invalid environment variable: {val}")
    return val


def resolve_env(values: list[str], env: Mapping[str, str]) -> list[str]:
    """``KEY`` alone takes the CLI's own value when it has one (``opts.ValidateEnv``)."""
    out = []
    for val in values:
        k, eq, _ = val.partition("=")
        out.append(f"{k}={env[k]}" if not eq and k in env else val)
    return out


def _validate_link(val: str) -> str:
    name, _, alias = val.partition(":")
    if not name or (":" in alias):
        raise ValueError(f"bad format for links: {val}")
    return val


CREATE_FLAGS = [
    F.flag("-a", "--attach", kind=F.LIST, help="Attach to STDIN, STDOUT or STDERR"),
    F.flag(
        "--add-host",
        kind=F.LIST,
        validate=validate_extra_host,
        help="Add a custom host-to-IP mapping (host:ip)",
    ),
    F.flag("--dns", kind=F.LIST, validate=validate_ip, help="Set custom DNS servers"),
    F.flag("--dns-option", "--dns-opt", kind=F.LIST, dest="dns_option", help="Set DNS options"),
    F.flag("--dns-search", kind=F.LIST, help="Set custom DNS search domains"),
    F.flag("--domainname", help="Container NIS domain name"),
    F.flag("--entrypoint", help="Overwrite the default ENTRYPOINT of the image"),
    F.flag("-e", "--env", kind=F.LIST, validate=validate_env, help="Set environment variables"),
    F.flag("--env-file", kind=F.LIST, help="Read in a file of environment variables"),
    F.flag("--expose", kind=F.LIST, help="Expose a port or a range of ports"),
    F.flag("-h", "--hostname", help="Container host name"),
    F.flag("-i", "--interactive", kind=F.BOOL, help="Keep STDIN open even if not attached"),
    F.flag("--ip", help="IPv4 address (e.g., 172.30.100.104)"),
    F.flag("--ip6", help="IPv6 address (e.g., 2001:db8::33)"),
    F.flag("-l", "--label", kind=F.LIST, help="Set meta data on a container"),
    F.flag("--link", kind=F.LIST, validate=_validate_link, help="Add link to another container"),
    F.flag("--link-local-ip", kind=F.LIST, help="Container IPv4/IPv6 link-local addresses"),
    F.flag("--log-driver", help="Logging driver for the container"),
    F.flag("--log-opt", kind=F.LIST, help="Log driver options"),
    F.flag("--mac-address", help="Container MAC address (e.g., 92:d0:c6:0a:29:33)"),
    F.flag("--mount", kind=F.LIST, help="Attach a filesystem mount to the container"),
    F.flag("--name", help="Assign a name to the container"),
    F.flag(
        "--network",
        "--net",
        kind=F.LIST,
        dest="network",
        metavar="network",
        help="Connect a container to a network",
    ),
    F.flag(
        "--network-alias",
        "--alias",
        kind=F.LIST,
        dest="network_alias",
        help="Add network-scoped alias for the container",
    ),
    F.flag("--platform", help="Set platform if server is multi-platform capable"),
    F.flag("--privileged", kind=F.BOOL, help="Give extended privileges to this container"),
    F.flag("-p", "--publish", kind=F.LIST, help="Publish a container's port(s) to the host"),
    F.flag("-P", "--publish-all", kind=F.BOOL, help="Publish all exposed ports to random ports"),
    F.flag("--pull", default="missing", help='Pull image before running ("always", "missing", "never")'),
    F.flag("-q", "--quiet", kind=F.BOOL, help="Suppress the pull output"),
    F.flag("--restart", default="no", help="Restart policy to apply when a container exits"),
    F.flag("--stop-signal", help="Signal to stop the container"),
    F.flag("--stop-timeout", kind=F.INT, help="Timeout (in seconds) to stop a container"),
    F.flag("--tmpfs", kind=F.LIST, help="Mount a tmpfs directory"),
    F.flag("-t", "--tty", kind=F.BOOL, help="Allocate a pseudo-TTY"),
    F.flag("-u", "--user", help="Username or UID (format: <name|uid>[:<group|gid>])"),
    F.flag("-v", "--volume", kind=F.LIST, help="Bind mount a volume"),
    F.flag("-w", "--workdir", help="Working directory inside the container"),
]

RUN_FLAGS = CREATE_FLAGS + [
    F.flag("-d", "--detach", kind=F.BOOL, help="Run container in background and print container ID"),
    F.flag("--detach-keys", help="Override the key sequence for detaching a container"),
    F.flag(
        "--rm",
        kind=F.BOOL,
        help="Automatically remove the container and its associated anonymous volumes when it exits",
    ),
    F.flag("--sig-proxy", kind=F.BOOL, default=True, help="Proxy received signals to the process"),
]
RUN_FLAGS.sort(key=lambda f: f.names[-1].lstrip("-"))

_NON_USER = ("default", "bridge", "host", "none")


def is_user_defined(mode: str) -> bool:
    """``container.NetworkMode.IsUserDefined``: not default/bridge/host/none/container:…"""
    return mode not in _NON_USER and not mode.startswith("container:")


def _endpoint_settings() -> dict:
    """A zero ``EndpointSettings`` as Go marshals it (no field is omitempty)."""
    return {
        "IPAMConfig": None,
        "Links": None,
        "Aliases": None,
        "MacAddress": "",
        "DriverOpts": None,
        "GwPriority": 0,
        "NetworkID": "",
        "EndpointID": "",
        "Gateway": "",
        "IPAddress": "",
        "IPPrefixLen": 0,
        "IPv6Gateway": "",
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "DNSNames": None,
    }


def parse_network_opt(value: str) -> dict:
    """``opts.NetworkOpt.Set``: a name, or ``name=n,alias=a,ip=…,driver-opt=k=v,…``."""
    import re

    att: dict = {
        "Target": value,
        "Aliases": [],
        "Links": [],
        "IPv4Address": "",
        "IPv6Address": "",
        "MacAddress": "",
        "LinkLocalIPs": [],
        "DriverOpts": {},
        "GwPriority": 0,
    }
    if not re.search(r"\w+=\w+(,\w+=\w+)*", value):
        return att
    att["Target"] = ""
    for field in value.split(","):
        key, eq, val = field.partition("=")
        if not eq:
            raise ValueError(f"invalid field '{field}' must be a key=value pair")
        key = key.strip().lower()
        if key == "name":
            att["Target"] = val
        elif key == "alias":
            att["Aliases"].append(val)
        elif key == "ip":
            att["IPv4Address"] = val
        elif key == "ip6":
            att["IPv6Address"] = val
        elif key == "mac-address":
            att["MacAddress"] = val
        elif key == "link-local-ip":
            att["LinkLocalIPs"].append(val)
        elif key == "driver-opt":
            k, eq2, v = val.partition("=")
            if not eq2:
                raise ValueError("invalid key value pair format in driver options")
            att["DriverOpts"][k.strip().lower()] = v.strip().lower()
        elif key == "gw-priority":
            att["GwPriority"] = int(val)
        else:
            raise ValueError(f"invalid field key {key}")
    return att


def _apply_container_options(att: dict, v: dict) -> None:
    """``applyContainerOptions``: the first network takes --alias/--link/--ip/--ip6/--mac-address."""
    if att["Aliases"] and v["network_alias"]:
        raise ValueError("conflicting options: cannot specify both --network-alias and per-network alias")
    if att["Links"] and v["link"]:
        raise ValueError("conflicting options: cannot specify both --link and per-network links")
    if att["IPv4Address"] and v["ip"]:
        raise ValueError("conflicting options: cannot specify both --ip and per-network IPv4 address")
    if att["IPv6Address"] and v["ip6"]:
        raise ValueError("conflicting options: cannot specify both --ip6 and per-network IPv6 address")
    if att["MacAddress"] and v["mac_address"]:
        raise ValueError("conflicting options: cannot specify both --mac-address and per-network MAC address")
    if att["LinkLocalIPs"] and v["link_local_ip"]:
        raise ValueError(
            "conflicting options: cannot specify both --link-local-ip and per-network link-local IP addresses"
        )
    if v["network_alias"]:
        att["Aliases"] = list(v["network_alias"])
    if is_user_defined(att["Target"]) and v["link"]:
        att["Links"] = list(v["link"])
    att["IPv4Address"] = v["ip"] or att["IPv4Address"]
    att["IPv6Address"] = v["ip6"] or att["IPv6Address"]
    att["MacAddress"] = v["mac_address"] or att["MacAddress"]
    if v["link_local_ip"]:
        att["LinkLocalIPs"] = list(v["link_local_ip"])


def _endpoint_from(att: dict) -> dict:
    """``parseNetworkAttachmentOpt``: validate and turn an attachment into EndpointSettings."""
    if not att["Target"].strip():
        raise ValueError("no name set for network")
    if not is_user_defined(att["Target"]):
        if att["Aliases"]:
            raise ValueError("network-scoped aliases are only supported for user-defined networks")
        if att["Links"]:
            raise ValueError("links are only supported for user-defined networks")
    ep = _endpoint_settings()
    ep["GwPriority"] = att["GwPriority"]
    ep["Aliases"] = list(att["Aliases"]) or None
    if att["DriverOpts"]:
        ep["DriverOpts"] = dict(att["DriverOpts"])
    if att["Links"]:
        ep["Links"] = list(att["Links"])
    if att["IPv4Address"] or att["IPv6Address"] or att["LinkLocalIPs"]:
        ipam: dict = {}
        if att["IPv4Address"]:
            ipam["IPv4Address"] = att["IPv4Address"]
        if att["IPv6Address"]:
            ipam["IPv6Address"] = att["IPv6Address"]
        if att["LinkLocalIPs"]:
            ipam["LinkLocalIPs"] = list(att["LinkLocalIPs"])
        ep["IPAMConfig"] = ipam
    if att["MacAddress"]:
        if not valid_mac(att["MacAddress"]):
            raise ValueError(f"{att['MacAddress']} is not a valid mac address")
        ep["MacAddress"] = att["MacAddress"]
    return ep


def endpoints_config(v: dict) -> tuple[str, dict[str, dict]]:
    """``parseNetworkOpts``: (NetworkMode, EndpointsConfig) from the network flags."""
    nets = [parse_network_opt(n) for n in v["network"]]
    endpoints: dict[str, dict] = {}
    if not nets:
        att = parse_network_opt("default")
        _apply_container_options(att, v)
        endpoints["default"] = _endpoint_from(att)
        return "default", endpoints
    user = non_user = False
    for i, att in enumerate(nets):
        if is_user_defined(att["Target"]):
            user = True
        else:
            non_user = True
        if i == 0:
            _apply_container_options(att, v)
        ep = _endpoint_from(att)
        if att["Target"] in endpoints:
            raise ValueError(f'network "{att["Target"]}" is specified multiple times')
        if i == 0 and len(nets) == 1 and ep == _endpoint_settings():
            continue  # a single plain network: the daemon creates the endpoint itself
        endpoints[att["Target"]] = ep
    if user and non_user:
        raise ValueError(
            "conflicting options: cannot attach both user-defined and non-user-defined network-modes"
        )
    return nets[0]["Target"], endpoints


def read_env_files(paths: list[str], env: Mapping[str, str]) -> list[str]:
    """``opts.ParseEnvFile``: KEY=VALUE lines, ``#`` comments, ``KEY`` alone from the CLI's env."""
    out: list[str] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except OSError as exc:
            raise ValueError(f"open {path}: {exc.strerror.lower() if exc.strerror else exc}") from None
        for raw in lines:
            line = raw.lstrip()
            if not line or line.startswith("#"):
                continue
            key, eq, value = line.partition("=")
            if any(c in key for c in " \t"):
                raise ValueError(f"variable '{key}' contains whitespaces")
            if not key:
                raise ValueError(f"no variable name on line '{raw}'")
            if eq:
                out.append(f"{key}={value}")
            elif key in env:
                out.append(f"{key}={env[key]}")
    return out


def parse_restart(value: str) -> dict:
    """``opts.ParseRestartPolicy``: ``no``, ``always``, ``unless-stopped``,
    ``on-failure[:N]`` -> ``RestartPolicy`` (the daemon checks the name)."""
    name, colon, count = (value or "no").partition(":")
    if colon and not name:
        raise ValueError("invalid restart policy format: no policy provided before colon")
    retries = 0
    if colon:
        try:
            retries = int(count)
        except ValueError:
            raise ValueError(
                "invalid restart policy format: maximum retry count must be an integer"
            ) from None
    return {"Name": name, "MaximumRetryCount": retries}


_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def ram_in_bytes(text: str) -> int:
    """go-units ``RAMInBytes``: ``64m``, ``1g``, ``512kb``, ``1024``."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtb]?)b?\s*", text.lower())
    if m is None:
        raise ValueError(f"invalid size: '{text}'")
    return int(float(m[1]) * _SIZE_UNITS[m[2]])


def _bool_value(key: str, value: str) -> bool:
    if value.lower() in ("", "1", "true"):
        return True
    if value.lower() in ("0", "false"):
        return False
    raise ValueError(f"invalid value for {key}: {value}")


def parse_mount_flag(value: str) -> dict:
    """``opts.MountOpt.Set``: ``type=bind,source=/a,target=/b,readonly`` -> a ``Mount``
    (the daemon refuses the types and options cnm does not implement)."""
    mount: dict = {"Type": "volume"}
    bind: dict = {}
    tmpfs: dict = {}
    for field in value.split(","):
        key, eq, val = field.partition("=")
        key = key.strip().lower()
        if not eq and key not in ("readonly", "ro", "bind-nonrecursive", "volume-nocopy"):
            raise ValueError(f"invalid field '{field}' must be a key=value pair")
        if key == "type":
            mount["Type"] = val
        elif key in ("source", "src"):
            mount["Source"] = val
        elif key in ("target", "dst", "destination"):
            mount["Target"] = val
        elif key in ("readonly", "ro"):
            mount["ReadOnly"] = _bool_value(key, val)
        elif key == "consistency":
            mount["Consistency"] = val
        elif key == "bind-propagation":
            bind["Propagation"] = val
        elif key == "bind-nonrecursive":
            bind["NonRecursive"] = _bool_value(key, val)
        elif key == "bind-create-mountpoint":
            bind["CreateMountpoint"] = _bool_value(key, val)
        elif key == "tmpfs-size":
            tmpfs["SizeBytes"] = ram_in_bytes(val)
        elif key == "tmpfs-mode":
            try:
                tmpfs["Mode"] = int(val, 8)
            except ValueError:
                raise ValueError(f"invalid value for {key}: {val}") from None
        elif key.startswith("volume-"):
            mount.setdefault("VolumeOptions", {})[key[len("volume-") :]] = val or True
        else:
            raise ValueError(f"unexpected key '{key}' in '{field}'")
    if not mount.get("Target"):
        raise ValueError("target is required")
    if bind:
        mount["BindOptions"] = bind
    if tmpfs:
        mount["TmpfsOptions"] = tmpfs
    return mount


def parse_volumes(values: list[str]) -> tuple[list[str], dict[str, dict]]:
    """``-v``: ``SRC:DST[:MODE]`` -> Binds (a ``./relative`` source made absolute, as
    Docker's CLI does); a lone ``/path`` -> Config.Volumes (an anonymous volume)."""
    binds: list[str] = []
    volumes: dict[str, dict] = {}
    for value in values:
        if ":" not in value:
            volumes[value] = {}
            continue
        source, _, rest = value.partition(":")
        if source.startswith("."):
            source = os.path.abspath(source)
        binds.append(f"{source}:{rest}")
    return binds, volumes


def parse_tmpfs_flags(values: list[str]) -> dict[str, str]:
    """``--tmpfs /run:rw,size=64m`` -> ``HostConfig.Tmpfs``."""
    out: dict[str, str] = {}
    for value in values:
        path, _, options = value.partition(":")
        out[path] = options
    return out


def _kv_map(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        k, _, val = item.partition("=")
        out[k] = val
    return out


def log_config(driver: str, opts: list[str]) -> dict:
    """``HostConfig.LogConfig`` from ``--log-driver`` and ``--log-opt k=v`` (ValueError)."""
    config: dict[str, str] = {}
    for opt in opts:
        key, eq, value = opt.partition("=")
        if not eq or not key:
            raise ValueError(f"invalid log opt: {opt!r} (expected key=value)")
        config[key] = value
    return {"Type": driver, "Config": config}


def create_body(
    v: dict,
    changed: set[str],
    image: str,
    cmd: list[str],
    detach: bool,
    env: dict[str, str] | None = None,
    console_size: tuple[int, int] | None = None,
) -> dict:
    """The ``POST /containers/create`` body for parsed flags ``v`` (ValueError on bad input)."""
    environ: Mapping[str, str] = os.environ if env is None else env
    if v["mac_address"] and not valid_mac(v["mac_address"]):
        raise ValueError(f"{v['mac_address']} is not a valid mac address")
    attach = [a.lower() for a in v["attach"]]
    for a in attach:
        if a not in ("stdin", "stdout", "stderr"):
            raise ValueError("valid streams are STDIN, STDOUT and STDERR")
    if detach and attach:
        raise ValueError("Conflicting options: -a and -d")
    attach_stdin = "stdin" in attach or v["interactive"]
    attach_stdout = "stdout" in attach or not attach
    attach_stderr = "stderr" in attach or not attach
    if detach:
        attach_stdin = attach_stdout = attach_stderr = False
    exposed, bindings = parse_publish(v["publish"])
    exposed = parse_expose(v["expose"], exposed)
    mode, endpoints = endpoints_config(v)
    env_list = read_env_files(v["env_file"], environ) + resolve_env(v["env"], environ)
    entrypoint = None
    if v["entrypoint"]:
        entrypoint = [v["entrypoint"]]
    elif "entrypoint" in changed:
        entrypoint = [""]
    config: dict = {
        "Hostname": v["hostname"] or "",
        "Domainname": v["domainname"] or "",
        "User": v["user"] or "",
        "AttachStdin": attach_stdin,
        "AttachStdout": attach_stdout,
        "AttachStderr": attach_stderr,
    }
    if exposed:
        config["ExposedPorts"] = exposed
    config.update(
        {
            "Tty": v["tty"],
            "OpenStdin": v["interactive"],
            "StdinOnce": bool(v["interactive"] and attach_stdin),
            "Env": env_list,
            "Cmd": list(cmd) or None,
            "Image": image,
            "Volumes": None,
            "WorkingDir": v["workdir"] or "",
            "Entrypoint": entrypoint,
            "OnBuild": None,
            "Labels": _kv_map(v["label"]),
        }
    )
    if v["stop_signal"]:
        config["StopSignal"] = v["stop_signal"]
    if v["stop_timeout"] is not None:
        config["StopTimeout"] = v["stop_timeout"]
    restart = parse_restart(v["restart"])
    if v.get("rm") and restart["Name"] not in ("", "no"):
        raise ValueError("conflicting options: cannot specify both --restart and --rm")
    binds, volumes = parse_volumes(v["volume"])
    if volumes:
        config["Volumes"] = volumes
    host_config = {
        "Binds": binds or None,
        "ContainerIDFile": "",
        "LogConfig": log_config(v.get("log_driver") or "", v.get("log_opt") or []),
        "NetworkMode": mode,
        "PortBindings": bindings,
        "RestartPolicy": restart,
        "AutoRemove": bool(v.get("rm")),
        "VolumeDriver": "",
        "VolumesFrom": None,
        "ConsoleSize": list(console_size) if console_size else [0, 0],
        "CapAdd": None,
        "CapDrop": None,
        "CgroupnsMode": "",
        "Dns": list(v["dns"]),
        "DnsOptions": list(v["dns_option"]),
        "DnsSearch": list(v["dns_search"]),
        "ExtraHosts": list(v["add_host"]) or None,
        "GroupAdd": None,
        "IpcMode": "",
        "Cgroup": "",
        "Links": list(v["link"]) or None,
        "OomScoreAdj": 0,
        "PidMode": "",
        "Privileged": v["privileged"],
        "PublishAllPorts": v["publish_all"],
        "ReadonlyRootfs": False,
        "SecurityOpt": None,
        "UTSMode": "",
        "UsernsMode": "",
        "ShmSize": 0,
        "Isolation": "",
    }
    if v["mount"]:
        host_config["Mounts"] = [parse_mount_flag(m) for m in v["mount"]]
    if v["tmpfs"]:
        host_config["Tmpfs"] = parse_tmpfs_flags(v["tmpfs"])
    body = dict(config)
    body["HostConfig"] = host_config
    body["NetworkingConfig"] = {"EndpointsConfig": endpoints}
    return body
