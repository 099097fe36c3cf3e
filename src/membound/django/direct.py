"""Insert a batch of model instances without Django's per-row SQL compilation.

Django's ``bulk_create`` compiles every value of every row through the query compiler
(``pre_save``, ``get_db_prep_save``, a placeholder each, the SQL text): on 1M narrow rows that
is most of the time, more than the database's. :class:`DirectInsert` prepares the values
column by column, calling the field's own ``get_db_prep_save`` except where a value is already
of the exact builtin type the field stores (an ``int`` for an ``IntegerField``, a ``str`` for
a ``TextField``...), where that call returns the value unchanged, and writes them with one
``COPY FROM STDIN`` (PostgreSQL with psycopg 3), ``executemany`` (SQLite's runs in C;
MySQLdb and PyMySQL turn it into multi-row INSERTs) or multi-row INSERTs (psycopg2).

Used only where it writes what Django would (:func:`direct_insert_for`): a concrete model
without multi-table inheritance, no ``db_default`` or generated field, on SQLite, PostgreSQL or
MySQL/MariaDB, without conflict options; a batch holding an expression value goes to Django.
Each value comes from ``field.pre_save(obj, add=True)`` as in Django (``auto_now`` works).
It does not set auto-increment primary keys on the instances (``set_primary_keys=True`` in
:func:`bulk_create` keeps Django's path, which does).
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any

from django.db import connections, models, transaction
from django.db.models import QuerySet
from django.db.models.fields import NOT_PROVIDED

__all__ = ["DirectInsert", "direct_insert_for"]

# psycopg2 only (no COPY object, and executemany is a round trip per row): rows per multi-row
# INSERT at most, since past a few hundred rows a bigger statement saves nothing...
ROWS_PER_STATEMENT = 1000
# ...and bytes of values per statement at most (from the batch's measured row size).
STATEMENT_BYTES = 4 * 1024 * 1024
# Fields whose get_db_prep_save returns a value of this exact type unchanged, on every backend
# here (the IntegerFields' range checks are validators, not part of saving).
_PASS_THROUGH: dict[type, type] = {
    models.AutoField: int,
    models.BigAutoField: int,
    models.SmallAutoField: int,
    models.IntegerField: int,
    models.BigIntegerField: int,
    models.SmallIntegerField: int,
    models.PositiveIntegerField: int,
    models.PositiveBigIntegerField: int,
    models.PositiveSmallIntegerField: int,
    models.FloatField: float,
    models.CharField: str,
    models.TextField: str,
    models.BooleanField: bool,
}
_VENDORS = ("sqlite", "postgresql", "mysql")


def _plain_field(field: models.Field) -> bool:
    generated = getattr(field, "generated", False)
    db_default = getattr(field, "db_default", NOT_PROVIDED) is not NOT_PROVIDED
    return not (generated or db_default)


def _getter(field: models.Field) -> Callable[[models.Model], Any]:
    """The value Django's compiler would insert for ``field``: ``field.pre_save(obj, True)``,
    which is the attribute itself unless the field does more (``auto_now``, a file's save)."""
    plain = type(field).pre_save is models.Field.pre_save or (
        isinstance(field, models.DateField)  # and DateTimeField; any other: pre_save itself
        and not (field.auto_now or field.auto_now_add)
        and type(field).pre_save in (models.DateField.pre_save, models.DateTimeField.pre_save)
    )
    if plain:
        return attrgetter(field.attname)
    return lambda obj: field.pre_save(obj, True)


def direct_insert_for(queryset: QuerySet, options: dict[str, Any]) -> DirectInsert | None:
    """A :class:`DirectInsert` for ``queryset``'s model, or None where Django must do it."""
    if options:  # ignore_conflicts, update_conflicts: Django's SQL
        return None
    model = queryset.model
    opts = model._meta
    if opts.proxy or opts.parents or opts.abstract:
        return None
    connection = connections[queryset.db]
    if connection.vendor not in _VENDORS:
        return None
    fields = list(opts.concrete_fields)
    if not all(_plain_field(field) for field in fields):
        return None
    return DirectInsert(queryset, fields)


class DirectInsert:
    """Writes batches of one model's instances; see the module's docstring."""

    def __init__(self, queryset: QuerySet, fields: list[models.Field]) -> None:
        self.queryset = queryset
        self.db = queryset.db
        self.connection = connections[self.db]
        self.fields = fields
        self.pk = queryset.model._meta.pk
        quote = self.connection.ops.quote_name
        self.table = quote(queryset.model._meta.db_table)
        self.columns = {field: quote(field.column) for field in fields}
        self.getters = {field: _getter(field) for field in fields}

    def write(self, batch: list[models.Model], bytes_per_row: float | None) -> int:
        """Insert ``batch`` in one transaction (a savepoint-free atomic block); returns its
        length, or -1 when a value is an expression and the batch must go to Django."""
        self.queryset._prepare_for_bulk_create(batch)  # pk defaults, related fields' ids
        with_pk = [obj for obj in batch if obj.pk is not None]
        without_pk = [obj for obj in batch if obj.pk is None] if len(with_pk) < len(batch) else []
        groups = []
        for objs, fields in (
            (with_pk, self.fields),
            (without_pk, [f for f in self.fields if f is not self.pk]),
        ):
            if objs:
                columns = self._columns(objs, fields)
                if columns is None:
                    return -1
                groups.append((fields, columns))
        with transaction.atomic(using=self.db, savepoint=False):
            for fields, columns in groups:
                self._insert(fields, columns, bytes_per_row)
        for obj in batch:
            obj._state.adding = False
            obj._state.db = self.db
        return len(batch)

    def _columns(self, objs: list[models.Model], fields: list[models.Field]) -> list | None:
        connection = self.connection
        columns = []
        for field in fields:
            values = list(map(self.getters[field], objs))
            exact = _PASS_THROUGH.get(type(field))
            prepare: Callable[..., Any] = field.get_db_prep_save
            prepared = []
            append = prepared.append
            for value in values:
                if value is None or type(value) is exact:
                    append(value)
                elif hasattr(value, "resolve_expression"):
                    return None
                else:
                    append(prepare(value, connection))
            columns.append(prepared)
        return columns

    def _insert(
        self, fields: list[models.Field], columns: list[list], row_bytes: float | None
    ) -> None:
        names = ", ".join(self.columns[field] for field in fields)
        rows = list(zip(*columns, strict=True))
        del columns
        placeholder = "(" + ", ".join(["%s"] * len(fields)) + ")"
        head = f"INSERT INTO {self.table} ({names}) VALUES "
        connection = self.connection
        with connection.cursor() as cursor:
            raw = getattr(cursor, "cursor", cursor)
            if connection.vendor != "postgresql":
                # sqlite3 runs executemany in C; MySQLdb and PyMySQL rewrite it into multi-row
                # INSERTs of at most ~1 MB each.
                cursor.executemany(head + placeholder, rows)
            elif hasattr(raw, "copy"):
                # psycopg 3: COPY, outside Django's cursor wrapper, so its errors are wrapped here.
                with connection.wrap_database_errors, raw.copy(
                    f"COPY {self.table} ({names}) FROM STDIN"
                ) as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                # psycopg2: executemany would be one round trip per row.
                per_statement = ROWS_PER_STATEMENT
                if row_bytes:
                    per_statement = min(per_statement, max(1, int(STATEMENT_BYTES / row_bytes)))
                for start in range(0, len(rows), per_statement):
                    part = rows[start : start + per_statement]
                    sql = head + ", ".join([placeholder] * len(part))
                    cursor.execute(sql, [value for row in part for value in row])
