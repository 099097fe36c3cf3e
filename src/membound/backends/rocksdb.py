"""RocksDB through rocksdict: ``rocksdb:///relative/dir``, ``rocksdb:////absolute/dir``.

``table`` names a column family; without one (or with ``default``) the default column family is
read and written. Keys and values are raw bytes (``Options(raw_mode=True)``): rocksdict's default
mode would pickle values. Key ranges, read views and write modes are shared with the other
ordered stores (:mod:`membound.backends.kv_ordered`).

Memory: RocksDB's own defaults break a small budget before any data moves (a 64 MB memtable per
column family, two of them alive while one flushes, and an 8 MB block cache). Here the memtable,
the block cache (which also holds index and filter blocks, ``cache_index_and_filter_blocks``)
and the open files are sized from the budget; scans use ``fill_cache(False)`` and a modest
readahead, and a read view (an iterator, which pins the blocks and memtables it uses) is closed
every few MB. Writes go in ``WriteBatch``es of a few MB; a store built aside by ``replace`` is
written without the WAL and flushed before it is swapped in.

Reads open the store read-only (``AccessType.read_only``), so a store another process (or
another backend of this one) has open for writing can still be read. The lower bound of a scan
is a ``seek``: ``ReadOptions.set_iterate_lower_bound`` set the upper bound instead in rocksdict
up to 0.3.27.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

from membound.backends.kv_ordered import KeyRange, OrderedKVBackend, Store, share_of
from membound.budget import Budget
from membound.errors import (
    CorruptFileError,
    MissingDriverError,
    NotFoundError,
    SourceError,
    TargetError,
)

__all__ = ["RocksDBBackend"]

DEFAULT_FAMILY = "default"
# Memtable: 1/16 of the budget (two may be alive while one flushes), 1-64 MB (RocksDB's own
# default is the 64 MB top).
WRITE_BUFFER_SHARE = 1 / 16
MIN_WRITE_BUFFER = 1024 * 1024
MAX_WRITE_BUFFER = 64 * 1024 * 1024
MAX_WRITE_BUFFERS = 2
# Block cache, holding index and filter blocks too: 1/16 of the budget, 1-32 MB.
CACHE_SHARE = 1 / 16
MIN_CACHE = 1024 * 1024
MAX_CACHE = 32 * 1024 * 1024
# Open table files; each keeps a table reader (its index and filters go to the block cache).
MAX_OPEN_FILES = 256
# Readahead of a scan: enough to read sequentially, small against any budget.
SCAN_READAHEAD = 1024 * 1024


def _rocksdict() -> Any:
    try:
        import rocksdict
    except ImportError:
        raise MissingDriverError("rocksdict", "rocksdb") from None
    return rocksdict


def _options(rd: Any, budget: Budget, *, create: bool) -> Any:
    options = rd.Options(raw_mode=True)
    options.create_if_missing(create)
    options.create_missing_column_families(create)
    options.set_write_buffer_size(
        share_of(budget, WRITE_BUFFER_SHARE, MIN_WRITE_BUFFER, MAX_WRITE_BUFFER)
    )
    options.set_max_write_buffer_number(MAX_WRITE_BUFFERS)
    options.set_max_open_files(MAX_OPEN_FILES)
    table = rd.BlockBasedOptions()
    table.set_block_cache(rd.Cache(share_of(budget, CACHE_SHARE, MIN_CACHE, MAX_CACHE)))
    table.set_cache_index_and_filter_blocks(True)
    options.set_block_based_table_factory(table)
    return options


def _error(exc: BaseException, path: str, *, write: bool) -> Exception:
    """A membound error for a RocksDB status raised by rocksdict (a plain Exception)."""
    message = str(exc)
    if message.startswith("Corruption"):
        return CorruptFileError(f"RocksDB store {path!r} is damaged ({message}); "
                                "Rdict.repair() may recover what is left")
    if "lock" in message.lower():
        return (TargetError if write else SourceError)(
            f"RocksDB store {path!r} is in use by another process or another open store in "
            f"this one ({message}); RocksDB allows one writer at a time"
        )
    if write:
        return TargetError(f"writing to RocksDB store {path!r} failed: {message}")
    return CorruptFileError(f"{path!r} cannot be read as a RocksDB store ({message}); is it one?")


class RocksDBStore(Store):
    """One open RocksDB directory with its column families."""

    def __init__(self, path: str, *, write: bool, create: bool, bulk: bool,
                 budget: Budget) -> None:
        rd = _rocksdict()
        self.rd = rd
        self.path = path
        self.write_mode = write
        self.options = _options(rd, budget, create=create)
        families = None
        if os.path.isfile(os.path.join(path, "CURRENT")):
            try:
                names = rd.Rdict.list_cf(path, rd.Options(raw_mode=True))
            except Exception as exc:  # noqa: BLE001 - rocksdict raises plain Exceptions
                raise _error(exc, path, write=False) from None
            families = {name: _options(rd, budget, create=create) for name in names
                        if name != DEFAULT_FAMILY}
        access = rd.AccessType.read_write() if write else rd.AccessType.read_only(False)
        try:
            self.db = rd.Rdict(path, self.options, column_families=families,
                               access_type=access)
        except Exception as exc:  # noqa: BLE001
            raise _error(exc, path, write=write) from None
        self.write_options = rd.WriteOptions()
        if bulk:
            # A store built aside is flushed before it is swapped in; a crash before that
            # leaves only a temporary directory, so the WAL would protect nothing.
            self.write_options.disable_wal = True
        self.families: dict[str, Any] = {}

    def _family(self, table: str | None, *, create: bool) -> Any:
        if table is None or table == DEFAULT_FAMILY:
            return self.db
        family = self.families.get(table)
        if family is not None:
            return family
        if table in self.tables():
            family = self.db.get_column_family(table)
        elif create:
            try:
                family = self.db.create_column_family(table, self.options)
            except Exception as exc:  # noqa: BLE001
                raise _error(exc, self.path, write=True) from None
        else:
            raise NotFoundError(
                f"no column family {table!r} in RocksDB store {self.path!r} (column families: "
                f"{', '.join([DEFAULT_FAMILY, *self.tables()])})"
            )
        self.families[table] = family
        return family

    def tables(self) -> list[str]:
        try:
            names = self.rd.Rdict.list_cf(self.path, self.rd.Options(raw_mode=True))
        except Exception:  # noqa: BLE001 - a store being created has no list yet
            names = []
        return sorted(set(names) - {DEFAULT_FAMILY})

    def count(self, table: str | None) -> int | None:
        return self._family(table, create=False).property_int_value("rocksdb.estimate-num-keys")

    def is_empty(self, table: str | None) -> bool:
        if table not in (None, DEFAULT_FAMILY) and table not in self.tables():
            return True
        return next(iter(self._family(table, create=False).keys()), None) is None

    def iterate(self, table: str | None, key_range: KeyRange) -> Iterator[tuple[bytes, bytes]]:
        family = self._family(table, create=False)
        start, stop = key_range.start, key_range.stop
        read_options = self.rd.ReadOptions()
        read_options.fill_cache(False)
        read_options.set_readahead_size(SCAN_READAHEAD)
        try:
            if key_range.reverse:
                items = family.items(backwards=True, from_key=stop, read_opt=read_options)
                for key, value in items:
                    if stop is not None and key >= stop:
                        continue
                    if start is not None and key < start:
                        break
                    yield key, value
            else:
                if stop is not None:
                    read_options.set_iterate_upper_bound(stop)
                items = family.items(from_key=start, read_opt=read_options)
                yield from items
        except Exception as exc:  # noqa: BLE001
            raise _error(exc, self.path, write=False) from None
        finally:
            # The iterator pins blocks and memtables until it is freed.
            items = None

    def commit(self, table: str | None, pairs: Sequence[tuple[bytes, bytes]]) -> None:
        family = self._family(table, create=True)
        try:
            batch = self.rd.WriteBatch(raw_mode=True)
            if family is not self.db:
                batch.set_default_column_family(self.db.get_column_family_handle(table))
            for key, value in pairs:
                batch.put(key, value)
            self.db.write(batch, self.write_options)
        except Exception as exc:  # noqa: BLE001
            raise _error(exc, self.path, write=True) from None

    def clear(self, table: str | None) -> None:
        if table not in (None, DEFAULT_FAMILY):
            if table in self.tables():
                self.families.pop(table, None)
                self.db.drop_column_family(table)
            return
        last = next(iter(self.db.keys(backwards=True)), None)
        if last is not None:
            self.db.delete_range(b"", last, self.write_options)
            self.db.delete(last, self.write_options)

    def flush(self) -> None:
        for family in [self.db, *self.families.values()]:
            family.flush(True)

    def close(self) -> None:
        db = getattr(self, "db", None)
        if db is None:
            return
        # A column family handle keeps the whole store (and its lock) open.
        self.families.clear()
        self.db = None
        db.close()


class RocksDBBackend(OrderedKVBackend):
    """A RocksDB store as a ``(key, value)`` table per column family."""

    name = "rocksdb"
    label = "RocksDB"
    extra = "rocksdb"

    def __init__(self, url, *, budget: Budget | None = None) -> None:
        _rocksdict()
        super().__init__(url, budget=budget)

    def _looks_like_store(self, path: str) -> bool:
        return os.path.isfile(os.path.join(path, "CURRENT"))

    def _open(self, path: str, *, write: bool, create: bool, bulk: bool = False) -> Store:
        return RocksDBStore(path, write=write, create=create, bulk=bulk, budget=self.budget)
