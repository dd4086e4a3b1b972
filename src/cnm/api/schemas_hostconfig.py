"""Docker's create-body fields beyond networking: mounts (``HostConfig.Binds``, ``Mounts``,
``Tmpfs``), the restart policy, and the refusal of every field cnm does not implement.

Owns: turning those wire shapes into ``model.container`` values with moby's wording for bad
input (``volume/mounts/linux_parser.go``, ``runconfig``, ``daemon/container.go``), and
``refuse_unsupported``, which makes a request that asks for something cnm would ignore
fail with a message naming the field (and the CLI flag), instead of being accepted and
ignored.  Zero values (what the docker CLI and SDKs send for "not set") always pass.
Checks that touch the host (does a ``--mount`` source exist) are the engine's.
"""

from __future__ import annotations

import posixpath
from typing import Any

from cnm.api.http import get_bool, get_dict, get_list, get_str
from cnm.errors import InvalidArgument
from cnm.model.container import (
    FROM_BINDS,
    FROM_MOUNTS,
    FROM_TMPFS,
    RESTART_NO,
    RESTART_ON_FAILURE,
    RESTART_POLICIES,
    Mount,
)

PROPAGATIONS = ("private", "rprivate", "shared", "rshared", "slave", "rslave")
# ``-v`` modes that change nothing here: SELinux relabelling (no SELinux) and consistency
# hints (macOS only), accepted as Docker on such a host accepts them.
_NOOP_MODES = ("z", "Z", "consistent", "cached", "delegated")
TMPFS_DEFAULT_OPTIONS = ("noexec", "nosuid", "nodev")


# -- mounts ---------------------------------------------------------------------------------


def _check_target(kind: str, target: str) -> str:
    if not target:
        raise InvalidArgument(f'invalid mount config for type "{kind}": field Target must not be empty')
    if not target.startswith("/"):
        raise InvalidArgument(
            f"invalid mount config for type \"{kind}\": invalid mount path: '{target}' mount path must be absolute"
        )
    target = posixpath.normpath(target)
    if target == "/":
        raise InvalidArgument("invalid specification: destination can't be '/'")
    return target


