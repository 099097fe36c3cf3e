"""Django: iterate every ``events`` row as a model instance, in id order, on SQLite, PostgreSQL
and MariaDB (one case each: ``django-iterate``, ``django-iterate-postgres``,
``django-iterate-mysql``).

The server tables are those of ``cases/server_export.py`` (``events_<N>``, built once by SQL and
reused while current); the rows are the SQLite file's, so one reference digest serves all three.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from cases.base import Case, Contestant, Dataset
from cases.server_export import MYSQL_URL, POSTGRES_URL, mysql_ensure_events, pg_ensure_events
from cases.server_export import table_name as server_table
from checksum import Verification
from data import build_sqlite

TABLE = "events"
# Reading the file once before the runs puts it in the page cache for every contestant.
WARM_UP_READ_BYTES = 16 * 1024 * 1024
# As contestants/django_common.Digest.order: the order-sensitive sum is kept modulo this.
ORDER_MODULUS = 1 << 61


def _reference(path: Path) -> Verification:
    """The digest every contestant must reproduce, computed from the table in id order."""
    cache = path.with_name(path.name + ".django-digest.json")
    if cache.exists():
        cached = json.loads(cache.read_text())
        return Verification(rows=cached["rows"], checksum=cached["checksum"])
    rows = ids = users = payload = order = 0
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        cursor = connection.execute(
            f"SELECT id, user_id, length(coalesce(payload, '')) FROM {TABLE} ORDER BY id")
        while batch := cursor.fetchmany(100_000):
            for row_id, user_id, length in batch:
                rows += 1
                ids += row_id
                users += user_id
                payload += length
                order = (order + row_id * rows) % ORDER_MODULUS
    checksum = f"{ids}:{users}:{payload}:{order}"
    cache.write_text(json.dumps({"rows": rows, "checksum": checksum}))
    return Verification(rows=rows, checksum=checksum)


def load_fact() -> dict[str, str]:
    """The machine's load when the data is ready: other work on a shared box shows in wall time."""
    one, five, _ = os.getloadavg()
    return {"load average (1, 5 min) before the runs": f"{one:.2f}, {five:.2f}"}


def prepare(rows: int) -> Dataset:
    path = build_sqlite(rows)
    reference = _reference(path)
    with open(path, "rb") as database:
        while database.read(WARM_UP_READ_BYTES):
            pass
    return Dataset(rows=rows, source=str(path), table=TABLE, reference=reference,
                   facts={"SQLite file": f"{path.stat().st_size / 1e6:,.0f} MB", **load_fact()})


def _server_prepare(url: str, ensure: Callable[[int], dict[str, str]]) -> Callable[[int], Dataset]:
    def prepare_server(rows: int) -> Dataset:
        facts = ensure(rows)  # builds the table unless it is there, and reads it once
        return Dataset(rows=rows, source=url, table=server_table(rows),
                       reference=_reference(build_sqlite(rows)), facts={**facts, **load_fact()})

    return prepare_server


def verify(output: Path, dataset: Dataset) -> Verification:
    result = json.loads(output.read_text())
    return Verification(rows=result["rows"], checksum=result["checksum"])


def _contestants() -> tuple[Contestant, ...]:
    contestants = [
        Contestant("plain", "plain loop over the QuerySet", script="django_plain.py"),
        Contestant("iterator", ".iterator(chunk_size=2000)", script="django_iterator.py"),
    ]
    try:
        import chunkator  # noqa: F401
    except ImportError:
        pass
    else:
        contestants.append(
            Contestant("chunkator", "django-chunkator (2000)", script="django_chunkator.py"))
    contestants.append(
        Contestant("membound", "**membound.django.chunked**", role="membound",
                   script="django_membound.py"))
    return tuple(contestants)


def _case(name: str, database: str, prepare_data: Callable[[int], Dataset]) -> Case:
    return Case(
        name=name,
        title=f"Django: iterate `events` as model instances ({database})",
        description=(
            f"Every `events` row as a Django model instance, in id order, on {database}: a "
            "plain loop (the QuerySet's result cache), `.iterator(chunk_size=2000)`, "
            "django-chunkator and membound's `chunked()` with the budget shown. Each contestant "
            "reports a digest of the rows it read (count, sums, an order-sensitive sum), which "
            "must match the table's. CPU is user + system time of the contestant's process "
            "only (the database server's work is not in it)."
        ),
        contestants=_contestants(),
        packages=("membound", "django", "django-chunkator", "psycopg", "mysqlclient"),
        prepare=prepare_data,
        verify=verify,
        output_suffix=".json",
    )


DJANGO_ITERATE = _case("django-iterate", "SQLite", prepare)
DJANGO_ITERATE_POSTGRES = _case(
    "django-iterate-postgres", "PostgreSQL", _server_prepare(POSTGRES_URL, pg_ensure_events))
DJANGO_ITERATE_MYSQL = _case(
    "django-iterate-mysql", "MariaDB", _server_prepare(MYSQL_URL, mysql_ensure_events))
