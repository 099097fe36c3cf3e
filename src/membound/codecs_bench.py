"""Measure every codec on a sample of your own data: what ``membound codecs`` prints.

``measure_codecs(source, table="events")`` reads at most ``sample`` bytes (Arrow size) of a
table or query, stops reading there, and encodes and decodes the sample with every serializer x
compressor at its default level, reporting for each: the encoded size and its ratio to the
sample's Arrow size, encode and decode speed (Arrow megabytes per second, so every codec is
timed on the same amount of data), and the peak memory one value's round trip needed. Then it
recommends one (:data:`RECOMMEND_SLOWDOWN`).

What a value is: without ``column``, a page of ``rows_per_value`` rows, as a cached query result
holds them (a list of tuples; a ``RecordBatch`` for ``arrow``); with ``column``, one value of that
column, as ``copy(compress=...)`` encodes it.
"""

from __future__ import annotations

import gc
import re
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from membound.backends.base import SQL, open_backend
from membound.batching import batch_nbytes, batch_to_rows
from membound.budget import DEFAULT_MAX_MEMORY, Budget, format_size, parse_size
from membound.codecs import HEADER_SIZE, Codec, get_codec
from membound.errors import CodecError, ConfigurationError, MissingDriverError
from membound.urls import parse_url

__all__ = ["CodecResult", "CodecsReport", "measure_codecs", "measure_sample", "read_sample"]

DEFAULT_SAMPLE = "10MB"
# A page of rows per value: the size of a typical cached query result, and large enough for a
# compressor to find the repetition between rows.
DEFAULT_ROWS_PER_VALUE = 1000
# Timed runs per codec, keeping the fastest (the least disturbed by other work on the machine)...
TIMED_RUNS = 3
# ...unless one codec's runs have already taken this long: a slow codec on a big sample is not
# worth a minute of the user's time to time precisely.
MAX_SECONDS_PER_CODEC = 1.0
# Peak memory is traced (tracemalloc, several times slower) on this many values, not all.
MEMORY_VALUES = 5
# The recommendation: the smallest output among the codecs whose encode + decode time is at most
# this many times the fastest codec's. Within 3x, size usually matters more (memory, network);
# past it, the time is what users notice.
RECOMMEND_SLOWDOWN = 3.0

SERIALIZERS = ("bytes", "json", "msgpack", "arrow", "pickle")
COMPRESSORS = (None, "lz4", "zstd", "zlib", "gzip")
# Never recommended: unpickling runs code, so it is only for a process's own private storage.
NOT_RECOMMENDED = ("pickle",)


@dataclass(frozen=True)
class CodecResult:
    """One codec on the sample. Sizes in bytes, speeds in Arrow MB (10^6 bytes) per second."""

    codec: str
    serializer: str
    encoded_bytes: int = 0
    ratio: float = 0.0
    encode_mb_s: float = 0.0
    decode_mb_s: float = 0.0
    peak_memory: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def seconds_per_mb(self) -> float:
        """Encode plus decode time for one MB of sample: what the recommendation compares."""
        return 1 / self.encode_mb_s + 1 / self.decode_mb_s


