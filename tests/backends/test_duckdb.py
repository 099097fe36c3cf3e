from __future__ import annotations

import datetime as dt
import decimal
import os
import sqlite3
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

duckdb = pytest.importorskip("duckdb", reason="the duckdb extra is not installed")

from membound import (  # noqa: E402
    ConfigurationError,
    MissingDriverError,
    NotFoundError,
    PartialWriteError,
    QueryError,
    SchemaError,
    TargetExistsError,
    copy,
    open_backend,
)
from membound.batching import LOGICAL_TYPE_KEY  # noqa: E402

SCHEMA = pa.schema([
    ("id", pa.int64()),
    ("small", pa.int32()),
    ("score", pa.float64()),
    ("price", pa.decimal128(38, 10)),
    ("name", pa.string()),
    ("ok", pa.bool_()),
    ("data", pa.binary()),
    ("day", pa.date32()),
    ("at", pa.timestamp("us")),
    ("at_tz", pa.timestamp("us", tz="UTC")),
    pa.field("doc", pa.string(), metadata={LOGICAL_TYPE_KEY: b"json"}),
    ("tags", pa.list_(pa.int64())),
])


def sample_rows(count: int = 50) -> list[dict]:
    rows = []
    for i in range(count):
        rows.append({
            "id": i,
            "small": -i,
            "score": i / 3,
            "price": decimal.Decimal(f"{i}12345678901234567890123456.0123456789"),
            "name": f"név-{i}-😀𝄞",
            "ok": i % 2 == 0,
            "data": bytes([0, i % 256, 0, 255]),
            "day": dt.date(2024, 1, 1) + dt.timedelta(days=i),
            "at": dt.datetime(2024, 1, 1, 12, 30, 15, 123456) + dt.timedelta(hours=i),
            "at_tz": dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i),
            "doc": f'{{"n": {i}, "s": "ü"}}',
            "tags": [i, None, -i],
        })
    rows.append({name: None for name in SCHEMA.names} | {"id": count})
    return rows


def as_plain(rows: list[dict]) -> list[dict]:
    """Rows with timezone-aware datetimes normalised to UTC (zone object names differ)."""
    return [{k: v.astimezone(dt.UTC) if isinstance(v, dt.datetime) and v.tzinfo else v
             for k, v in row.items()} for row in rows]


def write_sample(url: str, rows: list[dict] | None = None, table: str = "t") -> list[dict]:
    rows = sample_rows() if rows is None else rows
    with open_backend(url) as db:
        db.write(table, [pa.RecordBatch.from_pylist(rows, schema=SCHEMA)])
    return rows


def read_all(url: str, what: str | None = None, **kwargs) -> pa.Table:
    with open_backend(url, **kwargs) as db:
        return pa.Table.from_batches(list(db.batches(what)))


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "test.duckdb")


def test_every_type_round_trips_with_nulls(db_path):
    rows = write_sample(f"duckdb:///{db_path}")
    table = read_all(f"duckdb:///{db_path}?table=t")
    assert as_plain(table.to_pylist()) == as_plain(rows)
    assert table.schema.field("price").type == pa.decimal128(38, 10)
    assert table.schema.field("at_tz").type.tz is not None
    assert table.schema.field("doc").metadata == {LOGICAL_TYPE_KEY: b"json"}
    con = duckdb.connect(db_path, read_only=True)
    types = dict(con.execute("SELECT column_name, data_type FROM duckdb_columns() "
                             "WHERE table_name = 't'").fetchall())
    con.close()
    assert types["doc"] == "JSON"
    assert types["at_tz"] == "TIMESTAMP WITH TIME ZONE"
    assert types["tags"] == "BIGINT[]"


def test_schema_and_estimate(db_path):
    write_sample(f"duckdb:///{db_path}")
    with open_backend(f"duckdb:///{db_path}") as db:
        schema = db.schema("t")
        assert schema.names == SCHEMA.names
        assert schema.field("data").type == pa.binary()
        assert db.estimate_rows("t") == 51
        assert db.tables() == ["t"]
        assert db.schema("SELECT id, name AS n FROM t").names == ["id", "n"]


def test_queries_take_params(db_path):
    write_sample(f"duckdb:///{db_path}")
    with open_backend(f"duckdb:///{db_path}") as db:
        assert list(db.rows("SELECT id, name FROM t WHERE id = ?", [3])) == [(3, "név-3-😀𝄞")]
        assert list(db.rows("SELECT id FROM t WHERE id < $n ORDER BY id", {"n": 2})) == [
            (0,), (1,)]


def test_url_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_sample("duckdb:///rel.duckdb")
    assert os.path.exists(tmp_path / "rel.duckdb")
    absolute = str(tmp_path / "abs.duckdb")
    write_sample(f"duckdb:///{absolute}")  # four slashes: an absolute path
    assert read_all(f"duckdb:///{absolute}?table=t").num_rows == 51
    with open_backend("duckdb:///:memory:") as db:
        db.write("m", [pa.record_batch({"x": [1, 2]})])
        assert list(db.rows("m")) == [(1,), (2,)]


