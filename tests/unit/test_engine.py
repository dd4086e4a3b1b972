"""The engine over fakes: FakeKernel, FakeFirewall, MemoryStore, FakeRuntime, real IPAM and
real drivers.  No root, no kernel."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Network

import pytest

from cnm.drivers.bridge import BridgeDriver
from cnm.drivers.host import HostDriver
from cnm.drivers.null import NullDriver
from cnm.engine.controller import Controller
from cnm.errors import Conflict, Forbidden, InvalidArgument, NotFound, NotModified, RuntimeFailure
from cnm.firewall.fake import FakeFirewall
from cnm.ipam.api import DEFAULT_POOLS
from cnm.ipam.default import DefaultIpam
from cnm.kernel.fake import FakeKernel
from cnm.model.container import ContainerConfig
from cnm.model.endpoint import EndpointRequest
from cnm.model.network import IpamConfig, NetworkSpec
from cnm.model.network_mode import NetworkMode
from cnm.runtime.fake import FakeRuntime
from cnm.store.memory import MemoryStore


class World:
    """One daemon's collaborators, reusable across a simulated restart."""

    def __init__(self, tmp_path) -> None:
        self.store = MemoryStore()  # records and IPAM share it, as in cnmd
        self.kernel = FakeKernel()
        self.firewall = FakeFirewall()
        self.runtime = FakeRuntime(str(tmp_path / "containers"))
        self.runtime.add_image("busybox")
        self.tmp = tmp_path

    def extra(self) -> dict:
        return {}

    async def controller(self, runc_states=None) -> Controller:
        ipam = DefaultIpam(self.store, DEFAULT_POOLS)
        ctl = Controller(
            store=self.store,
            ipam=ipam,
            kernel=self.kernel,
            firewall=self.firewall,
            drivers={
                "bridge": BridgeDriver(self.kernel, self.firewall),
                "host": HostDriver(),
                "null": NullDriver(),
            },
            runtime=self.runtime,
            data_root=str(self.tmp / "data"),
            exec_root=str(self.tmp / "exec"),
            **self.extra(),
        )
        await ctl.start(runc_states)
        return ctl


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


async def run(ctl: Controller, name: str, **config) -> str:
    container, _ = await ctl.create_container(name, ContainerConfig(image="busybox", **config))
    await ctl.start_container(container.id)
    return container.id


def netns_paths(kernel: FakeKernel) -> set[str]:
    return {p for p in kernel.netns if kernel.netns_exists(p)}


async def test_predefined_networks(world):
    ctl = await world.controller()
    names = {n.name: n for n in ctl.networks()}
    assert set(names) == {"bridge", "host", "none"}
    bridge = names["bridge"]
    assert bridge.subnet == IPv4Network("172.17.0.0/16")
    assert bridge.gateway == IPv4Address("172.17.0.1")
    assert bridge.bridge_name == "cnm0"
    for predefined in ("bridge", "host", "none"):
        with pytest.raises(Forbidden):
            await ctl.remove_network(predefined)
        with pytest.raises(Forbidden):
            await ctl.create_network(NetworkSpec(name=predefined))


async def test_create_network_errors_change_nothing(world):
    ctl = await world.controller()
    net = await ctl.create_network(
        NetworkSpec(name="backend", ipam=(IpamConfig(subnet=IPv4Network("10.10.0.0/24")),))
    )
    assert net.gateway == IPv4Address("10.10.0.1")
    before = (len(ctl.networks()), sorted(world.kernel.commands))
    with pytest.raises(Conflict):
        await ctl.create_network(NetworkSpec(name="backend"))
    with pytest.raises(NotFound):
        await ctl.create_network(NetworkSpec(name="x", driver="nope"))
    with pytest.raises(Forbidden):
        await ctl.create_network(NetworkSpec(name="x", driver="host"))
    with pytest.raises((Conflict, Forbidden)):
        await ctl.create_network(
            NetworkSpec(name="y", ipam=(IpamConfig(subnet=IPv4Network("10.10.0.0/16")),))
        )
    with pytest.raises(InvalidArgument):
        await ctl.create_network(
            NetworkSpec(
                name="z",
                ipam=(IpamConfig(subnet=IPv4Network("10.20.0.0/24"), gateway=IPv4Address("10.21.0.1")),),
            )
        )
    assert (len(ctl.networks()), sorted(world.kernel.commands)) == before


