"""WireGuardGo between two hosts: two network namespaces on an underlay bridge, inside one
throwaway host (private net + mount + pid namespaces, tmpfs /run: the UAPI sockets and every
wireguard-go process vanish with it).

It checks, with tools that are not cnm's (``wg show … dump``, ``ip -j``, busybox ping, an
AF_PACKET capture on the underlay bridge):

* the tunnel: keys, port, peers as ``wg`` reads them from the device; ping over it;
* VXLAN whose local/remote are the tunnel addresses carries traffic, and the underlay then
  shows WireGuard's UDP only, never a VXLAN frame (a plain VXLAN device beside it proves
  the capture sees port 4789 when it is there);
* a key rotation during a ping: the staged key completes the handshake, the peer moves its
  address to it (seen from the handshake, before any record could say so), and the ping goes
  on -- the replies lost in between are printed, not asserted (timings belong in bench/);
* ownership: a second daemon cannot take a device's name; a restarted daemon adopts its
  device (same process, same key); ``reap`` stops this daemon's orphan and nothing else;
  ``down`` leaves no process, link or socket, and is idempotent;
* the log: every change as a ``wg``/``ip`` command, never a private key.
"""

from __future__ import annotations

import textwrap

import pytest
from throwaway import check_ok, have, run_script

pytestmark = pytest.mark.root

