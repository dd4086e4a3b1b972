"""A container's cgroup: where it is, and what ``docker stats`` and ``docker top`` read there.

runc puts each container at ``<cgroup-parent>/<id>``: under ``/sys/fs/cgroup`` itself on a
cgroup v2 (unified) host, under each controller's hierarchy (``cpuacct``, ``memory``,
``pids``...) on a v1 host.  Both are read; the numbers come out in Docker's units (CPU in
nanoseconds, memory in bytes).  Nothing here writes: freezing goes through ``runc pause``.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

from cnm.errors import InvalidArgument, RuntimeFailure

CGROUP_ROOT = "/sys/fs/cgroup"
UNLIMITED = 1 << 63  # v1's "no limit" is a huge page-rounded number; v2 says "max"
_V1_CONTROLLERS = ("cpuacct", "memory", "pids", "blkio")


@dataclass(frozen=True, slots=True)
class Cgroup:
    """``version`` 2: ``dirs[""]`` is the one directory; 1: one directory per controller."""

    version: int
    dirs: dict[str, str]

    def path(self, controller: str, name: str) -> str:
        return os.path.join(self.dirs["" if self.version == 2 else controller], name)


@dataclass(frozen=True, slots=True)
class CgroupStats:
    """One reading.  ``memory_limit`` 0: no limit (Docker then shows the host's memory)."""

    cpu_ns: int = 0
    memory_usage: int = 0
    memory_limit: int = 0
    memory_stat: dict[str, int] = field(default_factory=dict)
    pids: int = 0
    pids_limit: int = 0
    io_read: int = 0  # bytes read from and written to block devices
    io_write: int = 0


def locate(parent: str, container_id: str, root: str = CGROUP_ROOT) -> Cgroup:
    """The cgroup runc gives ``container_id`` under ``parent`` on this host."""
    relative = os.path.join(parent.strip("/"), container_id)
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        return Cgroup(2, {"": os.path.join(root, relative)})
    dirs = {c: os.path.join(root, c, relative) for c in _V1_CONTROLLERS}
    return Cgroup(1, dirs)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _int(text: str | None) -> int:
    text = (text or "").strip()
    return int(text) if text.isdigit() else 0


def _keyed(text: str | None) -> dict[str, int]:
    """``key value`` lines (``cpu.stat``, ``memory.stat``)."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def _limit(text: str | None) -> int:
    value = _int(text)
    return 0 if value == 0 or value >= UNLIMITED // 2 else value


def _io(cg: Cgroup) -> tuple[int, int]:
    """Bytes read and written: v2's ``io.stat`` (``rbytes=``/``wbytes=`` per device), v1's
    ``blkio.throttle.io_service_bytes_recursive`` (``MAJ:MIN Read|Write N``)."""
    read = write = 0
    if cg.version == 2:
        for line in (_read(cg.path("io", "io.stat")) or "").splitlines():
            for field_ in line.split()[1:]:
                key, _, value = field_.partition("=")
                if value.isdigit():
                    read += int(value) if key == "rbytes" else 0
                    write += int(value) if key == "wbytes" else 0
        return read, write
    for line in (_read(cg.path("blkio", "blkio.throttle.io_service_bytes_recursive")) or "").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit():
            read += int(parts[2]) if parts[1] == "Read" else 0
            write += int(parts[2]) if parts[1] == "Write" else 0
    return read, write


def read_stats(cg: Cgroup) -> CgroupStats:
    """CPU, memory and pids counters; a file that is missing (a controller not enabled, a
    container that just exited) reads as 0."""
    if cg.version == 2:
        cpu_ns = _keyed(_read(cg.path("cpu", "cpu.stat"))).get("usage_usec", 0) * 1000
        usage = _int(_read(cg.path("memory", "memory.current")))
        limit = _limit(_read(cg.path("memory", "memory.max")))
    else:
        cpu_ns = _int(_read(cg.path("cpuacct", "cpuacct.usage")))
        usage = _int(_read(cg.path("memory", "memory.usage_in_bytes")))
        limit = _limit(_read(cg.path("memory", "memory.limit_in_bytes")))
    io_read, io_write = _io(cg)
    return CgroupStats(
        io_read=io_read,
        io_write=io_write,
        cpu_ns=cpu_ns,
        memory_usage=usage,
        memory_limit=limit,
        memory_stat=_keyed(_read(cg.path("memory", "memory.stat"))),
        pids=_int(_read(cg.path("pids", "pids.current"))),
        pids_limit=_limit(_read(cg.path("pids", "pids.max"))),
    )


def procs(cg: Cgroup) -> list[int]:
    """The pids in the cgroup (``cgroup.procs``; the ``pids`` hierarchy's on v1), sorted."""
    text = _read(cg.path("pids", "cgroup.procs"))
    return sorted(int(p) for p in (text or "").split() if p.isdigit())


def system_cpu_ns(stat_path: str = "/proc/stat") -> int:
    """The host's CPU time so far in ns (moby's ``system_cpu_usage``: the sum of the ``cpu``
    line's fields, in clock ticks, converted)."""
    text = _read(stat_path) or ""
    for line in text.splitlines():
        if line.startswith("cpu "):
            ticks = sum(int(v) for v in line.split()[1:8] if v.isdigit())
            return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    return 0


def host_memory() -> int:
    """Total host memory in bytes (the limit Docker shows for an unlimited container)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def tree_size(path: str) -> int:
    """Bytes in the files under ``path`` (a container's own layer), hard links once."""
    total, seen = 0, set()
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def parse_ps(output: str, pids: list[int]) -> tuple[list[str], list[list[str]]]:
    """moby's ``parsePSOutput``: the header's words are the titles; each line is split into
    as many fields, the last one keeping its spaces (the command); lines whose PID is not
    one of ``pids`` are dropped."""
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines:
        raise RuntimeFailure("ps printed nothing")
    titles = lines[0].split()
    if "PID" not in titles:
        raise RuntimeFailure("Couldn't find PID field in ps output")
    at, wanted = titles.index("PID"), set(pids)
    processes = []
    for line in lines[1:]:
        fields = line.split(None, len(titles) - 1)
        try:
            pid = int(fields[at])
        except (IndexError, ValueError):
            raise RuntimeFailure(f"Unexpected pid '{fields[at] if at < len(fields) else ''}'") from None
        if pid in wanted:
            processes.append(fields)
    return titles, processes


async def top(pids: list[int], ps_args: str, ps: str = "ps") -> tuple[list[str], list[list[str]]]:
    """The host's ``ps`` with ``ps_args`` (``-ef`` when empty), asked for ``pids`` only with
    ``-q`` and, as moby does, run again without it when the arguments refuse ``-q``."""
    args = ps_args.split() or ["-ef"]
    attempts = [[*args, "-q", ",".join(map(str, pids))], args] if pids else [args]
    message = ""
    for argv in attempts:
        try:
            proc = await asyncio.create_subprocess_exec(
                ps,
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise RuntimeFailure(f"cannot run {ps}: {exc.strerror}") from exc
        out, err = await proc.communicate()
        if proc.returncode == 0:
            return parse_ps(out.decode(errors="replace"), pids)
        message = err.decode(errors="replace").strip().splitlines()[0] if err.strip() else ""
    raise InvalidArgument(message or f"ps {ps_args} failed")
