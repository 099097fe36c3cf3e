"""One way of fetching page 1 and page 10,000 of ``events`` (100 rows, ``(ts, id)`` order) on one
database: membound's ``Connection.page`` (keyset or OFFSET), or plain driver SQL.

    python bench/contestants/paging_run.py SOURCE OUT.json --table events --db sqlite \\
        --method membound-keyset

``SOURCE`` is the SQLite file, or the server's URL (``postgresql://...``, ``mysql://...``).
Methods:

- ``membound-keyset``: ``db.page(table, key=("ts", "id"), size=100)`` for page 1, and
  ``after=token`` for page 10,000. The token is made once, untimed, by walking the table with
  membound's own pages (99 pages of 10,000 rows, then one of 9,900: a token does not depend on
  the page size), so it points after row 999,900. Its page 10,000 is also compared, row for
  row, with the driver's ``LIMIT 100 OFFSET 999900`` page.
- ``membound-offset``: ``db.page(..., offset=0)`` and ``offset=999_900`` (its
  ``OffsetPagingWarning`` silenced).
- ``sql-offset``: the driver, ``SELECT * FROM t ORDER BY ts, id LIMIT 100 OFFSET n``, fetchall.
- ``sql-keyset``: the driver, a hand-written keyset query after the key of row 999,900 (read
  once, untimed): ``(ts, id) > (?, ?)`` on SQLite and PostgreSQL, the expanded
  ``ts >= x AND (ts > x OR (ts = x AND id > y))`` on MariaDB, whose optimizer makes no index
  range of a row comparison.

Drivers: sqlite3, psycopg (autocommit; a plain client-side cursor), PyMySQL (autocommit; its
default buffered cursor). membound opens its own connection from the URL.

Timing: one connection for the whole process; ``WARM_UP`` untimed fetch of each page, then
``ROUNDS`` rounds of page 1 then page 10,000 (at least ``MIN_ROUNDS``, fewer once
``TIME_CAP_SECONDS`` have gone by), each fetch timed alone (the query, the rows into
Python, the cursor closed) with ``perf_counter``; the medians go to the timing file, the ids of
both pages to OUT for the harness to check.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
import pymysql

from membound import Connection, OffsetPagingWarning, connect

PAGE_ROWS = 100
DEEP_OFFSET = 999_900  # page 10,000 starts after this many rows
KEY = ("ts", "id")
WARM_UP = 1
ROUNDS = 9
# A deep OFFSET page on MariaDB takes seconds: past this much timing, stop after MIN_ROUNDS.
MIN_ROUNDS = 3
TIME_CAP_SECONDS = 20.0
# Rows per page while walking to page 10,000 to make its token: big pages, few round trips.
WALK_PAGE_ROWS = 10_000


def connect_driver(database: str, source: str) -> Any:
    if database == "sqlite":
        import sqlite3

        return sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    if database == "postgresql":
        return psycopg.connect(source, autocommit=True)
    parts = urlsplit(source)
    return pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        database=parts.path.lstrip("/"),
        autocommit=True,
    )


def driver_fetch(conn: Any, sql: str, params: tuple = ()) -> list[tuple]:
    cursor = conn.cursor()
    try:
        cursor.execute(sql, params)
        return [tuple(row) for row in cursor.fetchall()]
    finally:
        cursor.close()


def offset_sql(table: str, offset: int) -> str:
    return f"SELECT * FROM {table} ORDER BY ts, id LIMIT {PAGE_ROWS} OFFSET {offset}"


def keyset_sql(database: str, table: str) -> str:
    if database == "mariadb":
        return (
            f"SELECT * FROM {table} WHERE ts >= %s AND (ts > %s OR (ts = %s AND id > %s)) "
            f"ORDER BY ts, id LIMIT {PAGE_ROWS}"
        )
    ph = "?" if database == "sqlite" else "%s"
    return f"SELECT * FROM {table} WHERE (ts, id) > ({ph}, {ph}) ORDER BY ts, id LIMIT {PAGE_ROWS}"


def membound_url(database: str, source: str) -> str:
    return f"sqlite:///{Path(source).resolve()}" if database == "sqlite" else source


def token_for(db: Connection, table: str, offset: int) -> str:
    """The token after row ``offset``, by walking membound's own pages (untimed)."""
    token = None
    walked = 0
    while walked < offset:
        size = min(WALK_PAGE_ROWS, offset - walked)
        page = db.page(table, key=KEY, size=size, after=token)
        walked += len(page.rows)
        token = page.next_token
        assert token is not None and len(page.rows) == size, "the table ended early"
    assert token is not None
    return token


