"""Bounded bulk writes: :func:`bulk_create` and :func:`bulk_update` from any iterable.

Django's own ``bulk_create(objs)`` begins with ``list(objs)``: a generator of a million
instances is a million instances in memory before the first INSERT. These take the iterable
lazily, cut it into batches sized in bytes from the budget (the sizes of the instances, sampled)
and write each batch: ``bulk_create`` through :mod:`membound.django.direct` (values prepared
column by column, COPY or multi-row INSERTs) where the model allows it, otherwise, and for
``bulk_update``, through Django's own method, which splits it further where the database limits
query parameters. Each batch is its own short transaction, or all of them one transaction with
``atomic=True``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from django.db import DatabaseError, models, transaction
from django.db.models import Manager, QuerySet

from membound.budget import DEFAULT_MAX_MEMORY, BatchSizer, Budget, Policy
from membound.django.direct import direct_insert_for
from membound.django.iteration import _instance_size
from membound.errors import ConfigurationError, PartialWriteError, TargetError
from membound.memory import gc_paused

__all__ = ["bulk_create", "bulk_update"]

# Every this-many instances one is measured: instances of one model built by one generator are
# alike, and measuring each (a few microseconds) would cost a tenth of the write itself.
MEASURE_EVERY = 16
# Rows per UPDATE statement in bulk_update: Django builds one CASE WHEN per field over the
# whole statement, and compiling it grows faster than linearly; 500 rows keeps it cheap.
UPDATE_ROWS_PER_STATEMENT = 500


def _target(model_or_queryset: Any, using: str | None) -> QuerySet:
    if isinstance(model_or_queryset, QuerySet):
        queryset = model_or_queryset
    elif isinstance(model_or_queryset, Manager):
        queryset = model_or_queryset.all()
    elif isinstance(model_or_queryset, type) and issubclass(model_or_queryset, models.Model):
        queryset = model_or_queryset._default_manager.all()
    else:
        raise ConfigurationError(
            f"the first argument must be a model, a manager or a QuerySet, got "
            f"{model_or_queryset!r}"
        )
    return queryset.using(using) if using else queryset


def _batches(objs: Iterable[models.Model], sizer: BatchSizer) -> Iterator[list[models.Model]]:
    """The objects in lists of about the sizer's target bytes, consumed lazily."""
    batch: list[models.Model] = []
    nbytes = 0
    target, max_rows = sizer.target_bytes, sizer.rows_per_batch
    for obj in objs:
        if len(batch) % MEASURE_EVERY == 0:
            nbytes += _instance_size(obj, depth=0) * MEASURE_EVERY
        batch.append(obj)
        if nbytes >= target or len(batch) >= max_rows:
            sizer.observe(len(batch), nbytes)
            yield batch
            batch, nbytes = [], 0
            target, max_rows = sizer.target_bytes, sizer.rows_per_batch
    if batch:
        sizer.observe(len(batch), nbytes)
        yield batch


def _write(
    queryset: QuerySet,
    objs: Iterable[models.Model],
    write: Callable[[list[models.Model], BatchSizer], int],
    *,
    budget: Budget,
    atomic: bool,
    what: str,
) -> int:
    sizer = budget.sizer(warm=False)
    done = 0
    where = f"{what} {queryset.model.__name__} rows"
    outer = transaction.atomic(using=queryset.db) if atomic else contextlib.nullcontext()
    try:
        with outer:
            for batch in _batches(objs, sizer):
                with gc_paused():
                    # Django's SQL compilation makes many short-lived objects, none cyclic.
                    done += write(batch, sizer)
                del batch
                sizer.check_memory(where)
    except DatabaseError as exc:
        if atomic or not done:
            raise TargetError(
                f"{what} {queryset.model.__name__} failed and wrote nothing: {exc}"
            ) from exc
        raise PartialWriteError(
            f"{what} {queryset.model.__name__} failed after {done} rows were committed "
            f"(each batch is its own transaction; pass atomic=True for all or nothing): {exc}",
            rows_committed=done,
        ) from exc
    return done


