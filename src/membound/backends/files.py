"""Files as sources and sinks: Parquet, CSV/TSV, JSON Lines and Arrow IPC, streamed in bytes.

Reading never holds a whole file. Parquet is read row group by row group in batches whose row
count comes from the measured row width and the budget; CSV and JSONL go through pyarrow's
streaming readers in blocks sized from the budget; Arrow IPC is memory-mapped, and the pages of
each batch are handed back to the OS once the next one is asked for.

Writing always goes to a temporary file beside the target which ``os.replace`` swaps in at the
end, so a failed write leaves the old target byte-identical and no temporary file behind. The
first batch's schema fixes the file's schema. ``append`` streams the old file and then the new
batches into the temporary file: bounded memory and atomic, at the cost of rewriting the file.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import itertools
import json
import mmap
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from membound.backends.base import Backend, WriteMode, WriteResult, check_mode, is_query
from membound.batching import batch_nbytes, rebatch
from membound.budget import BatchSizer, Budget
from membound.errors import (
    ConfigurationError,
    CorruptFileError,
    MemboundError,
    NotFoundError,
    SchemaError,
    SourceError,
    TargetError,
    TargetExistsError,
)
from membound.memory import release_arrow_memory, trim_heap
from membound.urls import ParsedURL, parse_url

__all__ = ["FileBackend"]

# A Parquet row group is buffered whole before it is encoded, and encoding takes about as much
# again. With the incoming batch, the source's work and the allocator's slack (mimalloc keeps up
# to 2x the live bytes resident), writing under a 32 MB budget peaked at 21-26 MB with 1/16 but
# up to 37 MB with 1/4 and 47 MB with 1/8. So row groups get the batch share: 4 MB at 64 MB.
ROW_GROUP_SHARE = 1 / 16
# Below 1 MB per row group, footer metadata and lost compression dominate the file.
MIN_ROW_GROUP_BYTES = 1_000_000
# Readers (DuckDB, Spark, pyarrow) gain nothing from row groups above 128 MB, only memory.
MAX_ROW_GROUP_BYTES = 128_000_000
# pyarrow's Parquet decoder holds ~2.5x the batch it returns (its builders grow by doubling)
# besides a decompressed page and a dictionary per column, so Parquet batches get half the share.
PARQUET_BATCH_SHARE = 0.5
# Per-column read buffer for row groups too big to read a column chunk at once. Bounded on both
# sides so a 1000-column file still fits the batch share.
MIN_PARQUET_BUFFER = 64 * 1024
MAX_PARQUET_BUFFER = 4 * 1024 * 1024
# zstd: on membound's demo events, half the size of snappy and no slower to write or read; every
# pyarrow wheel, DuckDB, Spark and polars read it.
DEFAULT_PARQUET_COMPRESSION = "zstd"
# Data pages of 64 KiB instead of pyarrow's 1 MiB: each page's buffers (values, encoded page,
# compressed page) then fit mimalloc's medium pages, reused as they are freed, where 1 MiB
# buffers got pages of their own, decommitted on free and faulted in again for the next page.
# Writing 2M rows of events: 350k -> 48k page faults, 1.1 -> 0.2 s system time; the file is
# 3.5% larger (44.6 -> 46.2 MB, more page headers).
PARQUET_PAGE_BYTES = 64 * 1024
# Data pages of format version 2: pyarrow compresses a page's values straight from the
# encoder's buffer, where version 1 first copies them (with the levels) into another buffer.
# A 20 MB value then costs one copy in the writer instead of two: SQLite -> Parquet with 20 MB
# values under a 32 MB budget peaked 69 MB above the start with version 1, 49 MB with 2. Every
# current reader takes them (pyarrow, polars, DuckDB, Spark 3.3+); ?page_version=1 writes 1.
DEFAULT_PAGE_VERSION = "2.0"
# The file writer hands freed memory back to the OS after a batch (Arrow's pools, then glibc's
# heaps) only when memory above the baseline passed this share of the budget. Each release
# makes the next batches fault their pages back in: at 1/4, copying 2M rows of SQLite events
# took 125k page faults and 1.95 s CPU, against 33k and 1.72 s at 1/2, peaking at 20 and 23 MB
# above the start for 64MB. (With glibc's heaps emptied too, 190k faults: malloc_trim empties
# the heap a reader thread builds its next batch in.)
RELEASE_ABOVE = 1 / 2
# Dictionary encoding is off unless ?dictionary=true: pyarrow tries it on every column and falls
# back past 1 MB of dictionary, so unique strings pay for nothing. On the 2M-row events table
# (4 MB row groups, zstd) writing took 0.68 s without it and 1.08 s with it, and the file was
# 44 MB instead of 57 MB: zstd finds the repetition a dictionary would.
# pyarrow's CSV and JSON streaming readers read about 40 blocks ahead on a background thread,
# which Python cannot configure (measured: live memory = 41 x block_size). A block thus gets 1/16
# of the batch target, so the readahead holds some 2.5 batches' worth; batches are block-sized.
TEXT_BLOCK_SHARE = 1 / 16
# Below this a block's per-call overhead dominates; a longer row still reads (pyarrow grows it).
MIN_TEXT_BLOCK = 16 * 1024
# Chunk for copying an old CSV/JSONL file into the new one on append: disk speed, little memory.
COPY_CHUNK_BYTES = 1024 * 1024
# Rows probed to learn the decoded width before the first Parquet row group is read.
PROBE_ROWS = 64
# How Arrow IPC files start; the stream format starts with a continuation marker instead.
ARROW_FILE_MAGIC = b"ARROW1"

_COMPRESSION_SUFFIXES = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4"}
_KIND = {"parquet": "Parquet", "csv": "CSV", "jsonl": "JSON Lines", "arrow": "Arrow IPC"}
_CSV_COLUMN = re.compile(r"In CSV column #(\d+)")
_JSON_COLUMN = re.compile(r"Column\(/([^)/]*)\) changed from")


class FileBackend(Backend):
    """One file as one table, read and written as byte-sized Arrow batches.

    ``FileBackend("events.parquet", budget="64MB")``, or from a parsed URL. The extension names
    the format: ``.parquet``/``.pq``, ``.csv``/``.tsv`` (also ``.gz``, ``.bz2``, ``.zst``),
    ``.jsonl``/``.ndjson``, ``.arrow``/``.feather``/``.ipc`` and ``.arrows`` (IPC stream).
    Parquet and Arrow take ``?compression=`` in the URL (default zstd and none).
    """

    extra: ClassVar[str] = ""
    name: ClassVar[str] = "file"

    def __init__(
        self, url: ParsedURL | str | os.PathLike[str], *, budget: Budget | int | str | None = None
    ) -> None:
        parsed = url if isinstance(url, ParsedURL) else parse_url(os.fspath(url))
        if parsed.scheme != "file" or not parsed.path:
            raise ConfigurationError(f"{parsed.display} is not a file path")
        super().__init__(parsed, budget=budget)
        self.path = Path(parsed.path)
        self.format = parsed.file_format or "parquet"
        self.kind = _KIND[self.format]
        suffix = self.path.suffix.lower()
        self.compression = _COMPRESSION_SUFFIXES.get(suffix)
        binary = self.format in ("parquet", "arrow")
        allowed = {"compression", "dictionary", "page_version"} if self.format == "parquet" \
            else {"compression"} if binary else set()
        if unknown := set(parsed.options) - allowed:
            raise ConfigurationError(f"{self.kind} files take no option {sorted(unknown)[0]!r}"
                                     + (f"; only {', '.join(sorted(allowed))}" if allowed
                                        else ""))
        dictionary = parsed.options.get("dictionary", "false").lower()
        if dictionary not in ("true", "false"):
            raise ConfigurationError("?dictionary= takes true or false")
        self.dictionary = dictionary == "true"
        page_version = parsed.options.get("page_version", DEFAULT_PAGE_VERSION)
        if page_version not in ("1", "2", "1.0", "2.0"):
            raise ConfigurationError("?page_version= takes 1 or 2")
        self.page_version = page_version[0] + ".0"
        if self.compression and binary:
            raise ConfigurationError(f"{self.path.name}: {self.kind} files compress inside; drop "
                                     f"{suffix} from the name and add ?compression=zstd")
        name = self.path.name[: -len(suffix)] if self.compression else self.path.name
        self.stem = Path(name).stem
        self.delimiter = "\t" if name.lower().endswith(".tsv") else ","

    # ------------------------------------------------------------------ reading

    def batches(
        self,
        query_or_table: str | None = None,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        budget: Budget | int | str | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Stream the file as batches of about the budget's batch size (half of it for Parquet).

        Memory: one batch plus the reader's buffers (a page and a dictionary per Parquet column,
        one CSV/JSON block). The file is opened now: a missing file raises
        :class:`NotFoundError`, one that is not what its extension says
        :class:`CorruptFileError`. Damage further in raises :class:`CorruptFileError`
        mid-stream; a CSV/JSONL value that does not fit the type inferred from the first block
        raises :class:`SchemaError` naming the column.
        """
        self._check_table(query_or_table)
        if params:
            raise ConfigurationError("params go with SQL queries; a file takes none")
        share = PARQUET_BATCH_SHARE if self.format == "parquet" else 1.0
        sizer = self._budget(budget).sizer(share=share, conversion=False)
        schema, stream = self._open(sizer)
        return self._guarded(rebatch(stream, sizer), sizer, schema)

    def schema(self, query_or_table: str | None = None) -> pa.Schema:
        """The file's schema: Parquet and Arrow from their metadata, CSV and JSONL from their
        first block (where the types are inferred). Raises like :meth:`batches`."""
        self._check_table(query_or_table)
        schema, stream = self._open(self.budget.sizer(conversion=False), schema_only=True)
        _close(stream)
        return schema

    def estimate_rows(self, query_or_table: str | None = None) -> int | None:
        """The row count from Parquet or Arrow-file metadata; None for CSV, JSONL, streams."""
        self._check_table(query_or_table)
        path = self._existing_path()
        with self._decoding():
            if self.format == "parquet":
                with contextlib.closing(_parquet_file(path)) as pf:
                    return int(pf.metadata.num_rows)
            if self.format == "arrow":
                reader = _open_ipc(path)[0]
                if isinstance(reader, pa.ipc.RecordBatchFileReader):
                    return int(reader.count_rows())
        return None

    def _open(
        self, sizer: BatchSizer, *, schema_only: bool = False
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        path = self._existing_path()
        with self._decoding():
            if self.format == "parquet":
                if schema_only:
                    import pyarrow.parquet as pq

                    return pq.read_schema(str(path)), iter(())
                return _read_parquet(path, sizer)
            if self.format == "arrow":
                reader, mapped, buffer = _open_ipc(path)
                return reader.schema, _ipc_batches(reader, mapped, buffer.address)
            stream = pa.input_stream(str(path), compression=self.compression)
            try:
                block = max(MIN_TEXT_BLOCK, int(sizer.target_bytes * TEXT_BLOCK_SHARE))
                reader = self._text_reader(stream, block)
            except pa.ArrowInvalid as exc:
                if not str(exc).startswith("Empty"):
                    raise
                return pa.schema([]), iter(())  # what write() makes of an empty stream
            return reader.schema, _reader_batches(reader)

    def _text_reader(self, stream: pa.NativeFile, block_size: int) -> pa.RecordBatchReader:
        if self.format == "jsonl":
            import pyarrow.json as pjson

            return pjson.open_json(stream, read_options=pjson.ReadOptions(block_size=block_size))
        import pyarrow.csv as pcsv

        return pcsv.open_csv(
            stream,
            read_options=pcsv.ReadOptions(block_size=block_size),
            parse_options=pcsv.ParseOptions(delimiter=self.delimiter),
            # Only an empty unquoted field is NULL and "" is the empty string, as the sink and
            # PostgreSQL's COPY write them: "NA" or "null" stay text.
            convert_options=pcsv.ConvertOptions(
                null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False
            ),
        )

    def _guarded(
        self, stream: Iterator[pa.RecordBatch], sizer: BatchSizer, schema: pa.Schema
    ) -> Iterator[pa.RecordBatch]:
        used = 0
        try:
            while True:
                # The consumer is done with the last batch. mimalloc, pyarrow's default pool,
                # keeps freed pages for reuse; handed back after each batch, a Parquet read's
                # peak RSS measured 1.5-2x lower, but every batch then decodes into fresh pages
                # (Parquet -> PostgreSQL, 2M rows of events: 250k page faults and 1.85 s CPU,
                # against 75k and 1.50 s this way, peaking 34 MB above the start for 64MB
                # instead of 30 MB). So only once memory passes RELEASE_ABOVE of the budget.
                # Only the reader's work is translated below, never the consumer's (which runs
                # at the yield).
                if used > RELEASE_ABOVE * sizer.budget.max_memory:
                    release_arrow_memory()
                with self._decoding(schema):
                    batch = next(stream, None)
                if batch is None:
                    return
                used = sizer.check_memory(f"reading {self.path.name}")
                yield batch
        finally:
            _close(stream)

    def _existing_path(self) -> Path:
        if not self.path.exists():
            raise NotFoundError(
                f"{self.path} does not exist; check the path (relative paths start at "
                f"{Path.cwd()})"
            )
        if self.path.is_dir():
            raise NotFoundError(f"{self.path} is a directory; name a file in it")
        return self.path

    @contextlib.contextmanager
    def _decoding(self, schema: pa.Schema | None = None) -> Iterator[None]:
        """Turn pyarrow's decoding errors into membound's, each saying what to do."""
        try:
            yield
        except (MemboundError, MemoryError):
            raise
        except PermissionError as exc:
            raise SourceError(f"cannot read {self.path}: {exc.strerror}; check its "
                              "permissions") from None
        except pa.ArrowNotImplementedError as exc:
            raise SourceError(
                f"{self.path} uses a {self.kind} feature pyarrow {pa.__version__} cannot read "
                f"({exc}); upgrade pyarrow or rewrite the file with a current tool"
            ) from None
        except (pa.ArrowException, OSError, EOFError) as exc:
            if (column := _bad_column(str(exc), schema)) is not None:
                raise SchemaError(
                    f"column {column!r} of {self.path} holds a value that does not fit the type "
                    f"inferred from the file's first block ({exc}); fix that value, or convert "
                    "the file to Parquet with explicit column types"
                ) from None
            raise CorruptFileError(
                f"{self.path} cannot be read as {self.kind} ({exc}); it may be truncated or in "
                "another format than its extension says: write it again, or rename it to the "
                "extension of its real format"
            ) from None

    def _check_table(self, name: str | None, *, writing: bool = False) -> None:
        if name is None or name in (self.stem, self.path.name, self.url.table):
            return
        if is_query(name) and not writing:
            raise ConfigurationError(
                f"{self.path.name} is a file and runs no SQL; to query it, copy it into a "
                "database (membound copy FILE sqlite:///work.db) or open it with DuckDB "
                f"(SELECT ... FROM '{self.path}')"
            )
        error = ConfigurationError if writing else NotFoundError
        raise error(
            f"{self.path.name} holds one table, {self.stem!r}: pass None or {self.stem!r} "
            f"instead of {name!r}"
        )

    # ------------------------------------------------------------------ writing

    def write(
        self,
        table: str | None,
        batches: Iterable[pa.RecordBatch],
        *,
        mode: WriteMode = "fail",
        key: Sequence[str] | str | None = None,
        budget: Budget | int | str | None = None,
    ) -> WriteResult:
        """Write ``batches`` into a temporary file beside the target, then swap it in.

        ``mode``: ``"fail"`` refuses an existing file (:class:`TargetExistsError`);
        ``"replace"`` swaps the new file in; ``"append"`` streams the old rows and then the
        new ones into it (names and types must match, else :class:`SchemaError`); ``"upsert"``
        raises :class:`ConfigurationError`. A later batch whose types differ from the first's
        is cast when no value changes, else :class:`SchemaError`. A missing directory raises
        :class:`TargetError`, as does a value the format cannot hold. Memory: one incoming
        batch, plus for Parquet one row group of ``max_memory/16``. On any failure, including
        one raised by ``batches``, the old file is left byte-identical and the temporary file
        is removed.
        """
        if mode == "upsert":
            raise ConfigurationError("files have no keys to upsert on; use mode='replace' or "
                                     "mode='append', or write to a database")
        check_mode(mode, key)
        self._check_table(table, writing=True)
        target = self.path
        if not target.parent.is_dir():
            raise TargetError(f"the directory {target.parent} does not exist; create it first "
                              f"(mkdir -p {target.parent})")
        if target.is_dir():
            raise TargetError(f"{target} is a directory; name a file to write")
        existed = target.exists()
        if existed and mode == "fail":
            raise TargetExistsError(f"{target} already exists; use --mode replace "
                                    "(mode='replace') to overwrite it, or --mode append")
        result = WriteResult(table=str(target), mode=mode, created=not existed)
        temp = _create_temp(target)
        try:
            sizer = self._budget(budget).sizer(conversion=False)
            # A RecordBatchReader states its schema, which an empty stream then still writes.
            hint = getattr(batches, "schema", None)
            append = existed and mode == "append"
            self._write_temp(temp, iter(batches), hint, sizer, result, append)
            with open(temp, "rb") as f:
                os.fsync(f.fileno())  # on disk before the rename, so a crash cannot empty it
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        return result

    def _write_temp(
        self,
        temp: Path,
        stream: Iterator[pa.RecordBatch],
        hint: pa.Schema | None,
        sizer: BatchSizer,
        result: WriteResult,
        append: bool,
    ) -> None:
        old = self.schema() if append else None
        keep_old = old is not None and len(old) > 0  # an empty old file has nothing to keep
        first = next(stream, None)
        schema = first.schema if first is not None else old or hint or pa.schema([])
        if keep_old and first is not None:
            _check_names(old, schema, ordered=self.format != "jsonl")
            if self.format in ("parquet", "arrow"):
                schema = old
        with self._encoding():
            sink = self._sink(temp, schema, sizer, header=not keep_old)
        try:
            if keep_old and self.format in ("parquet", "arrow"):
                for batch in self.batches(budget=sizer.budget):
                    with self._encoding():
                        sink.write(batch)
            elif keep_old:
                with self._encoding():
                    sink.copy_raw(self.path)
            # The caller's iterator runs outside _encoding: its own errors pass unchanged.
            for batch in itertools.chain([first] if first is not None else (), stream):
                batch = _conform(batch, schema)
                with self._encoding():
                    sink.write(batch)
                result.rows += batch.num_rows
                result.batches += 1
                result.bytes += batch_nbytes(batch)
                del batch
                # Handing mimalloc's freed pages back forces a purge of pages it is about to
                # reuse: per batch, writing 2M rows of events took 100-140k more page faults
                # and 0.3-0.5 s more system time. So only when memory nears the budget.
                used = sizer.check_memory(f"writing {self.path.name}")
                if used > RELEASE_ABOVE * sizer.budget.max_memory:
                    release_arrow_memory()
                    trim_heap()
            with self._encoding():
                sink.close()
        except BaseException:
            sink.abort()
            raise

    @contextlib.contextmanager
    def _encoding(self) -> Iterator[None]:
        """Turn pyarrow's and the OS's errors while writing into :class:`TargetError`."""
        try:
            yield
        except (MemboundError, MemoryError):
            raise
        except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
            raise TargetError(
                f"cannot write {self.path} as {self.kind} ({exc}); the file is left as it was. "
                "If a column's type is the cause, cast it in the query or write Parquet or "
                "Arrow, which hold every Arrow type"
            ) from None

    def _sink(self, temp: Path, schema: pa.Schema, sizer: BatchSizer, *, header: bool) -> Any:
        compression = self.url.options.get("compression")
        if self.format == "parquet":
            share = int(sizer.budget.max_memory * ROW_GROUP_SHARE)
            group_bytes = max(MIN_ROW_GROUP_BYTES, min(MAX_ROW_GROUP_BYTES, share))
            return _ParquetSink(temp, schema, group_bytes,
                                compression or DEFAULT_PARQUET_COMPRESSION,
                                dictionary=self.dictionary, page_version=self.page_version)
        if self.format == "arrow":
            return _IPCSink(temp, schema, compression, stream=self.path.suffix == ".arrows")
        out = pa.output_stream(str(temp), compression=self.compression)
        if self.format == "csv":
            return _CSVSink(out, schema, self.delimiter, header=header)
        return _JSONLSink(out)


# ---------------------------------------------------------------------- readers


def _close(stream: Iterator[Any]) -> None:
    close = getattr(stream, "close", None)
    if close is not None:
        close()


def _reader_batches(reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    try:
        yield from reader
    finally:
        reader.close()


def _parquet_file(path: Path, buffer_size: int = 0, metadata: Any = None) -> Any:
    import pyarrow.parquet as pq

    # pre_buffer=False: pyarrow's default reads a whole row group ahead, whatever its size.
    return pq.ParquetFile(str(path), pre_buffer=False, buffer_size=buffer_size,
                          metadata=metadata)


def _read_parquet(path: Path, sizer: BatchSizer) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    pf = _parquet_file(path)
    meta = pf.metadata
    largest = max((sum(meta.row_group(i).column(j).total_compressed_size
                       for j in range(meta.num_columns)) for i in range(meta.num_row_groups)),
                  default=0)
    if largest > sizer.target_bytes:
        # Unbuffered, each column chunk is read whole: fastest, and fine for the row groups
        # membound writes, but a foreign file's 1 GB row group must stream through buffers.
        pf.close()
        per_column = sizer.target_bytes // max(1, meta.num_columns)
        pf = _parquet_file(path, max(MIN_PARQUET_BUFFER, min(MAX_PARQUET_BUFFER, per_column)),
                           meta)
    return pf.schema_arrow, _parquet_batches(pf, sizer)


def _parquet_batches(pf: Any, sizer: BatchSizer) -> Iterator[pa.RecordBatch]:
    """Row group by row group, in batches of ``sizer.target_bytes`` worth of rows.

    The row width is the wider of the row group's metadata (total_byte_size / num_rows) and the
    batches seen so far. The metadata counts encoded sizes, which dictionary encoding can make
    a hundred times smaller than the decoded Arrow data, so the first row group is probed.
    """
    try:
        for index in range(pf.num_row_groups):
            meta = pf.metadata.row_group(index)
            if meta.num_rows == 0:
                continue
            if sizer.bytes_per_row is None:
                probe = next(pf.iter_batches(batch_size=PROBE_ROWS, row_groups=[index]), None)
                if probe is not None and probe.num_rows:
                    sizer.observe(probe.num_rows, batch_nbytes(probe))
                del probe
            width = max(meta.total_byte_size / meta.num_rows, sizer.bytes_per_row or 0.0, 1.0)
            rows = max(1, min(meta.num_rows, int(sizer.target_bytes / width)))
            # One thread: each pool thread keeps its own mimalloc heap, which release_unused()
            # here cannot empty (measured: +50% peak RSS on a 3-column file, and no faster).
            yield from pf.iter_batches(batch_size=rows, row_groups=[index], use_threads=False)
    finally:
        pf.close()


def _open_ipc(path: Path) -> tuple[Any, mmap.mmap, pa.Buffer]:
    """Memory-map an Arrow IPC file; open it as the file or the stream format by its magic."""
    with open(path, "rb") as f:
        head = f.read(len(ARROW_FILE_MAGIC))
        if not head:
            raise CorruptFileError(f"{path} is empty; an Arrow IPC file holds at least a "
                                   "schema: write it again")
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    buffer = pa.py_buffer(mapped)
    opener = pa.ipc.open_file if head == ARROW_FILE_MAGIC else pa.ipc.open_stream
    return opener(buffer), mapped, buffer


def _ipc_batches(reader: Any, mapped: mmap.mmap, base: int) -> Iterator[pa.RecordBatch]:
    """Zero-copy batches from the map, sliced to the budget by ``rebatch``.

    Mapped pages a consumer touched stay resident, and count in RSS, until unmapped: so once the
    next batch is asked for, the pages below the previous batch's end are dropped. They are
    clean file pages; a consumer still holding that batch reads them again from the page cache.
    """
    if isinstance(reader, pa.ipc.RecordBatchFileReader):
        stream: Iterable[pa.RecordBatch] = map(reader.get_batch,
                                               range(reader.num_record_batches))
    else:
        stream = reader
    released = 0
    can_release = hasattr(mmap, "MADV_DONTNEED")  # Linux, macOS, BSDs
    for batch in stream:
        yield batch
        end = max((buf.address - base + buf.size for column in batch.columns
                   for buf in column.buffers()
                   # Compressed IPC bodies are decompressed into the heap, outside the map.
                   if buf is not None and base <= buf.address < base + len(mapped)), default=0)
        upto = end - end % mmap.PAGESIZE
        if can_release and upto > released:
            mapped.madvise(mmap.MADV_DONTNEED, released, upto - released)
            released = upto


def _bad_column(message: str, schema: pa.Schema | None) -> str | None:
    """The column a pyarrow CSV/JSON conversion error names, if it names one."""
    if schema is not None and (match := _CSV_COLUMN.search(message)):
        index = int(match.group(1))
        return schema.names[index] if index < len(schema) else None
    if schema is not None and (match := _JSON_COLUMN.search(message)):
        return match.group(1)
    return None


# ---------------------------------------------------------------------- writers


class _Sink:
    """Writes into the temporary file; ``abort`` lets go of it after a failure."""

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


class _ParquetSink(_Sink):
    """Gathers batches up to ``group_bytes`` and writes them as one row group: the writer never
    holds more than one row group and the batch that completed it."""

    def __init__(self, path: Path, schema: pa.Schema, group_bytes: int, compression: str,
                 *, dictionary: bool = False, page_version: str = DEFAULT_PAGE_VERSION):
        import pyarrow.parquet as pq

        self.group_bytes = group_bytes
        self.pending: list[pa.RecordBatch] = []
        self.pending_bytes = 0
        try:
            self.writer = pq.ParquetWriter(str(path), schema, compression=compression,
                                           use_dictionary=dictionary,
                                           data_page_size=PARQUET_PAGE_BYTES,
                                           data_page_version=page_version,
                                           # Not on binary columns: pyarrow copies each
                                           # new min and max value (a 20 MB value alone in a
                                           # row group: 120 MB of copies) and then drops
                                           # statistics over 4 KB from the file anyway.
                                           write_statistics=_statistics_columns(schema))
        except (pa.ArrowException, ValueError) as exc:
            raise ConfigurationError(f"cannot write Parquet with compression={compression!r} "
                                     f"({exc}); use zstd, snappy, gzip, lz4, brotli or none"
                                     ) from None

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            self.pending.append(batch)
            self.pending_bytes += batch_nbytes(batch)
            if self.pending_bytes >= self.group_bytes:
                self.flush()

    def flush(self) -> None:
        if self.pending:
            group = pa.Table.from_batches(self.pending)  # zero-copy
            # A batch far bigger than the target arrived: split it into several row groups.
            parts = max(1, round(self.pending_bytes / self.group_bytes))
            self.writer.write_table(group, row_group_size=-(-group.num_rows // parts))
            self.pending, self.pending_bytes = [], 0

    def close(self) -> None:
        self.flush()
        self.writer.close()

    def abort(self) -> None:
        self.pending = []
        with contextlib.suppress(Exception):
            self.writer.close()


class _IPCSink(_Sink):
    """The file format, which readers can memory-map and seek in; ``.arrows`` gets the stream
    format, by convention. ``?compression=`` (lz4, zstd) gives up zero-copy reads."""

    def __init__(self, path: Path, schema: pa.Schema, compression: str | None, stream: bool):
        try:
            options = pa.ipc.IpcWriteOptions(compression=compression)
        except (pa.ArrowException, ValueError) as exc:
            raise ConfigurationError(f"cannot write Arrow IPC with compression={compression!r} "
                                     f"({exc}); use lz4 or zstd, or none") from None
        self.file = pa.OSFile(str(path), "wb")
        opener = pa.ipc.new_stream if stream else pa.ipc.new_file
        self.writer = opener(self.file, schema, options=options)

    def write(self, batch: pa.RecordBatch) -> None:
        self.writer.write_batch(batch)

    def close(self) -> None:
        self.writer.close()
        self.file.close()


class _TextSink(_Sink):
    def __init__(self, out: pa.NativeFile):
        self.out = out

    def copy_raw(self, path: Path) -> None:
        """Copy the old file's bytes (decompressed) into the new one, ending in a newline."""
        last = b"\n"
        compression = _COMPRESSION_SUFFIXES.get(path.suffix.lower())
        with pa.input_stream(str(path), compression=compression) as source:
            while chunk := source.read(COPY_CHUNK_BYTES):
                self.out.write(chunk)
                last = chunk[-1:]
        if last != b"\n":
            self.out.write(b"\n")

    def close(self) -> None:
        self.out.close()


class _CSVSink(_TextSink):
    """CSV holds text: binary columns are written as base64. NULL is an empty unquoted field."""

    def __init__(self, out: pa.NativeFile, schema: pa.Schema, delimiter: str, header: bool):
        super().__init__(out)
        self.schema = pa.schema([f.with_type(pa.string()) if _is_binary(f.type) else f
                                 for f in schema])
        self.header = header and len(schema) > 0
        self.delimiter = delimiter
        self.writer: Any = None

    def write(self, batch: pa.RecordBatch) -> None:
        columns = [_base64(c) if _is_binary(c.type) else c for c in batch.columns]
        self._writer().write(pa.RecordBatch.from_arrays(columns, schema=self.schema))

    def _writer(self) -> Any:
        # Made on first use, after copy_raw: CSVWriter writes the header as it is made.
        if self.writer is None:
            import pyarrow.csv as pcsv

            options = pcsv.WriteOptions(include_header=self.header, delimiter=self.delimiter)
            self.writer = pcsv.CSVWriter(self.out, self.schema, write_options=options)
        return self.writer

    def close(self) -> None:
        if len(self.schema):
            self._writer().close()
        self.out.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.out.close()


class _JSONLSink(_TextSink):
    """One JSON object per line, built per batch: bytes as base64, dates and times as ISO 8601,
    Decimal and other types as strings, NaN and infinities as null (JSON has neither)."""

    def __init__(self, out: pa.NativeFile):
        super().__init__(out)
        self.dumps = _json_dumps()

    def write(self, batch: pa.RecordBatch) -> None:
        columns = []
        for column in batch.columns:
            if pa.types.is_floating(column.type):
                column = pc.if_else(pc.is_finite(column), column, pa.scalar(None, column.type))
            columns.append(column.to_pylist())
        names, dumps = batch.schema.names, self.dumps
        # One growing buffer, not a list of lines: orjson 3.8 leaves each result in a 4 kB
        # allocation, so 16,000 lines held at once took 65 MB for 2 MB of JSON.
        text = bytearray()
        for row in zip(*columns, strict=True):
            text += dumps(dict(zip(names, row, strict=True)))
        self.out.write(text)


def _statistics_columns(schema: pa.Schema) -> bool | list[str]:
    """Columns to keep Parquet statistics for: all but binary ones (see _ParquetSink)."""
    binary = [f.name for f in schema if _is_binary(f.type)]
    return True if not binary else [f.name for f in schema if f.name not in binary]


def _is_binary(arrow_type: pa.DataType) -> bool:
    return (pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type)
            or pa.types.is_fixed_size_binary(arrow_type) or pa.types.is_binary_view(arrow_type))


def _base64(column: pa.Array) -> pa.Array:
    values = column.to_pylist()
    return pa.array([None if v is None else base64.b64encode(v).decode() for v in values],
                    pa.string())


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(value).decode()
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()  # also pandas' Timestamp, which keeps nanoseconds
    return str(value)  # Decimal, timedelta, ...


def _json_dumps() -> Callable[[dict[str, Any]], bytes]:
    try:
        import orjson
    except ImportError:
        encode = json.JSONEncoder(ensure_ascii=False, default=_json_default,
                                  separators=(",", ":")).encode
        return lambda row: (encode(row) + "\n").encode()
    return lambda row: orjson.dumps(row, default=_json_default, option=orjson.OPT_APPEND_NEWLINE)


def _check_names(old: pa.Schema, new: pa.Schema, *, ordered: bool) -> None:
    """Batches must carry the file's columns; name the first that differs."""
    if old.names == new.names or (not ordered and set(old.names) == set(new.names)):
        return
    missing = [n for n in old.names if n not in new.names]
    extra = [n for n in new.names if n not in old.names]
    what = (f"column {missing[0]!r} is missing" if missing
            else f"column {extra[0]!r} is not in the file" if extra
            else f"the columns come in another order ({', '.join(new.names)})")
    raise SchemaError(f"the batch does not fit the file: {what}; the file has "
                      f"{', '.join(old.names)}. Select the same columns, or use mode='replace'")


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` with the file's schema: columns cast where no value changes, else SchemaError."""
    if batch.schema.equals(schema):
        return batch
    _check_names(schema, batch.schema, ordered=True)
    arrays = []
    for field, column in zip(schema, batch.columns, strict=True):
        try:
            arrays.append(column if column.type == field.type
                          else column.cast(field.type, safe=True))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise SchemaError(
                f"column {field.name!r} is {column.type} in this batch but {field.type} in the "
                f"file, and its values do not convert ({exc}); cast it in the query, or use "
                "mode='replace'"
            ) from None
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _create_temp(target: Path) -> Path:
    """A new empty file beside ``target`` (same filesystem: os.replace is atomic), made with the
    usual 0666-minus-umask permissions rather than mkstemp's 0600."""
    while True:
        temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.membound-tmp")
        try:
            os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        except OSError as exc:
            raise TargetError(f"cannot create a file in {target.parent} ({exc.strerror}); "
                              "check the directory's permissions") from None
        return temp