async def test_default_network_gets_next_pool(world):
    ctl = await world.controller()
    net = await ctl.create_network(NetworkSpec(name="n1"))
    assert net.subnet == IPv4Network("172.18.0.0/16")
    assert net.bridge_name == f"br-{net.id[:12]}"


async def test_run_on_default_bridge(world):
    ctl = await world.controller()
    cid = await run(ctl, "web")
    [(net, ep)] = ctl.container_endpoints(cid)
    assert net.name == "bridge"
    assert ep.ifname == "eth0"
    assert str(ep.address) == "172.17.0.2/16"
    assert ep.mac == "02:42:ac:11:00:02"
    assert ep.default_route
    sandbox = ctl.container_sandbox(cid)
    assert sandbox is not None and sandbox.key in netns_paths(world.kernel)
    paths = ctl.container_paths(cid)
    assert open(paths.hostname).read() == cid[:12] + "\n"
    assert f"172.17.0.2\t{cid[:12]}" in open(paths.hosts).read()
    assert "nameserver" in open(paths.resolv_conf).read()
    with pytest.raises(NotModified):
        await ctl.start_container("web")


async def test_static_ip_mac_hostname(world):
    ctl = await world.controller()
    await ctl.create_network(
        NetworkSpec(name="backend", ipam=(IpamConfig(subnet=IPv4Network("10.10.0.0/24")),))
    )
    cid = await run(
        ctl,
        "api",
        network_mode=NetworkMode.parse("backend"),
        hostname="api.local",
        networks={
            "backend": EndpointRequest(
                ipv4_address=IPv4Address("10.10.0.10"), mac_address="92:d0:c6:0a:29:33"
            )
        },
    )
    [(_, ep)] = ctl.container_endpoints(cid)
    assert str(ep.address) == "10.10.0.10/24"
    assert ep.mac == "92:d0:c6:0a:29:33"
    assert "10.10.0.10\tapi.local api" in open(ctl.container_paths(cid).hosts).read()
    # the same address again is refused and leaves nothing behind
    netns_before = netns_paths(world.kernel)
    other, _ = await ctl.create_container(
        "bb",
        ContainerConfig(
            image="busybox",
            network_mode=NetworkMode.parse("backend"),
            networks={"backend": EndpointRequest(ipv4_address=IPv4Address("10.10.0.10"))},
        ),
    )
    with pytest.raises((Conflict, Forbidden)):
        await ctl.start_container(other.id)
    assert netns_paths(world.kernel) == netns_before
    assert not ctl.container_endpoints(other.id)


async def test_static_ip_refused_on_default_bridge_at_create(world):
    ctl = await world.controller()
    with pytest.raises(InvalidArgument, match="user defined networks only"):
        await ctl.create_container(
            "aa",
            ContainerConfig(
                image="busybox", networks={"bridge": EndpointRequest(ipv4_address=IPv4Address("172.17.0.9"))}
            ),
        )
    assert ctl.containers() == []


async def test_connect_disconnect_running(world):
    ctl = await world.controller()
    net = await ctl.create_network(NetworkSpec(name="backend"))
    cid = await run(ctl, "web")
    await ctl.connect("backend", "web", EndpointRequest())
    eps = ctl.container_endpoints(cid)
    assert [ep.ifname for _, ep in eps] == ["eth0", "eth1"]
    assert not eps[1][1].default_route
    with pytest.raises(Forbidden, match="already exists in network backend"):
        await ctl.connect("backend", "web", EndpointRequest())
    with pytest.raises(Forbidden, match="active endpoints"):
        await ctl.remove_network("backend")
    await ctl.disconnect("backend", "web")
    assert [n.name for n, _ in ctl.container_endpoints(cid)] == ["bridge"]
    assert not ctl.network_endpoints(net.id)
    await ctl.remove_network("backend")
    with pytest.raises(NotFound):
        ctl.find_network("backend")


