"""DuckDB's native export: ``COPY (SELECT * FROM events) TO 'out.parquet' (FORMAT parquet)``."""

from __future__ import annotations

import duckdb

from _common import ExportOptions, run_contestant


def export(options: ExportOptions) -> None:
    with duckdb.connect(options.source, read_only=True) as connection:
        target = options.output.replace("'", "''")
        connection.execute(f"COPY ({options.query}) TO '{target}' (FORMAT parquet)")


if __name__ == "__main__":
    run_contestant(export)
