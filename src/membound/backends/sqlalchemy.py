"""Any other database SQLAlchemy reaches (``dialect+driver://``), through SQLAlchemy Core.

Reads run with ``stream_results=True`` and ``yield_per`` (a server-side cursor where the dialect
has one) and fetch ``fetchmany`` batches sized from the measured width of the rows. A dialect
that cannot stream gets a :class:`ResourceWarning` naming it: its driver may hold the whole
result in memory whatever membound does. Column types come from SQLAlchemy's reflection for
tables and from the values of the first batch for queries (a column that is NULL throughout the
first batch is read as strings).

Writes create tables from the Arrow schema with SQLAlchemy's generic types and insert each batch
with ``executemany`` in its own transaction. ``upsert`` needs a dialect with an
``ON CONFLICT`` / ``ON DUPLICATE KEY`` insert (PostgreSQL, SQLite, MySQL/MariaDB).
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid as _uuid
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa

from membound.backends.base import Backend, WriteMode, WriteResult, check_mode, is_query
from membound.backends.postgres import resume_hint
from membound.batching import (
    LOGICAL_TYPE_KEY,
    batch_to_rows,
    infer_type,
    prepend,
    rebatch,
    rows_to_batch,
)
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
from membound.urls import ParsedURL

__all__ = ["SQLAlchemyBackend"]

# Dialects whose driver steps through results without a server-side cursor (no warning).
STREAMS_NATIVELY = frozenset({"sqlite", "duckdb", "oracle"})
# Tables built aside by "fail" and "replace" writes before they are renamed into place.
TEMP_PREFIX = "_membound_tmp_"
# Driver messages that mean the server refused the login (PostgreSQL, MySQL, SQL Server...).
_AUTH_FAILED = re.compile(
    r"password authentication failed|role \"[^\"]*\" does not exist|access denied|"
    r"login failed|authentication failed|no password supplied",
    re.IGNORECASE,
)
LOST_HINT = "check that the server is up and run it again"


def _import_sqlalchemy() -> Any:
    try:
        import sqlalchemy
    except ImportError:
        raise MissingDriverError("sqlalchemy", "sqlalchemy") from None
    return sqlalchemy


def arrow_type_for(sa_type: Any) -> pa.DataType | None:
    """The Arrow type for a reflected SQLAlchemy column type; None when there is no good one."""
    import sqlalchemy.types as t

    if isinstance(sa_type, t.Boolean):
        return pa.bool_()
    if isinstance(sa_type, t.SmallInteger):
        return pa.int16()
    if isinstance(sa_type, t.BigInteger):
        return pa.int64()
    if isinstance(sa_type, t.Integer):
        return pa.int64()
    if isinstance(sa_type, t.Numeric) and not isinstance(sa_type, t.Float):
        precision, scale = sa_type.precision, sa_type.scale
        if precision is None:
            return pa.decimal128(38, 10)
        if precision <= 38:
            return pa.decimal128(precision, scale or 0)
        return pa.decimal256(min(precision, 76), scale or 0)
    if isinstance(sa_type, t.Float):
        return pa.float64()
    if isinstance(sa_type, t.DateTime):
        return pa.timestamp("us", tz="UTC" if sa_type.timezone else None)
    if isinstance(sa_type, t.Date):
        return pa.date32()
    if isinstance(sa_type, t.Time):
        return pa.time64("us")
    if isinstance(sa_type, (t.LargeBinary, t._Binary)):
        return pa.binary()
    if isinstance(sa_type, (t.String, t.Enum, t.JSON, t.Uuid)):
        return pa.string()
    return None


def _logical(sa_type: Any) -> dict[bytes, bytes] | None:
    import sqlalchemy.types as t

    if isinstance(sa_type, t.JSON):
        return {LOGICAL_TYPE_KEY: b"json"}
    if isinstance(sa_type, t.Uuid):
        return {LOGICAL_TYPE_KEY: b"uuid"}
    return None


def sqlalchemy_type_for(field: pa.Field) -> Any:
    """The SQLAlchemy generic type for an Arrow field (the dialect picks the column type)."""
    import sqlalchemy.types as t

    arrow = field.type
    ext = getattr(arrow, "extension_name", None)
    mark = (field.metadata or {}).get(LOGICAL_TYPE_KEY)
    if ext == "arrow.json" or mark == b"json":
        return t.JSON()
    if ext == "arrow.uuid" or mark == b"uuid":
        return t.String(36)
    if isinstance(arrow, pa.BaseExtensionType):
        return sqlalchemy_type_for(pa.field(field.name, arrow.storage_type))
    if pa.types.is_dictionary(arrow):
        return sqlalchemy_type_for(pa.field(field.name, arrow.value_type))
    if pa.types.is_boolean(arrow):
        return t.Boolean()
    if pa.types.is_int8(arrow) or pa.types.is_int16(arrow) or pa.types.is_uint8(arrow):
        return t.SmallInteger()
    if pa.types.is_int32(arrow) or pa.types.is_uint16(arrow):
        return t.Integer()
    if pa.types.is_integer(arrow):
        return t.BigInteger()
    if pa.types.is_floating(arrow):
        return t.Float()
    if pa.types.is_decimal(arrow):
        return t.Numeric(arrow.precision, arrow.scale)
    if pa.types.is_string(arrow) or pa.types.is_large_string(arrow) or pa.types.is_null(arrow):
        return t.Text()
    if pa.types.is_binary(arrow) or pa.types.is_large_binary(arrow):
        return t.LargeBinary()
    if pa.types.is_fixed_size_binary(arrow):
        return t.LargeBinary()
    if pa.types.is_timestamp(arrow):
        return t.DateTime(timezone=arrow.tz is not None)
    if pa.types.is_date(arrow):
        return t.Date()
    if pa.types.is_time(arrow):
        return t.Time()
    if pa.types.is_nested(arrow):
        return t.JSON()
    raise SchemaError(f"column {field.name!r} has Arrow type {arrow}, which has no SQL type here")


class SQLAlchemyBackend(Backend):
    """A database reached through a SQLAlchemy engine (any ``dialect+driver://`` URL).

    Memory: reads hold one ``fetchmany`` of rows as Python values and its Arrow form, when the
    dialect streams (see the module docstring); writes one batch as Python values.
    Errors: unreachable server or refused login -> :class:`SourceError` naming the host;
    missing table -> :class:`NotFoundError`; rejected SQL -> :class:`QueryError`.
    """

    converts_python_values = True  # rows arrive as Python values

    extra = "sqlalchemy"
    name = "sqlalchemy"

    def __init__(self, url: ParsedURL, *, budget: Budget | int | str | None = None) -> None:
        super().__init__(url, budget=Budget.coerce(budget))
        sa = self._sa = _import_sqlalchemy()
        sa_url = sa.engine.make_url(url.raw).difference_update_query(["table"])
        try:
            # One connection at a time per operation, none kept: nothing stays open on error.
            self.engine = sa.create_engine(sa_url, poolclass=sa.pool.NullPool)
        except ImportError as exc:
            raise MissingDriverError(exc.name or str(exc), "sqlalchemy") from None
        except sa.exc.ArgumentError as exc:
            raise ConfigurationError(
                f"{url.display} is not a usable SQLAlchemy URL: {exc}"
            ) from None
        dialect = self.engine.dialect
        self.dialect_name = f"{dialect.name}+{dialect.driver}"
        self.streams = bool(getattr(dialect, "supports_server_side_cursors", False)) or (
            dialect.name in STREAMS_NATIVELY
        )
        with self._connect():
            pass  # fail now on a wrong URL, not at first use

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Any]:
        sa = self._sa
        try:
            conn = self.engine.connect()
        except sa.exc.DBAPIError as exc:
            where = f"{self.url.host or 'localhost'}" + (
                f":{self.url.port}" if self.url.port else ""
            )
            message = " ".join(str(exc.orig).split())
            if (
                "does not exist" in message
                and "database" in message
                or "Unknown database" in (message)
            ):
                raise NotFoundError(
                    f"database {self.url.database!r} does not exist on {where} "
                    f"({self.url.display}): {message}"
                ) from None
            if _AUTH_FAILED.search(message):
                raise SourceError(
                    f"{self.dialect_name} at {where} refused the login ({self.url.display}): "
                    f"{message}; check the user name and password in the URL"
                ) from None
            raise SourceError(
                f"cannot connect to {self.dialect_name} at {where} ({self.url.display}): "
                f"{message}; check that the server is running and the credentials are right"
            ) from None
        try:
            yield conn
        finally:
            conn.close()

    def close(self) -> None:
        if not self.closed:
            self.engine.dispose()
        super().close()

    # reading

    def _table(self, name: str) -> Any:
        sa = self._sa
        schema, _, table = name.rpartition(".")
        try:
            return sa.Table(table, sa.MetaData(), schema=schema or None, autoload_with=self.engine)
        except sa.exc.NoSuchTableError:
            raise NotFoundError(f"no table {name!r} in {self.url.display}") from None

    def _reflected_schema(self, table: Any) -> pa.Schema:
        fields = []
        for column in table.columns:
            arrow = arrow_type_for(column.type) or pa.string()
            fields.append(pa.field(column.name, arrow, metadata=_logical(column.type)))
        return pa.schema(fields)

    def batches(
        self,
        query_or_table: str | None = None,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        budget: Budget | int | str | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Stream a table or query as Arrow batches sized from the rows' measured width.

        ``params`` bind ``:name`` placeholders (a dict). An empty result yields one empty batch.
        """
        sa = self._sa
        sizer = self._budget(budget).sizer()
        target = query_or_table or self.default_table
        if not target:
            raise ConfigurationError(
                f"give a table or a query, or put ?table= in the URL ({self.url.display})"
            )
        if not self.streams:
            warnings.warn(
                f"the {self.dialect_name} dialect cannot stream results (no server-side "
                "cursors): its driver may hold the whole result in memory, outside the budget",
                ResourceWarning,
                stacklevel=2,
            )
        schema: pa.Schema | None = None
        converters: dict[int, Any] = {}
        if is_query(target):
            statement = sa.text(target)
        else:
            table = self._table(target)
            schema = self._reflected_schema(table)
            statement = sa.select(table)
            for index, field in enumerate(schema):
                mark = (field.metadata or {}).get(LOGICAL_TYPE_KEY)
                if mark == b"json":
                    converters[index] = _json_text
                elif mark == b"uuid" or pa.types.is_string(field.type):
                    converters[index] = _text
                elif pa.types.is_floating(field.type):
                    converters[index] = float  # MySQL's DOUBLE comes back as Decimal
        with self._connect() as conn:
            try:
                result = conn.execution_options(
                    stream_results=True, yield_per=sizer.rows_per_batch
                ).execute(statement, params or {})
            except sa.exc.DBAPIError as exc:
                raise self._read_error(exc, target) from None
            try:
                names = list(result.keys())
                produced = False
                while True:
                    try:
                        rows = result.fetchmany(sizer.rows_per_batch)
                    except sa.exc.DBAPIError as exc:
                        raise self._read_error(exc, target) from None
                    if not rows:
                        break
                    if schema is None:
                        columns = list(zip(*rows, strict=True))
                        schema = pa.schema(
                            [
                                pa.field(n, infer_type(c))
                                for n, c in zip(names, columns, strict=True)
                            ]
                        )
                    batch = rows_to_batch(_plain(rows, converters), schema)
                    del rows
                    sizer.observe(batch.num_rows, batch.nbytes)
                    sizer.check_memory(f"reading {target[:60]}")
                    produced = True
                    yield batch
                    del batch
                if not produced:
                    schema = schema or pa.schema([pa.field(n, pa.string()) for n in names])
                    yield pa.RecordBatch.from_arrays(
                        [pa.array([], f.type) for f in schema], schema=schema
                    )
            finally:
                result.close()

    def schema(self, query_or_table: str | None = None) -> pa.Schema:
        target = query_or_table or self.default_table
        if target and not is_query(target):
            return self._reflected_schema(self._table(target))
        return next(iter(self.batches(target, budget=self.budget))).schema

    def _read_error(self, exc: Exception, what: str) -> Exception:
        message = " ".join(str(getattr(exc, "orig", exc)).split())
        if getattr(exc, "connection_invalidated", False):
            where = f"{self.url.host or 'localhost'}" + (
                f":{self.url.port}" if self.url.port else ""
            )
            return SourceError(
                f"lost the connection to {self.dialect_name} at {where} while reading "
                f"{what[:200]!r} ({message}); {LOST_HINT}"
            )
        lowered = message.lower()
        if "no such table" in lowered or ("does not exist" in lowered and "relation" in lowered):
            return NotFoundError(f"{message} in {self.url.display}")
        if isinstance(exc, self._sa.exc.ProgrammingError) or "syntax" in lowered:
            return QueryError(f"{self.dialect_name} rejected the query {what[:200]!r}: {message}")
        return SourceError(f"reading {what[:200]!r} from {self.url.display} failed: {message}")

    # writing

    def write(
        self,
        table: str | None,
        batches: Iterable[pa.RecordBatch],
        *,
        mode: WriteMode = "fail",
        key: Sequence[str] | str | None = None,
        budget: Budget | int | str | None = None,
    ) -> WriteResult:
        """Insert batches with ``executemany``, one transaction per batch.

        ``fail`` and ``replace`` load a table beside the target and rename it into place at the
        end (drop + rename in one transaction where the database's DDL is transactional).
        ``append``/``upsert`` failures after some commits raise :class:`PartialWriteError`.
        """
        sa = self._sa
        keys = check_mode(mode, key)
        name = table or self.default_table
        if not name:
            raise ConfigurationError(
                f"give a table to write to, or put ?table= in the URL ({self.url.display})"
            )
        schema_name, _, table_name = name.rpartition(".")
        schema_name = schema_name or None
        sizer = self._budget(budget).sizer()
        stream = rebatch(iter(batches), sizer)
        result = WriteResult(table=name, mode=mode)
        first = next(stream, None)
        if first is None:
            return result
        inspector = sa.inspect(self.engine)
        exists = inspector.has_table(table_name, schema=schema_name)
        if exists and mode == "fail":
            raise TargetExistsError(
                f"table {name!r} already exists in {self.url.display}; "
                "use mode='append', 'replace' or 'upsert'"
            )
        if not exists or mode == "replace":
            if mode == "upsert":
                target = self._create(table_name, schema_name, first.schema, keys)
                result.created = True
                self._append(target, first, stream, keys, result, upsert=True)
            else:
                self._build(table_name, schema_name, first, stream, keys, result, replace=exists)
            return result
        self._append(self._table(name), first, stream, keys, result, upsert=mode == "upsert")
        return result

    def _create(self, table_name, schema_name, schema: pa.Schema, keys) -> Any:
        sa = self._sa
        columns = [
            sa.Column(f.name, sqlalchemy_type_for(f), primary_key=bool(keys) and f.name in keys)
            for f in schema
        ]
        table = sa.Table(table_name, sa.MetaData(), *columns, schema=schema_name)
        with self.engine.begin() as conn:
            table.create(conn)
        return table

    def _insert(self, conn: Any, table: Any, batch: pa.RecordBatch, upsert_keys) -> None:
        names = batch.schema.names
        rows = [dict(zip(names, row, strict=True)) for row in batch_to_rows(batch)]
        if not rows:
            return
        statement = table.insert()
        if upsert_keys is not None:
            statement = self._upsert(table, names, upsert_keys)
        conn.execute(statement, rows)

    def _upsert(self, table: Any, names: list[str], keys: Sequence[str]) -> Any:
        dialect = self.engine.dialect.name
        if dialect in ("postgresql", "sqlite"):
            module = __import__(f"sqlalchemy.dialects.{dialect}", fromlist=["insert"])
            statement = module.insert(table)
            updates = {n: statement.excluded[n] for n in names if n not in keys}
            if not updates:
                return statement.on_conflict_do_nothing(index_elements=list(keys))
            return statement.on_conflict_do_update(index_elements=list(keys), set_=updates)
        if dialect in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import insert

            statement = insert(table)
            updates = {n: statement.inserted[n] for n in names if n not in keys}
            return statement.on_duplicate_key_update(updates or {keys[0]: table.c[keys[0]]})
        raise ConfigurationError(
            f"mode='upsert' is not available for {self.dialect_name}; use append or replace"
        )

    def _build(self, table_name, schema_name, first, stream, keys, result, *, replace) -> None:
        sa = self._sa
        build_name = f"{TEMP_PREFIX}{_uuid.uuid4().hex[:12]}"
        build = self._create(build_name, schema_name, first.schema, keys)
        preparer = self.engine.dialect.identifier_preparer
        try:
            for batch in prepend(first, stream):
                with self.engine.begin() as conn:
                    self._insert(conn, build, batch, None)
                result.add(batch)
            with self.engine.begin() as conn:
                if self.engine.dialect.name in ("mysql", "mariadb"):
                    # DDL is not transactional there: swap both names in one atomic RENAME
                    # TABLE, so that no failure can leave the target dropped and not replaced.
                    self._swap_mysql(conn, build, table_name, schema_name, replace=replace)
                else:
                    if replace:
                        old = sa.Table(table_name, sa.MetaData(), schema=schema_name)
                        old.drop(conn)
                    conn.execute(
                        sa.text(
                            f"ALTER TABLE {preparer.format_table(build)} RENAME TO "
                            f"{preparer.quote(table_name)}"
                        )
                    )
        except BaseException as exc:
            with contextlib.suppress(Exception), self.engine.begin() as conn:
                build.drop(conn, checkfirst=True)
            if isinstance(exc, sa.exc.DBAPIError):
                left = "the old table is unchanged" if replace else "nothing was created"
                raise TargetError(
                    f"writing {table_name!r} failed after {result.rows} rows, {left}: "
                    f"{' '.join(str(exc.orig).split())}{_lost_hint(exc)}"
                ) from None
            raise
        result.created = True

    def _swap_mysql(self, conn, build, table_name, schema_name, *, replace: bool) -> None:
        preparer = self.engine.dialect.identifier_preparer
        target = sa_name = preparer.quote(table_name)
        if schema_name:
            target = f"{preparer.quote_schema(schema_name)}.{sa_name}"
        built = preparer.format_table(build)
        if not replace:
            conn.execute(self._sa.text(f"RENAME TABLE {built} TO {target}"))
            return
        old = preparer.quote(f"{TEMP_PREFIX}old_{_uuid.uuid4().hex[:12]}")
        if schema_name:
            old = f"{preparer.quote_schema(schema_name)}.{old}"
        conn.execute(self._sa.text(f"RENAME TABLE {target} TO {old}, {built} TO {target}"))
        conn.execute(self._sa.text(f"DROP TABLE {old}"))

    def _append(self, table, first, stream, keys, result, *, upsert: bool) -> None:
        sa = self._sa
        committed = 0
        last_key: tuple[Any, ...] | None = None
        try:
            for batch in prepend(first, stream):
                with self.engine.begin() as conn:
                    self._insert(conn, table, batch, keys if upsert else None)
                committed += batch.num_rows
                result.add(batch)
                if keys and batch.num_rows:
                    last_key = tuple(batch.column(k)[batch.num_rows - 1].as_py() for k in keys)
        except Exception as exc:
            is_db_error = isinstance(exc, sa.exc.DBAPIError)
            message = (
                " ".join(str(exc.orig).split()) if is_db_error else f"{type(exc).__name__}: {exc}"
            )
            if committed == 0:
                if not is_db_error:
                    raise
                raise TargetError(
                    f"writing to {table.name!r} failed, nothing was committed: {message}"
                    f"{_lost_hint(exc)}"
                ) from None
            raise PartialWriteError(
                f"writing to {table.name!r} failed after {committed} rows were committed in "
                f"earlier batches ({message}); {resume_hint(committed, keys, last_key)}",
                rows_committed=committed,
                resume_after=last_key,
            ) from (None if is_db_error else exc)


def _lost_hint(exc: BaseException) -> str:
    """What to do when ``exc`` says the connection was lost (SQLAlchemy's disconnect check)."""
    return f"; {LOST_HINT}" if getattr(exc, "connection_invalidated", False) else ""


def _plain(rows: Sequence[Any], converters: dict[int, Any]) -> list[tuple]:
    """Rows as tuples, with the values SQLAlchemy decoded (JSON, UUID) turned back to text."""
    if not converters:
        return [tuple(row) for row in rows]
    out = []
    for row in rows:
        values = list(row)
        for index, convert in converters.items():
            if values[index] is not None:
                values[index] = convert(values[index])
        out.append(tuple(values))
    return out


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