async def test_exit_releases_everything(world):
    ctl = await world.controller()
    cid = await run(ctl, "web")
    key = ctl.container_sandbox(cid).key
    world.runtime.exit(cid, 3)
    assert await ctl.wait_container(cid) == 3
    for _ in range(50):
        if not ctl.find_container(cid).running:
            break
        await asyncio.sleep(0.01)
    c = ctl.find_container(cid)
    assert c.state.status == "exited" and c.state.exit_code == 3
    assert not ctl.container_endpoints(cid)
    assert key not in netns_paths(world.kernel)
    # the address is free again
    cid2 = await run(ctl, "web2")
    assert str(ctl.container_endpoints(cid2)[0][1].address) == "172.17.0.2/16"


async def test_stop_and_remove(world):
    ctl = await world.controller()
    cid = await run(ctl, "web")
    with pytest.raises(Conflict, match="container is running"):
        await ctl.remove_container("web")
    await ctl.stop_container("web", timeout=1)
    assert not ctl.find_container(cid).running
    with pytest.raises(NotModified):
        await ctl.stop_container("web")
    with pytest.raises(Conflict, match="is not running"):
        await ctl.kill_container("web")
    await ctl.remove_container("web")
    with pytest.raises(NotFound, match="No such container: web"):
        ctl.find_container("web")
    cid = await run(ctl, "again")
    await ctl.remove_container(cid[:6], force=True)
    assert not netns_paths(world.kernel)


async def test_failed_start_leaves_nothing(world):
    ctl = await world.controller()
    world.runtime.fail_start = True
    c, _ = await ctl.create_container("web", ContainerConfig(image="busybox"))
    with pytest.raises(RuntimeFailure):
        await ctl.start_container("web")
    assert not ctl.container_endpoints(c.id)
    assert ctl.container_sandbox(c.id) is None
    assert not netns_paths(world.kernel)
    world.runtime.fail_start = False
    await ctl.start_container("web")
    assert str(ctl.container_endpoints(c.id)[0][1].address) == "172.17.0.2/16"


async def test_parallel_starts_get_distinct_addresses(world):
    ctl = await world.controller()
    await ctl.create_network(NetworkSpec(name="many"))
    ids = [
        (
            await ctl.create_container(
                f"c{i}", ContainerConfig(image="busybox", network_mode=NetworkMode.parse("many"))
            )
        )[0].id
        for i in range(50)
    ]
    await asyncio.gather(*(ctl.start_container(i) for i in ids))
    addresses = {ctl.container_endpoints(i)[0][1].address for i in ids}
    assert len(addresses) == 50


async def test_none_host_and_container_modes(world):
    ctl = await world.controller()
    none_id = await run(ctl, "nn", network_mode=NetworkMode.parse("none"))
    [(net, ep)] = ctl.container_endpoints(none_id)
    assert net.name == "none" and ep.address is None and ep.host_ifname == ""
    assert ctl.container_sandbox(none_id).key
    host_id = await run(ctl, "hh", network_mode=NetworkMode.parse("host"))
    assert ctl.container_sandbox(host_id).key == ""
    assert world.runtime.started[host_id].netns_path is None
    web = await run(ctl, "web")
    shared = await run(ctl, "side", network_mode=NetworkMode.parse("container:web"))
    assert world.runtime.started[shared].netns_path == ctl.container_sandbox(web).key
    with pytest.raises(InvalidArgument):
        await ctl.connect("bridge", "side", EndpointRequest())


async def test_restart_reconciles(world):
    ctl = await world.controller()
    keep = await run(ctl, "keep")
    gone = await run(ctl, "gone")
    gone_key = ctl.container_sandbox(gone).key
    await ctl.close()
    world.runtime.exit(gone, 0)  # dies while the daemon is down
    ctl2 = await world.controller()
    assert ctl2.find_container(keep).running
    assert not ctl2.find_container(gone).running
    assert gone_key not in netns_paths(world.kernel)
    # the dead container's address is free, the live one's is not handed out twice
    live = ctl2.container_endpoints(keep)[0][1].address
    new = await run(ctl2, "new")
    assert ctl2.container_endpoints(new)[0][1].address != live
    assert ctl2.find_network("bridge").id == ctl.find_network("bridge").id


