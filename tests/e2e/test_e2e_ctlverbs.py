"""pause/unpause, top, stats, container prune and ``rm --link`` against cnmd in a throwaway
host, through the docker CLI 28 and cnm."""

from __future__ import annotations

import json
import os

import pytest
from e2e_util import inspect, ip_on, run_sleeper
from harness import TestHost

DOCKER = "/usr/local/bin/docker"

needs_docker = pytest.mark.skipif(
    not os.path.exists(DOCKER), reason=f"{DOCKER} (docker CLI 28) not installed"
)


def docker(host: TestHost, *args: str, check: bool = True):
    env = {"DOCKER_HOST": host.host_uri, "DOCKER_CONFIG": str(host.tmp / "docker-config")}
    return host.run([DOCKER, *args], check=check, timeout=120, env=env)


def _parse_size(text: str) -> float:
    units = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    raise AssertionError(f"not a size: {text!r}")


@needs_docker
def test_docker_stats_shows_traffic_between_two_containers(cnmhost: TestHost):
    cnmhost.cnm("network", "create", "statsnet")
    run_sleeper(cnmhost, "st-a", "--network", "statsnet")
    run_sleeper(cnmhost, "st-b", "--network", "statsnet")
    target = ip_on(cnmhost, "st-b", "statsnet")
    before = json.loads(docker(cnmhost, "stats", "--no-stream", "--format", "{{json .}}", "st-a").stdout)
    # ~1.4 MB from st-a to st-b: 1000 pings of 1400 bytes
    cnmhost.cnm(
        "exec", "st-a", "ping", "-q", "-A", "-c", "1000", "-s", "1400", "-w", "60", target, timeout=120
    )
    table = docker(cnmhost, "stats", "--no-stream", "st-a", "st-b").stdout.splitlines()
    assert table[0].split() == [
        "CONTAINER", "ID", "NAME", "CPU", "%", "MEM", "USAGE", "/", "LIMIT", "MEM", "%",
        "NET", "I/O", "BLOCK", "I/O", "PIDS",
    ]  # fmt: skip
    rows = {line.split()[1]: line for line in table[1:]}
    assert set(rows) == {"st-a", "st-b"}
    after = json.loads(docker(cnmhost, "stats", "--no-stream", "--format", "{{json .}}", "st-a").stdout)
    rx_before, tx_before = (_parse_size(p.strip()) for p in before["NetIO"].split("/"))
    rx, tx = (_parse_size(p.strip()) for p in after["NetIO"].split("/"))
    assert tx - tx_before > 1_000_000 and rx - rx_before > 1_000_000  # the echo replies come back
    assert after["PIDs"] == "1" and after["MemUsage"].split("/")[0].strip() != "0B"
    raw = json.loads(cnmhost.api("GET", "/containers/st-b/stats?stream=false").body)
    assert set(raw["networks"]) == {"eth0"} and raw["networks"]["eth0"]["rx_packets"] >= 1000
    assert raw["cpu_stats"]["cpu_usage"]["total_usage"] > 0 and raw["memory_stats"]["usage"] > 0
    assert raw["precpu_stats"]["system_cpu_usage"] > 0
    env = {"DOCKER_HOST": cnmhost.host_uri, "DOCKER_CONFIG": str(cnmhost.tmp / "docker-config")}
    streamed = cnmhost.run(
        ["timeout", "-s", "KILL", "5", DOCKER, "stats", "--format", "{{.Name}} {{.PIDs}}", "st-b"],
        check=False,
        env=env,
    ).stdout
    assert streamed.count("st-b 1") >= 2, streamed  # a stream: a reading a second until the client leaves
    cnm_table = cnmhost.cnm("stats", "--no-stream", "st-a").stdout.splitlines()
    assert cnm_table[0].startswith("CONTAINER ID") and "st-a" in cnm_table[1]
    cnmhost.cnm("rm", "-f", "st-a", "st-b")
    cnmhost.cnm("network", "rm", "statsnet")


