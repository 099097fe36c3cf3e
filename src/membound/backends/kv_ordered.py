"""What the ordered embedded key-value stores (LevelDB, LMDB, RocksDB) share.

Each store is one directory on disk whose keys are kept sorted as bytes. This module holds what
does not depend on the store: key ranges, the scan loop, the commit loop and the write modes.
A store module only says how to open its directory, read one view of a key range, commit a list
of pairs and list or clear its namespaces (a :class:`Store`).

Reading: a scan is cut into **read views** (an LMDB read transaction, a LevelDB or RocksDB
iterator with its implicit snapshot), each closed after :data:`READ_VIEW_SHARE` of the budget's
bytes; the next view resumes just after the last key read (``key + b"\\0"``, the next possible
key). A long scan thus never pins old pages or memtables: LMDB's file does not grow under a
writer while it runs. The price: a long scan is not one snapshot, a key written behind the scan
position while it runs may or may not be seen.

Writing: pairs are committed in groups of :data:`COMMIT_SHARE` of the budget's bytes (the
store's write batch or transaction holds about that much). Modes:

- ``fail`` refuses a non-empty target namespace; a new store is built in a temporary directory
  beside the target and renamed into place at the end, and an empty namespace of an existing
  store is cleared again when the write fails: either way nothing is left half-written.
- ``append`` / ``upsert`` put each pair, overwriting a key that exists. A failure after some
  commits raises :class:`PartialWriteError` with the rows committed and the last key.
- ``replace`` builds a fresh store in a temporary directory beside the target, copies the
  store's other namespaces into it, writes the new data, then swaps the two directories with
  one atomic ``renameat2(RENAME_EXCHANGE)`` (two renames where the kernel lacks it) and deletes
  the old one. A failure leaves the old store as it was.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar
from urllib.parse import unquote_to_bytes

import pyarrow as pa

from membound.backends.base import Backend, WriteMode, WriteResult, check_mode, is_query
from membound.backends.kv import PAIR_OVERHEAD, KVFormat
from membound.budget import Budget
from membound.errors import (
    ConfigurationError,
    CorruptFileError,
    MemboundError,
    NotFoundError,
    PartialWriteError,
    SchemaError,
    TargetError,
    TargetExistsError,
)

__all__ = [
    "KeyRange",
    "OrderedKVBackend",
    "Store",
    "commit_bytes",
    "prefix_successor",
    "release_mapped_pages",
    "share_of",
]

# A read view (transaction, iterator, snapshot) is closed and reopened after this share of the
# budget has been scanned through it: often enough that a long scan pins nothing for long (and,
# for LMDB, that the map pages it touched are handed back), rarely enough that the reopen, one
# seek, costs nothing measurable.
READ_VIEW_SHARE = 1 / 4
MIN_READ_VIEW_BYTES = 1024 * 1024
# ... and after this many records, so a run of tiny pairs does not hold one view for minutes.
READ_VIEW_MAX_RECORDS = 200_000
# Pending pairs per commit, as a share of the budget: the Python list of pairs and the store's
# own write batch (or LMDB's dirty pages) each hold about this much until the commit.
COMMIT_SHARE = 1 / 16
# Below this a commit (an fsync for LMDB) costs more than the memory it saves.
MIN_COMMIT_BYTES = 256 * 1024
# Above this a bigger commit buys no speed.
MAX_COMMIT_BYTES = 64 * 1024 * 1024
# Temporary directories of "replace" and "fail" writes, made beside the target so the final
# rename stays on one filesystem.
TEMP_PREFIX = ".membound-tmp-"
# URL options that choose the key range a read covers.
RANGE_OPTIONS = ("prefix", "start", "stop", "reverse")
# URL options KVFormat reads.
FORMAT_OPTIONS = ("keys", "values", "value_codec", "key_column", "value_column")

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_MADV_DONTNEED = 4


def share_of(budget: Budget, share: float, low: int, high: int) -> int:
    """``share`` of the budget's bytes, clamped to ``[low, high]``."""
    return max(low, min(high, int(budget.max_memory * share)))


def commit_bytes(budget: Budget) -> int:
    """Bytes of pending pairs per commit under ``budget``."""
    return share_of(budget, COMMIT_SHARE, MIN_COMMIT_BYTES, MAX_COMMIT_BYTES)


