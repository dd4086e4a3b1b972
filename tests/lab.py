"""A lab of N hosts for multi-host tests (overlay networks): never the real host.

    with Lab(3) as lab:
        h1, h2, h3 = lab.hosts
        for h in lab.hosts:
            h.start_cnmd()                     # --cluster-store etcd://198.51.100.1:2379,…
        h1.run(["ping", "-c1", h2.address])
        lab.cut(h3); lab.restore(h3)           # its underlay cable pulled and plugged back
        lab.etcd_kill(0); lab.etcd_start(0)

What it builds, each piece a ``TestHost`` of tests/harness.py (private net + mount + pid
namespaces, a tmpfs on /run, a reaper that tears it down if the test process dies):

* the lab's *root*: a test host holding the underlay, a bridge ``underlay`` with
  198.51.100.254/24 (nothing runs there but, for fewer than 3 hosts, the one etcd member);
* hosts ``h1`` … ``hN``, each a test host with a UTS namespace of its own (hostname ``hI``,
  so ``--node-name`` defaults differ), its own cnmd roots and cgroup parent, and an underlay
  interface ``ul0`` 198.51.100.I/24: a veth whose lab end ``ul-hI`` is a port of the
  underlay bridge in the root.  ``cut`` sets that lab end down (a pulled cable: the host
  keeps its address and routes, but nothing passes); ``restore`` sets it up again;
* etcd (Debian's etcd-server): with 3 hosts or more, a 3-member cluster, member ``m<i>`` in
  host ``h<i+1>`` on its underlay address (ports 2379/2380), so a cut host loses its member
  and the others keep a quorum; with fewer hosts, one member in the root on
  198.51.100.254:2379.  Its data lives under the root's directory.  ``Lab(tls=True)``: clients
  speak TLS with client certificates (a throwaway CA; ``start_cnmd`` passes the
  ``--cluster-store-opt kv.*`` files).

Commands run inside a host with ``nsenter -t <its init> -n -m -p -u`` (never ``ip netns
exec``, which remounts /sys).  ``close`` stops cnmd and etcd, then tears down the hosts and
the root: their namespaces, processes, cgroups and /tmp/cnm-test-* directories all go.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

from etcd_cluster import ETCDCTL, EtcdCluster
from harness import HarnessError, TestHost, wait_for

UNDERLAY_BRIDGE = "underlay"
UNDERLAY_IFNAME = "ul0"  # each host's underlay interface
UNDERLAY_PREFIX = "198.51.100"
UNDERLAY_PREFIXLEN = 24
ROOT_ADDR = f"{UNDERLAY_PREFIX}.254"
MAX_HOSTS = 9  # h1 … h9: names and addresses stay one digit


@dataclass
class LabHost(TestHost):
    """One host of the lab: a TestHost with a name, an underlay address and cnmd pointed at
    the lab's etcd."""

    __test__ = False

    name: str = ""
    address: str = ""  # on ul0, without the prefix length
    cluster_store: str = ""  # etcd://…, set by the lab once etcd runs
    cluster_store_opts: tuple[str, ...] = ()  # kv.cacertfile=… (a TLS lab)

    @property
    def underlay_peer(self) -> str:
        """The lab end of this host's underlay veth (in the root)."""
        return f"ul-{self.name}"

    def start_cnmd(self, *extra: str, cluster_store: bool = True, timeout: float = 60.0) -> None:
        """Start cnmd (``--cluster-store`` the lab's etcd unless ``cluster_store`` is False,
        then ``extra``) and wait until ``/_ping`` answers."""
        flags = []
        if cluster_store and self.cluster_store:
            flags = ["--cluster-store", self.cluster_store]
            for opt in self.cluster_store_opts:
                flags += ["--cluster-store-opt", opt]
        self.start_daemon(*flags, *extra, timeout=timeout)

    def stop_cnmd(self, timeout: float = 30.0) -> int:
        """SIGTERM cnmd (a clean shutdown) and wait; its exit status."""
        return self.kill_daemon(signal.SIGTERM, timeout)

    def kill_cnmd(self, timeout: float = 30.0) -> int:
        """SIGKILL cnmd (a crash: its lease is left to expire) and wait."""
        return self.kill_daemon(signal.SIGKILL, timeout)


