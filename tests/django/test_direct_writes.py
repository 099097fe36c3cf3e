"""bulk_create's direct path (membound.django.direct) writes what Django's bulk_create writes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.db.models import Value
from django.db.models.functions import Lower
from testapp.models import (
    Defaulted,
    Document,
    Event,
    Group,
    IntItem,
    Stamped,
    StrItem,
    UUIDItem,
)

from membound.django import bulk_create
from membound.django.direct import direct_insert_for

ROWS = 300
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def _rows(alias: str, model, fields: list[str]) -> list[tuple]:
    return list(model.objects.using(alias).order_by(*fields).values_list(*fields))


def _events():
    for i in range(ROWS):
        yield Event(
            user_id=i * 7, ts=EPOCH + timedelta(seconds=i, microseconds=i * 13), kind="view",
            amount=None if i % 10 == 0 else i / 7, payload=None if i % 9 == 0 else "é" * i,
            flag=None if i % 11 == 0 else i % 3 == 0,
        )


def _items(groups):
    # An int where the field stores a str, a str where it stores an int: the field converts.
    for i in range(ROWS):
        yield IntItem(name=f"n{i}" if i % 4 else i, rank=None if i % 5 == 0 else str(i),
                      score=i // 3 if i % 2 else i / 3, group=groups[i % 3] if i % 4 else None)


@pytest.mark.parametrize(
    ("model", "make", "fields"),
    [
        (Event, lambda groups: _events(),
         ["user_id", "ts", "kind", "amount", "payload", "flag"]),
        (IntItem, _items, ["name", "rank", "score", "group"]),
        (StrItem, lambda groups: (StrItem(code=f"c{i:04d}", name="x") for i in range(ROWS)),
         ["code", "name"]),
        (Document, lambda groups: (Document(title=str(i), body=bytes([i % 256]) * i,
                                            text=None) for i in range(ROWS)),
         ["title", "body", "text"]),
    ],
    ids=["events", "fk-and-conversions", "str-pk", "binary"],
)
def test_same_rows_as_django(alias, model, make, fields):
    groups = [Group.objects.using(alias).create(name=f"g{i}") for i in range(3)]
    assert direct_insert_for(model.objects.using(alias), {}) is not None
    assert bulk_create(model.objects.using(alias), make(groups), max_memory="1MB") == ROWS
    ours = _rows(alias, model, fields)
    model.objects.using(alias).all().delete()
    model.objects.using(alias).bulk_create(list(make(groups)))
    assert ours == _rows(alias, model, fields)
    assert len(ours) == ROWS


def test_uuid_defaults_and_instance_state(alias):
    items = [UUIDItem(name=f"u{i}", rank=i) for i in range(50)]
    assert bulk_create(UUIDItem.objects.using(alias), iter(items)) == 50
    assert all(isinstance(item.pk, uuid.UUID) for item in items)  # the field's default ran
    assert all(not item._state.adding and item._state.db == alias for item in items)
    stored = set(UUIDItem.objects.using(alias).values_list("pk", flat=True))
    assert stored == {item.pk for item in items}


def test_primary_keys_set_only_when_asked(alias):
    fast = [IntItem(name=f"a{i}") for i in range(20)]
    bulk_create(IntItem.objects.using(alias), fast)
    assert all(item.pk is None for item in fast)
    slow = [IntItem(name=f"b{i}") for i in range(20)]
    bulk_create(IntItem.objects.using(alias), slow, set_primary_keys=True)
    assert all(item.pk is not None for item in slow)  # all three databases return them
    assert IntItem.objects.using(alias).count() == 40


def test_auto_now_runs_as_in_django(alias):
    assert direct_insert_for(Stamped.objects.using(alias), {}) is not None
    before = datetime.now(UTC)
    bulk_create(Stamped.objects.using(alias), (Stamped(name=str(i)) for i in range(10)))
    stamps = list(Stamped.objects.using(alias).values_list("created", flat=True))
    assert len(stamps) == 10 and all(stamp >= before - timedelta(seconds=1) for stamp in stamps)


def test_what_only_django_can_write(alias):
    assert direct_insert_for(Defaulted.objects.using(alias), {}) is None  # db_default
    assert direct_insert_for(IntItem.objects.using(alias), {"ignore_conflicts": True}) is None
    bulk_create(Defaulted.objects.using(alias), (Defaulted(name=str(i)) for i in range(10)))
    assert set(Defaulted.objects.using(alias).values_list("rank", flat=True)) == {7}
    # An expression value: that batch goes to Django, which puts it into the SQL.
    bulk_create(IntItem.objects.using(alias), [IntItem(name=Lower(Value("ABC")))])
    assert list(IntItem.objects.using(alias).values_list("name", flat=True)) == ["abc"]
