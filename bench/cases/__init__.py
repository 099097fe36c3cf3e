"""The benchmark cases. Each case is one job (e.g. SQLite -> Parquet export) run by a set of
contestants on the same data; adding a case means one module here and one line in ``CASES``.
"""

from __future__ import annotations

from cases.base import Case, Contestant, Dataset, RunSpec
from cases.cache import CACHE
from cases.codecs import CODECS
from cases.django_bulk_create import (
    DJANGO_BULK_CREATE,
    DJANGO_BULK_CREATE_MYSQL,
    DJANGO_BULK_CREATE_POSTGRES,
)
from cases.django_iterate import DJANGO_ITERATE, DJANGO_ITERATE_MYSQL, DJANGO_ITERATE_POSTGRES
from cases.duckdb_export import DUCKDB_EXPORT
from cases.kv_export import KV_EXPORTS
from cases.paging import PAGING
from cases.redis_export import REDIS_EXPORT, REDIS_LOAD
from cases.server_export import MYSQL_EXPORT, POSTGRES_EXPORT
from cases.server_load import MYSQL_LOAD, POSTGRES_LOAD
from cases.sqlite_export import SQLITE_EXPORT

CASES: dict[str, Case] = {
    case.name: case for case in (SQLITE_EXPORT, CODECS, CACHE, REDIS_EXPORT, REDIS_LOAD)
}
CASES.update(
    (case.name, case)
    for case in (POSTGRES_EXPORT, MYSQL_EXPORT, POSTGRES_LOAD, MYSQL_LOAD)
)
CASES[DUCKDB_EXPORT.name] = DUCKDB_EXPORT
CASES[PAGING.name] = PAGING
CASES.update((case.name, case) for case in KV_EXPORTS)
CASES.update(
    (case.name, case)
    for case in (DJANGO_ITERATE, DJANGO_ITERATE_POSTGRES, DJANGO_ITERATE_MYSQL)
)
CASES.update(
    (case.name, case)
    for case in (DJANGO_BULK_CREATE, DJANGO_BULK_CREATE_POSTGRES, DJANGO_BULK_CREATE_MYSQL)
)

__all__ = ["CASES", "Case", "Contestant", "Dataset", "RunSpec"]
