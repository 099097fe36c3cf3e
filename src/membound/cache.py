"""Cache: query results and function values, stored encoded, inside a byte budget.

``Cache(store="memory", max_memory="64MB", codec="msgpack+zstd", ttl=None)`` keeps values as
codec payloads (:mod:`membound.codecs`) in a store (:mod:`membound.cache_stores`): this process
(bounded by the exact bytes of its entries, least recently used out first), Redis or Memcached.

- ``get``/``set``/``delete``; ``get_or_compute(key, compute)``; ``query(db, sql, params)`` for a
  query's rows; ``@cache.cached`` for a function's results.
- Tags: ``set(..., tags=["events"])``, ``invalidate("events")`` drops every entry set with it.
  A value computed while its tag was being invalidated is not stored (tag versions).
- Stampede protection: when a value is missing, one caller computes it and the others wait
  for it (threads on a lock per key; processes on a lock in Redis or Memcached), or get the
  previous value during ``stale_ttl`` after it expired.
- A value whose entry is larger than ``max_memory`` (or than Memcached's item size) is not
  cached; :attr:`Cache.stats` counts it in ``too_large``.

Every entry is a 10-byte envelope (format version, kind, "fresh until" time) followed by the
codec's payload, or for query rows by length-prefixed payloads of successive chunks of rows.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ParamSpec, TypeVar

from membound.backends.base import SQL, Backend, open_backend
from membound.batching import batch_to_rows
from membound.budget import format_size, parse_size
from membound.cache_stores import DEFAULT_PREFIX, CacheStore, open_store
from membound.codecs import Codec, get_codec
from membound.errors import CodecError, ConfigurationError
from membound.urls import parse_url

__all__ = ["Cache", "CacheStats"]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_CACHE_MEMORY = "64MB"
DEFAULT_CODEC = "msgpack+zstd"
# How long one caller may compute a missing value before the callers waiting for it stop
# waiting and compute it themselves (and, across processes, how long its lock lives if it dies).
DEFAULT_LOCK_TIMEOUT_S = 30.0
# Waiting for another process's computation: poll the store from every 5 ms (a fast query) up to
# every 100 ms (a slow one), so that many waiters cost the server little.
LOCK_POLL_START_S = 0.005
LOCK_POLL_MAX_S = 0.1
# Serializers whose values are rows (tuples of plain values); query() needs one of them.
ROW_SERIALIZERS = ("json", "msgpack", "pickle")

_ENVELOPE = struct.Struct("<BBd")  # format version, kind, fresh until (Unix time, 0: always)
ENVELOPE_SIZE = _ENVELOPE.size
_ENVELOPE_VERSION = 1
_KIND_VALUE = 0  # one codec payload
_KIND_ROWS = 1  # query rows: (u32 length, payload) per chunk of rows, each a list of rows
_CHUNK_LENGTH = struct.Struct("<I")

_FRESH, _STALE, _MISSING = "fresh", "stale", "missing"
_NOTHING: Any = object()
_DEFAULT: Any = object()


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of a cache's counters (:attr:`Cache.stats`). Sizes are bytes.

    - ``hits``: fresh values returned (including to callers who waited for another's
      computation); ``misses``: reads that found nothing usable, and computations;
      ``stale_hits``: expired values returned while another caller recomputed them;
      ``waits``: callers that waited for another's computation.
    - ``sets``: entries stored; ``too_large``: values not cached because their entry was larger
      than the budget (or memcached's item size, or past ``max_rows``), the largest of them in
      ``largest_rejected``; ``outdated``: values not stored because a tag was invalidated while
      they were computed; ``errors``: entries that could not be decoded (dropped, counted as
      misses too).
    - ``evictions``: entries the in-process store dropped to stay in budget (servers evict on
      their own; see their statistics); ``invalidations``: tags invalidated.
    - ``bytes`` / ``entries``: what the in-process store holds now, exactly (None for servers);
      ``bytes_written`` / ``bytes_read``: entry bytes moved, for every store.
    """

    hits: int = 0
    misses: int = 0
    stale_hits: int = 0
    waits: int = 0
    sets: int = 0
    too_large: int = 0
    largest_rejected: int = 0
    outdated: int = 0
    errors: int = 0
    evictions: int = 0
    invalidations: int = 0
    bytes_written: int = 0
    bytes_read: int = 0
    bytes: int | None = None
    entries: int | None = None
    max_bytes: int = 0

    @property
    def hit_ratio(self) -> float:
        """Hits (fresh or stale) over all reads; 0.0 before any."""
        reads = self.hits + self.stale_hits + self.misses
        return (self.hits + self.stale_hits) / reads if reads else 0.0

    def __str__(self) -> str:
        held = (
            f"{format_size(self.bytes)} in {self.entries:,} entries of "
            f"{format_size(self.max_bytes)}"
            if self.bytes is not None
            else f"entries up to {format_size(self.max_bytes)}"
        )
        text = (
            f"{self.hits:,} hits, {self.misses:,} misses ({self.hit_ratio:.0%} hit ratio), "
            f"{self.stale_hits:,} stale, {self.sets:,} sets, {self.evictions:,} evictions; "
            f"{held}"
        )
        if self.too_large:
            text += (
                f"; {self.too_large:,} too large to cache (largest "
                f"{format_size(self.largest_rejected)})"
            )
        return text


