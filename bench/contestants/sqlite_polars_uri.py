"""polars ``read_database_uri`` (ConnectorX underneath), then ``write_parquet``.

polars' fastest path; ``read_database_uri`` has no batched mode, so it holds the whole result.
"""

from __future__ import annotations

import os

import polars as pl

from _common import ExportOptions, run_contestant


def export(options: ExportOptions) -> None:
    uri = "sqlite://" + os.path.abspath(options.source)
    frame = pl.read_database_uri(options.query, uri)
    frame.write_parquet(options.output)


if __name__ == "__main__":
    run_contestant(export)
