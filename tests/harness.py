"""Throwaway test hosts: cnmd and its containers in private namespaces, never the real host.

A ``TestHost`` owns:

* a unique directory ``/tmp/cnm-test-XXXX/`` with ``data/`` and ``exec/`` (cnmd's two roots;
  the API socket ``exec/cnm.sock`` lives on the real filesystem, so the test process reaches
  it directly), ``cnmd.log`` and ``hostinit.log``;
* a private "host": ``unshare --pid --fork --mount-proc --net --mount --propagation private``
  running ``tests/hostinit.py`` as pid 1 (tmpfs on /run, lo up, a "world" netns behind
  ``wan0`` 203.0.113.2/24 + 2001:db8:203::2/64 ↔ ``eth0`` 203.0.113.1/24 + 2001:db8:203::1/64,
  default routes of both families via the world);
* a unique cgroup parent (``cnm-test-XXXX``) handed to cnmd, so runc's cgroups can be found
  and removed.

Everything runs inside with ``nsenter -t <init> -n -m -p``.  Teardown SIGKILLs the init (the
pid namespace takes every process with it; the net and mount namespaces vanish), removes the
cgroup directories under the parent in every ``/sys/fs/cgroup`` hierarchy, then the tmp dir.
The harness only *reads* the real host (``/proc``, ``/sys/fs/cgroup`` listing); all writes
happen inside the namespaces, except the tmp dir and the cgroup clean-up.

**Nothing is left when the test process is killed** (SIGTERM, SIGKILL, a pytest timeout in
the middle of a teardown): each host has a *reaper*, ``python3 tests/harness.py --reap``, in a
session of its own, holding the read end of a pipe only the test process writes to.  When that pipe closes -- ``close()`` done, or the
test process gone however it went -- the reaper runs the same teardown (a no-op after a
clean ``close()``): init, cgroups, tmp dir.  (``unshare --kill-child`` also takes the init
along if ``unshare`` alone is killed.)
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HOSTINIT = Path(__file__).resolve().parent / "hostinit.py"
CGROUP_ROOT = Path("/sys/fs/cgroup")
WORLD_ADDR = "203.0.113.1"
HOST_ADDR = "203.0.113.2"
WORLD_ADDR6 = "2001:db8:203::1"
HOST_ADDR6 = "2001:db8:203::2"
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


ROOT_SKIP_REASON = "needs root: builds throwaway namespaces (run the suite as root, e.g. `sudo make test`)"


class HarnessError(RuntimeError):
    """The test host could not be built, or a command inside it failed."""


def venv_bin(name: str) -> str:
    """The console script ``name`` of the venv running the tests (``.venv/bin/cnm``)."""
    for candidate in (Path(sys.executable).parent / name, REPO / ".venv" / "bin" / name):
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise HarnessError(f"{name} not found next to {sys.executable} nor in {REPO}/.venv/bin (run `make venv`)")


def is_root() -> bool:
    return os.geteuid() == 0


# -- HTTP over a unix socket ---------------------------------------------------------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


@dataclass(frozen=True)
class ApiResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def message(self) -> str:
        """Docker's error text (``{"message": …}``), or the raw body."""
        try:
            data = self.json()
        except ValueError:
            return self.body.decode(errors="replace")
        return data.get("message", "") if isinstance(data, dict) else str(data)


def unix_http(sock_path: str, method: str, path: str, body: Any = None, timeout: float = 30.0) -> ApiResponse:
    """One HTTP/1.1 request to ``sock_path``; ``body`` is sent as JSON when not None."""
    conn = _UnixHTTPConnection(sock_path, timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        return ApiResponse(resp.status, dict(resp.getheaders()), resp.read())
    finally:
        conn.close()


# -- reading the real host (never writing) -------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _ns_inode(pid: int, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


NS_GET_PARENT = 0xB702  # ioctl on a namespace fd: the parent pid namespace (linux/nsfs.h)


def _in_pidns_tree(pid: int, inode: int) -> bool:
    """Is ``pid`` in pid namespace ``inode`` or one nested below it (a container's)?"""
    try:
        fd = os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY)
    except OSError:
        return False
    try:
        for _ in range(32):  # the kernel nests at most 32 levels
            if os.fstat(fd).st_ino == inode:
                return True
            try:
                parent = fcntl.ioctl(fd, NS_GET_PARENT)
            except OSError:  # reached our own namespace (EPERM) or the top
                return False
            os.close(fd)
            fd = parent
        return False
    finally:
        os.close(fd)


