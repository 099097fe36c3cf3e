"""PostgresBackend against a real server (MEMBOUND_TEST_POSTGRES_URL)."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import subprocess
import sys
import textwrap
import time
import uuid

import pyarrow as pa
import pytest

from membound.backends.base import open_backend
from membound.errors import (
    NotFoundError,
    PartialWriteError,
    QueryError,
    SchemaError,
    SourceError,
    TargetError,
    TargetExistsError,
)

psycopg = pytest.importorskip("psycopg")
pytest.importorskip("adbc_driver_postgresql")

pytestmark = pytest.mark.server

# How long a cancelled query may still show in pg_stat_activity.
SERVER_WIND_DOWN_S = 5.0


@pytest.fixture
def app_name() -> str:
    """A unique application_name, to find this test's connections in pg_stat_activity."""
    return f"mbtest_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def url(postgres_url: str, app_name: str) -> str:
    sep = "&" if "?" in postgres_url else "?"
    return f"{postgres_url}{sep}application_name={app_name}"


@pytest.fixture
def tables(pg):
    """Unique table names for one test; every one handed out is dropped afterwards."""
    names: list[str] = []

    def make(prefix: str = "t") -> str:
        names.append(f"mbtest_{prefix}_{uuid.uuid4().hex[:10]}")
        return names[-1]

    yield make
    for name in names:
        pg.execute(f'DROP TABLE IF EXISTS "{name}"')


def connections(pg, app_name: str) -> list[tuple[str, str]]:
    rows = pg.execute(
        "SELECT state, query FROM pg_stat_activity WHERE application_name = %s", [app_name]
    ).fetchall()
    return [(state or "", query or "") for state, query in rows]


def assert_no_busy_connections(pg, app_name: str) -> None:
    """No connection of the backend is running a query or sitting in a transaction.

    A query cancelled (or whose client hung up) takes the server a moment to wind down.
    """
    deadline = time.monotonic() + SERVER_WIND_DOWN_S
    while True:
        busy = [(s, q) for s, q in connections(pg, app_name) if s != "idle"]
        if not busy or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert busy == []


def assert_all_closed(pg, app_name: str) -> None:
    """The backend left no connection open (the server may take a moment to see them go)."""
    deadline = time.monotonic() + SERVER_WIND_DOWN_S
    while connections(pg, app_name) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert connections(pg, app_name) == []


ALL_TYPES_DDL = """
    id int primary key, i2 smallint, i8 bigint, f8 double precision, n numeric(38,10),
    t text, b boolean, by bytea, d date, ts timestamp, tstz timestamptz, u uuid, jb jsonb,
    ai int[], at text[]
"""
ASTRAL = "héllo 😀 𝄞 中文"


def fill_all_types(pg, name: str) -> None:
    pg.execute(f"CREATE TABLE {name} ({ALL_TYPES_DDL})")
    pg.execute(
        f"INSERT INTO {name} VALUES (1, -32768, 9223372036854775807, 1.5, "
        "'1234567890123456789012345678.0123456789', %s, true, '\\x00ff0000'::bytea, "
        "'2024-02-29', '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05.123456+02', "
        "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"k\": [1, \"😀\"]}', '{1,NULL}', "
        "'{\"a\",NULL}')",
        [ASTRAL],
    )
    pg.execute(f"INSERT INTO {name} (id, t) VALUES (2, '')")  # empty string, NULLs elsewhere
    pg.execute(f"INSERT INTO {name} (id) VALUES (3)")  # NULL in every column


EXPECTED_FIRST = {
    "id": 1,
    "i2": -32768,
    "i8": 9223372036854775807,
    "f8": 1.5,
    "n": decimal.Decimal("1234567890123456789012345678.0123456789"),
    "t": ASTRAL,
    "b": True,
    "by": b"\x00\xff\x00\x00",
    "d": dt.date(2024, 2, 29),
    "ts": dt.datetime(2024, 1, 2, 3, 4, 5, 123456),
    "tstz": dt.datetime(2024, 1, 2, 1, 4, 5, 123456, tzinfo=dt.UTC),
    "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "jb": '{"k": [1, "😀"]}',
    "ai": [1, None],
    "at": ["a", None],
}


def read_all(db, what: str) -> list[dict]:
    out: list[dict] = []
    for batch in db.batches(what):
        out.extend(batch.to_pylist())
    return out


