"""The column-wise instance builder: the same instances as Django's, and only where it can be."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.db.models import F, signals
from testapp.models import Document, Event, Group, IntItem

from membound.django import chunked
from membound.django.instances import ChunkModelIterable, fast_iterable_for

ROWS = 50


def _populate(alias: str) -> None:
    groups = [Group.objects.using(alias).create(name=f"g{i}") for i in range(3)]
    IntItem.objects.using(alias).bulk_create(
        IntItem(name=f"n{i}", rank=None if i % 5 == 0 else i, score=None if i % 3 else i / 3,
                group=groups[i % 3] if i % 4 else None)
        for i in range(ROWS)
    )
    start = datetime(2024, 1, 1, tzinfo=UTC)
    Event.objects.using(alias).bulk_create(
        Event(user_id=i, ts=start + timedelta(seconds=i, microseconds=i), kind="view",
              amount=None if i % 10 == 0 else i / 7, payload="x" * i, flag=i % 3 == 0)
        for i in range(ROWS)
    )


def _state(obj) -> tuple:
    values = {k: v for k, v in vars(obj).items() if k != "_state"}
    return values, obj._state.db, obj._state.adding, obj.get_deferred_fields()


@pytest.mark.parametrize(
    "make",
    [
        lambda alias: IntItem.objects.using(alias).order_by("pk"),
        lambda alias: Event.objects.using(alias).order_by("-ts"),
        lambda alias: IntItem.objects.using(alias).only("name", "group").order_by("pk"),
        lambda alias: IntItem.objects.using(alias).defer("score").order_by("rank", "pk"),
        lambda alias: IntItem.objects.using(alias).annotate(next_rank=F("rank") + 1),
    ],
    ids=["fk-nulls", "datetimes", "only", "defer", "annotated"],
)
def test_same_instances_as_django(alias, make):
    _populate(alias)
    queryset = make(alias)
    assert fast_iterable_for(queryset) is ChunkModelIterable
    expected = [_state(obj) for obj in queryset.order_by(*queryset.query.order_by, "pk")]
    got = [_state(obj) for obj in chunked(queryset, chunk_size=7)]
    assert got == expected
    assert len(got) == ROWS


def test_related_access_and_save_work_on_built_instances(alias):
    _populate(alias)
    item = next(obj for obj in chunked(IntItem.objects.using(alias)) if obj.group_id)
    assert item.group.name.startswith("g")  # a query on the same alias
    item.name = "changed"
    item.save()  # an UPDATE, not an INSERT: _state.adding is False
    assert IntItem.objects.using(alias).get(pk=item.pk).name == "changed"
    assert IntItem.objects.using(alias).count() == ROWS


def test_django_builds_what_it_must(alias):
    _populate(alias)
    items = IntItem.objects.using(alias)
    assert fast_iterable_for(items.select_related("group")) is None
    assert fast_iterable_for(items.values("name")) is None
    group = Group.objects.using(alias).first()
    assert fast_iterable_for(group.items.all()) is None  # known related objects

    def receiver(**kwargs):
        pass

    signals.post_init.connect(receiver, sender=IntItem)
    try:
        assert fast_iterable_for(items.all()) is None
        rows = list(chunked(items.all(), chunk_size=7))
    finally:
        signals.post_init.disconnect(receiver, sender=IntItem)
    assert len(rows) == ROWS
    assert fast_iterable_for(items.all()) is ChunkModelIterable
    # A related manager's queryset still gets its known related object from Django.
    related = list(chunked(group.items.all(), chunk_size=3))
    assert related and all(obj.group is group for obj in related)


def test_large_values_still_deferred_with_fast_instances(alias):
    Document.objects.using(alias).bulk_create(
        Document(title=f"t{i}", text="y" * (10 if i % 2 else 5000)) for i in range(10)
    )
    docs = list(chunked(Document.objects.using(alias).order_by("pk"), large_values=1000))
    assert [("text" in doc.get_deferred_fields()) for doc in docs] == [
        i % 2 == 0 for i in range(10)
    ]
    assert all(not name.startswith("_membound") for doc in docs for name in vars(doc))


CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    import django
    from django.conf import settings
    settings.configure(
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": sys.argv[2]}},
        INSTALLED_APPS=["membound.django", "testapp"], USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField")
    django.setup()
    from django.db import connection
    from testapp.models import Group
    from membound.django import bulk_create, chunked
    with connection.schema_editor() as editor:
        editor.create_model(Group)
    bulk_create(Group, (Group(name=str(i)) for i in range(1000)), max_memory="16MB")
    assert sum(1 for _ in chunked(Group.objects.all(), max_memory="16MB")) == 1000
    print(sorted(name for name in ("pyarrow", "pandas", "numpy") if name in sys.modules))
    """
)


def test_iteration_and_writes_never_import_pyarrow(tmp_path):
    # The budget's baseline is taken without the Arrow warm-up (Budget.sizer(warm=False)):
    # importing pyarrow for it would cost these processes ~40 MB they never use.
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(Path(__file__).parent),
         str(tmp_path / "db.sqlite")],
        capture_output=True, text=True, check=False, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