async def test_restart_reads_the_runc_listing_its_caller_started(world):
    """cnmd starts ``runtime.states()`` before it imports the rest: the restore reads
    that listing (one ``runc list`` per start), and decides as with its own."""
    ctl = await world.controller()
    keep = await run(ctl, "keep")
    gone = await run(ctl, "gone")
    await ctl.close()
    world.runtime.exit(gone, 0)
    before = world.runtime.calls.get("states", 0)
    ctl2 = await world.controller(asyncio.ensure_future(world.runtime.states()))
    assert world.runtime.calls["states"] == before + 1
    assert ctl2.find_container(keep).running and not ctl2.find_container(gone).running


async def test_stopped_container_connect_records_request(world):
    ctl = await world.controller()
    await ctl.create_network(NetworkSpec(name="backend"))
    c, _ = await ctl.create_container("web", ContainerConfig(image="busybox"))
    await ctl.connect("backend", "web", EndpointRequest(aliases=("w",)))
    await ctl.start_container("web")
    assert [n.name for n, _ in ctl.container_endpoints(c.id)] == ["bridge", "backend"]


async def test_unknown_network_fails_at_create(world):
    ctl = await world.controller()
    with pytest.raises(InvalidArgument, match="network nosuch not found"):
        await ctl.create_container(
            "web", ContainerConfig(image="busybox", network_mode=NetworkMode.parse("nosuch"))
        )
    assert ctl.containers() == []


async def test_network_removed_after_create_fails_at_start(world):
    ctl = await world.controller()
    await ctl.create_network(NetworkSpec(name="gone"))
    await ctl.create_container(
        "web", ContainerConfig(image="busybox", network_mode=NetworkMode.parse("gone"))
    )
    await ctl.remove_network("gone")
    with pytest.raises(NotFound, match="network gone not found"):
        await ctl.start_container("web")
    assert not netns_paths(world.kernel)


async def test_exec(world):
    ctl = await world.controller()
    from cnm.model.container import ExecSpec

    await run(ctl, "web")
    exec_id = ctl.create_exec("web", ExecSpec(container_id="", cmd=("echo", "hi")))
    proc = await ctl.start_exec(exec_id)
    assert await proc.stdout.read() == b"echo hi\n"
    for _ in range(20):
        if ctl.exec_info(exec_id).exit_code is not None:
            break
        await asyncio.sleep(0.01)
    assert ctl.exec_info(exec_id).exit_code == 0


# -- names: files and the embedded DNS records -------------------------------------------------


class NamedWorld(World):
    """With a name table (records only: a DNS listener needs namespaces) and a host
    resolv.conf whose only nameserver is a loopback one (systemd-resolved style)."""

    def __init__(self, tmp_path) -> None:
        super().__init__(tmp_path)
        from cnm.dns.records import NameTable

        self.names = NameTable()
        self.resolv = tmp_path / "host-resolv.conf"
        self.resolv.write_text("nameserver 127.0.0.53\nsearch corp.example\noptions edns0\n")

    def extra(self) -> dict:
        return {"names": self.names, "host_resolv_conf": str(self.resolv)}


@pytest.fixture
def named(tmp_path):
    return NamedWorld(tmp_path)