def bulk_create(
    model_or_queryset: type[models.Model] | Manager | QuerySet,
    objs: Iterable[models.Model],
    *,
    max_memory: Budget | int | str = DEFAULT_MAX_MEMORY,
    policy: Policy = "adapt",
    atomic: bool = False,
    using: str | None = None,
    ignore_conflicts: bool = False,
    update_conflicts: bool = False,
    update_fields: Sequence[str] | None = None,
    unique_fields: Sequence[str] | None = None,
    set_primary_keys: bool = False,
) -> int:
    """Insert the instances of any iterable in batches sized in bytes; returns how many.

    ``objs`` is consumed lazily (a generator stays a generator): at most one batch of about
    ``max_memory / 16`` is held, then written and dropped: keep your own references if you need
    the objects afterwards. Each batch commits on its own; ``atomic=True`` makes the whole
    write one transaction. Conflict options are Django's.

    Speed: for a plain model (no multi-table inheritance, ``auto_now``, ``db_default`` or
    generated field) on SQLite, PostgreSQL or MySQL/MariaDB, a batch is written without Django's
    per-row SQL compilation (COPY on PostgreSQL with psycopg 3, multi-row INSERTs elsewhere),
    about twice as fast; auto-increment primary keys then stay unset on the instances. Pass
    ``set_primary_keys=True`` to hand every batch to Django's ``bulk_create``, which sets them
    where the database returns them. Conflict options always go through Django.

    Raises :class:`~membound.errors.PartialWriteError` (with ``rows_committed``) when a batch
    fails after earlier ones were committed, :class:`~membound.errors.TargetError` when nothing
    was written.
    """
    queryset = _target(model_or_queryset, using)
    budget = max_memory if isinstance(max_memory, Budget) else Budget(max_memory, policy=policy)
    options: dict[str, Any] = {}
    if ignore_conflicts:
        options["ignore_conflicts"] = True
    if update_conflicts:
        options.update(update_conflicts=True, update_fields=update_fields,
                       unique_fields=unique_fields)

    direct = None if set_primary_keys else direct_insert_for(queryset, options)

    def write(batch: list[models.Model], sizer: BatchSizer) -> int:
        if direct is not None:
            written = direct.write(batch, sizer.bytes_per_row)
            if written >= 0:
                return written
        queryset.bulk_create(batch, **options)
        return len(batch)

    return _write(queryset, objs, write, budget=budget, atomic=atomic, what="bulk_create of")


def bulk_update(
    model_or_queryset: type[models.Model] | Manager | QuerySet,
    objs: Iterable[models.Model],
    fields: Sequence[str],
    *,
    max_memory: Budget | int | str = DEFAULT_MAX_MEMORY,
    policy: Policy = "adapt",
    atomic: bool = False,
    using: str | None = None,
) -> int:
    """Update ``fields`` of the instances of any iterable, in batches sized in bytes.

    Returns the number of rows the database matched. Memory, transactions and errors as
    :func:`bulk_create`. Raises :class:`~membound.errors.ConfigurationError` for a field that
    is not a concrete, non-primary-key field of the model.
    """
    queryset = _target(model_or_queryset, using)
    budget = max_memory if isinstance(max_memory, Budget) else Budget(max_memory, policy=policy)
    if isinstance(fields, str) or not fields:
        raise ConfigurationError("fields must be a non-empty list of field names, e.g. ['name']")
    opts = queryset.model._meta
    concrete = {f.name: f for f in opts.concrete_fields}
    bad = [name for name in fields if name not in concrete or concrete[name].primary_key]
    if bad:
        raise ConfigurationError(
            f"bulk_update cannot set {', '.join(map(repr, bad))} on {queryset.model.__name__}; "
            f"name concrete, non-primary-key fields such as "
            f"{', '.join(f.name for f in opts.concrete_fields if not f.primary_key)[:200]}"
        )
    names = list(fields)

    def write(batch: list[models.Model], sizer: BatchSizer) -> int:
        return queryset.bulk_update(batch, names, batch_size=UPDATE_ROWS_PER_STATEMENT)

    return _write(queryset, objs, write, budget=budget, atomic=atomic, what="bulk_update of")