@needs_docker
def test_docker_top_pause_unpause(cnmhost: TestHost):
    run_sleeper(cnmhost, "tp", cmd=("sh", "-c", "sleep 1d & sleep 2d; exit 0"))
    top = docker(cnmhost, "top", "tp").stdout.splitlines()
    assert top[0].split()[:3] == ["UID", "PID", "PPID"]
    cmds = sorted(line.split(None, 7)[-1] for line in top[1:])
    assert cmds == ["sh -c sleep 1d & sleep 2d; exit 0", "sleep 1d", "sleep 2d"]
    aux = cnmhost.cnm("top", "tp", "-o", "pid,comm").stdout.splitlines()
    assert aux[0].split() == ["PID", "COMMAND"] and sorted(line.split()[1] for line in aux[1:]) == [
        "sh",
        "sleep",
        "sleep",
    ]
    docker(cnmhost, "pause", "tp")
    state = inspect(cnmhost, "tp")[0]["State"]
    assert (state["Status"], state["Running"], state["Paused"]) == ("paused", True, True)
    assert "(Paused)" in docker(cnmhost, "ps", "--filter", "name=tp", "--format", "{{.Status}}").stdout
    cid = inspect(cnmhost, "tp")[0]["Id"]
    v1 = f"/sys/fs/cgroup/freezer/{cnmhost.cgroup_parent}/{cid}/freezer.state"
    v2 = f"/sys/fs/cgroup/{cnmhost.cgroup_parent}/{cid}/cgroup.freeze"
    frozen = cnmhost.sh(f"cat {v1} 2>/dev/null || cat {v2}").stdout.strip()
    assert frozen in ("FROZEN", "1")
    refused = docker(cnmhost, "exec", "tp", "true", check=False)
    assert refused.returncode != 0 and "is paused, unpause the container before exec" in refused.stderr
    docker(cnmhost, "unpause", "tp")
    assert inspect(cnmhost, "tp")[0]["State"]["Status"] == "running"
    docker(cnmhost, "exec", "tp", "true")
    docker(cnmhost, "pause", "tp")
    docker(cnmhost, "kill", "tp")  # a paused container can be killed
    assert docker(cnmhost, "wait", "tp").stdout.strip() == "137"
    state = inspect(cnmhost, "tp")[0]["State"]
    assert (state["Status"], state["Paused"]) == ("exited", False)
    run_sleeper(cnmhost, "tp2")
    docker(cnmhost, "pause", "tp2")
    docker(cnmhost, "stop", "-t", "1", "tp2")  # stop unpauses first
    assert inspect(cnmhost, "tp2")[0]["State"]["Status"] == "exited"
    cnmhost.cnm("rm", "tp", "tp2")


@needs_docker
def test_container_prune_and_rm_link(cnmhost: TestHost):
    run_sleeper(cnmhost, "lk-db")
    run_sleeper(cnmhost, "lk-web", "--link", "lk-db:db")
    hosts = cnmhost.cnm("exec", "lk-web", "cat", "/etc/hosts").stdout
    assert "\tdb" in hosts or " db" in hosts
    docker(cnmhost, "rm", "--link", "/lk-web/db")
    hosts = cnmhost.cnm("exec", "lk-web", "cat", "/etc/hosts").stdout
    assert " db" not in hosts and "\tdb" not in hosts
    assert inspect(cnmhost, "lk-web")[0]["HostConfig"]["Links"] in (None, [])
    assert inspect(cnmhost, "lk-db")[0]["State"]["Running"]
    cnmhost.cnm("create", "--name", "pr-old", "--label", "keep=no", "busybox", "true")
    cnmhost.cnm("create", "--name", "pr-kept", "--label", "keep=yes", "busybox", "true")
    out = docker(cnmhost, "container", "prune", "-f", "--filter", "label=keep=no").stdout
    assert out.startswith("Deleted Containers:\n") and "Total reclaimed space:" in out
    names = set(cnmhost.cnm("ps", "-a", "--format", "{{.Names}}").stdout.split())
    assert "pr-old" not in names and {"pr-kept", "lk-web", "lk-db"} <= names
    out = cnmhost.cnm("container", "prune", "-f").stdout
    assert "Total reclaimed space:" in out
    names = set(cnmhost.cnm("ps", "-a", "--format", "{{.Names}}").stdout.split())
    assert names == {"lk-web", "lk-db"}  # running ones stay
    cnmhost.cnm("rm", "-f", "lk-web", "lk-db")


@needs_docker
def test_link_local_ips_on_the_interface_and_in_inspect(cnmhost: TestHost):
    cnmhost.cnm("network", "create", "llnet")
    out = docker(
        cnmhost, "run", "--rm", "--network", "llnet", "--link-local-ip", "169.254.10.10",
        "busybox", "ip", "-4", "-o", "addr", "show", "eth0",
    ).stdout  # fmt: skip
    assert "inet 169.254.10.10/16" in out and "inet 172." in out
    run_sleeper(cnmhost, "llc", "--network", "llnet", "--link-local-ip", "169.254.10.11")
    settings = inspect(cnmhost, "llc")[0]["NetworkSettings"]["Networks"]["llnet"]
    assert settings["IPAMConfig"]["LinkLocalIPs"] == ["169.254.10.11"]
    assert "169.254.10.11/16" in cnmhost.cnm("exec", "llc", "ip", "-4", "-o", "addr", "show", "eth0").stdout
    bad = docker(
        cnmhost,
        "run",
        "--rm",
        "--network",
        "llnet",
        "--link-local-ip",
        "nope",
        "busybox",
        "true",
        check=False,
    )
    assert bad.returncode != 0 and "invalid link-local IP address" in bad.stderr
    cnmhost.cnm("rm", "-f", "llc")
    cnmhost.cnm("network", "rm", "llnet")
