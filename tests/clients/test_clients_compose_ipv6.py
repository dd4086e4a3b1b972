"""IPv6 through Docker Compose 1.29 (Debian's ``docker-compose``): a project (file version
2.4: compose v1 documents ``enable_ipv6`` for v2.1+ files) whose network has ``enable_ipv6:
true`` and a v6 ``ipam.config`` subnet beside a v4 one, one service with a fixed
``ipv6_address`` and one without (and a published port), and a second network with
``enable_ipv6: true`` alone.

``up -d`` makes the networks dual-stack (the second one a ULA /64) and gives each service
its v6 address; the services resolve each other's AAAA and reach each other over v6 (ping,
HTTP); the published port is on 0.0.0.0 and ::; ``up -d`` again finds the networks
unchanged; ``down`` leaves nothing (containers, networks, v4 and v6 addresses and routes,
nft, files).
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
from typing import Any

import pytest
from e2e_util import inspect, kernel_state
from harness import TestHost

COMPOSE = shutil.which("docker-compose")
PROJECT = "six"
NET = f"{PROJECT}_dual"
V6 = "fd00:c0de:6::/64"
WEB_PORT = 18085

pytestmark = pytest.mark.skipif(
    COMPOSE is None, reason="docker-compose is not installed (make clients-deps installs it)"
)

COMPOSE_FILE = """\
version: "2.4"
services:
  api:
    image: busybox
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 1d & wait"]
    networks:
      dual:
        ipv6_address: fd00:c0de:6::a
      auto6: {}
  web:
    image: busybox
    command: ["sh", "-c", "mkdir -p /www && echo hello-over-v6 > /www/index.html && trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait"]
    networks: [dual]
    ports: ["18085:80"]
networks:
  dual:
    enable_ipv6: true
    ipam:
      config:
        - subnet: 10.61.0.0/24
        - subnet: fd00:c0de:6::/64
  auto6:
    enable_ipv6: true
