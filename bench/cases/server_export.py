"""PostgreSQL -> Parquet and MariaDB -> Parquet export of the ``events`` table.

The table is built on the server by SQL (the protocol's ``generate_series`` query in PostgreSQL,
its equivalent over MariaDB's ``seq_1_to_N`` engine) and kept between runs as ``events_<N>``,
marked with the dataset version in its comment. Both give exactly the rows of ``data.event_row``
(``amount`` is the same IEEE division; ``ts`` is UTC, a naive ``DATETIME(6)`` in MariaDB), so every
output is checked against the reference checksum of the SQLite case's file of the same size.

Servers: ``MEMBOUND_BENCH_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``)
and ``MEMBOUND_BENCH_MYSQL_URL`` (default ``mysql://root@127.0.0.1:3306/test``).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

from cases.base import Case, Contestant, Dataset, RunSpec
from cases.sqlite_export import _reference
from checksum import EVENTS_CANONICAL, Verification, parquet_checksum
from data import DATASET_VERSION, build_sqlite

POSTGRES_URL = os.environ.get(
    "MEMBOUND_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("MEMBOUND_BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
# The table's comment: a table built by an older definition of the dataset is rebuilt.
TABLE_COMMENT = f"membound bench events v{DATASET_VERSION}"

PG_BUILD = """
CREATE TABLE {table} (id bigint PRIMARY KEY, user_id int NOT NULL, ts timestamptz NOT NULL,
  kind text NOT NULL, amount double precision, payload text, flag boolean);
INSERT INTO {table}
SELECT g, ((g::bigint*7919)%100000)::int,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second',
       (array['click','view','buy','share'])[1+g%4],
       case when g%10=0 then null else (g%1000)/7.0 end,
       repeat(md5(g::text), 1 + g%6), g%3=0
FROM generate_series(1, {rows}) g;
COMMENT ON TABLE {table} IS '{comment}';
VACUUM ANALYZE {table};
"""

# (seq%1000)/7e0 is a DOUBLE division, like Python's; /7.0 would be DECIMAL, rounded to 4 places.
MYSQL_BUILD = """
CREATE TABLE {table} (id BIGINT PRIMARY KEY, user_id INT NOT NULL, ts DATETIME(6) NOT NULL,
  kind VARCHAR(16) NOT NULL, amount DOUBLE, payload TEXT, flag BOOLEAN)
  DEFAULT CHARSET=utf8mb4 COMMENT='{comment}'
SELECT seq AS id, (seq*7919)%100000 AS user_id,
  TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq SECOND AS ts,
  ELT(1+seq%4,'click','view','buy','share') AS kind,
  IF(seq%10=0, NULL, (seq%1000)/7e0) AS amount, REPEAT(MD5(seq), 1+seq%6) AS payload,
  seq%3=0 AS flag
