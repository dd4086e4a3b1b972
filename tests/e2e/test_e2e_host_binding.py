"""``network create -o com.docker.network.bridge.host_binding_ipv4=127.0.0.1``: a port
published without a host IP on that network is local to the host, as in Docker -- the
world cannot reach it, the host reaches it through 127.0.0.1.  Both firewall backends, kernel
and userland-proxy modes.  A garbage value is a 400 at create and leaves no network."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import HOST_ADDR, TestHost, wait_for

OPTION = "com.docker.network.bridge.host_binding_ipv4"
MODES = [
    pytest.param(("nftables", "false"), id="nftables-kernel"),
    pytest.param(("nftables", "true"), id="nftables-proxy"),
    pytest.param(("iptables", "false"), id="iptables-kernel"),
    pytest.param(("iptables", "true"), id="iptables-proxy"),
]


@pytest.fixture(params=MODES)
def bindhost(request: pytest.FixtureRequest, busybox_tar: Path) -> Iterator[TestHost]:
    backend, proxy = request.param
    with TestHost() as host:
        host.start_daemon("--firewall-backend", backend, f"--userland-proxy={proxy}")
        host.import_image(busybox_tar, "busybox")
        yield host


def fetch(host: TestHost, url: str, world: bool = False) -> str | None:
    # never busybox wget's own -T: Debian 12's static busybox 1.35 segfaults with it
    argv = ["busybox", "timeout", "3", "busybox", "wget", "-qO-", url]
    r = host.world(argv, check=False, timeout=20) if world else host.run(argv, check=False, timeout=20)
    return r.stdout.strip() if r.returncode == 0 else None


def test_ports_of_a_local_network_are_not_reachable_from_the_world(bindhost: TestHost) -> None:
    host = bindhost
    host.cnm("network", "create", "-o", f"{OPTION}=127.0.0.1", "local")
    script = "mkdir -p /www && echo local > /www/index.html && exec httpd -f -p 80 -h /www"
    host.cnm(
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "local",
        "-p",
        "8090:80",
        "-p",
        "80",
        "-p",
        "0.0.0.0:8091:80",
        "busybox",
        "sh",
        "-c",
        script,
    )
    lines = host.cnm("port", "web", "80").stdout.split()
    local = [line for line in lines if line.startswith("127.0.0.1:")]
    assert len(lines) == 3 and "0.0.0.0:8091" in lines and "127.0.0.1:8090" in local and len(local) == 2, (
        lines
    )
    ephemeral = next(line for line in local if line != "127.0.0.1:8090")
    # the explicit 0.0.0.0 binding shows the server is up and the world could reach it
    assert wait_for(lambda: fetch(host, f"http://{HOST_ADDR}:8091/", world=True) == "local", timeout=15)
    for url in ("http://127.0.0.1:8090/", f"http://{ephemeral}/"):
        assert fetch(host, url) == "local", url
    for port in ("8090", ephemeral.split(":")[1]):
        assert fetch(host, f"http://{HOST_ADDR}:{port}/", world=True) is None, port
        assert fetch(host, f"http://{HOST_ADDR}:{port}/") is None, port
    host.cnm("rm", "-f", "web")


def test_a_garbage_host_binding_is_refused_at_create(testhost: TestHost) -> None:
    host = testhost
    host.start_daemon()
    r = host.api("POST", "/networks/create", {"Name": "bad", "Options": {OPTION: "garbage"}})
    assert r.status == 400 and "invalid host binding IP 'garbage'" in r.message, (r.status, r.message)
    cli = host.cnm("network", "create", "-o", f"{OPTION}=::1", "bad6", check=False)
    assert cli.returncode != 0 and "invalid host binding IP '::1'" in cli.stderr
    assert "bad" not in host.cnm("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert "bad6" not in host.cnm("network", "ls", "--format", "{{.Name}}").stdout.split()
