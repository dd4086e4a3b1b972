"""Issue 7, container output and I/O: ``run --rm`` never loses output, ``run -it`` is a
real terminal, ``start -a`` attaches, and logs are one ordered json-file stream.

The short loops here are the ``make test`` share of ``bench/run_output.py`` (200 runs per
mode: ``make soak-run``)."""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest
from e2e_util import inspect
from harness import TestHost, venv_bin, wait_for

DOCKER = "/usr/local/bin/docker"
RUNS = 12
MODES = {
    "plain": ([], ["echo", "hi"]),
    "net-host": (["--net", "host"], ["echo", "hi"]),
    "net-none": (["--net", "none"], ["echo", "hi"]),
    "tty": (["-t"], ["echo", "hi"]),
    "sleep": ([], ["sh", "-c", "sleep 0.3; echo hi"]),
}


def _client(host: TestHost, client: str) -> list[str]:
    return [venv_bin("cnm") if client == "cnm" else DOCKER, "-H", host.host_uri]


@pytest.mark.parametrize("client", ["cnm", "docker"])
@pytest.mark.parametrize("mode", list(MODES))
def test_run_rm_prints_every_time(cnmhost: TestHost, client: str, mode: str) -> None:
    """Removal used to delete the log while attach still read it: ``hi`` was lost in some
    runs, with exit status 0."""
    if client == "docker" and not shutil.which(DOCKER):
        pytest.skip(f"{DOCKER} not installed")
    opts, cmd = MODES[mode]
    env = {"CNM_NO_AUTOSTART": "1", "DOCKER_CONFIG": str(cnmhost.tmp / "docker-config")}
    bad = []
    for _ in range(RUNS):
        proc = cnmhost.run(
            [*_client(cnmhost, client), "run", "--rm", *opts, "busybox", *cmd],
            check=False,
            timeout=60,
            env=env,
        )
        if proc.returncode != 0 or proc.stdout.replace("\r\n", "\n") != "hi\n":
            bad.append((proc.returncode, proc.stdout, proc.stderr[-300:]))
    assert bad == [], f"{len(bad)} of {RUNS} runs lost output: {bad[:3]}"
    # one output keeper per running container, none left by the removed ones
    assert wait_for(lambda: _keepers(cnmhost) == len(cnmhost.cnm("ps", "-q").stdout.split()), 10)


def _keepers(host: TestHost) -> int:
    out = host.run(["ps", "-e", "-o", "args="]).stdout
    return sum(1 for line in out.splitlines() if line.strip() == "sleep infinity")


def test_tty_run_has_a_terminal(cnmhost: TestHost) -> None:
    proc = cnmhost.run(
        [
            venv_bin("cnm"),
            "-H",
            cnmhost.host_uri,
            "run",
            "--rm",
            "-t",
            "busybox",
            "sh",
            "-c",
            "tty; echo out; echo err >&2",
        ],
        input=b"",
    )
    assert proc.stdout == b"/dev/pts/0\r\nout\r\nerr\r\n"  # one stream, a terminal's newlines


# -- logs ---------------------------------------------------------------------------------------


def test_logs_are_one_ordered_json_file_stream(cnmhost: TestHost) -> None:
    script = "echo o1; sleep 0.2; echo e1 >&2; sleep 0.2; echo o2; sleep 0.2; echo e2 >&2"
    cnmhost.cnm("run", "--name", "lg1", "busybox", "sh", "-c", script)
    both = cnmhost.run(["sh", "-c", f"{venv_bin('cnm')} -H {cnmhost.host_uri} logs lg1 2>&1"]).stdout
    assert both == "o1\ne1\no2\ne2\n"
    proc = cnmhost.cnm("logs", "lg1")
    assert (proc.stdout, proc.stderr) == ("o1\no2\n", "e1\ne2\n")
    path = inspect(cnmhost, "lg1")[0]["LogPath"]
    assert path.endswith("-json.log")
    records = [json.loads(line) for line in Path(path).read_text().splitlines()]
    assert [(r["log"], r["stream"]) for r in records] == [
        ("o1\n", "stdout"),
        ("e1\n", "stderr"),
        ("o2\n", "stdout"),
        ("e2\n", "stderr"),
    ]
    assert all(r["time"].endswith("Z") for r in records)
    stamped = cnmhost.cnm("logs", "-t", "--tail", "2", "lg1")
    assert [line.split(" ", 1)[1] for line in stamped.stdout.splitlines()] == ["o2"]
    assert [line.split(" ", 1)[1] for line in stamped.stderr.splitlines()] == ["e2"]
    first_time = stamped.stdout.split(" ", 1)[0]
    assert first_time == records[2]["time"].replace("Z", "").ljust(29, "0") + "Z"
    since = cnmhost.cnm("logs", "--since", records[2]["time"], "lg1")
    assert (since.stdout, since.stderr) == ("o2\n", "e2\n")
    until = cnmhost.cnm("logs", "--until", records[1]["time"], "lg1")
    assert (until.stdout, until.stderr) == ("o1\n", "e1\n")


