from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import membound
from membound.cli import main
from membound.demo import event_batches


@pytest.fixture
def events_db(tmp_path):
    path = tmp_path / "events.db"
    with membound.open_backend(f"sqlite:///{path}") as db:
        db.write("events", event_batches(2_000))
    return path


def test_copy_prints_the_report_and_saves_json(events_db, tmp_path):
    out = tmp_path / "events.parquet"
    report = tmp_path / "report.json"
    result = CliRunner().invoke(main, [
        "copy", f"sqlite:///{events_db}", str(out), "--table", "events",
        "--max-memory", "32MB", "--report-json", str(report)])
    assert result.exit_code == 0, result.output
    assert "peak memory" in result.output and "2,000" in result.output
    assert pq.read_metadata(out).num_rows == 2_000
    assert json.loads(report.read_text())["rows"] == 2_000


def test_copy_query_and_params(events_db, tmp_path):
    out = tmp_path / "x.csv"
    result = CliRunner().invoke(main, [
        "copy", str(events_db), str(out), "--query", "SELECT id FROM events WHERE id < ?",
        "--param", "4"])
    assert result.exit_code == 0, result.output
    assert out.read_text().split() == ['"id"', "1", "2", "3"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["copy", "oracle://x/y", "o.parquet"], "known schemes"),
        (["copy", "sqlite:///missing.db?table=t", "o.parquet"], "does not exist"),
        (["copy", "{db}", "o.parquet", "--table", "nope"], "no table 'nope'"),
        (["copy", "{db}", "o.parquet", "--query", "SELEC 1"], "rejected"),
        (["copy", "{db}", "o.parquet", "--table", "events", "--max-memory", "lots"],
         "not a size"),
        (["copy", "{db}", "o.parquet", "--table", "events", "--query", "SELECT 1"],
         "not both"),
    ],
)
def test_bad_input_exits_non_zero_with_one_sentence(events_db, tmp_path, monkeypatch, args,
                                                    message):
    monkeypatch.chdir(tmp_path)
    args = [a.replace("{db}", str(events_db)) for a in args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o.parquet").exists()


def test_existing_target_needs_a_mode(events_db, tmp_path):
    out = tmp_path / "o.parquet"
    runner = CliRunner()
    assert runner.invoke(main, ["copy", str(events_db), str(out), "-t", "events"]).exit_code == 0
    before = out.read_bytes()
    result = runner.invoke(main, ["copy", str(events_db), str(out), "-t", "events"])
    assert result.exit_code == 1 and "replace" in result.output
    assert out.read_bytes() == before
    result = runner.invoke(main, ["copy", str(events_db), str(out), "-t", "events",
                                  "--mode", "replace"])
    assert result.exit_code == 0


def test_demo(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--rows", "3000", "--dir", str(tmp_path / "d"),
                                       "--max-memory", "16MB"])
    assert result.exit_code == 0, result.output
    assert "within budget" in result.output
    assert pq.read_metadata(tmp_path / "d" / "events.parquet").num_rows == 3000


def test_help_texts():
    runner = CliRunner()
    for command in (["--help"], ["copy", "--help"], ["demo", "--help"], ["codecs", "--help"]):
        result = runner.invoke(main, command)
        assert result.exit_code == 0 and "Example" in result.output or command == ["--help"]


def test_copy_compress_and_decompress_columns(events_db, tmp_path):
    packed, back = tmp_path / "packed.parquet", tmp_path / "back.parquet"
    runner = CliRunner()
    result = runner.invoke(main, ["copy", str(events_db), str(packed), "-t", "events",
                                  "--compress", "payload=zstd", "--compress", "kind=msgpack"])
    assert result.exit_code == 0, result.output
    assert "encoded with 'zstd'" in result.output
    assert str(pq.read_schema(packed).field("payload").type) == "binary"
    result = runner.invoke(main, ["copy", str(packed), str(back), "--decompress", "payload",
                                  "--decompress", "kind=string"])
    assert result.exit_code == 0, result.output
    restored = pq.read_table(back)
    assert str(restored.schema.field("payload").type) == "string"
    assert restored.column("kind").to_pylist()[:4] == ["view", "buy", "share", "click"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--compress", "payload"], "not COL=CODEC"),
        (["--compress", "payload=zstd", "--compress", "payload=lz4"], "named twice"),
        (["--compress", "nope=zstd"], "no column 'nope'"),
        (["--compress", "payload=brotli"], "unknown codec"),
        (["--decompress", "payload"], "not binary"),
    ],
)
def test_column_codec_mistakes(events_db, tmp_path, args, message):
    result = CliRunner().invoke(main, ["copy", str(events_db), str(tmp_path / "o.parquet"),
                                       "-t", "events", *args])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o.parquet").exists()