def parse_bind(spec: str) -> Mount:
    """One ``HostConfig.Binds`` entry, ``SRC:DST[:MODE]``.  A source that is not an
    absolute path is a named volume: refused (cnm has no volumes)."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise InvalidArgument(f"invalid volume specification: '{spec}'")
    source, target = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else ""
    if not source.startswith("/"):
        raise InvalidArgument(
            f"invalid volume specification: '{spec}': named volumes are not supported by cnm; "
            "bind-mount a host directory (an absolute path) instead"
        )
    target = _check_target("bind", target)
    read_only = False
    propagation = ""
    for option in mode.split(",") if mode else ():
        if option in ("ro", "rw"):
            read_only = option == "ro"
        elif option in PROPAGATIONS:
            propagation = option
        elif option not in _NOOP_MODES:
            raise InvalidArgument(f"invalid mode: {mode}")
    return Mount(
        type="bind",
        source=posixpath.normpath(source),
        target=target,
        read_only=read_only,
        options=(propagation,) if propagation else (),
        origin=FROM_BINDS,
        mode=mode,
    )


def _tmpfs_options(size: Any, mode: Any) -> tuple[str, ...]:
    out = []
    if size not in (None, 0):
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgument('invalid mount config for type "tmpfs": invalid TmpfsOptions.SizeBytes')
        out.append(f"size={size}")
    if mode not in (None, 0):
        if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o7777:
            raise InvalidArgument('invalid mount config for type "tmpfs": invalid TmpfsOptions.Mode')
        out.append(f"mode={mode:o}")
    return tuple(out)


def parse_mount(raw: Any) -> Mount:
    """One ``HostConfig.Mounts`` entry: ``bind`` or ``tmpfs``; ``volume`` is refused."""
    if not isinstance(raw, dict):
        raise InvalidArgument("invalid Mounts: expected an array of objects")
    kind = get_str(raw, "Type")
    if kind == "volume":
        raise InvalidArgument(
            'invalid mount config for type "volume": volumes are not supported by cnm; use type=bind'
        )
    if kind not in ("bind", "tmpfs"):
        raise InvalidArgument(
            f'invalid mount config: mount type unknown: "{kind}"'
            if kind
            else "invalid mount config: mount type unknown"
        )
    target = _check_target(kind, get_str(raw, "Target"))
    read_only = get_bool(raw, "ReadOnly")
    source = get_str(raw, "Source")
    if get_dict(raw, "VolumeOptions"):
        raise InvalidArgument(
            f'invalid mount config for type "{kind}": field VolumeOptions must not be specified'
        )
    if kind == "bind":
        if get_dict(raw, "TmpfsOptions"):
            raise InvalidArgument(
                'invalid mount config for type "bind": field TmpfsOptions must not be specified'
            )
        if not source:
            raise InvalidArgument('invalid mount config for type "bind": field Source must not be empty')
        if not source.startswith("/"):
            raise InvalidArgument(
                f"invalid mount config for type \"bind\": invalid mount path: '{source}' mount path must be absolute"
            )
        bind_options = get_dict(raw, "BindOptions")
        unsupported = sorted(
            k for k, v in bind_options.items() if k != "Propagation" and v not in (None, False, "")
        )
        if unsupported:
            raise InvalidArgument(f"BindOptions.{unsupported[0]} is not supported by cnm")
        propagation = get_str(bind_options, "Propagation")
        if propagation and propagation not in PROPAGATIONS:
            raise InvalidArgument(f"invalid propagation mode: {propagation}")
        return Mount(
            type="bind",
            source=posixpath.normpath(source),
            target=target,
            read_only=read_only,
            options=(propagation,) if propagation else (),
            origin=FROM_MOUNTS,
        )
    if source:
        raise InvalidArgument('invalid mount config for type "tmpfs": field Source must not be specified')
    if get_dict(raw, "BindOptions"):
        raise InvalidArgument(
            'invalid mount config for type "tmpfs": field BindOptions must not be specified'
        )
    tmpfs = get_dict(raw, "TmpfsOptions")
    options = _tmpfs_options(tmpfs.get("SizeBytes"), tmpfs.get("Mode"))
    return Mount(type="tmpfs", target=target, read_only=read_only, options=options, origin=FROM_MOUNTS)


def parse_tmpfs(target: str, options: Any) -> Mount:
    """One ``HostConfig.Tmpfs`` entry: ``{"/run": "rw,size=64m"}``."""
    if not isinstance(options, str):
        raise InvalidArgument("invalid Tmpfs: expected an object of strings")
    target = _check_target("tmpfs", target)
    opts = [o.strip() for o in options.split(",") if o.strip()]
    read_only = "ro" in opts
    for option in opts:
        key = option.partition("=")[0]
        if key not in (
            "ro",
            "rw",
            "size",
            "mode",
            "uid",
            "gid",
            "nr_inodes",
            "nr_blocks",
            "exec",
            "noexec",
            "suid",
            "nosuid",
            "dev",
            "nodev",
            "atime",
            "noatime",
            "relatime",
            "strictatime",
            "nodiratime",
            "tmpcopyup",
            "notmpcopyup",
        ):
            raise InvalidArgument(f"invalid tmpfs option {option!r} for {target}")
    kept = tuple(o for o in opts if o not in ("ro", "rw", "tmpcopyup", "notmpcopyup"))
    return Mount(type="tmpfs", target=target, read_only=read_only, options=kept, origin=FROM_TMPFS)


def parse_mounts(host: dict[str, Any]) -> tuple[tuple[Mount, ...], tuple[str, ...], dict[str, str]]:
    """``HostConfig.Binds``, ``Mounts`` and ``Tmpfs`` -> (mounts, binds as given, tmpfs as
    given).  Two mounts on one destination: moby's ``Duplicate mount point``."""
    binds = get_list(host, "Binds") or []
    if not all(isinstance(b, str) for b in binds):
        raise InvalidArgument("invalid Binds: expected an array of strings")
    tmpfs = get_dict(host, "Tmpfs")
    mounts = [parse_bind(b) for b in binds]
    mounts += [parse_mount(m) for m in get_list(host, "Mounts") or []]
    mounts += [parse_tmpfs(t, o) for t, o in tmpfs.items()]
    seen: set[str] = set()
    for m in mounts:
        if m.target in seen:
            raise InvalidArgument(f"Duplicate mount point: {m.target}")
        seen.add(m.target)
    return tuple(mounts), tuple(binds), dict(tmpfs)


