"""Docker Compose 1.29 (Debian's ``docker-compose``, docker-py underneath) against cnmd in a
throwaway host, one project through its whole life, each step checked in the containers:

``up -d`` of two networks, aliases, ``depends_on``, a published port and a service on both
networks; ``ps``; ``port``; ``exec -T`` by service name, reaching other services by alias only
over a shared network; ``logs``; ``top``; ``pause``/``unpause``; ``restart``;
``kill``/``start``; ``images``; ``pull`` (refused, with how to bring an image); ``run --rm``;
``up -d --force-recreate``;
``up -d --scale api=3`` (DNS round robin over the replicas); ``docker network connect`` of a
service container to a third network; ``stop``; ``down`` (nothing left: containers,
networks, veths, nft elements); ``up`` again.

The tests run in file order over one project (each step starts from the previous one).
``top`` (each service's processes) and ``pause``/``unpause`` (State, ``ps``, exec refused
while paused) run after ``logs``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from e2e_util import inspect, kernel_state
from harness import TestHost, wait_for

COMPOSE = shutil.which("docker-compose")
DOCKER = "/usr/local/bin/docker"
PROJECT = "shop"
WEB_PORT = 18081

pytestmark = pytest.mark.skipif(
    COMPOSE is None, reason="docker-compose is not installed (make clients-deps installs it)"
)

COMPOSE_FILE = f"""\
version: "2.4"
# Each command exits on SIGTERM (PID 1 has no default handler), so stop takes no grace period.
services:
  db:
    image: busybox
    command: ["sh", "-c", "echo db-ready; trap 'exit 0' TERM; sleep 1d & wait"]
    networks:
      back:
        aliases: [database]
  api:
    image: busybox
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 1d & wait"]
    depends_on: [db]
    networks:
      back: {{}}
      front:
        aliases: [backend]
  web:
    image: busybox
    command: ["sh", "-c", "mkdir -p /www && echo hello-from-web > /www/index.html && trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait"]
    depends_on: [api]
    ports: ["{WEB_PORT}:80"]
    networks:
      front:
        aliases: [www]
networks:
  back:
    ipam:
      config: [{{subnet: 10.51.0.0/24}}]
  front:
    ipam:
      config: [{{subnet: 10.52.0.0/24}}]
