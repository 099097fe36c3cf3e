"""The contract every backend implements.

A backend is opened from a URL, is a context manager, and offers what its store can do:

- ``batches(query_or_table, params=None, *, budget=None) -> Iterator[pyarrow.RecordBatch]``,
  byte-sized batches, never the whole result;
- ``rows(query_or_table, params=None, *, budget=None) -> Iterator[tuple]``, the same stream as
  Python tuples (by default built from ``batches``);
- ``write(table, batches, *, mode="fail", key=None, budget=None) -> WriteResult``;
- ``schema(table) -> pyarrow.Schema``, ``close()``.

Key-value stores expose their data as a table of ``(key, value)`` so ``copy`` works between any
two backends. A backend imports its driver lazily and raises
:class:`~membound.errors.MissingDriverError` naming the pip extra when it is missing.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import pyarrow as pa

from membound.budget import Budget
from membound.errors import ConfigurationError
from membound.urls import ParsedURL, parse_url

__all__ = ["SQL", "Backend", "WriteMode", "WriteResult", "check_mode", "is_query", "open_backend"]

WriteMode = Literal["fail", "append", "replace", "upsert"]
WRITE_MODES: tuple[str, ...] = ("fail", "append", "replace", "upsert")

_QUERY_START = re.compile(
    r"^\s*(\(|select\b|with\b|values\b|table\b|pragma\b|explain\b|show\b|describe\b)",
    re.IGNORECASE,
)


class SQL(str):
    """A string that is a query, whatever it starts with (``copy(query=...)`` passes these)."""

    __slots__ = ()


def is_query(text: str) -> bool:
    """True when ``text`` is a query rather than a table name."""
    return isinstance(text, SQL) or bool(_QUERY_START.match(text))


def check_mode(mode: str, key: Sequence[str] | str | None = None) -> tuple[str, ...] | None:
    """Validate a write mode (and its key); returns the key as a tuple of column names."""
    if mode not in WRITE_MODES:
        raise ConfigurationError(
            f"mode must be one of {', '.join(WRITE_MODES)}; got {mode!r}"
        )
    keys = (key,) if isinstance(key, str) else tuple(key) if key else None
    if mode == "upsert" and not keys:
        raise ConfigurationError("mode='upsert' needs key=, the column(s) that identify a row")
    return keys


@dataclass
class WriteResult:
    """What a write did: where, how many rows and batches, and how many bytes of Arrow data."""

    table: str
    mode: str
    rows: int = 0
    batches: int = 0
    bytes: int = 0
    created: bool = False

    def add(self, batch: pa.RecordBatch) -> None:
        """Count a batch as written."""
        self.rows += batch.num_rows
        self.batches += 1
        self.bytes += batch.nbytes


class Backend(ABC):
    """Base class of all backends. Subclasses set ``extra`` and implement the abstract methods."""

    #: The pip extra that installs this backend's driver.
    extra: ClassVar[str] = ""
    #: Whether the store keeps its own on-disk/server state a failed write must not disturb.
    name: ClassVar[str] = "backend"
    #: True when the backend builds Arrow arrays from Python values (pyarrow then imports pandas,
    #: ~50 MB, on first use): ``copy()`` pays that before it starts measuring.
    converts_python_values: ClassVar[bool] = False

    @classmethod
    def converts_python_values_for(cls, url: ParsedURL, *, reading: bool) -> bool:
        """:attr:`converts_python_values` for reading (or writing) this very URL."""
        return cls.converts_python_values

    def __init__(self, url: ParsedURL, *, budget: Budget | None = None) -> None:
        self.url = url
        self.budget = Budget.coerce(budget)
        self.closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url.display!r})"

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def default_table(self) -> str | None:
        """The table named in the URL (``?table=``), if any."""
        return self.url.table

    def _budget(self, budget: Budget | int | str | None) -> Budget:
        return self.budget if budget is None else Budget.coerce(budget)

    @abstractmethod
    def batches(
        self,
        query_or_table: str | None = None,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        budget: Budget | int | str | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Stream a table or the result of a query as byte-sized Arrow record batches."""

    def rows(
        self,
        query_or_table: str | None = None,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        budget: Budget | int | str | None = None,
    ) -> Iterator[tuple]:
        """Stream a table or a query's result as tuples, fetched in byte-sized batches."""
        from membound.batching import batch_to_rows

        for batch in self.batches(query_or_table, params, budget=budget):
            yield from batch_to_rows(batch)

    @abstractmethod
    def write(
        self,
        table: str | None,
        batches: Iterable[pa.RecordBatch],
        *,
        mode: WriteMode = "fail",
        key: Sequence[str] | str | None = None,
        budget: Budget | int | str | None = None,
    ) -> WriteResult:
        """Write a stream of batches to ``table``, one short transaction per batch.

        ``mode``: ``"fail"`` (default) refuses an existing target; ``"append"`` adds to it;
        ``"replace"`` builds the new target aside and swaps it in, so a failure leaves the old
        one; ``"upsert"`` inserts or updates on ``key``.
        """

    @abstractmethod
    def schema(self, query_or_table: str | None = None) -> pa.Schema:
        """The Arrow schema of a table or query result."""

    def estimate_rows(self, query_or_table: str | None = None) -> int | None:
        """A cheap row-count estimate for progress display, or None when there is none."""
        return None

    def close(self) -> None:
        """Release every connection, cursor and file handle. Safe to call twice."""
        self.closed = True


def open_backend(
    target: str | ParsedURL, *, budget: Budget | int | str | None = None
) -> Backend:
    """Open the backend serving ``target`` (a URL or a file path)."""
    from membound.urls import backend_class

    url = target if isinstance(target, ParsedURL) else parse_url(target)
    cls = backend_class(url)
    return cls(url, budget=Budget.coerce(budget))
