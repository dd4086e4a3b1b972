"""``cnm stats``: Docker's live table of containers' CPU, memory, network and pids."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from cnm.cli import flags as F
from cnm.cli.client import quote
from cnm.cli.context import Cli
from cnm.cli.errors import CliError, DaemonError
from cnm.cli.format import bytes_size, human_size

STATS = F.Command(
    "cnm stats",
    "[CONTAINER...]",
    "Display a live stream of container(s) resource usage statistics",
    [
        F.flag("-a", "--all", kind=F.BOOL, help="Show all containers (default shows just running)"),
        F.flag("--format", help="Format output using a custom template"),
        F.flag("--no-stream", kind=F.BOOL, help="Disable streaming stats and only pull the first result"),
        F.flag("--no-trunc", kind=F.BOOL, help="Do not truncate output"),
    ],
)

DEFAULT_TABLE = (
    "table {{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t{{.NetIO}}\t{{.BlockIO}}\t{{.PIDs}}"
)
HEADERS = {
    "ID": "CONTAINER ID",
    "Container": "CONTAINER",
    "Name": "NAME",
    "CPUPerc": "CPU %",
    "MemUsage": "MEM USAGE / LIMIT",
    "MemPerc": "MEM %",
    "NetIO": "NET I/O",
    "BlockIO": "BLOCK I/O",
    "PIDs": "PIDS",
}


def cpu_percent(cpu: dict, pre: dict) -> float:
    """The Docker CLI's ``calculateCPUPercentUnix``: the container's share of the host's CPU
    time between two readings, times the number of CPUs."""
    cpu_delta = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - (pre.get("cpu_usage") or {}).get(
        "total_usage", 0
    )
    system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    cpus = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or ()) or 1
    if system_delta > 0 and cpu_delta > 0:
        return float(cpu_delta / system_delta * cpus * 100.0)
    return 0.0


def memory_usage(mem: dict) -> float:
    """Usage without the page cache that can be reclaimed, as the Docker CLI shows it
    (``total_inactive_file`` on cgroup v1, ``inactive_file`` on v2)."""
    usage = mem.get("usage", 0)
    stats = mem.get("stats") or {}
    inactive = stats.get("total_inactive_file", stats.get("inactive_file", 0))
    return float(usage - inactive if inactive < usage else usage)


def row(stats: dict, pre_cpu: dict | None, no_trunc: bool) -> dict[str, str]:
    """One line of the table from a ``/stats`` reading (``pre_cpu`` overrides its
    ``precpu_stats``: the previous reading of a stream)."""
    cid = stats.get("id", "")
    name = (stats.get("name") or "").lstrip("/")
    mem = stats.get("memory_stats") or {}
    nets = (stats.get("networks") or {}).values()
    rx = sum(n.get("rx_bytes", 0) for n in nets)
    tx = sum(n.get("tx_bytes", 0) for n in nets)
    blk_read = blk_write = 0
    for entry in (stats.get("blkio_stats") or {}).get("io_service_bytes_recursive") or ():
        op = str(entry.get("op", "")).lower()
        if op == "read":
            blk_read += entry.get("value", 0)
        elif op == "write":
            blk_write += entry.get("value", 0)
    running = bool(mem)
    usage, limit = memory_usage(mem), mem.get("limit", 0)
    cpu = cpu_percent(
        stats.get("cpu_stats") or {}, pre_cpu if pre_cpu is not None else stats.get("precpu_stats") or {}
    )
    return {
        "ID": cid if no_trunc else cid[:12],
        "Container": name,
        "Name": name,
        "CPUPerc": f"{cpu:.2f}%" if running else "--",
        "MemUsage": f"{bytes_size(usage)} / {bytes_size(limit)}" if running else "-- / --",
        "MemPerc": f"{(usage / limit * 100.0 if limit else 0.0):.2f}%" if running else "--",
        "NetIO": f"{human_size(rx, 3)} / {human_size(tx, 3)}" if running else "--",
        "BlockIO": f"{human_size(blk_read, 3)} / {human_size(blk_write, 3)}" if running else "--",
        "PIDs": str((stats.get("pids_stats") or {}).get("current", 0)) if running else "--",
    }


def cmd_stats(cli: Cli, argv: list[str]) -> int:
    from cnm.cli.listing import render

    v, names, _ = F.parse(STATS, argv)
    fmt = v["format"] or ""
    explicit = bool(names)
    if not explicit:
        query = {"all": "1"} if v["all"] else None
        names = [c["Id"] for c in cli.client.call("GET", "/containers/json", query) or []]
    one_shot = not v["no_stream"]  # a stream computes CPU % from its own previous reading

    def read(name: str) -> dict | DaemonError:
        query = {"stream": "0", "one-shot": "1" if one_shot else None}
        try:
            return cli.client.call("GET", f"/containers/{quote(name)}/stats", query) or {}
        except DaemonError as exc:
            return exc

    previous: dict[str, dict] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(names)))) as pool:
        while True:
            readings = list(pool.map(read, names))
            errors = [r for r in readings if isinstance(r, DaemonError)]
            if errors and explicit:
                raise CliError(str(errors[0]))
            rows = []
            for reading in readings:
                if isinstance(reading, DaemonError):
                    continue
                rid = reading.get("id", "")
                rows.append(row(reading, previous.get(rid) if one_shot else None, v["no_trunc"]))
                previous[rid] = reading.get("cpu_stats") or {}
            text = render(rows, fmt, DEFAULT_TABLE, HEADERS)
            if v["no_stream"]:
                cli.out(text)
                return 0
            cli.out("\x1b[2J\x1b[H" + text)  # Docker redraws the screen each second
            cli.flush()
            time.sleep(1.0)
