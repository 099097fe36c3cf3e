"""membound: ``chunked(Event.objects.order_by("id"), max_memory=BUDGET)``."""

from __future__ import annotations

# isort: off
import membound.django  # noqa: F401 (first, as membound's docs say)
from _common import ExportOptions, run_contestant
from django_common import Digest, setup, source_path, table_name

# isort: on

Event = setup(source_path(), table_name())

from membound.django import chunked  # noqa: E402 (needs Django set up for its app registry)


def export(options: ExportOptions) -> dict:
    digest = Digest()
    for event in chunked(Event.objects.order_by("id"), max_memory=options.budget):
        digest.add(event)
    return digest.write(options.output)


if __name__ == "__main__":
    run_contestant(export)
