"""An order-independent checksum of a table, to check that every contestant wrote the same data.

The checksum is the sum modulo 2**64 of one 64-bit hash per row. Summing makes it independent of
row order and of how the rows were split into batches, row groups or files. Before hashing, each
column is cast to a canonical type, so the checksum is also independent of how a writer typed
the data: ``flag`` stored as 0/1 or as boolean, ``user_id`` as int32 or int64, strings as
``string``, ``large_string`` or dictionary-encoded, a timestamp as ISO text or as a
``timestamp`` (compared as the instant, in UTC microseconds). A NULL stays distinct from NaN,
from 0 and from the empty string.

Row hashes come from polars' ``hash_rows``, which is stable within one polars version only, so
a reference checksum is cached together with that version and never compared across versions.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

# Bump when the canonical forms or the hashing change, so cached reference checksums are redone.
CHECKSUM_SCHEME = 1
POLARS_VERSION = version("polars")

# Rows hashed at a time. Verification runs in the harness, after the contestant has exited, so
# it does not affect any measurement; this only keeps the harness itself modest at 10M rows.
ROWS_PER_CHECKSUM_BATCH = 200_000

# The seed is arbitrary; fixing it is what makes two checksums comparable.
HASH_SEED = 20240101

Canonical = Literal["int", "float", "text", "bool", "instant"]

# How each column of the shared `events` table is compared.
EVENTS_CANONICAL: dict[str, Canonical] = {
    "id": "int",
    "user_id": "int",
    "ts": "instant",
    "kind": "text",
    "amount": "float",
    "payload": "text",
    "flag": "bool",
}

# ISO text as the dataset stores it: "2024-01-01 00:00:01+00:00".
ISO_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S%z"


@dataclass
class Verification:
    """What the harness found in one output: its rows, checksum and schema, and any problem."""

    rows: int = 0
    checksum: str = ""
    schema: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "checksum": self.checksum,
            "schema": self.schema,
            "problems": self.problems,
        }


def _canonical_expression(name: str, canonical: Canonical, dtype: pl.DataType) -> pl.Expr:
    column = pl.col(name)
    if canonical == "int":
        return column.cast(pl.Int64)
    if canonical == "float":
        return column.cast(pl.Float64)
    if canonical == "text":
        return column.cast(pl.String)
    if canonical == "bool":
        return column.cast(pl.Boolean)
    # "instant": microseconds since the epoch, in UTC. A naive timestamp is taken as UTC.
    if dtype == pl.String:
        column = column.str.to_datetime(ISO_TIMESTAMP_FORMAT, time_unit="us")
    return column.dt.epoch("us").alias(name)


def _batch_hash_sum(frame: pl.DataFrame, spec: Mapping[str, Canonical]) -> int:
    canonical = frame.select(
        _canonical_expression(name, canonical, frame.schema[name])
        for name, canonical in spec.items()
    )
    # numpy's uint64 sum wraps modulo 2**64, which is the sum we want.
    return int(canonical.hash_rows(seed=HASH_SEED).to_numpy().sum(dtype=np.uint64))


def checksum_frames(frames: Iterable[pl.DataFrame], spec: Mapping[str, Canonical]) -> Verification:
    """Row count and checksum of a stream of frames holding (at least) the columns of ``spec``."""
    result = Verification()
    total = 0
    for frame in frames:
        result.rows += frame.height
        total = (total + _batch_hash_sum(frame, spec)) % 2**64
    result.checksum = f"{total:016x}"
    return result


def parquet_checksum(path: Path, spec: Mapping[str, Canonical]) -> Verification:
    """Read a Parquet file back in batches and checksum it; a missing column is a problem."""
    if not path.exists():
        return Verification(problems=[f"no output file at {path}"])
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        return Verification(problems=[f"unreadable Parquet: {error}"])
    arrow_schema = parquet.schema_arrow
    schema = {name: str(arrow_schema.field(name).type) for name in arrow_schema.names}
    missing = [name for name in spec if name not in schema]
    extra = [name for name in schema if name not in spec]
    if missing:
        return Verification(schema=schema, problems=[f"missing columns: {', '.join(missing)}"])

    def frames() -> Iterator[pl.DataFrame]:
        batches = parquet.iter_batches(batch_size=ROWS_PER_CHECKSUM_BATCH, columns=list(spec))
        for batch in batches:
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            yield frame

    try:
        result = checksum_frames(frames(), spec)
    except (pa.ArrowException, pl.exceptions.PolarsError, OSError) as error:
        return Verification(schema=schema, problems=[f"could not read back: {error}"])
    result.schema = schema
    if extra:
        result.problems.append(f"unexpected columns: {', '.join(extra)}")
    return result


def sqlite_checksum(path: Path, table: str, spec: Mapping[str, Canonical]) -> Verification:
    """Checksum a SQLite table, reading it in batches with the standard library driver."""
    columns = ", ".join(spec)
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        cursor = connection.execute(f"SELECT {columns} FROM {table}")  # noqa: S608 (bench only)

        def frames() -> Iterator[pl.DataFrame]:
            while rows := cursor.fetchmany(ROWS_PER_CHECKSUM_BATCH):
                yield pl.DataFrame(rows, schema=list(spec), orient="row", infer_schema_length=None)

        result = checksum_frames(frames(), spec)
    result.schema = {name: "sqlite" for name in spec}
    return result
