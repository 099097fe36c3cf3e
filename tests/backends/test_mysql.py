"""MySQLBackend against a real MariaDB/MySQL server (MEMBOUND_TEST_MYSQL_URL)."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import subprocess
import sys
import textwrap
import time
import uuid
from urllib.parse import urlsplit

import pyarrow as pa
import pytest

from conftest import read_interrupted, require_extension
from membound.backends import mysql_native
from membound.backends.base import open_backend
from membound.errors import (
    ConfigurationError,
    NotFoundError,
    PartialWriteError,
    QueryError,
    SchemaError,
    SourceError,
    TargetError,
    TargetExistsError,
)

pymysql = pytest.importorskip("pymysql")

pytestmark = pytest.mark.server


@pytest.fixture(params=["native", "mariadbconnector", "mysqlclient", "pymysql"])
def read_url(request, mysql_url) -> str:
    """The server's URL for each read path: membound's C reader (a URL without a driver), the
    binary protocol through MariaDB Connector/Python and the text protocol through mysqlclient
    (each when installed), and PyMySQL."""
    if request.param == "native":
        require_native()
        return "mysql://" + mysql_url.split("://", 1)[1]
    if request.param == "mariadbconnector":
        pytest.importorskip("mariadb", reason="mariadb not installed: no binary-protocol reads")
    if request.param == "mysqlclient":
        pytest.importorskip("MySQLdb", reason="mysqlclient not installed: no mysqlclient reads")
    return f"mysql+{request.param}://" + mysql_url.split("://", 1)[1]


def require_native() -> None:
    require_extension("_mysqlarrow")


def thread_id(conn) -> int:
    """A connection's id on the server (a method of PyMySQL's and mysqlclient's connections, an
    attribute of MariaDB Connector/Python's)."""
    found = conn.thread_id
    return found() if callable(found) else found


def thread_ids(db) -> list[int]:
    return [thread_id(conn) for conn in db._open]


def busy(my, ids: list[int], settle_s: float = 1.0) -> list[tuple]:
    """Connections among ``ids`` that are running something (not sleeping), still after
    ``settle_s``: on a loaded machine the server may list a statement whose answer the client
    already has (a ROLLBACK) for a moment longer."""
    if not ids:
        return []
    marks = ",".join(map(str, ids))
    deadline = time.monotonic() + settle_s
    while True:
        found = my.execute(
            f"SELECT ID, COMMAND, INFO FROM information_schema.PROCESSLIST "
            f"WHERE ID IN ({marks}) AND COMMAND <> 'Sleep'"
        )
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def alive(my, ids: list[int], wind_down_s: float = 5.0) -> list[tuple]:
    """Connections among ``ids`` still open, once the server has had ``wind_down_s`` to see the
    closed ones go (it takes a moment)."""
    if not ids:
        return []
    marks = ",".join(map(str, ids))
    deadline = time.monotonic() + wind_down_s
    while True:
        found = my.execute(f"SELECT ID FROM information_schema.PROCESSLIST WHERE ID IN ({marks})")
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


ASTRAL = "héllo 😀 𝄞 中文"
ALL_TYPES_DDL = """
    id INT PRIMARY KEY, i2 SMALLINT, i8 BIGINT, u8 BIGINT UNSIGNED, f8 DOUBLE,
    n DECIMAL(38,10), t LONGTEXT, b BOOLEAN, bin LONGBLOB, d DATE, ts DATETIME(6),
    j JSON, tm TIME(6), e ENUM('x','y')
"""


def fill_all_types(my, name: str) -> None:
    my.execute(f"CREATE TABLE {name} ({ALL_TYPES_DDL}) DEFAULT CHARSET=utf8mb4")
    my.execute(
        f"INSERT INTO {name} VALUES (1, -32768, 9223372036854775807, 18446744073709551615, 1.5, "
        "'1234567890123456789012345678.0123456789', %s, TRUE, %s, '2024-02-29', "
        "'2024-01-02 03:04:05.123456', '{\"k\": [1, \"😀\"]}', '12:34:56.5', 'y')",
        [ASTRAL, b"\x00\xff\x00'\\"],
    )
    my.execute(f"INSERT INTO {name} (id, t) VALUES (2, '')")
    my.execute(f"INSERT INTO {name} (id) VALUES (3)")


EXPECTED_FIRST = {
    "id": 1,
    "i2": -32768,
    "i8": 9223372036854775807,
    "u8": 18446744073709551615,
    "f8": 1.5,
    "n": decimal.Decimal("1234567890123456789012345678.0123456789"),
    "t": ASTRAL,
    "b": True,
    "bin": b"\x00\xff\x00'\\",
    "d": dt.date(2024, 2, 29),
    "ts": dt.datetime(2024, 1, 2, 3, 4, 5, 123456),
    "tm": dt.time(12, 34, 56, 500000),
    "e": "y",
}


def read_all(db, what: str) -> list[dict]:
    out: list[dict] = []
    for batch in db.batches(what):
        out.extend(batch.to_pylist())
    return out


def test_read_maps_every_type_and_keeps_nulls(read_url, my, my_tables):
    name = my_tables()
    fill_all_types(my, name)
    with open_backend(read_url) as db:
        rows = read_all(db, name)
        schema = db.schema(name)
    first, second, third = sorted(rows, key=lambda r: r["id"])
    for column, value in EXPECTED_FIRST.items():
        assert first[column] == value, column
    assert json.loads(first["j"]) == {"k": [1, "😀"]}
    assert second["t"] == "" and second["bin"] is None
    assert all(value is None for key, value in third.items() if key != "id")
    assert schema.field("n").type == pa.decimal128(38, 10)
    assert schema.field("b").type == pa.bool_()
    assert schema.field("u8").type == pa.uint64()
    assert schema.field("j").metadata == {b"membound.type": b"json"}


def test_round_trip_keeps_types_and_values(read_url, my, my_tables):
    source, target = my_tables(), my_tables()
    fill_all_types(my, source)
    with open_backend(read_url) as db:
        result = db.write(target, db.batches(source), key="id")
        assert result.created and result.rows == 3
        assert read_all(db, f"SELECT * FROM {target} ORDER BY id") == read_all(
            db, f"SELECT * FROM {source} ORDER BY id"
        )
    types = dict(
        my.execute(
            "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
            [target],
        )
    )
    assert types["n"] == "decimal(38,10)" and types["bin"] == "longblob"
    assert types["ts"] == "datetime(6)" and types["b"] == "tinyint(1)"
    assert types["j"] in ("json", "longtext")  # MariaDB's JSON is LONGTEXT with a check


