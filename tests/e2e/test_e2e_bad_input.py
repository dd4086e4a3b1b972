"""Bad input returns a clear error (Docker's HTTP status; the CLI prints it and exits
non-zero) and changes nothing: kernel state and the daemon's lists are the same before and
after."""

from __future__ import annotations

import pytest
from e2e_util import daemon_state, diff_states, kernel_state, run_sleeper
from harness import TestHost


@pytest.fixture(scope="module")
def world(cnmhost: TestHost) -> TestHost:
    cnmhost.cnm("network", "create", "--subnet", "10.20.0.0/24", "dup")
    run_sleeper(cnmhost, "c1", "--network", "dup", "--ip", "10.20.0.5")
    run_sleeper(cnmhost, "c3")
    return cnmhost


# (argv, any of these words must appear in the error, case-insensitive)
CLI_CASES = {
    "duplicate-network-name": (["network", "create", "--subnet", "10.21.0.0/24", "dup"], ["already exists"]),
    "predefined-network-name": (["network", "create", "bridge"], ["pre-defined", "predefined"]),
    "overlapping-subnet": (["network", "create", "--subnet", "10.20.0.0/16", "ov"], ["overlap"]),
    "same-subnet": (["network", "create", "--subnet", "10.20.0.0/24", "ov2"], ["overlap"]),
    "malformed-subnet-octet": (["network", "create", "--subnet", "10.300.0.0/24", "bad1"], ["invalid"]),
    "malformed-subnet-text": (["network", "create", "--subnet", "nonsense", "bad2"], ["invalid"]),
    "malformed-prefix": (["network", "create", "--subnet", "10.22.0.0/33", "bad3"], ["invalid"]),
    "gateway-outside-subnet": (
        ["network", "create", "--subnet", "10.23.0.0/24", "--gateway", "10.24.0.1", "gw"],
        ["gateway", "10.24.0.1"],
    ),
    "ip-range-outside-subnet": (
        ["network", "create", "--subnet", "10.25.0.0/24", "--ip-range", "10.26.0.0/25", "rng"],
        ["range", "10.26.0.0"],
    ),
    "connect-ip-outside-subnet": (["network", "connect", "--ip", "10.99.0.5", "dup", "c3"], ["10.99.0.5"]),
    "connect-ip-in-use": (["network", "connect", "--ip", "10.20.0.5", "dup", "c3"], ["in use", "already"]),
    "connect-already-connected": (["network", "connect", "dup", "c1"], ["already exists"]),
    "connect-unknown-network": (["network", "connect", "nosuchnet", "c3"], ["not found"]),
    "connect-unknown-container": (["network", "connect", "dup", "nosuchctr"], ["no such container"]),
    "disconnect-not-connected": (["network", "disconnect", "dup", "c3"], ["not connected"]),
    "inspect-unknown-network": (["network", "inspect", "nosuchnet"], ["not found"]),
    "rm-unknown-network": (["network", "rm", "nosuchnet"], ["not found"]),
    "rm-network-in-use": (["network", "rm", "dup"], ["active endpoints"]),
    "rm-predefined-bridge": (["network", "rm", "bridge"], ["pre-defined"]),
    "rm-predefined-host": (["network", "rm", "host"], ["pre-defined"]),
    "rm-predefined-none": (["network", "rm", "none"], ["pre-defined"]),
    "stop-unknown-container": (["stop", "nosuchctr"], ["no such container"]),
    "exec-unknown-container": (["exec", "nosuchctr", "true"], ["no such container"]),
    "inspect-unknown-container": (["inspect", "nosuchctr"], ["no such"]),
    "duplicate-container-name": (["run", "-d", "--name", "c1", "busybox", "sleep", "1d"], ["already in use"]),
}
# `run` with bad network settings: Docker creates the container, then fails to start it, and
# leaves it "Created"; so for these only the kernel, the networks and the running list must
# not change.
RUN_CASES = {
    "run-ip-outside-subnet": (
        ["run", "-d", "--network", "dup", "--ip", "10.99.0.6", "busybox", "sleep", "1d"],
        ["10.99.0.6"],
    ),
    "run-ip-in-use": (
        ["run", "-d", "--network", "dup", "--ip", "10.20.0.5", "busybox", "sleep", "1d"],
        ["in use", "already"],
    ),
    "run-unknown-network": (["run", "-d", "--network", "nosuchnet", "busybox", "sleep", "1d"], ["not found"]),
    "run-bad-mac": (["run", "-d", "--mac-address", "zz:zz", "busybox", "sleep", "1d"], ["mac"]),
}


def check_error(host: TestHost, argv: list[str], words: list[str], ignore: tuple[str, ...] = ()) -> None:
    def state() -> dict:
        s = {**kernel_state(host), **daemon_state(host)}
        return {k: v for k, v in s.items() if k not in ignore}

    before = state()
    proc = host.cnm(*argv, check=False)
    assert proc.returncode != 0, f"cnm {' '.join(argv)} succeeded: {proc.stdout}"
    message = (proc.stderr + proc.stdout).lower()
    assert any(w.lower() in message for w in words), f"unclear error for {argv}: {proc.stderr!r}"
    assert "traceback" not in message, proc.stderr
    assert diff_states(before, state()) == {}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_bad_input_changes_nothing(world: TestHost, case: str) -> None:
    argv, words = CLI_CASES[case]
    check_error(world, argv, words)


@pytest.mark.parametrize("case", sorted(RUN_CASES))
def test_bad_run_changes_no_network_state(world: TestHost, case: str) -> None:
    argv, words = RUN_CASES[case]
    check_error(world, argv, words, ignore=("containers", "files"))


# (method, path, body, Docker's status)
API_CASES = {
    "duplicate-name-409": ("POST", "/networks/create", {"Name": "dup"}, 409),
    "predefined-create-403": ("POST", "/networks/create", {"Name": "host"}, 403),
    "host-driver-403": ("POST", "/networks/create", {"Name": "h2", "Driver": "host"}, 403),
    "bad-subnet-400": (
        "POST",
        "/networks/create",
        {"Name": "b", "IPAM": {"Config": [{"Subnet": "10.300.0.0/24"}]}},
        400,
    ),
    "gateway-outside-400": (
        "POST",
        "/networks/create",
        {"Name": "g", "IPAM": {"Config": [{"Subnet": "10.27.0.0/24", "Gateway": "10.28.0.1"}]}},
        400,
    ),
    "empty-name-400": ("POST", "/networks/create", {"Name": " "}, 400),
    "unknown-network-404": ("GET", "/networks/nosuchnet", None, 404),
    "rm-predefined-403": ("DELETE", "/networks/bridge", None, 403),
    "rm-in-use-403": ("DELETE", "/networks/dup", None, 403),
    "unknown-container-404": ("GET", "/containers/nosuchctr/json", None, 404),
    "connect-unknown-container-404": ("POST", "/networks/dup/connect", {"Container": "nosuchctr"}, 404),
}


@pytest.mark.parametrize("case", sorted(API_CASES))
def test_api_status_is_dockers(world: TestHost, case: str) -> None:
    method, path, body, status = API_CASES[case]
    before = {**kernel_state(world), **daemon_state(world)}
    resp = world.api(method, path, body)
    assert resp.status == status, (resp.status, resp.body)
    assert resp.headers.get("Content-Type", "").startswith("application/json")
    assert resp.message, "error without a message"
    assert diff_states(before, {**kernel_state(world), **daemon_state(world)}) == {}