def test_read_maps_every_type_and_keeps_nulls(url, pg, tables):
    name = tables()
    fill_all_types(pg, name)
    with open_backend(url) as db:
        rows = read_all(db, f"SELECT * FROM {name} ORDER BY id")
        schema = db.schema(name)
    first, second, third = rows
    for column, value in EXPECTED_FIRST.items():
        assert first[column] == value, column
    assert second["t"] == "" and second["by"] is None
    assert all(value is None for key, value in third.items() if key != "id")
    assert schema.field("n").type == pa.decimal128(38, 10)
    assert schema.field("tstz").type == pa.timestamp("us", tz="UTC")
    assert schema.field("u").type == pa.string()
    assert schema.field("u").metadata == {b"membound.type": b"uuid"}
    assert schema.field("jb").metadata == {b"membound.type": b"json"}
    assert json.loads(first["jb"]) == {"k": [1, "😀"]}


@pytest.mark.usefixtures("pg_reader")
def test_round_trip_keeps_types_and_values(url, pg, tables):
    source, target = tables(), tables()
    fill_all_types(pg, source)
    with open_backend(url) as db:
        result = db.write(target, db.batches(source), key="id")
        assert result.created and result.rows == 3
        assert read_all(db, f"SELECT * FROM {target} ORDER BY id") == read_all(
            db, f"SELECT * FROM {source} ORDER BY id"
        )
    types = dict(
        pg.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s",
            [target],
        ).fetchall()
    )
    assert types["n"] == "numeric" and types["u"] == "uuid" and types["jb"] == "jsonb"
    assert types["tstz"] == "timestamp with time zone" and types["ai"] == "ARRAY"
    assert types["by"] == "bytea" and types["i2"] == "smallint"
    precision = pg.execute(
        "SELECT numeric_precision, numeric_scale FROM information_schema.columns "
        "WHERE table_name = %s AND column_name = 'n'",
        [target],
    ).fetchone()
    assert precision == (38, 10)


def test_write_from_arrow_extension_types(url, tables):
    name = tables()
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    batch = pa.record_batch(
        {
            "u": pa.ExtensionArray.from_storage(
                pa.uuid(), pa.array([u.bytes, None], pa.binary(16))
            ),
            "j": pa.ExtensionArray.from_storage(pa.json_(), pa.array(['{"a": 1}', None])),
            "d": pa.array([decimal.Decimal("1.25"), None], pa.decimal128(10, 2)),
            "ts": pa.array([dt.datetime(2024, 1, 1, 12), None], pa.timestamp("ns", tz="UTC")),
            "l": pa.array([["x", "😀"], None], pa.list_(pa.string())),
        }
    )
    with open_backend(url) as db:
        db.write(name, [batch])
        rows = read_all(db, name)
    assert rows[0] == {
        "u": str(u),
        "j": '{"a": 1}',
        "d": decimal.Decimal("1.25"),
        "ts": dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC),
        "l": ["x", "😀"],
    }
    assert all(v is None for v in rows[1].values())


def test_uuid_strings_written_into_uuid_column(url, pg, tables):
    name = tables()
    pg.execute(f"CREATE TABLE {name} (u uuid, bad text)")
    good = pa.array(
        ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", None, "A0EEBC999C0B4EF8BB6D6BB9BD380A12"]
    )
    with open_backend(url) as db:
        db.write(name, [pa.record_batch({"u": good})], mode="append")
        with pytest.raises(SchemaError, match="not a UUID"):
            db.write(name, [pa.record_batch({"u": pa.array(["nope"])})], mode="append")
    assert [r[0] for r in pg.execute(f"SELECT u::text FROM {name}")] == [
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        None,
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12",
    ]


@pytest.mark.usefixtures("pg_reader")
def test_params_are_inlined_safely(url, pg, tables):
    name = tables()
    pg.execute(f"CREATE TABLE {name} (id int, t text)")
    pg.execute(f"INSERT INTO {name} VALUES (1, 'it''s'), (2, 'b'), (3, 'c')")
    with open_backend(url) as db:
        assert list(db.rows(f"SELECT id FROM {name} WHERE t = %s", ["it's"])) == [(1,)]
        assert list(
            db.rows(f"SELECT id FROM {name} WHERE id > %(low)s ORDER BY id", {"low": 1})
        ) == [
            (2,),
            (3,),
        ]
        injection = list(db.rows(f"SELECT id FROM {name} WHERE t = %s", ["x' OR '1'='1"]))
        assert injection == []


