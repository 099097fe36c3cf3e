"""ConnectorX ``read_sql(return_type="arrow_stream")``, each RecordBatch to a ParquetWriter.

ConnectorX's streaming mode: batches of ``batch_size`` rows.
"""

from __future__ import annotations

import os

import connectorx as cx
import pyarrow.parquet as pq

from _common import ROWS_PER_BATCH, ExportOptions, run_contestant


def export(options: ExportOptions) -> None:
    uri = "sqlite://" + os.path.abspath(options.source)
    reader = cx.read_sql(uri, options.query, return_type="arrow_stream", batch_size=ROWS_PER_BATCH)
    with pq.ParquetWriter(options.output, reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)


if __name__ == "__main__":
    run_contestant(export)
