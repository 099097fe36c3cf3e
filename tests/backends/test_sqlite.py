from __future__ import annotations

import datetime as dt
import decimal
import os
import sqlite3

import pyarrow as pa
import pytest

from conftest import require_extension
from membound import (
    ConfigurationError,
    NotFoundError,
    PartialWriteError,
    QueryError,
    SchemaError,
    SourceError,
    TargetExistsError,
    open_backend,
)


def make_db(path, rows=1000):
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL, ok BOOLEAN, data BLOB)"
    )
    conn.executemany(
        "INSERT INTO t VALUES (?, ?, ?, ?, ?)",
        ((i, f"név-{i}-😀" if i % 7 else None, i / 3 if i % 5 else None, i % 2 == 0,
          bytes([0, i % 256, 0])) for i in range(rows)),
    )
    conn.commit()
    conn.close()
    return path


@pytest.fixture
def db(tmp_path):
    return make_db(str(tmp_path / "src.db"))


def test_table_reads_as_typed_batches(db, sqlite_reader):
    with open_backend(f"sqlite:///{db}?table=t") as src:
        batches = list(src.batches())
        schema = src.schema()
    table = pa.Table.from_batches(batches)
    assert table.num_rows == 1000
    assert schema == table.schema
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("ok").type == pa.bool_()
    assert table.schema.field("data").type == pa.binary()
    assert table.column("name")[1].as_py() == "név-1-😀"
    assert table.column("name")[0].as_py() is None
    assert table.column("data")[3].as_py() == b"\x00\x03\x00"


def test_batches_are_sized_in_bytes_not_rows(tmp_path, sqlite_reader):
    path = str(tmp_path / "w.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE narrow (v INTEGER)")
    conn.executemany("INSERT INTO narrow VALUES (?)", ((i,) for i in range(200_000)))
    conn.execute("CREATE TABLE wide (v TEXT)")
    conn.executemany("INSERT INTO wide VALUES (?)", (("x" * 100_000,) for _ in range(200)))
    conn.commit()
    with open_backend(f"sqlite:///{path}") as src:
        narrow = [b.num_rows for b in src.batches("narrow", budget="16MB")]
        wide = [b.num_rows for b in src.batches("wide", budget="16MB")]
    assert max(narrow) > 5_000
    assert max(wide) <= 20
    assert sum(narrow) == 200_000 and sum(wide) == 200


def test_large_values_pass_alone_and_intact(tmp_path, sqlite_reader):
    path = str(tmp_path / "big.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE d (id INTEGER PRIMARY KEY, body BLOB, note TEXT)")
    big = os.urandom(3_000_000)
    conn.executemany("INSERT INTO d VALUES (?, ?, ?)", [
        (1, b"small", "a"), (2, big, "é" * 2_000_000), (3, b"", ""), (4, None, None)])
    conn.commit()
    with open_backend(f"sqlite:///{path}") as src:
        batches = list(src.batches("d", budget="8MB"))
    rows = pa.Table.from_batches(batches).to_pylist()
    assert [r["id"] for r in rows] == [1, 2, 3, 4]
    assert rows[1]["body"] == big and rows[1]["note"] == "é" * 2_000_000
    assert rows[2]["body"] == b"" and rows[2]["note"] == ""
    assert rows[3]["body"] is None
    assert any(b.num_rows == 1 and b.column("id")[0].as_py() == 2 for b in batches)


def test_query_with_params(db):
    with open_backend(f"sqlite:///{db}") as src:
        rows = list(src.rows("SELECT id, name FROM t WHERE id < ? ORDER BY id", [3]))
    assert rows == [(0, None), (1, "név-1-😀"), (2, "név-2-😀")]


def test_query_type_change_is_a_schema_error(tmp_path):
    path = str(tmp_path / "mixed.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE m (v)")
    conn.executemany("INSERT INTO m VALUES (?)", [(i,) for i in range(100_000)] + [("oops",)])
    conn.commit()
    with open_backend(f"sqlite:///{path}") as src, pytest.raises(SchemaError, match="'v'"):
        list(src.batches("SELECT v FROM m", budget="1MB"))