def prefix_successor(prefix: bytes) -> bytes | None:
    """The first key after every key starting with ``prefix``; None when there is none."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


@dataclass(frozen=True)
class KeyRange:
    """Keys ``start <= key < stop`` (either end open when None), read forward or in reverse."""

    start: bytes | None = None
    stop: bytes | None = None
    reverse: bool = False

    @classmethod
    def build(
        cls,
        *,
        prefix: bytes | str | None = None,
        start: bytes | str | None = None,
        stop: bytes | str | None = None,
        reverse: bool = False,
    ) -> KeyRange:
        """A range from a prefix and/or start/stop keys (text is taken as its UTF-8 bytes)."""
        low = _as_key(start)
        high = _as_key(stop)
        if prefix is not None:
            raw = _as_key(prefix)
            assert raw is not None
            low = raw if low is None else max(low, raw)
            end = prefix_successor(raw)
            if end is not None:
                high = end if high is None else min(high, end)
        return cls(low, high, bool(reverse))

    @property
    def empty(self) -> bool:
        return self.start is not None and self.stop is not None and self.start >= self.stop

    def after(self, key: bytes) -> KeyRange:
        """What is left of the range once ``key`` (and every key before it) has been read."""
        if self.reverse:
            return replace(self, stop=key)
        # key + b"\0" is the smallest key greater than key: resume there, skipping key itself.
        return replace(self, start=key + b"\x00")


def _as_key(value: bytes | str | None) -> bytes | None:
    if value is None:
        return None
    return value.encode() if isinstance(value, str) else bytes(value)


def raw_query(raw_url: str) -> dict[str, bytes]:
    """A URL's query options as bytes, ``%xx`` escapes decoded as raw bytes (``prefix=a%00``)."""
    query = raw_url.split("?", 1)[1] if "?" in raw_url else ""
    query = query.split("#", 1)[0]
    options: dict[str, bytes] = {}
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        options[name.replace("+", " ")] = unquote_to_bytes(value.replace("+", " "))
    return options


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigurationError(f"URL option {name}={value!r} is not true or false")


class Store(ABC):
    """One open store directory, as the shared loops use it. Made by a backend's ``_open``."""

    @abstractmethod
    def iterate(self, table: str | None, key_range: KeyRange) -> Iterator[tuple[bytes, bytes]]:
        """The pairs of ``key_range`` in one read view, closed when the generator is closed.

        Raises :class:`NotFoundError` for a missing namespace, :class:`CorruptFileError` for
        data the store cannot read.
        """

    @abstractmethod
    def commit(self, table: str | None, pairs: Sequence[tuple[bytes, bytes]]) -> None:
        """Put ``pairs`` into ``table`` in one atomic commit (creating the namespace)."""

    @abstractmethod
    def tables(self) -> list[str]:
        """The named namespaces (sub-databases, column families); the main one is not named."""

    @abstractmethod
    def is_empty(self, table: str | None) -> bool:
        """True when ``table`` holds no pairs (or does not exist)."""

    @abstractmethod
    def clear(self, table: str | None) -> None:
        """Remove every pair of ``table`` (dropping a named namespace altogether)."""

    def count(self, table: str | None) -> int | None:
        """The number of pairs of ``table`` if the store knows it cheaply, else None."""
        return None

    def flush(self) -> None:  # noqa: B027 - most stores are durable once committed
        """Make everything committed durable on disk (before a directory swap)."""

    @abstractmethod
    def close(self) -> None:
        """Release the store. Safe to call twice."""


