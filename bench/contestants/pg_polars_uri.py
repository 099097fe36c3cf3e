"""polars ``read_database_uri`` (ConnectorX underneath), then ``write_parquet``.

polars' fastest path; ``read_database_uri`` has no batched mode, so it holds the whole result.
"""

from __future__ import annotations

import polars as pl

from _common import ExportOptions, run_contestant


def export(options: ExportOptions) -> None:
    frame = pl.read_database_uri(options.query, options.source)
    frame.write_parquet(options.output)


if __name__ == "__main__":
    run_contestant(export)
