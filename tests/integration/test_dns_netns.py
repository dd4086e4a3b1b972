"""The embedded DNS server inside real network namespaces, in a throwaway host.

Under ``unshare --pid --fork --mount-proc --net --mount --propagation private`` the script
below builds a container namespace ``ctr`` and a "world" namespace joined to the host by
a veth, runs a DnsServer serving ``ctr`` at 127.0.0.11:53 (sockets made inside ``ctr``,
nftables NAT there), and queries it from inside ``ctr`` with busybox nslookup and a
dnspython client, over UDP and TCP.  Upstreams: a DNS server in the world namespace and
one on 127.0.0.53 in the host namespace (both dialed from the host, as the host's
resolv.conf servers are), and one on 127.0.0.1 inside ``ctr`` (a ``--dns`` server,
dialed from the container's namespace).  It ends with a small benchmark (printed, no
asserts).  Everything vanishes with the namespaces.
"""

from __future__ import annotations

import textwrap

import pytest
from throwaway import check_ok, have, run_script

pytestmark = pytest.mark.root

CLIENT = textwrap.dedent(
    r"""
    import json, socket, statistics, sys, time
    import dns.message, dns.query, dns.rcode

    def ask(name, rdtype="A", tcp=False):
        q = dns.message.make_query(name, rdtype)
        r = (dns.query.tcp if tcp else dns.query.udp)(q, "127.0.0.11", port=53, timeout=3)
        return {"rcode": dns.rcode.to_text(r.rcode()),
                "answers": sorted(rd.to_text() for rr in r.answer for rd in rr),
                "tc": bool(r.flags & 0x0200)}

    def bench(name, n):
        wire = dns.message.make_query(name, "A").to_wire()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3)
        s.connect(("127.0.0.11", 53))
        for _ in range(50):
            s.send(wire); s.recv(4096)
        times = []
        start = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            s.send(wire); s.recv(4096)
            times.append(time.perf_counter() - t)
        total = time.perf_counter() - start
        times.sort()
        return {"p50_us": times[len(times) // 2] * 1e6, "p99_us": times[int(len(times) * 0.99)] * 1e6,
                "qps": n / total}

    cmd = sys.argv[1]
    if cmd == "ask":
        print(json.dumps(ask(sys.argv[2], sys.argv[3], sys.argv[4] == "tcp")))
    else:
        print(json.dumps(bench(sys.argv[2], int(sys.argv[3]))))
    """
)

