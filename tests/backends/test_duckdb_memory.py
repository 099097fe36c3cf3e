"""DuckDB reads keep the budget: peak RSS above the post-import baseline, in a fresh process.

Same pattern as tests/test_memory_bounds.py: each case also runs with a budget so large that the
bound does nothing, and that run must go well over the small budget.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

pytest.importorskip("duckdb", reason="the duckdb extra is not installed")

from membound import open_backend  # noqa: E402
from membound.demo import event_batches  # noqa: E402

pytestmark = pytest.mark.slow

BUDGET = 32_000_000
ALLOWED = 1.1 * BUDGET
UNBOUNDED = "8GB"

CHILD = textwrap.dedent(
    """
    import json, sys
    import membound
    import membound.backends.files, membound.backends.duckdb
    from membound.memory import peak_rss_bytes, reset_peak, rss_bytes, warm_up

    warm_up()
    source, target, budget = sys.argv[1:4]
    baseline = rss_bytes()
    reset_peak()
    report = membound.copy(source, target, max_memory=budget, mode="replace")
    peak = peak_rss_bytes()
    print(json.dumps({"above": peak - baseline, "rows": report.rows}))
    """
)


def run_child(source: str, target: str, budget: str | int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, source, target, str(budget)],
        capture_output=True, text=True, check=False, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def events_duckdb(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("duckdb_bounds") / "events.duckdb")
    with open_backend(f"duckdb:///{path}") as db:
        db.write("events", event_batches(1_000_000))
    return path


def test_million_rows_duckdb_to_parquet_within_budget(events_duckdb, tmp_path):
    target = str(tmp_path / "events.parquet")
    result = run_child(f"duckdb:///{events_duckdb}?table=events", target, BUDGET)
    assert result["rows"] == 1_000_000
    assert result["above"] <= ALLOWED, f"peak {result['above']:,} B above baseline"

    table = pq.read_table(target, columns=["id", "payload"])
    assert table.column("id").to_pylist() == list(range(1, 1_000_001))
    with open_backend(f"duckdb:///{events_duckdb}") as db:
        (expected,) = next(db.rows("SELECT sum(length(payload)) FROM events"))
    assert pc.sum(pc.utf8_length(table.column("payload"))).as_py() == expected

    control = run_child(f"duckdb:///{events_duckdb}?table=events", str(tmp_path / "c.parquet"),
                        UNBOUNDED)
    assert control["above"] > ALLOWED, "workload too small to show the bound"


def _twenty_megabyte_docs(tmp_path) -> str:
    """60,000 rows; every 6,000th body is a 20 MB string, the others 32 bytes."""
    source = str(tmp_path / "docs.duckdb")
    import duckdb

    con = duckdb.connect(source)
    con.execute(
        "CREATE TABLE docs AS SELECT range AS id, 'document ' || range || repeat('x', 40) "
        "AS title, CASE WHEN range % 6000 = 3000 THEN repeat(sha256(range::VARCHAR), 312500) "
        "ELSE md5(range::VARCHAR) END AS body FROM range(60000)"
    )
    con.close()
    return source


def test_twenty_megabyte_values_are_read_one_at_a_time(tmp_path):
    """Large values are held back and read alone: a budget of 4x the largest value holds."""
    source = _twenty_megabyte_docs(tmp_path)
    budget = 80_000_000
    target = str(tmp_path / "docs.arrows")
    result = run_child(f"duckdb:///{source}?table=docs", target, budget)
    assert result["rows"] == 60_000
    assert result["above"] <= 1.1 * budget, f"peak {result['above']:,} B above baseline"
    with pa.ipc.open_stream(target) as reader:
        table = reader.read_all()
    assert table.column("id").to_pylist() == list(range(60_000))
    lengths = pc.binary_length(table.column("body")).to_pylist()
    assert [i for i, n in enumerate(lengths) if n > 32] == list(range(3000, 60_000, 6000))
    assert set(lengths[3000::6000]) == {20_000_000}

    control = run_child(f"duckdb:///{source}?table=docs", str(tmp_path / "c.arrows"), UNBOUNDED)
    assert control["above"] > 1.1 * budget, "workload too small to show the bound"


@pytest.mark.xfail(
    strict=True,
    reason="a 20 MB value costs about 3.4x its size to read from DuckDB: DuckDB makes it whole "
    "in one block (plus the blocks it read it from) to scan past it, and again to read it "
    "alone, beside its Arrow copy; measured 64 MB above baseline for a 32 MB budget (175 MB "
    "before values were held back). See docs/duckdb.md: budget >= 4x the largest value.",
)
def test_twenty_megabyte_values_within_budget(tmp_path):
    source = _twenty_megabyte_docs(tmp_path)
    target = str(tmp_path / "docs.arrows")
    result = run_child(f"duckdb:///{source}?table=docs", target, BUDGET)
    assert result["rows"] == 60_000
    assert result["above"] <= ALLOWED, f"peak {result['above']:,} B above baseline"