def test_write_from_arrow_types_mysql_lacks(mysql_url, my_tables):
    name = my_tables()
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    batch = pa.record_batch(
        {
            "u": pa.ExtensionArray.from_storage(
                pa.uuid(), pa.array([u.bytes, None], pa.binary(16))
            ),
            "tz": pa.array(
                [dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=2))), None],
                pa.timestamp("us", tz="Europe/Paris"),
            ),
            "l": pa.array([["x", "😀"], None], pa.list_(pa.string())),
            "j": pa.ExtensionArray.from_storage(pa.json_(), pa.array(['{"a": 1}', None])),
        }
    )
    with open_backend(mysql_url) as db:
        db.write(name, [batch])
        rows = read_all(db, name)
    assert rows[0]["u"] == str(u)
    # Stored as its UTC wall time; the table's column is marked, so it reads back as UTC.
    assert rows[0]["tz"] == dt.datetime(2024, 1, 1, 10, tzinfo=dt.UTC)
    with open_backend(mysql_url) as db:
        assert next(db.batches(f"SELECT tz FROM {name}")).column(0).type == pa.timestamp("us")
    assert json.loads(rows[0]["l"]) == ["x", "😀"]
    assert json.loads(rows[0]["j"]) == {"a": 1}
    assert all(v is None for v in rows[1].values())


def test_params_and_injection(read_url, my, my_tables):
    name = my_tables()
    my.execute(f"CREATE TABLE {name} (id INT, t TEXT)")
    my.execute(f"INSERT INTO {name} VALUES (1, 'it''s'), (2, 'b'), (3, 'c')")
    with open_backend(read_url) as db:
        assert list(db.rows(f"SELECT id FROM {name} WHERE t = %s", ["it's"])) == [(1,)]
        assert list(db.rows(f"SELECT id FROM {name} WHERE t = %s", ["x' OR '1'='1"])) == []
        query = f"SELECT id FROM {name} WHERE id > %(low)s ORDER BY id"
        assert list(db.rows(query, {"low": 1})) == [(2,), (3,)]
        # PyMySQL's style throughout: %% for a literal % once there are parameters, none
        # without; a sequence fills an IN list.
        query = f"SELECT id, '%%' AS p FROM {name} WHERE t LIKE 'it%%' AND id IN %s"
        assert list(db.rows(query, [(1, 2)])) == [(1, "%")]
        assert list(db.rows(f"SELECT id FROM {name} WHERE t LIKE 'it%'")) == [(1,)]


def test_params_of_every_type(read_url, my, my_tables):
    """Parameters of each Python type find their row on every read path (the C reader gets them
    rendered as literals by PyMySQL: quotes, backslashes, NUL bytes and astral characters
    included)."""
    name = my_tables()
    my.execute(
        f"CREATE TABLE {name} (id INT, t TEXT, b BLOB, d DATETIME(6), n DECIMAL(10,2), f DOUBLE)"
    )
    text, blob = "a'b\\c 😀 \"%s\"", b"\x00'\\\xff"
    when, amount = dt.datetime(2024, 1, 2, 3, 4, 5, 6), decimal.Decimal("1.25")
    my.execute(
        f"INSERT INTO {name} VALUES (1, %s, %s, %s, %s, 0.5), (2, NULL, NULL, NULL, NULL, NULL)",
        (text, blob, when, amount),
    )
    query = (
        f"SELECT id, t FROM {name} WHERE t = %s AND b = %s AND d = %s AND n = %s AND f = %s "
        "AND id IN %s"
    )
    with open_backend(read_url) as db:
        assert list(db.rows(query, (text, blob, when, amount, 0.5, [1, 2]))) == [(1, text)]
        assert list(db.rows(f"SELECT id FROM {name} WHERE t <=> %s", [None])) == [(2,)]
        assert list(db.rows(f"SELECT id FROM {name} WHERE id = %(id)s", {"id": True})) == [(1,)]


def test_qmark_translates_membounds_parameter_style():
    from membound.backends.mysql_binary import qmark

    assert qmark("SELECT '%' , ?", None) == ("SELECT '%' , ?", ())
    assert qmark("SELECT %s, '%%', %s", [1, "a"]) == ("SELECT ?, '%', ?", (1, "a"))
    with pytest.raises(ConfigurationError, match="placeholders"):
        qmark("x = %s AND y = %s", [1])
    with pytest.raises(ConfigurationError, match="no parameter named 'z'"):
        qmark("x = %(z)s", {"y": 1})
    assert qmark("x IN %s AND y = %s", [[1, 2, 3], None]) == (
        "x IN (?, ?, ?) AND y = ?",
        (1, 2, 3, None),
    )
    named = qmark("y = %(y)s OR z = %(y)s", {"y": b"\x00"})
    assert named == ("y = ? OR z = ?", (b"\x00", b"\x00"))


def test_empty_result_yields_one_empty_batch_with_schema(read_url, my, my_tables):
    name = my_tables()
    my.execute(f"CREATE TABLE {name} (id INT, v VARCHAR(10))")
    with open_backend(read_url) as db:
        batches = list(db.batches(name))
    assert len(batches) == 1 and batches[0].num_rows == 0
    assert batches[0].schema.names == ["id", "v"]


def test_text_with_a_binary_collation_reads_as_text(read_url, my, my_tables):
    """MySQL flags utf8mb4_bin text (and MariaDB's JSON) as binary; only real bytes are binary."""
    name = my_tables()
    my.execute(
        f"CREATE TABLE {name} (id INT, a VARCHAR(10) COLLATE utf8mb4_bin, b VARBINARY(10), "
        "c LONGTEXT COLLATE utf8mb4_bin, d CHAR(3) CHARACTER SET ascii COLLATE ascii_bin) "
        "DEFAULT CHARSET=utf8mb4"
    )
    my.execute(
        f"INSERT INTO {name} VALUES (1, %s, %s, %s, 'abc'), (2, NULL, NULL, NULL, NULL)",
        [ASTRAL[:10], b"\x00\xff", ASTRAL],
    )
    with open_backend(read_url) as db:
        batch = next(db.batches(f"SELECT * FROM {name} ORDER BY id"))
    assert batch.schema.types[1:] == [pa.string(), pa.binary(), pa.string(), pa.string()]
    assert batch.to_pylist()[0] == {
        "id": 1,
        "a": ASTRAL[:10],
        "b": b"\x00\xff",
        "c": ASTRAL,
        "d": "abc",
    }


