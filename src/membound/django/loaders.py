"""Load PostgreSQL ``timestamptz`` values in C, to the very values Django's own loader gives.

On PostgreSQL with psycopg 3, Django registers its own ``timestamptz`` loader: a Python subclass
of psycopg's pure-Python loader that parses each value with a regular expression and then sets
the connection's ``tzinfo``. That is about 4 µs a value, a third of the time it takes to build
an ``events`` instance. When psycopg's C implementation is installed (``psycopg[binary]`` or
``psycopg[c]``), its loader parses the same text to the same instant in C. :class:`FastTimestamps`
registers that loader on the cursor of one query (nothing else sees it) and :meth:`fix` then sets
the ``tzinfo`` Django's loader would have set, column by column: the values are equal and carry
the same ``tzinfo`` object as Django's. Without the C implementation nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

__all__ = ["FastTimestamps"]

# PostgreSQL's type OID of timestamp with time zone (pg_type.oid, fixed since PostgreSQL 7).
TIMESTAMPTZ_OID = 1184


@cache
def _c_loader() -> type | None:
    """psycopg's C ``timestamptz`` text loader, or None (pure-Python psycopg, or psycopg2).

    Looked up on the first PostgreSQL connection, not at import: importing psycopg costs about
    10 MB of RSS, which a SQLite or MariaDB process must not pay.
    """
    try:
        import psycopg
        from psycopg.pq import Format
        from psycopg.types.datetime import TimestamptzLoader
    except ImportError:
        return None
    loader = psycopg.adapters.get_loader(TIMESTAMPTZ_OID, Format.TEXT)
    if loader is None or loader is TimestamptzLoader:
        return None  # the Python loader Django's subclasses: no gain
    return loader


class FastTimestamps:
    """An execute wrapper for one query on a PostgreSQL connection; see the module docstring.

    Use as ``with connection.execute_wrapper(fast): ...``, then :meth:`fix` the columns of the
    rows read. :meth:`for_connection` gives None where it does not apply.
    """

    def __init__(self, connection: Any, loader: type) -> None:
        self.loader = loader
        self.timezone = connection.timezone
        # Positions of the timestamptz columns of the last query run, from its description.
        self.positions: list[int] = []

    @classmethod
    def for_connection(cls, connection: Any) -> FastTimestamps | None:
        if connection.vendor != "postgresql":
            return None
        try:
            from django.db.backends.postgresql.psycopg_any import is_psycopg3
        except ImportError:  # pragma: no cover
            return None
        loader = _c_loader() if is_psycopg3 else None
        return None if loader is None else cls(connection, loader)

    def __call__(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict
    ) -> Any:
        self.positions = []
        cursor = getattr(context["cursor"], "cursor", None)
        adapters = getattr(cursor, "adapters", None)
        if adapters is None:
            # Not psycopg's own cursor (a wrapper from another package): leave it to Django.
            return execute(sql, params, many, context)
        # Registered on this cursor only, before it loads any row: its transformer picks the
        # loader when the result arrives.
        adapters.register_loader(TIMESTAMPTZ_OID, self.loader)
        result = execute(sql, params, many, context)
        self.positions = [
            position
            for position, column in enumerate(cursor.description or ())
            if column.type_code == TIMESTAMPTZ_OID
        ]
        return result

    def fix(self, columns: list[Any], width: int) -> None:
        """Give the timestamptz values of ``columns`` (one list per column, in the query's
        order) the ``tzinfo`` Django's loader sets: the connection's, or none for naive."""
        timezone = self.timezone
        for position in self.positions:
            if position >= width:
                continue
            values = columns[position]
            columns[position] = [
                value
                if value is None or value.tzinfo is timezone
                else value.replace(tzinfo=timezone)
                for value in values
            ]