def plan(
    database: str, method: str, source: str, table: str
) -> tuple[Callable[[], list], Callable[[], list], dict[str, Any], Callable[[], None]]:
    """(fetch page 1, fetch page 10,000, facts, close) for one method."""
    facts: dict[str, Any] = {}
    if method.startswith("membound"):
        db = connect(membound_url(database, source))
        if method == "membound-keyset":
            token = token_for(db, table, DEEP_OFFSET)
            facts["token_chars"] = len(token)

            def first() -> list:
                return db.page(table, key=KEY, size=PAGE_ROWS).rows

            def deep() -> list:
                return db.page(table, key=KEY, size=PAGE_ROWS, after=token).rows

            # Row for row, the deep keyset page must be the OFFSET page.
            check = connect_driver(database, source)
            try:
                by_offset = driver_fetch(check, offset_sql(table, DEEP_OFFSET))
            finally:
                check.close()
            facts["same_as_offset"] = [tuple(r) for r in deep()] == by_offset
        else:
            warnings.simplefilter("ignore", OffsetPagingWarning)

            def first() -> list:
                return db.page(table, key=KEY, size=PAGE_ROWS, offset=0).rows

            def deep() -> list:
                return db.page(table, key=KEY, size=PAGE_ROWS, offset=DEEP_OFFSET).rows

        return first, deep, facts, db.close
    conn = connect_driver(database, source)
    if method == "sql-offset":

        def first() -> list:
            return driver_fetch(conn, offset_sql(table, 0))

        def deep() -> list:
            return driver_fetch(conn, offset_sql(table, DEEP_OFFSET))

    else:
        sql = keyset_sql(database, table)
        ((ts, last_id),) = driver_fetch(
            conn, f"SELECT ts, id FROM {table} ORDER BY ts, id LIMIT 1 OFFSET {DEEP_OFFSET - 1}"
        )
        params = (ts, ts, ts, last_id) if database == "mariadb" else (ts, last_id)

        def first() -> list:
            return driver_fetch(conn, f"SELECT * FROM {table} ORDER BY ts, id LIMIT {PAGE_ROWS}")

        def deep() -> list:
            return driver_fetch(conn, sql, params)

    return first, deep, facts, conn.close


def timed(fetch: Callable[[], list]) -> tuple[float, list]:
    started = time.perf_counter()
    rows = fetch()
    return (time.perf_counter() - started) * 1000, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source")
    parser.add_argument("output")
    parser.add_argument("--table", default="events")
    parser.add_argument("--db", choices=["sqlite", "postgresql", "mariadb"], required=True)
    parser.add_argument(
        "--method",
        required=True,
        choices=["membound-keyset", "membound-offset", "sql-offset", "sql-keyset"],
    )
    parser.add_argument("--budget", default="64MB", help="ignored: membound's default budget")
    parser.add_argument("--timing")
    parser.add_argument("--imports-only", action="store_true")
    args = parser.parse_args()
    if args.imports_only:
        return
    started = time.perf_counter()
    first, deep, facts, close = plan(args.db, args.method, args.source, args.table)
    try:
        for _ in range(WARM_UP):
            first()
            deep()
        first_ms: list[float] = []
        deep_ms: list[float] = []
        timing_started = time.perf_counter()
        for round_number in range(ROUNDS):
            if (
                round_number >= MIN_ROUNDS
                and time.perf_counter() - timing_started > TIME_CAP_SECONDS
            ):
                break
            ms, first_rows = timed(first)
            first_ms.append(ms)
            ms, deep_rows = timed(deep)
            deep_ms.append(ms)
    finally:
        close()
    ids = {"first_ids": [row[0] for row in first_rows], "deep_ids": [row[0] for row in deep_rows]}
    Path(args.output).write_text(json.dumps({**ids, **facts}))
    if args.timing:
        details = {
            "first_ms": statistics.median(first_ms),
            "deep_ms": statistics.median(deep_ms),
            "first_samples_ms": first_ms,
            "deep_samples_ms": deep_ms,
            **facts,
        }
        Path(args.timing).write_text(
            json.dumps(
                {"work_seconds": time.perf_counter() - started, "details": details}, default=str
            )
        )


if __name__ == "__main__":
    main()
