"""LinuxKernel's VXLAN, FDB and neighbour primitives against the real kernel, in one
throwaway namespace: their refusals (bridge missing, name taken, VNI in use, FDB on a
non-VXLAN device), idempotent removal (also once the device is gone), a device recreated
under the same name (a stale cached index), and the command log: replayed by iproute2 in a
fresh namespace, the logged lines build the same device and entries."""

from __future__ import annotations

import textwrap

import pytest
from throwaway import check_ok, have, run_script

pytestmark = pytest.mark.root

SCRIPT = textwrap.dedent(
    r"""
    import asyncio, json, logging, shlex, subprocess
    from ipaddress import IPv4Address

    from cnm.errors import Conflict, InvalidArgument, KernelError
    from cnm.kernel.api import FdbEntry, NeighEntry, VxlanSpec
    from cnm.kernel.netlink import LinuxKernel

    LOCAL = IPv4Address("192.0.2.1")
    VTEP = IPv4Address("192.0.2.2")
    MAC1, MAC2 = "02:42:0a:00:00:21", "02:42:0a:00:00:22"

    lines = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logging.getLogger("cnm.kernel").addHandler(Keep())
    logging.getLogger("cnm.kernel").setLevel(logging.DEBUG)
    logging.getLogger("pyroute2").setLevel(logging.WARNING)


    def sh(*argv, check=True):
        proc = subprocess.run(argv, capture_output=True, text=True)
        if check and proc.returncode:
            raise AssertionError(f"{argv} failed: {proc.stderr}")
        return proc

    def state(netns=None):
        "(vxlan settings, its master's name, fdb remotes, permanent neighbours) of vx-t, by iproute2."
        pre = ["-n", netns] if netns else []
        (vx,) = json.loads(sh("ip", *pre, "-d", "-j", "link", "show", "dev", "vx-t").stdout)
        data = vx["linkinfo"]["info_data"]
        conf = {k: data.get(k) for k in ("id", "local", "port", "learning", "proxy", "group", "remote")}
        fdb = json.loads(sh("bridge", *pre, "-j", "fdb", "show", "dev", "vx-t").stdout)
        neigh = json.loads(sh("ip", *pre, "-j", "neigh", "show", "dev", "vx-t").stdout)
        return (
            conf, vx["master"], vx["mtu"], vx.get("ifalias"),
            sorted((e["mac"], e["dst"], e.get("state", "")) for e in fdb if "dst" in e),
            sorted((n["dst"], n["lladdr"], tuple(n["state"])) for n in neigh),
        )

    def spec(**kw):
        values = dict(owner="net1", name="vx-t", vni=4100, local=LOCAL, bridge="ov-t", mtu=1450)
        values.update(kw)
        return VxlanSpec(**values)

    async def main():
        k = LinuxKernel("0123456789abcdef")
        sh("ip", "addr", "add", f"{LOCAL}/32", "dev", "lo")  # no dummy driver in this kernel

        # -- refusals, each changing nothing ----------------------------------------------------
        try:
            await k.add_vxlan(spec())
            raise AssertionError("a VXLAN device without its bridge")
        except KernelError as exc:
            assert "bridge ov-t does not exist" in str(exc), exc
        await k.ensure_bridge("ov-t", owner="net1", mtu=1450, address=None)
        idx = await k.add_vxlan(spec())
        for bad, words in ((spec(), "a link has that name"), (spec(name="vx-u"), "VNI 4100 on port 4789")):
            try:
                await k.add_vxlan(bad)
                raise AssertionError(f"{bad} was accepted")
            except Conflict as exc:
                assert words in str(exc), exc
        assert sh("ip", "link", "show", "vx-u", check=False).returncode != 0
        try:
            await k.replace_fdb("ov-t", FdbEntry(MAC1, VTEP))
            raise AssertionError("a remote FDB entry on a bridge")
        except KernelError as exc:
            assert "ov-t: a bridge link, not a VXLAN device" in str(exc), exc
        try:
            await k.replace_fdb("vx-none", FdbEntry(MAC1, VTEP))
            raise AssertionError("an FDB entry on a missing device")
        except KernelError as exc:
            assert "no such device" in str(exc), exc

        # -- entries: replace (a moved MAC), a stale delete, idempotent deletes ------------------
        await k.replace_fdb("vx-t", FdbEntry(MAC1, IPv4Address("192.0.2.9")))
        await k.replace_fdb("vx-t", FdbEntry(MAC1, VTEP))
        await k.replace_fdb("vx-t", FdbEntry(MAC2, VTEP))
        await k.delete_fdb("vx-t", FdbEntry(MAC2, IPv4Address("192.0.2.9")))  # not where MAC2 is: stays
        await k.replace_neigh("vx-t", NeighEntry(IPv4Address("10.0.0.21"), MAC2))
        await k.replace_neigh("vx-t", NeighEntry(IPv4Address("10.0.0.21"), MAC1))
        await k.replace_neigh("vx-t", NeighEntry(IPv4Address("10.0.0.22"), MAC2))
        await k.delete_neigh("vx-t", IPv4Address("10.0.0.99"))
        assert await k.fdb_entries("vx-t") == [FdbEntry(MAC1, VTEP), FdbEntry(MAC2, VTEP)]
        assert await k.neigh_entries("vx-t") == [
            NeighEntry(IPv4Address("10.0.0.21"), MAC1), NeighEntry(IPv4Address("10.0.0.22"), MAC2)
        ]
        built = state()
        conf, master, mtu, alias, fdb, neigh = built
        assert conf == {"id": 4100, "local": str(LOCAL), "port": 4789, "learning": False, "proxy": True,
                        "group": None, "remote": None}, conf
        assert master == "ov-t" and mtu == 1450 and alias == "cnm:0123456789abcdef:net1"
        assert fdb == [(MAC1, str(VTEP), "permanent"), (MAC2, str(VTEP), "permanent")], fdb
        assert neigh == [("10.0.0.21", MAC1, ("PERMANENT",)), ("10.0.0.22", MAC2, ("PERMANENT",))], neigh

        # -- the log, replayed by iproute2 in a fresh namespace, builds the same ------------------
        sh("ip", "netns", "add", "replay")
        sh("ip", "-n", "replay", "link", "set", "lo", "up")
        sh("ip", "-n", "replay", "addr", "add", f"{LOCAL}/32", "dev", "lo")
        for line in lines:
            argv = shlex.split(line)
            assert argv[0] in ("ip", "bridge"), line
            # the refused requests were logged too: the kernel refuses them again
            sh(argv[0], "-n", "replay", *argv[1:], check=False)
        assert state("replay") == built, (state("replay"), built, lines)
        print("replayed", len(lines), "lines")

        # -- the device recreated under its name: the cached index is stale -----------------------
        await k.delete_link("vx-t")
        await k.delete_fdb("vx-t", FdbEntry(MAC1, VTEP))  # gone with its device: success
        await k.delete_neigh("vx-t", IPv4Address("10.0.0.21"))
        sh("ip", "link", "add", "vx-t", "master", "ov-t", "type", "vxlan", "id", "4100", "dstport", "4789",
           "local", str(LOCAL), "nolearning", "proxy")
        k._devices["vx-t"] = (idx, "vxlan")  # as cached before (ifindexes are not reused: ENODEV, then a lookup)
        await k.replace_fdb("vx-t", FdbEntry(MAC1, VTEP))
        assert await k.fdb_entries("vx-t") == [FdbEntry(MAC1, VTEP)]
        k.close()
        print("OK")

    asyncio.run(main())
    """
)


@pytest.mark.skipif(not have("ip", "bridge"), reason="needs root and iproute2")
def test_vxlan_primitives_on_the_real_kernel(tmp_path):
    out = check_ok(run_script(tmp_path, SCRIPT, timeout=120))
    assert "replayed" in out
