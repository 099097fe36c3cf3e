"""membound's Python API: ``membound.copy("mysql://...?table=events_N", OUT.parquet, ...)``."""

from __future__ import annotations

# isort: off
import contextlib
import membound  # first, as membound's docs say: it tunes pyarrow's allocator before it loads

import pymysql  # noqa: F401 (see below)

with contextlib.suppress(ImportError):  # membound reads through mysqlclient when installed
    import MySQLdb  # noqa: F401
# No pandas: membound's MySQL backend takes rows into Arrow without pa.array, which would
# import it (copy() notes it in the report if it ever does).

import pyarrow.parquet  # noqa: F401 (see below)
from _common import ExportOptions, run_contestant

# isort: on

# The copy loads its driver (PyMySQL) and pyarrow.parquet lazily; they are
# imported here so that the import baseline holds the same libraries as the peers' baselines, and
# "above baseline" is the memory the work itself took.


def export(options: ExportOptions) -> str:
    report = membound.copy(
        options.source, options.output, source_table=options.table, max_memory=options.budget
    )
    return str(report)


if __name__ == "__main__":
    run_contestant(export)
