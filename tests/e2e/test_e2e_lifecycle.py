"""Container lifecycle as Docker keeps it, against a real cnmd and real containers:

- ``network disconnect`` of a created container keeps its network mode (Compose's sequence
  create on A / disconnect A / connect A with aliases / start / connect B leaves A and B);
- a failed ``run`` leaves nothing (no container with ``--rm``, no endpoint, address, veth
  or rule), and Docker's create-time checks fail the create;
- what cnm does not implement is refused; bind mounts, tmpfs and restart policies work.
"""

from __future__ import annotations

import json
import shutil
import signal

import pytest
from e2e_util import (
    cexec,
    daemon_state,
    diff_states,
    inspect,
    ip_on,
    kernel_state,
    network_inspect,
    run_sleeper,
)
from harness import TestHost, wait_for


@pytest.fixture(scope="module")
def world(cnmhost: TestHost) -> TestHost:
    cnmhost.cnm("network", "create", "--subnet", "10.41.0.0/24", "lca")
    cnmhost.cnm("network", "create", "--subnet", "10.42.0.0/24", "lcb")
    run_sleeper(cnmhost, "holder", "-p", "18080:80")  # holds host port 18080
    return cnmhost


def interfaces(host: TestHost, name: str) -> dict[str, list[str]]:
    """ifname -> IPv4 addresses, read inside the container."""
    out: dict[str, list[str]] = {}
    for line in cexec(host, name, "ip", "-o", "-4", "addr", "show").stdout.splitlines():
        fields = line.split()
        out.setdefault(fields[1], []).append(fields[3])
    links = cexec(host, name, "ip", "-o", "link", "show").stdout.splitlines()
    for line in links:
        out.setdefault(line.split(":")[1].strip().split("@")[0], [])
    return out


def state(host: TestHost) -> dict:
    return {**kernel_state(host), **daemon_state(host)}


def network_members(host: TestHost, *names: str) -> dict[str, list[str]]:
    return {n: sorted((network_inspect(host, n).get("Containers") or {}).keys()) for n in names}


# -- network state ---------------------------------------------------------------------------


def test_compose_sequence_leaves_a_and_b_only(world: TestHost) -> None:
    host = world
    host.cnm("create", "--name", "cmp", "--network", "lca", "busybox", "sleep", "1d")
    host.cnm("network", "disconnect", "lca", "cmp")
    created = inspect(host, "cmp")[0]
    assert created["HostConfig"]["NetworkMode"] == "lca"  # never "none"
    assert created["NetworkSettings"]["Networks"] == {}
    host.cnm("network", "connect", "--alias", "api", "lca", "cmp")
    host.cnm("start", "cmp")
    host.cnm("network", "connect", "lcb", "cmp")
    try:
        data = inspect(host, "cmp")[0]
        assert data["HostConfig"]["NetworkMode"] == "lca"
        nets = data["NetworkSettings"]["Networks"]
        assert sorted(nets) == ["lca", "lcb"]
        assert "api" in nets["lca"]["Aliases"]
        ifaces = interfaces(host, "cmp")
        assert sorted(ifaces) == ["eth0", "eth1", "lo"], ifaces
        assert ifaces["eth0"] == [f"{nets['lca']['IPAddress']}/24"]
        assert ifaces["eth1"] == [f"{nets['lcb']['IPAddress']}/24"]
        # the alias answers on A
        run_sleeper(host, "cmp-client", "--network", "lca")
        answer = cexec(host, "cmp-client", "nslookup", "api", "127.0.0.11").stdout
        assert nets["lca"]["IPAddress"] in answer, answer
    finally:
        host.cnm("rm", "-f", "cmp", "cmp-client", check=False)


def test_created_container_disconnected_from_its_network_starts_on_none_of_them(world: TestHost) -> None:
    host = world
    host.cnm("create", "--name", "bare", "--network", "lca", "busybox", "sleep", "1d")
    try:
        host.cnm("network", "disconnect", "lca", "bare")
        host.cnm("start", "bare")
        data = inspect(host, "bare")[0]
        assert data["HostConfig"]["NetworkMode"] == "lca"
        assert data["NetworkSettings"]["Networks"] == {}
        assert sorted(interfaces(host, "bare")) == ["lo"]
        assert network_members(host, "lca")["lca"] == []
    finally:
        host.cnm("rm", "-f", "bare", check=False)


