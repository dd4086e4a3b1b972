"""pause/unpause, top, stats, container prune and ``rm --link``: the engine over fakes, the
API over the fake controller, and the pure parts (cgroup files, ``ps`` output, the CLI's
stats table)."""

from __future__ import annotations

import json

import pytest
from test_api_fakes import FakeController
from test_api_server import Client, _create
from test_engine import World, run

from cnm.api.app import make_app, serve_unix
from cnm.api.schemas_system import VersionInfo
from cnm.cli.commands.stats import cpu_percent, memory_usage, row
from cnm.errors import Conflict, NotFound, RuntimeFailure
from cnm.kernel.api import LinkStats
from cnm.model.container import ContainerConfig, ExecSpec
from cnm.model.network_mode import NetworkMode
from cnm.runtime import stats as cgstats
from cnm.runtime.stats import Cgroup, parse_ps, procs, read_stats


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


@pytest.fixture
async def server(tmp_path):
    ctrl = FakeController()
    app = make_app(ctrl, version_info=VersionInfo(version="0.1.0"), tmp_dir=str(tmp_path / "uploads"))
    sock = str(tmp_path / "run" / "cnm.sock")
    runner = await serve_unix(app, sock, 0o660)
    yield ctrl, Client(sock), sock
    await runner.cleanup()


# -- cgroup files -------------------------------------------------------------------------


def _write(d, files: dict[str, str]) -> None:
    for name, text in files.items():
        (d / name).write_text(text)


def test_read_stats_cgroup_v2(tmp_path):
    _write(
        tmp_path,
        {
            "cpu.stat": "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
            "memory.current": "4096\n",
            "memory.max": "max\n",
            "memory.stat": "anon 100\ninactive_file 30\n",
            "pids.current": "3\n",
            "pids.max": "max\n",
            "cgroup.procs": "12\n7\n",
            "io.stat": "8:0 rbytes=100 wbytes=20 rios=1 wios=1\n8:16 rbytes=1 wbytes=2\n",
        },
    )
    cg = Cgroup(2, {"": str(tmp_path)})
    s = read_stats(cg)
    assert (s.cpu_ns, s.memory_usage, s.memory_limit, s.pids, s.pids_limit) == (1_500_000, 4096, 0, 3, 0)
    assert s.memory_stat == {"anon": 100, "inactive_file": 30}
    assert (s.io_read, s.io_write) == (101, 22)
    assert procs(cg) == [7, 12]


def test_read_stats_cgroup_v1(tmp_path):
    dirs = {}
    for controller, files in {
        "cpuacct": {"cpuacct.usage": "123456789\n"},
        "memory": {
            "memory.usage_in_bytes": "8192\n",
            "memory.limit_in_bytes": "9223372036854771712\n",  # v1's "unlimited"
            "memory.stat": "total_inactive_file 4096\n",
        },
        "pids": {"pids.current": "2\n", "pids.max": "64\n", "cgroup.procs": "41\n"},
        "blkio": {
            "blkio.throttle.io_service_bytes_recursive": "8:0 Read 4096\n8:0 Write 512\n8:0 Total 4608\n"
        },
    }.items():
        d = tmp_path / controller
        d.mkdir()
        _write(d, files)
        dirs[controller] = str(d)
    cg = Cgroup(1, dirs)
    s = read_stats(cg)
    assert (s.cpu_ns, s.memory_usage, s.memory_limit, s.pids, s.pids_limit) == (123456789, 8192, 0, 2, 64)
    assert procs(cg) == [41]
    assert (s.io_read, s.io_write) == (4096, 512)


def test_read_stats_of_a_missing_cgroup_is_zero(tmp_path):
    assert read_stats(Cgroup(2, {"": str(tmp_path / "gone")})) == cgstats.CgroupStats()


def test_locate_picks_the_hierarchy(tmp_path):
    assert cgstats.locate("/cnm-x/", "abc", str(tmp_path)).dirs == {
        c: str(tmp_path / c / "cnm-x" / "abc") for c in ("cpuacct", "memory", "pids", "blkio")
    }
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    assert cgstats.locate("cnm-x", "abc", str(tmp_path)) == Cgroup(2, {"": str(tmp_path / "cnm-x" / "abc")})


# -- ps ----------------------------------------------------------------------------------


PS = """UID          PID    PPID  C STIME TTY          TIME CMD
root           1       0  0 10:00 ?        00:00:01 /sbin/init splash
root          41       1  0 10:01 ?        00:00:00 sleep 60
nobody        42      41  0 10:01 ?        00:00:00 sh -c while true; do sleep 1; done
"""