MORE_TYPES_DDL = """
    id INT PRIMARY KEY, ti TINYINT, tu TINYINT UNSIGNED, su SMALLINT UNSIGNED, mi MEDIUMINT,
    mu MEDIUMINT UNSIGNED, iu INT UNSIGNED, f4 FLOAT, big DECIMAL(65,30), small DECIMAL(5,2),
    y YEAR, bits BIT(5), d DATE, dt0 DATETIME, ts TIMESTAMP(3) NULL, tm TIME, vb VARBINARY(8),
    tb TINYBLOB, ch CHAR(2) COLLATE utf8mb4_bin, st SET('a','b'), bt BOOLEAN
"""


def fill_more_types(my, name: str) -> None:
    my.execute(f"CREATE TABLE {name} ({MORE_TYPES_DDL}) DEFAULT CHARSET=utf8mb4")
    my.execute(
        f"INSERT INTO {name} VALUES (1, -128, 255, 65535, -8388608, 16777215, 4294967295, "
        "1.5, '-12345678901234567890123456789012345.012345678901234567890123456789', "
        "-999.99, 2155, b'10110', '1000-01-01', '9999-12-31 23:59:59', "
        "'2038-01-19 03:14:07.999', '23:59:59', x'00ff', x'', 'é', 'a,b', 2), "
        "(2, 127, 0, 0, 8388607, 0, 0, -0.0, 0, 0, 1901, b'0', '2024-02-29', "
        "'1970-01-01 00:00:00', '1970-01-01 00:00:01', '00:00:00', '', NULL, '', '', 0)"
    )
    my.execute(f"INSERT INTO {name} (id) VALUES (3)")


def read_table_and_query(url: str, name: str) -> tuple:
    """Schema and rows of ``name`` read as a table and as queries (one with dates, one with
    expressions), through ``url``."""
    with open_backend(url) as db:
        table = pa.Table.from_batches(list(db.batches(name))).sort_by("id")
        query = pa.Table.from_batches(list(db.batches(f"SELECT * FROM {name} ORDER BY id")))
        expressions = pa.Table.from_batches(
            list(
                db.batches(
                    "SELECT NULL AS n, CAST(1 AS UNSIGNED) AS u, 2.5 AS dec_literal, "
                    "b'101' AS bits_literal, 'x' COLLATE utf8mb4_bin AS text_bin, "
                    "CAST('12:00:00' AS TIME) AS time_of_day"
                )
            )
        )
    return table, query, expressions


def test_every_read_path_reads_every_type_the_same(read_url, mysql_url, my, my_tables):
    """The binary protocol (numbers and dates as binary, read through numpy) and both text
    protocol drivers give the same schema and values, as tables and as queries."""
    name = my_tables()
    fill_more_types(my, name)
    reference = read_table_and_query("mysql+pymysql://" + mysql_url.split("://", 1)[1], name)
    found = read_table_and_query(read_url, name)
    for got, expected in zip(found, reference, strict=True):
        assert got.schema == expected.schema
        assert got.to_pylist() == expected.to_pylist()
    table = found[0]
    assert table.schema.field("bits").type == pa.int64()
    assert table.schema.field("y").type == pa.int16()
    assert table.schema.field("big").type == pa.decimal256(65, 30)
    assert table.schema.field("tm").type == pa.time64("us")
    assert table.schema.field("ch").type == pa.string()
    assert table.column("bits").to_pylist() == [22, 0, None]
    assert table.column("bt").to_pylist() == [True, False, None]
    assert table.column("dt0").to_pylist()[0] == dt.datetime(9999, 12, 31, 23, 59, 59)


def test_zero_dates_read_as_null(read_url, my, my_tables):
    name = my_tables()
    my.execute(f"CREATE TABLE {name} (id INT, d DATE, t DATETIME(6), s TIMESTAMP NULL)")
    my.execute("SET SESSION sql_mode = ''")
    try:
        my.execute(
            f"INSERT INTO {name} VALUES (1, '0000-00-00', '0000-00-00 00:00:00', 0), "
            "(2, '2024-01-02', '2024-01-02 03:04:05.5', '2024-01-02 03:04:05')"
        )
    finally:
        my.execute("SET SESSION sql_mode = DEFAULT")
    expected = [
        {"id": 1, "d": None, "t": None, "s": None},
        {
            "id": 2,
            "d": dt.date(2024, 1, 2),
            "t": dt.datetime(2024, 1, 2, 3, 4, 5, 500000),
            "s": dt.datetime(2024, 1, 2, 3, 4, 5),
        },
    ]
    with open_backend(read_url) as db:
        assert sorted(read_all(db, name), key=lambda r: r["id"]) == expected
        assert read_all(db, f"SELECT * FROM {name} ORDER BY id") == expected


def test_binary_table_reads_give_dates_no_calendar_has_as_null(mysql_url, my, my_tables):
    """Where the text protocol raises SchemaError (and DATEDIFF alone would roll 02-30 over)."""
    pytest.importorskip("mariadb", reason="mariadb not installed: no binary-protocol reads")
    name = my_tables()
    my.execute(f"CREATE TABLE {name} (id INT, d DATE, t DATETIME(6))")
    my.execute("SET SESSION sql_mode = 'ALLOW_INVALID_DATES'")
    try:
        my.execute(
            f"INSERT INTO {name} VALUES (1, '2024-02-30', '2024-02-30 01:00:00'), "
            "(2, '2024-00-10', '2024-03-00 00:00:00'), (3, '2024-02-29', '2024-02-29 12:00:00.5')"
        )
    finally:
        my.execute("SET SESSION sql_mode = DEFAULT")
    with open_backend("mysql+mariadbconnector://" + mysql_url.split("://", 1)[1]) as db:
        rows = sorted(read_all(db, name), key=lambda r: r["id"])
    assert [(r["d"], r["t"]) for r in rows] == [
        (None, None),
        (None, None),
        (dt.date(2024, 2, 29), dt.datetime(2024, 2, 29, 12, 0, 0, 500000)),
    ]


