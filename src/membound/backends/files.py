"""Files as sources and sinks: Parquet, CSV/TSV, JSON Lines and Arrow IPC, streamed in bytes.

Reading never holds a whole file. Parquet is read row group by row group, in batches whose row
count comes from the measured row width and the budget; CSV and JSONL go through pyarrow's
streaming readers in blocks sized from the budget; Arrow IPC is memory-mapped and the pages of
each batch are handed back to the OS once the next one is asked for.

Writing always goes to a temporary file beside the target that ``os.replace`` swaps in at the
end, so a failed write leaves the old target byte-identical and no temporary file behind. The
first batch's schema fixes the file's schema. ``append`` streams the old file and then the new
batches into that temporary file: bounded memory and atomic, at the cost of rewriting the file.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import decimal
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
from membound.urls import ParsedURL, parse_url

__all__ = ["FileBackend"]

# A Parquet row group is buffered whole before it is encoded; beside it sit the incoming batch
# and the encoder's pages, so it gets a quarter of the budget.
ROW_GROUP_SHARE = float(os.environ.get('RGS', '0.25'))
_POOLX = os.environ.get('POOLX')
_READ_SHARE = float(os.environ.get('RSHARE', '1'))
# Below 1 MB per row group, footer metadata and lost compression dominate the file.
MIN_ROW_GROUP_BYTES = 1_000_000
# Readers (DuckDB, Spark, pyarrow) gain nothing from row groups above 128 MB, only memory.
MAX_ROW_GROUP_BYTES = 128_000_000
# zstd: files about a third smaller than snappy at similar read speed, and every pyarrow wheel
# bundles it, so any reader of the file can decode it.
DEFAULT_PARQUET_COMPRESSION = "zstd"
# Per-column read buffer for Parquet: pages stream through it instead of whole column chunks
# being read at once. Bounded on both sides so a 1000-column file still fits the batch share.
MIN_PARQUET_BUFFER = 64 * 1024
MAX_PARQUET_BUFFER = 4 * 1024 * 1024
# Chunk for copying an old CSV/JSONL file into the new one on append: big enough for disk speed.
COPY_CHUNK_BYTES = 1024 * 1024
# How Arrow IPC files start; the stream format starts with a continuation marker instead.
ARROW_FILE_MAGIC = b"ARROW1"

_COMPRESSION_SUFFIXES = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4"}
_FORMAT_NAMES = {"parquet": "Parquet", "csv": "CSV", "jsonl": "JSON Lines", "arrow": "Arrow IPC"}
_OPTIONS = {"parquet": {"compression"}, "arrow": {"compression"}, "csv": {"delimiter"},
            "jsonl": set()}
_CSV_COLUMN = re.compile(r"In CSV column #(\d+)")
_JSON_COLUMN = re.compile(r"Column\(/([^)/]*)")


class FileBackend(Backend):
    """One file as one table, read and written as byte-sized Arrow batches.

    Open it from a path or URL: ``FileBackend("events.parquet", budget="64MB")``. The format
    comes from the extension (``.parquet``, ``.csv``/``.tsv`` (optionally ``.gz``/``.bz2``/
    ``.zst``), ``.jsonl``/``.ndjson``, ``.arrow``/``.feather``/``.ipc``/``.arrows``). URL
    options: ``?compression=`` (Parquet, Arrow) and ``?delimiter=`` (CSV).
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
        suffix = self.path.suffix.lower()
        self.compression = _COMPRESSION_SUFFIXES.get(suffix)
        unknown = set(parsed.options) - _OPTIONS[self.format]
        if unknown:
            known = ", ".join(sorted(_OPTIONS[self.format])) or "none"
            raise ConfigurationError(
                f"unknown option(s) {', '.join(sorted(unknown))} for a "
                f"{_FORMAT_NAMES[self.format]} file; known: {known}"
            )
        if self.compression and self.format in ("parquet", "arrow"):
            raise ConfigurationError(
                f"{self.path.name}: {_FORMAT_NAMES[self.format]} files compress inside the file; "
                f"drop {suffix} from the name and use ?compression=zstd"
            )
        name = self.path.name[: -len(suffix)] if self.compression else self.path.name
        self.stem = Path(name).stem
        self.delimiter = parsed.options.get("delimiter") or (
            "\t" if name.lower().endswith(".tsv") else ","
        )
        if len(self.delimiter) != 1:
            raise ConfigurationError(f"delimiter must be one character, got {self.delimiter!r}")

    # ------------------------------------------------------------------ reading

    def batches(
        self,
        query_or_table: str | None = None,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        budget: Budget | int | str | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Stream the file as batches of about ``budget.batch_bytes`` bytes each.

        Memory: one batch plus the reader's buffers (a Parquet page per column, one CSV/JSON
        block). The file is opened now, so a missing file raises :class:`NotFoundError` and a
        file that is not what its extension says raises :class:`CorruptFileError` before the
        first batch; damage further in raises :class:`CorruptFileError` mid-stream, and a CSV
        or JSONL value that does not fit the type guessed from the first block raises
        :class:`SchemaError` naming the column.
        """
        self._check_table(query_or_table)
        if params:
            raise ConfigurationError("params go with SQL queries; a file takes none")
        sizer = self._budget(budget).sizer(share=_READ_SHARE if self.format == 'parquet' else 1.0)
        schema, stream = self._open(sizer)
        return self._guarded(rebatch(stream, sizer), sizer, schema)

    def schema(self, query_or_table: str | None = None) -> pa.Schema:
        """The file's schema: Parquet and Arrow from their metadata, CSV and JSONL from the
        first block (types are inferred there). Raises like :meth:`batches`."""
        self._check_table(query_or_table)
        if self.format == "parquet":
            import pyarrow.parquet as pq

            path = self._existing_path()
            with self._decoding(None):
                return pq.read_schema(str(path))
        schema, stream = self._open(self.budget.sizer())
        close = getattr(stream, "close", None)
        if close is not None:
            close()
        return schema

    def estimate_rows(self, query_or_table: str | None = None) -> int | None:
        """The row count from Parquet or Arrow-file metadata; None for CSV, JSONL, streams."""
        self._check_table(query_or_table)
        if self.format == "parquet":
            with self._decoding(None):
                pf = _parquet_file(self._existing_path(), MIN_PARQUET_BUFFER)
                try:
                    return int(pf.metadata.num_rows)
                finally:
                    pf.close()
        if self.format == "arrow":
            with self._decoding(None):
                reader = _open_ipc(self._existing_path())[0]
                if isinstance(reader, pa.ipc.RecordBatchFileReader):
                    return int(reader.count_rows())
        return None

    def _open(self, sizer: BatchSizer) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        path = self._existing_path()
        with self._decoding(None):
            if self.format == "parquet":
                return _read_parquet(path, sizer)
            if self.format == "arrow":
                return _read_ipc(path)
            if path.stat().st_size == 0:
                # What write() makes of an empty stream: zero columns, zero rows.
                return pa.schema([]), iter(())
            stream = pa.input_stream(str(path), compression=self.compression)
            if self.format == "csv":
                reader = _csv().open_csv(
                    stream,
                    read_options=_csv().ReadOptions(block_size=sizer.target_bytes),
                    parse_options=_csv().ParseOptions(delimiter=self.delimiter),
                    # Only an empty unquoted field is NULL ("" is the empty string), as the
                    # writer and PostgreSQL's COPY write them: "NA" or "null" stay text.
                    convert_options=_csv().ConvertOptions(
                        null_values=[""], strings_can_be_null=True,
                        quoted_strings_can_be_null=False,
                    ),
                )
            else:
                import pyarrow.json as pj

                reader = pj.open_json(
                    stream, read_options=pj.ReadOptions(block_size=sizer.target_bytes)
                )
            return reader.schema, _reader_batches(reader)

    def _guarded(
        self, stream: Iterator[pa.RecordBatch], sizer: BatchSizer, schema: pa.Schema
    ) -> Iterator[pa.RecordBatch]:
        where = f"reading {self.path.name}"
        pool = pa.default_memory_pool()
        try:
            while True:
                # The consumer is done with the last batch. mimalloc (pyarrow's default pool)
                # keeps freed pages for reuse: measured, that doubles or triples the RSS of a
                # Parquet read unless they are handed back after every batch (~20 us each).
                pool.release_unused()
                # Only the reader's own work is translated, never the consumer's (at yield).
                with self._decoding(schema):
                    batch = next(stream, None)
                if batch is None:
                    return
                sizer.check_memory(where)
                yield batch
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

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
    def _decoding(self, schema: pa.Schema | None) -> Iterator[None]:
        """Turn pyarrow's errors while decoding into membound's, each with what to do."""
        kind = _FORMAT_NAMES[self.format]
        try:
            yield
        except (MemboundError, MemoryError):
            raise
        except PermissionError as exc:
            raise SourceError(
                f"cannot read {self.path}: {exc.strerror}; check its permissions"
            ) from None
        except pa.ArrowNotImplementedError as exc:
            raise SourceError(
                f"{self.path} uses a {kind} feature pyarrow {pa.__version__} cannot read "
                f"({exc}); rewrite it with a current tool or upgrade pyarrow"
            ) from None
        except (pa.ArrowException, OSError, EOFError) as exc:
            message = str(exc)
            column = _bad_column(message, schema)
            if column is not None:
                field = schema.field(column) if schema is not None else None
                guessed = f" ({field.type} from the file's first block)" if field else ""
                raise SchemaError(
                    f"column {column!r} of {self.path} holds a value that does not fit its "
                    f"type{guessed}: {message}; fix that value, or convert the file to Parquet "
                    "with explicit column types"
                ) from None
            raise CorruptFileError(
                f"{self.path} cannot be read as {kind} ({message}); the file may be truncated "
                "or in another format than its extension says: write it again, or rename it "
                "to the extension of its real format"
            ) from None

    def _check_table(self, name: str | None, *, writing: bool = False) -> None:
        if name is None or name in (self.stem, self.path.name, self.url.table):
            return
        if writing:
            raise ConfigurationError(
                f"{self.path.name} holds one table, {self.stem!r}: the path says where rows go; "
                f"pass table=None or {self.stem!r} instead of {name!r}"
            )
        if is_query(name):
            raise ConfigurationError(
                f"{self.path.name} is a file, which runs no SQL; load it into a database "
                "(e.g. membound copy it into sqlite:///work.db) or open it with DuckDB "
                f"(SELECT ... FROM '{self.path}') to query it"
            )
        raise NotFoundError(
            f"{self.path.name} holds one table, {self.stem!r}; pass None or {self.stem!r} "
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
        """Write ``batches`` to the file through a temporary file swapped in at the end.

        ``mode``: ``"fail"`` refuses an existing file (:class:`TargetExistsError`);
        ``"replace"`` swaps the new file in; ``"append"`` copies the old rows and then the new
        ones into the new file (batches must match the file's schema, else
        :class:`SchemaError`); ``"upsert"`` raises :class:`ConfigurationError`. Memory: one
        incoming batch, plus one row group (a quarter of the budget) for Parquet. Any failure,
        including one raised by ``batches`` itself, leaves the old file untouched.
        """
        if mode == "upsert":
            raise ConfigurationError(
                "files have no keys to upsert on; use mode='replace' or mode='append', or "
                "write to a database"
            )
        check_mode(mode, key)
        self._check_table(table, writing=True)
        target = self.path
        if not target.parent.is_dir():
            raise TargetError(
                f"the directory {target.parent} does not exist; create it first "
                f"(mkdir -p {target.parent})"
            )
        if target.is_dir():
            raise TargetError(f"{target} is a directory; name a file to write")
        existed = target.exists()
        if existed and mode == "fail":
            raise TargetExistsError(
                f"{target} already exists; use --mode replace (mode='replace') to overwrite it "
                "or --mode append to add to it"
            )
        sizer = self._budget(budget).sizer()
        result = WriteResult(table=str(target), mode=mode, created=not existed)
        temp = _create_temp(target)
        try:
            self._write_temp(temp, batches, sizer, result, append=existed and mode == "append")
            _fsync(temp)
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        _fsync_dir(target.parent)
        return result

    def _write_temp(
        self,
        temp: Path,
        batches: Iterable[pa.RecordBatch],
        sizer: BatchSizer,
        result: WriteResult,
        *,
        append: bool,
    ) -> None:
        old_schema = self.schema() if append else None
        # An empty old file has nothing to keep (and, for CSV, no header to reuse).
        keep_old = old_schema is not None and len(old_schema) > 0
        stream = iter(batches)
        first = next(stream, None)
        if first is None:
            schema = old_schema or getattr(batches, "schema", None) or pa.schema([])
        else:
            schema = first.schema
            if keep_old:
                _check_names(old_schema, schema, ordered=self.format != "jsonl")
                if self.format in ("parquet", "arrow"):
                    schema = old_schema
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
            where = f"writing {self.path.name}"
            # The caller's iterator runs outside _encoding: its own errors pass unchanged.
            for batch in _chain(first, stream) if first is not None else ():
                batch = _conform(batch, schema)
                with self._encoding():
                    sink.write(batch)
                result.rows += batch.num_rows
                result.batches += 1
                result.bytes += batch_nbytes(batch)
                del batch
                pa.default_memory_pool().release_unused()  # see _guarded
                sizer.check_memory(where)
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
            kind = _FORMAT_NAMES[self.format]
            raise TargetError(
                f"cannot write {self.path} as {kind} ({exc}); the file is left as it was. If a "
                "column's type is the cause, cast it in the query or write another format "
                "(Parquet and Arrow hold every Arrow type)"
            ) from None

    def _sink(self, temp: Path, schema: pa.Schema, sizer: BatchSizer, *, header: bool) -> _Sink:
        options = self.url.options
        if self.format == "parquet":
            share = int(sizer.budget.max_memory * ROW_GROUP_SHARE)
            group_bytes = max(MIN_ROW_GROUP_BYTES, min(MAX_ROW_GROUP_BYTES, share))
            compression = options.get("compression", DEFAULT_PARQUET_COMPRESSION)
            return _ParquetSink(temp, schema, group_bytes, compression)
        if self.format == "arrow":
            return _IPCSink(temp, schema, options.get("compression"), self.path.suffix)
        stream = pa.output_stream(str(temp), compression=self.compression)
        if self.format == "csv":
            return _CSVSink(stream, schema, self.delimiter, header=header)
        return _JSONLSink(stream)


# ---------------------------------------------------------------------- readers


def _csv() -> Any:
    import pyarrow.csv

    return pyarrow.csv


def _reader_batches(reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    try:
        yield from reader
    finally:
        reader.close()


def _parquet_file(path: Path, buffer_size: int) -> Any:
    import pyarrow.parquet as pq

    # pre_buffer=False and a read buffer: pages stream in, instead of whole column chunks of a
    # row group being read ahead (pyarrow's default, which can exceed any small budget).
    pf = pq.ParquetFile(str(path), pre_buffer=False, buffer_size=buffer_size)
    if _POOLX:
        from pyarrow._parquet import ParquetReader
        pf.reader.close()
        pf.reader = ParquetReader(memory_pool=getattr(pa, _POOLX + '_memory_pool')())
        pf.reader.open(str(path), buffer_size=buffer_size, pre_buffer=False)
    return pf


def _read_parquet(path: Path, sizer: BatchSizer) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    import pyarrow.parquet as pq

    columns = len(pq.read_schema(str(path))) or 1
    buffer = max(MIN_PARQUET_BUFFER, min(MAX_PARQUET_BUFFER, sizer.target_bytes // columns))
    pf = _parquet_file(path, buffer)
    return pf.schema_arrow, _parquet_batches(pf, sizer)


def _parquet_batches(pf: Any, sizer: BatchSizer) -> Iterator[pa.RecordBatch]:
    """Row group by row group, each read in batches of ``sizer.target_bytes`` worth of rows.

    Row widths come from the row group's metadata and from the batches already seen, whichever
    is wider: the metadata holds encoded sizes, which a dictionary-encoded column can make
    hundreds of times smaller than its decoded Arrow size, so the first row group is probed.
    """
    try:
        for index in range(pf.num_row_groups):
            meta = pf.metadata.row_group(index)
            if meta.num_rows == 0:
                continue
            if sizer.bytes_per_row is None:
                probe = next(pf.iter_batches(batch_size=64, row_groups=[index]), None)
                if probe is not None and probe.num_rows:
                    sizer.observe(probe.num_rows, batch_nbytes(probe))
                del probe
            width = max(meta.total_byte_size / meta.num_rows, sizer.bytes_per_row or 0.0, 1.0)
            rows = max(1, min(meta.num_rows, int(sizer.target_bytes / width)))
            # One thread: each pool thread keeps its own mimalloc heap, which release_unused()
            # on this thread cannot empty (measured: +50% RSS for a 3-column file).
            yield from pf.iter_batches(batch_size=rows, row_groups=[index], use_threads=False)
    finally:
        pf.close()


def _open_ipc(path: Path) -> tuple[Any, mmap.mmap, pa.Buffer]:
    """Memory-map an Arrow IPC file and open it as a file or a stream, by its magic bytes."""
    with open(path, "rb") as f:
        head = f.read(len(ARROW_FILE_MAGIC))
        if not head:
            raise CorruptFileError(f"{path} is empty; an Arrow IPC file holds at least a schema")
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    buffer = pa.py_buffer(mapped)
    if head == ARROW_FILE_MAGIC:
        return pa.ipc.open_file(buffer), mapped, buffer
    return pa.ipc.open_stream(buffer), mapped, buffer


def _read_ipc(path: Path) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    reader, mapped, buffer = _open_ipc(path)
    return reader.schema, _ipc_batches(reader, mapped, buffer.address)


def _ipc_batches(reader: Any, mapped: mmap.mmap, base: int) -> Iterator[pa.RecordBatch]:
    """Zero-copy batches out of the map. Pages a consumer touched stay resident (and count in
    RSS) until unmapped, so once the next batch is asked for, the pages wholly below the
    previous batch's end are dropped: clean file pages, re-read from the page cache if the
    consumer still looks at them."""
    if isinstance(reader, pa.ipc.RecordBatchFileReader):
        stream: Iterable[pa.RecordBatch] = (
            reader.get_batch(i) for i in range(reader.num_record_batches)
        )
    else:
        stream = reader
    released = 0
    for batch in stream:
        yield batch
        end = _mapped_end(batch, base, len(mapped))
        upto = end - end % mmap.PAGESIZE
        if upto > released and hasattr(mmap, "MADV_DONTNEED"):
            mapped.madvise(mmap.MADV_DONTNEED, released, upto - released)
            released = upto


def _mapped_end(batch: pa.RecordBatch, base: int, size: int) -> int:
    end = 0
    for column in batch.columns:
        for buf in column.buffers():
            # Compressed IPC bodies are decompressed into the heap, outside the map.
            if buf is not None and base <= buf.address < base + size:
                end = max(end, buf.address - base + buf.size)
    return end


def _bad_column(message: str, schema: pa.Schema | None) -> str | None:
    """The column a pyarrow CSV/JSON conversion error names, if it names one."""
    if schema is None:
        return None
    if match := _CSV_COLUMN.search(message):
        index = int(match.group(1))
        return schema.names[index] if index < len(schema) else None
    if (match := _JSON_COLUMN.search(message)) and "changed from" in message:
        return match.group(1)
    return None


# ---------------------------------------------------------------------- writers


class _Sink:
    """Writes batches into the temporary file. ``abort`` releases it after a failure."""

    def write(self, batch: pa.RecordBatch) -> None:
        raise NotImplementedError

    def copy_raw(self, path: Path) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


class _ParquetSink(_Sink):
    """Gathers batches up to ``group_bytes`` and writes them as one row group, so the writer
    never holds more than one row group (plus the batch that completes it)."""

    def __init__(self, path: Path, schema: pa.Schema, group_bytes: int, compression: str):
        import pyarrow.parquet as pq

        self.group_bytes = group_bytes
        self.pending: list[pa.RecordBatch] = []
        self.pending_bytes = 0
        try:
            kw = {"memory_pool": getattr(pa, _POOLX + '_memory_pool')()} if _POOLX else {}
            self.writer = pq.ParquetWriter(str(path), schema, compression=compression, **kw)
        except (pa.ArrowException, ValueError) as exc:
            raise ConfigurationError(
                f"cannot write Parquet with compression={compression!r} ({exc}); use zstd, "
                "snappy, gzip, lz4, brotli or none"
            ) from None

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        self.pending.append(batch)
        self.pending_bytes += batch_nbytes(batch)
        if self.pending_bytes >= self.group_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        group = pa.Table.from_batches(self.pending)  # zero-copy
        # A batch far above the target (one came in huge) is split into several row groups.
        groups = max(1, round(self.pending_bytes / self.group_bytes))
        self.writer.write_table(group, row_group_size=-(-group.num_rows // groups))
        self.pending.clear()
        self.pending_bytes = 0
        del group
        pa.default_memory_pool().release_unused()

    def close(self) -> None:
        self._flush()
        self.writer.close()

    def abort(self) -> None:
        self.pending.clear()
        with contextlib.suppress(Exception):
            self.writer.close()


class _IPCSink(_Sink):
    def __init__(self, path: Path, schema: pa.Schema, compression: str | None, suffix: str):
        options = pa.ipc.IpcWriteOptions(compression=compression)
        self.file = pa.OSFile(str(path), "wb")
        # ".arrows" is the stream format by convention; everything else gets the file format,
        # which readers can memory-map and seek in.
        opener = pa.ipc.new_stream if suffix.lower() == ".arrows" else pa.ipc.new_file
        self.writer = opener(self.file, schema, options=options)

    def write(self, batch: pa.RecordBatch) -> None:
        self.writer.write_batch(batch)

    def close(self) -> None:
        self.writer.close()
        self.file.close()


class _CSVSink(_Sink):
    """Binary columns are written as base64 text: CSV holds text only."""

    def __init__(self, stream: pa.NativeFile, schema: pa.Schema, delimiter: str, header: bool):
        self.stream = stream
        self.schema = pa.schema(
            [f.with_type(pa.string()) if _is_binary(f.type) else f for f in schema]
        )
        self.header = header and len(schema) > 0
        self.delimiter = delimiter
        self.writer: Any = None

    def copy_raw(self, path: Path) -> None:
        _copy_raw(path, self.stream)

    def write(self, batch: pa.RecordBatch) -> None:
        columns = [_base64(c) if _is_binary(c.type) else c for c in batch.columns]
        self._writer().write(pa.RecordBatch.from_arrays(columns, schema=self.schema))

    def _writer(self) -> Any:
        # Made on first use, after copy_raw: CSVWriter writes the header as it is created.
        if self.writer is None:
            options = _csv().WriteOptions(include_header=self.header, delimiter=self.delimiter)
            self.writer = _csv().CSVWriter(self.stream, self.schema, write_options=options)
        return self.writer

    def close(self) -> None:
        if len(self.schema):
            self._writer().close()
        self.stream.close()


class _JSONLSink(_Sink):
    """One JSON object per line: bytes as base64, dates and times as ISO 8601, Decimal as a
    string, NaN and infinities as null (JSON has none)."""

    def __init__(self, stream: pa.NativeFile):
        self.stream = stream
        self.dumps = _json_dumps()

    def copy_raw(self, path: Path) -> None:
        _copy_raw(path, self.stream)

    def write(self, batch: pa.RecordBatch) -> None:
        names = batch.schema.names
        columns = []
        for column in batch.columns:
            if pa.types.is_floating(column.type):
                column = pc.if_else(pc.is_finite(column), column, pa.scalar(None, column.type))
            columns.append(column.to_pylist())
        dumps = self.dumps
        rows = zip(*columns, strict=True)
        self.stream.write(b"".join(dumps(dict(zip(names, row, strict=True))) for row in rows))

    def close(self) -> None:
        self.stream.close()


def _is_binary(arrow_type: pa.DataType) -> bool:
    return (pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type)
            or pa.types.is_fixed_size_binary(arrow_type) or pa.types.is_binary_view(arrow_type))


def _base64(column: pa.Array) -> pa.Array:
    return pa.array(
        [None if v is None else base64.b64encode(v).decode("ascii") for v in column.to_pylist()],
        pa.string(),
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return str(value)


def _json_dumps() -> Callable[[dict[str, Any]], bytes]:
    try:
        import orjson
    except ImportError:
        encoder = json.JSONEncoder(ensure_ascii=False, default=_json_default,
                                   separators=(",", ":"))
        return lambda row: (encoder.encode(row) + "\n").encode("utf-8")
    option = orjson.OPT_APPEND_NEWLINE
    return lambda row: orjson.dumps(row, default=_json_default, option=option)


def _copy_raw(path: Path, out: pa.NativeFile) -> None:
    """Copy an old CSV/JSONL file's bytes (decompressed) into ``out``, ending in a newline."""
    compression = _COMPRESSION_SUFFIXES.get(path.suffix.lower())
    last = b"\n"
    with pa.input_stream(str(path), compression=compression) as source:
        while chunk := source.read(COPY_CHUNK_BYTES):
            out.write(chunk)
            last = chunk[-1:]
    if last != b"\n":
        out.write(b"\n")


