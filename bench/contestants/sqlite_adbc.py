"""ADBC SQLite driver: ``cursor.fetch_record_batch()``, each batch to a ParquetWriter.

The driver's default is 1,024 rows per batch; it is raised to the same row count the other
chunked peers use, since tiny batches would make tiny Parquet row groups.
"""

from __future__ import annotations

import adbc_driver_sqlite
import adbc_driver_sqlite.dbapi as adbc_sqlite
import pyarrow.parquet as pq

from _common import ROWS_PER_BATCH, ExportOptions, run_contestant


def export(options: ExportOptions) -> None:
    with adbc_sqlite.connect(options.source) as connection, connection.cursor() as cursor:
        cursor.adbc_statement.set_options(
            **{adbc_driver_sqlite.StatementOptions.BATCH_ROWS.value: str(ROWS_PER_BATCH)}
        )
        cursor.execute(options.query)
        reader = cursor.fetch_record_batch()
        with pq.ParquetWriter(options.output, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)


if __name__ == "__main__":
    run_contestant(export)