def mount_json(m: Mount) -> dict[str, Any]:
    """One ``HostConfig.Mounts`` entry as given (``--mount``)."""
    out: dict[str, Any] = {"Type": m.type, "Target": m.target}
    if m.type == "bind":
        out["Source"] = m.source
    if m.read_only:
        out["ReadOnly"] = True
    if m.type == "bind" and m.options:
        out["BindOptions"] = {"Propagation": m.options[0]}
    if m.type == "tmpfs" and m.options:
        opts: dict[str, int] = {}
        for option in m.options:
            key, _, value = option.partition("=")
            if key == "size":
                opts["SizeBytes"] = int(value)
            elif key == "mode":
                opts["Mode"] = int(value, 8)
        out["TmpfsOptions"] = opts
    return out


def mount_point_json(m: Mount) -> dict[str, Any]:
    """One item of inspect's top-level ``Mounts`` (moby ``MountPoint``)."""
    if m.type == "bind":
        return {
            "Type": "bind",
            "Source": m.source,
            "Destination": m.target,
            "Mode": m.mode,
            "RW": not m.read_only,
            "Propagation": m.options[0] if m.options else "rprivate",
        }
    return {
        "Type": "tmpfs",
        "Source": "",
        "Destination": m.target,
        "Mode": "",
        "RW": not m.read_only,
        "Propagation": "",
    }


# -- restart policy -------------------------------------------------------------------------


def parse_restart_policy(host: dict[str, Any]) -> tuple[str, int]:
    """``HostConfig.RestartPolicy`` -> (name, maximum retry count), moby's checks."""
    raw = get_dict(host, "RestartPolicy")
    name = get_str(raw, "Name") or RESTART_NO
    retries = raw.get("MaximumRetryCount")
    if retries is None:
        retries = 0
    if not isinstance(retries, int) or isinstance(retries, bool):
        raise InvalidArgument("invalid restart policy: maximum retry count must be an integer")
    if name not in RESTART_POLICIES:
        raise InvalidArgument(
            f"invalid restart policy: unknown policy '{name}'; use one of 'no', 'always', 'on-failure', "
            "or 'unless-stopped'"
        )
    if retries < 0:
        raise InvalidArgument("invalid restart policy: maximum retry count cannot be negative")
    if retries and name != RESTART_ON_FAILURE:
        raise InvalidArgument(
            "invalid restart policy: maximum retry count can only be used with 'on-failure'"
        )
    if name != RESTART_NO and get_bool(host, "AutoRemove"):
        raise InvalidArgument("can't create 'AutoRemove' container with restart policy")
    return name, retries


# -- what cnm does not implement -------------------------------------------------------------

