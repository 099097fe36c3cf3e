"""ConnectorX ``read_sql(return_type="arrow")``, then ``pyarrow.parquet.write_table``.

Holds the whole result as an Arrow table.
"""

from __future__ import annotations

import os

import connectorx as cx
import pyarrow.parquet as pq

from _common import ExportOptions, run_contestant


def export(options: ExportOptions) -> None:
    uri = "sqlite://" + os.path.abspath(options.source)
    table = cx.read_sql(uri, options.query, return_type="arrow")
    pq.write_table(table, options.output)


if __name__ == "__main__":
    run_contestant(export)