def test_batches_are_sized_in_bytes_not_rows(db_path):
    con = duckdb.connect(db_path)
    con.execute("CREATE TABLE narrow AS SELECT range AS v FROM range(300000)")
    # DuckDB scans 2,048 rows at a time whatever the batch size, so "wide" stays at 2 kB rows.
    con.execute("CREATE TABLE wide AS SELECT repeat('x', 2000) AS v FROM range(4000)")
    con.close()
    with open_backend(f"duckdb:///{db_path}") as db:
        narrow = [b.num_rows for b in db.batches("narrow", budget="16MB")]
        wide = [b.num_rows for b in db.batches("wide", budget="16MB")]
        query = [b.num_rows for b in db.batches("SELECT * FROM wide", budget="16MB")]
    assert max(narrow) > 5_000
    # Target is 1 MB: about 500 rows of 2 kB.
    assert max(wide) <= 600 and max(query) <= 600
    assert sum(narrow) == 300_000 and sum(wide) == 4000 and sum(query) == 4000


def test_read_adapts_when_rows_widen_after_the_sample(db_path):
    con = duckdb.connect(db_path)
    con.execute("CREATE TABLE t AS SELECT range AS id, CASE WHEN range < 5000 THEN 'a' "
                "ELSE repeat('y', 500) END AS v FROM range(105000)")
    con.close()
    with open_backend(f"duckdb:///{db_path}") as db:
        sizes = []
        ids = []
        for batch in db.batches("t", budget="16MB"):
            sizes.append(batch.nbytes)
            ids.extend(batch.column("id").to_pylist())
    assert ids == list(range(105000))
    # The sample saw 25-byte rows, so the first batch is large; once 500-byte rows come, the
    # read restarts after the last row passed with batches near the 1 MB target.
    assert len(sizes) > 30
    assert max(sizes[2:]) < 2_000_000


def test_large_value_round_trips(tmp_path):
    path = str(tmp_path / "big.duckdb")
    big = os.urandom(50_000_000)
    batch = pa.record_batch({"id": [1, 2, 3], "body": [b"a\x00b", big, None],
                             "note": ["x", "é" * 1000, ""]})
    # DuckDB holds a value whole, and allocates it in one block (a power of two): a 50 MB value
    # needs a budget past that.
    with open_backend(f"duckdb:///{path}", budget="160MB") as db:
        db.write("d", [batch])
    del batch
    with open_backend(f"duckdb:///{path}?table=d", budget="160MB") as db:
        table = pa.Table.from_batches(list(db.batches()))
    assert table.column("body").to_pylist() == [b"a\x00b", big, None]
    assert table.column("note").to_pylist() == ["x", "é" * 1000, ""]


def test_mode_fail_refuses_existing_table(db_path):
    write_sample(f"duckdb:///{db_path}")
    with pytest.raises(TargetExistsError, match="already exists"):
        write_sample(f"duckdb:///{db_path}")


def test_mode_append_adds_and_checks_types(db_path):
    write_sample(f"duckdb:///{db_path}")
    with open_backend(f"duckdb:///{db_path}") as db:
        result = db.write("t", [pa.record_batch({"id": [100], "name": ["new"]})], mode="append")
        assert result.rows == 1
        with pytest.raises(SchemaError, match="'score'"):
            db.write("t", [pa.record_batch({"id": [101], "score": ["not a number"]})],
                     mode="append")
        with pytest.raises(SchemaError, match="no column 'nope'"):
            db.write("t", [pa.record_batch({"id": [102], "nope": [1]})], mode="append")
    assert read_all(f"duckdb:///{db_path}?table=t").num_rows == 52


def test_append_failure_part_way_reports_committed_rows(db_path):
    with open_backend(f"duckdb:///{db_path}") as db:
        db.write("k", [pa.record_batch({"id": [1]})], mode="upsert", key="id")

        def stream():
            yield pa.record_batch({"id": [2, 3]})
            yield pa.record_batch({"id": [3]})  # violates the primary key

        with pytest.raises(PartialWriteError) as info:
            db.write("k", stream(), mode="append")
        assert info.value.rows_committed == 2
        assert sorted(db.rows("k")) == [(1,), (2,), (3,)]


def test_mode_replace_swaps_atomically(db_path):
    write_sample(f"duckdb:///{db_path}")
    with open_backend(f"duckdb:///{db_path}") as db:

        def failing():
            yield pa.record_batch({"id": [1]})
            raise RuntimeError("source broke")

        with pytest.raises(RuntimeError, match="source broke"):
            db.write("t", failing(), mode="replace")
        assert db.tables() == ["t"]  # no table left aside
        assert db.estimate_rows("t") == 51
        result = db.write("t", [pa.record_batch({"x": ["only"]})], mode="replace")
        assert result.created
        assert list(db.rows("t")) == [("only",)]


