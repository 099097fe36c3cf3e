"""chunked(): every row exactly once and in the QuerySet's order, on SQLite, PostgreSQL, MariaDB."""

from __future__ import annotations

import uuid

import pytest
from django.db import connections
from django.db.models import Count, F
from django.db.models.functions import Lower
from django.test.utils import CaptureQueriesContext
from testapp.models import Document, Group, IntItem, StrItem, UUIDItem

from membound.django import chunked, chunks
from membound.errors import ConfigurationError

ROWS = 120
# Small enough that 120 rows make many chunks, odd so chunk edges fall inside runs of ties.
CHUNK = 7


def _populate(model, alias: str) -> None:
    groups = [Group.objects.using(alias).create(name=f"g{i % 3}") for i in range(4)]
    rows = []
    for i in range(ROWS):
        # Ranks repeat (ties across chunk edges) and every fifth is NULL; names repeat too.
        fields = {"name": f"n{(i * 37) % 11:02d}", "rank": None if i % 5 == 0 else i % 7}
        if model is IntItem:
            fields.update(score=None if i % 3 else i / 3, group=groups[i % 4] if i % 6 else None)
        elif model is UUIDItem:
            fields["id"] = uuid.UUID(int=(i * 2654435761) % 2**128)
        else:
            fields["code"] = f"code-{(i * 7919) % 1000:04d}"
        rows.append(model(**fields))
    model.objects.using(alias).bulk_create(rows)


ORDERINGS = {
    "pk": (),
    "rank": ("rank",),
    "-rank": ("-rank",),
    "rank,-name": ("rank", "-name"),
    "rank nulls first": (F("rank").asc(nulls_first=True),),
    "-rank nulls last": (F("rank").desc(nulls_last=True),),
    "-pk": ("-pk",),
    "lower(name),-rank": (Lower("name"), "-rank"),
}


@pytest.mark.parametrize("model", [IntItem, UUIDItem, StrItem], ids=["int", "uuid", "str"])
@pytest.mark.parametrize("ordering", list(ORDERINGS), ids=list(ORDERINGS))
def test_every_row_once_in_order(alias, model, ordering):
    _populate(model, alias)
    terms = ORDERINGS[ordering]
    queryset = model.objects.using(alias).order_by(*terms) if terms else model.objects.using(
        alias).all()
    expected = [obj.pk for obj in queryset.order_by(*terms, "pk")]
    assert len(expected) == ROWS
    got = [obj.pk for obj in chunked(queryset, chunk_size=CHUNK)]
    assert got == expected
    sized = [obj.pk for obj in chunked(queryset, max_memory="1MB")]
    assert sized == expected


def test_related_and_float_ordering_with_nulls(alias):
    _populate(IntItem, alias)
    queryset = IntItem.objects.using(alias).order_by("group__name", "-score")
    expected = [obj.pk for obj in queryset.order_by("group__name", "-score", "pk")]
    assert [obj.pk for obj in chunked(queryset, chunk_size=CHUNK)] == expected


def test_chunks_are_sized_in_bytes(alias):
    _populate(IntItem, alias)
    sizes = [len(chunk) for chunk in chunks(IntItem.objects.using(alias).all(),
                                             max_memory="1MB")]
    assert sum(sizes) == ROWS
    # The first chunk is the sizer's opening guess; the next is sized from measured rows.
    assert sizes[0] == 64 and len(sizes) == 2


def test_values_and_values_list_shapes(alias):
    _populate(StrItem, alias)
    base = StrItem.objects.using(alias).order_by("-rank")
    cases = [
        base.values("name", "rank"),
        base.values(),
        base.values_list("name", "rank"),
        base.values_list("code", "rank"),
        base.values_list("name", flat=True),
        base.values_list("name", "rank", named=True),
        base.values("rank", lowered=Lower("name")),
    ]
    for queryset in cases:
        expected = list(queryset.order_by("-rank", "pk"))
        got = list(chunked(queryset, chunk_size=CHUNK))
        assert got == expected, queryset.query
        assert type(got[0]) is type(expected[0])
        if hasattr(expected[0], "_fields"):
            assert got[0]._fields == expected[0]._fields


