"""``cnm tag``, ``cnm load``, ``cnm export`` against the real API app over a fake controller
(no daemon, no root), and the README's recipe for bringing an image from Docker."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import shlex
import sys
from pathlib import Path

import pytest

from cnm.api.app import make_app, serve_unix
from cnm.api.schemas_system import VersionInfo
from cnm.cli.main import COMMANDS

try:
    from test_api_fakes import FakeController
except ImportError:
    from .test_api_fakes import FakeController  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[2]
SRC = str(REPO / "src")


async def run_cnm(sock: str | None, *args: str, stdin: bytes | None = None, stdout: int | None = None):
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": SRC, "CNM_NO_AUTOSTART": "1"}
    host = ["-H", f"unix://{sock}"] if sock else []
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cnm.cli", *host, *args, env=env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=stdout if stdout is not None else asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
    return proc.returncode, out or b"", err.decode()


@pytest.fixture
async def api(tmp_path):
    ctrl = FakeController()
    sock = str(tmp_path / "cnm.sock")
    runner = await serve_unix(
        make_app(ctrl, version_info=VersionInfo("0.1.0"), tmp_dir=str(tmp_path / "up")), sock
    )
    yield ctrl, sock
    await runner.cleanup()


async def test_tag(api):
    ctrl, sock = api
    assert (await run_cnm(sock, "import", "-", "busybox", stdin=b"T"))[0] == 0
    rc, out, err = await run_cnm(sock, "tag", "busybox", "localhost:5000/box:v1")
    assert (rc, out, err) == (0, b"", "")
    rc, _, _ = await run_cnm(sock, "image", "tag", "busybox:latest", "plain")
    assert rc == 0
    assert {"localhost:5000/box:v1", "plain:latest"} <= set(ctrl.find_image("busybox").repo_tags)
    rc, _, err = await run_cnm(sock, "tag", "ghost", "x")
    assert rc == 1 and err == "Error response from daemon: No such image: ghost\n"
    rc, _, err = await run_cnm(sock, "tag", "busybox", "Bad:Name")
    assert rc == 1 and "invalid reference format" in err
    rc, _, err = await run_cnm(sock, "tag", "busybox")
    assert rc == 1 and err.startswith('"cnm image tag" requires exactly 2 arguments.')


async def test_save_refused_with_what_to_do():
    for verb in (["save"], ["image", "save"]):
        rc, _, err = await run_cnm(None, *verb, "-o", "x.tar", "busybox")
        assert rc == 1 and "cnm does not save images" in err and "cnm export -o FILE CONTAINER" in err


async def test_load_from_file_and_stdin(api, tmp_path):
    ctrl, sock = api
    archive = tmp_path / "app.tar"
    archive.write_bytes(b"A" * 300_000)
    rc, out, err = await run_cnm(sock, "load", "-i", str(archive))
    assert rc == 0, err
    assert out.decode().splitlines() == ["Loaded image: app:1", "Loaded image ID: sha256:" + "12" * 32]
    rc, out, _ = await run_cnm(sock, "image", "load", stdin=b"B" * 10)
    assert rc == 0 and out.decode().startswith("Loaded image: app:1\n")
    assert ctrl.loaded == [b"A" * 300_000, b"B" * 10]
    rc, _, err = await run_cnm(sock, "load", "-i", str(tmp_path / "missing.tar"))
    assert rc == 1 and "missing.tar: no such file or directory" in err


async def test_export_to_file_stdout_and_not_a_terminal(api, tmp_path):
    ctrl, sock = api
    await run_cnm(sock, "import", "-", "busybox", stdin=b"T")
    rc, cid, err = await run_cnm(sock, "create", "--name", "web", "busybox")
    assert rc == 0, err
    expected = "".join(f"{cid.decode()[:12]}-{i};" for i in range(3)).encode()
    target = tmp_path / "web.tar"
    assert (await run_cnm(sock, "export", "-o", str(target), "web"))[0] == 0
    assert target.read_bytes() == expected
    rc, out, _ = await run_cnm(sock, "container", "export", "web")
    assert rc == 0 and out == expected
    rc, _, err = await run_cnm(sock, "export", "-o", str(tmp_path / "ghost.tar"), "ghost")
    assert rc == 1 and "No such container: ghost" in err and not (tmp_path / "ghost.tar").exists()
    controller, terminal = pty.openpty()
    try:
        rc, _, err = await run_cnm(sock, "export", "web", stdout=terminal)
    finally:
        os.close(controller)
        os.close(terminal)
    assert rc == 1 and err.startswith("cowardly refusing to save to a terminal")


def readme_recipe() -> list[str]:
    """The command lines of the README's section, from every code block in it (the Docker
    side cannot run in a test; the cnm-only block is also run by the docs test)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Bringing an image from a machine that has Docker", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```")[1::2]
    lines = [line for block in blocks for line in block.splitlines()[1:]]
    return [re.sub(r"\s+#.*$", "", line).strip() for line in lines if line.strip()]


async def test_readme_recipe_commands_exist():
    """Every cnm line of the README's recipe names a verb cnm has, with flags it accepts;
    the docker side uses save and export."""
    lines = readme_recipe()
    assert {shlex.split(line)[1] for line in lines if line.startswith("docker ")} == {"save", "export"}
    commands = [part.strip() for line in lines for part in line.split(" | ")]
    cnm_lines = [shlex.split(c)[1:] for c in commands if c.startswith("cnm ")]
    verbs = set()
    for words in cnm_lines:
        key = " ".join(words[:2]) if " ".join(words[:2]) in COMMANDS else words[0]
        assert key in COMMANDS, words
        verbs.add(key)
        rc, out, err = await run_cnm(None, *key.split(), "--help")
        assert rc == 0, err
        for flag in (w for w in words if w.startswith("-") and w != "-"):  # "-" is stdin
            assert re.search(rf"(^|\s){re.escape(flag)}[,\s]", out.decode(), re.M), (key, flag)
    assert {"load", "image import", "tag", "export"} <= verbs