def test_errors(tmp_path, db):
    with pytest.raises(NotFoundError, match="does not exist"):
        list(open_backend(f"sqlite:///{tmp_path}/missing.db?table=t").batches())
    assert not (tmp_path / "missing.db").exists()
    with open_backend(f"sqlite:///{db}") as src:
        with pytest.raises(NotFoundError, match="tables: t"):
            list(src.batches("nope"))
        with pytest.raises(QueryError, match="rejected"):
            list(src.batches("SELECT nope FROM t"))
        # SQLite renames a repeated column in a subquery, so such a query still streams.
        assert next(src.batches("SELECT id, id FROM t")).schema.names == ["id", "id:1"]
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SourceError, match="SQLite database"):
        list(open_backend(f"sqlite:///{junk}?table=t").batches())


def test_no_table_named_with_two_tables_is_a_clear_error(tmp_path, db):
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE other (x)")
    conn.commit()
    with open_backend(f"sqlite:///{db}") as src, pytest.raises(ConfigurationError,
                                                               match="other, t"):
        list(src.batches())


def _batches(n=3, start=0, rows=100):
    for b in range(n):
        ids = range(start + b * rows, start + (b + 1) * rows)
        yield pa.record_batch({
            "id": pa.array(ids, pa.int64()),
            "price": pa.array([decimal.Decimal(f"{i}.0123456789") for i in ids],
                              pa.decimal128(38, 10)),
            "at": pa.array([dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i)
                            for i in ids], pa.timestamp("us", tz="UTC")),
            "day": pa.array([dt.date(2024, 1, 1) + dt.timedelta(days=i % 30) for i in ids]),
            "tags": pa.array([["a", str(i)] for i in ids]),
        })


def test_write_round_trip_keeps_types(tmp_path):
    url = f"sqlite:///{tmp_path}/out.db"
    with open_backend(url) as db:
        result = db.write("t", _batches())
        assert (result.rows, result.batches, result.created) == (300, 3, True)
        table = pa.Table.from_batches(list(db.batches("t")))
    assert table.schema.field("price").type == pa.decimal128(38, 10)
    assert table.schema.field("at").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("day").type == pa.date32()
    expected = pa.Table.from_batches(list(_batches()))
    for name in ("id", "price", "at", "day"):
        assert table.column(name).equals(expected.column(name))
    assert table.column("tags")[1].as_py() == '["a", "1"]'


def test_modes(tmp_path):
    url = f"sqlite:///{tmp_path}/out.db"
    with open_backend(url) as db:
        db.write("t", _batches(1))
        with pytest.raises(TargetExistsError, match="replace"):
            db.write("t", _batches(1))
        db.write("t", _batches(1, start=100), mode="append")
        assert sum(b.num_rows for b in db.batches("t")) == 200
        db.write("t", _batches(2, start=1000), mode="replace")
        ids = [r[0] for r in db.rows("SELECT id FROM t ORDER BY id")]
        assert ids == list(range(1000, 1200))
        tables = [r[0] for r in db.rows("SELECT name FROM sqlite_master")]
        assert tables == ["t"]


def test_upsert(tmp_path):
    url = f"sqlite:///{tmp_path}/out.db"
    with open_backend(url) as db:
        db.write("u", iter([pa.record_batch({"k": [1, 2], "v": ["a", "b"]})]), mode="upsert",
                 key="k")
        db.write("u", iter([pa.record_batch({"k": [2, 3], "v": ["B", "c"]})]), mode="upsert",
                 key=["k"])
        assert list(db.rows("SELECT k, v FROM u ORDER BY k")) == [(1, "a"), (2, "B"), (3, "c")]
    with pytest.raises(ConfigurationError, match="key"):
        open_backend(url).write("u", iter([]), mode="upsert")


def _failing(after=2):
    for i, batch in enumerate(_batches(5)):
        if i == after:
            raise RuntimeError("source broke")
        yield batch


