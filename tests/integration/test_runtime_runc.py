"""RuncRuntime with the real runc, inside a throwaway host.

Each test runs a scenario (this file, run as a script) inside ``unshare --pid --fork
--mount-proc --net --mount --propagation private`` with a tmpfs on /run: the scenario
drives the runtime, records what it saw (including the kernel state that only exists inside
that host: mounts, runc's list) as JSON, and the test asserts on it.  The namespaces, the
overlay mounts and every container process die with the throwaway host; the cgroups runc
created live in the real hierarchy and are removed by the fixture.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid

import pytest

pytestmark = pytest.mark.root

SCENARIO_TIMEOUT = 90  # seconds, enforced inside the scenario (it then reports what it saw)


# -- the pytest side ----------------------------------------------------------------------


def build_busybox_tar(workdir: str) -> str:
    """A busybox root filesystem: the static binary, a symlink per applet, passwd/group."""
    root = os.path.join(workdir, "bb")
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "root"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy2("/usr/bin/busybox", os.path.join(root, "bin/busybox"))
    listing = subprocess.run(["/usr/bin/busybox", "--list-full"], capture_output=True, text=True, check=True)
    for applet in listing.stdout.split():
        path = os.path.join(root, applet)
        if not os.path.lexists(path):
            os.symlink("/bin/busybox", path)
    with open(os.path.join(root, "etc/passwd"), "w") as fh:
        fh.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    with open(os.path.join(root, "etc/group"), "w") as fh:
        fh.write("root:x:0:\ntty:x:5:\nnogroup:x:65534:\n")
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    tar_path = os.path.join(workdir, "busybox.tar.gz")
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(root, arcname=".")
    return tar_path


@pytest.fixture(scope="module")
def busybox_tar(tmp_path_factory):
    if os.geteuid() != 0 or not shutil.which("runc") or not os.path.exists("/usr/bin/busybox"):
        pytest.skip("needs root, runc and /usr/bin/busybox")
    return build_busybox_tar(str(tmp_path_factory.mktemp("busybox")))


@pytest.fixture
def cgroup_parent():
    name = f"cnm-test-{uuid.uuid4().hex[:12]}"
    yield name
    for hierarchy in os.listdir("/sys/fs/cgroup"):
        top = os.path.join("/sys/fs/cgroup", hierarchy, name)
        if not os.path.isdir(top):
            continue
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
            for _ in range(50):  # the throwaway host's processes may take a moment to go
                try:
                    os.rmdir(dirpath)
                    break
                except OSError:
                    time.sleep(0.1)
    leftovers = [h for h in os.listdir("/sys/fs/cgroup") if os.path.exists(f"/sys/fs/cgroup/{h}/{name}")]
    assert leftovers == []


def run_scenario(name: str, tmp_path, busybox_tar: str, cgroup_parent: str) -> dict:
    setup = "mount -t tmpfs tmpfs /run && ip link set lo up && ip link add hv0 type veth peer name hv1 && ip netns add c1"
    argv = [sys.executable, os.path.abspath(__file__), name, str(tmp_path), busybox_tar, cgroup_parent]
    # Not ``exec``: bash stays pid 1 of the throwaway host, reaping orphans like an init.
    script = f"{setup} && {' '.join(argv)}; rc=$?; exit $rc"
    # --kill-child: if unshare dies (pytest's timeout), its pid 1 and so every container go too.
    unshare = [
        "unshare",
        "--kill-child",
        "--pid",
        "--fork",
        "--mount-proc",
        "--net",
        "--mount",
        "--propagation",
        "private",
    ]
    proc = subprocess.run(
        [*unshare, "bash", "-c", script], capture_output=True, text=True, timeout=SCENARIO_TIMEOUT + 30
    )
    assert proc.returncode == 0, f"scenario {name} failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_container_in_netns(tmp_path, busybox_tar, cgroup_parent):
    seen = run_scenario("netns", tmp_path, busybox_tar, cgroup_parent)
    assert seen["image_tags"] == ["busybox:latest"]
    print(f"runc start took {seen['start_seconds'] * 1000:.1f} ms")  # a figure, not an assertion
    assert seen["is_running"] == seen["pid"] > 0
    assert seen["hostname"] == "web\nweb\n"  # hostname(1) and /etc/hostname
    assert "10.0.0.2\tweb" in seen["hosts"]
    assert seen["resolv"] == "nameserver 10.0.0.1\n"
    assert seen["lo_mtu"] == "65536\n"
    assert seen["links"] == ["lo"]  # the container's netns: not the host's veth pair
    assert seen["env_cwd"] == "bar\n/tmp\n"
    assert seen["user"] == "65534\n"
    assert seen["exit7"] == 7
    assert seen["cat"] == ["ping", 0]
    assert "executable file not found" in seen["missing"]
    tty_out, tty_code = seen["tty"]
    assert "/dev/pts/0" in tty_out and "30 100" in tty_out and tty_code == 0
    assert seen["logs"] == [[1, "hello\n"], [2, "oops\n"]] or seen["logs"][:2] == [
        [1, "hello\n"],
        [2, "oops\n"],
    ]
    assert "got:abc\n" in seen["logs_after_stdin"]
    assert seen["tail1"] == [[1, "got:abc\n"]]
    assert seen["exit_code"] == 137
    assert seen["is_running_after"] == 0
    assert seen["mounts_after_cleanup"] == []
    assert seen["runc_list_after_cleanup"] == []
    assert seen["cgroup_after_cleanup"] is False
    assert seen["dirs_after_remove"] == [False, False]


def test_exit_code_follow_and_host_network(tmp_path, busybox_tar, cgroup_parent):
    seen = run_scenario("exit", tmp_path, busybox_tar, cgroup_parent)
    assert seen["followed"] == "a\nb\n"
    assert seen["exit_code"] == 3
    assert seen["host_links"] == ["hv0", "hv1", "lo"]  # --net host: the host's interfaces
    assert seen["host_exit"] == 0
    assert seen["mounts_after_cleanup"] == []
    assert seen["runc_list_after_cleanup"] == []


def test_failed_start_undoes_everything(tmp_path, busybox_tar, cgroup_parent):
    seen = run_scenario("failure", tmp_path, busybox_tar, cgroup_parent)
    assert "executable file not found" in seen["error"]
    assert seen["mounts"] == []
    assert seen["runc_list"] == []
    assert seen["stderr_log"] == ""
    assert seen["retry_exit"] == 0  # the same id starts fine afterwards


def test_restart_finds_running_container(tmp_path, busybox_tar, cgroup_parent):
    seen = run_scenario("restart", tmp_path, busybox_tar, cgroup_parent)
    assert seen["is_running"] == seen["pid"] > 0
    assert seen["logs"] == "before\n"
    assert seen["exit_code"] == 255  # not our child any more: the code is lost
    assert seen["followed_until_exit"] is True
    assert seen["runc_list_after_cleanup"] == []


# -- the scenario side (runs inside the throwaway host) ------------------------------------


def _request(runtime, image, cid: str, cmd: tuple[str, ...], netns: str | None, **config):
    from cnm.model.container import Container, ContainerConfig
    from cnm.runtime.api import ContainerFiles, StartRequest

    directory = runtime.container_dir(cid)
    contents = {
        "hostname": "web\n",
        "hosts": "127.0.0.1\tlocalhost\n10.0.0.2\tweb\n",
        "resolv.conf": "nameserver 10.0.0.1\n",
    }
    for name, text in contents.items():
        with open(os.path.join(directory, name), "w") as fh:
            fh.write(text)
    files = ContainerFiles(*(os.path.join(directory, n) for n in ("hostname", "hosts", "resolv.conf")))
    container = Container(
        id=cid, name="web", created="", config=ContainerConfig(image="busybox", cmd=cmd, **config)
    )
    return StartRequest(container=container, image=image, netns_path=netns, hostname="web", files=files)


async def _run(runtime, cid: str, *cmd: str, **kw) -> tuple[str, int]:
    from cnm.model.container import ExecSpec

    proc = await runtime.exec(ExecSpec(container_id=cid, cmd=cmd, **kw))
    out = await proc.stdout.read()
    return out.decode(), await proc.wait()


def _overlays(exec_root: str) -> list[str]:
    with open("/proc/self/mountinfo") as fh:
        return [line.split()[4] for line in fh if line.split()[4].startswith(exec_root)]


async def _logs(runtime, cid, **kw) -> list[list]:
    return [[r.stream, r.data.decode()] async for r in runtime.logs(cid, **kw)]


async def scenario_netns(runtime, image, seen: dict) -> None:
    from cnm.errors import RuntimeFailure
    from cnm.model.container import ExecSpec
    from cnm.model.values import new_id

    cid = new_id()
    cmd = ("sh", "-c", "echo hello; echo oops >&2; read line; echo got:$line; exec sleep 1000")
    seen["pid"] = await runtime.start(_request(runtime, image, cid, cmd, "/run/netns/c1", open_stdin=True))
    seen["start_seconds"] = runtime.last_start_seconds
    seen["is_running"] = await runtime.is_running(cid)
    seen["hostname"] = (await _run(runtime, cid, "sh", "-c", "hostname; cat /etc/hostname"))[0]
    seen["hosts"] = (await _run(runtime, cid, "cat", "/etc/hosts"))[0]
    seen["resolv"] = (await _run(runtime, cid, "cat", "/etc/resolv.conf"))[0]
    seen["lo_mtu"] = (await _run(runtime, cid, "cat", "/sys/class/net/lo/mtu"))[0]
    links = (await _run(runtime, cid, "ls", "/sys/class/net"))[0]
    seen["links"] = sorted(links.split())
    seen["env_cwd"] = (
        await _run(runtime, cid, "sh", "-c", "echo $FOO; pwd", env=("FOO=bar",), workdir="/tmp")
    )[0]
    seen["user"] = (await _run(runtime, cid, "id", "-u", user="nobody"))[0]
    seen["exit7"] = (await _run(runtime, cid, "sh", "-c", "exit 7"))[1]

    proc = await runtime.exec(ExecSpec(container_id=cid, cmd=("cat",), attach_stdin=True))
    proc.stdin.write(b"ping")
    await proc.stdin.drain()
    proc.stdin.close()
    seen["cat"] = [(await proc.stdout.read()).decode(), await proc.wait()]

    try:
        await runtime.exec(ExecSpec(container_id=cid, cmd=("nope",)))
        seen["missing"] = "no error"
    except RuntimeFailure as exc:
        seen["missing"] = str(exc)

    proc = await runtime.exec(
        ExecSpec(container_id=cid, cmd=("sh", "-c", "read x; tty; stty size"), tty=True, attach_stdin=True)
    )
    proc.resize(30, 100)
    proc.stdin.write(b"go\n")
    await proc.stdin.drain()
    seen["tty"] = [(await proc.stdout.read()).decode(errors="replace"), await proc.wait()]

    seen["logs"] = await _logs(runtime, cid, stdout=True, stderr=True, follow=False, tail=None)
    stdin = await runtime.open_stdin(cid)
    stdin.write(b"abc\n")
    await stdin.drain()
    stdin.close()
    for _ in range(100):
        out = "".join(
            t for _, t in await _logs(runtime, cid, stdout=True, stderr=False, follow=False, tail=None)
        )
        if "got:" in out:
            break
        await asyncio.sleep(0.05)
    seen["logs_after_stdin"] = out
    seen["tail1"] = await _logs(runtime, cid, stdout=True, stderr=False, follow=False, tail=1)

    waiter = asyncio.ensure_future(runtime.wait_exit(cid, seen["pid"]))
    await runtime.kill(cid, 9)
    seen["exit_code"] = await asyncio.wait_for(waiter, 10)
    assert await runtime.wait_exit(cid, seen["pid"]) == seen["exit_code"]  # again: same answer
    await runtime.kill(cid, 15)  # stopped: fine
    seen["is_running_after"] = await runtime.is_running(cid)
    await asyncio.wait_for(_logs(runtime, cid, stdout=True, stderr=True, follow=True, tail=0), 5)
    await runtime.cleanup(cid)
    await runtime.cleanup(cid)
    seen["mounts_after_cleanup"] = _overlays(runtime.exec_root)
    seen["runc_list_after_cleanup"] = await runtime.list_containers()
    seen["cgroup_after_cleanup"] = os.path.exists(f"/sys/fs/cgroup/pids/{runtime.cgroup_parent}/{cid}")
    await runtime.remove(cid)
    await runtime.remove(cid)
    seen["dirs_after_remove"] = [
        os.path.exists(os.path.join(runtime.data_root, "containers", cid)),
        os.path.exists(os.path.join(runtime.exec_root, "containers", cid)),
    ]


async def scenario_exit(runtime, image, seen: dict) -> None:
    from cnm.model.values import new_id

    cid = new_id()
    pid = await runtime.start(
        _request(runtime, image, cid, ("sh", "-c", "echo a; sleep 0.3; echo b; exit 3"), "/run/netns/c1")
    )
    chunks = await asyncio.wait_for(_logs(runtime, cid, stdout=True, stderr=True, follow=True, tail=None), 10)
    seen["followed"] = "".join(t for _, t in chunks)
    seen["exit_code"] = await asyncio.wait_for(runtime.wait_exit(cid, pid), 10)
    await runtime.kill(cid, 9)
    await runtime.cleanup(cid)
    await runtime.remove(cid)

    host = new_id()
    pid = await runtime.start(_request(runtime, image, host, ("sleep", "1000"), None))
    out, code = await _run(runtime, host, "ip", "-o", "link")
    seen["host_links"] = sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines())
    await runtime.kill(host, 9)  # (SIGTERM would be ignored: sleep is the pid namespace's init)
    seen["host_exit"] = 137 - await asyncio.wait_for(runtime.wait_exit(host, pid), 10)
    await runtime.cleanup(host)
    await runtime.remove(host)
    seen["mounts_after_cleanup"] = _overlays(runtime.exec_root)
    seen["runc_list_after_cleanup"] = await runtime.list_containers()


async def scenario_failure(runtime, image, seen: dict) -> None:
    from cnm.errors import RuntimeFailure
    from cnm.model.values import new_id

    cid = new_id()
    try:
        await runtime.start(_request(runtime, image, cid, ("nope",), "/run/netns/c1"))
        seen["error"] = "no error"
    except RuntimeFailure as exc:
        seen["error"] = str(exc)
    seen["mounts"] = _overlays(runtime.exec_root)
    seen["runc_list"] = await runtime.list_containers()
    seen["stderr_log"] = "".join(
        t for _, t in await _logs(runtime, cid, stdout=True, stderr=True, follow=False, tail=None)
    )
    pid = await runtime.start(_request(runtime, image, cid, ("true",), "/run/netns/c1"))
    seen["retry_exit"] = await asyncio.wait_for(runtime.wait_exit(cid, pid), 10)
    await runtime.cleanup(cid)
    await runtime.remove(cid)


async def scenario_restart(runtime, image, seen: dict) -> None:
    """A first 'daemon' (a child process) starts the container and exits; this process,
    a new runtime on the same roots, finds it and sees it end."""
    from cnm.runtime.runc import RuncRuntime

    cid = "f" * 64
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        os.path.abspath(__file__),
        "restart-first",
        *sys.argv[2:],
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await child.communicate()
    seen["pid"] = int(out.decode().strip().splitlines()[-1])
    runtime = RuncRuntime(runtime.data_root, runtime.exec_root, runtime.cgroup_parent)
    seen["is_running"] = await runtime.is_running(cid)
    waiter = asyncio.ensure_future(runtime.wait_exit(cid, seen["pid"]))  # reopens the output
    for _ in range(100):  # what the container wrote while no runtime read it waited in the pipe
        seen["logs"] = "".join(
            t for _, t in await _logs(runtime, cid, stdout=True, stderr=False, follow=False, tail=None)
        )
        if seen["logs"]:
            break
        await asyncio.sleep(0.05)
    follow = asyncio.ensure_future(_logs(runtime, cid, stdout=True, stderr=True, follow=True, tail=0))
    await asyncio.sleep(0.2)
    await runtime.kill(cid, 9)
    seen["exit_code"] = await asyncio.wait_for(waiter, 10)
    await asyncio.wait_for(follow, 5)
    seen["followed_until_exit"] = True
    await runtime.cleanup(cid)
    await runtime.remove(cid)
    seen["runc_list_after_cleanup"] = await runtime.list_containers()


async def restart_first(runtime, image) -> None:
    pid = await runtime.start(
        _request(runtime, image, "f" * 64, ("sh", "-c", "echo before; exec sleep 1000"), "/run/netns/c1")
    )
    print(pid, flush=True)


async def _main(name: str, tmp: str, tar_path: str, cgroup_parent: str) -> None:
    from cnm.runtime.process import become_subreaper
    from cnm.runtime.runc import RuncRuntime

    runtime = RuncRuntime(os.path.join(tmp, "data"), "/run/cnm", cgroup_parent=cgroup_parent)
    if name == "restart-first":
        await restart_first(runtime, runtime.find_image("busybox"))
        return
    if name != "restart":
        become_subreaper()
    image = await runtime.import_image("busybox", tar_path)
    seen: dict = {"image_tags": list(image.repo_tags)}
    try:
        await asyncio.wait_for(globals()[f"scenario_{name}"](runtime, image, seen), SCENARIO_TIMEOUT)
    except BaseException:
        print(f"scenario {name} failed; seen so far: {json.dumps(seen)}", file=sys.stderr, flush=True)
        raise
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    asyncio.run(_main(*sys.argv[1:5]))
