"""Redis through redis-py: the keyspace as tables, read by SCAN, written through bounded pipelines.

``redis://[user:password@]host:port/db?table=hashes&match=user:*`` (``rediss://`` for TLS). The
``table`` names the shape of what is read or written, one Redis type each:

========== ============================================ ======================================
table      columns                                      read with
========== ============================================ ======================================
strings    ``key, value``                               SCAN TYPE string + a bounded fetch
hashes     ``key, field, value``                        HGETALL (small) / HSCAN (big)
lists      ``key, index, value``                        LRANGE windows
sets       ``key, member``                              SMEMBERS (small) / SSCAN (big)
zsets      ``key, member, score``                       ZRANGE WITHSCORES (small) / ZSCAN (big)
streams    ``key, id, field, value`` (a row per field)  XRANGE pages
========== ============================================ ======================================

Memory: keys come one SCAN page at a time (``count=``, a hint), never by ``KEYS``. String values
come through a server-side script that stops adding values to its reply once the batch target is
reached, so one reply is never larger than a batch plus one value; a value larger than the batch
target is read alone, by ``GETRANGE`` pieces, straight into an Arrow buffer. A collection's size
and memory (``MEMORY USAGE``) decide between one whole read (grouped by bytes with other small
keys) and a scan of it in steps sized from its average element. Writes go through pipelines
flushed every :data:`PIPELINE_MAX_ARGS` arguments or batch target of bytes, never a whole
dataset. SCAN and the *SCAN commands may return an element twice (while Redis resizes a table):
duplicates are removed within one page, not across pages.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa

from membound.backends.base import Backend, WriteMode, WriteResult, check_mode
from membound.backends.kv import PAIR_OVERHEAD, KVFormat, PairBatcher, as_bytes_column
from membound.budget import Budget
from membound.errors import (
    ConfigurationError,
    MissingDriverError,
    NotFoundError,
    PartialWriteError,
    SchemaError,
    SourceError,
    TargetError,
    TargetExistsError,
    URLError,
)
from membound.memory import gc_paused

__all__ = ["SHAPES", "RedisBackend"]

# Keys asked for per SCAN call when the URL gives no count=: a page of keys is small (tens of
# kB) and a round trip per thousand keys costs nothing measurable.
SCAN_COUNT = 1000
# Keys sent to the bounded-fetch script at once: the script stops early at the batch target.
FETCH_KEYS = 1000
# A string value above the batch target is read alone by GETRANGE pieces of this size (at most),
# so neither the server's reply buffer nor this process holds it twice.
RANGE_CHUNK = 4 * 1024 * 1024
# A pipeline is sent once it holds this many arguments (Redis' own guidance: about 10k commands
# per round trip) or the batch target of bytes, whichever comes first.
PIPELINE_MAX_ARGS = 20_000
# Elements per variadic command (HSET, RPUSH, SADD, ZADD, MSET): long enough to amortise the
# command, short enough that the server never blocks on one.
COMMAND_MAX_ELEMENTS = 1000
# A collection with at most this many elements may be read whole (HGETALL, SMEMBERS...), if
# its MEMORY USAGE also fits the batch target; a bigger one is scanned step by step.
WHOLE_MAX_ELEMENTS = 10_000
# Bounds for the COUNT of HSCAN/SSCAN/ZSCAN, LRANGE windows and XRANGE pages.
STEP_MIN = 10
STEP_MAX = 10_000
# Temporary keys ("replace" and "fail" build a collection aside) expire after this long if the
# process dies before renaming them into place.
TEMP_KEY_TTL_S = 24 * 3600
TEMP_PREFIX = b"__membound_tmp__:"
# Connecting should fail fast; a read of a 512 MB value over a slow link must not.
CONNECT_TIMEOUT_S = 10.0
SOCKET_TIMEOUT_S = 300.0

# The bounded fetch of string values, one round trip per call. For each key: -1 it is gone,
# -2 it is no longer a string, an integer >= 0 its length when it is larger than ARGV[2] (the
# client reads it by GETRANGE), else its value. Stops (returns fewer items than keys) once the
# values returned reach ARGV[1] bytes; the first value is always returned.
_FETCH_SCRIPT = """
local budget = tonumber(ARGV[1])
local large = tonumber(ARGV[2])
local out = {}
local used = 0
for i, key in ipairs(KEYS) do
  local n = redis.pcall('STRLEN', key)
  if type(n) == 'table' then
    out[i] = -2
  elseif n > large then
    out[i] = n
  elseif used > 0 and used + n > budget then
    break
  else
    local v = redis.call('GET', key)
    if v then
      out[i] = v
      used = used + n
    else
      out[i] = -1
    end
  end
