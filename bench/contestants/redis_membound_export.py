"""membound's Python API: ``membound.copy("redis://...?match=prefix*", "out.parquet")``."""

from __future__ import annotations

# isort: off
import membound  # first, as membound's docs say: it tunes pyarrow's allocator before it loads

import membound.backends.redis  # noqa: F401 (the baseline holds what the run imports)
import pyarrow.parquet  # noqa: F401
import redis  # noqa: F401
from _common import ExportOptions, run_contestant

# isort: on


def export(options: ExportOptions) -> str:
    url, prefix, _ = options.source.split("|")
    report = membound.copy(f"{url}?table=strings&match={prefix}*", options.output,
                           max_memory=options.budget)
    return str(report)


if __name__ == "__main__":
    run_contestant(export)
