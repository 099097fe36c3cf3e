"""Django: insert N generated ``events`` model instances, on SQLite, PostgreSQL and MariaDB (one
case each: ``django-bulk-create``, ``django-bulk-create-postgres``, ``django-bulk-create-mysql``).

Each run creates an empty table ``django_bulk_<N>`` (auto-increment id, the other ``events``
columns; in a fresh SQLite file, the run's output, or on the server) and inserts rows 1..N of the
protocol as new instances. The harness then checks the table's aggregates against the rows
computed here, and drops the server table.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from cases.base import Case, Contestant, Dataset
from cases.django_iterate import load_fact
from cases.server_export import MYSQL_URL, POSTGRES_URL, mysql_connect, pg_connect
from checksum import Verification

CONTESTANTS_DIR = Path(__file__).resolve().parent.parent / "contestants"
sys.path.insert(0, str(CONTESTANTS_DIR))
from django_common import BULK_TABLE_PREFIX, SQLITE_TARGET  # noqa: E402 (a contestants' module)

# The aggregates a written table must match; flag and amount as numbers on every database.
AGGREGATES = (
    "SELECT COUNT(*), SUM(user_id), SUM(LENGTH(payload)), SUM(CASE WHEN flag THEN 1 ELSE 0 END), "
    "COUNT(amount), SUM(amount), SUM(CASE WHEN kind = 'buy' THEN 1 ELSE 0 END) FROM {table}"
)
# SUM(amount) is compared rounded: databases add the floats in different orders.
AMOUNT_DIGITS = 1


def _checksum(count, users, payload, flags, amounts, amount_sum, buys) -> str:
    amount_sum = round(float(amount_sum or 0), AMOUNT_DIGITS)
    return f"{int(users or 0)}:{int(payload or 0)}:{int(flags or 0)}:{int(amounts)}:" \
        f"{amount_sum}:{int(buys or 0)}"


def reference(rows: int) -> Verification:
    """The aggregates of rows 1..rows as ``django_common.generated_events`` makes them."""
    users = payload = flags = amounts = buys = 0
    amount_sum = 0.0
    for g in range(1, rows + 1):
        users += (g * 7919) % 100_000
        payload += 32 * (1 + g % 6)
        flags += g % 3 == 0
        if g % 10:
            amounts += 1
            amount_sum += (g % 1000) / 7.0
        buys += g % 4 == 2
    return Verification(rows=rows, checksum=_checksum(rows, users, payload, flags, amounts,
                                                      amount_sum, buys))


def _verified(row: tuple) -> Verification:
    return Verification(rows=int(row[0]), checksum=_checksum(*row))


def _prepare(target: str, server: str) -> Callable[[int], Dataset]:
    def prepare(rows: int) -> Dataset:
        facts = {"target": server, **load_fact()}
        return Dataset(rows=rows, source=target, table=f"{BULK_TABLE_PREFIX}{rows}",
                       reference=reference(rows), facts=facts)

    return prepare


def sqlite_verify(output: Path, dataset: Dataset) -> Verification:
    with closing(sqlite3.connect(f"file:{output}?mode=ro", uri=True)) as connection:
        return _verified(connection.execute(AGGREGATES.format(table=dataset.table)).fetchone())


def pg_verify(output: Path, dataset: Dataset) -> Verification:
    table = json.loads(output.read_text())["table"]
    with pg_connect() as connection:
        row = connection.execute(AGGREGATES.format(table=table)).fetchone()
        connection.execute(f"DROP TABLE {table}")
    return _verified(row)


def mysql_verify(output: Path, dataset: Dataset) -> Verification:
    table = json.loads(output.read_text())["table"]
    connection = mysql_connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute(AGGREGATES.format(table=table))
            row = cursor.fetchone()
            cursor.execute(f"DROP TABLE {table}")
    finally:
        connection.close()
    return _verified(row)


CONTESTANTS = (
    Contestant("django", "`bulk_create(list, batch_size=2000)`", script="django_bulk_django.py"),
    Contestant("membound", "**membound.django.bulk_create** (generator)", role="membound",
               script="django_bulk_membound.py"),
)


def _case(name: str, database: str, target: str, verify, suffix: str) -> Case:
    return Case(
        name=name,
        title=f"Django: bulk-create generated `events` instances ({database})",
        description=(
            f"N new `events` model instances (no id: the database assigns it) inserted into an "
            f"empty {database} table: Django's `bulk_create(objs, batch_size=2000)` on a list "
            "built beforehand, and membound's `bulk_create(Event, generator, max_memory=...)` "
            "on a generator of the same instances. **work** is the insert alone for Django (the "
            "list is built before it) and generating plus inserting for membound; time, CPU and "
            "peak RSS cover the whole process. The table's count and aggregates are checked "
            "after each run."
        ),
        contestants=CONTESTANTS,
        packages=("membound", "django", "psycopg", "mysqlclient"),
        prepare=_prepare(target, database),
        verify=verify,
        output_suffix=suffix,
        default_rows=(1_000_000,),
    )


DJANGO_BULK_CREATE = _case("django-bulk-create", "SQLite", SQLITE_TARGET, sqlite_verify, ".sqlite")
DJANGO_BULK_CREATE_POSTGRES = _case(
    "django-bulk-create-postgres", "PostgreSQL", POSTGRES_URL, pg_verify, ".json")
DJANGO_BULK_CREATE_MYSQL = _case(
    "django-bulk-create-mysql", "MariaDB", MYSQL_URL, mysql_verify, ".json")
