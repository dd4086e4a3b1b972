"""The real ``docker`` CLI against the API (fake controller, no daemon, no root): the
strictest check of the hijack, the wait flush and the error rendering.  Skipped where the
CLI is not installed."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from cnm.api.app import make_app, serve_unix
from cnm.api.schemas_system import VersionInfo

try:
    from test_api_fakes import FakeController
except ImportError:
    from .test_api_fakes import FakeController  # type: ignore[no-redef]

pytestmark = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")


@pytest.fixture
async def docker(tmp_path):
    sock = str(tmp_path / "cnm.sock")
    runner = await serve_unix(
        make_app(FakeController(), version_info=VersionInfo("0.1.0"), tmp_dir=str(tmp_path / "up")), sock
    )
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "DOCKER_CONFIG": str(tmp_path / "cfg")}
    env.pop("DOCKER_API_VERSION", None)

    async def run(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            "docker",
            *args,
            env=env,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(stdin), 20)
        return proc.returncode, out.decode(), err.decode()

    yield run
    await runner.cleanup()


async def test_docker_cli_networks_run_exec(docker):
    rc, out, _ = await docker("network", "ls")
    assert rc == 0 and out.split("\n")[0].split() == ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"]
    assert (await docker("network", "create", "--subnet", "10.10.0.0/24", "backend"))[0] == 0
    rc, _, err = await docker("network", "create", "backend")
    assert rc == 1 and err.strip() == "Error response from daemon: network with name backend already exists"
    rc, cid, err = await docker(
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "backend",
        "--ip",
        "10.10.0.10",
        "--mac-address",
        "92:d0:c6:0a:29:33",
        "busybox",
        "sleep",
        "1d",
    )
    assert rc == 0, err
    rc, out, _ = await docker("exec", "web", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert rc == 3 and out == "out\n"
    rc, out, _ = await docker("exec", "-i", "web", "cat", stdin=b"piped input\n")
    assert rc == 0 and out == "piped input\n"
    rc, out, _ = await docker(
        "inspect", "-f", "{{.Config.MacAddress}} {{.NetworkSettings.Networks.backend.IPAddress}}", "web"
    )
    assert out.strip() == "92:d0:c6:0a:29:33 10.10.0.10"
    rc, _, err = await docker("inspect", "nothere")
    assert rc == 1 and "No such object: nothere" in err
    assert (await docker("rm", "-f", "web"))[0] == 0


async def test_docker_cli_tag_load_export_save(docker, tmp_path):
    """docker tag / load / export / save: the requests the CLI 28 sends, and its rendering of
    the answers (fake controller: the daemon's side is tested in tests/e2e)."""
    assert (await docker("import", "-", "busybox", stdin=b"TAR"))[0] == 0
    assert (await docker("tag", "busybox", "localhost:5000/team/box:v1"))[0] == 0
    rc, out, _ = await docker("images", "--format", "{{.Repository}}:{{.Tag}}")
    assert rc == 0 and "localhost:5000/team/box:v1" in out.split()
    rc, _, err = await docker("tag", "nope", "x:1")
    assert rc == 1 and err.strip() == "Error response from daemon: No such image: nope"
    archive = tmp_path / "saved.tar"
    archive.write_bytes(b"ARCHIVE")
    rc, out, err = await docker("load", "-i", str(archive))
    assert rc == 0, err
    assert out.splitlines() == ["Loaded image: app:1", "Loaded image ID: sha256:" + "12" * 32]
    rc, cid, _ = await docker("create", "--name", "web", "busybox")
    assert rc == 0
    target = tmp_path / "web.tar"
    rc, _, err = await docker("export", "-o", str(target), "web")
    assert rc == 0, err
    assert target.read_bytes() == "".join(f"{cid[:12]}-{i};" for i in range(3)).encode()
    rc, _, err = await docker("save", "-o", str(tmp_path / "x.tar"), "busybox")
    assert rc == 1 and "cnm does not save images" in err and "cnm export" in err