def test_replace_failure_leaves_old_table(tmp_path):
    url = f"sqlite:///{tmp_path}/out.db"
    with open_backend(url) as db:
        db.write("t", _batches(1, start=7))
        with pytest.raises(RuntimeError, match="source broke"):
            db.write("t", _failing(), mode="replace")
        assert [r[0] for r in db.rows("SELECT min(id) || ',' || count(*) FROM t")] == ["7,100"]
        names = [r[0] for r in db.rows("SELECT name FROM sqlite_master")]
        assert names == ["t"]


def test_fail_mode_failure_leaves_no_table(tmp_path):
    url = f"sqlite:///{tmp_path}/out.db"
    with open_backend(url) as db:
        with pytest.raises(RuntimeError):
            db.write("t", _failing())
        assert list(db.rows("SELECT name FROM sqlite_master")) == []


def test_append_failure_says_how_many_rows_were_committed(tmp_path):
    url = f"sqlite:///{tmp_path}/out.db"
    with open_backend(url) as db:
        db.write("u", iter([pa.record_batch({"k": [5], "v": ["x"]})]), mode="upsert", key="k")
        stream = iter([pa.record_batch({"k": [1, 2], "v": ["a", "b"]}),
                       pa.record_batch({"k": [3, 5], "v": ["c", "dup"]})])
        with pytest.raises(PartialWriteError, match="2 committed rows") as info:
            db.write("u", stream, mode="append")
        assert info.value.rows_committed == 2
        assert list(db.rows("SELECT count(*) FROM u")) == [(3,)]


def test_append_with_unknown_column_is_a_schema_error(tmp_path):
    url = f"sqlite:///{tmp_path}/out.db"
    with open_backend(url) as db:
        db.write("u", iter([pa.record_batch({"k": [1]})]))
        with pytest.raises(PartialWriteError, match="no column 'zzz'"):
            db.write("u", iter([pa.record_batch({"zzz": [1]})]), mode="append")


def test_held_back_values_among_nulls_and_multibyte_text(tmp_path, sqlite_reader):
    # The fast path flags a row holding a value above its limit with a NULL rowid: stored NULLs
    # must not look like held-back values, a first row may be held back, and text limits are
    # in bytes (octet_length), so 4-byte characters count four times.
    path = str(tmp_path / "mixed.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, note TEXT, body BLOB)")
    big = os.urandom(1_500_000)
    rows = [(0, "😀" * 400_000, big), (1, "😀" * 400_000, None)]
    rows += [(i, None if i % 3 else f"n{i}", None if i % 2 else bytes([i % 256]) * 20)
             for i in range(2, 5000)]
    rows += [(5000, None, big), (5001, "é" * 100, big)]
    conn.executemany("INSERT INTO m VALUES (?, ?, ?)", rows)
    conn.commit()
    conn.close()
    with open_backend(f"sqlite:///{path}") as src:
        table = pa.Table.from_batches(list(src.batches("m", budget="8MB")))
    assert table.to_pylist() == [dict(zip(("id", "note", "body"), r, strict=True)) for r in rows]


