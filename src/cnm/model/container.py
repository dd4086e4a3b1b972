"""Containers, images and execs as cnm stores them (not Docker's JSON: that lives in api/)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cnm.model.endpoint import EndpointRequest

_EMPTY: Mapping[str, Any] = MappingProxyType({})

ZERO_TIME = "0001-01-01T00:00:00Z"

# Container states, as Docker names them.
CREATED = "created"
RUNNING = "running"
EXITED = "exited"
REMOVING = "removing"
RESTARTING = "restarting"  # exited; its restart policy starts it again after a delay
DEAD = "dead"


@dataclass(frozen=True, slots=True)
class PortBindingRequest:
    """One ``HostConfig.PortBindings`` entry as sent: host IP and host port (or range) text."""

    host_ip: str = ""
    host_port: str = ""


# Restart policies (Docker's ``HostConfig.RestartPolicy.Name``).
RESTART_NO = "no"
RESTART_ALWAYS = "always"
RESTART_ON_FAILURE = "on-failure"
RESTART_UNLESS_STOPPED = "unless-stopped"
RESTART_POLICIES = (RESTART_NO, RESTART_ALWAYS, RESTART_ON_FAILURE, RESTART_UNLESS_STOPPED)

# Where a mount was asked for: HostConfig.Binds (``-v``), Mounts (``--mount``), Tmpfs.
FROM_BINDS = "binds"
FROM_MOUNTS = "mounts"
FROM_TMPFS = "tmpfs"


@dataclass(frozen=True, slots=True)
class Mount:
    """One validated mount: ``bind`` (an absolute host path) or ``tmpfs``.  ``options``
    are tmpfs mount options (``size=64m``, ``mode=1777``); ``origin`` says which request
    field asked for it (inspect echoes each field as it was given)."""

    type: str  # "bind" | "tmpfs"
    target: str
    source: str = ""
    read_only: bool = False
    options: tuple[str, ...] = ()
    origin: str = FROM_MOUNTS
    mode: str = ""  # the ``-v`` mode text as given (``ro``, ``rw``, ``z`` …): inspect's Mode


@dataclass(frozen=True, slots=True)
class ContainerConfig:
    """A validated ``containers/create`` request: Docker's Config and HostConfig, the parts
    cnm acts on.  ``network_mode`` is normalised: ``bridge``, ``host``, ``none``,
    ``container:<ref>`` or a user network's name or id.

    ``networks`` is Docker's ``NetworkSettings.Networks`` before start: every network the
    container joins when it starts, keyed by network name, the primary one (``network_mode``)
    included; ``network disconnect`` of a stopped container removes its entry and never
    changes ``network_mode``."""

    image: str
    image_id: str = ""
    cmd: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    tty: bool = False
    open_stdin: bool = False
    stdin_once: bool = False
    attach_stdin: bool = False
    attach_stdout: bool = False
    attach_stderr: bool = False
    hostname: str = ""  # empty: the short id (host mode: the host's name)
    domainname: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    exposed_ports: tuple[str, ...] = ()  # "80/tcp", ...
    network_mode: str = "bridge"
    networks: Mapping[str, EndpointRequest] = field(default_factory=lambda: _EMPTY)
    mac_address: str = ""  # requested MAC of the primary network (Config.MacAddress)
    port_bindings: Mapping[str, tuple[PortBindingRequest, ...]] = field(default_factory=lambda: _EMPTY)
    publish_all: bool = False
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    extra_hosts: tuple[str, ...] = ()
    links: tuple[str, ...] = ()
    auto_remove: bool = False
    stop_signal: str = "SIGTERM"
    stop_timeout: int = 10
    mounts: tuple[Mount, ...] = ()
    binds: tuple[str, ...] = ()  # HostConfig.Binds as given
    tmpfs: Mapping[str, str] = field(default_factory=lambda: _EMPTY)  # HostConfig.Tmpfs as given
    restart_policy: str = RESTART_NO
    restart_max: int = 0  # on-failure's MaximumRetryCount; 0: no limit
    # False on records written before ``networks`` held the primary network too (it was
    # implied by ``network_mode``); ``Containers.upgrade_records`` completes them at start.
    networks_complete: bool = False
    log_driver: str = "json-file"  # HostConfig.LogConfig: "json-file" or "none"
    log_opts: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    console_size: tuple[int, int] = (0, 0)  # HostConfig.ConsoleSize (rows, columns) for a tty


@dataclass(frozen=True, slots=True)
class ContainerState:
    status: str = CREATED
    pid: int = 0
    exit_code: int = 0
    error: str = ""
    started_at: str = ZERO_TIME
    finished_at: str = ZERO_TIME
    oom_killed: bool = False
    restart_count: int = 0  # restarts by policy since the last start by a user
    stopped_by_user: bool = False  # ``stop``/``kill``: no restart by policy (unless-stopped remembers it)
    paused: bool = False  # frozen by ``pause`` (status stays "running", as Docker's Running does)


@dataclass(frozen=True, slots=True)
class Container:
    """A container record.  ``networks`` holds the per-network requests made after create
    (``network connect`` on a stopped container), keyed by the name or id given."""

    id: str
    name: str  # without the leading slash
    created: str
    config: ContainerConfig
    state: ContainerState = field(default_factory=ContainerState)
    sandbox_id: str = ""

    @property
    def running(self) -> bool:
        return self.state.status == RUNNING

    @property
    def short_id(self) -> str:
        return self.id[:12]


@dataclass(frozen=True, slots=True)
class Image:
    """A root filesystem and the config to run it.  ``id`` is ``sha256:<hex>`` of the
    imported tar (``import``) or of the image config (``load``, as in Docker); ``layers``
    are the loaded image's layer digests (``rootfs.diff_ids``), empty for an import."""

    id: str
    repo_tags: tuple[str, ...]
    created: str
    size: int = 0
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    workdir: str = ""
    exposed_ports: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    user: str = ""
    layers: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)  # a dict: asdict() copies it


def command_of(config: ContainerConfig, image: Image) -> tuple[str, ...]:
    """Docker's rule: entrypoint + cmd.  Without an entrypoint of its own, the container
    takes the image's cmd when it gives none, and the image's entrypoint unless it asked for
    none (``--entrypoint ""``: ``[""]`` or an empty list).  Empty means Docker's "No command
    specified" (an imported image carries no cmd)."""
    entrypoint = config.entrypoint
    if entrypoint == ("",):
        entrypoint = ()
    cmd = config.cmd
    if not entrypoint:
        if not cmd:
            cmd = image.cmd
        if entrypoint is None:
            entrypoint = tuple(image.entrypoint or ())
    return (entrypoint or ()) + tuple(cmd)


@dataclass(frozen=True, slots=True)
class ExecSpec:
    """A ``containers/{id}/exec`` request."""

    container_id: str
    cmd: tuple[str, ...]
    env: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    tty: bool = False
    attach_stdin: bool = False
    attach_stdout: bool = True
    attach_stderr: bool = True
    privileged: bool = False
