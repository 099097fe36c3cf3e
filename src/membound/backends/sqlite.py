"""SQLite through the standard library's ``sqlite3``: byte-sized reads, short-transaction writes.

Reading never calls ``fetchall``: rows are stepped one at a time and cut into batches by their
*measured* size. SQLite itself reports each row's width (a ``length()`` sum computed in C next
to the row), so a run of 100-byte rows makes batches of tens of thousands of rows and a run of
20 MB values makes batches of one row.

Values larger than :data:`LARGE_VALUE_SHARE` of the budget are fetched separately when reading a
rowid table: the query returns NULL in their place and the value is then read through SQLite's
incremental blob I/O, in :data:`BLOB_CHUNK` pieces, straight into an Arrow buffer, so the
process never holds SQLite's copy, a Python copy and an Arrow copy of it at once. Writing
streams large BLOB values the same way (``zeroblob`` placeholder, then chunked blob writes).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from membound.backends.base import Backend, WriteMode, WriteResult, check_mode, is_query
from membound.batching import (
    LOGICAL_TYPE_KEY,
    PY_ROW_OVERHEAD,
    PY_VALUE_OVERHEAD,
    batch_nbytes,
    from_column_buffers,
    infer_type,
    prepend,
)
from membound.budget import BatchSizer, Budget
from membound.errors import (
    ConfigurationError,
    NotFoundError,
    PartialWriteError,
    QueryError,
    SchemaError,
    SourceError,
    TargetError,
    TargetExistsError,
)
from membound.memory import gc_paused, trim
from membound.prefetch import ordered_parallel

__all__ = ["SQLiteBackend", "arrow_type_to_sqlite", "quote_identifier"]

# A value above this share of the budget is read/written through incremental blob I/O instead of
# as one Python object: SQLite, Python and Arrow would otherwise each hold a copy at once.
LARGE_VALUE_SHARE = 1 / 16
# Lower bound for the large-value threshold: below this, blob I/O costs more than it saves.
MIN_LARGE_VALUE = 256 * 1024
# Piece size for incremental blob I/O: big enough to amortise the call, small against any budget.
BLOB_CHUNK = 1024 * 1024
# The fast path (ADBC's C reader) cuts batches by row count, so its row count and the size at
# which a value is fetched separately are chosen together: rows x text/blob columns x that size
# never exceeds the batch target, whatever the data (see _fast_plan).
FAST_MIN_ROWS = 64
FAST_MAX_ROWS = 65_536
# Headroom over the widest text/blob value seen in the sample, so ordinary variation in the
# rest of the table stays on the fast path (a wider value costs a restart, not the fast path).
FAST_WIDTH_HEADROOM = 2
# Rows sampled to measure value widths before the fast path starts.
FAST_SAMPLE_ROWS = 2_000
# After this many restarts around held-back values, if they come more often than one per
# FAST_ROWS_PER_RESTART rows, the row-by-row path reads the rest: a restart costs a new
# statement, and rows that come one at a time are what that path is for.
FAST_MAX_RESTARTS = 100
FAST_ROWS_PER_RESTART = 10_000
# ADBC batches below this share of the batch target are merged (copied) into one; larger ones
# pass as they come. On the events table ADBC's batches are ~0.4 of the target: merging them
# copied every byte once more (+0.1 s CPU and ~100k page faults per 2M rows).
FAST_MERGE_BELOW = 1 / 4
# Large rowid tables are read by up to this many ADBC readers at once, each over its own rowid
# ranges, on the cores the caller's thread (which writes, in a copy) leaves free: one core for
# the consumer, the rest for readers. On two cores that is one reader: with the writer on the
# other core, a second reader made a 2M-row events copy no faster (1.09-1.15 s against
# 1.07-1.09 s) and doubled its peak (43 MB above start against 22 MB at 64MB). Each reader cuts
# batches at the full batch target, so every reader past the first costs about that much peak.
PARALLEL_READERS = 2
# A reader's range holds about this many of its batches. Batches are handed over in rowid
# order, one queued per reader, so a reader whose range is not being consumed waits after one
# batch: with ranges of eight batches two readers mostly took turns (2M rows of events read in
# 0.88-0.97 s by two readers, 1.11-1.15 s by one), with ranges of one batch they alternate
# batch by batch (0.72-0.74 s). A range's statement costs nothing measurable (ADBC alone: 0.51 s
# for 2M rows over 2 or 226 ranges on two threads).
SEGMENT_BATCHES = 1
MAX_SEGMENTS = 4096
# The C reader (membound._sqlitearrow) cuts batches at the batch target in bytes, and at most
# this many rows (a batch of numbers alone is 8 bytes a value: the row count must bound it).
NATIVE_MAX_ROWS = 262_144
# SQLite refuses text/blob values longer than the reader's limit before loading them (see
# _native_run); the limit never goes below this, so ordinary short values never restart it.
NATIVE_MIN_VALUE = 4096
# SQLite's page cache is memory too: each connection gets this share of the budget instead of
# SQLite's default 2 MB, and at least 256 KiB (below that, scans re-read internal pages).
PAGE_CACHE_SHARE = 1 / 64
MIN_PAGE_CACHE = 256 * 1024
# Prefix of tables built aside by "replace" and "fail" writes before the atomic rename.
TEMP_PREFIX = "_membound_tmp_"

_WIDTH_COLUMN = "__membound_width"
_BIG_COLUMN = "__membound_big"
_ROWID_COLUMN = "__membound_rowid"
_DECIMAL_RE = re.compile(r"^DECIMAL TEXT\((\d+),\s*(\d+)\)$", re.IGNORECASE)


class _Rest(NamedTuple):
    """The part of a rowid range a parallel reader left to the caller's thread."""

    after: int | None
    until: int | None


def quote_identifier(name: str) -> str:
    """Quote a table or column name for SQLite."""
    return '"' + name.replace('"', '""') + '"'


def arrow_type_to_sqlite(arrow_type: pa.DataType) -> str:
    """The declared SQLite type that keeps an Arrow type readable back as the same type."""
    if pa.types.is_boolean(arrow_type):
        return "BOOLEAN"
    if pa.types.is_integer(arrow_type):
        return "INTEGER"
    if pa.types.is_floating(arrow_type):
        return "REAL"
    if pa.types.is_decimal(arrow_type):
        # TEXT affinity keeps every digit; NUMERIC affinity would round through a double.
        return f"DECIMAL TEXT({arrow_type.precision}, {arrow_type.scale})"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "TEXT"
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return "BLOB"
    if pa.types.is_fixed_size_binary(arrow_type):
        return "BLOB"
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMPTZ" if arrow_type.tz else "TIMESTAMP"
    if pa.types.is_date(arrow_type):
        return "DATE"
    if pa.types.is_time(arrow_type):
        return "TIME"
    if pa.types.is_null(arrow_type):
        return "TEXT"
    if pa.types.is_list(arrow_type) or pa.types.is_struct(arrow_type) or pa.types.is_map(
        arrow_type
    ):
        return "JSON"
    if pa.types.is_dictionary(arrow_type):
        return arrow_type_to_sqlite(arrow_type.value_type)
    raise SchemaError(f"Arrow type {arrow_type} has no SQLite equivalent; cast it first")


def _declared_to_arrow(declared: str) -> pa.DataType | None:
    """Arrow type for a declared SQLite column type, or None to infer it from the values."""
    decl = declared.upper().strip()
    match = _DECIMAL_RE.match(decl)
    if match:
        return pa.decimal128(int(match.group(1)), int(match.group(2)))
    if decl in ("BOOLEAN", "BOOL"):
        return pa.bool_()
    if decl == "TIMESTAMPTZ":
        return pa.timestamp("us", tz="UTC")
    if decl == "TIMESTAMP":
        return pa.timestamp("us")
    if decl == "DATE":
        return pa.date32()
    # SQLite's own affinity rules, in its order (https://sqlite.org/datatype3.html 3.1).
    if "INT" in decl:
        return pa.int64()
    if any(word in decl for word in ("CHAR", "CLOB", "TEXT")) or decl == "JSON":
        return pa.string()
    if decl == "BLOB":
        return pa.binary()
    if any(word in decl for word in ("REAL", "FLOA", "DOUB")):
        return pa.float64()
    return None


