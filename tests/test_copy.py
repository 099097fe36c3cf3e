from __future__ import annotations

import json
import sqlite3

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import membound
from membound import (
    CodecError,
    ConfigurationError,
    CorruptFileError,
    NotFoundError,
    QueryError,
    TargetExistsError,
    URLError,
)
from membound.codecs import decode_any
from membound.copy import ColumnCodecs
from membound.demo import event_batches


@pytest.fixture
def events_db(tmp_path):
    path = tmp_path / "events.db"
    with membound.open_backend(f"sqlite:///{path}") as db:
        db.write("events", event_batches(5_000))
    return path


def test_copy_sqlite_to_parquet_and_back(events_db, tmp_path):
    out = tmp_path / "events.parquet"
    report = membound.copy(f"sqlite:///{events_db}?table=events", out, max_memory="16MB")
    assert report.rows == 5_000 and report.batches >= 1
    assert report.within_budget
    assert pq.read_metadata(out).num_rows == 5_000

    back = tmp_path / "back.db"
    membound.copy(out, f"sqlite:///{back}", target_table="events")
    conn = sqlite3.connect(back)
    original = sqlite3.connect(events_db)
    query = "SELECT id, user_id, ts, kind, amount, payload, flag FROM events ORDER BY id"
    assert conn.execute(query).fetchall() == original.execute(query).fetchall()


def test_copy_query_with_params(events_db, tmp_path):
    out = tmp_path / "few.jsonl"
    report = membound.copy(
        events_db, out, query="SELECT id, kind FROM events WHERE id <= ?", params=[3])
    assert report.rows == 3
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == [{"id": 1, "kind": "view"}, {"id": 2, "kind": "buy"},
                     {"id": 3, "kind": "share"}]


def test_report_json_and_text(events_db, tmp_path):
    report = membound.copy(f"sqlite:///{events_db}?table=events", tmp_path / "e.csv")
    data = json.loads(report.to_json(tmp_path / "r.json"))
    assert data["rows"] == 5_000 and data["within_budget"] is True
    assert set(data["batch_rows_spread"]) == {"min", "median", "max"}
    assert json.loads((tmp_path / "r.json").read_text())["rows"] == 5_000
    assert "peak memory" in str(report)


