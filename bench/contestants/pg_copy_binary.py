"""The floor: ``COPY (SELECT ...) TO STDOUT (FORMAT binary)`` through psycopg, to /dev/null.

What the server and the wire cost with no decoding at all; writes no Parquet (a ``limit``).
"""

from __future__ import annotations

import os

import psycopg

from _common import ExportOptions, run_contestant


def export(options: ExportOptions) -> int:
    received = 0
    with (
        psycopg.connect(options.source) as connection,
        connection.cursor() as cursor,
        open(os.devnull, "wb") as sink,
        cursor.copy(f"COPY ({options.query}) TO STDOUT (FORMAT binary)") as copy,
    ):
        for data in copy:
            sink.write(data)
            received += len(data)
    return received


if __name__ == "__main__":
    run_contestant(export)
