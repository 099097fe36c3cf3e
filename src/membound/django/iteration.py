"""Iterate any QuerySet in keyset chunks sized in bytes: :func:`chunked` and :func:`chunks`.

Each chunk is one ordinary query, ``WHERE <after the last row> ORDER BY <ordering>, pk LIMIT n``
(see :mod:`membound.django.keyset`), run in autocommit and read whole: no server-side cursor,
no transaction held open between chunks. It works behind PgBouncer in transaction pooling mode
and on MariaDB, whose driver would otherwise buffer the entire result of ``.iterator()``.

``n`` comes from the bytes the rows of the previous chunks took in memory (model instances,
dicts or tuples, sampled), so a chunk is about ``max_memory / 64`` whatever the width of a row.
``large_values="1MB"`` keeps text and binary values above that size out of the chunk: they stay
deferred and load on access (or stream, :func:`stream_value`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.db import models
from django.db.models import Case, F, QuerySet, Value, When
from django.db.models.functions import Length, Substr
from django.db.models.query import (
    FlatValuesListIterable,
    ModelIterable,
    NamedValuesListIterable,
    ValuesIterable,
    ValuesListIterable,
)
from django.db.models.utils import create_namedtuple_class

from membound.budget import DEFAULT_MAX_MEMORY, Budget, Policy, parse_size
from membound.django.instances import fast_iterable_for
from membound.django.keyset import ALIAS_PREFIX, KeyTerm, after, key_terms, order_by_expressions
from membound.errors import ConfigurationError, NotFoundError
from membound.memory import gc_paused

__all__ = ["chunked", "chunks", "stream_value"]

# Rows per chunk whose size is measured: enough to follow the mix of a chunk, few enough that
# measuring costs nothing next to fetching (measuring every row would slow iteration by half).
SAMPLE_ROWS = 32
# CPython's cost of a value beyond its payload (object header + its slot), for str and bytes.
VALUE_OVERHEAD = 56
# Fixed sizes of common values (sys.getsizeof on 64-bit CPython 3.11).
_FIXED_SIZES: dict[type, int] = {
    int: 32, float: 24, bool: 8, type(None): 8, datetime: 48, date: 32, time: 40,
    timedelta: 48, Decimal: 104, UUID: 56,
}
# Width assumed for the part of a row outside its large values before anything is measured.
FIRST_ROW_BYTES = 1024
# A chunk's share of a batch's target (Budget.batch_bytes, max_memory / 16): at the peak a chunk
# is in memory as the driver's result, its raw rows and its instances, and RSS keeps what the
# allocator does not give back; a quarter keeps all that near the batch target. Smaller chunks
# cost one more query each (~1 ms), nothing next to building 1000 instances.
CHUNK_SHARE = 0.25
# Default piece size for stream_value: large enough to amortise a query, small in any budget.
STREAM_PIECE = 1024 * 1024


def _value_size(value: Any) -> int:
    fixed = _FIXED_SIZES.get(type(value))
    if fixed is not None:
        return fixed
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        return len(value) + VALUE_OVERHEAD
    return sys.getsizeof(value)


def _row_size(row: tuple | dict) -> int:
    values = row.values() if isinstance(row, dict) else row
    return sys.getsizeof(row) + 8 * len(row) + sum(map(_value_size, values))


def _instance_size(obj: models.Model, *, depth: int = 1) -> int:
    """Bytes an instance holds: itself, its dict, its state, and (one level down) the related
    instances select_related or prefetch_related attached to it."""
    attrs = obj.__dict__
    state = attrs.get("_state")
    size = sys.getsizeof(obj) + sys.getsizeof(attrs)
    for name, value in attrs.items():
        if name == "_state":
            size += sys.getsizeof(value) + sys.getsizeof(value.__dict__)
            if depth and state is not None:
                for related in value.fields_cache.values():
                    if isinstance(related, models.Model):
                        size += _instance_size(related, depth=depth - 1)
        elif name == "_prefetched_objects_cache":
            for prefetched in value.values():
                cached = getattr(prefetched, "_result_cache", None) or ()
                if depth:
                    size += sum(_instance_size(item, depth=depth - 1) for item in cached)
        else:
            size += _value_size(value)
    return size


def _chunk_bytes(items: list[Any], size_of: Callable[[Any], int]) -> int:
    """Bytes of a chunk, from an evenly spread sample of its rows."""
    count = len(items)
    if count <= SAMPLE_ROWS:
        return sum(map(size_of, items))
    step = count / SAMPLE_ROWS
    sampled = sum(size_of(items[int(i * step)]) for i in range(SAMPLE_ROWS))
    return int(sampled * count / SAMPLE_ROWS)


class _Plan:
    """How one QuerySet is fetched in chunks: the ordered query, the key of a row, the rows."""

    def __init__(self, queryset: QuerySet, *, large_values: int | None) -> None:
        if not isinstance(queryset, QuerySet):
            raise ConfigurationError(
                f"chunked() takes a QuerySet, got {type(queryset).__name__}; pass "
                "Model.objects.all() or a filtered QuerySet"
            )
        query = queryset.query
        if query.combinator:
            raise ConfigurationError(
                f"a {query.combinator}() QuerySet has no primary key to resume from; iterate "
                "each part in chunks instead"
            )
        if query.group_by is not None:
            raise ConfigurationError(
                "an aggregating QuerySet (values().annotate(Count(...))) has one row per group, "
                "not per primary key; chunk the rows it aggregates, or iterate it with "
                ".iterator()"
            )
        if query.low_mark:
            raise ConfigurationError(
                "chunked iteration cannot start at an offset (queryset[n:]); filter on the "
                "ordering instead, or skip rows with itertools.islice"
            )
        iterable = queryset._iterable_class
        self.model_rows = issubclass(iterable, ModelIterable)
        if query.distinct and not self.model_rows:
            raise ConfigurationError(
                "a distinct values() QuerySet has no primary key per row to resume from; "
                "chunk the model QuerySet and collect the distinct values yourself"
            )
        self.limit = None if query.high_mark is None else query.high_mark - query.low_mark
        base = queryset._chain()
        base.query.clear_limits()
        self.terms = key_terms(base, model_rows=self.model_rows)
        self.large_values = large_values
        self.large_fields: list[models.Field] = []
        if self.model_rows:
            self._plan_models(base)
        else:
            if large_values is not None:
                raise ConfigurationError(
                    "large_values applies to model instances; for values()/values_list(), "
                    "leave the large column out and read it with stream_value() per row"
                )
            self._plan_values(base, iterable)

    # -- model instances ---------------------------------------------------------------------

    def _plan_models(self, base: QuerySet) -> None:
        annotations = {t.name: t.expression for t in self.terms if t.expression is not None}
        self.aliases = list(annotations)
        if self.large_values is not None:
            loaded = _loaded_fields(base)
            self.large_fields = [
                f for f in loaded
                if isinstance(f, (models.TextField, models.BinaryField)) and not f.primary_key
            ]
            if self.large_fields:
                base = base.defer(*(f.name for f in self.large_fields))
            for field in self.large_fields:
                length, value = _large_aliases(field)
                annotations[length] = Length(field.name)
                annotations[value] = Case(
                    When(**{f"{length}__lte": self.large_values}, then=F(field.name)),
                    default=Value(None),
                    output_field=field,
                )
                self.aliases += [length, value]
        self.fetch = base.annotate(**annotations).order_by(*order_by_expressions(self.terms))
        fast = fast_iterable_for(self.fetch)
        if fast is not None:
            # A plain model: instances built column-wise, as Django would build them, faster.
            self.fetch._iterable_class = fast
        self.size_of = _instance_size
        getters = []
        for term in self.terms:
            getters.append(term.attname or term.name)
        self.key_names = getters

    def _finish_models(self, rows: list[models.Model]) -> list[models.Model]:
        aliases = self.aliases
        if not aliases:
            return rows
        threshold = self.large_values
        for obj in rows:
            attrs = obj.__dict__
            for field in self.large_fields:
                length_alias, value_alias = _large_aliases(field)
                length = attrs.pop(length_alias)
                value = attrs.pop(value_alias)
                if length is None or length <= threshold:
                    attrs[field.attname] = value
                # else: the field stays deferred, and Django loads it when it is read.
            for alias in aliases:
                attrs.pop(alias, None)
        return rows

    # -- values(), values_list() -------------------------------------------------------------

    def _plan_values(self, base: QuerySet, iterable: type) -> None:
        query = base.query
        names = list(base._fields) or [
            *query.extra_select, *query.values_select, *query.annotation_select
        ]
        opts = base.model._meta
        annotations: dict[str, Any] = {}
        indexes: list[int] = []
        terms: list[KeyTerm] = []
        extra: list[str] = []
        for index, term in enumerate(self.terms):
            candidates = {term.name}
            if term.name == opts.pk.name:
                candidates |= {"pk", opts.pk.attname}
            if term.name.endswith("_id"):
                candidates.add(term.name[:-3])  # values("user") holds user_id's value
            found = next((n for n in names if n in candidates), None)
            if term.expression is None and found is not None:
                indexes.append(names.index(found))
                terms.append(term)
                continue
            alias = term.name if term.expression is not None else f"{ALIAS_PREFIX}key{index}"
            annotations[alias] = term.expression if term.expression is not None else F(
                term.name)
            term = KeyTerm(
                name=alias, descending=term.descending, nulls_last=term.nulls_last,
                nullable=term.nullable, explicit_nulls=term.explicit_nulls,
                expression=annotations[alias],
            )
            terms.append(term)
            indexes.append(len(names) + len(extra))
            extra.append(alias)
        self.terms = terms
        self.key_indexes = indexes
        self.aliases = extra
        fetch = base.annotate(**annotations) if annotations else base
        self.fetch = fetch.values_list(*names, *extra).order_by(*order_by_expressions(terms))
        width = len(names)
        if issubclass(iterable, FlatValuesListIterable):
            self.convert: Callable[[tuple], Any] | None = lambda row: row[0]
            self.size_of = _value_size
        elif issubclass(iterable, NamedValuesListIterable):
            row_class = create_namedtuple_class(*names)
            new = tuple.__new__
            self.convert = lambda row: new(row_class, row[:width])
            self.size_of = _row_size
        elif issubclass(iterable, ValuesListIterable):
            self.convert = (lambda row: row[:width]) if extra else None
            self.size_of = _row_size
        elif issubclass(iterable, ValuesIterable):
            self.convert = lambda row: dict(zip(names, row, strict=False))
            self.size_of = _row_size
        else:
            raise ConfigurationError(
                f"chunked() cannot iterate a QuerySet with the custom iterable "
                f"{iterable.__name__}; iterate the model or values() QuerySet it is built on"
            )

    # -- per chunk -----------------------------------------------------------------------------

    def key_of(self, row: Any) -> tuple[Any, ...]:
        if self.model_rows:
            attrs = row.__dict__
            return tuple(attrs[name] for name in self.key_names)
        return tuple(row[i] for i in self.key_indexes)

    def finish(self, rows: list[Any]) -> list[Any]:
        if self.model_rows:
            return self._finish_models(rows)
        convert = self.convert
        return rows if convert is None else [convert(row) for row in rows]

    def page(self, last_key: tuple[Any, ...] | None) -> QuerySet | None:
        """The QuerySet of the rows after ``last_key``; None when no row can follow it."""
        if last_key is None:
            return self.fetch
        predicate = after(self.terms, last_key)
        return None if predicate is None else self.fetch.filter(predicate)

    def fitting_rows(self, page: QuerySet, rows: int, target: int, row_bytes: float) -> tuple[
            int, int]:
        """With large values: how many of the next ``rows`` rows fit ``target`` bytes, and
        their bytes, from the lengths of their values (one narrow query)."""
        lengths = [_large_aliases(f)[0] for f in self.large_fields]
        threshold = self.large_values
        total = 0
        count = 0
        for values in page.values_list(*lengths)[:rows]:
            size = row_bytes + sum(n for n in values if n is not None and n <= threshold)
            if count and total + size > target:
                break
            total += int(size)
            count += 1
        return count, total


def _large_aliases(field: models.Field) -> tuple[str, str]:
    return f"{ALIAS_PREFIX}len_{field.attname}", f"{ALIAS_PREFIX}val_{field.attname}"


def _loaded_fields(queryset: QuerySet) -> list[models.Field]:
    names, defer = queryset.query.deferred_loading
    fields = queryset.model._meta.concrete_fields
    if not names:
        return list(fields)
    if defer:
        return [f for f in fields if f.name not in names and f.attname not in names]
    return [f for f in fields if f.name in names or f.attname in names]


def chunks(
    queryset: QuerySet,
    *,
    max_memory: Budget | int | str = DEFAULT_MAX_MEMORY,
    chunk_size: int | None = None,
    policy: Policy = "adapt",
    large_values: int | str | None = None,
) -> Iterator[list[Any]]:
    """The rows of ``queryset``, in its order, as lists (chunks) of about ``max_memory / 64``.

    Rows are what the QuerySet yields: model instances, dicts (``values()``), tuples or single
    values (``values_list()``, ``flat=True``, ``named=True``). ``select_related`` rides along in
    the query and ``prefetch_related`` runs once per chunk. ``chunk_size=N`` fixes the row count
    instead of sizing chunks in bytes.

    Memory: one chunk at a time (the one yielded, then the next one fetched after you ask for
    it). With ``policy="adapt"``, resident memory above the start beyond ``max_memory`` halves
    the chunk size; ``"raise"`` raises :class:`~membound.errors.MemoryBudgetExceeded`.
    ``large_values="1MB"`` (model rows): text and binary values longer than that (in bytes for
    binary, characters for text) are left out of the chunk and load when the attribute is read;
    chunks are then cut by the lengths of the values they hold, read first in a narrow query.

    Every row comes exactly once and in order, also when rows are inserted or deleted while it
    runs (a row inserted behind the current position is not seen); see the NULL rule in
    :mod:`membound.django.keyset`. Raises :class:`~membound.errors.ConfigurationError` for a
    QuerySet chunks cannot resume through (random or ``extra()`` ordering, ``union()``,
    aggregation, an offset).
    """
    budget = max_memory if isinstance(max_memory, Budget) else Budget(max_memory, policy=policy)
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0
    ):
        raise ConfigurationError(
            f"chunk_size must be a positive number of rows, got {chunk_size!r}"
        )
    threshold = None if large_values is None else parse_size(large_values)
    plan = _Plan(queryset, large_values=threshold)
    # Rows never become Arrow here: no warm-up, so pyarrow stays unimported.
    sizer = budget.sizer(share=CHUNK_SHARE, warm=False)
    remaining = plan.limit
    last_key: tuple[Any, ...] | None = None
    row_bytes: float = FIRST_ROW_BYTES
    where = f"iterating {queryset.model.__name__} in chunks"
    while remaining is None or remaining > 0:
        rows = chunk_size or sizer.rows_per_batch
        if remaining is not None:
            rows = min(rows, remaining)
        page = plan.page(last_key)
        if page is None:
            return
        measured = None
        if plan.large_fields and chunk_size is None:
            wanted = rows
            rows, measured = plan.fitting_rows(page, wanted, sizer.target_bytes, row_bytes)
            if rows == 0:
                return
        with gc_paused():
            # Model rows hold no reference cycles: building thousands of instances need not
            # trigger the cyclic collector over and over.
            fetched = list(page[:rows])
        if not fetched:
            return
        last_key = plan.key_of(fetched[-1])
        items = plan.finish(fetched)
        del fetched
        if measured is None:
            sizer.observe(len(items), _chunk_bytes(items, plan.size_of))
        else:
            sizer.observe(len(items), measured)
            row_bytes = _chunk_bytes(items, plan.size_of) / len(items)
        sizer.check_memory(where)
        if remaining is not None:
            remaining -= len(items)
        short = len(items) < rows
        yield items
        del items
        if short and not plan.large_fields:
            return


def chunked(
    queryset: QuerySet,
    max_memory: Budget | int | str = DEFAULT_MAX_MEMORY,
    chunk_size: int | None = None,
    *,
    policy: Policy = "adapt",
    large_values: int | str | None = None,
) -> Iterator[Any]:
    """Iterate any QuerySet row by row, fetched in keyset chunks sized in bytes.

    The drop-in for ``for obj in queryset.iterator():`` that bounds memory on every database,
    keeps the QuerySet's ordering (any fields, descending, NULLs, any primary-key type) and
    needs neither a server-side cursor nor a transaction. Arguments and guarantees as
    :func:`chunks`; rows already handed out are not kept, so a row you drop is freed.
    """
    for chunk in chunks(
        queryset, max_memory=max_memory, chunk_size=chunk_size, policy=policy,
        large_values=large_values,
    ):
        chunk.reverse()
        pop = chunk.pop
        while chunk:
            yield pop()


def stream_value(
    instance: models.Model, field_name: str, *, piece_size: int | str = STREAM_PIECE
) -> Iterator[str | bytes]:
    """A text or binary field of one saved row, read from the database in pieces.

    Each piece is one query (``SUBSTRING``) of ``piece_size`` bytes (binary) or characters
    (text), so a multi-GB value never sits in memory whole. Raises
    :class:`~membound.errors.NotFoundError` when the row no longer exists. A NULL value yields
    nothing.
    """
    piece = parse_size(piece_size)
    model = type(instance)
    field = model._meta.get_field(field_name)
    if not isinstance(field, (models.TextField, models.CharField, models.BinaryField)):
        raise ConfigurationError(
            f"{model.__name__}.{field_name} is a {type(field).__name__}; stream_value reads "
            "text and binary fields"
        )
    rows = model._base_manager.db_manager(instance._state.db or "default").filter(
        pk=instance.pk)
    found = list(rows.annotate(_membound_len=Length(field_name)).values_list("_membound_len")[:1])
    if not found:
        raise NotFoundError(
            f"{model.__name__} with pk={instance.pk!r} no longer exists; nothing to stream"
        )
    length = found[0][0]
    if length is None:
        return
    for start in range(1, length + 1, piece):
        values = rows.annotate(
            _membound_piece=Substr(field_name, start, piece)
        ).values_list("_membound_piece", flat=True)
        chunk = next(iter(values[:1]), None)
        if chunk is None:
            return
        yield bytes(chunk) if isinstance(chunk, memoryview) else chunk
