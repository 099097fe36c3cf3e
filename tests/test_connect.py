"""membound.connect(): rows, fetch_all, page/pages, write, on SQLite and adopted connections."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import gc
import json
import sqlite3
import uuid
import warnings

import pytest

import membound
from membound.keyset import decode_token, encode_token


@pytest.fixture
def db(tmp_path):
    with membound.connect(f"sqlite:///{tmp_path / 'app.db'}", max_memory="32MB") as handle:
        handle.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, ts INTEGER, name TEXT)")
        handle.write("items", ({"id": i, "ts": None if i % 10 == 0 else i % 7,
                                "name": f"item {i}"} for i in range(1, 501)))
        yield handle


def test_rows_streams_tuples_dicts_and_named_rows(db):
    assert next(db.rows("SELECT id, name FROM items ORDER BY id")) == (1, "item 1")
    first = next(db.rows("items", row_factory="dict"))
    assert first == {"id": 1, "ts": 1, "name": "item 1"}
    named = next(db.rows("SELECT id, name FROM items WHERE id = ?", [3],
                         row_factory="namedtuple"))
    assert (named.id, named.name) == (3, "item 3")
    assert sum(1 for _ in db.rows("items")) == 500


def test_limit_cuts_and_max_rows_refuses(db):
    assert len(list(db.rows("items", limit=7))) == 7
    with pytest.raises(membound.ResultTooLarge, match="max_rows=100"):
        list(db.rows("items", max_rows=100))
    assert len(db.fetch_all("items", max_rows=500)) == 500


def test_fetch_all_warns_past_half_the_budget(tmp_path):
    with membound.connect(f"sqlite:///{tmp_path / 'w.db'}", max_memory="1MB") as db:
        db.write("t", ({"id": i, "payload": "x" * 200} for i in range(10_000)))
        with pytest.warns(membound.ResultSizeWarning, match="iterate rows"):
            rows = db.fetch_all("t")
        assert len(rows) == 10_000
    with membound.connect(f"sqlite:///{tmp_path / 'w.db'}", max_memory="1GB") as db, \
            warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(db.fetch_all("t")) == 10_000


def test_pages_visit_every_row_once_with_nulls_last(db):
    seen = [row for page in db.pages("items", key="ts", size=33) for row in page]
    assert sorted(r[0] for r in seen) == list(range(1, 501))
    ts = [r[1] for r in seen]
    non_null = [t for t in ts if t is not None]
    assert ts == non_null + [None] * (len(ts) - len(non_null))  # the NULL rule
    assert non_null == sorted(non_null)
    descending = [row for page in db.pages("items", key="ts", size=40, descending=True)
                  for row in page]
    assert descending == list(reversed(seen))


def test_page_tokens_go_forward_and_back(db):
    first = db.page("items", key=("ts", "id"), size=50)
    assert first.previous_token is None and first.has_next
    second = db.page("items", key=("ts", "id"), size=50, after=first.next_token)
    back = db.page("items", key=("ts", "id"), size=50, after=second.previous_token)
    assert back.rows == first.rows
    assert back.previous_token is None  # it is the first page again
    assert all(c.isalnum() or c in "-_." for c in first.next_token)  # URL-safe


def test_tampered_and_foreign_tokens_are_refused(db):
    page = db.page("items", key="ts", size=10)
    head, tag = page.next_token.split(".")
    body = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    body["k"][0] = ["i", "3"]  # move the page start, keep the old tag
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")
    with pytest.raises(membound.TokenError, match="altered"):
        db.page("items", key="ts", after=f"{forged}.{tag}")
    with pytest.raises(membound.TokenError, match="damaged"):
        db.page("items", key="ts", after=f"{head[:-5]}.{tag}")
    with pytest.raises(membound.TokenError, match="another table"):
        db.page("items", key="name", after=page.next_token)
    with pytest.raises(membound.TokenError, match="another table"):
        db.page("items", key="ts", descending=True, after=page.next_token)
    with pytest.raises(membound.TokenError, match="malformed"):
        db.page("items", key="ts", after="not a token")


def test_signed_tokens_need_the_same_secret(tmp_path):
    path = tmp_path / "s.db"
    with membound.connect(f"sqlite:///{path}", token_secret="one") as db:
        db.write("t", ({"id": i} for i in range(20)))
        token = db.page("t", key="id", size=5).next_token
        assert len(db.page("t", key="id", size=5, after=token).rows) == 5
    with membound.connect(f"sqlite:///{path}", token_secret="two") as db, \
            pytest.raises(membound.TokenError, match="another secret"):
        db.page("t", key="id", size=5, after=token)


def test_token_values_round_trip_every_key_type():
    values = [None, True, 2**70, -1.5, "ü🎉", b"\x00\xff", decimal.Decimal("1.25"),
              dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), dt.date(2026, 1, 2),
              dt.time(1, 2, 3), uuid.UUID(int=7)]
    token = encode_token(values, forward=True, fingerprint="f")
    assert decode_token(token, fingerprint="f", key_length=len(values)) == (values, True)


def test_non_unique_key_gets_a_tie_breaker(tmp_path):
    with membound.connect(f"sqlite:///{tmp_path / 'r.db'}") as db:
        db.execute("CREATE TABLE dup (k INTEGER)")  # no primary key: rowid breaks ties
        db.write("dup", [(1,)] * 25 + [(0,)] * 5)
        rows = [r for page in db.pages("dup", key="k", size=4) for r in page]
        assert rows == [(0,)] * 5 + [(1,)] * 25
        db.execute("CREATE TABLE norowid (k INTEGER, v TEXT PRIMARY KEY) WITHOUT ROWID")
        db.write("norowid", [(i % 3, f"v{i:02}") for i in range(30)])
        rows = [r for page in db.pages("norowid", key="k", size=4) for r in page]
        assert rows == sorted(rows) and len(rows) == 30


def test_offset_paging_only_when_asked_and_warns_when_deep(db):
    page = db.page("items", key="id", size=10, offset=20)
    assert [r[0] for r in page.rows] == list(range(21, 31)) and page.offset == 30
    with pytest.warns(membound.OffsetPagingWarning, match="keyset"):
        assert db.page("items", key="id", size=10, offset=20_000).rows == []


def test_unknown_key_column_and_missing_table(db):
    with pytest.raises(membound.ConfigurationError, match="'nope' is not in table 'items'"):
        db.page("items", key="nope")
    with pytest.raises(membound.NotFoundError, match="missing"):
        db.page("missing", key="id")
    with pytest.raises(membound.NotFoundError, match="missing"):
        list(db.rows("missing"))


@dataclasses.dataclass
class Event:
    id: int
    kind: str
    amount: float | None


def test_write_takes_dicts_tuples_dataclasses_and_upserts(db):
    result = db.write("events", (Event(i, "a", i / 2) for i in range(100)), mode="upsert",
                      key="id")
    assert result.rows == 100 and result.created
    db.write("events", [(5, "b", None), (500, "c", 1.0)], mode="upsert", key="id")
    assert db.fetch_all("SELECT kind, amount FROM events WHERE id IN (5, 500) ORDER BY id") \
        == [("b", None), ("c", 1.0)]
    db.write("events", [{"id": 600, "kind": "d"}], mode="append")  # missing field -> NULL
    assert db.fetch_all("SELECT amount FROM events WHERE id = 600") == [(None,)]


def test_write_errors_are_clear_and_atomic_leaves_table_unchanged(db):
    with pytest.raises(membound.SchemaError, match="'zz' is not in table 'items'"):
        db.write("items", [{"id": 9999, "zz": 1}])
    with pytest.raises(membound.SchemaError, match="primary key or unique index"):
        db.write("items", [{"id": 1, "name": "x"}], mode="upsert", key="name")
    with pytest.raises(membound.ConfigurationError, match="columns="):
        db.write("nothere", [(1, 2)])
    before = db.fetch_all("SELECT count(*) FROM items")

    def rows():
        for i in range(1000, 41_000):
            yield {"id": i, "ts": 1, "name": "new"}
        yield {"id": 1, "ts": 1, "name": "duplicate primary key"}

    with pytest.raises(membound.TargetError, match="wrote nothing"):
        db.write("items", rows(), atomic=True)
    assert db.fetch_all("SELECT count(*) FROM items") == before
    with pytest.raises(membound.PartialWriteError) as info:
        db.write("items", rows())
    committed = info.value.rows_committed
    assert 0 < committed < 40_000
    assert db.fetch_all("SELECT count(*) FROM items") == [(before[0][0] + committed,)]


def test_replace_swaps_and_fail_refuses(db):
    db.write("items", [{"id": 1, "name": "only"}], mode="replace")
    assert db.fetch_all("items") == [(1, "only")]
    with pytest.raises(membound.TargetExistsError):
        db.write("items", [{"id": 2, "name": "x"}], mode="fail")


def test_close_closes_every_open_cursor_even_after_break(db):
    streams = [db.rows("items") for _ in range(3)]
    for stream in streams:
        next(stream)
    assert db.open_cursors == 3
    for _row in db.rows("items"):
        break
    gc.collect()
    assert db.open_cursors == 3
    db.close()
    assert db.open_cursors == 0
    with pytest.raises(membound.ConfigurationError, match="closed"):
        next(streams[0])
    with pytest.raises(membound.ConfigurationError, match="closed"):
        db.rows("items")


def test_adopted_sqlite3_connection_is_left_open(tmp_path):
    conn = sqlite3.connect(tmp_path / "adopt.db")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.commit()
    with membound.connect(conn, max_memory="16MB") as db:
        db.write("t", ((i, str(i)) for i in range(300)))
        assert [p.rows[0][0] for p in db.pages("t", key="id", size=100)] == [0, 100, 200]
        stream = db.rows("t")
        next(stream)
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (300,)  # still usable
    conn.close()


def test_adopted_sqlalchemy_engine(tmp_path):
    sqlalchemy = pytest.importorskip("sqlalchemy")
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'sa.db'}")
    with membound.connect(engine) as db:
        assert db.dialect == "sqlite"
        db.write("t", ({"id": i} for i in range(10)), mode="upsert", key="id")
        assert db.fetch_all("SELECT count(*) FROM t") == [(10,)]
    with engine.connect() as conn, membound.connect(conn) as db:
        assert [r[0] for r in db.rows("t", limit=3)] == [0, 1, 2]
    engine.dispose()


def test_connect_refuses_what_is_not_a_sql_database(tmp_path):
    with pytest.raises(membound.ConfigurationError, match="SQL databases"):
        membound.connect(str(tmp_path / "x.parquet"))
    with pytest.raises(membound.ConfigurationError, match="DB-API"):
        membound.connect(42)
