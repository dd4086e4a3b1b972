"""The tour (scripts/tour.sh, what `make demo` runs) succeeds in a test host, twice in a row
(it is idempotent), and shows every step the issue promises."""

from __future__ import annotations

from harness import REPO, TestHost, venv_bin

TOUR = REPO / "scripts" / "tour.sh"


def test_tour_runs_and_is_idempotent(fresh_cnmhost: TestHost) -> None:
    env = {"CNM": venv_bin("cnm"), "TOUR_PAUSE": "0"}
    first = fresh_cnmhost.run(["bash", str(TOUR)], env=env, timeout=300, check=False)
    assert first.returncode == 0, f"tour failed:\n{first.stdout}\n{first.stderr}"
    for expected in ("$ cnm network ls", "$ cnm network inspect bridge", "iflink", "master cnm0",
                     "$ cnm exec tour-a ping", "isolated", "nft list table ip cnm", "Tour complete."):
        assert expected in first.stdout, f"tour output lacks {expected!r}"
    second = fresh_cnmhost.run(["bash", str(TOUR)], env=env, timeout=300, check=False)
    assert second.returncode == 0, f"second tour run failed:\n{second.stdout}\n{second.stderr}"
    assert fresh_cnmhost.cnm("ps", "-a", "-q").stdout.split() == []
    assert "tour-net" not in fresh_cnmhost.cnm("network", "ls").stdout