def test_held_back_values_in_not_null_columns(tmp_path, monkeypatch, sqlite_reader):
    # A NOT NULL column's held-back value is flagged by the NULL in its place, not by the rowid
    # (one test less per row): it must still be read, in its place, beside nullable columns
    # whose NULLs are data. Checked on one reader and on two.
    path = str(tmp_path / "nn.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, note TEXT, "
                 "body BLOB NOT NULL)")
    big = os.urandom(1_500_000)
    rows = [(0, "x" * 900_000, None, b"")]  # the very first row held back
    rows += [(i, f"n{i}", None if i % 3 else f"note{i}", bytes([i % 256]) * 20)
             for i in range(1, 6000)]
    rows[2500] = (2500, "short", None, big)
    rows[4000] = (4000, "é" * 300_000, "é" * 300_000, b"b")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()
    want = [dict(zip(("id", "name", "note", "body"), r, strict=True)) for r in rows]
    with open_backend(f"sqlite:///{path}") as src:
        assert {name for name, _, not_null in src._table_info("t") if not_null} == {"name", "body"}
        table = pa.Table.from_batches(list(src.batches("t", budget="8MB")))
    assert table.to_pylist() == want
    from membound.backends import sqlite as sqlite_backend

    monkeypatch.setattr(sqlite_backend.os, "cpu_count", lambda: 3)
    monkeypatch.setattr(sqlite_backend, "FAST_MAX_ROWS", 500)
    monkeypatch.setattr(sqlite_backend, "NATIVE_MAX_ROWS", 500)
    with open_backend(f"sqlite:///{path}") as src:
        table = pa.Table.from_batches(list(src.batches("t", budget="8MB")))
    assert table.to_pylist() == want


@pytest.mark.parametrize("widths", [[5, 1_500_000], [16, 16, 16], [3_000_000, 2_000_000, 40],
                                    [100] * 40, [10**9]])
@pytest.mark.parametrize("target", [64 * 1024, 512 * 1024, 4_000_000])
def test_fast_plan_keeps_rows_times_limits_within_the_target(widths, target):
    from membound.backends.sqlite import FAST_MIN_ROWS, SQLiteBackend

    rows, limits = SQLiteBackend._fast_plan(target, widths)
    assert rows >= FAST_MIN_ROWS and len(limits) == len(widths)
    assert rows * sum(limits) <= target or all(limit == 1 for limit in limits)
    # A megabyte-wide column caps itself, not its short neighbours: a column whose width fits
    # an equal share of the row keeps at least that width.
    share = target / rows / len(widths)
    for width, limit in zip(widths, limits, strict=True):
        if max(16, width) <= share:
            assert limit >= max(16, width)


def test_text_that_is_not_utf8_is_a_schema_error_naming_the_column(tmp_path, sqlite_reader):
    path = str(tmp_path / "bad.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO t VALUES (1, 'fine'), (2, CAST(x'ff00fe' AS TEXT))")
    conn.commit()
    conn.close()
    with open_backend(f"sqlite:///{path}") as src, \
            pytest.raises(SchemaError, match="'name'"):
        list(src.batches("t"))


def test_c_reader_takes_integers_in_real_columns_and_casts_declared_types(tmp_path):
    """The C reader reads each column as the storage class its type needs: integers in a REAL
    column as floats, and BOOLEAN, DATE, TIMESTAMP and DECIMAL columns cast from what SQLite
    holds, as the row-by-row path does."""
    require_extension("_sqlitearrow")
    path = str(tmp_path / "types.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, r REAL, ok BOOLEAN, d DATE, "
                 "ts TIMESTAMP, n DECIMAL TEXT(10, 2))")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?)", [
        (1, 2, 1, "2024-02-29", "2024-01-01 10:00:00.5", "12.50"),
        (2, 2.5, 0, None, None, None),
        (3, None, None, "1969-12-31", "1900-01-01 00:00:00", "-0.01"),
    ])
    conn.commit()
    conn.close()
    from membound.backends import sqlite as sqlite_backend

    assert sqlite_backend._sqlite_native() is not None
    with open_backend(f"sqlite:///{path}") as src:
        rows = pa.Table.from_batches(list(src.batches("t"))).to_pylist()
    assert rows == [
        {"id": 1, "r": 2.0, "ok": True, "d": dt.date(2024, 2, 29),
         "ts": dt.datetime(2024, 1, 1, 10, 0, 0, 500000), "n": decimal.Decimal("12.50")},
        {"id": 2, "r": 2.5, "ok": False, "d": None, "ts": None, "n": None},
        {"id": 3, "r": None, "ok": None, "d": dt.date(1969, 12, 31),
         "ts": dt.datetime(1900, 1, 1), "n": decimal.Decimal("-0.01")},
    ]
    assert isinstance(rows[0]["r"], float)