COMPOSE_FILE = """\
version: "3.7"
services:
  web:
    image: busybox
    command: ["sleep", "1d"]
    networks:
      front:
        aliases: [api]
      back: {}
  client:
    image: busybox
    command: ["sleep", "1d"]
    networks: [front]
networks:
  front: {}
  back: {}
"""


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_up_leaves_web_on_its_two_networks(world: TestHost) -> None:
    """The real Compose (v1, docker-py) creates each container on one network, then
    disconnects and reconnects it with its aliases before start."""
    host = world
    project = host.tmp / "compose"
    project.mkdir(exist_ok=True)
    (project / "docker-compose.yml").write_text(COMPOSE_FILE)
    env = {"DOCKER_HOST": f"unix://{host.socket_path}", "DOCKER_CONFIG": str(project / "cfg")}
    compose = [
        shutil.which("docker-compose") or "docker-compose",
        "-f",
        str(project / "docker-compose.yml"),
        "-p",
        "lc",
    ]
    host.run([*compose, "up", "-d"], env=env, timeout=120)
    try:
        data = inspect(host, "lc_web_1")[0]
        nets = data["NetworkSettings"]["Networks"]
        assert sorted(nets) == ["lc_back", "lc_front"], json.dumps(nets)
        assert data["HostConfig"]["NetworkMode"] in ("lc_back", "lc_front")
        assert "api" in nets["lc_front"]["Aliases"]
        ifaces = interfaces(host, "lc_web_1")
        assert sorted(ifaces) == ["eth0", "eth1", "lo"], ifaces
        assert sorted(a for v in ifaces.values() for a in v if not a.startswith("127.")) == sorted(
            f"{n['IPAddress']}/{n['IPPrefixLen']}" for n in nets.values()
        )
        answer = cexec(host, "lc_client_1", "nslookup", "api", "127.0.0.11").stdout
        assert nets["lc_front"]["IPAddress"] in answer, answer
    finally:
        host.run([*compose, "down"], env=env, timeout=120, check=False)


# -- failed runs leave nothing -------------------------------------------------------------------

# (argv, words of which one must be in the error, exit status); every one leaves nothing.
FAILED_RUNS = {
    "unknown-network": (
        ["run", "-d", "--network", "nosuchnet", "busybox", "sleep", "1d"],
        ["not found"],
        125,
    ),
    "missing-executable": (["run", "--rm", "busybox", "/nope"], ["no such file", "not found"], 127),
    "port-conflict": (
        [
            "run",
            "--rm",
            "-d",
            "--network",
            "lca",
            "--ip",
            "10.41.0.77",
            "-p",
            "18080:80",
            "busybox",
            "sleep",
            "1d",
        ],
        ["18080"],
        125,
    ),
    "ip-outside-subnet": (
        ["run", "-d", "--network", "lca", "--ip", "10.99.0.5", "busybox", "sleep", "1d"],
        ["10.99.0.5"],
        125,
    ),
    "ip-on-default-bridge": (
        ["run", "-d", "--ip", "172.17.0.77", "busybox", "sleep", "1d"],
        ["user defined networks only"],
        125,
    ),
    "no-command": (["run", "--rm", "busybox"], ["no command specified"], 125),
}


@pytest.mark.parametrize("case", sorted(FAILED_RUNS))
def test_failed_run_leaves_nothing(world: TestHost, case: str) -> None:
    argv, words, status = FAILED_RUNS[case]
    before = state(world)
    members = network_members(world, "lca", "bridge")
    proc = world.cnm(*argv, check=False)
    message = (proc.stderr + proc.stdout).lower()
    assert proc.returncode == status, (proc.returncode, proc.stderr)
    assert any(w in message for w in words), proc.stderr
    assert "traceback" not in message
    assert wait_for(lambda: diff_states(before, state(world)) == {}, timeout=10), diff_states(
        before, state(world)
    )
    assert network_members(world, "lca", "bridge") == members


def test_address_of_a_failed_run_is_free_again(world: TestHost) -> None:
    host = world
    failed = host.cnm(
        "run",
        "--rm",
        "-d",
        "--network",
        "lca",
        "--ip",
        "10.41.0.88",
        "-p",
        "18080:80",
        "busybox",
        "sleep",
        "1d",
        check=False,
    )
    assert failed.returncode != 0
    run_sleeper(host, "takes-ip", "--network", "lca", "--ip", "10.41.0.88")
    try:
        assert ip_on(host, "takes-ip", "lca") == "10.41.0.88"
    finally:
        host.cnm("rm", "-f", "takes-ip")


