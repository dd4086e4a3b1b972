"""``cnm attach`` and ``docker attach`` to a running container: its output from then on, its
stdin, its exit code at the end; refusals for stopped containers.  In a throwaway host."""

from __future__ import annotations

import os

import pytest
from harness import TestHost

DOCKER = "/usr/local/bin/docker"
TICKER = ["sh", "-c", "sleep 1; for i in 1 2 3; do echo tick $i; sleep 0.2; done; echo oops >&2; exit 3"]


def attach(host: TestHost, client: str, name: str, *flags: str, input: str | None = None):
    if client == "docker":
        if not os.path.exists(DOCKER):
            pytest.skip(f"{DOCKER} (docker CLI 28) not installed")
        env = {"DOCKER_HOST": host.host_uri, "DOCKER_CONFIG": str(host.tmp / "docker-config")}
        return host.run([DOCKER, "attach", *flags, name], check=False, timeout=60, env=env, input=input)
    return host.cnm("attach", *flags, name, check=False, timeout=60, input=input)


@pytest.mark.parametrize("client", ["cnm", "docker"])
def test_attach_streams_output_and_returns_the_exit_code(cnmhost: TestHost, client: str) -> None:
    name = f"tick-{client}"
    cnmhost.cnm("run", "-d", "--name", name, "busybox", *TICKER)
    proc = attach(cnmhost, client, name)
    assert proc.returncode == 3, proc
    assert proc.stdout.splitlines() == ["tick 1", "tick 2", "tick 3"]
    assert "oops" in proc.stderr
    cnmhost.cnm("rm", name)


@pytest.mark.parametrize("client", ["cnm", "docker"])
def test_attach_feeds_stdin(cnmhost: TestHost, client: str) -> None:
    name = f"cat-{client}"
    cnmhost.cnm("run", "-d", "-i", "--name", name, "busybox", "sh", "-c", "read line; echo got:$line; exit 4")
    proc = attach(cnmhost, client, name, input="hello\n")
    assert (proc.returncode, proc.stdout.strip()) == (4, "got:hello"), proc
    cnmhost.cnm("rm", name)


def test_attach_without_stdin_and_to_stopped_or_paused_containers(cnmhost: TestHost) -> None:
    cnmhost.cnm("run", "-d", "-i", "--name", "nostdin", "busybox", "sh", "-c", "sleep 1; echo done")
    proc = attach(cnmhost, "cnm", "nostdin", "--no-stdin", input="ignored\n")
    assert (proc.returncode, proc.stdout.strip()) == (0, "done"), proc

    stopped = attach(cnmhost, "cnm", "nostdin")
    assert stopped.returncode != 0 and "You cannot attach to a stopped container" in stopped.stderr

    cnmhost.cnm("run", "-d", "--name", "napper", "busybox", "sleep", "1d")
    cnmhost.cnm("pause", "napper")
    paused = attach(cnmhost, "cnm", "napper")
    assert paused.returncode != 0 and "You cannot attach to a paused container" in paused.stderr
    cnmhost.cnm("unpause", "napper")
    cnmhost.cnm("rm", "-f", "napper", "nostdin")
