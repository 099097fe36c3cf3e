"""The copy pipeline: source -> byte-sized Arrow batches -> sink, measured into a RunReport.

Column codecs ride along: ``compress={"payload": "zstd"}`` encodes a column's values into a binary
column as batches flow, ``decompress=["payload"]`` decodes one back; see :class:`ColumnCodecs`.
"""

from __future__ import annotations

import base64
import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from membound.backends.base import SQL, WriteMode, check_mode, open_backend
from membound.batching import batch_nbytes
from membound.budget import DEFAULT_MAX_MEMORY, Budget, Policy
from membound.codecs import Codec, decode_column, encode_column, get_codec
from membound.errors import CodecError, ConfigurationError, SchemaError
from membound.memory import RSSSampler, measure, system_arrow_pool, warm_up
from membound.prefetch import prefetch
from membound.report import RunReport
from membound.urls import backend_class, parse_url

__all__ = ["ColumnCodecs", "ProgressCallback", "copy"]

#: Called after every batch with (rows so far, bytes so far, estimated total rows or None).
ProgressCallback = Callable[[int, int, "int | None"], None]

# Timeline resolution for the report: fine enough to see each batch, coarse enough to cost
# nothing measurable.
TIMELINE_INTERVAL_S = 0.02

# Serializers a column codec may use: one plain Python value per row. (arrow holds tables,
# protobuf needs a message class, pickle needs trusted=True: none fits a column option.)
COLUMN_SERIALIZERS = ("bytes", "json", "msgpack")
# Field metadata on an encoded column: the codec's name, and the column's original Arrow type
# (a one-field Arrow schema, base64) so that decompressing restores it exactly. Parquet and Arrow
# files keep field metadata; SQL databases and CSV do not.
CODEC_METADATA_KEY = b"membound.codec"
# Not LOGICAL_TYPE_KEY ("membound.type", json/uuid marks), which an encoded column may carry too.
TYPE_METADATA_KEY = b"membound.original_type"


