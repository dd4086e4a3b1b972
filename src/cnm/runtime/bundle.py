"""The OCI bundle: ``config.json`` for runc 1.1.5 (runtime spec 1.0.2), built from data.

Pure functions, no I/O except ``write_config`` and the passwd/group lookups of
``resolve_user`` (which read the container's own root filesystem).  The defaults follow
Docker's (moby ``oci/defaults.go``): its capability set, masked and read-only paths, /dev,
/dev/pts, /dev/shm, /dev/mqueue, a read-only /sys and cgroup mount.
"""

from __future__ import annotations

import json
import os
import resource
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cnm.errors import InvalidArgument, RuntimeFailure
from cnm.model.container import ContainerConfig, Image, Mount, command_of

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Docker's default capabilities (moby oci/caps/defaults.go).
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

MASKED_PATHS = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
)

READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# What containerd gives Docker containers: ``ulimit -n`` = 1048576.  Without
# CAP_SYS_RESOURCE a limit cannot exceed cnmd's own hard limit: see ``nofile_limit``.
NOFILE_LIMIT = 1048576


def nofile_limit() -> int:
    """Docker's NOFILE limit, capped by cnmd's own hard limit (raising it needs
    CAP_SYS_RESOURCE, which cnmd may lack, e.g. inside another container)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return NOFILE_LIMIT if hard == resource.RLIM_INFINITY else min(NOFILE_LIMIT, hard)


@dataclass(frozen=True, slots=True)
class User:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()

    @property
    def runc_flag(self) -> str:
        """The ``runc exec --user`` value."""
        return f"{self.uid}:{self.gid}"


def process_args(config: ContainerConfig, image: Image) -> list[str]:
    """Docker's rule (``model.container.command_of``); InvalidArgument with Docker's "No
    command specified" when there is none (an imported image carries no cmd)."""
    args = list(command_of(config, image))
    if not args:
        raise InvalidArgument("No command specified")
    return args


def process_env(config: ContainerConfig, image: Image, hostname: str) -> list[str]:
    """Image env, then ``HOSTNAME``, then the container's own (a later key replaces an
    earlier one, keeping its place, as Docker's ``ReplaceOrAppendEnvValues`` does)."""
    merged: dict[str, str] = {}
    extra = [f"HOSTNAME={hostname}"] + (["TERM=xterm"] if config.tty else [])
    for entry in [*(image.env or (DEFAULT_PATH,)), *extra, *config.env]:
        key = entry.split("=", 1)[0]
        merged[key] = entry
    if "PATH" not in merged:
        merged = {"PATH": DEFAULT_PATH, **merged}
    return list(merged.values())


