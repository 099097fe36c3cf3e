"""membound's CLI: ``membound copy sqlite:///DB OUT.parquet --table events --max-memory 64MB``.

Runs the CLI's entry point in this process, exactly as the ``membound`` console script does, so
that the import baseline can be taken the same way as for the other contestants.
"""

from __future__ import annotations

# isort: off
import os
import sys

import membound.cli  # first, as membound's docs say: it tunes pyarrow's allocator before it loads

import sqlite3  # noqa: F401 (see below)

import pyarrow.parquet  # noqa: F401 (see below)
from _common import ExportOptions, run_contestant

# isort: on

# The copy loads sqlite3 and pyarrow.parquet lazily; they are imported here so that the import
# baseline holds the same libraries as the peers' baselines (every peer imports its driver and
# pyarrow.parquet at the top), and "above baseline" is the memory the work itself took.


def export(options: ExportOptions) -> None:
    source_url = "sqlite:///" + os.path.abspath(options.source)
    argv = ["copy", source_url, options.output, "--table", options.table]
    argv += ["--max-memory", options.budget]
    sys.argv = ["membound", *argv]
    try:
        membound.cli.main()
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise
    return None


if __name__ == "__main__":
    run_contestant(export)
