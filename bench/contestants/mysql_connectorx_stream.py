"""ConnectorX ``read_sql(return_type="arrow_stream")`` from MariaDB, each batch to a ParquetWriter.

ConnectorX's streaming mode: batches of ``batch_size`` rows.
"""

from __future__ import annotations

import connectorx as cx
import pyarrow.parquet as pq

from _common import ROWS_PER_BATCH, ExportOptions, run_contestant


def export(options: ExportOptions) -> None:
    reader = cx.read_sql(
        options.source, options.query, return_type="arrow_stream", batch_size=ROWS_PER_BATCH
    )
    with pq.ParquetWriter(options.output, reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)


if __name__ == "__main__":
    run_contestant(export)
