"""The exception tree of membound.

Every error membound raises on purpose derives from :class:`MemboundError`, and its message is a
sentence that says what went wrong and what to do about it::

    MemboundError
     ├── ConfigurationError          a bad option value (also a ValueError)
     │    └── URLError               a URL that names no backend or cannot be parsed
     ├── MissingDriverError          a driver is missing (also an ImportError); names the extra
     ├── SourceError                 reading failed
     │    ├── NotFoundError          a missing file, table or database
     │    ├── QueryError             the database rejected the query
 │    ├── ResultTooLarge         a result has more rows than max_rows allows
     │    └── CorruptFileError       a file that cannot be decoded (truncated, wrong format)
     ├── TargetError                 writing failed; the target is left as it was
     │    ├── TargetExistsError      the target exists and the mode is "fail"
     │    └── PartialWriteError      an "append" failed after some batches were committed
     ├── SchemaError                 a value or column that does not fit (also a TypeError)
     ├── MemoryBudgetExceeded        the process went over its budget under policy="raise"
     └── CodecError                  a payload that cannot be encoded or decoded (also a ValueError)
"""

from __future__ import annotations

__all__ = [
    "CodecError",
    "ConfigurationError",
    "CorruptFileError",
    "MemboundError",
    "MemoryBudgetExceeded",
    "MissingDriverError",
    "NotFoundError",
    "PartialWriteError",
    "QueryError",
    "ResultTooLarge",
    "SchemaError",
    "SourceError",
    "TargetError",
    "TargetExistsError",
    "TokenError",
    "URLError",
]


class MemboundError(Exception):
    """Base class of every error membound raises on purpose."""


class ConfigurationError(MemboundError, ValueError):
    """An option has a value membound cannot use (a budget of "lots", an unknown mode...)."""


class URLError(ConfigurationError):
    """A URL names no known backend, or cannot be parsed."""


class TokenError(ConfigurationError):
    """A page token was altered, truncated, signed with another secret, or made for another
    table, query, key or order. Start again from the first page."""


class MissingDriverError(MemboundError, ImportError):
    """The driver a backend needs is not installed.

    The message names the pip extra that installs it, e.g. ``pip install 'membound[postgres]'``.
    """

    def __init__(self, driver: str, extra: str) -> None:
        self.driver = driver
        self.extra = extra
        super().__init__(
            f"The {driver!r} package is needed for this backend but is not installed; "
            f"install it with: pip install 'membound[{extra}]'"
        )


class SourceError(MemboundError):
    """Reading from a source failed."""


class NotFoundError(SourceError, LookupError):
    """A file, table or database that was named does not exist."""


class QueryError(SourceError):
    """The database rejected a query (a syntax error, an unknown column...)."""


class ResultTooLarge(QueryError):
    """A result has more rows than the ``max_rows=`` bound the caller set."""

    def __init__(self, message: str, *, max_rows: int) -> None:
        self.max_rows = max_rows
        super().__init__(message)


class CorruptFileError(SourceError):
    """A file exists but cannot be decoded: truncated, or not in the format its name says."""


class TargetError(MemboundError):
    """Writing to a target failed. Unless a subclass says otherwise, the target is unchanged."""


class TargetExistsError(TargetError):
    """The target exists and the write mode is "fail"."""


class PartialWriteError(TargetError):
    """An ``append`` failed after some batches had been committed.

    Nothing is lost silently: ``rows_committed`` says how many rows are in the target from this
    run, and ``resume_after`` holds the last committed row's key values (when a key was given),
    so the caller can go on from there.
    """

    def __init__(
        self,
        message: str,
        *,
        rows_committed: int,
        resume_after: tuple[object, ...] | None = None,
    ) -> None:
        self.rows_committed = rows_committed
        self.resume_after = resume_after
        super().__init__(message)


class SchemaError(MemboundError, TypeError):
    """A column or value does not fit the schema it must go into. The message names the column."""


class MemoryBudgetExceeded(MemboundError, MemoryError):
    """The process used more memory than its budget allows, under ``policy="raise"``."""

    def __init__(self, used: int, budget: int, where: str = "") -> None:
        from membound.budget import format_size

        self.used = used
        self.budget = budget
        at = f" while {where}" if where else ""
        super().__init__(
            f"Memory above the starting point reached {format_size(used)}{at}, over the budget "
            f"of {format_size(budget)}; raise max_memory or use policy='adapt'"
        )


class CodecError(MemboundError, ValueError):
    """A payload cannot be encoded or decoded: unknown codec, corrupt or foreign data."""
