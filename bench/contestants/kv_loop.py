"""The hand-written export of an embedded store: iterate it, 10,000 pairs per row group.

``--table`` names the store kind (leveldb, lmdb, rocksdb); SOURCE is its directory.
"""

from __future__ import annotations

import lmdb
import plyvel
import pyarrow as pa
import pyarrow.parquet as pq
import rocksdict

from _common import ROWS_PER_BATCH, ExportOptions, run_contestant

SCHEMA = pa.schema([("key", pa.binary()), ("value", pa.binary())])


def _pairs(store: str, path: str):
    if store == "leveldb":
        db = plyvel.DB(path)
        try:
            yield from db.iterator()
        finally:
            db.close()
    elif store == "lmdb":
        env = lmdb.open(path, readonly=True, lock=False)
        try:
            with env.begin() as txn:
                yield from txn.cursor().iternext()
        finally:
            env.close()
    else:
        options = rocksdict.Options(raw_mode=True)
        db = rocksdict.Rdict(path, options, access_type=rocksdict.AccessType.read_only())
        try:
            yield from db.items()
        finally:
            db.close()


def export(options: ExportOptions) -> None:
    with pq.ParquetWriter(options.output, SCHEMA) as writer:
        keys: list[bytes] = []
        values: list[bytes] = []
        for key, value in _pairs(options.table, options.source):
            keys.append(key)
            values.append(value)
            if len(keys) == ROWS_PER_BATCH:
                writer.write_table(pa.table({"key": keys, "value": values}, schema=SCHEMA))
                keys, values = [], []
        if keys:
            writer.write_table(pa.table({"key": keys, "value": values}, schema=SCHEMA))


if __name__ == "__main__":
    run_contestant(export)
