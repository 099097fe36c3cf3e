"""membound's Python API: ``membound.copy("pairs.parquet", "redis://host/12?table=strings")``."""

from __future__ import annotations

# isort: off
import membound  # first, as membound's docs say: it tunes pyarrow's allocator before it loads

import membound.backends.redis  # noqa: F401 (the baseline holds what the run imports)
import pyarrow.parquet  # noqa: F401
import redis  # noqa: F401
from _common import ExportOptions, run_contestant

# isort: on

LOAD_DB = 12


def export(options: ExportOptions) -> str:
    url, _, parquet = options.source.split("|")
    base = url.rsplit("/", 1)[0]
    report = membound.copy(parquet, f"{base}/{LOAD_DB}?table=strings", max_memory=options.budget,
                           mode="fail")
    return str(report)


if __name__ == "__main__":
    run_contestant(export)