@pytest.mark.usefixtures("pg_reader")
def test_empty_result_yields_one_empty_batch_with_schema(url, pg, tables):
    name = tables()
    pg.execute(f"CREATE TABLE {name} (id int, u uuid)")
    with open_backend(url) as db:
        batches = list(db.batches(name))
    assert len(batches) == 1 and batches[0].num_rows == 0
    assert batches[0].schema.names == ["id", "u"]


@pytest.mark.usefixtures("pg_reader")
def test_batches_are_sized_in_bytes(url, pg, tables):
    name = tables()
    pg.execute(
        f"CREATE TABLE {name} AS SELECT g AS id, repeat(md5(g::text), 4) AS payload "
        "FROM generate_series(1, 200000) g"
    )
    with open_backend(url, budget="16MB") as db:
        sizes = [(b.num_rows, b.nbytes) for b in db.batches(name)]
    target = 1_000_000  # 16MB / 16
    assert sum(rows for rows, _ in sizes) == 200000
    assert len(sizes) > 10
    assert max(nbytes for _, nbytes in sizes) <= 1.2 * target


# -- write modes ---------------------------------------------------------------------------------


def numbers(start: int, stop: int, label: str = "v") -> pa.RecordBatch:
    ids = list(range(start, stop))
    return pa.record_batch({"id": pa.array(ids, pa.int64()), "v": [f"{label}{i}" for i in ids]})


def test_mode_fail_refuses_an_existing_table(url, tables):
    name = tables()
    with open_backend(url) as db:
        assert db.write(name, [numbers(0, 3)]).created
        with pytest.raises(TargetExistsError, match=name):
            db.write(name, [numbers(3, 5)])
        assert len(read_all(db, name)) == 3


def test_mode_append_adds_rows_and_casts_to_the_table(url, pg, tables):
    name = tables()
    pg.execute(f"CREATE TABLE {name} (id int, v text, extra text DEFAULT 'dflt')")
    with open_backend(url) as db:
        result = db.write(name, [numbers(0, 3), numbers(3, 5)], mode="append")
        assert (result.rows, result.batches, result.created) == (5, 2, False)
        with pytest.raises(SchemaError, match="nope"):
            db.write(name, [pa.record_batch({"nope": [1]})], mode="append")
        with pytest.raises(SchemaError, match="'id'"):
            db.write(name, [pa.record_batch({"id": pa.array([2**40])})], mode="append")
    assert pg.execute(f"SELECT count(*), min(extra) FROM {name}").fetchone() == (5, "dflt")


def test_mode_replace_swaps_the_table(url, pg, tables):
    name = tables()
    pg.execute(f"CREATE TABLE {name} (old_column int)")
    with open_backend(url) as db:
        result = db.write(name, [numbers(0, 4)], mode="replace", key="id")
        assert result.created and result.rows == 4
        assert db.schema(name).names == ["id", "v"]
    constraint = pg.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'",
        [name],
    ).fetchone()
    assert constraint == (f"{name}_pkey",)
    assert leftover_build_tables(pg) == []


def leftover_build_tables(pg) -> list[str]:
    return [
        r[0]
        for r in pg.execute("SELECT relname FROM pg_class WHERE relname LIKE '\\_membound\\_%%'")
    ]


def test_replace_is_atomic_when_the_batch_stream_fails(url, pg, tables, app_name):
    name = tables()
    pg.execute(f"CREATE TABLE {name} (id bigint, v text)")
    pg.execute(f"INSERT INTO {name} VALUES (1, 'old')")

    def failing():
        yield numbers(0, 1000)
        yield numbers(1000, 2000)
        raise RuntimeError("source died")

    with open_backend(url) as db:
        with pytest.raises(RuntimeError, match="source died"):
            db.write(name, failing(), mode="replace")
        assert_no_busy_connections(pg, app_name)
    assert pg.execute(f"SELECT * FROM {name}").fetchall() == [(1, "old")]
    assert leftover_build_tables(pg) == []


