"""Embedded key-value stores -> Parquet: ``kv-export-leveldb``, ``kv-export-lmdb``,
``kv-export-rocksdb``.

The data: the N pairs of the Redis cases (keys ``mbbench:N:<id>``, values the ``payload`` column
of the protocol's ``events`` rows, 32-192 bytes), written once into a store of each kind under
``bench/data/`` and kept for later runs. Each case exports one store to one Parquet file of
``(key, value)``: membound against the loop a user writes by hand (iterate the store, collect
10,000 pairs, write them as a row group). The checksum is the one of the Redis cases (a hash
per pair, summed), so it depends on neither order nor batching.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from cases.base import Case, Contestant, Dataset
from cases.redis_export import _pairs, pairs_checksum, verify_export
from checksum import Verification
from data import DATA_DIR

STORES = ("leveldb", "lmdb", "rocksdb")
BUILD_CHUNK = 50_000  # pairs per write batch / transaction while the store is built


def _store_path(store: str, rows: int) -> Path:
    return DATA_DIR / f"kv-{store}-{rows}"


def _build(store: str, path: Path, rows: int) -> None:
    """Write the N pairs into a new store at ``path`` with the store's own library."""
    building = path.with_name(path.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    chunks: list[list[tuple[bytes, bytes]]] = [[]]
    pairs = _pairs(rows)
    if store == "leveldb":
        import plyvel

        db = plyvel.DB(str(building), create_if_missing=True)
        batch = db.write_batch()
        for i, (key, value) in enumerate(pairs, 1):
            batch.put(key, value)
            if i % BUILD_CHUNK == 0:
                batch.write()
                batch = db.write_batch()
        batch.write()
        db.compact_range()
        db.close()
    elif store == "lmdb":
        import lmdb

        env = lmdb.open(str(building), map_size=4 << 30)
        chunk = chunks[0]
        for key, value in pairs:
            chunk.append((key, value))
            if len(chunk) == BUILD_CHUNK:
                with env.begin(write=True) as txn:
                    txn.cursor().putmulti(chunk)
                chunk.clear()
        with env.begin(write=True) as txn:
            txn.cursor().putmulti(chunk)
        env.close()
    else:
        import rocksdict

        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        db = rocksdict.Rdict(str(building), options)
        batch = rocksdict.WriteBatch(raw_mode=True)
        for i, (key, value) in enumerate(pairs, 1):
            batch.put(key, value)
            if i % BUILD_CHUNK == 0:
                db.write(batch)
                batch = rocksdict.WriteBatch(raw_mode=True)
        db.write(batch)
        db.compact_range(None, None)
        db.close()
    building.rename(path)


def _prepare(store: str, rows: int) -> Dataset:
    path = _store_path(store, rows)
    if not path.exists():
        _build(store, path, rows)
    cached = DATA_DIR / f"kv-pairs-{rows}.checksum.json"
    if cached.exists():
        reference = Verification(**json.loads(cached.read_text()))
    else:
        reference = pairs_checksum(_pairs(rows))
        cached.write_text(json.dumps({"rows": reference.rows, "checksum": reference.checksum}))
    for file in path.iterdir():  # into the page cache, as for every case
        with open(file, "rb") as handle:
            while handle.read(1 << 24):
                pass
    size = sum(f.stat().st_size for f in path.iterdir())
    return Dataset(
        rows=rows,
        source=str(path),
        table=store,
        reference=reference,
        facts={"store": f"{store}, {size / 1e6:.0f} MB on disk",
               "pairs": f"{rows:,}, values 32-192 B"},
    )


def _case(store: str) -> Case:
    return Case(
        name=f"kv-export-{store}",
        title=f"{ {'leveldb': 'LevelDB', 'lmdb': 'LMDB', 'rocksdb': 'RocksDB'}[store]} → "
              "Parquet export",
        description=(
            f"Export every pair of a {store} store (N keys, values: the `events` payloads, "
            "32-192 B) to one Parquet file of `(key, value)`. The peer is the loop a user "
            "writes by hand: iterate the store, collect 10,000 pairs, write them with "
            "`pq.ParquetWriter` as a row group. membound gets the budget shown. Outputs are "
            "checked against the data by a checksum of the pairs."
        ),
        contestants=(
            Contestant("loop", "hand-written loop + ParquetWriter (10k pairs)",
                       script="kv_loop.py"),
            Contestant("membound-api", "**membound.copy** (Python API)", role="membound",
                       script="kv_membound.py"),
        ),
        packages=("membound", {"leveldb": "plyvel", "lmdb": "lmdb",
                               "rocksdb": "rocksdict"}[store], "pyarrow"),
        prepare=lambda rows: _prepare(store, rows),
        verify=verify_export,
        default_rows=(1_000_000,),
    )


KV_EXPORTS = tuple(_case(store) for store in STORES)

__all__ = ["KV_EXPORTS", "pq"]
