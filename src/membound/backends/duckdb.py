"""DuckDB through its Python package: Arrow record batch streams in, Arrow record batches out.

Reading asks DuckDB for an Arrow stream (``to_arrow_reader(rows_per_batch)`` on DuckDB >= 1.4,
``fetch_record_batch(rows_per_batch)`` before). DuckDB cuts those batches by row count, so the
row count comes from bytes: the width of a sample of rows is measured in SQL first, and a table
read then adapts, restarting after the last row it passed (``rowid``) with a new row count when
the rows turn out wider or narrower than the sample said.

DuckDB's own memory is memory too, in the same process: each connection gets ``memory_limit``
(:data:`MEMORY_LIMIT_SHARE` of the budget), a small streaming-result buffer and one thread, and
its allocator is told to hand freed memory back early. See docs/duckdb.md.

Writes register each Arrow batch with DuckDB and ``INSERT ... SELECT`` it, one transaction per
batch. ``fail``/``replace`` build the table aside and rename it into place in one transaction;
``upsert`` uses ``INSERT ... ON CONFLICT (key) DO UPDATE``, which needs a primary key or a
unique index on the key (created with the table when membound creates it).
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from membound.backends.base import Backend, WriteMode, WriteResult, check_mode, is_query
from membound.batching import LOGICAL_TYPE_KEY, batch_nbytes, prepend
from membound.budget import BatchSizer, Budget
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

__all__ = ["DuckDBBackend", "quote_identifier"]

# DuckDB's buffer manager keeps the blocks it has read, up to memory_limit, so its limit is
# resident memory a scan really uses: a quarter of the budget leaves the rest to the batches
# in flight and to the sink (measured: 1M events rows stream at ~16 MB above baseline with 4 MB).
MEMORY_LIMIT_SHARE = 1 / 4
# DuckDB cannot pin a 256 KiB block below ~2 MB of limit; 4 MiB is the smallest that scans work.
MIN_MEMORY_LIMIT = 4 * 1024 * 1024
# On "out of memory" (a value wider than the limit must be materialised) the limit is raised by
# this factor and the read resumes, up to the whole budget.
MEMORY_LIMIT_GROWTH = 2
# A streaming result buffers this share of the budget ahead of the consumer (DuckDB's default
# is 10 MB whatever the budget); within these bounds.
STREAMING_BUFFER_SHARE = 1 / 32
MIN_STREAMING_BUFFER = 256 * 1024
MAX_STREAMING_BUFFER = 10 * 1024 * 1024
# Rows sampled to measure row width before the first batch is asked for.
SAMPLE_ROWS = 2_048
# A table read restarts with a new row count when a batch comes out this many times wider than
# its target, or when the row count could grow this many times: a restart costs one query.
ADAPT_FACTOR = 4
# A text or BLOB value longer than the batch target (and than this) is held back in a table
# read: the scan gives NULL in its place and its row is then read alone. Otherwise a batch cut by
# row count could hold several such values at once (3 x 20 MB in the first batch of a 32 MB
# budget: 175 MB above baseline); one at a time, a value costs its own size twice (DuckDB makes
# it whole in one block, and Arrow gets a copy) and no more. Below this, a value is cheaper in
# its batch than in a query of its own.
MIN_HELD_BACK = 256 * 1024
# Bytes counted per value beyond its payload: Arrow's offsets and validity, rounded up.
VALUE_OVERHEAD = 8
# Fixed-width types' bytes per value in Arrow, for the width estimate.
_FIXED_WIDTH = 8
# Prefix of tables built aside by "fail" and "replace" writes before the atomic rename.
TEMP_PREFIX = "_membound_tmp_"
# Name a batch is registered under while it is inserted.
_BATCH_VIEW = "__membound_batch"
_ROWID = "__membound_rowid"
_HELD = "__membound_held"
# How DuckDB's storage statistics name a string column's longest value: a struct field (2.x) or
# part of a text (1.x).
_MAX_LENGTH_TEXT = re.compile(r"Max String Length: (\d+)")

_TEXT_TYPES = ("VARCHAR", "JSON", "CHAR", "TEXT", "STRING", "UUID")
_INT_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
              "UINTEGER", "UBIGINT", "UHUGEINT", "INT", "INT1", "INT2", "INT4", "INT8")


def quote_identifier(name: str) -> str:
    """Quote a table or column name for DuckDB."""
    return '"' + name.replace('"', '""') + '"'


def _qualified(name: str) -> str:
    """Quote a table name; ``schema.table`` names both parts."""
    return ".".join(quote_identifier(part) for part in name.split(".")) if "." in name \
        and not name.startswith('"') else quote_identifier(name)


_DUCKDB: Any = None


def _duckdb() -> Any:
    """The ``duckdb`` module, imported on first use; :class:`MissingDriverError` without it."""
    global _DUCKDB
    if _DUCKDB is None:
        try:
            import duckdb
        except ImportError:
            raise MissingDriverError("duckdb", "duckdb") from None
        _DUCKDB = duckdb
        # One throwaway connection pages in the library's code (~25 MB of RSS, once per
        # process), so that the first real connection does not charge it to a budget.
        with contextlib.suppress(Exception):
            warm = duckdb.connect(":memory:")
            warm.sql("SELECT 1").fetchall()
            warm.close()
    return _DUCKDB


def _family(type_name: str) -> str:
    """A coarse kind of a DuckDB type name, to tell a wrong type from a harmless widening."""
    name = type_name.upper().strip()
    if name.endswith("]"):
        return "list"
    if name.startswith(("STRUCT", "MAP", "UNION")):
        return name.split("(", 1)[0].lower()
    base = name.split("(", 1)[0].strip()
    if base in _INT_TYPES or base in ("FLOAT", "DOUBLE", "REAL", "DECIMAL", "NUMERIC"):
        return "number"
    if base in _TEXT_TYPES or base.startswith("ENUM"):
        return "text"
    if base in ("BLOB", "BYTEA", "BINARY", "VARBINARY"):
        return "blob"
    if base in ("BOOLEAN", "BOOL"):
        return "bool"
    if base in ("DATE",) or base.startswith("TIMESTAMP"):
        return "time"
    if base == '"NULL"' or base == "NULL":
        return "null"
    return base.lower()


class DuckDBBackend(Backend):
    """``duckdb:///relative.duckdb``, ``duckdb:////abs/path.duckdb`` or ``duckdb:///:memory:``.

    URL options: ``?table=`` (what to read or write), ``?threads=N`` (DuckDB's threads; 1 by
    default), ``?memory_limit=64MB`` (overrides the share of the budget DuckDB gets).
    Opening for reading never creates a file: a missing database is a :class:`NotFoundError`.
    """

    name = "duckdb"
    extra = "duckdb"

    def __init__(self, url, *, budget: Budget | None = None) -> None:
        super().__init__(url, budget=budget)
        self.path = _database_path(url.path)
        self._duckdb = _duckdb()
        self._conn: Any = None
        self._writable = False
        self._memory_limit = self._initial_memory_limit()

    # -- connections ---------------------------------------------------------------------------

    def _initial_memory_limit(self) -> int:
        from membound.budget import parse_size

        option = self.url.options.get("memory_limit")
        if option:
            return parse_size(option)
        return max(MIN_MEMORY_LIMIT, int(self.budget.max_memory * MEMORY_LIMIT_SHARE))

    def _threads(self) -> int:
        option = self.url.options.get("threads", "1")
        if not option.isdigit() or int(option) < 1:
            raise ConfigurationError(f"?threads= takes a positive number, got {option!r}")
        return int(option)

    def _connect(self, *, write: bool) -> Any:
        if self._conn is not None and (self._writable or not write):
            return self._conn
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        memory = self.path == ":memory:"
        if not write and not memory and not os.path.exists(self.path):
            raise NotFoundError(
                f"DuckDB database {self.path!r} does not exist; check the path (relative paths "
                "are resolved from the current directory: duckdb:///rel.duckdb, "
                "duckdb:////abs/path.duckdb)"
            )
        if write and not memory:
            parent = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(parent):
                raise TargetError(
                    f"cannot create DuckDB database {self.path!r}: directory {parent!r} "
                    "does not exist"
                )
        config = {
            "memory_limit": f"{self._memory_limit}B",
            "threads": self._threads(),
            # Keeps a table's order in a streamed result (and lets a read resume by rowid).
            "preserve_insertion_order": True,
        }
        duckdb = self._duckdb
        try:
            conn = duckdb.connect(self.path, read_only=not write and not memory, config=config)
        except duckdb.Error as exc:
            raise SourceError(
                f"{self.path!r} cannot be opened as a DuckDB database ({_first_line(exc)}); is "
                "it one, and is no other process writing to it?"
            ) from None
        self._tune(conn)
        self._conn = conn
        self._writable = write or memory
        return conn

    def _tune(self, conn: Any) -> None:
        """Per-connection settings that keep DuckDB's memory near its limit; each is skipped
        when this DuckDB version does not have it."""
        budget = self.budget.max_memory
        streaming = max(MIN_STREAMING_BUFFER,
                        min(MAX_STREAMING_BUFFER, int(budget * STREAMING_BUFFER_SHARE)))
        settings = {
            "streaming_buffer_size": f"{streaming}B",
            # Freed memory goes back to the OS once a task's peak passes one batch, instead of
            # DuckDB's default 128 MB.
            "allocator_flush_threshold": f"{self.budget.batch_bytes}B",
            "TimeZone": "UTC",
        }
        for name, value in settings.items():
            with contextlib.suppress(self._duckdb.Error):
                conn.execute(f"SET {name} = '{value}'")

    def _set_memory_limit(self, limit: int) -> None:
        self._memory_limit = limit
        if self._conn is not None:
            self._conn.execute(f"SET memory_limit = '{limit}B'")

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        super().close()

    # -- metadata ------------------------------------------------------------------------------

    def tables(self) -> list[str]:
        """The database's tables and views (main schema first), excluding membound's own."""
        conn = self._connect(write=False)
        rows = conn.execute(
            "SELECT CASE WHEN schema_name = 'main' THEN table_name "
            "ELSE schema_name || '.' || table_name END FROM duckdb_tables() "
            "WHERE NOT internal AND NOT temporary UNION ALL "
            "SELECT CASE WHEN schema_name = 'main' THEN view_name "
            "ELSE schema_name || '.' || view_name END FROM duckdb_views() "
            "WHERE NOT internal AND NOT temporary ORDER BY 1"
        ).fetchall()
        return [name for (name,) in rows if not name.startswith(TEMP_PREFIX)]

    def _columns(self, table: str) -> list[tuple[str, str]]:
        """``(name, DuckDB type)`` of each column of ``table``; NotFoundError if it is missing."""
        conn = self._connect(write=self._writable)
        try:
            rel = conn.sql(f"SELECT * FROM {_qualified(table)}")
        except self._duckdb.CatalogException:
            tables = ", ".join(self.tables()) or "none"
            raise NotFoundError(
                f"no table {table!r} in DuckDB database {self.path!r} (tables: {tables})"
            ) from None
        except self._duckdb.Error as exc:
            raise QueryError(f"DuckDB rejected table {table!r}: {_first_line(exc)}") from None
        return [(name, str(kind)) for name, kind in zip(rel.columns, rel.types, strict=True)]

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

    def _relation(self, sql: str, params: Any = None) -> Any:
        conn = self._connect(write=self._writable)
        try:
            return conn.sql(sql, params=params) if params else conn.sql(sql)
        except self._duckdb.CatalogException as exc:
            raise NotFoundError(f"DuckDB: {_first_line(exc)}") from None
        except self._duckdb.Error as exc:
            raise QueryError(f"DuckDB rejected the query: {_first_line(exc)}") from None

    def _fetchone(self, sql: str, params: Any = None) -> tuple:
        conn = self._connect(write=self._writable)
        try:
            rows = conn.execute(sql, params or None).fetchall()
            return rows[0] if rows else ()
        except self._duckdb.CatalogException as exc:
            raise NotFoundError(f"DuckDB: {_first_line(exc)}") from None
        except self._duckdb.Error as exc:
            if _out_of_memory(exc):
                raise
            raise QueryError(f"DuckDB rejected the query: {_first_line(exc)}") from None

    def schema(self, query_or_table: str | None = None) -> pa.Schema:
        target = self._resolve(query_or_table)
        source = _strip_sql(target) if is_query(target) else (
            self._columns(target) and f"SELECT * FROM {_qualified(target)}")
        rel = self._relation(f"SELECT * FROM ({source}) LIMIT 0")
        reader = _arrow_reader(rel, 1)
        try:
            return _mark_json(reader.schema, [str(t) for t in rel.types])
        finally:
            reader.close()

    def estimate_rows(self, query_or_table: str | None = None) -> int | None:
        target = self._resolve(query_or_table)
        if is_query(target):
            return None
        self._columns(target)
        schema, _, name = target.rpartition(".")
        row = self._connect(write=self._writable).execute(
            "SELECT estimated_size FROM duckdb_tables() WHERE table_name = ? "
            "AND schema_name = ?", [name, schema or "main"]
        ).fetchall()
        row = row[0] if row else None
        return int(row[0]) if row and row[0] is not None else None

    # -- reading -------------------------------------------------------------------------------

    def batches(
        self,
        query_or_table: str | None = None,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        budget: Budget | int | str | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Stream a table or query as Arrow batches sized in bytes from the budget.

        Rows per batch come from the measured width of a sample; a table read then adapts to
        the widths it meets (a query's row count is fixed after the sample). JSON columns come
        as strings marked ``membound.type=json``. Raises :class:`NotFoundError` for a missing
        database or table, :class:`QueryError` for SQL DuckDB rejects.
        """
        budget = self._budget(budget)
        target = self._resolve(query_or_table)
        if is_query(target):
            return self._query_batches(_strip_sql(target), params, budget)
        if params:
            raise ConfigurationError("params are for queries; a table read takes none")
        columns = self._columns(target)
        return self._table_batches(target, columns, budget)

    def _width_sql(self, columns: Sequence[tuple[str, str]]) -> str:
        """A SQL expression for a row's size in Arrow, from its values' byte lengths."""
        parts = []
        for name, kind in columns:
            q = quote_identifier(name)
            family = _family(kind)
            if family == "text":
                parts.append(f"coalesce(strlen(CAST({q} AS VARCHAR)), 0)")
            elif family == "blob":
                parts.append(f"coalesce(octet_length({q}), 0)")
            elif family in ("list", "struct", "map", "union"):
                parts.append(f"coalesce(strlen(CAST({q} AS VARCHAR)), 0)")
            else:
                parts.append(str(_FIXED_WIDTH))
        overhead = VALUE_OVERHEAD * max(1, len(columns))
        return " + ".join([*parts, str(overhead)])

    def _sample_width(self, source: str, columns: Sequence[tuple[str, str]], params: Any,
                      sizer: BatchSizer) -> None:
        """Measure the widest row of the first :data:`SAMPLE_ROWS` and tell the sizer."""
        sql = (f"SELECT count(*), max(w) FROM (SELECT {self._width_sql(columns)} AS w "
               f"FROM ({source}) LIMIT {SAMPLE_ROWS})")
        rows, widest = self._with_memory(lambda: self._fetchone(sql, params))
        if rows:
            sizer.observe(1, int(widest or 0))

    def _with_memory(self, run: Any) -> Any:
        """Run ``run()``; when DuckDB runs out of its memory_limit (a value wider than the limit
        must be held whole), raise the limit and run it again, up to the budget."""
        while True:
            try:
                return run()
            except self._duckdb.Error as exc:
                if not _out_of_memory(exc):
                    raise
                self._grow_memory_limit(str(exc))

    def _grow_memory_limit(self, error: str = "") -> None:
        """Raise DuckDB's limit after it ran out: to what its ``error`` says it needed (and
        :data:`MIN_MEMORY_LIMIT` more) when it says so, else by :data:`MEMORY_LIMIT_GROWTH`.

        Not further: DuckDB keeps the blocks it read up to its limit, so a limit doubled past a
        20 MB value's need holds 10 MB more for nothing.
        """
        ceiling = max(self.budget.max_memory, MIN_MEMORY_LIMIT)
        needed = _needed_memory(error)
        if needed is not None and self._memory_limit < needed + MIN_MEMORY_LIMIT <= ceiling:
            self._set_memory_limit(needed + MIN_MEMORY_LIMIT)
            return
        if self._memory_limit >= ceiling:
            raise SourceError(
                f"DuckDB needs more than the whole budget ({self.budget.max_memory:,} bytes) "
                "for this read: it holds 2,048 rows at a time whatever the batch size, so wide "
                "rows or multi-MB values need a larger max_memory"
            ) from None
        self._set_memory_limit(min(ceiling, self._memory_limit * MEMORY_LIMIT_GROWTH))

    def _query_batches(self, query: str, params: Any, budget: Budget
                       ) -> Iterator[pa.RecordBatch]:
        rel = self._relation(f"SELECT * FROM ({query}) LIMIT 0", params)
        columns = [(n, str(t)) for n, t in zip(rel.columns, rel.types, strict=True)]
        if len({n for n, _ in columns}) != len(columns):
            raise QueryError(
                f"the query returns duplicate column names ({', '.join(n for n, _ in columns)});"
                " give each column a distinct name with AS"
            )
        sizer = budget.sizer(conversion=False)
        self._sample_width(query, columns, params, sizer)
        return self._query_stream(query, params, columns, sizer)

    def _query_stream(self, query: str, params: Any, columns: Sequence[tuple[str, str]],
                      sizer: BatchSizer) -> Iterator[pa.RecordBatch]:
        types = [kind for _, kind in columns]
        reader = self._with_memory(
            lambda: _arrow_reader(self._relation(query, params), sizer.rows_per_batch))
        try:
            while True:
                try:
                    raw = self._next(reader)
                except _OutOfMemory as exc:
                    raise SourceError(
                        f"DuckDB ran out of its memory_limit ({self._memory_limit:,} bytes) "
                        f"while streaming a query ({exc}); raise max_memory, or read the table "
                        "by name, which raises the limit itself and resumes"
                    ) from None
                if raw is None:
                    return
                batch = _conform(raw, types)
                del raw
                sizer.observe(batch.num_rows, batch_nbytes(batch))
                sizer.check_memory("reading from DuckDB")
                yield batch
                del batch
        finally:
            reader.close()

    def _next(self, reader: pa.RecordBatchReader) -> pa.RecordBatch | None:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return None
            except OSError as exc:
                if _out_of_memory(exc):
                    raise _OutOfMemory(_first_line(exc)) from None
                raise SourceError(f"reading from DuckDB failed: {_first_line(exc)}") from None
            if batch.num_rows:
                return batch

    def _table_batches(self, table: str, columns: list[tuple[str, str]], budget: Budget
                       ) -> Iterator[pa.RecordBatch]:
        sizer = budget.sizer(conversion=False)
        self._sample_width(f"SELECT * FROM {_qualified(table)}", columns, None, sizer)
        return self._table_stream(table, columns, sizer)

    def _held_back_columns(
        self, table: str, columns: Sequence[tuple[str, str]], threshold: int
    ) -> list[tuple[str, str]]:
        """The text and BLOB columns that may hold a value longer than ``threshold``.

        From DuckDB's storage statistics (each segment's longest string), which cost no scan;
        every text and BLOB column when they cannot tell (a view, another DuckDB version).
        """
        wide = [
            (name, kind)
            for name, kind in columns
            if _family(kind) in ("text", "blob") and not kind.upper().startswith("UUID")
        ]
        if not wide:
            return []
        schema, _, name = table.rpartition(".")
        qualified = f"{schema}.{name}" if schema else name
        # On a cursor: a failed statement (a view has no storage) would leave the connection's
        # result unfinished.
        cursor = self._connect(write=self._writable).cursor()
        try:
            rows = cursor.execute(
                "SELECT column_name, stats FROM pragma_storage_info(?)", [qualified]
            ).fetchall()
        except self._duckdb.Error:
            return wide
        finally:
            cursor.close()
        longest: dict[str, int | None] = {}
        for column, stats in rows:
            length = _max_string_length(stats)
            if column in longest and longest[column] is None:
                continue
            longest[column] = None if length is None else max(length, longest.get(column) or 0)
        return [
            (name, kind)
            for name, kind in wide
            if name in longest and (longest[name] is None or longest[name] > threshold)
        ]

    def _table_stream(
        self, table: str, columns: list[tuple[str, str]], sizer: BatchSizer
    ) -> Iterator[pa.RecordBatch]:
        """Read a table after the last rowid passed, restarting with a new row count whenever
        the measured width says the current one is far off (or DuckDB ran out of memory).

        Text and BLOB values longer than the batch target are held back: the scan gives NULL
        in their place and flags the row, which is then read alone, in its place."""
        types = [kind for _, kind in columns]
        select = ", ".join(quote_identifier(name) for name, _ in columns)
        threshold = max(MIN_HELD_BACK, sizer.budget.batch_bytes)
        held = self._held_back_columns(table, columns, threshold)
        scanned = select
        if held:
            lengths = {name: self._length_sql(name, kind) for name, kind in held}
            scanned = ", ".join(
                f"CASE WHEN {lengths[name]} > {threshold} THEN NULL ELSE "
                f"{quote_identifier(name)} END AS {quote_identifier(name)}"
                if name in lengths
                else quote_identifier(name)
                for name, _ in columns
            )
            flag = " OR ".join(f"{length} > {threshold}" for length in lengths.values())
            scanned += f", ({flag}) AS {_HELD}"
        after: int | None = None
        while True:
            rows_per_batch = sizer.rows_per_batch
            where = f" WHERE rowid > {after}" if after is not None else ""
            sql = f"SELECT rowid AS {_ROWID}, {scanned} FROM {_qualified(table)}{where}"
            reader = self._with_memory(
                lambda sql=sql, rows=rows_per_batch: _arrow_reader(self._relation(sql), rows))
            restart = False
            try:
                while not restart:
                    try:
                        raw = self._next(reader)
                    except _OutOfMemory as exc:
                        self._grow_memory_limit(str(exc))
                        break
                    if raw is None:
                        return
                    rowids = raw.column(0)
                    last = rowids[len(rowids) - 1].as_py()
                    ordered = after is None or rowids[0].as_py() > after
                    if held and ordered and pc.any(raw.column(_HELD)).as_py():
                        # The scan's result holds the held-back value in DuckDB (it made it
                        # whole to measure it): closed first, and resumed after this batch.
                        # Then the rows up to each held-back one, and that row read alone.
                        reader.close()
                        restart = True
                        start = 0
                        for index in pc.indices_nonzero(raw.column(_HELD)).to_pylist():
                            if index > start:
                                yield _conform(
                                    _data_columns(raw.slice(start, index - start), held), types
                                )
                            rowid = rowids[index].as_py()
                            yield self._row_alone(table, select, rowid, types)
                            after, start = rowid, index + 1
                        raw = raw.slice(start)
                        if not raw.num_rows:
                            continue
                    batch = _conform(_data_columns(raw, bool(held)), types)
                    del raw, rowids
                    nbytes = batch_nbytes(batch)
                    sizer.observe(batch.num_rows, nbytes)
                    sizer.check_memory("reading from DuckDB")
                    yield batch
                    del batch
                    after = last if ordered else after
                    wanted = sizer.rows_per_batch
                    # Resume with another row count only where rowids come in order (they do
                    # with one thread and preserve_insertion_order).
                    if ordered and (nbytes > ADAPT_FACTOR * sizer.target_bytes
                                    and rows_per_batch > 1
                                    or wanted >= ADAPT_FACTOR * rows_per_batch):
                        restart = True
            finally:
                reader.close()

    @staticmethod
    def _length_sql(name: str, kind: str) -> str:
        """A column's value length in bytes, in SQL (0 for NULL)."""
        q = quote_identifier(name)
        if _family(kind) == "blob":
            return f"coalesce(octet_length({q}), 0)"
        return f"coalesce(strlen(CAST({q} AS VARCHAR)), 0)"

    def _row_alone(
        self, table: str, select: str, rowid: int, types: Sequence[str]
    ) -> pa.RecordBatch:
        """The row ``rowid`` as a batch of its own, the memory limit raised as it needs."""
        sql = f"SELECT {select} FROM {_qualified(table)} WHERE rowid = {int(rowid)}"
        # The scan's result is still open on the connection: a cursor (a second connection to
        # the same database, under the same memory_limit) reads the row.
        cursor = self._connect(write=self._writable).cursor()
        try:
            return self._read_alone(cursor, sql, table, rowid, types)
        finally:
            cursor.close()
            # DuckDB keeps the blocks it read the value from, up to its limit, which the value
            # raised: back to the initial limit, which lets them go.
            self._set_memory_limit(self._initial_memory_limit())

    def _read_alone(
        self, cursor: Any, sql: str, table: str, rowid: int, types: Sequence[str]
    ) -> pa.RecordBatch:
        while True:
            reader = self._with_memory(lambda: _arrow_reader(cursor.sql(sql), 1))
            try:
                raw = self._next(reader)
            except _OutOfMemory as exc:
                self._grow_memory_limit(str(exc))
                continue
            finally:
                reader.close()
            if raw is None:
                raise SourceError(f"DuckDB: row {rowid} of {table!r} went away during the read")
            return _conform(raw, types)

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

        ``fail`` and ``replace`` build the table aside and rename it into place in one
        transaction at the end, so a failure leaves the database as it was. ``append`` and
        ``upsert`` commit batch by batch; a failure part way raises :class:`PartialWriteError`
        saying how many rows were committed. A column whose values do not fit the existing
        table raises :class:`SchemaError` naming it.
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
        if keys:
            missing = [k for k in keys if k not in first.schema.names]
            if missing:
                raise ConfigurationError(
                    f"key column {missing[0]!r} is not in the data; its columns are "
                    f"{', '.join(first.schema.names)}"
                )
        stream = prepend(first, iterator)
        result = WriteResult(table=table, mode=mode, created=not exists or mode == "replace")
        sizer = budget.sizer(conversion=False)
        if mode in ("fail", "replace"):
            aside = f"{TEMP_PREFIX}{table.replace('.', '_')}_{uuid.uuid4().hex[:8]}"
            conn.execute(self._create_sql(aside, first, None))
            try:
                self._insert_batches(aside, stream, result, sizer, keys=None)
                conn.execute("BEGIN TRANSACTION")
                if self._exists(table):
                    if mode == "fail":
                        raise TargetExistsError(
                            f"table {table!r} was created in {self.path!r} by someone else "
                            "while this write ran; nothing was changed"
                        )
                    conn.execute(f"DROP TABLE {_qualified(table)}")
                conn.execute(f"ALTER TABLE {quote_identifier(aside)} RENAME TO "
                             f"{quote_identifier(table.rpartition('.')[2])}")
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(self._duckdb.Error):
                    conn.execute("ROLLBACK")
                with contextlib.suppress(self._duckdb.Error):
                    conn.execute(f"DROP TABLE IF EXISTS {quote_identifier(aside)}")
                raise
            return result
        if not exists:
            conn.execute(self._create_sql(table, first, keys if mode == "upsert" else None))
        elif mode == "upsert":
            self._check_unique(table, keys or ())
        try:
            self._insert_batches(table, stream, result, sizer,
                                 keys=keys if mode == "upsert" else None)
        except (TargetError, self._duckdb.Error, SourceError) as exc:
            with contextlib.suppress(self._duckdb.Error):
                conn.execute("ROLLBACK")
            raise PartialWriteError(
                f"{mode} to {table!r} stopped after {result.rows} committed rows: {exc}; the "
                f"{result.rows} rows are in the table, go on after them",
                rows_committed=result.rows,
                resume_after=self._last_key,
            ) from exc
        return result

    _last_key: tuple | None = None

    def _exists(self, table: str) -> bool:
        schema, _, name = table.rpartition(".")
        conn = self._connect(write=True)
        row = conn.execute(
            "SELECT 1 FROM duckdb_tables() WHERE table_name = ? AND schema_name = ? "
            "UNION ALL SELECT 1 FROM duckdb_views() WHERE view_name = ? AND schema_name = ?",
            [name, schema or "main", name, schema or "main"],
        ).fetchall()
        return bool(row)

    def _create_sql(self, table: str, batch: pa.RecordBatch, keys: tuple[str, ...] | None
                    ) -> str:
        """CREATE TABLE from a batch's schema, in the types DuckDB reads its Arrow as."""
        conn = self._connect(write=True)
        probe = batch.slice(0, 0)
        conn.register(_BATCH_VIEW, probe)
        try:
            rel = conn.sql(f"SELECT * FROM {_BATCH_VIEW}")
            duck_types = [str(t) for t in rel.types]
        finally:
            conn.unregister(_BATCH_VIEW)
        columns = []
        for field, kind in zip(batch.schema, duck_types, strict=True):
            if _is_json(field):
                kind = "JSON"
            elif _family(kind) == "null":
                kind = "VARCHAR"
            columns.append(f"{quote_identifier(field.name)} {kind}")
        if keys:
            columns.append(f"PRIMARY KEY ({', '.join(map(quote_identifier, keys))})")
        return f"CREATE TABLE {_qualified(table)} ({', '.join(columns)})"

    def _check_unique(self, table: str, keys: Sequence[str]) -> None:
        """Upsert needs a primary key or unique constraint/index on exactly ``keys``."""
        schema, _, name = table.rpartition(".")
        conn = self._connect(write=True)
        wanted = sorted(keys)
        for (cols,) in conn.execute(
            "SELECT constraint_column_names FROM duckdb_constraints() WHERE table_name = ? "
            "AND schema_name = ? AND constraint_type IN ('PRIMARY KEY', 'UNIQUE')",
            [name, schema or "main"],
        ).fetchall():
            if sorted(cols) == wanted:
                return
        for (expressions,) in conn.execute(
            "SELECT expressions FROM duckdb_indexes() WHERE table_name = ? AND schema_name = ? "
            "AND is_unique", [name, schema or "main"]
        ).fetchall():
            names = re.findall(r'"?([^",\[\]\s]+)"?', str(expressions))
            if sorted(names) == wanted:
                return
        raise ConfigurationError(
            f"upsert into {table!r} needs a primary key or unique index on "
            f"({', '.join(keys)}), and the table has none; create one, e.g. CREATE UNIQUE "
            f"INDEX {name}_key ON {_qualified(table)} ({', '.join(map(quote_identifier, keys))})"
        )

    def _insert_batches(
        self,
        table: str,
        batches: Iterable[pa.RecordBatch],
        result: WriteResult,
        sizer: BatchSizer,
        *,
        keys: tuple[str, ...] | None,
    ) -> None:
        conn = self._connect(write=True)
        columns = dict(self._columns(table))
        self._last_key = None
        checked: pa.Schema | None = None
        for batch in batches:
            if checked is None or batch.schema != checked:
                self._check_types(table, batch.schema, columns)
                checked = batch.schema
            if keys and batch.num_rows:
                batch = _last_per_key(batch, keys)
            names = batch.schema.names
            qcols = ", ".join(map(quote_identifier, names))
            conflict = ""
            if keys:
                updates = ", ".join(f"{quote_identifier(n)} = excluded.{quote_identifier(n)}"
                                    for n in names if n not in keys)
                conflict = (f" ON CONFLICT ({', '.join(map(quote_identifier, keys))}) DO "
                            + (f"UPDATE SET {updates}" if updates else "NOTHING"))
            self._fit_memory_limit(batch)
            insert = (f"INSERT INTO {_qualified(table)} ({qcols}) SELECT {qcols} "
                      f"FROM {_BATCH_VIEW}{conflict}")
            conn.register(_BATCH_VIEW, batch)
            try:
                while True:
                    try:
                        conn.execute("BEGIN TRANSACTION")
                        conn.execute(insert)
                        conn.execute("COMMIT")
                        break
                    except self._duckdb.OutOfMemoryException:
                        # The statement failed whole: raise the limit (up to the budget) and
                        # run it again. (An out-of-memory at COMMIT is not retried: DuckDB can
                        # leave the table damaged then, so the limit is raised beforehand.)
                        with contextlib.suppress(self._duckdb.Error):
                            conn.execute("ROLLBACK")
                        self._grow_memory_limit()
                    except self._duckdb.Error as exc:
                        with contextlib.suppress(self._duckdb.Error):
                            conn.execute("ROLLBACK")
                        raise _write_error(table, exc) from None
            except SourceError as exc:
                raise TargetError(f"writing to DuckDB table {table!r} failed: {exc}") from None
            finally:
                conn.unregister(_BATCH_VIEW)
            result.add(batch)
            if keys and batch.num_rows:
                last = batch.slice(batch.num_rows - 1, 1).select(list(keys)).to_pylist()[0]
                self._last_key = tuple(last.values())
            del batch  # before the stream makes the next one (see copy._Meter.wrap)
            sizer.check_memory("writing to DuckDB")

    def _fit_memory_limit(self, batch: pa.RecordBatch) -> None:
        """Raise memory_limit before a batch whose widest value would not fit in it: DuckDB
        holds a value whole, in one block rounded up to a power of two, and a second such block
        when the commit writes it out."""
        widest = 0
        for column in batch.columns:
            if _arrow_family(column.type) in ("text", "blob") and len(column):
                lengths = pc.binary_length(column.cast(pa.large_binary())
                                           if _arrow_family(column.type) == "text" else column)
                widest = max(widest, pc.max(lengths).as_py() or 0)
        if widest == 0:
            return
        block = 1 << (int(widest) - 1).bit_length()
        needed = 2 * block + MIN_MEMORY_LIMIT
        if needed <= self._memory_limit:
            return
        ceiling = max(self.budget.max_memory, MIN_MEMORY_LIMIT)
        if needed > ceiling:
            raise TargetError(
                f"a value of {widest:,} bytes needs {needed:,} bytes of DuckDB memory (it "
                f"holds a value whole), more than the budget of {self.budget.max_memory:,}; "
                "raise max_memory"
            )
        self._set_memory_limit(needed)

    @staticmethod
    def _check_types(table: str, schema: pa.Schema, columns: dict[str, str]) -> None:
        """Refuse a column whose Arrow type is of another kind than the table's column."""
        for field in schema:
            if field.name not in columns:
                raise SchemaError(
                    f"table {table!r} has no column {field.name!r}; its columns are "
                    f"{', '.join(columns)}"
                )
            have = _arrow_family(field.type)
            want = _family(columns[field.name])
            if have in ("null", want) or (want == "text" and _is_json(field)):
                continue
            raise SchemaError(
                f"column {field.name!r} of {table!r} is {columns[field.name]}, but the data's "
                f"{field.name!r} is {field.type}; cast it in the query or write to a new table"
            )


