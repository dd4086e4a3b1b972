"""A real etcd cluster for tests and benchmarks: Debian's ``etcd`` (package ``etcd-server``)
run as child processes, 1 or 3 members, on 127.0.0.1 only, with their data in a temporary
directory (on tmpfs when there is one: fsync there is free, which keeps a test suite fast).

    with EtcdCluster(3) as cluster:
        store = EtcdStore(cluster.endpoints)
        cluster.kill_member(0); cluster.start_member(0)

Cleanup is guaranteed: ``close`` (the context's exit) kills every member and removes the
data, and each member runs under ``setpriv --pdeathsig KILL`` so that it dies with the
test process even when that process is killed and no ``finally`` runs.  (The signal
follows the *thread* that started the member: a member started from a worker thread dies
when that thread ends -- ``asyncio.to_thread``'s threads last until the loop closes.)

``inside``: a function wrapping an argv to run it elsewhere (``TestHost.inside``: the
members then run in the test host's network namespace, and die with it); the ports are
then fixed (the namespace is fresh) and the health check runs ``etcdctl`` there too.

``hosts`` (with ``member_inside``): one address per member, each member running where its
own wrapper puts it (the multi-host lab, tests/lab.py: member i in host i, listening on its
underlay address, ports 2379/2380); ``etcdctl`` runs through ``inside``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:  # imported where used: bench/store.py measures clients with clashing protobufs
    from cnm.store.etcd import EtcdStore

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
HOST = "127.0.0.1"
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"


class EtcdError(RuntimeError):
    """The cluster could not be started or did not become healthy."""


def available() -> bool:
    """Whether Debian's etcd is installed."""
    return os.access(ETCD, os.X_OK) and os.access(ETCDCTL, os.X_OK)


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now (a member failing to bind one is
    retried on fresh ports by ``start``)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass(frozen=True)
class Certs:
    """PEM files of a throwaway CA, a server certificate for 127.0.0.1 and a client one."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def make_certs(directory: Path, ips: Sequence[str] = (HOST,)) -> Certs:
    """A CA valid for a day and two certificates it signs (openssl), in ``directory``,
    valid for the addresses ``ips``."""
    directory.mkdir(parents=True, exist_ok=True)
    d = str(directory)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d, timeout=30)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=cnm-test-ca"
    )
    for name, usage in (("server", "serverAuth,clientAuth"), ("client", "clientAuth")):
        ext = directory / f"{name}.ext"
        san = ",".join(f"IP:{ip}" for ip in ips)
        ext.write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\n")
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=cnm-test-{name}")
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "1", "-extfile", ext.name,
        )  # fmt: skip
    return Certs(
        ca=f"{d}/ca.pem",
        server_cert=f"{d}/server.pem",
        server_key=f"{d}/server.key",
        client_cert=f"{d}/client.pem",
        client_key=f"{d}/client.key",
    )


@dataclass
class Member:
    """One etcd process: its name, ports, data directory and (while running) process."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen | None = None
    scheme: str = "http"
    host: str = HOST
    inside: Callable[[Sequence[str]], list[str]] | None = None  # where it runs (else the cluster's)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pid(self) -> int:
        """The etcd process's pid (through a wrapper such as nsenter: its child's); 0 if none."""
        if not self.running or self.proc is None:
            return 0
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            kids = []
        return int(kids[0]) if kids else self.proc.pid


