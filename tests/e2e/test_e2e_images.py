"""Images from a machine that has Docker, driven by the docker CLI 28 and cnm against cnmd in
a throwaway host: ``docker tag``, ``docker export`` / ``cnm export`` of a running and of a
stopped container (then ``cnm image import`` of the file runs), ``docker load`` / ``cnm load``
of ``docker save`` archives in both layouts (built here from the busybox root filesystem:
no network), whiteouts, the image config, unsafe archives, and the refusal of
``docker save``."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from harness import TestHost, wait_for

DOCKER = "/usr/local/bin/docker"

pytestmark = pytest.mark.skipif(not os.path.exists(DOCKER), reason=f"{DOCKER} (docker CLI 28) not installed")


def docker(host: TestHost, *args: str, check: bool = True):
    env = {"DOCKER_HOST": host.host_uri, "DOCKER_CONFIG": str(host.tmp / "docker-config")}
    return host.run([DOCKER, *args], check=check, timeout=120, env=env)


def names(path: Path) -> set[str]:
    with tarfile.open(path) as tar:
        return {n.rstrip("/") for n in tar.getnames()}


def member(path: Path, name: str) -> bytes:
    with tarfile.open(path) as tar:
        stream = tar.extractfile(name)
        assert stream is not None, name
        return stream.read()


# -- tag ---------------------------------------------------------------------------------------


def test_docker_tag_and_cnm_tag(cnmhost: TestHost):
    docker(cnmhost, "tag", "busybox", "localhost:5000/team/box:v1")
    cnmhost.cnm("tag", "busybox:latest", "box2")
    out = cnmhost.cnm("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").stdout.splitlines()
    ids = {line.split()[0]: line.split()[1] for line in out}
    assert ids["localhost:5000/team/box:v1"] == ids["busybox:latest"] == ids["box2:latest"]
    missing = docker(cnmhost, "tag", "nope", "x:1", check=False)
    assert (
        missing.returncode == 1
        and missing.stderr.strip() == "Error response from daemon: No such image: nope"
    )
    bad = cnmhost.cnm("tag", "busybox", "Bad:Name", check=False)
    assert bad.returncode == 1 and "invalid reference format" in bad.stderr
    cnmhost.cnm("rmi", "localhost:5000/team/box:v1", "box2")
    assert cnmhost.cnm("images", "-q").stdout.split() == [ids["busybox:latest"]]


# -- export ------------------------------------------------------------------------------------

CHANGES = (
    "echo hi > /marker && rm /etc/shells && rm -rf /usr && mkdir /usr && echo only > /usr/only"
    " && ln /marker /marker2 && touch /ready && exec sleep 1d"
)


def test_export_running_and_stopped_then_import(cnmhost: TestHost):
    cnmhost.cnm("run", "-d", "--name", "exp", "busybox", "sh", "-c", CHANGES)
    try:
        assert wait_for(
            lambda: cnmhost.cnm("exec", "exp", "test", "-e", "/ready", check=False).returncode == 0
        )
        running = cnmhost.tmp / "running.tar"
        docker(cnmhost, "export", "-o", str(running), "exp")
        piped = cnmhost.tmp / "piped.tar"
        cnmhost.sh(f"CNM_NO_AUTOSTART=1 cnm -H {cnmhost.host_uri} export exp > {piped}")
        cnmhost.cnm("stop", "-t", "1", "exp")
        stopped = cnmhost.tmp / "stopped.tar"
        cnmhost.cnm("export", "-o", str(stopped), "exp")
        # the container's view: its own files, what it deleted gone, the opaque /usr alone
        for path in (running, piped, stopped):
            seen = names(path)
            assert {"marker", "marker2", "usr/only", "bin/busybox", "etc/passwd"} <= seen, path
            assert "etc/shells" not in seen and "usr/bin" not in seen, path
            assert member(path, "marker") == b"hi\n" and member(path, "usr/only") == b"only\n"
        assert names(running) == names(stopped) == names(piped)
        with tarfile.open(stopped) as tar:
            link = tar.getmember("marker2") if tar.getmember("marker2").islnk() else tar.getmember("marker")
            assert link.islnk()  # the hard link survives as one
        cnmhost.cnm("image", "import", str(stopped), "exported:1")
        out = cnmhost.cnm(
            "run",
            "--rm",
            "exported:1",
            "sh",
            "-c",
            "cat /marker /usr/only; ls /usr; test -e /etc/shells || echo no-shells",
        )
        assert out.stdout.split() == ["hi", "only", "only", "no-shells"]
    finally:
        cnmhost.cnm("rm", "-f", "exp", check=False)
        cnmhost.cnm("rmi", "exported:1", check=False)
    missing = docker(cnmhost, "export", "-o", str(cnmhost.tmp / "ghost.tar"), "ghost", check=False)
    assert missing.returncode == 1 and "No such container: ghost" in missing.stderr


# -- load --------------------------------------------------------------------------------------

RUN_SH = b'#!/bin/sh\necho "$GREETING $* $(pwd) $(id -u)"\n'


def _tar(entries: list[tuple[str, bytes | None, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, mode in entries:
            info = tarfile.TarInfo(name)
            info.mode = mode
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _config(layers: list[bytes]) -> bytes:
    return json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2025-01-02T03:04:05Z",
        "config": {"Entrypoint": ["/app/run.sh"], "Cmd": ["arg1"], "Env": ["PATH=/bin", "GREETING=hello"],
                   "WorkingDir": "/app", "User": "1000", "ExposedPorts": {"8080/tcp": {}}},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{_sha(b)}" for b in layers]},
    }).encode()  # fmt: skip


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, link: str | None = None) -> None:
    info = tarfile.TarInfo(name)
    if link is not None:
        info.type, info.linkname = tarfile.SYMTYPE, link
        tar.addfile(info)
    elif data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def save_archive(path: Path, layers: list[bytes], tag: str, oci: bool) -> Path:
    """What ``docker save`` writes: before Docker 25 (``<id>/layer.tar``) or since (blobs,
    ``index.json``, legacy names as symlinks), with ``manifest.json`` last in both."""
    cfg = _config(layers)
    with tarfile.open(path, "w") as tar:
        if oci:
            for data in [*layers, cfg]:
                _add(tar, f"blobs/sha256/{_sha(data)}", data)
            for data in layers:
                _add(tar, f"{_sha(data)}/layer.tar", link=f"../blobs/sha256/{_sha(data)}")
            _add(tar, "index.json", json.dumps({"schemaVersion": 2, "manifests": []}).encode())
            _add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            entry = {
                "Config": f"blobs/sha256/{_sha(cfg)}",
                "Layers": [f"blobs/sha256/{_sha(b)}" for b in layers],
            }
        else:
            for i, data in enumerate(layers):
                _add(tar, f"{i:064x}/layer.tar", data)
            _add(tar, f"{_sha(cfg)}.json", cfg)
            entry = {
                "Config": f"{_sha(cfg)}.json",
                "Layers": [f"{i:064x}/layer.tar" for i in range(len(layers))],
            }
        _add(tar, "manifest.json", json.dumps([{**entry, "RepoTags": [tag]}]).encode())
    return path


TOP = _tar([
    ("etc/.wh.shells", b"", 0o644),  # deletes a file of the busybox layer
    ("usr/.wh..wh..opq", b"", 0o644),  # hides the busybox layer's /usr
    ("usr/lib", None, 0o755),
    ("usr/lib/x", b"x", 0o644),
    ("app", None, 0o755),
    ("app/run.sh", RUN_SH, 0o755),
])  # fmt: skip


def test_docker_load_and_cnm_load(cnmhost: TestHost, busybox_tar: Path):
    layers = [busybox_tar.read_bytes(), TOP]
    legacy = save_archive(cnmhost.tmp / "legacy.tar", layers, "app:1", oci=False)
    oci = save_archive(cnmhost.tmp / "oci.tar", layers, "app:oci", oci=True)
    out = docker(cnmhost, "load", "-i", str(legacy)).stdout
    assert out.strip() == "Loaded image: app:1"
    assert cnmhost.cnm("load", "-i", str(oci)).stdout == "Loaded image: app:oci\n"
    try:
        [info] = json.loads(docker(cnmhost, "image", "inspect", "app:1").stdout)
        assert info["Id"] == f"sha256:{_sha(_config(layers))}"  # as Docker: the config's digest
        assert sorted(info["RepoTags"]) == ["app:1", "app:oci"]  # one image, both archives' tags
        assert info["Config"]["Entrypoint"] == ["/app/run.sh"] and info["Config"]["Cmd"] == ["arg1"]
        assert info["Config"]["ExposedPorts"] == {"8080/tcp": {}} and info["Config"]["User"] == "1000"
        # the config runs: entrypoint + cmd, env, working dir, user; then the container's own cmd
        assert cnmhost.cnm("run", "--rm", "app:oci").stdout == "hello arg1 /app 1000\n"
        assert cnmhost.cnm("run", "--rm", "app:1", "other").stdout == "hello other /app 1000\n"
        # the whiteouts: /etc/shells gone, /usr holds only the top layer's lib
        out = cnmhost.cnm("run", "--rm", "--entrypoint", "/bin/sh", "app:1", "-c",
                          "ls /usr; test -e /etc/shells || echo no-shells").stdout  # fmt: skip
        assert out.split() == ["lib", "no-shells"]
        docker(cnmhost, "tag", "app:1", "app:tagged")
        assert "app:tagged" in cnmhost.cnm("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
        saved = docker(cnmhost, "save", "-o", str(cnmhost.tmp / "saved.tar"), "app:1", check=False)
        assert saved.returncode == 1 and "cnm does not save images" in saved.stderr
        assert "cnm export -o FILE CONTAINER" in saved.stderr
    finally:
        cnmhost.cnm("rmi", "-f", "app:1", check=False)


def test_unsafe_archive_refused(cnmhost: TestHost, busybox_tar: Path):
    before = cnmhost.cnm("images", "-q", "--no-trunc").stdout
    escape = _tar([("../../../../../../../../tmp/escaped", b"x", 0o644)])
    path = save_archive(cnmhost.tmp / "bad.tar", [busybox_tar.read_bytes(), escape], "bad:1", oci=False)
    refused = docker(cnmhost, "load", "-i", str(path), check=False)
    assert refused.returncode == 1 and "escapes the root filesystem" in refused.stderr
    assert not Path("/tmp/escaped").exists()
    junk = cnmhost.tmp / "junk.tar"
    junk.write_bytes(busybox_tar.read_bytes())  # a root filesystem, not a docker save archive
    refused = cnmhost.cnm("load", "-i", str(junk), check=False)
    assert refused.returncode == 1 and "neither manifest.json nor index.json" in refused.stderr
    assert cnmhost.cnm("images", "-q", "--no-trunc").stdout == before
    leftovers = [e for e in os.listdir(cnmhost.data_root / "images") if e.startswith(".import-")]
    assert leftovers == []