def test_replace_is_atomic_when_the_server_rejects_the_data(url, pg, tables):
    name = tables()
    pg.execute(f"CREATE TABLE {name} (id bigint, v text)")
    pg.execute(f"INSERT INTO {name} VALUES (1, 'old')")
    with open_backend(url) as db, pytest.raises(TargetError, match="duplicate|unchanged"):
        db.write(name, [numbers(0, 10), numbers(5, 6)], mode="replace", key="id")
    assert pg.execute(f"SELECT * FROM {name}").fetchall() == [(1, "old")]
    assert leftover_build_tables(pg) == []


def test_mode_upsert_inserts_and_updates_on_key(url, pg, tables):
    name = tables()
    with open_backend(url) as db:
        # A new table gets the key as primary key; a key repeated in a batch: the last row wins.
        first = pa.record_batch({"id": [1, 2, 2], "v": ["a", "b", "b2"]})
        assert db.write(name, [first], mode="upsert", key="id").created
        db.write(name, [pa.record_batch({"id": [2, 3], "v": ["B", "C"]})], mode="upsert", key="id")
        assert list(db.rows(f"SELECT id, v FROM {name} ORDER BY id")) == [
            (1, "a"),
            (2, "B"),
            (3, "C"),
        ]


def test_upsert_needs_a_unique_key(url, pg, tables):
    name = tables()
    pg.execute(f"CREATE TABLE {name} (id bigint, v text)")
    with open_backend(url) as db, pytest.raises(SchemaError, match="unique"):
        db.write(name, [numbers(0, 2)], mode="upsert", key="id")


def test_constraint_violation_mid_append_reports_what_was_committed(url, pg, tables, app_name):
    name = tables()
    pg.execute(f"CREATE TABLE {name} (id bigint primary key, v text)")
    with open_backend(url) as db:
        with pytest.raises(PartialWriteError) as caught:
            db.write(
                name,
                [numbers(0, 100), numbers(100, 200), numbers(150, 250)],
                mode="append",
                key="id",
            )
        assert caught.value.rows_committed == 200
        assert caught.value.resume_after == (199,)
        assert "duplicate key" in str(caught.value)
        assert_no_busy_connections(pg, app_name)
    assert pg.execute(f"SELECT count(*) FROM {name}").fetchone() == (200,)
    assert_all_closed(pg, app_name)


# -- errors and connection hygiene -----------------------------------------------------------------


def test_server_down_names_the_host_and_masks_the_password():
    with pytest.raises(SourceError) as caught:
        open_backend("postgresql://someone:s3cretpw@127.0.0.1:1/test")
    message = str(caught.value)
    assert "127.0.0.1:1" in message and "***" in message and "s3cretpw" not in message


def test_unknown_database_is_not_found(postgres_url):
    base = postgres_url.split("?", 1)[0].rsplit("/", 1)[0]
    with pytest.raises(NotFoundError, match="mb_no_such_db"):
        open_backend(f"{base}/mb_no_such_db")


def test_unknown_user_is_refused_with_the_host(postgres_url):
    parts = postgres_url.split("://", 1)[1].split("@")[-1]
    with pytest.raises(SourceError, match="127.0.0.1|localhost|mb_no_such_user"):
        open_backend(f"postgresql://mb_no_such_user:pw@{parts}")


@pytest.mark.usefixtures("pg_reader")
def test_missing_table_and_bad_sql(url, pg, app_name):
    with open_backend(url) as db:
        with pytest.raises(NotFoundError, match="mb_no_such_table"):
            next(db.batches("mb_no_such_table"))
        with pytest.raises(QueryError, match="syntax"):
            next(db.batches("SELECT FROM WHERE"))
        with pytest.raises(QueryError):
            list(db.rows("SELECT 1/0"))
        assert_no_busy_connections(pg, app_name)
        assert list(db.rows("SELECT 1")) == [(1,)]
    assert_all_closed(pg, app_name)


@pytest.mark.usefixtures("pg_reader")
def test_abandoned_stream_leaves_no_query_or_cursor(url, pg, tables, app_name):
    name = tables()
    pg.execute(f"CREATE TABLE {name} AS SELECT g AS id FROM generate_series(1, 300000) g")
    with open_backend(url, budget="4MB") as db:
        stream = db.batches(name)
        next(stream)
        stream.close()
        assert_no_busy_connections(pg, app_name)
        # A read and a write on the same backend at once use two connections.
        copy = tables()
        assert db.write(copy, db.batches(name)).rows == 300000
        # The unnamed portal is the COPY of this very query.
        cursors = list(db.rows("SELECT count(*) FROM pg_cursors WHERE name <> ''"))
        assert cursors == [(0,)]
    assert_all_closed(pg, app_name)


