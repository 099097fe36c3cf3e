"""chunked() and bulk_create() keep their budget: peak RSS above a post-import baseline,
measured in a fresh process on a SQLite file. Each case has a control, the same workload the
plain Django way, that goes well over the budget: proof the workload is big enough to show it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BUDGET = 16_000_000
ALLOWED = 1.1 * BUDGET
ROWS = 100_000
# Rows written by the bulk_create cases (the control holds them all: ~55 MB).
WRITE_ROWS = 60_000

CHILD = textwrap.dedent(
    """
    import json, sqlite3, sys
    from datetime import UTC, datetime, timedelta
    sys.path.insert(0, sys.argv[1])
    import django
    from django.conf import settings
    action, path = sys.argv[2], sys.argv[3]
    settings.configure(
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": path}},
        INSTALLED_APPS=["membound.django", "testapp"], USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField")
    django.setup()
    from django.db import connection
    from testapp.models import Event
    from membound.django import bulk_create, chunked
    from membound.memory import peak_rss_bytes, reset_peak, rss_bytes

    EPOCH = datetime(2024, 1, 1, tzinfo=UTC)

    def events(count):
        for g in range(1, count + 1):
            yield Event(user_id=g % 1000, ts=EPOCH + timedelta(seconds=g), kind="view",
                        amount=g / 7, payload="%032x" % g * (1 + g % 6), flag=g % 3 == 0)

    if action == "build":
        with connection.schema_editor() as editor:
            editor.create_model(Event)
        rows = ((g, g % 1000, (EPOCH + timedelta(seconds=g)).isoformat(), "view", g / 7,
                 "%032x" % g * (1 + g % 6), g % 3 == 0) for g in range(1, int(sys.argv[4]) + 1))
        # Raw sqlite3: building the table is not what is measured, and it is 20x faster.
        raw = sqlite3.connect(path)
        raw.executemany("INSERT INTO testapp_event VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        raw.commit()
        sys.exit(0)
    budget = sys.argv[4]
    Event.objects.first()  # compile a query once, outside the measurement
    baseline = rss_bytes()
    reset_peak()
    if action == "chunked":
        rows = sum(1 for event in chunked(Event.objects.all(), max_memory=budget))
    elif action == "plain":
        rows = sum(1 for event in Event.objects.all())
    elif action == "bulk_create":
        rows = bulk_create(Event, events(int(sys.argv[5])), max_memory=budget)
    elif action == "django_bulk_create":
        rows = len(Event.objects.bulk_create(events(int(sys.argv[5])), batch_size=2000))
    peak = peak_rss_bytes()
    print(json.dumps({"above": peak - baseline, "rows": rows}))
    """
)


def child(*argv: object) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(Path(__file__).parent), *map(str, argv)],
        capture_output=True, text=True, check=False, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


@pytest.fixture(scope="module")
def events_db(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("django-bounds") / "events.db")
    child("build", path, ROWS)
    return path


def test_chunked_iteration_within_budget(events_db):
    result = child("chunked", events_db, BUDGET)
    assert result["rows"] == ROWS
    assert result["above"] <= ALLOWED, f"peak {result['above']:,} B above baseline"

    control = child("plain", events_db, BUDGET)
    assert control["rows"] == ROWS
    assert control["above"] > ALLOWED, "workload too small to show the bound"


def test_bulk_create_from_generator_within_budget(tmp_path):
    path = str(tmp_path / "empty.db")
    child("build", path, 0)
    result = child("bulk_create", path, BUDGET, WRITE_ROWS)
    assert result["rows"] == WRITE_ROWS
    assert result["above"] <= ALLOWED, f"peak {result['above']:,} B above baseline"

    control_path = str(tmp_path / "control.db")
    child("build", control_path, 0)
    control = child("django_bulk_create", control_path, BUDGET, WRITE_ROWS)
    assert control["above"] > ALLOWED, "workload too small to show the bound"


@pytest.mark.slow
def test_bulk_create_million_within_budget(tmp_path):
    path = str(tmp_path / "million.db")
    child("build", path, 0)
    result = child("bulk_create", path, "32MB", 1_000_000)
    assert result["rows"] == 1_000_000
    assert result["above"] <= 1.1 * 32_000_000, f"peak {result['above']:,} B above baseline"
