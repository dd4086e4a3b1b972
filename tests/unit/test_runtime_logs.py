"""Reading container logs back (cnm.runtime.logs): tail, stream selection, follow."""

from __future__ import annotations

import asyncio

import pytest

from cnm.runtime.logs import STDERR, STDOUT, read_logs, tail_offset


@pytest.mark.parametrize(
    "content,lines,expected",
    [
        (b"a\nb\nc\n", 2, b"b\nc\n"),
        (b"a\nb\nc", 2, b"b\nc"),
        (b"a\nb\nc\n", 3, b"a\nb\nc\n"),
        (b"a\nb\nc\n", 10, b"a\nb\nc\n"),
        (b"a\nb\nc\n", 0, b""),
        (b"", 5, b""),
        (b"\n\n\n", 2, b"\n\n"),
        (b"only", 1, b"only"),
    ],
)
def test_tail_offset(tmp_path, content, lines, expected):
    path = tmp_path / "log"
    path.write_bytes(content)
    assert content[tail_offset(str(path), lines) :] == expected


def test_tail_offset_across_blocks(tmp_path):
    path = tmp_path / "log"
    body = b"".join(b"line %06d %s\n" % (i, b"x" * 100) for i in range(3000))
    path.write_bytes(body)
    got = body[tail_offset(str(path), 1234) :]
    assert got.count(b"\n") == 1234 and got.startswith(b"line 001766")


def test_tail_offset_missing(tmp_path):
    assert tail_offset(str(tmp_path / "none"), 3) == 0


async def collect(gen) -> list[tuple[int, bytes]]:
    return [item async for item in gen]


async def test_reads_both_streams(tmp_path):
    out, err = tmp_path / "out", tmp_path / "err"
    out.write_bytes(b"o1\no2\n")
    err.write_bytes(b"e1\n")
    items = await collect(
        read_logs([(STDOUT, str(out)), (STDERR, str(err))], follow=False, tail=None, exited=lambda: True)
    )
    assert items == [(1, b"o1\no2\n"), (2, b"e1\n")]


async def test_tail_per_file_and_missing_file(tmp_path):
    out = tmp_path / "out"
    out.write_bytes(b"1\n2\n3\n")
    streams = [(STDOUT, str(out)), (STDERR, str(tmp_path / "none"))]
    assert await collect(read_logs(streams, follow=False, tail=1, exited=lambda: False)) == [(1, b"3\n")]


async def test_follow_until_exited(tmp_path):
    out = tmp_path / "out"
    out.write_bytes(b"first\n")
    done = asyncio.Event()

    async def writer():
        await asyncio.sleep(0.05)
        with open(out, "ab") as fh:
            fh.write(b"second\n")
        await asyncio.sleep(0.05)
        with open(out, "ab") as fh:
            fh.write(b"last\n")
        done.set()

    task = asyncio.create_task(writer())
    items = await asyncio.wait_for(
        collect(read_logs([(STDOUT, str(out))], follow=True, tail=None, exited=done.is_set, interval=0.01)), 5
    )
    await task
    assert b"".join(chunk for _, chunk in items) == b"first\nsecond\nlast\n"


async def test_follow_keeps_going_while_running(tmp_path):
    out = tmp_path / "out"
    out.write_bytes(b"x\n")
    gen = read_logs([(STDOUT, str(out))], follow=True, tail=0, exited=lambda: False, interval=0.01)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(gen.__anext__(), 0.1)