class OrderedKVBackend(Backend):
    """Base of the LevelDB, LMDB and RocksDB backends: a ``(key, value)`` table per namespace.

    URL options: ``prefix=``, ``start=``, ``stop=`` (text, ``%xx`` for any byte) and
    ``reverse=true`` choose what a read covers; ``keys=``, ``values=``, ``value_codec=``,
    ``key_column=``, ``value_column=`` how keys and values are typed (see
    :mod:`membound.backends.kv`); each store adds its own (``STORE_OPTIONS``).
    """

    converts_python_values = True  # keys and values arrive as Python bytes

    @classmethod
    def converts_python_values_for(cls, url: Any, *, reading: bool) -> bool:
        """Keys and values become Arrow columns from their joined bytes (``KVFormat.to_batch``)
        and writes take batches apart with ``to_pylist``: only a value codec's decoded values
        are converted from Python objects."""
        return reading and bool(dict(url.options).get("value_codec"))

    #: The store's name in messages ("LMDB").
    label: ClassVar[str] = "store"
    #: URL options this store reads besides the shared ones.
    STORE_OPTIONS: ClassVar[tuple[str, ...]] = ()
    #: Whether the store has named namespaces for ``table`` (LevelDB has one keyspace).
    NAMED_TABLES: ClassVar[bool] = True

    def __init__(self, url, *, budget: Budget | None = None) -> None:
        super().__init__(url, budget=budget)
        if not url.path:
            raise ConfigurationError(
                f"{url.display!r} names no directory; write {url.scheme}:///relative/dir or "
                f"{url.scheme}:////absolute/dir"
            )
        known = set(RANGE_OPTIONS) | set(FORMAT_OPTIONS) | set(self.STORE_OPTIONS)
        unknown = sorted(set(url.options) - known)
        if unknown:
            raise ConfigurationError(
                f"unknown URL option {unknown[0]!r} for {self.label}; known: "
                f"{', '.join(sorted(known))}"
            )
        self.path: str = url.path
        self.format = KVFormat.from_options(url.options)
        raw = raw_query(url.raw)
        self.key_range = KeyRange.build(
            prefix=raw.get("prefix"),
            start=raw.get("start"),
            stop=raw.get("stop"),
            reverse=_parse_bool("reverse", url.options.get("reverse", "false")),
        )
        self._store: Store | None = None
        self._store_writable = False

    # -- what each store provides -------------------------------------------------------------

    @abstractmethod
    def _open(self, path: str, *, write: bool, create: bool, bulk: bool = False) -> Store:
        """Open the store at ``path``; ``bulk`` for a fresh store built aside (no WAL needed)."""

    @abstractmethod
    def _looks_like_store(self, path: str) -> bool:
        """Whether ``path`` holds this store's files (it exists and is not just an empty dir)."""

    # -- opening ------------------------------------------------------------------------------

    def _exists(self) -> bool:
        return os.path.exists(self.path)

    def _reader(self) -> Store:
        if self._store is not None:
            return self._store
        if not os.path.exists(self.path):
            raise NotFoundError(
                f"no {self.label} store at {self.path!r}; check the path (relative paths are "
                f"resolved from the current directory: {self.url.scheme}:///rel/dir, "
                f"{self.url.scheme}:////abs/dir)"
            )
        if not self._looks_like_store(self.path):
            if not _occupied(self.path):
                raise NotFoundError(f"{self.path!r} is an empty directory, not a {self.label} "
                                    "store")
            raise CorruptFileError(
                f"{self.path!r} holds no {self.label} store (its files are missing or of "
                "another kind); is it one?"
            )
        self._store = self._open(self.path, write=False, create=False)
        self._store_writable = False
        return self._store

    def _writer(self) -> Store:
        if self._store is not None and self._store_writable:
            return self._store
        self._release()
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise TargetError(
                f"cannot create {self.label} store {self.path!r}: directory {parent!r} does "
                "not exist"
            )
        if _occupied(self.path) and not self._looks_like_store(self.path):
            raise TargetError(
                f"{self.path!r} exists and holds no {self.label} store; name a new or empty "
                "directory"
            )
        self._store = self._open(self.path, write=True, create=True)
        self._store_writable = True
        return self._store

    def _release(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            store.close()

    def close(self) -> None:
        self._release()
        super().close()

    # -- metadata -----------------------------------------------------------------------------

    def tables(self) -> list[str]:
        """The store's named namespaces (LMDB sub-databases, RocksDB column families)."""
        return self._reader().tables()

    def _read_table(self, query_or_table: str | None) -> str | None:
        table = query_or_table or self.default_table
        if table is None:
            return None
        if is_query(table):
            raise ConfigurationError(
                f"{self.label} has no query language; read a key range with the URL options "
                "prefix=, start=, stop=, reverse=true (or scan(prefix=...))"
            )
        if not self.NAMED_TABLES:
            raise ConfigurationError(
                f"{self.label} has one keyspace and no tables (got {table!r}); read part of "
                "it with prefix=, start=, stop="
            )
        return table

    def _write_table(self, table: str | None) -> str | None:
        table = table or self.default_table
        if not self.NAMED_TABLES:
            # One keyspace: the table name copy() derives from its source means nothing here.
            return None
        return table

    def schema(self, query_or_table: str | None = None) -> pa.Schema:
        self._read_table(query_or_table)
        return self.format.schema()

    def estimate_rows(self, query_or_table: str | None = None) -> int | None:
        store = self._reader()
        return store.count(self._read_table(query_or_table))

    # -- reading ------------------------------------------------------------------------------

    def batches(
        self,
        query_or_table: str | None = None,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        budget: Budget | int | str | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Stream a namespace's pairs (the URL's key range) as byte-sized ``(key, value)`` batches.

        Raises :class:`NotFoundError` for a missing store or namespace, :class:`CorruptFileError`
        for files the store cannot read, :class:`SchemaError` for keys or values that are not
        UTF-8 under ``keys=text`` / ``values=text``.
        """
        if params:
            raise ConfigurationError(f"params are for queries; a {self.label} read takes none")
        table = self._read_table(query_or_table)
        self._reader()
        return self._scan_batches(table, self.key_range, self._budget(budget))

    def scan(
        self,
        table: str | None = None,
        *,
        prefix: bytes | str | None = None,
        start: bytes | str | None = None,
        stop: bytes | str | None = None,
        reverse: bool = False,
        budget: Budget | int | str | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Byte-sized batches of the keys ``start <= key < stop`` that start with ``prefix``.

        Text is taken as its UTF-8 bytes; ``reverse=True`` reads from the last key down.
        Memory: one batch of pairs plus the store's read view.
        """
        table = self._read_table(table)
        key_range = KeyRange.build(prefix=prefix, start=start, stop=stop, reverse=reverse)
        self._reader()
        return self._scan_batches(table, key_range, self._budget(budget))

    def pairs(
        self,
        table: str | None = None,
        *,
        prefix: bytes | str | None = None,
        start: bytes | str | None = None,
        stop: bytes | str | None = None,
        reverse: bool = False,
        budget: Budget | int | str | None = None,
    ) -> Iterator[tuple[bytes, bytes]]:
        """The raw ``(key, value)`` pairs of a key range as bytes, one at a time."""
        table = self._read_table(table)
        key_range = KeyRange.build(prefix=prefix, start=start, stop=stop, reverse=reverse)
        return self._pairs(self._reader(), table, key_range, self._budget(budget))

    def _scan_batches(
        self, table: str | None, key_range: KeyRange, budget: Budget
    ) -> Iterator[pa.RecordBatch]:
        # One loop over the store's read views, with no call per pair: at a million pairs, each
        # generator or method between the store and the batch costs a second.
        store = self._reader()
        fmt = self.format
        # Columns come from joined bytes (KVFormat.to_batch); only a codec's values convert.
        sizer = budget.sizer(conversion=fmt.value_codec is not None)
        target = budget.batch_bytes
        view_bytes = share_of(budget, READ_VIEW_SHARE, MIN_READ_VIEW_BYTES, 1 << 62)
        where = f"reading {self.label} {self.path!r}"
        keys: list[bytes] = []
        values: list[bytes] = []
        pending = 0
        remaining = key_range
        while not remaining.empty:
            view = store.iterate(table, remaining)
            scanned = 0
            stop = len(keys) + READ_VIEW_MAX_RECORDS  # records of this view, counted in keys
            last: bytes | None = None
            try:
                for key, value in view:
                    size = len(key) + len(value) + PAIR_OVERHEAD
                    if size >= target and keys:
                        # A value that alone fills a batch goes out alone, not with the pairs
                        # before it.
                        stop -= len(keys)
                        yield fmt.to_batch(keys, values)
                        keys, values, pending = [], [], 0
                    keys.append(key)
                    values.append(value)
                    pending += size
                    scanned += size
                    if pending >= target:
                        stop -= len(keys)
                        batch = fmt.to_batch(keys, values)
                        keys, values, pending = [], [], 0
                        sizer.observe(batch.num_rows, batch.nbytes)
                        yield batch
                        del batch
                        sizer.check_memory(where)
                        target = sizer.target_bytes
                    if scanned >= view_bytes or len(keys) >= stop:
                        last = key
                        break
            finally:
                view.close()
            if last is None:
                break
            remaining = remaining.after(last)
        if keys:
            yield fmt.to_batch(keys, values)

    def _pairs(
        self, store: Store, table: str | None, key_range: KeyRange, budget: Budget
    ) -> Iterator[tuple[bytes, bytes]]:
        """All pairs of ``key_range``, through read views reopened every few MB."""
        view_bytes = share_of(budget, READ_VIEW_SHARE, MIN_READ_VIEW_BYTES, 1 << 62)
        remaining = key_range
        while not remaining.empty:
            view = store.iterate(table, remaining)
            scanned = records = 0
            last: bytes | None = None
            try:
                for key, value in view:
                    yield key, value
                    last = key
                    scanned += len(key) + len(value) + PAIR_OVERHEAD
                    records += 1
                    if scanned >= view_bytes or records >= READ_VIEW_MAX_RECORDS:
                        break
                else:
                    return
            finally:
                view.close()
            assert last is not None
            remaining = remaining.after(last)

    # -- writing ------------------------------------------------------------------------------

    def write(
        self,
        table: str | None,
        batches: Iterable[pa.RecordBatch],
        *,
        mode: WriteMode = "fail",
        key: Sequence[str] | str | None = None,
        budget: Budget | int | str | None = None,
    ) -> WriteResult:
        """Write ``(key, value)`` batches into a namespace, committing every few MB.

        ``key`` names the key column (default ``key``, or the URL's ``key_column=``). ``append``
        and ``upsert`` both overwrite existing keys. See the module docstring for what each
        mode leaves behind on failure. Raises :class:`TargetExistsError` (``fail`` on a
        non-empty namespace), :class:`SchemaError` (no key column, a NULL key or value),
        :class:`PartialWriteError` (``append``/``upsert`` failed after commits).
        """
        fmt = self.format
        keys = check_mode(mode, key or fmt.key_column)
        assert keys is not None
        if len(keys) != 1:
            raise ConfigurationError(
                f"a {self.label} store has one key column; got key={list(keys)}"
            )
        if keys[0] != fmt.key_column:
            fmt = replace(fmt, key_column=keys[0])
        budget = self._budget(budget)
        table = self._write_table(table)
        result = WriteResult(table=table or self.path, mode=mode)
        if mode == "replace" or (mode == "fail" and not self._exists()):
            self._write_aside(table, batches, mode, fmt, budget, result)
            return result
        store = self._writer()
        if mode == "fail":
            if not store.is_empty(table):
                raise TargetExistsError(
                    f"{self._describe(table)} is not empty; use mode 'replace' to overwrite it "
                    "or 'append' to add to it"
                )
            result.created = True
            try:
                self._write_batches(store, table, batches, fmt, budget, result)
                store.flush()
            except BaseException:
                # The namespace was empty when the write began: empty it again.
                with contextlib.suppress(Exception):
                    store.clear(table)
                raise
            return result
        try:
            self._write_batches(store, table, batches, fmt, budget, result)
            store.flush()
        except (MemboundError, OSError) as exc:
            raise PartialWriteError(
                f"{mode} to {self._describe(table)} stopped after {result.rows} committed rows: "
                f"{exc}; those rows are in the store (the last key is in resume_after)",
                rows_committed=result.rows,
                resume_after=(self._last_key,) if self._last_key is not None else None,
            ) from exc
        return result

    _last_key: bytes | None = None

    def _describe(self, table: str | None) -> str:
        where = f"{self.label} store {self.path!r}"
        return f"namespace {table!r} of {where}" if table else where

    def _write_batches(
        self,
        store: Store,
        table: str | None,
        batches: Iterable[pa.RecordBatch],
        fmt: KVFormat,
        budget: Budget,
        result: WriteResult,
    ) -> None:
        limit = commit_bytes(budget)
        pending: list[tuple[bytes, bytes]] = []
        pending_bytes = 0
        self._last_key = None
        iterator = iter(batches)
        try:
            for batch in iterator:
                for key, value in fmt.pairs(batch):
                    if value is None:
                        raise SchemaError(
                            f"the value of key {key[:60]!r} is NULL, which a {self.label} store "
                            "cannot hold; fill it (COALESCE in a query) or filter it out"
                        )
                    pending.append((key, value))
                    pending_bytes += len(key) + len(value) + PAIR_OVERHEAD
                    if pending_bytes >= limit:
                        self._commit(store, table, pending, result)
                        pending, pending_bytes = [], 0
                result.batches += 1
                result.bytes += batch.nbytes
                del batch
            if pending:
                self._commit(store, table, pending, result)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def _commit(
        self, store: Store, table: str | None, pending: list[tuple[bytes, bytes]],
        result: WriteResult,
    ) -> None:
        store.commit(table, pending)
        result.rows += len(pending)
        self._last_key = pending[-1][0]

    def _write_aside(
        self,
        table: str | None,
        batches: Iterable[pa.RecordBatch],
        mode: str,
        fmt: KVFormat,
        budget: Budget,
        result: WriteResult,
    ) -> None:
        """Build the new store in a temporary directory beside the target, then swap it in."""
        target = os.path.abspath(self.path)
        parent = os.path.dirname(target)
        if not os.path.isdir(parent):
            raise TargetError(
                f"cannot create {self.label} store {self.path!r}: directory {parent!r} does "
                "not exist"
            )
        existed = os.path.exists(target)
        if existed and not os.path.isdir(target):
            raise TargetError(
                f"{self.path!r} is a file; mode 'replace' swaps whole {self.label} store "
                "directories, so name a directory"
            )
        if _occupied(target) and not self._looks_like_store(target):
            raise TargetError(
                f"{self.path!r} is a non-empty directory that holds no {self.label} store; "
                "refusing to replace it"
            )
        # Not tempfile.mkdtemp: its 0700 mode would become the store's after the rename.
        aside = os.path.join(
            parent, f"{TEMP_PREFIX}{os.path.basename(target)}-{uuid.uuid4().hex[:12]}"
        )
        os.mkdir(aside)
        try:
            fresh = self._open(aside, write=True, create=True, bulk=True)
            try:
                if _occupied(target):
                    self._copy_other_namespaces(fresh, table, budget)
                self._write_batches(fresh, table, batches, fmt, budget, result)
                fresh.flush()
            finally:
                fresh.close()
            self._release()
            result.created = True
            if mode == "fail" and _occupied(target):
                raise TargetExistsError(
                    f"{self.label} store {self.path!r} was created by someone else while this "
                    "write ran; nothing was changed"
                )
            try:
                if os.path.exists(target):
                    swap_directories(aside, target)
                else:
                    os.rename(aside, target)
            except OSError as exc:
                raise TargetError(
                    f"could not put the new {self.label} store in place at {self.path!r}: "
                    f"{exc}; the old one is unchanged"
                ) from exc
        finally:
            shutil.rmtree(aside, ignore_errors=True)

    def _copy_other_namespaces(self, fresh: Store, table: str | None, budget: Budget) -> None:
        """Carry every namespace but ``table`` over from the old store into ``fresh``."""
        old = self._reader()
        limit = commit_bytes(budget)
        names: list[str | None] = [None, *old.tables()] if self.NAMED_TABLES else []
        for name in names:
            if name == table:
                continue
            pending: list[tuple[bytes, bytes]] = []
            size = 0
            for key, value in self._pairs(old, name, KeyRange(), budget):
                pending.append((key, value))
                size += len(key) + len(value) + PAIR_OVERHEAD
                if size >= limit:
                    fresh.commit(name, pending)
                    pending, size = [], 0
            if pending:
                fresh.commit(name, pending)


def _occupied(path: str) -> bool:
    """Whether ``path`` exists and is more than an empty directory."""
    if not os.path.exists(path):
        return False
    return not os.path.isdir(path) or bool(os.listdir(path))


def swap_directories(new: str, old: str) -> None:
    """Put directory ``new`` at path ``old`` and the old one at path ``new``.

    One atomic ``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere (or on a filesystem without
    it) two renames, with a moment where ``old`` does not exist.
    """
    if _exchange(new, old):
        return
    parked = new + ".old"
    os.rename(old, parked)
    try:
        os.rename(new, old)
    except OSError:
        os.rename(parked, old)
        raise
    os.rename(parked, new)


def _exchange(a: str, b: str) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), b)


