"""What keeps cnmd's cost flat as networks and containers pile up (issue 9, bench/scale.py
has the figures): a restart reconciles with ONE listing of runc's state, network create
looks its bridge up by name instead of listing every link, and the kernel filters an
address dump to the one link asked for.  Behaviour only; no timings."""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from test_engine import World, run

from cnm.kernel import rtnl
from cnm.model.network import IpamConfig, NetworkSpec
from cnm.runtime.api import RunState, run_states

# -- restart: one listing of runc's state ------------------------------------------------------------


async def test_restart_lists_runc_once_whatever_the_number_of_containers(tmp_path):
    world = World(tmp_path)
    ctl = await world.controller()
    ids = [await run(ctl, f"c{i}") for i in range(12)]
    await ctl.close()
    world.runtime.exit(ids[3], 0)  # died while cnmd was down
    world.runtime.calls.clear()

    ctl2 = await world.controller()
    assert world.runtime.calls.get("states") == 1
    assert world.runtime.calls.get("is_running", 0) == 0
    running = {cid for cid in ids if ctl2.find_container(cid).running}
    assert running == set(ids) - {ids[3]}, "the listing decides who runs"
    assert not ctl2.find_container(ids[3]).running


async def test_restart_does_not_adopt_a_pid_runc_gives_another_container(tmp_path):
    """A recorded container whose init runc reports with another pid (the pid was reused
    after a reboot-like loss of runc's state) is not taken for running."""
    world = World(tmp_path)
    ctl = await world.controller()
    cid = await run(ctl, "pidswap")
    await ctl.close()
    world.runtime.pids[cid] += 1
    ctl2 = await world.controller()
    assert not ctl2.find_container(cid).running


def test_run_states_reads_runc_list_entries():
    listed = [
        {"id": "a" * 64, "status": "running", "pid": 42},
        {"id": "b" * 64, "status": "paused", "pid": 43},
        {"id": "c" * 64, "status": "stopped", "pid": 0},
        {"id": "d" * 64, "status": "created", "pid": 44},
        {"status": "running", "pid": 45},  # no id: dropped
    ]
    states = run_states(listed)
    assert set(states) == {"a" * 64, "b" * 64, "c" * 64, "d" * 64}
    assert states["a" * 64] == RunState("running", 42) and states["a" * 64].running
    assert states["b" * 64].running  # paused: its init is alive
    assert not states["c" * 64].running and not states["d" * 64].running


# -- network create: its bridge by name, never a dump of every link -------------------------------------


async def test_network_create_and_remove_never_list_every_link(tmp_path, monkeypatch):
    world = World(tmp_path)
    ctl = await world.controller()

    async def no_dump(netns_path=None):
        raise AssertionError("network create/remove listed every link")

    monkeypatch.setattr(world.kernel, "links", no_dump)
    for i in range(5):
        spec = NetworkSpec(name=f"n{i}", ipam=(IpamConfig(subnet=IPv4Network(f"10.64.{i}.0/24")),))
        await ctl.create_network(spec)
    assert {f"n{i}" for i in range(5)} <= {n.name for n in ctl.networks()}
    net = ctl.find_network("n2")
    assert (await world.kernel.lookup_link(net.bridge_name)).owner == net.id
    await ctl.remove_network("n2")
    assert await world.kernel.lookup_link(net.bridge_name) is None


# -- the kernel filters an address dump to one link -----------------------------------------------------


def _newaddr(seq: int, index: int, address: str, prefixlen: int) -> bytes:
    body = struct.pack("=BBBBI", socket.AF_INET, prefixlen, 0, 0, index)
    for kind in (rtnl.IFA_ADDRESS, rtnl.IFA_LOCAL):
        body += rtnl.attr(kind, IPv4Address(address).packed)
    return struct.pack("=IHHII", 16 + len(body), rtnl.RTM_NEWADDR, 2, seq, 0) + body


class DumpSocket:
    """Answers one RTM_GETADDR dump with scripted messages, then NLMSG_DONE."""

    def __init__(self, answers) -> None:
        self.answers = answers
        self.sent: list[bytes] = []
        self.queue: list[bytes] = []
        self.timeout = None

    def gettimeout(self):
        return self.timeout

    def settimeout(self, value):
        self.timeout = value

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        _length, _kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data)
        self.queue.append(b"".join(self.answers(seq)))
        self.queue.append(struct.pack("=IHHIIi", 20, rtnl.NLMSG_DONE, 2, seq, 0, 0))
        return len(data)

    def recv(self, size: int) -> bytes:
        if not self.queue:
            raise TimeoutError
        return self.queue.pop(0)


