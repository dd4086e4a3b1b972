"""Switching the firewall backend (or restarting with the other one) removes what the other
left, and the running containers' ports keep working under the new one."""

from __future__ import annotations

import signal

from harness import TestHost, wait_for

HTTPD = "mkdir -p /www && echo switched > /www/index.html && exec httpd -f -p 80 -h /www"


def fetch(host: TestHost) -> str | None:
    r = host.world(
        ["busybox", "timeout", "3", "busybox", "wget", "-qO-", "http://203.0.113.2:8090/"], check=False
    )
    return r.stdout.strip() if r.returncode == 0 else None


def test_switching_backends_cleans_up_the_other(testhost: TestHost, busybox_tar) -> None:
    host = testhost
    host.start_daemon("--firewall-backend", "nftables")
    host.import_image(busybox_tar, "busybox")
    host.cnm("run", "-d", "--name", "sw", "-p", "8090:80", "busybox", "sh", "-c", HTTPD)
    assert wait_for(lambda: fetch(host) == "switched", timeout=10)

    host.kill_daemon(signal.SIGTERM)
    host.start_daemon("--firewall-backend", "iptables")
    assert "table ip cnm" not in host.run(["nft", "list", "tables"]).stdout
    assert "CNM" in host.run(["iptables-save", "-t", "nat"]).stdout
    assert wait_for(lambda: fetch(host) == "switched", timeout=10)

    host.kill_daemon(signal.SIGTERM)
    host.start_daemon("--firewall-backend", "nftables")
    saved = host.run(["iptables-save"]).stdout
    assert "CNM" not in saved and "cnm:" not in saved
    assert wait_for(lambda: fetch(host) == "switched", timeout=10)
    host.cnm("rm", "-f", "sw")
