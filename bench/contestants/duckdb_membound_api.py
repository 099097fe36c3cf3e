"""membound's Python API: ``membound.copy("duckdb:///...", "out.parquet", max_memory=...)``."""

from __future__ import annotations

# isort: off
import os

import membound  # first, as membound's docs say: it tunes pyarrow's allocator before it loads

import membound.backends.duckdb  # noqa: F401 (imports duckdb: in the baseline, as for the peers)
import pyarrow.parquet  # noqa: F401 (the peers import it at the top too)
from _common import ExportOptions, run_contestant

# isort: on


def export(options: ExportOptions) -> str:
    source_url = "duckdb:///" + os.path.abspath(options.source)
    report = membound.copy(
        source_url, options.output, source_table=options.table, max_memory=options.budget
    )
    return str(report)


if __name__ == "__main__":
    run_contestant(export)
