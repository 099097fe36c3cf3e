"""Parquet -> PostgreSQL and Parquet -> MariaDB load of the ``events`` table.

The source is one Parquet file of the protocol's rows (``ts`` as ``timestamp[us, UTC]``), made
once from the SQLite case's file and cached beside it. Each contestant creates and fills a table
of its own, named after its run's scratch directory (``bench_load_<hash>``); the harness then
reads that table back (ConnectorX ``arrow_stream``), checks its row count and checksum, and drops
it (on PostgreSQL, then checkpoints, so the next contestant starts on a settled server). The
MariaDB CLI's ``LOAD DATA LOCAL INFILE`` reads a tab-separated file written beforehand from the
same rows, so only the load is timed.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cases.base import CONTESTANTS_DIR, Case, Contestant, Dataset, RunSpec
from cases.server_export import (
    MYSQL_URL,
    POSTGRES_URL,
    log,
    mysql_cli,
    mysql_cli_args,
    mysql_connect,
    pg_connect,
    reference,
)
from checksum import EVENTS_CANONICAL, Verification, checksum_frames
from data import DATA_DIR, DATASET_VERSION, build_sqlite

# Batches the Parquet file is written in (and so its row groups): the peers' row count.
PARQUET_ROWS_PER_GROUP = 10_000
# Rows verified at a time when reading a loaded table back.
VERIFY_ROWS_PER_BATCH = 100_000
LOAD_TABLE_PREFIX = "bench_load_"
COLUMNS = ("id", "user_id", "ts", "kind", "amount", "payload", "flag")
EVENTS_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("user_id", pa.int32()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("kind", pa.string()),
        ("amount", pa.float64()),
        ("payload", pa.string()),
        ("flag", pa.bool_()),
    ]
)
MYSQL_LOAD_DDL = (
    "CREATE TABLE {table} (id BIGINT NOT NULL, user_id INT NOT NULL, ts DATETIME(6) NOT NULL, "
    "kind VARCHAR(16) NOT NULL, amount DOUBLE, payload TEXT, flag BOOLEAN) DEFAULT CHARSET=utf8mb4"
)


def load_table(output: Path) -> str:
    """The table a run loads into: unique per run (its scratch directory), stable for verify."""
    return LOAD_TABLE_PREFIX + hashlib.sha1(str(output).encode()).hexdigest()[:12]


def parquet_path(rows: int) -> Path:
    return DATA_DIR / f"events-v{DATASET_VERSION}-{rows}.parquet"


def tsv_path(rows: int) -> Path:
    return DATA_DIR / f"events-v{DATASET_VERSION}-{rows}.tsv"


def build_parquet(rows: int) -> Path:
    """The events rows as one Parquet file, streamed from the cached SQLite file."""
    import sqlite3

    path = parquet_path(rows)
    if path.exists():
        return path
    source = build_sqlite(rows)
    log(f"  writing {path.name} ...")
    partial = path.with_name(path.name + ".partial")
    with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as connection:
        cursor = connection.execute(f"SELECT {', '.join(COLUMNS)} FROM events ORDER BY id")
        with pq.ParquetWriter(partial, EVENTS_SCHEMA) as writer:
            while chunk := cursor.fetchmany(PARQUET_ROWS_PER_GROUP):
                columns = list(zip(*chunk, strict=True))
                ts = pa.array(columns[2], pa.string()).cast(pa.timestamp("us", tz="UTC"))
                arrays = [
                    pa.array(columns[0], pa.int64()),
                    pa.array(columns[1], pa.int32()),
                    ts,
                    pa.array(columns[3], pa.string()),
                    pa.array(columns[4], pa.float64()),
                    pa.array(columns[5], pa.string()),
                    pa.array([bool(flag) for flag in columns[6]], pa.bool_()),
                ]
                writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=EVENTS_SCHEMA))
    partial.rename(path)
    return path


def build_tsv(rows: int) -> Path:
    """The rows as LOAD DATA's default format: tab-separated, ``\\N`` for NULL, ts in UTC."""
    import polars as pl

    path = tsv_path(rows)
    if path.exists():
        return path
    log(f"  writing {path.name} ...")
    partial = path.with_name(path.name + ".partial")
    parquet = pq.ParquetFile(build_parquet(rows))
    with open(partial, "wb") as out:
        for batch in parquet.iter_batches(batch_size=VERIFY_ROWS_PER_BATCH):
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            frame = frame.with_columns(
                pl.col("ts").dt.convert_time_zone("UTC").dt.replace_time_zone(None),
                pl.col("flag").cast(pl.Int8),
            )
            frame.write_csv(
                out,
                separator="\t",
                include_header=False,
                null_value="\\N",
                quote_style="never",
                datetime_format="%Y-%m-%d %H:%M:%S%.6f",
            )
    partial.rename(path)
    return path


