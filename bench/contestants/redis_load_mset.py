"""Parquet batches + one ``MSET`` per 10,000 pairs: the fastest hand-written bulk load."""

from __future__ import annotations

import pyarrow.parquet as pq
import redis

from _common import ROWS_PER_BATCH, ExportOptions, run_contestant

LOAD_DB = 12


def export(options: ExportOptions) -> None:
    url, _, parquet = options.source.split("|")
    client = redis.Redis.from_url(f"{url.rsplit('/', 1)[0]}/{LOAD_DB}", protocol=2)
    for batch in pq.ParquetFile(parquet).iter_batches(batch_size=ROWS_PER_BATCH):
        client.mset(dict(zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(),
                             strict=True)))


if __name__ == "__main__":
    run_contestant(export)
