"""SQLite -> Parquet export of the ``events`` table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cases.base import Case, Contestant, Dataset, RunSpec
from checksum import (
    CHECKSUM_SCHEME,
    EVENTS_CANONICAL,
    POLARS_VERSION,
    Verification,
    parquet_checksum,
    sqlite_checksum,
)
from data import DATASET_VERSION, build_sqlite

TABLE = "events"
# Reading the file once before the runs puts it in the page cache, so the first contestant of
# the first repeat does not pay for the disk alone.
WARM_UP_READ_BYTES = 16 * 1024 * 1024


def _reference(path: Path) -> Verification:
    """The source table's checksum, cached beside the database for this polars version."""
    cache = path.with_name(path.name + ".checksum.json")
    key = {"dataset": DATASET_VERSION, "scheme": CHECKSUM_SCHEME, "polars": POLARS_VERSION}
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return Verification(rows=cached["rows"], checksum=cached["checksum"])
    reference = sqlite_checksum(path, TABLE, EVENTS_CANONICAL)
    cache.write_text(
        json.dumps({"key": key, "rows": reference.rows, "checksum": reference.checksum})
    )
    return reference


def _warm_page_cache(path: Path) -> None:
    with open(path, "rb") as database:
        while database.read(WARM_UP_READ_BYTES):
            pass


def prepare(rows: int) -> Dataset:
    path = build_sqlite(rows)
    reference = _reference(path)
    if reference.rows != rows:
        raise SystemExit(f"{path} holds {reference.rows} rows, not {rows}; delete it to rebuild")
    _warm_page_cache(path)
    size_mb = path.stat().st_size / 1e6
    return Dataset(
        rows=rows,
        source=str(path),
        table=TABLE,
        reference=reference,
        facts={"SQLite file": f"{size_mb:,.0f} MB"},
    )


def verify(output: Path, dataset: Dataset) -> Verification:
    return parquet_checksum(output, EVENTS_CANONICAL)


def _sqlite_cli(spec: RunSpec) -> list[str]:
    return ["sqlite3", "-readonly", spec.dataset.source, f"SELECT * FROM {spec.dataset.table}"]


def _contestants() -> tuple[Contestant, ...]:
    contestants = [
        Contestant(
            "pandas-whole", "pandas read_sql (whole) + to_parquet", script="sqlite_pandas_whole.py"
        ),
        Contestant(
            "pandas-chunked",
            "pandas read_sql(chunksize=10k) + ParquetWriter",
            script="sqlite_pandas_chunked.py",
        ),
        Contestant(
            "polars-uri", "polars read_database_uri + write_parquet", script="sqlite_polars_uri.py"
        ),
        Contestant(
            "connectorx-arrow",
            "ConnectorX arrow + write_table",
            script="sqlite_connectorx_arrow.py",
        ),
        Contestant(
            "connectorx-stream",
            "ConnectorX arrow_stream (10k) + ParquetWriter",
            script="sqlite_connectorx_stream.py",
        ),
        Contestant(
            "adbc", "ADBC fetch_record_batch (10k) + ParquetWriter", script="sqlite_adbc.py"
        ),
        Contestant(
            "fetchmany",
            "sqlite3 fetchmany(10k) + pyarrow + ParquetWriter",
            script="sqlite_fetchmany.py",
        ),
        Contestant(
            "membound-cli",
            "**membound copy** (CLI)",
            role="membound",
            script="sqlite_membound_cli.py",
        ),
        Contestant(
            "membound-api",
            "**membound.copy** (Python API)",
            role="membound",
            script="sqlite_membound_api.py",
        ),
    ]
    if shutil.which("sqlite3"):
        contestants.append(
            Contestant(
                "sqlite3-cli",
                "limit: sqlite3 CLI, all rows as text to /dev/null",
                role="limit",
                command=_sqlite_cli,
                baseline_command=("sqlite3", ":memory:", "SELECT 1"),
            )
        )
    return tuple(contestants)


SQLITE_EXPORT = Case(
    name="sqlite-export",
    title="SQLite → Parquet export (`events`)",
    description=(
        "Export the whole `events` table (the protocol's shared dataset, built by `bench/data.py`) "
        "from a SQLite file to one Parquet file. "
        "Row-counted peers fetch 10,000 rows at a time (ConnectorX's own default), each batch "
        "written as it comes. membound gets the budget shown and sizes its batches in bytes. "
        "Every output is read back by the harness and must match the source's row count and "
        "checksum."
    ),
    contestants=_contestants(),
    packages=(
        "membound",
        "pyarrow",
        "pandas",
        "polars",
        "connectorx",
        "adbc-driver-sqlite",
        "adbc-driver-manager",
        "numpy",
    ),
    prepare=prepare,
    verify=verify,
)
