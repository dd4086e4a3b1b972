"""``/version`` and ``/info`` in Docker's shapes (``types.Version``, ``system.Info``)."""

from __future__ import annotations

import os
import platform
import socket
from dataclasses import dataclass
from typing import Any

from cnm.engine.info import EngineInfo

# Docker's answers on a node outside a swarm (cnm never joins one), word for word: SDK and
# Compose teardowns recognise them.
NOT_SWARM_MANAGER = (
    'This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" to '
    "connect this node to swarm and try again."
)
NOT_IN_SWARM = "This node is not part of a swarm"

API_VERSION = "1.51"
MIN_API_VERSION = "1.24"

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """What ``/version`` reports about this daemon build and host."""

    version: str
    git_commit: str = ""
    build_time: str = ""
    platform_name: str = "cnm"
    python_version: str = platform.python_version()
    os: str = "linux"
    arch: str = _ARCH.get(platform.machine(), platform.machine())
    kernel_version: str = platform.release()
    hostname: str = socket.gethostname()
    experimental: bool = False
    cluster_store: str = ""  # --cluster-store (etcd://…), shown by /info as Docker did
    node_name: str = ""  # in a cluster: this node's name (--node-name) and advertise address
    cluster_advertise: str = ""


def version_json(v: VersionInfo) -> dict[str, Any]:
    details: dict[str, str] = {
        "ApiVersion": API_VERSION,
        "Arch": v.arch,
        "BuildTime": v.build_time,
        "Experimental": "true" if v.experimental else "false",
        "GitCommit": v.git_commit,
        "GoVersion": f"python{v.python_version}",
        "KernelVersion": v.kernel_version,
        "MinAPIVersion": MIN_API_VERSION,
        "Os": v.os,
    }
    if not v.build_time:
        del details["BuildTime"]
    out: dict[str, Any] = {
        "Platform": {"Name": v.platform_name},
        "Components": [{"Name": "Engine", "Version": v.version, "Details": details}],
        "Version": v.version,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": v.git_commit,
        "GoVersion": f"python{v.python_version}",
        "Os": v.os,
        "Arch": v.arch,
        "KernelVersion": v.kernel_version,
    }
    if v.experimental:
        out["Experimental"] = True
    if v.build_time:
        out["BuildTime"] = v.build_time
    return out


def _mem_total() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def _os_name() -> str:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME", "Linux")
    except OSError:
        return "Linux"


def info_json(e: EngineInfo, v: VersionInfo) -> dict[str, Any]:
    return {
        "ID": "",
        "Containers": e.containers,
        "ContainersRunning": e.running,
        "ContainersPaused": 0,
        "ContainersStopped": e.stopped,
        "Images": e.images,
        "Driver": "overlay",
        "DriverStatus": [],
        "Plugins": {
            "Volume": [],
            "Network": ["bridge", "host", "null", "overlay"],
            "Authorization": None,
            "Log": [],
        },
        "MemoryLimit": False,
        "SwapLimit": False,
        "IPv4Forwarding": True,
        "Debug": e.debug,
        "NFd": 0,
        "NGoroutines": 0,
        "SystemTime": "",
        "LoggingDriver": "json-file",
        "CgroupDriver": "none",
        "CgroupVersion": "2",
        "KernelVersion": v.kernel_version,
        "OperatingSystem": _os_name(),
        "OSVersion": "",
        "OSType": "linux",
        "Architecture": platform.machine(),
        "NCPU": os.cpu_count() or 1,
        "MemTotal": _mem_total(),
        "DockerRootDir": e.data_root,
        # in a cluster, the name the other hosts know this node by (--node-name)
        "Name": v.node_name or v.hostname,
        "Labels": [],
        "ExperimentalBuild": v.experimental,
        "ServerVersion": v.version,
        "Runtimes": {"runc": {"path": "runc"}},
        "DefaultRuntime": "runc",
        "Swarm": {
            "NodeID": "",
            "NodeAddr": "",
            "LocalNodeState": "inactive",
            "ControlAvailable": False,
            "Error": "",
            "RemoteManagers": None,
        },
        "ClusterStore": v.cluster_store,
        "ClusterAdvertise": v.cluster_advertise,  # --cluster-advertise, resolved to an address
        "LiveRestoreEnabled": True,
        "Isolation": "",
        "InitBinary": "",
        "SecurityOptions": [],
        "DefaultAddressPools": [{"Base": base, "Size": size} for base, size in e.default_pools],
        "FirewallBackend": {"Driver": e.firewall_backend},
        "Warnings": [],
    }
