"""The application API: ``membound.connect()`` and the handle it returns.

A web or batch application reads rows, pages through tables and writes Python objects through
one handle, inside a byte budget::

    with membound.connect("postgresql://localhost/app", max_memory="64MB") as db:
        for row in db.rows("SELECT id, payload FROM events WHERE ts > %s", [since]):
            ...
        page = db.page("events", key=("ts", "id"), size=100, after=token)
        db.write("events_copy", (asdict(e) for e in produce()))

Streams fetch rows in chunks sized in bytes (PostgreSQL through a server-side cursor, MySQL and
MariaDB through an unbuffered cursor, SQLite by stepping), never the whole result. The handle
tracks every cursor it opens and closes them all when it closes, also when the loop that used a
stream raised or stopped early.

Statements in a query use the driver's own placeholders: ``?`` for SQLite, ``%s`` for psycopg and
PyMySQL (see :attr:`Connection.placeholder`).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa

from membound import drivers
from membound.backends.base import WriteResult, check_mode, is_query
from membound.batching import chunk_rows, estimate_row_size, rows_to_batch
from membound.budget import Budget, format_size
from membound.errors import (
    ConfigurationError,
    MemboundError,
    PartialWriteError,
    QueryError,
    ResultTooLarge,
    SchemaError,
    TargetError,
)
from membound.keyset import (
    KeysetQuery,
    Page,
    decode_token,
    encode_token,
    keyset_sql,
    offset_sql,
    quote,
)

__all__ = ["Connection", "OffsetPagingWarning", "ResultSizeWarning", "connect"]

# Past this OFFSET a keyset page is clearly cheaper: the database reads and discards every row
# before the page (bench/cases/paging.py measures both).
OFFSET_WARN_ROWS = 10_000
# fetch_all() warns once the rows it holds pass this share of the budget.
FETCH_ALL_WARN_SHARE = 0.5
_ROW_FACTORIES = ("tuple", "dict", "namedtuple")


class OffsetPagingWarning(UserWarning):
    """An OFFSET page deep enough that keyset paging (``after=token``) would be much faster."""


class ResultSizeWarning(UserWarning):
    """``fetch_all()`` is holding more rows in memory than the budget comfortably allows."""


def connect(
    target: Any,
    *,
    max_memory: int | str | Budget | None = None,
    policy: str = "adapt",
    token_secret: str | bytes | None = None,
) -> Connection:
    """Open a handle on a SQL database: a URL, a DB-API connection or a SQLAlchemy object.

    ``target`` is a URL (``sqlite:///app.db``, ``postgresql://...``, ``mysql://...``, any
    SQLAlchemy URL) or an existing sqlite3 / psycopg / PyMySQL / MySQLdb connection, or a
    SQLAlchemy ``Engine`` or ``Connection``. A handle opened from a URL owns its connection and
    closes it; an adopted connection is left open (only the cursors the handle opened are
    closed). ``token_secret`` signs page tokens (default: ``MEMBOUND_TOKEN_SECRET``).
    """
    if isinstance(max_memory, Budget):
        budget = max_memory
    else:
        budget = Budget(max_memory, policy=policy) if max_memory is not None else Budget(
            policy=policy)
    session = drivers.open_session(target, budget)
    return Connection(session, budget=budget, token_secret=token_secret)


class Connection:
    """A handle on one SQL database. Use it as a context manager; see :func:`connect`."""

    def __init__(self, session: drivers.Session, *, budget: Budget,
                 token_secret: str | bytes | None = None) -> None:
        self._session = session
        self.budget = budget
        self._token_secret = token_secret
        self._streams: set[drivers.Stream] = set()
        self._backend: Any = None
        self._page_info: dict[str, Any] = {}  # table -> drivers.TableInfo, for page()
        self.closed = False

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<membound.Connection {self.dialect} {self._session.display} ({state})>"

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def dialect(self) -> str:
        """``"sqlite"``, ``"postgresql"``, ``"mysql"`` or the SQLAlchemy dialect's name."""
        return self._session.dialect

    @property
    def placeholder(self) -> str:
        """The parameter placeholder queries use here: ``?`` or ``%s``."""
        return self._session.placeholder

    @property
    def open_cursors(self) -> int:
        """How many cursors this handle has open right now."""
        return len(self._streams)

    def close(self) -> None:
        """Close every cursor this handle opened, then its connection (if it owns it)."""
        if self.closed:
            return
        self.closed = True
        errors = []
        for stream in list(self._streams):
            try:
                stream.close()
            except Exception as exc:  # close the rest before reporting
                errors.append(exc)
        self._streams.clear()
        try:
            if self._backend is not None:
                self._backend.close()
        finally:
            self._session.close()
        if errors:
            raise errors[0]

    def _check_open(self) -> None:
        if self.closed:
            raise ConfigurationError(f"{self!r} is closed; open a new one with membound.connect()")

    # -- reading -----------------------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> int:
        """Run one statement that returns no rows (DDL, UPDATE...), committed; the row count."""
        self._check_open()
        return self._session.execute(sql, params)

    def rows(
        self,
        query_or_table: str,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        row_factory: str | Callable[..., Any] = "tuple",
        limit: int | None = None,
        max_rows: int | None = None,
    ) -> Iterator[Any]:
        """Stream a query's rows (or a table's), fetched in chunks sized in bytes.

        ``row_factory``: ``"tuple"`` (default), ``"dict"``, ``"namedtuple"``, or a callable
        taking the column names and returning a function of a row tuple. ``limit`` cuts the
        result in SQL; ``max_rows`` is a safety bound: a result with more rows raises
        :class:`~membound.errors.ResultTooLarge` instead of yielding row ``max_rows + 1``.
        """
        self._check_open()
        sql = self._select(query_or_table)
        if limit is not None:
            if int(limit) < 0:
                raise ConfigurationError(f"limit must be >= 0; got {limit}")
            sql = f"SELECT * FROM ({sql}) AS _membound_limit LIMIT {int(limit)}"
        return self._iterate(sql, params, row_factory, max_rows)

    def _select(self, query_or_table: str) -> str:
        if not isinstance(query_or_table, str) or not query_or_table.strip():
            raise ConfigurationError("give a query or a table name")
        if is_query(query_or_table):
            return query_or_table.strip().rstrip(";")
        return f"SELECT * FROM {self._session.qualified(query_or_table)}"

    def _iterate(self, sql: str, params: Any, row_factory: Any, max_rows: int | None,
                 strip: int = 0) -> Iterator[Any]:
        with self._opened(sql, params) as stream:
            make = _row_maker(row_factory, stream.columns[: len(stream.columns) - strip])
            seen = 0
            for chunk in stream.chunks():
                for row in chunk:
                    if stream.closed:
                        raise ConfigurationError(
                            "the connection this result came from was closed; read results "
                            "inside the `with membound.connect(...)` block"
                        )
                    seen += 1
                    if max_rows is not None and seen > max_rows:
                        raise ResultTooLarge(
                            f"the result has more than max_rows={max_rows} rows; narrow the "
                            "query, page through it, or raise max_rows",
                            max_rows=max_rows,
                        )
                    yield make(row[: len(row) - strip] if strip else row)

    @contextlib.contextmanager
    def _opened(self, sql: str, params: Any, *, bounded: bool = False) -> Iterator[Any]:
        """A stream this handle tracks (so close() can close it), closed when the block ends."""
        stream = self._session.stream(sql, params, self.budget, bounded=bounded)
        self._streams.add(stream)
        try:
            yield stream
        finally:
            self._streams.discard(stream)
            stream.close()

    def fetch_all(
        self,
        query_or_table: str,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        row_factory: str | Callable[..., Any] = "tuple",
        limit: int | None = None,
        max_rows: int | None = None,
    ) -> list[Any]:
        """The eager choice: every row in one list. Streams underneath, and warns with
        :class:`ResultSizeWarning` once the list passes half the budget."""
        result: list[Any] = []
        held = 0
        warned = False
        threshold = self.budget.max_memory * FETCH_ALL_WARN_SHARE
        for row in self.rows(query_or_table, params, row_factory=row_factory, limit=limit,
                             max_rows=max_rows):
            result.append(row)
            if not warned and len(result) % 256 == 1:
                held = estimate_row_size(row) * len(result)
                if held > threshold:
                    warned = True
                    warnings.warn(
                        f"fetch_all() holds about {format_size(held)} of rows, past half the "
                        f"{format_size(self.budget.max_memory)} budget; iterate rows() instead",
                        ResultSizeWarning,
                        stacklevel=2,
                    )
        return result

    def batches(self, query_or_table: str,
                params: Sequence[Any] | dict[str, Any] | None = None) -> Iterator[pa.RecordBatch]:
        """Stream a query's result as byte-sized Arrow record batches (the bulk path)."""
        self._check_open()
        backend = self._bulk_backend()
        if backend is not None:
            yield from backend.batches(query_or_table, params, budget=self.budget)
            return
        with self._opened(self._select(query_or_table), params) as stream:
            schema = None
            for chunk in stream.chunks():
                if schema is None:
                    schema = drivers.infer_schema(stream.columns, chunk)
                yield rows_to_batch(chunk, schema)

    # -- paging ------------------------------------------------------------------------------

    def page(
        self,
        table_or_query: str,
        key: Sequence[str] | str,
        *,
        size: int = 100,
        after: str | None = None,
        descending: bool = False,
        params: Sequence[Any] | None = None,
        offset: int | None = None,
        row_factory: str | Callable[..., Any] = "tuple",
    ) -> Page:
        """One page of ``size`` rows in ``key`` order, after the position ``after`` names.

        ``after`` is a token a page gave (``next_token`` goes forward, ``previous_token``
        back); None starts at the beginning. On a table, a key that is not unique gets the
        primary key appended as tie-breaker. NULL key values sort after all others ascending
        (before them descending) on every database. ``offset=`` pages by OFFSET instead, only
        when asked for, with :class:`OffsetPagingWarning` past 10,000 rows. A handle
        remembers a table's columns and keys after its first page: after ALTER TABLE, page
        through a new handle.
        """
        self._check_open()
        if int(size) < 1:
            raise ConfigurationError(f"size must be >= 1; got {size}")
        q, strip = self._keyset_query(table_or_query, key, descending)
        fingerprint = q.fingerprint()
        if offset is not None:
            return self._offset_page(q, int(offset), int(size), params, row_factory, strip)
        position, forward = None, True
        if after is not None:
            position, forward = decode_token(after, fingerprint=fingerprint,
                                             key_length=len(q.key), secret=self._token_secret)
        sql, seek_params = keyset_sql(q, position, forward=forward, limit=size + 1,
                                      placeholder=self.placeholder)
        # The SQL says LIMIT size + 1: reading it whole is bounded.
        with self._opened(sql, _join_params(params, seek_params), bounded=True) as stream:
            positions = [stream.columns.index(k) for k in q.key]
            raw = [row for chunk in stream.chunks() for row in chunk]
            names = stream.columns[: len(stream.columns) - strip]
        more = len(raw) > size
        raw = raw[:size]
        if not forward:
            raw.reverse()

        def token(row: tuple, fwd: bool) -> str:
            return encode_token([row[i] for i in positions], forward=fwd,
                                fingerprint=fingerprint, secret=self._token_secret)

        next_token = previous_token = None
        if raw:
            if more or not forward:
                next_token = token(raw[-1], True)
            if (more and not forward) or (forward and position is not None):
                previous_token = token(raw[0], False)
        elif position is not None:
            # An empty page from a token: the way back is from where the token pointed.
            back = encode_token(position, forward=not forward, fingerprint=fingerprint,
                                secret=self._token_secret)
            next_token, previous_token = (None, back) if forward else (back, None)
        make = _row_maker(row_factory, names)
        rows = [make(r[: len(r) - strip] if strip else r) for r in raw]
        return Page(rows=rows, next_token=next_token, previous_token=previous_token)

    def pages(
        self,
        table_or_query: str,
        key: Sequence[str] | str,
        *,
        size: int = 100,
        after: str | None = None,
        descending: bool = False,
        params: Sequence[Any] | None = None,
        row_factory: str | Callable[..., Any] = "tuple",
    ) -> Iterator[Page]:
        """Every page from ``after`` (or the start) to the end, by keyset."""
        token = after
        while True:
            page = self.page(table_or_query, key, size=size, after=token, descending=descending,
                             params=params, row_factory=row_factory)
            if page.rows:
                yield page
            if page.next_token is None:
                return
            token = page.next_token

    def _keyset_query(self, table_or_query: str, key: Sequence[str] | str,
                      descending: bool) -> tuple[KeysetQuery, int]:
        keys = (key,) if isinstance(key, str) else tuple(key)
        if not keys:
            raise ConfigurationError("give key=, the column(s) to page by, e.g. ('ts', 'id')")
        strip = 0
        if is_query(table_or_query):
            # A query's columns cannot be introspected: its key is taken as unique and nullable.
            source = table_or_query.strip().rstrip(";")
            nullable = tuple(True for _ in keys)
        else:
            # Cached per handle: three catalog queries would cost more than the page itself.
            info = self._page_info.get(table_or_query)
            if info is None:
                info = self._page_info[table_or_query] = self._session.table_info(table_or_query)
            missing = [k for k in keys if k not in info.columns]
            if missing:
                raise ConfigurationError(
                    f"key column {missing[0]!r} is not in table {table_or_query!r}; its columns "
                    f"are {', '.join(info.columns)}"
                )
            keys = keys + info.tie_breaker(keys, table_or_query)
            columns = ", ".join(quote(c, self.dialect) for c in info.columns)
            source = f"SELECT {columns} FROM {self._session.qualified(table_or_query)}"
            if info.hidden_key and info.hidden_key in keys:
                alias = quote(info.hidden_key, self.dialect)
                source = (f"SELECT {columns}, {info.hidden_key} AS {alias} "
                          f"FROM {self._session.qualified(table_or_query)}")
                strip = 1
            nullable = tuple(info.nullable.get(k, False) for k in keys)
        return KeysetQuery(source, keys, nullable, self.dialect, bool(descending)), strip

    def _offset_page(self, q: KeysetQuery, offset: int, size: int, params: Any,
                     row_factory: Any, strip: int) -> Page:
        if offset < 0:
            raise ConfigurationError(f"offset must be >= 0; got {offset}")
        if offset > OFFSET_WARN_ROWS:
            warnings.warn(
                f"OFFSET {offset} makes the database read and discard {offset} rows for this "
                "page; keyset paging (after=page.next_token) costs the same at any depth",
                OffsetPagingWarning,
                stacklevel=3,
            )
        sql = offset_sql(q, offset, size + 1)
        rows = list(self._iterate(sql, params, row_factory, None, strip))
        more = len(rows) > size
        return Page(rows=rows[:size], offset=offset + size if more else None)

    # -- writing -----------------------------------------------------------------------------

    def write(
        self,
        table: str,
        rows: Iterable[Any],
        *,
        mode: str = "append",
        key: Sequence[str] | str | None = None,
        atomic: bool = False,
        columns: Sequence[str] | None = None,
    ) -> WriteResult:
        """Write an iterable of tuples, dicts or dataclass instances to ``table``.

        The iterable (a generator is fine) is consumed in byte-sized chunks, never held whole.
        Each chunk is one short transaction, unless ``atomic=True``: then nothing is visible
        until the last row is in, and a failure leaves the table as it was. ``mode``:
        ``"append"`` (default; creates the table when missing), ``"upsert"`` on ``key``,
        ``"replace"`` (atomic swap) or ``"fail"`` (refuse an existing table). Tuples take the
        table's column order unless ``columns=`` names them.
        """
        self._check_open()
        keys = check_mode(mode, key)
        iterator = iter(rows)
        first = next(iterator, _END)
        if first is _END:
            return WriteResult(table=table, mode=mode)
        names, to_tuple = self._row_shape(table, first, columns)
        if mode == "upsert":
            self._check_upsert_key(table, keys or ())
        tuples = map(to_tuple, itertools.chain([first], iterator))
        chunks = chunk_rows(tuples, self.budget)
        if atomic and mode in ("append", "upsert"):
            return self._atomic_write(table, names, chunks, mode, keys)
        return self._session.write_rows(table, names, chunks, mode=mode, keys=keys,
                                        budget=self.budget, backend=self._bulk_backend)

    def _check_upsert_key(self, table: str, keys: tuple[str, ...]) -> None:
        info = self._session.table_info(table, missing_ok=True)
        if info is None or self.dialect not in ("sqlite", "postgresql", "mysql"):
            return  # a new table gets the key as its primary key
        indexes = ([info.primary] if info.primary else []) + info.unique
        if not any(set(index) == set(keys) for index in indexes):
            raise SchemaError(
                f"upsert on ({', '.join(keys)}) needs a primary key or unique index on exactly "
                f"those columns in {table!r}; create one (CREATE UNIQUE INDEX ...) or key on "
                "the columns that have one"
            )

    def _row_shape(self, table: str, first: Any, columns: Sequence[str] | None
                   ) -> tuple[list[str], Callable[[Any], tuple]]:
        if isinstance(first, dict):
            names = list(columns or first)
            return names, _dict_getter(names)
        if dataclasses.is_dataclass(first) and not isinstance(first, type):
            names = list(columns or (f.name for f in dataclasses.fields(first)))
            getters = [_attr(n) for n in names]
            return names, (lambda obj: tuple(g(obj) for g in getters))
        if isinstance(first, (tuple, list)):
            if columns is None:
                info = self._session.table_info(table, missing_ok=True)
                if info is None:
                    raise ConfigurationError(
                        f"table {table!r} does not exist, so tuples have no column names; pass "
                        "columns=(...) or write dicts or dataclass instances"
                    )
                columns = info.columns
            names = list(columns)
            if len(first) != len(names):
                raise SchemaError(
                    f"a row has {len(first)} values but {table!r} has {len(names)} columns "
                    f"({', '.join(names)}); pass columns= to name the ones the rows hold"
                )
            return names, tuple
        raise SchemaError(
            f"write() takes tuples, dicts or dataclass instances, not {type(first).__name__}"
        )

    def _atomic_write(self, table: str, names: list[str], chunks: Iterator[list[tuple]],
                      mode: str, keys: tuple[str, ...] | None) -> WriteResult:
        """Stage every chunk in a scratch table, then move it in with one transaction."""
        stage = self._session.stage_name(table)
        existed = self._session.table_info(table, missing_ok=True) is not None
        try:
            result = self._session.write_rows(stage, names, chunks, mode="fail", keys=None,
                                              budget=self.budget, backend=self._bulk_backend,
                                              like=table)
            self._session.merge(stage, table, names, keys if mode == "upsert" else None)
        except (PartialWriteError, QueryError, TargetError) as exc:
            raise TargetError(
                f"the atomic write to {table!r} failed and wrote nothing: {exc}"
            ) from exc
        finally:
            with contextlib.suppress(MemboundError, Exception):
                self._session.drop(stage)
        return WriteResult(table=table, mode=mode, rows=result.rows, batches=result.batches,
                           bytes=result.bytes, created=not existed)

    def _bulk_backend(self) -> Any:
        """The URL's backend (its fast Arrow paths), opened on first use; None when adopted."""
        if self._backend is None and self._session.url is not None:
            from membound.backends.base import open_backend

            self._backend = open_backend(self._session.url, budget=self.budget)
        return self._backend


_END = object()


def _join_params(first: Any, second: list[Any]) -> Any:
    if not first:
        return second
    if isinstance(first, dict):
        raise ConfigurationError("page() takes positional params (a list), not a dict")
    return [*first, *second]


def _dict_getter(names: list[str]) -> Callable[[dict], tuple]:
    def get(row: dict) -> tuple:
        return tuple(row.get(name) for name in names)
    return get


def _attr(name: str) -> Callable[[Any], Any]:
    return lambda obj: getattr(obj, name)


def _row_maker(row_factory: str | Callable[..., Any], names: Sequence[str]
               ) -> Callable[[tuple], Any]:
    if callable(row_factory):
        return row_factory(list(names))
    if row_factory == "tuple":
        return tuple
    if row_factory == "dict":
        return lambda row: dict(zip(names, row, strict=True))
    if row_factory == "namedtuple":
        Row = collections.namedtuple("Row", names, rename=True)  # noqa: PYI024
        return lambda row: Row._make(row)
    raise ConfigurationError(
        f"row_factory must be one of {', '.join(_ROW_FACTORIES)} or a callable; got "
        f"{row_factory!r}"
    )