def test_time_outside_a_day_is_a_schema_error(read_url, my, my_tables):
    name = my_tables()
    my.execute(f"CREATE TABLE {name} (id INT, tm TIME)")
    my.execute(f"INSERT INTO {name} VALUES (1, '12:00:00'), (2, '-01:00:00')")
    with open_backend(read_url) as db, pytest.raises(SchemaError, match="'tm'.*time of day"):
        list(db.batches(name))


def test_an_error_the_result_ends_with_fails_the_read(read_url, my, my_tables):
    """The server reports some errors only after sending rows (or the metadata): MariaDB
    Connector/Python returns such a result as complete, with a phantom last row."""
    name = my_tables()
    fill_numbers(my, name, 1000)
    with open_backend(read_url) as db:
        for low in (5, 0):  # the error after 5 rows, and before the first one
            query = (
                f"SELECT id, (SELECT id FROM {name} WHERE id < 3 AND x.id > {low}) AS s "
                f"FROM {name} AS x"
            )
            with pytest.raises(SourceError, match="more than 1 row"):
                list(db.batches(query))
        assert list(db.rows(f"SELECT COUNT(*) FROM {name}")) == [(1000,)]
        ids = thread_ids(db)
    assert alive(my, ids) == []


def test_a_query_killed_mid_read_fails_the_read(read_url, my, my_tables):
    name = my_tables()
    fill_numbers(my, name, 300000)
    with open_backend(read_url, budget="4MB") as db:
        stream = db.batches(name)
        rows = next(stream).num_rows
        for thread in thread_ids(db):
            my.execute(f"KILL QUERY {thread}")
        with pytest.raises(SourceError, match="interrupted"):
            for batch in stream:
                rows += batch.num_rows
        assert rows < 300000
        ids = thread_ids(db)
    assert alive(my, ids) == []


PANDAS_SCRIPT = textwrap.dedent(
    """
    import sys
    from membound.backends.base import open_backend

    url, table = sys.argv[1], sys.argv[2]
    with open_backend(url) as db:
        rows = sum(b.num_rows for b in db.batches(table))
        query = f"SELECT id, tm, bits, big, f4, bt, vb FROM {table} WHERE id > %s"
        rows += sum(b.num_rows for b in db.batches(query, [0]))
    print(rows, "pandas" in sys.modules)
    """
)


