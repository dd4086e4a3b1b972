"""``rm -f`` and ``network rm`` leave no veth, netns, rule, address, mount or file behind,
checked against the kernel of the test host (``ip -j``, ``nft -j``, mountinfo, the roots)."""

from __future__ import annotations

from e2e_util import diff_states, kernel_state, pings, run_sleeper
from harness import TestHost


def test_rm_and_network_rm_leave_nothing(fresh_cnmhost: TestHost) -> None:
    host = fresh_cnmhost
    # warm up the default bridge once, so lazily created but shared state is in the baseline
    run_sleeper(host, "warm")
    host.cnm("rm", "-f", "warm")
    before = kernel_state(host)

    host.cnm("network", "create", "--subnet", "10.80.0.0/24", "gone")
    host.cnm("network", "create", "--internal", "--subnet", "10.81.0.0/24", "gone-int")
    host.cnm(
        "network",
        "create",
        "--subnet",
        "10.82.0.0/24",
        "-o",
        "com.docker.network.bridge.enable_icc=false",
        "gone-noicc",
    )
    run_sleeper(host, "x1", "--network", "gone")
    run_sleeper(host, "x2", "--network", "gone", "--ip", "10.80.0.50")
    run_sleeper(host, "x3", "--network", "gone-int")
    run_sleeper(host, "x4", "--network", "gone-noicc")
    run_sleeper(host, "x5")
    run_sleeper(host, "x6", "--network", "none")
    run_sleeper(host, "x7", "--network", "container:x1")
    host.cnm("network", "connect", "gone-int", "x5")
    assert pings(host, "x1", "10.80.0.50")
    during = kernel_state(host)
    assert diff_states(before, during), "creating networks and containers changed nothing in the kernel?"

    host.cnm("rm", "-f", "x7", "x1", "x2", "x3", "x4", "x5", "x6")
    host.cnm("network", "rm", "gone", "gone-int", "gone-noicc")
    assert diff_states(before, kernel_state(host)) == {}
    assert host.cnm("ps", "-a", "-q").stdout.split() == []


def test_stopped_container_releases_its_network_state(fresh_cnmhost: TestHost) -> None:
    host = fresh_cnmhost
    host.cnm("network", "create", "--subnet", "10.83.0.0/24", "stopnet")

    def kernel_only() -> dict:
        # a stopped container keeps its files (logs, layers) until rm, as in Docker
        return {k: v for k, v in kernel_state(host).items() if k != "files"}

    before = kernel_only()
    run_sleeper(host, "s1", "--network", "stopnet")
    host.cnm("network", "connect", "bridge", "s1")
    host.cnm("stop", "-t", "1", "s1")
    assert diff_states(before, kernel_only()) == {}
    host.cnm("start", "s1")
    assert pings(host, "s1", "10.83.0.1")
    host.cnm("rm", "-f", "s1")
    assert diff_states(before, kernel_state(host)) == {}