def test_codecs_measures_and_recommends(events_db):
    result = CliRunner().invoke(main, ["codecs", f"sqlite:///{events_db}", "--table", "events",
                                       "--sample", "200kB"])
    assert result.exit_code == 0, result.output
    for codec in ("msgpack+zstd", "arrow+lz4", "pickle+gzip"):
        assert codec in result.output
    assert "recommended:" in result.output and "encode MB/s" in result.output


def test_codecs_on_one_column(events_db):
    result = CliRunner().invoke(main, ["codecs", str(events_db), "-t", "events",
                                       "--column", "payload", "--sample", "100kB"])
    assert result.exit_code == 0, result.output
    assert "one value of column 'payload'" in result.output
    assert "zstd" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--column", "nope"], "no column 'nope'"),
        (["--sample", "lots"], "not a size"),
        (["--query", "SELECT 1"], "not both"),
    ],
)
def test_codecs_mistakes(events_db, args, message):
    result = CliRunner().invoke(main, ["codecs", str(events_db), "-t", "events", *args])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output


def test_codecs_stops_reading_at_the_sample(events_db, monkeypatch):
    import membound.codecs_bench as bench

    pulled, closed = [], []
    real_open = bench.open_backend

    class Counting:
        def __init__(self, backend):
            self.backend = backend

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.backend.close()

        def batches(self, *args, **kwargs):
            try:
                for batch in self.backend.batches(*args, **kwargs):
                    pulled.append(batch.nbytes)
                    yield batch
            finally:
                closed.append(True)

    monkeypatch.setattr(bench, "open_backend", lambda url, **kw: Counting(real_open(url, **kw)))
    result = CliRunner().invoke(main, ["codecs", str(events_db), "-t", "events",
                                       "--sample", "20kB", "--rows-per-value", "50"])
    assert result.exit_code == 0, result.output
    assert closed == [True]
    assert sum(pulled[:-1]) < 20_000 <= sum(pulled)  # the last batch read completed the sample


def test_copy_value_codec_into_and_out_of_a_key_value_store(tmp_path):
    pytest.importorskip("lmdb")
    pytest.importorskip("msgpack")
    source = tmp_path / "kv.parquet"
    import pyarrow as pa

    pq.write_table(pa.table({"key": ["a", "b"], "value": [{"n": 1}, {"n": 2}]}), source)
    store = f"lmdb:///{tmp_path / 'store'}"
    result = CliRunner().invoke(main, ["copy", str(source), store, "--value-codec",
                                       "msgpack+zstd", "--quiet"])
    assert result.exit_code == 0, result.output
    back = tmp_path / "back.parquet"
    result = CliRunner().invoke(main, ["copy", f"{store}?keys=text", str(back), "--value-codec",
                                       "msgpack+zstd", "--quiet"])
    assert result.exit_code == 0, result.output
    assert pq.read_table(back).to_pylist() == [{"key": "a", "value": {"n": 1}},
                                               {"key": "b", "value": {"n": 2}}]


def test_value_codec_needs_a_key_value_side(events_db, tmp_path):
    result = CliRunner().invoke(main, ["copy", str(events_db), str(tmp_path / "x.parquet"),
                                       "-t", "events", "--value-codec", "msgpack"])
    assert result.exit_code != 0 and "key-value store" in result.output