def _prepare(rows: int, drop_leftovers) -> Dataset:
    path = build_parquet(rows)
    ref = reference(rows)
    check = pq.ParquetFile(path).metadata.num_rows
    if check != rows:
        raise SystemExit(f"{path} holds {check} rows, not {rows}; delete it to rebuild")
    drop_leftovers()
    return Dataset(
        rows=rows,
        source=str(path),
        table="events",
        reference=ref,
        facts={"Parquet file": f"{path.stat().st_size / 1e6:,.0f} MB"},
    )


def _read_back(uri: str, table: str) -> Verification:
    import connectorx as cx
    import polars as pl

    columns = ", ".join(COLUMNS)
    try:
        reader = cx.read_sql(
            uri,
            f"SELECT {columns} FROM {table}",
            return_type="arrow_stream",
            batch_size=VERIFY_ROWS_PER_BATCH,
        )
    except Exception as error:  # noqa: BLE001 (whatever it is, the run wrote no usable table)
        return Verification(problems=[f"cannot read {table} back: {error}"])

    def frames():
        for batch in reader:
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            yield frame

    return checksum_frames(frames(), EVENTS_CANONICAL)


# -- PostgreSQL ------------------------------------------------------------------------------------


def pg_drop(table: str) -> None:
    with pg_connect() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")


def pg_drop_leftovers() -> None:
    with pg_connect() as conn:
        for (name,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE %s",
            [LOAD_TABLE_PREFIX.replace("_", "\\_") + "%"],
        ).fetchall():
            conn.execute(f"DROP TABLE IF EXISTS {name}")


def pg_settle() -> None:
    """Write the dirty buffers and WAL of the load just verified (``CHECKPOINT``, untimed).

    A 10M-row load writes about 1.5 GB of WAL, past ``max_wal_size``: without this, the server's
    own checkpoint lands in whichever contestant runs next (seen: adbc_ingest 7.4-10.2 s and
    membound 7.3-9.3 s across three runs of one 10M case)."""
    with pg_connect() as conn:
        conn.execute("CHECKPOINT")


def pg_verify(output: Path, dataset: Dataset) -> Verification:
    table = load_table(output)
    try:
        return _read_back(POSTGRES_URL, table)
    finally:
        pg_drop(table)
        pg_settle()


# -- MariaDB ---------------------------------------------------------------------------------------


def mysql_drop(table: str) -> None:
    conn = mysql_connect()
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
    finally:
        conn.close()


def mysql_drop_leftovers() -> None:
    conn = mysql_connect()
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                "AND TABLE_NAME LIKE %s",
                [LOAD_TABLE_PREFIX.replace("_", "\\_") + "%"],
            )
            for (name,) in cursor.fetchall():
                cursor.execute(f"DROP TABLE IF EXISTS {name}")
    finally:
        conn.close()


def mysql_verify(output: Path, dataset: Dataset) -> Verification:
    table = load_table(output)
    try:
        return _read_back(MYSQL_URL, table)
    finally:
        mysql_drop(table)


def mysql_prepare(rows: int) -> Dataset:
    dataset = _prepare(rows, mysql_drop_leftovers)
    if mysql_cli():
        build_tsv(rows)
    return dataset


