"""The output copier and its subscriptions (real pipes, no container), the detach-key
scanners of the API and the CLI, and the option parsing for logs and terminals."""

from __future__ import annotations

import asyncio
import os

import pytest

from cnm.api.hijack import EscapeDetector, parse_detach_keys
from cnm.api.schemas_container import parse_container_create
from cnm.cli.commands.container import api_timestamp
from cnm.cli.errors import CliError
from cnm.cli.hijack import Escape, detach_key_bytes
from cnm.cli.runopts import log_config
from cnm.errors import InvalidArgument
from cnm.runtime.logs import STDERR, STDOUT, JsonLogWriter, LogOptions, read_records
from cnm.runtime.output import Copier, OutputHub


async def _drain(sub) -> list:
    return [item async for item in sub]


async def test_copier_feeds_clients_and_log_and_ends_at_eof(tmp_path):
    hub = OutputHub()
    early = hub.subscribe()  # before the run: served by the next copier
    assert hub.subscribe(running_only=True) is None
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    path = str(tmp_path / "log")
    Copier(hub, [(STDOUT, out_r), (STDERR, err_r)], JsonLogWriter(path, LogOptions()))
    lines = hub.subscribe(running_only=True, lines=True)
    assert lines is not None
    os.write(out_w, b"one\ntw")
    await asyncio.sleep(0.05)
    os.write(err_w, b"bad\n")
    await asyncio.sleep(0.05)
    os.write(out_w, b"o\n")
    os.close(out_w)
    os.close(err_w)
    got = await asyncio.wait_for(_drain(early), 5)
    assert got == [(STDOUT, b"one\ntw"), (STDERR, b"bad\n"), (STDOUT, b"o\n")]  # raw, as read
    records = await asyncio.wait_for(_drain(lines), 5)
    assert [(r.stream, r.data) for r in records] == [
        (STDOUT, b"one\n"),
        (STDERR, b"bad\n"),
        (STDOUT, b"two\n"),
    ]
    assert [(r.stream, r.data) for r in read_records(path)] == [(r.stream, r.data) for r in records]
    assert hub.copier is None and hub.subscribers == set()


async def test_copier_flushes_a_last_line_without_newline_and_finds_eof_of_an_orphaned_fifo(tmp_path):
    fifo = str(tmp_path / "stdout")
    os.mkfifo(fifo)
    rd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    wr = os.open(fifo, os.O_WRONLY)
    os.write(wr, b"left in the pipe")
    os.close(wr)  # the writer is gone before anyone reads (a restart)
    hub = OutputHub()
    copier = Copier(hub, [(STDOUT, rd)], JsonLogWriter(str(tmp_path / "log"), LogOptions()))
    await asyncio.wait_for(copier.done, 5)
    assert [r.data for r in read_records(str(tmp_path / "log"))] == [b"left in the pipe"]


async def test_end_all_releases_clients_of_a_container_that_never_ran():
    hub = OutputHub()
    sub = hub.subscribe()
    hub.end_all()
    assert await asyncio.wait_for(_drain(sub), 2) == []


@pytest.mark.parametrize("scanner", [lambda k: EscapeDetector(k), lambda k: Escape(k)])
def test_detach_keys_are_found_and_broken_sequences_passed_on(scanner):
    s = scanner(b"\x10\x11")
    assert s.feed(b"ab\x10") == (b"ab", False)  # held back: may begin the sequence
    assert s.feed(b"c") == (b"\x10c", False)  # broken: passed on
    assert s.feed(b"\x10\x10") == (b"\x10", False)
    assert s.feed(b"\x11rest") == (b"", True)
    single = scanner(b"q")
    assert single.feed(b"xyq") == (b"xy", True)


def test_detach_key_specs():
    for parse in (parse_detach_keys, detach_key_bytes):
        assert parse("") == b"\x10\x11"
        assert parse("ctrl-p,ctrl-q") == b"\x10\x11"
        assert parse("ctrl-a,x") == b"\x01x"
        assert parse("ctrl-@,ctrl-_") == b"\x00\x1f"
    with pytest.raises(InvalidArgument, match="Unknown character"):
        parse_detach_keys("ctrl-1")
    with pytest.raises(CliError, match="Unknown character"):
        detach_key_bytes("shift-a")


def test_cli_timestamps_as_docker_sends_them():
    now = 1_700_000_000.0
    assert api_timestamp("1700000000.5", now) == "1700000000.5"
    assert api_timestamp("10m", now) == f"{now - 600:.9f}"
    assert api_timestamp("1h30s", now) == f"{now - 3630:.9f}"
    assert api_timestamp("2023-11-14T22:13:20.123456789Z", now) == "1700000000.123456789"
    assert api_timestamp("2023-11-14T23:13:20+01:00", now) == "1700000000.000000000"
    assert api_timestamp("2023-11-14", now) == "1699920000.000000000"
    with pytest.raises(ValueError, match="cannot parse"):
        api_timestamp("yesterday", now)


def test_log_config_flags_and_create_body():
    assert log_config("", ["max-size=10m", "max-file=3"]) == {
        "Type": "",
        "Config": {"max-size": "10m", "max-file": "3"},
    }
    with pytest.raises(ValueError, match="expected key=value"):
        log_config("json-file", ["max-size"])
    config, _ = parse_container_create(
        {
            "Image": "busybox",
            "Tty": True,
            "HostConfig": {"LogConfig": {"Type": "", "Config": {"max-size": "1k"}}, "ConsoleSize": [30, 100]},
        }
    )
    assert (config.log_driver, dict(config.log_opts), config.console_size) == (
        "json-file",
        {"max-size": "1k"},
        (30, 100),
    )
    with pytest.raises(InvalidArgument, match='logging driver "fluentd" is not supported'):
        parse_container_create({"Image": "busybox", "HostConfig": {"LogConfig": {"Type": "fluentd"}}})
    with pytest.raises(InvalidArgument, match="ConsoleSize"):
        parse_container_create({"Image": "busybox", "HostConfig": {"ConsoleSize": [1]}})


async def test_fd_keeper_holds_a_pipe_and_gives_it_back():
    from cnm.runtime.process import fetch_kept_fd, start_fd_keeper, stop_fd_keeper

    r, w = os.pipe()
    pid, started = start_fd_keeper([r])
    try:
        os.close(r)  # only the keeper holds the read end now
        os.write(w, b"kept")
        os.close(w)
        assert fetch_kept_fd(pid, started, r + 1000, "]") is None  # not one of its fds
        assert fetch_kept_fd(pid, started + 1, r, "]") is None  # not that process
        back = fetch_kept_fd(pid, started, r, "]")  # "pipe:[inode]"
        assert back is not None
        assert os.read(back, 10) == b"kept"  # what was written survived its writer
        os.close(back)
    finally:
        await stop_fd_keeper(pid, started)
    assert fetch_kept_fd(pid, started, r, "]") is None
    await stop_fd_keeper(pid, started)  # idempotent


def test_cli_pump_detaches_on_the_keys_and_sends_the_rest():
    import socket

    from cnm.cli.hijack import pump

    ours, daemon = socket.socketpair()
    r, w = os.pipe()
    os.write(w, b"ls\r\x10x\x10\x11ignored")
    out_r, out_w = os.pipe()
    try:
        assert pump(ours, b"", True, r, out_fd=out_w, err_fd=out_w, detach_keys=b"\x10\x11") is True
        assert daemon.recv(100) == b"ls\r\x10x"  # a broken sequence is sent on; the keys are not
    finally:
        for fd in (r, w, out_r, out_w):
            os.close(fd)
        ours.close()
        daemon.close()