def test_parse_ps_keeps_the_containers_pids_and_the_command_whole():
    titles, processes = parse_ps(PS, [41, 42])
    assert titles == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert [p[1] for p in processes] == ["41", "42"]
    assert processes[1][-1] == "sh -c while true; do sleep 1; done"


def test_parse_ps_without_a_pid_column_is_refused():
    with pytest.raises(RuntimeFailure, match="Couldn't find PID field in ps output"):
        parse_ps("USER COMMAND\nroot init\n", [1])


async def test_top_runs_the_hosts_ps_for_the_given_pids():
    import os

    titles, processes = await cgstats.top([os.getpid()], "-o pid,comm")
    assert titles == ["PID", "COMMAND"]
    assert processes == [[str(os.getpid()), processes[0][1]]]


async def test_top_with_bad_ps_args_names_ps_error():
    with pytest.raises(Exception, match="(?i)error|unsupported|option"):
        await cgstats.top([1], "--no-such-option-xyz")


# -- the CLI's table ------------------------------------------------------------------------


def test_cli_cpu_and_memory_as_docker_computes_them():
    cpu = {"cpu_usage": {"total_usage": 300}, "system_cpu_usage": 2000, "online_cpus": 2}
    pre = {"cpu_usage": {"total_usage": 100}, "system_cpu_usage": 1000}
    assert cpu_percent(cpu, pre) == pytest.approx(40.0)
    assert cpu_percent(cpu, cpu) == 0.0
    assert memory_usage({"usage": 1000, "stats": {"inactive_file": 200}}) == 800
    assert memory_usage({"usage": 1000, "stats": {"total_inactive_file": 2000}}) == 1000


def test_cli_row_sums_the_interfaces():
    reading = {
        "id": "a" * 64,
        "name": "/web",
        "cpu_stats": {},
        "precpu_stats": {},
        "memory_stats": {"usage": 2 * 1024 * 1024, "limit": 8 * 1024 * 1024, "stats": {}},
        "pids_stats": {"current": 4},
        "networks": {"eth0": {"rx_bytes": 1500, "tx_bytes": 500}, "eth1": {"rx_bytes": 500, "tx_bytes": 148}},
        "blkio_stats": {"io_service_bytes_recursive": [{"op": "read", "value": 2048}]},
    }
    r = row(reading, None, False)
    assert r["ID"] == "a" * 12 and r["Name"] == "web"
    assert r["MemUsage"] == "2MiB / 8MiB" and r["MemPerc"] == "25.00%"
    assert r["NetIO"] == "2kB / 648B" and r["BlockIO"] == "2.05kB / 0B" and r["PIDs"] == "4"


# -- engine over fakes ----------------------------------------------------------------------


async def test_pause_unpause_and_their_refusals(world):
    ctl = await world.controller()
    cid = await run(ctl, "p1")
    await ctl.pause_container("p1")
    assert ctl.find_container(cid).state.paused and cid in world.runtime.paused
    with pytest.raises(Conflict, match="already paused"):
        await ctl.pause_container("p1")
    with pytest.raises(Conflict, match="cannot start a paused container, try unpause instead"):
        await ctl.start_container("p1")
    with pytest.raises(Conflict, match="is paused, unpause the container before exec"):
        ctl.create_exec("p1", ExecSpec(container_id="", cmd=("ls",)))
    await ctl.unpause_container("p1")
    assert not ctl.find_container(cid).state.paused and cid not in world.runtime.paused
    assert [e.action for e in ctl.events.recent() if e.actor_id == cid][-2:] == ["pause", "unpause"]
    with pytest.raises(Conflict, match="is not paused"):
        await ctl.unpause_container("p1")
    created, _ = await ctl.create_container("p2", ContainerConfig(image="busybox"))
    with pytest.raises(Conflict, match="is not running"):
        await ctl.pause_container("p2")


async def test_stop_and_kill_of_a_paused_container_thaw_it_first(world):
    ctl = await world.controller()
    cid = await run(ctl, "s1")
    await ctl.pause_container(cid)
    await ctl.stop_container(cid, timeout=1)
    c = ctl.find_container(cid)
    assert c.state.status == "exited" and not c.state.paused and cid not in world.runtime.paused
    await ctl.start_container(cid)
    await ctl.pause_container(cid)
    await ctl.kill_container(cid)
    await ctl.wait_container(cid)
    assert ctl.find_container(cid).state.status == "exited" and cid not in world.runtime.paused