@pytest.mark.parametrize("driver", ["native", "mariadbconnector"])
def test_binary_reads_do_not_import_pandas(mysql_url, my, my_tables, driver):
    """Every type, TIME and BIT included, without pa.array (which imports pandas, ~50 MB)."""
    if driver == "native":
        require_native()
    else:
        pytest.importorskip("mariadb", reason="mariadb not installed: no binary-protocol reads")
    name = my_tables()
    fill_more_types(my, name)
    scheme = "mysql" if driver == "native" else f"mysql+{driver}"
    url = f"{scheme}://" + mysql_url.split("://", 1)[1]
    out = subprocess.run(
        [sys.executable, "-c", PANDAS_SCRIPT, url, name],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    assert out == ["6", "False"]


def fill_numbers(my, name: str, count: int) -> None:
    my.execute(
        f"CREATE TABLE {name} (id BIGINT PRIMARY KEY, payload TEXT) "
        f"SELECT seq AS id, REPEAT(MD5(seq), 4) AS payload FROM seq_1_to_{count}"
    )


def test_batches_are_sized_in_bytes(read_url, my, my_tables):
    name = my_tables()
    fill_numbers(my, name, 100000)
    with open_backend(read_url, budget="16MB") as db:
        sizes = [(b.num_rows, b.nbytes) for b in db.batches(name)]
    target = 1_000_000  # 16MB / 16
    assert sum(rows for rows, _ in sizes) == 100000
    assert len(sizes) > 10
    assert max(nbytes for _, nbytes in sizes) <= 1.2 * target


def test_insert_statements_stay_under_max_allowed_packet(mysql_url, my, my_tables):
    name = my_tables()
    my.execute(f"CREATE TABLE {name} (id INT, payload LONGTEXT)")
    with open_backend(mysql_url, budget="2GB") as db:
        db.load_data = False  # the INSERT path (servers without local_infile)
        db.max_allowed_packet = 1_000_000  # pretend a small server limit
        wide = pa.record_batch({"id": list(range(400)), "payload": ["é" * 5000] * 400})
        assert db.write(name, [wide], mode="append").rows == 400
    assert my.execute(f"SELECT COUNT(*), SUM(CHAR_LENGTH(payload)) FROM {name}") == [
        (400, decimal.Decimal(400 * 5000))
    ]


@pytest.fixture(params=["load_data", "insert"])
def write_path(request) -> str:
    """Each bulk write path: streamed LOAD DATA LOCAL (the default) and multi-row INSERTs."""
    return request.param


# Bytes LOAD DATA's format gives a meaning to (escape, field and line ends, NUL), the texts it
# reads as NULL, the empty string, and astral characters.
AWKWARD_TEXTS = ["a\\b\tc\nd\x00e\\", "\\N", "NULL", "", None, "\r\n", ASTRAL, "\\"]
AWKWARD_BYTES = [b"\x00\xff\t\n\\N", b"\\", b"", None, b"\xc3", b"\x00", b"x\ty", b"'"]


def test_writes_keep_awkward_text_and_bytes(mysql_url, my_tables, write_path):
    name = my_tables()
    batch = pa.record_batch(
        {
            "id": pa.array(range(len(AWKWARD_TEXTS)), pa.int64()),
            "t": pa.array(AWKWARD_TEXTS, pa.string()),
            "b": pa.array(AWKWARD_BYTES, pa.binary()),
            "f": pa.array([1e300, -0.0, None, 5e-324, 0.1, 1.0, 2.5, -7.0], pa.float64()),
        }
    )
    with open_backend(mysql_url) as db:
        db.load_data = write_path == "load_data"
        assert db.write(name, [batch.slice(0, 3), batch.slice(3)]).rows == len(AWKWARD_TEXTS)
        rows = read_all(db, f"SELECT * FROM {name} ORDER BY id")
    assert [r["t"] for r in rows] == AWKWARD_TEXTS
    assert [r["b"] for r in rows] == AWKWARD_BYTES
    assert [r["f"] for r in rows] == batch.column("f").to_pylist()


def test_load_data_fails_on_values_the_server_would_truncate(mysql_url, my, my_tables):
    # With LOCAL the server turns strict-mode errors into warnings: the write must still fail.
    name = my_tables()
    my.execute(f"CREATE TABLE {name} (id INT, v VARCHAR(3))")
    my.execute(f"INSERT INTO {name} VALUES (0, 'old')")
    batch = pa.record_batch({"id": [1, 2], "v": ["abc", "abcdef"]})
    with open_backend(mysql_url) as db:
        assert db.load_data
        with pytest.raises(TargetError, match="nothing was committed.*(too long|truncated)"):
            db.write(name, [batch], mode="append")
    assert my.execute(f"SELECT * FROM {name}") == [(0, "old")]


def test_load_data_serves_no_file_the_server_names(mysql_url, my, my_tables, monkeypatch):
    """A server that asks for another file than the statement's token gets nothing."""
    import membound.backends.mysql_load as mysql_load

    name = my_tables()
    my.execute(f"CREATE TABLE {name} (id INT)")
    real = mysql_load.load_statement

    def naming_another_file(target, columns, token, backslash_escapes):
        return real(target, columns, "/etc/hostname", backslash_escapes)

    monkeypatch.setattr(mysql_load, "load_statement", naming_another_file)
    with open_backend(mysql_url) as db:
        with pytest.raises(TargetError, match="asked for the client file"):
            db.write(name, [pa.record_batch({"id": [1, 2]})], mode="append")
        # PyMySQL's own handler, which would open any file named, stays off.
        with (
            db._connection() as conn,
            conn.cursor() as cursor,
            pytest.raises(RuntimeError, match="local_infile"),
        ):
            cursor.execute(f"LOAD DATA LOCAL INFILE '/etc/hostname' INTO TABLE {name}")
    assert my.execute(f"SELECT COUNT(*) FROM {name}") == [(0,)]


# -- write modes ---------------------------------------------------------------------------------


def numbers(start: int, stop: int, label: str = "v") -> pa.RecordBatch:
    ids = list(range(start, stop))
    return pa.record_batch({"id": pa.array(ids, pa.int64()), "v": [f"{label}{i}" for i in ids]})


def leftover_build_tables(my) -> list[tuple]:
    return my.execute(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
        "AND TABLE_NAME LIKE '\\_membound\\_%%'"
    )


def test_mode_fail_refuses_an_existing_table(mysql_url, my_tables):
    name = my_tables()
    with open_backend(mysql_url) as db:
        assert db.write(name, [numbers(0, 3)]).created
        with pytest.raises(TargetExistsError, match=name):
            db.write(name, [numbers(3, 5)])
        assert len(read_all(db, name)) == 3


def test_mode_append_adds_rows(mysql_url, my, my_tables):
    name = my_tables()
    my.execute(f"CREATE TABLE {name} (id INT, v TEXT, extra VARCHAR(9) DEFAULT 'dflt')")
    with open_backend(mysql_url) as db:
        result = db.write(name, [numbers(0, 3), numbers(3, 5)], mode="append")
        assert (result.rows, result.batches, result.created) == (5, 2, False)
        with pytest.raises(SchemaError, match="nope"):
            db.write(name, [pa.record_batch({"nope": [1]})], mode="append")
    assert my.execute(f"SELECT COUNT(*), MIN(extra) FROM {name}") == [(5, "dflt")]


def test_mode_replace_swaps_the_table(mysql_url, my, my_tables):
    leftovers_before = set(leftover_build_tables(my))
    name = my_tables()
    my.execute(f"CREATE TABLE {name} (old_column INT)")
    with open_backend(mysql_url) as db:
        result = db.write(name, [numbers(0, 4)], mode="replace", key="id")
        assert result.created and result.rows == 4
        assert db.schema(name).names == ["id", "v"]
    assert my.execute(f"SHOW KEYS FROM {name} WHERE Key_name = 'PRIMARY'")
    assert set(leftover_build_tables(my)) <= leftovers_before


def test_replace_is_atomic_when_the_batch_stream_fails(mysql_url, my, my_tables):
    leftovers_before = set(leftover_build_tables(my))
    name = my_tables()
    my.execute(f"CREATE TABLE {name} (id BIGINT, v TEXT)")
    my.execute(f"INSERT INTO {name} VALUES (1, 'old')")

    def failing():
        yield numbers(0, 1000)
        yield numbers(1000, 2000)
        raise RuntimeError("source died")

    with open_backend(mysql_url) as db:
        with pytest.raises(RuntimeError, match="source died"):
            db.write(name, failing(), mode="replace")
        assert busy(my, thread_ids(db)) == []
    assert my.execute(f"SELECT * FROM {name}") == [(1, "old")]
    assert set(leftover_build_tables(my)) <= leftovers_before


def test_replace_is_atomic_when_the_server_rejects_the_data(mysql_url, my, my_tables):
    leftovers_before = set(leftover_build_tables(my))
    name = my_tables()
    my.execute(f"CREATE TABLE {name} (id BIGINT, v TEXT)")
    my.execute(f"INSERT INTO {name} VALUES (1, 'old')")
    with open_backend(mysql_url) as db, pytest.raises(TargetError, match="Duplicate"):
        db.write(name, [numbers(0, 10), numbers(5, 6)], mode="replace", key="id")
    assert my.execute(f"SELECT * FROM {name}") == [(1, "old")]
    assert set(leftover_build_tables(my)) <= leftovers_before


def test_mode_upsert_inserts_and_updates_on_key(mysql_url, my_tables):
    name = my_tables()
    with open_backend(mysql_url) as db:
        first = pa.record_batch({"id": [1, 2, 2], "v": ["a", "b", "b2"]})
        assert db.write(name, [first], mode="upsert", key="id").created
        db.write(name, [pa.record_batch({"id": [2, 3], "v": ["B", "C"]})], mode="upsert", key="id")
        assert list(db.rows(f"SELECT id, v FROM {name} ORDER BY id")) == [
            (1, "a"),
            (2, "B"),
            (3, "C"),
        ]


def test_constraint_violation_mid_append_reports_what_was_committed(mysql_url, my, my_tables):
    name = my_tables()
    my.execute(f"CREATE TABLE {name} (id BIGINT PRIMARY KEY, v TEXT)")
    with open_backend(mysql_url) as db:
        with pytest.raises(PartialWriteError) as caught:
            db.write(
                name,
                [numbers(0, 100), numbers(100, 200), numbers(150, 250)],
                mode="append",
                key="id",
            )
        assert caught.value.rows_committed == 200
        assert caught.value.resume_after == (199,)
        assert "Duplicate" in str(caught.value)
        ids = thread_ids(db)
        assert busy(my, ids) == []
    assert my.execute(f"SELECT COUNT(*) FROM {name}") == [(200,)]
    assert alive(my, ids) == []


# -- errors and connection hygiene -----------------------------------------------------------------


def test_server_down_names_the_host_and_masks_the_password():
    with pytest.raises(SourceError) as caught:
        open_backend("mysql://someone:s3cretpw@127.0.0.1:1/test")
    message = str(caught.value)
    assert "127.0.0.1:1" in message and "***" in message and "s3cretpw" not in message


def test_unknown_database_is_not_found(mysql_url):
    base = mysql_url.split("?", 1)[0].rsplit("/", 1)[0]
    with pytest.raises(NotFoundError, match="mb_no_such_db"):
        open_backend(f"{base}/mb_no_such_db")


def test_wrong_password_is_refused_with_the_host(mysql_url):
    parts = urlsplit(mysql_url)
    url = f"mysql://mb_no_such_user:wrongpw@{parts.hostname}:{parts.port or 3306}{parts.path}"
    with pytest.raises(SourceError) as caught:
        open_backend(url)
    assert "denied" in str(caught.value) and "wrongpw" not in str(caught.value)


def test_missing_table_and_bad_sql(read_url, my):
    with open_backend(read_url) as db:
        with pytest.raises(NotFoundError, match="mb_no_such_table"):
            next(db.batches("mb_no_such_table"))
        with pytest.raises(QueryError, match="syntax"):
            next(db.batches("SELECT FROM WHERE"))
        assert busy(my, thread_ids(db)) == []
        assert list(db.rows("SELECT 1")) == [(1,)]
        ids = thread_ids(db)
    assert alive(my, ids) == []


def test_abandoned_stream_stops_the_server_without_reading_the_rest(read_url, my, my_tables):
    name = my_tables()
    fill_numbers(my, name, 300000)
    with open_backend(read_url, budget="4MB") as db:
        stream = db.batches(name)
        next(stream)
        started = time.perf_counter()
        stream.close()
        assert time.perf_counter() - started < 1.0
        # A read and a write on the same backend at once use two connections.
        copy = my_tables()
        assert db.write(copy, db.batches(name)).rows == 300000
        ids = thread_ids(db)
        assert busy(my, ids) == []
    assert alive(my, ids) == []


# -- memory ----------------------------------------------------------------------------------------

MEMORY_ROWS = 600_000  # ~200 MB as Arrow, ~600 MB as Python rows: far over the budget if held
MEMORY_BUDGET = 32_000_000

MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys
    import pymysql, pyarrow
    try:
        import MySQLdb  # the read paths when installed: part of the baseline
    except ImportError:
        pass
    try:
        import mariadb
    except ImportError:
        pass
    import membound.backends.mysql
    from membound.backends.base import open_backend
    from membound.memory import peak_rss_bytes, reset_peak, rss_bytes, warm_up

    warm_up()
    url, table, budget = sys.argv[1], sys.argv[2], sys.argv[3]
    baseline = rss_bytes()
    reset_peak()
    rows = 0
    with open_backend(url, budget=budget) as db:
        for batch in db.batches(table):
            rows += batch.num_rows
    print(rows, peak_rss_bytes() - baseline)
    """
)


@pytest.fixture(scope="module")
def big_table(mysql_url, mysql_plain):
    name = f"mbtest_big_{uuid.uuid4().hex[:10]}"
    helper = mysql_plain(mysql_url)
    # The shared benchmark's events table.
    helper.execute(
        f"CREATE TABLE {name} (id BIGINT PRIMARY KEY, user_id INT NOT NULL, ts DATETIME(6) NOT "
        "NULL, kind VARCHAR(16) NOT NULL, amount DOUBLE, payload TEXT, flag BOOLEAN) "
        "SELECT seq AS id, (seq*7919)%100000 AS user_id, "
        "TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq SECOND AS ts, "
        "ELT(1+seq%4,'click','view','buy','share') AS kind, "
        "IF(seq%10=0, NULL, (seq%1000)/7.0) AS amount, REPEAT(MD5(seq), 1+seq%6) AS payload, "
        f"seq%3=0 AS flag FROM seq_1_to_{MEMORY_ROWS}"
    )
    yield name
    helper.execute(f"DROP TABLE IF EXISTS {name}")
    helper.conn.close()


def read_in_child(url: str, table: str, budget: str) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, url, table, budget],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.split()
    return int(out[0]), int(out[1])


def test_reading_stays_inside_the_budget(read_url, big_table):
    rows, peak_above_baseline = read_in_child(read_url, big_table, str(MEMORY_BUDGET))
    assert rows == MEMORY_ROWS
    assert peak_above_baseline <= 1.1 * MEMORY_BUDGET, peak_above_baseline


@pytest.mark.slow
def test_the_memory_workload_would_exceed_the_budget_unbounded(mysql_url, big_table):
    """Proof the test above can fail: with a huge budget (64 MB batches) it goes far over."""
    rows, peak_above_baseline = read_in_child(mysql_url, big_table, "8GB")
    assert rows == MEMORY_ROWS
    assert peak_above_baseline > 2 * MEMORY_BUDGET


# -- the same server through the generic SQLAlchemy backend ----------------------------------------


@pytest.fixture
def sqlalchemy_url(mysql_url) -> str:
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("MySQLdb", reason="mysqlclient not installed (mysql+mysqldb://)")
    return "mysql+mysqldb://" + mysql_url.split("://", 1)[1]


def test_sqlalchemy_backend_round_trip_and_modes(sqlalchemy_url, my_tables):
    from membound.backends.sqlalchemy import SQLAlchemyBackend

    name = my_tables()
    with open_backend(sqlalchemy_url, budget="16MB") as db:
        assert isinstance(db, SQLAlchemyBackend) and db.streams
        first = pa.record_batch({"id": [1, 2], "v": [ASTRAL, None]})
        assert db.write(name, [first], key="id").created
        db.write(name, [pa.record_batch({"id": [2, 3], "v": ["B", "C"]})], mode="upsert", key="id")
        assert list(db.rows(f"SELECT id, v FROM {name} ORDER BY id")) == [
            (1, ASTRAL),
            (2, "B"),
            (3, "C"),
        ]
        with pytest.raises(PartialWriteError) as caught:
            db.write(name, [numbers(10, 12), numbers(11, 12)], mode="append", key="id")
        assert (caught.value.rows_committed, caught.value.resume_after) == (2, (11,))
        with pytest.raises(NotFoundError):
            next(db.batches("mb_no_such_table"))


def test_sqlalchemy_backend_warns_when_the_dialect_cannot_stream(sqlalchemy_url):
    with open_backend(sqlalchemy_url) as db:
        db.streams = False  # as for a dialect without server-side cursors
        with pytest.warns(ResourceWarning, match="mysql\\+mysqldb"):
            list(db.batches("SELECT 1 AS one"))


def test_sqlalchemy_backend_replace_swaps_atomically(sqlalchemy_url, my, my_tables):
    """MySQL's DDL is not transactional: replace swaps both names in one RENAME TABLE."""
    leftovers_before = set(leftover_build_tables(my))
    name = my_tables()
    my.execute(f"CREATE TABLE {name} (id BIGINT, v TEXT)")
    my.execute(f"INSERT INTO {name} VALUES (1, 'old')")
    with open_backend(sqlalchemy_url) as db:
        result = db.write(name, [numbers(0, 3)], mode="replace")
        assert result.created and result.rows == 3
    assert my.execute(f"SELECT id, v FROM {name} ORDER BY id") == [(0, "v0"), (1, "v1"), (2, "v2")]
    assert set(leftover_build_tables(my)) <= leftovers_before


def test_text_values_as_bytes_are_checked_for_utf8():
    """Arrow's string builder, which reads take values by, does not check UTF-8 by itself."""
    from membound.backends.mysql import _Column, _to_array

    text = _Column("t", pa.string(), pa.string())
    assert _to_array([None, "é", ""], text).to_pylist() == [None, "é", ""]
    assert _to_array([b"\xc3\xa9", None], text).to_pylist() == ["é", None]
    with pytest.raises(SchemaError, match="'t'.*UTF8"):
        _to_array([None, b"ok", b"\xff"], text)
    number = _Column("n", pa.int64(), pa.string())
    assert _to_array([b"12", None, b"-3"], number).to_pylist() == [12, None, -3]


def test_binary_protocol_values_become_arrow_arrays():
    """The binary path's converters (mysql_binary), on the Python values the connector gives."""
    from membound.backends.mysql import POOL, _Column, _to_array
    from membound.backends.mysql_binary import epoch_converter, values_converter

    def read(values, arrow_type, type_code=0):
        convert = values_converter(arrow_type, type_code, "c", POOL)
        return _to_array(tuple(values), _Column("c", arrow_type, None, convert))

    assert read([1, None, -3], pa.int64()).to_pylist() == [1, None, -3]
    assert read([2**64 - 1, 0], pa.uint64()).to_pylist() == [2**64 - 1, 0]
    # The connector gives signed TINYINT -128..-1 as 128..255.
    assert read([128, 255, 127, None], pa.int8()).to_pylist() == [-128, -1, 127, None]
    assert read([1, 0, None, 255], pa.bool_()).to_pylist() == [True, False, None, True]
    assert read([1.5, None, -0.0], pa.float64()).to_pylist() == [1.5, None, -0.0]
    assert read([0.25, None], pa.float32()).type == pa.float32()
    assert read(["ab", None, "", "c"], pa.string()).to_pylist() == ["ab", None, "", "c"]
    assert read([ASTRAL, None, "x"], pa.string()).to_pylist() == [ASTRAL, None, "x"]
    assert read([b"\x00\xff", None, b""], pa.binary()).to_pylist() == [b"\x00\xff", None, b""]
    assert read([b'{"a": 1}', None], pa.string()).to_pylist() == ['{"a": 1}', None]
    with pytest.raises(SchemaError, match="'c'.*UTF8"):
        read([b"ok", b"\xff"], pa.string())
    money = [decimal.Decimal("1.50"), None, decimal.Decimal("0E-10")]
    assert read(money, pa.decimal128(5, 2)).to_pylist() == [
        decimal.Decimal("1.50"),
        None,
        decimal.Decimal("0.00"),
    ]
    assert read([b"\x16", None, b"\x00"], pa.int64(), type_code=16).to_pylist() == [22, None, 0]
    noon = dt.timedelta(hours=12, microseconds=5)
    assert read([noon, None], pa.time64("us")).to_pylist() == [dt.time(12, 0, 0, 5), None]
    with pytest.raises(SchemaError, match="'c' holds TIME '-01:00:00', outside a time of day"):
        read([noon, -dt.timedelta(hours=1)], pa.time64("us"))
    with pytest.raises(SchemaError, match="'c' holds TIME '24:00:00'"):
        read([dt.timedelta(hours=24)], pa.time64("us"))
    date_column = _Column("d", pa.date32(), None, epoch_converter(pa.date32(), "d"))
    days = _to_array((19724, None), date_column)
    assert days.to_pylist() == [dt.date(2024, 1, 2), None]
    stamp = pa.timestamp("us")
    micros = _to_array((1, None), _Column("t", stamp, None, epoch_converter(stamp, "t")))
    assert micros.to_pylist() == [dt.datetime(1970, 1, 1, 0, 0, 0, 1), None]
    assert read([None, None], pa.null()).null_count == 2


# -- membound's C reader (membound._mysqlarrow) ----------------------------------------------


def native_url(mysql_url: str) -> str:
    require_native()
    return "mysql://" + mysql_url.split("://", 1)[1]


def test_native_reader_reads_values_of_every_width(mysql_url, my, my_tables):
    """Values around the reader's 1 KiB staging buffer and far beyond it (fetched again,
    straight into the batch), astral text, empty strings and NULLs, in batches sized in bytes."""
    name = my_tables()
    my.execute(f"CREATE TABLE {name} (id INT PRIMARY KEY, t LONGTEXT, b LONGBLOB)")
    widths = [0, 1, 1023, 1024, 1025, 4096, 70_000, 3_000_000]
    expected = {}
    for i, width in enumerate(widths):
        text = ("😀é" * width)[:width] if width else ""
        blob = bytes(range(256)) * (width // 256) + bytes(width % 256)
        expected[i] = (text, blob)
        my.execute(f"INSERT INTO {name} VALUES (%s, %s, %s)", (i, text, blob))
    my.execute(f"INSERT INTO {name} VALUES (100, NULL, NULL)")
    with open_backend(native_url(mysql_url), budget="8MB") as db:
        batches = list(db.batches(name))
    assert len(batches) >= 2  # the 3 MB values do not share a 1 MB batch with everything else
    rows = {r["id"]: (r["t"], r["b"]) for b in batches for r in b.to_pylist()}
    assert rows.pop(100) == (None, None)
    assert rows == expected


def test_native_reader_reads_query_dates_itself(mysql_url, my, my_tables):
    """A query's DATE, DATETIME and TIME columns are read in the binary protocol too (the
    MariaDB connector hands those to the text protocol): dates as days and microseconds."""
    name = my_tables()
    my.execute(f"CREATE TABLE {name} (id INT PRIMARY KEY, d DATE, dt DATETIME(6), tm TIME(6))")
    my.execute(
        f"INSERT INTO {name} VALUES (1, '1969-12-31', '1900-02-28 23:59:59.999999', '23:59:59.5'),"
        f" (2, '2024-02-29', '2038-01-19 03:14:08.000001', '00:00:00'), (3, NULL, NULL, NULL)"
    )
    with open_backend(native_url(mysql_url)) as db:
        rows = read_all(db, f"SELECT d, dt, tm FROM {name} ORDER BY id")
    assert rows == [
        {"d": dt.date(1969, 12, 31), "dt": dt.datetime(1900, 2, 28, 23, 59, 59, 999999),
         "tm": dt.time(23, 59, 59, 500000)},
        {"d": dt.date(2024, 2, 29), "dt": dt.datetime(2038, 1, 19, 3, 14, 8, 1),
         "tm": dt.time(0, 0)},
        {"d": None, "dt": None, "tm": None},
    ]


def test_native_reader_refuses_a_statement_without_rows(mysql_url):
    with open_backend(native_url(mysql_url)) as db:
        with pytest.raises(QueryError, match="no rows"):
            list(db.batches("SELECT 1 INTO @membound_x"))
        assert not any(type(c).__module__ == "membound._mysqlarrow" for c in db._open)


def test_native_reader_falls_back_when_the_server_cannot_prepare(mysql_url, my, my_tables):
    """A statement the prepared-statement protocol does not take (error 1295) is read by the
    next reader, with the same result."""
    name = my_tables()
    fill_numbers(my, name, 500)
    native = mysql_native.import_native() or pytest.skip("no C reader")

    class Unpreparable:
        """The C reader, but its server does not prepare the statement."""

        def __init__(self, *args, **kwargs):
            self.reader = native.Reader(*args, **kwargs)

        def execute(self, sql):
            raise native.Error(1295, "This command is not supported in the prepared statement "
                                     "protocol yet")

        def close(self):
            self.reader.close()

    class Module:
        Reader = Unpreparable
        Error = native.Error

    with open_backend(native_url(mysql_url)) as db:
        expected = read_all(db, name)
        db._native = Module
        assert read_all(db, name) == expected
        assert len(expected) == 500
        assert db._open and not any(isinstance(c, Unpreparable) for c in db._open)


def test_native_reader_closes_its_connection_on_bad_sql(mysql_url, my):
    with open_backend(native_url(mysql_url)) as db:
        with pytest.raises(QueryError):
            list(db.batches("SELECT nope FROM DUAL"))
        assert not any(type(c).__module__ == "membound._mysqlarrow" for c in db._open)


def test_native_reader_holds_its_snapshot_until_closed(mysql_url, my, my_tables):
    """The read runs in a transaction: a DROP TABLE waits for it even when the server has sent
    the whole (small) result already and only the client is still reading."""
    import threading

    name = my_tables()
    fill_numbers(my, name, 3000)
    dropped = threading.Event()

    def drop() -> None:
        other = pymysql.connect(**_plain_args(mysql_url))
        try:
            with other.cursor() as cursor:
                cursor.execute(f"DROP TABLE {name}")
        finally:
            other.close()
        dropped.set()

    with open_backend(native_url(mysql_url), budget="1MB") as db:
        stream = db.batches(name)
        rows = next(stream).num_rows
        time.sleep(0.3)  # the server is done sending
        dropper = threading.Thread(target=drop)
        dropper.start()
        time.sleep(0.5)
        assert not dropped.is_set()
        rows += sum(b.num_rows for b in stream)
    dropper.join(10)
    assert rows == 3000 and dropped.is_set()


def _plain_args(mysql_url: str) -> dict:
    parts = urlsplit(mysql_url)
    return {"host": parts.hostname or "127.0.0.1", "port": parts.port or 3306,
            "user": parts.username or "root", "password": parts.password or "",
            "database": parts.path.lstrip("/"), "autocommit": True}


@pytest.mark.parametrize("mode", ["direct", "prefetch"])
def test_ctrl_c_while_the_server_computes_stops_at_once(mysql_url, my, mode):
    """The C reader blocks in libmariadb until the server answers: a Ctrl-C (SIGINT) a second
    into a one-minute query ends the read at once, on the main thread or through a copy's
    reading thread, and the query is killed on the server (KILL QUERY), not left running."""
    require_native()
    url = "mysql://" + mysql_url.split("://", 1)[1]
    query = "SELECT x FROM (SELECT 1 AS x, SLEEP(60) AS s) AS q"
    kind, seconds = read_interrupted(url, query, mode)
    assert kind == "KeyboardInterrupt"
    assert seconds < 3.0
    running = my.execute(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE '%SLEEP(60)%' "
        "AND INFO NOT LIKE '%PROCESSLIST%'"
    )
    assert running[0][0] == 0
