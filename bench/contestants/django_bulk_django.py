"""Django's ``Event.objects.bulk_create(objs, batch_size=2000)`` on a list built beforehand.

The list of generated instances is built before the timed work (not with ``--imports-only``):
"work" is the ``bulk_create`` call alone; "time", CPU and peak RSS include building the list.
"""

from __future__ import annotations

from _common import ExportOptions, run_contestant
from django_common import (
    bulk_target,
    create_table,
    generated_events,
    imports_only,
    setup,
    write_result,
)

# Rows per INSERT; Django caps it lower where the database limits query parameters (SQLite).
BATCH_SIZE = 2000

database, table, rows = bulk_target()
Event = setup(database, table, auto_id=True)
if not imports_only():
    create_table(Event)
    OBJECTS = list(generated_events(Event, rows))


def export(options: ExportOptions) -> dict:
    Event.objects.bulk_create(OBJECTS, batch_size=BATCH_SIZE)
    return write_result(options.output, table, len(OBJECTS))


if __name__ == "__main__":
    run_contestant(export)