"""


class Project:
    """``docker-compose -p six -f …`` inside the test host."""

    def __init__(self, host: TestHost, env: dict[str, str]) -> None:
        self.host = host
        self.env = env
        self.dir = host.tmp / "compose-ipv6"
        self.dir.mkdir(exist_ok=True)
        self.file = self.dir / "docker-compose.yml"
        self.file.write_text(COMPOSE_FILE)

    def __call__(self, *args: str, check: bool = True) -> Any:
        assert COMPOSE is not None
        argv = [COMPOSE, "--ansi", "never", "-p", PROJECT, "-f", str(self.file), *args]
        return self.host.run(argv, env=self.env, check=check, timeout=180)

    def exec(self, service: str, *argv: str, check: bool = True) -> Any:
        return self("exec", "-T", service, *argv, check=check)


def v6_of(host: TestHost, service: str) -> str:
    return str(
        inspect(host, f"{PROJECT}_{service}_1")[0]["NetworkSettings"]["Networks"][NET]["GlobalIPv6Address"]
    )


def v6_routes(host: TestHost) -> list[str]:
    return sorted(
        f"{r.get('dst')} via={r.get('gateway', '')} dev={r.get('dev', '')}"
        for r in host.ip_json("-6", "route", "show")
    )


@pytest.fixture(scope="module")
def baseline(clienthost: TestHost) -> dict[str, Any]:
    """The kernel before the project (v6 routes too): ``down`` must bring it back to this."""
    return {**kernel_state(clienthost), "routes6": v6_routes(clienthost)}


@pytest.fixture(scope="module")
def project(clienthost: TestHost, client_env: dict[str, str], baseline: dict[str, Any]) -> Any:
    proj = Project(clienthost, client_env)
    yield proj
    proj("down", "--remove-orphans", check=False)


def test_up_makes_a_dual_stack_network_and_v6_addresses(project: Project) -> None:
    project("up", "-d")
    host = project.host
    net = json.loads(host.cnm("network", "inspect", NET).stdout)[0]
    assert net["EnableIPv6"] is True
    assert [c["Subnet"] for c in net["IPAM"]["Config"]] == ["10.61.0.0/24", V6]
    assert v6_of(host, "api") == "fd00:c0de:6::a"
    web = v6_of(host, "web")
    assert ipaddress.IPv6Address(web) in ipaddress.IPv6Network(V6) and web != "fd00:c0de:6::a"
    settings = inspect(host, f"{PROJECT}_api_1")[0]["NetworkSettings"]["Networks"][NET]
    assert settings["IPAMConfig"]["IPv6Address"] == "fd00:c0de:6::a"
    assert settings["IPv6Gateway"] == "fd00:c0de:6::1"
    addrs = project.exec("api", "ip", "-o", "-6", "addr", "show", "scope", "global").stdout
    assert "fd00:c0de:6::a/64" in addrs, addrs


def test_enable_ipv6_without_a_subnet_takes_a_ula_64(project: Project) -> None:
    """``enable_ipv6: true`` alone (no ``ipam``): a /64 of the default ULA pool, and the
    service an address in it."""
    host = project.host
    net = json.loads(host.cnm("network", "inspect", f"{PROJECT}_auto6").stdout)[0]
    assert net["EnableIPv6"] is True
    v6 = [ipaddress.IPv6Network(c["Subnet"]) for c in net["IPAM"]["Config"] if ":" in c["Subnet"]]
    assert len(v6) == 1 and v6[0].prefixlen == 64 and v6[0].subnet_of(ipaddress.IPv6Network("fd00::/8")), v6
    nets = inspect(host, f"{PROJECT}_api_1")[0]["NetworkSettings"]["Networks"]
    assert ipaddress.IPv6Address(nets[f"{PROJECT}_auto6"]["GlobalIPv6Address"]) in v6[0], nets


def test_services_resolve_each_others_aaaa(project: Project) -> None:
    web = v6_of(project.host, "web")
    out = project.exec("api", "nslookup", "-type=aaaa", "web", "127.0.0.11").stdout
    answer = out.split("Name:", 1)[-1] if "Name:" in out else ""
    assert {ipaddress.IPv6Address(a) for a in re.findall(r"Address:\s*([0-9a-f:]+)\s*$", answer, re.M)} == {
        ipaddress.IPv6Address(web)
    }, out
    out = project.exec("web", "nslookup", "-type=aaaa", "api", "127.0.0.11").stdout
    assert "fd00:c0de:6::a" in out, out


def test_services_reach_each_other_over_v6(project: Project) -> None:
    web = v6_of(project.host, "web")
    project.exec("web", "ping", "-6", "-c", "1", "-W", "3", "api")
    project.exec("api", "ping", "-6", "-c", "1", "-W", "3", web)
    page = project.exec("api", "timeout", "5", "wget", "-q", "-O", "-", f"http://[{web}]/").stdout
    assert page.strip() == "hello-over-v6"


def test_published_port_on_both_families(project: Project) -> None:
    """``ports: ["18085:80"]`` binds 0.0.0.0 and :: (compose's ps lists both, its port the
    first, as against Docker) and serves on both loopbacks."""
    out = project("ps").stdout
    assert f"0.0.0.0:{WEB_PORT}->80/tcp" in out and f":::{WEB_PORT}->80/tcp" in out, out
    assert project("port", "web", "80").stdout.strip() == f"0.0.0.0:{WEB_PORT}"
    for url in (f"http://127.0.0.1:{WEB_PORT}/", f"http://[::1]:{WEB_PORT}/"):
        page = project.host.run(["timeout", "5", "busybox", "wget", "-q", "-O", "-", url]).stdout
        assert page.strip() == "hello-over-v6", url


def test_up_again_finds_the_network_unchanged(project: Project) -> None:
    before = v6_of(project.host, "api")
    out = project("up", "-d")
    assert "needs to be recreated" not in out.stderr, out.stderr
    assert v6_of(project.host, "api") == before


def test_down_leaves_nothing(project: Project, baseline: dict[str, Any]) -> None:
    host = project.host
    project("down")
    names = host.cnm("ps", "-a", "--format", "{{.Names}}").stdout.split()
    assert [n for n in names if n.startswith(f"{PROJECT}_")] == []
    nets = host.cnm("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert [n for n in nets if n.startswith(f"{PROJECT}_")] == [], nets
    now = {**kernel_state(host), "routes6": v6_routes(host)}
    diff = {k: (sorted(set(now[k]) - set(baseline[k])), sorted(set(baseline[k]) - set(now[k]))) for k in now}
    assert all(added == [] and gone == [] for added, gone in diff.values()), json.dumps(diff, indent=1)
    v6 = host.run(["ip", "-o", "-6", "addr", "show", "scope", "global"]).stdout
    assert "fd00:c0de" not in v6, v6
