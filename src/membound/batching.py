"""Chunk anything by rows and bytes; convert between Python rows and Arrow record batches."""

from __future__ import annotations

import datetime as _dt
import decimal
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa

from membound.budget import BatchSizer, Budget
from membound.errors import SchemaError

__all__ = [
    "LOGICAL_TYPE_KEY",
    "batch_nbytes",
    "batch_to_rows",
    "chunk_rows",
    "estimate_row_size",
    "from_column_buffers",
    "prepend",
    "rebatch",
    "rows_to_batch",
]

# Field metadata key naming a logical type Arrow has no plain type for ("json", "uuid"), so a
# column keeps its meaning between backends (PostgreSQL jsonb -> Parquet -> MariaDB JSON).
LOGICAL_TYPE_KEY = b"membound.type"

# CPython's cost of holding one value in a row tuple beyond its payload: the object header
# (16-49 bytes for int/float/str/bytes) plus the tuple slot (8 bytes).
PY_VALUE_OVERHEAD = 56
# A tuple's own header.
PY_ROW_OVERHEAD = 56


def batch_nbytes(batch: pa.RecordBatch | pa.Table) -> int:
    """Bytes of Arrow data a batch references (slices count only their part)."""
    return int(batch.nbytes)


def from_column_buffers(
    arrow_type: pa.DataType, rows: int, buffers: Sequence[Any], values: Any = None
) -> pa.Array:
    """An Arrow array adopting one column's buffers from membound's C readers (no copy).

    ``buffers`` is ``(validity or None, null count, values, offsets or None)`` as their
    ``fetch()`` hands them over (objects with the buffer protocol); ``values`` replaces the
    values buffer (a column converted on the way, keeping its validity).
    """
    validity, nulls, data, offsets = buffers
    parts = [None if validity is None else pa.py_buffer(validity)]
    if offsets is not None and values is None:
        parts.append(pa.py_buffer(offsets))
    parts.append(pa.py_buffer(data if values is None else values))
    return pa.Array.from_buffers(arrow_type, rows, parts, null_count=nulls)


def estimate_value_size(value: Any) -> int:
    """Approximate bytes a Python value costs in memory: payload plus object overhead."""
    if value is None or isinstance(value, bool):
        return 8
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        return len(value) + PY_VALUE_OVERHEAD
    if isinstance(value, (int, float)):
        return 32
    return sys.getsizeof(value)


def estimate_row_size(row: Sequence[Any] | dict[str, Any]) -> int:
    """Approximate bytes a row costs in memory as a Python tuple or dict."""
    values = row.values() if isinstance(row, dict) else row
    return PY_ROW_OVERHEAD + sum(map(estimate_value_size, values))


def chunk_rows(
    rows: Iterable[Any],
    budget: Budget | int | str | None = None,
    *,
    sizer: BatchSizer | None = None,
    row_size=estimate_row_size,
) -> Iterator[list[Any]]:
    """Group any iterable of rows into lists bounded by rows AND bytes.

    A chunk ends when its rows' estimated size reaches the sizer's target or its row count
    reaches the sizer's rows-per-batch, whichever comes first. A single row larger than the
    target is yielded alone. The iterable is consumed lazily: at most one chunk is held.
    """
    sizer = sizer or Budget.coerce(budget).sizer()
    chunk: list[Any] = []
    nbytes = 0
    target = sizer.target_bytes
    max_rows = sizer.rows_per_batch
    for row in rows:
        size = row_size(row)
        if chunk and nbytes + size > target:
            sizer.observe(len(chunk), nbytes)
            yield chunk
            chunk, nbytes = [], 0
            target, max_rows = sizer.target_bytes, sizer.rows_per_batch
        chunk.append(row)
        nbytes += size
        if len(chunk) >= max_rows and nbytes >= target // 4:
            sizer.observe(len(chunk), nbytes)
            yield chunk
            chunk, nbytes = [], 0
            target, max_rows = sizer.target_bytes, sizer.rows_per_batch
    if chunk:
        sizer.observe(len(chunk), nbytes)
        yield chunk


def prepend(first: pa.RecordBatch, rest: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``first``, then the rest of a stream (a sink peeks at the first batch for its schema)."""
    yield first
    yield from rest


def batch_to_rows(batch: pa.RecordBatch | pa.Table) -> Iterator[tuple]:
    """The rows of a batch as tuples (column-wise conversion: far faster than per row)."""
    columns = [column.to_pylist() for column in batch.columns]
    return zip(*columns, strict=True) if columns else iter(())


def rows_to_batch(rows: Sequence[Sequence[Any]], schema: pa.Schema) -> pa.RecordBatch:
    """Build a record batch from row tuples. A value that does not fit its column's type raises
    :class:`SchemaError` naming the column and the value."""
    if not rows:
        return schema.empty_table().to_batches()[0] if len(schema) else pa.record_batch([])
    columns = list(zip(*rows, strict=True))
    arrays = []
    for field, values in zip(schema, columns, strict=True):
        arrays.append(values_to_array(values, field))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def values_to_array(values: Sequence[Any], field: pa.Field) -> pa.Array:
    """One column of Python values as an Arrow array of ``field.type``."""
    try:
        return pa.array(values, type=field.type, from_pandas=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
        bad = next((v for v in values if not _fits(v, field.type)), None)
        shown = repr(bad)[:80] if bad is not None else "a value"
        raise SchemaError(
            f"column {field.name!r} holds {shown} ({type(bad).__name__}), which does not fit "
            f"its type {field.type}; cast it in the query (e.g. CAST({field.name} AS TEXT)) "
            f"or fix the data ({exc})"
        ) from None


def _fits(value: Any, arrow_type: pa.DataType) -> bool:
    if value is None:
        return True
    try:
        pa.array([value], type=arrow_type)
    except Exception:
        return False
    return True


def infer_type(values: Iterable[Any]) -> pa.DataType:
    """The Arrow type for a column of Python values; null-only columns become strings."""
    for value in values:
        if value is None:
            continue
        if isinstance(value, bool):
            return pa.bool_()
        if isinstance(value, int):
            return pa.int64()
        if isinstance(value, float):
            return pa.float64()
        if isinstance(value, str):
            return pa.string()
        if isinstance(value, (bytes, bytearray, memoryview)):
            return pa.binary()
        if isinstance(value, decimal.Decimal):
            return pa.array([value]).type
        if isinstance(value, _dt.datetime):
            return pa.timestamp("us", tz="UTC" if value.tzinfo else None)
        if isinstance(value, _dt.date):
            return pa.date32()
        return pa.array([value]).type
    return pa.string()


def rebatch(
    batches: Iterable[pa.RecordBatch], sizer: BatchSizer
) -> Iterator[pa.RecordBatch]:
    """Split batches larger than the sizer's target into zero-copy slices near the target.

    Small batches pass through unchanged: merging them would copy for no memory gain.
    """
    for batch in batches:
        nbytes = batch_nbytes(batch)
        rows = batch.num_rows
        if rows <= 1 or nbytes <= sizer.target_bytes:
            if rows:
                sizer.observe(rows, nbytes)
            yield batch
            continue
        sizer.observe(rows, nbytes)
        step = sizer.rows_per_batch
        for offset in range(0, rows, step):
            yield batch.slice(offset, step)
