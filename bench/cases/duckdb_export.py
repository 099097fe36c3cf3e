"""DuckDB -> Parquet export of the ``events`` table."""

from __future__ import annotations

from pathlib import Path

from cases.base import Case, Contestant, Dataset
from cases.sqlite_export import TABLE, _reference
from checksum import EVENTS_CANONICAL, Verification, parquet_checksum
from data import build_sqlite


def _duckdb_path(rows: int) -> Path:
    return build_sqlite(rows).with_suffix(".duckdb")


def prepare(rows: int) -> Dataset:
    """The SQLite events file copied once into DuckDB (by membound: the copy is checked by
    the same checksum every output is checked against)."""
    import membound

    sqlite_path = build_sqlite(rows)
    path = _duckdb_path(rows)
    if not path.exists():
        partial = path.with_suffix(".partial.duckdb")
        partial.unlink(missing_ok=True)
        membound.copy(f"sqlite:///{sqlite_path}?table={TABLE}", f"duckdb:///{partial}",
                      max_memory="256MB")
        partial.rename(path)
    reference = _reference(sqlite_path)
    return Dataset(
        rows=rows,
        source=str(path),
        table=TABLE,
        reference=reference,
        facts={"DuckDB file": f"{path.stat().st_size / 1e6:,.0f} MB"},
    )


def verify(output: Path, dataset: Dataset) -> Verification:
    return parquet_checksum(output, EVENTS_CANONICAL)


DUCKDB_EXPORT = Case(
    name="duckdb-export",
    title="DuckDB → Parquet export (`events`)",
    description=(
        "Export the whole `events` table from a DuckDB file to one Parquet file. DuckDB's own "
        "`COPY ... TO` is the native path (its default memory limit, 80% of RAM); `.arrow()` "
        "fetches the whole result as one Arrow table. membound streams byte-sized batches and "
        "sets DuckDB's memory_limit from the budget shown. Every output is read back and must "
        "match the source's row count and checksum."
    ),
    contestants=(
        Contestant("duckdb-copy", "DuckDB COPY ... TO 'x.parquet'", script="duckdb_copy.py"),
        Contestant("duckdb-arrow", "DuckDB .arrow() (whole) + write_table",
                   script="duckdb_arrow.py"),
        Contestant("membound-api", "**membound.copy** (Python API)", role="membound",
                   script="duckdb_membound_api.py"),
    ),
    packages=("membound", "duckdb", "pyarrow", "polars"),
    prepare=prepare,
    verify=verify,
    default_rows=(2_000_000,),
)