async def test_stats_reads_cgroup_and_the_containers_interfaces(world):
    ctl = await world.controller()
    cid = await run(ctl, "st")
    cg = world.runtime.cgroup(cid)
    with open(cg.path("cpu", "cpu.stat"), "w") as f:
        f.write("usage_usec 42\n")
    with open(cg.path("memory", "memory.current"), "w") as f:
        f.write("1000\n")
    sandbox = ctl.container_sandbox(cid)
    link = world.kernel.namespaces[sandbox.key]["eth0"]
    link.stats = LinkStats(rx_bytes=10, rx_packets=1, tx_bytes=20, tx_packets=2)
    sample = await ctl.container_stats("st")
    assert sample.cgroup.cpu_ns == 42_000 and sample.cgroup.memory_usage == 1000
    assert sample.networks == {"eth0": link.stats}
    await ctl.stop_container(cid)
    stopped = await ctl.container_stats("st")
    assert stopped.networks == {} and stopped.cgroup == cgstats.CgroupStats()


async def test_top_needs_a_running_container(world):
    ctl = await world.controller()
    created, _ = await ctl.create_container("t1", ContainerConfig(image="busybox"))
    with pytest.raises(Conflict, match="is not running"):
        await ctl.container_top("t1", "-ef")


async def test_remove_link_drops_the_alias_only(world):
    ctl = await world.controller()
    await run(ctl, "db")
    web = await run(ctl, "web", links=("db:database", "db:other"))
    await ctl.remove_container_link("/web/database")
    assert ctl.find_container(web).config.links == ("db:other",)
    hosts = open(ctl.container_paths(web).hosts).read()
    assert "database" not in hosts and "other" in hosts
    assert ctl.find_container("db").running  # neither container is removed
    with pytest.raises(NotFound, match="No such container: /web/database"):
        await ctl.remove_container_link("web/database")
    with pytest.raises(Conflict, match="cannot remove the default link name"):
        await ctl.remove_container_link("/web")


# -- API over the fake controller ------------------------------------------------------------


async def test_api_pause_shows_in_inspect_and_ps(server):
    ctrl, client, _ = server
    cid = await _create(client, {"Image": "busybox"}, "pz")
    await client.request("POST", f"/containers/{cid}/start")
    assert (await client.request("POST", "/containers/pz/pause")).status == 204
    state = (await client.request("GET", "/containers/pz/json")).json()["State"]
    assert (state["Status"], state["Running"], state["Paused"]) == ("paused", True, True)
    ps = (await client.request("GET", '/containers/json?filters={"status":["paused"]}')).json()
    assert [c["State"] for c in ps] == ["paused"] and ps[0]["Status"].endswith("(Paused)")
    assert (await client.request("POST", "/containers/pz/pause")).status == 409
    assert (await client.request("POST", "/containers/pz/unpause")).status == 204
    assert (await client.request("GET", "/containers/pz/json")).json()["State"]["Status"] == "running"


async def test_api_top_default_args_and_shape(server):
    ctrl, client, _ = server
    cid = await _create(client, {"Image": "busybox"}, "tp")
    assert (await client.request("GET", "/containers/tp/top")).status == 409
    await client.request("POST", f"/containers/{cid}/start")
    reply = await client.request("GET", "/containers/tp/top")
    assert reply.json() == {"Titles": ["UID", "PID", "CMD"], "Processes": [["root", "4242", "sleep 60"]]}
    await client.request("GET", "/containers/tp/top?ps_args=aux")
    assert ctrl.top_args == ["-ef", "aux"]


async def test_api_stats_once_and_one_shot(server):
    ctrl, client, _ = server
    cid = await _create(client, {"Image": "busybox"}, "sx")
    await client.request("POST", f"/containers/{cid}/start")
    one = (await client.request("GET", "/containers/sx/stats?stream=false&one-shot=true")).json()
    assert one["id"] == cid and one["name"] == "/sx" and one["preread"] == "0001-01-01T00:00:00Z"
    assert one["networks"]["eth0"]["rx_bytes"] == 100 and set(one["networks"]["eth0"]) == {
        f"{d}_{k}" for d in ("rx", "tx") for k in ("bytes", "packets", "errors", "dropped")
    }
    assert one["memory_stats"]["usage"] == 2 << 20 and one["memory_stats"]["limit"] > 0
    assert one["pids_stats"] == {"current": 3} and one["cpu_stats"]["online_cpus"] >= 1
    two = (await client.request("GET", "/containers/sx/stats?stream=false")).json()
    assert two["precpu_stats"]["cpu_usage"]["total_usage"] < two["cpu_stats"]["cpu_usage"]["total_usage"]
    assert two["preread"] != "0001-01-01T00:00:00Z"
    bad = await client.request("GET", "/containers/sx/stats?stream=true&one-shot=true")
    assert bad.status == 400


