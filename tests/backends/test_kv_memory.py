"""Exporting a 1M-key LevelDB, LMDB and RocksDB store to Parquet stays inside a 32 MB budget.

Measured as in tests/test_memory_bounds.py: peak RSS of a fresh child process above its
post-import baseline (the kernel's high-water mark, reset after the imports), against
1.1 x the budget. This is whole-process resident memory, including the pages of LMDB's map that
the scan touched: the LMDB backend hands them back as it goes (madvise), and without that this
test fails (the store is ~150 MB). Each store is also exported with an 8 GB budget, which must
go over the small one: proof that the workload is big enough for the test to fail if the bound
were missing.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from membound import open_backend

pytest.importorskip("plyvel")
pytest.importorskip("lmdb")
pytest.importorskip("rocksdict")

BUDGET = 32_000_000
ALLOWED = 1.1 * BUDGET
UNBOUNDED = "8GB"
KEYS = 1_000_000
SCHEMES = ("leveldb", "lmdb", "rocksdb")
# Imported before the baseline, as the peers import their driver first.
DRIVERS = {"leveldb": ("plyvel",), "lmdb": ("lmdb",), "rocksdb": ("rocksdict",)}


def key_of(i: int) -> bytes:
    return b"user:%08d" % i


def value_of(i: int) -> bytes:
    # ~100 bytes, not compressible to nothing (LevelDB and RocksDB compress with Snappy).
    return hashlib.sha256(b"%d" % i).hexdigest().encode() + b"\x00" + b"v" * (i % 64)


def million_batches():
    step = 50_000
    for first in range(0, KEYS, step):
        ids = range(first, min(first + step, KEYS))
        yield pa.record_batch({"key": pa.array([key_of(i) for i in ids], pa.binary()),
                               "value": pa.array([value_of(i) for i in ids], pa.binary())})


def expected_digest() -> str:
    digest = hashlib.sha256()
    for i in range(KEYS):
        digest.update(key_of(i))
        digest.update(value_of(i))
    return digest.hexdigest()


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("kv_million")
    urls = {}
    for scheme in SCHEMES:
        url = f"{scheme}:///{root}/{scheme}"
        with open_backend(url, budget="256MB") as db:
            db.write(None, million_batches(), mode="fail")
        urls[scheme] = url
    return urls


@pytest.mark.slow
@pytest.mark.parametrize("scheme", SCHEMES)
def test_million_keys_to_parquet_within_budget(stores, scheme, tmp_path, copy_in_child):
    target = str(tmp_path / "out.parquet")
    result = copy_in_child(stores[scheme], target, BUDGET, preload=DRIVERS[scheme])
    assert result["rows"] == KEYS
    assert result["above"] <= ALLOWED, f"peak {result['above']:,} B above baseline"
    assert result["report_peak"] <= ALLOWED

    digest = hashlib.sha256()
    parquet = pq.ParquetFile(target)
    for batch in parquet.iter_batches(batch_size=100_000):
        for key, value in zip(batch.column("key").to_pylist(), batch.column("value").to_pylist(),
                              strict=True):
            digest.update(key)
            digest.update(value)
    assert parquet.metadata.num_rows == KEYS
    assert digest.hexdigest() == expected_digest()

    control = copy_in_child(stores[scheme], str(tmp_path / "control.parquet"), UNBOUNDED,
                            preload=DRIVERS[scheme])
    assert control["rows"] == KEYS
    assert control["above"] > ALLOWED, "workload too small to show the bound"
