"""Redis through redis-py: the keyspace as tables, read by SCAN, written through bounded pipelines.

``redis://[user:password@]host:port/db?table=hashes&match=user:*`` (``rediss://`` for TLS). The
``table`` names the shape of what is read or written, one Redis type each:

========== ============================================ ======================================
table      columns                                      read with
========== ============================================ ======================================
strings    ``key, value``                               SCAN TYPE string + sized MGET
hashes     ``key, field, value``                        HGETALL (small) / HSCAN (big)
lists      ``key, index, value``                        LRANGE windows
sets       ``key, member``                              SMEMBERS (small) / SSCAN (big)
zsets      ``key, member, score``                       ZRANGE WITHSCORES (small) / ZSCAN (big)
streams    ``key, id, field, value`` (a row per field)  XRANGE pages
========== ============================================ ======================================

This module holds the backend: its URL options, the connection and how errors are reported.
Reading is in :mod:`membound.backends.redis_read`, writing in
:mod:`membound.backends.redis_write`, the shapes in :mod:`membound.backends.redis_shapes`.

Memory: keys come one SCAN page at a time (``count=``, a hint), never by ``KEYS``. String
values come by MGET, parsed off the socket value by value into byte-sized batches; a value
larger than the batch target is read alone, straight into an Arrow buffer. A collection's
size and memory decide between one whole read and a scan of it in steps. Writes go through
pipelines flushed by argument count and bytes, never a whole dataset.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa

from membound.backends.base import Backend, WriteMode, WriteResult, check_mode
from membound.backends.kv import KVFormat
from membound.backends.redis_read import (
    RAW_COMMANDS,
    SCAN_COUNT,
    CollectionReader,
    StringReader,
    identity,
)
from membound.backends.redis_shapes import BY_TYPE, SHAPES, Shape, wrong_type
from membound.backends.redis_write import RedisWriter
from membound.budget import Budget
from membound.errors import (
    ConfigurationError,
    MissingDriverError,
    SourceError,
    TargetError,
    URLError,
)

__all__ = ["SHAPES", "RedisBackend"]

# Connecting should fail fast; a read of a 512 MB value over a slow link must not.
CONNECT_TIMEOUT_S = 10.0
SOCKET_TIMEOUT_S = 300.0

_OPTIONS = ("match", "type", "count", "ttl", "keys", "values", "fields", "value_codec",
            "key_column", "value_column", "fetch")


def _redis() -> Any:
    try:
        import redis
    except ImportError:
        raise MissingDriverError("redis", extra="redis") from None
    return redis


class RedisBackend(Backend):
    """``redis://host:port/db``: the keyspace as ``(key, value)`` and per-type tables.

    URL options: ``table=`` (strings, hashes, lists, sets, zsets, streams; or ``type=`` with the
    Redis type name), ``match=`` (a SCAN pattern; without wildcards, one key), ``count=`` (the
    SCAN hint), ``ttl=`` (seconds, for writes), ``fields=bytes|text``, and the key-value
    options of :class:`~membound.backends.kv.KVFormat` (``keys=``, ``values=``, ``value_codec=``).
    Connection problems raise :class:`SourceError` (reading) or :class:`TargetError` (writing).
    """

    converts_python_values = True  # keys and values arrive as Python bytes

    @classmethod
    def converts_python_values_for(cls, url: Any, *, reading: bool) -> bool:
        """Strings build their Arrow columns from joined bytes, and writes read batches with
        ``to_pylist``: only collections (and a value codec's decoded values) convert."""
        if not reading:
            return False
        options = dict(url.options)
        redis_type = options.get("type")
        table = url.table or (BY_TYPE[redis_type].name if redis_type in BY_TYPE else "strings")
        return table != "strings" or bool(options.get("value_codec"))

    name = "redis"
    extra = "redis"

    def __init__(self, url, *, budget: Budget | None = None) -> None:
        super().__init__(url, budget=budget)
        options = dict(url.options)
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ConfigurationError(
                f"unknown Redis URL option(s) {', '.join(unknown)}; known: {', '.join(_OPTIONS)}"
            )
        self.fmt = KVFormat.from_options(options)
        fields = options.get("fields", self.fmt.keys).lower()
        if fields not in ("bytes", "text"):
            raise ConfigurationError(f"URL option fields={fields!r} is not one of bytes, text")
        self.fields = fields
        self.match = options.get("match") or "*"
        self.count = _positive_int(options, "count", SCAN_COUNT)
        self.count_given = bool(options.get("count"))
        self.ttl = _positive_int(options, "ttl", 0) or None
        self.fetch = options.get("fetch", "mget")
        if self.fetch not in ("mget", "script", "pipeline"):
            raise ConfigurationError(
                f"URL option fetch={self.fetch!r} is not one of mget, script, pipeline"
            )
        redis_type = options.get("type")
        if redis_type is not None and redis_type not in BY_TYPE:
            raise ConfigurationError(
                f"URL option type={redis_type!r} is not a Redis type membound reads; use one of "
                f"{', '.join(BY_TYPE)}"
            )
        self._type_table = BY_TYPE[redis_type].name if redis_type else None
        if self._type_table and url.table and url.table != self._type_table:
            raise ConfigurationError(
                f"the URL says table={url.table} and type={redis_type}; give one of them"
            )
        try:
            self.db = int(url.database or 0)
        except ValueError:
            raise URLError(
                f"{url.display!r}: the path of a Redis URL is the database number "
                f"(redis://host:6379/0), not {url.database!r}"
            ) from None
        self.address = f"{url.host or '127.0.0.1'}:{url.port or 6379}/{self.db}"
        self._client: Any = None
        self._fetch_script: Any = None

    @property
    def default_table(self) -> str | None:
        return self.url.table or self._type_table

    # -- connection ----------------------------------------------------------------------------

    def _connect(self, *, reading: bool) -> Any:
        if self._client is not None:
            return self._client
        redis = _redis()
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries: redis-py resends a whole pipeline after a dropped connection, which would
        # repeat RPUSH/XADD commands; a failure is reported instead (PartialWriteError).
        with self._errors("connecting to", reading=reading):
            client = self._new_client(redis, Retry(NoBackoff(), 0))
            # Rows are built from the replies as the server sends them: redis-py's callbacks
            # would make dicts and sets of them first (a copy, and a stream entry would lose
            # repeated fields).
            for command in RAW_COMMANDS:
                client.set_response_callback(command, identity)
            client.ping()
        self._client = client
        return client

    def _new_client(self, redis: Any, retry: Any) -> Any:
        return redis.Redis(
            host=self.url.host or "127.0.0.1",
            port=self.url.port or 6379,
            db=self.db,
            username=self.url.username,
            password=self.url.password,
            ssl=self.url.scheme == "rediss",
            protocol=2,
            decode_responses=False,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=SOCKET_TIMEOUT_S,
            retry=retry,
            single_connection_client=True,
        )

    @contextlib.contextmanager
    def _errors(self, action: str, *, reading: bool, key: bytes | None = None) -> Iterator[None]:
        """Turn redis-py's exceptions into membound's, with a sentence naming the server."""
        redis = _redis()
        exc_types = redis.exceptions
        error = SourceError if reading else TargetError
        try:
            yield
        except exc_types.AuthenticationError as exc:
            raise error(f"Redis at {self.address} refused the credentials in the URL ({exc}); "
                        "check the user name and password") from None
        except (exc_types.ConnectionError, exc_types.TimeoutError) as exc:
            raise error(
                f"{action} Redis at {self.address} failed: {exc}; is the server running and "
                "the URL right (redis://host:port/db)?"
            ) from exc
        except exc_types.ResponseError as exc:
            if str(exc).startswith("WRONGTYPE"):
                raise wrong_type(key, None) from None
            raise error(f"{action} Redis at {self.address}: the server said {exc}") from None

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        super().close()

    # -- metadata ------------------------------------------------------------------------------

    def tables(self) -> list[str]:
        """The shapes a Redis database can be read as."""
        return list(SHAPES)

    def _shape(self, table: str | None) -> Shape:
        name = table or self.default_table or "strings"
        shape = SHAPES.get(name)
        if shape is None:
            raise ConfigurationError(
                f"Redis has no table {name!r}: the table names the kind of keys, one of "
                f"{', '.join(SHAPES)} (e.g. redis://host/0?table=hashes&match=user:*)"
            )
        return shape

    def schema(self, query_or_table: str | None = None) -> pa.Schema:
        shape = self._shape(query_or_table)
        value_type = self.fmt.value_type or pa.binary()
        types = {
            "value": value_type,
            "member": value_type,
            "field": pa.string() if self.fields == "text" else pa.binary(),
            "index": pa.int64(),
            "score": pa.float64(),
            "id": pa.string(),
        }
        names = self._column_names(shape)
        return pa.schema([(names[0], self.fmt.key_type)]
                         + [(names[i + 1], types[c]) for i, c in enumerate(shape.columns)])

    def _column_names(self, shape: Shape) -> list[str]:
        names = [self.fmt.key_column, *shape.columns]
        if "value" in shape.columns:
            names[names.index("value")] = self.fmt.value_column
        return names

    def estimate_rows(self, query_or_table: str | None = None) -> int | None:
        if self._shape(query_or_table).name == "strings" and self.match == "*":
            client = self._connect(reading=True)
            with self._errors("counting keys in", reading=True):
                return int(client.dbsize())
        return None

    # -- reading -------------------------------------------------------------------------------

    def batches(
        self,
        query_or_table: str | None = None,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        budget: Budget | int | str | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Stream one shape of the keyspace (``table``) as byte-sized record batches.

        Keys are those ``match=`` selects, of the shape's Redis type; a ``match=`` without
        wildcards names one key, and raises :class:`NotFoundError` when it is missing or
        :class:`SchemaError` when it holds another type. Keys deleted or retyped while the
        scan runs are skipped.
        """
        if params:
            raise ConfigurationError("a Redis read takes no params; filter keys with match=")
        shape = self._shape(query_or_table)
        budget = self._budget(budget)
        client = self._connect(reading=True)
        if shape.name == "strings":
            return StringReader(self, client).batches(budget)
        return CollectionReader(self, client).batches(shape, budget)

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
        """Write a stream of batches as keys of the shape ``table`` names.

        Modes, per key: ``fail`` refuses a key that exists (strings: checked per pipeline with
        MSETNX / SET NX, so nothing is overwritten; collections: built aside, RENAMENX'd in);
        ``append`` and ``upsert`` add to a key (strings: SET overwrites it; a list gets its
        elements pushed at its end); ``replace`` replaces each key written, as a whole (a
        collection is built aside under a temporary key and RENAMEd over it, atomic per key);
        keys not in the data are left alone. Rows of one collection key must come together.

        Raises :class:`TargetExistsError` (``fail``, before anything was written),
        :class:`SchemaError` for a key of another type, :class:`TargetError` for a server that
        cannot be reached, and :class:`PartialWriteError` (with ``rows_committed`` and the last
        key written as ``resume_after``) when it fails after some rows were written.
        """
        check_mode(mode, key or (self.fmt.key_column,))
        shape = self._shape(table)
        budget = self._budget(budget)
        client = self._connect(reading=False)
        writer = RedisWriter(self, client, shape, mode, budget)
        result = WriteResult(table=shape.name, mode=mode)
        writer.result = result
        try:
            for batch in batches:
                writer.add_batch(batch)
                result.batches += 1
                result.bytes += batch.nbytes
                del batch
            writer.finish()
        except BaseException as exc:
            writer.abort()
            raise writer.report(exc) from exc
        return result


# -- helpers --------------------------------------------------------------------------------------


def _positive_int(options: dict[str, str], name: str, default: int) -> int:
    text = options.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value <= 0:
        raise ConfigurationError(f"URL option {name}={text!r} must be a positive whole number")
    return value
