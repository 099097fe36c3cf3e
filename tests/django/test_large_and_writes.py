"""Large values kept out of chunks, stream_value, and bounded bulk writes, on every database."""

from __future__ import annotations

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext
from testapp.models import Document, Event, IntItem

from membound.django import bulk_create, bulk_update, chunked, chunks, stream_value
from membound.errors import ConfigurationError, PartialWriteError, TargetError

BIG = 300_000  # above the 100 kB threshold the tests give


def _documents(alias: str) -> list[int]:
    docs = []
    for i in range(40):
        big = i % 8 == 3
        docs.append(Document(
            title=f"doc {i:02d}",
            body=(bytes([i]) * BIG) if big else (b"small %d" % i if i % 5 else None),
            text=("t" * BIG) if i % 8 == 5 else f"text {i}",
        ))
    Document.objects.using(alias).bulk_create(docs)
    return list(Document.objects.using(alias).order_by("pk").values_list("pk", flat=True))


def test_large_values_stay_deferred_and_load_on_access(alias):
    pks = _documents(alias)
    connection = connections[alias]
    seen = []
    for doc in chunked(Document.objects.using(alias).all(), large_values="100kB"):
        deferred = doc.get_deferred_fields()
        number = int(doc.title.split()[1])
        assert ("body" in deferred) == (number % 8 == 3), doc.title
        assert ("text" in deferred) == (number % 8 == 5), doc.title
        assert not any(k.startswith("_membound") for k in doc.__dict__)
        with CaptureQueriesContext(connection) as queries:
            body = bytes(doc.body) if doc.body is not None else None
        # A deferred value loads on access, with one query; a loaded one costs none.
        assert len(queries) == ("body" in deferred)
        expected = (bytes([number]) * BIG if number % 8 == 3
                    else b"small %d" % number if number % 5 else None)
        assert body == expected
        assert doc.text == ("t" * BIG if number % 8 == 5 else f"text {number}")
        seen.append(doc.pk)
    assert seen == pks


def test_large_values_cut_chunks_by_length(alias):
    _documents(alias)
    # A 1 MB budget makes 62.5 kB chunks: a row with a 60 kB value loaded leaves room for
    # little else, so chunks around it are cut short by the lengths read first.
    Document.objects.using(alias).filter(title="doc 10").update(text="x" * 60_000)
    sizes = [len(c) for c in chunks(Document.objects.using(alias).all(), max_memory="1MB",
                                     large_values="100kB")]
    assert sum(sizes) == 40
    assert min(sizes) < max(sizes)


def test_stream_value(alias):
    _documents(alias)
    doc = Document.objects.using(alias).only("pk").get(title="doc 03")
    pieces = list(stream_value(doc, "body", piece_size=64_000))
    assert [len(p) for p in pieces] == [64_000] * 4 + [BIG - 4 * 64_000]
    assert b"".join(pieces) == bytes([3]) * BIG
    text = Document.objects.using(alias).only("pk").get(title="doc 05")
    assert "".join(stream_value(text, "text", piece_size=100_000)) == "t" * BIG
    assert list(stream_value(Document.objects.using(alias).get(title="doc 00"), "body")) == []
    with pytest.raises(ConfigurationError, match="text and binary"):
        next(stream_value(doc, "id"))


def _events(count: int, start: int = 0):
    from datetime import UTC, datetime, timedelta

    epoch = datetime(2024, 1, 1, tzinfo=UTC)
    for g in range(start, start + count):
        yield Event(user_id=g % 100, ts=epoch + timedelta(seconds=g), kind="click",
                    amount=None if g % 10 == 0 else g / 7, payload="p" * (g % 50), flag=g % 3 == 0)


def test_bulk_create_consumes_a_generator_in_batches(alias):
    produced = []

    def generator():
        for event in _events(3000):
            produced.append(Event.objects.using(alias).count() if len(produced) % 1000 == 999
                            else None)
            yield event

    written = bulk_create(Event.objects.using(alias), generator(), max_memory="2MB")
    assert written == 3000
    assert Event.objects.using(alias).count() == 3000
    # Rows were already in the table while the generator was still producing: it was not
    # materialised first.
    assert any(n for n in produced if n)
    assert sorted(Event.objects.using(alias).values_list("user_id", flat=True))[:3] == [0] * 3


def test_bulk_create_failures(autocommit_alias):
    alias = autocommit_alias
    IntItem.objects.using(alias).create(id=2500, name="taken")

    def items():
        for i in range(1, 4000):
            yield IntItem(id=i, name=f"n{i}")

    with pytest.raises(PartialWriteError) as caught:
        bulk_create(IntItem, items(), max_memory="1MB", using=alias)
    committed = caught.value.rows_committed
    assert 0 < committed < 2500
    assert IntItem.objects.using(alias).count() == committed + 1

    IntItem.objects.using(alias).exclude(id=2500).delete()
    with pytest.raises(TargetError, match="wrote nothing"):
        bulk_create(IntItem, items(), max_memory="1MB", using=alias, atomic=True)
    assert IntItem.objects.using(alias).count() == 1


def test_bulk_update_from_chunked(alias):
    bulk_create(Event.objects.using(alias), _events(2000))

    def changed():
        for event in chunked(Event.objects.using(alias).all(), max_memory="1MB"):
            event.kind = "buy"
            event.amount = 1.5
            yield event

    assert bulk_update(Event.objects.using(alias), changed(), ["kind", "amount"],
                       max_memory="1MB") == 2000
    assert set(Event.objects.using(alias).values_list("kind", "amount").distinct()) == {
        ("buy", 1.5)}


def test_write_arguments():
    with pytest.raises(ConfigurationError, match="model, a manager or a QuerySet"):
        bulk_create("events", [])
    with pytest.raises(ConfigurationError, match="'id', 'nope'"):
        bulk_update(Event, [], ["id", "nope"])
    with pytest.raises(ConfigurationError, match="non-empty list"):
        bulk_update(Event, [], "kind")
