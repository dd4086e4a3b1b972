"""Issue 7: the iptables backend starts every time, on the nft and the legacy variant.

A few fresh starts per variant (``make soak-iptables`` runs 50 each): no iptables error in
cnmd's log, a DNAT rule for every published port (tests/e2e/iptables_start.py).  And the
case behind the failures seen: cnm's chains removed from outside right after the start
(what a second daemon's clean-up of "leftovers" did) -- the next ``run -p`` still works.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from harness import TestHost
from iptables_start import BAD_LOG, VARIANTS, dnat_problems, start_once, use_variant

STARTS = 3

# What another daemon's start did to the chains of a live one: remove them all.
REMOVE_CNM_CHAINS = (
    "import asyncio\n"
    "from cnm.firewall.iptables import IptablesFirewall\n"
    "asyncio.run(IptablesFirewall().teardown())\n"
)


@pytest.fixture(autouse=True)
def _no_autostart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNM_NO_AUTOSTART", "1")


@pytest.mark.parametrize("variant", VARIANTS)
def test_fresh_starts_publish_every_port(busybox_tar: Path, variant: str) -> None:
    failures = [(i, problems) for i in range(STARTS) if (problems := start_once(busybox_tar, variant))]
    assert not failures


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_run_after_the_chains_were_removed_from_outside(
    testhost: TestHost, busybox_tar: Path, variant: str
) -> None:
    host = testhost
    use_variant(host, variant)
    host.start_daemon("--firewall-backend", "iptables")
    host.import_image(busybox_tar, "busybox")
    host.run([sys.executable, "-c", REMOVE_CNM_CHAINS])
    assert "CNM" not in host.run([f"iptables-{variant}-save", "-t", "nat"]).stdout
    host.cnm("run", "-d", "--name", "web", "-p", "8081:80", "-p", "8082:81/udp", "busybox", "sleep", "1d")
    saved = host.run([f"iptables-{variant}-save"]).stdout
    assert [p for p in dnat_problems(saved) if "web" in p] == []
    assert not [
        line for line in host.daemon_log.read_text().splitlines() if "ERROR" in line and BAD_LOG.search(line)
    ]
