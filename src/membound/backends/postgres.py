"""PostgreSQL: reads by binary COPY into Arrow (membound's C reader, else ADBC), writes by binary
COPY from Arrow (ADBC).

Reads. ``COPY (query) TO STDOUT (FORMAT binary)`` decoded by membound's own C reader
(:mod:`membound.backends.postgres_native`, the extension ``membound._pgarrow``) when every column
has a type it decodes, by ADBC's driver otherwise. 2M rows of the shared ``events`` table to
Parquet, 64MB budget, 2 cores (``bench/run.py --case postgres-export``, 2026-12-06): 1.63-1.68 s
and 1.6 s of CPU through the C reader, 2.70-2.79 s and 3.0-3.1 s through ADBC's, ConnectorX 2.54 s.
ADBC's reader decodes on the thread that takes the batches; the C reader on the prefetch thread
with the GIL released, into buffers Arrow adopts without a copy. Earlier measurements that chose
ADBC over the Python drivers (2M rows, batches for a 64MB budget, peak RSS above baseline):

    read  ADBC fetch_record_batch, batch_size_hint_bytes  1.2-1.3 s    20 MB (19 MB, slow consumer)
    read  ConnectorX arrow_stream, batch_size=20000       1.5-1.6 s    30 MB (101 MB, slow consumer:
                                                                      its channel is unbounded)
    read  psycopg named cursor + fetchmany + pa.array     6.7-7.3 s   134 MB
    write ADBC adbc_ingest, one commit per batch          4.4-5.4 s    17 MB
    write psycopg COPY (FORMAT BINARY) with write_row     11.8-14.7 s  24 MB

("slow consumer": 20 ms of sleep per batch.) Through this backend at a 32MB budget: read 12 MB
above the baseline, read and write into another table (``replace``) at once 19 MB (the tests'
memory workload; 64 MB batches with the bound lifted go to 276 MB).

ADBC, but not its DB-API module: ``import adbc_driver_postgresql.dbapi`` imports
``pyarrow.dataset``, pandas and polars when installed (146 MB resident against 59 MB for ADBC's
low-level modules and pyarrow), so the backend drives ``AdbcConnection``/``AdbcStatement``
through :mod:`membound.backends.postgres_adbc`, binds no parameters (building them as Arrow would
import pandas too: catalog queries take literals) and never converts Python values on the way.
A whole export of ``events`` (2M rows) to Parquet then peaks at about 110 MB of process RSS
instead of 190 MB, below ConnectorX's 150 MB (``bench/``, case ``postgres-export``).

Writes that build a table (``fail``, ``replace``, a new table) stream every batch through one
COPY: the client encodes the next batch while the server stores this one. One COPY per batch
waited for the server at each batch's end: loading the 2M rows from Parquet (row groups of
10,000 rows) took 5.7 s that way and 2.0-2.3 s as one stream, at the same memory (24-27 MB above
the start for a 64MB budget; in-process, ``membound.copy``). ``append`` and ``upsert`` keep one
COPY and one commit per batch, which is what lets a failure say how many rows were committed.

Both readers size batches in bytes (the C reader in rows and bytes, ADBC through
``adbc.postgresql.batch_size_hint_bytes``) and read the COPY stream only as fast as the consumer
takes batches, so their memory does not depend on the consumer's speed. ADBC's non-COPY path
(queries with bind parameters) buffers the whole result, so parameters are never bound: they are
rendered as literals by psycopg (``psycopg.sql.Literal``) and the query still goes through COPY.

Types. Reads map PostgreSQL types to Arrow as ADBC does (the C reader gives the same schema),
except:

- ``numeric(p,s)`` -> ``decimal128(p,s)`` (``decimal256`` above 38 digits, a string above 76);
  unconstrained ``numeric`` -> ``decimal128(38,10)``, values rounded half-even to 10 decimals
  (cast to ``numeric(p,s)`` in the query to choose); NaN/Infinity raise :class:`SchemaError`.
- ``json``/``jsonb`` -> ``string`` with field metadata ``membound.type=json``;
- ``uuid`` -> ``string`` (canonical 36 characters) with field metadata ``membound.type=uuid``:
  every sink (CSV, JSON lines, MySQL, SQLite) takes a string, few take an extension type;
- any type ADBC has no Arrow type for (``inet``, enums of extensions...) -> its text.

Writes create tables from the Arrow schema with the inverse mapping (strings marked json ->
``jsonb``, marked uuid -> ``uuid``, ``arrow.json`` -> ``jsonb``, ``arrow.uuid`` and
``fixed_size_binary(16)`` -> ``uuid``, lists -> arrays) and cast every batch to the target
table's types before it is sent; a value that does not fit raises :class:`SchemaError`.
"""

from __future__ import annotations

import contextlib
import decimal
import re
import time
import uuid as _uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from membound.backends import postgres_native
from membound.backends.base import Backend, WriteMode, WriteResult, check_mode, is_query
from membound.backends.postgres_native import (
    JSON_METADATA,
    UUID_METADATA,
    numeric_precision_scale,
)
from membound.batching import LOGICAL_TYPE_KEY, prepend, rebatch
from membound.budget import Budget
from membound.errors import (
    ConfigurationError,
    MissingDriverError,
    NotFoundError,
    PartialWriteError,
    QueryError,
    SchemaError,
    SourceError,
    TargetError,
    TargetExistsError,
)
from membound.prefetch import blocking, interruptible
from membound.urls import ParsedURL

__all__ = ["PostgresBackend", "LOGICAL_TYPE_KEY"]


_BATCH_HINT_OPTION = "adbc.postgresql.batch_size_hint_bytes"
# Libpq otherwise waits for the OS TCP timeout (minutes) on an unreachable host.
CONNECT_TIMEOUT_S = "10"
# Pooled idle connections kept per backend: one serves a read, one a write into the same database.
MAX_IDLE_CONNECTIONS = 2
# A pooled connection idle longer than this is checked (one round trip, ~1 ms) before it is
# reused: the server may have been restarted or have ended it meanwhile. One used within the last
# second is alive with near certainty, and a loop of small queries should not pay the check.
POOL_CHECK_AFTER_IDLE_S = 1.0
# Connection errors whose message means the database name is wrong, not the server.
_NO_DATABASE = re.compile(r'database "[^"]*" does not exist')
# ... or that the user or password is wrong.
_AUTH_FAILED = re.compile(r"password authentication failed|role \"[^\"]*\" does not exist|"
                          r"no password supplied|authentication failed", re.IGNORECASE)
