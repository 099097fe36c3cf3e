"""membound's Python API: ``membound.copy("leveldb:////abs/dir", "out.parquet")``.

``--table`` names the store kind (leveldb, lmdb, rocksdb); SOURCE is its directory.
"""

from __future__ import annotations

# isort: off
import membound  # first, as membound's docs say: it tunes pyarrow's allocator before it loads

import lmdb  # noqa: F401 (the baseline holds what the run imports, as the loop's does)
import membound.backends.leveldb  # noqa: F401
import membound.backends.lmdb  # noqa: F401
import membound.backends.rocksdb  # noqa: F401
import plyvel  # noqa: F401
import pyarrow.parquet  # noqa: F401
import rocksdict  # noqa: F401
from _common import ExportOptions, run_contestant

# isort: on


def export(options: ExportOptions) -> str:
    report = membound.copy(f"{options.table}:///{options.source}", options.output,
                           max_memory=options.budget)
    return str(report)


if __name__ == "__main__":
    run_contestant(export)
