"""MySQL and MariaDB: unbuffered streaming reads (MariaDB Connector/Python's binary protocol when
installed, else mysqlclient, else PyMySQL), bulk writes by streamed ``LOAD DATA LOCAL INFILE``
(see :mod:`mysql_load`) or multi-row INSERTs.

Reads use an unbuffered cursor (the default cursor of every driver buffers the whole result)
with ``fetchmany`` sized from the measured width of the rows, on a connection of their own per
read for the C drivers. The reader is the first installed of:

- MariaDB Connector/Python (``mariadb``, :mod:`mysql_binary`): ``cursor(binary=True,
  buffered=False)`` runs every read as a server-side prepared statement, so the server sends
  numbers and dates in binary and the connector's C code makes Python ints, floats and str of
  them; numpy and joined buffers take those into Arrow (no ``pa.array``, so pyarrow does not
  import pandas). A table's dates are selected as integers since 1970; a query with date
  columns is read by the next reader (see ``_read_binary``).
- mysqlclient (``MySQLdb``) and PyMySQL, in the text protocol: the drivers' per-value
  converters off, values arrive as the server's text, Arrow's string builder takes each
  column's values as they are and Arrow casts whole columns at once.

``mysql+mariadbconnector://``, ``mysql+mysqlclient://`` and ``mysql+pymysql://`` URLs choose the
reader. Measured on the shared 2,000,000-row ``events`` table (local MariaDB 10.11, 2 cores
shared with other work, reading to nowhere through ``batches()`` at a 64MB budget):

    read  mysqlclient, pa.array per column (before)         6.3-10.1 s  4.2-4.3 s CPU, +pandas
    read  mysqlclient, string builder, GC paused            6.5-7.7 s   3.5-3.6 s CPU, no pandas
    server CPU for the text protocol (any text driver)      2.1-2.2 s
    server CPU for the binary protocol (ConnectorX)         1.15-1.2 s
    mariadb's fetchmany alone (Python rows, no Arrow)       4.6-4.7 s   2.95-2.97 s CPU

and another day, old and new alternating in one process, 4 runs each (medians in brackets;
"server" is mariadbd's whole CPU meanwhile, information_schema lookups included):

    read    mysqlclient, text protocol      5.9-9.6 s (6.8)   5.5-9.3 s CPU (6.5), server 4.1-6.4 s
    read    mariadb, binary (chosen)        4.0-5.8 s (5.5)   3.7-5.5 s CPU (5.4), server 3.2-4.8 s
    copy()  to Parquet, mysqlclient         6.5-10.2 s (7.6)  6.8-10.4 s CPU (7.8)
    copy()  to Parquet, mariadb (chosen)    4.2-6.1 s (5.1)   4.5-6.3 s CPU (5.5)

In the binary protocol the server formats nothing and the client parses nothing: of the
client's CPU about half is the connector's making Python values, the rest their way into Arrow
(numbers ~20-50 ns a value through numpy, text ~60-200 ns joined into one buffer) and freeing
the rows. Python datetimes would cost ~5 us each in numpy, hence dates as integers. Parallel
readers would not help: client and server fill the 2 cores. PyMySQL reads 2-3x slower than
mysqlclient (earlier measurement); through the budget's batches the read stays about 40 MB above
its start at a 64MB budget, against 544 MB with the bound lifted.

Writes into a new table (``fail``, ``replace``) or an existing one (``append``) stream
``LOAD DATA LOCAL INFILE`` when the server allows it (``@@local_infile``, MariaDB's default;
MySQL 8 turns it off): 2,000,000 ``events`` rows from Parquet in 1.08x the time of the MariaDB
CLI loading a ready TSV file (8.8 s against 8.1 s, medians of 3, docs/benchmarks.md), where
multi-row INSERTs took 2.3x (17.4 s against 7.6 s, one run). The server does the same work for
both; the difference is membound's start (imports) and the client's share of the 2 cores.
Upserts, and servers without ``local_infile``, render each batch into multi-row ``INSERT``
statements column by column with Arrow compute (escaping, quoting, NULLs) rather than value by
value in Python, each statement under the server's ``max_allowed_packet``.

Types (all readers alike): ``TINYINT(1)``/``BOOLEAN`` -> bool; ``DECIMAL(p,s)`` ->
``decimal128(p,s)`` (``decimal256`` above 38 digits); ``DATETIME``/``TIMESTAMP`` -> naive
``timestamp[us]``; ``TIME`` -> ``time64[us]`` (values outside 00:00-24:00 raise
:class:`SchemaError`); ``JSON`` -> string marked ``membound.type=json`` (MariaDB's JSON is
LONGTEXT: recognised for tables, by its ``json_valid`` check); zero dates (``0000-00-00``) read
as NULL (in the binary protocol so do dates with a zero month or day, which the text protocol
rejects with :class:`SchemaError`). MySQL has no time zone-aware
type: tz-aware timestamps are written as UTC into ``DATETIME(6)``; a table membound creates marks
such a column with the comment ``membound: UTC``, and reading that table gives it back as
``timestamp[us, UTC]`` (other DATETIME columns, and queries, read naive).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import socket
import time
import uuid as _uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from membound.backends import mysql_binary, mysql_native
from membound.backends.base import Backend, WriteMode, WriteResult, check_mode, is_query
from membound.backends.mysql_load import LoadRejected, binary_scalar, load_data, mysql_texts
from membound.backends.postgres import resume_hint
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
from membound.memory import gc_paused
from membound.prefetch import blocking
from membound.urls import ParsedURL

__all__ = ["MySQLBackend"]

JSON_METADATA = {LOGICAL_TYPE_KEY: b"json"}

# A consumer that pauses longer than net_write_timeout (60 s by default) between fetches gets its
# connection dropped by the server mid-result; give slow sinks an hour.
NET_WRITE_TIMEOUT_S = 3600
# Bytes left in max_allowed_packet for the statement's head and tail and the protocol header.
PACKET_HEADROOM = 64 * 1024
# Above this an INSERT is not faster, only a bigger string in memory.
MAX_STATEMENT_BYTES = 16 * 1024 * 1024
MAX_IDLE_CONNECTIONS = 2
# MySQL has no tz-aware type: a tz-aware column is stored as its UTC wall time in a DATETIME(6)
# with this comment, which tells a later read to give it back as timestamp[us, UTC].
UTC_COMMENT = "membound: UTC"
# A pooled connection idle longer than this is pinged (one round trip) before it is reused: the
# server may have been restarted or have ended it (wait_timeout, KILL) meanwhile. One used within
# the last second is alive with near certainty, and a loop of small queries should not pay this.
POOL_CHECK_AFTER_IDLE_S = 1.0
# Client error codes meaning the connection is gone: server gone away, lost during query, and
# the server's own "connection was killed" / shutdown codes.
CONNECTION_LOST_CODES = frozenset({2006, 2013, 2055, 1927, 1053, 4031})
# "This command is not supported in the prepared statement protocol yet".
_UNSUPPORTED_PREPARED = 1295
# The client library's "no result set" (a statement that returns no rows).
_NO_RESULT_SET = 2053
# Login refused: access denied (wrong user or password).
ACCESS_DENIED_CODES = frozenset({1044, 1045, 1698})
# Arrow memory for the read conversion and the INSERT rendering. pyarrow's default pool
# (mimalloc) keeps freed pages: rendering 3.5 MB batches left RSS 44 MB up against 9 MB with the
# C allocator, whose large blocks go back to the OS when freed.
POOL = pa.system_memory_pool()

# MySQL protocol column types (FIELD_TYPE) and flags.
_DECIMAL, _TINY, _SHORT, _LONG, _FLOAT, _DOUBLE, _NULL, _TIMESTAMP = 0, 1, 2, 3, 4, 5, 6, 7
_LONGLONG, _INT24, _DATE, _TIME, _DATETIME, _YEAR, _NEWDATE, _VARCHAR, _BIT = range(8, 17)
_JSON, _NEWDECIMAL = 245, 246
_UNSIGNED_FLAG = 32
_BINARY_CHARSET = 63
_INTEGERS = {
    (_TINY, False): pa.int8(), (_TINY, True): pa.uint8(),
    (_SHORT, False): pa.int16(), (_SHORT, True): pa.uint16(),
    (_INT24, False): pa.int32(), (_INT24, True): pa.uint32(),
    (_LONG, False): pa.int32(), (_LONG, True): pa.uint32(),
    (_LONGLONG, False): pa.int64(), (_LONGLONG, True): pa.uint64(),
}  # fmt: skip
_ZERO_DATE = re.compile(r"^0000-00-00")
_StringBuilder = pa.lib.StringBuilder


def _import_mysqldb() -> Any:
    """mysqlclient (``MySQLdb``), the optional fast read path; None when it is not installed."""
    try:
        import MySQLdb
        import MySQLdb.connections
        import MySQLdb.converters
        import MySQLdb.cursors
    except ImportError:
        return None
    return MySQLdb


def _import_pymysql() -> Any:
    try:
        import pymysql
        import pymysql.cursors
    except ImportError:
        raise MissingDriverError("pymysql", "mysql") from None
    return pymysql


def quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def split_table_name(table: str) -> tuple[str | None, str]:
    """``db.table`` -> ``("db", "table")``; backquoted parts may hold dots."""
    parts = re.findall(r"`((?:[^`]|``)*)`|([^.`]+)", table)
    names = [quoted.replace("``", "`") if quoted else plain for quoted, plain in parts]
    if not 1 <= len(names) <= 2 or not all(names):
        raise ConfigurationError(f"{table!r} is not a table name; write table or database.table")
    return (names[0], names[1]) if len(names) == 2 else (None, names[0])


def qualified(schema: str | None, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}" if schema else quote_ident(name)


# -- reading: result metadata -> Arrow, and text values -> Arrow arrays --------------------------


class _Column:
    """How one result column becomes an Arrow array."""

    __slots__ = ("name", "arrow_type", "raw_type", "convert", "is_json")

    def __init__(
        self, name: str, arrow_type: pa.DataType, raw_type: pa.DataType | None, convert=None
    ):
        self.name = name
        self.arrow_type = arrow_type
        # How the driver's values are first taken: string or binary, or None when ``convert``
        # takes the driver's Python values themselves (the binary protocol's ints, dates ...).
        self.raw_type = raw_type
        self.convert = convert  # None: an Arrow cast from raw_type
        self.is_json = False

    def field(self, json_columns: set[str]) -> pa.Field:
        if self.name in json_columns and pa.types.is_timestamp(self.arrow_type):
            self._as_utc()
        if self.is_json or self.name in json_columns and pa.types.is_string(self.arrow_type):
            return pa.field(self.name, self.arrow_type, metadata=JSON_METADATA)
        return pa.field(self.name, self.arrow_type)

    def _as_utc(self) -> None:
        """Read a DATETIME that membound wrote from a tz-aware column back as UTC."""
        if self.arrow_type.tz is not None:
            return
        naive = self.convert or (lambda a: a.cast(pa.timestamp("us"), memory_pool=POOL))
        self.arrow_type = pa.timestamp("us", tz="UTC")
        # The stored wall time is UTC: the same integers, now labelled as such.
        self.convert = lambda a: naive(a).cast(self.arrow_type, memory_pool=POOL)


# Column type codes whose values are text or bytes by the column's character set.
_STRINGISH = frozenset({_VARCHAR, 249, 250, 251, 252, 253, 254})
_BINARY_FLAG = 128
_UTF8MB4_CHARSET = 45


class _Described:
    """A mysqlclient result column in the shape of PyMySQL's field packet, for _column_for."""

    __slots__ = ("name", "type_code", "length", "scale", "flags", "charsetnr")

    def __init__(self, description: tuple, flags: int, first_value: Any) -> None:
        self.name, self.type_code, _, self.length, _, self.scale, _ = description
        self.scale = self.scale or 0
        self.flags = flags
        self.charsetnr = _UTF8MB4_CHARSET
        # The binary flag marks binary collations of text too (utf8mb4_bin, MariaDB's JSON), so
        # the values decide: mysqlclient decodes text (str) and leaves binary data as bytes. No
        # value yet: binary, which takes text later without loss.
        binary_flagged = self.type_code in _STRINGISH and flags & _BINARY_FLAG
        if binary_flagged and not isinstance(first_value, str):
            self.charsetnr = _BINARY_CHARSET


