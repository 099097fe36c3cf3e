"""DB-API sessions behind :func:`membound.connect`: one per dialect, owned or adopted.

A :class:`Session` wraps one DB-API connection (opened from a URL, or adopted from the caller)
and knows its dialect: how to stream a result without buffering it (:class:`Stream`), how to
introspect a table's key columns, and how to write rows in byte-sized chunks, each in a short
transaction.

Streaming per driver (each driver's default buffers the whole result):

- sqlite3 steps the statement, so ``fetchmany`` holds only the chunk;
- psycopg: a server-side (named) cursor inside a transaction of its own when the connection is
  in autocommit mode, ``FETCH n`` per chunk;
- PyMySQL / MySQLdb: the unbuffered ``SSCursor``. A stream abandoned part way leaves unread rows
  on the wire: an owned connection is closed and reopened (fast), an adopted one is drained.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import sys
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from membound.backends.base import WriteResult
from membound.batching import estimate_row_size, infer_type, rows_to_batch
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
from membound.keyset import quote
from membound.urls import ParsedURL, parse_url

__all__ = ["Session", "Stream", "TableInfo", "infer_schema", "open_session"]

_SAMPLE_ROWS = 32  # rows whose size is measured per chunk to size the next one
# Statements PostgreSQL can DECLARE a cursor for (others are read with a plain cursor).
_DECLARABLE = re.compile(r"^\s*(\(|select\b|with\b|values\b|table\b)", re.IGNORECASE)


@dataclass
class TableInfo:
    """A table's columns, which may be NULL, and its unique keys (primary key first)."""

    columns: list[str]
    nullable: dict[str, bool]
    unique: list[tuple[str, ...]] = field(default_factory=list)
    primary: tuple[str, ...] = ()
    hidden_key: str | None = None  # SQLite's rowid, when the table has one

    def tie_breaker(self, keys: Sequence[str], table: str) -> tuple[str, ...]:
        """Columns to append to ``keys`` so that they identify one row."""
        have = set(keys)
        candidates = ([self.primary] if self.primary else []) + self.unique
        for index in candidates:
            if set(index) <= have and not any(self.nullable.get(c, True) for c in index):
                return ()
        for index in candidates:
            if not any(self.nullable.get(c, True) for c in index):
                return tuple(c for c in index if c not in have)
        if self.hidden_key:
            return (self.hidden_key,)
        raise ConfigurationError(
            f"table {table!r} has no primary key or unique NOT NULL index, so rows with equal "
            f"{', '.join(keys)} cannot be told apart; page by columns that are unique"
        )


