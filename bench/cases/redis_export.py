"""Redis string keys -> Parquet (``redis-export``) and Parquet -> Redis (``redis-load``).

The data: N string keys ``mbbench:N:<id>`` whose values are the ``payload`` column of the
protocol's ``events`` rows (32-192 bytes), loaded once into Redis database 13 of the server at
``MEMBOUND_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/13``) and kept there for later
runs. The load case writes the same pairs from a Parquet file into database 12 under the same
key names; the harness reads them back to verify and deletes them after every run.

Every output is a ``(key, value)`` table; the checksum is the sum modulo 2^64 of a 64-bit hash
of each pair, so it depends on neither order nor batching.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import redis

from cases.base import Case, Contestant, Dataset
from checksum import Verification
from data import DATA_DIR, event_row

EXPORT_URL = os.environ.get("MEMBOUND_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
LOAD_DB = 12
LOAD_CHUNK = 5000  # pairs per MSET while preparing the data


def _prefix(rows: int) -> bytes:
    return b"mbbench:%d:" % rows


def _pairs(rows: int):
    prefix = _prefix(rows)
    for g in range(1, rows + 1):
        yield prefix + b"%08d" % g, event_row(g)[5].encode()


def _hash(key: bytes, value: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key + b"\0" + value, digest_size=8).digest(), "little")


def pairs_checksum(pairs) -> Verification:
    total = count = 0
    for key, value in pairs:
        total = (total + _hash(key, value)) % 2**64
        count += 1
    return Verification(rows=count, checksum=f"{total:016x}")


def _client(db: int | None = None) -> redis.Redis:
    url = EXPORT_URL if db is None else f"{EXPORT_URL.rsplit('/', 1)[0]}/{db}"
    return redis.Redis.from_url(url, protocol=2)


def prepare(rows: int) -> Dataset:
    client = _client()
    prefix = _prefix(rows)
    done = b"mbbench-ready:%d" % rows  # outside the prefix, so no contestant reads it
    if not client.exists(done):
        pipe = client.pipeline(transaction=False)
        chunk = {}
        for key, value in _pairs(rows):
            chunk[key] = value
            if len(chunk) == LOAD_CHUNK:
                pipe.mset(chunk)
                chunk = {}
                if len(pipe) >= 10:
                    pipe.execute()
        if chunk:
            pipe.mset(chunk)
        pipe.set(done, b"1")
        pipe.execute()
    parquet = DATA_DIR / f"redis-pairs-{rows}.parquet"
    if not parquet.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        keys, values = [], []
        with pq.ParquetWriter(parquet, pa.schema([("key", pa.binary()),
                                                  ("value", pa.binary())])) as writer:
            for key, value in _pairs(rows):
                keys.append(key)
                values.append(value)
                if len(keys) == 100_000:
                    writer.write_table(pa.table({"key": keys, "value": values}))
                    keys, values = [], []
            if keys:
                writer.write_table(pa.table({"key": keys, "value": values}))
    memory = client.info("memory")["used_memory_human"]
    return Dataset(
        rows=rows,
        source=f"{EXPORT_URL}|{prefix.decode()}|{parquet}",
        table="strings",
        reference=pairs_checksum(_pairs(rows)),
        facts={"Redis": f"{client.info('server')['redis_version']}, used_memory {memory}",
               "keys": f"{rows:,} strings, values 32-192 B"},
    )


def verify_export(output: Path, dataset: Dataset) -> Verification:
    def pairs():
        for batch in pq.ParquetFile(output).iter_batches(batch_size=65_536,
                                                         columns=["key", "value"]):
            yield from zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True)

    return pairs_checksum(pairs())


def verify_load(output: Path, dataset: Dataset) -> Verification:
    client = _client(LOAD_DB)
    prefix = dataset.source.split("|")[1].encode()

    def pairs():
        for page in _pages(client, prefix):
            yield from zip(page, client.mget(page), strict=True)

    result = pairs_checksum(pairs())
    for page in _pages(client, prefix):
        client.unlink(*page)
    return result


def _pages(client: redis.Redis, prefix: bytes):
    cursor = 0
    while True:
        cursor, keys = client.scan(cursor, match=prefix + b"*", count=5000)
        if keys:
            yield keys
        if cursor == 0:
            return


REDIS_EXPORT = Case(
    name="redis-export",
    title="Redis strings → Parquet export",
    description=(
        "Export N string keys (values: the `events` payloads, 32-192 B) from Redis to one "
        "Parquet file of `(key, value)`. `KEYS` + one `MGET` is what a quick script does; "
        "`scan_iter` + pipelined `GET` (10,000 per round trip, each round trip written as a "
        "row group) is the careful hand-written loop. membound gets the budget shown. "
        "Outputs are checked against the data by a checksum of the pairs."
    ),
    contestants=(
        Contestant("keys-mget", "`KEYS` + one `MGET` + write_table", script="redis_keys_mget.py"),
        Contestant("scan-pipeline", "`scan_iter` + pipelined `GET` (10k) + ParquetWriter",
                   script="redis_scan_pipeline.py"),
        Contestant("membound-api", "**membound.copy** (Python API)", role="membound",
                   script="redis_membound_export.py"),
    ),
    packages=("membound", "redis", "hiredis", "pyarrow"),
    prepare=prepare,
    verify=verify_export,
    default_rows=(100_000, 1_000_000),
)

REDIS_LOAD = Case(
    name="redis-load",
    title="Parquet → Redis strings bulk load",
    description=(
        "Load the same N `(key, value)` pairs from a Parquet file into an empty Redis database "
        "(12). The hand-written peers read the file by batches and send 10,000 `SET`s per "
        "pipeline, or one `MSET` per 10,000 pairs; membound gets the budget shown. The harness "
        "reads the keys back, checks them, and deletes them after every run."
    ),
    contestants=(
        Contestant("pipeline-set", "ParquetFile batches + pipelined `SET` (10k)",
                   script="redis_load_pipeline.py"),
        Contestant("mset", "ParquetFile batches + `MSET` (10k pairs)",
                   script="redis_load_mset.py"),
        Contestant("membound-api", "**membound.copy** (Python API)", role="membound",
                   script="redis_membound_load.py"),
    ),
    packages=("membound", "redis", "hiredis", "pyarrow"),
    prepare=prepare,
    verify=verify_load,
    default_rows=(100_000, 1_000_000),
)
