"""django-chunkator: ``chunkator(Event.objects.all(), 2000)`` (keyset on the pk)."""

from __future__ import annotations

from chunkator import chunkator

from _common import ExportOptions, run_contestant
from django_common import Digest, setup, source_path, table_name

Event = setup(source_path(), table_name())


def export(options: ExportOptions) -> dict:
    digest = Digest()
    for event in chunkator(Event.objects.all(), 2000):
        digest.add(event)
    return digest.write(options.output)


if __name__ == "__main__":
    run_contestant(export)