# Messages of an error that means the connection itself is gone (the server stopped or ended it),
# for errors that carry no SQLSTATE (libpq's own, raised as OSError through Arrow's reader).
_CONNECTION_LOST = re.compile(
    r"terminating connection|server closed the connection|connection to server .* lost|"
    r"no connection to the server|could not receive data|SSL SYSCALL|Broken pipe",
    re.IGNORECASE,
)
# SQLSTATE classes that mean the connection is gone: 08 connection exception, 57P0x shutdown.
_CONNECTION_LOST_STATES = ("08", "57P01", "57P02", "57P03")
_PLACEHOLDER = re.compile(r"%%|%\((\w+)\)s|%s")


def _import_dbapi() -> Any:
    """ADBC's PostgreSQL driver behind a DB-API-like cursor (not ADBC's own DB-API module, which
    imports pandas and polars: see :mod:`membound.backends.postgres_adbc`)."""
    try:
        from membound.backends import postgres_adbc
    except ImportError:
        raise MissingDriverError("adbc-driver-postgresql", "postgres") from None
    return postgres_adbc


# -- identifiers and SQL text ----------------------------------------------------------------------


def quote_ident(name: str) -> str:
    """An identifier quoted for PostgreSQL, inner double quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


def split_table_name(table: str) -> tuple[str | None, str]:
    """Split ``app.events`` into ``("app", "events")``; a quoted part may hold dots."""
    parts: list[str] = []
    current, quoted, i = "", False, 0
    while i < len(table):
        ch = table[i]
        if ch == '"':
            if quoted and table[i + 1 : i + 2] == '"':
                current += '"'
                i += 1
            else:
                quoted = not quoted
        elif ch == "." and not quoted:
            parts.append(current)
            current = ""
        else:
            current += ch
        i += 1
    parts.append(current)
    if len(parts) > 2 or not all(parts):
        raise ConfigurationError(f"{table!r} is not a table name; write table or schema.table")
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def qualified(schema: str | None, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}" if schema else quote_ident(name)


def render_params(query: str, params: Sequence[Any] | dict[str, Any]) -> str:
    """Inline ``params`` into ``query`` as safely quoted literals (``%s`` / ``%(name)s``).

    ADBC buffers the whole result of a query with bound parameters; with literals the query still
    streams through COPY. Quoting is psycopg's own (:class:`psycopg.sql.Literal`).
    """
    try:
        from psycopg import sql
    except ImportError:
        raise MissingDriverError("psycopg", "postgres") from None
    positional = iter(params) if not isinstance(params, dict) else None

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        if match.group(1) is not None:
            if not isinstance(params, dict):
                raise ConfigurationError("the query uses %(name)s placeholders; pass a dict")
            value = params[match.group(1)]
        else:
            if positional is None:
                raise ConfigurationError("the query uses %s placeholders; pass a sequence")
            try:
                value = next(positional)
            except StopIteration:
                raise ConfigurationError("the query has more %s placeholders than params") from None
        # Leading space keeps "-5" from forming a comment with a preceding "-".
        return " " + sql.Literal(value).as_string(None)

    text = _PLACEHOLDER.sub(substitute, query)
    if positional is not None and next(positional, _SENTINEL) is not _SENTINEL:
        raise ConfigurationError("more params were given than the query has %s placeholders")
    return text


_SENTINEL = object()


def text_literal(value: str) -> str:
    """``value`` as a PostgreSQL string literal, right whatever ``standard_conforming_strings``.

    For membound's own catalog queries: binding a parameter would build an Arrow array from a
    Python value, and pyarrow's first such conversion imports pandas (~50 MB, see
    :func:`membound.memory.warm_up`), which a table copy otherwise never needs.
    """
    if "\0" in value:
        raise ConfigurationError(f"{value[:60]!r} holds a NUL character, which PostgreSQL refuses")
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


# -- reading: PostgreSQL (as ADBC describes it) -> membound's Arrow types -------------------------


def _numeric_type(typmod: int | None) -> pa.DataType:
    precision, scale = numeric_precision_scale(typmod)
    if precision <= 38:
        return pa.decimal128(precision, scale)
    if precision <= 76:
        return pa.decimal256(precision, scale)
    return pa.string()


def _ext_name(arrow_type: pa.DataType) -> str | None:
    return getattr(arrow_type, "extension_name", None)


def _is_opaque(arrow_type: pa.DataType) -> bool:
    return _ext_name(arrow_type) == "arrow.opaque"


def _has_extension(arrow_type: pa.DataType) -> bool:
    if isinstance(arrow_type, pa.BaseExtensionType):
        return True
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return _has_extension(arrow_type.value_type)
    return False


class _ReadPlan:
    """How one query's columns come out: SQL-side casts, and Arrow-side conversions per batch."""

    def __init__(self, adbc_schema: pa.Schema) -> None:
        self.text_casts: dict[int, str] = {}  # column index -> "text" or "text[]"
        self.converters: dict[int, Any] = {}
        fields = []
        for index, field in enumerate(adbc_schema):
            meta = field.metadata or {}
            arrow_type = field.type
            ext = _ext_name(arrow_type)
            if ext == "arrow.opaque" and arrow_type.type_name == "numeric":
                typmod = meta.get(b"POSTGRESQL:typmod")
                target = _numeric_type(int(typmod) if typmod is not None else None)
                self.converters[index] = _numeric_converter(field.name, target, typmod)
                fields.append(pa.field(field.name, target))
            elif ext == "arrow.json":
                self.converters[index] = lambda array: array.storage
                fields.append(pa.field(field.name, pa.string(), metadata=JSON_METADATA))
            elif ext == "arrow.uuid":
                self.converters[index] = uuid_to_string
                fields.append(pa.field(field.name, pa.string(), metadata=UUID_METADATA))
            elif isinstance(arrow_type, pa.BaseExtensionType):
                self.text_casts[index] = "text"
                fields.append(pa.field(field.name, pa.string()))
            elif (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)) and (
                _has_extension(arrow_type)
            ):
                self.text_casts[index] = "text[]"
                fields.append(pa.field(field.name, pa.list_(pa.string())))
            elif pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
                # Drop ADBC's metadata on the element field too.
                plain = pa.list_(arrow_type.value_type)
                self.converters[index] = lambda array, plain=plain: array.cast(plain)
                fields.append(pa.field(field.name, plain))
            else:
                fields.append(pa.field(field.name, arrow_type))
        self.schema = pa.schema(fields)

    def wrap(self, sql: str, names: list[str]) -> str:
        """``sql`` with the columns Arrow cannot hold cast to text (by position: names repeat)."""
        if not self.text_casts:
            return sql
        aliases = [f"_membound_c{i}" for i in range(len(names))]
        select = []
        for i, (alias, name) in enumerate(zip(aliases, names, strict=True)):
            cast = self.text_casts.get(i)
            expr = f"{alias}::{cast}" if cast else alias
            select.append(f"{expr} AS {quote_ident(name)}")
        return f"SELECT {', '.join(select)} FROM ({sql}) AS _membound_q({', '.join(aliases)})"

    def convert(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        columns = list(batch.columns)
        for index, converter in self.converters.items():
            columns[index] = converter(columns[index])
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)


