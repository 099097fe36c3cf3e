"""Django: iterate every ``events`` row as a model instance, in id order (SQLite)."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

from cases.base import Case, Contestant, Dataset
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


def prepare(rows: int) -> Dataset:
    path = build_sqlite(rows)
    reference = _reference(path)
    with open(path, "rb") as database:
        while database.read(WARM_UP_READ_BYTES):
            pass
    return Dataset(rows=rows, source=str(path), table=TABLE, reference=reference,
                   facts={"SQLite file": f"{path.stat().st_size / 1e6:,.0f} MB"})


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


DJANGO_ITERATE = Case(
    name="django-iterate",
    title="Django: iterate `events` as model instances (SQLite)",
    description=(
        "Every `events` row as a Django model instance, in id order, on SQLite: a plain loop "
        "(the QuerySet's result cache), `.iterator(chunk_size=2000)`, django-chunkator and "
        "membound's `chunked()` with the budget shown. Each contestant reports a digest of the "
        "rows it read (count, sums, an order-sensitive sum), which must match the table's."
    ),
    contestants=_contestants(),
    packages=("membound", "django", "django-chunkator"),
    prepare=prepare,
    verify=verify,
    output_suffix=".json",
)