SCRIPT = textwrap.dedent(
    r"""
    import asyncio, json, logging, os, re, socket, struct, subprocess, threading, time
    from ipaddress import IPv4Address, IPv4Interface, IPv4Network

    from cnm.errors import Conflict, NotFound
    from cnm.kernel import wireguard as wg
    from cnm.kernel.api import WgPeer, WgSpec
    from cnm.kernel.wireguard_go import WireGuardGo

    LOG = []
    class Keep(logging.Handler):
        def emit(self, record):
            LOG.append(record.getMessage())
    logging.getLogger("cnm.kernel").addHandler(Keep())
    logging.getLogger("cnm.kernel").setLevel(logging.DEBUG)

    D1, D2 = "d1d1d1d1d1d1d1d1", "d2d2d2d2d2d2d2d2"
    PORT = 51820
    H = {i: f"/run/netns/h{i}" for i in (1, 2)}
    UNDER = {i: IPv4Address(f"198.51.100.{i}") for i in (1, 2)}
    TUN = {i: IPv4Interface(f"10.99.0.{i}/24") for i in (1, 2)}
    INNER = {i: IPv4Interface(f"10.200.0.{i}/24") for i in (1, 2)}
    PLAIN = {i: IPv4Interface(f"10.201.0.{i}/24") for i in (1, 2)}

    def sh(*argv, netns=None, check=True):
        if netns:
            argv = ("nsenter", f"--net={netns}", *argv)
        proc = subprocess.run(argv, capture_output=True, text=True)
        if check and proc.returncode:
            raise AssertionError(f"{argv} failed: {proc.stdout} {proc.stderr}")
        return proc

    def ping(i, address, count=3):
        return sh("busybox", "ping", "-c", str(count), "-W", "2", str(address), netns=H[i], check=False)

    def wg_dump(i):
        # wg's own decoding of the device (hidden private key: wg prints it in dump)
        lines = [l.split("\t") for l in sh("wg", "show", f"wg-h{i}", "dump", netns=H[i]).stdout.splitlines()]
        return lines[0], lines[1:]

    def underlay():
        sh("ip", "link", "add", "ul", "type", "bridge")
        sh("ip", "addr", "add", "198.51.100.254/24", "dev", "ul")
        sh("ip", "link", "set", "ul", "up")
        for i in (1, 2):
            sh("ip", "netns", "add", f"h{i}")
            sh("ip", "link", "add", f"u{i}", "type", "veth", "peer", "name", "eth0", "netns", H[i])
            sh("ip", "link", "set", f"u{i}", "master", "ul", "up")
            sh("ip", "addr", "add", f"{UNDER[i]}/24", "dev", "eth0", netns=H[i])
            sh("ip", "link", "set", "eth0", "up", netns=H[i])
            sh("ip", "link", "set", "lo", "up", netns=H[i])

    def vxlan(i, name, vni, local, remote, address, mtu):
        sh("ip", "link", "add", name, "type", "vxlan", "id", str(vni), "local", str(local), "dstport", "4789",
           "nolearning", netns=H[i])
        sh("ip", "link", "set", name, "mtu", str(mtu), "up", netns=H[i])
        sh("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", name, "dst", str(remote), "self", "permanent",
           netns=H[i])
        sh("ip", "addr", "add", str(address), "dev", name, netns=H[i])

    class Capture:
        # (UDP ports, VXLAN VNI) of the IPv4 frames between the two hosts, on host 1's underlay port (the
        # bridge's own device sees only what is delivered to it, not what it forwards; a port
        # shows its frames to ETH_P_ALL taps only: the bridge takes them before ETH_P_IP's)
        def __init__(self):
            self.ports = []
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
            self.sock.bind(("u1", 0))
            self.sock.settimeout(0.1)
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self.run)
            self.thread.start()

        def run(self):
            while not self.stop.is_set():
                try:
                    frame = self.sock.recv(65535)
                except TimeoutError:
                    continue
                ip = frame[14:]
                if frame[12:14] != b"\x08\x00" or ip[9] != 17:
                    continue
                src, dst = IPv4Address(ip[12:16]), IPv4Address(ip[16:20])
                if {src, dst} == set(UNDER.values()):
                    ihl = (ip[0] & 15) * 4
                    sport, dport = struct.unpack("!HH", ip[ihl:ihl + 4])
                    vni = int.from_bytes(ip[ihl + 12:ihl + 15], "big") if dport == 4789 else None
                    self.ports.append((sport, dport, vni))

        def close(self):
            self.stop.set()
            self.thread.join()
            self.sock.close()
            return self.ports

    async def main():
        underlay()
        w1, w2 = WireGuardGo(D1), WireGuardGo(D2)
        k1, k2 = wg.KeyPair.generate(), wg.KeyPair.generate()
        mtu = wg.tunnel_mtu(1500)
        s1 = await w1.up(WgSpec("wg-h1", "tun1", TUN[1], PORT, mtu, k1.private), H[1])
        s2 = await w2.up(WgSpec("wg-h2", "tun2", TUN[2], PORT, mtu, k2.private), H[2])
        assert (s1.public_key, s1.listen_port, s1.peers) == (k1.public, PORT, ()), s1
        assert s2.public_key == k2.public
        (link,) = json.loads(sh("ip", "-j", "-d", "addr", "show", "dev", "wg-h1", netns=H[1]).stdout)
        assert link["ifalias"] == f"cnm:{D1}:tun1" and link["mtu"] == 1440 and "UP" in link["flags"], link
        assert [a["local"] for a in link["addr_info"] if a["family"] == "inet"] == ["10.99.0.1"], link

        # -- peers: configured, idempotent, as wg reads them -------------------------------------
        node = {i: wg.NodeTunnel(k.public, (UNDER[i], PORT), TUN[i].ip) for i, k in ((1, k1), (2, k2))}
        await w1.set_peers("wg-h1", wg.desired_peers([node[2]]), H[1])
        await w2.set_peers("wg-h2", wg.desired_peers([node[1]]), H[2])
        logged = len(LOG)
        await w1.set_peers("wg-h1", wg.desired_peers([node[2]]), H[1])
        assert len(LOG) == logged, LOG[logged:]  # nothing differs: nothing sent, nothing logged
        device, peers = wg_dump(1)
        assert device[:3] == [k1.private, k1.public, str(PORT)], device[1:]
        assert [(p[0], p[2], p[3], p[7]) for p in peers] == [(k2.public, f"{UNDER[2]}:{PORT}", "10.99.0.2/32", "25")]
        assert f"nsenter --net={H[1]} wg set wg-h1 peer {k2.public} endpoint 198.51.100.2:51820 " \
               "persistent-keepalive 25 allowed-ips 10.99.0.2/32" in LOG, LOG

        proc = ping(1, TUN[2].ip)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        status = await w1.status("wg-h1", H[1])
        (peer,) = status.peers
        assert peer.last_handshake > time.time() - 60 and peer.rx_bytes > 0 and peer.tx_bytes > 0, peer

        # -- VXLAN over the tunnel: no VXLAN frame on the underlay ----------------------------------
        vx_mtu = wg.vxlan_mtu_over_tunnel(1500)
        vxlan(1, "vx-enc", 4200, TUN[1].ip, TUN[2].ip, INNER[1], vx_mtu)
        vxlan(2, "vx-enc", 4200, TUN[2].ip, TUN[1].ip, INNER[2], vx_mtu)
        cap = Capture()
        proc = sh("busybox", "ping", "-c", "20", "-i", "0.05", "-s", "1200", "-W", "2", str(INNER[2].ip),
                  netns=H[1], check=False)
        ports = cap.close()
        assert proc.returncode == 0 and " 0% packet loss" in proc.stdout, proc.stdout + proc.stderr
        assert len(ports) >= 40 and all(p[:2] == (PORT, PORT) for p in ports), sorted(set(ports))
        print(f"encrypted VXLAN: {len(ports)} UDP frames on the underlay, all WireGuard's ({PORT})")

        # The control: plain VXLAN beside it is seen on 4789 with its VNI; the encrypted one's
        # VNI never is.
        vxlan(1, "vx-plain", 4201, UNDER[1], UNDER[2], PLAIN[1], 1450)
        vxlan(2, "vx-plain", 4201, UNDER[2], UNDER[1], PLAIN[2], 1450)
        cap = Capture()
        proc = ping(1, PLAIN[2].ip, count=5)
        ping(1, INNER[2].ip, count=5)
        ports = cap.close()
        assert proc.returncode == 0, proc.stdout
        assert any(p[1:] == (4789, 4201) for p in ports), sorted(set(ports))
        assert all(p[2] in (None, 4201) for p in ports), sorted(set(ports))
        assert any(p[:2] == (PORT, PORT) for p in ports), sorted(set(ports))

        # -- a key rotation of host 1 during a ping ------------------------------------------------
        policy = wg.RotationPolicy(interval=60, grace=1)
        state = wg.KeyState(current=k1, since=time.time() - 59)
        pinger = subprocess.Popen(
            ["nsenter", f"--net={H[1]}", "busybox", "ping", "-c", "200", "-i", "0.02", "-W", "1", str(INNER[2].ip)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        await asyncio.sleep(0.5)
        step, state, when = wg.rotation_step(state, policy, time.time())
        assert step is wg.Step.ANNOUNCE, step
        public, following = state.published
        announced = wg.NodeTunnel(public, (UNDER[1], PORT), TUN[1].ip, following)
        await w2.set_peers("wg-h2", wg.desired_peers([announced]), H[2])  # host 2 stages the next key
        staged = {p.peer.public_key: p.peer for p in (await w2.status("wg-h2")).peers}
        assert staged[following] == WgPeer(following, (UNDER[1], PORT)), staged
        await asyncio.sleep(max(0.0, when - time.time()))
        step, state, _ = wg.rotation_step(state, policy, time.time())
        assert step is wg.Step.SWITCH and state.current.public == following
        await w1.set_private_key("wg-h1", state.current.private, H[1])
        switched = time.monotonic()
        # Host 2 sees the handshake on the staged key before any record says so.
        while True:
            seen = {p.peer.public_key: p.last_handshake for p in (await w2.status("wg-h2")).peers}
            if seen.get(following, 0.0) > 0:
                break
            assert time.monotonic() - switched < 10, seen
            await asyncio.sleep(0.02)
        await w2.set_peers("wg-h2", wg.desired_peers([announced], handshakes=seen), H[2])
        restored = time.monotonic() - switched
        logged = len(LOG)  # the record arrives later: nothing left to do
        await w2.set_peers("wg-h2", wg.desired_peers([wg.NodeTunnel(following, (UNDER[1], PORT), TUN[1].ip)]), H[2])
        assert len(LOG) == logged, LOG[logged:]
        out, _ = pinger.communicate(timeout=60)
        seqs = sorted(int(m) for m in re.findall(r"seq=(\d+)", out))
        assert seqs and seqs[-1] >= 190, out[-500:]  # the ping goes on after the rotation
        assert set(range(seqs[-1] - 20, seqs[-1] + 1)) <= set(seqs), out[-500:]
        print(f"rotation: staged key promoted {restored * 1000:.0f} ms after the switch; "
              f"{200 - len(seqs)} of 200 pings (20 ms apart) lost")
        (peer,) = (await w2.status("wg-h2")).peers
        assert peer.peer.public_key == following and peer.peer.allowed_ips == (IPv4Network("10.99.0.1/32"),)
        device, _ = wg_dump(1)
        assert device[1] == following

        # -- ownership: conflicts, adoption, orphans --------------------------------------------------
        try:
            await w2.up(WgSpec("wg-h1", "tun2", TUN[2]), H[2])
            raise AssertionError("daemon 2 took daemon 1's device")
        except Conflict as exc:
            assert "another cnmd" in str(exc), exc
        (before,) = await w1.running()
        restarted = WireGuardGo(D1)  # daemon 1 restarts: its device lives on, adopted
        s1 = await restarted.up(WgSpec("wg-h1", "tun1", TUN[1], PORT, mtu), H[1])
        assert s1.public_key == following and await restarted.running() == [before], s1
        await restarted.up(WgSpec("wg-orphan", "gone", IPv4Interface("10.98.0.1/24"), 51821, mtu), H[1])
        assert sorted(d.ifname for d in await restarted.running()) == ["wg-h1", "wg-orphan"]
        assert await WireGuardGo(D1).reap(keep={"wg-h1"}) == ["wg-orphan"]
        assert [d.ifname for d in await w1.running()] == ["wg-h1"]
        assert [d.ifname for d in await w2.running()] == ["wg-h2"]  # never another daemon's
        assert sh("ip", "link", "show", "wg-orphan", netns=H[1], check=False).returncode != 0
        assert ping(1, TUN[2].ip).returncode == 0

        # -- down: nothing left, idempotent -------------------------------------------------------------
        await w1.down("wg-h1", H[1])
        await w2.down("wg-h2", H[2])
        await w2.down("wg-h2", H[2])
        try:
            await w1.status("wg-h1")
            raise AssertionError("status of a stopped device")
        except NotFound:
            pass
        assert await w1.running() == [] and await w2.running() == []
        assert os.listdir("/run/wireguard") == [], os.listdir("/run/wireguard")
        for i in (1, 2):
            assert sh("ip", "link", "show", f"wg-h{i}", netns=H[i], check=False).returncode != 0
        live = [p for p in os.listdir("/proc") if p.isdigit()
                and open(f"/proc/{p}/comm").read().strip() == "wireguard-go"
                and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
        assert live == [], live

        secrets = {k1.private, k2.private, state.current.private}
        assert not [line for line in LOG if any(s in line for s in secrets)]
        assert any(line.startswith(f"nsenter --net={H[1]} ip addr add 10.99.0.1/24 dev wg-h1") for line in LOG)
        print("\n".join(LOG[:12]))

    asyncio.run(main())
    print("OK")
    """
)


@pytest.mark.skipif(
    not have("wireguard-go", "wg", "busybox", "ip", "nsenter"), reason="needs root and make deps"
)
def test_wireguard_between_two_hosts(tmp_path):
    check_ok(run_script(tmp_path, SCRIPT, timeout=180))
