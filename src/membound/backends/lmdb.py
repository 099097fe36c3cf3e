"""LMDB through py-lmdb: ``lmdb:///relative/dir``, ``lmdb:////absolute/dir`` (or a single file).

``table`` names a sub-database (up to :data:`MAX_DBS` per store); without one, the main
database is read and written. When named sub-databases exist, the main database holds one
record per name: a read of the main database skips them. Key ranges, read views and write
modes are shared with the other ordered stores (:mod:`membound.backends.kv_ordered`).

What this module does about LMDB's pitfalls:

- **Long read transactions** keep a writer from reusing pages, so the file grows while a scan
  runs: a scan closes its read transaction every few MB and resumes after the last key.
- **The map counts in RSS.** Every page a read touches is mapped into the process. The pages
  are clean (the OS may drop them) but count as resident memory, so a scan of a 200 MB store
  would show 200 MB more RSS whatever its batches hold. When a read view closes and after each
  commit, the pages of ``data.mdb`` are handed back with ``madvise(MADV_DONTNEED)`` (the data
  stays in the OS page cache; the next touch maps it again). Safe because the map is read-only
  (``writemap`` is never used), so nothing unwritten lives in it.
- **Map size.** The map is reserved at twice the file's size and at least
  :data:`MIN_MAP_SIZE` (address space only: the file grows as data is written). A commit that
  fills it (``MapFullError``) is aborted, the map doubled and the commit retried. The URL option
  ``map_size=`` sets the starting size; a map grown by another process is taken up on
  ``MapResizedError``.
- **Dirty pages** stay in the heap until commit: commits are sized in bytes.
- **One open per process** (py-lmdb >= 2.0 raises on a second open of the same files): backends
  in one process share the environment (a copy between two sub-databases of one store works).
  It is opened read-write whenever the directory is writable, so a reader and a writer can
  share it, and read-only otherwise; reads never create anything. The lock file stays in use:
  without it a writer in another process could reuse pages a read still uses.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from membound.backends.kv_ordered import KeyRange, OrderedKVBackend, Store, release_mapped_pages
from membound.budget import Budget, parse_size
from membound.errors import (
    CorruptFileError,
    MissingDriverError,
    NotFoundError,
    SchemaError,
    SourceError,
    TargetError,
)

__all__ = ["LMDBBackend"]

# Address space reserved for the map at open, at least; on 64-bit systems it costs nothing until
# pages are written. Big enough that growth (which needs every transaction of the process closed)
# is rare, small enough for any 64-bit address-space limit.
MIN_MAP_SIZE = 1 << 30
# The map is reserved at this multiple of the file's size, and grown by it when full.
MAP_GROWTH = 2
# Named sub-databases one store may hold (LMDB needs the number when the environment opens).
MAX_DBS = 256
# Keys deleted per transaction when a namespace is emptied key by key.
DELETE_CHUNK = 10_000
# Size of a sub-database's record in the main database (LMDB's MDB_db on 64-bit systems).
SUBDB_RECORD_SIZE = 48


def _lmdb() -> Any:
    try:
        import lmdb
    except ImportError:
        raise MissingDriverError("lmdb", "lmdb") from None
    return lmdb


class _SharedEnv:
    """One LMDB environment, shared by every backend of the process that opens its files."""

    def __init__(self, env: Any, identity: tuple[int, int], data_file: str) -> None:
        self.env = env
        self.identity = identity
        self.data_file = data_file
        self.readonly = bool(env.flags()["readonly"])
        self.refs = 0
        self.dbs: dict[str, Any] = {}
        self.main: Any = None
        # Main-database keys found to be (or not to be) sub-database records.
        self.subdb_keys: dict[bytes, bool] = {}


_ENVS: dict[tuple[int, int], _SharedEnv] = {}
_ENVS_LOCK = threading.Lock()


def _identity(data_file: str) -> tuple[int, int] | None:
    try:
        st = os.stat(data_file)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class LMDBStore(Store):
    """One open LMDB environment (a directory with data.mdb and lock.mdb, or one file)."""

    def __init__(self, path: str, *, write: bool, create: bool, map_size: int | None) -> None:
        lmdb = _lmdb()
        self.lmdb = lmdb
        self.path = path
        subdir = not os.path.isfile(path)
        data_file = os.path.join(path, "data.mdb") if subdir else path
        folder = path if subdir else os.path.dirname(os.path.abspath(path))
        with _ENVS_LOCK:
            identity = _identity(data_file)
            shared = _ENVS.get(identity) if identity else None
            if shared is None:
                try:
                    size = os.path.getsize(data_file)
                except OSError:
                    size = 0
                readonly = not create and not os.access(folder, os.W_OK)
                try:
                    env = lmdb.open(
                        path,
                        map_size=map_size or max(MIN_MAP_SIZE, size * MAP_GROWTH),
                        subdir=subdir,
                        readonly=readonly,
                        create=create,
                        max_dbs=MAX_DBS,
                        max_spare_txns=0,
                    )
                except lmdb.InvalidError as exc:
                    raise CorruptFileError(
                        f"{path!r} is not an LMDB store, or is damaged ({exc})"
                    ) from None
                except (lmdb.CorruptedError, lmdb.PanicError, lmdb.VersionMismatchError) as exc:
                    raise CorruptFileError(f"LMDB store {path!r} is damaged ({exc})") from None
                except lmdb.Error as exc:
                    error = TargetError if write else SourceError
                    raise error(f"cannot open LMDB store {path!r}: {exc}") from None
                identity = _identity(data_file)
                assert identity is not None
                shared = _SharedEnv(env, identity, data_file)
                _ENVS[identity] = shared
            if write and shared.readonly:
                raise TargetError(
                    f"LMDB store {path!r} is open read-only (its directory is not writable); "
                    "it cannot be written"
                )
            shared.refs += 1
        self.shared = shared
        self.env = shared.env
        self.max_key_size = self.env.max_key_size()

    # -- namespaces ---------------------------------------------------------------------------

    def _db(self, table: str | None, *, create: bool) -> Any:
        if table is None:
            return None
        db = self.shared.dbs.get(table)
        if db is not None:
            return db
        lmdb = self.lmdb
        try:
            db = self.env.open_db(table.encode(), create=create and not self.shared.readonly)
        except lmdb.NotFoundError:
            names = ", ".join(self.tables()) or "none"
            raise NotFoundError(
                f"no sub-database {table!r} in LMDB store {self.path!r} (sub-databases: "
                f"{names}); leave out table= to read the main database"
            ) from None
        except lmdb.IncompatibleError:
            raise NotFoundError(
                f"{table!r} is a key of the main database of LMDB store {self.path!r}, not a "
                "sub-database"
            ) from None
        except lmdb.DbsFullError:
            raise TargetError(
                f"LMDB store {self.path!r} already has {MAX_DBS} sub-databases, the most "
                "membound opens; write into an existing one"
            ) from None
        self.shared.dbs[table] = db
        return db

    def tables(self) -> list[str]:
        # Env.dbs() walks the whole main database: call it only where that is fine.
        return sorted(name.decode(errors="surrogateescape") for name in self.env.dbs())

    def _is_subdb_record(self, key: bytes, value: bytes, txn: Any) -> bool:
        """Whether a main-database pair is the record of a named sub-database (not data).

        Only values of a sub-database record's size are checked, by opening the name as a
        sub-database (a lookup); Env.dbs() would walk the whole main database instead.
        """
        if len(value) != SUBDB_RECORD_SIZE:
            return False
        known = self.shared.subdb_keys.get(key)
        if known is None:
            try:
                self.env.open_db(key, txn=txn, create=False)
                known = True
            except (self.lmdb.IncompatibleError, self.lmdb.NotFoundError,
                    self.lmdb.BadValsizeError):
                known = False
            self.shared.subdb_keys[key] = known
        return known

    def _entries(self, db: Any) -> int:
        with self._begin(db=db) as txn:
            return txn.stat(db)["entries"]

    def count(self, table: str | None) -> int | None:
        db = self._db(table, create=False)
        return self._entries(self._main() if db is None else db)

    def _main(self) -> Any:
        if self.shared.main is None:
            self.shared.main = self.env.open_db(None)
        return self.shared.main

    def is_empty(self, table: str | None) -> bool:
        if table is not None:
            try:
                db = self._db(table, create=False)
            except NotFoundError:
                return True
            return self._entries(db) == 0
        entries = self._entries(self._main())
        # Past MAX_DBS entries some are data; below, check whether all are sub-database records.
        return entries == 0 or (entries <= MAX_DBS and entries == len(self.env.dbs()))

    # -- reading ------------------------------------------------------------------------------

    def iterate(self, table: str | None, key_range: KeyRange) -> Iterator[tuple[bytes, bytes]]:
        lmdb = self.lmdb
        db = self._db(table, create=False)
        main = table is None
        start, stop = key_range.start, key_range.stop
        try:
            txn = self._begin(db=db)
        except lmdb.Error as exc:
            raise SourceError(f"cannot read LMDB store {self.path!r}: {exc}") from None
        try:
            cursor = txn.cursor()
            if key_range.reverse:
                if stop is None:
                    positioned = cursor.last()
                elif cursor.set_range(stop):
                    positioned = cursor.prev()
                else:
                    positioned = cursor.last()
                if positioned:
                    for key, value in cursor.iterprev():
                        if start is not None and key < start:
                            break
                        if not (main and self._is_subdb_record(key, value, txn)):
                            yield key, value
            else:
                positioned = cursor.set_range(start) if start is not None else cursor.first()
                if positioned:
                    for key, value in cursor.iternext():
                        if stop is not None and key >= stop:
                            break
                        if not (main and len(value) == SUBDB_RECORD_SIZE
                                and self._is_subdb_record(key, value, txn)):
                            yield key, value
        except lmdb.Error as exc:
            raise CorruptFileError(
                f"reading LMDB store {self.path!r} failed ({exc}); the store may be damaged"
            ) from None
        finally:
            txn.abort()
            self.release_pages()

    def _begin(self, **kwargs: Any) -> Any:
        try:
            return self.env.begin(**kwargs)
        except self.lmdb.MapResizedError:
            # Another process grew the map: adopt its size and go on.
            self.env.set_mapsize(0)
            return self.env.begin(**kwargs)

    def release_pages(self) -> None:
        """Hand the map's resident pages back to the OS (they stay in its page cache)."""
        release_mapped_pages(self.shared.data_file)

    # -- writing ------------------------------------------------------------------------------

    def commit(self, table: str | None, pairs: Sequence[tuple[bytes, bytes]]) -> None:
        lmdb = self.lmdb
        for key, _ in pairs:
            if not key or len(key) > self.max_key_size:
                raise SchemaError(
                    f"LMDB keys are 1 to {self.max_key_size} bytes; key {key[:60]!r} is "
                    f"{len(key)} bytes"
                )
        db = self._db(table, create=True)
        while True:
            try:
                with self._begin(write=True, db=db) as txn:
                    consumed, _ = txn.cursor().putmulti(pairs)
                    if consumed != len(pairs):
                        raise TargetError(
                            f"LMDB took {consumed} of {len(pairs)} pairs in one commit; nothing "
                            "of that commit was kept"
                        )
                break
            except lmdb.MapFullError:
                self._grow()
            except lmdb.Error as exc:
                raise TargetError(f"writing to LMDB store {self.path!r} failed: {exc}") from None
        self.release_pages()

    def _grow(self) -> None:
        size = self.env.info()["map_size"] * MAP_GROWTH
        try:
            self.env.set_mapsize(size)
        except self.lmdb.Error as exc:
            raise TargetError(
                f"LMDB store {self.path!r} is full and its map could not grow to {size:,} "
                f"bytes ({exc}); a read of the same store may be open in this process"
            ) from None

    def clear(self, table: str | None) -> None:
        if table is not None:
            if table not in self.tables():
                return
            db = self._db(table, create=False)
            with self._begin(write=True) as txn:
                txn.drop(db, delete=True)
            self.shared.dbs.pop(table, None)
            return
        while True:
            with self._begin(write=True) as txn:
                cursor = txn.cursor()
                deleted = 0
                found = cursor.first()
                while found and deleted < DELETE_CHUNK:
                    if self._is_subdb_record(cursor.key(), cursor.value(), txn):
                        found = cursor.next()
                        continue
                    found = cursor.delete()
                    deleted += 1
            if deleted == 0:
                return

    def flush(self) -> None:
        self.env.sync(True)

    def close(self) -> None:
        shared = getattr(self, "shared", None)
        if shared is None:
            return
        self.shared = None  # type: ignore[assignment]
        with _ENVS_LOCK:
            shared.refs -= 1
            if shared.refs <= 0:
                _ENVS.pop(shared.identity, None)
                shared.dbs.clear()
                shared.env.close()


class LMDBBackend(OrderedKVBackend):
    """An LMDB store as a ``(key, value)`` table per sub-database; byte-sized reads and commits.

    URL options besides the shared ones: ``map_size=`` (e.g. ``4GB``), the map reserved at open.
    """

    name = "lmdb"
    label = "LMDB"
    extra = "lmdb"
    STORE_OPTIONS: ClassVar[tuple[str, ...]] = ("map_size",)

    def __init__(self, url, *, budget: Budget | None = None) -> None:
        _lmdb()
        super().__init__(url, budget=budget)
        raw = url.options.get("map_size")
        self.map_size = parse_size(raw) if raw else None

    def _looks_like_store(self, path: str) -> bool:
        return os.path.isfile(path) or os.path.isfile(os.path.join(path, "data.mdb"))

    def _open(self, path: str, *, write: bool, create: bool, bulk: bool = False) -> Store:
        return LMDBStore(path, write=write, create=create, map_size=self.map_size)
