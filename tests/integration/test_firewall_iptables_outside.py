"""The iptables backend, on both variants, when cnm's chains change behind its back: removed
by another program (what a second daemon's clean-up of "leftovers" did in issue 7), or
changed between its iptables-save and its iptables-restore.  Each change must still land,
with its DNAT rules, instead of failing with "No chain/target/match by that name" or
"Chain 'CNM-USER' does not exist".  Real iptables inside a throwaway net+mount+pid namespace."""

from __future__ import annotations

import json
import textwrap

import pytest
from throwaway import have, run_script

pytestmark = pytest.mark.root

SCRIPT = r"""
import asyncio, json, subprocess, sys
from ipaddress import IPv4Address, IPv4Network

from cnm.errors import FirewallError
from cnm.firewall.api import BridgeRules, PortRule
from cnm.firewall.iptables import IptablesFirewall

VARIANT = sys.argv[1]
NET = "a" * 64


def sh(*argv):
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def port(i, host_port):
    return PortRule(owner=f"{i:012x}" + "f" * 52, network=NET, bridge="br-x", protocol="tcp", host_ip=None,
                    host_port=host_port, host_port_end=host_port, container_ip=IPv4Address("10.50.0.2"),
                    container_port=80)


def dnat(host_port):
    return f"--dport {host_port} " in sh(f"{VARIANT}-save", "-t", "nat")


async def attempt(what, coro, out):
    try:
        await coro
        out[what] = "ok"
    except FirewallError as exc:
        out[what] = str(exc)


async def main():
    sh("ip", "link", "add", "br-x", "type", "bridge")
    net = BridgeRules(owner=NET, bridge="br-x", subnet=IPv4Network("10.50.0.0/16"))
    out = {}
    fw = IptablesFirewall(iptables=VARIANT)
    await fw.setup()
    await fw.add_network(net)
    await fw.sync([net], [port(1, 8081)])
    # another program removes every cnm chain (a second daemon cleaning up "leftovers")
    await IptablesFirewall(iptables=VARIANT).teardown()
    await attempt("add_ports after removal", fw.add_ports(port(2, 8082).owner, [port(2, 8082)]), out)
    out["dnat 8082"] = dnat(8082)
    out["healthy after"] = await fw.healthy()
    await attempt("remove_ports after removal", fw.remove_ports(port(1, 8081).owner), out)
    # the chains change between the read and the batch of setup and of sync
    for name in ("setup", "sync"):
        victim = IptablesFirewall(iptables=VARIANT)
        read = victim._v4._state  # the IPv4 tables' read (each family reads its own)
        calls = []

        async def racing_read(read=read, calls=calls):
            state = await read()
            if not calls:  # the first read only: then someone removes everything
                calls.append(1)
                await IptablesFirewall(iptables=VARIANT).teardown()
            return state

        victim._v4._state = racing_read
        await IptablesFirewall(iptables=VARIANT).setup()  # CNM-USER exists when read
        job = victim.setup() if name == "setup" else victim.sync([net], [port(3, 8083)])
        await attempt(f"{name} racing a removal", job, out)
        out[f"healthy after {name}"] = await victim.healthy()
    out["dnat 8083"] = dnat(8083)
    print(json.dumps(out))


asyncio.run(main())
"""


@pytest.mark.skipif(
    not have("iptables-nft-restore", "iptables-legacy-restore"),
    reason="needs root, unshare and both iptables variants",
)
@pytest.mark.parametrize("variant", ["iptables-nft", "iptables-legacy"])
def test_changes_land_when_cnms_chains_change_behind_its_back(tmp_path, variant):
    proc = run_script(tmp_path, textwrap.dedent(SCRIPT), variant, name="ipt_outside.py", timeout=120)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {
        "add_ports after removal": "ok",
        "dnat 8082": True,
        "healthy after": True,
        "remove_ports after removal": "ok",
        "setup racing a removal": "ok",
        "healthy after setup": True,
        "sync racing a removal": "ok",
        "healthy after sync": True,
        "dnat 8083": True,
    }