SCRIPT = textwrap.dedent(
    r'''
    import asyncio, json, os, socket, subprocess, sys
    from ipaddress import IPv4Address

    import dns.message, dns.rrset

    from cnm.dns.forwarder import Forwarder
    from cnm.dns.records import NameTable, Upstream
    from cnm.dns.server import DnsServer
    from cnm.errors import Conflict, KernelError
    from cnm.kernel.netns import call_in_netns

    CLIENT = sys.argv[1]
    CTR, WORLD = "/run/netns/ctr", "/run/netns/world"


    def sh(*argv, check=True):
        proc = subprocess.run(argv, capture_output=True, text=True)
        if check and proc.returncode:
            raise AssertionError(f"{argv} failed: {proc.stdout}{proc.stderr}")
        return proc.stdout


    async def in_ctr(*argv):
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", "ctr", *argv,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        return proc.returncode, out.decode(), err.decode()


    async def client(*args):
        rc, out, err = await in_ctr(sys.executable, CLIENT, *args)
        assert rc == 0, err
        return json.loads(out)


    class Upstream53(asyncio.DatagramProtocol):
        """A fake DNS server: every A query gets ``address``; TCP too."""
        def __init__(self, address):
            self.address = address
        def connection_made(self, transport):
            self.transport = transport
        def reply(self, data):
            q = dns.message.from_wire(data)
            r = dns.message.make_response(q)
            if q.question[0].rdtype == 1:
                r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", self.address))
            return r.to_wire()
        def datagram_received(self, data, addr):
            self.transport.sendto(self.reply(data), addr)


    async def serve_fake(address, host, netns=None):
        """A fake upstream on host:53, its sockets made inside ``netns`` when given."""
        def make():
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((host, 53))
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind((host, 53)); t.listen()
            return u, t
        u, t = await call_in_netns(netns, make) if netns else make()
        proto = Upstream53(address)
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: proto, sock=u)
        async def tcp(reader, writer):
            size = int.from_bytes(await reader.readexactly(2), "big")
            out = proto.reply(await reader.readexactly(size))
            writer.write(len(out).to_bytes(2, "big") + out); await writer.drain(); writer.close()
        await asyncio.start_server(tcp, sock=t)


    async def main():
        sh("ip", "netns", "add", "ctr"); sh("ip", "-n", "ctr", "link", "set", "lo", "up")
        sh("ip", "netns", "add", "world"); sh("ip", "-n", "world", "link", "set", "lo", "up")
        sh("ip", "link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", "world")
        sh("ip", "addr", "add", "203.0.113.2/24", "dev", "wan0"); sh("ip", "link", "set", "wan0", "up")
        sh("ip", "-n", "world", "addr", "add", "203.0.113.1/24", "dev", "eth0")
        sh("ip", "-n", "world", "link", "set", "eth0", "up")
        sh("ip", "addr", "add", "127.0.0.53/8", "dev", "lo")  # like systemd-resolved's stub

        await serve_fake("198.51.100.1", "203.0.113.1", WORLD)   # "the Internet"
        await serve_fake("198.51.100.53", "127.0.0.53")          # host stub resolver
        await serve_fake("198.51.100.99", "127.0.0.1", CTR)      # --dns 127.0.0.1 in the container

        names = NameTable()
        names.set_endpoint("sb-ctr", "n1", "backend", "web", ("web", "0123456789ab", "web.local"),
                           IPv4Address("10.10.0.2"))
        names.set_endpoint("sb-api", "n1", "backend", "api", ("api", "pool"), IPv4Address("10.10.0.10"))
        names.set_endpoint("sb-api2", "n1", "backend", "api2", ("api2", "pool"), IPv4Address("10.10.0.11"))
        names.set_endpoint("sb-other", "n2", "frontend", "other", ("other",), IPv4Address("10.20.0.2"))
        names.configure("sb-ctr", [Upstream(IPv4Address("203.0.113.1"), 53, True)])
        server = DnsServer(names, Forwarder())

        udp_port, tcp_port = await server.add_sandbox("sb-ctr", CTR)
        assert await server.add_sandbox("sb-ctr", CTR) == (udp_port, tcp_port)  # idempotent
        rules = sh("ip", "netns", "exec", "ctr", "nft", "list", "table", "ip", "cnm-dns")
        assert f"udp dport 53 dnat to 127.0.0.11:{udp_port}" in rules, rules
        assert f"tcp dport 53 dnat to 127.0.0.11:{tcp_port}" in rules, rules
        assert "cnm-dns" not in sh("nft", "list", "tables")  # nothing in the host namespace

        # -- container names, from inside the container, UDP and TCP ---------------------
        rc, out, err = await in_ctr("busybox", "nslookup", "api", "127.0.0.11")
        assert rc == 0 and "10.10.0.10" in out, out + err
        for proto in ("udp", "tcp"):
            assert await client("ask", "api", "A", proto) == {"rcode": "NOERROR", "answers": ["10.10.0.10"], "tc": False}
            assert (await client("ask", "pool.backend", "A", proto))["answers"] == ["10.10.0.10", "10.10.0.11"]
            assert (await client("ask", "10.0.10.10.in-addr.arpa", "PTR", proto))["answers"] == ["api.backend."]
        assert (await client("ask", "api", "AAAA", "udp")) == {"rcode": "NOERROR", "answers": [], "tc": False}

        # -- another network's names are not ours: forwarded (the world knows nothing local)
        assert (await client("ask", "other", "A", "udp"))["answers"] == ["198.51.100.1"]

        # -- forwarding: world from the host ns; the host's 127.0.0.53; --dns in the container
        assert (await client("ask", "example.org", "A", "tcp"))["answers"] == ["198.51.100.1"]
        names.configure("sb-ctr", [Upstream(IPv4Address("127.0.0.53"), 53, True)])
        assert (await client("ask", "example.org", "A", "udp"))["answers"] == ["198.51.100.53"]
        names.configure("sb-ctr", [Upstream(IPv4Address("127.0.0.1"), 53, False)])
        assert (await client("ask", "example.org", "A", "udp"))["answers"] == ["198.51.100.99"]
        assert (await client("ask", "example.org", "A", "tcp"))["answers"] == ["198.51.100.99"]
        # those sockets were opened in the container's namespace once and are kept: many
        # queries, a handful of sockets (at most the pool's size), gone with the sandbox
        ctr_sockets = server._listeners["sb-ctr"].sockets
        many = await client("bench", "example.org", "200")
        assert many["p50_us"] > 0
        assert 0 < server.forwarder.open_sockets(ctr_sockets) <= server.forwarder.pool_size
        # a dead first upstream (nothing on 127.0.0.1:5399 in the host ns)
        names.configure("sb-ctr", [Upstream(IPv4Address("127.0.0.1"), 5399, True),
                                   Upstream(IPv4Address("203.0.113.1"), 53, True)])
        assert (await client("ask", "example.org", "A", "udp"))["answers"] == ["198.51.100.1"]

        # -- a record gone when its container disconnects ----------------------------------
        names.remove_endpoint("sb-api", "n1")
        assert (await client("ask", "api", "A", "udp"))["answers"] == ["198.51.100.1"]  # forwarded now

        # -- benchmark (printed only) ------------------------------------------------------
        names.configure("sb-ctr", [Upstream(IPv4Address("127.0.0.53"), 53, True)])
        local = await client("bench", "web", "3000")
        forwarded = await client("bench", "example.org", "1000")
        print(f"bench container name: p50 {local['p50_us']:.0f} us, p99 {local['p99_us']:.0f} us, "
              f"{local['qps']:.0f} q/s sequential")
        print(f"bench forwarded name: p50 {forwarded['p50_us']:.0f} us, p99 {forwarded['p99_us']:.0f} us, "
              f"{forwarded['qps']:.0f} q/s sequential")

        # -- teardown: rules gone, nothing answers, idempotent ------------------------------
        await server.remove_sandbox("sb-ctr")
        await server.remove_sandbox("sb-ctr")
        assert server.forwarder.open_sockets(ctr_sockets) == 0
        assert "cnm-dns" not in sh("ip", "netns", "exec", "ctr", "nft", "list", "tables")
        rc, out, err = await in_ctr("busybox", "nslookup", "-timeout=1", "web", "127.0.0.11")
        assert rc != 0, out
        # a sandbox whose namespace vanished tears down cleanly
        sh("ip", "netns", "add", "gone")
        await server.add_sandbox("sb-gone", "/run/netns/gone")
        sh("ip", "netns", "delete", "gone")
        await server.remove_sandbox("sb-gone")
        await server.close()

        # -- many sandboxes in one trip (a daemon restart): each served, errors per sandbox,
        # and the next server (same state dir) binds the same ports, leaving the NAT alone
        for ns in ("b1", "b2"):
            sh("ip", "netns", "add", ns); sh("ip", "-n", ns, "link", "set", "lo", "up")
        batch = [("sb-b1", "/run/netns/b1"), ("sb-missing", "/run/netns/missing"), ("sb-b2", "/run/netns/b2")]
        for sid in ("sb-b1", "sb-b2"):
            names.set_endpoint(sid, "n1", "backend", sid, (sid,), None)
        state = os.path.join(os.path.dirname(CLIENT), "dns-state")
        ports = {}
        for run in range(2):
            server = DnsServer(names, Forwarder(), state_dir=state)
            if run:
                server.prepare(batch)  # opened ahead in the background, taken below
            results = await server.add_sandboxes(batch)
            assert isinstance(results["sb-missing"], KernelError), results
            assert "/run/netns/missing does not exist" in str(results["sb-missing"]), results
            for sid, ns in (("sb-b1", "b1"), ("sb-b2", "b2")):
                assert results[sid] == server.serving(sid), results
                assert ports.setdefault(sid, results[sid]) == results[sid], (run, ports, results)
                rules = sh("ip", "netns", "exec", ns, "nft", "list", "table", "ip", "cnm-dns")
                assert f"udp dport 53 dnat to 127.0.0.11:{results[sid][0]}" in rules, rules
                proc = await asyncio.create_subprocess_exec(  # not sh(): the loop must answer
                    "ip", "netns", "exec", ns, "busybox", "nslookup", "api2", "127.0.0.11",
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
                out = (await proc.communicate())[0].decode()
                assert proc.returncode == 0 and "10.10.0.11" in out, out
            again = await server.add_sandboxes([("sb-b1", "/run/netns/b1"), ("sb-b2", "/run/netns/b1")])
            assert again["sb-b1"] == ports["sb-b1"] and isinstance(again["sb-b2"], Conflict), again
            await server.close()
        # what was prepared and not taken is closed: its ports are free for the next one
        server = DnsServer(names, Forwarder(), state_dir=state)
        server.prepare(batch)
        assert (await server.add_sandboxes(batch[:1]))["sb-b1"] == ports["sb-b1"]
        server.discard_prepared()
        await asyncio.sleep(0.1)
        assert server.serving("sb-b2") is None
        assert await server.add_sandbox("sb-b2", "/run/netns/b2") == ports["sb-b2"]
        await server.close()
        print("OK")

    asyncio.run(main())
    '''
)


@pytest.mark.skipif(not have("busybox", "nft", "ip"), reason="needs root, unshare, ip, nft and busybox")
def test_dns_server_in_a_container_namespace(tmp_path):
    client = tmp_path / "dns_client.py"
    client.write_text(CLIENT)
    check_ok(run_script(tmp_path, SCRIPT, str(client), name="dns_script.py"))