"""


class Project:
    """``docker-compose -p shop -f …`` inside the test host."""

    def __init__(self, host: TestHost, env: dict[str, str]) -> None:
        self.host = host
        self.env = env
        self.dir = host.tmp / "compose-project"
        self.dir.mkdir(exist_ok=True)
        self.file = self.dir / "docker-compose.yml"
        self.file.write_text(COMPOSE_FILE)

    def __call__(self, *args: str, check: bool = True, timeout: float = 180) -> Any:
        assert COMPOSE is not None
        argv = [COMPOSE, "--ansi", "never", "-p", PROJECT, "-f", str(self.file), *args]
        return self.host.run(argv, env=self.env, check=check, timeout=timeout)

    def docker(self, *args: str, check: bool = True) -> Any:
        return self.host.run([DOCKER, *args], env=self.env, check=check, timeout=120)

    def exec(self, service: str, *argv: str, check: bool = True) -> Any:
        return self("exec", "-T", service, *argv, check=check)


def nslookup_addresses(out: str) -> set[str]:
    """The IPv4 answers in busybox nslookup's output (the server's own line excluded)."""
    answer = out.split("Name:", 1)[1] if "Name:" in out else ""
    return set(re.findall(r"Address(?: \d+)?:\s*(\d+\.\d+\.\d+\.\d+)", answer))


def container(host: TestHost, name: str) -> dict[str, Any]:
    return inspect(host, name)[0]


def net_ip(host: TestHost, name: str, network: str) -> str:
    return container(host, name)["NetworkSettings"]["Networks"][network]["IPAddress"]


def project_containers(host: TestHost) -> list[str]:
    out = host.cnm("ps", "-a", "--format", "{{.Names}}").stdout.split()
    return sorted(n for n in out if n.startswith(f"{PROJECT}_"))


def project_networks(host: TestHost) -> list[str]:
    out = host.cnm("network", "ls", "--format", "{{.Name}}").stdout.split()
    return sorted(n for n in out if n.startswith(f"{PROJECT}_"))


@pytest.fixture(scope="module")
def baseline(clienthost: TestHost) -> dict[str, Any]:
    """The kernel before the project: ``down`` must bring it back to exactly this."""
    return kernel_state(clienthost)


@pytest.fixture(scope="module")
def project(clienthost: TestHost, client_env: dict[str, str], baseline: dict[str, Any]) -> Any:
    proj = Project(clienthost, client_env)
    yield proj
    proj("down", "--remove-orphans", check=False)
    proj.docker("network", "rm", "third", check=False)


def test_up_starts_in_dependency_order_on_their_networks(project: Project) -> None:
    out = project("up", "-d")
    text = out.stdout + out.stderr
    order = [text.find(f"Creating {PROJECT}_{s}_1") for s in ("db", "api", "web")]
    assert all(i >= 0 for i in order) and order == sorted(order), text  # depends_on
    host = project.host
    assert project_networks(host) == [f"{PROJECT}_back", f"{PROJECT}_front"]
    nets = {
        n: sorted(container(host, f"{PROJECT}_{n}_1")["NetworkSettings"]["Networks"])
        for n in ("db", "api", "web")
    }
    assert nets == {
        "db": [f"{PROJECT}_back"],
        "api": [f"{PROJECT}_back", f"{PROJECT}_front"],
        "web": [f"{PROJECT}_front"],
    }
    for svc in ("db", "api", "web"):
        assert container(host, f"{PROJECT}_{svc}_1")["State"]["Running"], svc
    assert net_ip(host, f"{PROJECT}_api_1", f"{PROJECT}_back").startswith("10.51.0.")
    assert net_ip(host, f"{PROJECT}_api_1", f"{PROJECT}_front").startswith("10.52.0.")


def test_ps_lists_the_services_up(project: Project) -> None:
    out = project("ps").stdout
    for svc in ("db", "api", "web"):
        line = next((ln for ln in out.splitlines() if ln.startswith(f"{PROJECT}_{svc}_1")), "")
        assert " Up " in f" {line} ", out
    assert f"0.0.0.0:{WEB_PORT}->80/tcp" in out, out
    assert project("ps", "-q").stdout.split().__len__() == 3


def test_port_names_the_published_port_and_it_serves(project: Project) -> None:
    out = project("port", "web", "80").stdout.strip()
    assert out == f"0.0.0.0:{WEB_PORT}", out
    page = project.host.run(["busybox", "wget", "-q", "-O", "-", f"http://127.0.0.1:{WEB_PORT}/"]).stdout
    assert page.strip() == "hello-from-web"


def test_exec_by_service_reaches_others_by_alias_on_shared_networks_only(project: Project) -> None:
    host = project.host
    # api shares back with db and front with web: both aliases resolve, to the right address
    db_ip = net_ip(host, f"{PROJECT}_db_1", f"{PROJECT}_back")
    out = project.exec("api", "nslookup", "database", "127.0.0.11").stdout
    assert nslookup_addresses(out) == {db_ip}, out
    assert project.exec("api", "ping", "-c", "1", "-W", "2", "database").returncode == 0
    page = project.exec("api", "wget", "-q", "-O", "-", "http://www/").stdout
    assert page.strip() == "hello-from-web"
    # web sees api through front (its alias and service name), never db (back only)
    api_front = net_ip(host, f"{PROJECT}_api_1", f"{PROJECT}_front")
    out = project.exec("web", "nslookup", "backend", "127.0.0.11").stdout
    assert nslookup_addresses(out) == {api_front}, out
    for name in ("database", "db"):
        miss = project.exec("web", "nslookup", name, "127.0.0.11", check=False)
        assert miss.returncode != 0 and not nslookup_addresses(miss.stdout), miss.stdout


def test_logs_show_the_service_output(project: Project) -> None:
    out = project("logs", "--no-color", "db").stdout
    assert re.search(r"db_1\s+\| db-ready", out), out


def test_top_lists_each_services_processes(project: Project) -> None:
    out = project("top").stdout
    for service in ("db", "api", "web"):
        assert f"{PROJECT}_{service}_1" in out, out
    assert "sleep 1d" in out and "httpd -f -p 80 -h /www" in out, out
    assert re.search(r"UID\s+PID\s+PPID", out), out


def test_pause_freezes_and_unpause_thaws_a_service(project: Project) -> None:
    host = project.host
    project("pause", "api")
    state = container(host, f"{PROJECT}_api_1")["State"]
    assert (state["Status"], state["Paused"]) == ("paused", True)
    assert re.search(r"shop_api_1 .*Paused", project("ps").stdout)
    refused = project.exec("api", "true", check=False)
    assert refused.returncode != 0 and "is paused" in refused.stderr + refused.stdout
    project("unpause", "api")
    assert container(host, f"{PROJECT}_api_1")["State"]["Status"] == "running"
    project.exec("api", "true")


def test_restart_starts_the_containers_again(project: Project) -> None:
    host = project.host
    before = container(host, f"{PROJECT}_db_1")["State"]["StartedAt"]
    project("restart", "db")
    after = container(host, f"{PROJECT}_db_1")["State"]
    assert after["Running"] and after["StartedAt"] != before
    assert wait_for(lambda: project("logs", "--no-color", "db").stdout.count("db-ready") == 2, timeout=15)
    out = project.exec("api", "nslookup", "database", "127.0.0.11").stdout
    assert nslookup_addresses(out) == {net_ip(host, f"{PROJECT}_db_1", f"{PROJECT}_back")}, out


def test_kill_and_start_bring_the_published_port_back(project: Project) -> None:
    host = project.host
    project("kill", "web")
    assert not container(host, f"{PROJECT}_web_1")["State"]["Running"]
    refused = host.run(
        ["busybox", "wget", "-q", "-T", "2", "-O", "-", f"http://127.0.0.1:{WEB_PORT}/"], check=False
    )
    assert refused.returncode != 0
    project("start", "web")
    page = host.run(["busybox", "wget", "-q", "-O", "-", f"http://127.0.0.1:{WEB_PORT}/"]).stdout
    assert page.strip() == "hello-from-web"


def test_images_lists_the_services_image(project: Project) -> None:
    out = project("images").stdout
    for svc in ("db", "api", "web"):
        assert re.search(rf"^{PROJECT}_{svc}_1\s+busybox\s+latest\s", out, re.M), out


def test_pull_says_how_to_bring_the_image(project: Project) -> None:
    out = project("pull", "db", check=False)
    assert out.returncode != 0
    for words in ("cnm does not pull images", "docker save busybox:latest", "cnm load", "cnm image import"):
        assert words in out.stderr, out.stderr


def test_run_rm_prints_its_output_and_leaves_no_container(project: Project) -> None:
    """``run`` the way Compose does it by default: it creates the one-off container, then
    hands it to ``docker start --attach`` (the docker CLI 28 on PATH), which attaches before
    the start.  (With COMPOSE_INTERACTIVE_NO_CLI=1 it attaches after the start instead, and a
    command that has exited by then leaves it waiting: that path is not tested here.)"""
    before = project_containers(project.host)
    env = {k: v for k, v in project.env.items() if k != "COMPOSE_INTERACTIVE_NO_CLI"}
    run = Project(project.host, {**env, "PATH": f"{Path(DOCKER).parent}:/usr/sbin:/usr/bin:/sbin:/bin"})
    out = run("run", "--rm", "api", "sh", "-c", "echo run-output; nslookup database 127.0.0.11")
    assert "run-output" in out.stdout, (out.stdout, out.stderr)
    db_ip = net_ip(project.host, f"{PROJECT}_db_1", f"{PROJECT}_back")
    assert db_ip in out.stdout  # the one-off container is on the service's networks
    assert project_containers(project.host) == before


def test_force_recreate_replaces_every_container(project: Project) -> None:
    host = project.host
    ids = {s: container(host, f"{PROJECT}_{s}_1")["Id"] for s in ("db", "api", "web")}
    project("up", "-d", "--force-recreate")
    for svc, old in ids.items():
        now = container(host, f"{PROJECT}_{svc}_1")
        assert now["Id"] != old and now["State"]["Running"], svc
    assert project_containers(host) == sorted(f"{PROJECT}_{s}_1" for s in ("api", "db", "web"))
    page = project.exec("api", "wget", "-q", "-O", "-", "http://www/").stdout
    assert page.strip() == "hello-from-web"


def test_scale_gives_dns_round_robin_over_the_replicas(project: Project) -> None:
    host = project.host
    project("up", "-d", "--scale", "api=3")
    replicas = [f"{PROJECT}_api_{i}" for i in (1, 2, 3)]
    assert all(container(host, r)["State"]["Running"] for r in replicas)
    front = {net_ip(host, r, f"{PROJECT}_front") for r in replicas}
    back = {net_ip(host, r, f"{PROJECT}_back") for r in replicas}
    assert len(front) == 3 and len(back) == 3
    out = project.exec("web", "nslookup", "api", "127.0.0.11").stdout
    assert nslookup_addresses(out) == front, out
    out = project.exec("db", "nslookup", "api", "127.0.0.11").stdout
    assert nslookup_addresses(out) == back, out
    project("up", "-d", "--scale", "api=1")
    assert project_containers(host) == sorted(f"{PROJECT}_{s}_1" for s in ("api", "db", "web"))
    out = project.exec("web", "nslookup", "api", "127.0.0.11").stdout
    assert nslookup_addresses(out) == {net_ip(host, f"{PROJECT}_api_1", f"{PROJECT}_front")}, out


def test_network_connect_after_up_adds_a_third_network(project: Project) -> None:
    host = project.host
    project.docker("network", "create", "--subnet", "10.53.0.0/24", "third")
    project.docker("network", "connect", "--alias", "db3", "third", f"{PROJECT}_db_1")
    ip = net_ip(host, f"{PROJECT}_db_1", "third")
    assert ip.startswith("10.53.0.")
    addrs = project.exec("db", "ip", "-o", "-4", "addr", "show").stdout
    assert f"{ip}/24" in addrs, addrs
    project.docker("run", "--rm", "--network", "third", "busybox", "ping", "-c", "1", "-W", "2", "db3")
    # api is not on third: the alias does not resolve there
    miss = project.exec("api", "nslookup", "db3", "127.0.0.11", check=False)
    assert miss.returncode != 0, miss.stdout


def test_stop_stops_every_service(project: Project) -> None:
    project("stop")
    host = project.host
    for name in project_containers(host):
        assert not container(host, name)["State"]["Running"], name
    out = project("ps").stdout
    assert " Up " not in out and "Exit" in out, out


def test_down_leaves_nothing(project: Project, baseline: dict[str, Any]) -> None:
    host = project.host
    project("down")
    assert project_containers(host) == []
    assert project_networks(host) == []
    project.docker("network", "rm", "third")
    now = kernel_state(host)
    diff = {k: (sorted(set(now[k]) - set(baseline[k])), sorted(set(baseline[k]) - set(now[k]))) for k in now}
    assert all(added == [] and gone == [] for added, gone in diff.values()), json.dumps(diff, indent=1)


def test_up_again_after_down(project: Project) -> None:
    project("up", "-d")
    host = project.host
    for svc in ("db", "api", "web"):
        assert container(host, f"{PROJECT}_{svc}_1")["State"]["Running"], svc
    out = project.exec("api", "nslookup", "database", "127.0.0.11").stdout
    assert nslookup_addresses(out) == {net_ip(host, f"{PROJECT}_db_1", f"{PROJECT}_back")}, out
    page = project.host.run(["busybox", "wget", "-q", "-O", "-", f"http://127.0.0.1:{WEB_PORT}/"]).stdout
    assert page.strip() == "hello-from-web"