def oci_config(
    *,
    args: Sequence[str],
    env: Sequence[str],
    cwd: str,
    user: User,
    hostname: str,
    netns_path: str | None,
    cgroups_path: str,
    binds: Iterable[tuple[str, str]] = (),
    mounts: Iterable[Mount] = (),
    nofile: int = NOFILE_LIMIT,
) -> dict[str, Any]:
    """The ``config.json`` document.  ``netns_path`` None means no network namespace entry
    (the container shares cnmd's, i.e. ``--net host``); ``binds`` are (host path,
    container path) pairs bind-mounted read-write, as Docker does /etc/hostname etc.;
    ``mounts`` are the user's (``-v``, ``--mount``, ``--tmpfs``), parents before children,
    and one on a path of ``binds`` replaces that bind (Docker's rule too)."""
    user_mounts = user_mount_specs(mounts)
    taken = {m["destination"] for m in user_mounts}
    namespaces: list[dict[str, Any]] = [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
    if netns_path is not None:
        namespaces.append({"type": "network", "path": netns_path})
    caps = list(DEFAULT_CAPABILITIES)
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {
                "uid": user.uid,
                "gid": user.gid,
                **({"additionalGids": list(user.additional_gids)} if user.additional_gids else {}),
            },
            "args": list(args),
            "env": list(env),
            "cwd": cwd or "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            "noNewPrivileges": False,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": hostname,
        "mounts": [
            {
                "destination": "/proc",
                "type": "proc",
                "source": "proc",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
            {
                "destination": "/sys/fs/cgroup",
                "type": "cgroup",
                "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            *user_mounts,
            *(
                {"destination": dest, "type": "bind", "source": src, "options": ["rbind", "rprivate"]}
                for src, dest in binds
                if dest not in taken
            ),
        ],
        "linux": {
            "cgroupsPath": cgroups_path,
            # Deny all; runc adds its default allow-list (null, zero, full, tty, random,
            # urandom, ptmx, /dev/pts/*) on top, as Docker's default does.
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": namespaces,
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


# Options that come in pairs: the later one wins (moby ``MergeTmpfsOptions``).
_OPPOSITES = {"exec": "noexec", "suid": "nosuid", "dev": "nodev", "rw": "ro"}
_OPPOSITES.update({v: k for k, v in _OPPOSITES.items()})
TMPFS_DEFAULTS = ("noexec", "nosuid", "nodev")


def merge_options(options: Iterable[str]) -> list[str]:
    """``noexec,exec`` -> ``exec``; ``size=1m,size=2m`` -> ``size=2m``; order kept."""
    out: list[str] = []
    for option in options:
        key = option.partition("=")[0]
        out = [o for o in out if o.partition("=")[0] != key and o != _OPPOSITES.get(option)]
        out.append(option)
    return out


def user_mount_specs(mounts: Iterable[Mount]) -> list[dict[str, Any]]:
    """OCI mount entries for the user's binds and tmpfs, sorted so that a parent is
    mounted before what lies under it (moby sorts by destination depth too)."""
    out = []
    for m in sorted(mounts, key=lambda m: (m.target.rstrip("/").count("/"), m.target)):
        if m.type == "bind":
            propagation = m.options[0] if m.options else "rprivate"
            options = ["rbind", propagation, *(["ro"] if m.read_only else [])]
            out.append({"destination": m.target, "type": "bind", "source": m.source, "options": options})
        else:
            options = merge_options([*TMPFS_DEFAULTS, *m.options, *(["ro"] if m.read_only else [])])
            out.append({"destination": m.target, "type": "tmpfs", "source": "tmpfs", "options": options})
    return out


def write_config(bundle: str, config: dict[str, Any]) -> None:
    """Write ``<bundle>/config.json`` atomically."""
    path = os.path.join(bundle, "config.json")
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(config, fh, indent=1)
    os.replace(tmp, path)


def resolve_user(rootfs: str, spec: str) -> User:
    """Docker's ``--user``: ``""``, ``name``, ``uid``, ``name:group``, ``uid:gid``, names
    looked up in the container's own /etc/passwd and /etc/group.  RuntimeFailure with
    Docker's wording when a name is unknown."""
    user_part, _, group_part = spec.partition(":")
    passwd = _read_db(rootfs, "etc/passwd")
    groups = _read_db(rootfs, "etc/group")
    uid, gid, name = 0, 0, "root"
    if user_part:
        entry = next((e for e in passwd if len(e) >= 4 and (e[0] == user_part or e[2] == user_part)), None)
        if entry is not None:
            name, uid, gid = entry[0], int(entry[2]), int(entry[3])
        elif user_part.isdigit():
            uid, name = int(user_part), ""
        else:
            raise RuntimeFailure(f"unable to find user {user_part}: no matching entries in passwd file")
    elif passwd:
        root = next((e for e in passwd if len(e) >= 4 and e[2] == "0"), None)
        gid = int(root[3]) if root else 0
    if group_part:
        entry = next((e for e in groups if len(e) >= 3 and (e[0] == group_part or e[2] == group_part)), None)
        if entry is not None:
            gid = int(entry[2])
        elif group_part.isdigit():
            gid = int(group_part)
        else:
            raise RuntimeFailure(f"unable to find group {group_part}: no matching entries in group file")
    extra = tuple(
        sorted(
            {
                int(e[2])
                for e in groups
                if len(e) >= 4 and name and name in e[3].split(",") and int(e[2]) != gid
            }
        )
    )
    return User(uid, gid, extra)


def _read_db(rootfs: str, relpath: str) -> list[list[str]]:
    """Colon-separated lines of a file inside ``rootfs``; [] when missing, or when a symlink
    would lead outside the root filesystem (never read the host's files by mistake)."""
    root = os.path.realpath(rootfs)
    path = os.path.realpath(os.path.join(root, relpath))
    if not path.startswith(root + os.sep):
        return []
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return [line.rstrip("\n").split(":") for line in fh if line.strip() and not line.startswith("#")]
    except OSError:
        return []