async def test_api_stats_streams_a_reading_a_second(server):
    import asyncio

    ctrl, client, _ = server
    cid = await _create(client, {"Image": "busybox"}, "sy")
    await client.request("POST", f"/containers/{cid}/start")
    reader, writer = await client.open("GET", "/containers/sy/stats")
    try:
        readings = []
        buf = b""
        while len(readings) < 2:
            buf += await asyncio.wait_for(reader.read(65536), 5)
            for line in buf.split(b"\n"):
                line = line.strip()
                if line.startswith(b"{") and line.endswith(b"}"):
                    readings.append(json.loads(line))
            if len(readings) < 2:
                readings = []
        assert readings[1]["precpu_stats"] == readings[0]["cpu_stats"]
    finally:
        writer.close()


async def test_api_prune_and_link_removal(server):
    ctrl, client, _ = server
    keep = await _create(client, {"Image": "busybox", "Labels": {"keep": "1"}}, "keep")
    gone = await _create(client, {"Image": "busybox"}, "gone")
    live = await _create(client, {"Image": "busybox"}, "live")
    await client.request("POST", f"/containers/{live}/start")
    reply = await client.request("POST", '/containers/prune?filters={"label!":["keep"]}')
    assert reply.json() == {"ContainersDeleted": [gone], "SpaceReclaimed": 100}
    assert set(ctrl.ctrs) == {keep, live}
    bad = await client.request("POST", '/containers/prune?filters={"until":["nonsense"]}')
    assert bad.status == 400 and set(ctrl.ctrs) == {keep, live}
    web = await _create(client, {"Image": "busybox", "HostConfig": {"Links": ["live:db"]}}, "web")
    assert (await client.request("DELETE", "/containers/web/db?link=1")).status == 204
    assert ctrl.ctrs[web].config.links == ()
    assert (await client.request("DELETE", "/containers/web/db?link=1")).status == 404


# -- IPAMConfig.LinkLocalIPs ------------------------------------------------------------------


def test_link_local_ips_parsed_echoed_and_refused_when_bad():
    from cnm.api.schemas_network import endpoint_settings_json, parse_endpoint_settings
    from cnm.errors import InvalidArgument

    request = parse_endpoint_settings({"IPAMConfig": {"LinkLocalIPs": ["169.254.1.2", "169.254.9.9"]}})
    assert [str(ip) for ip in request.link_local_ips] == ["169.254.1.2", "169.254.9.9"]
    assert endpoint_settings_json(request)["IPAMConfig"] == {"LinkLocalIPs": ["169.254.1.2", "169.254.9.9"]}
    assert parse_endpoint_settings({"IPAMConfig": {"LinkLocalIPs": []}}).link_local_ips == ()
    with pytest.raises(InvalidArgument, match="invalid link-local IP address: nope"):
        parse_endpoint_settings({"IPAMConfig": {"LinkLocalIPs": ["nope"]}})
    with pytest.raises(InvalidArgument, match="IPv6 is not supported"):
        parse_endpoint_settings({"IPAMConfig": {"LinkLocalIPs": ["fe80::1"]}})


async def test_link_local_ips_are_assigned_on_the_interface(world):
    from ipaddress import IPv4Address, IPv4Interface

    from cnm.model.endpoint import EndpointRequest
    from cnm.model.network import NetworkSpec

    ctl = await world.controller()
    await ctl.create_network(NetworkSpec(name="ll", driver="bridge"))
    request = EndpointRequest(link_local_ips=(IPv4Address("169.254.7.7"),))
    created, _ = await ctl.create_container(
        "llc",
        ContainerConfig(image="busybox", network_mode=NetworkMode.parse("ll"), networks={"ll": request}),
    )
    await ctl.start_container(created.id)
    sandbox = ctl.container_sandbox(created.id)
    eth0 = world.kernel.namespaces[sandbox.key]["eth0"]
    assert IPv4Interface("169.254.7.7/16") in eth0.addresses and len(eth0.addresses) == 2
