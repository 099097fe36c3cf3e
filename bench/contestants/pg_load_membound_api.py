"""membound's Python API: ``membound.copy(EVENTS.parquet, "postgresql://...", target_table=T)``.

The harness's shared command line, read as a load: SOURCE is the Parquet file, OUTPUT the server
URL, ``--table`` the table to create.
"""

from __future__ import annotations

# isort: off
import membound  # first, as membound's docs say: it tunes pyarrow's allocator before it loads

import adbc_driver_manager  # noqa: F401 (see below)
import adbc_driver_postgresql  # noqa: F401 (see below)

import pyarrow.parquet  # noqa: F401 (see below)
from _common import ExportOptions, run_contestant

# isort: on

# The copy loads the Parquet reader and its driver lazily; they are imported here so that the
# import baseline holds the same libraries as the peers' baselines.


def load(options: ExportOptions) -> str:
    report = membound.copy(
        options.source, options.output, target_table=options.table, max_memory=options.budget
    )
    return str(report)


if __name__ == "__main__":
    run_contestant(load)
