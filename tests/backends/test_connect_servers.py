"""membound.connect() on the real PostgreSQL and MariaDB servers: paging SQL, leaks, adoption."""

from __future__ import annotations

import gc
import time

import pytest

import membound
from membound.keyset import keyset_sql

pytestmark = pytest.mark.server
TABLE = "mb_connect_t"
# Open cursors but the one counting them (fetch_all reads through a server-side cursor too).
OTHER_CURSORS = "SELECT count(*) FROM pg_cursors WHERE statement NOT LIKE '%pg_cursors%'"


def fill(db: membound.Connection, rows: int = 3000) -> None:
    db.execute(f"DROP TABLE IF EXISTS {TABLE}")
    db.execute(f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, "
               "name VARCHAR(40))")
    db.execute(f"CREATE INDEX {TABLE}_ts_id ON {TABLE} (ts, id)")
    db.write(TABLE, ({"id": i, "ts": i // 10, "name": f"n{i}"} for i in range(rows)))


@pytest.fixture(params=["postgres_url", "mysql_url"])
def url(request):
    return request.getfixturevalue(request.param)


def test_pages_rows_and_writes_round_trip(url):
    with membound.connect(url, max_memory="32MB") as db:
        fill(db)
        ids = [r[0] for page in db.pages(TABLE, key=("ts", "id"), size=128) for r in page]
        assert ids == list(range(3000))
        assert sum(1 for _ in db.rows(TABLE)) == 3000
        assert db.fetch_all(f"SELECT count(*) FROM {TABLE} WHERE ts < {db.placeholder}",
                            [10]) == [(100,)]
        db.execute(f"DROP TABLE {TABLE}")


def test_mysql_uses_the_index_for_the_expanded_predicate(mysql_url):
    with membound.connect(mysql_url) as db:
        fill(db, 20_000)
        db.execute(f"ANALYZE TABLE {TABLE}")
        q, _ = db._keyset_query(TABLE, ("ts", "id"), False)
        sql, params = keyset_sql(q, [1500, 15_000], forward=True, limit=101,
                                 placeholder=db.placeholder)
        assert f"`ts` >= {db.placeholder} AND" in sql  # the expanded, index-friendly form
        plan = db.fetch_all("EXPLAIN " + sql, params, row_factory="dict")
        table_row = next(row for row in plan if row["table"] == TABLE)
        assert table_row["type"] == "range", plan
        assert table_row["key"] in (f"{TABLE}_ts_id", "PRIMARY"), plan
        assert int(table_row["rows"]) < 5000, plan  # a seek, not a scan of 20,000 rows
        db.execute(f"DROP TABLE {TABLE}")


def test_postgres_uses_a_row_value_predicate_and_the_index(postgres_url):
    with membound.connect(postgres_url) as db:
        fill(db, 20_000)
        db.execute(f"ANALYZE {TABLE}")
        q, _ = db._keyset_query(TABLE, ("ts", "id"), False)
        sql, params = keyset_sql(q, [1500, 15_000], forward=True, limit=101,
                                 placeholder=db.placeholder)
        assert '("ts", "id") > (%s, %s)' in sql
        plan = "\n".join(r[0] for r in db.fetch_all("EXPLAIN " + sql, params))
        assert "Index" in plan and f"{TABLE}_ts_id" in plan, plan
        db.execute(f"DROP TABLE {TABLE}")


def test_key_without_unique_columns_on_a_table_without_primary_key(url):
    with membound.connect(url) as db:
        db.execute("DROP TABLE IF EXISTS mb_connect_nokey")
        db.execute("CREATE TABLE mb_connect_nokey (k INTEGER)")
        with pytest.raises(membound.ConfigurationError, match="no primary key"):
            db.page("mb_connect_nokey", key="k")
        db.execute("DROP TABLE mb_connect_nokey")


def _server_ids(db: membound.Connection) -> tuple[str, str]:
    if db.dialect == "postgresql":
        return ("SELECT pg_backend_pid()",
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)")
    return ("SELECT CONNECTION_ID()",
            "SELECT count(*) FROM information_schema.PROCESSLIST WHERE ID IN ({})")


def _alive(monitor: membound.Connection, ids: set[int]) -> int:
    if monitor.dialect == "postgresql":
        return monitor.fetch_all("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                                 [list(ids)])[0][0]
    marks = ", ".join(str(int(i)) for i in ids)
    return monitor.fetch_all(
        f"SELECT count(*) FROM information_schema.PROCESSLIST WHERE ID IN ({marks})")[0][0]


def test_no_leaks_after_three_rounds_of_partial_reads(url):
    with membound.connect(url) as setup:
        fill(setup, 5000)
    id_query = "SELECT pg_backend_pid()" if url.startswith("postgres") else \
        "SELECT CONNECTION_ID()"
    objects: list[int] = []
    with membound.connect(url) as monitor:
        for _ in range(3):
            used: set[int] = set()
            db = membound.connect(url, max_memory="8MB")
            used.add(db.fetch_all(id_query)[0][0])
            stream = db.rows(f"SELECT ({id_query}) AS server_id, id FROM {TABLE}")
            used.add(next(stream)[0])
            assert db.open_cursors == 1
            if db.dialect == "postgresql":
                assert db.fetch_all(OTHER_CURSORS) == [(1,)]
            for _row in db.rows(TABLE):
                break
            gc.collect()
            if db.dialect == "postgresql":
                assert db.fetch_all(OTHER_CURSORS) == [(1,)]  # `stream`
            assert db.open_cursors == 1
            db.close()
            assert db.open_cursors == 0
            deadline = time.monotonic() + 5
            while _alive(monitor, used) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _alive(monitor, used) == 0, "a server connection outlived close()"
            del stream, db
            gc.collect()
            objects.append(len(gc.get_objects()))
        monitor.execute(f"DROP TABLE {TABLE}")
    assert objects[2] - objects[1] < 200, objects


def test_adopted_psycopg_connection_keeps_no_transaction_open(postgres_url):
    psycopg = pytest.importorskip("psycopg")
    conn = psycopg.connect(postgres_url.replace("postgresql+psycopg", "postgresql"))
    try:
        with membound.connect(conn, max_memory="16MB") as db:
            fill(db, 500)
            conn.commit()
            ids = [r[0] for p in db.pages(TABLE, key="ts", size=64) for r in p]
            assert ids == list(range(500))
            stream = db.rows(TABLE)
            next(stream)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_cursors")
            assert cur.fetchone() == (0,)
            cur.execute(f"DROP TABLE {TABLE}")
        conn.commit()
    finally:
        conn.close()


def test_adopted_pymysql_connection(mysql_url):
    pymysql = pytest.importorskip("pymysql")
    conn = pymysql.connect(host="127.0.0.1", user="root", database="test")
    try:
        with membound.connect(conn) as db:
            fill(db, 400)
            conn.commit()
            assert [r[0] for r in db.rows(TABLE, limit=3)] == [0, 1, 2]
            stream = db.rows(TABLE)
            next(stream)
            with pytest.raises(membound.ConfigurationError, match="still open"):
                db.execute("SELECT 1")
            stream.close()
            assert db.fetch_all(f"SELECT count(*) FROM {TABLE}") == [(400,)]
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE {TABLE}")
    finally:
        conn.close()