@dataclass
class CodecsReport:
    """What :func:`measure_codecs` found; ``str()`` and ``rich`` print it as a table."""

    source: str
    column: str | None
    rows: int
    values: int
    sample_bytes: int
    rows_per_value: int = DEFAULT_ROWS_PER_VALUE
    results: list[CodecResult] = field(default_factory=list)
    recommended: str | None = None
    reason: str = ""
    recommended_for_rows: str | None = None

    def result(self, codec: str) -> CodecResult:
        return next(result for result in self.results if result.codec == codec)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def header(self) -> str:
        unit = (
            f"one value of column {self.column!r}"
            if self.column
            else f"a page of {self.rows_per_value:,} rows"
        )
        return (
            f"{self.source}: sample of {self.rows:,} rows, {format_size(self.sample_bytes)} "
            f"as Arrow, {self.values:,} values (a value is {unit})"
        )

    def table_rows(self) -> list[tuple[str, ...]]:
        rows = []
        failed_alike = (
            {
                serializer
                for serializer in SERIALIZERS
                if len({result.error for result in self.results if result.serializer == serializer})
                == 1
                and not self.result(serializer).ok
            }
            if self.results
            else set()
        )
        for result in self.results:
            if result.serializer in failed_alike:
                if result.codec == result.serializer:  # one row for all its compressors
                    label = (
                        "bytes and compressors alone"
                        if result.serializer == "bytes"
                        else f"{result.serializer}, with any compressor"
                    )
                    rows.append((label, "-", "-", "-", "-", "-", result.error or ""))
                continue
            if not result.ok:
                rows.append((result.codec, "-", "-", "-", "-", "-", result.error or ""))
                continue
            mark = (
                "recommended"
                if result.codec == self.recommended
                else ("for rows" if result.codec == self.recommended_for_rows else "")
            )
            rows.append(
                (
                    result.codec,
                    format_size(result.encoded_bytes),
                    f"{result.ratio:.2f}",
                    f"{result.encode_mb_s:,.0f}",
                    f"{result.decode_mb_s:,.0f}",
                    format_size(result.peak_memory),
                    mark,
                )
            )
        return rows

    def footer(self) -> list[str]:
        lines = []
        if self.recommended:
            lines.append(f"recommended: {self.recommended} ({self.reason})")
        else:
            lines.append(f"no recommendation: {self.reason}")
        if self.recommended_for_rows:
            lines.append(
                f"for Python rows (Cache.query, Cache.set of tuples): {self.recommended_for_rows}"
            )
        lines.append(
            "ratio: sample's Arrow size / encoded size (higher is smaller); MB/s: Arrow "
            "MB per second; peak: Python allocations for one value's encode + decode "
            "(tracemalloc; compressor contexts outside Python, ~1-4 MB per thread for "
            "zstd, are not counted)"
        )
        return lines

    _COLUMNS = ("codec", "encoded", "ratio", "encode MB/s", "decode MB/s", "peak", "")

    def __str__(self) -> str:
        rows = [self._COLUMNS, *self.table_rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self._COLUMNS))]
        lines = [self.header()]
        for row in rows:
            cells = [row[0].ljust(widths[0])]
            cells += [
                cell.rjust(width) for cell, width in zip(row[1:-1], widths[1:-1], strict=True)
            ]
            cells.append(row[-1])
            lines.append("  ".join(cells).rstrip())
        return "\n".join([*lines, *self.footer()])

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(title=Text(self.header()), title_justify="left")
        for index, name in enumerate(self._COLUMNS):
            table.add_column(name, justify="left" if index in (0, 6) else "right")
        for row in self.table_rows():
            style = "bold green" if row[-1] == "recommended" else ("dim" if row[1] == "-" else None)
            table.add_row(*row, style=style)
        footer = self.footer()
        return Group(table, Text(footer[0], style="bold"), *[Text(line) for line in footer[1:]])


def read_sample(
    source: str,
    *,
    query: str | None = None,
    params: Sequence[Any] | dict[str, Any] | None = None,
    table: str | None = None,
    column: str | None = None,
    sample: int | str = DEFAULT_SAMPLE,
    max_memory: Budget | int | str = DEFAULT_MAX_MEMORY,
) -> list[pa.RecordBatch]:
    """The first ``sample`` bytes (Arrow size) of a table or query, as record batches.

    Reads batch by batch through the backend and stops reading, closing the stream, once the
    sample is collected; the last batch is cut to fit. With ``column``, only that column is kept
    (and counted). Raises :class:`ConfigurationError` for a missing column, naming those there
    are, and the backends' errors for a missing source.
    """
    limit = parse_size(sample)
    if query and table:
        raise ConfigurationError("give either a query or a table, not both")
    url = parse_url(source)
    what = SQL(query) if query else table or url.table
    budget = Budget.coerce(max_memory)
    batches: list[pa.RecordBatch] = []
    collected = 0
    with open_backend(url, budget=budget) as reader:
        if what is None:
            names = reader.tables() if hasattr(reader, "tables") else []
            if len(names) == 1:
                what = names[0]
        stream = reader.batches(what, params, budget=budget)
        try:
            for batch in stream:
                if column is not None:
                    if batch.schema.get_field_index(column) < 0:
                        raise ConfigurationError(
                            f"no column {column!r} in the source; its columns are "
                            f"{', '.join(batch.schema.names)}"
                        )
                    batch = batch.select([column])
                size = batch_nbytes(batch)
                if collected + size > limit and batch.num_rows > 1:
                    rows = max(1, int(batch.num_rows * (limit - collected) / size))
                    batch = batch.slice(0, rows)
                    size = batch_nbytes(batch)
                batches.append(batch)
                collected += size
                if collected >= limit:
                    break
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
    return batches


