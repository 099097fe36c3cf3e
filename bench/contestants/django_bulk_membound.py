"""membound: ``bulk_create(Event, <generator>, max_memory=BUDGET)``, the instances made lazily.

"work" includes generating the instances (the peer's list is built before its work starts).
"""

from __future__ import annotations

# isort: off
import membound.django  # noqa: F401 (first, as membound's docs say)
from _common import ExportOptions, run_contestant
from django_common import bulk_target, create_table, generated_events, imports_only, setup
from django_common import write_result

# isort: on

database, table, rows = bulk_target()
Event = setup(database, table, auto_id=True)
if not imports_only():
    create_table(Event)

from membound.django import bulk_create  # noqa: E402 (needs Django set up for its app registry)


def export(options: ExportOptions) -> dict:
    written = bulk_create(Event, generated_events(Event, rows), max_memory=options.budget)
    return write_result(options.output, table, written)


if __name__ == "__main__":
    run_contestant(export)