def test_only_defer_select_related_prefetch(alias):
    _populate(IntItem, alias)
    base = IntItem.objects.using(alias).order_by("rank")
    connection = connections[alias]

    only = list(chunked(base.only("name"), chunk_size=CHUNK))
    assert [o.pk for o in only] == [o.pk for o in base.order_by("rank", "pk")]
    assert only[0].get_deferred_fields() == {"rank", "score", "group_id"}
    assert not any(k.startswith("_membound") for k in only[0].__dict__)

    deferred = list(chunked(base.defer("rank", "name"), chunk_size=CHUNK))
    assert deferred[0].get_deferred_fields() == {"rank", "name"}

    with_group = list(chunked(base.select_related("group"), chunk_size=CHUNK))
    with CaptureQueriesContext(connection) as queries:
        names = [o.group.name if o.group else None for o in with_group]
    assert len(queries) == 0  # no query per row
    assert names == [o.group.name if o.group else None for o in base.order_by("rank", "pk")]

    groups = Group.objects.using(alias).prefetch_related("items")
    expected = {g.pk: sorted(i.pk for i in g.items.all()) for g in groups}
    got = {}
    for chunk in chunks(groups, chunk_size=3):
        with connection.execute_wrapper(lambda *a: pytest.fail("query per row")):
            got.update({g.pk: sorted(i.pk for i in g.items.all()) for g in chunk})
    assert got == expected


def test_rows_inserted_and_deleted_during_iteration(alias):
    _populate(IntItem, alias)
    queryset = IntItem.objects.using(alias).order_by("rank")
    before = [o.pk for o in queryset.order_by("rank", "pk")]
    deleted, seen = set(before[60:80:2]), []
    inserted = []
    for obj in chunked(queryset, chunk_size=CHUNK):
        seen.append(obj.pk)
        if len(seen) == 30:
            IntItem.objects.using(alias).filter(pk__in=deleted).delete()
            # One row far ahead in the order (rank 6 is the largest non-NULL rank), one behind.
            ahead = IntItem.objects.using(alias).create(name="late", rank=6)
            IntItem.objects.using(alias).create(name="early", rank=-1)
            inserted.append(ahead.pk)
    assert len(seen) == len(set(seen)), "a row came twice"
    expected = [o.pk for o in queryset.order_by("rank", "pk") if o.name != "early"]
    assert seen[:30] == before[:30]
    assert seen[30:] == [pk for pk in expected if pk not in set(before[:30])]
    assert not deleted & set(seen) and inserted[0] in seen


def test_limit_and_filters(alias):
    _populate(UUIDItem, alias)
    queryset = UUIDItem.objects.using(alias).filter(rank__gte=2).order_by("-rank")
    expected = [o.pk for o in queryset.order_by("-rank", "pk")[:25]]
    assert [o.pk for o in chunked(queryset[:25], chunk_size=CHUNK)] == expected


def test_queryset_cache_untouched_and_empty(alias):
    queryset = IntItem.objects.using(alias).all()
    assert list(chunked(queryset)) == []
    assert queryset._result_cache is None


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda qs: qs.order_by("?"), "random"),
        (lambda qs: qs.union(qs), "union"),
        (lambda qs: qs.values("rank").annotate(n=Count("id")), "aggregating"),
        (lambda qs: qs[5:], "offset"),
        (lambda qs: Group.objects.order_by("items__name"), "many-valued"),
        (lambda qs: qs.values("rank").distinct(), "distinct"),
    ],
)
def test_querysets_chunks_cannot_follow(make, message):
    queryset = make(IntItem.objects.all())
    with pytest.raises(ConfigurationError, match=message):
        next(chunked(queryset))


def test_bad_arguments():
    with pytest.raises(ConfigurationError, match="QuerySet"):
        next(chunked([1, 2, 3]))
    with pytest.raises(ConfigurationError, match="chunk_size"):
        next(chunked(IntItem.objects.all(), chunk_size=0))
    with pytest.raises(ConfigurationError, match="size"):
        next(chunked(IntItem.objects.all(), max_memory="lots"))
    with pytest.raises(ConfigurationError, match="model instances"):
        next(chunked(Document.objects.values("title"), large_values="1MB"))
