"""The json-file log: records, line splitting, rotation, reading back with tail/since/until."""

from __future__ import annotations

import json
import os

import pytest

from cnm.errors import InvalidArgument, SystemFailure
from cnm.runtime.logs import (
    MAX_RECORD,
    STDERR,
    STDOUT,
    JsonLogWriter,
    LineSplitter,
    LogOptions,
    LogReader,
    decode_record,
    log_files,
    parse_log_config,
    parse_time,
    read_records,
    rfc3339_nano,
)


def test_record_is_dockers_json_file_line(tmp_path):
    path = str(tmp_path / "c-json.log")
    w = JsonLogWriter(path, LogOptions())
    w.write(STDOUT, [b"hi\n"], 1_700_000_000_123_456_789)
    w.close()
    line = open(path, "rb").read()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"log": "hi\n", "stream": "stdout", "time": "2023-11-14T22:13:20.123456789Z"}


def test_time_round_trip():
    ns = 1_700_000_000_000_000_001
    assert parse_time(rfc3339_nano(ns)) == ns
    assert parse_time("2023-11-14T23:13:20.5+01:00") == 1_700_000_000_500_000_000


def test_splitter_whole_lines_partial_and_long():
    s = LineSplitter()
    assert s.feed(b"a\nb") == [b"a\n"]
    assert s.feed(b"c\n\n") == [b"bc\n", b"\n"]
    long = b"x" * (MAX_RECORD + 10)
    assert s.feed(long) == [b"x" * MAX_RECORD]
    assert s.feed(b"\n") == [b"x" * 10 + b"\n"]
    assert s.feed(b"prompt $ ") == []
    assert s.flush() == [b"prompt $ "]
    assert s.flush() == []


def test_streams_keep_their_order(tmp_path):
    path = str(tmp_path / "log")
    w = JsonLogWriter(path, LogOptions())
    w.write(STDOUT, [b"1\n"], 1)
    w.write(STDERR, [b"2\n"], 2)
    w.write(STDOUT, [b"3\n"], 3)
    w.close()
    assert [(r.stream, r.data) for r in read_records(path)] == [(1, b"1\n"), (2, b"2\n"), (1, b"3\n")]


def _fill(path: str, n: int, options: LogOptions) -> None:
    w = JsonLogWriter(path, options)
    for i in range(n):
        w.write(STDOUT, [f"line {i:03d}\n".encode()], 1_000_000_000 * (i + 1))
    w.close()


def test_rotation_keeps_max_file_files_of_max_size(tmp_path):
    path = str(tmp_path / "log")
    _fill(path, 100, LogOptions(max_size=300, max_file=3))
    files = log_files(path)
    assert files == [path + ".2", path + ".1", path]
    assert all(os.path.getsize(f) <= 300 for f in files)
    got = [r.data for r in read_records(path)]
    assert got[-1] == b"line 099\n"
    # contiguous and ordered: what is kept is the newest part of the output
    numbers = [int(d.split()[1]) for d in got]
    assert numbers == list(range(numbers[0], 100))


def test_max_file_one_truncates(tmp_path):
    path = str(tmp_path / "log")
    _fill(path, 50, LogOptions(max_size=200, max_file=1))
    assert log_files(path) == [path]
    assert os.path.getsize(path) <= 200


def test_tail_counts_records_across_rotated_files(tmp_path):
    path = str(tmp_path / "log")
    _fill(path, 100, LogOptions(max_size=300, max_file=5))
    last = [r.data for r in read_records(path, tail=12)]
    assert last == [f"line {i:03d}\n".encode() for i in range(88, 100)]
    assert list(read_records(path, tail=0)) == []
    assert len(list(read_records(path, tail=10_000))) == len(list(read_records(path)))


def test_since_until_filter_by_time(tmp_path):
    path = str(tmp_path / "log")
    _fill(path, 10, LogOptions())
    got = [r.data for r in read_records(path, since=3_000_000_000, until=5_000_000_000)]
    assert got == [b"line 002\n", b"line 003\n", b"line 004\n"]


