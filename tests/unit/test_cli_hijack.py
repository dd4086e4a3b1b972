"""Multiplexed stream framing (pkg/stdcopy) and the copy loop."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from cnm.cli.errors import CliError
from cnm.cli.hijack import Demuxer, Output, demux, pump


def frame(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


def test_demux_frames_split_anywhere():
    data = frame(1, b"out") + frame(2, b"err") + frame(1, b"") + frame(0, b"in")
    for cut in range(len(data) + 1):
        d = Demuxer()
        frames = d.feed(data[:cut]) + d.feed(data[cut:])
        assert frames == [(1, b"out"), (2, b"err"), (0, b"in")]
        assert d.pending() == 0


def test_demux_errors():
    with pytest.raises(CliError, match="Unrecognized input header: 9"):
        demux(frame(9, b"x"))
    with pytest.raises(CliError, match="unexpected EOF"):
        demux(frame(1, b"abc")[:-1])
    out = Output(tty=False)
    with pytest.raises(CliError, match="daemon failed"):
        out.write(frame(3, b"daemon failed\n"))


def test_pump_sends_stdin_half_closes_and_demuxes():
    ours, theirs = socket.socketpair()
    stdin_r, stdin_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    os.write(stdin_w, b"hello")
    os.close(stdin_w)

    def server() -> None:
        received = b""
        while chunk := theirs.recv(100):  # until the client's CloseWrite
            received += chunk
        theirs.sendall(frame(1, b"got " + received) + frame(2, b"e"))
        theirs.close()

    t = threading.Thread(target=server)
    t.start()
    pump(ours, frame(1, b"early "), False, stdin_r, out_w, err_w)
    t.join(5)
    for fd in (out_w, err_w, stdin_r):
        os.close(fd)
    assert os.read(out_r, 100) == b"early got hello"
    assert os.read(err_r, 100) == b"e"
