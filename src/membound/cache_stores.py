"""Where a :class:`~membound.cache.Cache` keeps its entries: in this process, Redis or Memcached.

A store holds opaque entries (bytes) under string keys, with an optional time to live, and
offers what the cache builds on: tags (``invalidate(tag)`` drops every entry set with it), tag
versions (so that a value computed before an invalidation is not stored after it), and a lock
per key across processes (so that one caller computes a missing value while the others wait).

======================  ============================  =====================================
store                   bound                          tags
======================  ============================  =====================================
:class:`MemoryStore`    exact bytes of entries, LRU    a tag -> keys index
:class:`RedisStore`     the server's ``maxmemory``     a set of keys per tag, a version key
:class:`MemcachedStore` the server's ``-m``, and its   a version per tag, stored with each
                        item size (1 MB by default)    entry and checked when it is read
======================  ============================  =====================================

``open_store("memory" | "redis://..." | "memcached://host:port", ...)`` picks one. Server stores
import their client lazily (``pip install 'membound[redis]'`` / ``'membound[memcached]'``) and
wrap a failing server in :class:`~membound.errors.SourceError` (reading) or
:class:`~membound.errors.TargetError` (writing), with the server's address in the message.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import struct
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

from membound.budget import format_size, parse_size
from membound.errors import (
    ConfigurationError,
    MissingDriverError,
    SourceError,
    TargetError,
)

__all__ = [
    "CacheStore",
    "MemcachedStore",
    "MemoryStore",
    "RedisStore",
    "StoreResult",
    "open_store",
]

DEFAULT_PREFIX = "membound:"
# Connecting and answering: a cache that cannot answer in this long is down, and waiting longer
# would make it slower than the computation it saves.
SERVER_TIMEOUT_S = 2.0
# Keys deleted per round trip when invalidating a tag or clearing a prefix in Redis: bounded
# memory for tags of millions of entries, few round trips for ordinary ones.
REDIS_DELETE_CHUNK = 1000
# Memcached refuses keys over 250 bytes or with spaces and control characters; such keys are
# stored under a hash of themselves instead.
MEMCACHED_MAX_KEY = 250
# Memcached's default largest item (-I 1m), used when its settings cannot be read.
MEMCACHED_DEFAULT_ITEM_SIZE = 1024 * 1024
# What an item costs memcached beyond its key and value: the item header (48-56 bytes), the
# key's terminator and the value's "\r\n", with room to spare. An entry over the item size minus
# this is refused before it is sent.
MEMCACHED_ITEM_OVERHEAD = 128
# Room kept for the tag versions stored with a memcached entry when telling the cache the largest
# entry it may send: the namespace and a few tags of ordinary length.
MEMCACHED_VERSIONS_ROOM = 256
# Memcached reads an expiry over 30 days as a Unix timestamp, not a number of seconds.
MEMCACHED_RELATIVE_EXPIRY_MAX = 30 * 24 * 3600
# The tag every memcached entry carries implicitly: clear() bumps its version.
_NAMESPACE_TAG = ""
# Tag versions travel with memcached entries: a count, then (length, name, version) per tag.
_TAG_COUNT = struct.Struct("<H")
_TAG_LENGTH = struct.Struct("<H")
_TAG_VERSION = struct.Struct("<Q")
# What a lock held by this process's only store (MemoryStore) returns: its thread lock in the
# cache is the whole protection.
_LOCAL_LOCK = "local"


@dataclass(frozen=True)
class StoreResult:
    """What :meth:`CacheStore.set` did: ``stored``, else why not; how many entries it evicted."""

    stored: bool
    evicted: int = 0
    too_large: bool = False
    outdated: bool = False


class CacheStore(ABC):
    """The contract of a cache's storage. Subclasses are safe to share between threads."""

    name: ClassVar[str] = "store"
    #: True when entries live in this process, so that their bytes are the cache's memory.
    in_process: ClassVar[bool] = False

    def max_entry_bytes(self, key: str) -> int | None:
        """The largest entry this store accepts under ``key``, or None for no limit of its own."""
        return None

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The entry under ``key``, or None when there is none (or it expired)."""

    @abstractmethod
    def set(
        self,
        key: str,
        entry: bytes,
        *,
        ttl: float | None,
        tags: Sequence[str] = (),
        versions: Mapping[str, int] | None = None,
    ) -> StoreResult:
        """Store ``entry``, tagged, for ``ttl`` seconds (None: until evicted).

        ``versions``: the tags' versions from :meth:`tag_versions` before the value was
        computed; when a tag has been invalidated since, the entry is not stored (``outdated``).
        """

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove the entry under ``key``; True when there was one."""

    @abstractmethod
    def tag_versions(self, tags: Sequence[str]) -> dict[str, int]:
        """The current version of each tag; :meth:`invalidate` changes it."""

    @abstractmethod
    def invalidate(self, tag: str) -> int | None:
        """Drop every entry set with ``tag``; how many, or None when the store cannot count."""

    def acquire_lock(self, key: str, ttl: float) -> str | None:
        """Take the compute lock of ``key`` for ``ttl`` seconds across processes: a token, or
        None when another process holds it."""
        return _LOCAL_LOCK

    def release_lock(self, key: str, token: str) -> None:
        """Release a lock taken with :meth:`acquire_lock` (only if it is still ours)."""
        return None

    @abstractmethod
    def clear(self) -> None:
        """Remove every entry of this store (its key prefix, for servers)."""

    def usage(self) -> tuple[int | None, int | None]:
        """(bytes held, entries held), or None where the store cannot tell cheaply."""
        return None, None

    def close(self) -> None:
        """Release connections. Safe to call twice."""
        return None