def test_logs_follow_ends_with_the_container(cnmhost: TestHost) -> None:
    cnmhost.cnm(
        "run", "-d", "--name", "lg2", "busybox", "sh", "-c", "echo a; sleep 1; echo b; sleep 1; echo c"
    )
    assert cnmhost.cnm("logs", "-f", "lg2", timeout=30).stdout == "a\nb\nc\n"
    assert cnmhost.cnm("logs", "-f", "--tail", "1", "lg2", timeout=30).stdout == "c\n"


def test_log_rotation_as_json_file(cnmhost: TestHost) -> None:
    script = "i=0; while [ $i -lt 300 ]; do echo line $i; i=$((i+1)); done"
    cnmhost.cnm(
        "run",
        "--name",
        "lg3",
        "--log-opt",
        "max-size=2k",
        "--log-opt",
        "max-file=3",
        "busybox",
        "sh",
        "-c",
        script,
    )
    config = inspect(cnmhost, "lg3")[0]["HostConfig"]["LogConfig"]
    assert config == {"Type": "json-file", "Config": {"max-size": "2k", "max-file": "3"}}
    path = Path(inspect(cnmhost, "lg3")[0]["LogPath"])
    files = sorted(path.parent.glob(path.name + "*"))
    assert [f.name for f in files] == [path.name, path.name + ".1", path.name + ".2"]
    assert all(f.stat().st_size <= 2048 for f in files)
    lines = cnmhost.cnm("logs", "lg3").stdout.splitlines()
    assert lines[-1] == "line 299"
    numbers = [int(x.split()[1]) for x in lines]
    assert numbers == list(range(numbers[0], 300))  # the newest, contiguous


def test_other_log_drivers_are_refused(cnmhost: TestHost) -> None:
    before = cnmhost.cnm("ps", "-aq").stdout
    for opts, message in (
        (["--log-driver", "syslog"], 'logging driver "syslog" is not supported'),
        (["--log-opt", "max-size=lots"], "invalid size"),
        (["--log-opt", "tag=x"], "unknown log opt 'tag'"),
    ):
        proc = cnmhost.cnm("run", "--rm", *opts, "busybox", "true", check=False)
        assert proc.returncode == 125 and message in proc.stderr, proc.stderr
    assert cnmhost.cnm("ps", "-aq").stdout == before
    proc = cnmhost.cnm("run", "--name", "lg4", "--log-driver", "none", "busybox", "echo", "hi")
    assert proc.stdout == "hi\n"  # attach still works without a log
    logs = cnmhost.cnm("logs", "lg4", check=False)
    assert logs.returncode != 0 and "does not support reading" in logs.stderr


@pytest.mark.parametrize("client", ["cnm", "docker"])
def test_start_attach_on_an_exited_container(cnmhost: TestHost, client: str) -> None:
    if client == "docker" and not shutil.which(DOCKER):
        pytest.skip(f"{DOCKER} not installed")
    name = f"sa-{client}"
    cnmhost.cnm("run", "--name", name, "busybox", "sh", "-c", "echo run; echo oops >&2; exit 3", check=False)
    env = {"DOCKER_CONFIG": str(cnmhost.tmp / "docker-config")}
    proc = cnmhost.run([*_client(cnmhost, client), "start", "-a", name], check=False, env=env)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "run\n", "oops\n")
    logs = cnmhost.run([*_client(cnmhost, client), "logs", name], env=env)
    assert (logs.stdout, logs.stderr) == ("run\nrun\n", "oops\noops\n")
    stamped = cnmhost.run([*_client(cnmhost, client), "logs", "-t", "--tail", "2", name], env=env).stdout
    assert stamped.endswith("Z run\n") and len(stamped.split(" ")[0]) == len("2006-01-02T15:04:05.000000000Z")
    assert stamped.count("\n") == 1  # the last two records: this run's two lines


def test_output_waits_in_the_pipe_while_cnmd_restarts(fresh_cnmhost: TestHost) -> None:
    host = fresh_cnmhost
    host.cnm(
        "run",
        "-d",
        "--name",
        "rs1",
        "busybox",
        "sh",
        "-c",
        "i=0; while [ $i -lt 40 ]; do echo n $i; i=$((i+1)); sleep 0.1; done",
    )
    time.sleep(0.5)
    host.kill_daemon(signal.SIGKILL)
    time.sleep(1.5)  # the container writes on while no cnmd reads
    host.start_daemon()
    assert wait_for(lambda: inspect(host, "rs1")[0]["State"]["Status"] == "exited", 30)
    lines = host.cnm("logs", "rs1").stdout.splitlines()
    assert lines == [f"n {i}" for i in range(40)]


# -- run -it: a real terminal -------------------------------------------------------------------


