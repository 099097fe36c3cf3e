"""One codec (membound's, or what a user would write by hand) on one input of the `events` data.

    python bench/contestants/codec_run.py DB.sqlite OUT.json --input cells --codec msgpack+zstd

Inputs (see ``bench/cases/codecs.py``):

- ``cells``: the ``payload`` column, one value per cell (as ``copy --compress payload=...``
  encodes it). Serializers take the ``str``; compressors alone take its UTF-8 bytes.
- ``pages``: the same column, 1000 cells per value: a ``list[str]``, or for ``arrow`` codecs a
  one-column ``RecordBatch``.
- ``rows``: whole rows, 1000 per value (as ``Cache.query`` stores a batch): a list of tuples, or
  for ``arrow`` codecs a ``RecordBatch``.

The values are built before anything is timed. Then, in turns, an encode pass (every value
encoded, the payloads kept) and a decode pass (every payload decoded, each value dropped at
once), at least ``MIN_PASSES`` of each and until each direction has run ``MIN_SECONDS``; the
median pass counts. The garbage collector stays on, but the loaded data is frozen out of its
reach (``gc.freeze``), so that collections do not scan the input. Finally one untimed pass
decodes everything into the checksum written to OUT (the harness compares it with the source's).

Memory: the harness takes this process's peak RSS from the OS; this script adds its resident
size once the input is loaded (``loaded_rss_bytes``), so that the report can show the peak above
the loaded data.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import pickle
import resource
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lz4.frame
import msgpack
import pyarrow as pa
import zstandard

from membound.codecs import get_codec, train_zstd_dictionary

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/, for the shared modules
import data  # noqa: E402
import workloads  # noqa: E402

MIN_PASSES = 3
MAX_PASSES = 15
MIN_SECONDS = 1.0

# The trained dictionary: samples from rows after the measured ones (the generator of
# bench/data.py gives them without a database), so the dictionary never saw the measured values.
DICTIONARY_SAMPLES = 40_000
DICTIONARY_SIZE = "32KB"

ROW_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("user_id", pa.int64()),
        ("ts", pa.string()),
        ("kind", pa.string()),
        ("amount", pa.float64()),
        ("payload", pa.string()),
        ("flag", pa.int64()),
    ]
)
PAYLOAD_SCHEMA = pa.schema([("payload", pa.string())])

Encode = Callable[[Any], Any]
Decode = Callable[[Any], Any]

CODECS_BY_INPUT = {
    name: workloads.MEMBOUND_CODECS[name] + workloads.PEER_CODECS[name]
    for name in workloads.MEMBOUND_CODECS
}
COMPRESSORS_ALONE = ("zlib", "gzip", "lz4", "zstd", "zstd+dict")
BYTES_PEERS = ("zlib.compress", "gzip.compress", "lz4.frame", "zstandard")


def value_form(codec: str) -> str:
    """What a codec takes: ``bytes`` (compressors), ``arrow`` (record batches) or ``python``."""
    if codec in COMPRESSORS_ALONE or codec in BYTES_PEERS:
        return "bytes"
    if codec.startswith("arrow"):
        return "arrow"
    return "python"


def _train_dictionary(after_row: int) -> Any:
    rows = range(after_row + 1, after_row + 1 + DICTIONARY_SAMPLES)
    samples = [data.event_row(g)[5].encode() for g in rows]
    return train_zstd_dictionary(samples, size=DICTIONARY_SIZE)


def _arrow_ipc(compression: str) -> tuple[Encode, Decode]:
    options = pa.ipc.IpcWriteOptions(compression=compression)

    def encode(batch: pa.RecordBatch) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema, options=options) as writer:
            writer.write_batch(batch)
        return sink.getvalue().to_pybytes()

    def decode(payload: bytes) -> pa.RecordBatch:
        return pa.ipc.open_stream(pa.py_buffer(payload)).read_next_batch()

    return encode, decode


def make_codec(codec: str, input_rows: int) -> tuple[Encode, Decode, dict[str, Any]]:
    """(encode, decode, facts) for a codec name of ``CODECS_BY_INPUT``."""
    facts: dict[str, Any] = {}
    if codec == "zstd+dict":
        started = time.perf_counter()
        dictionary = _train_dictionary(input_rows)
        facts["dictionary_bytes"] = len(dictionary.data)
        facts["dictionary_train_seconds"] = time.perf_counter() - started
        membound_codec = get_codec("zstd", dictionary=dictionary)
        return membound_codec.encode, membound_codec.decode, facts
    if codec == "zlib.compress":
        return zlib.compress, zlib.decompress, facts
    if codec == "gzip.compress":
        return gzip.compress, gzip.decompress, facts
    if codec == "lz4.frame":
        return lz4.frame.compress, lz4.frame.decompress, facts
    if codec == "zstandard":
        compressor, decompressor = zstandard.ZstdCompressor(), zstandard.ZstdDecompressor()
        return compressor.compress, decompressor.decompress, facts
    if codec == "json+gzip":
        return (
            lambda value: gzip.compress(json.dumps(value).encode()),
            lambda payload: json.loads(gzip.decompress(payload)),
            facts,
        )
    if codec == "pickle":
        return pickle.dumps, pickle.loads, facts
    if codec == "pickle+gzip":
        return (
            lambda value: gzip.compress(pickle.dumps(value)),
            lambda payload: pickle.loads(gzip.decompress(payload)),
            facts,
        )
    if codec == "msgpack+zstandard":
        compressor, decompressor = zstandard.ZstdCompressor(), zstandard.ZstdDecompressor()
        return (
            lambda value: compressor.compress(msgpack.packb(value)),
            lambda payload: msgpack.unpackb(decompressor.decompress(payload)),
            facts,
        )
    if codec == "arrow-ipc-lz4":
        return (*_arrow_ipc("lz4"), facts)
    if codec == "arrow-ipc-zstd":
        return (*_arrow_ipc("zstd"), facts)
    membound_codec = get_codec(codec)
    return membound_codec.encode, membound_codec.decode, facts


def load_values(source: str, input_name: str, form: str) -> tuple[list[Any], int, int]:
    """(values, input bytes, items): the values to encode, the size every codec's ratio and MB/s
    are counted against, and the items (cells or rows) they hold."""
    if input_name in ("cells", "pages"):
        payloads = workloads.read_payloads(source)
        input_bytes = sum(len(payload.encode()) for payload in payloads)
        items = len(payloads)
        if input_name == "cells":
            values: list[Any] = (
                [payload.encode() for payload in payloads] if form == "bytes" else payloads
            )
        elif form == "arrow":
            values = [
                pa.RecordBatch.from_arrays([pa.array(page, pa.string())], schema=PAYLOAD_SCHEMA)
                for page in workloads.pages(payloads)
            ]
        else:
            values = workloads.pages(payloads)
        return values, input_bytes, items
    rows = workloads.read_rows(source)
    row_pages = workloads.pages(rows)
    # The rows' size as msgpack (arrays of their fields, pages as arrays of rows).
    input_bytes = sum(len(msgpack.packb(page)) for page in row_pages)
    if form == "arrow":
        values = [
            pa.RecordBatch.from_arrays(
                [
                    pa.array(column, type=field.type)
                    for column, field in zip(zip(*page, strict=True), ROW_SCHEMA, strict=True)
                ],
                schema=ROW_SCHEMA,
            )
            for page in row_pages
        ]
    else:
        values = row_pages
    return values, input_bytes, len(rows)


def decoded_items(input_name: str, form: str, decoded: Any) -> list[Any]:
    """The cells or rows in one decoded value, for the checksum."""
    if input_name == "cells":
        return [decoded]
    if form == "arrow":
        columns = [column.to_pylist() for column in decoded.columns]
        return columns[0] if input_name == "pages" else list(zip(*columns, strict=True))
    return decoded


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize()


def run(source: str, output: str, input_name: str, codec: str) -> dict[str, Any]:
    form = value_form(codec)
    values, input_bytes, items = load_values(source, input_name, form)
    encode, decode, facts = make_codec(codec, input_rows=items)
    gc.collect()
    gc.freeze()
    loaded_rss = resident_bytes()

    encode_times: list[float] = []
    decode_times: list[float] = []
    payloads: list[Any] = []
    while (
        len(encode_times) < MIN_PASSES or min(sum(encode_times), sum(decode_times)) < MIN_SECONDS
    ) and len(encode_times) < MAX_PASSES:
        payloads = []  # the previous pass's payloads are freed before this one starts
        started = time.perf_counter()
        payloads = [encode(value) for value in values]
        encode_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        for payload in payloads:
            decode(payload)
        decode_times.append(time.perf_counter() - started)

    encoded_bytes = sum(len(payload) for payload in payloads)
    checksum = workloads.Checksum()
    for payload in payloads:
        checksum.add_all(decoded_items(input_name, form, decode(payload)))
    Path(output).write_text(
        json.dumps({"values": checksum.count, "checksum": checksum.hexdigest()})
    )
    encode_s = statistics.median(encode_times)
    decode_s = statistics.median(decode_times)
    return {
        "input": input_name,
        "codec": codec,
        "form": form,
        "values": len(values),
        "items": items,
        "input_bytes": input_bytes,
        "encoded_bytes": encoded_bytes,
        "passes": len(encode_times),
        "encode_seconds": encode_s,
        "decode_seconds": decode_s,
        "encode_passes": encode_times,
        "decode_passes": decode_times,
        "loaded_rss_bytes": loaded_rss,
        **facts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("output")
    parser.add_argument("--input", choices=sorted(CODECS_BY_INPUT), required=True)
    parser.add_argument("--codec", required=True)
    parser.add_argument("--timing", help="write {'work_seconds': ..., 'details': ...} here")
    parser.add_argument("--imports-only", action="store_true", help="exit after the imports")
    args = parser.parse_args()
    if args.codec not in CODECS_BY_INPUT[args.input]:
        parser.error(f"codec {args.codec!r} does not run on input {args.input!r}")
    if args.imports_only:
        return
    started = time.perf_counter()
    details = run(args.source, args.output, args.input, args.codec)
    work_seconds = time.perf_counter() - started
    if args.timing:
        with open(args.timing, "w") as timing:
            json.dump({"work_seconds": work_seconds, "details": details}, timing)


if __name__ == "__main__":
    main()