class MemoryStore(CacheStore):
    """Entries in this process, bounded by the exact sum of their lengths, least recently used
    out first.

    Written by hand on an ``OrderedDict`` rather than with ``cachetools.LRUCache(getsizeof=len)``:
    evictions must also update the tag index and the statistics, entries carry their own expiry,
    and the store needs one lock around all of it anyway; that leaves little for cachetools to
    do, and it is not a dependency. Keys and the per-entry bookkeeping (about 200 bytes each)
    are not counted; the entries' bytes are, exactly.
    """

    name = "memory"
    in_process = True

    def __init__(self, max_bytes: int | str) -> None:
        self.max_bytes = parse_size(max_bytes)
        self._entries: OrderedDict[str, tuple[bytes, float | None, tuple[str, ...]]] = OrderedDict()
        self._bytes = 0
        self._keys_by_tag: dict[str, set[str]] = {}
        self._versions: dict[str, int] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryStore(max_bytes={format_size(self.max_bytes)!r})"

    def max_entry_bytes(self, key: str) -> int:
        return self.max_bytes

    def _remove(self, key: str) -> None:
        entry, _, tags = self._entries.pop(key)
        self._bytes -= len(entry)
        for tag in tags:
            keys = self._keys_by_tag.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._keys_by_tag[tag]

    def get(self, key: str) -> bytes | None:
        with self._lock:
            held = self._entries.get(key)
            if held is None:
                return None
            entry, expires_at, _ = held
            if expires_at is not None and time.time() >= expires_at:
                self._remove(key)
                return None
            self._entries.move_to_end(key)
            return entry

    def set(
        self,
        key: str,
        entry: bytes,
        *,
        ttl: float | None,
        tags: Sequence[str] = (),
        versions: Mapping[str, int] | None = None,
    ) -> StoreResult:
        size = len(entry)
        with self._lock:
            if versions is not None and any(
                self._versions.get(tag, 0) != version for tag, version in versions.items()
            ):
                return StoreResult(stored=False, outdated=True)
            if key in self._entries:
                # Whatever happens next, the old value is no longer the value of this key.
                self._remove(key)
            if size > self.max_bytes:
                return StoreResult(stored=False, too_large=True)
            evicted = 0
            while self._bytes + size > self.max_bytes:
                self._remove(next(iter(self._entries)))
                evicted += 1
            expires_at = None if ttl is None else time.time() + ttl
            self._entries[key] = (entry, expires_at, tuple(tags))
            self._bytes += size
            for tag in tags:
                self._keys_by_tag.setdefault(tag, set()).add(key)
            return StoreResult(stored=True, evicted=evicted)

    def delete(self, key: str) -> bool:
        with self._lock:
            if key not in self._entries:
                return False
            self._remove(key)
            return True

    def tag_versions(self, tags: Sequence[str]) -> dict[str, int]:
        with self._lock:
            return {tag: self._versions.get(tag, 0) for tag in tags}

    def invalidate(self, tag: str) -> int:
        with self._lock:
            self._versions[tag] = self._versions.get(tag, 0) + 1
            keys = self._keys_by_tag.pop(tag, set())
            for key in keys:
                if key in self._entries:
                    self._remove(key)
            return len(keys)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._keys_by_tag.clear()
            self._bytes = 0

    def usage(self) -> tuple[int, int]:
        with self._lock:
            return self._bytes, len(self._entries)


