"""Memory-bounded Django: iterate QuerySets in byte-sized keyset chunks, write in bounded batches.

- :func:`chunked` / :func:`chunks`: any QuerySet, in its own order, chunk by chunk, with no
  server-side cursor and no long transaction; ``large_values=`` keeps big blobs out of chunks
  and :func:`stream_value` reads one in pieces.
- :func:`bulk_create` / :func:`bulk_update`: from any iterable (a generator is never
  materialised), in batches sized in bytes, one short transaction per batch or one for all.
- :func:`queryset_batches` / :func:`export_queryset`: a QuerySet as byte-sized Arrow batches,
  written to any membound target (Parquet, CSV, JSONL, a database); the ``membound_export``
  management command (``INSTALLED_APPS += ["membound.django"]``) runs it.

Install with ``pip install 'membound[django]'``. See docs/django.md.
"""

from __future__ import annotations

from membound.django.iteration import chunked, chunks, stream_value
from membound.django.writes import bulk_create, bulk_update

__all__ = [
    "bulk_create",
    "bulk_update",
    "chunked",
    "chunks",
    "export_queryset",
    "queryset_batches",
    "stream_value",
]


def __getattr__(name: str):
    # The Arrow side imports pyarrow; iteration and writes never need it, so it loads on use.
    if name in ("export_queryset", "queryset_batches"):
        from membound.django import arrow

        return getattr(arrow, name)
    raise AttributeError(f"module 'membound.django' has no attribute {name!r}")