FROM seq_1_to_{rows};
ANALYZE TABLE {table};
"""


def table_name(rows: int) -> str:
    return f"events_{rows}"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def reference(rows: int) -> Verification:
    """The protocol's rows and checksum at this size (the SQLite case's cached reference)."""
    ref = _reference(build_sqlite(rows))
    if ref.rows != rows:
        raise SystemExit(f"the reference SQLite file holds {ref.rows} rows, not {rows}")
    return ref


# -- PostgreSQL ------------------------------------------------------------------------------------


def pg_connect(url: str = POSTGRES_URL):
    import psycopg

    return psycopg.connect(url, autocommit=True)


def pg_table_state(conn, table: str) -> tuple[int, str | None, int] | None:
    """(row estimate, comment, total bytes) of ``table``, or None when there is none."""
    row = conn.execute(
        "SELECT c.reltuples::bigint, obj_description(c.oid, 'pg_class'), "
        "pg_total_relation_size(c.oid) FROM pg_class c WHERE c.oid = to_regclass(%s)",
        [table],
    ).fetchone()
    return None if row is None else (int(row[0]), row[1], int(row[2]))


def pg_ensure_events(rows: int) -> dict[str, str]:
    """Build ``events_<rows>`` in PostgreSQL unless it is there, whole and current."""
    table = table_name(rows)
    with pg_connect() as conn:
        state = pg_table_state(conn, table)
        current = state is not None and state[1] == TABLE_COMMENT
        if current:
            current = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == rows
        if not current:
            log(f"  building {table} in PostgreSQL ...")
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in PG_BUILD.format(table=table, rows=rows, comment=TABLE_COMMENT).split(
                ";\n"
            ):
                if statement.strip():
                    conn.execute(statement)
            state = pg_table_state(conn, table)
        # Read it once, so that it is in the server's cache for the first contestant.
        conn.execute(f"SELECT count(*), sum(length(payload)) FROM {table}")
        version = conn.execute("SHOW server_version").fetchone()[0]
    assert state is not None
    return {
        "PostgreSQL table": f"{table}, {state[2] / 1e6:,.0f} MB with its index",
        "server": f"PostgreSQL {version}",
    }


def pg_prepare(rows: int) -> Dataset:
    facts = pg_ensure_events(rows)
    return Dataset(
        rows=rows,
        source=POSTGRES_URL,
        table=table_name(rows),
        reference=reference(rows),
        facts=facts,
    )


# -- MariaDB ---------------------------------------------------------------------------------------


def mysql_connect(url: str = MYSQL_URL, **options):
    import pymysql

    parts = urlsplit(url)
    return pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        database=parts.path.lstrip("/"),
        charset="utf8mb4",
        autocommit=True,
        **options,
    )


def mysql_ensure_events(rows: int) -> dict[str, str]:
    """Build ``events_<rows>`` in MariaDB unless it is there, whole and current."""
    table = table_name(rows)
    conn = mysql_connect()
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT TABLE_COMMENT FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
                [table],
            )
            found = cursor.fetchone()
            current = found is not None and found[0] == TABLE_COMMENT
            if current:
                cursor.execute(f"SELECT COUNT(*) FROM {table}")
                current = cursor.fetchone()[0] == rows
            if not current:
                log(f"  building {table} in MariaDB ...")
                cursor.execute(f"DROP TABLE IF EXISTS {table}")
                for statement in MYSQL_BUILD.format(
                    table=table, rows=rows, comment=TABLE_COMMENT
                ).split(";\n"):
                    if statement.strip():
                        cursor.execute(statement)
                        cursor.fetchall()
            # Read it once, so that it is in the buffer pool for the first contestant.
            cursor.execute(f"SELECT COUNT(*), SUM(LENGTH(payload)) FROM {table}")
            cursor.fetchall()
            cursor.execute(
                "SELECT DATA_LENGTH + INDEX_LENGTH FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
                [table],
            )
            size = int(cursor.fetchone()[0])
            cursor.execute("SELECT VERSION()")
            version = cursor.fetchone()[0]
    finally:
        conn.close()
    return {
        "MariaDB table": f"{table}, {size / 1e6:,.0f} MB with its index",
        "server": f"MariaDB {version}",
    }


def mysql_prepare(rows: int) -> Dataset:
    facts = mysql_ensure_events(rows)
    return Dataset(
        rows=rows,
        source=MYSQL_URL,
        table=table_name(rows),
        reference=reference(rows),
        facts=facts,
    )


def mysql_cli_args(url: str = MYSQL_URL) -> list[str]:
    """The ``mariadb`` client's connection options for ``url`` (the password by environment)."""
    parts = urlsplit(url)
    return [
        "-h",
        parts.hostname or "127.0.0.1",
        "-P",
        str(parts.port or 3306),
        "-u",
        parts.username or "root",
        parts.path.lstrip("/"),
    ]


def mysql_cli() -> str | None:
    return shutil.which("mariadb") or shutil.which("mysql")