def _first_value(rows: Sequence[tuple], index: int) -> Any:
    """The first value that is not NULL in column ``index`` of ``rows``, else None."""
    return next((row[index] for row in rows if row[index] is not None), None)


def _column_for(field: Any) -> _Column:
    """A PyMySQL FieldDescriptorPacket -> how to read it."""
    code, unsigned = field.type_code, bool(field.flags & _UNSIGNED_FLAG)
    name = field.name
    text = pa.string()
    if code == _TINY and field.length == 1 and not unsigned:
        return _Column(
            name,
            pa.bool_(),
            text,
            lambda a: a.cast(pa.int8(), memory_pool=POOL).cast(pa.bool_(), memory_pool=POOL),
        )
    if (code, unsigned) in _INTEGERS:
        return _Column(name, _INTEGERS[code, unsigned], text)
    if code in (_FLOAT, _DOUBLE):
        return _Column(name, pa.float32() if code == _FLOAT else pa.float64(), text)
    if code in (_DECIMAL, _NEWDECIMAL):
        scale = field.scale
        precision = field.length - (0 if unsigned else 1) - (1 if scale > 0 else 0)
        precision = max(precision, 1)
        arrow = (
            pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)
        )
        return _Column(name, arrow, text)
    if code == _YEAR:
        return _Column(name, pa.int16(), text)
    if code in (_DATE, _NEWDATE):
        return _Column(name, pa.date32(), text, _temporal(pa.date32()))
    if code in (_DATETIME, _TIMESTAMP):
        return _Column(name, pa.timestamp("us"), text, _temporal(pa.timestamp("us")))
    if code == _TIME:
        return _Column(name, pa.time64("us"), text, lambda a: _times(a, name))
    if code == _BIT:
        return _Column(name, pa.int64(), pa.binary(), _bits)
    if code == _JSON:
        column = _Column(name, pa.string(), text)
        column.is_json = True
        return column
    if code == _NULL:
        return _Column(name, pa.null(), text, lambda a: pa.nulls(len(a)))
    if field.charsetnr == _BINARY_CHARSET:
        return _Column(name, pa.binary(), pa.binary())
    return _Column(name, pa.string(), text)


def _temporal(target: pa.DataType):
    def convert(array: pa.Array) -> pa.Array:
        try:
            return array.cast(target, memory_pool=POOL)
        except pa.ArrowInvalid:
            # Zero dates ('0000-00-00') and other values MySQL allows and nothing else does.
            cleaned = pc.if_else(
                pc.match_substring_regex(array, "^0000-00-00"), None, array, memory_pool=POOL
            )
            return cleaned.cast(target, memory_pool=POOL)

    return convert


