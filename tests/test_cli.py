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
    for command in (["--help"], ["copy", "--help"], ["demo", "--help"]):
        result = runner.invoke(main, command)
        assert result.exit_code == 0 and "Example" in result.output or command == ["--help"]
