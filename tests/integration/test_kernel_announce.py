"""LinuxKernel.announce against the real kernel, in one throwaway host: a bridge with two
namespaces on it; one holds an INCOMPLETE neighbour entry for an address nobody owns
(a datagram waits on it), the other none.  Announcing the address on the bridge gives the
first entry the announced MAC (STALE or REACHABLE) -- nothing else could, as nobody
answers for that address -- and creates no entry in the other; announcing on a link that
does not exist is a KernelError naming it, and the log holds the arping-style line."""

from __future__ import annotations

import textwrap

import pytest
from throwaway import check_ok, have, run_script

pytestmark = pytest.mark.root

SCRIPT = textwrap.dedent(
    r"""
    import asyncio, json, logging, subprocess, time
    from ipaddress import IPv4Address, IPv4Interface

    from cnm.errors import KernelError
    from cnm.kernel.api import NeighEntry, VethSpec
    from cnm.kernel.netlink import LinuxKernel

    ROOT = "/run/cnm-test/netns"
    BR = "ov-announce"
    GHOST = IPv4Address("10.98.0.50")  # nobody has it: only the announce can tell its MAC
    GHOST_MAC = "02:42:0a:62:00:32"

    lines = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logging.getLogger("cnm.kernel").addHandler(Keep())
    logging.getLogger("cnm.kernel").setLevel(logging.DEBUG)
    logging.getLogger("pyroute2").setLevel(logging.WARNING)

    def sh(*argv, netns=None):
        if netns:
            argv = ("nsenter", f"--net={netns}", *argv)
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode:
            raise AssertionError(f"{argv} failed: {proc.stderr}")
        return proc.stdout

    def entry(netns):
        "(state, lladdr) of the neighbour entry of GHOST in netns, or None."
        for n in json.loads(sh("ip", "-j", "neigh", "show", "dev", "eth0", netns=netns) or "[]"):
            if n["dst"] == str(GHOST):
                return tuple(n.get("state", [])), n.get("lladdr")
        return None

    def until(what, probe, limit=5.0):
        deadline = time.monotonic() + limit
        while True:
            found = probe()
            if what(found):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting: last {found}")
            time.sleep(0.01)

    async def main():
        k = LinuxKernel("0123456789abcdef")
        await k.ensure_bridge(BR, owner="net1", mtu=1450, address=None)
        asker, bystander = f"{ROOT}/asker", f"{ROOT}/bystander"
        for i, path in ((2, asker), (3, bystander)):
            await k.create_netns(path)
            await k.add_veth(VethSpec(owner=f"ep{i}", host_ifname=f"vethann{i}", bridge=BR,
                                      netns_path=path, ifname="eth0", mtu=1450,
                                      mac=f"02:42:0a:62:00:{i:02x}",
                                      address=IPv4Interface(f"10.98.0.{i}/24")))
        # a datagram to GHOST: the asker's entry is INCOMPLETE while the kernel asks
        sh("python3", "-c", f"import socket; socket.socket(2, 2).sendto(b'x', ('{GHOST}', 9))",
           netns=asker)
        state = until(lambda e: e is not None, lambda: entry(asker))
        assert state[0] == ("INCOMPLETE",), state

        await k.announce(BR, [NeighEntry(GHOST, GHOST_MAC)])
        found = until(lambda e: e is not None and e[1] is not None, lambda: entry(asker))
        assert found[1] == GHOST_MAC and found[0][0] in ("STALE", "REACHABLE", "DELAY", "PROBE"), found
        assert entry(bystander) is None  # a gratuitous ARP creates no entry (arp_accept=0)
        print("asker's entry after the announce:", found)

        try:
            await k.announce("ov-missing", [NeighEntry(GHOST, GHOST_MAC)])
            raise AssertionError("announce on a missing link succeeded")
        except KernelError as exc:
            assert "ov-missing" in str(exc), exc
        logged = f"arping -U -c 1 -I {BR} -s {GHOST} {GHOST}  # from {GHOST_MAC}"
        assert logged in lines, lines

        for i, path in ((2, asker), (3, bystander)):
            await k.delete_link(f"vethann{i}")
            await k.delete_netns(path)
        await k.delete_link(BR)
        print("OK")

    asyncio.run(main())
    """
)


@pytest.mark.skipif(not have("ip", "nsenter"), reason="needs root and iproute2")
def test_announce_completes_an_incomplete_neighbour_entry(tmp_path):
    check_ok(run_script(tmp_path, SCRIPT, timeout=120))
