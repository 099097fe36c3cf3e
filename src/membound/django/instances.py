"""Build the model instances of one chunk faster than Django's ``ModelIterable``.

Django builds each row's instance through ``Model.from_db`` → ``Model.__init__``: two signal
sends, a ``setattr`` per field, and its converters run row by row over a fresh list per row. For
a plain model (no ``__init__`` or ``from_db`` override, no pre_init/post_init receivers, no
field descriptor that does work on assignment) that is the same as filling the instance's
``__dict__``. :class:`ChunkModelIterable` does that, and applies the converters column by column
over the whole chunk. It is used only where the result is the same object Django would build;
any other QuerySet keeps Django's iterable (:func:`fast_iterable_for`). On PostgreSQL its
``timestamptz`` values load in C (:mod:`membound.django.loaders`).
"""

from __future__ import annotations

from collections.abc import Iterator
from inspect import getattr_static
from typing import Any

from django.db.models import Model, QuerySet, signals
from django.db.models.base import ModelState
from django.db.models.query import BaseIterable, ModelIterable
from django.db.models.query_utils import DeferredAttribute
from django.db.models.sql.constants import MULTI

from membound.django.loaders import FastTimestamps

try:  # Django >= 3.0; older versions set foreign keys through a plain DeferredAttribute
    from django.db.models.fields.related_descriptors import ForeignKeyDeferredAttribute
except ImportError:  # pragma: no cover
    ForeignKeyDeferredAttribute = DeferredAttribute

__all__ = ["ChunkModelIterable", "fast_iterable_for"]

# Rows per block the instances are built from: enough that the per-block work (a transpose, a
# list per converted column) is spread thin, few enough that a block's raw rows weigh nothing.
BLOCK_ROWS = 500

# Class attributes of concrete fields whose assignment is a plain __dict__ store on a new
# instance (ForeignKeyDeferredAttribute.__set__ only clears a cached related object, which a
# new instance does not have). Any other descriptor (FileField's, a custom one) keeps Django's.
_PLAIN_DESCRIPTORS = (DeferredAttribute, ForeignKeyDeferredAttribute)


def _plain_model(model: type[Model]) -> bool:
    """Whether an instance of ``model`` from ``from_db`` is just its field values in __dict__."""
    if model.__init__ is not Model.__init__:
        return False
    if getattr(model.from_db, "__func__", None) is not Model.from_db.__func__:
        return False
    if signals.pre_init.has_listeners(model) or signals.post_init.has_listeners(model):
        return False
    opts = model._meta
    if opts.abstract or getattr(opts.pk, "__class__", type).__name__ == "CompositePrimaryKey":
        return False
    for field in opts.concrete_fields:
        if type(getattr_static(model, field.attname, None)) not in _PLAIN_DESCRIPTORS:
            return False
    return True


def fast_iterable_for(queryset: QuerySet) -> type[BaseIterable] | None:
    """:class:`ChunkModelIterable` when it builds exactly what Django would for ``queryset``."""
    if queryset._iterable_class is not ModelIterable:
        return None
    if queryset.query.select_related or queryset._known_related_objects:
        return None
    return ChunkModelIterable if _plain_model(queryset.model) else None


class ChunkModelIterable(BaseIterable):
    """Model instances of one (sliced) query, read whole; see the module's docstring."""

    def __iter__(self) -> Iterator[Model]:
        queryset = self.queryset
        db = queryset.db
        compiler = queryset.query.get_compiler(using=db)
        # A non-chunked read comes back as a list of blocks of BLOCK_ROWS rows, all fetched.
        # Each block is dropped as soon as its instances are built, so the raw rows and the
        # instances of the whole chunk are never in memory side by side.
        connection = compiler.connection
        timestamps = FastTimestamps.for_connection(connection)
        if timestamps is None:
            blocks = list(
                compiler.execute_sql(MULTI, chunked_fetch=False, chunk_size=BLOCK_ROWS) or ()
            )
        else:
            with connection.execute_wrapper(timestamps):
                blocks = list(
                    compiler.execute_sql(MULTI, chunked_fetch=False, chunk_size=BLOCK_ROWS)
                    or ()
                )
        select = compiler.select
        klass_info = compiler.klass_info
        model = klass_info["model"]
        select_fields = klass_info["select_fields"]
        start, end = select_fields[0], select_fields[-1] + 1
        names = [column[0].target.attname for column in select[start:end]]
        width = compiler.col_count
        converters = list(
            compiler.get_converters([column[0] for column in select[:width]]).items()
        )
        annotations = [
            (name, position, _plain_attribute(model, name))
            for name, position in (compiler.annotation_col_map or {}).items()
        ]
        new = Model.__new__
        new_state = ModelState
        blocks.reverse()
        while blocks:
            block = blocks.pop()
            if not block:
                continue
            columns: list[Any] = list(zip(*block, strict=True))
            del block
            if timestamps is not None:
                timestamps.fix(columns, width)
            for position, (functions, expression) in converters:
                values = columns[position]
                for converter in functions:
                    values = [converter(value, expression, connection) for value in values]
                columns[position] = values
            for index, values in enumerate(zip(*columns[start:end], strict=True)):
                obj = new(model)
                attrs = obj.__dict__
                attrs.update(zip(names, values, strict=False))
                state = new_state()
                state.adding = False
                state.db = db
                attrs["_state"] = state
                for name, position, plain in annotations:
                    if plain:
                        attrs[name] = columns[position][index]
                    else:
                        setattr(obj, name, columns[position][index])
                yield obj
            del columns


def _plain_attribute(model: type[Model], name: str) -> bool:
    """Whether setting ``name`` on an instance is a plain __dict__ store (no class attribute
    such as a property stands in the way)."""
    return getattr_static(model, name, None) is None