def test_mode_upsert_inserts_and_updates(db_path):
    with open_backend(f"duckdb:///{db_path}") as db:
        db.write("u", [pa.record_batch({"id": [1, 2], "v": ["a", "b"]})], mode="upsert",
                 key="id")
        # Two rows with one key in a batch: the last wins, as row-by-row upserts would have it.
        db.write("u", [pa.record_batch({"id": [2, 3, 3], "v": ["B", "c", "C"]})],
                 mode="upsert", key=["id"])
        assert sorted(db.rows("u")) == [(1, "a"), (2, "B"), (3, "C")]


def test_upsert_needs_a_unique_key(db_path):
    con = duckdb.connect(db_path)
    con.execute("CREATE TABLE plain (id INTEGER, v VARCHAR)")
    con.execute("CREATE TABLE indexed (id INTEGER, v VARCHAR)")
    con.execute("CREATE UNIQUE INDEX indexed_id ON indexed (id)")
    con.close()
    batch = pa.record_batch({"id": pa.array([1], pa.int32()), "v": ["a"]})
    with open_backend(f"duckdb:///{db_path}") as db:
        with pytest.raises(ConfigurationError, match="CREATE UNIQUE INDEX"):
            db.write("plain", [batch], mode="upsert", key="id")
        db.write("indexed", [batch], mode="upsert", key="id")
        db.write("indexed", [batch], mode="upsert", key="id")
        assert list(db.rows("indexed")) == [(1, "a")]
        with pytest.raises(ConfigurationError, match="key column 'nope'"):
            db.write("indexed", [batch], mode="upsert", key="nope")


def test_missing_file_table_and_bad_query(tmp_path, db_path):
    missing = str(tmp_path / "nope.duckdb")
    with pytest.raises(NotFoundError, match="does not exist"):
        read_all(f"duckdb:///{missing}?table=t")
    assert not os.path.exists(missing)
    write_sample(f"duckdb:///{db_path}")
    with pytest.raises(NotFoundError, match="no table 'absent'.*tables: t"):
        read_all(f"duckdb:///{db_path}", "absent")
    with pytest.raises(QueryError, match="rejected"):
        read_all(f"duckdb:///{db_path}", "SELECT no_such_column FROM t")


def test_missing_driver_names_the_extra(monkeypatch, db_path):
    import membound.backends.duckdb as backend

    monkeypatch.setattr(backend, "_DUCKDB", None)
    monkeypatch.setitem(sys.modules, "duckdb", None)
    with pytest.raises(MissingDriverError, match=r"membound\[duckdb\]"):
        open_backend(f"duckdb:///{db_path}")


def test_copy_sqlite_duckdb_parquet_and_back(tmp_path):
    rows = sample_rows()
    first = str(tmp_path / "a.duckdb")
    write_sample(f"duckdb:///{first}", rows)
    lite = str(tmp_path / "b.db")
    parquet = str(tmp_path / "c.parquet")
    second = str(tmp_path / "d.duckdb")
    back = str(tmp_path / "e.db")
    copy(f"duckdb:///{first}?table=t", f"sqlite:///{lite}", max_memory="32MB")
    copy(f"sqlite:///{lite}?table=t", f"duckdb:///{second}", max_memory="32MB")
    copy(f"duckdb:///{first}?table=t", parquet, max_memory="32MB")
    copy(parquet, f"duckdb:///{second}?table=p", max_memory="32MB")
    copy(f"duckdb:///{second}?table=p", f"sqlite:///{back}?table=t", max_memory="32MB")

    via_sqlite = read_all(f"duckdb:///{second}?table=t")
    via_parquet = read_all(f"duckdb:///{second}?table=p")
    expected = as_plain(rows)
    # Through SQLite lists travel as JSON text and int32 comes back as SQLite's int64.
    for name in SCHEMA.names:
        if name not in ("tags", "small"):
            assert via_sqlite.schema.field(name).type == SCHEMA.field(name).type, name
        assert via_parquet.schema.field(name).type == SCHEMA.field(name).type, name
    assert via_parquet.schema.field("doc").metadata == {LOGICAL_TYPE_KEY: b"json"}
    assert as_plain(via_parquet.to_pylist()) == expected
    assert via_sqlite.column("tags").to_pylist()[1] == "[1, null, -1]"
    assert as_plain(via_sqlite.drop_columns(["tags"]).to_pylist()) == [
        {k: v for k, v in row.items() if k != "tags"} for row in expected]
    assert pq.read_table(parquet).num_rows == len(rows)
    con = sqlite3.connect(back)
    assert con.execute("SELECT name, data FROM t WHERE id = 5").fetchone() == (
        "név-5-😀𝄞", bytes([0, 5, 0, 255]))
    con.close()