def _check_names(old: pa.Schema, new: pa.Schema, *, ordered: bool) -> None:
    """Appended batches must carry the file's columns; name the first that differs."""
    same = old.names == new.names if ordered else set(old.names) == set(new.names)
    if same:
        return
    missing = [n for n in old.names if n not in new.names]
    extra = [n for n in new.names if n not in old.names]
    if missing or extra:
        what = (f"column {missing[0]!r} is missing from the new rows" if missing
                else f"column {extra[0]!r} is not in the file")
    else:
        what = f"the columns come in another order ({', '.join(new.names)})"
    raise SchemaError(
        f"cannot append: {what}; the file has columns {', '.join(old.names)}. Select the same "
        "columns, or use mode='replace'"
    )


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` with the file's schema: columns cast where no value changes, else SchemaError."""
    if batch.schema.equals(schema):
        return batch
    _check_names(schema, batch.schema, ordered=True)
    arrays = []
    for field, column in zip(schema, batch.columns, strict=True):
        if column.type != field.type:
            try:
                column = column.cast(field.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise SchemaError(
                    f"column {field.name!r} is {column.type} in this batch but {field.type} in "
                    f"the file, and its values do not convert ({exc}); cast it in the query or "
                    "use mode='replace'"
                ) from None
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _chain(first: pa.RecordBatch, rest: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    yield first
    yield from rest


def _create_temp(target: Path) -> Path:
    """A new empty file beside ``target`` (same filesystem, so os.replace is atomic), created
    with the usual 0666-minus-umask permissions rather than mkstemp's 0600."""
    for _ in range(100):
        temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.membound-tmp")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise TargetError(f"cannot create a file in {target.parent}: {exc.strerror}; "
                              "check the directory's permissions") from None
        os.close(fd)
        return temp
    raise TargetError(f"cannot find a free temporary name beside {target}")  # pragma: no cover


def _fsync(path: Path) -> None:
    """Flush the new file to disk before the rename, so a crash cannot leave it empty."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not possible on every OS/filesystem; best effort
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

