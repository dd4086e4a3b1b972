"""Issue 7: with only a dead upstream resolver, a lookup of a name the embedded DNS does not
know ends with SERVFAIL, not in silence.  busybox's nslookup resends a query that got
SERVFAIL (twice per query) within its 5 s budget; before, each resend waited the full
forwarding deadline again and it gave up with "no servers could be reached"."""

from __future__ import annotations

import pytest
from e2e_util import run_sleeper
from harness import TestHost

DEAD = "203.0.113.99"  # on the world's link, nobody there: queries vanish


@pytest.fixture(scope="module")
def lonely(cnmhost: TestHost) -> TestHost:
    cnmhost.cnm("network", "create", "deadns")
    run_sleeper(cnmhost, "lonely", "--network", "deadns", "--dns", DEAD)
    run_sleeper(cnmhost, "peer", "--network", "deadns", "--dns", DEAD)
    return cnmhost


@pytest.mark.parametrize("name", ["nosuchname", "unknown.example"])
def test_unknown_name_gets_servfail(lonely: TestHost, name: str) -> None:
    r = lonely.cnm("exec", "lonely", "nslookup", name, check=False, timeout=60)
    out = r.stdout + r.stderr
    assert "SERVFAIL" in out, out
    assert "no servers could be reached" not in out, out


def test_container_names_still_answer(lonely: TestHost) -> None:
    r = lonely.cnm("exec", "lonely", "nslookup", "peer", check=False, timeout=60)
    assert r.returncode == 0 and "Address" in r.stdout.split("Name:", 1)[-1], r.stdout