def _times(array: pa.Array, name: str) -> pa.Array:
    values = []
    for text in array.to_pylist():
        if text is None:
            values.append(None)
            continue
        try:
            values.append(_dt.time.fromisoformat(text))
        except ValueError:
            raise SchemaError(
                f"column {name!r} holds TIME {text!r}, outside a time of day; "
                f"cast it in the query, e.g. TIME_TO_SEC({name})"
            ) from None
    return pa.array(values, pa.time64("us"), memory_pool=POOL)


def _bits(array: pa.Array) -> pa.Array:
    return pa.array(
        [None if b is None else int.from_bytes(b, "big") for b in array.to_pylist()], pa.int64()
    )


def _raw_array(values: Sequence[Any], raw_type: pa.DataType, *, text: bool) -> pa.Array:
    """The driver's values (str, bytes or None) as a string or binary array.

    Through Arrow's string builder, which copies the values' bytes as they are: measured 3x
    faster than ``pa.array`` on 20,000 values, and it does not make pyarrow import pandas (~40
    MB), which ``pa.array`` on a list does. The bytes are the server's (numbers as ASCII text,
    text as UTF-8 that the driver decoded), and the casts after this parse what they need.
    """
    builder = _StringBuilder(POOL)
    builder.append_values(values)
    array = builder.finish()
    if raw_type != pa.string():
        return array.view(raw_type)
    # The builder does not check UTF-8. Text the driver decoded (str) is valid; a driver gives
    # one Python type per column, so bytes in a column kept as ``text`` are checked, all of
    # them (numbers, dates and the like are parsed by their cast, which rejects them anyway).
    if text and not isinstance(next((v for v in values if v is not None), ""), str):
        array.validate(full=True)
    return array


def _columns_of(rows: Sequence[tuple], columns: list[_Column]) -> list[pa.Array]:
    """Row tuples -> one Arrow array per column.

    Call it with the cyclic collector paused (as :meth:`MySQLBackend._fetched` does from the
    fetch until the rows are freed): the transposed columns are thousands of new containers
    with no cycles, and collections triggered by them cost more than the transposing.
    """
    return [
        _to_array(values, column)
        for values, column in zip(zip(*rows, strict=True), columns, strict=True)
    ]


