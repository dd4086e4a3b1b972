"""Containers, images and execs as cnm stores them (not Docker's JSON: that lives in api/)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cnm.model.endpoint import EndpointRequest

_EMPTY: Mapping = MappingProxyType({})

ZERO_TIME = "0001-01-01T00:00:00Z"

# Container states, as Docker names them.
CREATED = "created"
RUNNING = "running"
EXITED = "exited"
REMOVING = "removing"
DEAD = "dead"


@dataclass(frozen=True, slots=True)
class PortBindingRequest:
    """One ``HostConfig.PortBindings`` entry as sent: host IP and host port (or range) text."""

    host_ip: str = ""
    host_port: str = ""


@dataclass(frozen=True, slots=True)
class ContainerConfig:
    """A validated ``containers/create`` request: Docker's Config and HostConfig, the parts
    cnm acts on.  ``network_mode`` is normalised: ``bridge``, ``host``, ``none``,
    ``container:<ref>`` or a user network's name or id."""

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
    """An imported root filesystem.  ``id`` is ``sha256:<hex of the imported tar>``."""

    id: str
    repo_tags: tuple[str, ...]
    created: str
    size: int = 0
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    workdir: str = ""
    exposed_ports: tuple[str, ...] = ()


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
