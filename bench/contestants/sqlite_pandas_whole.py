"""pandas ``read_sql`` of the whole table on a sqlite3 connection, then ``to_parquet``.

The one-liner most users write; it holds the whole result as a DataFrame.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pandas as pd

from _common import ExportOptions, run_contestant


def export(options: ExportOptions) -> None:
    with closing(sqlite3.connect(options.source)) as connection:
        frame = pd.read_sql(options.query, connection)
    frame.to_parquet(options.output, index=False)


if __name__ == "__main__":
    run_contestant(export)
