"""membound: database work that stays inside a memory budget.

State a budget in bytes (``max_memory="64MB"``); reading, writing and copying move data in
batches sized in bytes from it, and a :class:`RunReport` says where the memory went.
"""

from __future__ import annotations

import os as _os

# pyarrow's default allocator, mimalloc, keeps freed pages committed for reuse, and libparquet
# allocates from it whatever pool Python code chooses: a budgeted SQLite -> Parquet copy peaked
# 36 MB above its start with mimalloc's defaults and 22 MB with these two settings, which make
# it return freed memory at once. mimalloc reads them when pyarrow loads, so they only apply
# when membound is imported first; a value already in the environment wins.
import sys as _sys

#: True when pyarrow was loaded before membound without these settings: the copy report says so.
ALLOCATOR_UNTUNED = "pyarrow" in _sys.modules and "MIMALLOC_PURGE_DELAY" not in _os.environ
_os.environ.setdefault("MIMALLOC_ARENA_EAGER_COMMIT", "0")
_os.environ.setdefault("MIMALLOC_PURGE_DELAY", "0")

from typing import TYPE_CHECKING as _TYPE_CHECKING

# The errors and the budget are plain Python and load now. Everything else loads on first use
# (PEP 562), so `import membound` (or `import membound.django`) does not pull in pyarrow, which
# adds about 40 MB to a process that only iterates rows.
from membound.budget import BatchSizer, Budget, format_size, parse_size
from membound.errors import (
    CodecError,
    ConfigurationError,
    CorruptFileError,
    MemboundError,
    MemoryBudgetExceeded,
    MissingDriverError,
    NotFoundError,
    PartialWriteError,
    QueryError,
    ResultTooLarge,
    SchemaError,
    SourceError,
    TargetError,
    TargetExistsError,
    TokenError,
    URLError,
)

_LAZY = {
    "Backend": "membound.backends.base",
    "WriteResult": "membound.backends.base",
    "open_backend": "membound.backends.base",
    "Cache": "membound.cache",
    "Connection": "membound.handle",
    "OffsetPagingWarning": "membound.handle",
    "ResultSizeWarning": "membound.handle",
    "connect": "membound.handle",
    "copy": "membound.copy",
    "Page": "membound.keyset",
    "Measurement": "membound.memory",
    "gc_paused": "membound.memory",
    "measure": "membound.memory",
    "peak_rss_bytes": "membound.memory",
    "rss_bytes": "membound.memory",
    "trim": "membound.memory",
    "RunReport": "membound.report",
}

if _TYPE_CHECKING:
    from membound.backends.base import Backend, WriteResult, open_backend
    from membound.cache import Cache
    from membound.copy import copy
    from membound.handle import Connection, OffsetPagingWarning, ResultSizeWarning, connect
    from membound.keyset import Page
    from membound.memory import Measurement, gc_paused, measure, peak_rss_bytes, rss_bytes, trim
    from membound.report import RunReport


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'membound' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BatchSizer",
    "Budget",
    "Cache",
    "CodecError",
    "ConfigurationError",
    "Connection",
    "CorruptFileError",
    "Measurement",
    "MemboundError",
    "MemoryBudgetExceeded",
    "MissingDriverError",
    "NotFoundError",
    "OffsetPagingWarning",
    "Page",
    "PartialWriteError",
    "QueryError",
    "ResultSizeWarning",
    "ResultTooLarge",
    "RunReport",
    "SchemaError",
    "SourceError",
    "TargetError",
    "TargetExistsError",
    "TokenError",
    "URLError",
    "WriteResult",
    "connect",
    "copy",
    "format_size",
    "gc_paused",
    "measure",
    "open_backend",
    "parse_size",
    "peak_rss_bytes",
    "rss_bytes",
    "trim",
]
