"""One daemon, its own state: two cnmd in one network namespace (own roots, own bridge
names) never remove each other's bridges, veths or rules when they (re)start; a daemon
cannot take a data root another one holds; the CLI never starts a daemon for a socket the
user named."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from e2e_util import ip_on, pings
from harness import TestHost, unix_http, venv_bin, wait_for

NO_AUTOSTART = {"CNM_NO_AUTOSTART": "1"}


class SecondDaemon:
    """A second cnmd inside ``host``: roots under the host's tmp dir, bridge ``cnm1``,
    cgroups below the host's parent (so the harness removes them)."""

    def __init__(self, host: TestHost, name: str = "b") -> None:
        self.host = host
        self.data_root = host.tmp / f"data-{name}"
        self.exec_root = host.tmp / f"exec-{name}"
        self.socket = self.exec_root / "cnm.sock"
        self.log = host.tmp / f"cnmd-{name}.log"
        self.cgroup_parent = f"{host.cgroup_parent}/{name}"
        self.proc: subprocess.Popen | None = None

    def argv(self, *extra: str) -> list[str]:
        return [
            venv_bin("cnmd"),
            "-H",
            f"unix://{self.socket}",
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.exec_root),
            "--bridge-name",
            "cnm1",
            "--log-level",
            "debug",
            "--cgroup-parent",
            self.cgroup_parent,
            *extra,
        ]

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = self.host.spawn(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        ok = wait_for(self.ping, timeout=30, interval=0.1)
        assert ok, f"second cnmd did not answer: {self.log.read_text()[-3000:]}"

    def ping(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"second cnmd exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
        try:
            return unix_http(str(self.socket), "GET", "/_ping", timeout=2).status == 200
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal cnmd (the child of our nsenter) and wait for it."""
        assert self.proc is not None
        kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        for pid in kids:
            subprocess.run(["kill", f"-{int(sig)}", pid], check=False)
        self.proc.wait(timeout=30)

    def cnm(self, *args: str, check: bool = True, timeout: float = 90) -> subprocess.CompletedProcess:
        return self.host.run(
            [venv_bin("cnm"), "-H", f"unix://{self.socket}", *args],
            check=check,
            timeout=timeout,
            env=NO_AUTOSTART,
        )


def links(host: TestHost) -> set[str]:
    return {f"{link['ifname']}@{link.get('master', '')}" for link in host.ip_json("link", "show")}


def nft_tables(host: TestHost) -> set[str]:
    return set(host.run(["nft", "list", "tables"]).stdout.splitlines())


def chains(host: TestHost, table: str) -> set[str]:
    out = host.run(["nft", "list", "table", "ip", table]).stdout
    return {line.split()[1] for line in out.splitlines() if line.strip().startswith("chain ")}


def test_two_daemons_in_one_namespace_keep_each_others_objects(fresh_cnmhost: TestHost, busybox_tar) -> None:
    a = fresh_cnmhost
    a.cnm("network", "create", "--subnet", "10.81.0.0/24", "neta")
    a.cnm("run", "-d", "--name", "ca", "--network", "neta", "-p", "8081:80", "busybox", "sleep", "1d")
    b = SecondDaemon(a)
    b.start()
    b.cnm("image", "import", str(busybox_tar), "busybox", timeout=120)
    b.cnm("network", "create", "--subnet", "10.82.0.0/24", "netb")
    b.cnm("run", "-d", "--name", "cb", "--network", "netb", "-p", "8082:80", "busybox", "sleep", "1d")

    everything = links(a)
    tables = nft_tables(a)
    assert {"table ip cnm", "table ip cnm-cnm1"} <= tables
    rules = {t: chains(a, t) for t in ("cnm", "cnm-cnm1")}
    ip_b = b.cnm("inspect", "-f", "{{.NetworkSettings.Networks.netb.IPAddress}}", "cb").stdout.strip()

    # each restart, by SIGKILL or SIGTERM, of either daemon leaves the other's objects
    for restart in ("a-kill", "b-kill", "a-term", "b-term"):
        if restart.startswith("a"):
            a.kill_daemon(signal.SIGKILL if restart.endswith("kill") else signal.SIGTERM)
            a.start_daemon()
        else:
            b.stop(signal.SIGKILL if restart.endswith("kill") else signal.SIGTERM)
            b.start()
        assert links(a) == everything, restart
        assert nft_tables(a) == tables, restart
        assert {t: chains(a, t) for t in rules} == rules, restart
        assert pings(a, "ca", "10.81.0.1"), restart
        assert b.cnm("exec", "cb", "ping", "-c1", "-W2", "10.82.0.1", check=False).returncode == 0, restart
    assert ip_on(a, "ca", "neta") == "10.81.0.2" and ip_b == "10.82.0.2"

    b.cnm("rm", "-f", "cb")
    b.cnm("network", "rm", "netb")
    a.cnm("rm", "-f", "ca")
    a.cnm("network", "rm", "neta")


def test_a_held_data_root_is_refused(fresh_cnmhost: TestHost) -> None:
    host = fresh_cnmhost
    other_exec = host.tmp / "exec-x"
    argv = host.daemon_argv()
    argv[argv.index("--exec-root") + 1] = str(other_exec)
    argv[argv.index("-H") + 1] = f"unix://{other_exec}/cnm.sock"
    argv[argv.index("--bridge-name") + 1] = "cnm9"
    result = host.run(argv, check=False, timeout=60)
    pid = host.run(["cat", str(host.data_root / "cnmd.pid")]).stdout.strip()
    assert result.returncode == 1
    assert f"another cnmd (pid {pid}) is running with data root {host.data_root}" in result.stderr
    assert not (other_exec / "cnm.sock").exists()
    assert host.ping()


def test_iptables_backend_refuses_to_share_a_namespace(fresh_cnmhost: TestHost) -> None:
    b = SecondDaemon(fresh_cnmhost, "ipt")
    result = fresh_cnmhost.run(b.argv("--firewall-backend", "iptables"), check=False, timeout=60)
    assert result.returncode == 1
    assert "the iptables backend's chains (CNM, CNM-FORWARD ...) cannot be shared" in result.stderr


def test_a_second_daemon_on_the_same_bridge_name_is_refused_and_changes_nothing(
    fresh_cnmhost: TestHost,
) -> None:
    a = fresh_cnmhost
    a.cnm("network", "create", "--subnet", "10.84.0.0/24", "neta")
    before = (links(a), nft_tables(a), chains(a, "cnm"))
    argv = SecondDaemon(a, "same").argv()
    argv[argv.index("--bridge-name") + 1] = "cnm0"
    result = a.run(argv, check=False, timeout=60)
    assert result.returncode == 1
    assert "bridge cnm0 belongs to another cnmd" in result.stderr and "own --bridge-name" in result.stderr
    assert (links(a), nft_tables(a), chains(a, "cnm")) == before
    a.cnm("network", "rm", "neta")


def private_default_roots(host: TestHost) -> bool:
    """/run and /var/lib/cnm (or /var/lib) inside the test host are its own tmpfs."""
    mounts = host.run(["cat", "/proc/self/mountinfo"]).stdout.splitlines()
    points = {line.split()[4]: line.split(" - ")[1].split()[0] for line in mounts}
    return points.get("/run") == "tmpfs" and "tmpfs" in (points.get("/var/lib/cnm"), points.get("/var/lib"))


@pytest.mark.parametrize("how", ["CNM_HOST", "-H"])
def test_cli_never_starts_a_daemon_for_a_named_socket(testhost: TestHost, how: str) -> None:
    """Inside a throwaway host (private /run and /var/lib): with auto-start allowed, a
    named socket nobody serves is an error, and no cnmd starts anywhere."""
    assert private_default_roots(testhost)
    env = {"CNM_NO_AUTOSTART": "", "CNM_HOST": "unix:///nonexistent"}
    argv = (
        [venv_bin("cnm"), "ps"] if how == "CNM_HOST" else [venv_bin("cnm"), "-H", "unix:///nonexistent", "ps"]
    )
    result = testhost.run(argv, check=False, env=env, timeout=60)
    assert result.returncode == 1
    assert result.stderr == (
        "Cannot connect to the cnm daemon at unix:///nonexistent. Is the cnm daemon running?\n"
    )
    time.sleep(0.5)  # a detached cnmd would be starting now
    procs = testhost.run(["ps", "-eo", "args"]).stdout
    assert "cnmd" not in procs, procs
    assert testhost.run(["test", "-e", "/run/cnm"], check=False).returncode != 0


def test_autostart_only_on_free_default_roots(testhost: TestHost) -> None:
    """Inside a throwaway host (private /run and /var/lib): the default socket with nothing
    answering starts cnmd with its defaults; once that daemon holds the roots, a CLI that
    cannot reach it (its socket removed) does not start a second one."""
    assert private_default_roots(testhost)
    env = {"CNM_NO_AUTOSTART": "", "CNM_HOST": ""}
    first = testhost.run([venv_bin("cnm"), "version", "--format", "{{.Server.Version}}"], env=env, timeout=90)
    assert first.stdout.strip(), first
    pid = testhost.run(["cat", "/var/lib/cnm/cnmd.pid"]).stdout.strip()
    assert testhost.run(["cat", "/run/cnm/cnmd.pid"]).stdout.strip() == pid

    testhost.run(["rm", "/run/cnm/cnm.sock"])
    second = testhost.run([venv_bin("cnm"), "ps"], check=False, env=env, timeout=60)
    assert second.returncode == 1
    assert second.stderr == (
        "Cannot connect to the cnm daemon at unix:///run/cnm/cnm.sock: a cnmd "
        f"(pid {pid}) holds /var/lib/cnm but does not answer on /run/cnm/cnm.sock; "
        "it may be starting or stuck\n"
    )
    procs = [line for line in testhost.run(["ps", "-eo", "pid,args"]).stdout.splitlines() if "cnmd" in line]
    assert len(procs) == 1 and procs[0].split()[0] == pid, procs