def test_bad_inputs_are_clear_errors_and_leave_the_target(events_db, tmp_path):
    out = tmp_path / "out.parquet"
    with pytest.raises(URLError, match="known schemes"):
        membound.copy("oracle://h/db", out)
    with pytest.raises(NotFoundError, match="does not exist"):
        membound.copy(f"sqlite:///{tmp_path}/nope.db?table=t", out)
    with pytest.raises(NotFoundError, match="no table 'nope'"):
        membound.copy(f"sqlite:///{events_db}?table=nope", out)
    with pytest.raises(QueryError, match="rejected"):
        membound.copy(events_db, out, query="SELEC oops")
    assert not out.exists()

    membound.copy(f"sqlite:///{events_db}?table=events", out)
    before = out.read_bytes()
    with pytest.raises(TargetExistsError, match="replace"):
        membound.copy(f"sqlite:///{events_db}?table=events", out)
    with pytest.raises(QueryError):
        membound.copy(events_db, out, query="SELECT nope FROM events", mode="replace")
    assert out.read_bytes() == before

    truncated = tmp_path / "cut.parquet"
    truncated.write_bytes(before[: len(before) // 2])
    target = tmp_path / "t.db"
    with pytest.raises(CorruptFileError):
        membound.copy(truncated, f"sqlite:///{target}", target_table="t")
    if target.exists():
        assert sqlite3.connect(target).execute("SELECT name FROM sqlite_master").fetchall() == []


def test_option_conflicts(events_db, tmp_path):
    with pytest.raises(ConfigurationError, match="not both"):
        membound.copy(events_db, tmp_path / "x.csv", query="SELECT 1", source_table="events")
    with pytest.raises(ConfigurationError, match="params"):
        membound.copy(events_db, tmp_path / "x.csv", source_table="events", params=[1])
    with pytest.raises(ConfigurationError, match="mode"):
        membound.copy(events_db, tmp_path / "x.csv", source_table="events",
                      mode="merge")  # type: ignore[arg-type]


def test_column_codecs_round_trip_through_parquet(events_db, tmp_path):
    packed = tmp_path / "packed.parquet"
    report = membound.copy(f"sqlite:///{events_db}?table=events", packed,
                           compress={"payload": "zstd", "ts": "msgpack+lz4"})
    assert "column 'payload' encoded with 'zstd'" in report.notes
    schema = pq.read_schema(packed)
    assert schema.field("payload").type == pa.binary()
    assert schema.field("payload").metadata[b"membound.codec"] == b"zstd"
    first = pq.read_table(packed).column("payload")[0].as_py()
    assert decode_any(first) == sqlite3.connect(events_db).execute(
        "SELECT payload FROM events ORDER BY id LIMIT 1").fetchone()[0].encode()

    back = tmp_path / "back.parquet"
    membound.copy(packed, back, decompress=["payload", "ts"])
    restored = pq.read_table(back)
    assert restored.schema.field("payload").type == pa.string()
    assert restored.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert b"membound.codec" not in (restored.schema.field("payload").metadata or {})
    direct = tmp_path / "direct.parquet"
    membound.copy(f"sqlite:///{events_db}?table=events", direct)
    assert restored.equals(pq.read_table(direct))


def test_column_codecs_through_a_database_need_the_type(events_db, tmp_path):
    packed, back = tmp_path / "packed.db", tmp_path / "back.db"
    membound.copy(f"sqlite:///{events_db}?table=events", f"sqlite:///{packed}",
                  compress={"payload": "zstd"})
    conn = sqlite3.connect(packed)
    assert conn.execute("SELECT typeof(payload) FROM events LIMIT 1").fetchone() == ("blob",)
    # SQLite keeps no Arrow metadata: bytes come back unless the type is named.
    membound.copy(f"sqlite:///{packed}?table=events", f"sqlite:///{back}",
                  decompress={"payload": "string"})
    query = "SELECT id, payload FROM events ORDER BY id"
    assert (sqlite3.connect(back).execute(query).fetchall()
            == sqlite3.connect(events_db).execute(query).fetchall())


def test_column_codecs_stream_batch_by_batch():
    seen = []

    def batches():
        for batch in event_batches(30_000):
            seen.append(batch.num_rows)
            yield batch

    stream = ColumnCodecs({"payload": "zstd"}).wrap(batches())
    first = next(stream)
    assert seen == [first.num_rows]  # nothing read ahead
    stream.close()


def test_column_codec_mistakes(events_db, tmp_path):
    out = tmp_path / "o.parquet"
    source = f"sqlite:///{events_db}?table=events"
    with pytest.raises(ConfigurationError, match="no column 'nope'.*id, user_id"):
        membound.copy(source, out, compress={"nope": "zstd"})
    with pytest.raises(ConfigurationError, match="is int64.*msgpack\\+zstd"):
        membound.copy(source, out, compress={"id": "zstd"})
    with pytest.raises(ConfigurationError, match="not binary"):
        membound.copy(source, out, decompress=["kind"])
    with pytest.raises(ConfigurationError, match="both"):
        membound.copy(source, out, compress={"kind": "zstd"}, decompress=["kind"])
    with pytest.raises(ConfigurationError, match="does not fit a column"):
        membound.copy(source, out, compress={"kind": "arrow"})
    with pytest.raises(ConfigurationError, match="not an Arrow type"):
        membound.copy(source, out, decompress={"payload": "text!"})
    with pytest.raises(CodecError, match="unknown codec"):
        membound.copy(source, out, compress={"kind": "brotli"})
    assert not out.exists()
