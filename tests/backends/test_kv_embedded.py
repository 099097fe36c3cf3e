"""LevelDB, LMDB and RocksDB backends on real store directories: round trips, ranges, modes, errors.

Each test runs once per store (``store`` fixture); copies also go between the stores and SQLite.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import membound
from membound import open_backend
from membound.backends.kv_ordered import KeyRange, prefix_successor
from membound.errors import (
    ConfigurationError,
    CorruptFileError,
    NotFoundError,
    PartialWriteError,
    SchemaError,
    TargetError,
    TargetExistsError,
    URLError,
)
from membound.urls import parse_url

pytest.importorskip("plyvel")
pytest.importorskip("lmdb")
pytest.importorskip("rocksdict")

SCHEMES = ("leveldb", "lmdb", "rocksdb")
NAMED = ("lmdb", "rocksdb")  # stores whose table= is a namespace

# Binary keys with zero bytes and high bytes, an empty value, values with zero bytes.
PAIRS = [
    (b"\x00", b"zero key"),
    (b"\x00\x00\x01", b""),
    (b"a\x00b", b"v\x00\x00w"),
    (b"apple", b"red"),
    (b"apricot", b"orange"),
    (b"b", b""),
    (b"banana", b"yellow"),
    (b"\xff\xfe", b"\xff" * 300),
]


def batch_of(pairs, key="key", value="value") -> pa.RecordBatch:
    return pa.record_batch({key: pa.array([k for k, _ in pairs], pa.binary()),
                            value: pa.array([v for _, v in pairs], pa.binary())})


def read_pairs(url: str, **kwargs) -> list[tuple]:
    with open_backend(url) as db:
        return [tuple(row) for row in db.rows(**kwargs)]


@pytest.fixture(params=SCHEMES)
def scheme(request) -> str:
    return request.param


@pytest.fixture
def store(scheme, tmp_path) -> str:
    """URL of a store holding PAIRS."""
    url = f"{scheme}:///{tmp_path}/store"
    with open_backend(url) as db:
        db.write(None, [batch_of(PAIRS)], mode="fail")
    return url


# -- URLs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEMES)
def test_url_paths_follow_sqlite_rule(name):
    assert parse_url(f"{name}:///rel/store").path == "rel/store"
    assert parse_url(f"{name}:////abs/store?table=t").path == "/abs/store"
    assert parse_url(f"{name}:////abs/store?table=t").table == "t"
    with pytest.raises(URLError, match=f"{name}:///relative/dir"):
        parse_url(f"{name}://host/store")
    with pytest.raises(URLError):
        parse_url(f"{name}:///")


def test_unknown_url_option_is_refused(scheme, tmp_path):
    with pytest.raises(ConfigurationError, match="unknown URL option 'prefx'"):
        open_backend(f"{scheme}:///{tmp_path}/s?prefx=a")


def test_key_range_helpers():
    assert prefix_successor(b"ab") == b"ac"
    assert prefix_successor(b"a\xff") == b"b"
    assert prefix_successor(b"\xff\xff") is None
    rng = KeyRange.build(prefix=b"ap", start=b"apr")
    assert (rng.start, rng.stop) == (b"apr", b"aq")
    assert rng.after(b"apricot").start == b"apricot\x00"
    assert KeyRange.build(start="b", stop="a").empty


# -- round trips --------------------------------------------------------------------------------


def test_store_parquet_store_round_trip(store, scheme, tmp_path):
    assert read_pairs(store) == PAIRS
    parquet = str(tmp_path / "out.parquet")
    report = membound.copy(store, parquet, max_memory="32MB")
    assert report.rows == len(PAIRS)
    table = pq.read_table(parquet)
    assert table.schema.field("key").type == pa.binary()
    assert list(zip(table.column("key").to_pylist(), table.column("value").to_pylist(),
                    strict=True)) == PAIRS
    back = f"{scheme}:///{tmp_path}/back"
    membound.copy(parquet, back, max_memory="32MB")
    assert read_pairs(back) == PAIRS


def test_fifty_megabyte_value_round_trip(scheme, tmp_path):
    big = os.urandom(1024) * (50 * 1024)
    pairs = [(b"a", b"small"), (b"big", big), (b"c", b"")]
    url = f"{scheme}:///{tmp_path}/big"
    with open_backend(url) as db:
        db.write(None, [batch_of(pairs)])
    parquet = str(tmp_path / "big.parquet")
    membound.copy(url, parquet, max_memory="64MB")
    back = f"{scheme}:///{tmp_path}/back"
    membound.copy(parquet, back, max_memory="64MB")
    with open_backend(back) as db:
        batches = list(db.batches())
    # The 50 MB value ends a batch: the pair after it is not held back with it.
    assert len(batches) >= 2
    got = pa.Table.from_batches(batches)
    assert got.column("key").to_pylist() == [b"a", b"big", b"c"]
    assert got.column("value")[1].as_py() == big
    assert got.column("value")[2].as_py() == b""


@pytest.mark.parametrize("other", SCHEMES)
def test_copy_between_stores(store, scheme, other, tmp_path):
    target = f"{other}:///{tmp_path}/copy_{other}"
    membound.copy(store, target)
    assert read_pairs(target) == PAIRS


def test_copy_through_sqlite(store, scheme, tmp_path):
    db_path = tmp_path / "kv.db"
    membound.copy(store, f"sqlite:///{db_path}?table=kv")
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT key, value FROM kv ORDER BY key").fetchall() == PAIRS
    conn.close()
    back = f"{scheme}:///{tmp_path}/from_sqlite"
    # copy() names the target after the source table: a sub-database / column family for
    # LMDB and RocksDB, ignored by LevelDB (one keyspace).
    membound.copy(f"sqlite:///{db_path}?table=kv", back)
    read_back = back + ("?table=kv" if scheme in NAMED else "")
    assert read_pairs(read_back) == PAIRS


def test_text_keys_values_and_codec(scheme, tmp_path):
    rows = pa.record_batch({"key": ["k1", "k2", "ключ"], "value": ["one", "", "значение"]})
    url = f"{scheme}:///{tmp_path}/text?keys=text&values=text"
    with open_backend(url) as db:
        db.write(None, [rows])
        got = pa.Table.from_batches(list(db.batches()))
    assert got.schema.field("key").type == pa.string()
    assert got.to_pylist() == sorted(rows.to_pylist(), key=lambda r: r["key"].encode())
    # Raw bytes are the UTF-8 text.
    assert read_pairs(f"{scheme}:///{tmp_path}/text")[2] == ("ключ".encode(), "значение".encode())

    docs = pa.record_batch({"key": ["a", "b"], "value": [{"n": 1, "tags": ["x"]},
                                                         {"n": 2, "tags": []}]})
    codec_url = f"{scheme}:///{tmp_path}/codec?keys=text&value_codec=msgpack%2Bzstd"
    with open_backend(codec_url) as db:
        db.write(None, [docs])
        assert [row[1] for row in db.rows()] == [{"n": 1, "tags": ["x"]}, {"n": 2, "tags": []}]
    raw = read_pairs(f"{scheme}:///{tmp_path}/codec")
    assert raw[0][1] != b"" and raw[0][1][:1] != b"{"  # stored encoded, not as text


def test_not_utf8_under_text_is_a_schema_error(store):
    with pytest.raises(SchemaError, match="keys=bytes"), open_backend(store + "?keys=text") as db:
        list(db.batches())


# -- key ranges ---------------------------------------------------------------------------------


def test_prefix_and_range_scans(store, scheme):
    keys = [k for k, _ in PAIRS]
    with open_backend(store) as db:
        def scan(**kwargs):
            return [k for batch in db.scan(**kwargs) for k in batch.column("key").to_pylist()]

        assert scan(prefix=b"ap") == [b"apple", b"apricot"]
        assert scan(prefix="a") == [b"a\x00b", b"apple", b"apricot"]
        assert scan(prefix=b"\x00") == [b"\x00", b"\x00\x00\x01"]
        assert scan(prefix=b"\xff") == [b"\xff\xfe"]
        assert scan(start=b"apricot", stop=b"banana") == [b"apricot", b"b"]
        assert scan(start=b"b") == [b"b", b"banana", b"\xff\xfe"]
        assert scan(stop=b"a") == [b"\x00", b"\x00\x00\x01"]
        assert scan(reverse=True) == keys[::-1]
        assert scan(prefix=b"a", reverse=True) == [b"apricot", b"apple", b"a\x00b"]
        assert scan(start=b"apple", stop=b"b", reverse=True) == [b"apricot", b"apple"]
        assert scan(prefix=b"zz") == []
        assert [k for k, _ in db.pairs(prefix=b"ban")] == [b"banana"]
    # The same through URL options, %xx for any byte.
    assert [k for k, _ in read_pairs(store + "?prefix=%00")] == [b"\x00", b"\x00\x00\x01"]
    assert [k for k, _ in read_pairs(store + "?start=apple&stop=b&reverse=true")] == [
        b"apricot", b"apple"]


def test_long_scan_through_many_read_views(scheme, tmp_path):
    """A scan reopens its read view every ~1 MB; no key is lost or read twice across views."""
    url = f"{scheme}:///{tmp_path}/many"
    count = 30_000
    value = b"x" * 200
    with open_backend(url) as db:
        db.write(None, [batch_of([(b"k%06d" % i, value) for i in range(count)])])
    with open_backend(url, budget="1MB") as db:
        forward = [k for k, _ in db.pairs()]
        backward = [k for k, _ in db.pairs(reverse=True)]
        ranged = [k for k, _ in db.pairs(start=b"k001000", stop=b"k025000")]
    assert forward == [b"k%06d" % i for i in range(count)]
    assert backward == forward[::-1]
    assert ranged == forward[1000:25000]


# -- modes --------------------------------------------------------------------------------------


def test_fail_mode_refuses_a_non_empty_store(store):
    with pytest.raises(TargetExistsError, match="not empty"), open_backend(store) as db:
        db.write(None, [batch_of([(b"new", b"1")])], mode="fail")
    assert read_pairs(store) == PAIRS


def test_append_and_upsert_overwrite_keys(store):
    with open_backend(store) as db:
        db.write(None, [batch_of([(b"apple", b"green"), (b"cherry", b"dark")])], mode="append")
        db.write(None, [batch_of([(b"b", b"now set")])], mode="upsert", key="key")
    got = dict(read_pairs(store))
    assert got[b"apple"] == b"green"
    assert got[b"cherry"] == b"dark"
    assert got[b"b"] == b"now set"
    assert len(got) == len(PAIRS) + 1


def test_replace_swaps_the_whole_store(store, tmp_path):
    with open_backend(store) as db:
        result = db.write(None, [batch_of([(b"only", b"this")])], mode="replace")
    assert result.rows == 1
    assert read_pairs(store) == [(b"only", b"this")]
    leftovers = [name for name in os.listdir(tmp_path) if name.startswith(".membound")]
    assert leftovers == []


def test_failed_replace_leaves_the_old_store(store, tmp_path):
    def broken():
        yield batch_of([(b"new", b"1")])
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError), open_backend(store) as db:
        db.write(None, broken(), mode="replace")
    assert read_pairs(store) == PAIRS
    assert [n for n in os.listdir(tmp_path) if n.startswith(".membound")] == []


def test_failed_fail_mode_leaves_nothing(scheme, tmp_path):
    url = f"{scheme}:///{tmp_path}/new"
    bad = pa.record_batch({"key": [b"a", b"b"], "value": [b"1", None]})
    with pytest.raises(SchemaError, match="NULL"), open_backend(url) as db:
        db.write(None, [batch_of([(b"first", b"1")]), bad], mode="fail")
    assert not os.path.exists(tmp_path / "new")
    assert os.listdir(tmp_path) == []


def test_failed_append_reports_what_was_committed(store):
    bad = pa.record_batch({"key": [b"zz1", b"zz2"], "value": [b"1", None]})
    with pytest.raises(PartialWriteError) as info, open_backend(store, budget="1MB") as db:
        # ~300 KB of pairs: at least one commit before the bad batch.
        db.write(None, [batch_of([(b"k%05d" % i, b"v" * 100) for i in range(3000)]), bad],
                 mode="append")
    assert info.value.rows_committed > 0
    assert info.value.resume_after is not None
    assert len(read_pairs(store)) >= len(PAIRS) + info.value.rows_committed


def test_named_namespaces(scheme, tmp_path):
    if scheme not in NAMED:
        pytest.skip("LevelDB has one keyspace")
    base = f"{scheme}:///{tmp_path}/ns"
    with open_backend(base) as db:
        db.write(None, [batch_of([(b"main", b"0")])])
        db.write("users", [batch_of([(b"u1", b"ann")])])
        db.write("orders", [batch_of([(b"o1", b"book")])])
        assert db.tables() == ["orders", "users"]
    assert read_pairs(base) == [(b"main", b"0")]
    assert read_pairs(base + "?table=users") == [(b"u1", b"ann")]
    # fail on one namespace does not care about the others
    with open_backend(base) as db:
        db.write("empty_yet", [batch_of([(b"e", b"1")])], mode="fail")
        with pytest.raises(TargetExistsError):
            db.write("users", [batch_of([(b"u2", b"bob")])], mode="fail")
        # replace one namespace: the others are carried over
        db.write("users", [batch_of([(b"u9", b"zed")])], mode="replace")
    assert read_pairs(base + "?table=users") == [(b"u9", b"zed")]
    assert read_pairs(base + "?table=orders") == [(b"o1", b"book")]
    assert read_pairs(base) == [(b"main", b"0")]
    with pytest.raises(NotFoundError, match="orders"), open_backend(base + "?table=nope") as db:
        list(db.batches())


def test_copy_between_namespaces_of_one_store(scheme, tmp_path):
    if scheme != "lmdb":
        pytest.skip("LMDB shares one environment between the backends of a process")
    base = f"lmdb:///{tmp_path}/one"
    with open_backend(base) as db:
        db.write("a", [batch_of(PAIRS)])
    membound.copy(base + "?table=a", base + "?table=b")
    assert read_pairs(base + "?table=b") == PAIRS


def test_lmdb_map_grows_when_full(tmp_path):
    url = f"lmdb:///{tmp_path}/small?map_size=64KiB"
    pairs = [(b"k%05d" % i, b"v" * 200) for i in range(5000)]  # ~1.2 MB: many doublings
    with open_backend(url) as db:
        db.write(None, [batch_of(pairs)])
    assert read_pairs(url) == pairs


def test_leveldb_refuses_a_table_on_read(tmp_path):
    url = f"leveldb:///{tmp_path}/one"
    with open_backend(url) as db:
        db.write("ignored", [batch_of(PAIRS)])
    with pytest.raises(ConfigurationError, match="prefix="), open_backend(url + "?table=t") as db:
        db.batches()


def test_queries_are_refused(store):
    with pytest.raises(ConfigurationError, match="no query language"), open_backend(store) as db:
        db.batches("SELECT * FROM t")


# -- errors -------------------------------------------------------------------------------------


def test_missing_store_is_not_found(scheme, tmp_path):
    with pytest.raises(NotFoundError, match="no .* store at"), \
            open_backend(f"{scheme}:///{tmp_path}/missing") as db:
        db.batches()
    assert not os.path.exists(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match="empty directory"), \
            open_backend(f"{scheme}:///{tmp_path}/empty") as db:
        db.batches()
    assert os.listdir(tmp_path / "empty") == []


def test_missing_parent_directory_on_write(scheme, tmp_path):
    with pytest.raises(TargetError, match="does not exist"), \
            open_backend(f"{scheme}:///{tmp_path}/no/such/dir") as db:
        db.write(None, [batch_of(PAIRS)])


def test_directory_of_something_else_is_refused(scheme, tmp_path):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(CorruptFileError, match="is it one"), \
            open_backend(f"{scheme}:///{other}") as db:
        db.batches()
    for mode in ("append", "replace"):
        with pytest.raises(TargetError), open_backend(f"{scheme}:///{other}") as db:
            db.write(None, [batch_of(PAIRS)], mode=mode)
    assert os.listdir(other) == ["cat.jpg"]


def test_corrupt_store_is_a_corrupt_file_error(store, scheme, tmp_path):
    root = tmp_path / "store"
    if scheme == "lmdb":
        (root / "data.mdb").write_bytes(b"not an lmdb file" * 1000)
    else:
        (root / "CURRENT").write_text("MANIFEST-999999\n")
    with pytest.raises(CorruptFileError), open_backend(store) as db:
        list(db.batches())


def test_missing_key_column_and_null_key(scheme, tmp_path):
    url = f"{scheme}:///{tmp_path}/s"
    with pytest.raises(SchemaError, match="'key' column"), open_backend(url) as db:
        db.write(None, [pa.record_batch({"id": [1], "value": [b"x"]})])
    with open_backend(url) as db:
        db.write(None, [pa.record_batch({"id": [1, 2], "value": [b"x", b"y"]})], key="id")
    assert read_pairs(url) == [(b"1", b"x"), (b"2", b"y")]


@pytest.mark.parametrize("mode", ["fail", "append"])
def test_leveldb_writes_leave_no_log_to_replay(tmp_path, mode):
    # LevelDB replays its log into memory on the next open: a reader would pay for the
    # writer's last batch. A membound write ends with the memtable in a table file.
    path = tmp_path / "flushed"
    keys = [b"k%06d" % i for i in range(50_000)]
    batch = pa.record_batch({"key": keys, "value": [b"v" * 100] * len(keys)})
    url = f"leveldb:///{path}"
    if mode == "append":
        with open_backend(url) as db:
            db.write(None, iter([pa.record_batch({"key": [b"a"], "value": [b"0"]})]))
    with open_backend(url, budget="256MB") as db:
        db.write(None, iter([batch]), mode=mode)
    logs = {p.name: p.stat().st_size for p in path.glob("*.log")}
    assert logs and all(size == 0 for size in logs.values()), logs
    with open_backend(url) as db:
        assert sum(b.num_rows for b in db.batches(None)) == len(keys) + (mode == "append")


def test_an_export_does_not_make_pyarrow_import_pandas(store, tmp_path):
    """Key and value columns are built from joined bytes, so pandas (~50 MB) is never imported;
    a value codec's decoded values still are converted (and the copy says so)."""
    target = tmp_path / "out.parquet"
    code = ("import sys, membound; membound.copy(sys.argv[1], sys.argv[2]); "
            "print('pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, store, str(target)],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    table = pq.read_table(target)
    assert table.schema.field("key").type == pa.binary()
    pairs = zip(table.column("key").to_pylist(), table.column("value").to_pylist(), strict=True)
    assert list(pairs) == sorted(PAIRS)
