"""Fidelity across backends: data that goes PostgreSQL -> Parquet -> PostgreSQL, and PostgreSQL ->
MariaDB -> SQLite and back, comes out equal, or the copy stops with an error naming the column
that cannot be carried.

The rows hold what tends to get lost on the way: NULL in every column, the empty string and empty
bytes beside NULL, astral-plane characters, control characters and quotes, numeric(38,10) at full
precision, a timestamp with a time zone, bytes with zero bytes, JSON, and extreme integers,
floats and dates. (Each backend's own round trip is in test_postgres.py and test_mysql.py.)
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

import pytest

import membound
from membound.backends.base import open_backend
from membound.errors import SchemaError

psycopg = pytest.importorskip("psycopg")
pymysql = pytest.importorskip("pymysql")
pytest.importorskip("adbc_driver_postgresql")

pytestmark = pytest.mark.server

TEXT = "héllo 😀 𝄞 中文 \x01 tab\t nl\n quote' dq\" bs\\ %s"
DDL = """
    id int PRIMARY KEY, i8 bigint, f8 double precision, b boolean, n numeric(38,10), t text,
    tstz timestamptz, ts timestamp, d date, by bytea, j jsonb
"""
EXPECTED = [
    {
        "id": 1,
        "i8": -9223372036854775808,
        "f8": 1.5e300,
        "b": True,
        "n": decimal.Decimal("-1234567890123456789012345678.0123456789"),
        "t": TEXT,
        "tstz": dt.datetime(2024, 1, 2, 1, 4, 5, 123456, tzinfo=dt.UTC),
        "ts": dt.datetime(1999, 12, 31, 23, 59, 59, 999999),
        "d": dt.date(1, 1, 1),
        "by": b"\x00\xff\x00'\\\x00",
        "j": '{"k": [1, "😀"], "n": null}',
    },
    # Empty text and empty bytes are not NULL.
    {"id": 2, "t": "", "by": b"", "f8": 0.0, "b": False, "n": decimal.Decimal(0)},
    {"id": 3},  # NULL everywhere else
]


def expected_rows() -> list[dict]:
    columns = list(EXPECTED[0])
    return [{name: row.get(name) for name in columns} for row in EXPECTED]


def by_id(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda row: row["id"])


def read_table(url: str, table: str | None = None) -> list[dict]:
    """Every row of a table, read as a table (so each backend's column marks apply)."""
    rows: list[dict] = []
    with open_backend(url) as db:
        for batch in db.batches(table):
            rows.extend(batch.to_pylist())
    return by_id(rows)


@pytest.fixture
def my(mysql_plain, mysql_url):
    """The PyMySQL connection itself (conftest's plain helper, autocommit)."""
    helper = mysql_plain(mysql_url)
    yield helper.conn
    helper.close()


@pytest.fixture
def names(pg, my):
    """Unique table names, dropped from both servers afterwards."""
    made: list[str] = []

    def make() -> str:
        made.append(f"mbtest_fid_{uuid.uuid4().hex[:10]}")
        return made[-1]

    yield make
    with my.cursor() as cursor:
        for name in made:
            pg.execute(f'DROP TABLE IF EXISTS "{name}"')
            cursor.execute(f"DROP TABLE IF EXISTS `{name}`")


def fill_source(pg, name: str) -> None:
    pg.execute(f"CREATE TABLE {name} ({DDL})")
    first = EXPECTED[0]
    pg.execute(
        f"INSERT INTO {name} VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)",
        [first[column] for column in first],
    )
    pg.execute(f"INSERT INTO {name} (id, t, by, f8, b, n) VALUES (2, '', ''::bytea, 0, false, 0)")
    pg.execute(f"INSERT INTO {name} (id) VALUES (3)")


def pg_types(pg, name: str) -> dict[str, str]:
    return dict(
        pg.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
            [name],
        ).fetchall()
    )


def test_source_reads_as_expected(postgres_url, pg, names):
    """The reference the chains below are held to: PostgreSQL read directly."""
    source = names()
    fill_source(pg, source)
    assert read_table(f"{postgres_url}?table={source}") == expected_rows()


def test_postgres_parquet_postgres(postgres_url, pg, names, tmp_path):
    source, back = names(), names()
    fill_source(pg, source)
    parquet = tmp_path / "chain.parquet"
    membound.copy(f"{postgres_url}?table={source}", parquet, max_memory="16MB")
    assert read_table(str(parquet)) == expected_rows()
    membound.copy(parquet, postgres_url, target_table=back, max_memory="16MB")
    assert read_table(f"{postgres_url}?table={back}") == expected_rows()
    # The column types come back too (the primary key does not travel through Parquet).
    assert pg_types(pg, back) == pg_types(pg, source)


