"""End to end: the ``cnm`` program against a small fake Docker API on a unix socket (no root).

The fake speaks raw HTTP/1.1 (so it can answer 101 and hijack, flush a wait's head before
its body, and read chunked uploads) and records every request it gets.
"""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import sys
import threading
from pathlib import Path

import pytest

CID = "c0ffee" + "1" * 58
NID = "abcdef" + "2" * 58
EID = "e" * 64
IMG = "sha256:" + "9" * 64


def frame(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


class FakeDaemon:
    """State and request log shared by the handler threads."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.started = threading.Event()
        self.exit_code = 0
        self.lock = threading.Lock()


class Handler(socketserver.StreamRequestHandler):
    server: Server

    def read_request(self) -> dict | None:
        line = self.rfile.readline()
        if not line:
            return None
        method, target, _ = line.decode().split(" ", 2)
        headers = {}
        while (h := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
            k, _, v = h.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        body = b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        elif headers.get("content-length"):
            body = self.rfile.read(int(headers["content-length"]))
        path, _, qs = target.partition("?")
        from urllib.parse import parse_qsl, unquote

        req = {
            "method": method,
            "path": unquote(path),
            "query": dict(parse_qsl(qs)),
            "headers": headers,
            "body": body,
        }
        with self.server.fake.lock:
            self.server.fake.requests.append(req)
        return req

    def send(
        self, status: int, body: object = None, ctype: str = "application/json", extra: str = ""
    ) -> None:
        data = (
            b"" if body is None else (body if isinstance(body, bytes) else (json.dumps(body) + "\n").encode())
        )
        reason = {
            200: "OK",
            201: "Created",
            204: "No Content",
            404: "Not Found",
            409: "Conflict",
            403: "Forbidden",
            500: "Internal Server Error",
        }.get(status, "X")
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n{extra}\r\n"
        self.wfile.write(head.encode() + (b"" if status in (204, 304) else data))
        self.wfile.flush()

    def error(self, status: int, message: str) -> None:
        self.send(status, {"message": message})

    def upgrade(self, ctype: str) -> None:
        self.wfile.write(
            f"HTTP/1.1 101 UPGRADED\r\nContent-Type: {ctype}\r\nConnection: Upgrade\r\n"
            "Upgrade: tcp\r\n\r\n".encode()
        )
        self.wfile.flush()

    def handle(self) -> None:
        while True:
            req = self.read_request()
            if req is None:
                return
            if not self.route(req):
                return

    def route(self, req: dict) -> bool:  # noqa: C901 - a fake daemon is one big switch
        fake = self.server.fake
        m, p = req["method"], req["path"]
        if p.startswith("/v1."):
            p = "/" + p.split("/", 2)[2]
        if m == "GET" and p == "/_ping":
            self.send(200, b"OK", "text/plain")
        elif m == "GET" and p == "/version":
            self.send(
                200,
                {
                    "Platform": {"Name": "cnm"},
                    "Version": "0.1.0",
                    "ApiVersion": "1.51",
                    "MinAPIVersion": "1.24",
                    "Os": "linux",
                    "Arch": "amd64",
                    "Components": [
                        {
                            "Name": "Engine",
                            "Version": "0.1.0",
                            "Details": {
                                "ApiVersion": "1.51",
                                "MinAPIVersion": "1.24",
                                "Os": "linux",
                                "Arch": "amd64",
                                "GoVersion": "python3.11",
                                "GitCommit": "abc",
                                "BuildTime": "now",
                                "Experimental": "false",
                            },
                        }
                    ],
                },
            )
        elif m == "GET" and p == "/networks":
            self.send(
                200,
                [
                    {"Name": "none", "Id": "3" * 64, "Driver": "null", "Scope": "local", "Labels": {}},
                    {"Name": "bridge", "Id": "1" * 64, "Driver": "bridge", "Scope": "local", "Labels": {}},
                    {"Name": "host", "Id": "2" * 64, "Driver": "host", "Scope": "local", "Labels": {}},
                    {
                        "Name": "backend",
                        "Id": NID,
                        "Driver": "bridge",
                        "Scope": "local",
                        "Labels": {"a": "b"},
                    },
                ],
            )
        elif m == "POST" and p == "/networks/create":
            body = json.loads(req["body"])
            if body["Name"] == "backend":
                self.error(409, "network with name backend already exists")
            else:
                self.send(201, {"Id": NID, "Warning": ""})
        elif m == "GET" and p.startswith("/networks/"):
            name = p.split("/")[2]
            if name in ("backend", NID[:6]):
                self.send(
                    200,
                    {
                        "Name": "backend",
                        "Id": NID,
                        "Driver": "bridge",
                        "IPAM": {"Config": [{"Subnet": "10.10.0.0/24"}]},
                        "Containers": {},
                    },
                )
            else:
                self.error(404, f"network {name} not found")
        elif m == "DELETE" and p.startswith("/networks/"):
            name = p.split("/")[2]
            if name == "bridge":
                self.error(403, "bridge is a pre-defined network and cannot be removed")
            elif name == "backend":
                self.send(204)
            else:
                self.error(404, f"network {name} not found")
        elif m == "POST" and p.startswith("/networks/") and p.endswith(("/connect", "/disconnect")):
            body = json.loads(req["body"])
            if body["Container"] != "web":
                self.error(404, f"No such container: {body['Container']}")
            else:
                self.send(200, b"", "text/plain")
        elif m == "POST" and p == "/containers/create":
            body = json.loads(req["body"])
            if body["Image"] == "nosuch":
                self.error(404, "No such image: nosuch:latest")
            else:
                self.send(201, {"Id": CID, "Warnings": ["something to note"]})
        elif m == "POST" and p.endswith("/wait"):
            # the head at once (docker run waits for it before starting), the body at exit
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            self.wfile.flush()
            if not fake.started.wait(10):
                return False
            data = json.dumps({"StatusCode": fake.exit_code, "Error": None}).encode() + b"\n"
            self.wfile.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data))
            self.wfile.flush()
        elif m == "POST" and p.endswith("/start") and p.startswith("/containers/"):
            name = p.split("/")[2]
            if name == "missing":
                self.error(404, "No such container: missing")
            else:
                fake.started.set()
                self.send(204)
        elif m == "POST" and p.endswith("/attach"):
            self.upgrade("application/vnd.docker.multiplexed-stream")
            fake.started.wait(10)
            self.wfile.write(frame(1, b"hello from run\n") + frame(2, b"warn\n"))
            self.wfile.flush()
            return False
        elif m == "POST" and p.endswith(("/stop", "/kill", "/restart")):
            name = p.split("/")[2]
            self.send(204) if name == "web" else self.error(404, f"No such container: {name}")
        elif m == "DELETE" and p.startswith("/containers/"):
            name = p.split("/")[2]
            self.send(204) if name == "web" else self.error(404, f"No such container: {name}")
        elif m == "GET" and p == "/containers/json":
            self.send(
                200,
                [
                    {
                        "Id": CID,
                        "Names": ["/web"],
                        "Image": "busybox",
                        "ImageID": IMG,
                        "Command": "httpd -f -p 80",
                        "Created": 1,
                        "State": "running",
                        "Status": "Up 5 seconds",
                        "Ports": [
                            {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
                            {"PrivatePort": 443, "Type": "tcp"},
                        ],
                        "Labels": {},
                        "NetworkSettings": {"Networks": {"bridge": {}}},
                    }
                ],
            )
        elif m == "GET" and p.startswith("/containers/") and p.endswith("/json"):
            name = p.split("/")[2]
            if name not in ("web", CID):
                self.error(404, f"No such container: {name}")
            else:
                self.send(
                    200,
                    {
                        "Id": CID,
                        "Name": "/web",
                        "Config": {"MacAddress": "92:d0:c6:0a:29:33", "Tty": False},
                        "NetworkSettings": {
                            "Ports": {
                                "80/tcp": [
                                    {"HostIp": "0.0.0.0", "HostPort": "8080"},
                                    {"HostIp": "::", "HostPort": "8080"},
                                ],
                                "53/udp": None,
                            }
                        },
                    },
                )
        elif m == "GET" and p.endswith("/logs"):
            data = frame(1, b"line one\n") + frame(2, b"line two\n")
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.multiplexed-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            for piece in (data[:5], data[5:]):  # a frame split across chunks
                self.wfile.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        elif m == "POST" and p.endswith("/exec") and p.startswith("/containers/"):
            name = p.split("/")[2]
            if name != "web":
                self.error(409, f"container {name} is not running")
            else:
                self.send(201, {"Id": EID})
        elif m == "POST" and p == f"/exec/{EID}/start":
            if req["headers"].get("upgrade") != "tcp":
                self.send(200, b"", "text/plain")
                return True
            self.upgrade("application/vnd.docker.multiplexed-stream")
            attach_stdin = any(
                json.loads(r["body"]).get("AttachStdin") for r in fake.requests if r["path"].endswith("/exec")
            )
            if attach_stdin:  # echo stdin until the client half-closes
                while chunk := self.connection.recv(65536):
                    self.wfile.write(frame(1, b"got:" + chunk))
                    self.wfile.flush()
            self.wfile.write(frame(1, b"out\n") + frame(2, b"err\n"))
            self.wfile.flush()
            return False
        elif m == "GET" and p == f"/exec/{EID}/json":
            self.send(200, {"ID": EID, "Running": False, "ExitCode": 3})
        elif m == "POST" and p == "/images/create":
            self.send(200, {"status": f"sha256:{len(req['body']):064d}"})
        elif m == "GET" and p == "/images/json":
            self.send(200, [{"Id": IMG, "RepoTags": ["busybox:latest"], "Created": 1, "Size": 4_400_000}])
        else:
            self.error(404, "page not found")
        return True


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    fake: FakeDaemon


@pytest.fixture
def daemon(tmp_path: Path):
    sock = str(tmp_path / "cnm.sock")
    server = Server(sock, Handler)
    server.fake = FakeDaemon()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.fake, sock
    server.shutdown()
    server.server_close()


SRC = str(Path(__file__).resolve().parents[2] / "src")


def cnm(sock: str, *args: str, stdin: bytes = b"", env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": SRC, "CNM_NO_AUTOSTART": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "cnm.cli", "-H", f"unix://{sock}", *args],
        input=stdin,
        capture_output=True,
        env=full_env,
        timeout=30,
    )


def bodies(fake: FakeDaemon, path_end: str) -> list[dict]:
    return [json.loads(r["body"]) for r in fake.requests if r["path"].endswith(path_end) and r["body"]]


def test_version_prints_client_and_server(daemon):
    fake, sock = daemon
    r = cnm(sock, "version")
    assert r.returncode == 0, r.stderr
    assert "Server: cnm" in r.stdout.decode()
    assert " API version:      1.51 (minimum version 1.24)" in r.stdout.decode()


def test_network_ls_sorted_truncated_and_quiet(daemon):
    _, sock = daemon
    out = cnm(sock, "network", "ls").stdout.decode().splitlines()
    assert out[0].split() == ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"]
    assert [line.split()[1] for line in out[1:]] == ["backend", "bridge", "host", "none"]
    assert out[1].startswith("abcdef222222   backend   bridge    local")
    quiet = cnm(sock, "network", "ls", "-q", "--no-trunc").stdout.decode().split()
    assert quiet[0] == NID
    fmt = cnm(sock, "network", "ls", "--format", '{{.Name}}={{.Label "a"}}').stdout.decode()
    assert fmt.splitlines()[0] == "backend=b"


def test_network_create_body_and_conflict(daemon):
    fake, sock = daemon
    r = cnm(
        sock,
        "network",
        "create",
        "--subnet",
        "10.10.0.0/24",
        "--gateway",
        "10.10.0.1",
        "-o",
        "com.docker.network.driver.mtu=1400",
        "--label",
        "x=y",
        "front",
    )
    assert r.returncode == 0 and r.stdout.decode().strip() == NID
    body = bodies(fake, "/networks/create")[0]
    assert body["IPAM"] == {
        "Driver": "default",
        "Config": [{"Subnet": "10.10.0.0/24", "Gateway": "10.10.0.1"}],
        "Options": {},
    }
    assert body["Options"] == {"com.docker.network.driver.mtu": "1400"} and body["Labels"] == {"x": "y"}
    r = cnm(sock, "network", "create", "backend")
    assert r.returncode == 1
    assert r.stderr.decode() == "Error response from daemon: network with name backend already exists\n"
    r = cnm(sock, "network", "create", "--subnet", "10.0.0.0/24", "--gateway", "10.1.0.1", "x")
    assert r.returncode == 1 and r.stderr.decode() == "no matching subnet for gateway 10.1.0.1\n"


def test_network_connect_disconnect(daemon):
    fake, sock = daemon
    assert (
        cnm(sock, "network", "connect", "--ip", "10.10.0.9", "--alias", "w", "backend", "web").returncode == 0
    )
    body = bodies(fake, "/connect")[0]
    assert body["Container"] == "web"
    assert body["EndpointConfig"]["IPAMConfig"] == {"IPv4Address": "10.10.0.9"}
    assert body["EndpointConfig"]["Aliases"] == ["w"]
    assert cnm(sock, "network", "disconnect", "-f", "backend", "web").returncode == 0
    assert bodies(fake, "/disconnect")[0] == {"Container": "web", "Force": True}
    r = cnm(sock, "network", "connect", "backend", "nope")
    assert r.returncode == 1 and r.stderr.decode() == "Error response from daemon: No such container: nope\n"


def test_network_inspect_and_rm(daemon):
    _, sock = daemon
    r = cnm(sock, "network", "inspect", "backend", "ghost")
    assert r.returncode == 1
    assert json.loads(r.stdout)[0]["Name"] == "backend"
    assert r.stdout.decode().startswith('[\n    {\n        "Name": "backend",')
    assert r.stderr.decode() == "Error response from daemon: network ghost not found\n"
    r = cnm(sock, "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}", "backend")
    assert r.stdout.decode() == "10.10.0.0/24\n"
    r = cnm(sock, "network", "rm", "backend", "bridge", "ghost")
    assert r.returncode == 1 and r.stdout.decode() == "backend\n"
    assert "bridge is a pre-defined network and cannot be removed" in r.stderr.decode()
    assert cnm(sock, "network", "rm", "-f", "ghost").returncode == 0


def test_run_detached_waits_before_start(daemon):
    fake, sock = daemon
    r = cnm(
        sock,
        "run",
        "-d",
        "--name",
        "api",
        "--network",
        "backend",
        "--ip",
        "10.10.0.10",
        "-h",
        "api.local",
        "busybox",
        "sleep",
        "1d",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == CID + "\n"
    assert r.stderr.decode() == "WARNING: something to note\n"
    order = [(q["method"], q["path"].rsplit("/", 1)[-1]) for q in fake.requests]
    assert order == [("POST", "create"), ("POST", "wait"), ("POST", "start")]
    wait = next(q for q in fake.requests if q["path"].endswith("/wait"))
    assert wait["query"] == {"condition": "next-exit"}
    create = next(q for q in fake.requests if q["path"].endswith("/create"))
    assert create["query"] == {"name": "api"}
    body = json.loads(create["body"])
    assert body["Cmd"] == ["sleep", "1d"] and body["Hostname"] == "api.local"
    assert body["HostConfig"]["NetworkMode"] == "backend"
    assert body["NetworkingConfig"]["EndpointsConfig"]["backend"]["IPAMConfig"] == {
        "IPv4Address": "10.10.0.10"
    }


def test_run_foreground_streams_and_exits_with_status(daemon):
    fake, sock = daemon
    fake.exit_code = 7
    r = cnm(sock, "run", "--rm", "busybox", "echo", "hi")
    assert r.returncode == 7, r.stderr
    assert r.stdout.decode() == "hello from run\n"
    assert r.stderr.decode() == "WARNING: something to note\nwarn\n"
    order = [q["path"].rsplit("/", 1)[-1] for q in fake.requests]
    assert order == ["create", "attach", "wait", "start"]
    attach = next(q for q in fake.requests if q["path"].endswith("/attach"))
    assert attach["headers"]["upgrade"] == "tcp" and "stdin" not in attach["query"]
    assert next(q for q in fake.requests if q["path"].endswith("/wait"))["query"] == {"condition": "removed"}


def test_run_errors_exit_125(daemon):
    _, sock = daemon
    r = cnm(sock, "run", "nosuch")
    assert r.returncode == 125
    assert r.stderr.decode() == (
        "Unable to find image 'nosuch:latest' locally\n"
        "cnm: Error response from daemon: No such image: nosuch:latest\n\n"
        "Run 'cnm run --help' for more information\n"
    )


def test_exec_hijacked_with_stdin_and_exit_code(daemon):
    fake, sock = daemon
    r = cnm(sock, "exec", "-i", "web", "cat", stdin=b"ping")
    assert r.returncode == 3, r.stderr
    assert r.stdout.decode() == "got:pingout\n"
    assert r.stderr.decode() == "err\n"
    body = bodies(fake, "/exec")[0]
    assert body["Cmd"] == ["cat"] and body["AttachStdin"] is True and body["Tty"] is False
    start = next(q for q in fake.requests if q["path"].endswith("/start"))
    assert json.loads(start["body"]) == {"Detach": False, "Tty": False}
    r = cnm(sock, "exec", "stopped", "true")
    assert (
        r.returncode == 1
        and r.stderr.decode() == "Error response from daemon: container stopped is not running\n"
    )


def test_ps_inspect_port_logs(daemon):
    _, sock = daemon
    lines = cnm(sock, "ps").stdout.decode().splitlines()
    assert lines[0].startswith("CONTAINER ID   IMAGE     COMMAND            CREATED")
    assert lines[1].startswith('c0ffee111111   busybox   "httpd -f -p 80"   ')
    assert lines[1].endswith("Up 5 seconds   443/tcp, 0.0.0.0:8080->80/tcp   web")
    r = cnm(sock, "inspect", "-f", "{{ .Config.MacAddress }}", "web")
    assert r.stdout.decode() == "92:d0:c6:0a:29:33\n"
    r = cnm(sock, "inspect", "nothing")
    assert r.returncode == 1 and r.stdout.decode() == "[]\n"
    assert r.stderr.decode() == "Error: No such object: nothing\n"
    assert cnm(sock, "port", "web").stdout.decode() == "80/tcp -> 0.0.0.0:8080\n80/tcp -> [::]:8080\n"
    assert cnm(sock, "port", "web", "80").stdout.decode() == "0.0.0.0:8080\n[::]:8080\n"
    r = cnm(sock, "port", "web", "53/udp")
    assert r.returncode == 1 and r.stderr.decode() == "Error: No public port '53/udp' published for web\n"
    r = cnm(sock, "logs", "web")
    assert r.stdout.decode() == "line one\n" and r.stderr.decode() == "line two\n"


def test_rm_force_ignores_missing_and_stop_reports(daemon):
    _, sock = daemon
    r = cnm(sock, "rm", "-f", "web", "ghost")
    assert r.returncode == 0 and r.stdout.decode() == "web\n"
    assert r.stderr.decode() == "Error response from daemon: No such container: ghost\n"
    r = cnm(sock, "stop", "ghost")
    assert r.returncode == 1


def test_image_import_streams_body_and_images(daemon, tmp_path):
    fake, sock = daemon
    tar = tmp_path / "rootfs.tar"
    tar.write_bytes(b"x" * 200_000)
    r = cnm(sock, "image", "import", str(tar), "busybox:1.36")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == f"sha256:{200_000:064d}\n"
    req = next(q for q in fake.requests if q["path"] == "/images/create")
    assert req["query"] == {"fromSrc": "-", "repo": "busybox", "tag": "1.36"}
    r = cnm(sock, "import", "-", "x", stdin=b"abc")
    assert r.stdout.decode() == f"sha256:{3:064d}\n"
    lines = cnm(sock, "images").stdout.decode().splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert lines[1].split()[:3] == ["busybox", "latest", "999999999999"] and lines[1].endswith("4.4MB")


def test_no_daemon_message(tmp_path):
    r = cnm(str(tmp_path / "none.sock"), "network", "ls")
    assert r.returncode == 1
    assert r.stderr.decode() == (
        f"Cannot connect to the cnm daemon at unix://{tmp_path}/none.sock. Is the cnm daemon running?\n"
    )


def test_no_autostart_for_a_named_socket(tmp_path):
    """A socket the user named (-H here) that nobody serves is an error, even with
    auto-start allowed: the stand-in cnmd is never run."""
    sock = tmp_path / "run" / "cnm.sock"
    marker = tmp_path / "cnmd-ran"
    fake_cnmd = tmp_path / "cnmd"
    fake_cnmd.write_text(f"#!/bin/sh\ntouch {marker}\n")
    fake_cnmd.chmod(0o755)
    env = {"CNM_NO_AUTOSTART": "", "CNM_CNMD": str(fake_cnmd)}
    r = cnm(str(sock), "network", "ls", "-q", env=env)
    assert r.returncode == 1
    assert (
        r.stderr.decode()
        == f"Cannot connect to the cnm daemon at unix://{sock}. Is the cnm daemon running?\n"
    )
    assert not marker.exists() and not sock.parent.exists()
