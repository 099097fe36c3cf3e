"""The values the `codecs` and `cache` cases encode and store, read from the `events` SQLite file.

Both the harness (for the reference checksum) and the contestant scripts (for the values they
time) read the values through these functions, so they agree on what the values are. Standard
library only: this module is part of every contestant's import baseline.

The checksum here is of Python values, not of a table: the sequence of values, each in a
canonical form (a row as a tuple, a text as ``str``), hashed in order with SHA-256 over its
``repr``. ``repr`` of a float is exact, so a value that comes back changed in any way (a float
rounded, ``None`` turned into ``0``, text altered) changes the checksum; a tuple that comes back
as a list (msgpack, JSON) does not, once made canonical.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Sequence
from contextlib import closing
from typing import Any

TABLE = "events"
# Rows per page: how many rows one value holds in the "pages" inputs, as Cache.query stores a
# database batch and as `membound codecs` measures a value.
PAGE_ROWS = 1000

Row = tuple[Any, ...]


def read_payloads(path: str, limit: int | None = None) -> list[str]:
    """The ``payload`` column, in ``id`` order."""
    sql = f"SELECT payload FROM {TABLE} ORDER BY id"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        return [payload for (payload,) in connection.execute(sql)]


def read_rows(path: str, *, last_id: int | None = None) -> list[Row]:
    """Rows of ``events`` as tuples (``flag`` as SQLite's 0/1), in ``id`` order."""
    sql = f"SELECT * FROM {TABLE}"
    if last_id is not None:
        sql += f" WHERE id <= {int(last_id)}"
    sql += " ORDER BY id"
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        return connection.execute(sql).fetchall()


def table_rows(path: str) -> int:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        return connection.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]


def pages(items: Sequence[Any], size: int = PAGE_ROWS) -> list[list[Any]]:
    """``items`` cut into lists of ``size`` (the last one shorter)."""
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


def canonical(value: Any) -> Any:
    """A value as it is compared: bytes as text, a row (list or tuple) as a tuple."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode()
    if isinstance(value, list | tuple):
        return tuple(value)
    return value


class Checksum:
    """Counts and hashes canonical values in order: ``add(value)``, then ``count``/``hexdigest``."""

    def __init__(self) -> None:
        self.count = 0
        self._digest = hashlib.sha256()

    def add(self, value: Any) -> None:
        self._digest.update(repr(canonical(value)).encode())
        self._digest.update(b"\n")
        self.count += 1

    def add_all(self, values: Iterable[Any]) -> None:
        for value in values:
            self.add(value)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()[:16]


# -- the cache case's values --------------------------------------------------------------------

# Three kinds of cached value, each under KEYS distinct keys (cycled through by the operations):
#   row:    one events row (a tuple), the ones whose payload is one md5 (id % 6 == 0): ~100 bytes
#   page:   60 consecutive rows: ~10 kB as msgpack
#   result: 1000 consecutive rows, a query result: ~170 kB as msgpack
CACHE_KINDS: dict[str, dict[str, int]] = {
    "row": {"keys": 1000, "rows": 1},
    "page": {"keys": 1000, "rows": 60},
    "result": {"keys": 100, "rows": 1000},
}
CACHE_ROW_STEP = 6  # rows of the "row" kind are ids 6, 12, 18...: one md5 as payload
# The rows the cache case reads: ids 1..CACHE_LAST_ID.
CACHE_LAST_ID = max(
    CACHE_KINDS["row"]["keys"] * CACHE_ROW_STEP,
    *(spec["keys"] * spec["rows"] for spec in CACHE_KINDS.values()),
)


def cache_values(path: str) -> dict[str, list[Any]]:
    """The values of each kind of the cache case, by key index."""
    rows = read_rows(path, last_id=CACHE_LAST_ID)
    if len(rows) < CACHE_LAST_ID:
        raise SystemExit(f"the cache case needs at least {CACHE_LAST_ID:,} rows in {path}")
    values: dict[str, list[Any]] = {}
    for kind, spec in CACHE_KINDS.items():
        if spec["rows"] == 1:
            values[kind] = [rows[(key + 1) * CACHE_ROW_STEP - 1] for key in range(spec["keys"])]
        else:
            size = spec["rows"]
            values[kind] = [rows[key * size : (key + 1) * size] for key in range(spec["keys"])]
    return values


def cache_checksum(values: dict[str, list[Any]]) -> Checksum:
    """The checksum of the cache case's values: every row of every value, kind by kind."""
    checksum = Checksum()
    for kind in CACHE_KINDS:
        for value in values[kind]:
            if CACHE_KINDS[kind]["rows"] == 1:
                checksum.add(value)
            else:
                checksum.add_all(value)
    return checksum


# -- the codecs case's contestants --------------------------------------------------------------

# Which codecs run on which input of the codecs case: membound's codec names, and the peers (what
# a user would otherwise write; named here, defined in contestants/codec_run.py).
MEMBOUND_PAGE_CODECS = (
    "json",
    "msgpack",
    "msgpack+zlib",
    "msgpack+gzip",
    "msgpack+lz4",
    "msgpack+zstd",
    "arrow",
    "arrow+lz4",
    "arrow+zstd",
)
PEER_PAGE_CODECS = (
    "json+gzip",
    "pickle",
    "pickle+gzip",
    "msgpack+zstandard",
    "arrow-ipc-lz4",
    "arrow-ipc-zstd",
)
MEMBOUND_CODECS: dict[str, tuple[str, ...]] = {
    "cells": (
        "zlib",
        "gzip",
        "lz4",
        "zstd",
        "zstd+dict",
        "json",
        "msgpack",
        "msgpack+zlib",
        "msgpack+gzip",
        "msgpack+lz4",
        "msgpack+zstd",
    ),
    "pages": MEMBOUND_PAGE_CODECS,
    "rows": MEMBOUND_PAGE_CODECS,
}
PEER_CODECS: dict[str, tuple[str, ...]] = {
    "cells": (
        "zlib.compress",
        "gzip.compress",
        "lz4.frame",
        "zstandard",
        "json+gzip",
        "pickle",
        "pickle+gzip",
    ),
    "pages": PEER_PAGE_CODECS,
    "rows": PEER_PAGE_CODECS,
}
