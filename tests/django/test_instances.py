"""The column-wise instance builder: the same instances as Django's, and only where it can be."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.db import connections
from django.db.models import F, signals
from django.test import override_settings
from testapp.models import Document, Event, Group, IntItem, Stamped

from membound.django import chunked
from membound.django.instances import ChunkModelIterable, fast_iterable_for
from membound.django.loaders import FastTimestamps

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



def _exact(obj) -> list:
    """Each attribute's value with its type and, for datetimes, its tzinfo object's identity:
    an aware datetime equals one of another tzinfo, so == alone would not tell them apart."""
    exact = []
    for name, value in sorted(vars(obj).items()):
        if name == "_state":
            continue
        zone = getattr(value, "tzinfo", None)
        exact.append((name, type(value), value, repr(zone), id(zone)))
    return exact


def _timestamped(alias: str) -> None:
    _populate(alias)
    Stamped.objects.using(alias).bulk_create(Stamped(name=f"s{i}") for i in range(ROWS))


@pytest.mark.parametrize(
    "make",
    [
        lambda alias: Event.objects.using(alias).order_by("pk"),
        lambda alias: Event.objects.using(alias).annotate(
            later=F("ts") + timedelta(days=1)).order_by("-ts"),
        lambda alias: Stamped.objects.using(alias).order_by("created", "pk"),
    ],
    ids=["column", "annotation-and-ordering", "auto_now_add"],
)
@pytest.mark.parametrize(
    "zone",
    [{"USE_TZ": True}, {"USE_TZ": False, "TIME_ZONE": "America/New_York"}],
    ids=["aware", "naive-new-york"],
)
def test_datetimes_are_djangos_exactly(alias, make, zone):
    _timestamped(alias)
    with override_settings(**zone):
        queryset = make(alias)
        expected = [_exact(obj) for obj in queryset]
        got = [_exact(obj) for obj in chunked(queryset, chunk_size=7)]
    assert got == expected
    assert len(got) == ROWS


def test_postgres_timestamps_load_in_c_when_psycopg_has_it(alias):
    if alias != "postgres":
        pytest.skip("the C timestamptz loader is PostgreSQL's")
    import psycopg
    from psycopg.types.datetime import TimestamptzLoader

    if psycopg.adapters.get_loader(1184, psycopg.pq.Format.TEXT) is TimestamptzLoader:
        pytest.skip("psycopg without its C implementation: Django's loader is kept")
    timestamps = FastTimestamps.for_connection(connections[alias])
    assert timestamps is not None
    _populate(alias)
    loaded = []

    def spy(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        cursor = context["cursor"].cursor
        loaded.append(cursor.adapters.get_loader(1184, psycopg.pq.Format.TEXT))
        return result

    with connections[alias].execute_wrapper(spy):
        rows = list(chunked(Event.objects.using(alias).order_by("pk"), chunk_size=20))
    assert len(rows) == ROWS
    assert loaded and all(loader is timestamps.loader for loader in loaded)
    # Django's own iteration keeps Django's loader: the C one is set on membound's cursors only.
    loaded.clear()
    with connections[alias].execute_wrapper(spy):
        list(Event.objects.using(alias).order_by("pk"))
    assert loaded and timestamps.loader not in loaded


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
    print(sorted(
        name for name in ("pyarrow", "pandas", "numpy", "psycopg") if name in sys.modules))
    """
)


def test_iteration_and_writes_never_import_pyarrow(tmp_path):
    # The budget's baseline is taken without the Arrow warm-up (Budget.sizer(warm=False)):
    # importing pyarrow for it would cost these processes ~40 MB they never use. Nor does a
    # SQLite process import psycopg (~10 MB) for PostgreSQL's timestamp loader.
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(Path(__file__).parent),
         str(tmp_path / "db.sqlite")],
        capture_output=True, text=True, check=False, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
