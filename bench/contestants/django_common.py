"""Shared by the Django contestants: settings for one database (a SQLite file, a PostgreSQL or
MariaDB URL), the ``events`` model, the digest every iterating contestant computes over the rows
it read (checked by ``cases/django_iterate.py``) and the instances the writing contestants insert
(``cases/django_bulk_create.py``).

A contestant calls :func:`setup` at module level, so Django's setup (and, for a server, its
driver) belongs to every Django contestant's baseline.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from hashlib import md5
from urllib.parse import unquote, urlsplit

import django
from django.conf import settings

KINDS = ("click", "view", "buy", "share")  # as bench/data.py
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def database(source: str) -> dict:
    """Django's settings for one database: a SQLite path, or a postgresql:// or mysql:// URL."""
    if "://" not in source:
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": source}
    parts = urlsplit(source)
    common = {
        "NAME": parts.path.lstrip("/"),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "127.0.0.1",
        "PORT": str(parts.port or ""),
    }
    if parts.scheme.startswith("postgres"):
        return {"ENGINE": "django.db.backends.postgresql", **common}
    if parts.scheme in ("mysql", "mariadb"):
        return {"ENGINE": "django.db.backends.mysql", **common, "OPTIONS": {"charset": "utf8mb4"}}
    raise SystemExit(f"no Django backend for {source}")


def setup(source: str, table: str = "events", *, auto_id: bool = False) -> type:
    """Configure Django for ``source``; return the ``Event`` model of ``table``.

    ``auto_id``: the primary key is the database's (BigAutoField) and instances leave it unset,
    as generated instances usually do; otherwise ``id`` is given, as in the ``events`` data.
    """
    settings.configure(
        DATABASES={"default": database(source)},
        INSTALLED_APPS=[],
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    )
    django.setup()
    from django.db import connections, models

    connections["default"]  # loads the backend and its driver: part of the baseline

    class Event(models.Model):
        id = models.BigAutoField(primary_key=True) if auto_id else models.BigIntegerField(
            primary_key=True
        )
        user_id = models.IntegerField()
        ts = models.DateTimeField()
        kind = models.TextField()
        amount = models.FloatField(null=True)
        payload = models.TextField(null=True)
        flag = models.BooleanField(null=True)

        class Meta:
            app_label = "bench"
            db_table = table
            managed = False

    return Event


def source_path() -> str:
    """The SQLite file or server URL, the first argument: known before run_contestant parses
    the rest."""
    return next(arg for arg in sys.argv[1:] if not arg.startswith("-"))


def table_name() -> str:
    """The ``--table`` argument (``events`` when absent), before run_contestant parses it."""
    args = sys.argv[1:]
    return args[args.index("--table") + 1] if "--table" in args else "events"


def imports_only() -> bool:
    return "--imports-only" in sys.argv[1:]


def generated_events(model: type, count: int) -> Iterator:
    """``count`` new ``events`` instances (no id), rows 1..count of the protocol, lazily."""
    for g in range(1, count + 1):
        yield model(
            user_id=(g * 7919) % 100_000,
            ts=EPOCH + timedelta(seconds=g),
            kind=KINDS[g % 4],
            amount=None if g % 10 == 0 else (g % 1000) / 7.0,
            payload=md5(str(g).encode()).hexdigest() * (1 + g % 6),
            flag=g % 3 == 0,
        )


def create_table(model: type) -> None:
    """(Re)create the model's table, empty."""
    from django.db import connection

    with connection.schema_editor() as editor:
        if model._meta.db_table in connection.introspection.table_names():
            editor.delete_model(model)
        editor.create_model(model)


class Digest:
    """Row count and order-sensitive sums over the instances read: same data, same order."""

    def __init__(self) -> None:
        self.rows = 0
        self.ids = 0
        self.users = 0
        self.payload = 0
        self.order = 0  # sum of id * position: changes if the order does

    def add(self, event: object) -> None:
        self.rows += 1
        self.ids += event.id
        self.users += event.user_id
        self.payload += len(event.payload or "")
        self.order = (self.order + event.id * self.rows) % (1 << 61)

    def write(self, path: str) -> dict:
        result = {"rows": self.rows, "checksum": f"{self.ids}:{self.users}:{self.payload}:"
                  f"{self.order}"}
        with open(path, "w") as out:
            json.dump(result, out)
        return result


# -- the bulk-create case ------------------------------------------------------------------------

# The table a bulk-create contestant writes is named for its row count: django_bulk_<rows>.
BULK_TABLE_PREFIX = "django_bulk_"
# SOURCE for a bulk-create run into SQLite: the database is then the OUTPUT file itself.
SQLITE_TARGET = "sqlite"


def bulk_target() -> tuple[str, str, int]:
    """(database, table, rows to write) of a bulk-create run, from its command line."""
    positional = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
    source, output = positional[0], positional[1]
    table = table_name()
    if not table.startswith(BULK_TABLE_PREFIX):
        raise SystemExit(f"--table must be {BULK_TABLE_PREFIX}<rows>, got {table}")
    rows = int(table[len(BULK_TABLE_PREFIX):])
    return (output if source == SQLITE_TARGET else source), table, rows


def write_result(path: str, table: str, rows: int) -> dict:
    """Name the table written, for the harness to read back (the SQLite file is the output)."""
    result = {"table": table, "rows": rows}
    if not path.endswith(".sqlite"):
        with open(path, "w") as out:
            json.dump(result, out)
    return result