async def test_names_scoped_to_shared_networks(named):
    ctl = await named.controller()
    await ctl.create_network(NetworkSpec(name="front"))
    await ctl.create_network(NetworkSpec(name="back"))
    web = await run(
        ctl,
        "web",
        network_mode=NetworkMode.parse("front"),
        networks={"front": EndpointRequest(aliases=("www",))},
    )
    api = await run(ctl, "api", network_mode=NetworkMode.parse("front"))
    db = await run(ctl, "db", network_mode=NetworkMode.parse("back"))
    sb = {c: ctl.container_sandbox(c).id for c in (web, api, db)}
    web_ip = ctl.container_endpoints(web)[0][1].address.ip
    assert named.names.lookup_a(sb[api], "web") == [web_ip]
    assert named.names.lookup_a(sb[api], "www") == [web_ip]
    assert named.names.lookup_a(sb[api], "web.front") == [web_ip]
    assert named.names.lookup_a(sb[api], web[:12]) == [web_ip]
    assert named.names.lookup_a(sb[db], "web") is None  # not on a shared network: forwarded
    assert named.names.lookup_ptr(sb[api], web_ip) == "web.front"
    resolv = open(ctl.container_paths(api).resolv_conf).read()
    assert "nameserver 127.0.0.11" in resolv and "ndots:0" in resolv and "search corp.example" in resolv
    # connect db to front: now it sees web; disconnect: gone again
    await ctl.connect("front", "db", EndpointRequest())
    assert named.names.lookup_a(sb[db], "web") == [web_ip]
    await ctl.disconnect("front", "db")
    assert named.names.lookup_a(sb[db], "web") is None
    # a stopped container's names disappear
    await ctl.stop_container("web", timeout=1)
    assert named.names.lookup_a(sb[api], "web") is None


async def test_default_bridge_files_links_and_extra_hosts(named):
    ctl = await named.controller()
    db = await run(ctl, "db", env=("PASSWORD=x", "PATH=/bin"), exposed_ports=("5432/tcp",))
    db_ip = str(ctl.container_endpoints(db)[0][1].address.ip)
    app = await run(
        ctl,
        "app",
        links=("db:database",),
        extra_hosts=("gw:host-gateway", "other:10.1.2.3"),
        dns_search=("example.org",),
    )
    hosts = open(ctl.container_paths(app).hosts).read()
    assert "gw\t172.17.0.1" not in hosts  # order is IP<TAB>name
    assert "172.17.0.1\tgw" in hosts and "10.1.2.3\tother" in hosts
    assert f"{db_ip}\tdatabase {db[:12]} db" in hosts
    resolv = open(ctl.container_paths(app).resolv_conf).read()
    assert "127.0.0.11" not in resolv and "127.0.0.53" not in resolv  # legacy: loopback dropped
    assert "nameserver 8.8.8.8" in resolv and "search example.org" in resolv
    env = named.runtime.started[app].container.config.env
    assert "DATABASE_NAME=/app/database" in env
    assert f"DATABASE_PORT_5432_TCP=tcp://{db_ip}:5432" in env
    assert "DATABASE_ENV_PASSWORD=x" in env and not any(e.startswith("DATABASE_ENV_PATH") for e in env)
    assert sb_lookup_none(named, ctl, app)


def sb_lookup_none(named, ctl, cid) -> bool:
    """The default bridge has no embedded DNS: the sandbox has no records at all."""
    return not named.names.knows_sandbox(ctl.container_sandbox(cid).id)


async def test_bad_names_refused_at_create(named):
    ctl = await named.controller()
    for bad in (
        dict(extra_hosts=("nocolon",)),
        dict(extra_hosts=("h:not-an-ip",)),
        dict(dns=("8.8.8",)),
        dict(links=("ghost:alias",)),
    ):
        with pytest.raises(InvalidArgument):
            await ctl.create_container("bad", ContainerConfig(image="busybox", **bad))
    assert not ctl.containers()


async def test_upstreams_are_addresses(named):
    """The forwarder compares address families: upstreams must be ip_address objects."""
    from ipaddress import IPv4Address as A

    from cnm.dns import files
    from cnm.engine.naming import Naming

    host = files.parse_resolv_conf("nameserver 127.0.0.53\nnameserver bogus\n")
    ups = Naming._upstreams(ContainerConfig(image="busybox"), host)
    assert [(u.address, u.via_host_netns) for u in ups] == [(A("127.0.0.53"), True)]
    ups = Naming._upstreams(ContainerConfig(image="busybox", dns=("192.0.2.53",)), host)
    assert [(u.address, u.via_host_netns) for u in ups] == [(A("192.0.2.53"), False)]


# -- published ports ------------------------------------------------------------------------------


