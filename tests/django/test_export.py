"""QuerySets as Arrow batches, export_queryset, and the membound_export management command."""

from __future__ import annotations

import io
import json
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest
from django.core.management import CommandError, call_command
from testapp.models import Event, UUIDItem

from membound.django import export_queryset, queryset_batches
from membound.errors import ConfigurationError

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def _events(alias: str, count: int = 500) -> None:
    Event.objects.using(alias).bulk_create(
        Event(user_id=g % 13, ts=EPOCH + timedelta(seconds=g), kind=("click", "buy")[g % 2],
              amount=None if g % 10 == 0 else g / 7, payload="x" * (g % 40), flag=g % 3 == 0)
        for g in range(count)
    )


def test_batches_are_typed_and_complete(alias):
    _events(alias)
    queryset = Event.objects.using(alias).order_by("-ts")
    batches = list(queryset_batches(queryset, max_memory="1MB"))
    assert len(batches) > 1
    schema = batches[0].schema
    assert str(schema.field("ts").type) == "timestamp[us, tz=UTC]"
    assert str(schema.field("flag").type) == "bool" and str(schema.field("id").type) == "int64"
    rows = [row for batch in batches for row in zip(*(c.to_pylist() for c in batch.columns),
                                                    strict=True)]
    expected = list(queryset.order_by("-ts", "pk").values_list(*schema.names))
    assert rows == expected


def test_uuid_and_values_columns(alias):
    UUIDItem.objects.using(alias).bulk_create(
        UUIDItem(id=uuid.UUID(int=i + 1), name=f"n{i}", rank=i) for i in range(30))
    batch = next(queryset_batches(UUIDItem.objects.using(alias).values("id", "rank")))
    assert batch.schema.field("id").metadata == {b"membound.type": b"uuid"}
    assert batch.column("id").to_pylist()[0] == str(uuid.UUID(int=1))


def test_export_to_parquet_and_sqlite(alias, tmp_path):
    _events(alias)
    queryset = Event.objects.using(alias).filter(kind="buy")
    report = export_queryset(queryset, tmp_path / "buy.parquet", max_memory="1MB")
    assert report.rows == 250 and report.batches > 1
    table = pq.read_table(tmp_path / "buy.parquet")
    assert sorted(table.column("id").to_pylist()) == sorted(queryset.values_list("id", flat=True))

    report = export_queryset(queryset, f"sqlite:///{tmp_path}/copy.db", max_memory="1MB")
    with sqlite3.connect(tmp_path / "copy.db") as conn:
        assert conn.execute("SELECT count(*), sum(user_id) FROM testapp_event").fetchone() == (
            250, sum(queryset.values_list("user_id", flat=True)))


def test_management_command(alias, tmp_path):
    _events(alias)
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "membound_export", "testapp.Event", str(tmp_path / "e.jsonl"), "--filter", "kind=click",
        "--filter", "user_id__in=1,2,3", "--max-memory", "8MB", "--database", alias,
        "--fields", "id,user_id,payload", "--order-by=-id", "--no-progress",
        "--report-json", str(tmp_path / "report.json"), stdout=out, stderr=err,
    )
    lines = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    expected = list(Event.objects.using(alias).filter(kind="click", user_id__in=[1, 2, 3])
                    .order_by("-id").values("id", "user_id", "payload"))
    assert lines == expected and lines
    assert "rows" in out.getvalue()
    assert json.loads((tmp_path / "report.json").read_text())["rows"] == len(expected)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["nope.Model", "x.parquet"], "not an installed model"),
        (["testapp.Event", "x.parquet", "--filter", "kind"], "FIELD=VALUE"),
        (["testapp.Event", "x.parquet", "--filter", "colour=red"], "check --filter"),
        (["testapp.Event", "x.parquet", "--max-memory", "lots"], "--max-memory"),
        (["testapp.Event", "x.parquet", "--order-by", "?"], "random"),
    ],
)
def test_command_errors(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CommandError, match=message):
        call_command("membound_export", *argv, "--no-progress", stdout=io.StringIO())


def test_export_arguments():
    with pytest.raises(ConfigurationError, match="QuerySet"):
        export_queryset(Event, "x.parquet")