# -- helpers --------------------------------------------------------------------------------------


def _database_path(path: str | None) -> str:
    """The database file from a URL's path: one slash for a relative path, two for an
    absolute one (SQLAlchemy's form), ``:memory:`` (or nothing) for an in-memory database."""
    if not path or path in ("/", "/:memory:", ":memory:"):
        return ":memory:"
    return path[1:] if path.startswith("/") else path


def _strip_sql(query: str) -> str:
    return query.strip().rstrip(";").strip()


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _out_of_memory(exc: BaseException) -> bool:
    """DuckDB ran out of its memory_limit (raised as OutOfMemoryException, or at commit as a
    TransactionException that says so)."""
    text = str(exc)
    return "Out of Memory" in text or "could not allocate" in text


_SIZE_UNITS = {"bytes": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
# "could not allocate block of size 19.0 MiB (576.0 KiB/7.6 MiB used)"
_NEEDED = re.compile(r"of size ([\d.]+) (bytes|[KMGT]iB) \(([\d.]+) (bytes|[KMGT]iB)/")


def _needed_memory(error: str) -> int | None:
    """What an out-of-memory error says DuckDB needed in all: the block and what it held."""
    match = _NEEDED.search(error)
    if not match:
        return None
    size, size_unit, used, used_unit = match.groups()
    return int(float(size) * _SIZE_UNITS[size_unit] + float(used) * _SIZE_UNITS[used_unit])


class _OutOfMemory(Exception):
    """DuckDB ran out of its memory_limit while streaming (a value wider than the limit)."""


def _arrow_reader(rel: Any, rows_per_batch: int) -> pa.RecordBatchReader:
    """A streaming Arrow reader over a relation, by this DuckDB version's name for it."""
    rows = max(1, int(rows_per_batch))
    if hasattr(rel, "to_arrow_reader"):  # 1.5+
        return rel.to_arrow_reader(rows)
    if hasattr(rel, "fetch_arrow_reader"):  # 1.0-1.4
        return rel.fetch_arrow_reader(rows)
    return rel.record_batch(rows)


def _max_string_length(stats: Any) -> int | None:
    """The longest value of a storage segment, from its statistics (None: they do not say)."""
    if isinstance(stats, dict):
        value = stats.get("max_string_length")
        return int(value) if isinstance(value, int) else None
    match = _MAX_LENGTH_TEXT.search(str(stats or ""))
    return int(match.group(1)) if match else None


def _data_columns(batch: pa.RecordBatch, flagged: bool) -> pa.RecordBatch:
    """A scanned batch without its rowid (first) and, when ``flagged``, held-back flag (last)."""
    end = batch.num_columns - (1 if flagged else 0)
    schema = pa.schema(list(batch.schema)[1:end], metadata=batch.schema.metadata)
    return pa.RecordBatch.from_arrays(batch.columns[1:end], schema=schema)


def _mark_json(schema: pa.Schema, types: Sequence[str]) -> pa.Schema:
    """Mark JSON columns (strings in Arrow) so their kind survives to the next store."""
    if "JSON" not in types:
        return schema
    fields = [
        field.with_metadata({**(field.metadata or {}), LOGICAL_TYPE_KEY: b"json"})
        if kind == "JSON" else field
        for field, kind in zip(schema, types, strict=True)
    ]
    return pa.schema(fields, metadata=schema.metadata)


def _conform(batch: pa.RecordBatch, types: Sequence[str]) -> pa.RecordBatch:
    if "JSON" not in types:
        return batch
    return pa.RecordBatch.from_arrays(batch.columns, schema=_mark_json(batch.schema, types))


def _is_json(field: pa.Field) -> bool:
    if (field.metadata or {}).get(LOGICAL_TYPE_KEY) == b"json":
        return True
    return getattr(field.type, "extension_name", None) == "arrow.json"


def _arrow_family(arrow_type: pa.DataType) -> str:
    if pa.types.is_dictionary(arrow_type):
        return _arrow_family(arrow_type.value_type)
    if hasattr(arrow_type, "storage_type"):
        return _arrow_family(arrow_type.storage_type)
    if pa.types.is_null(arrow_type):
        return "null"
    if pa.types.is_boolean(arrow_type):
        return "bool"
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) \
            or pa.types.is_decimal(arrow_type):
        return "number"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) \
            or pa.types.is_string_view(arrow_type):
        return "text"
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type) \
            or pa.types.is_fixed_size_binary(arrow_type) or pa.types.is_binary_view(arrow_type):
        return "blob"
    if pa.types.is_timestamp(arrow_type) or pa.types.is_date(arrow_type):
        return "time"
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) \
            or pa.types.is_fixed_size_list(arrow_type):
        return "list"
    if pa.types.is_struct(arrow_type):
        return "struct"
    if pa.types.is_map(arrow_type):
        return "map"
    return str(arrow_type)


