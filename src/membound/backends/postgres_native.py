"""membound's own PostgreSQL reader (the C extension ``membound._pgarrow``), Python side.

The extension streams ``COPY (query) TO STDOUT (FORMAT binary)`` into Arrow column buffers with
the GIL released (see the C source's header for why by hand). This module decides which results
it reads (:func:`plan`: every column of a type it decodes, else the backend reads through ADBC),
turns its buffers into batches, and wraps its connection for the backend's pool.

The Arrow types are those the ADBC path gives after :class:`membound.backends.postgres._ReadPlan`
(``numeric(p,s)`` -> ``decimal128(p,s)``, unconstrained numeric -> ``decimal128(38,10)`` rounded
half-even, json/jsonb/uuid -> strings marked with ``membound.type``), so a result has the same
schema whichever path reads it; ``tests/backends/test_postgres_native.py`` holds them to that.
Where ADBC's driver hands on a wrong value (an infinite date or timestamp comes out as a date
thousands of years off, a two-dimensional array as one flat list), this reader raises
:class:`SchemaError` naming the column.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from membound.batching import LOGICAL_TYPE_KEY, from_column_buffers
from membound.errors import SchemaError

__all__ = ["NativeError", "NativeConnection", "Plan", "import_native", "plan"]

#: Field metadata that marks a string column's logical type (both read paths use them).
JSON_METADATA = {LOGICAL_TYPE_KEY: b"json"}
UUID_METADATA = {LOGICAL_TYPE_KEY: b"uuid"}
# Unconstrained numeric is read as decimal128 with this precision and scale: the widest
# decimal128, with the scale peers use (ConnectorX), so money-like values stay exact.
UNCONSTRAINED_NUMERIC = (38, 10)
# MEMBOUND_PG_READER=adbc reads every result through ADBC's driver (to compare the two paths, or
# to step around a fault of the C reader).
READER_ENV = "MEMBOUND_PG_READER"
# A connection that has received a row larger than this is closed after its read instead of
# pooled: libpq's receive buffer grows to the largest message and never shrinks, so a pooled
# connection would keep that memory, outside any budget, for the backend's life. 4 MiB is the
# batch size of a 64MB budget; a new connection costs a few milliseconds.
POOL_MAX_MESSAGE = 4 * 1024 * 1024


def import_native() -> Any:
    """The C reader module, or None when it was not built (or ``MEMBOUND_PG_READER=adbc``)."""
    if os.environ.get(READER_ENV, "").lower() == "adbc":
        return None
    try:
        from membound import _pgarrow
    except ImportError:
        return None
    return _pgarrow


class NativeError(Exception):
    """An error of the C reader: ``sqlstate`` (None for libpq's own), the message, and the index
    of the column whose value could not be carried (-1 for none)."""

    def __init__(self, sqlstate: str | None, message: str, column: int = -1) -> None:
        super().__init__(message.strip())
        self.sqlstate = sqlstate
        self.column = column


def _native_error(exc: BaseException) -> NativeError:
    args = getattr(exc, "args", ())
    if len(args) == 3:
        return NativeError(*args)
    return NativeError(None, str(exc))


def numeric_precision_scale(typmod: int | None) -> tuple[int, int]:
    """``numeric``'s precision and scale from its typmod; unconstrained -> UNCONSTRAINED_NUMERIC."""
    if typmod is None or typmod < 4:
        return UNCONSTRAINED_NUMERIC
    return ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF


class NativeConnection:
    """One libpq session of the C reader, with the calls the backend's pool makes
    (``rollback``, ``alive``, ``close``) and its errors as :class:`NativeError`."""

    def __init__(self, module: Any, conninfo: str) -> None:
        self._module = module
        self.raw = self._call(module.Connection, conninfo)
        # Text arrives in the client encoding, UTF-8 (the backend asks for it): the server
        # converts it and refuses what is not valid, even from a SQL_ASCII database (SQLSTATE
        # 22021), so the reader does not check it again.

    def _call(self, method: Any, *args: Any) -> Any:
        try:
            return method(*args)
        except self._module.Error as exc:
            raise _native_error(exc) from None

    def exec(self, sql: str) -> list[tuple[str | None, ...]]:
        return self._call(self.raw.exec, sql)

    def describe(self, sql: str) -> list[tuple[str, int, int]]:
        return self._call(self.raw.describe, sql)

    def copy(self, sql: str, columns: Sequence[tuple[int, ...]]) -> None:
        self._call(self.raw.copy, sql, columns)

    def fetch(self, max_rows: int, max_bytes: int) -> tuple[int, list[Any]] | None:
        return self._call(self.raw.fetch, max_rows, max_bytes)

    def rollback(self) -> None:
        self.exec("ROLLBACK")

    @property
    def poolable(self) -> bool:
        """Whether the connection may wait in the pool (it holds no large receive buffer)."""
        return self.raw.largest_message <= POOL_MAX_MESSAGE

    def alive(self) -> bool:
        try:
            self.exec("SELECT 1")
        except NativeError:
            return False
        return True

    def cancel(self) -> None:
        self.raw.cancel()

    def close(self) -> None:
        self.raw.close()


class Plan:
    """How the C reader reads one result: a (kind, precision, scale[, element kind]) per column,
    and the Arrow schema its batches have."""

    def __init__(self, columns: list[tuple[int, ...]], schema: pa.Schema) -> None:
        self.columns = columns
        self.schema = schema


# Type OIDs (pg_type.oid, fixed for the built-in types) -> (kind name, Arrow type, metadata).
_SIMPLE: dict[int, tuple[str, pa.DataType, dict[bytes, bytes] | None]] = {
    16: ("KIND_BOOL", pa.bool_(), None),
    17: ("KIND_BYTES", pa.binary(), None),  # bytea
    18: ("KIND_BYTES", pa.string(), None),  # "char"
    19: ("KIND_BYTES", pa.string(), None),  # name
    20: ("KIND_I64", pa.int64(), None),
    21: ("KIND_I16", pa.int16(), None),
    23: ("KIND_I32", pa.int32(), None),
    25: ("KIND_BYTES", pa.string(), None),  # text
    26: ("KIND_I32", pa.int32(), None),  # oid, as ADBC reads it
    114: ("KIND_BYTES", pa.string(), JSON_METADATA),  # json
    700: ("KIND_F32", pa.float32(), None),
    701: ("KIND_F64", pa.float64(), None),
    790: ("KIND_I64", pa.int64(), None),  # money, in cents, as ADBC reads it
    1042: ("KIND_BYTES", pa.string(), None),  # bpchar
    1043: ("KIND_BYTES", pa.string(), None),  # varchar
    1082: ("KIND_DATE", pa.date32(), None),
    1083: ("KIND_TIME", pa.time64("us"), None),
    1114: ("KIND_TIMESTAMP", pa.timestamp("us"), None),
    1184: ("KIND_TIMESTAMP", pa.timestamp("us", tz="UTC"), None),  # timestamptz
    1186: ("KIND_INTERVAL", pa.month_day_nano_interval(), None),
    2950: ("KIND_UUID", pa.string(), UUID_METADATA),
    3802: ("KIND_JSONB", pa.string(), JSON_METADATA),
}
_NUMERIC = 1700
# Array type OIDs -> their element's OID, for the elements ADBC's path gives as a plain list
# (arrays of json, jsonb, uuid and numeric come out of it as lists of text: they go there).
_ARRAYS = {
    1000: 16, 1001: 17, 1002: 18, 1003: 19, 1005: 21, 1007: 23, 1016: 20, 1009: 25, 1014: 1042,
    1015: 1043, 1021: 700, 1022: 701, 1028: 26, 1182: 1082, 1183: 1083, 1115: 1114, 1185: 1184,
    1187: 1186,
}


def plan(module: Any, described: Sequence[tuple[str, int, int]]) -> Plan | None:
    """The C reader's plan for a result with these (name, type oid, typmod) columns, or None
    when a column has a type it does not decode (enums, ``inet``, numeric above 38 digits, arrays
    of numeric, json or uuid, ...): ADBC's driver reads that result."""
    columns: list[tuple[int, ...]] = []
    fields: list[pa.Field] = []
    for name, oid, typmod in described:
        if oid == _NUMERIC:
            precision, scale = numeric_precision_scale(typmod)
            if not 1 <= precision <= 38 or scale > precision:
                return None
            columns.append((module.KIND_NUMERIC, precision, scale))
            fields.append(pa.field(name, pa.decimal128(precision, scale)))
            continue
        element = _ARRAYS.get(oid)
        if element is not None:
            kind, arrow_type, _ = _SIMPLE[element]
            columns.append((module.KIND_LIST, 0, 0, getattr(module, kind)))
            fields.append(pa.field(name, pa.list_(arrow_type)))
            continue
        simple = _SIMPLE.get(oid)
        if simple is None:
            return None
        kind, arrow_type, metadata = simple
        columns.append((getattr(module, kind), 0, 0))
        fields.append(pa.field(name, arrow_type, metadata=metadata))
    return Plan(columns, pa.schema(fields))


def to_batch(rows: int, buffers: Sequence[Any], read_plan: Plan) -> pa.RecordBatch:
    """One fetch()'s buffers as a record batch of the plan's schema (no copy)."""
    schema = read_plan.schema
    arrays = [
        _array(field.type, rows, column) for field, column in zip(schema, buffers, strict=True)
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _array(arrow_type: pa.DataType, rows: int, column: Sequence[Any]) -> pa.Array:
    if not pa.types.is_list(arrow_type):
        return from_column_buffers(arrow_type, rows, column)
    validity, nulls, _, offsets, elements, count = column
    child = from_column_buffers(arrow_type.value_type, count, elements)
    return pa.Array.from_buffers(
        arrow_type,
        rows,
        [None if validity is None else pa.py_buffer(validity), pa.py_buffer(offsets)],
        null_count=nulls,
        children=[child],
    )


def value_error(exc: NativeError, schema: pa.Schema) -> SchemaError:
    """A value the C reader could not carry, as :class:`SchemaError` naming its column."""
    field = schema.field(exc.column)
    name = field.name
    if pa.types.is_decimal(field.type):
        advice = f"cast it in the query, e.g. {name}::numeric(76,20) or {name}::text"
    elif pa.types.is_list(field.type):
        advice = f"cast it in the query, e.g. {name}::text"
    else:
        advice = f"cast it in the query, e.g. {name}::text, or NULLIF({name}, 'infinity')"
    return SchemaError(f"column {field.name!r} {exc} ({field.type}); {advice}")