def _field(name: str, arrow_type: pa.DataType, declared: str) -> pa.Field:
    """A column's field; a text column declared JSON carries the JSON mark, so a database that
    has a JSON type (PostgreSQL's jsonb) gets one back."""
    if declared.upper().strip() == "JSON" and pa.types.is_string(arrow_type):
        return pa.field(name, arrow_type, metadata={LOGICAL_TYPE_KEY: b"json"})
    return pa.field(name, arrow_type)


def _is_temporal_or_exact(arrow_type: pa.DataType) -> bool:
    return (
        pa.types.is_timestamp(arrow_type)
        or pa.types.is_date(arrow_type)
        or pa.types.is_decimal(arrow_type)
    )


class SQLiteBackend(Backend):
    """``sqlite:///relative.db``, ``sqlite:////abs/path.db``, or a path ending in .db/.sqlite.

    Reads stream in byte-sized batches; writes run one short transaction per batch. Opening
    for reading never creates a file: a missing database is a :class:`NotFoundError`.
    """

    name = "sqlite"

    def __init__(self, url, *, budget: Budget | None = None) -> None:
        super().__init__(url, budget=budget)
        self.path = url.path or ":memory:"
        self._conn: sqlite3.Connection | None = None
        self._writable = False

    # -- connections ---------------------------------------------------------------------------

    def _connect(self, *, write: bool) -> sqlite3.Connection:
        if self._conn is not None and (self._writable or not write):
            return self._conn
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        memory = self.path == ":memory:"
        if not write and not memory and not os.path.exists(self.path):
            raise NotFoundError(
                f"SQLite database {self.path!r} does not exist; check the path (relative paths "
                "are resolved from the current directory: sqlite:///rel.db, sqlite:////abs.db)"
            )
        if write and not memory:
            parent = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(parent):
                raise TargetError(
                    f"cannot create SQLite database {self.path!r}: directory {parent!r} "
                    "does not exist"
                )
        try:
            if memory:
                conn = sqlite3.connect(":memory:", isolation_level=None,
                                       check_same_thread=False)
            else:
                mode = "rwc" if write else "ro"
                uri = "file:" + _uri_path(self.path) + f"?mode={mode}"
                # A copy reads on a prefetch thread; the connection is never used by two
                # threads at once, which is all sqlite3's same-thread check guards against.
                conn = sqlite3.connect(uri, uri=True, isolation_level=None,
                                       check_same_thread=False)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            conn.execute(f"PRAGMA cache_size = -{self._page_cache_kib()}")
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(Exception):
                conn.close()
            raise SourceError(
                f"{self.path!r} cannot be opened as a SQLite database ({exc}); is it one?"
            ) from None
        self._conn = conn
        self._writable = write
        return conn

    def _page_cache_kib(self) -> int:
        return max(MIN_PAGE_CACHE, int(self.budget.max_memory * PAGE_CACHE_SHARE)) // 1024

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        super().close()

    # -- metadata ------------------------------------------------------------------------------

    def tables(self) -> list[str]:
        conn = self._connect(write=False)
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
            "AND name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
        return [name for (name,) in rows]

    def _table_info(self, table: str) -> list[tuple[str, str, bool]]:
        """``(name, declared type, declared NOT NULL)`` per column; NotFoundError if none."""
        conn = self._connect(write=False)
        info = conn.execute(f"PRAGMA table_info({quote_identifier(table)})").fetchall()
        if not info:
            tables = ", ".join(self.tables()) or "none"
            raise NotFoundError(
                f"no table {table!r} in SQLite database {self.path!r} (tables: {tables})"
            )
        return [(row[1], row[2] or "", bool(row[3])) for row in info]

    def _has_rowid(self, table: str) -> bool:
        conn = self._connect(write=False)
        try:
            conn.execute(f"SELECT rowid FROM {quote_identifier(table)} LIMIT 0")
        except sqlite3.OperationalError:
            return False
        return bool(
            conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
            ).fetchone()
        )

    def _resolve(self, query_or_table: str | None) -> str:
        target = query_or_table or self.default_table
        if target:
            return target
        tables = self.tables()
        if len(tables) == 1:
            return tables[0]
        raise ConfigurationError(
            f"name a table (--table / ?table=) or a query (--query) to read from {self.path!r}; "
            f"its tables: {', '.join(tables) or 'none'}"
        )

    def schema(self, query_or_table: str | None = None) -> pa.Schema:
        target = self._resolve(query_or_table)
        if is_query(target):
            batches = self.batches(target)
            try:
                first = next(batches, None)
            finally:
                batches.close()
            if first is None:
                names = self._query_columns(target, None)
                return pa.schema([(name, pa.string()) for name in names])
            return first.schema
        return pa.schema(
            [_field(name, _declared_to_arrow(decl) or pa.string(), decl) for name, decl, _ in
             self._table_info(target)]
        )

    def estimate_rows(self, query_or_table: str | None = None) -> int | None:
        target = self._resolve(query_or_table)
        if is_query(target):
            return None
        conn = self._connect(write=False)
        self._table_info(target)
        # max(rowid) is an index lookup; count(*) would scan the whole table.
        with contextlib.suppress(sqlite3.OperationalError):
            (rows,) = conn.execute(
                f"SELECT max(rowid) FROM {quote_identifier(target)}"
            ).fetchone()
            return int(rows or 0)
        return None

    # -- reading -------------------------------------------------------------------------------

    def _query_columns(self, query: str, params: Any) -> list[str]:
        conn = self._connect(write=False)
        try:
            cur = conn.execute(f"SELECT * FROM ({_strip_sql(query)}) LIMIT 0", params or ())
        except sqlite3.Error as exc:
            raise QueryError(f"SQLite rejected the query: {exc}") from None
        names = [d[0] for d in cur.description]
        cur.close()
        return names

    def batches(
        self,
        query_or_table: str | None = None,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        budget: Budget | int | str | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Stream a table or query as Arrow batches sized in bytes from the budget.

        A query's column types come from its first rows (SQLite has no result types); a later
        value of another type raises :class:`SchemaError` naming the column. Raises
        :class:`NotFoundError` for a missing database or table, :class:`QueryError` for SQL
        SQLite rejects.
        """
        budget = self._budget(budget)
        target = self._resolve(query_or_table)
        if is_query(target):
            return self._query_batches(target, params, budget)
        if params:
            raise ConfigurationError("params are for queries; a table read takes none")
        return self._table_batches(target, budget)

    def _table_batches(self, table: str, budget: Budget) -> Iterator[pa.RecordBatch]:
        info = self._table_info(table)
        declared = {name: _declared_to_arrow(decl) for name, decl, _ in info}
        # Typeless columns: look at their first non-null value now (cheap: stops at the first
        # hit), so a column that starts with NULLs still gets its real type.
        conn = self._connect(write=False)
        qtable = quote_identifier(table)
        for name, arrow_type in declared.items():
            if arrow_type is None:
                row = conn.execute(
                    f"SELECT {quote_identifier(name)} FROM {qtable} "
                    f"WHERE {quote_identifier(name)} IS NOT NULL LIMIT 1"
                ).fetchone()
                declared[name] = infer_type([row[0]]) if row else pa.string()
        schema = pa.schema([_field(name, declared[name], decl) for name, decl, _ in info])
        has_rowid = self._has_rowid(table)
        if has_rowid and self.path != ":memory:":
            kinds = _native_kinds(schema)
            if kinds is not None:
                return self._native_table_batches(table, schema, budget, kinds)
            if _adbc_sqlite() is not None:
                not_null = frozenset(i for i, (_, _, not_null) in enumerate(info) if not_null)
                return self._fast_table_batches(table, schema, budget, not_null)
        return self._slow_table_batches(table, schema, budget, has_rowid=has_rowid)

    def _slow_table_batches(
        self, table: str, schema: pa.Schema, budget: Budget, *, has_rowid: bool,
        after_rowid: int | None = None, until_rowid: int | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Row-by-row reading through ``sqlite3``, cut by each row's width measured in C."""
        names = schema.names
        qtable = quote_identifier(table)
        limit = max(MIN_LARGE_VALUE, int(budget.max_memory * LARGE_VALUE_SHARE))
        guarded = [
            i for i, field in enumerate(schema)
            if (pa.types.is_string(field.type) or pa.types.is_binary(field.type))
        ] if has_rowid else []
        select = []
        for i, name in enumerate(names):
            q = quote_identifier(name)
            if i in guarded:
                select.append(f"CASE WHEN length({q}) > {limit} THEN NULL ELSE {q} END")
            else:
                select.append(q)
        width = " + ".join(
            f"coalesce(min(length({quote_identifier(n)}), {limit}), 0)" for n in names
        ) or "0"
        # coalesce: one NULL term would make the whole mask NULL and lose the large value.
        big = " + ".join(
            f"coalesce(length({quote_identifier(names[i])}) > {limit}, 0) * {1 << k}"
            for k, i in enumerate(guarded)
        ) or "0"
        rowid = "rowid, " if guarded else ""
        where = ""
        if after_rowid is not None:
            where = f" WHERE rowid > {int(after_rowid)}"
            if until_rowid is not None:
                where += f" AND rowid <= {int(until_rowid)}"
            where += " ORDER BY rowid"
        sql = (
            f"SELECT {rowid}{', '.join(select)}, {width} AS {_WIDTH_COLUMN}, "
            f"{big} AS {_BIG_COLUMN} FROM {qtable}{where}"
        )
        return self._stream(
            sql, (), schema, budget, table=table, guarded=guarded, has_rowid=bool(guarded)
        )

    def _fast_table_batches(
        self, table: str, schema: pa.Schema, budget: Budget,
        declared_not_null: frozenset[int] = frozenset(),
    ) -> Iterator[pa.RecordBatch]:
        """Read a rowid table through ADBC's C reader; large values by the row-by-row path.

        ADBC cuts batches by row count, so the row count and the size above which a text/blob
        value is held back are chosen together: rows x text/blob columns x that size never
        exceeds the batch target, whatever the table holds. A held-back value's row is read by
        the row-by-row path (blob I/O), then ADBC resumes after it, with a wider limit when the
        value was only moderately wide.
        """
        names = schema.names
        sizer = budget.sizer(conversion=False)
        readers = _readers()
        guarded = [i for i, f in enumerate(schema)
                   if pa.types.is_string(f.type) or pa.types.is_binary(f.type)]
        not_null = declared_not_null.intersection(guarded)
        widths = self._widest_values(
            [names[i] for i in guarded],
            f"(SELECT * FROM {quote_identifier(table)} LIMIT {FAST_SAMPLE_ROWS})",
        )
        widths = [FAST_WIDTH_HEADROOM * w for w in widths]
        if readers > 1 and not self._wal_mode():
            rows, _ = self._fast_plan(sizer.target_bytes, widths)
            segments = self._rowid_segments(table, rows * SEGMENT_BATCHES)
            if len(segments) > 1:
                return self._parallel_stream(
                    table, schema, budget, guarded, widths, segments, readers, not_null
                )
        return self._fast_stream(table, schema, budget, sizer, guarded, widths,
                                 not_null=not_null)

    def _native_table_batches(
        self, table: str, schema: pa.Schema, budget: Budget, kinds: list[int]
    ) -> Iterator[pa.RecordBatch]:
        """Read a rowid table through membound's C reader (on parallel readers over rowid
        ranges where the cores allow it); large values by the row-by-row path."""
        sizer = budget.sizer(conversion=False)
        readers = _readers()
        if readers > 1 and not self._wal_mode():
            rows = min(NATIVE_MAX_ROWS, sizer.target_bytes // _native_row_bytes(kinds))
            segments = self._rowid_segments(table, max(1, rows) * SEGMENT_BATCHES)
            if len(segments) > 1:
                return self._parallel_stream(table, schema, budget, [], [], segments, readers,
                                             kinds=kinds)
        return self._native_stream(table, schema, budget, sizer, kinds)

    def _wal_mode(self) -> bool:
        row = self._connect(write=False).execute("PRAGMA journal_mode").fetchone()
        return bool(row) and str(row[0]).lower() == "wal"

    def _rowid_segments(
        self, table: str, rows_per_segment: int
    ) -> list[tuple[int | None, int | None]]:
        """The table's rowid span cut into ``(after, until]`` ranges of about
        ``rows_per_segment`` rowids (open at both ends); none when it is smaller than two.

        From min/max(rowid), two b-tree lookups: no count(*). Sparse rowids give ranges with
        fewer rows, which costs balance between the readers, never memory.
        """
        # Two subqueries: SQLite answers a lone min() or max() from the b-tree's ends, but
        # min() and max() in one SELECT scan the whole table (measured: 0.23-0.8 s for 2M rows).
        qtable = quote_identifier(table)
        row = (
            self._connect(write=False)
            .execute(f"SELECT (SELECT min(rowid) FROM {qtable}), (SELECT max(rowid) FROM {qtable})")
            .fetchone()
        )
        if row is None or row[0] is None:
            return []
        low, high = int(row[0]), int(row[1])
        span = high - low + 1
        count = min(MAX_SEGMENTS, span // max(1, rows_per_segment))
        if count < 2:
            return []
        edges = [low - 1 + span * i // count for i in range(1, count)]
        return list(zip([None, *edges], [*edges, None], strict=True))

    def _parallel_stream(
        self,
        table: str,
        schema: pa.Schema,
        budget: Budget,
        guarded: Sequence[int],
        widths: list[int],
        segments: list[tuple[int | None, int | None]],
        readers: int,
        not_null: frozenset[int] = frozenset(),
        kinds: list[int] | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """The fast path over rowid ranges on ``readers`` threads, batches in rowid order
        (through the C reader when ``kinds`` are given, else ADBC's).

        Readers only run ADBC's reader. A range that meets a held-back value or a column of
        mixed types is handed back at that row and finished here, on the caller's thread, by
        :meth:`_fast_stream`: large values are read one at a time, never by two threads.

        The whole read is one snapshot: a read transaction on this backend's connection holds
        SQLite's shared lock, so no writer can commit until the readers are done (as during
        one long statement). WAL databases, where readers do not block writers and each
        reader would see its own snapshot, are read by one reader instead.
        """
        conn = self._connect(write=False)
        qtable = quote_identifier(table)

        def read(segment: tuple[int | None, int | None]) -> Iterator[Any]:
            after, until = segment
            sizer = budget.sizer(conversion=False)
            if kinds is not None:
                status, last_rowid, _ = yield from self._native_run(
                    table, schema, kinds, sizer, after, until
                )
                if status != "end":
                    yield _Rest(last_rowid if last_rowid is not None else after, until)
                return
            rows, limits = self._fast_plan(sizer.target_bytes, widths)
            pending: list[pa.RecordBatch] = []
            status, last_rowid, _ = (
                yield from self._fast_run(
                    self._fast_sql(table, schema, guarded, limits, after, until, not_null),
                    rows,
                    schema,
                    sizer,
                    pending,
                    not_null,
                )
            )[:3]
            if pending:
                yield self._observed(_concat(pending), sizer)
            if status != "end":
                yield _Rest(last_rowid if last_rowid is not None else after, until)

        conn.execute("BEGIN")
        try:
            conn.execute(f"SELECT 1 FROM {qtable} LIMIT 1").fetchall()  # takes the shared lock
            for item in ordered_parallel(segments, read, workers=readers):
                if isinstance(item, _Rest) and kinds is not None:
                    yield from self._native_stream(
                        table, schema, budget, budget.sizer(conversion=False), kinds,
                        after=item.after, until=item.until,
                    )
                elif isinstance(item, _Rest):
                    yield from self._fast_stream(
                        table,
                        schema,
                        budget,
                        budget.sizer(conversion=False),
                        guarded,
                        list(widths),
                        after=item.after,
                        until=item.until,
                        not_null=not_null,
                    )
                else:
                    yield item
                del item
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("COMMIT")

    def _widest_values(self, columns: Sequence[str], source: str) -> list[int]:
        """Bytes of the widest value of each of ``columns`` in ``source`` (table or subquery)."""
        if not columns:
            return []
        widest = ", ".join(
            f"max(coalesce(length(CAST({quote_identifier(n)} AS BLOB)), 0))" for n in columns
        )
        row = self._connect(write=False).execute(f"SELECT {widest} FROM {source}").fetchone()
        return [value or 0 for value in row]

    @staticmethod
    def _fast_plan(target: int, widths: Sequence[int]) -> tuple[int, list[int]]:
        """Rows per ADBC batch and each text/blob column's held-back size.

        Each column may hold up to its expected width (at least 16 bytes); the row count is
        what the sum of those widths allows in the target, so rows x sum(limits) <= target
        always holds. Slack left by the row-count bounds is shared out to the columns. When
        even the fewest rows do not leave room for every column's width (one column's values
        run to megabytes), the widest columns are capped, all at one size, and the narrow ones
        keep their widths: otherwise a column of short names would be capped at a byte and
        every row held back.
        """
        if not widths:
            return FAST_MAX_ROWS, []
        expected = [max(16, width) for width in widths]
        rows = max(FAST_MIN_ROWS, min(FAST_MAX_ROWS, target // sum(expected)))
        per_row = target / rows
        if sum(expected) <= per_row:
            scale = per_row / sum(expected)
            return rows, [max(1, int(width * scale)) for width in expected]
        # Water-filling: the narrowest columns keep their width while the rest share what is
        # left equally; the cap is that equal share.
        left, cap = per_row, per_row / len(expected)
        for done, width in enumerate(sorted(expected)):
            cap = left / (len(expected) - done)
            if width > cap:
                break
            left -= width
        return rows, [max(1, int(min(width, cap))) for width in expected]

    @staticmethod
    def _fast_sql(
        table: str,
        schema: pa.Schema,
        guarded: Sequence[int],
        limits: Sequence[int],
        after: int | None,
        until: int | None = None,
        not_null: frozenset[int] = frozenset(),
    ) -> str:
        """The fast path's query: the rowid, then the columns, each text/blob value above its
        limit replaced by NULL; a row with such a value gets a NULL rowid, which flags it. In a
        column declared NOT NULL (``not_null``) the NULL itself flags it, and the rowid's test
        leaves that column out (measured: 0.95 s against 1.00 s of ADBC's CPU per 2M rows of
        events when two of three guarded columns are NOT NULL).

        Sizes are bytes, asked with octet_length(): SQLite answers it from the record header
        without loading the value (length() counts a text's characters, so it reads it whole:
        measured +0.5 s per 2M rows of events, and it undercounts multibyte text). A flag in the
        rowid column costs nothing more; a flag column per nullable column (typeof()) cost
        another 0.5 s.
        """
        names = schema.names
        size = _adbc_byte_length()
        select = []
        over = []
        for i, name in enumerate(names):
            q = quote_identifier(name)
            if i in guarded:
                test = f"{size.format(q)} > {limits[guarded.index(i)]}"
                if i not in not_null:
                    over.append(test)
                select.append(f"CASE WHEN {test} THEN NULL ELSE {q} END AS {q}")
            else:
                select.append(q)
        # Not aliased "rowid": ORDER BY rowid would then sort by this expression.
        rowid = f"CASE WHEN {' OR '.join(over)} THEN NULL ELSE rowid END" if over else "rowid"
        bounds = ([f"rowid > {int(after)}"] if after is not None else []) + (
            [f"rowid <= {int(until)}"] if until is not None else []
        )
        where = f" WHERE {' AND '.join(bounds)}" if bounds else ""
        return (
            f"SELECT {rowid} AS {_ROWID_COLUMN}, {', '.join(select)} "
            f"FROM {quote_identifier(table)}{where} ORDER BY rowid"
        )

    def _native_stream(
        self,
        table: str,
        schema: pa.Schema,
        budget: Budget,
        sizer: BatchSizer,
        kinds: list[int],
        after: int | None = None,
        until: int | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Rows ``after < rowid <= until`` (each bound optional) through membound's C reader
        (:mod:`membound._sqlitearrow`); a row with a value too large for a batch, and the rest
        of the table once a value of an unexpected type turns up, by the row-by-row path."""
        restarts = 0
        rows_read = 0
        while True:
            status, last_rowid, rows = yield from self._native_run(
                table, schema, kinds, sizer, after, until
            )
            rows_read += rows
            if last_rowid is not None:
                after = last_rowid
            if status == "end":
                return
            restarts += 1
            if _give_up(status, restarts, rows_read):
                yield from self._rows_after(table, schema, budget, after, until)
                return
            # status == "large": SQLite refused the next row's value (longer than the reader's
            # limit) before loading it; that row goes through blob I/O.
            large_rowid = self._next_rowid(table, after)
            if large_rowid is None or (until is not None and large_rowid > until):
                continue  # deleted meanwhile: go on after it
            trim()  # freed heap back to the OS before a value this size is read
            yield from self._rows_after(table, schema, budget, after, large_rowid)
            after = large_rowid

    def _rows_after(
        self, table: str, schema: pa.Schema, budget: Budget, after: int | None,
        until: int | None,
    ) -> Iterator[pa.RecordBatch]:
        """Rows ``after < rowid <= until`` by the row-by-row path (``after`` None: from the
        first row; ``until`` None: to the last)."""
        return self._slow_table_batches(
            table, schema, budget, has_rowid=True,
            after_rowid=after if after is not None else -(2**63), until_rowid=until,
        )

    def _native_run(
        self,
        table: str,
        schema: pa.Schema,
        kinds: list[int],
        sizer: BatchSizer,
        after: int | None,
        until: int | None,
    ) -> Iterator[pa.RecordBatch]:
        """One statement of the C reader over ``after < rowid <= until``. Yields batches of the
        batch target in bytes; returns ``(status, last_rowid, rows)``, status ``"end"``,
        ``"large"`` (the row after ``last_rowid`` holds a value above the limit) or ``"type"``
        (it holds a value of another type, or SQLite failed: the row-by-row path reads on and
        reports what is wrong)."""
        native = _sqlite_native()
        target = sizer.target_bytes
        text_columns = sum(kind >= native.KIND_TEXT for kind in kinds)
        # A batch holds at most the target and one row more: each text/blob value of that row
        # up to half the target shared among the columns.
        max_value = max(NATIVE_MIN_VALUE, target // (2 * max(1, text_columns)))
        bounds = ([f"rowid > {int(after)}"] if after is not None else []) + (
            [f"rowid <= {int(until)}"] if until is not None else []
        )
        where = f" WHERE {' AND '.join(bounds)}" if bounds else ""
        columns = ", ".join(quote_identifier(n) for n in schema.names)
        sql = f"SELECT rowid, {columns} FROM {quote_identifier(table)}{where} ORDER BY rowid"
        try:
            reader = native.Reader("file:" + _uri_path(self.path) + "?mode=ro", sql,
                                   [native.KIND_I64, *kinds], max_value,
                                   self._page_cache_kib())
        except native.Error as exc:
            raise QueryError(f"SQLite rejected the query: {exc.args[1]}") from None
        last_rowid: int | None = None
        rows = 0
        statuses = {native.STATUS_END: "end", native.STATUS_LARGE: "large",
                    native.STATUS_MISMATCH: "type"}
        try:
            while True:
                try:
                    status, count, buffers = reader.fetch(NATIVE_MAX_ROWS, target)
                except native.Error:
                    return ("type", last_rowid, rows)
                if count:
                    batch = _native_batch(count, buffers[1:], schema, kinds, native)
                    rowids = memoryview(buffers[0][2])
                    last_rowid = int.from_bytes(rowids[8 * (count - 1):8 * count], "little",
                                                signed=True)
                    del rowids
                    rows += count
                    del buffers
                    yield self._observed(batch, sizer)
                    del batch
                else:
                    del buffers
                if status != native.STATUS_MORE:
                    return (statuses[status], last_rowid, rows)
        finally:
            reader.close()

    def _fast_stream(
        self,
        table: str,
        schema: pa.Schema,
        budget: Budget,
        sizer: BatchSizer,
        guarded: Sequence[int],
        widths: list[int],
        after: int | None = None,
        until: int | None = None,
        not_null: frozenset[int] = frozenset(),
    ) -> Iterator[pa.RecordBatch]:
        """Rows ``after < rowid <= until`` (each bound optional) by ADBC, held-back values and
        columns of mixed types by the row-by-row path."""
        target = sizer.target_bytes
        pending: list[pa.RecordBatch] = []
        restarts = 0
        rows_read = 0
        while True:
            rows_per_batch, limits = self._fast_plan(target, widths)
            sql = self._fast_sql(table, schema, guarded, limits, after, until, not_null)
            outcome = yield from self._fast_run(sql, rows_per_batch, schema, sizer, pending,
                                                not_null)
            status, last_rowid, rows = outcome[:3]
            rows_read += rows
            if pending:
                yield self._observed(_concat(pending), sizer)
                pending.clear()
            if last_rowid is not None:
                after = last_rowid
            if status == "end":
                return
            restarts += 1
            if _give_up(status, restarts, rows_read):
                yield from self._rows_after(table, schema, budget, after, until)
                return
            # status == "large": the row after `after` holds a held-back value; its rowid came
            # back NULL, so ask for it (a lookup in the rowid b-tree).
            large_rowid = self._next_rowid(table, after)
            if large_rowid is None or (until is not None and large_rowid > until):
                continue  # deleted meanwhile: go on after it
            width = 0
            # Give freed heap back before a value this size is read (a few ms; such rows are
            # rare): otherwise the heap's high-water mark adds to it.
            trim()
            for batch in self._rows_after(table, schema, budget, after, large_rowid):
                # The held-back row's size, from the batch it came in (no second read).
                width = max(width, batch_nbytes(batch) // max(1, batch.num_rows))
                yield batch
                del batch
            after = large_rowid
            if FAST_WIDTH_HEADROOM * width * FAST_MIN_ROWS <= target and sum(widths):
                # Only moderately wide: widen the limits so such rows stay on the fast path.
                grow = FAST_WIDTH_HEADROOM * width / sum(widths)
                if grow > 1:
                    widths = [int(w * grow) + 1 for w in widths]

    def _fast_run(
        self,
        sql: str,
        rows_per_batch: int,
        schema: pa.Schema,
        sizer: BatchSizer,
        pending: list[pa.RecordBatch],
        not_null: frozenset[int] = frozenset(),
    ) -> Iterator[pa.RecordBatch]:
        """One ADBC statement. Yields merged batches; returns ``(status, last_rowid, rows)``;
        with status ``"large"``, the row after ``last_rowid`` holds a held-back value."""
        adbc = _adbc_sqlite()
        handles: list[Any] = []
        reader = None
        last_rowid: int | None = None
        rows = 0
        pending_bytes = sum(batch_nbytes(b) for b in pending)
        # The driver's low-level API: its DB-API layer imports pandas (~50 MB) for nothing.
        try:
            try:
                database = adbc.sqlite.connect("file:" + _uri_path(self.path) + "?mode=ro")
                handles.append(database)
                connection = adbc.manager.AdbcConnection(database)
                handles.append(connection)
                statement = adbc.manager.AdbcStatement(connection)
                handles.append(statement)
                statement.set_options(**{"adbc.sqlite.query.batch_rows": str(rows_per_batch)})
                statement.set_sql_query(f"PRAGMA cache_size = -{self._page_cache_kib()}")
                statement.execute_update()
                statement.set_sql_query(sql)
                stream, _ = statement.execute_query()
                reader = pa.RecordBatchReader._import_from_c(stream.address)
            except adbc.manager.Error as exc:
                raise QueryError(f"SQLite rejected the query: {exc}") from None
            while True:
                try:
                    raw = reader.read_next_batch()
                except StopIteration:
                    return ("end", last_rowid, rows)
                except Exception:
                    return ("type", last_rowid, rows)
                if raw.num_rows == 0:
                    continue
                batch, first_large = self._fast_conform(raw, schema, not_null)
                if first_large is not None:
                    batch = batch.slice(0, first_large)
                    if first_large:
                        last_rowid = raw.column(0)[first_large - 1].as_py()
                else:
                    last_rowid = raw.column(0)[raw.num_rows - 1].as_py()
                rows += batch.num_rows
                del raw  # its buffers live on in batch; the rest goes before the next read
                # ADBC's batches are sized for the worst case. One of a fair share of the
                # target goes on as it is; smaller ones are merged up to the target (a copy),
                # so sinks never see a trickle of tiny batches.
                nbytes = batch_nbytes(batch)
                if batch.num_rows and nbytes >= FAST_MERGE_BELOW * sizer.target_bytes:
                    if pending:
                        yield self._observed(_concat(pending), sizer)
                        pending.clear()
                        pending_bytes = 0
                    yield self._observed(batch, sizer)
                    batch = None
                elif pending and pending_bytes + nbytes > sizer.target_bytes:
                    yield self._observed(_concat(pending), sizer)
                    pending.clear()
                    pending_bytes = 0
                if batch is not None and batch.num_rows:
                    pending.append(batch)
                    pending_bytes += nbytes
                batch = None
                if pending_bytes >= sizer.target_bytes:
                    yield self._observed(_concat(pending), sizer)
                    pending.clear()
                    pending_bytes = 0
                if first_large is not None:
                    return ("large", last_rowid, rows)
        finally:
            if reader is not None:
                reader.close()
            for handle in reversed(handles):
                handle.close()

    @staticmethod
    def _fast_conform(
        raw: pa.RecordBatch, schema: pa.Schema, not_null: frozenset[int] = frozenset()
    ) -> tuple[pa.RecordBatch, int | None]:
        """An ADBC batch in the schema's types, and the index of its first row with a
        held-back value, flagged by a NULL rowid or a NULL in a ``not_null`` column (None when
        there is none)."""
        columns = [_conform(raw.column(i + 1), field) for i, field in enumerate(schema)]
        for column, field in zip(columns, schema, strict=True):
            if pa.types.is_string(column.type):
                _check_utf8(column, field)
        batch = pa.RecordBatch.from_arrays(columns, schema=schema)
        flags = [raw.column(0)] + [raw.column(i + 1) for i in sorted(not_null)]
        flagged = [column.is_null() for column in flags if column.null_count]
        if not flagged:
            return batch, None
        mask = flagged[0]
        for more in flagged[1:]:
            mask = pc.or_(mask, more)
        # No Python scalars here (pc.equal(x, 0) and the like): pyarrow's first conversion of
        # a Python value imports pandas, ~50 MB this path otherwise never needs.
        return batch, pc.indices_nonzero(mask)[0].as_py()

    def _next_rowid(self, table: str, after: int | None) -> int | None:
        where = f" WHERE rowid > {int(after)}" if after is not None else ""
        row = self._connect(write=False).execute(
            f"SELECT rowid FROM {quote_identifier(table)}{where} ORDER BY rowid LIMIT 1"
        ).fetchone()
        return None if row is None else int(row[0])

    @staticmethod
    def _observed(batch: pa.RecordBatch, sizer: BatchSizer) -> pa.RecordBatch:
        sizer.observe(batch.num_rows, batch_nbytes(batch))
        sizer.check_memory("reading from SQLite")
        return batch

    def _query_batches(self, query: str, params: Any, budget: Budget) -> Iterator[pa.RecordBatch]:
        names = self._query_columns(query, params)
        if len(set(names)) != len(names):
            raise QueryError(
                f"the query returns duplicate column names ({', '.join(names)}); give each "
                "column a distinct name with AS"
            )
        limit = max(MIN_LARGE_VALUE, int(budget.max_memory * LARGE_VALUE_SHARE))
        width = " + ".join(
            f"coalesce(min(length({quote_identifier(n)}), {limit}), 0)" for n in names
        ) or "0"
        sql = (
            f"SELECT *, {width} AS {_WIDTH_COLUMN}, 0 AS {_BIG_COLUMN} "
            f"FROM ({_strip_sql(query)})"
        )
        return self._stream(sql, params or (), None, budget, names=names)

    def _stream(
        self,
        sql: str,
        params: Any,
        schema: pa.Schema | None,
        budget: Budget,
        *,
        table: str | None = None,
        guarded: Sequence[int] = (),
        has_rowid: bool = False,
        names: Sequence[str] | None = None,
    ) -> Iterator[pa.RecordBatch]:
        conn = self._connect(write=False)
        sizer = budget.sizer()
        try:
            cursor = conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise QueryError(f"SQLite rejected the query: {exc}") from None
        first = 1 if has_rowid else 0
        ncols = len(cursor.description) - first - 2
        per_row = PY_ROW_OVERHEAD + PY_VALUE_OVERHEAD * ncols
        # The last two columns of each row: its measured width, and a bitmask of the guarded
        # columns whose value was too large to fetch inline.
        rows: list[tuple] = []
        held = 0
        try:
            with gc_paused():
                target = sizer.target_bytes
                for row in cursor:
                    held += row[-2] + per_row
                    if row[-1]:
                        if rows:
                            schema = schema or _infer_schema(names, rows, first)
                            yield self._emit(rows, schema, first, sizer, held)
                            rows, held = [], 0
                        schema = schema or _infer_schema(names, [row], first)
                        yield self._large_row(row, schema, table, guarded, sizer)
                        target = sizer.target_bytes
                        held = 0
                        continue
                    rows.append(row)
                    if held >= target:
                        schema = schema or _infer_schema(names, rows, first)
                        yield self._emit(rows, schema, first, sizer, held)
                        rows, held = [], 0
                        target = sizer.target_bytes
                if rows:
                    schema = schema or _infer_schema(names, rows, first)
                    yield self._emit(rows, schema, first, sizer, held)
        except sqlite3.Error as exc:
            raise SourceError(f"reading from SQLite {self.path!r} failed: {exc}") from None
        finally:
            cursor.close()

    def _emit(
        self, rows: list[tuple], schema: pa.Schema, first: int, sizer: BatchSizer, held: int
    ) -> pa.RecordBatch:
        columns = list(zip(*rows, strict=True))[first:-2]
        rows.clear()
        arrays = [_to_array(values, field) for values, field in zip(columns, schema, strict=True)]
        del columns
        batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
        sizer.observe(batch.num_rows, held)
        sizer.check_memory("reading from SQLite")
        return batch

    def _large_row(
        self,
        row: tuple,
        schema: pa.Schema,
        table: str | None,
        guarded: Sequence[int],
        sizer: BatchSizer,
    ) -> pa.RecordBatch:
        """A one-row batch whose large values are read by incremental blob I/O."""
        conn = self._connect(write=False)
        rowid, values, mask = row[0], row[1:-2], row[-1]
        arrays = []
        for i, (value, field) in enumerate(zip(values, schema, strict=True)):
            k = guarded.index(i) if i in guarded else -1
            if k >= 0 and mask & (1 << k):
                arrays.append(_read_blob(conn, table, field, rowid))
            else:
                arrays.append(_to_array([value], field))
        batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
        sizer.observe(1, batch_nbytes(batch))
        sizer.check_memory("reading a large SQLite value")
        return batch

    # -- writing -------------------------------------------------------------------------------

    def write(
        self,
        table: str | None,
        batches: Iterable[pa.RecordBatch],
        *,
        mode: WriteMode = "fail",
        key: Sequence[str] | str | None = None,
        budget: Budget | int | str | None = None,
    ) -> WriteResult:
        """Write batches to ``table``, one transaction per batch.

        ``fail`` and ``replace`` build the table aside and rename it into place at the end, so a
        failure leaves the database as it was. ``append`` commits batch by batch; a failure part
        way raises :class:`PartialWriteError` saying how many rows were committed.
        """
        keys = check_mode(mode, key)
        budget = self._budget(budget)
        table = table or self.default_table
        if not table:
            raise ConfigurationError("name the target table (--target-table or ?table=)")
        conn = self._connect(write=True)
        exists = self._exists(table)
        if mode == "fail" and exists:
            raise TargetExistsError(
                f"table {table!r} already exists in {self.path!r}; use mode 'replace' to "
                "overwrite it or 'append' to add to it"
            )
        iterator = iter(batches)
        first = next(iterator, None)
        if first is None:
            if exists:
                return WriteResult(table=table, mode=mode)
            raise SourceError("the source produced no batches, so there is no schema to create "
                              f"table {table!r} from")
        stream = prepend(first, iterator)
        result = WriteResult(table=table, mode=mode, created=not exists or mode == "replace")
        if mode in ("fail", "replace"):
            aside = f"{TEMP_PREFIX}{table}_{uuid.uuid4().hex[:8]}"
            conn.execute(_create_sql(aside, first.schema, None))
            try:
                self._insert_batches(aside, stream, result, budget, upsert_keys=None)
                conn.execute("BEGIN IMMEDIATE")
                if self._exists(table):
                    if mode == "fail":
                        raise TargetExistsError(
                            f"table {table!r} was created in {self.path!r} by someone else "
                            "while this write ran; nothing was changed"
                        )
                    conn.execute(f"DROP TABLE {quote_identifier(table)}")
                conn.execute(
                    f"ALTER TABLE {quote_identifier(aside)} RENAME TO {quote_identifier(table)}"
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                with contextlib.suppress(sqlite3.Error):
                    conn.execute(f"DROP TABLE IF EXISTS {quote_identifier(aside)}")
                raise
            return result
        if not exists:
            conn.execute(_create_sql(table, first.schema, keys if mode == "upsert" else None))
        try:
            self._insert_batches(table, stream, result, budget, upsert_keys=keys
                                 if mode == "upsert" else None)
        except (TargetError, SchemaError, sqlite3.Error, SourceError) as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise PartialWriteError(
                f"{mode} to {table!r} stopped after {result.rows} committed rows: {exc}; the "
                f"{result.rows} rows are in the table, go on after them",
                rows_committed=result.rows,
                resume_after=self._last_key,
            ) from exc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    _last_key: tuple | None = None

    def _exists(self, table: str) -> bool:
        conn = self._connect(write=True)
        return bool(conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?", (table,)
        ).fetchone())

    def _insert_batches(
        self,
        table: str,
        batches: Iterable[pa.RecordBatch],
        result: WriteResult,
        budget: Budget,
        *,
        upsert_keys: tuple[str, ...] | None,
    ) -> None:
        conn = self._connect(write=True)
        columns = [name for name, _, _ in self._table_info(table)]
        limit = max(MIN_LARGE_VALUE, int(budget.max_memory * LARGE_VALUE_SHARE))
        sizer = budget.sizer()
        self._last_key = None
        for batch in batches:
            missing = [name for name in batch.schema.names if name not in columns]
            if missing:
                raise SchemaError(
                    f"table {table!r} has no column {missing[0]!r}; its columns are "
                    f"{', '.join(columns)}"
                )
            names = batch.schema.names
            qcols = ", ".join(map(quote_identifier, names))
            conflict = ""
            if upsert_keys:
                updates = ", ".join(
                    f"{quote_identifier(n)} = excluded.{quote_identifier(n)}"
                    for n in names if n not in upsert_keys
                )
                conflict = (
                    f" ON CONFLICT ({', '.join(map(quote_identifier, upsert_keys))}) DO "
                    + (f"UPDATE SET {updates}" if updates else "NOTHING")
                )
            insert = (
                f"INSERT INTO {quote_identifier(table)} ({qcols}) VALUES "
                f"({', '.join('?' * len(names))}){conflict}"
            )
            large = _large_rows(batch, limit)
            try:
                with gc_paused():
                    conn.execute("BEGIN")
                    start = 0
                    for index in [*large, batch.num_rows]:
                        if index > start:
                            conn.executemany(insert, _batch_rows(batch.slice(start, index - start)))
                        if index < batch.num_rows:
                            _insert_large_row(conn, table, batch, index, limit, names,
                                              conflict)
                        start = index + 1
                    conn.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                raise TargetError(f"SQLite refused a row of {table!r}: {exc}") from None
            except sqlite3.Error as exc:
                raise TargetError(f"writing to SQLite table {table!r} failed: {exc}") from None
            result.rows += batch.num_rows
            result.batches += 1
            result.bytes += batch_nbytes(batch)
            if upsert_keys and batch.num_rows:
                last = batch.slice(batch.num_rows - 1, 1).select(list(upsert_keys)).to_pylist()[0]
                self._last_key = tuple(last.values())
            del batch  # before the stream makes the next one (see copy._Meter.wrap)
            sizer.check_memory("writing to SQLite")


# -- helpers --------------------------------------------------------------------------------------


def _uri_path(path: str) -> str:
    from urllib.parse import quote

    return quote(os.path.abspath(path))


def _strip_sql(query: str) -> str:
    return query.strip().rstrip(";").strip()



def _infer_schema(names: Sequence[str] | None, rows: list[tuple], first: int) -> pa.Schema:
    assert names is not None
    columns = list(zip(*rows, strict=True))[first:-2]
    return pa.schema([(name, infer_type(values)) for name, values in zip(names, columns,
                                                                          strict=True)])


def _to_array(values: Sequence[Any], field: pa.Field) -> pa.Array:
    arrow_type = field.type
    try:
        if pa.types.is_boolean(arrow_type):
            return pc.not_equal(pa.array(values, type=pa.int64()), 0)
        if _is_temporal_or_exact(arrow_type):
            return pc.cast(pa.array(values, type=pa.string()), arrow_type)
        return pa.array(values, type=arrow_type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        bad = next(
            (v for v in values if v is not None and not _fits_one(v, field)), None
        )
        raise SchemaError(
            f"column {field.name!r} holds {repr(bad)[:80]} ({type(bad).__name__}), which does "
            f"not fit the column's type {arrow_type} (taken from its declared type or its first "
            f"rows); CAST it in a query to one type, e.g. CAST({field.name} AS TEXT)"
        ) from None


def _concat(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    return batches[0] if len(batches) == 1 else pa.concat_batches(batches)


_ADBC: Any = None
_NATIVE: Any = None


def _give_up(status: str, restarts: int, rows_read: int) -> bool:
    """Whether a fast path hands the rest of its range to the row-by-row path: at a value of
    another type (SQLite lets a column hold several; ADBC types a column by its first batch),
    or when restarts around large values come so often that they cost more than they save."""
    return status == "type" or (
        restarts > FAST_MAX_RESTARTS and rows_read < restarts * FAST_ROWS_PER_RESTART
    )


def _sqlite_native() -> Any:
    """membound's C reader (``membound._sqlitearrow``), or None when it was not built or fast
    reads are turned off with ``MEMBOUND_SQLITE_FAST=0``."""
    global _NATIVE
    if _NATIVE is None:
        _NATIVE = False
        if os.environ.get("MEMBOUND_SQLITE_FAST", "1") != "0":
            with contextlib.suppress(ImportError):
                from membound import _sqlitearrow

                _NATIVE = _sqlitearrow
    return _NATIVE or None


def _native_kinds(schema: pa.Schema) -> list[int] | None:
    """The C reader's column kind for each field (the storage class SQLite should hold), or
    None when a field has a type it does not read (the ADBC path reads the table)."""
    native = _sqlite_native()
    if native is None:
        return None
    kinds = []
    for field in schema:
        t = field.type
        if pa.types.is_integer(t) or pa.types.is_boolean(t):
            kinds.append(native.KIND_I64)
        elif pa.types.is_floating(t):
            kinds.append(native.KIND_F64)
        elif pa.types.is_string(t) or _is_temporal_or_exact(t):
            kinds.append(native.KIND_TEXT)  # dates and decimals are stored as text: cast after
        elif pa.types.is_binary(t):
            kinds.append(native.KIND_BLOB)
        else:
            return None
    return kinds


def _native_row_bytes(kinds: Sequence[int]) -> int:
    """A guess at a row's bytes for sizing rowid ranges: 8 a number, 32 a text or blob."""
    text = _sqlite_native().KIND_TEXT
    return max(1, sum(32 if kind >= text else 8 for kind in kinds))


def _readers() -> int:
    """Reader threads for a parallel table read: the cores the consumer's thread leaves."""
    return min(PARALLEL_READERS, (os.cpu_count() or 1) - 1)


def _native_batch(
    count: int, buffers: Sequence[tuple], schema: pa.Schema, kinds: Sequence[int], native: Any
) -> pa.RecordBatch:
    """The C reader's buffers for one batch -> a record batch of ``schema`` (no copy, but for
    the casts of booleans, dates and decimals)."""
    raw_types = {native.KIND_I64: pa.int64(), native.KIND_F64: pa.float64(),
                 native.KIND_TEXT: pa.string(), native.KIND_BLOB: pa.binary()}
    arrays = []
    for column, field, kind in zip(buffers, schema, kinds, strict=True):
        raw = from_column_buffers(raw_types[kind], count, column)
        if kind == native.KIND_TEXT:
            _check_utf8(raw, field)
        arrays.append(_conform(raw, field))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _check_utf8(array: pa.Array, field: pa.Field) -> None:
    """SQLite stores whatever bytes it was given as text, and neither C reader checks them."""
    try:
        array.validate(full=True)
    except pa.ArrowInvalid:
        raise SchemaError(
            f"column {field.name!r} holds text that is not UTF-8; read it as bytes: "
            f"CAST({field.name} AS BLOB) in a query"
        ) from None


def _adbc_sqlite() -> Any:
    """ADBC's SQLite driver (``.sqlite``) and driver manager (``.manager``), or None when not
    installed or turned off with ``MEMBOUND_SQLITE_FAST=0`` (the row-by-row path is used)."""
    global _ADBC
    if _ADBC is None:
        if os.environ.get("MEMBOUND_SQLITE_FAST", "1") == "0":
            _ADBC = False
            return None
        try:
            import adbc_driver_manager
            import adbc_driver_sqlite
        except ImportError:
            _ADBC = False
        else:
            import types

            _ADBC = types.SimpleNamespace(sqlite=adbc_driver_sqlite, manager=adbc_driver_manager)
    return _ADBC or None


_BYTE_LENGTH: str | None = None


def _adbc_byte_length() -> str:
    """SQL for a value's size in bytes in ADBC's SQLite, ``{}`` standing for the value:
    octet_length() (SQLite 3.43+) reads only the record header; older versions get
    length(CAST(... AS BLOB)), which loads the value."""
    global _BYTE_LENGTH
    if _BYTE_LENGTH is None:
        adbc = _adbc_sqlite()
        _BYTE_LENGTH = "length(CAST({} AS BLOB))"
        handles: list[Any] = []
        try:
            handles.append(adbc.sqlite.connect(":memory:"))
            handles.append(adbc.manager.AdbcConnection(handles[0]))
            handles.append(adbc.manager.AdbcStatement(handles[1]))
            handles[2].set_sql_query("SELECT octet_length('x')")
            stream, _ = handles[2].execute_query()
            pa.RecordBatchReader._import_from_c(stream.address).read_all()
            _BYTE_LENGTH = "octet_length({})"
        except Exception:  # noqa: BLE001 - any failure means: not available
            pass
        finally:
            for handle in reversed(handles):
                with contextlib.suppress(Exception):
                    handle.close()
    return _BYTE_LENGTH


def _conform(array: pa.Array, field: pa.Field) -> pa.Array:
    """An ADBC column as the schema's type (ADBC types by value: 0/1, ISO text, all-NULL...)."""
    arrow_type = field.type
    if array.type == arrow_type:
        return array
    try:
        if pa.types.is_boolean(arrow_type) and pa.types.is_integer(array.type):
            return pc.cast(array, pa.bool_())
        if pa.types.is_null(array.type) or array.null_count == len(array):
            # ADBC types a batch's all-NULL column as int64 (a held-back value alone, say).
            return pa.nulls(len(array), type=arrow_type)
        return pc.cast(array, arrow_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        bad = next((v for v in array.to_pylist() if v is not None
                    and not _fits_one(v, field)), None)
        raise SchemaError(
            f"column {field.name!r} holds {repr(bad)[:80]} ({type(bad).__name__}), which does "
            f"not fit the column's type {arrow_type}; CAST it in a query to one type, e.g. "
            f"CAST({field.name} AS TEXT)"
        ) from None


def _fits_one(value: Any, field: pa.Field) -> bool:
    try:
        if pa.types.is_boolean(field.type):
            pa.array([value], type=pa.int64())
        elif _is_temporal_or_exact(field.type):
            pc.cast(pa.array([value], type=pa.string()), field.type)
        else:
            pa.array([value], type=field.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        return False
    return True


def _read_blob(conn: sqlite3.Connection, table: str | None, field: pa.Field, rowid: int
               ) -> pa.Array:
    """Read one large value by incremental blob I/O into a single-value Arrow array."""
    assert table is not None
    with conn.blobopen(table, field.name, rowid, readonly=True) as blob:
        size = len(blob)
        data = pa.allocate_buffer(size)
        view = memoryview(data).cast("B")
        offset = 0
        while offset < size:
            chunk = blob.read(BLOB_CHUNK)
            if not chunk:
                break
            view[offset:offset + len(chunk)] = chunk
            offset += len(chunk)
        view.release()
    offsets = pa.array([0, size], type=pa.int32()).buffers()[1]
    array = pa.Array.from_buffers(field.type, 1, [None, offsets, data])
    if pa.types.is_string(field.type):
        try:
            array.validate(full=True)
        except pa.ArrowInvalid:
            raise SchemaError(
                f"a value of text column {field.name!r} (rowid {rowid}) is not valid UTF-8; "
                f"read it as a blob: CAST({field.name} AS BLOB)"
            ) from None
    return array


def _large_rows(batch: pa.RecordBatch, limit: int) -> list[int]:
    """Indexes of rows holding a binary value above ``limit`` bytes (streamed by blob I/O)."""
    hits: set[int] = set()
    for column in batch.columns:
        if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
            lengths = pc.binary_length(column)
            over = pc.indices_nonzero(pc.fill_null(pc.greater(lengths, limit), False))
            hits.update(over.to_pylist())
    return sorted(hits)


def _insert_large_row(
    conn: sqlite3.Connection,
    table: str,
    batch: pa.RecordBatch,
    index: int,
    limit: int,
    names: Sequence[str],
    conflict: str,
) -> None:
    """Insert one row whose large binary values go in through ``zeroblob`` and blob writes."""
    values: list[Any] = []
    placeholders: list[str] = []
    streamed: list[tuple[str, pa.Array]] = []
    for name, column in zip(names, batch.columns, strict=True):
        cell = column.slice(index, 1)
        is_binary = pa.types.is_binary(cell.type) or pa.types.is_large_binary(cell.type)
        size = pc.binary_length(cell)[0].as_py() if is_binary else None
        if size is not None and size > limit:
            placeholders.append("zeroblob(?)")
            values.append(size)
            streamed.append((name, cell))
        else:
            placeholders.append("?")
            values.append(next(iter(_batch_rows(pa.record_batch([cell], names=[name]))))[0])
    cursor = conn.execute(
        f"INSERT INTO {quote_identifier(table)} ({', '.join(map(quote_identifier, names))}) "
        f"VALUES ({', '.join(placeholders)}){conflict}",
        values,
    )
    rowid = cursor.lastrowid
    for name, cell in streamed:
        offsets, data = cell.buffers()[1], cell.buffers()[2]
        start = pa.Array.from_buffers(pa.int32(), 2, [None, offsets], offset=cell.offset)
        begin, end = start.to_pylist()
        view = memoryview(data).cast("B")[begin:end]
        with conn.blobopen(table, name, rowid) as blob:
            for offset in range(0, end - begin, BLOB_CHUNK):
                blob.write(view[offset:offset + BLOB_CHUNK])
        view.release()


def _batch_rows(batch: pa.RecordBatch) -> Iterator[tuple]:
    """Rows of a batch as tuples of values sqlite3 can bind."""
    columns = []
    for column in batch.columns:
        arrow_type = column.type
        if pa.types.is_timestamp(arrow_type) or pa.types.is_date(arrow_type) or \
                pa.types.is_time(arrow_type) or pa.types.is_decimal(arrow_type):
            columns.append(pc.cast(column, pa.string()).to_pylist())
        elif pa.types.is_dictionary(arrow_type):
            columns.append(column.dictionary_decode().to_pylist())
        elif pa.types.is_nested(arrow_type):
            columns.append([None if v is None else json.dumps(v, default=str)
                            for v in column.to_pylist()])
        else:
            columns.append(column.to_pylist())
    return zip(*columns, strict=True)


def _declared_type(field: pa.Field) -> str:
    if (field.metadata or {}).get(LOGICAL_TYPE_KEY) == b"json" and (
        pa.types.is_string(field.type) or pa.types.is_large_string(field.type)
    ):
        return "JSON"
    return arrow_type_to_sqlite(field.type)


def _create_sql(table: str, schema: pa.Schema, keys: tuple[str, ...] | None) -> str:
    columns = [
        f"{quote_identifier(field.name)} {_declared_type(field)}" for field in schema
    ]
    if keys:
        missing = [k for k in keys if k not in schema.names]
        if missing:
            raise ConfigurationError(
                f"key column {missing[0]!r} is not in the data; its columns are "
                f"{', '.join(schema.names)}"
            )
        columns.append(f"PRIMARY KEY ({', '.join(map(quote_identifier, keys))})")
    return f"CREATE TABLE {quote_identifier(table)} ({', '.join(columns)})"


# Import the fast path's driver with this module, so its one-time cost is in the baseline.
_adbc_sqlite()
