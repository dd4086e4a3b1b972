"""Docker's ``StatsResponse`` (``GET /containers/{id}/stats``) and ``top``'s answer."""

from __future__ import annotations

import os
from typing import Any

from cnm.engine.controller import ContainerSample
from cnm.runtime.stats import host_memory

ZERO_TIME = "0001-01-01T00:00:00Z"


def _cpu(sample: ContainerSample | None) -> dict[str, Any]:
    if sample is None or not sample.container.running:
        return {
            "cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "throttling_data": _THROTTLING,
        }
    return {
        "cpu_usage": {"total_usage": sample.cgroup.cpu_ns, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
        "system_cpu_usage": sample.system_cpu_ns,
        "online_cpus": os.cpu_count() or 1,
        "throttling_data": _THROTTLING,
    }


_THROTTLING = {"periods": 0, "throttled_periods": 0, "throttled_time": 0}


def stats_json(
    sample: ContainerSample, read: str, previous: ContainerSample | None, preread: str
) -> dict[str, Any]:
    """One reading in moby's shape.  ``previous`` (None for the first of a stream, or for
    ``one-shot``) fills ``precpu_stats``, from which clients compute CPU %."""
    c = sample.container
    out: dict[str, Any] = {
        "read": read,
        "preread": preread if previous is not None else ZERO_TIME,
        "pids_stats": {},
        "blkio_stats": {
            "io_service_bytes_recursive": None,
            "io_serviced_recursive": None,
            "io_queue_recursive": None,
            "io_service_time_recursive": None,
            "io_wait_time_recursive": None,
            "io_merged_recursive": None,
            "io_time_recursive": None,
            "sectors_recursive": None,
        },
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": _cpu(sample),
        "precpu_stats": _cpu(previous),
        "memory_stats": {},
        "name": "/" + c.name,
        "id": c.id,
    }
    if c.running:
        cg = sample.cgroup
        out["pids_stats"] = {"current": cg.pids, **({"limit": cg.pids_limit} if cg.pids_limit else {})}
        out["memory_stats"] = {
            "usage": cg.memory_usage,
            "stats": dict(cg.memory_stat),
            "limit": cg.memory_limit or host_memory(),
        }
        out["blkio_stats"]["io_service_bytes_recursive"] = [
            {"major": 0, "minor": 0, "op": "read", "value": cg.io_read},
            {"major": 0, "minor": 0, "op": "write", "value": cg.io_write},
        ]
        out["networks"] = {
            name: {
                "rx_bytes": s.rx_bytes,
                "rx_packets": s.rx_packets,
                "rx_errors": s.rx_errors,
                "rx_dropped": s.rx_dropped,
                "tx_bytes": s.tx_bytes,
                "tx_packets": s.tx_packets,
                "tx_errors": s.tx_errors,
                "tx_dropped": s.tx_dropped,
            }
            for name, s in sorted(sample.networks.items())
        }
    return out


def top_json(titles: list[str], processes: list[list[str]]) -> dict[str, Any]:
    return {"Titles": titles, "Processes": processes}