def _mariadb_load_data(spec: RunSpec) -> list[str]:
    client = mysql_cli()
    assert client is not None
    table = load_table(spec.output)
    tsv = tsv_path(spec.dataset.rows)
    sql = (
        MYSQL_LOAD_DDL.format(table=table) + "; "
        f"LOAD DATA LOCAL INFILE '{tsv}' INTO TABLE {table} ({', '.join(COLUMNS)})"
    )
    return [client, "--local-infile=1", *mysql_cli_args(), "-e", sql]


# -- the cases -------------------------------------------------------------------------------------


def _script(name: str, url: str):
    """A Python contestant that loads SOURCE (Parquet) into its own table at ``url``."""

    def argv(spec: RunSpec) -> list[str]:
        return [
            sys.executable,
            str(CONTESTANTS_DIR / name),
            spec.dataset.source,
            url,
            "--table",
            load_table(spec.output),
            "--budget",
            spec.budget,
            "--timing",
            str(spec.timing_path),
        ]

    return argv


def _baseline(name: str) -> tuple[str, ...]:
    return (sys.executable, str(CONTESTANTS_DIR / name), "-", "-", "--imports-only")


def _contestant(name: str, label: str, script: str, url: str, role="peer") -> Contestant:
    return Contestant(
        name, label, role=role, command=_script(script, url), baseline_command=_baseline(script)
    )


def _membound(prefix: str, url: str) -> tuple[Contestant, ...]:
    return (
        _contestant(
            "membound-cli",
            "**membound copy** (CLI)",
            f"{prefix}_load_membound_cli.py",
            url,
            role="membound",
        ),
        _contestant(
            "membound-api",
            "**membound.copy** (Python API)",
            f"{prefix}_load_membound_api.py",
            url,
            role="membound",
        ),
    )


def _mysql_contestants() -> tuple[Contestant, ...]:
    contestants = list(_membound("mysql", MYSQL_URL))
    client = mysql_cli()
    if client:
        contestants.append(
            Contestant(
                "load-data",
                "mariadb CLI LOAD DATA LOCAL INFILE (TSV written beforehand)",
                command=_mariadb_load_data,
                baseline_command=(client, *mysql_cli_args(), "-e", "SELECT 1"),
            )
        )
    return tuple(contestants)


DESCRIPTION = (
    "Load the `events` rows from one Parquet file (row groups of 10,000 rows, `ts` as "
    "`timestamp[us, UTC]`) into a new table of {server}; each contestant creates its own table "
    "(no primary key), which the harness reads back, checks against the protocol's row count "
    "and checksum, and drops. membound gets the budget shown. {peers}"
)

POSTGRES_LOAD = Case(
    name="postgres-load",
    title="Parquet → PostgreSQL load (`events`)",
    description=DESCRIPTION.format(
        server="a local PostgreSQL",
        peers="ADBC's `adbc_ingest` takes the file's batches as a stream "
        "(`pyarrow.RecordBatchReader`), one binary COPY for all of them, one commit at the end.",
    ),
    contestants=(
        _contestant(
            "adbc-ingest",
            "ADBC adbc_ingest(RecordBatchReader) (binary COPY)",
            "pg_load_adbc_ingest.py",
            POSTGRES_URL,
        ),
        *_membound("pg", POSTGRES_URL),
    ),
    packages=("membound", "pyarrow", "adbc-driver-postgresql", "adbc-driver-manager", "psycopg"),
    prepare=lambda rows: _prepare(rows, pg_drop_leftovers),
    verify=pg_verify,
    output_suffix=".table",
)

MYSQL_LOAD = Case(
    name="mysql-load",
    title="Parquet → MariaDB load (`events`)",
    description=DESCRIPTION.format(
        server="a local MariaDB",
        peers="The MariaDB CLI's `LOAD DATA LOCAL INFILE` reads a tab-separated file written "
        "from the same rows before the run (not timed): the server's own bulk path, and the "
        "floor for a client-side load.",
    ),
    contestants=_mysql_contestants(),
    packages=("membound", "pyarrow", "pymysql"),
    prepare=mysql_prepare,
    verify=mysql_verify,
    output_suffix=".table",
)