class PortWorld(World):
    """A publisher whose allocator holds no real sockets (unit tests bind nothing)."""

    def extra(self) -> dict:
        from cnm.engine.ports import Publisher
        from cnm.portmap.allocator import PortAllocator

        class _Sock:
            def close(self) -> None:
                pass

        allocator = PortAllocator((40000, 40010), reserved=(), opener=lambda proto, ip, port: _Sock())
        return {"publisher": Publisher(allocator, self.firewall)}


@pytest.fixture
def ports(tmp_path):
    return PortWorld(tmp_path)


async def test_ports_published_on_the_default_route_endpoint(ports):
    from cnm.model.container import PortBindingRequest

    ctl = await ports.controller()
    bindings = {
        "80/tcp": (PortBindingRequest(host_port="8080"),),
        "53/udp": (PortBindingRequest(host_ip="127.0.0.1", host_port=""),),
    }
    cid = await run(ctl, "web", port_bindings=bindings)
    [(_, ep)] = ctl.container_endpoints(cid)
    assert {(m.protocol, m.container_port, str(m.host_ip), m.host_port) for m in ep.ports} == {
        ("tcp", 80, "0.0.0.0", 8080),
        ("tcp", 80, "::", 8080),  # no host address: both families, one port (Docker 27+)
        ("udp", 53, "127.0.0.1", 40000),
    }
    rules = ports.firewall.ports[ep.id]
    assert {(r.protocol, r.host_port, str(r.container_ip), r.container_port) for r in rules} == {
        ("tcp", 8080, "172.17.0.2", 80),
        ("udp", 40000, "172.17.0.2", 53),
    }
    # the same host port again: Docker's message, and nothing of the second container stays
    c2, _ = await ctl.create_container("web2", ContainerConfig(image="busybox", port_bindings=bindings))
    with pytest.raises(Exception, match="port is already allocated"):
        await ctl.start_container(c2.id)
    assert not ctl.container_endpoints(c2.id) and set(ports.firewall.ports) == {ep.id}
    # stop: rules and reservations go; a restart of the daemon brings running ones back
    await ctl.stop_container("web", timeout=1)
    assert not ports.firewall.ports
    await ctl.start_container("web")
    await ctl.close()
    ctl2 = await ports.controller()
    [(_, ep2)] = ctl2.container_endpoints(cid)
    assert ep2.id in ports.firewall.ports and ep2.ports


async def test_internal_and_host_mode_publish_nothing(ports):
    from cnm.model.container import PortBindingRequest

    ctl = await ports.controller()
    await ctl.create_network(NetworkSpec(name="sealed", internal=True))
    bindings = {"80/tcp": (PortBindingRequest(host_port="8080"),)}
    sealed = await run(ctl, "sealed1", network_mode=NetworkMode.parse("sealed"), port_bindings=bindings)
    host = await run(ctl, "host1", network_mode=NetworkMode.parse("host"), port_bindings=bindings)
    assert not ports.firewall.ports
    assert not any(ep.ports for _, ep in ctl.container_endpoints(sealed))
    assert not any(ep.ports for _, ep in ctl.container_endpoints(host))


def test_port_rules_merge_runs_with_the_same_offset():
    from ipaddress import IPv4Interface

    from cnm.engine.ports import port_rules
    from cnm.model.endpoint import EndpointRecord
    from cnm.model.network import NetworkRecord
    from cnm.model.ports import ANY, PortMapping

    net = NetworkRecord(
        id="n" * 64, name="x", driver="bridge", created="t", options={"com.docker.network.bridge.name": "brx"}
    )
    ep = EndpointRecord(
        id="e" * 64,
        network_id=net.id,
        container_id="c",
        sandbox_id="s",
        name="c",
        address=IPv4Interface("10.0.0.2/24"),
    )
    maps = [PortMapping("tcp", p, ANY, p) for p in range(8000, 8011)] + [PortMapping("tcp", 80, ANY, 9090)]
    rules = port_rules(net, ep, maps)
    assert [(r.host_port, r.host_port_end, r.container_port) for r in rules] == [
        (8000, 8010, 8000),
        (9090, 9090, 80),
    ]