def copy(
    source: str | Path,
    target: str | Path,
    *,
    query: str | None = None,
    params: Sequence[Any] | dict[str, Any] | None = None,
    source_table: str | None = None,
    target_table: str | None = None,
    max_memory: Budget | int | str = DEFAULT_MAX_MEMORY,
    policy: Policy = "adapt",
    mode: WriteMode = "fail",
    key: Sequence[str] | str | None = None,
    progress: ProgressCallback | None = None,
    compress: Mapping[str, Codec | str] | None = None,
    decompress: Iterable[str] | Mapping[str, pa.DataType | str | None] | None = None,
) -> RunReport:
    """Copy a table or a query's result from ``source`` to ``target`` inside a memory budget.

    ``source`` and ``target`` are URLs (``sqlite:///app.db``, ``postgresql://host/db``) or file
    paths (``events.parquet``, ``out.csv``). What is read: ``query``, else ``source_table``, else
    the source URL's ``?table=``. Where it goes: ``target_table``, else the target URL's
    ``?table=``, else the source table's name.

    ``compress={"payload": "zstd"}`` encodes each value of a column with a codec on the way
    (``"zstd"`` for text or binary columns, ``"msgpack+zstd"`` for any); ``decompress=["payload"]``
    decodes such a column back, to its original type when the source kept it (Parquet, Arrow)
    or to a type given as ``decompress={"payload": "string"}``; see :class:`ColumnCodecs`.

    Data moves in batches sized in bytes from ``max_memory``; nothing holds the whole result.
    Returns a :class:`RunReport`. Raises :class:`~membound.errors.MemboundError` subclasses with
    a sentence saying what to do; a failed write leaves the target as it was (``append`` says how
    many rows it committed instead, see :class:`~membound.errors.PartialWriteError`).
    """
    budget = max_memory if isinstance(max_memory, Budget) else Budget(max_memory, policy=policy)
    check_mode(mode, key)
    column_codecs = ColumnCodecs(compress, decompress)
    if query and source_table:
        raise ConfigurationError("give either a query or a source table, not both")
    source_url = parse_url(source)
    target_url = parse_url(target)
    what = SQL(query) if query else source_table or source_url.table
    if params and not query:
        raise ConfigurationError("params go with a query; pass query= too")
    to_table = target_table or target_url.table
    if to_table is None and target_url.scheme != "file" and not query:
        to_table = what

    report = RunReport(
        source=source_url.display + (f" [{what}]" if what and not source_url.table else ""),
        target=target_url.display + (f" [{to_table}]" if to_table and not target_url.table
                                     and target_url.scheme != "file" else ""),
        budget=budget.max_memory,
        mode=mode,
    )
    report.notes.extend(
        [f"column {name!r} encoded with {codec.name!r}" for name, codec in
         column_codecs.compress.items()]
        + [f"column {name!r} decoded" for name in column_codecs.decompress]
    )
    # Import the backends' modules and pay one-time costs before the measured region starts.
    source_class = backend_class(source_url)
    target_class = backend_class(target_url)
    # Backends that build Arrow arrays from Python values make pyarrow import pandas (~50 MB)
    # on first use; that is an import, not the copy's memory, so it is paid here.
    warm_up(conversion=bool(source_class.converts_python_values_for(source_url, reading=True)
                            or target_class.converts_python_values_for(target_url,
                                                                       reading=False)))
    pandas_before = "pandas" in sys.modules
    meter = _Meter(report, progress)
    sampler = RSSSampler(TIMELINE_INTERVAL_S)
    region = measure()
    with system_arrow_pool(budget.max_memory), region as m, sampler, \
            open_backend(source_url, budget=budget) as reader, \
            open_backend(target_url, budget=budget) as writer:
        if to_table is None and target_url.scheme != "file":
            to_table = getattr(reader, "default_table", None) or _single_table(reader)
        with contextlib.suppress(Exception):
            meter.total = reader.estimate_rows(what)
        t0 = time.perf_counter()
        writer.write(
            to_table,
            column_codecs.wrap(meter.wrap(prefetch(
                reader.batches(what, params, budget=budget),
                alone=lambda batch: batch_nbytes(batch) > budget.batch_bytes,
            ))),
            mode=mode,
            key=key,
            budget=budget,
        )
        report.seconds = time.perf_counter() - t0
    report.start_rss = m.start_rss
    report.peak_rss = m.peak_rss
    report.end_rss = m.end_rss
    report.exact_peak = m.exact_peak
    report.timeline = [(round(t, 3), rss) for t, rss in sampler.samples]
    if getattr(sys.modules.get("membound"), "ALLOCATOR_UNTUNED", False):
        report.notes.append(
            "pyarrow was imported before membound, so its allocator (mimalloc) keeps freed "
            "memory (measured: up to 20 MB more peak); import membound first, or set "
            "MIMALLOC_PURGE_DELAY=0 MIMALLOC_ARENA_EAGER_COMMIT=0 in the environment"
        )
    if not pandas_before and "pandas" in sys.modules:
        report.notes.append(
            "pyarrow imported pandas during the run (its first conversion of Python objects): "
            "about 50 MB once per process, counted in the peak above"
        )
    return report


def _single_table(reader: Any) -> str | None:
    tables = getattr(reader, "tables", None)
    if tables is None:
        return None
    names = tables()
    return names[0] if len(names) == 1 else None


