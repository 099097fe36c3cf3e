"""The command line every contestant script shares, kept to the standard library.

A contestant script imports what it needs at module level, defines ``export(options)`` and calls
``run_contestant(export)``. The harness runs it twice per repeat:

- ``--imports-only``: exit right after the imports. Its peak RSS is the contestant's import
  baseline, so "peak above baseline" shows what the work itself cost.
- otherwise: do the work once; the time spent in ``export`` is written as JSON to the file named
  by ``--timing`` (the harness also times the whole process from outside).

This module must stay cheap to import: it is part of every baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

# Rows per fetch or batch for the peers that take a row count. ConnectorX's own arrow_stream
# default, used for every row-counted peer so that none is tuned differently from the others.
ROWS_PER_BATCH = 10_000


@dataclass(frozen=True)
class ExportOptions:
    """What the harness passes to an export contestant."""

    source: str  # a path for SQLite; a URL for server databases
    output: str  # the Parquet file to write
    table: str
    budget: str  # the byte budget for membound; peers ignore it

    @property
    def query(self) -> str:
        return f"SELECT * FROM {self.table}"


def run_contestant(export: Callable[[ExportOptions], object]) -> None:
    """Parse the shared command line, then run ``export`` once (or nothing, for a baseline)."""
    parser = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__)
    parser.add_argument("source")
    parser.add_argument("output")
    parser.add_argument("--table", default="events")
    parser.add_argument("--budget", default="64MB")
    parser.add_argument("--timing", help="write {'work_seconds': ...} as JSON to this file")
    parser.add_argument("--imports-only", action="store_true", help="exit after the imports")
    args = parser.parse_args()
    if args.imports_only:
        return
    options = ExportOptions(args.source, args.output, args.table, args.budget)
    started = time.perf_counter()
    details = export(options)
    work_seconds = time.perf_counter() - started
    if args.timing:
        with open(args.timing, "w") as timing:
            json.dump({"work_seconds": work_seconds, "details": details}, timing, default=str)
