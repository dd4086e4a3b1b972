"""Self-test of the throwaway test host (tests/harness.py): what it builds, and that its
teardown leaves nothing on the real host: links, netns, nft tables, mounts, processes,
cgroups, files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import HOST_ADDR, WORLD_ADDR, HostSnapshot, TestHost, cgroup_dirs, pids_in_pidns

pytestmark = pytest.mark.root

FAKE_DAEMON = r"""
import http.server, os, socketserver, sys
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"OK" if self.path == "/_ping" else b'{"message":"page not found"}'
        self.send_response(200 if self.path == "/_ping" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def address_string(self):
        return "unix"
    def log_message(self, *args):
        pass
path = sys.argv[1]
if os.path.exists(path):
    os.unlink(path)
socketserver.UnixStreamServer(path, Handler).serve_forever()
"""


def test_host_is_built_as_designed(testhost: TestHost) -> None:
    addrs = {
        (a["ifname"], f"{i['local']}/{i['prefixlen']}")
        for a in testhost.ip_json("addr", "show")
        for i in a["addr_info"]
        if i["family"] == "inet"
    }
    assert ("wan0", f"{HOST_ADDR}/24") in addrs
    assert ("lo", "127.0.0.1/8") in addrs
    routes = testhost.ip_json("route", "show")
    assert {"dst": "default", "gateway": WORLD_ADDR, "dev": "wan0"}.items() <= routes[0].items()
    world = testhost.ip_json("addr", "show", "eth0", netns="world")
    assert world[0]["addr_info"][0]["local"] == WORLD_ADDR
    assert testhost.world(["busybox", "ping", "-c", "1", "-W", "2", HOST_ADDR]).returncode == 0
    # pid 1 is our init; /run is a private tmpfs; the default data root is hidden
    assert "hostinit.py" in testhost.run(["cat", "/proc/1/cmdline"]).stdout
    mounts = testhost.run(["cat", "/proc/self/mountinfo"]).stdout
    assert any(line.split()[4] == "/run" and " tmpfs " in line for line in mounts.splitlines())
    assert any(line.split()[4] in ("/var/lib/cnm", "/var/lib") for line in mounts.splitlines())
    # the real host does not see the test host's /run
    assert not os.path.exists("/run/netns/world") or "world" not in os.listdir("/run/netns")


def test_init_reaps_orphans(testhost: TestHost) -> None:
    testhost.sh("sleep 0.2 & exit 0")
    time.sleep(1.0)
    states = testhost.run(["ps", "-eo", "stat=,comm="]).stdout.split("\n")
    assert not [s for s in states if s.strip().startswith("Z")], states


def test_teardown_leaves_nothing(busybox_tar: Path) -> None:
    before = HostSnapshot.take()
    host = TestHost()
    host.start()
    try:
        host.run(["ip", "link", "add", "leak0", "type", "veth", "peer", "name", "leak1"])
        host.run(["ip", "link", "add", "br-leak", "type", "bridge"])
        host.run(["ip", "netns", "add", "leakns"])
        host.run(["nft", "add table ip leaktable"])
        (host.exec_root / "mnt").mkdir()
        host.run(["mount", "-t", "tmpfs", "tmpfs", str(host.exec_root / "mnt")])
        host.sh("setsid sleep 1000 >/dev/null 2>&1 < /dev/null &")
        start_runc_container(host, busybox_tar)
        assert cgroup_dirs(host.cgroup_parent), "runc made no cgroup under the test's parent"
        pidns = os.stat(f"/proc/{host.init_pid}/ns/pid").st_ino
        assert len(pids_in_pidns(pidns)) >= 3
        # nothing of the above is visible on the real host while it runs
        assert HostSnapshot.take().new_since(before) == {}
    finally:
        host.close()
    assert pids_in_pidns(pidns) == []
    assert cgroup_dirs(host.cgroup_parent) == []
    assert not host.tmp.exists()
    assert HostSnapshot.take().new_since(before) == {}


def start_runc_container(host: TestHost, busybox_tar: Path) -> None:
    """A runc container in its own netns and a cgroup under the host's parent, the way cnmd
    starts them (proves the test host can run what the product needs)."""
    bundle = host.tmp / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    subprocess.run(["tar", "-xf", str(busybox_tar), "-C", str(bundle / "rootfs")], check=True)
    host.run(["runc", "spec", "--bundle", str(bundle)])
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = ["sleep", "1000"]
    host.run(["ip", "netns", "add", "c1"])
    for ns in config["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = "/run/netns/c1"
    config["linux"]["cgroupsPath"] = f"/{host.cgroup_parent}/c1"
    (bundle / "config.json").write_text(json.dumps(config))
    root = host.exec_root / "runc"
    host.sh(f"runc --root {root} run -d --bundle {bundle} c1 </dev/null >/dev/null 2>&1")
    listed = json.loads(host.run(["runc", "--root", str(root), "list", "--format", "json"]).stdout)
    assert [c["status"] for c in listed] == ["running"]
    links = host.run(["runc", "--root", str(root), "exec", "c1", "ip", "-o", "link"]).stdout
    assert links.splitlines()[0].split()[1] == "lo:" and len(links.splitlines()) == 1


def test_daemon_lifecycle_with_stand_in(testhost: TestHost) -> None:
    fake = testhost.tmp / "fake_daemon.py"
    fake.write_text(FAKE_DAEMON)
    argv = [sys.executable, str(fake), str(testhost.socket_path)]
    testhost.start_daemon(argv=argv)
    assert testhost.daemon_running()
    resp = testhost.api("GET", "/_ping")
    assert (resp.status, resp.body) == (200, b"OK")
    assert testhost.api("GET", "/nope").message == "page not found"
    # the daemon runs inside the test host's pid namespace, not ours
    pid = testhost.daemon_pid()
    assert os.stat(f"/proc/{pid}/ns/pid").st_ino != os.stat("/proc/self/ns/pid").st_ino
    assert testhost.kill_daemon(signal.SIGKILL) != 0
    assert not testhost.daemon_running() and not testhost.ping()
    testhost.start_daemon(argv=argv)  # restart on the same (stale) socket path
    assert testhost.ping()
    testhost.kill_daemon(signal.SIGTERM)
    assert not testhost.ping()


def test_close_is_idempotent() -> None:
    host = TestHost()
    host.start()
    host.close()
    host.close()
    assert not host.tmp.exists()