def _values(
    batches: list[pa.RecordBatch], column: str | None, serializer: str, rows_per_value: int
) -> list[Any]:
    """The sample as the values a codec with ``serializer`` would be given."""
    if column is not None:
        if serializer == "arrow":
            raise _NotApplicable("arrow encodes tables, not one value; measure without --column")
        values: list[Any] = []
        for batch in batches:
            array = batch.column(0)
            if serializer == "bytes":
                if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
                    array = array.cast(pa.binary())
                elif not (pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type)):
                    raise _NotApplicable(f"takes text or binary columns, not {array.type}")
            values.extend(value for value in array.to_pylist() if value is not None)
        return values
    if serializer == "bytes":
        raise _NotApplicable("takes one text or binary value; measure a column with --column")
    # One chunk first, so that every page but the last has rows_per_value rows.
    table = pa.Table.from_batches(batches).combine_chunks()
    pages = table.to_batches(max_chunksize=rows_per_value)
    if serializer == "arrow":
        return pages
    return [list(batch_to_rows(page)) for page in pages]


class _NotApplicable(Exception):
    """This serializer cannot take this kind of value at all (not a failure of the data)."""


def _time(func: Any, items: list[Any]) -> tuple[float, list[Any]]:
    started = time.perf_counter()
    out = [func(item) for item in items]
    return time.perf_counter() - started, out


def _peak_memory(codec: Codec, values: list[Any]) -> int:
    """The most Python memory one value's encode + decode allocated, over a few values."""
    peak = 0
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        for value in values[:MEMORY_VALUES]:
            tracemalloc.reset_peak()
            baseline = tracemalloc.get_traced_memory()[0]
            decoded = codec.decode(codec.encode(value))
            peak = max(peak, tracemalloc.get_traced_memory()[1] - baseline)
            del decoded
    finally:
        if started:
            tracemalloc.stop()
    return peak


def _measure_one(
    codec: Codec, serializer: str, values: list[Any], sample_bytes: int
) -> CodecResult:
    best_encode = best_decode = float("inf")
    spent = 0.0
    payloads: list[bytes] = []
    for _ in range(TIMED_RUNS):
        # Paused: a collection landing in one codec's run would charge it for the sample's
        # Python objects, which every codec shares.
        gc.disable()
        try:
            encode_s, payloads = _time(codec.encode, values)
            decode_s, decoded = _time(codec.decode, payloads)
            del decoded
        finally:
            gc.enable()
        best_encode, best_decode = min(best_encode, encode_s), min(best_decode, decode_s)
        spent += encode_s + decode_s
        if spent > MAX_SECONDS_PER_CODEC:
            break
    encoded = sum(map(len, payloads))
    megabytes = sample_bytes / 1e6
    # A clock tick is the floor, so a tiny sample reports a huge speed rather than dividing by 0.
    tick = time.get_clock_info("perf_counter").resolution
    return CodecResult(
        codec=codec.name,
        serializer=serializer,
        encoded_bytes=encoded,
        ratio=sample_bytes / encoded if encoded else 0.0,
        encode_mb_s=megabytes / max(best_encode, tick),
        decode_mb_s=megabytes / max(best_decode, tick),
        peak_memory=_peak_memory(codec, values),
    )


def _codecs() -> Iterator[tuple[str, str]]:
    for serializer in SERIALIZERS:
        for compressor in COMPRESSORS:
            if compressor is None:
                yield serializer, serializer
            elif serializer == "bytes":
                yield serializer, compressor
            else:
                yield serializer, f"{serializer}+{compressor}"


def _recommend(
    results: list[CodecResult], serializers: Sequence[str]
) -> tuple[CodecResult, CodecResult] | None:
    """(the recommended codec, the fastest one it was compared with), or None."""
    candidates = [
        result
        for result in results
        if result.ok
        and result.serializer in serializers
        and result.serializer not in NOT_RECOMMENDED
        and result.codec != "bytes"  # the value as it is: "leave it", not a codec to use
    ]
    if not candidates:
        return None
    fastest = min(candidates, key=lambda result: result.seconds_per_mb)
    quick_enough = [
        result
        for result in candidates
        if result.seconds_per_mb <= RECOMMEND_SLOWDOWN * fastest.seconds_per_mb
    ]
    best = min(quick_enough, key=lambda result: (result.encoded_bytes, result.seconds_per_mb))
    return best, fastest


