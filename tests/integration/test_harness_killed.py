"""Throwaway hosts leave nothing when whoever made them is killed (issue 7): no init, no cnmd,
no container, no /tmp/cnm-test-* directory, no cgroup, no reaper -- for ``scripts/in-sandbox``
stopped by SIGTERM, SIGINT or SIGKILL, and for a pytest run that times out (both of
pytest-timeout's methods) or gets SIGTERM while a test sleeps inside a ``TestHost``.

Each case builds its own throwaway host and kills only the process it started."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from harness import REPO, TestHost, _children, _ns_inode, _start_time, cgroup_dirs, pids_in_pidns, wait_for

pytestmark = pytest.mark.root

IN_SANDBOX = REPO / "scripts" / "in-sandbox"
TESTS = REPO / "tests"
# Inside the sandbox: say where it lives (tmp dir, pid namespace), then wait to be killed.
REPORT = 'echo "HOST ${CNM_HOST#unix://} $(readlink /proc/self/ns/pid)"; exec sleep 600'


def read_report(proc: subprocess.Popen, timeout: float = 120) -> tuple[Path, int]:
    """The ``HOST <socket> pid:[<inode>]`` line the child prints once its host is up."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    seen = b""
    try:
        while sel.select(timeout):
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
            if line.startswith(b"HOST "):
                _, where, ns = line.decode().split()
                tmp = Path(where)
                while not tmp.name.startswith("cnm-test-"):
                    tmp = tmp.parent
                return tmp, int(ns.removeprefix("pid:[").rstrip("]"))
    finally:
        sel.close()
    proc.kill()
    pytest.fail(f"no HOST line from the child: {seen!r}")


def processes_naming(text: str) -> list[int]:
    """Live processes whose command line mentions ``text`` (cnmd's roots, the reaper)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if text.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


def leftovers(tmp: Path, pidns: int) -> dict[str, object]:
    left = {
        "tmp dir": tmp.exists(),
        "processes in the pid namespace": pids_in_pidns(pidns),
        "processes naming the tmp dir": processes_naming(str(tmp)),
        "cgroups": [str(p) for p in cgroup_dirs(tmp.name)],
    }
    return {k: v for k, v in left.items() if v}


def assert_nothing_left(tmp: Path, pidns: int) -> None:
    assert tmp.name.startswith("cnm-test-") and pidns
    wait_for(lambda: not leftovers(tmp, pidns), 60, interval=0.2)
    assert leftovers(tmp, pidns) == {}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_in_sandbox_killed_leaves_nothing(sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(IN_SANDBOX), "--daemon", "--", "sh", "-c", REPORT],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "CNM_NO_AUTOSTART": "1"},
    )
    try:
        tmp, pidns = read_report(proc)
        assert pids_in_pidns(pidns), "the sandbox is not running"
        os.kill(proc.pid, sig)
        code = proc.wait(timeout=60)
        if sig != signal.SIGKILL:
            assert code == 128 + sig, code
        assert_nothing_left(tmp, pidns)
    finally:
        if proc.poll() is None:
            proc.kill()


SLEEPER = """
    import sys, time
    sys.path.insert(0, {tests!r})
    from harness import TestHost

    def test_sleeps_inside_a_host():
        with TestHost() as host:
            host.start_daemon()
            print("HOST", host.socket_path, f"pid:[{{host._pidns}}]", flush=True)
            time.sleep(600)
"""


@pytest.mark.parametrize("how", ["timeout-signal", "timeout-thread", "sigterm"])
def test_pytest_killed_inside_a_host_leaves_nothing(tmp_path: Path, how: str) -> None:
    test_file = tmp_path / "test_sleeper.py"
    test_file.write_text(textwrap.dedent(SLEEPER.format(tests=str(TESTS))))
    argv = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(test_file)]
    if how.startswith("timeout"):
        # long enough to build the host and start cnmd on a busy machine, then it fires
        argv += ["--timeout", "60", "--timeout-method", how.removeprefix("timeout-")]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
        start_new_session=True,
        env={**os.environ, "CNM_NO_AUTOSTART": "1"},
    )
    try:
        tmp, pidns = read_report(proc)
        if how == "sigterm":
            os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=180)
        assert code != 0
        assert_nothing_left(tmp, pidns)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_reaper_takes_a_host_whose_init_was_never_reported() -> None:
    """Killed between starting ``unshare`` and learning its init's pid: the reaper kills
    ``unshare`` (the one it was told of), and ``--kill-child`` takes the namespace down."""
    host = TestHost()  # its tmp dir and its reaper, no namespaces yet
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "sleep", "600"],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert wait_for(lambda: len(_children(proc.pid)) == 1, 20, interval=0.05)
        pidns = _ns_inode(_children(proc.pid)[0], "pid")
        assert pidns and pids_in_pidns(pidns)
        host._tell_reaper(f"unshare {proc.pid} {_start_time(proc.pid)}")
        host._tell_reaper(None)  # as if the test process had died here
        assert host._reaper is not None and host._reaper.wait(timeout=60) == 0
        assert proc.wait(timeout=20) != 0
        assert_nothing_left(host.tmp, pidns)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_in_sandbox_keep_log_copies_cnmds_log(tmp_path: Path) -> None:
    kept = tmp_path / "cnmd.log"
    proc = subprocess.run(
        [sys.executable, str(IN_SANDBOX), "--daemon", "--keep-log", str(kept), "--", "true"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "CNM_NO_AUTOSTART": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "start cnmd" in kept.read_text()