def test_postgres_mariadb_sqlite_and_back(postgres_url, mysql_url, pg, names, tmp_path):
    source, in_mysql, back_in_mysql, back = names(), names(), names(), names()
    fill_source(pg, source)
    sqlite_url = f"sqlite:///{tmp_path / 'chain.db'}"

    membound.copy(f"{postgres_url}?table={source}", mysql_url, target_table=in_mysql, key="id")
    assert read_table(f"{mysql_url}?table={in_mysql}") == expected_rows()

    membound.copy(f"{mysql_url}?table={in_mysql}", sqlite_url, target_table=in_mysql)
    assert read_table(f"{sqlite_url}?table={in_mysql}") == expected_rows()

    membound.copy(f"{sqlite_url}?table={in_mysql}", mysql_url, target_table=back_in_mysql)
    assert read_table(f"{mysql_url}?table={back_in_mysql}") == expected_rows()

    membound.copy(f"{mysql_url}?table={back_in_mysql}", postgres_url, target_table=back)
    assert read_table(f"{postgres_url}?table={back}") == expected_rows()
    types = pg_types(pg, back)
    assert types["tstz"] == "timestamp with time zone"
    assert types["n"] == "numeric(38,10)"
    assert types["by"] == "bytea" and types["t"] == "text"


def test_json_stays_json_through_sqlite(postgres_url, pg, names, tmp_path):
    source, back = names(), names()
    fill_source(pg, source)
    sqlite_url = f"sqlite:///{tmp_path / 'json.db'}"
    membound.copy(f"{postgres_url}?table={source}", sqlite_url, target_table=source)
    membound.copy(f"{sqlite_url}?table={source}", postgres_url, target_table=back)
    assert pg_types(pg, back)["j"] == "jsonb"


def test_a_column_mariadb_cannot_hold_is_named(postgres_url, mysql_url, pg, names):
    source, target = names(), names()
    pg.execute(f"CREATE TABLE {source} (id int, span interval)")
    pg.execute(f"INSERT INTO {source} VALUES (1, '1 day 2 hours')")
    with pytest.raises(SchemaError, match="'span'"):
        membound.copy(f"{postgres_url}?table={source}", mysql_url, target_table=target)
    with open_backend(mysql_url) as db:
        assert target not in [row[0] for row in db.rows("SHOW TABLES")]


def test_a_value_mariadb_cannot_hold_is_named(postgres_url, mysql_url, pg, names):
    source, target = names(), names()
    pg.execute(f"CREATE TABLE {source} (id int, ratio double precision)")
    pg.execute(f"INSERT INTO {source} VALUES (1, 0.5), (2, 'NaN')")
    with pytest.raises(SchemaError, match="'ratio'.*NaN"):
        membound.copy(f"{postgres_url}?table={source}", mysql_url, target_table=target)
    with open_backend(mysql_url) as db:
        assert target not in [row[0] for row in db.rows("SHOW TABLES")]


def test_a_numeric_arrow_cannot_hold_is_named(postgres_url, pg, names, tmp_path):
    source = names()
    pg.execute(f"CREATE TABLE {source} (id int, amount numeric)")
    pg.execute(f"INSERT INTO {source} VALUES (1, 'NaN')")
    with pytest.raises(SchemaError, match="'amount'"):
        membound.copy(f"{postgres_url}?table={source}", tmp_path / "out.parquet")


def test_empty_text_and_null_stay_apart_in_every_hop_for_strings_only(
    postgres_url, mysql_url, pg, names, tmp_path
):
    """A table of nothing but text: '' and NULL at every position of a batch."""
    source, in_mysql = names(), names()
    pg.execute(
        f"CREATE TABLE {source} AS SELECT g AS id, CASE g % 3 WHEN 0 THEN NULL "
        "WHEN 1 THEN '' ELSE 'x' END AS t FROM generate_series(1, 3000) g"
    )
    sqlite_url = f"sqlite:///{tmp_path / 'strings.db'}"
    membound.copy(f"{postgres_url}?table={source}", mysql_url, target_table=in_mysql)
    membound.copy(f"{mysql_url}?table={in_mysql}", sqlite_url, target_table=in_mysql)
    for url in (f"{mysql_url}?table={in_mysql}", f"{sqlite_url}?table={in_mysql}"):
        rows = read_table(url)
        assert [row["t"] for row in rows] == [
            None if g % 3 == 0 else "" if g % 3 == 1 else "x" for g in range(1, 3001)
        ]