@dataclass
class Lab:
    """``size`` hosts on one underlay, with etcd; see the module docstring."""

    size: int = 2
    etcd: bool = True  # False: no etcd at all (kernel-only tests)
    tls: bool = False  # etcd's clients speak TLS with client certificates
    root: TestHost = field(init=False)
    hosts: list[LabHost] = field(init=False, default_factory=list)
    cluster: EtcdCluster | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if not 1 <= self.size <= MAX_HOSTS:
            raise ValueError(f"a lab has 1 to {MAX_HOSTS} hosts, not {self.size}")
        self.root = TestHost(hostname="lab")

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Build the root and its underlay bridge, every host and its cable, then etcd."""
        self.root.start()
        self.root.run(["ip", "link", "add", UNDERLAY_BRIDGE, "type", "bridge"])
        self.root.run(["ip", "addr", "add", f"{ROOT_ADDR}/{UNDERLAY_PREFIXLEN}", "dev", UNDERLAY_BRIDGE])
        self.root.run(["ip", "link", "set", UNDERLAY_BRIDGE, "up"])
        for i in range(1, self.size + 1):
            host = LabHost(hostname=f"h{i}", name=f"h{i}", address=f"{UNDERLAY_PREFIX}.{i}")
            self.hosts.append(host)
            host.start()
            self._wire(host)
        if self.etcd:
            self._start_etcd()

    def _wire(self, host: LabHost) -> None:
        """The host's underlay cable: a veth made in the root, its peer moved into the host.
        ``ip`` runs in the root's network namespace only (``nsenter --net``), so the host's
        init pid, as this process sees it, names the target namespace."""
        cable = (
            f"ip link add {host.underlay_peer} master {UNDERLAY_BRIDGE} up"
            f" type veth peer name {UNDERLAY_IFNAME} netns {host.init_pid}"
        )
        subprocess.run(
            ["nsenter", f"--net=/proc/{self.root.init_pid}/ns/net", "--", *cable.split()],
            check=True,
            capture_output=True,
            timeout=30,
        )
        host.run(["ip", "addr", "add", f"{host.address}/{UNDERLAY_PREFIXLEN}", "dev", UNDERLAY_IFNAME])
        host.run(["ip", "link", "set", UNDERLAY_IFNAME, "up"])

    def _start_etcd(self) -> None:
        root_dir = self.root.tmp / "etcd"
        if self.size >= 3:
            members = self.hosts[:3]
            cluster = EtcdCluster(
                3,
                inside=self.root.inside,
                root=root_dir,
                hosts=[h.address for h in members],
                member_inside=[h.inside for h in members],
                tls=self.tls,
            )
        else:
            cluster = EtcdCluster(1, inside=self.root.inside, root=root_dir, hosts=[ROOT_ADDR], tls=self.tls)
        self.cluster = cluster
        cluster.start(timeout=60)
        opts: tuple[str, ...] = ()
        if cluster.certs is not None:
            c = cluster.certs
            opts = (f"kv.cacertfile={c.ca}", f"kv.certfile={c.client_cert}", f"kv.keyfile={c.client_key}")
        for host in self.hosts:
            host.cluster_store = cluster.url
            host.cluster_store_opts = opts

    def close(self) -> None:
        """Stop every cnmd and etcd member, tear down the hosts, then the root.  Keeps
        going past errors and raises HarnessError naming them all at the end."""
        problems: list[str] = []
        for host in self.hosts:
            if host.daemon_running():
                with contextlib.suppress(HarnessError):
                    host.kill_daemon(signal.SIGTERM, timeout=20)
        if self.cluster is not None:
            try:
                self.cluster.close()
            except Exception as exc:  # noqa: BLE001 -- reported with the rest
                problems.append(f"etcd: {exc}")
        for host in [*self.hosts, self.root]:
            try:
                host.close()
            except HarnessError as exc:
                problems.append(f"{host.hostname}: {exc}")
        if problems:
            raise HarnessError("lab teardown: " + "; ".join(problems))

    # -- faults ----------------------------------------------------------------------------

    def host(self, which: LabHost | int | str) -> LabHost:
        """A host by object, 1-based number or name (``h2``)."""
        if isinstance(which, LabHost):
            return which
        for host in self.hosts:
            if which in (host.name, int(host.name[1:])):
                return host
        raise HarnessError(f"no lab host {which!r} (hosts: {[h.name for h in self.hosts]})")

    def cut(self, which: LabHost | int | str) -> None:
        """Pull the host's underlay cable: its lab-side veth goes down."""
        self.root.run(["ip", "link", "set", self.host(which).underlay_peer, "down"])

    def restore(self, which: LabHost | int | str, timeout: float = 15.0) -> None:
        """Plug it back: the lab-side veth comes up; returns once both ends have their
        carrier (the kernel's link watch raises it up to a second later) and the bridge
        port forwards (at once: no STP)."""
        host = self.host(which)
        self.root.run(["ip", "link", "set", host.underlay_peer, "up"])

        def plugged() -> bool:
            ours = host.ip_json("link", "show", "dev", UNDERLAY_IFNAME)
            port = self.root.ip_json("-d", "link", "show", "dev", host.underlay_peer)
            return (
                bool(ours)
                and bool(port)
                and ours[0].get("operstate") == "UP"
                and port[0].get("operstate") == "UP"
                and port[0].get("linkinfo", {}).get("info_slave_data", {}).get("state") == "forwarding"
            )

        if not wait_for(plugged, timeout, interval=0.05):
            raise HarnessError(f"{host.name}'s underlay link did not come back within {timeout}s")

    def cut_etcd(self, which: LabHost | int | str) -> None:
        """Cut the host off etcd only: its packets to any member's client port (2379) are
        dropped in its own namespace (a table ``labcut`` of its own), so its cnmd loses the
        cluster store while its underlay, VXLAN and the etcd member it may hold (peer port
        2380, and the other hosts' clients) keep working."""
        host = self.host(which)
        host.run(["nft", "add", "table", "inet", "labcut"])
        host.run(["nft", "add chain inet labcut out { type filter hook output priority 0 ; }"])
        host.run(["nft", "add", "rule", "inet", "labcut", "out", "tcp", "dport", "2379", "drop"])

    def restore_etcd(self, which: LabHost | int | str) -> None:
        """Undo ``cut_etcd``."""
        self.host(which).run(["nft", "delete", "table", "inet", "labcut"])

    def etcd_kill(self, index: int) -> None:
        """SIGKILL etcd member ``index`` (0-based; in host ``h<index+1>`` with 3 members)."""
        self._cluster().kill_member(index)

    def etcd_stop(self, index: int) -> None:
        """SIGTERM etcd member ``index`` and wait for it."""
        self._cluster().stop_member(index)

    def etcd_start(self, index: int, timeout: float = 60.0) -> None:
        """Start a stopped or killed member again on its data and wait until it answers."""
        self._cluster().start_member(index, timeout)

    def etcd_start_all(self, timeout: float = 60.0) -> None:
        """Start every stopped member at once (one alone has no quorum to answer with)
        and wait until they all answer."""
        cluster = self._cluster()
        for index, member in enumerate(cluster.members):
            if not member.running:
                cluster._spawn(index)
        cluster.wait_healthy(timeout)

    def etcdctl(self, *args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """``etcdctl ARGS`` run in the root (it reaches every member), against the members
        that run (etcdctl would spend its whole deadline on a dead first endpoint) and
        with time for an election (a killed leader)."""
        cluster = self._cluster()
        endpoints = ",".join(m.client_url for m in cluster.members if m.running)
        argv = [ETCDCTL, *cluster._ctl_tls(), "--endpoints", endpoints]
        argv += ["--command-timeout", f"{int(timeout) - 5}s", *args]
        proc = subprocess.run(
            self.root.inside(argv),
            capture_output=True,
            text=True,
            env={**os.environ, "ETCDCTL_API": "3"},
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise HarnessError(f"etcdctl {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return proc

    def _cluster(self) -> EtcdCluster:
        if self.cluster is None:
            raise HarnessError("this lab runs no etcd (Lab(etcd=False))")
        return self.cluster

    # -- help when a test fails ------------------------------------------------------------

    def dump(self, hosts: Sequence[LabHost] | None = None) -> None:
        """Print each host's cnmd log tail and etcd's (pytest shows it on failure)."""
        for host in hosts if hosts is not None else self.hosts:
            print(f"---- {host.name}: cnmd log ({host.daemon_log}), last lines ----")
            print(host.daemon_log_tail(80))
        if self.cluster is not None:
            print("---- etcd ----")
            print(self.cluster.logs())