class _Meter:
    """Counts what flows through the pipeline and reports progress, batch by batch."""

    def __init__(self, report: RunReport, progress: ProgressCallback | None) -> None:
        self.report = report
        self.progress = progress
        self.total: int | None = None

    def wrap(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        iterator = iter(batches)
        try:
            for batch in iterator:
                self.report.add_batch(batch.num_rows, batch_nbytes(batch))
                if self.progress is not None:
                    self.progress(self.report.rows, self.report.bytes, self.total)
                yield batch
                # Let go before the source makes the next one: two batches alive at once is
                # what a budget must not have to pay for (a 20 MB value would count twice).
                del batch
        finally:
            # Close the source's generator now, so its cursor is released even when the sink
            # stops early or fails.
            close = getattr(iterator, "close", None)
            if close is not None:
                close()


class ColumnCodecs:
    """Encodes and decodes named columns of a batch stream, batch by batch.

    ``ColumnCodecs(compress={"payload": "zstd"}, decompress=["body"])``; ``wrap(batches)`` is a
    generator that transforms each batch as it passes, holding nothing between batches.

    - Compressing turns a column into a binary column of codec payloads (nulls stay null) and
      records the codec and the original Arrow type in the field's metadata. A compressor-only
      codec (``"zstd"``, ``"lz4"``) takes text (stored as its UTF-8 bytes) or binary columns;
      ``"json"``/``"msgpack"`` codecs, with or without a compressor, take any column.
    - Decompressing reads each payload from its own header (any codec), and gives the column
      the type named for it, else the original type recorded in its metadata, else the type
      pyarrow infers from the first batch (later batches are converted to it). A source that
      dropped the metadata (SQL databases, CSV) gives bytes back for a compressor-only codec:
      name the type (``"string"``) to get text.

    Raises :class:`ConfigurationError` for a column that is missing (naming those there are),
    in both lists, or of a type the codec cannot take; :class:`CodecError` for an unknown codec;
    :class:`SchemaError` naming the column when a decoded value does not fit its type. Memory:
    about three times one batch's column at once (its Python values, their payloads, the result).
    """

    def __init__(
        self,
        compress: Mapping[str, Codec | str] | None = None,
        decompress: Iterable[str] | Mapping[str, pa.DataType | str | None] | None = None,
    ) -> None:
        self.compress: dict[str, Codec] = {}
        for name, codec in (compress or {}).items():
            codec = get_codec(codec) if isinstance(codec, str) else codec
            if codec.serializer.name not in COLUMN_SERIALIZERS:
                raise ConfigurationError(
                    f"column {name!r}: the {codec.name!r} codec does not fit a column option; "
                    f"use a compressor ('zstd') or a {', '.join(COLUMN_SERIALIZERS[1:])} codec "
                    "such as 'msgpack+zstd'"
                )
            self.compress[name] = codec
        items = decompress.items() if isinstance(decompress, Mapping) else (
            (name, None) for name in decompress or ())
        self.decompress: dict[str, pa.DataType | None] = {
            name: _arrow_type(name, wanted) for name, wanted in items
        }
        both = sorted(set(self.compress) & set(self.decompress))
        if both:
            raise ConfigurationError(
                f"column(s) {', '.join(map(repr, both))} are both compressed and decompressed; "
                "name each column once"
            )
        self._checked = False

    def __bool__(self) -> bool:
        return bool(self.compress or self.decompress)

    def wrap(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """The batches with the named columns encoded or decoded; closes the source when done."""
        iterator = iter(batches)
        if not self:
            yield from iterator
            return
        try:
            for batch in iterator:
                yield self.apply(batch)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """One batch with the named columns encoded or decoded."""
        if not self._checked:
            self._check(batch.schema)
        fields = list(batch.schema)
        arrays = list(batch.columns)
        for index, field in enumerate(fields):
            if field.name in self.compress:
                fields[index], arrays[index] = self._encode(field, arrays[index])
            elif field.name in self.decompress:
                fields[index], arrays[index] = self._decode(field, arrays[index])
        schema = pa.schema(fields, metadata=batch.schema.metadata)
        return pa.RecordBatch.from_arrays(arrays, schema=schema)

    def _check(self, schema: pa.Schema) -> None:
        missing = [name for name in (*self.compress, *self.decompress)
                   if schema.get_field_index(name) < 0]
        if missing:
            raise ConfigurationError(
                f"no column {', '.join(map(repr, missing))} in the source; its columns are "
                f"{', '.join(schema.names)}"
            )
        for name, codec in self.compress.items():
            column_type = schema.field(name).type
            if codec.serializer.name == "bytes" and not (
                _is_text(column_type) or _is_binary(column_type)
            ):
                raise ConfigurationError(
                    f"column {name!r} is {column_type}; the {codec.name!r} codec compresses text "
                    f"or binary columns: pair it with a serializer, e.g. 'msgpack+{codec.name}'"
                )
        for name in self.decompress:
            column_type = schema.field(name).type
            if not _is_binary(column_type):
                raise ConfigurationError(
                    f"column {name!r} is {column_type}, not binary; decompress reads the binary "
                    "payload columns that compress writes"
                )
        self._checked = True

    def _encode(self, field: pa.Field, array: pa.Array) -> tuple[pa.Field, pa.Array]:
        codec = self.compress[field.name]
        if codec.serializer.name == "bytes" and _is_text(field.type):
            # Compressor-only codecs take bytes: text goes in as its UTF-8 bytes (a cast that
            # copies nothing); the original type, kept in the metadata, brings it back as text.
            array = array.cast(pa.large_binary() if pa.types.is_large_string(field.type)
                               else pa.binary())
        encoded = encode_column(array, codec)
        original = base64.b64encode(pa.schema([field.remove_metadata()]).serialize().to_pybytes())
        metadata = dict(field.metadata or {})
        metadata.update({CODEC_METADATA_KEY: codec.name.encode(), TYPE_METADATA_KEY: original})
        return pa.field(field.name, pa.binary(), field.nullable, metadata), encoded

    def _decode(self, field: pa.Field, array: pa.Array) -> tuple[pa.Field, pa.Array]:
        wanted = self.decompress[field.name]
        if wanted is None:
            wanted = self.decompress[field.name] = _recorded_type(field)
        try:
            decoded = decode_column(array, None, type=wanted)
        except CodecError as exc:
            raise SchemaError(f"column {field.name!r}: {exc}") from None
        if wanted is None and not pa.types.is_null(decoded.type):
            # Pin the first inferred type, so every batch the sink sees has the same schema.
            self.decompress[field.name] = decoded.type
        metadata = {key: value for key, value in (field.metadata or {}).items()
                    if key not in (CODEC_METADATA_KEY, TYPE_METADATA_KEY)}
        return pa.field(field.name, decoded.type, field.nullable, metadata or None), decoded


def _is_text(arrow_type: pa.DataType) -> bool:
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)


def _is_binary(arrow_type: pa.DataType) -> bool:
    return pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type)


