"""SQLite's parallel fast path: rowid ranges read by two readers (ADBC's or membound's C reader),
batches in rowid order."""

from __future__ import annotations

import os
import sqlite3
import threading

import pyarrow as pa
import pytest

import membound.backends.sqlite as sqlite_backend
from membound import open_backend
from membound.backends.sqlite import SQLiteBackend

pytest.importorskip("adbc_driver_sqlite")


@pytest.fixture
def small_segments(monkeypatch, sqlite_reader):
    """Ranges of 200 rowids and two readers (three cores, one left to the consumer), whatever
    the machine, on each fast path (ADBC's, membound's C reader), and a count of the reads that
    took the parallel path."""
    monkeypatch.setattr(sqlite_backend, "FAST_MAX_ROWS", 100)
    monkeypatch.setattr(sqlite_backend, "NATIVE_MAX_ROWS", 100)
    monkeypatch.setattr(sqlite_backend, "SEGMENT_BATCHES", 2)
    monkeypatch.setattr(sqlite_backend.os, "cpu_count", lambda: 3)
    calls = []
    original = SQLiteBackend._parallel_stream

    def spy(self, *args, **kwargs):
        calls.append(args[5])  # the segments
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SQLiteBackend, "_parallel_stream", spy)
    return calls


def build(path, rows):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, data BLOB, n)")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()
    return path


def read_all(path, budget="8MB", table="t"):
    with open_backend(f"sqlite:///{path}") as src:
        return pa.Table.from_batches(list(src.batches(table, budget=budget))).to_pylist()


def as_dicts(rows):
    return [dict(zip(("id", "name", "data", "n"), r, strict=True)) for r in rows]


def test_rows_come_once_each_and_in_rowid_order(tmp_path, small_segments):
    rows = [(i, f"név-{i}-😀" if i % 7 else None, bytes([0, i % 256, 0]), i * 3)
            for i in range(1, 5001)]
    path = build(str(tmp_path / "p.db"), rows)
    assert read_all(path) == as_dicts(rows)
    assert len(small_segments) == 1 and len(small_segments[0]) > 10


def test_sparse_and_negative_rowids(tmp_path, small_segments):
    # Gaps far wider than a range (empty ranges), negative rowids and the int64 extremes.
    ids = sorted({-(2**63), -(2**62), -5, 0, 7, 2**40, 2**63 - 1}
                 | set(range(1000, 3000)) | set(range(10**12, 10**12 + 500)))
    rows = [(i, f"r{i}", None, None) for i in ids]
    path = build(str(tmp_path / "sparse.db"), rows)
    assert read_all(path) == as_dicts(rows)
    assert small_segments and len(small_segments[0]) == sqlite_backend.MAX_SEGMENTS


def test_held_back_values_in_several_ranges_are_read_on_the_callers_thread(
        tmp_path, small_segments, monkeypatch):
    big = os.urandom(1_500_000)
    rows = [(i, f"n{i}", big if i in (3, 777, 778, 2500, 4999) else b"x" * 10, i)
            for i in range(1, 5001)]
    path = build(str(tmp_path / "big.db"), rows)
    threads = set()
    original = SQLiteBackend._slow_table_batches

    def slow(self, *args, **kwargs):
        threads.add(threading.current_thread().name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SQLiteBackend, "_slow_table_batches", slow)
    assert read_all(path) == as_dicts(rows)
    assert small_segments
    # Never on a reader thread: two large values are never read at once.
    assert threads and not any(name.startswith("membound-reader") for name in threads)


def test_a_value_of_another_type_in_a_later_range_is_the_same_error_as_serially(
        tmp_path, small_segments, monkeypatch):
    # A typeless column typed int64 from its first values, a text value in range 10 of 15.
    rows = [(i, f"n{i}", None, i) for i in range(1, 3001)]
    rows[2000] = (2001, "n2001", None, "text among integers")
    path = build(str(tmp_path / "mixed.db"), rows)
    before = threading.active_count()
    with pytest.raises(sqlite_backend.SchemaError, match="column 'n'"):
        read_all(path)
    assert small_segments and threading.active_count() == before
    monkeypatch.setattr(sqlite_backend, "PARALLEL_READERS", 1)
    with pytest.raises(sqlite_backend.SchemaError, match="column 'n'"):
        read_all(path)


def test_wal_databases_are_read_by_one_reader(tmp_path, small_segments):
    rows = [(i, f"n{i}", None, i) for i in range(1, 3001)]
    path = build(str(tmp_path / "wal.db"), rows)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode = wal").fetchone()[0] == "wal"
    conn.close()
    assert read_all(path) == as_dicts(rows)
    assert small_segments == []


def test_writers_wait_until_the_parallel_read_is_done(tmp_path, small_segments):
    # One snapshot: the read holds SQLite's shared lock from the first range to the last.
    rows = [(i, f"n{i}", None, i) for i in range(1, 5001)]
    path = build(str(tmp_path / "lock.db"), rows)
    writer = sqlite3.connect(path, timeout=0)
    with open_backend(f"sqlite:///{path}") as src:
        stream = src.batches("t", budget="8MB")
        first = next(stream)
        assert first.num_rows
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            writer.execute("DELETE FROM t WHERE id > 4000")
            writer.commit()
        writer.rollback()
        rest = sum(batch.num_rows for batch in stream)
    assert first.num_rows + rest == 5000
    writer.execute("DELETE FROM t WHERE id > 4000")
    writer.commit()
    writer.close()


def test_stopping_early_ends_the_readers_and_the_read_transaction(tmp_path, small_segments):
    rows = [(i, f"n{i}", None, i) for i in range(1, 5001)]
    path = build(str(tmp_path / "stop.db"), rows)
    before = threading.active_count()
    with open_backend(f"sqlite:///{path}") as src:
        stream = src.batches("t", budget="8MB")
        next(stream)
        stream.close()
        assert threading.active_count() == before
        # The shared lock is gone: a writer gets in at once.
        writer = sqlite3.connect(path, timeout=0)
        writer.execute("DELETE FROM t WHERE id > 4000")
        writer.commit()
        writer.close()
        assert sum(b.num_rows for b in src.batches("t", budget="8MB")) == 4000


def test_a_readers_error_reaches_the_caller(tmp_path, small_segments, monkeypatch,
                                           sqlite_reader):
    rows = [(i, f"n{i}", None, i) for i in range(1, 5001)]
    path = build(str(tmp_path / "err.db"), rows)
    run = "_native_run" if sqlite_reader == "native" else "_fast_run"
    original = getattr(SQLiteBackend, run)
    seen = []

    def failing(self, *args, **kwargs):
        seen.append(args)
        if len(seen) == 4:
            raise sqlite_backend.QueryError("reader 4 failed")
        return (yield from original(self, *args, **kwargs))

    monkeypatch.setattr(SQLiteBackend, run, failing)
    before = threading.active_count()
    with open_backend(f"sqlite:///{path}") as src, \
            pytest.raises(sqlite_backend.QueryError, match="reader 4 failed"):
        list(src.batches("t", budget="8MB"))
    assert threading.active_count() == before


def test_two_cores_leave_one_reader_beside_the_consumer(tmp_path, monkeypatch, small_segments):
    # On two cores the caller's thread (a copy's writer) has one, the reader the other: a second
    # reader would only add a batch target of memory.
    monkeypatch.setattr(sqlite_backend.os, "cpu_count", lambda: 2)
    rows = [(i, f"n{i}", None, i) for i in range(1, 3001)]
    path = build(str(tmp_path / "two.db"), rows)
    assert [row["id"] for row in read_all(path)] == list(range(1, 3001))
    assert small_segments == []