def _numeric_converter(name: str, target: pa.DataType, typmod: bytes | None):
    unconstrained = typmod is None or int(typmod) < 4
    scale = getattr(target, "scale", 0)

    def convert(array: pa.Array) -> pa.Array:
        text = array.storage
        if pa.types.is_string(target):
            return text
        try:
            return text.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            if not unconstrained or "Rescaling" not in str(exc):
                raise _numeric_error(name, target, text, exc) from None
        # Values with more than 10 decimals: round them, as documented (the rare slow path).
        quantum = decimal.Decimal(1).scaleb(-scale)
        try:
            values = [
                None if v is None else decimal.Decimal(v).quantize(quantum, decimal.ROUND_HALF_EVEN)
                for v in text.to_pylist()
            ]
            return pa.array(values, type=target)
        except (decimal.InvalidOperation, pa.ArrowInvalid) as exc:
            raise _numeric_error(name, target, text, exc) from None

    return convert


def _numeric_error(name: str, target: pa.DataType, text: pa.Array, exc: Exception) -> SchemaError:
    return SchemaError(
        f"column {name!r} holds a numeric value that does not fit {target} ({exc}); "
        f"cast it in the query, e.g. {name}::numeric(76,20) or {name}::text"
    )


def uuid_to_string(array: pa.Array) -> pa.Array:
    """16-byte UUIDs (``arrow.uuid`` or ``fixed_size_binary(16)``) -> canonical strings."""
    storage = array.storage if isinstance(array, pa.ExtensionArray) else array
    count = len(storage)
    if count == 0:
        return pa.nulls(0, pa.string())
    try:
        import numpy as np
    except ImportError:
        return pa.array(
            [None if b is None else str(_uuid.UUID(bytes=b)) for b in storage.to_pylist()],
            pa.string(),
        )
    start = storage.offset * 16
    raw = memoryview(storage.buffers()[1])[start : start + count * 16]
    hexed = np.frombuffer(raw.hex().encode("ascii"), dtype="S1").reshape(count, 32)
    out = np.full((count, 36), b"-", dtype="S1")
    for dst, src in ((0, 0), (9, 8), (14, 12), (19, 16), (24, 20)):
        width = 8 if src == 0 else 12 if src == 20 else 4
        out[:, dst : dst + width] = hexed[:, src : src + width]
    offsets = pa.py_buffer(np.arange(0, 36 * (count + 1), 36, dtype=np.int32).tobytes())
    data = pa.py_buffer(out.tobytes())
    strings = pa.Array.from_buffers(pa.string(), count, [None, offsets, data])
    if storage.null_count:
        strings = pc.if_else(pc.is_valid(storage), strings, _null_scalar(pa.string()))
    return strings


def _null_scalar(arrow_type: pa.DataType) -> pa.Scalar:
    # Not pa.scalar(None, ...): converting a Python value makes pyarrow import pandas.
    return pa.nulls(1, arrow_type)[0]


def string_to_uuid(array: pa.Array, column: str) -> pa.Array:
    """Canonical (or hyphen-less) UUID strings -> ``arrow.uuid``; raises SchemaError otherwise."""
    text = array.cast(pa.string())
    count = len(text)
    stripped = pc.replace_substring(pc.fill_null(text, "0" * 32), "-", "")
    storage = None
    if count and pc.all(pc.equal(pc.binary_length(stripped), 32)).as_py():
        start = stripped.offset
        offsets = memoryview(stripped.buffers()[1]).cast("i")
        begin, end = offsets[start], offsets[start + count]
        with contextlib.suppress(ValueError):
            raw = bytes.fromhex(bytes(memoryview(stripped.buffers()[2])[begin:end]).decode("ascii"))
            storage = pa.Array.from_buffers(pa.binary(16), count, [None, pa.py_buffer(raw)])
    if storage is None:
        try:
            storage = pa.array(
                [None if v is None else _uuid.UUID(v).bytes for v in text.to_pylist()],
                pa.binary(16),
            )
        except ValueError:
            bad = next(v for v in text.to_pylist() if v is not None and not _is_uuid(v))
            raise SchemaError(
                f"column {column!r} holds {bad[:60]!r}, which is not a UUID"
            ) from None
    if text.null_count:
        storage = pc.if_else(pc.is_valid(text), storage, _null_scalar(pa.binary(16)))
    return pa.ExtensionArray.from_storage(pa.uuid(), storage)


def _is_uuid(value: str) -> bool:
    try:
        _uuid.UUID(value)
    except ValueError:
        return False
    return True


# -- writing: Arrow -> PostgreSQL column types -------------------------------------------------


