"""What the engine reports of itself and of an exec: plain values the API turns into
Docker's JSON (``/info``, ``/exec/{id}/json``)."""

from __future__ import annotations

from dataclasses import dataclass

from cnm.model.container import ExecSpec


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
