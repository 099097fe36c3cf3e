"""membound: database work that stays inside a memory budget.

State a budget in bytes (``max_memory="64MB"``); reading, writing and copying move data in
batches sized in bytes from it, and a :class:`RunReport` says where the memory went.
"""

from __future__ import annotations

from membound.backends.base import Backend, WriteResult, open_backend
from membound.budget import BatchSizer, Budget, format_size, parse_size
from membound.cache import Cache
from membound.copy import copy
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
    SchemaError,
    SourceError,
    TargetError,
    TargetExistsError,
    URLError,
)
from membound.memory import Measurement, gc_paused, measure, peak_rss_bytes, rss_bytes, trim
from membound.report import RunReport

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BatchSizer",
    "Budget",
    "Cache",
    "CodecError",
    "ConfigurationError",
    "CorruptFileError",
    "Measurement",
    "MemboundError",
    "MemoryBudgetExceeded",
    "MissingDriverError",
    "NotFoundError",
    "PartialWriteError",
    "QueryError",
    "RunReport",
    "SchemaError",
    "SourceError",
    "TargetError",
    "TargetExistsError",
    "URLError",
    "WriteResult",
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