@contextlib.contextmanager
def _server_errors(store: str, address: str, action: str, reading: bool) -> Iterator[None]:
    """Turn a client library's errors into SourceError (reading) or TargetError (writing)."""
    try:
        yield
    except (OSError, ConnectionError, TimeoutError) as exc:
        raise _server_error(store, address, action, reading, exc) from exc
    except Exception as exc:
        # redis.RedisError and pymemcache's MemcacheError do not derive from OSError.
        module = type(exc).__module__.split(".")[0]
        if module not in ("redis", "pymemcache"):
            raise
        raise _server_error(store, address, action, reading, exc) from exc


def _server_error(
    store: str, address: str, action: str, reading: bool, exc: BaseException
) -> SourceError | TargetError:
    cls = SourceError if reading else TargetError
    return cls(
        f"the {store} cache at {address} failed while {action} ({type(exc).__name__}: {exc}); "
        "check that the server is running and reachable, or use the in-process store"
    )


# Redis scripts run atomically, so the version check, the write and the tag sets cannot be
# interleaved with an invalidation.
#   KEYS: the entry, n tag sets, n tag version keys.
#   ARGV: the entry, ttl in ms (0: none), n, then n expected versions ("" = unchecked).
_REDIS_SET = """
local n = tonumber(ARGV[3])
for i = 1, n do
  local expected = ARGV[3 + i]
  if expected ~= '' and (redis.call('GET', KEYS[1 + n + i]) or '0') ~= expected then
    return 0
  end
end
local px = tonumber(ARGV[2])
if px > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', px)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
for i = 1, n do
  local tag_set = KEYS[1 + i]
  local existed = redis.call('EXISTS', tag_set)
  redis.call('SADD', tag_set, KEYS[1])
  if px == 0 then
    redis.call('PERSIST', tag_set)
  else
    local left = redis.call('PTTL', tag_set)
    if existed == 0 or (left >= 0 and left < px) then
      redis.call('PEXPIRE', tag_set, px)
    end
  end
end
return 1
"""
# KEYS: the tag set, its version key, the name to move the set to while its keys are deleted.
_REDIS_INVALIDATE = """
redis.call('INCR', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[3])
  return 1
end
return 0
"""
_REDIS_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisStore(CacheStore):
    """Entries in Redis under ``prefix``: ``{prefix}k:{key}`` for entries, ``{prefix}t:{tag}``
    for the set of keys set with a tag, ``{prefix}tv:{tag}`` for its version and
    ``{prefix}l:{key}`` for compute locks (``SET NX PX``, released only by their holder).

    Memory is bounded by the server (``maxmemory`` with ``allkeys-lru`` for a cache). A tag set
    lives as long as its longest-lived entry; until the tag is invalidated it keeps the names of
    entries that expired or were evicted (a few dozen bytes each). Needs a single Redis server,
    not Redis Cluster (the scripts touch keys in several slots).
    """

    name = "redis"

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX) -> None:
        try:
            import redis
        except ImportError:
            raise MissingDriverError("redis", extra="redis") from None
        self.url = url
        self.prefix = prefix
        self._address = _mask(url)
        self._client = redis.Redis.from_url(
            url, socket_connect_timeout=SERVER_TIMEOUT_S, socket_timeout=SERVER_TIMEOUT_S
        )
        self._set = self._client.register_script(_REDIS_SET)
        self._invalidate = self._client.register_script(_REDIS_INVALIDATE)
        self._release = self._client.register_script(_REDIS_RELEASE)

    def __repr__(self) -> str:
        return f"RedisStore({self._address!r}, prefix={self.prefix!r})"

    def _errors(self, action: str, *, reading: bool) -> contextlib.AbstractContextManager[None]:
        return _server_errors("Redis", self._address, action, reading)

    def _key(self, key: str) -> str:
        return f"{self.prefix}k:{key}"

    def get(self, key: str) -> bytes | None:
        with self._errors("reading an entry", reading=True):
            return self._client.get(self._key(key))

    def set(
        self,
        key: str,
        entry: bytes,
        *,
        ttl: float | None,
        tags: Sequence[str] = (),
        versions: Mapping[str, int] | None = None,
    ) -> StoreResult:
        expected = [str(versions[tag]) if versions and tag in versions else "" for tag in tags]
        keys = [
            self._key(key),
            *(f"{self.prefix}t:{tag}" for tag in tags),
            *(f"{self.prefix}tv:{tag}" for tag in tags),
        ]
        milliseconds = 0 if ttl is None else max(1, math.ceil(ttl * 1000))
        with self._errors("writing an entry", reading=False):
            stored = self._set(keys=keys, args=[entry, milliseconds, len(tags), *expected])
        return StoreResult(stored=bool(stored), outdated=not stored)

    def delete(self, key: str) -> bool:
        with self._errors("deleting an entry", reading=False):
            return bool(self._client.unlink(self._key(key)))

    def tag_versions(self, tags: Sequence[str]) -> dict[str, int]:
        if not tags:
            return {}
        with self._errors("reading tag versions", reading=True):
            values = self._client.mget([f"{self.prefix}tv:{tag}" for tag in tags])
        return {tag: int(value or 0) for tag, value in zip(tags, values, strict=True)}

    def invalidate(self, tag: str) -> int:
        dying = f"{self.prefix}dying:{uuid.uuid4().hex}"
        with self._errors(f"invalidating tag {tag!r}", reading=False):
            moved = self._invalidate(
                keys=[f"{self.prefix}t:{tag}", f"{self.prefix}tv:{tag}", dying]
            )
            if not moved:
                return 0
            # The set was renamed atomically: entries tagged from now on go to a new set, and
            # this one is deleted a chunk at a time, so a huge tag never sits in memory at once.
            deleted = 0
            for keys in _chunks(self._client.sscan_iter(dying, count=REDIS_DELETE_CHUNK)):
                deleted += self._client.unlink(*keys)
            self._client.unlink(dying)
            return deleted

    def acquire_lock(self, key: str, ttl: float) -> str | None:
        token = uuid.uuid4().hex
        milliseconds = max(1, math.ceil(ttl * 1000))
        with self._errors("taking a compute lock", reading=True):
            taken = self._client.set(f"{self.prefix}l:{key}", token, nx=True, px=milliseconds)
        return token if taken else None

    def release_lock(self, key: str, token: str) -> None:
        with self._errors("releasing a compute lock", reading=False):
            self._release(keys=[f"{self.prefix}l:{key}"], args=[token])

    def clear(self) -> None:
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", self.prefix) + "*"
        with self._errors("clearing the prefix", reading=False):
            for keys in _chunks(self._client.scan_iter(match=pattern, count=REDIS_DELETE_CHUNK)):
                self._client.unlink(*keys)

    def close(self) -> None:
        self._client.close()