def test_reader_follows_new_records_and_rotation(tmp_path):
    path = str(tmp_path / "log")
    w = JsonLogWriter(path, LogOptions(max_size=200, max_file=3))
    w.write(STDOUT, [b"a\n"], 1)
    reader = LogReader(path, None)
    assert [r.data for r in reader.read_new()] == [b"a\n"]
    assert list(reader.read_new()) == []
    w.write(STDOUT, [b"b\n", b"c\n", b"d\n"], 2)  # rotates on the way
    assert [r.data for r in reader.read_new()] == [b"b\n", b"c\n", b"d\n"]
    reader.close()
    w.close()


def test_missing_log_reads_empty(tmp_path):
    assert list(read_records(str(tmp_path / "none"), tail=5)) == []


def test_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "log"
    path.write_bytes(b'{"log":"ok\\n","stream":"stdout","time":"2023-11-14T22:13:20Z"}\n{"log":"tor')
    assert [r.data for r in read_records(str(path))] == [b"ok\n"]


@pytest.mark.parametrize(
    "driver, opts, message",
    [
        ("syslog", {}, 'logging driver "syslog" is not supported'),
        ("journald", {}, "not supported"),
        ("json-file", {"max-size": "ten"}, "invalid size"),
        ("json-file", {"max-file": "0"}, "max-file cannot be less than 1"),
        ("json-file", {"max-file": "3"}, "only be used together with max-size"),
        ("json-file", {"labels": "a"}, "unknown log opt 'labels'"),
        ("json-file", {"compress": "true"}, "unknown log opt 'compress'"),
        ("none", {"max-size": "1m"}, "unknown log opt"),
    ],
)
def test_log_config_refused(driver, opts, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_log_config(driver, opts)


def test_log_config_accepted():
    assert parse_log_config("json-file", {}) == LogOptions()
    assert parse_log_config("json-file", {"max-size": "10k", "max-file": "3"}) == LogOptions(10240, 3)
    assert parse_log_config("json-file", {"max-size": "1m"}) == LogOptions(1 << 20, 1)
    assert parse_log_config("none", {}) == LogOptions()


def test_read_batch_returns_every_record_of_what_it_read(tmp_path):
    path = str(tmp_path / "log")
    _fill(path, 500, LogOptions())
    reader = LogReader(path, None)
    got = []
    while batch := reader.read_batch(limit=1000):  # many small batches, none loses a line
        got += batch
    reader.close()
    assert [r.data for r in got] == [f"line {i:03d}\n".encode() for i in range(500)]


def test_a_lazy_writer_opens_the_log_at_its_first_write_and_rotates_as_if_it_had_been_open(tmp_path):
    path = str(tmp_path / "log")
    _fill(path, 3, LogOptions())
    before = os.path.getsize(path)
    options = LogOptions(max_size=before + 1, max_file=3)  # room for no record more
    lazy = JsonLogWriter(str(tmp_path / "never"), options, lazy=True)
    lazy.close()
    assert not os.path.exists(tmp_path / "never")  # made, closed, never written: no file
    w = JsonLogWriter(path, options, lazy=True)
    w.write(STDOUT, [b"later\n"], 10_000_000_000)  # past max_size with what was there: rotates
    w.write(STDOUT, [b"after\n"], 11_000_000_000)
    w.close()
    w.write(STDOUT, [b"closed\n"], 12_000_000_000)  # after close: nothing

    def lines_of(name: str) -> list[bytes]:
        return [decode_record(line).data for line in open(name, "rb")]  # type: ignore[union-attr]

    assert lines_of(path + ".1") == [b"line 000\n", b"line 001\n", b"line 002\n"]
    assert lines_of(path) == [b"later\n", b"after\n"]


def test_a_lazy_writer_that_cannot_open_its_log_says_which(tmp_path):
    w = JsonLogWriter(str(tmp_path / "missing-dir" / "log"), LogOptions(), lazy=True)
    with pytest.raises(SystemFailure, match="missing-dir"):
        w.write(STDOUT, [b"x\n"], 1)
