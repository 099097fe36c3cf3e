"""Build the shared ``events`` table (shared/BENCHMARKS.md) and cache it under ``bench/data/``.

The rows are exactly those of the protocol's PostgreSQL ``generate_series`` query, computed in
Python from the row number ``g``. The build streams: rows are generated and inserted
``INSERT_ROWS_PER_CHUNK`` at a time, so building 10M rows never holds more than one chunk.

Run it alone to prebuild a size (useful in the background for large N)::

    python bench/data.py --rows 10000000
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
DATA_DIR = BENCH_DIR / "data"

# Bump when the table's definition or contents change, so stale cached files are not reused.
DATASET_VERSION = 1

KINDS = ("click", "view", "buy", "share")  # PostgreSQL's array is 1-based: [1 + g%4]
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)

# 50k rows of ~170 bytes is ~10 MB of Python tuples per executemany: big enough that the
# per-statement overhead vanishes, small enough that the build's memory stays flat.
INSERT_ROWS_PER_CHUNK = 50_000

EVENTS_DDL = """
CREATE TABLE events (
  id INTEGER PRIMARY KEY,
  user_id INTEGER NOT NULL,
  ts TEXT NOT NULL,
  kind TEXT NOT NULL,
  amount REAL,
  payload TEXT,
  flag BOOLEAN
)
"""

EVENT_COLUMNS = ("id", "user_id", "ts", "kind", "amount", "payload", "flag")


def event_row(g: int) -> tuple[int, int, str, str, float | None, str, int]:
    """Row ``g`` of the protocol's query, with ``flag`` as SQLite's 0/1.

    ``ts`` is ISO 8601 text with a space and a ``+00:00`` offset, the form SQLite's own date
    functions accept.
    """
    return (
        g,
        (g * 7919) % 100_000,
        (EPOCH + timedelta(seconds=g)).isoformat(sep=" "),
        KINDS[g % 4],
        None if g % 10 == 0 else (g % 1000) / 7.0,
        hashlib.md5(str(g).encode()).hexdigest() * (1 + g % 6),
        1 if g % 3 == 0 else 0,
    )


def event_rows(row_count: int) -> Iterator[tuple[int, int, str, str, float | None, str, int]]:
    """Rows 1..row_count, lazily."""
    return (event_row(g) for g in range(1, row_count + 1))


def sqlite_path(row_count: int) -> Path:
    """Where the cached SQLite database for ``row_count`` rows lives."""
    return DATA_DIR / f"events-v{DATASET_VERSION}-{row_count}.sqlite"


def build_sqlite(row_count: int, *, verbose: bool = True) -> Path:
    """Return the cached SQLite database of ``row_count`` events rows, building it if absent.

    The file is built under a temporary name and renamed when complete, so an interrupted build
    is never mistaken for a cached one.
    """
    path = sqlite_path(row_count)
    if path.exists():
        return path
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + f".partial-{os.getpid()}")
    partial.unlink(missing_ok=True)
    started = time.perf_counter()
    connection = sqlite3.connect(partial)
    try:
        # A throwaway build file: no journal, no fsync.
        connection.execute("pragma journal_mode = off")
        connection.execute("pragma synchronous = off")
        connection.execute(EVENTS_DDL)
        rows = event_rows(row_count)
        inserted = 0
        while chunk := list(islice(rows, INSERT_ROWS_PER_CHUNK)):
            connection.executemany("insert into events values (?, ?, ?, ?, ?, ?, ?)", chunk)
            inserted += len(chunk)
            if verbose and inserted % 1_000_000 < INSERT_ROWS_PER_CHUNK:
                print(f"  events: {inserted:,}/{row_count:,} rows", file=sys.stderr)
        connection.commit()
    finally:
        connection.close()
    partial.rename(path)
    if verbose:
        size_mb = path.stat().st_size / 1e6
        elapsed = time.perf_counter() - started
        print(f"built {path} ({size_mb:.0f} MB) in {elapsed:.0f} s", file=sys.stderr)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", required=True, help="table sizes to build")
    args = parser.parse_args()
    for row_count in args.rows:
        print(build_sqlite(row_count))


if __name__ == "__main__":
    main()