class MemcachedStore(CacheStore):
    """Entries in Memcached (pymemcache) under ``prefix``.

    Memcached cannot list its keys, so a tag cannot name its entries: instead each tag has a
    version (``{prefix}tv:{tag}``), every entry is stored with the versions of its tags, and a
    read that finds a tag's version changed treats the entry as missing. ``invalidate`` bumps
    the version; ``clear`` bumps the version of a tag every entry of this prefix carries. The old
    entries stay until memcached's LRU reclaims them. A read costs two round trips when the
    entry has tags, one otherwise. Versions start from the clock, so a version key memcached
    evicted never comes back with a value an old entry was stored with.

    Memcached refuses items over its item size (``-I``, 1 MB by default): larger entries are
    not cached (the cache counts them as too large). Locks use ``add``, which is atomic; their
    time to live is rounded up to whole seconds, plus one.
    """

    name = "memcached"

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX) -> None:
        try:
            from pymemcache.client.base import PooledClient
        except ImportError:
            raise MissingDriverError("pymemcache", extra="memcached") from None
        parts = urlsplit(url)
        if parts.scheme != "memcached" or not parts.hostname:
            raise ConfigurationError(f"{url!r} is not a memcached URL; write memcached://host:port")
        self.url = url
        self.prefix = prefix
        self._address = f"{parts.hostname}:{parts.port or 11211}"
        self._client = PooledClient(
            (parts.hostname, parts.port or 11211),
            connect_timeout=SERVER_TIMEOUT_S,
            timeout=SERVER_TIMEOUT_S,
            no_delay=True,
            default_noreply=False,
        )
        self._item_size: int | None = None

    def __repr__(self) -> str:
        return f"MemcachedStore('memcached://{self._address}', prefix={self.prefix!r})"

    def _errors(self, action: str, *, reading: bool) -> contextlib.AbstractContextManager[None]:
        return _server_errors("Memcached", self._address, action, reading)

    def _name(self, kind: str, text: str) -> str:
        name = f"{self.prefix}{kind}:{text}"
        encoded = name.encode()
        if len(encoded) <= MEMCACHED_MAX_KEY and all(32 < byte < 127 for byte in encoded):
            return name
        return f"{self.prefix}{kind}#{hashlib.sha256(encoded).hexdigest()}"

    def _version_key(self, tag: str) -> str:
        return self._name("tv", tag)

    def _item_room(self, key: str) -> int:
        """The most bytes memcached takes as the value of ``key`` (its -I minus overheads)."""
        if self._item_size is None:
            with self._errors("reading its settings", reading=True):
                settings = self._client.stats("settings")
            item_size = settings.get(b"item_size_max", settings.get("item_size_max"))
            self._item_size = int(item_size) if item_size else MEMCACHED_DEFAULT_ITEM_SIZE
        return self._item_size - MEMCACHED_ITEM_OVERHEAD - len(self._name("k", key))

    def max_entry_bytes(self, key: str) -> int:
        # Leaves room for the tag versions stored with the entry (a few ordinary tags); set()
        # checks the exact size.
        return self._item_room(key) - MEMCACHED_VERSIONS_ROOM

    def get(self, key: str) -> bytes | None:
        entry_key = self._name("k", key)
        namespace_key = self._version_key(_NAMESPACE_TAG)
        with self._errors("reading an entry", reading=True):
            found = self._client.get_many([entry_key, namespace_key])
            stored = found.get(entry_key)
            if stored is None:
                return None
            versions, entry = _unpack_versions(stored)
            current = {_NAMESPACE_TAG: found.get(namespace_key)}
            others = [tag for tag in versions if tag != _NAMESPACE_TAG]
            if others:
                values = self._client.get_many([self._version_key(tag) for tag in others])
                current.update({tag: values.get(self._version_key(tag)) for tag in others})
        if any(
            current.get(tag) is None or int(current[tag]) != version
            for tag, version in versions.items()
        ):
            return None  # a tag was invalidated (or its version evicted) since it was stored
        return entry

    def set(
        self,
        key: str,
        entry: bytes,
        *,
        ttl: float | None,
        tags: Sequence[str] = (),
        versions: Mapping[str, int] | None = None,
    ) -> StoreResult:
        current = self.tag_versions([_NAMESPACE_TAG, *tags])
        if versions is not None and any(
            current.get(tag) != version for tag, version in versions.items()
        ):
            return StoreResult(stored=False, outdated=True)
        stored_value = _pack_versions(current) + entry
        if len(stored_value) > self._item_room(key):
            return StoreResult(stored=False, too_large=True)
        with self._errors("writing an entry", reading=False):
            try:
                stored = self._client.set(
                    self._name("k", key), stored_value, expire=_memcached_expiry(ttl), noreply=False
                )
            except Exception as exc:
                if "too large" in str(exc):
                    return StoreResult(stored=False, too_large=True)
                raise
        # An invalidation between the version check and this write leaves an entry whose
        # versions are already old: reads treat it as missing, as if it had not been stored.
        return StoreResult(stored=bool(stored))

    def delete(self, key: str) -> bool:
        with self._errors("deleting an entry", reading=False):
            return bool(self._client.delete(self._name("k", key), noreply=False))

    def tag_versions(self, tags: Sequence[str]) -> dict[str, int]:
        keys = {tag: self._version_key(tag) for tag in tags}
        with self._errors("reading tag versions", reading=True):
            found = self._client.get_many(list(keys.values()))
            missing = [tag for tag, key in keys.items() if key not in found]
            for tag in missing:
                # add() is atomic: if two processes start a version at once, one value wins and
                # both read it back.
                self._client.add(keys[tag], str(time.time_ns()).encode(), noreply=False)
            if missing:
                found.update(self._client.get_many([keys[tag] for tag in missing]))
        return {tag: int(found.get(key) or 0) for tag, key in keys.items()}

    def invalidate(self, tag: str) -> None:
        key = self._version_key(tag)
        with self._errors(f"invalidating tag {tag!r}", reading=False):
            if self._client.incr(key, 1, noreply=False) is None:
                # No version (never set, or evicted): any entry stored with the old one is now
                # unreadable anyway, since reads treat a missing version as changed.
                self._client.add(key, str(time.time_ns()).encode(), noreply=False)
        return None

    def acquire_lock(self, key: str, ttl: float) -> str | None:
        token = uuid.uuid4().hex
        with self._errors("taking a compute lock", reading=True):
            taken = self._client.add(
                self._name("l", key), token.encode(), expire=_memcached_expiry(ttl), noreply=False
            )
        return token if taken else None

    def release_lock(self, key: str, token: str) -> None:
        name = self._name("l", key)
        with self._errors("releasing a compute lock", reading=False):
            # Best effort: memcached has no compare-and-delete, so between this read and the
            # delete the lock could expire and be taken by another process (a window of one
            # round trip, after the lock's whole time to live).
            if self._client.get(name) == token.encode():
                self._client.delete(name, noreply=False)

    def clear(self) -> None:
        self.invalidate(_NAMESPACE_TAG)

    def close(self) -> None:
        self._client.close()


