"""``manage.py membound_export app.Model TARGET``: a model's rows to a file or database, bounded.

Examples::

    python manage.py membound_export shop.Order orders.parquet --max-memory 64MB
    python manage.py membound_export shop.Order orders.csv --filter status=paid \\
        --filter created__gte=2024-01-01 --order-by=-created
    python manage.py membound_export shop.Order postgresql://warehouse/dw --table orders \\
        --mode append
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from django.apps import apps
from django.core.exceptions import FieldError, ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from membound.budget import DEFAULT_MAX_MEMORY, Budget, format_size
from membound.errors import MemboundError

# Lookups whose value is a list: "--filter kind__in=buy,view".
_LIST_LOOKUPS = ("__in", "__range")
_BOOLEAN_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def parse_filters(items: list[str]) -> dict[str, object]:
    """``["kind=buy", "amount__isnull=false", "id__in=1,2"]`` -> keyword arguments for filter()."""
    filters: dict[str, object] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CommandError(
                f"--filter {item!r} is not FIELD=VALUE; write e.g. --filter status=paid or "
                "--filter created__gte=2024-01-01"
            )
        if name.endswith(_LIST_LOOKUPS):
            filters[name] = value.split(",")
        elif name.endswith("__isnull"):
            if value.lower() not in _BOOLEAN_WORDS:
                raise CommandError(f"--filter {item!r}: __isnull takes true or false")
            filters[name] = _BOOLEAN_WORDS[value.lower()]
        else:
            filters[name] = value
    return filters


class Command(BaseCommand):
    help = (
        "Export a model's rows (optionally filtered) to Parquet, CSV, JSONL, Arrow or another "
        "database, in batches sized in bytes from --max-memory, with progress and a report. "
        "Example: manage.py membound_export shop.Order orders.parquet --filter status=paid"
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("model", help="the model as app_label.ModelName, e.g. shop.Order")
        parser.add_argument(
            "target",
            help="a file (.parquet, .csv, .jsonl, .arrow) or a database URL "
            "(sqlite:///out.db, postgresql://host/db, mysql://host/db)",
        )
        parser.add_argument(
            "--filter", action="append", default=[], metavar="FIELD=VALUE",
            help="a filter() argument; repeatable; lists for __in/__range are comma-separated",
        )
        parser.add_argument(
            "--exclude", action="append", default=[], metavar="FIELD=VALUE",
            help="an exclude() argument; repeatable",
        )
        parser.add_argument("--fields", help="comma-separated fields to export (default: all)")
        parser.add_argument("--order-by", help="comma-separated ordering, e.g. -created,id")
        parser.add_argument("--max-memory", default=str(DEFAULT_MAX_MEMORY),
                            help="the memory budget, e.g. 64MB (default 64MB)")
        parser.add_argument("--mode", default="fail",
                            choices=["fail", "append", "replace", "upsert"],
                            help="what to do when the target exists (default: fail)")
        parser.add_argument("--key", help="comma-separated key columns for --mode upsert")
        parser.add_argument("--table", help="the target table (databases; default: the "
                            "model's table)")
        parser.add_argument("--database", default=None,
                            help="the Django database alias to read from (default: routed)")
        parser.add_argument("--no-progress", action="store_true", help="show no progress")
        parser.add_argument("--report-json", help="also save the run report as JSON here")

    def handle(self, *args: object, **options: object) -> None:
        from membound.django.arrow import export_queryset

        try:
            model = apps.get_model(str(options["model"]))
        except (LookupError, ValueError) as exc:
            raise CommandError(
                f"{options['model']!r} is not an installed model ({exc}); write app_label.Model, "
                "e.g. shop.Order"
            ) from None
        try:
            budget = Budget(str(options["max_memory"]))
        except MemboundError as exc:
            raise CommandError(f"--max-memory: {exc}") from None
        queryset = model._default_manager.all()
        if options["database"]:
            queryset = queryset.using(options["database"])
        try:
            queryset = queryset.filter(**parse_filters(options["filter"]))  # type: ignore[arg-type]
            queryset = queryset.exclude(**parse_filters(options["exclude"]))  # type: ignore[arg-type]
            if options["order_by"]:
                queryset = queryset.order_by(*str(options["order_by"]).split(","))
            if options["fields"]:
                queryset = queryset.values(*str(options["fields"]).split(","))
            str(queryset.query)  # compile now: a bad field is the user's error, said here
        except (FieldError, ValidationError, ValueError, TypeError) as exc:
            raise CommandError(f"{exc}; check --filter, --exclude, --fields and --order-by") \
                from None
        key = str(options["key"]).split(",") if options["key"] else None
        with self._progress(not options["no_progress"], model._meta.label) as progress:
            try:
                report = export_queryset(
                    queryset, str(options["target"]), table=options["table"],  # type: ignore[arg-type]
                    max_memory=budget, mode=options["mode"], key=key,  # type: ignore[arg-type]
                    progress=progress,
                )
            except MemboundError as exc:
                raise CommandError(str(exc)) from None
        self.stdout.write(str(report))
        if options["report_json"]:
            report.to_json(str(options["report_json"]))
            self.stderr.write(f"report saved to {options['report_json']}")

    @contextlib.contextmanager
    def _progress(self, enabled: bool, label: str) -> Iterator[Callable | None]:
        if not enabled:
            yield None
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("rows  {task.fields[size]}"), TimeElapsedColumn(),
            console=Console(stderr=True), transient=True,
        )
        task = bar.add_task(label, total=None, size="")

        def update(rows: int, nbytes: int, total: int | None) -> None:
            bar.update(task, completed=rows, total=total if total and total >= rows else None,
                       size=format_size(nbytes))

        with bar:
            yield update
