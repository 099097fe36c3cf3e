"""Flat-cost paging: page 1 and page 10,000 of ``events`` by keyset and by OFFSET, on SQLite,
PostgreSQL and MariaDB.

Every contestant is one way of fetching a page on one database, in its own process
(``contestants/paging_run.py``): membound's ``Connection.page`` by token (keyset) and by
``offset=``, plain driver SQL with ``LIMIT 100 OFFSET 999900``, and a hand-written keyset query
with the driver (the floor). Pages are 100 rows in ``(ts, id)`` order; page 10,000 is rows
999,901 to 1,000,000. The timing is in-process (one page fetch at a time, the median of several);
the harness checks that every contestant's two pages hold the right rows (their ids, in order).

The data: the SQLite file of ``bench/data.py`` copied once to ``events-...-paging.sqlite`` with an
index on ``(ts, id)`` (the shared file stays as the other cases know it), and the same rows loaded
once into PostgreSQL and MariaDB by ``membound.copy`` as ``paging_events_<N>`` (``events_<N>``
belongs to the export cases, which build it without this index), with the protocol's column
types (``ts`` as ``timestamptz`` / ``DATETIME(6)``), a primary key on ``id`` and an index on
``(ts, id)``. Server URLs come from ``MEMBOUND_BENCH_POSTGRES_URL`` and
``MEMBOUND_BENCH_MYSQL_URL`` (defaults: the local test servers).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path

from cases.base import CONTESTANTS_DIR, Case, Contestant, Dataset, RunSpec
from checksum import Verification
from data import build_sqlite

SCRIPT = CONTESTANTS_DIR / "paging_run.py"

POSTGRES_URL = os.environ.get(
    "MEMBOUND_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("MEMBOUND_BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")

PAGE_ROWS = 100
DEEP_PAGE = 10_000  # page numbers count from 1: page 10,000 starts after row 999,900
INDEX_NAME = "events_ts_id"
# The load into a server goes through membound.copy with this budget (the run's --budget is for
# the contestants, and means nothing to them here).
LOAD_BUDGET = "64MB"

DATABASES = {
    "sqlite": "SQLite",
    "postgresql": "PostgreSQL",
    "mariadb": "MariaDB",
}
METHODS = {
    "membound-keyset": ("**membound** `page(after=token)`", "membound"),
    "sql-keyset": ("hand-written keyset SQL, driver (the floor)", "peer"),
    "membound-offset": ("**membound** `page(offset=...)`", "membound"),
    "sql-offset": ("`LIMIT 100 OFFSET n`, driver", "peer"),
}


def deep_offset(rows: int) -> int:
    return (DEEP_PAGE - 1) * PAGE_ROWS


def server_table(rows: int) -> str:
    return f"paging_events_{rows}"


def _contestant(database: str, method: str) -> Contestant:
    label, role = METHODS[method]
    name = f"{database}:{method}"

    def command(spec: RunSpec) -> list[str]:
        source = {
            "sqlite": spec.dataset.source,
            "postgresql": POSTGRES_URL,
            "mariadb": MYSQL_URL,
        }[database]
        table = "events" if database == "sqlite" else server_table(spec.dataset.rows)
        return [
            sys.executable,
            str(SCRIPT),
            source,
            str(spec.output),
            "--table",
            table,
            "--db",
            database,
            "--method",
            method,
            "--timing",
            str(spec.timing_path),
        ]

    return Contestant(
        name=name,
        label=f"{DATABASES[database]}: {label}",
        role=role,  # type: ignore[arg-type]
        command=command,
        baseline_command=(
            sys.executable,
            str(SCRIPT),
            "-",
            "-",
            "--db",
            database,
            "--method",
            method,
            "--imports-only",
        ),
    )


# -- the data ------------------------------------------------------------------------------------


def paging_sqlite(rows: int) -> Path:
    """The bench SQLite file copied once, with an index on (ts, id)."""
    shared = build_sqlite(rows)
    path = shared.with_name(shared.stem + "-paging.sqlite")
    if path.exists():
        return path
    partial = path.with_name(path.name + f".partial-{os.getpid()}")
    shutil.copyfile(shared, partial)
    connection = sqlite3.connect(partial)
    try:
        connection.execute(f"CREATE INDEX {INDEX_NAME} ON events (ts, id)")
        connection.execute("ANALYZE")
        connection.commit()
    finally:
        connection.close()
    partial.rename(path)
    return path


def _load_postgres(sqlite_file: Path, rows: int) -> str:
    import psycopg

    import membound

    table = server_table(rows)
    conninfo = POSTGRES_URL
    with psycopg.connect(conninfo, autocommit=True) as conn:
        found = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0]
        if found is not None:
            return f"{table} (reused)"
        loading = f"{table}_loading"
        conn.execute(f"DROP TABLE IF EXISTS {loading}")
        print(f"  loading {rows:,} rows into PostgreSQL {table} ...", file=sys.stderr)
        membound.copy(
            f"sqlite:///{sqlite_file}",
            POSTGRES_URL,
            source_table="events",
            target_table=loading,
            max_memory=LOAD_BUDGET,
        )
        # The protocol's types and constraints; the copy made ts text and every column nullable.
        for statement in (
            f"ALTER TABLE {loading} ALTER COLUMN ts TYPE timestamptz USING ts::timestamptz",
            f"ALTER TABLE {loading} ALTER COLUMN user_id SET NOT NULL, "
            "ALTER COLUMN ts SET NOT NULL, ALTER COLUMN kind SET NOT NULL",
            f"ALTER TABLE {loading} ADD CONSTRAINT {table}_pkey PRIMARY KEY (id)",
            f"CREATE INDEX {table}_ts_id ON {loading} (ts, id)",
            f"ALTER TABLE {loading} RENAME TO {table}",
            f"VACUUM ANALYZE {table}",
        ):
            conn.execute(statement)
    return f"{table} (loaded)"


def _load_mariadb(sqlite_file: Path, rows: int) -> str:
    import pymysql

    import membound
    from membound.urls import parse_url

    table = server_table(rows)
    url = parse_url(MYSQL_URL)
    conn = pymysql.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
        database=url.database,
        autocommit=True,
    )
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = "
                "DATABASE() AND TABLE_NAME = %s",
                (table,),
            )
            if cur.fetchone()[0]:
                return f"{table} (reused)"
            loading = f"{table}_loading"
            cur.execute(f"DROP TABLE IF EXISTS {loading}")
            print(f"  loading {rows:,} rows into MariaDB {table} ...", file=sys.stderr)
            # ts without its "+00:00", which DATETIME(6) does not take (every ts is UTC).
            membound.copy(
                f"sqlite:///{sqlite_file}",
                MYSQL_URL,
                query="SELECT id, user_id, substr(ts, 1, 19) AS ts, kind, amount, payload, flag "
                "FROM events",
                target_table=loading,
                max_memory=LOAD_BUDGET,
            )
            cur.execute(
                f"ALTER TABLE {loading} MODIFY id BIGINT NOT NULL, MODIFY user_id INT NOT NULL, "
                "MODIFY ts DATETIME(6) NOT NULL, MODIFY kind VARCHAR(16) NOT NULL, "
                f"ADD PRIMARY KEY (id), ADD INDEX {INDEX_NAME} (ts, id)"
            )
            cur.execute(f"ANALYZE TABLE {loading}")
            cur.fetchall()
            cur.execute(f"RENAME TABLE {loading} TO {table}")
    finally:
        conn.close()
    return f"{table} (loaded)"


def _reference(rows: int) -> Verification:
    """The ids of page 1 and page 10,000 in (ts, id) order: ts grows with id in `events`."""
    offset = deep_offset(rows)
    return Verification(
        rows=2 * PAGE_ROWS,
        checksum=ids_checksum(
            list(range(1, PAGE_ROWS + 1)), list(range(offset + 1, offset + PAGE_ROWS + 1))
        ),
    )


def ids_checksum(first: list[int], deep: list[int]) -> str:
    return hashlib.sha256(json.dumps([first, deep]).encode()).hexdigest()[:16]


def prepare(rows: int) -> Dataset:
    if rows < DEEP_PAGE * PAGE_ROWS:
        raise SystemExit(f"page {DEEP_PAGE:,} needs at least {DEEP_PAGE * PAGE_ROWS:,} rows")
    path = paging_sqlite(rows)
    loaded = {
        "PostgreSQL": _load_postgres(path, rows),
        "MariaDB": _load_mariadb(path, rows),
    }
    return Dataset(
        rows=rows,
        source=str(path),
        table="events",
        reference=_reference(rows),
        facts={
            "SQLite file": f"{path.stat().st_size / 1e6:,.0f} MB with the (ts, id) index",
            **{name: f"table {where}" for name, where in loaded.items()},
        },
    )


def verify(output: Path, dataset: Dataset) -> Verification:
    found = json.loads(output.read_text())
    problems = (
        [] if found.get("same_as_offset", True) else ["the deep page differs from the OFFSET page"]
    )
    return Verification(
        rows=len(found["first_ids"]) + len(found["deep_ids"]),
        checksum=ids_checksum(found["first_ids"], found["deep_ids"]),
        problems=problems,
    )


# -- the report ----------------------------------------------------------------------------------


def _figures(size: dict, name: str) -> dict[str, float | None]:
    from report import _median

    runs = [r for r in size["runs"] if r["contestant"] == name and r["status"] == "ok"]
    details = [r["details"] for r in runs if r["details"]]
    return {page: _median([d[f"{page}_ms"] for d in details]) for page in ("first", "deep")}


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def render_body(results: dict) -> list[str]:
    from report import _data_cell, _problems, summarise

    lines: list[str] = []
    for size in results["sizes"]:
        summaries = {s.name: s for s in summarise(results, size)}
        figures = {name: _figures(size, name) for name in summaries}
        facts = "; ".join(f"{key} {value}" for key, value in size["facts"].items())
        lines += [
            f"### `events`, {size['rows']:,} rows ({facts})",
            "",
            "| database | how | page 1 (ms) | page 10,000 (ms) | deep / first | data |",
            "|---|---|--:|--:|--:|:-:|",
        ]
        for name, summary in summaries.items():
            database, method = name.split(":")
            first, deep = figures[name]["first"], figures[name]["deep"]
            ratio = f"{deep / first:,.2f}" if first and deep else "—"
            lines.append(
                f"| {DATABASES[database]} | {METHODS[method][0]} | {_ms(first)} | {_ms(deep)} "
                f"| {ratio} | {_data_cell(summary)} |"
            )
        lines.append("")
        ratio_lines = []
        for database, title in DATABASES.items():
            ours = figures.get(f"{database}:membound-keyset")
            floor = figures.get(f"{database}:sql-keyset")
            offset = figures.get(f"{database}:sql-offset")
            if not ours or not ours["deep"] or not ours["first"]:
                continue
            cells = [title, f"{ours['deep'] / ours['first']:.2f}"]
            for other in (floor, offset):
                cells.append(
                    f"{ours['deep'] / other['deep']:.2f}" if other and other["deep"] else "—"
                )
            cells.append(
                f"{ours['first'] / floor['first']:.2f}" if floor and floor["first"] else "—"
            )
            ratio_lines.append("| " + " | ".join(cells) + " |")
        if ratio_lines:
            lines += [
                "**membound's keyset page** (ratios of medians; the target is deep / first ≤ 1.5)",
                "",
                "| database | deep / first | deep: membound / hand-written keyset | deep: "
                "membound / OFFSET | first: membound / hand-written keyset |",
                "|---|--:|--:|--:|--:|",
                *ratio_lines,
                "",
            ]
        problems = _problems(list(summaries.values()))
        if problems:
            lines += ["Failures and mismatches:", "", *problems, ""]
    return lines


PAGING = Case(
    name="paging",
    title="Paging: page 1 and page 10,000, keyset and OFFSET (`events`)",
    description=(
        "Time to fetch one page of 100 rows of `events` in `(ts, id)` order: page 1, and page "
        "10,000 (rows 999,901 to 1,000,000), on SQLite, PostgreSQL and MariaDB. "
        '**membound** `db.page("events", key=("ts", "id"), size=100, after=token)` '
        "(the token of page 10,000 comes from walking the table once, untimed) and "
        "`db.page(..., offset=999_900)`; beside plain driver SQL `SELECT * FROM events ORDER BY "
        "ts, id LIMIT 100 OFFSET 999900`, and a hand-written keyset query with the driver, "
        "the floor (`WHERE (ts, id) > (?, ?)` on SQLite and PostgreSQL, "
        "`WHERE ts >= %s AND (ts > %s OR (ts = %s AND id > %s))` on MariaDB). Every table has "
        "an index on `(ts, id)` and a primary key on `id` (SQLite: `INTEGER PRIMARY KEY`); "
        "PostgreSQL and MariaDB run on this machine (loopback), with drivers psycopg "
        "(membound: a server-side cursor) and PyMySQL (membound: an unbuffered cursor). Each "
        "contestant is its own process (`bench/contestants/paging_run.py`) holding one "
        "connection: one untimed fetch of each page, then rounds of page 1 then page 10,000 "
        "(9 rounds, or fewer but at least 3 once 20 s have gone by: a deep OFFSET page on "
        "MariaDB takes seconds), each fetch (query, rows into Python, cursor closed) timed "
        "alone; a cell is the median over the runs of each run's median. Both pages are "
        "checked against the rows they must hold (ids in order), and membound's keyset page "
        "10,000 against the OFFSET page, row for row. The machine has 2 cores shared with other "
        "work: compare within this table only."
    ),
    contestants=tuple(
        _contestant(database, method) for database in DATABASES for method in METHODS
    ),
    packages=("membound", "psycopg", "pymysql"),
    prepare=prepare,
    verify=verify,
    output_suffix=".json",
    default_rows=(2_000_000,),
    uses_budget=False,
    render_body=render_body,
)