def _mariadb_cli_export(spec: RunSpec) -> list[str]:
    client = mysql_cli()
    assert client is not None
    # --quick: row by row, as the server sends them (the default buffers the whole result).
    query = f"SELECT * FROM {spec.dataset.table}"
    return [client, "--quick", "--batch", *mysql_cli_args(spec.dataset.source), "-e", query]


# -- the cases -------------------------------------------------------------------------------------


def verify(output: Path, dataset: Dataset) -> Verification:
    return parquet_checksum(output, EVENTS_CANONICAL)


def _membound(prefix: str) -> tuple[Contestant, ...]:
    return (
        Contestant(
            "membound-cli",
            "**membound copy** (CLI)",
            role="membound",
            script=f"{prefix}_membound_cli.py",
        ),
        Contestant(
            "membound-api",
            "**membound.copy** (Python API)",
            role="membound",
            script=f"{prefix}_membound_api.py",
        ),
    )


def _peers(prefix: str) -> tuple[Contestant, ...]:
    return (
        Contestant(
            "connectorx-stream",
            "ConnectorX arrow_stream (10k) + ParquetWriter",
            script=f"{prefix}_connectorx_stream.py",
        ),
        Contestant(
            "pandas-chunked",
            "pandas read_sql(chunksize=10k, stream_results) + ParquetWriter",
            script=f"{prefix}_pandas_chunked.py",
        ),
        Contestant(
            "polars-uri",
            "polars read_database_uri + write_parquet",
            script=f"{prefix}_polars_uri.py",
        ),
    )


def _pg_contestants() -> tuple[Contestant, ...]:
    return (
        *_peers("pg"),
        Contestant(
            "adbc",
            "ADBC fetch_record_batch (16 MiB hint) + ParquetWriter",
            script="pg_adbc.py",
        ),
        *_membound("pg"),
        Contestant(
            "copy-binary",
            "limit: psycopg COPY (FORMAT binary) to /dev/null",
            role="limit",
            script="pg_copy_binary.py",
        ),
    )


def _mysql_contestants() -> tuple[Contestant, ...]:
    contestants = [*_peers("mysql"), *_membound("mysql")]
    client = mysql_cli()
    if client:
        contestants.append(
            Contestant(
                "mariadb-cli",
                "limit: mariadb CLI --quick, all rows as text to /dev/null",
                role="limit",
                command=_mariadb_cli_export,
                baseline_command=(client, *mysql_cli_args(), "-e", "SELECT 1"),
            )
        )
    return tuple(contestants)


DESCRIPTION = (
    "Export the whole `events` table (the protocol's shared dataset, built on the server by SQL "
    "as `events_<N>`) from {server} to one Parquet file. Row-counted peers fetch 10,000 rows at "
    "a time (ConnectorX's own default), each batch written as it comes; pandas reads through a "
    "SQLAlchemy connection with `stream_results=True` (a server-side cursor), without which it "
    "would hold the whole result. membound gets the budget shown and sizes its batches in "
    "bytes. Every output is read back by the harness and must match the protocol's row count and "
    "checksum."
)
PACKAGES = (
    "membound",
    "pyarrow",
    "pandas",
    "polars",
    "connectorx",
    "sqlalchemy",
    "numpy",
)

POSTGRES_EXPORT = Case(
    name="postgres-export",
    title="PostgreSQL → Parquet export (`events`)",
    description=DESCRIPTION.format(server="a local PostgreSQL"),
    contestants=_pg_contestants(),
    packages=(*PACKAGES, "psycopg", "adbc-driver-postgresql", "adbc-driver-manager"),
    prepare=pg_prepare,
    verify=verify,
)

MYSQL_EXPORT = Case(
    name="mysql-export",
    title="MariaDB → Parquet export (`events`)",
    description=DESCRIPTION.format(server="a local MariaDB"),
    contestants=_mysql_contestants(),
    packages=(*PACKAGES, "pymysql"),
    prepare=mysql_prepare,
    verify=verify,
)
