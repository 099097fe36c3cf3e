"""ADBC PostgreSQL driver: ``cursor.adbc_ingest(T, RecordBatchReader, mode="create")``.

The Parquet file's batches go in as a stream (one binary COPY); one commit at the end. SOURCE is
the Parquet file, OUTPUT the server URL, ``--table`` the table to create.
"""

from __future__ import annotations

import adbc_driver_postgresql.dbapi as adbc_postgresql
import pyarrow as pa
import pyarrow.parquet as pq

from _common import ROWS_PER_BATCH, ExportOptions, run_contestant


def load(options: ExportOptions) -> int:
    parquet = pq.ParquetFile(options.source)
    reader = pa.RecordBatchReader.from_batches(
        parquet.schema_arrow, parquet.iter_batches(batch_size=ROWS_PER_BATCH)
    )
    with adbc_postgresql.connect(options.output) as connection:
        with connection.cursor() as cursor:
            rows = cursor.adbc_ingest(options.table, reader, mode="create")
        connection.commit()
    return rows


if __name__ == "__main__":
    run_contestant(load)