# HostConfig fields cnm does not act on: (field, the docker CLI flag, values that mean
# "not set" besides null/false/0/""/[]/{}).
_UNSUPPORTED_HOST = (
    ("Annotations", "--annotation", ()),
    ("BlkioDeviceReadBps", "--device-read-bps", ()),
    ("BlkioDeviceReadIOps", "--device-read-iops", ()),
    ("BlkioDeviceWriteBps", "--device-write-bps", ()),
    ("BlkioDeviceWriteIOps", "--device-write-iops", ()),
    ("BlkioWeight", "--blkio-weight", ()),
    ("BlkioWeightDevice", "--blkio-weight-device", ()),
    ("CapAdd", "--cap-add", ()),
    ("CapDrop", "--cap-drop", ()),
    ("Cgroup", "--cgroup", ()),
    ("CgroupParent", "--cgroup-parent", ()),
    ("CgroupnsMode", "--cgroupns", ("private",)),
    ("CpuCount", "--cpu-count", ()),
    ("CpuPercent", "--cpu-percent", ()),
    ("CpuPeriod", "--cpu-period", ()),
    ("CpuQuota", "--cpu-quota", ()),
    ("CpuRealtimePeriod", "--cpu-rt-period", ()),
    ("CpuRealtimeRuntime", "--cpu-rt-runtime", ()),
    ("CpuShares", "--cpu-shares", ()),
    ("CpusetCpus", "--cpuset-cpus", ()),
    ("CpusetMems", "--cpuset-mems", ()),
    ("DeviceCgroupRules", "--device-cgroup-rule", ()),
    ("DeviceRequests", "--gpus", ()),
    ("Devices", "--device", ()),
    ("GroupAdd", "--group-add", ()),
    ("IOMaximumBandwidth", "--io-maxbandwidth", ()),
    ("IOMaximumIOps", "--io-maxiops", ()),
    ("Init", "--init", ()),
    ("IpcMode", "--ipc", ("private", "shareable")),
    ("Isolation", "--isolation", ("default",)),
    ("KernelMemory", "--kernel-memory", ()),
    ("KernelMemoryTCP", "--kernel-memory-tcp", ()),
    ("MaskedPaths", "--security-opt systempaths=unconfined", ()),
    ("Memory", "--memory", ()),
    ("MemoryReservation", "--memory-reservation", ()),
    ("MemorySwap", "--memory-swap", ()),
    ("MemorySwappiness", "--memory-swappiness", (-1,)),
    ("NanoCpus", "--cpus", ()),
    ("OomKillDisable", "--oom-kill-disable", ()),
    ("OomScoreAdj", "--oom-score-adj", ()),
    ("PidMode", "--pid", ("private",)),
    ("PidsLimit", "--pids-limit", (-1,)),
    ("Privileged", "--privileged", ()),
    ("ReadonlyPaths", "--security-opt systempaths=unconfined", ()),
    ("ReadonlyRootfs", "--read-only", ()),
    ("Runtime", "--runtime", ("runc",)),
    ("SecurityOpt", "--security-opt", ()),
    ("ShmSize", "--shm-size", (67108864,)),
    ("StorageOpt", "--storage-opt", ()),
    ("Sysctls", "--sysctl", ()),
    ("UTSMode", "--uts", ("private",)),
    ("Ulimits", "--ulimit", ()),
    ("UsernsMode", "--userns", ("private",)),
    ("VolumeDriver", "--volume-driver", ()),
    ("VolumesFrom", "--volumes-from", ()),
)
# MaskedPaths/ReadonlyPaths: an empty list is a request too (unmask everything).
_LIST_IS_A_REQUEST = ("MaskedPaths", "ReadonlyPaths")

_UNSUPPORTED_CONFIG = (
    ("Healthcheck", "--health-cmd", ()),
    ("NetworkDisabled", "use --network none instead", ()),
    ("Volumes", "-v /path, an anonymous volume", ()),
)


def _is_unset(key: str, value: Any, also: tuple[Any, ...]) -> bool:
    if value is None or value is False:
        return True
    if key in _LIST_IS_A_REQUEST:
        return False
    if isinstance(value, bool):
        return False
    return value in ("", 0, [], {}) or value in also


def refuse_unsupported(body: dict[str, Any], host: dict[str, Any]) -> None:
    """InvalidArgument naming the first field set to something cnm would otherwise ignore."""
    for key, flag, also in _UNSUPPORTED_HOST:
        if not _is_unset(key, host.get(key), also):
            raise InvalidArgument(f"HostConfig.{key} ({flag}) is not supported by cnm")
    for key, flag, also in _UNSUPPORTED_CONFIG:
        value = body.get(key)
        if key == "Healthcheck" and isinstance(value, dict) and value.get("Test") in (None, [], ["NONE"]):
            continue  # no healthcheck, or the image's disabled: nothing to run
        if not _is_unset(key, value, also):
            raise InvalidArgument(f"Config.{key} ({flag}) is not supported by cnm")