def _arrow_type(column: str, wanted: pa.DataType | str | None) -> pa.DataType | None:
    """An Arrow type from a type or its alias ("string", "int64", "timestamp[us]")."""
    if wanted is None or isinstance(wanted, pa.DataType):
        return wanted
    try:
        return pa.type_for_alias(wanted)
    except (ValueError, KeyError):
        raise ConfigurationError(
            f"column {column!r}: {wanted!r} is not an Arrow type name; use one such as "
            "'string', 'binary', 'int64', 'double', 'timestamp[us]'"
        ) from None


def _recorded_type(field: pa.Field) -> pa.DataType | None:
    """The original type compress recorded in a field's metadata, when the source kept it."""
    recorded = (field.metadata or {}).get(TYPE_METADATA_KEY)
    if recorded is None:
        return None
    try:
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(recorded))).field(0).type
    except (ValueError, pa.ArrowInvalid, IndexError):
        return None  # damaged metadata: fall back to inference rather than fail the copy


class _CallableModule(type(sys)):
    """This module, callable as :func:`copy`.

    ``membound.copy`` names the function, but Python's import system sets the package attribute
    to this submodule whenever ``membound.copy`` is imported as a module (``from membound.copy
    import ...``), and ``membound`` loads its names lazily. Making the module callable keeps
    ``membound.copy(source, target, ...)`` working whichever of the two the attribute holds.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return copy(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
