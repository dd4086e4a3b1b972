"""The CNM controller: the one place that combines store, IPAM, drivers, firewall and runtime.

Every mutation follows DESIGN.md: validate and plan before the first syscall; apply step by
step with each undo pushed on an AsyncExitStack; record in the store in one transaction
after the kernel agrees; teardown idempotent.

This file is the contract the API layer codes against.  (Signatures are final; bodies are
being written -- see engine/*.py.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from cnm.model.container import Container, ContainerConfig, ExecSpec, Image
from cnm.model.endpoint import Endpoint, EndpointRequest, Sandbox
from cnm.model.network import Network, NetworkSpec
from cnm.runtime.api import Process


@dataclass(frozen=True, slots=True)
class EngineInfo:
    data_root: str
    exec_root: str
    bridge_name: str
    firewall_backend: str
    default_pools: tuple[tuple[str, int], ...]  # (base CIDR, size)
    containers: int
    running: int
    stopped: int
    images: int
    debug: bool


@dataclass(frozen=True, slots=True)
class ExecInfo:
    id: str
    container_id: str
    spec: ExecSpec
    running: bool
    exit_code: int | None
    pid: int


@dataclass(frozen=True, slots=True)
class ContainerPaths:
    hostname: str
    hosts: str
    resolv_conf: str
    log: str


class Controller:
    # -- system ---------------------------------------------------------------------------
    def info(self) -> EngineInfo: ...

    # -- networks -------------------------------------------------------------------------
    async def create_network(self, spec: NetworkSpec) -> Network:
        """403 Forbidden for predefined names / host & null drivers, 409 Conflict for a
        duplicate name or overlapping subnet, 400 for bad IPAM, 404 for unknown driver."""

    def networks(self) -> list[Network]: ...

    def find_network(self, ref: str) -> Network:
        """Docker's lookup order: full id, exact name, unique id prefix.  NotFound
        ``network X not found``; InvalidArgument when ambiguous."""

    def network_endpoints(self, network_id: str) -> list[Endpoint]:
        """The live endpoints (running containers) of a network."""

    async def remove_network(self, ref: str) -> None:
        """403 for predefined networks and networks with active endpoints."""

    async def prune_networks(self, labels: dict[str, str | None] | None = None) -> list[str]:
        """Remove every non-predefined network without endpoints (optionally only those
        carrying the given labels: key -> value, or key -> None for 'any value').
        Returns the names removed."""

    async def connect(self, network_ref: str, container_ref: str, request: EndpointRequest) -> None:
        """Running container: resolve the network, create and join an endpoint now.
        Stopped container: record the request; it takes effect at start."""

    async def disconnect(self, network_ref: str, container_ref: str, force: bool = False) -> None: ...

    # -- containers -----------------------------------------------------------------------
    async def create_container(self, name: str | None, config: ContainerConfig) -> tuple[Container, list[str]]:
        """Returns the container and Docker's warnings."""

    def containers(self) -> list[Container]: ...

    def find_container(self, ref: str) -> Container:
        """By name (with or without '/'), full id, or unique id prefix.
        NotFound ``No such container: X``."""

    def container_endpoints(self, container_id: str) -> list[tuple[Network, Endpoint]]:
        """Live endpoints of a container with their networks, in connect order."""

    def container_sandbox(self, container_id: str) -> Sandbox | None: ...

    def container_paths(self, container_id: str) -> ContainerPaths: ...

    async def start_container(self, ref: str) -> None:
        """NotModified when already running."""

    async def stop_container(self, ref: str, timeout: int | None = None, signal: str | None = None) -> None:
        """NotModified when not running."""

    async def kill_container(self, ref: str, signal: str = "SIGKILL") -> None:
        """Conflict ``container <id> is not running`` when not running."""

    async def remove_container(self, ref: str, force: bool = False) -> None:
        """Conflict when running and not ``force``."""

    async def wait_container(self, ref: str, condition: str = "not-running") -> int:
        """``not-running`` | ``next-exit`` | ``removed``; returns the exit code."""

    def container_logs(
        self, ref: str, *, stdout: bool, stderr: bool, follow: bool, tail: int | None
    ) -> AsyncIterator[tuple[int, bytes]]: ...

    async def attach_stdin(self, ref: str):
        """A StreamWriter to the container's stdin, or None."""

    # -- exec -----------------------------------------------------------------------------
    def create_exec(self, ref: str, spec: ExecSpec) -> str:
        """Conflict ``container <id> is not running``."""

    async def start_exec(self, exec_id: str) -> Process: ...

    def exec_info(self, exec_id: str) -> ExecInfo: ...

    # -- images ---------------------------------------------------------------------------
    async def import_image(self, reference: str, tar_path: str) -> Image: ...

    def images(self) -> list[Image]: ...

    def find_image(self, ref: str) -> Image: ...

    async def remove_image(self, ref: str, force: bool = False) -> Image: ...
