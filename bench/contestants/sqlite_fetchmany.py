"""Hand-written loop: sqlite3 ``fetchmany`` into pyarrow, each batch to a ParquetWriter.

What a careful user writes without a library: bounded by a row count.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pyarrow as pa
import pyarrow.parquet as pq

from _common import ROWS_PER_BATCH, ExportOptions, run_contestant


def export(options: ExportOptions) -> None:
    with closing(sqlite3.connect(options.source)) as connection:
        cursor = connection.execute(options.query)
        names = [column[0] for column in cursor.description]
        writer: pq.ParquetWriter | None = None
        try:
            while rows := cursor.fetchmany(ROWS_PER_BATCH):
                columns = list(zip(*rows, strict=True))
                if writer is None:
                    batch = pa.RecordBatch.from_arrays([pa.array(c) for c in columns], names=names)
                    writer = pq.ParquetWriter(options.output, batch.schema)
                else:
                    schema = writer.schema
                    arrays = [
                        pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=True)
                    ]
                    batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
                writer.write_batch(batch)
        finally:
            if writer is not None:
                writer.close()


if __name__ == "__main__":
    run_contestant(export)
