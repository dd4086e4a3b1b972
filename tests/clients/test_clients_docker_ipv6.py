"""IPv6 through Docker's own CLI (``/usr/local/bin/docker`` 28) against cnmd in a throwaway
host, unchanged, as Docker 27+ users type it:

``docker network create --ipv6 [--subnet v6]`` (both families in ``network inspect``'s
``IPAM.Config``, v4 first; a v6 ``--gateway`` kept verbatim; a /64 of the ULA pool without a
subnet), ``docker network ls --format '{{.IPv6}}'``, ``docker run --ip6`` and ``docker network
connect --ip6`` (the address, gateway and prefix in ``docker inspect -f``, the address and
default route inside the container, v6 between containers; ``docker stop`` blanks the v6
fields, ``docker start`` brings the fixed address back), ``-p 8080:80`` listed by ``docker
port`` and ``docker ps`` on ``0.0.0.0`` and ``[::]`` and served on both loopbacks,
``-p '[::1]:8081:80'`` on v6 loopback only, a dual-stack container's ports at ``[::1]``,
``127.0.0.1`` and the host's v6 address, and a bad ``--ip6`` refused with nothing left.

The tests run in file order over one host (later ones use the networks made earlier).
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from harness import TestHost, wait_for

DOCKER = "/usr/local/bin/docker"
V6 = "fd00:cafe:6::/64"  # n6's subnet
V6B = "fd00:cafe:7::/64"  # n6b's subnet, with a gateway of its own
HTTPD = ["sh", "-c", "mkdir -p /www && echo hello-v6 > /www/index.html && exec httpd -f -p 80 -h /www"]
WEB_PORT = 18080
LO6_PORT = 18081
DUAL_PORT = 18082
DUAL_LO6_PORT = 18083


def docker(host: TestHost, env: dict[str, str], *args: str, check: bool = True) -> Any:
    return host.run([DOCKER, *args], env=env, check=check, timeout=120)


def fmt(host: TestHost, env: dict[str, str], template: str, ref: str) -> str:
    return str(docker(host, env, "inspect", "-f", template, ref).stdout.strip())


def net_inspect(host: TestHost, env: dict[str, str], name: str) -> dict[str, Any]:
    data: list[dict[str, Any]] = json.loads(docker(host, env, "network", "inspect", name).stdout)
    return data[0]


def fetch(host: TestHost, url: str, check: bool = True) -> Any:
    # (busybox's wget -T crashes on some hosts: the time limit is timeout's)
    return host.run(["timeout", "5", "busybox", "wget", "-q", "-O", "-", url], check=check, timeout=30)


@pytest.fixture(scope="module")
def env(clienthost: TestHost, client_env: dict[str, str]) -> Any:
    yield client_env
    for c in ("c6", "c6b", "web6", "lo6", "web6n", "bad6"):
        docker(clienthost, client_env, "rm", "-f", c, check=False)
    for n in ("n6", "n6b", "n6auto"):
        docker(clienthost, client_env, "network", "rm", n, check=False)


def test_network_create_ipv6_shows_both_families(clienthost: TestHost, env: dict[str, str]) -> None:
    docker(clienthost, env, "network", "create", "--ipv6", "--subnet", V6, "n6")
    net = net_inspect(clienthost, env, "n6")
    assert net["EnableIPv6"] is True and net["EnableIPv4"] is True
    configs = net["IPAM"]["Config"]
    families = [ipaddress.ip_network(c["Subnet"]).version for c in configs]
    assert families == [4, 6], configs  # one subnet per family, v4 first
    assert configs[1] == {"Subnet": V6}, configs  # the user's entry verbatim: no Gateway key
    assert "Gateway" in configs[0]  # the allocated v4 one shows its gateway


def test_network_create_ipv6_with_a_gateway_of_its_own(clienthost: TestHost, env: dict[str, str]) -> None:
    # the CLI groups --gateway with the --subnet that contains it, per family
    docker(
        clienthost, env, "network", "create", "--ipv6",
        "--subnet", "10.66.0.0/24", "--subnet", V6B, "--gateway", "fd00:cafe:7::fffe", "n6b",
    )  # fmt: skip
    configs = net_inspect(clienthost, env, "n6b")["IPAM"]["Config"]
    assert configs == [{"Subnet": "10.66.0.0/24"}, {"Subnet": V6B, "Gateway": "fd00:cafe:7::fffe"}]


def test_network_create_ipv6_without_subnet_takes_a_ula_64(clienthost: TestHost, env: dict[str, str]) -> None:
    docker(clienthost, env, "network", "create", "--ipv6", "n6auto")
    configs = net_inspect(clienthost, env, "n6auto")["IPAM"]["Config"]
    v6 = [ipaddress.ip_network(c["Subnet"]) for c in configs if ":" in c["Subnet"]]
    assert len(v6) == 1 and v6[0].prefixlen == 64, configs
    assert v6[0].subnet_of(ipaddress.IPv6Network("fd00::/8")), configs  # unique local
    gw6 = next(c.get("Gateway") for c in configs if ":" in c["Subnet"])
    assert gw6 == str(v6[0].network_address + 1), configs


def test_network_ls_ipv6_column(clienthost: TestHost, env: dict[str, str]) -> None:
    out = docker(clienthost, env, "network", "ls", "--format", "{{.Name}} {{.IPv4}} {{.IPv6}}").stdout
    rows = dict(line.split(" ", 1) for line in out.splitlines())
    assert rows["n6"] == "true true" and rows["n6b"] == "true true" and rows["n6auto"] == "true true", out
    assert rows["bridge"] == "true false", out


def test_run_ip6_sets_the_address_gateway_and_route(clienthost: TestHost, env: dict[str, str]) -> None:
    docker(clienthost, env, "run", "-d", "--name", "c6", "--network", "n6", "--ip6", "fd00:cafe:6::10",
           "busybox", "sleep", "1d")  # fmt: skip
    nets = ".NetworkSettings.Networks.n6"
    assert fmt(clienthost, env, f"{{{{{nets}.GlobalIPv6Address}}}}", "c6") == "fd00:cafe:6::10"
    assert fmt(clienthost, env, f"{{{{{nets}.GlobalIPv6PrefixLen}}}}", "c6") == "64"
    assert fmt(clienthost, env, f"{{{{{nets}.IPv6Gateway}}}}", "c6") == "fd00:cafe:6::1"
    assert fmt(clienthost, env, f"{{{{{nets}.IPAMConfig.IPv6Address}}}}", "c6") == "fd00:cafe:6::10"
    addrs = docker(clienthost, env, "exec", "c6", "ip", "-o", "-6", "addr", "show", "scope", "global").stdout
    assert "fd00:cafe:6::10/64" in addrs, addrs
    routes = docker(clienthost, env, "exec", "c6", "ip", "-6", "route", "show", "default").stdout
    assert "default via fd00:cafe:6::1" in routes, routes
    # network inspect lists the endpoint with its v6 address in CIDR form
    eps = net_inspect(clienthost, env, "n6")["Containers"]
    assert [e["IPv6Address"] for e in eps.values() if e["Name"] == "c6"] == ["fd00:cafe:6::10/64"], eps


def test_containers_reach_each_other_over_v6_by_address_and_name(
    clienthost: TestHost, env: dict[str, str]
) -> None:
    docker(clienthost, env, "run", "-d", "--name", "c6b", "--network", "n6", "busybox", "sleep", "1d")
    addr = fmt(clienthost, env, "{{.NetworkSettings.Networks.n6.GlobalIPv6Address}}", "c6b")
    assert ipaddress.IPv6Address(addr) in ipaddress.IPv6Network(V6) and addr != "fd00:cafe:6::10"
    docker(clienthost, env, "exec", "c6b", "ping", "-6", "-c", "1", "-W", "3", "fd00:cafe:6::10")
    out = docker(clienthost, env, "exec", "c6b", "nslookup", "-type=aaaa", "c6", "127.0.0.11").stdout
    assert "fd00:cafe:6::10" in out, out
    docker(clienthost, env, "exec", "c6", "ping", "-6", "-c", "1", "-W", "3", "c6b")


def test_network_connect_ip6(clienthost: TestHost, env: dict[str, str]) -> None:
    docker(clienthost, env, "network", "connect", "--ip6", "fd00:cafe:7::20", "n6b", "c6")
    nets = ".NetworkSettings.Networks.n6b"
    assert fmt(clienthost, env, f"{{{{{nets}.GlobalIPv6Address}}}}", "c6") == "fd00:cafe:7::20"
    assert fmt(clienthost, env, f"{{{{{nets}.IPv6Gateway}}}}", "c6") == "fd00:cafe:7::fffe"
    assert fmt(clienthost, env, f"{{{{{nets}.IPAddress}}}}", "c6").startswith("10.66.0.")
    addrs = docker(clienthost, env, "exec", "c6", "ip", "-o", "-6", "addr", "show", "scope", "global").stdout
    assert "fd00:cafe:7::20/64" in addrs and "fd00:cafe:6::10/64" in addrs, addrs
    # the default route stays with the first network, for v6 as for v4
    routes = docker(clienthost, env, "exec", "c6", "ip", "-6", "route", "show", "default").stdout
    assert "default via fd00:cafe:6::1" in routes and "fd00:cafe:7::fffe" not in routes, routes
    docker(clienthost, env, "network", "disconnect", "n6b", "c6")
    addrs = docker(clienthost, env, "exec", "c6", "ip", "-o", "-6", "addr", "show", "scope", "global").stdout
    assert "fd00:cafe:7::20" not in addrs, addrs


def test_stop_blanks_the_v6_fields_and_start_brings_the_fixed_address_back(
    clienthost: TestHost, env: dict[str, str]
) -> None:
    docker(clienthost, env, "stop", "-t", "0", "c6")
    stopped = json.loads(fmt(clienthost, env, "{{json .NetworkSettings.Networks.n6}}", "c6"))
    assert (stopped["GlobalIPv6Address"], stopped["GlobalIPv6PrefixLen"], stopped["IPv6Gateway"]) == (
        "",
        0,
        "",
    )
    assert stopped["IPAMConfig"]["IPv6Address"] == "fd00:cafe:6::10"  # kept, as Docker keeps it
    docker(clienthost, env, "start", "c6")
    assert (
        fmt(clienthost, env, "{{.NetworkSettings.Networks.n6.GlobalIPv6Address}}", "c6") == "fd00:cafe:6::10"
    )
    routes = docker(clienthost, env, "exec", "c6", "ip", "-6", "route", "show", "default").stdout
    assert "default via fd00:cafe:6::1" in routes, routes
    docker(clienthost, env, "exec", "c6b", "ping", "-6", "-c", "1", "-W", "3", "c6")


def test_bad_ip6_is_refused_and_leaves_nothing(clienthost: TestHost, env: dict[str, str]) -> None:
    out = docker(clienthost, env, "run", "-d", "--name", "bad6", "--network", "n6", "--ip6", "fd00:beef::5",
                 "busybox", "sleep", "1d", check=False)  # fmt: skip
    assert out.returncode != 0
    assert "fd00:beef::5" in out.stderr, out.stderr
    state = docker(clienthost, env, "inspect", "-f", "{{.State.Running}}", "bad6", check=False)
    assert state.stdout.strip() != "true"
    eps = net_inspect(clienthost, env, "n6")["Containers"]
    assert sorted(e["Name"] for e in eps.values()) == ["c6", "c6b"], eps
    docker(clienthost, env, "rm", "-f", "bad6", check=False)


def test_publish_without_host_ip_binds_both_families(clienthost: TestHost, env: dict[str, str]) -> None:
    docker(clienthost, env, "run", "-d", "--name", "web6", "-p", f"{WEB_PORT}:80", "busybox", *HTTPD)
    lines = docker(clienthost, env, "port", "web6").stdout.splitlines()
    assert lines == [f"80/tcp -> 0.0.0.0:{WEB_PORT}", f"80/tcp -> [::]:{WEB_PORT}"], lines
    ports = docker(clienthost, env, "ps", "--filter", "name=web6", "--format", "{{.Ports}}").stdout.strip()
    assert ports == f"0.0.0.0:{WEB_PORT}->80/tcp, [::]:{WEB_PORT}->80/tcp", ports
    bindings = json.loads(fmt(clienthost, env, "{{json .NetworkSettings.Ports}}", "web6"))
    assert bindings == {
        "80/tcp": [
            {"HostIp": "0.0.0.0", "HostPort": str(WEB_PORT)},
            {"HostIp": "::", "HostPort": str(WEB_PORT)},
        ]
    }
    assert wait_for(lambda: fetch(clienthost, f"http://127.0.0.1:{WEB_PORT}/", check=False).returncode == 0)
    for url in (f"http://127.0.0.1:{WEB_PORT}/", f"http://[::1]:{WEB_PORT}/"):
        assert fetch(clienthost, url).stdout.strip() == "hello-v6", url


def test_publish_on_v6_loopback_only(clienthost: TestHost, env: dict[str, str]) -> None:
    docker(clienthost, env, "run", "-d", "--name", "lo6", "-p", f"[::1]:{LO6_PORT}:80", "busybox", *HTTPD)
    lines = docker(clienthost, env, "port", "lo6", "80/tcp").stdout.splitlines()
    assert lines == [f"[::1]:{LO6_PORT}"], lines
    assert wait_for(lambda: fetch(clienthost, f"http://[::1]:{LO6_PORT}/", check=False).returncode == 0)
    assert fetch(clienthost, f"http://[::1]:{LO6_PORT}/").stdout.strip() == "hello-v6"
    assert fetch(clienthost, f"http://127.0.0.1:{LO6_PORT}/", check=False).returncode != 0


def test_publish_from_a_dual_stack_network(clienthost: TestHost, env: dict[str, str]) -> None:
    """A container with a v6 address: its ports answer at [::1] (cnmd's proxy: the kernel
    cannot DNAT from ::1), at 127.0.0.1 and at the host's own v6 address."""
    docker(clienthost, env, "run", "-d", "--name", "web6n", "--network", "n6",
           "-p", f"{DUAL_PORT}:80", "-p", f"[::1]:{DUAL_LO6_PORT}:80", "busybox", *HTTPD)  # fmt: skip
    lines = docker(clienthost, env, "port", "web6n").stdout.splitlines()
    assert sorted(lines) == sorted(
        [f"80/tcp -> 0.0.0.0:{DUAL_PORT}", f"80/tcp -> [::]:{DUAL_PORT}", f"80/tcp -> [::1]:{DUAL_LO6_PORT}"]
    ), lines
    assert wait_for(lambda: fetch(clienthost, f"http://127.0.0.1:{DUAL_PORT}/", check=False).returncode == 0)
    for url in (
        f"http://127.0.0.1:{DUAL_PORT}/",
        f"http://[::1]:{DUAL_PORT}/",
        f"http://[::1]:{DUAL_LO6_PORT}/",
        f"http://[fd00:cafe:6::1]:{DUAL_PORT}/",  # the host's address on n6's bridge
    ):
        assert fetch(clienthost, url, check=False).stdout.strip() == "hello-v6", url


def test_network_rm_after_the_containers_go(clienthost: TestHost, env: dict[str, str]) -> None:
    for c in ("c6", "c6b", "web6", "lo6", "web6n"):
        docker(clienthost, env, "rm", "-f", c)
    for n in ("n6", "n6b", "n6auto"):
        docker(clienthost, env, "network", "rm", n)
    names = docker(clienthost, env, "network", "ls", "--format", "{{.Name}}").stdout.split()
    assert sorted(names) == ["bridge", "host", "none"], names
    v6 = clienthost.run(["ip", "-o", "-6", "addr", "show", "scope", "global"]).stdout
    assert "fd00:cafe" not in v6, v6
