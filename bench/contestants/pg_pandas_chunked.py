"""pandas ``read_sql(chunksize=...)`` on a streaming SQLAlchemy connection (psycopg), each chunk
to a ParquetWriter.

``stream_results=True`` makes SQLAlchemy use a server-side cursor; without it the driver holds
the whole result before pandas sees the first chunk.
"""

from __future__ import annotations

import pandas as pd
import psycopg  # noqa: F401 (the driver: part of the baseline)
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy

from _common import ROWS_PER_BATCH, ExportOptions, run_contestant

DIALECT = "postgresql+psycopg"


def export(options: ExportOptions) -> None:
    engine = sqlalchemy.create_engine(DIALECT + "://" + options.source.split("://", 1)[1])
    writer: pq.ParquetWriter | None = None
    try:
        with engine.connect().execution_options(stream_results=True) as connection:
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
        engine.dispose()


if __name__ == "__main__":
    run_contestant(export)