def release_mapped_pages(path: str) -> int:
    """Hand back the resident pages of every read-only mapping of ``path`` (a file, or any file
    under a directory) with ``madvise(MADV_DONTNEED)``; returns the bytes advised.

    LMDB maps its whole file and LevelDB its table files: a scan leaves every page it touched
    resident, clean but counted in RSS. Dropping them is safe for read-only mappings (nothing
    unwritten lives there; the data stays in the OS page cache and the next touch maps it
    again). Linux only (reads ``/proc/self/maps``); elsewhere it does nothing and returns 0.
    """
    try:
        with open("/proc/self/maps", "rb") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return 0
    real = os.fsencode(os.path.realpath(path))
    released = 0
    for line in lines:
        fields = line.split(None, 5)
        if len(fields) < 6 or b"w" in fields[1]:
            continue
        name = fields[5]
        if name != real and not name.startswith(real + b"/"):
            continue
        begin, end = (int(part, 16) for part in fields[0].split(b"-"))
        if _madvise(begin, end - begin, _MADV_DONTNEED) == 0:
            released += end - begin
    return released


_LIBC: Any = None


def _madvise(address: int, length: int, advice: int) -> int:
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(None, use_errno=True)
            _LIBC.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            _LIBC.madvise.restype = ctypes.c_int
        except (OSError, AttributeError):
            _LIBC = False
    if not _LIBC:
        return -1
    return _LIBC.madvise(address, length, advice)
