"""ADBC PostgreSQL driver: ``cursor.fetch_record_batch()``, each batch to a ParquetWriter.

The driver reads by binary COPY and ends a batch at its byte hint (16 MiB by default), which is
left as it is: that is what a user of ADBC gets.
"""

from __future__ import annotations

import adbc_driver_postgresql.dbapi as adbc_postgresql
import pyarrow.parquet as pq

from _common import ExportOptions, run_contestant


def export(options: ExportOptions) -> None:
    with adbc_postgresql.connect(options.source) as connection, connection.cursor() as cursor:
        cursor.execute(options.query)
        reader = cursor.fetch_record_batch()
        with pq.ParquetWriter(options.output, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)


if __name__ == "__main__":
    run_contestant(export)