def test_failed_start_without_rm_keeps_a_created_container_and_no_network_state(world: TestHost) -> None:
    """Docker leaves such a container "Created", with the error; nothing of its network."""
    host = world
    before = kernel_state(host)
    proc = host.cnm(
        "run", "-d", "--name", "conflict", "-p", "18080:80", "busybox", "sleep", "1d", check=False
    )
    try:
        assert proc.returncode == 125
        data = inspect(host, "conflict")[0]
        assert data["State"]["Status"] == "created"
        assert "18080" in data["State"]["Error"]
        after = kernel_state(host)
        assert diff_states(before, after).keys() <= {"files"}  # the record's own directory only
        assert all(
            p.startswith(f"data/containers/{data['Id']}")
            for p in diff_states(before, after).get("files", {}).get("+", [])
        )
    finally:
        host.cnm("rm", "-f", "conflict", check=False)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--network", "nosuchnet"], ["network nosuchnet not found"]),
        (["--ip", "172.17.0.9"], ["user specified ip address is supported on user defined networks only"]),
        (["--network", "lca", "--ip", "10.99.0.9"], ["10.99.0.9"]),
    ],
    ids=["unknown-network", "ip-on-default-bridge", "ip-outside-subnet"],
)
def test_create_time_checks(world: TestHost, argv: list[str], words: list[str]) -> None:
    before = daemon_state(world)
    proc = world.cnm("create", *argv, "busybox", "sleep", "1d", check=False)
    assert proc.returncode == 125
    assert any(w in proc.stderr.lower() for w in words), proc.stderr
    assert daemon_state(world) == before


# -- refused, not ignored ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--privileged"], ["--privileged", "not supported"]),
        (["-v", "myvolume:/data"], ["named volumes are not supported"]),
        (["-v", "/data"], ["anonymous volume"]),
        (["--mount", "type=volume,src=v,dst=/data"], ["volumes are not supported"]),
        (["--mount", "type=bind,src=/nonexistent-cnm-path,dst=/data"], ["bind source path does not exist"]),
        (["--restart", "sometimes"], ["unknown policy"]),
        (["--rm", "--restart", "always"], ["cannot specify both --restart and --rm"]),
    ],
    ids=[
        "privileged",
        "named-volume",
        "anonymous-volume",
        "mount-volume",
        "mount-missing-source",
        "unknown-restart-policy",
        "rm-and-restart",
    ],
)
def test_unsupported_options_are_refused(world: TestHost, argv: list[str], words: list[str]) -> None:
    before = daemon_state(world)
    proc = world.cnm("run", "-d", *argv, "busybox", "sleep", "1d", check=False)
    assert proc.returncode == 125, proc.stdout
    for word in words:
        assert word.lower() in proc.stderr.lower(), proc.stderr
    assert daemon_state(world) == before


@pytest.mark.parametrize(
    ("field", "value"),
    [("Memory", 1 << 20), ("CapAdd", ["NET_ADMIN"]), ("Sysctls", {"net.ipv4.ip_forward": "1"})],
)
def test_api_refuses_unsupported_host_config(world: TestHost, field: str, value: object) -> None:
    before = daemon_state(world)
    body = {"Image": "busybox", "Cmd": ["true"], "HostConfig": {field: value}}
    resp = world.api("POST", "/containers/create", body)
    assert resp.status == 400 and f"HostConfig.{field}" in resp.message, (resp.status, resp.message)
    assert daemon_state(world) == before


# -- mounts ------------------------------------------------------------------------------------------


def test_bind_mounts_and_tmpfs(world: TestHost) -> None:
    host = world
    src = host.tmp / "bind-src"
    src.mkdir(exist_ok=True)
    (src / "hello").write_text("from the host\n")
    out = host.cnm("run", "--rm", "-v", f"{src}:/host:ro", "busybox", "cat", "/host/hello").stdout
    assert out == "from the host\n"
    denied = host.cnm("run", "--rm", "-v", f"{src}:/host:ro", "busybox", "touch", "/host/x", check=False)
    assert denied.returncode != 0 and "read-only" in denied.stderr.lower() + denied.stdout.lower()
    host.cnm(
        "run",
        "--rm",
        "--mount",
        f"type=bind,source={src},target=/rw",
        "busybox",
        "sh",
        "-c",
        "echo written > /rw/out",
    )
    assert (src / "out").read_text() == "written\n"
    created = host.tmp / "made-by-v" / "deep"
    assert not created.exists()
    host.cnm("run", "--rm", "-v", f"{created}:/made", "busybox", "true")
    assert created.is_dir()  # -v creates a missing host path, as Docker does
    mounts = host.cnm(
        "run", "--rm", "--tmpfs", "/scratch:size=1m", "busybox", "grep", " /scratch ", "/proc/mounts"
    ).stdout
    assert mounts.startswith("tmpfs /scratch tmpfs") and "size=1024k" in mounts, mounts

    run_sleeper(
        host, "mnt", "-v", f"{src}:/host:ro", "--mount", f"type=bind,src={src},dst=/rw", "--tmpfs", "/scratch"
    )
    try:
        data = inspect(host, "mnt")[0]
        assert data["HostConfig"]["Binds"] == [f"{src}:/host:ro"]
        assert data["HostConfig"]["Mounts"] == [{"Type": "bind", "Source": str(src), "Target": "/rw"}]
        assert data["HostConfig"]["Tmpfs"] == {"/scratch": ""}
        assert data["Mounts"] == [
            {
                "Type": "bind",
                "Source": str(src),
                "Destination": "/host",
                "Mode": "ro",
                "RW": False,
                "Propagation": "rprivate",
            },
            {
                "Type": "bind",
                "Source": str(src),
                "Destination": "/rw",
                "Mode": "",
                "RW": True,
                "Propagation": "rprivate",
            },
        ]
    finally:
        host.cnm("rm", "-f", "mnt")


