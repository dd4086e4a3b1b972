"""Process helpers (cnm.runtime.process): exit codes, pidfd waits, fd streams."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from cnm.runtime.process import (
    ExecProcess,
    empty_reader,
    exit_code,
    fd_reader,
    fd_writer,
    pid_alive,
    wait_pid,
)


def spawn(*argv: str) -> int:
    return os.posix_spawn(argv[0], list(argv), dict(os.environ))


def test_exit_code():
    assert exit_code(3 << 8) == 3
    assert exit_code(signal.SIGKILL) == 137
    assert exit_code(signal.SIGTERM) == 143


async def test_wait_pid_exit_status():
    pid = spawn(sys.executable, "-c", "import sys; sys.exit(3)")
    assert await asyncio.wait_for(wait_pid(pid), 10) == 3


async def test_wait_pid_signal():
    pid = spawn(sys.executable, "-c", "import time; time.sleep(30)")
    assert pid_alive(pid)
    os.kill(pid, signal.SIGKILL)
    assert await asyncio.wait_for(wait_pid(pid), 10) == 137
    assert not pid_alive(pid)


async def test_wait_pid_not_our_child():
    # A grandchild, reaped by its own parent before we look: exited, but not ours to reap.
    r, w = os.pipe()
    os.set_inheritable(w, True)
    pid = spawn(
        sys.executable,
        "-c",
        f"import os,sys; p=os.fork()\nif p==0: os._exit(0)\nos.waitpid(p,0); os.write({w}, str(p).encode()); os._exit(0)",
    )
    os.close(w)
    grandchild = int(os.read(r, 32))
    os.close(r)
    await wait_pid(pid)
    assert await wait_pid(grandchild) is None


async def test_exec_process_wait_shared():
    pid = spawn(sys.executable, "-c", "import sys; sys.exit(5)")
    proc = ExecProcess(pid, None, empty_reader(), None)
    first, second = await asyncio.gather(proc.wait(), proc.wait())
    assert first == second == 5
    assert await proc.wait() == 5
    proc.resize(10, 10)  # no tty: nothing to do


async def test_fd_reader_and_writer_over_pipe():
    r, w = os.pipe()
    reader = fd_reader(r)
    writer = await fd_writer(w)
    writer.write(b"hello ")
    writer.write(b"world")
    await writer.drain()
    writer.close()
    assert await asyncio.wait_for(reader.read(), 5) == b"hello world"


async def test_fd_reader_pty_eio_is_eof():
    master, slave = os.openpty()
    reader = fd_reader(master)
    os.write(slave, b"out\n")
    os.close(slave)
    data = await asyncio.wait_for(reader.read(), 5)
    assert data.replace(b"\r", b"") == b"out\n"


async def test_resize_sets_window_size():
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    proc = ExecProcess(os.getpid(), None, empty_reader(), None, pty_master=master)
    proc.resize(33, 111)
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(slave, termios.TIOCGWINSZ, b"\0" * 8))
    assert (rows, cols) == (33, 111)
    proc.close()
    os.close(slave)


async def test_empty_reader_is_at_eof():
    assert empty_reader().at_eof()


@pytest.mark.parametrize("sig", [signal.SIGINT])
async def test_wait_pid_other_signal(sig):
    pid = spawn(
        sys.executable,
        "-c",
        "import signal,time; signal.signal(signal.SIGINT, signal.SIG_DFL); time.sleep(30)",
    )
    await asyncio.sleep(0.2)
    os.kill(pid, sig)
    assert await asyncio.wait_for(wait_pid(pid), 10) == 128 + sig
