"""The ``membound`` command: a thin click layer over the public API."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import click

from membound.budget import DEFAULT_MAX_MEMORY, Budget, format_size
from membound.errors import MemboundError
from membound.report import RunReport

__all__ = ["main"]

# pyarrow imports numpy, and OpenBLAS then starts a thread per core that spins before it
# sleeps: on two cores that took 0.09 s of CPU from the reader and the writer of a 2M-row copy
# (perf). The command does no linear algebra, so one thread; set only for this process, before
# anything imports numpy, and a value already in the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

_MODES = click.Choice(["fail", "append", "replace", "upsert"])
_POLICIES = click.Choice(["adapt", "warn", "raise"])


def _budget(max_memory: str, policy: str) -> Budget:
    try:
        return Budget(max_memory, policy=policy)  # type: ignore[arg-type]
    except MemboundError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-memory") from None


@contextlib.contextmanager
def _progress(enabled: bool, label: str) -> Iterator[Callable[[int, int, int | None], None] | None]:
    """A rich progress bar on stderr, fed by the pipeline's per-batch callback."""
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

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows  {task.fields[size]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = progress.add_task(label, total=None, size="")

    def update(rows: int, nbytes: int, total: int | None) -> None:
        progress.update(task, completed=rows, total=total if total and total >= rows else None,
                        size=format_size(nbytes))

    with progress:
        yield update


def _show(report: RunReport, report_json: str | None) -> None:
    from rich.console import Console

    Console().print(report)
    if report_json:
        report.to_json(report_json)
        click.echo(f"report saved to {report_json}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="membound")
def main() -> None:
    """Memory-bounded database work: copy, read and write data inside a byte budget."""


@main.command("copy")
@click.argument("source")
@click.argument("target")
@click.option("--query", "-q", help="SQL to run on the source instead of reading a table.")
@click.option("--param", "params", multiple=True, help="A query parameter (repeat, in order).")
@click.option("--table", "-t", help="Source table; also the target table unless --target-table.")
@click.option("--target-table", help="Target table (default: --table or the target ?table=).")
@click.option("--max-memory", "-m", default=str(DEFAULT_MAX_MEMORY), show_default="64MB",
              help="Memory budget above the starting point: 64MB, 64MiB, 1GB or bytes.")
@click.option("--policy", type=_POLICIES, default="adapt", show_default=True,
              help="Over budget: shrink batches (adapt), warn, or stop with an error (raise).")
@click.option("--mode", type=_MODES, default="fail", show_default=True,
              help="When the target exists: fail, append, replace (atomic) or upsert (--key).")
@click.option("--key", "keys", multiple=True, help="Key column(s) for --mode upsert.")
@click.option("--compress", "compress", multiple=True, metavar="COL=CODEC",
              help="Encode column COL with CODEC on the way (zstd, lz4, msgpack+zstd...); "
                   "repeat for more columns.")
@click.option("--decompress", "decompress", multiple=True, metavar="COL[=TYPE]",
              help="Decode column COL, written by --compress, back to its type (or TYPE: "
                   "string, int64...); repeat for more columns.")
@click.option("--value-codec", metavar="CODEC",
              help="Encode/decode the values of the key-value store side (Redis, LMDB, LevelDB, "
                   "RocksDB) with CODEC, e.g. msgpack+zstd (as ?value_codec= in its URL).")
@click.option("--report-json", type=click.Path(dir_okay=False),
              help="Also save the run report as JSON here.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def copy_command(
    source: str,
    target: str,
    query: str | None,
    params: tuple[str, ...],
    table: str | None,
    target_table: str | None,
    max_memory: str,
    policy: str,
    mode: str,
    keys: tuple[str, ...],
    compress: tuple[str, ...],
    decompress: tuple[str, ...],
    value_codec: str | None,
    report_json: str | None,
    quiet: bool,
) -> None:
    """Copy a table or query result from SOURCE to TARGET inside a memory budget.

    SOURCE and TARGET are URLs (sqlite:///app.db, sqlite:////abs/app.db,
    postgresql://user@host/db, mysql://root@host/db) or file paths (.parquet, .csv, .jsonl,
    .arrow; .db/.sqlite are SQLite). Name a table with --table or ?table= in the URL.

    \b
    Examples:
      membound copy sqlite:///app.db events.parquet --table events --max-memory 64MB
      membound copy app.db archive.parquet -t events --compress payload=zstd
      membound copy archive.parquet sqlite:///back.db --target-table events --decompress payload
    """
    from membound.copy import copy

    budget = _budget(max_memory, policy)
    column_codecs = _pairs(compress, "--compress", "COL=CODEC, e.g. payload=zstd", required=True)
    column_types = _pairs(decompress, "--decompress", "COL or COL=TYPE, e.g. payload=string",
                          required=False)
    if query and table:
        raise click.UsageError("give --query or --table for the source, not both; use "
                               "--target-table to name the target")
    if value_codec:
        source, target = _with_value_codec(source, target, value_codec)
    show = not quiet and sys.stderr.isatty()
    try:
        with _progress(show, "copying") as progress:
            report = copy(
                source,
                target,
                query=query,
                params=list(params) or None,
                source_table=table,
                target_table=target_table,
                max_memory=budget,
                mode=mode,  # type: ignore[arg-type]
                key=keys or None,
                progress=progress,
                compress=column_codecs or None,
                decompress=column_types or None,
            )
    except MemboundError as exc:
        raise click.ClickException(str(exc)) from None
    _show(report, report_json)


_KEY_VALUE_SCHEMES = ("redis", "rediss", "lmdb", "leveldb", "rocksdb")


def _with_value_codec(source: str, target: str, codec: str) -> tuple[str, str]:
    """Add ``value_codec=`` to the URL(s) of the key-value store side(s) of a copy."""
    from urllib.parse import quote

    from membound.urls import parse_url

    def add(url: str) -> tuple[str, bool]:
        try:
            scheme = parse_url(url).scheme
        except MemboundError:
            return url, False
        if scheme not in _KEY_VALUE_SCHEMES:
            return url, False
        return f"{url}{'&' if '?' in url else '?'}value_codec={quote(codec, safe='')}", True

    source, in_source = add(source)
    target, in_target = add(target)
    if not (in_source or in_target):
        raise click.UsageError("--value-codec applies to a key-value store (redis://, lmdb://, "
                               "leveldb://, rocksdb://); neither SOURCE nor TARGET is one")
    return source, target


def _pairs(
    values: tuple[str, ...], option: str, form: str, *, required: bool
) -> dict[str, str | None]:
    """``("payload=zstd", "body")`` -> ``{"payload": "zstd", "body": None}``, checked."""
    pairs: dict[str, str | None] = {}
    for value in values:
        column, equals, setting = value.partition("=")
        column, setting = column.strip(), setting.strip()
        if not column or (equals and not setting) or (required and not equals):
            raise click.BadParameter(f"{value!r} is not {form}", param_hint=option)
        if column in pairs:
            raise click.BadParameter(f"column {column!r} is named twice", param_hint=option)
        pairs[column] = setting or None
    return pairs


@main.command("codecs")
@click.argument("source")
@click.option("--table", "-t", help="The table to sample (default: the URL's ?table= or the only "
                                    "table).")
@click.option("--query", "-q", help="SQL whose result to sample instead of a table.")
@click.option("--param", "params", multiple=True, help="A query parameter (repeat, in order).")
@click.option("--column", "-c", help="Measure one column's values (as copy --compress encodes "
                                     "them) instead of pages of rows.")
@click.option("--sample", default="10MB", show_default=True,
              help="How much of the source to read (Arrow size): 10MB, 1MiB or bytes.")
@click.option("--rows-per-value", default=1000, show_default=True, type=click.IntRange(1),
              help="Rows in one value when measuring rows (a cached query result).")
def codecs_command(
    source: str,
    table: str | None,
    query: str | None,
    params: tuple[str, ...],
    column: str | None,
    sample: str,
    rows_per_value: int,
) -> None:
    """Measure every serializer x compressor on a sample of SOURCE and recommend one.

    Reads at most --sample bytes of a table or query (then stops reading), and for each codec
    prints the encoded size, its ratio to the sample's Arrow size, encode and decode speed
    and the peak memory of one value's round trip. Without --column a value is a page of
    rows, as Cache.query stores them; with --column it is one value of that column.

    \b
    Examples:
      membound codecs sqlite:///app.db --table events
      membound codecs app.db -t events --column payload --sample 2MB
    """
    from rich.console import Console

    from membound.budget import parse_size
    from membound.codecs_bench import measure_codecs

    if query and table:
        raise click.UsageError("give --query or --table, not both")
    try:
        parse_size(sample)
    except MemboundError as exc:
        raise click.BadParameter(str(exc), param_hint="--sample") from None
    try:
        report = measure_codecs(source, query=query, params=list(params) or None, table=table,
                                column=column, sample=sample, rows_per_value=rows_per_value)
    except MemboundError as exc:
        raise click.ClickException(str(exc)) from None
    Console(width=max(100, Console().width)).print(report)


@main.command("demo")
@click.option("--rows", "-n", default=1_000_000, show_default=True, type=click.IntRange(1),
              help="Rows in the sample database.")
@click.option("--dir", "directory", default="membound-demo", show_default=True,
              type=click.Path(file_okay=False), help="Where the demo's files go.")
@click.option("--max-memory", "-m", default=str(DEFAULT_MAX_MEMORY), show_default="64MB",
              help="Memory budget for building and copying.")
@click.option("--report-json", type=click.Path(dir_okay=False),
              help="Also save the run report as JSON here.")
def demo_command(rows: int, directory: str, max_memory: str, report_json: str | None) -> None:
    """Build a sample SQLite database of events and copy it to Parquet, with the report.

    Needs no server. The database is generated batch by batch and the copy streams in
    byte-sized batches, so both stay inside the budget whatever --rows is.

    \b
    Example:
      membound demo --rows 2000000 --max-memory 32MB
    """
    from membound.demo import run_demo

    budget = _budget(max_memory, "adapt")
    click.echo(f"building {Path(directory) / 'demo.db'} with {rows:,} events, then copying it "
               f"to {Path(directory) / 'events.parquet'} within {format_size(budget.max_memory)}",
               err=True)
    try:
        with _progress(sys.stderr.isatty(), "copying to Parquet") as progress:
            report = run_demo(rows, directory, max_memory=budget, progress=progress)
    except MemboundError as exc:
        raise click.ClickException(str(exc)) from None
    _show(report, report_json)


if __name__ == "__main__":  # pragma: no cover
    main()