def _pack_versions(versions: Mapping[str, int]) -> bytes:
    parts = [_TAG_COUNT.pack(len(versions))]
    for tag, version in versions.items():
        name = tag.encode()
        parts += [_TAG_LENGTH.pack(len(name)), name, _TAG_VERSION.pack(version)]
    return b"".join(parts)


def _unpack_versions(data: bytes) -> tuple[dict[str, int], bytes]:
    view = memoryview(data)
    try:
        (count,) = _TAG_COUNT.unpack_from(view)
        offset = _TAG_COUNT.size
        versions = {}
        for _ in range(count):
            (length,) = _TAG_LENGTH.unpack_from(view, offset)
            offset += _TAG_LENGTH.size
            tag = bytes(view[offset : offset + length]).decode()
            offset += length
            (versions[tag],) = _TAG_VERSION.unpack_from(view, offset)
            offset += _TAG_VERSION.size
    except (struct.error, UnicodeDecodeError):
        # Not written by this store: the namespace check fails it, and the read is a miss.
        return {_NAMESPACE_TAG: -1}, b""
    return versions, bytes(view[offset:])


def _memcached_expiry(ttl: float | None) -> int:
    if ttl is None:
        return 0
    # Memcached's clock ticks once a second, so an item can expire up to a second early: add
    # one. Entries are never served late for it: the cache checks their own "fresh until" time.
    seconds = math.ceil(ttl) + 1
    if seconds > MEMCACHED_RELATIVE_EXPIRY_MAX:
        return int(time.time()) + seconds
    return seconds


def _chunks(items: Iterator[Any]) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= REDIS_DELETE_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _mask(url: str) -> str:
    from membound.urls import mask_password

    return mask_password(url)


def open_store(
    store: str | CacheStore, *, max_bytes: int, prefix: str = DEFAULT_PREFIX
) -> CacheStore:
    """A store from ``"memory"``, a ``redis://``/``rediss://``/``unix://`` URL or a
    ``memcached://host:port`` URL; a :class:`CacheStore` is returned as it is."""
    if isinstance(store, CacheStore):
        return store
    if not isinstance(store, str):
        raise ConfigurationError(
            f"store must be 'memory', a redis:// or memcached:// URL, or a CacheStore; "
            f"got {store!r}"
        )
    scheme = store.partition("://")[0].lower() if "://" in store else store.lower()
    if scheme == "memory":
        return MemoryStore(max_bytes)
    if scheme in ("redis", "rediss", "unix"):
        return RedisStore(store, prefix=prefix)
    if scheme == "memcached":
        return MemcachedStore(store, prefix=prefix)
    raise ConfigurationError(
        f"unknown cache store {_mask(store)!r}; use 'memory', redis://host:6379/0 or "
        "memcached://host:11211"
    )
