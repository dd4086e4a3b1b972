"""Upgrades keep what is there (issue 9): the last release's cnmd (git tag v0.1.0,
kept as tests/releases/v0.1.0-src.tar.xz, run by tests/oldrelease.py) writes a data root with live containers, user networks, published
ports, aliases and a link; it stops (the containers keep running, as on a live-restore);
the current code's cnmd starts on the same data root and exec root.  Nothing may be lost
or restarted: the same container ids and init pids, the same addresses and MACs, ports
that answer from the world, names that resolve, networks that list the same containers;
and new work (run, connect, rm) goes on; the firewall converges to today's nft layout.
This is the guard of the store migration."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consistency import problems
from e2e_util import cexec, inspect, network_inspect
from harness import HOST_ADDR, ROOT_SKIP_REASON, TestHost, dump_host, is_root, test_failed, wait_for
from oldrelease import RELEASE, Release, extract

HTTPD = "mkdir -p /www && echo hello-{name} > /www/index.html && exec httpd -f -p 80 -h /www"


@pytest.fixture
def upgrade_host(
    request: pytest.FixtureRequest, busybox_tar: Path, tmp_path: Path
) -> Iterator[tuple[TestHost, Release]]:
    """A host whose cnmd is the old release's, with the busybox image imported by it.
    No archive of v0.1.0 in the clone fails the test (OldReleaseError), it never skips."""
    if not is_root():
        pytest.skip(ROOT_SKIP_REASON)
    release = extract(tmp_path / RELEASE)
    host = TestHost()
    try:
        host.start()
        release.start_daemon(host)
        cmdline = Path(f"/proc/{host.daemon_pid()}/cmdline").read_bytes().split(b"\0")
        assert release.daemon.encode() in cmdline, f"cnmd is not the release's: {cmdline}"
        release.cnm(host, "image", "import", str(busybox_tar), "busybox", timeout=120)
        yield host, release
        if test_failed(request):
            dump_host(host)
    finally:
        host.close()


def fetch_world(host: TestHost, url: str) -> str | None:
    """An HTTP GET from the world namespace (the Internet); None when nothing answers.
    (Never busybox wget's -T: Debian 12's static busybox 1.35 segfaults with it.)"""
    r = host.world(["busybox", "timeout", "3", "busybox", "wget", "-qO-", url], check=False, timeout=20)
    return r.stdout.strip() if r.returncode == 0 else None


def resolves(host: TestHost, client: str, name: str) -> set[str]:
    """The IPv4 addresses ``name`` resolves to from inside container ``client``, through the
    embedded DNS server."""
    r = cexec(host, client, "nslookup", name, "127.0.0.11", check=False, timeout=30)
    found = set()
    after_name = False
    for line in r.stdout.splitlines():
        if line.startswith("Name:"):
            after_name = True
        elif after_name and line.startswith("Address"):
            address = line.split(":", 1)[1].strip().split()[0]
            if "." in address:
                found.add(address)
    return found


def facts(host: TestHost, names: list[str]) -> dict[str, Any]:
    """What must survive the upgrade, per container: id, init pid, start time, running,
    and per network its endpoint, address and MAC."""
    out = {}
    for info in inspect(host, *names):
        nets = info["NetworkSettings"]["Networks"]
        out[info["Name"].lstrip("/")] = {
            "id": info["Id"],
            "pid": info["State"]["Pid"],
            "started": info["State"]["StartedAt"],
            "running": info["State"]["Running"],
            "networks": {
                n: (v["NetworkID"], v["EndpointID"], v["IPAddress"], v["MacAddress"]) for n, v in nets.items()
            },
        }
    return out


def cnm_chains(host: TestHost) -> set[str]:
    """The chains of cnm's nft table ``ip cnm``."""
    chains = [i["chain"] for i in host.nft_json() if "chain" in i]
    return {c["name"] for c in chains if (c["family"], c["table"]) == ("ip", "cnm")}


def members(host: TestHost, network: str) -> set[str]:
    return {c["Name"] for c in (network_inspect(host, network)["Containers"] or {}).values()}


def httpd_up(host: TestHost, name: str) -> bool:
    return (
        cexec(
            host, name, "timeout", "2", "wget", "-qO-", "http://127.0.0.1:80/", check=False, timeout=20
        ).returncode
        == 0
    )


