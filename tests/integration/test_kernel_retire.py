"""LinuxKernel.retire_link and the background reaper, against the real kernel, inside a
throwaway net+mount+pid namespace: a retired pair is out of service when the call returns,
gone once anything that depends on it (same namespace, netns removal, a dump, a bridge
removal, close) has waited; batches leave the reaper's group empty."""

from __future__ import annotations

import textwrap

import pytest
from throwaway import check_ok, have, run_script

pytestmark = pytest.mark.root

SCRIPT = textwrap.dedent(
    r"""
    import asyncio, json, os, subprocess, time
    from ipaddress import IPv4Address, IPv4Interface

    from cnm.kernel.api import VethSpec
    from cnm.kernel.netlink import LinuxKernel
    from cnm.kernel.reaper import RETIRED_GROUP

    ROOT = "/run/cnm-test/netns"
    BR = "br-test"
    GW = IPv4Interface("10.98.0.1/24")

    def ipj(*argv, netns=None):
        pre = ("nsenter", f"--net={netns}") if netns else ()
        out = subprocess.run((*pre, "ip", "-j", *argv), capture_output=True, text=True, check=True).stdout
        return json.loads(out or "[]")

    def names(netns=None):
        return {l["ifname"] for l in ipj("link", "show", netns=netns)}

    def spec(i, netns, ifname="eth0", hairpin=False):
        return VethSpec(owner=f"ep{i}", host_ifname=f"vethret{i:03d}", bridge=BR, netns_path=netns,
                        ifname=ifname, address=IPv4Interface(f"10.98.0.{i}/24"), gateway=GW.ip, hairpin=hairpin)

    async def main():
        k = LinuxKernel("0123456789abcdef")  # the daemon id in every owner tag
        await k.ensure_bridge(BR, owner="net1", mtu=1500, address=GW)
        a, b = f"{ROOT}/a", f"{ROOT}/b"
        await k.create_netns(a)
        await k.create_netns(b)
        await k.add_veth(spec(2, a))
        await k.add_veth(spec(3, b, hairpin=True))
        (port,) = ipj("-d", "link", "show", "vethret003")
        assert port["linkinfo"]["info_slave_data"]["hairpin"] is True, port
        assert port["ifalias"] == "cnm:0123456789abcdef:ep3" and "UP" in port["flags"], port
        (plain,) = ipj("-d", "link", "show", "vethret002")
        assert plain["linkinfo"]["info_slave_data"]["hairpin"] is False, plain
        subprocess.run(["nsenter", f"--net={a}", "busybox", "ping", "-c1", "-W2", "10.98.0.3"], check=True,
                       stdout=subprocess.DEVNULL)

        # -- retired: out of service at once -------------------------------------------------
        await k.retire_link("vethret003", b, "eth0")
        await k.retire_link("vethret003", b, "eth0")  # idempotent
        gone_or_down = [l for l in ipj("link", "show", netns=b) if l["ifname"] == "eth0"]
        assert not gone_or_down or "UP" not in gone_or_down[0]["flags"], gone_or_down
        assert not [r for r in ipj("route", "show", "default", netns=b)], "default route survived"
        ping = subprocess.run(["nsenter", f"--net={a}", "busybox", "ping", "-c1", "-W1", "10.98.0.3"],
                              capture_output=True)
        assert ping.returncode != 0, "retired endpoint still answers"

        # -- a new pair with the same name in the same namespace waits for the old one ------
        await k.add_veth(spec(4, b))
        (eth0,) = [l for l in ipj("addr", "show", netns=b) if l["ifname"] == "eth0"]
        assert eth0["addr_info"][0]["local"] == "10.98.0.4" and "UP" in eth0["flags"], eth0
        assert "vethret003" not in names()

        # -- a batch: everything gone after a dump, the group empty -----------------------------
        paths = [f"{ROOT}/p{i}" for i in range(12)]
        await asyncio.gather(*(k.create_netns(p) for p in paths))
        for i, p in enumerate(paths):
            await k.add_veth(spec(10 + i, p))
        t0 = time.perf_counter()
        for i, p in enumerate(paths):
            await k.retire_link(f"vethret{10 + i:03d}", p, "eth0")
        retire_ms = (time.perf_counter() - t0) * 1e3 / len(paths)
        links = {l.name for l in await k.links()}
        assert not any(n.startswith("vethret01") or n.startswith("vethret02") for n in links), links
        in_group = [l for l in ipj("link", "show", "group", str(RETIRED_GROUP)) if l]  # ip -j prints {} for others
        assert in_group == [], in_group
        for p in paths:
            await k.delete_netns(p)
        print(f"retire_link p50-ish {retire_ms:.2f} ms per pair (12 in a row)")

        # -- the namespace's removal waits; a pair retired without its namespace ------------------
        await k.retire_link("vethret004", b, "eth0")
        await k.delete_netns(b)
        assert "vethret004" not in names()
        await k.retire_link("vethret002")  # host end down, no namespace given
        host_end = [l for l in ipj("link", "show") if l["ifname"] == "vethret002"]
        assert not host_end or "UP" not in host_end[0]["flags"], host_end  # down, or already deleted
        await k.retire_link("vethret-missing", a, "eth9")  # nothing there: not an error

        # -- close finishes pending deletions ----------------------------------------------------
        k.close()
        assert "vethret002" not in names(), names()
        k2 = LinuxKernel("0123456789abcdef")
        await k2.delete_netns(a)
        await k2.delete_link(BR)
        assert names() == {"lo"}, names()
        assert os.listdir(ROOT) == []
        k2.close()
        print("OK")

    asyncio.run(main())
    """
)


@pytest.mark.skipif(not have("busybox"), reason="needs root, unshare and busybox")
def test_retired_links_in_throwaway_namespace(tmp_path):
    check_ok(run_script(tmp_path, SCRIPT, name="retire_script.py", timeout=120))
