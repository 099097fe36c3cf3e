"""The few ADBC operations the PostgreSQL backend uses, on ADBC's low-level API.

ADBC's DB-API module (``adbc_driver_manager.dbapi``) imports ``pyarrow.dataset``, pandas and
polars when they are installed, to offer ``fetch_df()`` and friends: 146 MB of resident memory
for ``import adbc_driver_postgresql.dbapi`` against 59 MB for the low-level modules and pyarrow
(measured with ``/usr/bin/time -v``, pandas 3.1 and polars 2.1 installed). That is more than a
whole export's working memory, in every process that touches PostgreSQL, so the backend talks to
``adbc_driver_manager.AdbcConnection`` / ``AdbcStatement`` through the small cursor below, which
has the DB-API cursor's names and behaviour for what it offers (results as Arrow, errors as
ADBC's exception classes, which carry the SQLSTATE). It binds no parameters: the backend renders
them as literals (see :func:`membound.backends.postgres.render_params`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import adbc_driver_manager as _manager
import adbc_driver_postgresql as _driver
import pyarrow as pa

__all__ = ["Connection", "Cursor", "Error", "connect"]

Error = _manager.Error

# ADBC's blocking-call helper: a Ctrl-C during a long COPY cancels it on the server (what the
# DB-API module does); older releases without it just call the function.
_blocking_call = getattr(_manager._lib, "_blocking_call", None) or (
    lambda func, args, kwargs, cancel: func(*args, **kwargs)
)
_INGEST_MODES = {
    "append": _manager.INGEST_OPTION_MODE_APPEND,
    "create": _manager.INGEST_OPTION_MODE_CREATE,
}


def connect(uri: str) -> Connection:
    """A connection with autocommit off, as the DB-API's ``connect`` gives."""
    database = _driver.connect(uri)
    try:
        connection = _manager.AdbcConnection(database)
    except BaseException:
        database.close()
        raise
    try:
        connection.set_autocommit(False)
    except BaseException:
        connection.close()
        database.close()
        raise
    return Connection(database, connection)


class Connection:
    """One PostgreSQL session: cursors, commit, rollback, close."""

    def __init__(self, database: Any, connection: Any) -> None:
        self._database = database
        self._connection = connection

    def cursor(self, adbc_stmt_kwargs: Mapping[str, str] | None = None) -> Cursor:
        return Cursor(self._connection, dict(adbc_stmt_kwargs or {}))

    def commit(self) -> None:
        self._connection.commit()

    def rollback(self) -> None:
        self._connection.rollback()

    def close(self) -> None:
        try:
            self._connection.close()
        finally:
            self._database.close()


class Cursor:
    """Runs statements one at a time; each gets a fresh ADBC statement with the cursor's options.

    ``execute`` leaves its result as an Arrow stream: ``fetch_record_batch`` hands it over as a
    reader, ``fetchone``/``fetchall`` read it whole (for the small catalog queries only).
    """

    def __init__(self, connection: Any, options: dict[str, str]) -> None:
        self._connection = connection
        self._options = options
        self._statement: Any = None
        self._handle: Any = None  # the last query's unread result stream
        self._rows: list[tuple[Any, ...]] | None = None

    def _new_statement(self, sql: str | None = None) -> Any:
        self._release()
        statement = _manager.AdbcStatement(self._connection)
        self._statement = statement
        if self._options:
            statement.set_options(**self._options)
        if sql is not None:
            statement.set_sql_query(sql)
        return statement

    def _release(self) -> None:
        self._rows = None
        handle, self._handle = self._handle, None
        if handle is not None:
            with contextlib.suppress(Exception):
                handle.release()
        statement, self._statement = self._statement, None
        if statement is not None:
            with contextlib.suppress(Exception):
                statement.close()

    def execute(self, sql: str) -> Cursor:
        """Run ``sql``. Parameters are never bound: binding builds an Arrow array from Python
        values, which makes pyarrow import pandas, and makes ADBC buffer the whole result."""
        statement = self._new_statement(sql)
        self._handle, _ = _blocking_call(statement.execute_query, (), {}, statement.cancel)
        return self

    def fetch_record_batch(self) -> pa.RecordBatchReader:
        """The last query's result as a reader that pulls batches from the server as it is read.

        Errors mid-stream come out as pyarrow/OS errors, as from the DB-API module's reader.
        """
        handle, self._handle = self._handle, None
        if handle is None:
            raise Error(
                "no result to fetch: execute a query first",
                status_code=_manager.AdbcStatusCode.INVALID_STATE,
            )
        return pa.RecordBatchReader._import_from_c(handle.address)

    def _all_rows(self) -> list[tuple[Any, ...]]:
        if self._rows is None:
            table = self.fetch_record_batch().read_all()
            self._rows = (
                list(zip(*(column.to_pylist() for column in table.columns), strict=True))
                if table.num_columns
                else []
            )
        return self._rows

    def fetchone(self) -> tuple[Any, ...] | None:
        rows = self._all_rows()
        return rows.pop(0) if rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        rows, self._rows = self._all_rows(), []
        return rows

    def adbc_execute_schema(self, sql: str) -> pa.Schema:
        """The Arrow schema of ``sql``'s result, without running it."""
        statement = self._new_statement(sql)
        handle = _blocking_call(statement.execute_schema, (), {}, statement.cancel)
        return pa.Schema._import_from_c(handle.address)

    def adbc_ingest(
        self,
        table_name: str,
        data: pa.RecordBatch | pa.RecordBatchReader,
        mode: str = "append",
        *,
        db_schema_name: str | None = None,
        temporary: bool = False,
    ) -> int:
        """Write ``data`` into ``table_name`` by one binary COPY; the rows written."""
        statement = self._new_statement()
        options = {
            _manager.INGEST_OPTION_TARGET_TABLE: table_name,
            _manager.INGEST_OPTION_MODE: _INGEST_MODES[mode],
        }
        if db_schema_name is not None:
            options[_manager.StatementOptions.INGEST_TARGET_DB_SCHEMA.value] = db_schema_name
        if temporary:
            options[_manager.StatementOptions.INGEST_TEMPORARY.value] = "true"
        statement.set_options(**options)
        if isinstance(data, pa.RecordBatch):
            data = pa.RecordBatchReader.from_batches(data.schema, [data])
        stream = _manager.ArrowArrayStreamHandle()
        data._export_to_c(stream.address)
        statement.bind_stream(stream)
        return _blocking_call(statement.execute_update, (), {}, statement.cancel)

    def adbc_cancel(self) -> None:
        if self._statement is not None:
            self._statement.cancel()

    def close(self) -> None:
        self._release()
