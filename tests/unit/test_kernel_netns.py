"""The fresh-thread helper and the parts of netns/netlink that need no root."""

from __future__ import annotations

import asyncio
import threading
from ipaddress import IPv4Interface

import pytest

from cnm.errors import KernelError
from cnm.kernel import netns
from cnm.kernel.netlink import _link_info, _random_mac


async def test_runs_on_a_new_thread_each_time():
    loop_thread = threading.get_ident()
    idents = [await netns.run_on_fresh_thread(threading.get_ident) for _ in range(3)]
    assert loop_thread not in idents
    names = await netns.run_on_fresh_thread(lambda: threading.current_thread().name)
    assert names == "cnm-netns"


async def test_exceptions_reach_the_caller():
    def boom():
        raise ValueError("inside")

    with pytest.raises(ValueError, match="inside"):
        await netns.run_on_fresh_thread(boom)


async def test_cancelled_caller_gets_its_result_closed():
    release = threading.Event()

    class Resource:
        closed = False

        def close(self):
            self.closed = True

    made = Resource()

    def slow():
        release.wait(5)
        return made

    task = asyncio.ensure_future(netns.run_on_fresh_thread(slow))
    await asyncio.sleep(0.01)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if made.closed:
            break
        await asyncio.sleep(0.01)
    assert made.closed


async def test_missing_namespace_is_a_kernel_error(tmp_path):
    with pytest.raises(KernelError, match="does not exist"):
        await netns.socket_in_netns(str(tmp_path / "missing"))


def test_plain_file_is_no_namespace_and_delete_is_idempotent(tmp_path):
    path = tmp_path / "ns"
    path.write_text("")
    assert not netns.netns_exists(str(path))
    netns.delete_netns(str(path))
    assert not path.exists()
    netns.delete_netns(str(path))


def test_random_mac_is_unicast_and_local():
    for _ in range(50):
        mac = _random_mac()
        first = int(mac[:2], 16)
        assert len(mac) == 17 and first & 1 == 0 and first & 2 == 2


class Msg(dict):
    """Stands in for a pyroute2 ifinfmsg: ``get`` resolves attribute names."""


def test_link_info_parses_owner_kind_and_addresses():
    msg = Msg(
        index=7,
        ifname="veth1234567",
        ifalias="cnm:ep1",
        master=3,
        address="02:00:00:00:00:01",
        mtu=1400,
        flags=0x1,
        linkinfo=Msg(kind="veth"),
    )
    info = _link_info(msg, {7: [IPv4Interface("10.0.0.2/24")]})
    assert (info.index, info.name, info.kind, info.owner, info.master, info.mtu, info.up) == (
        7,
        "veth1234567",
        "veth",
        "ep1",
        3,
        1400,
        True,
    )
    assert info.addresses == (IPv4Interface("10.0.0.2/24"),)
    foreign = _link_info(Msg(index=1, ifname="lo", flags=0, ifalias="uplink"), {})
    assert foreign.owner == "" and foreign.kind == "" and not foreign.up