def _last_per_key(batch: pa.RecordBatch, keys: Sequence[str]) -> pa.RecordBatch:
    """The batch with only the last row of each key: DuckDB's ON CONFLICT DO UPDATE refuses to
    update one row twice in one statement, and the last row is what row-by-row upserts keep."""
    table = pa.Table.from_batches([batch]).select(list(keys))
    if table.group_by(list(keys)).aggregate([]).num_rows == batch.num_rows:
        return batch
    index = pa.array(range(batch.num_rows), type=pa.int64())
    last = table.append_column("__index", index).group_by(list(keys)).aggregate(
        [("__index", "max")])
    indices = last.column("__index_max").combine_chunks()
    return batch.take(pc.take(indices, pc.array_sort_indices(indices)))


def _write_error(table: str, exc: BaseException) -> SchemaError | TargetError:
    text = _first_line(exc)
    column = re.search(r'column "?([^"\s]+)"?', text)
    if "Conversion Error" in text or "Mismatch Type" in text:
        where = f"column {column.group(1)!r}" if column else "a column"
        return SchemaError(f"{where} of {table!r} cannot hold a value written to it: {text}")
    if "Constraint Error" in text:
        return TargetError(f"DuckDB refused a row of {table!r}: {text}")
    return TargetError(f"writing to DuckDB table {table!r} failed: {text}")



# Import the driver (and page in its library) with this module, so that one-time cost is part of
# the baseline a budget is measured from; a missing driver is reported when a backend opens.
with contextlib.suppress(MissingDriverError):
    _duckdb()
