"""pandas ``read_sql(chunksize=...)`` on a sqlite3 connection, each chunk to a ParquetWriter.

The streaming way to use pandas: bounded by a row count, not by bytes.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from _common import ROWS_PER_BATCH, ExportOptions, run_contestant


def export(options: ExportOptions) -> None:
    writer: pq.ParquetWriter | None = None
    with closing(sqlite3.connect(options.source)) as connection:
        try:
            for chunk in pd.read_sql(options.query, connection, chunksize=ROWS_PER_BATCH):
                if writer is None:
                    table = pa.Table.from_pandas(chunk, preserve_index=False)
                    writer = pq.ParquetWriter(options.output, table.schema)
                else:
                    # The first chunk's schema, so a chunk of all-NULLs cannot change a type.
                    table = pa.Table.from_pandas(chunk, schema=writer.schema, preserve_index=False)
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()


if __name__ == "__main__":
    run_contestant(export)