def test_addresses_asks_for_one_link_and_keeps_only_its_addresses():
    sock = DumpSocket(
        lambda seq: [
            _newaddr(seq, 7, "10.64.0.1", 24),
            _newaddr(seq, 9, "10.64.1.1", 24),  # a kernel that did not filter: dropped here
            _newaddr(seq - 1, 7, "10.99.0.1", 24),  # an answer to an earlier request
        ]
    )
    assert rtnl.addresses(sock, 7) == [(IPv4Address("10.64.0.1"), 24)]
    (request,) = sock.sent
    _length, kind, flags, _seq, _pid = struct.unpack_from("=IHHII", request)
    family, _plen, _flags, _scope, index = struct.unpack_from("=BBBBI", request, 16)
    assert kind == rtnl.RTM_GETADDR and flags & rtnl.NLM_F_DUMP == rtnl.NLM_F_DUMP
    assert (family, index) == (socket.AF_INET, 7)


def test_addresses_of_a_link_without_any():
    assert rtnl.addresses(DumpSocket(lambda seq: []), 3) == []


def test_addresses_raises_the_kernels_refusal():
    def refuse(seq):
        err = struct.pack("=i", -22) + b"\0" * 16
        return [struct.pack("=IHHII", 16 + len(err), rtnl.NLMSG_ERROR, 0, seq, 0) + err]

    with pytest.raises(rtnl.NetlinkError):
        rtnl.addresses(DumpSocket(refuse), 3)


# -- the last release, extracted beside the current code ------------------------------------------------


def test_extract_names_a_missing_tag(tmp_path):
    from oldrelease import OldReleaseError, extract

    with pytest.raises(OldReleaseError, match="v0.0.0-missing.*not in"):
        extract(tmp_path / "old", tag="v0.0.0-missing")
    assert not (tmp_path / "old").exists()


def test_extract_writes_the_release_and_launchers_that_run_it(tmp_path):
    import os
    import subprocess
    import sys

    from oldrelease import RELEASE, extract

    release = extract(tmp_path / "old")
    assert release.tag == RELEASE and (release.src / "cnm" / "daemon" / "main.py").is_file()
    env = {**os.environ, "CNM_NO_AUTOSTART": "1"}
    assert subprocess.run([release.client, "--help"], capture_output=True, env=env).returncode == 0
    text = Path(release.daemon).read_text()
    assert text.startswith(f"#!{sys.executable}\n") and repr(str(release.src)) in text
    # the launchers import the release's sources, not the venv's
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {str(release.src)!r}); import cnm; print(cnm.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip().startswith(str(release.src))


def test_links_decodes_a_link_dump_as_pyroute2_would():
    stats = struct.pack("=8Q", 1, 2, 3, 4, 5, 6, 7, 8) + b"\0" * 64
    body = rtnl.ifinfomsg(index=5, flags=1) + b"".join(
        [
            rtnl.attr_str(rtnl.IFLA_IFNAME, "br-x"),
            rtnl.attr_u32(rtnl.IFLA_MTU, 1450),
            rtnl.attr_u32(rtnl.IFLA_MASTER, 0),
            rtnl.attr_mac(rtnl.IFLA_ADDRESS, "02:42:ac:11:00:01"),
            rtnl.attr_str(rtnl.IFLA_IFALIAS, "cnm:abc"),
            rtnl.attr_nest(rtnl.IFLA_LINKINFO, rtnl.attr_str(rtnl.IFLA_INFO_KIND, "bridge")),
            rtnl.attr(rtnl.IFLA_STATS64, stats),
        ]
    )

    def answers(seq):
        return [struct.pack("=IHHII", 16 + len(body), rtnl.RTM_NEWLINK, 2, seq, 0) + body]

    (link,) = rtnl.links(DumpSocket(answers))
    assert link == rtnl.LinkDump(
        5, "br-x", "bridge", "cnm:abc", 0, "02:42:ac:11:00:01", 1450, 1, (1, 2, 3, 4, 5, 6, 7, 8)
    )


def test_a_dump_the_kernel_flags_as_interrupted_is_raised_for_a_retry():
    def interrupted(seq):
        body = rtnl.ifinfomsg(index=1)
        return [
            struct.pack("=IHHII", 16 + len(body), rtnl.RTM_NEWLINK, 2 | rtnl.NLM_F_DUMP_INTR, seq, 0) + body
        ]

    with pytest.raises(rtnl.DumpInterrupted):
        rtnl.links(DumpSocket(interrupted))