# -- memory ----------------------------------------------------------------------------------------

MEMORY_ROWS = 2_000_000
MEMORY_BUDGET = 32_000_000

MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys
    import adbc_driver_manager, adbc_driver_postgresql, pyarrow  # the driver: part of the baseline
    import membound.backends.postgres
    from membound.backends.base import open_backend
    from membound.memory import peak_rss_bytes, reset_peak, rss_bytes, warm_up

    warm_up()
    url, table, budget = sys.argv[1], sys.argv[2], sys.argv[3]
    copy_to = sys.argv[4] if len(sys.argv) > 4 else None
    baseline = rss_bytes()
    reset_peak()
    rows = 0
    with open_backend(url, budget=budget) as db:
        if copy_to:
            # Read on one connection, write the same batches by COPY on the other.
            rows = db.write(copy_to, db.batches(table), mode="replace").rows
        else:
            for batch in db.batches(table):
                rows += batch.num_rows
    print(rows, peak_rss_bytes() - baseline)
    """
)


@pytest.fixture(scope="module")
def big_table(postgres_url):
    name = f"mbtest_big_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_url.split("?", 1)[0], autocommit=True) as conn:
        # The shared benchmark's events table: about 400 MB in PostgreSQL, ~300 MB as Arrow.
        conn.execute(
            f"CREATE UNLOGGED TABLE {name} AS SELECT g::bigint AS id, "
            "((g::bigint*7919)%100000)::int AS user_id, "
            "timestamptz '2024-01-01' + g * interval '1 second' AS ts, "
            "(array['click','view','buy','share'])[1+g%4] AS kind, "
            "case when g%10=0 then null else (g%1000)/7.0 end::float8 AS amount, "
            "repeat(md5(g::text), 1 + g%6) AS payload, g%3=0 AS flag "
            f"FROM generate_series(1, {MEMORY_ROWS}) g"
        )
        yield name
        conn.execute(f"DROP TABLE IF EXISTS {name}")


def read_in_child(
    url: str, table: str, budget: str, copy_to: str | None = None
) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, url, table, budget, *([copy_to] if copy_to else [])],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.split()
    return int(out[0]), int(out[1])


@pytest.mark.usefixtures("pg_reader")
def test_reading_stays_inside_the_budget(postgres_url, big_table):
    rows, peak_above_baseline = read_in_child(postgres_url, big_table, str(MEMORY_BUDGET))
    assert rows == MEMORY_ROWS
    assert peak_above_baseline <= 1.1 * MEMORY_BUDGET, peak_above_baseline


def test_the_memory_workload_would_exceed_the_budget_unbounded(postgres_url, big_table):
    """Proof the test above can fail: with a huge budget (64 MB batches) it goes far over."""
    rows, peak_above_baseline = read_in_child(postgres_url, big_table, "8GB")
    assert rows == MEMORY_ROWS
    assert peak_above_baseline > 2 * MEMORY_BUDGET


@pytest.mark.usefixtures("pg_reader")
def test_copying_table_to_table_stays_inside_the_budget(postgres_url, big_table, pg):
    """Read and write at once: the write streams every batch through one COPY."""
    target = f"mbtest_copy_{uuid.uuid4().hex[:10]}"
    try:
        rows, peak_above_baseline = read_in_child(
            postgres_url, big_table, str(MEMORY_BUDGET), copy_to=target
        )
        assert rows == MEMORY_ROWS
        assert pg.execute(f"SELECT count(*) FROM {target}").fetchone()[0] == MEMORY_ROWS
        assert peak_above_baseline <= 1.1 * MEMORY_BUDGET, peak_above_baseline
        # Proof the bound above can fail: with a huge budget (64 MB batches) it goes far over.
        _, unbounded_peak = read_in_child(postgres_url, big_table, "8GB", copy_to=target)
        assert unbounded_peak > 2 * MEMORY_BUDGET, unbounded_peak
    finally:
        pg.execute(f"DROP TABLE IF EXISTS {target}")
