"""membound's C reader for PostgreSQL (``membound._pgarrow``) against a real server: the same
schema and values as ADBC's path, the values Arrow cannot hold, and when it hands over to ADBC.
The read-path tests of test_postgres.py and test_faults.py run on both paths too (``pg_reader``).
"""

from __future__ import annotations

import datetime as dt
import decimal
import subprocess
import sys
import textwrap
import time
import uuid

import pyarrow as pa
import pytest

from conftest import read_interrupted, require_extension
from membound.backends.base import open_backend
from membound.errors import QueryError, SchemaError, SourceError

psycopg = pytest.importorskip("psycopg")
pytest.importorskip("adbc_driver_postgresql")

pytestmark = pytest.mark.server

READER_ENV = "MEMBOUND_PG_READER"

# Every type the C reader decodes, a row of values at their edges and a row of NULLs.
PLAIN_TYPES_DDL = """
    id int primary key, b boolean, i2 smallint, i4 int, i8 bigint, f4 real, f8 double precision,
    m money, o oid, c "char", nm name, t text, vc varchar(20), bc char(4), by bytea, d date,
    tm time, ts timestamp, tstz timestamptz, iv interval, n numeric, n38 numeric(38,10),
    n10 numeric(10,2), u uuid, j json, jb jsonb
"""
PLAIN_ROW = (
    "1, true, -32768, -2147483648, 9223372036854775807, 1.5, -2.25e300, 12.34, 4000000000, 'x', "
    "'a name', 'héllo 😀 𝄞', '', 'ab', '\\x00ff00'::bytea, '0001-01-01', '23:59:59.999999', "
    "'1900-02-28 12:00:00.000001', '2262-04-11 23:47:16.854775+05', "
    "'-1 year 2 mons -3 days 04:05:06.789', -0.0000000001, "
    "'-1234567890123456789012345678.0123456789', 99999999.99, "
    "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"k\": [1, \"😀\"]}', '{\"a\": null}'"
)


@pytest.fixture
def table(pg):
    names: list[str] = []

    def make(ddl: str) -> str:
        names.append(f"mbtest_native_{uuid.uuid4().hex[:10]}")
        pg.execute(f"CREATE TABLE {names[-1]} ({ddl})")
        return names[-1]

    yield make
    for name in names:
        pg.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture(autouse=True)
def _native_built():
    require_extension("_pgarrow")


def read(url: str, what: str, monkeypatch, reader: str) -> pa.Table:
    if reader == "adbc":
        monkeypatch.setenv(READER_ENV, "adbc")
    else:
        monkeypatch.delenv(READER_ENV, raising=False)
    with open_backend(url) as db:
        batches = list(db.batches(what))
        schema = db.schema(what)
    table = pa.Table.from_batches(batches)
    assert table.schema.equals(schema, check_metadata=True)
    return table


def test_both_readers_give_the_same_schema_and_values(postgres_url, pg, table, monkeypatch):
    name = table(PLAIN_TYPES_DDL)
    pg.execute(f"INSERT INTO {name} VALUES ({PLAIN_ROW})")
    pg.execute(f"INSERT INTO {name} (id, t, by) VALUES (2, '', '')")
    pg.execute(f"INSERT INTO {name} (id) VALUES (3)")
    query = f"SELECT * FROM {name} ORDER BY id"
    native = read(postgres_url, query, monkeypatch, "native")
    adbc = read(postgres_url, query, monkeypatch, "adbc")
    assert native.schema.equals(adbc.schema, check_metadata=True)
    assert native.to_pylist() == adbc.to_pylist()
    first, second, third = native.to_pylist()
    assert first["t"] == "héllo 😀 𝄞" and first["by"] == b"\x00\xff\x00"
    assert first["i8"] == 2**63 - 1 and first["o"] == 4000000000 - 2**32  # as ADBC: int32
    assert first["tstz"] == dt.datetime(2262, 4, 11, 18, 47, 16, 854775, tzinfo=dt.UTC)
    assert first["d"] == dt.date(1, 1, 1) and first["tm"] == dt.time(23, 59, 59, 999999)
    assert first["iv"] == pa.MonthDayNano([-10, -3, 14706789000000])
    assert first["n38"] == decimal.Decimal("-1234567890123456789012345678.0123456789")
    assert first["n"] == decimal.Decimal("-1E-10")
    assert first["n10"] == decimal.Decimal("99999999.99")
    assert first["bc"] == "ab  " and first["vc"] == "" and first["jb"] == '{"a": null}'
    assert second["t"] == "" and second["by"] == b"" and second["b"] is None
    assert all(v is None for k, v in third.items() if k != "id")
    assert native.schema.field("n10").type == pa.decimal128(10, 2)
    assert native.schema.field("u").metadata == {b"membound.type": b"uuid"}


