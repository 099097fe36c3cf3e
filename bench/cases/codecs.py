"""Codecs on the `events` data: size ratio, encode and decode speed, beside what a user would
otherwise write (stdlib json + gzip, pickle, the compression libraries called directly).

Every contestant is one codec on one input, in its own process (``contestants/codec_run.py``):

- ``cells:CODEC``: the ``payload`` column, one value per cell, as ``copy --compress`` encodes it;
- ``pages:CODEC``: the same column, 1000 cells per value (a ``list[str]``, or a ``RecordBatch``
  for Arrow);
- ``rows:CODEC``: whole rows as tuples, 1000 per value, as ``Cache.query`` stores a batch (a
  ``RecordBatch`` for Arrow).

The timing is in-process (CPU-bound: the median of several passes over all values); the harness
still takes each process's peak RSS from the OS and checks that what the codec decoded is what
the database holds (a checksum of the cells or rows, in order).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cases.base import CONTESTANTS_DIR, Case, Contestant, Dataset, RunSpec
from checksum import Verification
from data import build_sqlite
from workloads import MEMBOUND_CODECS, PEER_CODECS, Checksum, read_payloads, read_rows

SCRIPT = CONTESTANTS_DIR / "codec_run.py"
WARM_UP_READ_BYTES = 16 * 1024 * 1024

INPUTS = {
    "cells": "`payload` column, one value per cell",
    "pages": "`payload` column, 1000 cells per value",
    "rows": "`events` rows (tuples), 1000 rows per value",
}
# Which checksum each input's decoded values must match.
REFERENCE_OF_INPUT = {"cells": "payload", "pages": "payload", "rows": "rows"}

PEER_LABELS = {
    "zlib.compress": "`zlib.compress` (stdlib, level 6)",
    "gzip.compress": "`gzip.compress` (stdlib, level 9)",
    "lz4.frame": "`lz4.frame.compress`",
    "zstandard": "`zstandard.ZstdCompressor().compress` (level 3)",
    "json+gzip": "`json.dumps` + `gzip.compress` (stdlib)",
    "pickle": "`pickle.dumps` (protocol 4)",
    "pickle+gzip": "`pickle.dumps` + `gzip.compress`",
    "msgpack+zstandard": "`msgpack.packb` + `zstandard` (by hand)",
    "arrow-ipc-lz4": "pyarrow IPC stream, `compression='lz4'`",
    "arrow-ipc-zstd": "pyarrow IPC stream, `compression='zstd'`",
}

# Pairs shown as "membound / the same thing by hand": (input, membound codec, peer).
PAIRS = (
    ("cells", "zlib", "zlib.compress"),
    ("cells", "gzip", "gzip.compress"),
    ("cells", "lz4", "lz4.frame"),
    ("cells", "zstd", "zstandard"),
    ("cells", "zstd+dict", "zstandard"),
    ("cells", "msgpack+gzip", "json+gzip"),
    ("cells", "msgpack", "pickle"),
    ("pages", "msgpack+zstd", "msgpack+zstandard"),
    ("pages", "msgpack+gzip", "json+gzip"),
    ("pages", "arrow+zstd", "arrow-ipc-zstd"),
    ("pages", "arrow+lz4", "arrow-ipc-lz4"),
    ("rows", "msgpack+zstd", "msgpack+zstandard"),
    ("rows", "msgpack+gzip", "json+gzip"),
    ("rows", "msgpack+gzip", "pickle+gzip"),
    ("rows", "msgpack", "pickle"),
    ("rows", "arrow+zstd", "arrow-ipc-zstd"),
    ("rows", "arrow+lz4", "arrow-ipc-lz4"),
)


def _membound_label(codec: str) -> str:
    if codec == "zstd+dict":
        return "**membound `zstd` + trained dictionary**"
    return f"**membound `{codec}`**"


def _contestant(input_name: str, codec: str, role: str) -> Contestant:
    def command(spec: RunSpec) -> list[str]:
        return [
            sys.executable,
            str(SCRIPT),
            spec.dataset.source,
            str(spec.output),
            "--input",
            input_name,
            "--codec",
            codec,
            "--timing",
            str(spec.timing_path),
        ]

    label = _membound_label(codec) if role == "membound" else PEER_LABELS[codec]
    return Contestant(
        name=f"{input_name}:{codec}",
        label=label,
        role=role,  # type: ignore[arg-type]
        command=command,
        baseline_command=(
            sys.executable,
            str(SCRIPT),
            "-",
            "-",
            "--input",
            input_name,
            "--codec",
            codec,
            "--imports-only",
        ),
        reference=REFERENCE_OF_INPUT[input_name],
    )


def _contestants() -> tuple[Contestant, ...]:
    contestants = []
    for input_name in INPUTS:
        contestants += [_contestant(input_name, c, "membound") for c in MEMBOUND_CODECS[input_name]]
        contestants += [_contestant(input_name, c, "peer") for c in PEER_CODECS[input_name]]
    return tuple(contestants)


def prepare(rows: int) -> Dataset:
    path = build_sqlite(rows)
    payloads = read_payloads(str(path))
    payload_reference = Checksum()
    payload_reference.add_all(payloads)
    row_reference = Checksum()
    row_reference.add_all(read_rows(str(path)))
    if row_reference.count != rows:
        raise SystemExit(f"{path} holds {row_reference.count} rows, not {rows}; delete it")
    payload_bytes = sum(len(payload.encode()) for payload in payloads)
    with open(path, "rb") as database:  # into the page cache, for every contestant alike
        while database.read(WARM_UP_READ_BYTES):
            pass
    references = {
        name: Verification(rows=reference.count, checksum=reference.hexdigest())
        for name, reference in (("payload", payload_reference), ("rows", row_reference))
    }
    return Dataset(
        rows=rows,
        source=str(path),
        table="events",
        reference=references["rows"],
        references=references,
        facts={
            "SQLite file": f"{path.stat().st_size / 1e6:,.0f} MB",
            "payload column": f"{payload_bytes / 1e6:,.1f} MB of UTF-8, "
            f"{payload_bytes / len(payloads):.0f} bytes a cell on average",
        },
    )


def verify(output: Path, dataset: Dataset) -> Verification:
    found = json.loads(output.read_text())
    return Verification(rows=found["values"], checksum=found["checksum"])


# -- the report ---------------------------------------------------------------------------------


def _mb(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value / 1e6:,.{digits}f}"


def _speed(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 10 else f"{value:,.1f}"


def _codec_figures(size: dict, name: str) -> dict[str, float | None]:
    from report import _median

    runs = [run for run in size["runs"] if run["contestant"] == name and run["details"]]
    runs = [run for run in runs if run["status"] == "ok"]
    if not runs:
        return {}
    details = [run["details"] for run in runs]
    input_bytes = details[0]["input_bytes"]
    encoded = _median([d["encoded_bytes"] for d in details])
    encode_s = _median([d["encode_seconds"] for d in details])
    decode_s = _median([d["decode_seconds"] for d in details])
    peaks = [run["run"]["peak_rss_bytes"] for run in runs]
    loaded = _median([d["loaded_rss_bytes"] for d in details])
    peak = _median(peaks)
    assert encoded and encode_s and decode_s
    return {
        "input_bytes": input_bytes,
        "encoded": encoded,
        "ratio": input_bytes / encoded,
        "encode_mbs": input_bytes / encode_s / 1e6,
        "decode_mbs": input_bytes / decode_s / 1e6,
        "peak": peak,
        "loaded": loaded,
        "above_loaded": None if peak is None or loaded is None else peak - loaded,
        "passes": _median([d["passes"] for d in details]),
        "dictionary_bytes": details[0].get("dictionary_bytes"),
        "dictionary_train_seconds": _median([d.get("dictionary_train_seconds") for d in details]),
    }


def render_body(results: dict) -> list[str]:
    from report import _data_cell, _problems, summarise

    lines: list[str] = []
    for size in results["sizes"]:
        summaries = {s.name: s for s in summarise(results, size)}
        figures = {name: _codec_figures(size, name) for name in summaries}
        facts = "; ".join(f"{key} {value}" for key, value in size["facts"].items())
        lines += [f"### {size['rows']:,} rows ({facts})", ""]
        for input_name, title in INPUTS.items():
            names = [n for n in summaries if n.startswith(input_name + ":")]
            if not names:
                continue
            first = next((figures[n] for n in names if figures[n]), {})
            basis = (
                "MB of UTF-8 text"
                if input_name != "rows"
                else "MB of the rows as msgpack (pages of tuples, no compression)"
            )
            lines += [
                f"#### {title}",
                "",
                f"Input: {_mb(first.get('input_bytes'))} {basis}; ratio and MB/s are counted "
                "against it for every codec.",
                "",
                "| codec | encoded (MB) | ratio | encode MB/s | decode MB/s | peak RSS (MB) "
                "| import baseline (MB) | data loaded (MB) | peak above data (MB) | data |",
                "|---|--:|--:|--:|--:|--:|--:|--:|--:|:-:|",
            ]
            for name in names:
                summary, figure = summaries[name], figures[name]
                lines.append(
                    "| "
                    + " | ".join(
                        [
                            summary.label,
                            _mb(figure.get("encoded"), 2),
                            f"{figure['ratio']:.2f}" if figure else "—",
                            _speed(figure.get("encode_mbs")),
                            _speed(figure.get("decode_mbs")),
                            _mb(figure.get("peak"), 0),
                            "—" if summary.baseline_mb is None else f"{summary.baseline_mb:,.0f}",
                            _mb(figure.get("loaded"), 0),
                            _mb(figure.get("above_loaded"), 0),
                            _data_cell(summary),
                        ]
                    )
                    + " |"
                )
            lines.append("")
            dictionary = figures.get(f"{input_name}:zstd+dict") or {}
            if dictionary.get("dictionary_bytes"):
                lines += [
                    f"The dictionary: {dictionary['dictionary_bytes'] / 1000:.0f} kB, trained "
                    "with `train_zstd_dictionary` on the payloads of the 40,000 rows that follow "
                    "the measured ones (never on the measured values) in "
                    f"{dictionary['dictionary_train_seconds']:.1f} s, not counted.",
                    "",
                ]
        pair_lines = []
        for input_name, ours, theirs in PAIRS:
            mine = figures.get(f"{input_name}:{ours}")
            peer = figures.get(f"{input_name}:{theirs}")
            if not mine or not peer:
                continue
            pair_lines.append(
                f"| {input_name} | {_membound_label(ours)} | {PEER_LABELS[theirs]} | "
                f"{mine['encoded'] / peer['encoded']:.2f} | "
                f"{mine['encode_mbs'] / peer['encode_mbs']:.2f} | "
                f"{mine['decode_mbs'] / peer['decode_mbs']:.2f} |"
            )
        if pair_lines:
            lines += [
                "**membound / the peer doing the same by hand** (size: below 1 is smaller; "
                "speed: above 1 is faster)",
                "",
                "| input | membound | peer | size × | encode speed × | decode speed × |",
                "|---|---|---|--:|--:|--:|",
                *pair_lines,
                "",
            ]
        problems = _problems(list(summaries.values()))
        if problems:
            lines += ["Failures and mismatches:", "", *problems, ""]
    return lines


CODECS = Case(
    name="codecs",
    title="Codecs on the `events` data: size and speed",
    description=(
        "Each membound codec (`membound.codecs.get_codec(NAME)`, `encode`/`decode`) beside what a "
        "user would otherwise write, on three inputs from the `events` table: the `payload` "
        "column one cell per value (as `copy --compress` encodes a column), the same column 1000 "
        "cells per value, and whole rows as tuples, 1000 per value (as `Cache.query` stores a "
        "batch). Compressors alone take the UTF-8 bytes of a cell; Arrow codecs take a "
        "`RecordBatch` of the same page, built beforehand (not counted), and give one back. "
        "Every contestant is its own process (`bench/contestants/codec_run.py`): it builds its "
        "values, then times alternating encode and decode passes over all of them (at least 3 "
        "of each and at least 1 s per direction, up to 15), the median pass counting; the table "
        "gives the median of those over the runs. **ratio** is the input's size over the "
        "encoded size (above 1: smaller), membound's 9-byte header included; **MB/s** is input "
        "megabytes per second, so every codec on one input is counted against the same bytes. "
        "Memory is the OS's peak RSS of the whole process; **data loaded** is its resident size "
        "once the values are built, and **peak above data** what encoding and decoding added "
        "(the encoded payloads of one pass are held until the next, decoded values are dropped "
        "at once). Not measured with tracemalloc, which would slow the timed passes. Each decoded "
        "value is checked: a checksum of the cells or rows, in order, must match the database's. "
        "Every codec runs on one thread except pyarrow's IPC writer, which compresses the column "
        "buffers on its thread pool by default (up to 1.3 cores on rows here); gzip.compress is "
        "called at its default level, 9, membound's gzip at 6."
    ),
    contestants=_contestants(),
    packages=("membound", "msgpack", "orjson", "lz4", "zstandard", "pyarrow"),
    prepare=prepare,
    verify=verify,
    output_suffix=".json",
    default_rows=(200_000,),
    uses_budget=False,
    render_body=render_body,
)