def test_upgrade_from_the_last_release_keeps_containers_networks_and_ports(
    upgrade_host: tuple[TestHost, Release],
) -> None:
    host, release = upgrade_host

    def old(*args: str) -> str:
        return release.cnm(host, *args, timeout=90).stdout.strip()

    # -- the old release builds a data root -----------------------------------------------------
    old("network", "create", "--subnet", "10.81.0.0/24", "front")
    old("network", "create", "--subnet", "10.82.0.0/24", "back")
    net = "--network"
    old(
        "run",
        "-d",
        "--name",
        "web",
        net,
        "front",
        "--network-alias",
        "www",
        "-p",
        "8080:80",
        "busybox",
        "sh",
        "-c",
        HTTPD.format(name="web"),
    )
    old("run", "-d", "--name", "db", net, "back", "busybox", "sleep", "1d")
    old("run", "-d", "--name", "app", net, "front", "--link", "web:webby", "busybox", "sleep", "1d")
    old("network", "connect", "back", "app")
    old("run", "-d", "--name", "plain", "-p", "8081:80", "busybox", "sh", "-c", HTTPD.format(name="plain"))
    names = ["web", "db", "app", "plain"]
    assert wait_for(lambda: httpd_up(host, "web") and httpd_up(host, "plain"), timeout=15)
    assert fetch_world(host, f"http://{HOST_ADDR}:8080/") == "hello-web", "the old release itself fails"
    before = facts(host, names)
    nets_before = {n: members(host, n) for n in ("front", "back", "bridge")}
    assert nets_before == {"front": {"web", "app"}, "back": {"db", "app"}, "bridge": {"plain"}}
    web_ip = before["web"]["networks"]["front"][2]
    front, back = before["web"]["networks"]["front"][0], before["db"]["networks"]["back"][0]

    assert cnm_chains(host) >= {f"n-{front[:12]}-in", f"n-{back[:12]}-nat"}, "not the release's layout"

    # -- swap the code: the old cnmd stops, its containers keep running ---------------------------
    host.kill_daemon(signal.SIGTERM)
    assert fetch_world(host, f"http://{HOST_ADDR}:8080/") == "hello-web", "no daemon: the data path stays"
    host.start_daemon()

    # -- nothing lost, nothing restarted ---------------------------------------------------------
    after = facts(host, names)
    assert after == before
    for name in names:
        assert after[name]["running"]
        assert host.run(["kill", "-0", str(after[name]["pid"])], check=False).returncode == 0, name
    assert {n: members(host, n) for n in ("front", "back", "bridge")} == nets_before
    assert fetch_world(host, f"http://{HOST_ADDR}:8080/") == "hello-web"
    assert fetch_world(host, f"http://{HOST_ADDR}:8081/") == "hello-plain"
    for alias in ("web", "www", "webby"):
        assert resolves(host, "app", alias) == {web_ip}, alias
    assert resolves(host, "db", "app") == {before["app"]["networks"]["back"][2]}
    assert cexec(host, "app", "ping", "-c", "1", "-W", "2", "webby", check=False).returncode == 0

    # the firewall converged to today's layout (fixed chains, networks as set elements):
    # nothing of the release's per-network chains and dispatch maps is left
    assert cnm_chains(host) == {
        "user",
        "forward",
        "postrouting",
        "prerouting",
        "output",
        "ports",
        "raw-prerouting",
    }
    assert problems(host) == []

    # -- new work goes on ------------------------------------------------------------------------
    host.cnm(
        "run",
        "-d",
        "--name",
        "fresh",
        net,
        "front",
        "-p",
        "8082:80",
        "busybox",
        "sh",
        "-c",
        HTTPD.format(name="fresh"),
        timeout=90,
    )
    fresh_ip = inspect(host, "fresh")[0]["NetworkSettings"]["Networks"]["front"]["IPAddress"]
    assert fresh_ip not in {f["networks"].get("front", ("", "", ""))[2] for f in after.values()}
    assert wait_for(lambda: fetch_world(host, f"http://{HOST_ADDR}:8082/") == "hello-fresh", timeout=15)
    assert cexec(host, "fresh", "ping", "-c", "1", "-W", "2", "web", check=False).returncode == 0
    host.cnm("network", "connect", "back", "fresh")
    assert cexec(host, "fresh", "ping", "-c", "1", "-W", "2", "db", check=False).returncode == 0
    host.cnm("network", "disconnect", "back", "app")
    assert members(host, "back") == {"db", "fresh"}
    host.cnm("rm", "-f", "fresh", "app")
    assert members(host, "front") == {"web"}
    assert fetch_world(host, f"http://{HOST_ADDR}:8082/") is None
    assert fetch_world(host, f"http://{HOST_ADDR}:8080/") == "hello-web"
    host.cnm("rm", "-f", "web", "db", "plain")
    host.cnm("network", "rm", "front", "back")