class Pty:
    """``cnm run -it …`` on a pseudo-terminal of our own (its controlling terminal, so the
    kernel sends SIGWINCH when we resize it)."""

    def __init__(
        self, host: TestHost, *args: str, rows: int = 24, cols: int = 80, client: str = "cnm"
    ) -> None:
        self.master, slave = os.openpty()
        self.resize(rows, cols)

        def child_setup() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        env = host.environ({"DOCKER_CONFIG": str(host.tmp / "docker-config")})
        self.proc = subprocess.Popen(
            host.inside([*_client(host, client), *args]),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            preexec_fn=child_setup,
            close_fds=True,
        )
        os.close(slave)
        self.seen = b""

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def expect(self, needle: bytes, timeout: float = 15) -> bytes:
        """Read until ``needle`` appears after what earlier expects consumed."""
        deadline = time.monotonic() + timeout
        while needle not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.master], [], [], left)[0]:
                raise AssertionError(f"no {needle!r} within {timeout}s; saw {self.seen[-400:]!r}")
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                raise AssertionError(f"EOF before {needle!r}; saw {self.seen[-400:]!r}")
            self.seen += chunk
        before, _, self.seen = self.seen.partition(needle)
        return before

    def close(self) -> int | None:
        try:
            return self.proc.wait(timeout=20)
        finally:
            os.close(self.master)


@pytest.mark.parametrize("client", ["cnm", "docker"])
def test_run_it_is_a_real_terminal(cnmhost: TestHost, client: str) -> None:
    if client == "docker" and not shutil.which(DOCKER):
        pytest.skip(f"{DOCKER} not installed")
    name = f"it-{client}"
    term = Pty(cnmhost, "run", "-it", "--name", name, "busybox", "sh", rows=24, cols=80, client=client)
    try:
        term.send(b"echo early-$((40+2))\r")  # typed before the shell is ready
        term.expect(b"early-42")
        term.expect(b"# ")  # the prompt
        term.send(b"tty\r")
        term.expect(b"/dev/pts/0")
        term.send(b"stty size\r")
        term.expect(b"24 80")
        term.resize(40, 132)  # the kernel sends cnm SIGWINCH; cnm posts /resize
        time.sleep(0.5)
        term.send(b"stty size\r")
        term.expect(b"40 132")
        term.send(b"sleep 30; echo not-interrupted\r")
        time.sleep(0.5)
        term.send(b"\x03")  # Ctrl-C reaches the shell's foreground job, not cnm
        term.expect(b"# ")
        term.send(b"echo after-$((1+1))\r")
        term.expect(b"after-2")
        assert b"not-interrupted" not in term.seen
        term.send(b"\x10\x11")  # Ctrl-P Ctrl-Q: detach
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
            term.close()
    state = inspect(cnmhost, name)[0]["State"]
    assert state["Status"] == "running"
    cnmhost.cnm("rm", "-f", name)


def test_run_it_exit_code_and_ctrl_d(cnmhost: TestHost) -> None:
    term = Pty(cnmhost, "run", "-it", "--rm", "busybox", "sh")
    try:
        term.expect(b"# ")
        term.send(b"exit 7\r")
        assert term.close() == 7
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
            term.close()


def test_tty_container_keeps_its_terminal_across_a_cnmd_restart(fresh_cnmhost: TestHost) -> None:
    """The pty master is held by a keeper process too: a SIGKILLed cnmd does not hang up
    the container's terminal, and the restarted cnmd copies on from it."""
    host = fresh_cnmhost
    host.cnm(
        "run",
        "-d",
        "-t",
        "--name",
        "tt1",
        "busybox",
        "sh",
        "-c",
        "i=0; while [ $i -lt 30 ]; do echo t $i; i=$((i+1)); sleep 0.1; done",
    )
    time.sleep(0.5)
    host.kill_daemon(signal.SIGKILL)
    time.sleep(1)
    host.start_daemon()
    assert wait_for(lambda: inspect(host, "tt1")[0]["State"]["Status"] == "exited", 30)
    assert inspect(host, "tt1")[0]["State"]["ExitCode"] in (0, 255)  # 255: no longer our child
    lines = host.cnm("logs", "tt1").stdout.replace("\r", "").splitlines()
    assert lines == [f"t {i}" for i in range(30)]
    host.cnm("rm", "tt1")
    assert _keepers(host) == 0


def test_run_i_pipes_stdin_until_eof(cnmhost: TestHost) -> None:
    proc = cnmhost.run(
        [
            venv_bin("cnm"),
            "-H",
            cnmhost.host_uri,
            "run",
            "-i",
            "--rm",
            "busybox",
            "sh",
            "-c",
            "cat; echo done >&2",
        ],
        input="line 1\nline 2\n",
    )
    assert (proc.stdout, proc.stderr) == ("line 1\nline 2\n", "done\n")
