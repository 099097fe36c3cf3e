"""membound's Python API: ``membound.copy("postgresql://...?table=events_N", OUT.parquet, ...)``."""

from __future__ import annotations

# isort: off
import membound  # first, as membound's docs say: it tunes pyarrow's allocator before it loads

import membound._pgarrow  # noqa: F401 (see below)

import pyarrow.parquet  # noqa: F401 (see below)
from _common import ExportOptions, run_contestant

# isort: on

# The copy loads its driver (membound's C reader, libpq; ADBC only for types the reader does not
# decode, none in events) and pyarrow.parquet lazily; they are imported here so that the import
# baseline holds the same libraries as the peers' baselines, and "above baseline" is the memory the
# work itself took.


def export(options: ExportOptions) -> str:
    report = membound.copy(
        options.source, options.output, source_table=options.table, max_memory=options.budget
    )
    return str(report)


if __name__ == "__main__":
    run_contestant(export)