def test_many_rows_match_across_batches(postgres_url, pg, table, monkeypatch):
    """Enough rows for many batches of every column kind, NULLs at every 7th row."""
    name = table("id int, b bool, v text, n numeric(12,3), ts timestamptz, u uuid")
    pg.execute(
        f"INSERT INTO {name} SELECT g, CASE WHEN g % 7 = 0 THEN NULL ELSE g % 2 = 0 END, "
        "CASE WHEN g % 7 = 1 THEN NULL ELSE repeat('é', g % 50) END, "
        "CASE WHEN g % 7 = 2 THEN NULL ELSE g * 1.125 - 5000 END, "
        "CASE WHEN g % 7 = 3 THEN NULL ELSE timestamptz '2000-01-01' + g * interval '1 min' END, "
        "CASE WHEN g % 7 = 4 THEN NULL ELSE md5(g::text)::uuid END "
        "FROM generate_series(1, 60000) g"
    )
    monkeypatch.delenv(READER_ENV, raising=False)
    with open_backend(postgres_url, budget="2MB") as db:
        batches = list(db.batches(f"SELECT * FROM {name} ORDER BY id"))
    assert len(batches) > 5
    native = pa.Table.from_batches(batches)
    adbc = read(postgres_url, f"SELECT * FROM {name} ORDER BY id", monkeypatch, "adbc")
    assert native.equals(adbc)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.00000000005", "0"),  # a tie: to the even neighbour
        ("0.00000000015", "0.0000000002"),
        ("-0.00000000025", "-0.0000000002"),
        ("0.000000000250000001", "0.0000000003"),  # just above the tie
        ("123.45678901234", "123.4567890123"),
        ("0.0000000000000000001", "0"),
        ("1e27", "1000000000000000000000000000"),
    ],
)
def test_unconstrained_numeric_is_rounded_half_even(postgres_url, monkeypatch, value, expected):
    got = read(postgres_url, f"SELECT {value}::numeric AS n", monkeypatch, "native")
    assert got.column("n").to_pylist() == [decimal.Decimal(expected)]
    assert got.schema.field("n").type == pa.decimal128(38, 10)


@pytest.mark.parametrize(
    ("expression", "column"),
    [
        ("'infinity'::date", "d"),
        ("'-infinity'::timestamptz", "d"),
        ("'infinity'::timestamp", "d"),
        ("'NaN'::numeric", "d"),
        ("'Infinity'::numeric", "d"),
        ("1e28::numeric", "d"),  # 29 integer digits + 10 decimals: more than 38
        ("'3000000 hours'::interval", "d"),  # beyond int64 nanoseconds
    ],
)
def test_values_arrow_cannot_hold_name_their_column(postgres_url, monkeypatch, expression, column):
    monkeypatch.delenv(READER_ENV, raising=False)
    with open_backend(postgres_url) as db:
        with pytest.raises(SchemaError, match=f"column '{column}'.*cast it in the query"):
            list(db.batches(f"SELECT 1 AS ok, {expression} AS {column}"))
        # The connection that failed is not reused; the backend goes on.
        assert list(db.rows("SELECT 2")) == [(2,)]


def test_types_it_does_not_decode_go_through_adbc(postgres_url, pg, table, monkeypatch):
    name = table("id int, a numeric[], ip inet, e text")
    pg.execute(
        f"INSERT INTO {name} VALUES (1, '{{1.5,NULL}}', '10.0.0.1', 'x'), (2, NULL, NULL, NULL)"
    )
    got = read(postgres_url, f"SELECT * FROM {name} ORDER BY id", monkeypatch, "native")
    assert got.to_pylist() == [
        {"id": 1, "a": ["1.5", None], "ip": "10.0.0.1/32", "e": "x"},
        {"id": 2, "a": None, "ip": None, "e": None},
    ]


ARRAYS_DDL = """
    id int, i2 smallint[], i4 int[], i8 bigint[], f4 real[], f8 float8[], b bool[], t text[],
    vc varchar[], bc char(2)[], by bytea[], d date[], tm time[], ts timestamp[],
    tstz timestamptz[], iv interval[], o oid[]
"""