def measure_sample(
    batches: list[pa.RecordBatch],
    *,
    column: str | None = None,
    rows_per_value: int = DEFAULT_ROWS_PER_VALUE,
    source: str = "sample",
) -> CodecsReport:
    """Measure every serializer x compressor on ``batches`` (see the module docstring).

    A codec that cannot hold the data (JSON and a timestamp, say) gets a row with the reason
    instead of figures; a codec whose package is missing says which extra installs it. Memory:
    the sample, its Python values for one serializer at a time, and their payloads.
    """
    if rows_per_value < 1:
        raise ConfigurationError(f"rows_per_value must be at least 1, got {rows_per_value}")
    if column is not None and batches and batches[0].num_columns != 1:
        batches = [batch.select([column]) for batch in batches]
    rows = sum(batch.num_rows for batch in batches)
    sample_bytes = sum(map(batch_nbytes, batches))
    report = CodecsReport(
        source=source,
        column=column,
        rows=rows,
        values=0,
        sample_bytes=sample_bytes,
        rows_per_value=rows_per_value,
    )
    if rows == 0:
        report.reason = "the source has no rows to measure"
        return report
    values_by_serializer: dict[str, list[Any] | str] = {}
    for serializer, name in _codecs():
        if serializer not in values_by_serializer:
            try:
                values_by_serializer[serializer] = _values(
                    batches, column, serializer, rows_per_value
                )
            except _NotApplicable as exc:
                values_by_serializer[serializer] = f"n/a: {exc}"
        values = values_by_serializer[serializer]
        if isinstance(values, str):
            report.results.append(CodecResult(name, serializer, error=values))
            continue
        report.values = max(report.values, len(values))
        try:
            codec = get_codec(name, trusted=serializer == "pickle")
            report.results.append(_measure_one(codec, serializer, values, sample_bytes))
        except MissingDriverError as exc:
            report.results.append(
                CodecResult(
                    name, serializer, error=f"not installed: pip install 'membound[{exc.extra}]'"
                )
            )
        except CodecError as exc:
            report.results.append(CodecResult(name, serializer, error=_short(str(exc))))
    recommendation = _recommend(report.results, SERIALIZERS)
    if recommendation is None:
        report.reason = "no codec could encode this data"
        return report
    best, fastest = recommendation
    if column is not None and best.ratio <= 1:
        report.reason = (
            f"no codec makes column {column!r} smaller than it is (each payload adds a "
            f"{HEADER_SIZE}-byte header, and these values are too short to compress): leave it "
            "as it is"
        )
        return report
    report.recommended = best.codec
    size = (
        f"{best.ratio:.1f}x smaller than the sample as Arrow"
        if best.ratio >= 1
        else f"{1 / best.ratio:.1f}x larger than the sample as Arrow"
    )
    report.reason = (
        f"{size}: the smallest output among the codecs at most {RECOMMEND_SLOWDOWN:g}x slower "
        f"to encode + decode than the fastest, {fastest.codec}; pickle is never recommended"
    )
    if column is None and best.serializer == "arrow":
        for_rows = _recommend(report.results, ("json", "msgpack"))
        report.recommended_for_rows = for_rows[0].codec if for_rows else None
    return report


def _short(message: str) -> str:
    """A codec error, without the advice that follows its first clause."""
    first = message.split("; ")[0]
    return re.sub(r"^the '[^']+' codec cannot encode this value: ", "cannot encode: ", first)


def measure_codecs(
    source: str,
    *,
    query: str | None = None,
    params: Sequence[Any] | dict[str, Any] | None = None,
    table: str | None = None,
    column: str | None = None,
    sample: int | str = DEFAULT_SAMPLE,
    rows_per_value: int = DEFAULT_ROWS_PER_VALUE,
    max_memory: Budget | int | str = DEFAULT_MAX_MEMORY,
) -> CodecsReport:
    """Read a sample of ``source`` (:func:`read_sample`) and measure every codec on it
    (:func:`measure_sample`). Memory: the sample (at most ``sample`` bytes of Arrow data plus
    one batch's rows), its Python values for one serializer at a time, and their payloads.
    """
    batches = read_sample(
        source,
        query=query,
        params=params,
        table=table,
        column=column,
        sample=sample,
        max_memory=max_memory,
    )
    label = parse_url(source).display
    what = "query" if query else table or parse_url(source).table
    if what and not parse_url(source).table:
        label += f" [{what}]"
    return measure_sample(batches, column=column, rows_per_value=rows_per_value, source=label)
