"""Keyset paging returns every pre-existing row exactly once and in order (hypothesis).

Tables with duplicate key values, NULLs in key columns, descending order, and rows inserted
behind and ahead of the cursor while paging, on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import membound

TABLE = "mb_paging_prop"

values_a = st.one_of(st.none(), st.integers(min_value=-3, max_value=3))
# Lowercase ASCII only: every database's default collation orders these as Python does.
values_b = st.one_of(st.none(), st.text(alphabet="abc", min_size=0, max_size=2))
tables = st.lists(st.tuples(values_a, values_b), min_size=0, max_size=40)
inserts = st.lists(st.tuples(values_a, values_b), min_size=0, max_size=6)


def sort_key(row: tuple, key: tuple[str, ...]) -> tuple:
    """The documented order: NULLs after every value ascending; id breaks ties."""
    _id, a, b = row
    columns = {"a": a, "b": b, "id": _id}
    out: list = []
    for name in (*key, "id"):
        value = columns[name]
        out += [value is None, value if value is not None else 0]
    return tuple(out)


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def db_url(request, tmp_path_factory):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('paging') / 'p.db'}"
    return request.getfixturevalue(f"{request.param}_url" if request.param != "postgresql"
                                   else "postgres_url")


def recreate(db: membound.Connection, rows: list[tuple]) -> None:
    db.execute(f"DROP TABLE IF EXISTS {TABLE}")
    text = "VARCHAR(10)" if db.dialect == "mysql" else "TEXT"
    db.execute(f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, a INTEGER, b {text})")
    if rows:
        db.write(TABLE, [(i, a, b) for i, (a, b) in enumerate(rows, start=1)])


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=tables, extra=inserts, size=st.integers(min_value=1, max_value=7),
       descending=st.booleans(), key=st.sampled_from([("a",), ("a", "b"), ("b", "a"), ("b",)]),
       insert_at=st.integers(min_value=0, max_value=5))
def test_every_row_once_in_order(db_url, rows, extra, size, descending, key, insert_at):
    with membound.connect(db_url, max_memory="32MB") as db:
        recreate(db, rows)
        before = [(i, a, b) for i, (a, b) in enumerate(rows, start=1)]
        seen: list[tuple] = []
        token = None
        new_id = itertools.count(10_000)
        for number in itertools.count():
            page = db.page(TABLE, key=key, size=size, after=token, descending=descending)
            assert len(page.rows) <= size
            seen.extend(page.rows)
            if number == insert_at and extra:
                # Rows land behind and ahead of the cursor while paging goes on.
                db.write(TABLE, [(next(new_id), a, b) for a, b in extra])
            if page.next_token is None:
                break
            token = page.next_token
        old = [row for row in seen if row[0] < 10_000]
        assert sorted(r[0] for r in old) == [r[0] for r in before]  # each exactly once
        expected = sorted(before, key=lambda r: sort_key(r, key), reverse=descending)
        assert old == expected
        db.execute(f"DROP TABLE {TABLE}")


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=tables, size=st.integers(min_value=1, max_value=5), descending=st.booleans())
def test_previous_token_walks_back_to_the_same_pages(db_url, rows, size, descending):
    with membound.connect(db_url, max_memory="32MB") as db:
        recreate(db, rows)
        forward = list(db.pages(TABLE, key=("a", "b"), size=size, descending=descending))
        if not forward:
            assert rows == []
            return
        last = forward[-1]
        backward = [last.rows]
        page = last
        while page.previous_token is not None:
            page = db.page(TABLE, key=("a", "b"), size=size, after=page.previous_token,
                           descending=descending)
            backward.append(page.rows)
        flat_back = [row for rows_ in reversed(backward) for row in rows_]
        assert flat_back == [row for p in forward for row in p.rows]
        db.execute(f"DROP TABLE {TABLE}")