end
return out
"""

_GLOB = re.compile(rb"[*?\[\\]")


@dataclass(frozen=True)
class Shape:
    """One table of the keyspace: the Redis type it holds and its columns."""

    name: str
    redis_type: str
    columns: tuple[str, ...]  # after "key"
    size_command: str | None = None  # HLEN...; None for strings


SHAPES: dict[str, Shape] = {
    shape.name: shape
    for shape in (
        Shape("strings", "string", ("value",)),
        Shape("hashes", "hash", ("field", "value"), "HLEN"),
        Shape("lists", "list", ("index", "value"), "LLEN"),
        Shape("sets", "set", ("member",), "SCARD"),
        Shape("zsets", "zset", ("member", "score"), "ZCARD"),
        Shape("streams", "stream", ("id", "field", "value"), "XLEN"),
    )
}
_BY_TYPE = {shape.redis_type: shape for shape in SHAPES.values()}
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
        self.ttl = _positive_int(options, "ttl", 0) or None
        self.fetch = options.get("fetch", "script")
        if self.fetch not in ("script", "pipeline"):
            raise ConfigurationError(f"URL option fetch={self.fetch!r} is not script or pipeline")
        redis_type = options.get("type")
        if redis_type is not None and redis_type not in _BY_TYPE:
            raise ConfigurationError(
                f"URL option type={redis_type!r} is not a Redis type membound reads; use one of "
                f"{', '.join(_BY_TYPE)}"
            )
        self._type_table = _BY_TYPE[redis_type].name if redis_type else None
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
            for command in _RAW_COMMANDS:
                client.set_response_callback(command, _identity)
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
                raise _wrong_type(key, None) from None
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
            return self._string_batches(client, budget)
        return self._collection_batches(client, shape, budget)

    def _key_pages(self, client: Any, shape: Shape) -> Iterator[list[bytes]]:
        """Pages of keys of the shape's type, by SCAN (deduplicated within a page)."""
        pattern = self.match.encode()
        if not _GLOB.search(pattern):
            with self._errors("reading", reading=True):
                found = client.type(pattern).decode()
            if found == "none":
                raise NotFoundError(f"no key {self.match!r} in Redis database {self.address}")
            if found != shape.redis_type:
                raise _wrong_type(pattern, found, wanted=shape)
            yield [pattern]
            return
        cursor = 0
        while True:
            with self._errors("scanning keys of", reading=True):
                cursor, keys = client.scan(cursor, match=pattern, count=self.count,
                                           _type=shape.redis_type)
            if keys:
                yield list(dict.fromkeys(keys))
            if cursor == 0:
                return

    def _string_batches(self, client: Any, budget: Budget) -> Iterator[pa.RecordBatch]:
        batcher = PairBatcher(self.fmt, budget)
        target = batcher.target
        shape = SHAPES["strings"]
        for page in self._key_pages(client, shape):
            start = 0
            while start < len(page):
                keys = page[start:start + FETCH_KEYS]
                room = max(1, target - batcher.nbytes)
                replies = self._fetch_strings(client, keys, room, target)
                start += len(replies)
                for key, reply in zip(keys, replies, strict=False):
                    if isinstance(reply, bytes):
                        batch = batcher.add(key, reply)
                        if batch is not None:
                            yield batch
                    elif reply >= 0:
                        pending = batcher.flush()
                        if pending is not None:
                            yield pending
                        large = self._large_string(client, key, reply)
                        if large is not None:
                            yield large
                    # -1: deleted since the SCAN; -2: retyped since: skipped like a deleted key.
                del replies
        last = batcher.flush()
        if last is not None:
            yield last

    def _fetch_strings(self, client: Any, keys: list[bytes], room: int, large: int) -> list:
        """Values (or markers, see _FETCH_SCRIPT) for a prefix of ``keys``, about ``room`` bytes."""
        redis = _redis()
        if self.fetch == "script":
            if self._fetch_script is None:
                self._fetch_script = client.register_script(_FETCH_SCRIPT)
            try:
                with gc_paused():
                    return self._fetch_script(keys=keys, args=[room, large], client=client)
            except redis.exceptions.ResponseError as exc:
                if not _scripting_denied(exc):
                    raise SourceError(f"reading strings from Redis at {self.address}: the "
                                      f"server said {exc}") from None
                self.fetch = "pipeline"  # scripts are off or not allowed: lengths first
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                with self._errors("reading strings from", reading=True):
                    raise
        return self._fetch_strings_pipelined(client, keys, room, large)

    def _fetch_strings_pipelined(self, client: Any, keys: list[bytes], room: int,
                                 large: int) -> list:
        """The script's answer in two round trips, for servers that run no scripts."""
        with self._errors("reading strings from", reading=True):
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.strlen(key)
            lengths = pipe.execute(raise_on_error=False)
            out: list = []
            small: list[int] = []
            used = 0
            for i, length in enumerate(lengths):
                if isinstance(length, Exception):
                    out.append(-2)
                elif length > large:
                    out.append(length)
                elif used and used + length > room:
                    break
                else:
                    out.append(None)
                    small.append(i)
                    used += length
            if small:
                values = client.mget([keys[i] for i in small])
                for i, value in zip(small, values, strict=True):
                    out[i] = -1 if value is None else value
        return out

    def _large_string(self, client: Any, key: bytes, length: int) -> pa.RecordBatch | None:
        """One value larger than the batch target, read by GETRANGE pieces into Arrow."""
        data = pa.allocate_buffer(length) if length else pa.py_buffer(b"")
        view = memoryview(data).cast("B") if length else None
        offset = 0
        with self._errors("reading a large value from", reading=True, key=key):
            while offset < length:
                piece = client.getrange(key, offset, min(length, offset + RANGE_CHUNK) - 1)
                if not piece:
                    break
                assert view is not None
                view[offset:offset + len(piece)] = piece
                offset += len(piece)
                del piece
            # A length that changed under us means another client wrote the key meanwhile.
            final = client.strlen(key)
            gone = final == 0 and not client.exists(key)
        if view is not None:
            view.release()
        if gone:
            return None
        if offset != length or final != length:
            raise SourceError(
                f"Redis key {_show(key)} changed size while it was read ({length} -> {final} "
                "bytes); read it again when it is not being written"
            )
        if self.fmt.value_codec is not None or self.fmt.values == "text":
            return self.fmt.to_batch([key], [data.to_pybytes()])
        offsets = pa.array([0, length], pa.int32()).buffers()[1]
        values = pa.Array.from_buffers(pa.binary(), 1, [None, offsets, data])
        keys = self.fmt.to_batch([key], [b""]).column(0)
        return pa.RecordBatch.from_arrays([keys, values],
                                          names=[self.fmt.key_column, self.fmt.value_column])

    def _collection_batches(self, client: Any, shape: Shape, budget: Budget
                            ) -> Iterator[pa.RecordBatch]:
        builder = _RowBuilder(self, shape, budget.batch_bytes)
        target = builder.target
        for page in self._key_pages(client, shape):
            with self._errors("reading", reading=True):
                sizes = _pipelined(client, [(shape.size_command, key) for key in page])
                usage = _pipelined(client, [
                    ("MEMORY", "USAGE", key, *(("SAMPLES", 0) if 0 < size <= WHOLE_MAX_ELEMENTS
                                                else ()))
                    for key, size in zip(page, sizes, strict=True)
                ])
            whole: list[bytes] = []
            whole_bytes = 0
            for key, size, memory in zip(page, sizes, usage, strict=True):
                if isinstance(size, Exception) or not size:
                    continue  # retyped or deleted since the SCAN
                memory = memory if isinstance(memory, int) else None
                if shape.name != "streams" and size <= WHOLE_MAX_ELEMENTS and memory is not None \
                        and memory <= target:
                    if whole and whole_bytes + memory > target:
                        yield from self._read_whole(client, shape, whole, builder)
                        whole, whole_bytes = [], 0
                    whole.append(key)
                    whole_bytes += memory
                    continue
                yield from self._read_whole(client, shape, whole, builder)
                whole, whole_bytes = [], 0
                per_element = (memory or 64 * size) / size
                step = int(max(STEP_MIN, min(STEP_MAX, target // (2 * max(per_element, 1)))))
                for rows in self._read_steps(client, shape, key, step):
                    for row in rows:
                        batch = builder.add(row)
                        if batch is not None:
                            yield batch
            yield from self._read_whole(client, shape, whole, builder)
        last = builder.flush()
        if last is not None:
            yield last

    def _read_whole(self, client: Any, shape: Shape, keys: list[bytes],
                    builder: _RowBuilder) -> Iterator[pa.RecordBatch]:
        if not keys:
            return
        command = {"hashes": ("HGETALL",), "lists": ("LRANGE", 0, -1), "sets": ("SMEMBERS",),
                   "zsets": ("ZRANGE", 0, -1, "WITHSCORES")}[shape.name]
        with self._errors("reading", reading=True):
            replies = _pipelined(client, [(command[0], key, *command[1:]) for key in keys])
        for key, reply in zip(keys, replies, strict=True):
            if isinstance(reply, Exception):
                continue  # retyped since the SCAN
            for row in _rows(shape, key, reply, 0):
                batch = builder.add(row)
                if batch is not None:
                    yield batch
        del replies

    def _read_steps(self, client: Any, shape: Shape, key: bytes, step: int
                    ) -> Iterator[list[tuple]]:
        """Rows of one big collection, ``step`` elements per round trip."""
        with self._errors("reading", reading=True, key=key):
            if shape.name == "lists":
                start = 0
                while True:
                    items = client.execute_command("LRANGE", key, start, start + step - 1)
                    if not items:
                        return
                    yield list(_rows(shape, key, items, start))
                    start += len(items)
            elif shape.name == "streams":
                low = b"-"
                while True:
                    entries = client.execute_command("XRANGE", key, low, b"+", "COUNT", step)
                    if not entries:
                        return
                    yield list(_rows(shape, key, entries, 0))
                    low = b"(" + entries[-1][0]
                    if len(entries) < step:
                        return
            else:
                command = {"hashes": "HSCAN", "sets": "SSCAN", "zsets": "ZSCAN"}[shape.name]
                cursor = b"0"
                while True:
                    cursor, items = client.execute_command(command, key, cursor, "COUNT", step)
                    if shape.name == "sets":
                        items = list(dict.fromkeys(items))
                    else:
                        # pairs; a field seen twice in one reply is kept once
                        pairs = dict(zip(items[::2], items[1::2], strict=True))
                        items = [x for pair in pairs.items() for x in pair]
                    yield list(_rows(shape, key, items, 0))
                    if cursor in (b"0", 0):
                        return

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
        writer = _Writer(self, client, shape, mode, budget)
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


_RAW_COMMANDS = ("HGETALL", "SMEMBERS", "ZRANGE", "XRANGE", "HSCAN", "SSCAN", "ZSCAN")


def _identity(response: Any, **options: Any) -> Any:
    return response


def _pipelined(client: Any, commands: Sequence[tuple]) -> list:
    """Run commands in one pipeline round trip; a command's error is returned, not raised."""
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return pipe.execute(raise_on_error=False)


def _rows(shape: Shape, key: bytes, reply: Any, start: int) -> Iterator[tuple]:
    """The rows of one collection reply (a flat list as the server sends it)."""
    name = shape.name
    if name == "hashes":
        if isinstance(reply, dict):
            reply = [x for pair in reply.items() for x in pair]
        for i in range(0, len(reply), 2):
            yield key, reply[i], reply[i + 1]
    elif name == "lists":
        for offset, value in enumerate(reply):
            yield key, start + offset, value
    elif name == "sets":
        for member in reply:
            yield (key, member)
    elif name == "zsets":
        if reply and isinstance(reply[0], tuple):
            reply = [x for pair in reply for x in pair]
        for i in range(0, len(reply), 2):
            yield key, reply[i], float(reply[i + 1])
    else:  # streams: [(id, [f, v, f, v...]), ...]
        for entry_id, fields in reply:
            if isinstance(fields, dict):
                fields = [x for pair in fields.items() for x in pair]
            for i in range(0, len(fields), 2):
                yield key, entry_id, fields[i], fields[i + 1]


class _RowBuilder:
    """Rows of one shape into byte-sized record batches, typed by the backend's KVFormat."""

    def __init__(self, backend: RedisBackend, shape: Shape, target: int) -> None:
        self.backend = backend
        self.shape = shape
        self.target = target
        self.schema = backend.schema(shape.name)
        self.columns: list[list] = [[] for _ in self.schema]
        self.nbytes = 0

    def add(self, row: tuple) -> pa.RecordBatch | None:
        size = PAIR_OVERHEAD
        for column, value in zip(self.columns, row, strict=True):
            column.append(value)
            if isinstance(value, bytes):
                size += len(value)
        self.nbytes += size
        if self.nbytes >= self.target:
            return self.flush()
        return None

    def flush(self) -> pa.RecordBatch | None:
        if not self.columns[0]:
            return None
        columns = self.columns
        self.columns = [[] for _ in self.schema]
        self.nbytes = 0
        fmt = self.backend.fmt
        value_index = next(i for i, c in enumerate(self.shape.columns, 1)
                           if c in ("value", "member"))
        # The key and value columns go through KVFormat, so keys=/values=/value_codec= apply.
        pair = fmt.to_batch(columns[0], columns[value_index])
        arrays = []
        for i, field in enumerate(self.schema):
            if i == 0:
                arrays.append(pair.column(0))
            elif i == value_index:
                arrays.append(pair.column(1))
            elif field.name == "field":
                array = pa.array(columns[i], pa.binary())
                if self.backend.fields == "text":
                    try:
                        array = array.cast(pa.string())
                    except pa.ArrowInvalid:
                        raise SchemaError("a hash or stream field name is not valid UTF-8; "
                                          "read with fields=bytes") from None
                arrays.append(array)
            elif field.name == "id":
                arrays.append(pa.array(columns[i], pa.binary()).cast(pa.string()))
            else:
                arrays.append(pa.array(columns[i], field.type))
        return pa.RecordBatch.from_arrays(arrays, names=self.schema.names)


class _Writer:
    """One write: commands queued in a pipeline, sent by bytes and argument count."""

    def __init__(self, backend: RedisBackend, client: Any, shape: Shape, mode: str,
                 budget: Budget) -> None:
        self.backend = backend
        self.client = client
        self.shape = shape
        self.mode = mode
        self.ttl = backend.ttl
        self.flush_bytes = budget.batch_bytes
        self.aside = mode in ("fail", "replace") and shape.name != "strings"
        self.run_id = uuid.uuid4().hex[:12].encode()
        self.done_set = TEMP_PREFIX + self.run_id + b":done"
        self.result: WriteResult | None = None
        self.pipe = client.pipeline(transaction=False)
        # What the queued commands are: (kind, key, rows) for each, to check the replies.
        self.queued: list[tuple[str, bytes, int]] = []
        self.queued_args = 0
        self.queued_bytes = 0
        self.committed = 0
        self.last_key: bytes | None = None
        # The command being built: key, its arguments, rows they carry.
        self.current: tuple[bytes, bytes] | None = None  # (key, stream entry id or b"")
        self.args: list = []
        self.rows_in_args = 0
        self.temp_key: bytes | None = None
        self.key_rows = 0  # rows of the key being built aside
        self.sent_any = False

    # -- feeding -------------------------------------------------------------------------------

    def add_batch(self, batch: pa.RecordBatch) -> None:
        if self.shape.name == "strings":
            self._add_strings(batch)
        else:
            self._add_collection(batch)

    def _add_strings(self, batch: pa.RecordBatch) -> None:
        fmt = self.backend.fmt
        group: list = []
        rows = 0
        group_bytes = 0
        last = None
        for key, value in fmt.pairs(batch):
            if value is None:
                raise SchemaError(f"Redis cannot store a NULL value (key {_show(key)}); "
                                  "filter or fill NULLs first")
            if self.ttl:
                self._queue(("SET", key, value, "EX", self.ttl,
                             *(("NX",) if self.mode == "fail" else ())),
                            "set", key, 1, len(key) + len(value))
                continue
            group += (key, value)
            rows += 1
            last = key
            group_bytes += len(key) + len(value)
            if rows >= COMMAND_MAX_ELEMENTS or group_bytes >= self.flush_bytes:
                self._queue_mset(group, rows, group_bytes, last)
                group, rows, group_bytes = [], 0, 0
        if group:
            self._queue_mset(group, rows, group_bytes, last)

    def _queue_mset(self, group: list, rows: int, nbytes: int, last: bytes) -> None:
        command = "MSETNX" if self.mode == "fail" else "MSET"
        self._queue((command, *group), command.lower(), last, rows, nbytes)

    def _add_collection(self, batch: pa.RecordBatch) -> None:
        shape = self.shape
        names = batch.schema.names
        fmt = self.backend.fmt
        value_name = fmt.value_column if "value" in shape.columns else (
            "member" if fmt.value_column == "value" else fmt.value_column)
        pair_fmt = replace(fmt, value_column=value_name)
        pairs = list(pair_fmt.pairs(batch))
        extra: dict[str, list] = {}
        for column in shape.columns:
            if column in ("value", "member"):
                continue
            if column not in names:
                if column == "index" or (column == "id" and shape.name == "streams"):
                    extra[column] = [None] * batch.num_rows
                    continue
                raise SchemaError(
                    f"writing {shape.name} to Redis needs a {column!r} column; the data has "
                    f"{', '.join(names)}"
                )
            data = batch.column(column)
            if column == "field":
                extra[column] = as_bytes_column(data, column)
            elif column == "score":
                extra[column] = data.cast(pa.float64()).to_pylist()
            elif column == "id":
                extra[column] = [None if v is None else str(v).encode()
                                 for v in data.to_pylist()]
            else:
                extra[column] = data.to_pylist()
        for i, (key, value) in enumerate(pairs):
            if value is None:
                raise SchemaError(f"Redis cannot store a NULL {value_name} (key {_show(key)})")
            if shape.name == "hashes":
                field = extra["field"][i]
                if field is None:
                    raise SchemaError(f"a hash field is NULL (key {_show(key)})")
                self._element(key, b"", (field, value))
            elif shape.name == "zsets":
                score = extra["score"][i]
                if score is None:
                    raise SchemaError(f"a sorted-set score is NULL (key {_show(key)})")
                self._element(key, b"", (repr(score).encode(), value))
            elif shape.name == "streams":
                field = extra["field"][i]
                if field is None:
                    raise SchemaError(f"a stream field is NULL (key {_show(key)})")
                self._element(key, extra["id"][i] or b"*", (field, value))
            else:  # lists, sets
                self._element(key, b"", (value,))

    def _element(self, key: bytes, entry: bytes, items: tuple) -> None:
        if self.current is None or self.current[0] != key or (
                self.shape.name == "streams" and (entry != self.current[1] or entry == b"*")):
            self._end_command()
            if self.current is None or self.current[0] != key:
                if self.current is not None:
                    self._end_key()
                self._start_key(key)
            self.current = (key, entry)
        self.args.extend(items)
        self.rows_in_args += 1
        if self.shape.name != "streams" and self.rows_in_args >= COMMAND_MAX_ELEMENTS:
            self._end_command()

    def _start_key(self, key: bytes) -> None:
        self.key_rows = 0
        self.temp_key = TEMP_PREFIX + self.run_id + b":" + key if self.aside else None

    def _end_command(self) -> None:
        if not self.args or self.current is None:
            return
        key, entry = self.current
        target = self.temp_key or key
        command = {"hashes": ("HSET", target), "lists": ("RPUSH", target),
                   "sets": ("SADD", target), "zsets": ("ZADD", target),
                   "streams": ("XADD", target, entry)}[self.shape.name]
        nbytes = sum(len(a) for a in self.args)
        rows = 0 if self.aside else self.rows_in_args
        first = self.key_rows == 0
        self.key_rows += self.rows_in_args
        self._queue((*command, *self.args), "write", key, rows, nbytes)
        if first and self.temp_key is not None:
            # Left behind by a process that dies before the rename, it goes away by itself.
            self._queue(("EXPIRE", self.temp_key, TEMP_KEY_TTL_S), "expire", key, 0, 0)
        self.args = []
        self.rows_in_args = 0

    def _end_key(self) -> None:
        """The current key has all its rows: set its TTL, move it into place."""
        self._end_command()
        assert self.current is not None
        key = self.current[0]
        if self.temp_key is not None:
            if self.ttl:
                self._queue(("EXPIRE", self.temp_key, self.ttl), "expire", key, 0, 0)
            else:
                self._queue(("PERSIST", self.temp_key), "persist", key, 0, 0)
            self._queue(("SADD", self.done_set, key), "seen", key, 0, 0)
            self._queue(("EXPIRE", self.done_set, TEMP_KEY_TTL_S), "expire", key, 0, 0)
            rename = "RENAMENX" if self.mode == "fail" else "RENAME"
            self._queue((rename, self.temp_key, key), rename.lower(), key, self.key_rows, 0)
            self.temp_key = None
        elif self.ttl:
            self._queue(("EXPIRE", key, self.ttl), "expire", key, 0, 0)

    def finish(self) -> None:
        if self.current is not None:
            self._end_key()
            self.current = None
        self._flush()
        if self.aside:
            with contextlib.suppress(Exception):
                self.client.delete(self.done_set)

    # -- sending -------------------------------------------------------------------------------

    def _queue(self, command: tuple, kind: str, key: bytes, rows: int, nbytes: int) -> None:
        self.pipe.execute_command(*command)
        self.queued.append((kind, key, rows))
        self.queued_args += len(command)
        self.queued_bytes += nbytes
        if self.queued_args >= PIPELINE_MAX_ARGS or self.queued_bytes >= self.flush_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self.queued:
            return
        queued, self.queued = self.queued, []
        self.queued_args = self.queued_bytes = 0
        backend = self.backend
        self.sent_any = True
        try:
            with gc_paused(), backend._errors("writing to", reading=False):
                replies = self.pipe.execute(raise_on_error=False)
        finally:
            self.pipe.reset()
        assert self.result is not None
        # Every command of a pipeline ran, whatever failed before it: count all that worked
        # before raising the first failure, so the count of written rows is exact.
        error: Exception | None = None
        for (kind, key, rows), reply in zip(queued, replies, strict=True):
            problem = self._problem(kind, key, reply)
            if problem is not None:
                error = error or problem
                continue
            self.committed += rows
            self.result.rows += rows
            if rows:
                self.last_key = key
        if error is not None:
            raise error

    def _problem(self, kind: str, key: bytes, reply: Any) -> Exception | None:
        if isinstance(reply, Exception):
            text = str(reply)
            if text.startswith("WRONGTYPE"):
                return _wrong_type(key, None, wanted=self.shape)
            return TargetError(f"Redis at {self.backend.address} refused a write to key "
                               f"{_show(key)}: {text}")
        if kind == "msetnx" and reply == 0:
            return TargetExistsError(
                "a key in the data already exists in Redis (MSETNX wrote none of its group, "
                f"which ends with {_show(key)}); use mode 'upsert' or 'replace' to overwrite "
                "keys"
            )
        if kind == "set" and reply is None:
            return TargetExistsError(f"Redis key {_show(key)} already exists; use mode "
                                     "'upsert' or 'replace' to overwrite it")
        if kind == "renamenx" and reply == 0:
            return TargetExistsError(f"Redis key {_show(key)} already exists; use mode "
                                     "'replace' to overwrite it or 'append' to add to it")
        if kind == "seen" and reply == 0:
            return SchemaError(
                f"the rows of Redis key {_show(key)} do not come together in the data, so a "
                "later group replaced an earlier one; sort the data by key"
            )
        return None

    # -- failure -------------------------------------------------------------------------------

    def abort(self) -> None:
        """Drop what is queued; remove the collection being built aside (best effort)."""
        with contextlib.suppress(Exception):
            self.pipe.reset()
        if self.aside:
            # This run's temporary keys (a few: the one being built, any a failed rename left).
            with contextlib.suppress(Exception):
                for key in self.client.scan_iter(match=TEMP_PREFIX + self.run_id + b":*",
                                                 count=SCAN_COUNT):
                    self.client.unlink(key)

    def report(self, exc: BaseException) -> BaseException:
        """The exception to raise: a PartialWriteError when some rows were written."""
        if not isinstance(exc, Exception):
            return exc
        broken = isinstance(exc, TargetError) and not isinstance(
            exc, (TargetExistsError, PartialWriteError)) and self.sent_any
        if self.committed == 0 and not broken:
            return exc
        last = self.last_key
        resume = (self.backend.fmt.to_batch([last], [b""]).column(0)[0].as_py(),) \
            if last is not None else None
        lost = " (the pipeline in flight when the connection broke may have been applied in " \
            "part; writing again with mode 'upsert' is safe for strings, hashes, sets and zsets)"
        return PartialWriteError(
            f"{self.mode} to Redis at {self.backend.address} stopped after {self.committed} "
            f"rows were written, the last for key {_show(last)}: {exc}"
            + (lost if broken else ""),
            rows_committed=self.committed,
            resume_after=resume,
        )


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


def _show(key: bytes | None) -> str:
    if key is None:
        return "?"
    text = key.decode("utf-8", "backslashreplace")
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _wrong_type(key: bytes | None, found: str | None, *, wanted: Shape | None = None
                ) -> SchemaError:
    holds = f"holds a {found}" if found else "holds another type"
    want = f"; table={wanted.name} reads and writes {wanted.redis_type} keys" if wanted else ""
    fix = f", or read it with table={_BY_TYPE[found].name}" if found in _BY_TYPE else ""
    return SchemaError(f"Redis key {_show(key)} {holds}{want}: choose another key{fix}")


def _scripting_denied(exc: Exception) -> bool:
    text = str(exc).upper()
    return any(word in text for word in ("NOPERM", "UNKNOWN COMMAND", "NOSCRIPT", "DISABLED"))