_COUNTERS = tuple(
    f.name
    for f in fields(CacheStats)
    if f.name not in ("bytes", "entries", "max_bytes", "largest_rejected")
)


class Cache:
    """Values and query results, encoded with a codec, in a store, inside a byte budget.

    ``Cache(store="memory", *, max_memory="64MB", codec="msgpack+zstd", ttl=None,
    stale_ttl=0, prefix="membound:", lock_timeout=30)``:

    - ``store``: ``"memory"`` (this process), ``"redis://host:6379/0"``,
      ``"memcached://host:11211"``, or a :class:`~membound.cache_stores.CacheStore`.
    - ``max_memory``: in this process, the most bytes of entries held, exactly (keys and about
      200 bytes of bookkeeping per entry aside); for every store, the largest entry cached.
      Servers bound their own memory (Redis ``maxmemory``, memcached ``-m``).
    - ``codec``: a codec name or :class:`~membound.codecs.Codec` the values must fit
      (msgpack: tuples come back as lists, aware datetimes in UTC, naive ones refused; for
      anything picklable, ``get_codec("pickle+zstd", trusted=True)``, in this process only).
    - ``ttl``: seconds a value stays fresh (None: until evicted or invalidated); ``stale_ttl``:
      seconds an expired value is still kept and served while one caller recomputes it.
    - ``prefix``: the key prefix in Redis and Memcached (one per application or test).
    - ``lock_timeout``: how long callers wait for another's computation before doing it
      themselves.

    Safe to share between threads. Values returned are decoded copies: changing one does not
    change the cache. Raises :class:`ConfigurationError` for bad options,
    :class:`CodecError` when a value does not fit the codec, and
    :class:`~membound.errors.SourceError`/:class:`~membound.errors.TargetError` when a server
    fails.
    """

    def __init__(
        self,
        store: str | CacheStore = "memory",
        *,
        max_memory: int | str = DEFAULT_CACHE_MEMORY,
        codec: Codec | str = DEFAULT_CODEC,
        ttl: float | None = None,
        stale_ttl: float = 0,
        prefix: str = DEFAULT_PREFIX,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
    ) -> None:
        self.max_memory = parse_size(max_memory)
        self.codec = get_codec(codec) if isinstance(codec, str) else codec
        if not isinstance(self.codec, Codec):
            raise ConfigurationError(f"codec must be a codec name or a Codec, got {codec!r}")
        self.ttl = _check_ttl(ttl, "ttl")
        if not isinstance(stale_ttl, int | float) or stale_ttl < 0:
            raise ConfigurationError(f"stale_ttl must be seconds >= 0, got {stale_ttl!r}")
        if stale_ttl and ttl is None:
            raise ConfigurationError(
                "stale_ttl is how long values stay after their ttl; give ttl= too"
            )
        self.stale_ttl = float(stale_ttl)
        if not isinstance(lock_timeout, int | float) or lock_timeout <= 0:
            raise ConfigurationError(f"lock_timeout must be seconds > 0, got {lock_timeout!r}")
        self.lock_timeout = float(lock_timeout)
        self.store = open_store(store, max_bytes=self.max_memory, prefix=prefix)
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._largest_rejected = 0
        self._counts_lock = threading.Lock()
        self._key_locks: dict[str, list[Any]] = {}
        self._key_locks_guard = threading.Lock()

    def __repr__(self) -> str:
        ttl = f", ttl={self.ttl:g}" if self.ttl is not None else ""
        stale = f", stale_ttl={self.stale_ttl:g}" if self.stale_ttl else ""
        store = "'memory'" if self.store.in_process else repr(self.store)
        return (
            f"Cache({store}, max_memory={format_size(self.max_memory)!r}, "
            f"codec={self.codec.name!r}{ttl}{stale})"
        )

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the store's connections (the in-process store keeps its entries)."""
        self.store.close()

    # -- statistics -------------------------------------------------------------------------

    def _count(self, **deltas: int) -> None:
        with self._counts_lock:
            for name, delta in deltas.items():
                self._counts[name] += delta

    @property
    def stats(self) -> CacheStats:
        """The counters now (a snapshot); see :class:`CacheStats`."""
        held, entries = self.store.usage()
        with self._counts_lock:
            return CacheStats(
                **self._counts,
                largest_rejected=self._largest_rejected,
                bytes=held,
                entries=entries,
                max_bytes=self.max_memory,
            )

    def reset_stats(self) -> None:
        """Set the counters back to zero (what the store holds is unchanged)."""
        with self._counts_lock:
            self._counts = dict.fromkeys(_COUNTERS, 0)
            self._largest_rejected = 0

    def _rejected(self, size: int) -> None:
        with self._counts_lock:
            self._counts["too_large"] += 1
            self._largest_rejected = max(self._largest_rejected, size)

    # -- entries ----------------------------------------------------------------------------

    def _ttl(self, ttl: float | None) -> float | None:
        return self.ttl if ttl is _DEFAULT else _check_ttl(ttl, "ttl")

    def _pack(self, kind: int, parts: Sequence[bytes], ttl: float | None) -> bytes:
        fresh_until = 0.0 if ttl is None else time.time() + ttl
        return b"".join([_ENVELOPE.pack(_ENVELOPE_VERSION, kind, fresh_until), *parts])

    def _unpack(self, entry: bytes) -> tuple[float, Any]:
        version, kind, fresh_until = _ENVELOPE.unpack_from(entry)
        if version != _ENVELOPE_VERSION or kind not in (_KIND_VALUE, _KIND_ROWS):
            raise CodecError(f"cache entry of format {version}, kind {kind}: not one of ours")
        body = memoryview(entry)[_ENVELOPE.size :]
        if kind == _KIND_VALUE:
            return fresh_until, self.codec.decode(body)
        rows: list[tuple] = []
        offset = 0
        while offset < len(body):
            (length,) = _CHUNK_LENGTH.unpack_from(body, offset)
            offset += _CHUNK_LENGTH.size
            if offset + length > len(body):
                raise CodecError("a cached query result is truncated")
            rows.extend(map(tuple, self.codec.decode(body[offset : offset + length])))
            offset += length
        return fresh_until, rows

    def _read(self, key: str) -> tuple[str, Any]:
        """(fresh | stale | missing, value) for ``key``; an undecodable entry is dropped."""
        entry = self.store.get(key)
        if entry is None:
            return _MISSING, None
        try:
            fresh_until, value = self._unpack(entry)
        except (CodecError, struct.error):
            # Another codec's entry (the cache's codec changed) or a damaged one: a miss.
            self._count(errors=1)
            with contextlib.suppress(Exception):
                self.store.delete(key)
            return _MISSING, None
        self._count(bytes_read=len(entry))
        if fresh_until and time.time() >= fresh_until:
            return _STALE, value
        return _FRESH, value

    def _limit(self, key: str) -> int:
        store_limit = self.store.max_entry_bytes(key)
        return self.max_memory if store_limit is None else min(self.max_memory, store_limit)

    def _write(
        self,
        key: str,
        entry: bytes,
        ttl: float | None,
        tags: Sequence[str],
        versions: Mapping[str, int] | None,
    ) -> bool:
        if len(entry) > self._limit(key):
            self._rejected(len(entry))
            # The key's old value is stale now that it has a new one: do not leave it served.
            self.store.delete(key)
            return False
        physical_ttl = None if ttl is None else ttl + self.stale_ttl
        result = self.store.set(key, entry, ttl=physical_ttl, tags=tags, versions=versions)
        if result.too_large:
            self._rejected(len(entry))
        self._count(
            sets=int(result.stored),
            outdated=int(result.outdated),
            evictions=result.evicted,
            bytes_written=len(entry) if result.stored else 0,
        )
        return result.stored

    # -- the public operations ----------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The fresh value under ``key``, or ``default`` (an expired value is not returned)."""
        state, value = self._read(_check_key(key))
        if state is _FRESH:
            self._count(hits=1)
            return value
        self._count(misses=1)
        return default

    def set(
        self, key: str, value: Any, *, ttl: float | None = _DEFAULT, tags: Sequence[str] = ()
    ) -> bool:
        """Store ``value`` under ``key``; True if stored, False if too large (see ``stats``).

        ``ttl`` overrides the cache's; ``tags`` name what the value depends on (a table name),
        for :meth:`invalidate`. Raises :class:`CodecError` if the codec cannot hold it.
        """
        tags = _check_tags(tags)
        ttl = self._ttl(ttl)
        entry = self._pack(_KIND_VALUE, [self.codec.encode(value)], ttl)
        return self._write(_check_key(key), entry, ttl, tags, None)

    def delete(self, key: str) -> bool:
        """Remove ``key``; True when it was there."""
        return self.store.delete(_check_key(key))

    def invalidate(self, *tags: str) -> int | None:
        """Drop every entry set with any of ``tags``; how many (None for Memcached, which cannot
        count them: its entries become unreadable instead)."""
        total: int | None = 0
        for tag in _check_tags(tags):
            removed = self.store.invalidate(tag)
            total = None if total is None or removed is None else total + removed
        self._count(invalidations=len(tags))
        return total

    def clear(self) -> None:
        """Remove every entry (of this prefix, on a server)."""
        self.store.clear()

    def get_or_compute(
        self,
        key: str,
        compute: Callable[[], R],
        *,
        ttl: float | None = _DEFAULT,
        tags: Sequence[str] = (),
    ) -> R:
        """The value under ``key``, or ``compute()``'s, stored; one caller computes at a time.

        Concurrent callers missing the same key wait for the one computing it (threads on a
        lock per key; processes on a lock in the server), or get the expired value during
        ``stale_ttl``. If the computation raises, the next waiter computes. A value too large
        to cache is computed by every caller, one at a time.
        """
        key, tags, ttl = _check_key(key), _check_tags(tags), self._ttl(ttl)

        def produce() -> tuple[R, bytes]:
            value = compute()
            return value, self._pack(_KIND_VALUE, [self.codec.encode(value)], ttl)

        return self._through(key, produce, ttl, tags)

    def _through(
        self,
        key: str,
        produce: Callable[[], tuple[Any, bytes | None]],
        ttl: float | None,
        tags: Sequence[str],
    ) -> Any:
        state, value = self._read(key)
        if state is _FRESH:
            self._count(hits=1)
            return value
        with self._key_lock(key) as lock:
            locked = lock.acquire(blocking=False)
            if not locked:
                if state is _STALE:
                    self._count(stale_hits=1)
                    return value
                self._count(waits=1)
                locked = lock.acquire(timeout=self.lock_timeout)
            try:
                # Whoever held the lock has probably just stored the value.
                now_state, now_value = self._read(key)
                if now_state is _FRESH:
                    self._count(hits=1)
                    return now_value
                if now_state is _STALE:
                    state, value = now_state, now_value
                token = self.store.acquire_lock(key, self.lock_timeout)
                if token is None:
                    if state is _STALE:
                        self._count(stale_hits=1)
                        return value
                    self._count(waits=1)
                    token, value = self._wait_for_other_process(key)
                    if value is not _NOTHING:
                        self._count(hits=1)
                        return value
                if token is not None:
                    # The lock may have come free because its holder just stored the value
                    # (between our last read and acquire_lock): read once more under the lock,
                    # or that value is computed twice.
                    now_state, now_value = self._read(key)
                    if now_state is _FRESH:
                        self.store.release_lock(key, token)
                        self._count(hits=1)
                        return now_value
                try:
                    versions = self.store.tag_versions(tags) if tags else None
                    self._count(misses=1)
                    value, entry = produce()
                    if entry is not None:
                        self._write(key, entry, ttl, tags, versions)
                    elif state is _STALE:
                        # Too large to cache now: stop serving the old value in its place.
                        self.store.delete(key)
                    return value
                finally:
                    if token is not None:
                        self.store.release_lock(key, token)
            finally:
                if locked:
                    lock.release()

    def _wait_for_other_process(self, key: str) -> tuple[str | None, Any]:
        """Wait for the process holding ``key``'s lock: (None, its value) once stored, or
        (our token, nothing) if it gave up the lock without storing one; after
        ``lock_timeout``, (None, nothing): compute without the lock."""
        deadline = time.monotonic() + self.lock_timeout
        pause = LOCK_POLL_START_S
        while time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(pause * 2, LOCK_POLL_MAX_S)
            state, value = self._read(key)
            if state is _FRESH:
                return None, value
            token = self.store.acquire_lock(key, self.lock_timeout)
            if token is not None:
                return token, _NOTHING
        return None, _NOTHING

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[threading.Lock]:
        """This process's lock for ``key``, shared by the threads using it, then forgotten."""
        with self._key_locks_guard:
            held = self._key_locks.get(key)
            if held is None:
                held = self._key_locks[key] = [threading.Lock(), 0]
            held[1] += 1
        try:
            yield held[0]
        finally:
            with self._key_locks_guard:
                held[1] -= 1
                if held[1] == 0:
                    del self._key_locks[key]

    def query(
        self,
        db: Backend | str,
        sql: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        tags: Sequence[str] = (),
        ttl: float | None = _DEFAULT,
        max_rows: int | None = None,
    ) -> list[tuple]:
        """The rows of ``sql`` on ``db`` (a backend or its URL), from the cache or the database.

        The key is a hash of the database's URL (password masked), ``sql`` and ``params``
        (which must have a stable ``repr``: numbers, strings, dates). ``tags`` name the tables
        it reads, for :meth:`invalidate`. Results of more than ``max_rows`` rows are returned
        but not cached.

        Memory: the result is a list, as a non-streaming fetch is (stream large results with
        ``db.rows()`` instead). On a miss the rows are encoded a database batch at a time while
        they arrive; the encoded chunks (at most ``max_memory``) are held until the end, and
        once they would pass it (or ``max_rows``) they are dropped and the rest is not encoded:
        the rows are still all returned, uncached, and ``stats.too_large`` counts it. On a hit
        the entry is decoded a chunk at a time.
        """
        if self.codec.serializer.name not in ROW_SERIALIZERS:
            raise ConfigurationError(
                f"query() caches rows, which the {self.codec.name!r} codec cannot hold; use a "
                "json, msgpack or pickle codec such as 'msgpack+zstd'"
            )
        if max_rows is not None and (isinstance(max_rows, bool) or max_rows < 0):
            raise ConfigurationError(f"max_rows must be a number of rows >= 0, got {max_rows!r}")
        url = db.url if isinstance(db, Backend) else parse_url(db)
        key = "query:" + _digest((url.display, sql, _plain_params(params)))
        tags, ttl = _check_tags(tags), self._ttl(ttl)

        def produce() -> tuple[list[tuple], bytes | None]:
            if isinstance(db, Backend):
                return self._fetch_rows(db, key, sql, params, ttl, max_rows)
            with open_backend(url) as opened:
                return self._fetch_rows(opened, key, sql, params, ttl, max_rows)

        return self._through(key, produce, ttl, tags)

    def _fetch_rows(
        self,
        db: Backend,
        key: str,
        sql: str,
        params: Any,
        ttl: float | None,
        max_rows: int | None,
    ) -> tuple[list[tuple], bytes | None]:
        rows: list[tuple] = []
        parts: list[bytes] | None = []
        size = _ENVELOPE.size
        limit = self._limit(key)
        for batch in db.batches(SQL(sql), params):
            chunk = list(batch_to_rows(batch))
            rows.extend(chunk)
            if parts is None or not chunk:
                continue
            if max_rows is not None and len(rows) > max_rows:
                parts = None
                self._rejected(size)
                continue
            payload = self.codec.encode(chunk)
            size += _CHUNK_LENGTH.size + len(payload)
            if size > limit:
                parts = None  # the encoded chunks so far are freed here
                self._rejected(size)
                continue
            parts += [_CHUNK_LENGTH.pack(len(payload)), payload]
        if parts is None:
            return rows, None
        return rows, self._pack(_KIND_ROWS, parts, ttl)

    def cached(
        self,
        func: Callable[P, R] | None = None,
        *,
        ttl: float | None = _DEFAULT,
        tags: Sequence[str] | Callable[..., Sequence[str]] = (),
        key: Callable[..., str] | None = None,
    ) -> Any:
        """Decorator: cache a function's results, ``@cache.cached`` or
        ``@cache.cached(ttl=60, tags=["events"])``.

        The key is the function's module and name plus a hash of its arguments' ``repr`` (which
        must be stable: an argument whose repr holds a memory address raises
        :class:`ConfigurationError`; give ``key=lambda *args, **kwargs: "..."`` then).
        ``tags`` may be a function of the arguments. Stampede-protected like
        :meth:`get_or_compute`. The wrapper has ``.uncached`` (the function) and
        ``.cache_key(*args, **kwargs)``.
        """

        def decorate(function: Callable[P, R]) -> Callable[P, R]:
            name = f"call:{function.__module__}.{function.__qualname__}:"

            def cache_key(*args: Any, **kwargs: Any) -> str:
                if key is not None:
                    return name + key(*args, **kwargs)
                return name + _digest((args, sorted(kwargs.items())))

            @functools.wraps(function)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                value_tags = tags(*args, **kwargs) if callable(tags) else tags
                return self.get_or_compute(
                    cache_key(*args, **kwargs),
                    lambda: function(*args, **kwargs),
                    ttl=ttl,
                    tags=value_tags,
                )

            wrapper.uncached = function  # type: ignore[attr-defined]
            wrapper.cache_key = cache_key  # type: ignore[attr-defined]
            return wrapper

        return decorate(func) if func is not None else decorate


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise ConfigurationError(f"a cache key is a non-empty string, got {key!r}")
    return key


def _check_tags(tags: Sequence[str]) -> tuple[str, ...]:
    if isinstance(tags, str):
        raise ConfigurationError(f"tags is a list of names, such as [{tags!r}], not a string")
    tags = tuple(tags)
    for tag in tags:
        if not isinstance(tag, str) or not tag:
            raise ConfigurationError(f"a tag is a non-empty string, got {tag!r}")
    return tags


def _check_ttl(ttl: float | None, name: str) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0 or math.isinf(ttl):
        raise ConfigurationError(f"{name} must be seconds > 0 or None, got {ttl!r}")
    return float(ttl)


def _plain_params(params: Any) -> Any:
    if isinstance(params, Mapping):
        return tuple(sorted(params.items()))
    if isinstance(params, list):
        return tuple(params)
    return params


def _digest(parts: Any) -> str:
    text = repr(parts)
    if " at 0x" in text:
        raise ConfigurationError(
            f"a cache key part has no stable repr ({text[:80]}...): it holds a memory address, "
            "so the key would differ every run; pass key= (or plain values)"
        )
    return hashlib.sha256(text.encode()).hexdigest()
