"""The copy pipeline: source -> byte-sized Arrow batches -> sink, measured into a RunReport."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from membound.backends.base import SQL, WriteMode, check_mode, open_backend
from membound.batching import batch_nbytes
from membound.budget import DEFAULT_MAX_MEMORY, Budget, Policy
from membound.errors import ConfigurationError
from membound.memory import RSSSampler, measure, system_arrow_pool
from membound.report import RunReport
from membound.memory import warm_up
from membound.urls import backend_class, parse_url

__all__ = ["ProgressCallback", "copy"]

#: Called after every batch with (rows so far, bytes so far, estimated total rows or None).
ProgressCallback = Callable[[int, int, "int | None"], None]

# Timeline resolution for the report: fine enough to see each batch, coarse enough to cost
# nothing measurable.
TIMELINE_INTERVAL_S = 0.02


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
) -> RunReport:
    """Copy a table or a query's result from ``source`` to ``target`` inside a memory budget.

    ``source`` and ``target`` are URLs (``sqlite:///app.db``, ``postgresql://host/db``) or file
    paths (``events.parquet``, ``out.csv``). What is read: ``query``, else ``source_table``, else
    the source URL's ``?table=``. Where it goes: ``target_table``, else the target URL's
    ``?table=``, else the source table's name.

    Data moves in batches sized in bytes from ``max_memory``; nothing holds the whole result.
    Returns a :class:`RunReport`. Raises :class:`~membound.errors.MemboundError` subclasses with
    a sentence saying what to do; a failed write leaves the target as it was (``append`` says how
    many rows it committed instead, see :class:`~membound.errors.PartialWriteError`).
    """
    budget = max_memory if isinstance(max_memory, Budget) else Budget(max_memory, policy=policy)
    check_mode(mode, key)
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
    # Import the backends' modules and pay one-time costs before the measured region starts.
    backend_class(source_url)
    backend_class(target_url)
    warm_up()
    meter = _Meter(report, progress)
    sampler = RSSSampler(TIMELINE_INTERVAL_S)
    region = measure()
    with system_arrow_pool(), region as m, sampler, open_backend(source_url, budget=budget) as reader, \
            open_backend(target_url, budget=budget) as writer:
        if to_table is None and target_url.scheme != "file":
            to_table = getattr(reader, "default_table", None) or _single_table(reader)
        with contextlib.suppress(Exception):
            meter.total = reader.estimate_rows(what)
        t0 = time.perf_counter()
        writer.write(
            to_table,
            meter.wrap(reader.batches(what, params, budget=budget)),
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
        finally:
            # Close the source's generator now, so its cursor is released even when the sink
            # stops early or fails.
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