@dataclass
class EtcdCluster:
    """``size`` members (1 or 3) sharing one initial cluster token; see the module docstring."""

    size: int = 1
    inside: Callable[[Sequence[str]], list[str]] | None = None
    base_port: int = 0  # with ``inside``: client ports base, base+2 ...; peers base+1 ...
    root: Path | None = None
    tls: bool = False  # clients speak TLS with client certificates (``certs``); peers plain
    hosts: Sequence[str] | None = None  # one address per member (see the module docstring)
    member_inside: Sequence[Callable[[Sequence[str]], list[str]]] | None = None
    members: list[Member] = field(init=False, default_factory=list)
    certs: Certs | None = field(init=False, default=None)
    _own_root: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if self.size not in (1, 3):
            raise ValueError(f"an etcd test cluster has 1 or 3 members, not {self.size}")
        if self.hosts is not None and len(self.hosts) != self.size:
            raise ValueError(f"{len(self.hosts)} hosts for {self.size} etcd members")
        if self.member_inside is not None and len(self.member_inside) != self.size:
            raise ValueError(f"{len(self.member_inside)} member wrappers for {self.size} etcd members")
        if self.root is None:
            parent = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
            self.root = Path(tempfile.mkdtemp(prefix="cnm-etcd-", dir=parent))
            self._own_root = True
        self.root.mkdir(parents=True, exist_ok=True)
        if self.tls:
            self.certs = make_certs(self.root / "pki", self.hosts or (HOST,))
        self._layout()

    def _layout(self) -> None:
        assert self.root is not None
        if self.hosts is not None:  # one address each: the well-known ports on every member
            ports = [self.base_port or 2379, (self.base_port or 2379) + 1] * self.size
        elif self.inside is not None:
            base = self.base_port or 2379
            ports = [base + i for i in range(2 * self.size)]
        else:
            ports = _free_ports(2 * self.size)
        self.members = [
            Member(
                name=f"m{i}",
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                data_dir=self.root / f"m{i}.etcd",
                log_path=self.root / f"m{i}.log",
                scheme="https" if self.tls else "http",
                host=self.hosts[i] if self.hosts is not None else HOST,
                inside=self.member_inside[i] if self.member_inside is not None else None,
            )
            for i in range(self.size)
        ]

    # -- addresses -------------------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        """``HOST:PORT`` of every member, in member order."""
        return [m.endpoint for m in self.members]

    @property
    def url(self) -> str:
        """The cluster as ``cnmd --cluster-store`` takes it: ``etcd://h:p,h:p``."""
        return "etcd://" + ",".join(self.endpoints)

    def _initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> EtcdCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, timeout: float = 30.0) -> None:
        """Start every member and wait until the cluster answers.  On a fresh directory
        whose ports were taken meanwhile (another test grabbed one), retry on new ports."""
        for attempt in range(3):
            for i in range(self.size):
                self._spawn(i)
            try:
                self.wait_healthy(timeout)
                return
            except EtcdError:
                logs = self.logs()
                self._kill_all()
                if (
                    attempt == 2
                    or self.inside is not None
                    or self.hosts is not None
                    or "address already in use" not in logs
                ):
                    raise
                for m in self.members:
                    shutil.rmtree(m.data_dir, ignore_errors=True)
                self._layout()

    def _argv(self, m: Member) -> list[str]:
        argv = [
            ETCD,
            "--name",
            m.name,
            "--data-dir",
            str(m.data_dir),
            "--listen-client-urls",
            m.client_url,
            "--advertise-client-urls",
            m.client_url,
            "--listen-peer-urls",
            m.peer_url,
            "--initial-advertise-peer-urls",
            m.peer_url,
            "--initial-cluster",
            self._initial_cluster(),
            "--initial-cluster-token",
            f"cnm-test-{os.getpid()}-{id(self):x}",
            "--initial-cluster-state",
            "new",
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
            "--log-level",
            "warn",
        ]
        if self.certs is not None:
            c = self.certs
            argv += ["--cert-file", c.server_cert, "--key-file", c.server_key]
            argv += ["--trusted-ca-file", c.ca, "--client-cert-auth"]
        return argv

    def _ctl_tls(self) -> list[str]:
        if self.certs is None:
            return []
        return ["--cacert", self.certs.ca, "--cert", self.certs.client_cert, "--key", self.certs.client_key]

    def _spawn(self, index: int) -> None:
        m = self.members[index]
        if m.running:
            return
        # SIGKILL when the thread that started it dies (setpriv, not a preexec_fn: no Python
        # may run between fork and exec in a process with gRPC's threads).
        argv = [SETPRIV, "--pdeathsig", "KILL", "--", *self._argv(m)]
        inside = m.inside or self.inside
        if inside is not None:
            argv = inside(argv)
        with open(m.log_path, "ab") as log:
            m.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_healthy(self, timeout: float = 30.0, members: Sequence[int] | None = None) -> None:
        """Wait until each of ``members`` (default: the running ones) answers a quorum read."""
        which = [i for i in (members if members is not None else range(self.size)) if self.members[i].running]
        deadline = time.monotonic() + timeout
        pending = list(which)
        while pending:
            for i in list(pending):
                m = self.members[i]
                if m.proc is not None and m.proc.poll() is not None:
                    raise EtcdError(f"etcd {m.name} exited {m.proc.returncode}:\n{self.logs()}")
                if self._healthy(m):
                    pending.remove(i)
            if pending and time.monotonic() > deadline:
                raise EtcdError(f"etcd members {pending} not healthy after {timeout}s:\n{self.logs()}")
            if pending:
                time.sleep(0.1)

    def _healthy(self, m: Member) -> bool:
        argv = [ETCDCTL, *self._ctl_tls(), "--endpoints", m.client_url, "--command-timeout", "2s"]
        argv += ["endpoint", "health"]
        inside = m.inside or self.inside
        if inside is not None:
            argv = inside(argv)
        proc = subprocess.run(
            argv, capture_output=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=10, check=False
        )
        return proc.returncode == 0

    # -- faults ----------------------------------------------------------------------------

    def stop_member(self, index: int, timeout: float = 15.0) -> None:
        """SIGTERM member ``index`` and wait for it to exit (a clean shutdown)."""
        self._signal(index, signal.SIGTERM, timeout)

    def kill_member(self, index: int, timeout: float = 15.0) -> None:
        """SIGKILL member ``index`` (a crash) and wait for it."""
        self._signal(index, signal.SIGKILL, timeout)

    def start_member(self, index: int, timeout: float = 30.0) -> None:
        """Start a stopped member again on its data directory and wait until it answers."""
        self._spawn(index)
        self.wait_healthy(timeout, [index])

    def restart_member(self, index: int, timeout: float = 30.0) -> None:
        self.stop_member(index)
        self.start_member(index, timeout)

    def _signal(self, index: int, sig: int, timeout: float) -> None:
        m = self.members[index]
        if not m.running or m.proc is None:
            return
        pid = m.pid()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        try:
            m.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            m.proc.wait(timeout=timeout)
        m.proc = None

    def etcdctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``etcdctl --endpoints <all> ARGS`` (where the members run)."""
        argv = [ETCDCTL, *self._ctl_tls(), "--endpoints", ",".join(m.client_url for m in self.members), *args]
        if self.inside is not None:
            argv = self.inside(argv)
        proc = subprocess.run(
            argv, capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=30
        )
        if check and proc.returncode != 0:
            raise EtcdError(f"etcdctl {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return proc

    def logs(self) -> str:
        out = []
        for m in self.members:
            with contextlib.suppress(OSError):
                tail = m.log_path.read_text(errors="replace").splitlines()[-15:]
                out.append(f"--- {m.name} ---\n" + "\n".join(tail))
        return "\n".join(out)

    def _kill_all(self) -> None:
        for i in range(len(self.members)):
            self._signal(i, signal.SIGKILL, 15.0)

    def close(self) -> None:
        """Kill every member and remove the data; idempotent."""
        self._kill_all()
        if self._own_root and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


# -- the conformance suite's etcd backend (tests/store_backends.py) ----------------------------

_SHARED: EtcdCluster | None = None


def shared_cluster() -> EtcdCluster:
    """One single-member cluster for the whole test process, started on first use and
    killed when the process exits (atexit; its parent-death signal if it is killed)."""
    global _SHARED
    if _SHARED is None:
        if not available():
            raise EtcdError(f"{ETCD} is missing: install Debian's etcd-server (make deps)")
        cluster = EtcdCluster(1)
        cluster.start()
        atexit.register(cluster.close)
        _SHARED = cluster
    return _SHARED


async def revoke_all_leases(endpoint: str) -> None:
    """Revoke every lease of the cluster: a lease a case left must not expire (a new
    revision) in the middle of the next case."""
    from aetcd import rpc

    async with grpc.aio.insecure_channel(endpoint) as channel:
        stub = rpc.LeaseStub(channel)
        leases = await stub.LeaseLeases(rpc.LeaseLeasesRequest(), timeout=10)
        for lease in leases.leases:
            with contextlib.suppress(grpc.aio.AioRpcError):  # expired meanwhile
                await stub.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease.ID), timeout=10)


@contextlib.asynccontextmanager
async def etcd_store(tmp_path: Path) -> AsyncIterator[EtcdStore]:
    """A fresh EtcdStore: a namespace of its own on the shared cluster."""
    from cnm.store.etcd import EtcdStore

    cluster = shared_cluster()
    store = EtcdStore(cluster.endpoints, namespace=f"/cnm-test/{uuid.uuid4().hex}/")
    try:
        yield store
    finally:
        await store.close()
        await revoke_all_leases(cluster.endpoints[0])
