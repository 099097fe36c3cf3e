"""The demo: build a sample SQLite database of events, streamed, and copy it to Parquet."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from membound.backends.base import open_backend
from membound.budget import Budget
from membound.copy import ProgressCallback, copy
from membound.report import RunReport

__all__ = ["DEMO_SCHEMA", "event_batches", "run_demo"]

DEMO_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("user_id", pa.int32()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("kind", pa.string()),
        ("amount", pa.float64()),
        ("payload", pa.string()),
        ("flag", pa.bool_()),
    ]
)
_KINDS = ("click", "view", "buy", "share")
_EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
# Rows generated per batch: about 2 MB of Arrow data for this schema, whatever the budget.
DEMO_ROWS_PER_BATCH = 10_000


def event_batches(rows: int, *, start: int = 1) -> Iterator[pa.RecordBatch]:
    """Events-like rows (the benchmark's ``events`` table), generated batch by batch.

    Row ``g`` is: user ``(g*7919) % 100000``, a timestamp ``g`` seconds after 2024-01-01 UTC,
    one of four kinds, an amount (NULL every 10th row), an md5 payload repeated 1-6 times, and a
    flag. Nothing but the current batch is held.
    """
    for first in range(start, start + rows, DEMO_ROWS_PER_BATCH):
        ids = range(first, min(first + DEMO_ROWS_PER_BATCH, start + rows))
        yield pa.record_batch(
            [
                pa.array(ids, pa.int64()),
                pa.array([(g * 7919) % 100000 for g in ids], pa.int32()),
                pa.array([_EPOCH + dt.timedelta(seconds=g) for g in ids], DEMO_SCHEMA[2].type),
                pa.array([_KINDS[g % 4] for g in ids]),
                pa.array([None if g % 10 == 0 else (g % 1000) / 7.0 for g in ids]),
                pa.array(
                    [hashlib.md5(str(g).encode()).hexdigest() * (1 + g % 6) for g in ids]
                ),
                pa.array([g % 3 == 0 for g in ids]),
            ],
            schema=DEMO_SCHEMA,
        )


def run_demo(
    rows: int = 1_000_000,
    directory: str | Path = "membound-demo",
    *,
    max_memory: Budget | int | str = "64MB",
    progress: ProgressCallback | None = None,
) -> RunReport:
    """Build ``directory/demo.db`` (``rows`` events) and copy it to ``directory/events.parquet``.

    Both steps are streamed inside the budget; returns the copy's report. An earlier demo's files
    are replaced.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    database = directory / "demo.db"
    budget = Budget.coerce(max_memory)
    with open_backend(f"sqlite:///{database}", budget=budget) as db:
        db.write("events", event_batches(rows), mode="replace", budget=budget)
    return copy(
        f"sqlite:///{database}?table=events",
        directory / "events.parquet",
        max_memory=budget,
        mode="replace",
        progress=progress,
    )