class Stream:
    """An open cursor over one result, read in chunks sized in bytes."""

    def __init__(self, session: Session, cursor: Any, budget: Budget, *,
                 bounded: bool = False) -> None:
        self.session = session
        self.cursor = cursor
        self.budget = budget
        self.bounded = bounded  # the SQL has a small LIMIT: one fetch reads it all
        self.columns = [d[0] for d in cursor.description or ()]
        self.exhausted = False
        self.closed = False

    def chunks(self) -> Iterator[list[tuple]]:
        if self.bounded:
            try:
                rows = self.cursor.fetchall()
            except Exception as exc:
                raise self.session.error(exc, "reading the result") from exc
            self.exhausted = True
            if rows:
                yield list(rows)
            return
        sizer = self.budget.sizer()
        while True:
            if self.closed:
                raise ConfigurationError("the connection this result came from was closed")
            try:
                rows = self.cursor.fetchmany(sizer.rows_per_batch)
            except Exception as exc:
                raise self.session.error(exc, "reading the result") from exc
            if not rows:
                self.exhausted = True
                return
            step = max(1, len(rows) // _SAMPLE_ROWS)
            sample = rows[::step]
            sizer.observe(len(rows), sum(map(estimate_row_size, sample)) * len(rows)
                          // len(sample))
            yield rows if isinstance(rows, list) else list(rows)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.session.close_stream(self)


class Session:
    """One DB-API connection and what membound needs to know about its dialect."""

    dialect = "generic"
    placeholder = "%s"
    #: An owned session writes through its URL's backend (binary COPY, sized multi-row
    #: INSERTs) rather than by executemany.
    bulk_writes = False

    def __init__(self, conn: Any, *, owned: bool, url: ParsedURL | None, display: str,
                 closer: Callable[[], None] | None = None) -> None:
        self.conn = conn
        self.owned = owned
        self.url = url
        self.display = display
        self._closer = closer

    def close(self) -> None:
        if self.owned and self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        if self._closer is not None:
            self._closer()
        self.conn = None

    # -- errors ------------------------------------------------------------------------------

    def error(self, exc: Exception, doing: str) -> Exception:
        if isinstance(exc, SourceError | TargetError | SchemaError | ConfigurationError):
            return exc
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if any(s in text.lower() for s in ("no such table", "does not exist", "doesn't exist")):
            return NotFoundError(f"{text} ({self.display}); check the table name")
        return QueryError(f"the database refused {doing}: {text}")

    # -- reading -----------------------------------------------------------------------------

    def stream(self, sql: str, params: Any, budget: Budget, *, bounded: bool = False
               ) -> Stream:
        """Run ``sql`` and return its open result. ``bounded``: the SQL carries a small LIMIT
        (a page), so the driver's plain buffered cursor is the fastest safe choice."""
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql, params) if params is not None else cursor.execute(sql)
        except Exception as exc:
            with contextlib.suppress(Exception):
                cursor.close()
            raise self.error(exc, "the query") from exc
        return Stream(self, cursor, budget, bounded=bounded)

    def close_stream(self, stream: Stream) -> None:
        with contextlib.suppress(Exception):
            stream.cursor.close()

    def execute(self, sql: str, params: Any) -> int:
        with self.transaction():
            cursor = self.conn.cursor()
            try:
                cursor.execute(sql, params) if params is not None else cursor.execute(sql)
                return cursor.rowcount
            except Exception as exc:
                raise self.error(exc, "the statement") from exc
            finally:
                cursor.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                self.conn.rollback()
            raise
        self.conn.commit()

    def qualified(self, table: str) -> str:
        if '"' in table or "`" in table:
            return table  # already quoted by the caller
        return ".".join(quote(part, self.dialect) for part in table.split(".", 1))

    def table_info(self, table: str, missing_ok: bool = False) -> TableInfo | None:
        try:
            stream = self.stream(f"SELECT * FROM {self.qualified(table)} WHERE 1 = 0", None,
                                 Budget())
        except NotFoundError:
            if missing_ok:
                return None
            raise
        columns = stream.columns
        stream.close()
        return TableInfo(columns, {c: True for c in columns})

    def _exists(self, table: str) -> bool:
        return self.table_info(table, missing_ok=True) is not None

    # -- writing -----------------------------------------------------------------------------

    def stage_name(self, table: str) -> str:
        base = table.rsplit(".", 1)
        name = f"_membound_stage_{uuid.uuid4().hex[:10]}"
        return f"{base[0]}.{name}" if len(base) == 2 else name

    def drop(self, table: str) -> None:
        self.execute(f"DROP TABLE IF EXISTS {self.qualified(table)}", None)

    def rename_sql(self, old: str, new: str) -> list[str]:
        new_name = new.rsplit(".", 1)[-1]
        return [f"ALTER TABLE {self.qualified(old)} RENAME TO {quote(new_name, self.dialect)}"]

    def merge(self, stage: str, table: str, names: list[str], keys: tuple[str, ...] | None
              ) -> None:
        """Move every row of ``stage`` into ``table`` in one transaction."""
        if not self._exists(table):
            with self.transaction():
                self._run_all(self.rename_sql(stage, table))
            return
        cols = ", ".join(quote(n, self.dialect) for n in names)
        sql = (f"INSERT INTO {self.qualified(table)} ({cols}) SELECT {cols} FROM "
               f"{self.qualified(stage)}{self._select_tail()}")
        if keys:
            sql += self.upsert_clause(names, keys)
        with self.transaction():
            self._run_all([sql])

    def _select_tail(self) -> str:
        return ""

    def _run_all(self, statements: list[str]) -> None:
        cursor = self.conn.cursor()
        try:
            for sql in statements:
                cursor.execute(sql)
        except Exception as exc:
            raise self.error(exc, "the write") from exc
        finally:
            cursor.close()

    def upsert_clause(self, names: list[str], keys: tuple[str, ...]) -> str:
        updates = [n for n in names if n not in keys]
        conflict = ", ".join(quote(k, self.dialect) for k in keys)
        if not updates:
            return f" ON CONFLICT ({conflict}) DO NOTHING"
        sets = ", ".join(f"{quote(n, self.dialect)} = excluded.{quote(n, self.dialect)}"
                         for n in updates)
        return f" ON CONFLICT ({conflict}) DO UPDATE SET {sets}"

    def column_type(self, field_: pa.Field, key: bool) -> str:
        from membound.backends.sqlite import arrow_type_to_sqlite

        return arrow_type_to_sqlite(field_.type)

    def create_sql(self, table: str, schema: pa.Schema, keys: tuple[str, ...] | None) -> str:
        columns = [
            f"{quote(f.name, self.dialect)} {self.column_type(f, bool(keys) and f.name in keys)}"
            for f in schema
        ]
        if keys:
            columns.append(f"PRIMARY KEY ({', '.join(quote(k, self.dialect) for k in keys)})")
        return f"CREATE TABLE {self.qualified(table)} ({', '.join(columns)})"

    def write_rows(self, table: str, names: list[str], chunks: Iterator[list[tuple]], *,
                   mode: str, keys: tuple[str, ...] | None, budget: Budget,
                   backend: Callable[[], Any], like: str | None = None) -> WriteResult:
        """Write chunks of row tuples, one transaction per chunk: through the backend's bulk
        path when the session owns its URL and has one, else by ``executemany``."""
        bulk = backend() if self.bulk_writes and self.owned else None
        if bulk is not None:  # an Engine's pooled connection is owned but has no URL backend
            return _arrow_write(self, bulk, table, names, chunks, mode, keys, budget, like)
        first = next(chunks, None)
        result = WriteResult(table=table, mode=mode)
        if first is None:
            return result
        info = self.table_info(table, missing_ok=True)
        if info is not None and mode == "fail":
            raise TargetExistsError(
                f"table {table!r} already exists; use mode='append', 'upsert' or 'replace'"
            )
        if info is not None:
            unknown = [n for n in names if n not in info.columns]
            if unknown:
                raise SchemaError(
                    f"column {unknown[0]!r} is not in table {table!r} (its columns: "
                    f"{', '.join(info.columns)}); rename the field or add the column"
                )
        target = table
        if mode == "replace" or info is None:
            target = table if info is None and mode != "replace" else self.stage_name(table)
            template = like if like and self._exists(like) else None
            schema = (self._schema_like(template, names) if template
                      else infer_schema(names, first))
            with self.transaction():
                self._run_all([self.create_sql(target, schema, keys)])
            result.created = True
        cols = ", ".join(quote(n, self.dialect) for n in names)
        insert = (f"INSERT INTO {self.qualified(target)} ({cols}) VALUES "
                  f"({', '.join([self.placeholder] * len(names))})")
        if mode == "upsert":
            insert += self.upsert_clause(names, keys or ())
        last: tuple | None = None
        try:
            for chunk in itertools.chain([first], chunks):
                with self.transaction():
                    cursor = self.conn.cursor()
                    try:
                        cursor.executemany(insert, chunk)
                    finally:
                        cursor.close()
                result.rows += len(chunk)
                result.batches += 1
                last = chunk[-1]
        except Exception as exc:
            if target != table:
                with contextlib.suppress(Exception):
                    self.drop(target)
                raise _write_error(self.error(exc, "the write"), table) from exc
            if result.rows == 0 and result.created:
                with contextlib.suppress(Exception):
                    self.drop(target)
            resume = (tuple(last[names.index(k)] for k in keys) if keys and last else None)
            raise PartialWriteError(
                f"{mode} to {table!r} stopped after {result.rows} committed rows: "
                f"{self.error(exc, 'the write')}; those rows are in the table, go on after them",
                rows_committed=result.rows, resume_after=resume,
            ) from exc
        if target != table:
            with self.transaction():
                statements = []
                if self._exists(table):
                    statements.append(f"DROP TABLE {self.qualified(table)}")
                self._run_all(statements + self.rename_sql(target, table))
        return result

    def _schema_like(self, table: str, names: list[str]) -> pa.Schema:
        raise NotImplementedError


def _write_error(exc: Exception, table: str) -> Exception:
    if isinstance(exc, SchemaError | TargetError):
        return exc
    return TargetError(f"writing {table!r} failed and left it as it was: {exc}")


def infer_schema(names: Sequence[str], rows: list[tuple]) -> pa.Schema:
    """Column types guessed from a chunk of row tuples (a column of NULLs becomes text)."""
    return pa.schema([(name, infer_type(row[i] for row in rows)) for i, name in enumerate(names)])


# -- SQLite --------------------------------------------------------------------------------------


class SQLiteSession(Session):
    dialect = "sqlite"
    placeholder = "?"

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        explicit = self.conn.isolation_level is None and not self.conn.in_transaction
        if explicit:
            self.conn.execute("BEGIN")
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:
                self.conn.rollback()
            raise
        if self.conn.in_transaction:
            self.conn.commit()

    def _select_tail(self) -> str:
        return " WHERE true"  # lets SQLite parse "INSERT ... SELECT ... ON CONFLICT"

    def table_info(self, table: str, missing_ok: bool = False) -> TableInfo | None:
        rows = self.conn.execute("SELECT name, \"notnull\", pk, type FROM pragma_table_info(?)",
                                 (table,)).fetchall()
        if not rows:
            if missing_ok:
                return None
            raise NotFoundError(f"table {table!r} does not exist ({self.display}); check the "
                                "name")
        columns = [r[0] for r in rows]
        pk = tuple(r[0] for r in sorted((r for r in rows if r[2]), key=lambda r: r[2]))
        rowid_alias = len(pk) == 1 and next(r for r in rows if r[0] == pk[0])[3].upper() == \
            "INTEGER"
        nullable = {r[0]: not r[1] and not (rowid_alias and r[0] == pk[0]) for r in rows}
        unique = []
        for _, name, is_unique, _origin, partial in self.conn.execute(
                "SELECT seq, name, \"unique\", origin, partial FROM pragma_index_list(?)",
                (table,)):
            if is_unique and not partial:
                cols = [r[0] for r in self.conn.execute(
                    "SELECT name FROM pragma_index_info(?) ORDER BY seqno", (name,))]
                if None not in cols:
                    unique.append(tuple(cols))
        ddl = self.conn.execute("SELECT sql FROM sqlite_master WHERE name = ?",
                                (table,)).fetchone()
        has_rowid = not (ddl and ddl[0] and "WITHOUT ROWID" in ddl[0].upper())
        return TableInfo(columns, nullable, unique, pk, "rowid" if has_rowid else None)

    def _schema_like(self, table: str, names: list[str]) -> pa.Schema:
        from membound.backends.sqlite import _declared_to_arrow

        declared = dict(self.conn.execute("SELECT name, type FROM pragma_table_info(?)",
                                          (table,)).fetchall())
        return pa.schema([(n, _declared_to_arrow(declared.get(n, "")) or pa.string())
                          for n in names])


# -- PostgreSQL ----------------------------------------------------------------------------------


class PostgresSession(Session):
    dialect = "postgresql"
    bulk_writes = True
    _counter = itertools.count(1)

    def stream(self, sql: str, params: Any, budget: Budget, *, bounded: bool = False
               ) -> Stream:
        conn = self.conn
        before = conn.info.transaction_status
        if bounded or not _DECLARABLE.match(sql):
            # A page (small LIMIT), or EXPLAIN, SHOW...: no server-side cursor needed (or
            # possible); one round trip. The transaction it may open is ended on close.
            try:
                stream = super().stream(sql, params, budget, bounded=bounded)
            except BaseException:
                self._end(None, before, failed=True)
                raise
            stream.pg_state = (None, before)  # type: ignore[attr-defined]
            return stream
        tx = None
        if conn.autocommit:
            tx = conn.transaction()
            tx.__enter__()
        cursor = conn.cursor(name=f"membound_{next(self._counter)}")
        try:
            cursor.execute(sql, params)
        except Exception as exc:
            with contextlib.suppress(Exception):
                cursor.close()
            self._end(tx, before, failed=True)
            raise self.error(exc, "the query") from exc
        stream = Stream(self, cursor, budget)
        stream.pg_state = (tx, before)  # type: ignore[attr-defined]
        return stream

    def close_stream(self, stream: Stream) -> None:
        with contextlib.suppress(Exception):
            stream.cursor.close()
        if not hasattr(stream, "pg_state"):
            return
        tx, before = stream.pg_state  # type: ignore[attr-defined]
        self._end(tx, before, failed=False)

    def _end(self, tx: Any, before: Any, *, failed: bool) -> None:
        """End the read transaction a stream opened, so no transaction is left open."""
        from psycopg.pq import TransactionStatus

        conn = self.conn
        if conn is None or conn.closed:
            return
        with contextlib.suppress(Exception):
            if tx is not None:
                tx.__exit__(None, None, None)
            elif before == TransactionStatus.IDLE and not conn.autocommit:
                if conn.info.transaction_status == TransactionStatus.INERROR:
                    conn.rollback()
                else:
                    conn.commit()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self.conn.transaction():
            yield

    def error(self, exc: Exception, doing: str) -> Exception:
        import psycopg

        if isinstance(exc, psycopg.errors.UndefinedTable):
            return NotFoundError(f"{str(exc).splitlines()[0]} ({self.display}); check the name")
        return super().error(exc, doing)

    def table_info(self, table: str, missing_ok: bool = False) -> TableInfo | None:
        from psycopg.pq import TransactionStatus

        idle = self.conn.info.transaction_status == TransactionStatus.IDLE
        try:
            with self.conn.cursor() as cur:
                cur.execute("SELECT to_regclass(%s)::oid", (self.qualified(table),))
                oid = cur.fetchone()[0]
                if oid is None:
                    if missing_ok:
                        return None
                    raise NotFoundError(f"table {table!r} does not exist ({self.display}); "
                                        "check the name")
                cur.execute("SELECT attname, NOT attnotnull FROM pg_attribute WHERE attrelid = "
                            "%s AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (oid,))
                cols = cur.fetchall()
                cur.execute(
                    "SELECT i.indisprimary, ARRAY(SELECT a.attname FROM unnest(i.indkey) WITH "
                    "ORDINALITY AS k(attnum, n) JOIN pg_attribute a ON a.attrelid = i.indrelid "
                    "AND a.attnum = k.attnum ORDER BY k.n) FROM pg_index i WHERE i.indrelid = "
                    "%s AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL "
                    "ORDER BY i.indisprimary DESC", (oid,))
                indexes = cur.fetchall()
        finally:
            if idle and not self.conn.autocommit:
                self.conn.commit()  # end the transaction these catalog reads opened
        primary = next((tuple(cols_) for is_pk, cols_ in indexes if is_pk), ())
        unique = [tuple(cols_) for is_pk, cols_ in indexes if not is_pk]
        return TableInfo([c[0] for c in cols], dict(cols), unique, primary)

    def column_type(self, field_: pa.Field, key: bool) -> str:
        from membound.backends.postgres import pg_type_for

        return pg_type_for(field_)

    def rename_sql(self, old: str, new: str) -> list[str]:
        return [f"ALTER TABLE {self.qualified(old)} RENAME TO "
                f"{quote(new.rsplit('.', 1)[-1], self.dialect)}"]


# -- MySQL / MariaDB -----------------------------------------------------------------------------


class MySQLSession(Session):
    dialect = "mysql"
    bulk_writes = True

    def __init__(self, conn: Any, *, reopen: Callable[[], Any] | None = None, **kw: Any) -> None:
        super().__init__(conn, **kw)
        self._reopen = reopen
        self._spare: Any = None  # an owned stream connection kept for the next stream
        self._busy: Stream | None = None  # a stream reading on an adopted connection

    def stream(self, sql: str, params: Any, budget: Budget, *, bounded: bool = False
               ) -> Stream:
        if bounded:
            # A page (small LIMIT): a buffered result on the statement connection, one trip.
            conn = self._ensure()
            cursor = conn.cursor()
            try:
                cursor.execute(sql, params)
            except Exception as exc:
                with contextlib.suppress(Exception):
                    cursor.close()
                raise self.error(exc, "the query") from exc
            stream = Stream(self, cursor, budget, bounded=True)
            stream.mysql_conn = None  # type: ignore[attr-defined]
            return stream
        # An unbuffered result occupies its connection until read to the end: an owned session
        # gives each stream a connection of its own, so statements can run meanwhile.
        if self.owned and self._reopen is not None:
            conn, self._spare = (self._spare or self._reopen()), None
        else:
            conn = self._ensure()
        module = type(conn).__module__.split(".")[0]
        if module == "pymysql":
            import pymysql.cursors

            cursor = conn.cursor(pymysql.cursors.SSCursor)
        else:
            import MySQLdb.cursors

            cursor = conn.cursor(MySQLdb.cursors.SSCursor)
        try:
            cursor.execute(sql, params)
        except Exception as exc:
            with contextlib.suppress(Exception):
                cursor.close()
            if conn is not self.conn:
                self._spare = conn
            raise self.error(exc, "the query") from exc
        stream = Stream(self, cursor, budget)
        stream.mysql_conn = conn  # type: ignore[attr-defined]
        if conn is self.conn:
            self._busy = stream
        return stream

    def close_stream(self, stream: Stream) -> None:
        conn = stream.mysql_conn  # type: ignore[attr-defined]
        if conn is None:  # a buffered page
            with contextlib.suppress(Exception):
                stream.cursor.close()
            return
        if conn is not self.conn:
            if stream.exhausted and self._spare is None:
                with contextlib.suppress(Exception):
                    stream.cursor.close()
                self._spare = conn
            else:
                # Unread rows are on the wire: draining them could take as long as the whole
                # read. Closing the connection makes the server stop sending; the driver is
                # told first that nothing is pending, or its finalizers would try to drain.
                result = getattr(stream.cursor, "_result", None)
                if result is not None and hasattr(result, "unbuffered_active"):
                    result.unbuffered_active = False
                with contextlib.suppress(Exception):
                    stream.cursor._result = None
                    conn._result = None
                with contextlib.suppress(Exception):
                    conn.close()
            return
        self._busy = None
        with contextlib.suppress(Exception):
            stream.cursor.close()  # an adopted connection: drains what is left, row by row

    def _ensure(self) -> Any:
        if self._busy is not None and not self._busy.closed:
            raise ConfigurationError(
                "a result read from this MySQL connection is still open, and MySQL cannot run "
                "another statement until it is read to the end or closed; finish that loop first"
            )
        if self.conn is None and self._reopen is not None:
            self.conn = self._reopen()
        return self.conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        conn = self._ensure()
        if self.owned:
            conn.begin()  # an adopted connection's open transaction is its owner's: no BEGIN
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise
        conn.commit()

    def table_info(self, table: str, missing_ok: bool = False) -> TableInfo | None:
        schema, _, name = table.rpartition(".")
        cur = self._ensure().cursor()
        try:
            cur.execute(
                "SELECT COLUMN_NAME, IS_NULLABLE = 'YES' FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s "
                "ORDER BY ORDINAL_POSITION", (schema or None, name))
            cols = cur.fetchall()
            cur.execute(
                "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS WHERE "
                "TABLE_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s AND "
                "NON_UNIQUE = 0 AND COLUMN_NAME IS NOT NULL "
                "ORDER BY INDEX_NAME, SEQ_IN_INDEX", (schema or None, name))
            stats = cur.fetchall()
        finally:
            cur.close()
        if not cols:
            if missing_ok:
                return None
            raise NotFoundError(f"table {table!r} does not exist ({self.display}); check the "
                                "name")
        indexes: dict[str, list[str]] = {}
        for index, column in stats:
            indexes.setdefault(index, []).append(column)
        primary = tuple(indexes.pop("PRIMARY", ()))
        return TableInfo([c[0] for c in cols], {c[0]: bool(c[1]) for c in cols},
                         [tuple(v) for v in indexes.values()], primary)

    def upsert_clause(self, names: list[str], keys: tuple[str, ...]) -> str:
        updates = [n for n in names if n not in keys] or list(keys[:1])
        sets = ", ".join(f"{quote(n, 'mysql')} = VALUES({quote(n, 'mysql')})" for n in updates)
        return f" ON DUPLICATE KEY UPDATE {sets}"

    def rename_sql(self, old: str, new: str) -> list[str]:
        return [f"RENAME TABLE {self.qualified(old)} TO {self.qualified(new)}"]

    def column_type(self, field_: pa.Field, key: bool) -> str:
        from membound.backends.mysql import mysql_type_for

        return mysql_type_for(field_, key=key)

    def close(self) -> None:
        self._reopen = None
        if self._spare is not None:
            with contextlib.suppress(Exception):
                self._spare.close()
            self._spare = None
        super().close()


def _arrow_write(session: Session, bulk: Any, table: str, names: list[str],
                 chunks: Iterator[list[tuple]], mode: str, keys: tuple[str, ...] | None,
                 budget: Budget, like: str | None) -> WriteResult:
    """Owned PostgreSQL / MySQL: rows become Arrow batches for the backend's bulk path
    (binary COPY by ADBC ingest; multi-row INSERTs sized under max_allowed_packet)."""
    first = next(chunks, None)
    if first is None:
        return WriteResult(table=table, mode=mode)
    template = like if like and session._exists(like) else (
        table if mode != "replace" and session._exists(table) else None)
    if template is not None:
        existing = bulk.schema(template)
        unknown = [n for n in names if n not in existing.names]
        if unknown:
            raise SchemaError(
                f"column {unknown[0]!r} is not in table {template!r} (its columns: "
                f"{', '.join(existing.names)}); rename the field or add the column"
            )
        schema = pa.schema([existing.field(n) for n in names])
    else:
        schema = infer_schema(names, first)
    batches = (rows_to_batch(chunk, schema) for chunk in itertools.chain([first], chunks))
    return bulk.write(table, batches, mode=mode, key=keys, budget=budget)


# -- opening -------------------------------------------------------------------------------------


def open_session(target: Any, budget: Budget) -> Session:
    """A session on a URL (owned) or on an adopted DB-API / SQLAlchemy connection."""
    if isinstance(target, str | ParsedURL):
        return _open_url(target if isinstance(target, ParsedURL) else parse_url(target))
    module = type(target).__module__.split(".")[0]
    kind = type(target).__name__
    if module == "sqlalchemy":
        return _adopt_sqlalchemy(target)
    display = f"{module}.{kind}"
    if module == "sqlite3" or (module == "_sqlite3"):
        return SQLiteSession(target, owned=False, url=None, display=display)
    if module == "psycopg":
        return PostgresSession(target, owned=False, url=None, display=display)
    if module in ("pymysql", "MySQLdb"):
        return MySQLSession(target, owned=False, url=None, display=display)
    if hasattr(target, "cursor"):
        session = Session(target, owned=False, url=None, display=display)
        style = getattr(sys.modules.get(module), "paramstyle", "format")
        if style == "qmark":
            session.placeholder = "?"
        warnings.warn(
            f"membound does not know how {display} streams results; it reads with fetchmany, "
            "which some drivers serve from a fully buffered result",
            stacklevel=3,
        )
        return session
    raise ConfigurationError(
        f"connect() takes a URL, a DB-API connection or a SQLAlchemy Engine/Connection, not "
        f"{display}"
    )


def _open_url(url: ParsedURL) -> Session:
    if url.scheme == "sqlite":
        import sqlite3

        try:
            conn = sqlite3.connect(url.path or ":memory:", isolation_level=None,
                                   check_same_thread=False)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            raise SourceError(f"{url.path!r} cannot be opened as a SQLite database ({exc}); "
                              "is it one?") from None
        return SQLiteSession(conn, owned=True, url=url, display=url.display)
    if url.scheme in ("postgresql", "postgres") or url.scheme.startswith("postgresql+"):
        try:
            import psycopg
        except ImportError:
            raise MissingDriverError("psycopg", "postgres") from None
        from membound.backends.postgres import libpq_uri

        conninfo = libpq_uri(url)  # the URI the backend connects with
        try:
            conn = psycopg.connect(conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise SourceError(
                f"cannot connect to PostgreSQL ({url.display}): {str(exc).splitlines()[0]}; "
                "check that the server runs and the user, password and database are right"
            ) from None
        return PostgresSession(conn, owned=True, url=url, display=url.display)
    if url.scheme.partition("+")[::2] in {
        (dialect, driver)
        for dialect in ("mysql", "mariadb")
        for driver in ("", "pymysql", "mariadbconnector", "mysqlclient")
    }:
        try:
            import pymysql
        except ImportError:
            raise MissingDriverError("pymysql", "mysql") from None

        def reopen() -> Any:
            try:
                return pymysql.connect(
                    host=url.host or "localhost", port=url.port or 3306,
                    user=url.username or "root", password=url.password or "",
                    database=url.database, charset=url.options.get("charset", "utf8mb4"),
                    autocommit=True, connect_timeout=10)
            except pymysql.err.MySQLError as exc:
                raise SourceError(
                    f"cannot connect to MySQL/MariaDB ({url.display}): {exc.args[-1]}; check "
                    "that the server runs and the user, password and database are right"
                ) from None

        return MySQLSession(reopen(), reopen=reopen, owned=True, url=url, display=url.display)
    if "+" in url.scheme:
        try:
            import sqlalchemy
        except ImportError:
            raise MissingDriverError("sqlalchemy", "sqlalchemy") from None
        engine = sqlalchemy.create_engine(url.raw.split("?")[0])
        session = _adopt_sqlalchemy(engine, owned_engine=True)
        return session
    raise ConfigurationError(
        f"connect() works on SQL databases; {url.display} is not one (use membound.copy or "
        "membound.open_backend for files and key-value stores)"
    )


def _adopt_sqlalchemy(obj: Any, owned_engine: bool = False) -> Session:
    """A SQLAlchemy Engine lends a pooled DB-API connection (returned on close); a Connection
    lends the one it holds (left to its owner)."""
    from sqlalchemy.engine import Engine

    if isinstance(obj, Engine):
        raw = obj.raw_connection()
        dialect = obj.dialect.name
        owned = True
        closer = obj.dispose if owned_engine else None
    else:
        raw = obj.connection  # the pool's proxy of the DB-API connection the Connection holds
        dialect = obj.dialect.name
        owned = False
        closer = None
    driver = raw.driver_connection
    display = f"sqlalchemy {dialect}+{type(driver).__module__.split('.')[0]}"
    classes: dict[str, type[Session]] = {
        "sqlite": SQLiteSession, "postgresql": PostgresSession, "mysql": MySQLSession,
        "mariadb": MySQLSession,
    }
    cls = classes.get(dialect)
    module = type(driver).__module__.split(".")[0]
    known = {"sqlite": ("sqlite3",), "postgresql": ("psycopg",),
             "mysql": ("pymysql", "MySQLdb"), "mariadb": ("pymysql", "MySQLdb")}
    if cls is None or module not in known.get(dialect, ()):
        warnings.warn(
            f"membound streams the {dialect} dialect through {module} with plain fetchmany; "
            "some drivers buffer the whole result underneath",
            stacklevel=3,
        )
        cls = Session
    session = cls(driver, owned=False, url=None, display=display,
                  closer=(lambda: (raw.close(), closer and closer())) if owned else None)
    return session
