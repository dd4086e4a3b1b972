"""IPv6 in the kernel, for real, inside a throwaway net+mount+pid namespace: the bridge of a
network with IPv6 (its v6 gateway, IPv6 on), containers on it (IPv6 on, their v6 address
without DAD, link-local from the MAC, v6 default route) that ping each other and the gateway
over IPv6, a v4-only network's container without any IPv6 inside, the v6 default route
moving to another interface, and the host's forwarding switched on only with the first v6
network, after its uplinks were made to keep accepting router advertisements.

The script drives ``BridgeDriver`` over ``LinuxKernel`` (the firewall is the in-memory one:
its rules are not what is tested here) and checks the kernel with ``ip -j`` and ``sysctl``.
"""

from __future__ import annotations

import textwrap

import pytest
from throwaway import check_ok, have, run_script

pytestmark = pytest.mark.root

SCRIPT = textwrap.dedent(
    r"""
    import asyncio, json, logging, subprocess
    from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network

    from cnm.drivers.bridge import BridgeDriver
    from cnm.errors import KernelError
    from cnm.firewall.fake import FakeFirewall
    from cnm.kernel.netlink import LinuxKernel
    from cnm.model.endpoint import EndpointRecord, SandboxRecord
    from cnm.model.network import NetworkRecord

    ROOT = "/run/cnm-test/netns"


    def sh(*argv, netns=None, check=True):
        if netns:
            argv = ("nsenter", f"--net={netns}", *argv)
        proc = subprocess.run(argv, capture_output=True, text=True)
        if check and proc.returncode:
            raise AssertionError(f"{argv} failed: {proc.stdout} {proc.stderr}")
        return proc

    def ipj(*argv, netns=None):
        return json.loads(sh("ip", "-j", *argv, netns=netns).stdout or "[]")

    def sysctl(key, netns=None):
        return sh("sysctl", "-n", key, netns=netns).stdout.strip()

    def addrs(ifname, family, netns=None):
        (link,) = ipj("addr", "show", "dev", ifname, netns=netns)
        return [(a["local"], a["prefixlen"], a.get("scope")) for a in link["addr_info"] if a["family"] == family]

    def network(i, v6):
        return NetworkRecord(
            id=f"{i:02d}" * 32, name=f"n{i}", driver="bridge", created="2026-12-02T00:00:00Z",
            enable_ipv6=v6, subnet=IPv4Network(f"10.9{i}.0.0/24"), gateway=IPv4Address(f"10.9{i}.0.1"),
            subnet6=IPv6Network(f"fd00:{i}::/64") if v6 else None,
            gateway6=IPv6Address(f"fd00:{i}::1") if v6 else None,
        )

    def endpoint(net, n, sandbox, ifname="eth0", default_route=True):
        v6 = net.enable_ipv6
        return EndpointRecord(
            id=f"e{net.name}{n}".ljust(64, "0"), network_id=net.id, container_id=f"c{n}", sandbox_id=sandbox.id,
            name=f"c{n}", ifname=ifname, host_ifname=f"veth{net.name}x{n}", mac=f"02:42:0a:9{net.name[1]}:00:{n:02x}",
            address=IPv4Interface(f"10.9{net.name[1]}.0.{n}/24"), gateway=net.gateway,
            address6=IPv6Interface(f"fd00:{net.name[1]}::{n}/64") if v6 else None,
            gateway6=net.gateway6, default_route=default_route,
        )

    class Lines(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    LOG = Lines()
    logging.getLogger("cnm.kernel").addHandler(LOG)
    logging.getLogger("cnm.kernel").setLevel(logging.DEBUG)

    async def main():
        k = LinuxKernel("0123456789abcdef")
        firewall = FakeFirewall()
        await firewall.setup()
        driver = BridgeDriver(k, firewall)
        # the host: forwarding off; an uplink learning routes from RAs, another that does not
        sh("sysctl", "-w", "net.ipv6.conf.all.forwarding=0")
        sh("ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1")  # no dummy module here
        sh("sysctl", "-w", "net.ipv6.conf.up0.accept_ra=1")
        sh("sysctl", "-w", "net.ipv6.conf.up1.accept_ra=0")
        # and IPv6 off for new interfaces, as some hosts have it: a v6 bridge turns it on for itself
        sh("sysctl", "-w", "net.ipv6.conf.default.disable_ipv6=1")

        # -- a v4-only network: no forwarding, no IPv6 in its container ------------------------
        v4net = network(1, False)
        await driver.create_network(v4net)
        assert sysctl("net.ipv6.conf.all.forwarding") == "0"
        assert sysctl("net.ipv6.conf.up0.accept_ra") == "1"
        s0 = SandboxRecord(id="s0", container_id="c0", key=f"{ROOT}/s0")
        await k.create_netns(s0.key)
        await driver.join(v4net, endpoint(v4net, 2, s0), s0)
        assert sysctl("net.ipv6.conf.eth0.disable_ipv6", s0.key) == "1"
        assert addrs("eth0", "inet6", s0.key) == []
        assert ipj("-6", "route", "show", "default", netns=s0.key) == []

        # -- a v6 network: forwarding on, after accept_ra=2 on the uplink that had 1 -----------
        v6net = network(2, True)
        await driver.create_network(v6net)
        br = v6net.bridge_name
        assert sysctl("net.ipv6.conf.all.forwarding") == "1"
        assert sysctl("net.ipv6.conf.default.forwarding") == "1"
        assert sysctl("net.ipv6.conf.up0.accept_ra") == "2"
        assert sysctl("net.ipv6.conf.up1.accept_ra") == "0"
        assert sysctl(f"net.ipv6.conf.{br}.accept_ra") == "0"
        assert sysctl(f"net.ipv6.conf.{br}.disable_ipv6") == "0"
        assert ("fd00:2::1", 64, "global") in addrs(br, "inet6"), addrs(br, "inet6")
        await driver.create_network(v6net)  # a restart's restore: nothing doubles
        assert [a for a in addrs(br, "inet6") if a[2] == "global"] == [("fd00:2::1", 64, "global")]

        s1 = SandboxRecord(id="s1", container_id="c1", key=f"{ROOT}/s1")
        s2 = SandboxRecord(id="s2", container_id="c2", key=f"{ROOT}/s2")
        for s in (s1, s2):
            await k.create_netns(s.key)
        await driver.join(v6net, endpoint(v6net, 3, s1), s1)
        await driver.join(v6net, endpoint(v6net, 4, s2), s2)
        for n, s in ((3, s1), (4, s2)):
            assert sysctl("net.ipv6.conf.eth0.disable_ipv6", s.key) == "0"
            assert sysctl("net.ipv6.conf.default.disable_ipv6", s.key) == "1"  # back off for others
            found = addrs("eth0", "inet6", s.key)
            # link-local: the kernel's EUI-64 of the MAC 02:42:0a:92:00:0n
            assert ("fd00:2::%d" % n, 64, "global") in found, found
            assert (f"fe80::42:aff:fe92:{n}", 64, "link") in found, found
            (v6addr,) = [a for a in ipj("addr", "show", "dev", "eth0", netns=s.key)[0]["addr_info"]
                         if a.get("local") == f"fd00:2::{n}"]
            assert not v6addr.get("tentative"), v6addr  # nodad: usable at once
            routes = ipj("-6", "route", "show", "default", netns=s.key)
            assert [(r["gateway"], r["dev"]) for r in routes] == [("fd00:2::1", "eth0")], routes
            # and IPv4 as ever
            assert ("10.92.0.%d" % n, 24, "global") in addrs("eth0", "inet", s.key)
        sh("busybox", "ping6", "-c1", "-W2", "fd00:2::4", netns=s1.key)
        sh("busybox", "ping6", "-c1", "-W2", "fd00:2::1", netns=s1.key)
        sh("busybox", "ping6", "-c1", "-W2", "fd00:2::3", netns=s2.key)
        sh("busybox", "ping6", "-c1", "-W2", "fd00:2::3")  # host -> container

        # -- after a restart (a new LinuxKernel): a v6 join into a namespace made before ------
        k2 = LinuxKernel("0123456789abcdef")
        d2 = BridgeDriver(k2, firewall)
        await d2.join(v6net, endpoint(v6net, 7, s2, ifname="eth1", default_route=False), s2)
        assert sysctl("net.ipv6.conf.eth1.disable_ipv6", s2.key) == "0"
        assert sysctl("net.ipv6.conf.default.disable_ipv6", s2.key) == "1"
        assert ("fd00:2::7", 64, "global") in addrs("eth1", "inet6", s2.key)
        sh("busybox", "ping6", "-c1", "-W2", "fd00:2::7", netns=s1.key)
        await d2.leave(v6net, endpoint(v6net, 7, s2, ifname="eth1"), s2)
        await k2.links(s2.key)
        k2.close()

        # -- a second network in one sandbox: v4-only eth1 stays without IPv6 ---------------
        await driver.join(v4net, endpoint(v4net, 5, s1, ifname="eth1", default_route=False), s1)
        assert sysctl("net.ipv6.conf.eth1.disable_ipv6", s1.key) == "1"
        assert addrs("eth1", "inet6", s1.key) == []

        # -- the v6 default route moves (the gateway endpoint left) ---------------------------
        await driver.join(v6net, endpoint(v6net, 6, s0, ifname="eth1", default_route=False), s0)
        assert ipj("-6", "route", "show", "default", netns=s0.key) == []
        await k.set_default_route(s0.key, IPv6Address("fd00:2::1"), "eth1")
        routes = ipj("-6", "route", "show", "default", netns=s0.key)
        assert [(r["gateway"], r["dev"]) for r in routes] == [("fd00:2::1", "eth1")], routes
        v4routes = ipj("route", "show", "default", netns=s0.key)
        assert [(r["gateway"], r["dev"]) for r in v4routes] == [("10.91.0.1", "eth0")], v4routes
        sh("busybox", "ping6", "-c1", "-W2", "fd00:2::3", netns=s0.key)

        # -- disconnect: the v6 address and route go with the interface -----------------------
        await driver.leave(v6net, endpoint(v6net, 6, s0, ifname="eth1"), s0)
        await k.links(s0.key)  # waits for the retired pair
        assert ipj("-6", "route", "show", "default", netns=s0.key) == []
        assert [l["ifname"] for l in ipj("link", "show", netns=s0.key)] == ["lo", "eth0"]

        # -- a bridge whose MTU IPv6 cannot take: a clear error -------------------------------
        try:
            await k.ensure_bridge("br-small", owner="x", mtu=1200, address=None,
                                  address6=IPv6Interface("fd00:3::1/64"))
            raise AssertionError("IPv6 on a bridge with MTU 1200 accepted")
        except KernelError as exc:
            assert "1280" in str(exc), exc
        await k.delete_link("br-small")

        # -- every change was logged as the command a person would type -------------------------
        for line in (
            "sysctl -w net.ipv6.conf.up0.accept_ra=2",
            "sysctl -w net.ipv6.conf.all.forwarding=1",
            f"sysctl -w net.ipv6.conf.{br}.disable_ipv6=0",
            f"ip -6 addr add fd00:2::1/64 dev {br} nodad",
            f"nsenter --net={s1.key} sysctl -w net.ipv6.conf.default.disable_ipv6=0",
            f"nsenter --net={s1.key} ip -6 addr add fd00:2::3/64 dev eth0 nodad",
            f"nsenter --net={s1.key} ip -6 route add default via fd00:2::1 dev eth0",
            f"nsenter --net={s0.key} ip -6 route replace default via fd00:2::1 dev eth1",
        ):
            assert line in LOG.lines, (line, LOG.lines)
        def at(line):
            return LOG.lines.index(line)

        assert at("sysctl -w net.ipv6.conf.up0.accept_ra=2") < at("sysctl -w net.ipv6.conf.all.forwarding=1")
        on = f"nsenter --net={s1.key} sysctl -w net.ipv6.conf.default.disable_ipv6=0"
        assert at(on) < at(f"ip link set vethn2x3 alias 'cnm:0123456789abcdef:{'en23'.ljust(64, '0')} (c3 on n2)'")
        assert at(on) < [i for i, l in enumerate(LOG.lines) if l.startswith("ip link add vethn2x3 ")][0]

        # -- teardown ---------------------------------------------------------------------------
        for s in (s0, s1, s2):
            await k.delete_netns(s.key)
        for net in (v4net, v6net):
            await driver.delete_network(net)
        k.close()
        print("OK")

    asyncio.run(main())
    """
)


@pytest.mark.skipif(not have("busybox", "ip", "sysctl"), reason="needs root, unshare, busybox, ip and sysctl")
def test_ipv6_bridge_and_containers_in_throwaway_namespace(tmp_path):
    check_ok(run_script(tmp_path, SCRIPT, name="kernel_ipv6_netns_script.py"))
