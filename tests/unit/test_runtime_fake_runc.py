"""RuncRuntime against a fake ``runc`` (no kernel, no root): how runc's answers and errors
are translated, and that teardown is idempotent."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import textwrap

import pytest

from cnm.errors import InvalidArgument, NotFound, RuntimeFailure
from cnm.model.container import ExecSpec
from cnm.runtime.runc import RuncRuntime, runc_message

CID = "c" * 64

FAKE_RUNC = textwrap.dedent(
    """\
    #!{python}
    # A stand-in for runc: answers from a JSON file of known containers, errors as runc
    # 1.1.5 prints them with --log-format json.
    import json, os, sys
    args = sys.argv[1:]
    opts = {{}}
    while args and args[0].startswith("--"):
        opts[args[0]] = args[1]
        args = args[2:]
    with open(os.path.join(os.path.dirname(sys.argv[0]), "calls"), "a") as fh:
        fh.write(json.dumps(sys.argv[1:]) + "\\n")
    known = json.load(open(os.path.join(os.path.dirname(sys.argv[0]), "known.json")))

    def fail(msg, code=1):
        line = json.dumps({{"level": "error", "msg": msg, "time": "2024-01-01T00:00:00Z"}})
        if "--log" in opts:
            open(opts["--log"], "a").write(line + "\\n")
        print(line, file=sys.stderr)
        sys.exit(code)

    cmd, rest = args[0], args[1:]
    if cmd == "list":
        print(json.dumps([dict(id=k, **v) for k, v in known.items()] or None))
    elif cmd in ("state", "kill", "delete"):
        cid = [a for a in rest if not a.startswith("-")][0]
        if cid not in known:
            fail(f"container does not exist" if cmd != "delete" else f'container "{{cid}}" does not exist')
        if cmd == "state":
            print(json.dumps(dict(id=cid, **known[cid])))
        elif cmd == "kill" and known[cid]["status"] != "running":
            fail("container not running")
        elif cmd == "kill" and known[cid].get("kill_error"):
            fail(known[cid]["kill_error"])
    elif cmd == "exec":
        fail('exec failed: unable to start container process: exec: "nope": executable file not found in $PATH', 255)
    else:
        fail(f"unexpected {{cmd}}")
    """
)


@pytest.fixture
def fake(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    runc = bindir / "runc"
    runc.write_text(FAKE_RUNC.format(python=sys.executable))
    runc.chmod(runc.stat().st_mode | stat.S_IXUSR)
    known = bindir / "known.json"
    known.write_text("{}")

    def set_known(**containers):
        known.write_text(json.dumps(containers))

    def calls():
        path = bindir / "calls"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    runtime = RuncRuntime(
        str(tmp_path / "data"), str(tmp_path / "run"), cgroup_parent="cnm-unit", runc=str(runc)
    )
    return runtime, set_known, calls


def test_layout(fake, tmp_path):
    runtime, _, _ = fake
    path = runtime.container_dir(CID)
    assert path == str(tmp_path / "data" / "containers" / CID)
    assert os.path.isdir(path)
    assert runtime.log_path(CID) == os.path.join(path, f"{CID}-json.log")
    assert os.path.isdir(tmp_path / "run" / "runc")
    with pytest.raises(InvalidArgument):
        runtime.container_dir("../escape")


def test_runc_message():
    out = b'{"level":"warning","msg":"w"}\n{"level":"error","msg":"container does not exist"}\n'
    assert runc_message(out) == "container does not exist"
    assert runc_message(b"plain text failure\n") == "plain text failure"
    assert runc_message(b"") == ""


async def test_state_and_is_running(fake):
    runtime, set_known, calls = fake
    set_known(**{CID: {"status": "running", "pid": 4242}, "d" * 64: {"status": "stopped", "pid": 0}})
    assert await runtime.is_running(CID) == 4242
    assert await runtime.is_running("d" * 64) == 0
    assert await runtime.is_running("e" * 64) == 0
    assert await runtime.state("e" * 64) is None
    assert {c["id"] for c in await runtime.list_containers()} == {CID, "d" * 64}
    assert calls()[0][:5] == ["--root", runtime.state_root, "--log-format", "json", "state"]


async def test_list_empty(fake):
    runtime, _, _ = fake
    assert await runtime.list_containers() == []


async def test_kill_stopped_or_gone_is_fine(fake):
    runtime, set_known, calls = fake
    set_known(**{CID: {"status": "stopped", "pid": 0}})
    await runtime.kill(CID, 15)
    await runtime.kill("e" * 64, 9)
    assert calls()[0][-3:] == ["kill", CID, "15"]


async def test_kill_other_errors_raise(fake):
    runtime, set_known, _ = fake
    set_known(**{CID: {"status": "running", "pid": 1, "kill_error": "permission denied"}})
    with pytest.raises(RuntimeFailure, match="^permission denied$"):
        await runtime.kill(CID, 9)


async def test_cleanup_and_remove_idempotent(fake, tmp_path):
    runtime, _, calls = fake
    data = runtime.container_dir(CID)
    (tmp_path / "run" / "containers" / CID / "bundle" / "rootfs").mkdir(parents=True)
    await runtime.cleanup(CID)
    await runtime.cleanup(CID)
    assert [c[-3:] for c in calls()] == [["delete", "--force", CID]] * 2
    await runtime.remove(CID)
    await runtime.remove(CID)
    assert not os.path.exists(data)
    assert not os.path.exists(tmp_path / "run" / "containers" / CID)


async def test_exec_failure_carries_runc_message(fake):
    runtime, set_known, _ = fake
    set_known(**{CID: {"status": "running", "pid": 1}})
    runtime.container_dir(CID)
    os.makedirs(os.path.join(runtime.exec_root, "containers", CID), exist_ok=True)
    before = set(os.listdir(f"/proc/{os.getpid()}/fd"))
    with pytest.raises(RuntimeFailure, match="executable file not found"):
        await runtime.exec(ExecSpec(container_id=CID, cmd=("nope",), attach_stdin=True))
    assert set(os.listdir(f"/proc/{os.getpid()}/fd")) == before  # no descriptor leaked
    assert os.listdir(os.path.join(runtime.exec_root, "containers", CID)) == []  # log and pid files gone


async def test_exec_needs_a_command(fake):
    runtime, _, _ = fake
    with pytest.raises(InvalidArgument, match="No exec command specified"):
        await runtime.exec(ExecSpec(container_id=CID, cmd=()))


async def test_missing_runc_binary(tmp_path):
    runtime = RuncRuntime(str(tmp_path / "d"), str(tmp_path / "r"), runc=str(tmp_path / "no-runc"))
    with pytest.raises(RuntimeFailure, match="cannot run"):
        await runtime.is_running(CID)


async def test_logs_through_runtime(fake):
    from cnm.runtime.logs import JsonLogWriter, LogOptions

    runtime, _, _ = fake
    runtime.container_dir(CID)
    w = JsonLogWriter(runtime.log_path(CID), LogOptions())
    w.write(1, [b"a\n"], 1)
    w.write(2, [b"e\n"], 2)
    w.write(1, [b"b\n"], 3)
    w.close()
    got = [
        (r.stream, r.data) async for r in runtime.logs(CID, stdout=True, stderr=False, follow=False, tail=1)
    ]
    assert got == [(1, b"b\n")]
    got = [
        (r.stream, r.data) async for r in runtime.logs(CID, stdout=True, stderr=True, follow=False, tail=None)
    ]
    assert got == [(1, b"a\n"), (2, b"e\n"), (1, b"b\n")]
    # follow on a container that is not running: ends after reading
    got = await asyncio.wait_for(
        _collect(runtime.logs(CID, stdout=False, stderr=True, follow=True, tail=None)), 5
    )
    assert [(r.stream, r.data) for r in got] == [(2, b"e\n")]


async def _collect(gen):
    return [x async for x in gen]


async def test_open_stdin_without_fifo(fake):
    runtime, _, _ = fake
    assert await runtime.open_stdin(CID) is None


async def test_start_with_missing_image_rootfs(fake):
    from cnm.model.container import Container, ContainerConfig, Image
    from cnm.runtime.api import ContainerFiles, StartRequest

    runtime, _, calls = fake
    image = Image(id="sha256:" + "0" * 64, repo_tags=(), created="")
    request = StartRequest(
        container=Container(id=CID, name="x", created="", config=ContainerConfig(image="busybox")),
        image=image,
        netns_path=None,
        hostname="x",
        files=ContainerFiles("/h", "/hosts", "/r"),
    )
    with pytest.raises(NotFound, match="No such image"):
        await runtime.start(request)
    assert calls() == []
