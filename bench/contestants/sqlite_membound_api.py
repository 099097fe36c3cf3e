"""membound's Python API: ``membound.copy(source, target, source_table=..., max_memory=...)``."""

from __future__ import annotations

# isort: off
import os

import membound  # first, as membound's docs say: it tunes pyarrow's allocator before it loads

import sqlite3  # noqa: F401 (see below)

import pyarrow.parquet  # noqa: F401 (see below)
from _common import ExportOptions, run_contestant

# isort: on

# The copy loads sqlite3 and pyarrow.parquet lazily; they are imported here so that the import
# baseline holds the same libraries as the peers' baselines (every peer imports its driver and
# pyarrow.parquet at the top), and "above baseline" is the memory the work itself took.


def export(options: ExportOptions) -> str:
    source_url = "sqlite:///" + os.path.abspath(options.source)
    report = membound.copy(
        source_url, options.output, source_table=options.table, max_memory=options.budget
    )
    return str(report)


if __name__ == "__main__":
    run_contestant(export)
