"""Shared by the Django contestants: settings for one SQLite file, the ``events`` model, and the
digest every contestant computes over the rows it read (checked by ``cases/django_iterate.py``).

Importing this module sets Django up, so it belongs to every Django contestant's baseline.
"""

from __future__ import annotations

import json
import sys

import django
from django.conf import settings


def setup(path: str) -> type:
    """Configure Django for the SQLite file at ``path``; return the ``Event`` model."""
    settings.configure(
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": path}},
        INSTALLED_APPS=[],
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    )
    django.setup()
    from django.db import models

    class Event(models.Model):
        id = models.BigIntegerField(primary_key=True)
        user_id = models.IntegerField()
        ts = models.DateTimeField()
        kind = models.TextField()
        amount = models.FloatField(null=True)
        payload = models.TextField(null=True)
        flag = models.BooleanField(null=True)

        class Meta:
            app_label = "bench"
            db_table = "events"
            managed = False

    return Event


def source_path() -> str:
    """The SQLite file, the first argument: known before run_contestant parses the rest."""
    return next(arg for arg in sys.argv[1:] if not arg.startswith("-"))


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