def _to_array(values: Sequence[Any], column: _Column) -> pa.Array:
    try:
        if column.raw_type is None:  # the binary protocol's typed values (see mysql_binary)
            return column.convert(values)
        raw = _raw_array(values, column.raw_type, text=pa.types.is_string(column.arrow_type))
        if column.convert is not None:
            return column.convert(raw)
        return (
            raw
            if column.raw_type == column.arrow_type
            else raw.cast(column.arrow_type, memory_pool=POOL)
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SchemaError(
            f"column {column.name!r} holds a value that does not fit {column.arrow_type}: {exc}"
        ) from None


# -- writing: Arrow columns -> SQL literals, vectorised ------------------------------------------


def mysql_type_for(field: pa.Field, *, key: bool = False) -> str:
    """The MySQL column type that holds ``field``'s values; key columns get indexable types."""
    t = field.type
    ext = getattr(t, "extension_name", None)
    mark = (field.metadata or {}).get(LOGICAL_TYPE_KEY)
    if ext == "arrow.json" or mark == b"json":
        return "JSON"
    if ext == "arrow.uuid" or mark == b"uuid" or t == pa.binary(16):
        return "CHAR(36) CHARACTER SET ascii"
    if isinstance(t, pa.BaseExtensionType):
        return mysql_type_for(pa.field(field.name, t.storage_type), key=key)
    if pa.types.is_dictionary(t):
        return mysql_type_for(pa.field(field.name, t.value_type), key=key)
    simple = {
        pa.int8(): "TINYINT", pa.int16(): "SMALLINT", pa.int32(): "INT", pa.int64(): "BIGINT",
        pa.uint8(): "TINYINT UNSIGNED", pa.uint16(): "SMALLINT UNSIGNED",
        pa.uint32(): "INT UNSIGNED", pa.uint64(): "BIGINT UNSIGNED", pa.float16(): "FLOAT",
        pa.float32(): "FLOAT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN",
        pa.date32(): "DATE", pa.date64(): "DATE", pa.null(): "LONGTEXT",
    }  # fmt: skip
    if t in simple:
        return simple[t]
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "VARCHAR(255)" if key else "LONGTEXT"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return "VARBINARY(255)" if key else "LONGBLOB"
    if pa.types.is_fixed_size_binary(t):
        return f"BINARY({t.byte_width})"
    if pa.types.is_decimal(t):
        if t.precision > 65 or t.scale > 30:
            raise SchemaError(
                f"column {field.name!r} is {t}; MySQL's DECIMAL holds at most 65 digits, 30 "
                "after the point: cast it to a string or a smaller decimal first"
            )
        return f"DECIMAL({t.precision},{t.scale})"
    if pa.types.is_timestamp(t):
        return "DATETIME(6)"
    if pa.types.is_time(t):
        return "TIME(6)"
    if (
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_struct(t)
        or (pa.types.is_map(t) or pa.types.is_fixed_size_list(t))
    ):
        return "JSON"
    raise SchemaError(f"column {field.name!r} has Arrow type {t}, which MySQL has no type for")


def _quote(text: pa.Array, backslash_escapes: bool) -> pa.Array:
    """Escape and quote a string or binary array as SQL literals, as binary (NULLs stay null)."""
    text = text.cast(pa.binary(), memory_pool=POOL)  # zero-copy for strings
    if backslash_escapes:
        text = pc.replace_substring(text, "\\", "\\\\", memory_pool=POOL)
        text = pc.replace_substring(text, "'", "\\'", memory_pool=POOL)
        text = pc.replace_substring(text, "\x00", "\\0", memory_pool=POOL)
    else:
        text = pc.replace_substring(text, "'", "''", memory_pool=POOL)
    return pc.binary_join_element_wise(_QUOTE, text, _QUOTE, _NOTHING, memory_pool=POOL)


# The INSERT text's fixed pieces as Arrow scalars (Python bytes given to Arrow compute would be
# converted by pa.scalar, which makes pyarrow import pandas).
_QUOTE, _NOTHING, _BINARY_PREFIX = (
    binary_scalar(b"'"),
    binary_scalar(b""),
    binary_scalar(b"_binary"),
)
_NULL_LITERAL, _OPEN, _COMMA, _CLOSE = (binary_scalar(b) for b in (b"NULL", b"(", b",", b"),"))


def literals(array: pa.Array, field: pa.Field, backslash_escapes: bool) -> pa.Array:
    """One column as an array of SQL literal texts (binary), ``NULL`` for nulls."""
    kind, values = mysql_texts(array, field, POOL)
    if kind == "null":
        return pa.repeat(_NULL_LITERAL, len(values))
    if kind in ("plain", "text"):
        values = _quote(values, backslash_escapes)
    elif kind == "binary":
        if pa.types.is_binary_view(values.type):  # LOAD DATA takes it; INSERTs never did
            raise SchemaError(
                f"column {field.name!r} has Arrow type {values.type}, which MySQL has no type for"
            )
        quoted = _quote(values, backslash_escapes)
        values = pc.binary_join_element_wise(_BINARY_PREFIX, quoted, _NOTHING, memory_pool=POOL)
    return pc.coalesce(values.cast(pa.binary(), memory_pool=POOL), _NULL_LITERAL, memory_pool=POOL)


def _is_tz_timestamp(t: pa.DataType) -> bool:
    if isinstance(t, pa.BaseExtensionType):
        t = t.storage_type
    return pa.types.is_timestamp(t) and t.tz is not None


def _values_rows(batch: pa.RecordBatch, backslash_escapes: bool) -> pa.Array:
    """``(v1,v2,...),`` per row, as one binary array."""
    parts: list[Any] = [_OPEN]
    for i, field in enumerate(batch.schema):
        if i:
            parts.append(_COMMA)
        parts.append(literals(batch.column(i), field, backslash_escapes))
    parts.extend([_CLOSE, _NOTHING])
    return pc.binary_join_element_wise(*parts, memory_pool=POOL)


def _joined(rows: pa.Array) -> memoryview:
    """The concatenation of a binary array's values (no nulls), without its last byte (a comma).

    A binary array's data buffer already holds its values back to back: no copy, no Python loop.
    """
    offsets = pa.Array.from_buffers(
        pa.int32(), len(rows) + 1, [None, rows.buffers()[1]], offset=rows.offset
    )
    first, last = offsets[0].as_py(), offsets[len(rows)].as_py()
    return memoryview(rows.buffers()[2])[first : last - 1]


# -- the backend ---------------------------------------------------------------------------------


class MySQLBackend(Backend):
    """A MySQL or MariaDB database through PyMySQL, read through the fastest reader installed
    (see the module docstring).

    Memory: reads hold one ``fetchmany`` of rows as Python values plus its Arrow form; writes one
    batch and its text (LOAD DATA's rows or INSERT statements). A read that is abandoned closes
    its connection instead of reading the rest of the result (MySQL has no way to stop sending
    it).
    Errors: unreachable server or refused login -> :class:`SourceError` naming the host; unknown
    database or table -> :class:`NotFoundError`; rejected SQL -> :class:`QueryError`.
    """

    # Rows arrive as Python values, but are taken into Arrow by its string builder or numpy
    # (see _raw_array and mysql_binary), which do not make pyarrow import pandas; only TIME and
    # BIT columns read through the text protocol, and nested columns written, go through
    # pa.array (copy() notes the import if it happens).
    converts_python_values = False

    extra = "mysql"
    name = "mysql"

    def __init__(self, url: ParsedURL, *, budget: Budget | int | str | None = None) -> None:
        super().__init__(url, budget=Budget.coerce(budget))
        self._pymysql = _import_pymysql()
        # Reads go through MariaDB Connector/Python's binary protocol when it is installed, else
        # mysqlclient (2-3x faster than PyMySQL), else PyMySQL (see the module docstring); the
        # URL's driver may choose one: mysql+mariadbconnector://, mysql+mysqlclient://,
        # mysql+pymysql://. mysqlclient (or PyMySQL) also reads the queries whose dates the
        # binary protocol cannot take (see _read_binary).
        driver = url.scheme.partition("+")[2]
        # membound's own C reader (mysql_native) reads whatever the URL names no driver for.
        self._native = mysql_native.import_native() if not driver else None
        self._mariadb = None
        if driver not in ("pymysql", "mysqlclient"):
            self._mariadb = mysql_binary.import_mariadb()
            if self._mariadb is None and driver == "mariadbconnector":
                raise MissingDriverError("mariadb", "mysql-fast")
        self._mysqldb = None if driver == "pymysql" else _import_mysqldb()
        if self._mysqldb is None and driver == "mysqlclient":
            raise MissingDriverError("MySQLdb", "mysql-fast")
        self._idle: list[tuple[Any, float]] = []  # (connection, idle since: time.monotonic())
        self._open: list[Any] = []
        conn = self._connect()
        self._idle.append((conn, time.monotonic()))
        with conn.cursor(self._pymysql.cursors.Cursor) as cursor:
            cursor.execute("SELECT @@max_allowed_packet, @@sql_mode, @@local_infile")
            packet, sql_mode, local_infile = cursor.fetchone()
        self.max_allowed_packet = int(packet)
        self.backslash_escapes = "NO_BACKSLASH_ESCAPES" not in str(sql_mode)
        # Bulk writes stream LOAD DATA LOCAL when the server allows it (MariaDB does by default,
        # MySQL 8 does not), else multi-row INSERTs. Upserts are always INSERTs.
        self.load_data = bool(int(local_infile or 0))

    @property
    def _where(self) -> str:
        return f"{self.url.host or 'localhost'}:{self.url.port or 3306}"

    def _connect(self) -> Any:
        pymysql = self._pymysql
        url = self.url
        # No decoders: values come back as the server's text, and Arrow casts whole columns.
        conv = {k: v for k, v in pymysql.converters.conversions.items() if not isinstance(k, int)}
        options = dict(url.options)
        try:
            conn = pymysql.connect(
                host=url.host or "localhost",
                port=url.port or 3306,
                user=url.username or "root",
                password=url.password or "",
                database=url.database,
                charset=options.pop("charset", "utf8mb4"),
                conv=conv,
                autocommit=False,
                connect_timeout=int(options.pop("connect_timeout", 10)),
                init_command=f"SET SESSION net_write_timeout = {NET_WRITE_TIMEOUT_S}",
                # Tells the server that this client can send LOAD DATA LOCAL data ...
                local_infile=True,
            )
        except pymysql.err.MySQLError as exc:
            raise self._connect_error(exc) from None
        # ... but only mysql_load sends any, and only for its own statements: PyMySQL's handler,
        # which opens whatever file the server names, stays off (see mysql_load's docstring).
        conn._local_infile = False
        self._open.append(conn)
        return conn

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        if self.closed:
            raise ConfigurationError(f"{self!r} is closed")
        conn = self._checkout()
        try:
            yield conn
        except BaseException:
            self._discard(conn)
            raise
        try:
            conn.rollback()
        except self._pymysql.err.MySQLError:
            self._discard(conn)
            return
        if len(self._idle) < MAX_IDLE_CONNECTIONS and not self.closed:
            self._idle.append((conn, time.monotonic()))
        else:
            self._discard(conn)

    def _checkout(self) -> Any:
        """An idle connection that still works, else a new one."""
        while self._idle:
            conn, since = self._idle.pop()
            if time.monotonic() - since < POOL_CHECK_AFTER_IDLE_S:
                return conn
            try:
                conn.ping(reconnect=False)
            except (self._pymysql.err.MySQLError, OSError):
                self._discard(conn)  # ended by the server meanwhile (a restart, a KILL)
                continue
            return conn
        return self._connect()

    def _lost(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the connection to the server is gone."""
        return _code(exc) in CONNECTION_LOST_CODES

    def _lost_hint(self, exc: BaseException) -> str:
        return "; check that the server is up and run it again" if self._lost(exc) else ""

    def _connect_fast(self) -> Any:
        """A mysqlclient connection for one read (values as the server's text, as for PyMySQL)."""
        mysqldb = self._mysqldb
        options = dict(self.url.options)
        conv = {k: v for k, v in mysqldb.converters.conversions.items() if not isinstance(k, int)}
        return self._connect_reader(
            mysqldb.connect, mysqldb.MySQLError, options,
            charset=options.pop("charset", "utf8mb4"), conv=conv,
        )

    def _connect_binary(self) -> Any:
        """A MariaDB Connector/Python connection for one binary-protocol read (always utf8mb4:
        the connector takes no character set)."""
        return self._connect_reader(
            self._mariadb.connect, self._mariadb.Error, dict(self.url.options)
        )

    def _connect_reader(self, connect, errors, options: dict[str, str], **extra: Any) -> Any:
        """A connection of its own for one read through ``connect`` (mysqlclient's or the
        MariaDB connector's), tracked for :meth:`close`; ``errors`` are the driver's."""
        url = self.url
        try:
            conn = connect(
                host=url.host or "localhost",
                port=url.port or 3306,
                user=url.username or "root",
                password=url.password or "",
                database=url.database or "",
                autocommit=False,
                connect_timeout=int(options.pop("connect_timeout", 10)),
                init_command=f"SET SESSION net_write_timeout = {NET_WRITE_TIMEOUT_S}",
                **extra,
            )
        except errors as exc:
            raise SourceError(
                f"cannot connect to MySQL at {self._where} ({url.display}): {_message(exc)}; "
                "check that the server is running and the user, password and database are right"
            ) from None
        self._open.append(conn)
        return conn

    def _discard(self, conn: Any) -> None:
        fileno = None
        if self._mysqldb is not None and isinstance(conn, self._mysqldb.connections.Connection):
            fileno = conn.fileno
        elif self._mariadb is not None and isinstance(conn, self._mariadb.connections.Connection):
            fileno = conn._get_socket  # the public .socket wraps the descriptor without a dup
        if fileno is not None:
            # An unfinished unbuffered result: libmariadb would read it all to the end (possibly
            # gigabytes) when the result or connection is closed; shutting the socket first
            # stops the server sending it.
            with contextlib.suppress(Exception):
                duplicate = socket.socket(fileno=os.dup(fileno()))
                try:
                    duplicate.shutdown(socket.SHUT_RDWR)
                finally:
                    duplicate.close()
        result = getattr(conn, "_result", None)
        if result is not None and hasattr(result, "unbuffered_active"):
            # An unfinished unbuffered result: closing the socket stops the server sending it;
            # PyMySQL would otherwise read it all to the end (possibly gigabytes) first.
            result.unbuffered_active = False
        with contextlib.suppress(Exception):
            conn.close()
        with contextlib.suppress(ValueError):
            self._open.remove(conn)

    def close(self) -> None:
        for conn in list(self._open):
            self._discard(conn)
        self._idle.clear()
        super().close()

    # reading

    def _select(self, query_or_table: str | None) -> tuple[str, str | None]:
        target = query_or_table or self.default_table
        if not target:
            raise ConfigurationError(
                f"give a table or a query, or put ?table= in the URL ({self.url.display})"
            )
        if is_query(target):
            return target.strip().rstrip(";"), None
        return f"SELECT * FROM {qualified(*split_table_name(target))}", target

    def _json_columns(self, cursor: Any, table: str) -> set[str]:
        """Columns of ``table`` holding JSON (MySQL's JSON type, MariaDB's json_valid check),
        and the DATETIME columns membound created for tz-aware timestamps (their comment)."""
        schema, name = split_table_name(table)
        cursor.execute(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = "
            "COALESCE(%s, DATABASE()) AND TABLE_NAME = %s AND (DATA_TYPE = 'json' OR "
            "(DATA_TYPE IN ('datetime', 'timestamp') AND COLUMN_COMMENT = %s))",
            (schema, name, UTC_COMMENT),
        )
        found = {row[0] for row in cursor.fetchall()}
        with contextlib.suppress(self._pymysql.err.MySQLError):
            cursor.execute(
                "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS WHERE "
                "CONSTRAINT_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s",
                (schema, name),
            )
            for (clause,) in cursor.fetchall():
                match = re.fullmatch(r"json_valid\(`((?:[^`]|``)+)`\)", str(clause).strip())
                if match:
                    found.add(match.group(1).replace("``", "`"))
        return found

    def batches(
        self,
        query_or_table: str | None = None,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        budget: Budget | int | str | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Stream a table or query through an unbuffered cursor, in byte-sized Arrow batches.

        An empty result yields one empty batch, so the consumer still learns the schema.
        """
        sizer = self._budget(budget).sizer(conversion=False)
        sql, table = self._select(query_or_table)
        what = query_or_table or self.default_table or ""
        json_columns: set[str] | None = None
        guarded: dict[str, pa.DataType] = {}
        if self._native is not None:
            native_sql = sql
            if table is not None or params is not None:
                with self._connection() as conn, conn.cursor(self._pymysql.cursors.Cursor) as meta:
                    if table is not None:
                        json_columns = self._json_columns(meta, table)
                    if params is not None:
                        native_sql = self._literal_sql(meta, sql, params)
            read = self._read_native(native_sql, json_columns or set(), sizer, what)
            if (yield from read) is not None:
                return
            # The server could not prepare it: the next reader, with the columns known.
        if table is not None and (self._mariadb is not None or self._mysqldb is not None):
            with self._connection() as conn, conn.cursor(self._pymysql.cursors.Cursor) as meta:
                if json_columns is None:
                    json_columns = self._json_columns(meta, table)
                if self._mariadb is not None:
                    sql, guarded = self._guarded_select(meta, table, sql)
        json_columns = json_columns or set()
        if self._mariadb is not None:
            yield from self._read_binary(sql, params, json_columns, guarded, sizer, what)
            return
        yield from self._read_text(sql, params, table, json_columns, sizer, what)

    def _read_text(self, sql, params, table, json_columns, sizer, what) -> Iterator[pa.RecordBatch]:
        """The read of :meth:`batches` in the text protocol: mysqlclient, else PyMySQL."""
        if self._mysqldb is not None:
            yield from self._read_fast(sql, params, json_columns, sizer, what)
            return
        with self._connection() as conn:
            if table is not None:
                with conn.cursor(self._pymysql.cursors.Cursor) as meta:
                    json_columns = self._json_columns(meta, table)
            cursor = conn.cursor(self._pymysql.cursors.SSCursor)
            try:
                cursor.execute(sql, params)
            except self._pymysql.err.MySQLError as exc:
                raise self._read_error(exc, what) from None
            columns = [_column_for(f) for f in cursor._result.fields]
            errors = self._pymysql.err.MySQLError
            yield from self._fetched(cursor, errors, lambda _: columns, json_columns, sizer, what)

    def _guarded_select(
        self, cursor: Any, table: str, sql: str
    ) -> tuple[str, dict[str, pa.DataType]]:
        """``SELECT * FROM table`` with its date columns (if any) read as integers (see
        :func:`mysql_binary.as_epoch_integer`), and those columns' Arrow types by name."""
        schema, name = split_table_name(table)
        cursor.execute(
            "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = "
            "COALESCE(%s, DATABASE()) AND TABLE_NAME = %s AND EXTRA NOT LIKE '%%INVISIBLE%%' "
            "ORDER BY ORDINAL_POSITION",
            (schema, name),
        )
        columns = [(str(n), str(t).lower()) for n, t in cursor.fetchall()]
        epoch_types = mysql_binary.EPOCH_TYPES
        dates = {n: epoch_types[t] for n, t in columns if t in epoch_types}
        if not dates:
            return sql, {}
        listed = ", ".join(
            mysql_binary.as_epoch_integer(quote_ident(n), t) if n in dates else quote_ident(n)
            for n, t in columns
        )
        return f"SELECT {listed} FROM {qualified(schema, name)}", dates

    @staticmethod
    def _literal_sql(cursor: Any, sql: str, params: Any) -> str:
        """``sql`` with its parameters rendered as literals by PyMySQL (``mogrify``: what PyMySQL
        sends for the same call, escaped for the server's ``NO_BACKSLASH_ESCAPES`` mode), for the
        C reader, which prepares statements without parameters."""
        mysql_binary.qmark(sql, params)  # membound's errors for a wrong count or a missing name
        return cursor.mogrify(sql, params)

    def _read_native(self, sql, json_columns, sizer, what):
        """The read of :meth:`batches` through membound's C reader (:mod:`mysql_native`), on a
        connection of its own that is closed at the end. Returns True once the result is read;
        None, before any batch, when the server cannot prepare the statement (the caller reads
        it another way)."""
        native = self._native
        url = self.url
        options = dict(url.options)
        try:
            reader = native.Reader(
                url.host or "localhost", url.username or "root", url.password or "",
                url.database or None, url.port or 3306, options.pop("unix_socket", None),
                connect_timeout=int(options.pop("connect_timeout", 10)),
                init_command=f"SET SESSION net_write_timeout = {NET_WRITE_TIMEOUT_S}",
            )
        except native.Error as exc:
            raise self._connect_error(exc) from None
        self._open.append(reader)

        def cancel() -> None:
            thread_id = reader.thread_id  # None once the reader is closed
            if thread_id is not None:
                self._kill_query(thread_id)

        try:
            try:
                blocking(lambda: reader.execute(sql), cancel)
            except native.Error as exc:
                if _code(exc) == _UNSUPPORTED_PREPARED:
                    return None
                if _code(exc) == _NO_RESULT_SET:
                    raise QueryError(
                        f"{what[:200]!r} returns no rows; read a SELECT (or another statement "
                        "with a result)"
                    ) from None
                raise self._read_error(exc, what) from None
            fields = [mysql_native.NativeField(f) for f in reader.fields]
            columns = [_column_for(f) for f in fields]
            schema = pa.schema([c.field(json_columns) for c in columns])
            converters = [
                mysql_native.converter(native, f, t, POOL)
                for f, t in zip(fields, schema.types, strict=True)
            ]
            produced = False
            while True:
                try:
                    got = blocking(
                        lambda: reader.fetch(sizer.rows_per_batch, sizer.target_bytes), cancel
                    )
                except native.Error as exc:
                    raise self._read_error(exc, what) from None
                if got is None:
                    break
                rows, buffers = got
                if rows == 0 and produced:
                    continue
                arrays = mysql_native.to_arrays(
                    rows, buffers, converters, schema.names, schema.types
                )
                del buffers, got
                batch = _measured(arrays, schema, sizer, what)
                del arrays
                produced = True
                yield batch
                del batch
            return True
        finally:
            self._discard(reader)

    def _kill_query(self, thread_id: int) -> None:
        """Stop the statement of connection ``thread_id`` on the server (``KILL QUERY``), from a
        connection of its own: may be called from any thread while a read blocks."""
        conn = self._connect()
        try:
            with conn.cursor() as cursor:
                cursor.execute(f"KILL QUERY {int(thread_id)}")
        finally:
            self._discard(conn)

    def _connect_error(self, exc: Exception) -> Exception:
        """A driver's failure to connect, as membound's error."""
        url = self.url
        code = _code(exc)
        if code == 1049:
            return NotFoundError(
                f"database {url.database!r} does not exist on {self._where} "
                f"({url.display}); create it or fix the URL"
            )
        if code in ACCESS_DENIED_CODES:
            return SourceError(
                f"MySQL at {self._where} refused the login ({url.display}): {_message(exc)}; "
                "check the user name and password in the URL, and the user's grants"
            )
        return SourceError(
            f"cannot connect to MySQL at {self._where} ({url.display}): {_message(exc)}; "
            "check that the server is running and the user, password and database are right"
        )

    def _read_binary(
        self, sql, params, json_columns, guarded, sizer, what
    ) -> Iterator[pa.RecordBatch]:
        """The read of :meth:`batches` in the binary protocol, through MariaDB Connector/Python's
        unbuffered cursor (a prepared statement), on a connection of its own that is closed at
        the end (never pooled: a read may be abandoned).

        ``guarded`` are a table's date columns, selected as integers (their Arrow types by name).
        A result with other date columns (a query's) is read again through the text protocol,
        which reads zero dates as NULL where the connector fails; the binary read is dropped
        before its first row.
        """
        mariadb = self._mariadb
        conn = self._connect_binary()
        dates: list[str] = []
        try:
            cursor = conn.cursor(binary=True, buffered=False)
            try:
                cursor.execute(*mysql_binary.qmark(sql, params))
            except mariadb.Error as exc:
                raise self._read_error(exc, what) from None
            fields = mysql_binary.describe(cursor)
            dates = [f.name for f in fields if f.type_code in mysql_binary.DATE_TYPE_CODES]
            if not dates:
                columns = [self._binary_column(f, guarded) for f in fields]
                fetcher = mysql_binary.Fetcher(cursor, lambda: self._statement_error(conn), dates)
                errors = (mariadb.Error, mysql_binary.StatementError)
                typed = lambda _: columns  # noqa: E731
                yield from self._fetched(fetcher, errors, typed, json_columns, sizer, what)
                return
        finally:
            self._discard(conn)
        yield from self._read_text(sql, params, None, json_columns, sizer, what)

    @staticmethod
    def _binary_column(field: Any, epoch_types: dict[str, pa.DataType]) -> _Column:
        if field.name in epoch_types:
            arrow_type = epoch_types[field.name]
            convert = mysql_binary.epoch_converter(arrow_type, field.name)
            return _Column(field.name, arrow_type, None, convert)
        column = _column_for(field)
        convert = mysql_binary.values_converter(
            column.arrow_type, field.type_code, field.name, POOL
        )
        if convert is not None:
            column.raw_type, column.convert = None, convert
        return column

    @staticmethod
    def _statement_error(conn: Any) -> None:
        """Raise the error the finished statement on ``conn`` ended with, if any: the connector
        reports such a result as complete (see mysql_binary)."""
        cursor = conn.cursor()
        try:
            cursor.execute("SHOW ERRORS LIMIT 1")
            found = cursor.fetchall()
        finally:
            cursor.close()
        if found:
            _level, code, message = found[0]
            raise mysql_binary.StatementError(int(code), str(message))

    def _read_fast(self, sql, params, json_columns, sizer, what) -> Iterator[pa.RecordBatch]:
        """The read of :meth:`batches` through mysqlclient's unbuffered cursor, on a connection
        of its own that is closed at the end (never pooled: a read may be abandoned)."""
        mysqldb = self._mysqldb
        conn = self._connect_fast()
        try:
            cursor = conn.cursor(mysqldb.cursors.SSCursor)
            try:
                cursor.execute(sql, params)
            except mysqldb.MySQLError as exc:
                raise self._read_error(exc, what) from None

            def typed(rows: Sequence[tuple]) -> list[_Column]:
                # Typed from the first rows: see _Described.
                described = zip(
                    cursor.description or (), cursor.description_flags or (), strict=True
                )
                return [
                    _column_for(_Described(d, flags, _first_value(rows, i)))
                    for i, (d, flags) in enumerate(described)
                ]

            yield from self._fetched(cursor, mysqldb.MySQLError, typed, json_columns, sizer, what)
        finally:
            self._discard(conn)

    def _fetched(
        self, cursor, errors, typed, json_columns, sizer, what
    ) -> Iterator[pa.RecordBatch]:
        """The batches of an executed unbuffered ``cursor``'s result, one empty batch for an empty
        result; ``errors`` are the driver's, ``typed(rows)`` gives the columns from the first
        rows fetched. The cursor is closed once its result is read to the end, not before (a
        PyMySQL cursor would read the rest of the result)."""
        columns: list[_Column] | None = None
        schema = pa.schema([])
        produced = False
        finished = False
        try:
            while True:
                # The collector stays paused until the row tuples are gone: resumed while they
                # were alive, its next young collection traversed every one of them and moved
                # them on to the older generations (2M rows of events from MariaDB: 6% of the
                # copy's CPU in the collector).
                with gc_paused():
                    try:
                        rows = cursor.fetchmany(sizer.rows_per_batch)
                    except errors as exc:
                        raise self._read_error(exc, what) from None
                    if columns is None:
                        columns = typed(rows)
                        schema = pa.schema([c.field(json_columns) for c in columns])
                    if not rows:
                        break
                    arrays = _columns_of(rows, columns)
                    del rows
                batch = _measured(arrays, schema, sizer, what)
                del arrays
                produced = True
                yield batch
                del batch
            finished = True
            if not produced:
                yield pa.RecordBatch.from_arrays(
                    [pa.nulls(0, f.type) for f in schema], schema=schema
                )
        finally:
            if finished:
                with contextlib.suppress(Exception):
                    cursor.close()

    def schema(self, query_or_table: str | None = None) -> pa.Schema:
        sql, table = self._select(query_or_table)
        probe = f"SELECT * FROM ({sql}) AS _membound_q LIMIT 0"
        with self._connection() as conn, conn.cursor(self._pymysql.cursors.Cursor) as cursor:
            json_columns = self._json_columns(cursor, table) if table else set()
            try:
                cursor.execute(probe)
            except self._pymysql.err.MySQLError as exc:
                raise self._read_error(exc, query_or_table or "") from None
            columns = [_column_for(f) for f in cursor._result.fields]
        return pa.schema([c.field(json_columns) for c in columns])

    def estimate_rows(self, query_or_table: str | None = None) -> int | None:
        target = query_or_table or self.default_table
        if not target or is_query(target):
            return None
        schema, name = split_table_name(target)
        with self._connection() as conn, conn.cursor(self._pymysql.cursors.Cursor) as cursor:
            cursor.execute(
                "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = "
                "COALESCE(%s, DATABASE()) AND TABLE_NAME = %s",
                (schema, name),
            )
            row = cursor.fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def _read_error(self, exc: Exception, what: str) -> Exception:
        code = _code(exc)
        message = _message(exc)
        if code in (1146, 1049):
            return NotFoundError(f"{message} in {self.url.display}; check the table name")
        programming = (
            (self._pymysql.err.ProgrammingError,)
            + ((self._mysqldb.ProgrammingError,) if self._mysqldb else ())
            + ((self._mariadb.ProgrammingError,) if self._mariadb else ())
        )
        if isinstance(exc, programming) or code in (1054, 1064, 1305):
            return QueryError(f"MySQL rejected the query {what[:200]!r}: {message}")
        if self._lost(exc):
            return SourceError(
                f"lost the connection to MySQL at {self._where} while reading {what[:200]!r} "
                f"({message}); check that the server is up and run it again"
            )
        return SourceError(f"reading {what[:200]!r} from {self.url.display} failed: {message}")

    # writing

    def _table_columns(self, cursor: Any, table: str) -> list[str] | None:
        schema, name = split_table_name(table)
        cursor.execute(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = "
            "COALESCE(%s, DATABASE()) AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
            (schema, name),
        )
        names = [row[0] for row in cursor.fetchall()]
        return names or None

    def write(
        self,
        table: str | None,
        batches: Iterable[pa.RecordBatch],
        *,
        mode: WriteMode = "fail",
        key: Sequence[str] | str | None = None,
        budget: Budget | int | str | None = None,
    ) -> WriteResult:
        """Write batches by streamed LOAD DATA LOCAL (multi-row INSERTs for upserts and for
        servers without ``local_infile``).

        ``fail`` and ``replace`` load a new table beside the target (``_membound_tmp_...``), in
        one LOAD DATA statement for the whole stream, and rename it into place at the end
        (``RENAME TABLE`` swaps atomically), so a failure leaves the target as it was.
        ``append`` and ``upsert`` (``ON DUPLICATE KEY UPDATE``) commit each batch; a failure
        after some commits raises :class:`PartialWriteError`. A value the server would truncate
        or a duplicate key fails the write as in strict mode, although LOAD DATA LOCAL only
        warns about them (see :mod:`membound.backends.mysql_load`).
        """
        keys = check_mode(mode, key)
        name = table or self.default_table
        if not name:
            raise ConfigurationError(
                f"give a table to write to, or put ?table= in the URL ({self.url.display})"
            )
        schema_name, table_name = split_table_name(name)
        sizer = self._budget(budget).sizer(conversion=False)
        stream = rebatch(iter(batches), sizer)
        result = WriteResult(table=name, mode=mode)
        first = next(stream, None)
        if first is None:
            schema = getattr(batches, "schema", None)
            if not isinstance(schema, pa.Schema) or not len(schema):
                return result
            first = pa.RecordBatch.from_arrays([pa.nulls(0, f.type) for f in schema], schema=schema)
        if keys:
            missing = [k for k in keys if k not in first.schema.names]
            if missing:
                raise SchemaError(
                    f"key column(s) {', '.join(map(repr, missing))} are not in the data "
                    f"(columns: {', '.join(first.schema.names)})"
                )
        with self._connection() as conn, conn.cursor(self._pymysql.cursors.Cursor) as cursor:
            try:
                columns = self._table_columns(cursor, name)
            except self._pymysql.err.MySQLError as exc:
                raise TargetError(
                    f"cannot write to {name!r}: {_message(exc)}{self._lost_hint(exc)}"
                ) from None
            if columns is not None and mode == "fail":
                raise TargetExistsError(
                    f"table {name!r} already exists in {self.url.display}; "
                    "use mode='append', 'replace' or 'upsert'"
                )
            if mode == "upsert" and columns is None:
                self._create(cursor, qualified(schema_name, table_name), first.schema, keys)
                result.created = True
                columns = first.schema.names
            if columns is None or mode == "replace":
                self._build(
                    conn,
                    cursor,
                    schema_name,
                    table_name,
                    first,
                    stream,
                    keys,
                    result,
                    replace=columns is not None,
                )
            else:
                missing = [n for n in first.schema.names if n not in columns]
                if missing:
                    raise SchemaError(
                        f"column(s) {', '.join(map(repr, missing))} are not in table {name!r} "
                        f"(it has {', '.join(columns)})"
                    )
                self._append(
                    conn,
                    qualified(schema_name, table_name),
                    first,
                    stream,
                    keys,
                    result,
                    upsert=mode == "upsert",
                )
        return result

    def _create(self, cursor: Any, target: str, schema: pa.Schema, keys) -> None:
        key_set = set(keys or ())
        columns = [
            f"{quote_ident(f.name)} {mysql_type_for(f, key=f.name in key_set)}"
            + (" NOT NULL" if f.name in key_set else "")
            + (f" COMMENT '{UTC_COMMENT}'" if _is_tz_timestamp(f.type) else "")
            for f in schema
        ]
        if keys:
            columns.append(f"PRIMARY KEY ({', '.join(map(quote_ident, keys))})")
        cursor.execute(f"CREATE TABLE {target} ({', '.join(columns)}) DEFAULT CHARSET=utf8mb4")

    def _insert(self, conn: Any, target: str, batch: pa.RecordBatch, upsert_keys) -> None:
        """Send one batch as INSERT statements, each under max_allowed_packet."""
        names = ", ".join(quote_ident(n) for n in batch.schema.names)
        head = f"INSERT INTO {target} ({names}) VALUES ".encode()
        tail = b""
        if upsert_keys is not None:
            updates = [
                f"{quote_ident(n)} = VALUES({quote_ident(n)})"
                for n in batch.schema.names
                if n not in upsert_keys
            ] or [f"{quote_ident(upsert_keys[0])} = {quote_ident(upsert_keys[0])}"]
            tail = (" ON DUPLICATE KEY UPDATE " + ", ".join(updates)).encode()
        if not batch.num_rows:
            return
        rows = _values_rows(batch, self.backslash_escapes)
        limit = min(MAX_STATEMENT_BYTES, self.max_allowed_packet - PACKET_HEADROOM)
        pending = [rows]
        while pending:
            part = pending.pop()
            size = pc.sum(pc.binary_length(part)).as_py()
            if size > limit and len(part) > 1:
                half = len(part) // 2
                pending.extend([part.slice(half), part.slice(0, half)])
                continue
            if size > limit:
                raise SchemaError(
                    f"a row of {size} bytes does not fit the server's max_allowed_packet "
                    f"({self.max_allowed_packet}); raise it on the server"
                )
            conn.query(b"".join((head, _joined(part), tail)))

    def _load(self, conn: Any, target: str, names, batches, on_sent=None) -> None:
        """Stream ``batches`` into ``target`` by LOAD DATA LOCAL (see mysql_load); uncommitted.

        Rows the server skipped or loaded with warnings raise the driver's error for the first
        warning's code, as the same rows sent by INSERT in strict mode would.
        """
        try:
            load_data(
                conn,
                target,
                [quote_ident(n) for n in names],
                (batch for batch in batches if batch.num_rows),
                backslash_escapes=self.backslash_escapes,
                max_allowed_packet=self.max_allowed_packet,
                pool=POOL,
                on_sent=on_sent,
            )
        except LoadRejected as exc:
            code, text = exc.args
            error = self._pymysql.err.error_map.get(code, self._pymysql.err.DataError)
            raise error(code, text) from None

    def _build(
        self, conn, cursor, schema_name, table_name, first, stream, keys, result, *, replace: bool
    ) -> None:
        build_name = f"_membound_tmp_{_uuid.uuid4().hex[:12]}"
        build = qualified(schema_name, build_name)
        target = qualified(schema_name, table_name)
        MySQLError = self._pymysql.err.MySQLError  # noqa: N806
        try:
            self._create(cursor, build, first.schema, keys)
            if self.load_data:
                # One statement for the whole stream: the server loads rows as they arrive.
                self._load(conn, build, first.schema.names, prepend(first, stream), result.add)
                conn.commit()
            else:
                for batch in prepend(first, stream):
                    self._insert(conn, build, batch, None)
                    conn.commit()
                    result.add(batch)
            if replace:
                old = qualified(schema_name, f"_membound_old_{_uuid.uuid4().hex[:12]}")
                cursor.execute(f"RENAME TABLE {target} TO {old}, {build} TO {target}")
                cursor.execute(f"DROP TABLE {old}")
            else:
                cursor.execute(f"RENAME TABLE {build} TO {target}")
        except BaseException as exc:
            with contextlib.suppress(Exception):
                conn.rollback()
            self._drop_build(cursor, build)
            if isinstance(exc, MySQLError):
                if exc.args and exc.args[0] == 1050:
                    raise TargetExistsError(
                        f"table {table_name!r} was created by someone else meanwhile"
                    ) from None
                left = "the old table is unchanged" if replace else "nothing was created"
                raise TargetError(
                    f"writing {table_name!r} failed after {result.rows} rows, {left}: "
                    f"{_message(exc)}{self._lost_hint(exc)}"
                ) from None
            raise
        result.created = True

    def _drop_build(self, cursor: Any, build: str) -> None:
        """Drop a half-built table, on a new connection when the failure took the old one."""
        try:
            cursor.execute(f"DROP TABLE IF EXISTS {build}")
            return
        except Exception:  # noqa: BLE001 (the write's own error is the one to report)
            pass
        with contextlib.suppress(Exception):
            conn = self._connect()
            try:
                with conn.cursor(self._pymysql.cursors.Cursor) as fresh:
                    fresh.execute(f"DROP TABLE IF EXISTS {build}")
            finally:
                self._discard(conn)

    def _append(self, conn, target, first, stream, keys, result, *, upsert: bool) -> None:
        names = first.schema.names
        committed = 0
        last_key: tuple[Any, ...] | None = None
        try:
            for batch in prepend(first, stream):
                if batch.schema.names != names:
                    raise SchemaError(
                        f"batch columns {batch.schema.names} differ from the first batch's {names}"
                    )
                if self.load_data and not upsert:
                    self._load(conn, target, names, [batch])
                else:
                    self._insert(conn, target, batch, keys if upsert else None)
                conn.commit()
                committed += batch.num_rows
                result.add(batch)
                if keys and batch.num_rows:
                    last_key = tuple(batch.column(k)[batch.num_rows - 1].as_py() for k in keys)
        except Exception as exc:
            with contextlib.suppress(Exception):
                conn.rollback()
            is_db_error = isinstance(exc, self._pymysql.err.MySQLError)
            message = _message(exc) if is_db_error else f"{type(exc).__name__}: {exc}"
            if committed == 0:
                if not is_db_error:
                    raise
                raise TargetError(
                    f"writing to {target} failed, nothing was committed: {message}"
                    f"{self._lost_hint(exc)}"
                ) from None
            raise PartialWriteError(
                f"writing to {target} failed after {committed} rows were committed in earlier "
                f"batches ({message}); {resume_hint(committed, keys, last_key)}",
                rows_committed=committed,
                resume_after=last_key,
            ) from (None if is_db_error else exc)


def _measured(arrays: list[pa.Array], schema: pa.Schema, sizer: Any, what: str) -> pa.RecordBatch:
    """One read batch, its size told to the sizer and the budget checked."""
    batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
    sizer.observe(batch.num_rows, batch.nbytes)
    sizer.check_memory(f"reading {what[:60]}")
    return batch


def _code(exc: BaseException) -> Any:
    """The server's or client library's error number of a driver's exception."""
    errno = getattr(exc, "errno", None)
    if type(exc).__module__.startswith("mariadb") and isinstance(errno, int):
        return errno  # MariaDB Connector/Python: args are (message,)
    return exc.args[0] if getattr(exc, "args", None) else None


def _message(exc: Exception) -> str:
    if len(exc.args) >= 2 and isinstance(exc.args[1], str):
        return f"({exc.args[0]}) {exc.args[1]}"
    code = _code(exc)
    if isinstance(code, int) and code and exc.args and isinstance(exc.args[0], str):
        return f"({code}) {exc.args[0]}"
    return str(exc)