def test_arrays_match_adbc_across_batches(postgres_url, pg, table, monkeypatch):
    """One-dimensional arrays of every element type the C reader decodes: NULL arrays, empty
    ones, NULL elements, many batches."""
    name = table(ARRAYS_DDL)
    pg.execute(
        f"INSERT INTO {name} SELECT g, "
        "CASE WHEN g % 5 = 0 THEN NULL ELSE ARRAY[g % 300, NULL]::smallint[] END, "
        "CASE WHEN g % 5 = 1 THEN '{}' ELSE ARRAY(SELECT generate_series(1, g % 7)) END, "
        "ARRAY[g::bigint * 1000000007], ARRAY[g / 3.0]::real[], ARRAY[NULL, g / 7.0], "
        "ARRAY[g % 2 = 0, NULL], "
        "CASE WHEN g % 5 = 2 THEN NULL ELSE ARRAY[repeat('é', g % 9), NULL, '😀'] END, "
        "ARRAY['v' || g], ARRAY['a'], ARRAY[decode(md5(g::text), 'hex'), NULL], "
        "ARRAY[date '2000-01-01' + g], ARRAY[time '00:00' + g * interval '1 s'], "
        "ARRAY[timestamp '2000-01-01' + g * interval '1 min'], "
        "ARRAY[timestamptz '2000-01-01' + g * interval '1 min'], ARRAY[g * interval '1 h'], "
        "ARRAY[g::oid] FROM generate_series(1, 20000) g"
    )
    query = f"SELECT * FROM {name} ORDER BY id"
    monkeypatch.delenv(READER_ENV, raising=False)
    with open_backend(postgres_url, budget="2MB") as db:
        batches = list(db.batches(query))
    assert len(batches) > 3
    native = pa.Table.from_batches(batches)
    adbc = read(postgres_url, query, monkeypatch, "adbc")
    assert native.schema.equals(adbc.schema, check_metadata=True)
    assert native.to_pylist() == adbc.to_pylist()
    assert native.column("t")[0].as_py() == ["é", None, "😀"]


@pytest.mark.parametrize(
    ("expression", "message"),
    [("ARRAY[[1, 2], [3, 4]]", "multi-dimensional"), ("'[2:3]={5,6}'::int[]", "first index")],
)
def test_arrays_a_list_cannot_hold_name_their_column(postgres_url, monkeypatch, expression,
                                                     message):
    """ADBC's driver flattens a 2-D array into one list (its shape lost) and fails on a first
    index other than 1 with a driver message; the C reader names the column and what to do."""
    monkeypatch.delenv(READER_ENV, raising=False)
    with open_backend(postgres_url) as db:
        with pytest.raises(SchemaError, match=f"column 'a' holds .*{message}.*a::text"):
            list(db.batches(f"SELECT {expression} AS a"))
        assert list(db.rows("SELECT '{1,2}'::int[] AS a")) == [([1, 2],)]


def test_repeated_column_names_and_no_columns(postgres_url, monkeypatch):
    got = read(postgres_url, "SELECT 1 AS a, 'x' AS a", monkeypatch, "native")
    assert got.column_names == ["a", "a"] and got.to_pylist() == [{"a": "x"}]  # dict: last wins
    assert got.column(0).to_pylist() == [1]


CHILD = textwrap.dedent(
    """
    import sys
    from membound.backends.base import open_backend
    with open_backend(sys.argv[1]) as db:
        rows = sum(b.num_rows for b in db.batches(sys.argv[2]))
        rows += db.estimate_rows(sys.argv[2]) is None
        db.schema(sys.argv[2])
    print(rows, "adbc_driver_manager" in sys.modules)
    """
)


def test_plain_reads_never_load_adbc(postgres_url, pg, table):
    """The C reader needs no ADBC: a process that only reads plain types never imports it."""
    name = table("id int, t text")
    pg.execute(f"INSERT INTO {name} SELECT g, 'x' FROM generate_series(1, 1000) g")
    pg.execute(f"ANALYZE {name}")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, postgres_url, name],
        capture_output=True, text=True, timeout=120, check=True,
        env={**__import__("os").environ, READER_ENV: ""},
    ).stdout.split()
    assert out == ["1000", "False"]


def test_connection_is_pooled_between_reads(postgres_url, pg, monkeypatch):
    app = f"mbnative_{uuid.uuid4().hex[:8]}"
    url = f"{postgres_url}{'&' if '?' in postgres_url else '?'}application_name={app}"
    monkeypatch.delenv(READER_ENV, raising=False)
    with open_backend(url) as db:
        for i in range(5):
            assert list(db.rows(f"SELECT {i}")) == [(i,)]
        sessions = pg.execute(
            "SELECT count(*), max(state) FROM pg_stat_activity WHERE application_name = %s",
            [app],
        ).fetchone()
    assert sessions == (1, "idle")  # one connection, not left in a transaction


