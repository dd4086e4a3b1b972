"""A cnmd restart re-serves every sandbox's DNS on the ports its NAT already points at, so
the NAT inside the container is left as it is (no ``nft`` process per sandbox: what made a
restart with many containers slow); when such a port was taken meanwhile, it falls back to
new ports and a new NAT.  Names resolve either way."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

from e2e_util import cexec, inspect, run_sleeper, sandbox_key
from harness import TestHost, wait_for


def dns_nat(host: TestHost, key: str) -> tuple[str, int]:
    """The handle of the container's ``cnm-dns`` table (a new one when it is replaced) and
    the UDP port its NAT points at."""
    out = host.netns_exec(key, ["nft", "-a", "list", "table", "ip", "cnm-dns"]).stdout
    handle = re.search(r"table ip cnm-dns \{ # handle (\d+)", out)
    port = re.search(r"udp dport 53 dnat to 127\.0\.0\.11:(\d+)", out)
    assert handle and port, out
    return handle.group(1), int(port.group(1))


def resolves(host: TestHost, client: str, name: str, address: str) -> bool:
    r = cexec(host, client, "nslookup", name, "127.0.0.11", check=False, timeout=30)
    return r.returncode == 0 and address in r.stdout


def test_restart_keeps_the_dns_nat_and_falls_back_when_its_port_is_taken(fresh_cnmhost: TestHost) -> None:
    host = fresh_cnmhost
    host.cnm("network", "create", "--subnet", "10.83.0.0/24", "dnsnet")
    run_sleeper(host, "srv", "--network", "dnsnet")
    run_sleeper(host, "cli", "--network", "dnsnet")
    srv_ip = inspect(host, "srv")[0]["NetworkSettings"]["Networks"]["dnsnet"]["IPAddress"]
    key = sandbox_key(host, "cli")
    assert resolves(host, "cli", "srv", srv_ip)
    before = dns_nat(host, key)

    for sig in (signal.SIGTERM, signal.SIGKILL):
        host.kill_daemon(sig)
        host.start_daemon()
        assert dns_nat(host, key) == before, f"the NAT was rewritten on a restart after {sig!r}"
        assert resolves(host, "cli", "srv", srv_ip)

    # the port the NAT points at is taken while cnmd is down: new ports, new NAT
    host.kill_daemon(signal.SIGTERM)
    squat = host.spawn(
        [
            "nsenter",
            f"--net={key}",
            sys.executable,
            "-c",
            "import socket, sys, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.bind(('127.0.0.11', {before[1]})); print('bound', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert squat.stdout is not None and squat.stdout.readline().strip() == "bound"
        host.start_daemon()
        after = dns_nat(host, key)
        assert after[1] != before[1] and after[0] != before[0]
        assert wait_for(lambda: resolves(host, "cli", "srv", srv_ip), timeout=10)
    finally:
        squat.kill()
        squat.wait(timeout=10)
    # and that new NAT is the one kept by the next restart
    host.kill_daemon(signal.SIGTERM)
    host.start_daemon()
    assert dns_nat(host, key) == after
    assert resolves(host, "cli", "srv", srv_ip)
    host.cnm("rm", "-f", "srv", "cli")
    host.cnm("network", "rm", "dnsnet")