def pids_in_pidns(inode: int) -> list[int]:
    """Every live process (as seen from here) in pid namespace ``inode`` or below it."""
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and _in_pidns_tree(int(e), inode)]


def mounts_under(path: str) -> list[str]:
    """Mount points in *this* mount namespace at or below ``path``."""
    prefix = path.rstrip("/")
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return points


@dataclass(frozen=True)
class HostSnapshot:
    """What a test could leak onto the real host, read from the real host."""

    links: frozenset[str]
    netns: frozenset[str]
    nft_tables: frozenset[str]
    mounts: frozenset[str]

    @classmethod
    def take(cls) -> HostSnapshot:
        links = {
            f"{link['ifindex']}:{link['ifname']}"
            for link in json.loads(_read(["ip", "-j", "link", "show"]) or "[]")
        }
        netns = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
        tables = set()
        nft = _read(["nft", "-j", "list", "tables"])
        for item in json.loads(nft or '{"nftables": []}').get("nftables", []):
            if "table" in item:
                tables.add(f"{item['table']['family']} {item['table']['name']}")
        mounts = {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}
        return cls(frozenset(links), frozenset(netns), frozenset(tables), frozenset(mounts))

    def new_since(self, before: HostSnapshot) -> dict[str, set[str]]:
        """What exists now and did not exist in ``before`` (empty dict: nothing new)."""
        diff = {
            "links": set(self.links - before.links),
            "netns": set(self.netns - before.netns),
            "nft_tables": set(self.nft_tables - before.nft_tables),
            "mounts": set(self.mounts - before.mounts),
        }
        return {k: v for k, v in diff.items() if v}


def _read(argv: Sequence[str]) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout


# -- the test host --------------------------------------------------------------------------------