@pytest.mark.usefixtures("pg_reader")
def test_text_that_is_not_utf8_in_a_sql_ascii_database(postgres_url, pg):
    """A SQL_ASCII database stores text bytes unchecked; the server checks them on the way out
    to a UTF-8 client: such text is a clear error naming what to do, not an invalid string."""
    database = f"mbtest_ascii_{uuid.uuid4().hex[:8]}"
    pg.execute(f"CREATE DATABASE {database} ENCODING 'SQL_ASCII' TEMPLATE template0 "
               "LC_COLLATE 'C' LC_CTYPE 'C'")
    try:
        base, _, query = postgres_url.partition("?")
        url = f"{base.rsplit('/', 1)[0]}/{database}{'?' + query if query else ''}"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id int, v text)")
            conn.execute("INSERT INTO t VALUES (1, 'plain'), (2, E'caf\\xe9')")
        with open_backend(url) as db:
            assert list(db.rows("SELECT v FROM t WHERE id = 1")) == [("plain",)]
            with pytest.raises(SchemaError, match="not UTF-8.*convert_to"):
                list(db.batches("SELECT v FROM t ORDER BY id"))
            assert list(db.rows("SELECT convert_to(v, 'SQL_ASCII') FROM t WHERE id = 2")) == [
                (b"caf\xe9",)
            ]
    finally:
        pg.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def test_an_error_mid_stream_after_batches_were_read(postgres_url, pg_reader):
    """The server fails the COPY after rows went out (a division by zero at row 150,000): the
    read raises after its first batches, and the backend goes on. ADBC's reader hands on the
    message without its SQLSTATE, so there it is a SourceError rather than a QueryError."""
    query = (
        "SELECT g, 1 / (g - 150000) AS x, repeat('x', 40) AS pad "
        "FROM generate_series(1, 200000) g"
    )
    with open_backend(postgres_url, budget="4MB") as db:
        stream = db.batches(query)
        rows = next(stream).num_rows
        with pytest.raises((QueryError, SourceError), match="division by zero") as caught:
            for batch in stream:
                rows += batch.num_rows
        assert isinstance(caught.value, QueryError if pg_reader == "native" else SourceError)
        assert 0 < rows < 150000
        assert list(db.rows("SELECT 2")) == [(2,)]


def test_a_connection_that_read_a_large_row_is_not_pooled(postgres_url, pg, table, monkeypatch):
    """libpq's receive buffer keeps the size of the largest row: such a connection is closed
    after its read, so the memory goes with it; one that read small rows waits in the pool."""
    from membound.backends import postgres_native

    name = table("id int, v bytea")
    big = postgres_native.POOL_MAX_MESSAGE + 1_000_000
    pg.execute(f"INSERT INTO {name} VALUES (1, 'x'), (2, convert_to(repeat('y', {big}), 'UTF8'))")
    app = f"mbnative_{uuid.uuid4().hex[:8]}"
    url = f"{postgres_url}{'&' if '?' in postgres_url else '?'}application_name={app}"
    monkeypatch.delenv(READER_ENV, raising=False)

    def sessions() -> int:
        return pg.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [app]
        ).fetchone()[0]

    with open_backend(url) as db:
        assert [b.num_rows for b in db.batches(f"SELECT * FROM {name} WHERE id = 1")] == [1]
        assert sessions() == 1  # pooled
        rows = sum(b.num_rows for b in db.batches(f"SELECT * FROM {name} ORDER BY id"))
        assert rows == 2
        deadline = time.monotonic() + 5
        while sessions() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sessions() == 0  # closed, not pooled
        assert list(db.rows("SELECT 3")) == [(3,)]


@pytest.mark.parametrize("mode", ["direct", "prefetch"])
def test_ctrl_c_while_the_server_computes_stops_at_once(postgres_url, pg, pg_reader, mode):
    """A query that computes for a minute before its first row: Ctrl-C (SIGINT) ends the read
    within a second, from the main thread or through a copy's reading thread, and the
    statement is cancelled on the server, not left running."""
    app = f"mbctrlc_{uuid.uuid4().hex[:8]}"
    url = f"{postgres_url}{'&' if '?' in postgres_url else '?'}application_name={app}"
    query = "SELECT x FROM (SELECT 1 AS x, pg_sleep(60) AS s) AS q"
    kind, seconds = read_interrupted(url, query, mode)
    # ADBC's own Ctrl-C handling (its _blocking_call, on the main thread) cancels the statement
    # and lets the read fail with the server's "canceling statement due to user request".
    expected = {"KeyboardInterrupt"}
    if (pg_reader, mode) == ("adbc", "direct"):
        expected.add("SourceError")
    assert kind in expected
    assert seconds < 3.0
    running = pg.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state = 'active'",
        [app],
    ).fetchone()[0]
    assert running == 0
