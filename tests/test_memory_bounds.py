"""The budget is kept: peak RSS above the post-import baseline, measured in a fresh process.

Each case also runs once with a budget so large that the bound does nothing, and checks that
the same workload then goes well over the small budget: proof that the workload is big enough
for the test to fail if the budget logic were missing.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3

import pyarrow.parquet as pq
import pytest

from membound import open_backend
from membound.demo import event_batches

BUDGET = 32_000_000
ALLOWED = 1.1 * BUDGET
UNBOUNDED = "8GB"


def sqlite_checksum(path: str, table: str, columns: str) -> tuple[int, str]:
    digest = hashlib.sha256()
    count = 0
    conn = sqlite3.connect(path)
    for row in conn.execute(f"SELECT {columns} FROM {table} ORDER BY id"):
        digest.update(repr(row).encode())
        count += 1
    conn.close()
    return count, digest.hexdigest()


@pytest.fixture(scope="module")
def events_db(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("bounds") / "events.db")
    with open_backend(f"sqlite:///{path}") as db:
        db.write("events", event_batches(1_000_000))
    return path


def test_million_rows_sqlite_to_parquet_within_budget(events_db, tmp_path, copy_in_child):
    target = str(tmp_path / "events.parquet")
    result = copy_in_child(f"sqlite:///{events_db}?table=events", target, BUDGET)
    assert result["rows"] == 1_000_000
    assert result["above"] <= ALLOWED, f"peak {result['above']:,} B above baseline"
    assert result["report_peak"] <= ALLOWED

    table = pq.read_table(target, columns=["id", "payload", "amount"])
    assert table.num_rows == 1_000_000
    assert table.column("id").to_pylist() == list(range(1, 1_000_001))
    expected = sqlite_checksum(events_db, "events", "payload, amount")
    digest = hashlib.sha256()
    for payload, amount in zip(table.column("payload").to_pylist(),
                               table.column("amount").to_pylist(), strict=True):
        digest.update(repr((payload, amount)).encode())
    assert (table.num_rows, digest.hexdigest()) == expected

    control = copy_in_child(f"sqlite:///{events_db}?table=events", str(tmp_path / "c.parquet"),
                        UNBOUNDED)
    assert control["above"] > ALLOWED, "workload too small to show the bound"


def test_million_rows_sqlite_to_sqlite_within_budget(events_db, tmp_path, copy_in_child):
    target = str(tmp_path / "copy.db")
    result = copy_in_child(f"sqlite:///{events_db}?table=events", f"sqlite:///{target}", BUDGET)
    assert result["rows"] == 1_000_000
    assert result["above"] <= ALLOWED, f"peak {result['above']:,} B above baseline"
    columns = "id, user_id, ts, kind, amount, payload, flag"
    assert sqlite_checksum(target, "events", columns) == sqlite_checksum(
        events_db, "events", columns)


def docs_db(tmp_path, largest: int) -> str:
    """60,000 rows of ~100 bytes, every 6,000th with a ``largest``-byte body, in docs.db."""
    source = str(tmp_path / "docs.db")
    conn = sqlite3.connect(source)
    conn.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, title TEXT, body BLOB)")
    rows = []
    for i in range(60_000):
        if i % 6_000 == 3_000:
            body = hashlib.sha256(str(i).encode()).digest() * (largest // 32)
        else:
            body = hashlib.md5(str(i).encode()).digest() * 4
        rows.append((i, f"document {i:08d} " + "x" * 40, body))
        if len(rows) == 1000:
            conn.executemany("INSERT INTO docs VALUES (?, ?, ?)", rows)
            rows.clear()
    conn.commit()
    conn.close()
    return source


def test_twenty_megabyte_values_within_budget(tmp_path, copy_in_child):
    source = docs_db(tmp_path, 20_000_000)
    target = str(tmp_path / "copy.db")
    result = copy_in_child(f"sqlite:///{source}?table=docs", f"sqlite:///{target}", BUDGET)
    assert result["rows"] == 60_000
    assert result["above"] <= ALLOWED, f"peak {result['above']:,} B above baseline"
    assert sqlite_checksum(target, "docs", "title, body") == sqlite_checksum(
        source, "docs", "title, body")

    control = copy_in_child(f"sqlite:///{source}?table=docs", f"sqlite:///{tmp_path}/c.db",
                        UNBOUNDED)
    assert control["above"] > ALLOWED, "workload too small to show the bound"
    os.remove(f"{tmp_path}/c.db")


# pyarrow's Parquet writer encodes a value into a page buffer before it compresses it, so a
# value alone costs its size twice in the writer at the least (with data pages of version 2
# and no statistics on binary columns; version 1 pages cost three times). No writer setting
# avoids that copy: the bound here is the budget plus one such copy of the largest value.
LARGEST_VALUE = 20_000_000
ALLOWED_PARQUET_LARGE = ALLOWED + LARGEST_VALUE


def test_twenty_megabyte_values_into_parquet(tmp_path, copy_in_child):
    source = docs_db(tmp_path, LARGEST_VALUE)
    target = str(tmp_path / "docs.parquet")
    result = copy_in_child(f"sqlite:///{source}?table=docs", target, BUDGET)
    assert result["rows"] == 60_000
    assert result["above"] <= ALLOWED_PARQUET_LARGE, f"peak {result['above']:,} B above baseline"

    digest = hashlib.sha256()
    parquet = pq.ParquetFile(target)
    for batch in parquet.iter_batches(batch_size=1000, columns=["title", "body"]):
        for title, body in zip(batch.column("title").to_pylist(),
                               batch.column("body").to_pylist(), strict=True):
            digest.update(repr((title, body)).encode())
    assert (parquet.metadata.num_rows, digest.hexdigest()) == sqlite_checksum(
        source, "docs", "title, body")

    control = copy_in_child(f"sqlite:///{source}?table=docs", str(tmp_path / "c.parquet"),
                        UNBOUNDED)
    assert control["above"] > ALLOWED_PARQUET_LARGE, "workload too small to show the bound"