def logical_type(field: pa.Field) -> str | None:
    """``json`` / ``uuid`` for strings so marked (or of the Arrow extension types), else None."""
    ext = _ext_name(field.type)
    if ext == "arrow.json":
        return "json"
    if ext == "arrow.uuid" or field.type == pa.binary(16):
        return "uuid"
    if field.metadata and (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
        mark = field.metadata.get(LOGICAL_TYPE_KEY)
        return mark.decode() if mark else None
    return None


def pg_type_for(field: pa.Field) -> str:
    """The PostgreSQL column type that holds ``field``'s values without loss."""
    t = field.type
    kind = logical_type(field)
    if kind == "json":
        return "jsonb"
    if kind == "uuid":
        return "uuid"
    if isinstance(t, pa.BaseExtensionType):
        return pg_type_for(pa.field(field.name, t.storage_type))
    if pa.types.is_dictionary(t):
        return pg_type_for(pa.field(field.name, t.value_type, metadata=field.metadata))
    simple = {
        pa.int8(): "smallint", pa.int16(): "smallint", pa.int32(): "integer",
        pa.int64(): "bigint", pa.uint8(): "smallint", pa.uint16(): "integer",
        pa.uint32(): "bigint", pa.uint64(): "numeric(20,0)", pa.float16(): "real",
        pa.float32(): "real", pa.float64(): "double precision", pa.bool_(): "boolean",
        pa.date32(): "date", pa.date64(): "date", pa.null(): "text",
        pa.month_day_nano_interval(): "interval",
    }  # fmt: skip
    if t in simple:
        return simple[t]
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "text"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return "bytea"
    if pa.types.is_fixed_size_binary(t):
        return "bytea"
    if pa.types.is_decimal(t):
        return f"numeric({t.precision},{t.scale})"
    if pa.types.is_timestamp(t):
        return "timestamptz" if t.tz else "timestamp"
    if pa.types.is_time(t):
        return "time"
    if pa.types.is_duration(t):
        return "interval"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        inner = pg_type_for(t.value_field)
        if inner.endswith("[]"):
            return inner  # PostgreSQL arrays are rectangular: nested lists share the type
        return f"{inner}[]"
    raise SchemaError(
        f"column {field.name!r} has Arrow type {t}, which has no PostgreSQL column type here; "
        "convert it first (structs and maps to JSON strings)"
    )


def _ingest_type(typname: str, typmod: int, elem: str | None) -> pa.DataType | None:
    """The Arrow type ADBC's binary COPY writes into a column of ``typname``; None if it can't."""
    simple = {
        "int2": pa.int16(), "int4": pa.int32(), "int8": pa.int64(), "float4": pa.float32(),
        "float8": pa.float64(), "bool": pa.bool_(), "text": pa.string(),
        "varchar": pa.string(), "bpchar": pa.string(), "name": pa.string(),
        "bytea": pa.binary(), "date": pa.date32(), "timestamp": pa.timestamp("us"),
        "timestamptz": pa.timestamp("us", "UTC"), "time": pa.time64("us"),
        "interval": pa.month_day_nano_interval(), "uuid": pa.uuid(), "json": pa.json_(),
        "jsonb": pa.json_(),
    }  # fmt: skip
    if typname == "numeric":
        numeric = _numeric_type(typmod)
        return None if pa.types.is_string(numeric) else numeric
    if elem is not None:
        inner = _ingest_type(elem, typmod, None)
        return pa.list_(inner) if inner is not None and not _has_extension(inner) else None
    return simple.get(typname)


def cast_column(array: pa.Array, field_name: str, target: pa.DataType) -> pa.Array:
    """Cast a batch column to the type its target column takes; SchemaError when it can't."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    source = array.type
    if source == target:
        return array
    ext = _ext_name(target)
    source_ext = _ext_name(source)
    if source_ext in ("arrow.json", "arrow.uuid") and ext is None:
        array = uuid_to_string(array) if source_ext == "arrow.uuid" else array.storage
        source = array.type
        if source == target:
            return array
    try:
        if ext == "arrow.uuid":
            if source_ext == "arrow.uuid":
                return array
            if source == pa.binary(16):
                return pa.ExtensionArray.from_storage(pa.uuid(), array)
            if (
                pa.types.is_string(source)
                or pa.types.is_large_string(source)
                or (pa.types.is_string_view(source))
            ):
                return string_to_uuid(array, field_name)
        elif ext == "arrow.json":
            if source_ext == "arrow.json":
                return array
            if (
                pa.types.is_string(source)
                or pa.types.is_large_string(source)
                or (pa.types.is_string_view(source))
            ):
                return pa.ExtensionArray.from_storage(pa.json_(), array.cast(pa.string()))
        else:
            if isinstance(source, pa.BaseExtensionType):
                array = array.storage
            if pa.types.is_dictionary(array.type):
                array = array.dictionary_decode()
            if pa.types.is_timestamp(target) and pa.types.is_timestamp(array.type):
                # Naive values going into timestamptz are taken as UTC, as Arrow defines them;
                # nanoseconds are truncated to PostgreSQL's microseconds, as the server would.
                array = array.cast(pa.timestamp(array.type.unit, target.tz))
                return array.cast(target, safe=False)
            if pa.types.is_time(target) and pa.types.is_time(array.type):
                return array.cast(target, safe=False)
            return array.cast(target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise SchemaError(
            f"column {field_name!r} of type {array.type} cannot be written to a column that "
            f"takes {target}: {exc}"
        ) from None
    raise SchemaError(
        f"column {field_name!r} of type {array.type} cannot be written to a column that "
        f"takes {target}; convert it to a string first"
    )


# -- the backend ---------------------------------------------------------------------------------


class _TargetColumn:
    __slots__ = ("name", "sql_type", "ingest_type")

    def __init__(self, name: str, sql_type: str, ingest_type: pa.DataType | None) -> None:
        self.name = name
        self.sql_type = sql_type
        self.ingest_type = ingest_type


def libpq_uri(url: ParsedURL, **forced: str) -> str:
    """The libpq URI for a parsed URL, with membound's application name and connect timeout
    and the ``forced`` options over the URL's (it holds the password: never display it)."""
    from urllib.parse import quote, urlencode

    auth = ""
    if url.username:
        auth = quote(url.username, safe="")
        if url.password is not None:
            auth += ":" + quote(url.password, safe="")
        auth += "@"
    host = url.host or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{url.port}" if url.port else ""
    options = {"application_name": "membound", "connect_timeout": CONNECT_TIMEOUT_S}
    options.update(url.options)
    options.update(forced)
    return (
        f"postgresql://{auth}{host}{port}/{quote(url.database or '', safe='')}"
        f"?{urlencode(options)}"
    )


class PostgresBackend(Backend):
    """A PostgreSQL database, read by binary COPY through membound's C reader (else ADBC) and
    written by binary COPY through ADBC.

    Memory: reads hold one batch of about ``sizer.target_bytes`` at a time (ADBC sizes it in
    bytes) plus the one being decoded; writes send one batch per COPY. A backend keeps at most
    :data:`MAX_IDLE_CONNECTIONS` connections, so it may read a table and write another at once.
    Errors: unreachable server or refused login -> :class:`SourceError` naming the host; missing
    database or table -> :class:`NotFoundError`; rejected SQL -> :class:`QueryError`.
    """

    extra = "postgres"
    name = "postgresql"

    def __init__(self, url: ParsedURL, *, budget: Budget | int | str | None = None) -> None:
        super().__init__(url, budget=Budget.coerce(budget))
        # membound's C reader (postgres_native) reads what it can; ADBC's driver reads the rest
        # and writes. ADBC is loaded on first use: a read of plain types never loads it.
        self._native = postgres_native.import_native()
        self._dbapi_module: Any = None if self._native is not None else _import_dbapi()
        # Idle connections, (connection, idle since: time.monotonic()): ADBC's, the C reader's.
        self._idle: list[tuple[Any, float]] = []
        self._native_idle: list[tuple[Any, float]] = []
        self._open: list[Any] = []
        # Connect now, so a wrong URL fails where it is opened rather than at first use.
        native = self._native is not None
        self._pool(native).append((self._connect(native=native), time.monotonic()))

    @property
    def _dbapi(self) -> Any:
        """ADBC's driver behind a DB-API-like cursor, imported on first use."""
        if self._dbapi_module is None:
            self._dbapi_module = _import_dbapi()
        return self._dbapi_module

    def _pool(self, native: bool) -> list[tuple[Any, float]]:
        return self._native_idle if native else self._idle

    # connections

    @property
    def uri(self) -> str:
        """The libpq URI handed to ADBC (with the password: never display it)."""
        return libpq_uri(self.url, client_encoding="UTF8")

    def _connect(self, *, native: bool = False) -> Any:
        """A new connection: the C reader's (``native``) or ADBC's."""
        if native:
            try:
                # The C reader writes text into Arrow strings as the server sends it: UTF-8.
                conn = postgres_native.NativeConnection(
                    self._native, self.uri
                )
            except postgres_native.NativeError as exc:
                raise self._connect_error(exc) from None
        else:
            dbapi = self._dbapi
            try:
                conn = dbapi.connect(self.uri)
            except dbapi.Error as exc:
                raise self._connect_error(exc) from None
        self._open.append(conn)
        return conn

    def _connect_error(self, exc: Exception) -> Exception:
        message = _first_line(exc)
        where = f"{self.url.host or 'localhost'}:{self.url.port or 5432}"
        if _NO_DATABASE.search(str(exc)):
            return NotFoundError(
                f"database {self.url.database!r} does not exist on {where} "
                f"({self.url.display}); create it or fix the URL"
            )
        if _AUTH_FAILED.search(str(exc)):
            return SourceError(
                f"PostgreSQL at {where} refused the login ({self.url.display}): {message}; "
                "check the user name and password in the URL"
            )
        return SourceError(
            f"cannot connect to PostgreSQL at {where} ({self.url.display}): {message}; "
            "check that the server is running and the user, password and database are right"
        )

    @contextlib.contextmanager
    def _connection(self, *, native: bool = False) -> Iterator[Any]:
        """A connection for one operation (the C reader's when ``native``): pooled when it ends
        cleanly, closed when it fails."""
        if self.closed:
            raise ConfigurationError(f"{self!r} is closed")
        conn = self._checkout(native)
        try:
            yield conn
        except BaseException:
            self._discard(conn)
            raise
        try:
            conn.rollback()  # ends the read's transaction; writes have committed already
        except Exception:  # noqa: BLE001 - ADBC's or the C reader's error: not reused either way
            self._discard(conn)
            return
        idle = self._pool(native)
        if (
            len(idle) < MAX_IDLE_CONNECTIONS
            and not self.closed
            and (not native or conn.poolable)
        ):
            idle.append((conn, time.monotonic()))
        else:
            self._discard(conn)

    def _checkout(self, native: bool = False) -> Any:
        """An idle connection that still works, else a new one."""
        idle = self._pool(native)
        while idle:
            conn, since = idle.pop()
            if time.monotonic() - since < POOL_CHECK_AFTER_IDLE_S or (
                conn.alive() if native else self._alive(conn)
            ):
                return conn
            self._discard(conn)  # ended by the server meanwhile (a restart, a kill)
        return self._connect(native=native)

    def _alive(self, conn: Any) -> bool:
        try:
            cursor = conn.cursor()
            try:
                cursor.execute("SELECT 1")
                cursor.fetchone()
            finally:
                cursor.close()
            conn.rollback()
        except (self._dbapi.Error, OSError):
            return False
        return True

    def _discard(self, conn: Any) -> None:
        with contextlib.suppress(Exception):
            conn.close()
        with contextlib.suppress(ValueError):
            self._open.remove(conn)

    def close(self) -> None:
        for conn in list(self._open):
            self._discard(conn)
        self._idle.clear()
        self._native_idle.clear()
        super().close()

    def _lost(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the connection to the server is gone."""
        state = getattr(exc, "sqlstate", None) or ""
        return state.startswith(_CONNECTION_LOST_STATES) or bool(
            _CONNECTION_LOST.search(str(exc))
        )

    def _lost_error(self, exc: BaseException, doing: str) -> SourceError:
        where = f"{self.url.host or 'localhost'}:{self.url.port or 5432}"
        return SourceError(
            f"lost the connection to PostgreSQL at {where} while {doing} ({_first_line(exc)}); "
            "check that the server is up and run it again"
        )

    # reading

    def _select(self, query_or_table: str | None, params: Any) -> str:
        target = query_or_table or self.default_table
        if not target:
            raise ConfigurationError(
                f"give a table or a query, or put ?table= in the URL ({self.url.display})"
            )
        if is_query(target):
            sql = target.strip().rstrip(";")
            return render_params(sql, params) if params is not None else sql
        if params:
            raise ConfigurationError("params are only for queries, not for a table name")
        return f"SELECT * FROM {qualified(*split_table_name(target))}"

    def _describe(self, cursor: Any, sql: str, what: str) -> tuple[_ReadPlan, str]:
        try:
            adbc_schema = cursor.adbc_execute_schema(sql)
        except self._dbapi.Error as exc:
            raise self._read_error(exc, what) from None
        plan = _ReadPlan(adbc_schema)
        return plan, plan.wrap(sql, adbc_schema.names)

    def batches(
        self,
        query_or_table: str | None = None,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        budget: Budget | int | str | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Stream a table or query as Arrow batches of about the budget's batch size.

        An empty result yields one empty batch, so the consumer still learns the schema.
        """
        # Batches arrive as Arrow from the driver: no Python values are converted (only the
        # rare rounding of numeric values with more than 10 decimals does), so pandas, which
        # pyarrow imports on its first conversion, is not loaded for the baseline.
        sizer = self._budget(budget).sizer(conversion=False)
        sql = self._select(query_or_table, params)
        what = query_or_table or self.default_table or ""
        if self._native is not None and (yield from self._read_native(sql, sizer, what)):
            return
        with self._connection() as conn:
            cursor = conn.cursor(adbc_stmt_kwargs={_BATCH_HINT_OPTION: str(sizer.target_bytes)})
            reader = None
            finished = False
            try:
                plan, sql = self._describe(cursor, sql, what)
                try:
                    with interruptible(cursor.adbc_cancel):
                        cursor.execute(sql)
                    reader = cursor.fetch_record_batch()
                except self._dbapi.Error as exc:
                    raise self._read_error(exc, what) from None
                produced = False
                rows_read = 0
                while True:
                    try:
                        raw = blocking(reader.read_next_batch, cursor.adbc_cancel)
                    except StopIteration:
                        break
                    except (self._dbapi.Error, pa.ArrowException, OSError) as exc:
                        # libpq errors inside Arrow's reader come out as plain OSError.
                        if self._lost(exc):
                            raise self._lost_error(
                                exc, f"reading {what[:200]!r} after {rows_read} rows"
                            ) from None
                        raise self._read_error(exc, what) from None
                    rows_read += raw.num_rows
                    batch = plan.convert(raw)
                    sizer.observe(batch.num_rows, batch.nbytes)
                    sizer.check_memory(f"reading {what[:60]}")
                    produced = True
                    yield batch
                    del batch, raw
                if not produced:
                    yield empty_batch(plan.schema)
                finished = True
            finally:
                if reader is not None and not finished:
                    # Abandoned or failed mid-result: have the server stop the COPY now (the
                    # connection is then closed, not pooled).
                    with contextlib.suppress(Exception):
                        cursor.adbc_cancel()
                if reader is not None:
                    with contextlib.suppress(Exception):
                        reader.close()
                with contextlib.suppress(Exception):
                    cursor.close()

    def _read_native(self, sql: str, sizer: Any, what: str) -> Iterator[pa.RecordBatch]:
        """The read of :meth:`batches` through membound's C reader (:mod:`postgres_native`).
        Returns True once the result is read; None, before any batch, when a column's type is
        one the C reader does not decode (the caller reads it through ADBC)."""
        NativeError = postgres_native.NativeError  # noqa: N806
        with self._connection(native=True) as conn:
            copying = finished = False
            try:
                try:
                    # In a transaction, as on ADBC's path: the locks the description takes hold
                    # until the COPY has run, so the columns cannot change in between.
                    conn.exec("BEGIN")
                    read_plan = postgres_native.plan(self._native, conn.describe(sql))
                    if read_plan is None:
                        return None
                    with interruptible(conn.cancel):
                        conn.copy(f"COPY ({sql}) TO STDOUT (FORMAT binary)", read_plan.columns)
                except NativeError as exc:
                    raise self._read_error(exc, what) from None
                copying = True
                produced = False
                rows_read = 0
                while True:
                    try:
                        # A consumer on another thread that stops early cancels the COPY on the
                        # server (membound.prefetch), so its Ctrl-C need not wait for rows.
                        with interruptible(conn.cancel):
                            got = conn.fetch(sizer.rows_per_batch, sizer.target_bytes)
                    except NativeError as exc:
                        if exc.column >= 0:
                            raise postgres_native.value_error(exc, read_plan.schema) from None
                        if self._lost(exc):
                            raise self._lost_error(
                                exc, f"reading {what[:200]!r} after {rows_read} rows"
                            ) from None
                        raise self._read_error(exc, what) from None
                    if got is None:
                        break
                    rows, buffers = got
                    if rows == 0:
                        continue  # the COPY's end, found at the start of a fetch
                    batch = postgres_native.to_batch(rows, buffers, read_plan)
                    del buffers, got
                    rows_read += rows
                    sizer.observe(batch.num_rows, batch.nbytes)
                    sizer.check_memory(f"reading {what[:60]}")
                    produced = True
                    yield batch
                    del batch
                if not produced:
                    yield empty_batch(read_plan.schema)
                finished = True
                return True
            finally:
                if copying and not finished:
                    # Abandoned or failed mid-result: have the server stop the COPY now (the
                    # connection is then closed, not pooled).
                    with contextlib.suppress(Exception):
                        conn.cancel()

    def schema(self, query_or_table: str | None = None) -> pa.Schema:
        sql = self._select(query_or_table, None)
        if self._native is not None:
            with self._connection(native=True) as conn:
                try:
                    read_plan = postgres_native.plan(self._native, conn.describe(sql))
                except postgres_native.NativeError as exc:
                    raise self._read_error(
                        exc, query_or_table or self.default_table or ""
                    ) from None
            if read_plan is not None:
                return read_plan.schema
        with self._connection() as conn:
            cursor = conn.cursor()
            try:
                plan, _ = self._describe(cursor, sql, query_or_table or self.default_table or "")
            finally:
                cursor.close()
        return plan.schema

    def estimate_rows(self, query_or_table: str | None = None) -> int | None:
        target = query_or_table or self.default_table
        if not target or is_query(target):
            return None
        sql = (
            "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass("
            f"{text_literal(qualified(*split_table_name(target)))})"
        )
        if self._native is not None:
            try:
                with self._connection(native=True) as conn:
                    rows = conn.exec(sql)
            except postgres_native.NativeError as exc:
                raise self._read_error(exc, target) from None
        else:
            with self._connection() as conn:
                cursor = conn.cursor()
                try:
                    cursor.execute(sql)
                    rows = cursor.fetchall()
                finally:
                    cursor.close()
        value = rows[0][0] if rows else None
        return int(value) if value is not None and int(value) >= 0 else None

    def _read_error(self, exc: Exception, what: str) -> Exception:
        if self._lost(exc):
            return self._lost_error(exc, f"reading {what[:200]!r}")
        state = getattr(exc, "sqlstate", None) or ""
        message = _first_line(exc)
        if state in ("42P01", "3F000"):
            return NotFoundError(f"{message} in {self.url.display}; check the table name")
        if state == "22021" or "invalid byte sequence for encoding" in message:
            # text the server cannot send as UTF-8 (a SQL_ASCII database); ADBC's reader hands
            # it on without its SQLSTATE
            return SchemaError(
                f"{what[:200]!r} holds text that is not UTF-8 ({message}); read such a column "
                "as bytes, e.g. convert_to(column, 'SQL_ASCII') in a query"
            )
        if state.startswith(("42", "22", "0A", "21")):
            return QueryError(f"PostgreSQL rejected the query {what[:200]!r}: {message}")
        return SourceError(f"reading {what[:200]!r} from {self.url.display} failed: {message}")

    # writing

    def _table_columns(self, cursor: Any, table: str) -> list[_TargetColumn] | None:
        cursor.execute(f"SELECT to_regclass({text_literal(table)})::oid")
        row = cursor.fetchone()
        if not row or row[0] is None:
            return None
        cursor.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typname, a.atttypmod, "
            "e.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A' "
            f"WHERE a.attrelid = {int(row[0])} AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum"
        )
        return [
            _TargetColumn(name, sql_type, _ingest_type(typname, typmod, elem))
            for name, sql_type, typname, typmod, elem in cursor.fetchall()
        ]

    def write(
        self,
        table: str | None,
        batches: Iterable[pa.RecordBatch],
        *,
        mode: WriteMode = "fail",
        key: Sequence[str] | str | None = None,
        budget: Budget | int | str | None = None,
    ) -> WriteResult:
        """Write batches by binary COPY. See :meth:`Backend.write` for the modes.

        ``fail`` and ``replace`` build the table in one transaction and one COPY (``replace``
        in a table beside it, swapped in by drop + rename before the commit), so a failure leaves
        the target as it was. ``append`` and ``upsert`` commit each batch; a failure after some
        commits raises :class:`PartialWriteError` with ``rows_committed`` (and ``resume_after``
        when a key is known). Upsert merges each batch through a temporary table with
        ``INSERT ... ON CONFLICT (key) DO UPDATE``; the key needs a unique constraint, which a
        table created here gets (its primary key).
        """
        keys = check_mode(mode, key)
        name = table or self.default_table
        if not name:
            raise ConfigurationError(
                f"give a table to write to, or put ?table= in the URL ({self.url.display})"
            )
        schema_name, table_name = split_table_name(name)
        target = qualified(schema_name, table_name)
        sizer = self._budget(budget).sizer(conversion=False)  # Arrow in, COPY out
        stream = rebatch(iter(batches), sizer)
        result = WriteResult(table=name, mode=mode)
        first = next(stream, None)
        with self._connection() as conn:
            cursor = conn.cursor()
            try:
                try:
                    columns = self._table_columns(cursor, target)
                    conn.commit()
                except self._dbapi.Error as exc:
                    hint = "; check that the server is up and run it again" if self._lost(
                        exc) else ""
                    raise TargetError(
                        f"cannot write to {name!r}: {_first_line(exc)}{hint}"
                    ) from None
                if first is None:
                    first = _empty_batch(batches)
                    if first is None:
                        return result
                if columns is not None and mode == "fail":
                    raise TargetExistsError(
                        f"table {name!r} already exists in {self.url.display}; "
                        "use mode='append', 'replace' or 'upsert'"
                    )
                if mode == "upsert" and columns is None:
                    # Create it empty, with its key, then merge: a key may repeat in the data.
                    self._build(
                        conn,
                        cursor,
                        schema_name,
                        table_name,
                        first.schema,
                        (),
                        keys,
                        result,
                        replace=False,
                    )
                    columns = self._table_columns(cursor, target)
                    conn.commit()
                if columns is None or mode == "replace":
                    self._build(
                        conn,
                        cursor,
                        schema_name,
                        table_name,
                        first.schema,
                        prepend(first, stream),
                        keys,
                        result,
                        replace=columns is not None,
                    )
                else:
                    self._append(
                        conn,
                        cursor,
                        schema_name,
                        table_name,
                        columns,
                        first,
                        stream,
                        keys,
                        result,
                        upsert=mode == "upsert",
                    )
            finally:
                with contextlib.suppress(Exception):
                    cursor.close()
        return result

    def _build(
        self, conn, cursor, schema_name, table_name, schema, batches, keys, result, *, replace: bool
    ) -> None:
        """Create the table and load everything in one transaction (beside the old one if any)."""
        build_name = f"_membound_tmp_{_uuid.uuid4().hex[:12]}" if replace else table_name
        build = qualified(schema_name, build_name)
        fields = list(schema)
        if keys:
            _check_keys(keys, schema)
        columns_sql = ", ".join(f"{quote_ident(f.name)} {pg_type_for(f)}" for f in fields)
        ingest = {f.name: _create_ingest_type(f) for f in fields}
        try:
            cursor.execute(f"CREATE TABLE {build} ({columns_sql})")
            # One COPY for all batches (it all commits at once anyway): the client encodes the
            # next batch while the server stores this one; see the module docstring.
            self._ingest_stream(cursor, schema_name, build_name, batches, ingest, result)
            if keys:
                cursor.execute(
                    f"ALTER TABLE {build} ADD PRIMARY KEY ({', '.join(map(quote_ident, keys))})"
                )
            if replace:
                target = qualified(schema_name, table_name)
                cursor.execute(f"DROP TABLE {target}")
                cursor.execute(f"ALTER TABLE {build} RENAME TO {quote_ident(table_name)}")
                if keys:
                    cursor.execute(
                        f"ALTER INDEX {qualified(schema_name, build_name + '_pkey')} "
                        f"RENAME TO {quote_ident(table_name + '_pkey')}"
                    )
            conn.commit()
        except self._dbapi.Error as exc:
            with contextlib.suppress(Exception):
                conn.rollback()
            if getattr(exc, "sqlstate", None) == "42P07":
                raise TargetExistsError(
                    f"table {table_name!r} was created by someone else meanwhile"
                ) from None
            left = "the old table is unchanged" if replace else "nothing was created"
            hint = "; check that the server is up and run it again" if self._lost(exc) else ""
            raise TargetError(
                f"writing {table_name!r} failed after {result.rows} rows, {left}: "
                f"{_first_line(exc)}{hint}"
            ) from None
        except BaseException:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise
        result.created = True

    def _append(
        self,
        conn,
        cursor,
        schema_name,
        table_name,
        columns,
        first,
        stream,
        keys,
        result,
        *,
        upsert: bool,
    ) -> None:
        """Add (or merge) the batches one committed transaction at a time."""
        by_name = {c.name: c for c in columns}
        names = first.schema.names
        missing = [n for n in names if n not in by_name]
        if missing:
            raise SchemaError(
                f"column(s) {', '.join(map(repr, missing))} are not in table {table_name!r} "
                f"(it has {', '.join(by_name)})"
            )
        if keys:
            _check_keys(keys, first.schema)
        target_cols = [by_name[n] for n in names]
        staged = upsert or any(c.ingest_type is None for c in target_cols)
        stage_name = f"_membound_stage_{_uuid.uuid4().hex[:12]}"
        ingest = {c.name: c.ingest_type or pa.string() for c in target_cols}
        committed_rows = 0
        last_key: tuple[Any, ...] | None = None
        try:
            if staged:
                self._create_stage(cursor, stage_name, target_cols)
                conn.commit()
                merge = _merge_sql(
                    qualified(schema_name, table_name), stage_name, target_cols, keys, upsert
                )
            for batch in prepend(first, stream):
                if batch.schema.names != names:
                    raise SchemaError(
                        f"batch columns {batch.schema.names} differ from the first batch's {names}"
                    )
                if staged:
                    self._ingest(cursor, None, stage_name, batch, ingest, temporary=True)
                    cursor.execute(merge)
                else:
                    self._ingest(cursor, schema_name, table_name, batch, ingest)
                conn.commit()
                committed_rows += batch.num_rows
                result.add(batch)
                if keys and batch.num_rows:
                    last_key = tuple(batch.column(k)[batch.num_rows - 1].as_py() for k in keys)
        except Exception as exc:
            with contextlib.suppress(Exception):
                conn.rollback()
            is_db_error = isinstance(exc, self._dbapi.Error)
            if is_db_error and getattr(exc, "sqlstate", None) == "42P10":
                raise SchemaError(
                    f"upsert into {table_name!r} needs a unique constraint or primary key on "
                    f"({', '.join(keys or ())}); add one or use mode='append'"
                ) from None
            message = _first_line(exc) if is_db_error else f"{type(exc).__name__}: {exc}"
            if committed_rows == 0:
                if not is_db_error:
                    raise
                raise TargetError(
                    f"writing to {table_name!r} failed, nothing was committed: {message}"
                    + ("; check that the server is up and run it again" if self._lost(exc)
                       else "")
                ) from None
            raise PartialWriteError(
                f"writing to {table_name!r} failed after {committed_rows} rows were committed "
                f"in earlier batches ({message}); {resume_hint(committed_rows, keys, last_key)}",
                rows_committed=committed_rows,
                resume_after=last_key,
            ) from (None if is_db_error else exc)
        finally:
            if staged:
                with contextlib.suppress(Exception):
                    cursor.execute(f"DROP TABLE IF EXISTS pg_temp.{quote_ident(stage_name)}")
                    conn.commit()

    def _create_stage(self, cursor, stage_name, target_cols) -> None:
        # Columns the binary COPY cannot write directly (enums, inet, domains...) are staged as
        # text and cast by the INSERT ... SELECT.
        columns_sql = ", ".join(
            f"{quote_ident(c.name)} {c.sql_type if c.ingest_type is not None else 'text'}"
            for c in target_cols
        )
        cursor.execute(
            f"CREATE TEMPORARY TABLE {quote_ident(stage_name)} ({columns_sql}) "
            "ON COMMIT DELETE ROWS"
        )

    def _ingest_stream(self, cursor, schema_name, table_name, batches, ingest, result) -> None:
        """Append all ``batches`` by one binary COPY, each cast as ADBC pulls it.

        An exception raised while making a batch (a value that does not fit, the source
        failing) reaches ADBC as a failed stream; it is raised here as it was, not as ADBC's
        error about the stream.
        """
        failure: list[BaseException] = []
        schema: pa.Schema | None = None

        def cast_batches() -> Iterator[pa.RecordBatch]:
            try:
                for batch in batches:
                    data = _cast_batch(batch, ingest, schema)
                    result.add(batch)
                    del batch
                    yield data
                    del data
            except BaseException as exc:
                failure.append(exc)
                raise

        pulled = cast_batches()
        first = next(pulled, None)
        if first is None:
            return
        schema = first.schema
        reader = pa.RecordBatchReader.from_batches(schema, prepend(first, pulled))
        del first
        kwargs: dict[str, Any] = {"mode": "append"}
        if schema_name:
            kwargs["db_schema_name"] = schema_name
        try:
            cursor.adbc_ingest(table_name, reader, **kwargs)
        except BaseException:
            if failure:
                raise failure[0] from None
            raise
        finally:
            pulled.close()

    def _ingest(self, cursor, schema_name, table_name, batch, ingest, *, temporary=False) -> None:
        data = _cast_batch(batch, ingest)
        kwargs: dict[str, Any] = {"mode": "append"}
        if temporary:
            kwargs["temporary"] = True
        elif schema_name:
            kwargs["db_schema_name"] = schema_name
        cursor.adbc_ingest(table_name, data, **kwargs)


def _cast_batch(
    batch: pa.RecordBatch, ingest: dict[str, pa.DataType], schema: pa.Schema | None = None
) -> pa.RecordBatch:
    """``batch`` with each column cast to the type its target column takes (``ingest``), in
    ``schema`` (the first batch's, so that a stream keeps one schema) when given."""
    if schema is not None and batch.schema.names != schema.names:
        raise SchemaError(
            f"batch columns {batch.schema.names} differ from the first batch's {schema.names}"
        )
    arrays = [
        cast_column(batch.column(i), field.name, ingest[field.name])
        for i, field in enumerate(batch.schema)
    ]
    if schema is not None:
        return pa.RecordBatch.from_arrays(arrays, schema=schema)
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def _create_ingest_type(field: pa.Field) -> pa.DataType:
    """The Arrow type a column created by :func:`pg_type_for` takes."""
    kind = logical_type(field)
    if kind == "json":
        return pa.json_()
    if kind == "uuid":
        return pa.uuid()
    t = field.type
    if isinstance(t, pa.BaseExtensionType):
        t = t.storage_type
    if pa.types.is_dictionary(t):
        return _create_ingest_type(pa.field(field.name, t.value_type, metadata=field.metadata))
    if t == pa.uint64():
        return pa.decimal128(20, 0)
    if pa.types.is_decimal(t) and t.bit_width < 128:
        return pa.decimal128(t.precision, t.scale)
    if pa.types.is_null(t):
        return pa.string()
    if pa.types.is_date64(t):
        return pa.date32()
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_fixed_size_binary(t):
        return pa.binary()
    if pa.types.is_duration(t):
        return pa.month_day_nano_interval()
    return t


def _merge_sql(target, stage_name, columns, keys, upsert) -> str:
    names = ", ".join(quote_ident(c.name) for c in columns)
    exprs = ", ".join(
        quote_ident(c.name) if c.ingest_type is not None else f"{quote_ident(c.name)}::{c.sql_type}"
        for c in columns
    )
    stage = quote_ident(stage_name)
    if not upsert:
        return f"INSERT INTO {target} ({names}) SELECT {exprs} FROM {stage}"
    key_sql = ", ".join(map(quote_ident, keys))
    updates = [
        f"{quote_ident(c.name)} = EXCLUDED.{quote_ident(c.name)}"
        for c in columns
        if c.name not in keys
    ]
    action = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
    # The last row of a batch wins when a key repeats inside it: ON CONFLICT cannot touch a row
    # twice in one statement.
    return (
        f"INSERT INTO {target} ({names}) SELECT DISTINCT ON ({key_sql}) {exprs} FROM {stage} "
        f"ORDER BY {key_sql}, ctid DESC ON CONFLICT ({key_sql}) {action}"
    )


def resume_hint(rows: int, keys: Sequence[str] | None, last_key: tuple[Any, ...] | None) -> str:
    """What to do after a partial append: where to go on from."""
    if keys and last_key is not None:
        return (
            f"the last committed row has ({', '.join(keys)}) = {last_key!r} (resume_after): "
            "write the rows that come after it in the input with mode='append'"
        )
    return (
        f"the first {rows} rows of the input are in the table (rows_committed): skip them and "
        "write the rest with mode='append', or pass key= to get the last committed key"
    )


def _check_keys(keys: Sequence[str], schema: pa.Schema) -> None:
    missing = [k for k in keys if k not in schema.names]
    if missing:
        raise SchemaError(
            f"key column(s) {', '.join(map(repr, missing))} are not in the data "
            f"(columns: {', '.join(schema.names)})"
        )




def _empty_batch(batches: Any) -> pa.RecordBatch | None:
    schema = getattr(batches, "schema", None)
    if isinstance(schema, pa.Schema) and len(schema):
        return empty_batch(schema)
    return None


def empty_batch(schema: pa.Schema) -> pa.RecordBatch:
    """A batch of no rows that carries ``schema``."""
    return pa.RecordBatch.from_arrays([pa.nulls(0, f.type) for f in schema], schema=schema)


def _first_line(exc: Exception) -> str:
    """A driver error's message without ADBC's status prefix and the echoed query."""
    text = str(exc).split("\nQuery was:", 1)[0]
    text = re.sub(r"^[A-Z_]+: (\[libpq\] )?", "", text.strip())
    text = re.sub(r"\. SQLSTATE: \w+$", "", text)
    return " ".join(text.split())