# -- restart policies ---------------------------------------------------------------------------------


def restart_state(host: TestHost, name: str) -> tuple[str, int]:
    data = inspect(host, name)[0]
    return data["State"]["Status"], data["RestartCount"]


def test_on_failure_restarts_up_to_its_limit(world: TestHost) -> None:
    host = world
    host.cnm("run", "-d", "--name", "flaky", "--restart", "on-failure:2", "busybox", "sh", "-c", "exit 3")
    try:
        assert wait_for(lambda: restart_state(host, "flaky") == ("exited", 2), timeout=30), restart_state(
            host, "flaky"
        )
        data = inspect(host, "flaky")[0]
        assert data["State"]["ExitCode"] == 3
        assert data["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
    finally:
        host.cnm("rm", "-f", "flaky")


def test_always_restarts_until_stopped(world: TestHost) -> None:
    host = world
    host.cnm(
        "run", "-d", "--name", "phoenix", "--network", "lca", "--restart", "always", "busybox", "sleep", "0.3"
    )
    try:
        assert wait_for(lambda: restart_state(host, "phoenix")[1] >= 2, timeout=30), restart_state(
            host, "phoenix"
        )
        host.cnm("stop", "-t", "0", "phoenix")
        count = restart_state(host, "phoenix")[1]
        assert not wait_for(lambda: restart_state(host, "phoenix")[0] != "exited", timeout=2)
        assert restart_state(host, "phoenix") == ("exited", count)
        assert inspect(host, "phoenix")[0]["Id"] not in network_members(host, "lca")["lca"]
    finally:
        host.cnm("rm", "-f", "phoenix")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_policies_kept_across_a_daemon_restart(fresh_cnmhost: TestHost, sig: int) -> None:
    host = fresh_cnmhost
    host.cnm("network", "create", "--subnet", "10.43.0.0/24", "lcr")
    for name, policy in (
        ("always", "always"),
        ("unless", "unless-stopped"),
        ("stopped", "unless-stopped"),
        ("plain", "no"),
    ):
        run_sleeper(host, name, "--network", "lcr", "--restart", policy)
    host.cnm("stop", "-t", "0", "stopped")
    pids = {n: inspect(host, n)[0]["State"]["Pid"] for n in ("always", "unless", "plain")}
    host.kill_daemon(sig)
    for pid in pids.values():  # they die while nobody watches
        host.run(["kill", "-9", str(pid)])
    host.start_daemon()
    assert wait_for(
        lambda: (
            restart_state(host, "always")[0] == "running" and restart_state(host, "unless")[0] == "running"
        ),
        timeout=30,
    )
    assert not wait_for(lambda: restart_state(host, "stopped")[0] != "exited", timeout=2)
    assert restart_state(host, "plain")[0] == "exited"
    # back on their network, reachable by name
    ip = ip_on(host, "always", "lcr")
    assert ip.startswith("10.43.0.")
    answer = cexec(host, "unless", "nslookup", "always", "127.0.0.11").stdout
    assert ip in answer, answer


def test_unknown_network_at_create_is_not_a_404(world: TestHost) -> None:
    """A 404 from create makes the docker CLI try to pull the image (and print the pull's
    error instead of this one)."""
    body = {"Image": "busybox", "Cmd": ["true"], "HostConfig": {"NetworkMode": "nosuchnet"}}
    resp = world.api("POST", "/containers/create", body)
    assert resp.status == 400 and "network nosuchnet not found" in resp.message, (resp.status, resp.message)
