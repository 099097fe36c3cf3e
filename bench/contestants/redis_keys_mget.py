"""``KEYS prefix*`` then one ``MGET`` of them all, then ``pq.write_table``: the quick script.

Holds every key and value at once (and the server builds both replies whole).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import redis

from _common import ExportOptions, run_contestant


def export(options: ExportOptions) -> None:
    url, prefix, _ = options.source.split("|")
    client = redis.Redis.from_url(url, protocol=2)
    keys = client.keys(prefix + "*")
    values = client.mget(keys)
    pq.write_table(pa.table({"key": pa.array(keys, pa.binary()),
                             "value": pa.array(values, pa.binary())}), options.output)


if __name__ == "__main__":
    run_contestant(export)
