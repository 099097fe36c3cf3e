"""A QuerySet as byte-sized Arrow batches, and exporting it to any membound target.

:func:`queryset_batches` reads the QuerySet with :func:`~membound.django.chunks` as tuples (no
model instances) and turns each chunk into one ``pyarrow.RecordBatch`` typed from the model's
fields. :func:`export_queryset` hands those batches to a target backend's ``write`` (Parquet,
CSV, JSONL, Arrow files, SQLite, PostgreSQL, MariaDB...) and returns the run's
:class:`~membound.RunReport`, as :func:`membound.copy` does for a URL source.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from django.conf import settings
from django.db import models
from django.db.models import QuerySet
from django.db.models.query import ModelIterable

from membound.backends.base import WriteMode, check_mode, open_backend
from membound.batching import LOGICAL_TYPE_KEY, batch_nbytes, infer_type, values_to_array
from membound.budget import DEFAULT_MAX_MEMORY, Budget, Policy
from membound.django.iteration import chunks
from membound.errors import ConfigurationError
from membound.memory import RSSSampler, measure, system_arrow_pool, warm_up
from membound.report import RunReport
from membound.urls import backend_class, parse_url

__all__ = ["arrow_field", "export_queryset", "queryset_batches"]

#: Called after every batch with (rows so far, bytes so far, estimated total rows or None).
ProgressCallback = Callable[[int, int, "int | None"], None]

# Report timeline resolution, as membound.copy's.
TIMELINE_INTERVAL_S = 0.02

_INTEGER_TYPES = {
    "AutoField", "BigAutoField", "SmallAutoField", "IntegerField", "BigIntegerField",
    "SmallIntegerField", "PositiveIntegerField", "PositiveBigIntegerField",
    "PositiveSmallIntegerField",
}
_TEXT_TYPES = {
    "CharField", "TextField", "SlugField", "EmailField", "URLField", "FilePathField",
    "FileField", "ImageField", "GenericIPAddressField", "IPAddressField",
}


def arrow_field(name: str, field: models.Field) -> tuple[pa.Field, Callable[[Any], Any] | None]:
    """The Arrow field for a Django model field, and a converter for its values (or None).

    UUIDs become canonical strings and JSON values JSON text, both marked in the field's
    metadata (``membound.type``) so that a database target restores the type.
    """
    if field.is_relation and field.target_field is not None:
        return arrow_field(name, field.target_field)
    kind = field.get_internal_type()
    if kind in _INTEGER_TYPES:
        return pa.field(name, pa.int64()), None
    if kind in _TEXT_TYPES:
        return pa.field(name, pa.string()), None
    simple = {
        "BooleanField": pa.bool_(),
        "NullBooleanField": pa.bool_(),
        "FloatField": pa.float64(),
        "BinaryField": pa.binary(),
        "DateField": pa.date32(),
        "TimeField": pa.time64("us"),
        "DurationField": pa.duration("us"),
    }
    if kind in simple:
        if kind == "BinaryField":
            return pa.field(name, simple[kind]), _to_bytes
        return pa.field(name, simple[kind]), None
    if kind == "DateTimeField":
        return pa.field(name, pa.timestamp("us", tz="UTC" if settings.USE_TZ else None)), None
    if kind == "DecimalField":
        return pa.field(name, pa.decimal128(field.max_digits, field.decimal_places)), None
    if kind == "UUIDField":
        return pa.field(name, pa.string(), metadata={LOGICAL_TYPE_KEY: b"uuid"}), _uuid_text
    if kind == "JSONField":
        return pa.field(name, pa.string(), metadata={LOGICAL_TYPE_KEY: b"json"}), _json_text
    return pa.field(name, pa.null()), None  # typed from the values of the first chunk


def _to_bytes(value: Any) -> Any:
    return bytes(value) if isinstance(value, memoryview) else value


def _uuid_text(value: Any) -> Any:
    return str(value) if isinstance(value, uuid.UUID) else value


def _json_text(value: Any) -> Any:
    return None if value is None else json.dumps(value)


def _columns(queryset: QuerySet) -> tuple[QuerySet, list[str]]:
    """A values_list() QuerySet of the columns to export, and their names."""
    if issubclass(queryset._iterable_class, ModelIterable):
        names, defer = queryset.query.deferred_loading
        fields = queryset.model._meta.concrete_fields
        if names and defer:
            fields = [f for f in fields if f.name not in names]
        elif names:
            fields = [f for f in fields if f.name in names or f.primary_key]
        columns = [f.attname for f in fields]
        return queryset.values_list(*columns), columns
    query = queryset.query
    columns = list(queryset._fields) or [
        *query.extra_select, *query.values_select, *query.annotation_select
    ]
    return queryset.values_list(*columns), columns


def _schema(queryset: QuerySet, columns: list[str]) -> tuple[list[pa.Field], list[Any]]:
    opts = queryset.model._meta
    annotations = queryset.query.annotations
    fields, converters = [], []
    for name in columns:
        field = None
        if name in annotations:
            field = getattr(annotations[name], "output_field", None)
        else:
            try:
                field = opts.get_field(name)
            except Exception:
                field = next((f for f in opts.concrete_fields if f.attname == name), None)
                if field is None and name == "pk":
                    field = opts.pk
        if field is None:
            arrow, convert = pa.field(name, pa.null()), None
        else:
            arrow, convert = arrow_field(name, field)
        fields.append(arrow)
        converters.append(convert)
    return fields, converters


def queryset_batches(
    queryset: QuerySet,
    *,
    max_memory: Budget | int | str = DEFAULT_MAX_MEMORY,
    policy: Policy = "adapt",
) -> Iterator[pa.RecordBatch]:
    """The QuerySet's rows as Arrow record batches of about ``max_memory / 16`` each.

    A model QuerySet exports its loaded concrete fields (foreign keys as ``<name>_id``);
    ``values()``/``values_list()`` export their columns. Rows come in the QuerySet's order, by
    keyset chunks (no server-side cursor, no long transaction). Raises
    :class:`~membound.errors.SchemaError` naming the column when a value does not fit its type.
    """
    budget = max_memory if isinstance(max_memory, Budget) else Budget(max_memory, policy=policy)
    rows_queryset, columns = _columns(queryset)
    fields, converters = _schema(queryset, columns)
    schema: pa.Schema | None = None
    for chunk in chunks(rows_queryset, max_memory=budget):
        values_by_column = list(zip(*chunk, strict=True))
        del chunk
        if schema is None:
            for index, field in enumerate(fields):
                if pa.types.is_null(field.type):
                    fields[index] = pa.field(field.name, infer_type(values_by_column[index]))
            schema = pa.schema(fields)
        arrays = []
        for field, convert, values in zip(schema, converters, values_by_column, strict=True):
            if convert is not None:
                values = [convert(v) for v in values]
            arrays.append(values_to_array(values, field))
        del values_by_column
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def export_queryset(
    queryset: QuerySet,
    target: str | Path,
    *,
    table: str | None = None,
    max_memory: Budget | int | str = DEFAULT_MAX_MEMORY,
    policy: Policy = "adapt",
    mode: WriteMode = "fail",
    key: list[str] | str | None = None,
    progress: ProgressCallback | None = None,
) -> RunReport:
    """Write a QuerySet to a file or database inside a memory budget; returns the report.

    ``target`` is a path (``events.parquet``, ``out.csv``, ``out.jsonl``) or a database URL
    (``postgresql://host/db``); a database table is ``table``, else the URL's ``?table=``,
    else the model's table name. ``mode`` and ``key`` are :func:`membound.copy`'s.
    """
    if not isinstance(queryset, QuerySet):
        raise ConfigurationError(
            f"export_queryset() takes a QuerySet, got {type(queryset).__name__}"
        )
    budget = max_memory if isinstance(max_memory, Budget) else Budget(max_memory, policy=policy)
    check_mode(mode, key)
    target_url = parse_url(target)
    to_table = table or target_url.table
    if to_table is None and target_url.scheme != "file":
        to_table = queryset.model._meta.db_table
    label = queryset.model._meta.label
    report = RunReport(
        source=f"{label} QuerySet [{queryset.db}]",
        target=target_url.display + (f" [{to_table}]" if to_table and not target_url.table
                                     and target_url.scheme != "file" else ""),
        budget=budget.max_memory,
        mode=mode,
    )
    backend_class(target_url)
    # Before the measured region: pyarrow's first conversion of Python objects imports pandas.
    warm_up(conversion=True)
    total = None
    if progress is not None:
        total = queryset.count()

    def metered(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            report.add_batch(batch.num_rows, batch_nbytes(batch))
            if progress is not None:
                progress(report.rows, report.bytes, total)
            yield batch
            del batch

    sampler = RSSSampler(TIMELINE_INTERVAL_S)
    region = measure()
    with system_arrow_pool(budget.max_memory), region as m, sampler, \
            open_backend(target_url, budget=budget) as writer:
        t0 = time.perf_counter()
        batches = metered(queryset_batches(queryset, max_memory=budget))
        try:
            writer.write(to_table, batches, mode=mode, key=key, budget=budget)
        finally:
            batches.close()
        report.seconds = time.perf_counter() - t0
    report.start_rss = m.start_rss
    report.peak_rss = m.peak_rss
    report.end_rss = m.end_rss
    report.exact_peak = m.exact_peak
    report.timeline = [(round(t, 3), rss) for t, rss in sampler.samples]
    return report