@dataclass
class TestHost:
    """A private host for one test (or one module).  Use as a context manager or through the
    ``testhost`` fixture.  Every method that runs something runs it inside."""

    __test__ = False  # not a pytest test class

    #: a hostname of its own (a private UTS namespace too), e.g. a lab host's ``h1``; "" keeps
    #: the real host's UTS namespace, as every single-host test does
    hostname: str = ""
    tmp: Path = field(init=False)
    data_root: Path = field(init=False)
    exec_root: Path = field(init=False)
    socket_path: Path = field(init=False)
    cgroup_parent: str = field(init=False)
    init_pid: int = 0
    daemon_log: Path = field(init=False)
    _unshare: subprocess.Popen | None = None
    _daemon: subprocess.Popen | None = None
    _pidns: int | None = None
    _reaper: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="cnm-test-", dir="/tmp"))
        self.data_root = self.tmp / "data"
        self.exec_root = self.tmp / "exec"
        self.data_root.mkdir()
        self.exec_root.mkdir()
        self.socket_path = self.exec_root / "cnm.sock"
        self.cgroup_parent = self.tmp.name  # cnm-test-XXXX: unique per host
        self.daemon_log = self.tmp / "cnmd.log"
        try:
            self._reaper = subprocess.Popen(
                [sys.executable, "-I", str(Path(__file__).resolve()), "--reap", str(self.tmp)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> TestHost:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, timeout: float = 20.0) -> None:
        """Build the private host and wait until its init printed READY."""
        if not is_root():
            raise HarnessError("a TestHost needs root (unshare --net --mount --pid)")
        log = open(self.tmp / "hostinit.log", "wb")
        try:
            self._unshare = subprocess.Popen(
                [
                    "unshare",
                    "--pid",
                    "--fork",
                    "--kill-child",
                    "--mount-proc",
                    "--net",
                    "--mount",
                    "--propagation",
                    "private",
                    *(["--uts"] if self.hostname else []),
                    sys.executable,
                    str(HOSTINIT),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=self.environ(),
                start_new_session=True,
            )
        finally:
            log.close()
        self._tell_reaper(f"unshare {self._unshare.pid} {_start_time(self._unshare.pid)}")
        assert self._unshare.stdout is not None
        line = _readline_with_timeout(self._unshare.stdout, timeout)
        self._unshare.stdout.close()
        if line.strip() != b"READY":
            raise HarnessError(f"test host did not start: {(self.tmp / 'hostinit.log').read_text()!r}")
        # The init is the one child of unshare (never `$!` of a shell: that would be the wrong pid).
        children = _children(self._unshare.pid)
        if len(children) != 1:
            raise HarnessError(f"expected one child of unshare {self._unshare.pid}, found {children}")
        self.init_pid = children[0]
        self._pidns = _ns_inode(self.init_pid, "pid")
        self._tell_reaper(f"init {self.init_pid} {self._pidns}")
        if self.hostname:
            self.run(["hostname", self.hostname])

    def close(self) -> None:
        """Tear everything down; idempotent; raises HarnessError listing what could not be
        removed (after trying everything)."""
        problems: list[str] = []
        if self.init_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGKILL)
        if self._unshare is not None:
            try:
                self._unshare.wait(timeout=20)
            except subprocess.TimeoutExpired:
                problems.append(f"unshare {self._unshare.pid} did not exit")
        if self._daemon is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._daemon.wait(timeout=10)
        if self._pidns is not None and not wait_for(
            lambda: not pids_in_pidns(self._pidns), 20, interval=0.05
        ):
            problems.append(f"processes left in the test pid namespace: {pids_in_pidns(self._pidns)}")
        problems += remove_cgroups(self.cgroup_parent)
        if self.tmp.exists():
            left = mounts_under(str(self.tmp))
            if left:  # never rm -rf through a mount
                problems.append(f"mounts left under {self.tmp}: {left}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
                if self.tmp.exists():
                    problems.append(f"could not remove {self.tmp}")
        self.init_pid = 0
        self._unshare = None
        self._daemon = None
        if self._reaper is not None:  # its turn: a no-op now, unless something was left
            self._tell_reaper(None)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._reaper.wait(timeout=30)
            self._reaper = None
        if problems:
            raise HarnessError("test host teardown: " + "; ".join(problems))

    def _tell_reaper(self, line: str | None) -> None:
        """Send the reaper a line (``init PID PIDNS``), or close its pipe (None): go."""
        if self._reaper is None or self._reaper.stdin is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if line is None:
                self._reaper.stdin.close()
            else:
                self._reaper.stdin.write(line.encode() + b"\n")
                self._reaper.stdin.flush()

    # -- running things inside -------------------------------------------------------------------

    def environ(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}:{SBIN_PATH}"
        env["CNM_HOST"] = f"unix://{self.socket_path}"
        env.pop("PYTHONPATH", None)
        if extra:
            env.update(extra)
        return env

    def inside(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside the test host (its net, mount and pid namespaces)."""
        if not self.init_pid:
            raise HarnessError("the test host is not running")
        uts = ["-u"] if self.hostname else []
        return ["nsenter", "-t", str(self.init_pid), "-n", "-m", "-p", *uts, "--", *map(str, argv)]

    def run(
        self,
        argv: Sequence[str],
        check: bool = True,
        timeout: float = 60,
        input: str | bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` inside and wait.  Output is captured as text (bytes if ``input`` is
        bytes).  ``check``: a non-zero exit raises HarnessError with both streams."""
        text = not isinstance(input, bytes)
        proc = subprocess.run(
            self.inside(argv),
            input=input,
            capture_output=True,
            text=text,
            timeout=timeout,
            env=self.environ(env),
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise HarnessError(
                f"{' '.join(map(str, argv))} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    def spawn(self, argv: Sequence[str], **popen: Any) -> subprocess.Popen:
        """Start ``argv`` inside in the background (a server in the world, say).  It dies
        with the test host at the latest."""
        popen.setdefault("stdin", subprocess.DEVNULL)
        popen.setdefault("env", self.environ())
        return subprocess.Popen(self.inside(argv), **popen)

    def sh(self, script: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.run(["sh", "-c", script], check=check, timeout=timeout)

    def cnm(
        self, *args: str, check: bool = True, timeout: float = 60, input: str | bytes | None = None
    ) -> subprocess.CompletedProcess:
        """``cnm -H unix://<exec>/cnm.sock ARGS…`` inside."""
        return self.run(
            [venv_bin("cnm"), "-H", f"unix://{self.socket_path}", *args],
            check=check,
            timeout=timeout,
            input=input,
        )

    def world(
        self, argv: Sequence[str], check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """``ip netns exec world ARGV`` inside."""
        return self.run(["ip", "netns", "exec", "world", *argv], check=check, timeout=timeout)

    def netns_exec(
        self, path: str, argv: Sequence[str], check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` in the network namespace bind-mounted at ``path`` (inside the host)."""
        return self.run(["nsenter", f"--net={path}", "--", *argv], check=check, timeout=timeout)

    def ip_json(self, *args: str, netns: str | None = None) -> Any:
        """Parsed ``ip -j ARGS``; ``netns`` is a name under /run/netns or a path."""
        if netns is None:
            return json.loads(self.run(["ip", "-j", *args]).stdout or "[]")
        if netns.startswith("/"):
            return json.loads(self.netns_exec(netns, ["ip", "-j", *args]).stdout or "[]")
        return json.loads(self.run(["ip", "-n", netns, "-j", *args]).stdout or "[]")

    def nft_json(self) -> list[dict[str, Any]]:
        """``nft -j list ruleset`` inside: the list under ``nftables`` (metainfo dropped)."""
        out = self.run(["nft", "-j", "list", "ruleset"]).stdout
        items = json.loads(out or '{"nftables": []}').get("nftables", [])
        return [i for i in items if "metainfo" not in i]

    # -- the daemon ------------------------------------------------------------------------------

    @property
    def host_uri(self) -> str:
        return f"unix://{self.socket_path}"

    def daemon_argv(self, *extra: str) -> list[str]:
        return [
            venv_bin("cnmd"),
            "-H",
            self.host_uri,
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.exec_root),
            "--bridge-name",
            "cnm0",
            "--log-level",
            "debug",
            "--cgroup-parent",
            self.cgroup_parent,
            *extra,
        ]

    def start_daemon(self, *extra: str, timeout: float = 30.0, argv: Sequence[str] | None = None) -> None:
        """Start cnmd inside in the background (log appended to ``cnmd.log``) and wait until
        ``GET /_ping`` answers 200.  ``argv`` replaces the whole cnmd command (harness
        self-tests use a stand-in daemon)."""
        if self.daemon_running():
            raise HarnessError("cnmd is already running in this test host")
        with open(self.daemon_log, "ab") as log:
            log.write(f"==== {time.strftime('%H:%M:%S')} start cnmd {' '.join(extra)}\n".encode())
            log.flush()
            command = list(argv) if argv is not None else self.daemon_argv(*extra)
            self._daemon = self.spawn(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._daemon.poll() is not None:
                raise HarnessError(f"cnmd exited {self._daemon.returncode}:\n{self.daemon_log_tail()}")
            if self.ping():
                return
            time.sleep(0.05)
        raise HarnessError(f"cnmd did not answer /_ping within {timeout}s:\n{self.daemon_log_tail()}")

    def ping(self) -> bool:
        try:
            return self.api("GET", "/_ping", timeout=2).status == 200
        except OSError:
            return False

    def daemon_pid(self) -> int:
        """Host-side pid of cnmd (the child of our nsenter), 0 if none."""
        if self._daemon is None or self._daemon.poll() is not None:
            return 0
        kids = _children(self._daemon.pid)
        return kids[0] if kids else 0

    def daemon_running(self) -> bool:
        return self.daemon_pid() != 0

    def kill_daemon(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal cnmd and wait for it to exit; returns nsenter's exit status (cnmd's)."""
        pid = self.daemon_pid()
        if not pid or self._daemon is None:
            raise HarnessError("cnmd is not running")
        os.kill(pid, sig)
        try:
            return self._daemon.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"cnmd did not exit within {timeout}s of signal {sig}") from None
        finally:
            if self._daemon.poll() is not None:
                self._daemon = None

    def daemon_log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.daemon_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no cnmd log)"

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> ApiResponse:
        """An Engine API request over the socket, from the test process."""
        return unix_http(str(self.socket_path), method, path, body, timeout)

    def import_image(self, tar: str | Path, name: str = "busybox") -> None:
        self.cnm("image", "import", str(tar), name, timeout=120)


def _start_time(pid: int) -> int:
    """Field 22 of /proc/PID/stat (start time in clock ticks): with the pid, an identity
    that pid reuse cannot fake.  0 when the process is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def reap(tmp: Path, lines: Any) -> list[str]:
    """The reaper's teardown of the host whose directory is ``tmp``, once ``lines`` (the
    pipe from the test process) ends: SIGKILL its init and its ``unshare`` (each only if
    that pid still is the process recorded: pids get reused; killing ``unshare`` covers a
    host killed before its init was known), wait for the pid namespace to empty, remove
    its cgroups and its directory.  Returns what could not be removed."""
    init_pid = pidns = unshare_pid = unshare_start = 0
    for line in lines:
        words = line.split()
        if len(words) == 3 and words[0] == b"init":
            init_pid, pidns = int(words[1]), int(words[2])
        elif len(words) == 3 and words[0] == b"unshare":
            unshare_pid, unshare_start = int(words[1]), int(words[2])
    problems: list[str] = []
    if init_pid and _ns_inode(init_pid, "pid") == pidns:
        with contextlib.suppress(ProcessLookupError):
            os.kill(init_pid, signal.SIGKILL)
    if unshare_pid and unshare_start and _start_time(unshare_pid) == unshare_start:
        with contextlib.suppress(ProcessLookupError):
            os.kill(unshare_pid, signal.SIGKILL)  # --kill-child: its init goes too
        wait_for(lambda: _start_time(unshare_pid) != unshare_start, 20, interval=0.05)
    if pidns and not wait_for(lambda: not pids_in_pidns(pidns), 20, interval=0.05):
        problems.append(f"processes left in pid namespace {pidns}")
    problems += remove_cgroups(tmp.name)
    if tmp.exists():
        if mounts_under(str(tmp)):  # never rm -rf through a mount
            problems.append(f"mounts left under {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return problems


def _reaper_main(argv: list[str]) -> int:
    tmp = Path(argv[0])
    if not tmp.name.startswith("cnm-test-") or tmp.parent != Path("/tmp"):
        print(f"harness --reap: refusing {tmp}", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # only the pipe closing ends its wait
    problems = reap(tmp, sys.stdin.buffer)
    if problems:
        print(f"harness --reap {tmp}: " + "; ".join(problems), file=sys.stderr)
    return 1 if problems else 0


def _readline_with_timeout(stream: Any, timeout: float) -> bytes:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            return b""
        return stream.readline()
    finally:
        sel.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 15, interval: float = 0.2) -> bool:
    """Poll ``predicate`` until true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def cgroup_dirs(parent: str) -> list[Path]:
    """``<hierarchy>/<parent>`` in every cgroup hierarchy (v1 controllers, v2 unified)."""
    if not parent or "/" in parent or parent in (".", ".."):
        raise HarnessError(f"refusing cgroup parent {parent!r}")
    found = [CGROUP_ROOT / parent] if (CGROUP_ROOT / parent).is_dir() else []
    with contextlib.suppress(OSError):
        for hierarchy in CGROUP_ROOT.iterdir():
            candidate = hierarchy / parent
            if hierarchy.is_dir() and not hierarchy.is_symlink() and candidate.is_dir():
                found.append(candidate)
    return found


def remove_cgroups(parent: str, timeout: float = 10.0) -> list[str]:
    """rmdir every cgroup under ``parent`` bottom-up (cgroupfs only allows rmdir of empty
    groups; their tasks are dead once the pid namespace is).  Returns what is left."""

    def sweep() -> bool:
        for top in cgroup_dirs(parent):
            for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
        return not cgroup_dirs(parent)

    if wait_for(sweep, timeout, interval=0.2):
        return []
    return [f"cgroups left: {[str(p) for p in cgroup_dirs(parent)]}"]


# -- pytest glue (duck-typed: no pytest import here) ------------------------------------------------


def test_failed(request: Any) -> bool:
    """Did the test behind ``request`` fail (or not get to run its call phase)?  Needs the
    ``rep_call`` attribute set by the suite conftest's makereport hook."""
    rep = getattr(request.node, "rep_call", None)
    return rep is None or rep.failed


test_failed.__test__ = False  # type: ignore[attr-defined]


def dump_host(host: TestHost) -> None:
    """Print what helps explain a failure (pytest shows it under 'Captured stdout teardown')."""
    print(f"---- cnmd log ({host.daemon_log}), last lines ----")
    print(host.daemon_log_tail(120))


@contextlib.contextmanager
def test_host() -> Iterator[TestHost]:
    with TestHost() as host:
        yield host


test_host.__test__ = False  # type: ignore[attr-defined]


if __name__ == "__main__" and sys.argv[1:2] == ["--reap"]:
    sys.exit(_reaper_main(sys.argv[2:]))
