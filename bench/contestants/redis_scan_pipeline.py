"""``scan_iter`` + pipelined ``GET`` (10,000 per round trip), each round trip a Parquet row group.

What a careful user writes by hand: bounded by a key count.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import redis

from _common import ROWS_PER_BATCH, ExportOptions, run_contestant

SCHEMA = pa.schema([("key", pa.binary()), ("value", pa.binary())])


def export(options: ExportOptions) -> None:
    url, prefix, _ = options.source.split("|")
    client = redis.Redis.from_url(url, protocol=2)
    with pq.ParquetWriter(options.output, SCHEMA) as writer:
        keys: list[bytes] = []

        def flush() -> None:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.get(key)
            values = pipe.execute()
            writer.write_table(pa.table({"key": keys, "value": values}, schema=SCHEMA))
            keys.clear()

        for key in client.scan_iter(match=prefix + "*", count=1000):
            keys.append(key)
            if len(keys) == ROWS_PER_BATCH:
                flush()
        if keys:
            flush()


if __name__ == "__main__":
    run_contestant(export)
