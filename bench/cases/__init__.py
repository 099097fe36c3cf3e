"""The benchmark cases. Each case is one job (e.g. SQLite -> Parquet export) run by a set of
contestants on the same data; adding a case means one module here and one line in ``CASES``.
"""

from __future__ import annotations

from cases.base import Case, Contestant, Dataset, RunSpec
from cases.cache import CACHE
from cases.codecs import CODECS
from cases.sqlite_export import SQLITE_EXPORT

CASES: dict[str, Case] = {case.name: case for case in (SQLITE_EXPORT, CODECS, CACHE)}

__all__ = ["CASES", "Case", "Contestant", "Dataset", "RunSpec"]