async def test_rename_moves_names_and_refuses_taken_ones(named):
    ctl = await named.controller()
    await ctl.create_network(NetworkSpec(name="front"))
    old = await run(ctl, "old", network_mode=NetworkMode.parse("front"))
    peer = await run(ctl, "peer", network_mode=NetworkMode.parse("front"))
    sb = ctl.container_sandbox(peer).id
    await ctl.rename_container("old", "new")
    assert named.names.lookup_a(sb, "new") and named.names.lookup_a(sb, "old") is None
    assert ctl.find_container("new").id == old and ctl.container_endpoints(old)[0][1].name == "new"
    with pytest.raises(Conflict, match="already in use"):
        await ctl.rename_container("new", "peer")
    with pytest.raises(InvalidArgument):
        await ctl.rename_container("new", "bad name")


async def test_default_route_and_ports_move_when_the_gateway_endpoint_leaves(ports):
    from cnm.model.container import PortBindingRequest

    ctl = await ports.controller()
    await ctl.create_network(NetworkSpec(name="backend"))
    bindings = {"80/tcp": (PortBindingRequest(host_port="8080"),)}
    cid = await run(ctl, "web", port_bindings=bindings)
    await ctl.connect("backend", "web", EndpointRequest())
    (_, first), (_, second) = ctl.container_endpoints(cid)
    assert first.default_route and first.ports and not second.default_route and not second.ports
    await ctl.disconnect("bridge", "web")
    [(net, ep)] = ctl.container_endpoints(cid)
    assert net.name == "backend" and ep.default_route
    assert [m.host_port for m in ep.ports] == [8080, 8080]  # 0.0.0.0 and ::
    assert set(ports.firewall.ports) == {ep.id}
    sandbox = ctl.container_sandbox(cid)
    assert (
        f"nsenter --net={sandbox.key} ip route replace default via {net.gateway} dev eth1"
        in ports.kernel.commands
    )
    # and a container that had no gateway endpoint gets one (and its ports) on connect
    await ctl.disconnect("backend", "web")
    assert not ports.firewall.ports
    await ctl.connect("backend", "web", EndpointRequest())
    [(_, again)] = ctl.container_endpoints(cid)
    assert again.default_route and [m.host_port for m in again.ports] == [8080, 8080]


async def test_restart_kills_what_runc_runs_and_the_store_does_not(world):
    """cnmd died while ``runc run`` was in flight: runc runs the container, the store says
    "created".  The next start reconciles with runc's own list: such a container, and one
    the store does not know at all, are killed and deleted; the recorded ones stay."""
    from cnm.model.container import Container
    from cnm.runtime.api import ContainerFiles, StartRequest

    ctl = await world.controller()
    keep = await run(ctl, "keep")
    half, _ = await ctl.create_container("half", ContainerConfig(image="busybox"))
    files = ContainerFiles("/h", "/hosts", "/resolv")
    image = world.runtime.find_image("busybox")
    await world.runtime.start(StartRequest(half, image, None, "half", files))
    stranger = Container(id="e" * 64, name="stranger", created="x", config=ContainerConfig(image="busybox"))
    await world.runtime.start(StartRequest(stranger, image, None, "s", files))
    await ctl.close()

    ctl2 = await world.controller()
    listed = {c["id"]: c["status"] for c in await world.runtime.list_containers()}
    assert listed == {keep: "running"}
    assert ctl2.find_container(keep).running
    assert ctl2.find_container("half").state.status == "created"
    await ctl2.start_container("half")
    assert ctl2.find_container("half").running


class YieldingStore(MemoryStore):
    """A store whose commit yields to the loop first, as a store over a network does."""

    async def commit(self, ops, checks=()):
        await asyncio.sleep(0)
        return await super().commit(ops, checks)


async def test_two_creates_of_one_name_at_once_give_one_container(world):
    world.store = YieldingStore()
    ctl = await world.controller()
    results = await asyncio.gather(
        *(ctl.create_container("same", ContainerConfig(image="busybox")) for _ in range(2)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, Conflict) for r in results) == 1
    assert [c.name for c in ctl.containers()] == ["same"]
