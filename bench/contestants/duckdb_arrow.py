"""DuckDB's whole-result Arrow fetch, then ``pyarrow.parquet.write_table``.

Holds the whole result as an Arrow table (``to_arrow_table`` on DuckDB >= 1.5, ``.arrow()``
before: from 1.4 on ``.arrow()`` returns a reader, which is read whole here).
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from _common import ExportOptions, run_contestant


def export(options: ExportOptions) -> None:
    with duckdb.connect(options.source, read_only=True) as connection:
        relation = connection.sql(options.query)
        if hasattr(relation, "to_arrow_table"):
            table = relation.to_arrow_table()
        else:
            table = relation.arrow()
            if isinstance(table, pa.RecordBatchReader):
                table = table.read_all()
    pq.write_table(table, options.output)


if __name__ == "__main__":
    run_contestant(export)
