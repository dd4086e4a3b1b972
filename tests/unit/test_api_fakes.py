"""A fake ``Controller`` for the API tests: model dataclasses in dicts, real subprocesses
for exec (so the hijacked-stream tests pump real pipes).  No kernel, no store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from cnm.engine.cluster import Node
from cnm.engine.controller import ContainerPaths, ContainerSample
from cnm.engine.events import Events
from cnm.engine.explain import Explanation
from cnm.engine.info import EngineInfo, ExecInfo
from cnm.engine.topology import NetworkNode, Topology
from cnm.engine.trace import Trace
from cnm.engine.trace_path import SPECIAL, parse_target
from cnm.errors import Conflict, Forbidden, NotFound, NotModified
from cnm.kernel.api import LinkStats
from cnm.model.container import RUNNING, Container, ContainerConfig, ContainerState, ExecSpec, Image
from cnm.model.endpoint import EndpointRecord, EndpointRequest, SandboxRecord
from cnm.model.network import PREDEFINED, NetworkRecord, NetworkSpec
from cnm.model.values import new_id, parse_container_name
from cnm.runtime.images import Loaded, normalize_reference
from cnm.runtime.logs import Record
from cnm.runtime.stats import CgroupStats

NOW = "2025-11-05T10:00:00.123456789Z"


def test_fake_controller_is_importable() -> None:
    assert FakeController().networks()


class FakeProcess:
    def __init__(self, proc: asyncio.subprocess.Process, tty: bool) -> None:
        self._proc = proc
        self.pid = proc.pid
        self.stdin = proc.stdin
        self.stdout = proc.stdout
        self.stderr = None if tty else proc.stderr
        self.resized: list[tuple[int, int]] = []

    async def wait(self) -> int:
        return await self._proc.wait()

    def resize(self, height: int, width: int) -> None:
        self.resized.append((height, width))


@dataclass
class _Exec:
    spec: ExecSpec
    process: FakeProcess | None = None
    exit_code: int | None = None


@dataclass
class FakeController:
    nets: dict[str, NetworkRecord] = field(default_factory=dict)
    ctrs: dict[str, Container] = field(default_factory=dict)
    endpoints: dict[str, list[EndpointRecord]] = field(default_factory=dict)  # network id -> endpoints
    logs: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)
    execs: dict[str, _Exec] = field(default_factory=dict)
    imgs: dict[str, Image] = field(default_factory=dict)
    imported: list[tuple[str, bytes]] = field(default_factory=list)
    loaded: list[bytes] = field(default_factory=list)
    stdin_data: dict[str, bytearray] = field(default_factory=dict)
    tty_sizes: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    pruned_with: list[object] = field(default_factory=list)
    exited: dict[str, asyncio.Event] = field(default_factory=dict)
    top_args: list[str] = field(default_factory=list)
    stats_reads: int = 0
    events: Events = field(default_factory=Events)  # GET /events reads it; the fake emits nothing

    def __post_init__(self) -> None:
        for name, driver in (("bridge", "bridge"), ("host", "host"), ("none", "null")):
            net = NetworkRecord(
                id=new_id(),
                name=name,
                driver=driver,
                created=NOW,
                ipam_options={} if name == "bridge" else None,
                subnet=IPv4Network("172.17.0.0/16") if name == "bridge" else None,
                gateway=IPv4Address("172.17.0.1") if name == "bridge" else None,
                options={
                    "com.docker.network.bridge.default_bridge": "true",
                    "com.docker.network.bridge.name": "cnm0",
                }
                if name == "bridge"
                else {},
            )
            self.nets[net.id] = net

    # -- system
    def info(self) -> EngineInfo:
        running = sum(c.running for c in self.ctrs.values())
        return EngineInfo(
            "/var/lib/cnm",
            "/run/cnm",
            "cnm0",
            "nftables",
            (("172.17.0.0/16", 16),),
            len(self.ctrs),
            running,
            len(self.ctrs) - running,
            len(self.imgs),
            False,
        )

    # -- networks
    async def create_network(self, spec: NetworkSpec) -> NetworkRecord:
        if spec.name in ("bridge", "host", "none", "default"):
            raise Forbidden(f"operation is not permitted on predefined {spec.name} network ")
        if any(n.name == spec.name for n in self.nets.values()):
            raise Conflict(f"network with name {spec.name} already exists")
        sub = spec.ipam[0].subnet if spec.ipam else IPv4Network("172.18.0.0/16")
        gw = (spec.ipam[0].gateway if spec.ipam else None) or IPv4Address(int(sub.network_address) + 1)
        net = NetworkRecord(
            id=new_id(),
            name=spec.name,
            driver=spec.driver,
            created=NOW,
            internal=spec.internal,
            ipam_options=spec.ipam_options,
            ipam=spec.ipam,
            subnet=sub,
            gateway=gw,
            options=spec.options,
            labels=spec.labels,
        )
        self.nets[net.id] = net
        return net

    def networks(self) -> list[NetworkRecord]:
        return list(self.nets.values())

    def find_network(self, ref: str) -> NetworkRecord:
        for n in self.nets.values():
            if ref in (n.id, n.name):
                return n
        hits = [n for n in self.nets.values() if n.id.startswith(ref)]
        if len(hits) == 1:
            return hits[0]
        raise NotFound(f"network {ref} not found")

    def network_endpoints(self, network_id: str) -> list[EndpointRecord]:
        return list(self.endpoints.get(network_id, []))

    def network_peers(self, network: NetworkRecord) -> list[Node] | None:
        return None  # no cluster: no global networks

    async def explain_container(self, ref: str) -> Explanation:
        c = self.find_container(ref)
        return Explanation(
            container=c.name, container_id=c.id, running=c.running, network_mode=str(c.config.network_mode)
        )

    async def trace(
        self, source: str, destination: str, live: bool = False, family: int | None = None
    ) -> Trace:
        """The input checks only (no kernel here): a path of no hops."""
        src, dst = parse_target(source, destination=False), parse_target(destination, destination=True)
        for ref in (src.ref, dst.ref):
            if ref not in SPECIAL and not ref.replace(".", "").isdigit():
                self.find_container(ref)
        return Trace(src.ref, dst.ref, dst.protocol, dst.port, "", "", "delivered", "no kernel in the fakes")

    async def topology(self, network_refs: Sequence[str] = ()) -> Topology:
        """The store's view only (no kernel here): every index 0, "missing"."""
        nets = [self.find_network(r) for r in network_refs] or sorted(
            self.nets.values(), key=lambda n: n.name
        )
        return Topology(
            uplink=None,
            networks=tuple(
                NetworkNode(
                    name=n.name,
                    id=n.id,
                    driver=n.driver,
                    bridge=n.bridge_name if n.driver == "bridge" else "",
                    bridge_ifindex=0,
                    subnet=str(n.subnet or ""),
                    gateway=str(n.gateway or ""),
                    internal=n.internal,
                )
                for n in nets
            ),
        )

    async def remove_network(self, ref: str) -> None:
        net = self.find_network(ref)
        if net.name in PREDEFINED:
            raise Forbidden(f"{net.name} is a pre-defined network and cannot be removed")
        if self.endpoints.get(net.id):
            ep = self.endpoints[net.id][0]
            raise Forbidden(
                f"error while removing network: network {net.name} has active endpoints "
                f'(name:"{ep.name}" id:"{ep.id[:12]}")'
            )
        del self.nets[net.id]

    async def prune_networks(self, labels=None) -> list[str]:
        self.pruned_with.append(labels)
        out = []
        for net in list(self.nets.values()):
            if net.name in PREDEFINED or self.endpoints.get(net.id):
                continue
            if labels and not all(
                k in net.labels and (v is None or net.labels[k] == v) for k, v in labels.items()
            ):
                continue
            del self.nets[net.id]
            out.append(net.name)
        return out

    async def connect(self, network_ref: str, container_ref: str, request: EndpointRequest) -> None:
        c = self.find_container(container_ref)
        net = self.find_network(network_ref)
        if any(e.container_id == c.id for e in self.endpoints.get(net.id, [])):
            raise Forbidden(f"endpoint with name {c.name} already exists in network {net.name}")
        if not c.running:
            nets = dict(c.config.networks)
            nets[net.name] = request
            self.ctrs[c.id] = replace(c, config=replace(c.config, networks=nets))
            return
        self._attach(c, net, request)

    def _attach(self, c: Container, net: NetworkRecord, request: EndpointRequest) -> EndpointRecord:
        eps = self.endpoints.setdefault(net.id, [])
        addr = request.ipv4_address or IPv4Address(int(net.subnet.network_address) + 2 + len(eps))
        ep = EndpointRecord(
            id=new_id(),
            network_id=net.id,
            container_id=c.id,
            sandbox_id=c.sandbox_id or "sb" + c.id[:10],
            name=c.name,
            ifname=f"eth{len(self.container_endpoints(c.id))}",
            mac=request.mac_address or "02:42:ac:11:00:02",
            address=IPv4Interface(f"{addr}/{net.subnet.prefixlen}"),
            gateway=net.gateway,
            aliases=request.aliases,
            request=request,
        )
        eps.append(ep)
        return ep

    async def disconnect(self, network_ref: str, container_ref: str, force: bool = False) -> None:
        c = self.find_container(container_ref)
        net = self.find_network(network_ref)
        eps = self.endpoints.get(net.id, [])
        kept = [e for e in eps if e.container_id != c.id]
        if len(kept) == len(eps):
            raise NotFound(f"container {c.id} is not connected to network {net.name}")
        self.endpoints[net.id] = kept

    # -- containers
    def _create_networks(self, config: ContainerConfig) -> dict[str, EndpointRequest]:
        """As the engine: the requests keyed by network name, the primary one included."""
        mode = config.network_mode
        if mode.container:
            return {}
        nets = {self.find_network(k).name: v for k, v in config.networks.items()}
        primary = self.find_network(mode.network).name
        return {primary: nets.pop(primary, EndpointRequest()), **nets}

    async def create_container(self, name, config: ContainerConfig):
        if name and any(c.name == name for c in self.ctrs.values()):
            raise Conflict(f'Conflict. The container name "/{name}" is already in use')
        c = Container(
            id=new_id(),
            name=name or "brave_turing",
            created=NOW,
            config=replace(config, image_id="sha256:" + "ab" * 32, networks=self._create_networks(config)),
        )
        self.ctrs[c.id] = c
        self.exited[c.id] = asyncio.Event()
        return c, []

    def containers(self) -> list[Container]:
        return list(self.ctrs.values())

    async def rename_container(self, ref: str, new_name: str) -> None:
        c = self.find_container(ref)
        new_name = parse_container_name(new_name)
        if any(o.name == new_name for o in self.ctrs.values() if o.id != c.id):
            raise Conflict(f'Conflict. The container name "/{new_name}" is already in use')
        self.ctrs[c.id] = replace(c, name=new_name)

    def find_container(self, ref: str) -> Container:
        ref = ref.lstrip("/")
        for c in self.ctrs.values():
            if ref in (c.id, c.name):
                return c
        hits = [c for c in self.ctrs.values() if c.id.startswith(ref)]
        if len(hits) == 1:
            return hits[0]
        raise NotFound(f"No such container: {ref}")

    def container_endpoints(self, container_id: str):
        out = []
        for nid, eps in self.endpoints.items():
            out += [(self.nets[nid], e) for e in eps if e.container_id == container_id]
        return out

    def container_sandbox(self, container_id: str):
        c = self.ctrs.get(container_id)
        if c is None or not c.running:
            return None
        return SandboxRecord(id=c.sandbox_id, container_id=c.id, key=f"/run/cnm/netns/{c.sandbox_id[:12]}")

    def container_paths(self, container_id: str) -> ContainerPaths:
        d = f"/var/lib/cnm/containers/{container_id}"
        return ContainerPaths(f"{d}/hostname", f"{d}/hosts", f"{d}/resolv.conf", f"{d}/stdout.log")

    async def start_container(self, ref: str) -> None:
        c = self.find_container(ref)
        if c.running:
            raise NotModified("already started")
        c = replace(c, state=ContainerState(status=RUNNING, pid=4242, started_at=NOW), sandbox_id=new_id())
        self.ctrs[c.id] = c
        mode = c.config.network_mode.network
        keys = [mode] + [k for k in c.config.networks if k != mode]
        for key in keys:
            net = self.find_network(key)
            if net.driver == "bridge":
                self._attach(c, net, c.config.networks.get(key) or EndpointRequest())

    async def stop_container(self, ref, timeout=None, signal=None) -> None:
        c = self.find_container(ref)
        if not c.running:
            raise NotModified("not running")
        self._exit(c, 0)

    async def restart_container(self, ref, timeout=None, signal=None) -> None:
        if self.find_container(ref).running:
            await self.stop_container(ref, timeout, signal)
        await self.start_container(ref)

    def _exit(self, c: Container, code: int) -> None:
        self.ctrs[c.id] = replace(
            c,
            state=ContainerState(
                status="exited", exit_code=code, started_at=NOW, finished_at="2025-11-05T10:00:05Z"
            ),
        )
        for nid in self.endpoints:
            self.endpoints[nid] = [e for e in self.endpoints[nid] if e.container_id != c.id]
        self.exited[c.id].set()

    async def kill_container(self, ref, signal="SIGKILL") -> None:
        c = self.find_container(ref)
        if not c.running:
            raise Conflict(f"container {c.id} is not running")
        self._exit(c, 137)

    async def pause_container(self, ref: str) -> None:
        c = self.find_container(ref)
        if not c.running or c.state.paused:
            raise Conflict(f"Container {c.id} is not running or already paused")
        self.ctrs[c.id] = replace(c, state=replace(c.state, paused=True))

    async def unpause_container(self, ref: str) -> None:
        c = self.find_container(ref)
        if not c.state.paused:
            raise Conflict(f"Container {c.id} is not paused")
        self.ctrs[c.id] = replace(c, state=replace(c.state, paused=False))

    async def remove_container_link(self, name: str) -> None:
        parent_name, _, alias = name.lstrip("/").rpartition("/")
        if not parent_name:
            raise Conflict("Conflict, cannot remove the default link name of the container")
        parent = self.find_container(parent_name)
        kept = tuple(link for link in parent.config.links if link.rpartition(":")[2] != alias)
        if kept == parent.config.links:
            raise NotFound(f"No such container: /{name.lstrip('/')}")
        self.ctrs[parent.id] = replace(parent, config=replace(parent.config, links=kept))

    def container_size(self, ref: str) -> int:
        return 100

    async def container_top(self, ref: str, ps_args: str) -> tuple[list[str], list[list[str]]]:
        c = self.find_container(ref)
        if not c.running:
            raise Conflict(f"Container {c.id} is not running")
        self.top_args.append(ps_args)
        return ["UID", "PID", "CMD"], [["root", str(c.state.pid), "sleep 60"]]

    async def container_stats(self, ref: str) -> ContainerSample:
        c = self.find_container(ref)
        self.stats_reads += 1
        if not c.running:
            return ContainerSample(c, CgroupStats(), 0, {})
        n = self.stats_reads
        cg = CgroupStats(
            cpu_ns=n * 1_000_000, memory_usage=2 << 20, memory_limit=0, memory_stat={"file": 1}, pids=3
        )
        return ContainerSample(c, cg, n * 10_000_000, {"eth0": LinkStats(rx_bytes=100 * n, tx_bytes=7)})

    async def remove_container(self, ref, force=False) -> None:
        c = self.find_container(ref)
        if c.running and not force:
            raise Conflict(f'cannot remove container "/{c.name}": container is running')
        del self.ctrs[c.id]

    async def wait_container(self, ref, condition="not-running") -> int:
        c = self.find_container(ref)
        if condition == "not-running" and not c.running:
            return c.state.exit_code
        await self.exited[c.id].wait()
        return self.ctrs[c.id].state.exit_code

    async def container_logs(
        self, ref, *, stdout, stderr, follow, tail, since=None, until=None
    ) -> AsyncIterator[Record]:
        c = self.find_container(ref)
        sent = 0
        while True:
            chunks = self.logs.get(c.id, [])
            for i, (stream, data) in enumerate(chunks[sent:], start=sent):
                ns = (i + 1) * 1_000_000_000
                if since is not None and ns < since or until is not None and ns > until:
                    continue
                if (stream == 1 and stdout) or (stream == 2 and stderr):
                    yield Record(stream, ns, data)
            sent = len(chunks)
            if not follow or self.exited[c.id].is_set():
                return
            await asyncio.sleep(0.01)

    def attach_output(self, ref) -> _PollSubscription:
        """``ctrl.logs[id]`` as it grows, until the container exits."""
        c = self.find_container(ref)
        return _PollSubscription(self, c.id)

    def resize_container_tty(self, ref, height, width) -> None:
        c = self.find_container(ref)
        self.tty_sizes.setdefault(c.id, []).append((height, width))

    async def attach_stdin(self, ref):
        """The container's stdin is a real ``cat``: what it echoes is what arrived."""
        c = self.find_container(ref)
        buf = self.stdin_data.setdefault(c.id, bytearray())
        proc = await asyncio.create_subprocess_exec(
            "cat", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )

        async def collect() -> None:
            while chunk := await proc.stdout.read(4096):
                buf.extend(chunk)
            await proc.wait()

        self.stdin_closed = asyncio.get_running_loop().create_task(collect())
        return proc.stdin

    # -- exec
    def create_exec(self, ref: str, spec: ExecSpec) -> str:
        c = self.find_container(ref)
        if not c.running:
            raise Conflict(f"container {c.id} is not running")
        exec_id = new_id()
        self.execs[exec_id] = _Exec(spec=replace(spec, container_id=c.id))
        return exec_id

    async def start_exec(self, exec_id: str):
        record = self.execs[exec_id]
        if record.process is not None:
            raise Conflict("exec already started")
        proc = await asyncio.create_subprocess_exec(
            *record.spec.cmd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT if record.spec.tty else asyncio.subprocess.PIPE,
        )
        record.process = FakeProcess(proc, record.spec.tty)

        async def reap() -> None:
            record.exit_code = await proc.wait()

        self._reaper = asyncio.get_running_loop().create_task(reap())
        return record.process

    def exec_info(self, exec_id: str) -> ExecInfo:
        record = self.execs.get(exec_id)
        if record is None:
            raise NotFound(f"No such exec instance: {exec_id}")
        running = record.process is not None and record.exit_code is None
        return ExecInfo(
            exec_id,
            record.spec.container_id,
            record.spec,
            running,
            record.exit_code,
            record.process.pid if record.process else 0,
        )

    # -- images
    async def import_image(self, reference: str, tar_path: str) -> Image:
        with open(tar_path, "rb") as f:
            self.imported.append((reference, f.read()))
        if ":" not in reference.rsplit("/", 1)[-1]:
            reference += ":latest"
        img = Image(id="sha256:" + "cd" * 32, repo_tags=(reference,), created=NOW, size=3)
        self.imgs[img.id] = img
        return img

    def images(self) -> list[Image]:
        return list(self.imgs.values())

    def find_image(self, ref: str) -> Image:
        for img in self.imgs.values():
            if ref == img.id or ref in img.repo_tags or f"{ref}:latest" in img.repo_tags:
                return img
        raise NotFound(f"No such image: {ref}")

    async def remove_image(self, ref: str, force: bool = False) -> Image:
        img = self.find_image(ref)
        del self.imgs[img.id]
        return img

    async def tag_image(self, source: str, target: str) -> Image:
        tag = normalize_reference(target)
        img = self.find_image(source)
        self.imgs[img.id] = replace(img, repo_tags=(*img.repo_tags, tag))
        return self.imgs[img.id]

    async def load_images(self, archive_path: str) -> list[Loaded]:
        with open(archive_path, "rb") as f:
            self.loaded.append(f.read())
        img = Image(id="sha256:" + "ef" * 32, repo_tags=("app:1",), created=NOW, size=5)
        self.imgs[img.id] = img
        dangling = Image(id="sha256:" + "12" * 32, repo_tags=(), created=NOW)
        return [Loaded(img, ("app:1",)), Loaded(dangling, ())]

    def export_container(self, ref: str) -> AsyncIterator[bytes]:
        container = self.find_container(ref)

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"{container.id[:12]}-{i};".encode()

        return chunks()


class _PollSubscription:
    """The fake's ``attach_output``: polls the controller's canned output."""

    def __init__(self, ctrl: FakeController, cid: str) -> None:
        self._ctrl, self._cid, self._sent = ctrl, cid, 0
        self.closed = False

    def __aiter__(self) -> _PollSubscription:
        return self

    async def __anext__(self) -> tuple[int, bytes]:
        while True:
            chunks = self._ctrl.logs.get(self._cid, [])
            if self._sent < len(chunks):
                self._sent += 1
                return chunks[self._sent - 1]
            if self._ctrl.exited[self._cid].is_set() and self._ctrl.ctrs[self._cid].state.status == "exited":
                raise StopAsyncIteration
            await asyncio.sleep(0.01)

    def close(self) -> None:
        self.closed = True
