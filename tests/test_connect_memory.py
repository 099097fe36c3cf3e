"""rows() and write() keep the budget: peak RSS above the post-import baseline, fresh process each.

Each case has a control that does the same work without the bound (fetch_all, or a budget so
large that chunks are 64 MiB) and must go well over the small budget: proof that the workload
is big enough for the test to fail if the chunking were missing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from membound import open_backend
from membound.demo import event_batches

BUDGET = 32_000_000
ALLOWED = 1.1 * BUDGET
ROWS = 2_000_000

CHILD = textwrap.dedent(
    """
    import json, sys
    import membound
    from membound.memory import peak_rss_bytes, reset_peak, rss_bytes, warm_up

    action, url, budget = sys.argv[1:4]
    warm_up(conversion=False)
    with membound.connect(url, max_memory=budget) as db:
        db.fetch_all("SELECT 1")  # driver code paths paged in before the baseline
        baseline = rss_bytes()
        reset_peak()
        if action == "rows":
            count = sum(1 for _ in db.rows("events"))
        elif action == "fetch_all":
            count = len(db.fetch_all("events"))
        else:
            rows = ({"id": i, "kind": "click" if i % 3 else "view", "user_id": i % 9973,
                     "payload": "x" * (i % 200)} for i in range(int(action.split(":")[1])))
            count = db.write("generated", rows, mode="replace").rows
        peak = peak_rss_bytes()
    print(json.dumps({"above": peak - baseline, "rows": count}))
    """
)


def run_child(action: str, url: str, budget: str | int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, action, url, str(budget)],
                         capture_output=True, text=True, check=False, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def events_db(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("connect_bounds") / "events.db")
    with open_backend(f"sqlite:///{path}") as db:
        db.write("events", event_batches(ROWS))
    return path


def test_rows_over_two_million_events_within_budget(events_db):
    result = run_child("rows", f"sqlite:///{events_db}", BUDGET)
    assert result["rows"] == ROWS
    assert result["above"] <= ALLOWED, f"peak {result['above']:,} B above baseline"
    control = run_child("fetch_all", f"sqlite:///{events_db}", BUDGET)
    assert control["rows"] == ROWS
    assert control["above"] > 3 * ALLOWED, "the workload is too small to show the bound"


def test_write_of_two_million_generated_dicts_within_budget(tmp_path):
    url = f"sqlite:///{tmp_path / 'out.db'}"
    result = run_child(f"write:{ROWS}", url, BUDGET)
    assert result["rows"] == ROWS
    assert result["above"] <= ALLOWED, f"peak {result['above']:,} B above baseline"
    control = run_child(f"write:{ROWS}", url, "8GB")
    assert control["above"] > 2 * ALLOWED, "the workload is too small to show the bound"


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize("server", ["postgres_url", "mysql_url"])
def test_rows_over_two_million_events_on_servers(server, events_db, request):
    import membound

    url = request.getfixturevalue(server)
    membound.copy(f"sqlite:///{events_db}?table=events", f"{url}?table=events",
                  mode="replace", max_memory="64MB")
    result = run_child("rows", url, BUDGET)
    assert result["rows"] == ROWS
    assert result["above"] <= ALLOWED, f"peak {result['above']:,} B above baseline"
    control = run_child("fetch_all", url, BUDGET)
    assert control["above"] > 3 * ALLOWED
