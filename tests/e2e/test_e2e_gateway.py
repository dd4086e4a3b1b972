"""The gateway endpoint: when the network carrying a container's default route is
disconnected, the next network takes over the route and the published ports (Docker's
behaviour); egress and the port keep working."""

from __future__ import annotations

from e2e_util import world_server
from harness import TestHost, wait_for

HTTPD = "mkdir -p /www && echo gw > /www/index.html && exec httpd -f -p 80 -h /www"


def fetch(host: TestHost) -> str | None:
    r = host.world(
        ["busybox", "timeout", "3", "busybox", "wget", "-qO-", "http://203.0.113.2:8095/"], check=False
    )
    return r.stdout.strip() if r.returncode == 0 else None


def test_route_and_ports_follow_the_next_network(cnmhost: TestHost) -> None:
    host = cnmhost
    host.cnm("network", "create", "--subnet", "10.95.0.0/24", "gwnet")
    host.cnm("run", "-d", "--name", "gw", "-p", "8095:80", "busybox", "sh", "-c", HTTPD)
    try:
        host.cnm("network", "connect", "gwnet", "gw")
        assert wait_for(lambda: fetch(host) == "gw", timeout=10)
        host.cnm("network", "disconnect", "bridge", "gw")
        routes = host.cnm("exec", "gw", "ip", "route").stdout
        assert "default via 10.95.0.1 dev eth1" in routes, routes
        assert fetch(host) == "gw", "the published port moved to the new gateway endpoint"
        server = world_server(host, "tcp", 9095)
        host.cnm("exec", "gw", "sh", "-c", "echo hi | nc 203.0.113.1 9095", check=False)
        assert server.peer() == "203.0.113.2", "egress leaves through the remaining network, masqueraded"
    finally:
        host.cnm("rm", "-f", "gw")
        host.cnm("network", "rm", "gwnet")
