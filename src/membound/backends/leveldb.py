"""LevelDB through plyvel: ``leveldb:///relative/dir``, ``leveldb:////absolute/dir``.

The store is one keyspace, read as a ``(key, value)`` table (see :mod:`membound.backends.kv`
and :mod:`membound.backends.kv_ordered` for key ranges, read views and write modes). A read URL
with ``?table=`` is refused (there are no tables: use ``prefix=``); a write ignores the table
name ``copy`` derives from its source.

Memory: LevelDB's block cache (``lru_cache_size``) and memtable (``write_buffer_size``; two may
be alive while one is flushed) are sized from the budget instead of LevelDB's 8 MB and 4 MB
defaults, scans do not fill the cache (``fill_cache=False``), and writes go in
``WriteBatch``es of a few MB. plyvel has no read-only mode: opening a store for reading takes
its lock and may let LevelDB compact in the background.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from membound.backends.kv_ordered import (
    KeyRange,
    OrderedKVBackend,
    Store,
    release_mapped_pages,
    share_of,
)
from membound.budget import Budget
from membound.errors import (
    CorruptFileError,
    MissingDriverError,
    SourceError,
    TargetError,
)

__all__ = ["LevelDBBackend"]

# Block cache: 1/16 of the budget, between 1 MB and LevelDB's own default of 8 MB (a bigger one
# helps point reads, which membound does not do; scans bypass it).
CACHE_SHARE = 1 / 16
MIN_CACHE = 1024 * 1024
MAX_CACHE = 8 * 1024 * 1024
# Memtable: 1/16 of the budget (two can be alive), between 1 MB and 32 MB; LevelDB's default
# is 4 MB, and a bigger one makes fewer, larger level-0 files on bulk loads.
WRITE_BUFFER_SHARE = 1 / 16
MIN_WRITE_BUFFER = 1024 * 1024
MAX_WRITE_BUFFER = 32 * 1024 * 1024
# Open table files each keep their index block in memory; LevelDB's floor is 64.
MAX_OPEN_FILES = 128


def _plyvel() -> Any:
    try:
        import plyvel
    except ImportError:
        raise MissingDriverError("plyvel", "leveldb") from None
    return plyvel


class LevelDBStore(Store):
    """One open LevelDB directory."""

    def __init__(self, path: str, *, create: bool, budget: Budget) -> None:
        plyvel = _plyvel()
        self.path = path
        self.plyvel = plyvel
        self.last_key: bytes | None = None  # the last key committed, for flush()
        try:
            self.db = plyvel.DB(
                path,
                create_if_missing=create,
                lru_cache_size=share_of(budget, CACHE_SHARE, MIN_CACHE, MAX_CACHE),
                write_buffer_size=share_of(
                    budget, WRITE_BUFFER_SHARE, MIN_WRITE_BUFFER, MAX_WRITE_BUFFER
                ),
                max_open_files=MAX_OPEN_FILES,
            )
        except plyvel.CorruptionError as exc:
            raise CorruptFileError(
                f"LevelDB store {path!r} is corrupt ({_text(exc)}); plyvel.repair_db() may "
                "recover what is left"
            ) from None
        except plyvel.Error as exc:
            message = _text(exc)
            if "lock" in message.lower():
                raise (TargetError if create else SourceError)(
                    f"LevelDB store {path!r} is in use by another process or another open "
                    f"store in this one ({message}); LevelDB allows one at a time"
                ) from None
            raise CorruptFileError(
                f"{path!r} cannot be opened as a LevelDB store ({message}); is it one?"
            ) from None

    def iterate(self, table: str | None, key_range: KeyRange) -> Iterator[tuple[bytes, bytes]]:
        iterator = self.db.iterator(
            start=key_range.start,
            stop=key_range.stop,
            reverse=key_range.reverse,
            fill_cache=False,
        )
        try:
            yield from iterator
        except self.plyvel.Error as exc:
            raise CorruptFileError(
                f"reading LevelDB store {self.path!r} failed ({_text(exc)}); the store is "
                "damaged: plyvel.repair_db() may recover what is left"
            ) from None
        finally:
            iterator.close()
            # LevelDB maps its table files: hand back the pages this view touched.
            release_mapped_pages(self.path)

    def commit(self, table: str | None, pairs: Sequence[tuple[bytes, bytes]]) -> None:
        try:
            batch = self.db.write_batch()
            for key, value in pairs:
                batch.put(key, value)
            batch.write()
            if pairs:
                self.last_key = pairs[-1][0]
            release_mapped_pages(self.path)
        except self.plyvel.Error as exc:
            raise TargetError(f"writing to LevelDB store {self.path!r} failed: "
                              f"{_text(exc)}") from None

    def flush(self) -> None:
        """Write the memtable out to a table file, so the next open replays no log.

        LevelDB keeps the last writes (up to a write buffer, or one whole write batch) only in
        its log until the memtable fills; whoever opens the store next replays that log into
        memory, one batch at a time: a reader with a 32MB budget paid 17 MB for a store written
        with 16 MB batches. ``compact_range`` over one key flushes the memtable first and then
        compacts only the table files holding that key.
        """
        if self.last_key is None:
            return
        try:
            self.db.compact_range(start=self.last_key, stop=self.last_key)
        except self.plyvel.Error as exc:
            raise TargetError(f"flushing LevelDB store {self.path!r} failed: "
                              f"{_text(exc)}") from None
        finally:
            release_mapped_pages(self.path)

    def tables(self) -> list[str]:
        return []

    def is_empty(self, table: str | None) -> bool:
        with self.db.iterator(include_value=False) as iterator:
            return next(iterator, None) is None

    def clear(self, table: str | None) -> None:
        while True:
            with self.db.iterator(include_value=False) as iterator:
                keys = [key for _, key in zip(range(10_000), iterator, strict=False)]
            if not keys:
                return
            batch = self.db.write_batch()
            for key in keys:
                batch.delete(key)
            batch.write()

    def close(self) -> None:
        db = getattr(self, "db", None)
        if db is not None and not db.closed:
            db.close()


def _text(exc: BaseException) -> str:
    arg = exc.args[0] if exc.args else exc
    return arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)


class LevelDBBackend(OrderedKVBackend):
    """A LevelDB directory as a ``(key, value)`` table; reads by key range, writes in batches."""

    name = "leveldb"
    label = "LevelDB"
    extra = "leveldb"
    NAMED_TABLES: ClassVar[bool] = False

    def __init__(self, url, *, budget: Budget | None = None) -> None:
        _plyvel()
        super().__init__(url, budget=budget)

    def _looks_like_store(self, path: str) -> bool:
        return os.path.isfile(os.path.join(path, "CURRENT"))

    def _open(self, path: str, *, write: bool, create: bool, bulk: bool = False) -> Store:
        return LevelDBStore(path, create=create, budget=self.budget)
