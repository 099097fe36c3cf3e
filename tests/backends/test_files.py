"""FileBackend: Parquet, CSV/TSV, JSON Lines and Arrow IPC as byte-bounded sources and sinks."""

from __future__ import annotations

import datetime as dt
import decimal
import gzip
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from membound.backends.files import FileBackend
from membound.errors import (
    ConfigurationError,
    CorruptFileError,
    NotFoundError,
    SchemaError,
    TargetError,
    TargetExistsError,
)
from membound.urls import parse_url

FORMATS = ["parquet", "arrow", "arrows", "feather", "csv", "tsv", "csv.gz", "jsonl"]
BINARY_FORMATS = {"parquet", "arrow", "arrows", "feather"}


def sample_batch(start: int = 0, *, binary: bool = True) -> pa.RecordBatch:
    columns = {
        "id": pa.array([start, start + 1, start + 2, start + 3], pa.int64()),
        "score": pa.array([1.5, -0.25, None, 1e300], pa.float64()),
        "name": pa.array(["plain", "é à 中文", "astral 😀𝄞", None], pa.string()),
        "empty": pa.array(["", None, "x", ""], pa.string()),
        "flag": pa.array([True, False, None, True], pa.bool_()),
        "at": pa.array(
            [dt.datetime(2024, 1, 2, 3, 4, 5, 6), None, dt.datetime(1970, 1, 1),
             dt.datetime(2200, 12, 31, 23, 59, 59)],
            pa.timestamp("us"),
        ),
    }
    if binary:
        columns["blob"] = pa.array([b"\x00\xff", None, b"", b"bytes"], pa.binary())
    return pa.record_batch(columns)


def read_all(path: Path | str, **kwargs) -> pa.Table:
    backend = FileBackend(path)
    batches = list(backend.batches(**kwargs))
    return pa.Table.from_batches(batches, schema=backend.schema()) if batches else None


def temp_files(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".membound-tmp")]


def failing_after(n: int) -> Iterator[pa.RecordBatch]:
    for i in range(n):
        yield sample_batch(i * 4, binary=False)
    raise RuntimeError("source broke mid-way")


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("ext", FORMATS)
def test_round_trip(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"data.{ext}"
    binary = ext in BINARY_FORMATS
    batches = [sample_batch(0, binary=binary), sample_batch(4, binary=binary)]
    result = FileBackend(path).write(None, batches)
    assert (result.rows, result.batches, result.mode, result.created) == (8, 2, "fail", True)
    assert result.bytes == sum(b.nbytes for b in batches)
    assert result.table == str(path)

    got = read_all(path)
    want = pa.Table.from_batches(batches)
    if binary:
        assert got.equals(want)
        return
    assert got.num_rows == 8
    for name in ("id", "score", "name", "empty", "flag"):
        assert got[name].to_pylist() == want[name].to_pylist(), name
    if ext == "jsonl":
        # JSON has no timestamps: ISO 8601 strings (documented).
        assert got["at"].to_pylist()[:3] == ["2024-01-02T03:04:05.000006", None,
                                             "1970-01-01T00:00:00"]
    else:
        assert [v if v is None else v.to_pydatetime() if hasattr(v, "to_pydatetime") else v
                for v in got["at"].to_pylist()] == want["at"].to_pylist()


def test_rows_are_tuples(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    FileBackend(path).write(None, [sample_batch()])
    rows = list(FileBackend(path).rows())
    assert rows[2][:3] == (2, None, "astral 😀𝄞")


def test_csv_binary_is_base64_and_jsonl_types(tmp_path: Path) -> None:
    batch = pa.record_batch({
        "blob": pa.array([b"\x00\xff", None], pa.binary()),
        "price": pa.array([decimal.Decimal("12.30"), None], pa.decimal128(10, 2)),
        "day": pa.array([dt.date(2024, 2, 29), None], pa.date32()),
        "x": pa.array([float("nan"), float("inf")]),
        "tz": pa.array([dt.datetime(2024, 1, 1, tzinfo=dt.UTC), None],
                       pa.timestamp("us", tz="UTC")),
    })
    FileBackend(tmp_path / "b.csv").write(None, [batch])
    assert read_all(tmp_path / "b.csv")["blob"].to_pylist() == ["AP8=", None]

    FileBackend(tmp_path / "t.jsonl").write(None, [batch])
    first = json.loads((tmp_path / "t.jsonl").read_text().splitlines()[0])
    assert first == {"blob": "AP8=", "price": "12.30", "day": "2024-02-29", "x": None,
                     "tz": "2024-01-01T00:00:00+00:00"}


def test_empty_stream_writes_an_empty_file(tmp_path: Path) -> None:
    for ext in FORMATS:
        path = tmp_path / f"empty.{ext}"
        result = FileBackend(path).write(None, iter(()))
        assert result.rows == 0 and path.exists()
        assert list(FileBackend(path).batches()) == []
    # A reader that states its schema keeps it even without rows.
    schema = pa.schema([("a", pa.int64())])
    FileBackend(tmp_path / "s.parquet").write(None, pa.RecordBatchReader.from_batches(schema, []))
    assert FileBackend(tmp_path / "s.parquet").schema() == schema


def test_later_batch_is_cast_when_lossless_else_schema_error(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    first = pa.record_batch({"a": pa.array([1], pa.int64())})
    narrow = pa.record_batch({"a": pa.array([2], pa.int32())})
    FileBackend(path).write(None, [first, narrow])
    assert read_all(path)["a"].to_pylist() == [1, 2]

    bad = pa.record_batch({"a": pa.array(["not a number"])})
    with pytest.raises(SchemaError, match="'a'"):
        FileBackend(path).write(None, [first, bad], mode="replace")
    other = pa.record_batch({"b": pa.array([1], pa.int64())})
    with pytest.raises(SchemaError, match="'a' is missing"):
        FileBackend(path).write(None, [first, other], mode="replace")
    assert read_all(path)["a"].to_pylist() == [1, 2]
    assert temp_files(tmp_path) == []


# ------------------------------------------------------------------ byte-sized batches


def wide_table(rows: int) -> pa.Table:
    ids = pa.array(range(rows), pa.int64())
    return pa.table({"id": ids, "text": pa.array([f"row {i} " + "x" * 90 for i in range(rows)])})


def test_parquet_batches_are_byte_sized(tmp_path: Path) -> None:
    path = tmp_path / "big.parquet"
    table = wide_table(200_000)  # ~21 MB of Arrow data
    pq.write_table(table, path, row_group_size=100_000)  # foreign file, big row groups
    backend = FileBackend(path)
    assert backend.estimate_rows() == 200_000
    budget = "8MB"  # batch target: 8 MB / 16 / 2 = 250 kB for Parquet
    sizes = [(b.num_rows, b.nbytes) for b in backend.batches(budget=budget)]
    assert sum(rows for rows, _ in sizes) == 200_000
    assert len(sizes) > 40
    assert max(nbytes for _, nbytes in sizes) <= 2 * 250_000


def test_parquet_probe_sees_through_dictionary_encoding(tmp_path: Path) -> None:
    # One repeated 1 kB value: a few bytes per row encoded, 1 kB per row decoded.
    path = tmp_path / "dict.parquet"
    pq.write_table(pa.table({"v": ["y" * 1000] * 50_000}), path)
    assert pq.ParquetFile(path).metadata.row_group(0).total_byte_size < 1_000_000
    sizes = [b.nbytes for b in FileBackend(path).batches(budget="8MB")]
    assert max(sizes) <= 2 * 250_000


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_text_formats_stream_in_blocks(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"big.{ext}"
    FileBackend(path).write(None, wide_table(100_000).to_batches(max_chunksize=10_000))
    batches = list(FileBackend(path).batches(budget="4MB"))  # 250 kB blocks
    assert sum(b.num_rows for b in batches) == 100_000
    assert len(batches) > 20
    assert max(b.nbytes for b in batches) <= 2 * 250_000


@pytest.mark.parametrize("ext", ["arrow", "arrows"])
def test_arrow_ipc_big_batch_is_sliced_and_stays_readable(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"one.{ext}"
    table = wide_table(100_000)
    FileBackend(path).write(None, table.combine_chunks().to_batches())  # one ~10 MB batch
    # Hold every batch: pages dropped from the map behind the reader must read back intact.
    batches = list(FileBackend(path).batches(budget="4MB"))
    assert len(batches) > 20 and max(b.nbytes for b in batches) <= 2 * 250_000
    assert pa.Table.from_batches(batches).equals(table)


def test_arrow_format_is_detected_by_magic_bytes(tmp_path: Path) -> None:
    table = pa.table({"a": [1, 2, 3]})
    stream_named_as_file = tmp_path / "s.arrow"
    with pa.ipc.new_stream(stream_named_as_file, table.schema) as writer:
        writer.write_table(table)
    assert read_all(stream_named_as_file).equals(table)
    assert FileBackend(stream_named_as_file).estimate_rows() is None
    assert FileBackend(tmp_path / "t.feather").write(None, table.to_batches()).rows == 3
    assert FileBackend(tmp_path / "t.feather").estimate_rows() == 3


def test_parquet_row_groups_are_sized_in_bytes(tmp_path: Path) -> None:
    path = tmp_path / "rg.parquet"
    batches = wide_table(300_000).to_batches(max_chunksize=5_000)  # ~32 MB in 520 kB batches
    FileBackend(path).write(None, batches, budget="64MB")  # row groups of 4 MB
    meta = pq.ParquetFile(path).metadata
    sizes = [meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)]
    assert 6 <= len(sizes) <= 10
    assert meta.row_group(0).column(0).compression == "ZSTD"
    FileBackend(f"file://{tmp_path}/snappy.parquet?compression=snappy").write(None, batches[:1])
    assert pq.ParquetFile(tmp_path / "snappy.parquet").metadata.row_group(0).column(
        0).compression == "SNAPPY"
    for name in ("bad.parquet", "bad.arrow"):
        with pytest.raises(ConfigurationError, match="compression='nope'"):
            FileBackend(f"file://{tmp_path}/{name}?compression=nope").write(None, batches[:1])
    assert temp_files(tmp_path) == []
    lz4 = f"file://{tmp_path}/c.arrow?compression=lz4"
    FileBackend(lz4).write(None, batches[:3])
    assert pa.Table.from_batches(FileBackend(lz4).batches()).equals(pa.Table.from_batches(
        batches[:3]))


# ------------------------------------------------------------------ tables, queries, options


def test_table_names_and_sql(tmp_path: Path) -> None:
    path = tmp_path / "events.csv.gz"
    FileBackend(path).write(None, [sample_batch(binary=False)])
    with gzip.open(path, "rt", encoding="utf-8") as f:
        assert f.readline().startswith('"id","score"')
    backend = FileBackend(path)
    assert sum(b.num_rows for b in backend.batches("events")) == 4
    with pytest.raises(ConfigurationError, match="DuckDB"):
        backend.batches("SELECT * FROM events")
    with pytest.raises(NotFoundError, match="'events'"):
        backend.batches("other")
    with pytest.raises(ConfigurationError, match="one table"):
        backend.write("other", [sample_batch()], mode="replace")
    with pytest.raises(ConfigurationError):
        FileBackend("x.csv?compression=gzip")
    with pytest.raises(ConfigurationError, match="compress inside"):
        FileBackend("x.parquet.gz")
    assert FileBackend(parse_url(f"file://{tmp_path}/events.csv.gz?table=ev")).batches("ev")


def test_schema_reads_no_data(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    FileBackend(path).write(None, [sample_batch()])
    # Zero everything between the magic and the footer: the schema comes from the footer alone.
    data = bytearray(path.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    data[4 : len(data) - footer] = bytes(len(data) - footer - 4)
    path.write_bytes(bytes(data))
    assert FileBackend(path).schema() == sample_batch().schema
    assert FileBackend(path).estimate_rows() == 4

    csv_path = tmp_path / "t.csv"
    FileBackend(csv_path).write(None, wide_table(20_000).to_batches())  # ~2 MB of text
    with open(csv_path, "a") as f:
        f.write("this line is broken, and far past the first block\n")
    backend = FileBackend(csv_path, budget="1MB")  # 64 kB blocks
    assert backend.schema() == pa.schema([("id", pa.int64()), ("text", pa.string())])
    assert backend.estimate_rows() is None


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("ext", FORMATS)
def test_missing_file(tmp_path: Path, ext: str) -> None:
    backend = FileBackend(tmp_path / f"absent.{ext}")
    with pytest.raises(NotFoundError, match="does not exist"):
        backend.batches()
    with pytest.raises(NotFoundError):
        backend.schema()


@pytest.mark.parametrize("ext", ["parquet", "arrow", "arrows"])
def test_truncated_file_is_corrupt(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"t.{ext}"
    FileBackend(path).write(None, wide_table(50_000).to_batches(max_chunksize=5_000))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="truncated"):
        for _ in FileBackend(path).batches():
            pass


@pytest.mark.parametrize("ext", ["parquet", "arrow", "feather"])
def test_text_named_as_binary_format_is_corrupt(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"fake.{ext}"
    path.write_text("id,name\n1,a\n")
    with pytest.raises(CorruptFileError, match="extension"):
        FileBackend(path).batches()
    path.write_bytes(b"")
    with pytest.raises(CorruptFileError):
        FileBackend(path).batches()


def test_parquet_damaged_in_the_middle_fails_mid_stream(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(wide_table(100_000), path, row_group_size=10_000, compression="zstd")
    meta = pq.ParquetFile(path).metadata
    column = meta.row_group(5).column(1)
    start = column.data_page_offset
    data = bytearray(path.read_bytes())
    data[start + 50 : start + 4000] = os.urandom(3950)
    path.write_bytes(bytes(data))
    seen = 0
    with pytest.raises(CorruptFileError):
        for batch in FileBackend(path).batches():
            seen += batch.num_rows
    assert seen >= 10_000  # the damage surfaced mid-stream, after good row groups


def test_csv_later_block_with_other_type_names_the_column(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    lines = ["id,amount,note"] + [f"{i},{i * 2},n{i}" for i in range(100_000)]
    lines.append("100000,oops,n")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SchemaError, match="'amount'"):
        for _ in FileBackend(path).batches(budget="2MB"):  # 125 kB blocks
            pass


def test_jsonl_later_block_with_other_type_names_the_column(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    lines = [json.dumps({"id": i, "amount": i}) for i in range(100_000)]
    lines.append(json.dumps({"id": 1, "amount": "oops"}))
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SchemaError, match="'amount'"):
        for _ in FileBackend(path).batches(budget="2MB"):
            pass


def test_malformed_text_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n3\n")
    with pytest.raises(CorruptFileError):
        list(FileBackend(tmp_path / "bad.csv").batches())
    (tmp_path / "bad.jsonl").write_text("this is not json\n")
    with pytest.raises(CorruptFileError):
        list(FileBackend(tmp_path / "bad.jsonl").batches())


def test_target_errors(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="does not exist; create it"):
        FileBackend(tmp_path / "no" / "dir.parquet").write(None, [sample_batch()])
    path = tmp_path / "t.parquet"
    FileBackend(path).write(None, [sample_batch()])
    with pytest.raises(TargetExistsError, match="--mode replace"):
        FileBackend(path).write(None, [sample_batch()])
    with pytest.raises(ConfigurationError, match="no keys"):
        FileBackend(path).write(None, [sample_batch()], mode="upsert", key="id")
    nested = pa.record_batch({"l": pa.array([[1, 2]])})
    with pytest.raises(TargetError, match="left as it was"):
        FileBackend(tmp_path / "n.csv").write(None, [nested])
    assert not (tmp_path / "n.csv").exists()
    assert temp_files(tmp_path) == []


# ------------------------------------------------------------------ atomicity and modes


@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize("mode", ["replace", "append"])
def test_failed_write_leaves_target_untouched(tmp_path: Path, ext: str, mode: str) -> None:
    path = tmp_path / f"t.{ext}"
    FileBackend(path).write(None, [sample_batch(binary=False)])
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="broke"):
        FileBackend(path).write(None, failing_after(2), mode=mode)
    assert path.read_bytes() == before
    assert temp_files(tmp_path) == []
    with pytest.raises(RuntimeError):
        FileBackend(tmp_path / f"new.{ext}").write(None, failing_after(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"t.{ext}"]


@pytest.mark.parametrize("ext", FORMATS)
def test_modes(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"t.{ext}"
    backend = FileBackend(path)
    assert backend.write(None, [sample_batch(0, binary=False)], mode="append").created
    result = backend.write(None, [sample_batch(4, binary=False)], mode="append")
    assert (result.rows, result.created) == (4, False)
    assert read_all(path)["id"].to_pylist() == list(range(8))
    result = backend.write(None, [sample_batch(100, binary=False)], mode="replace")
    assert (result.rows, result.created, result.mode) == (4, False, "replace")
    assert read_all(path)["id"].to_pylist() == [100, 101, 102, 103]
    with pytest.raises(SchemaError, match="'score' is missing"):
        backend.write(None, [pa.record_batch({"id": [1]})], mode="append")
    assert read_all(path)["id"].to_pylist() == [100, 101, 102, 103]


def test_replace_keeps_usual_permissions(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    FileBackend(path).write(None, [sample_batch(binary=False)])
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# ------------------------------------------------------------------ memory

BUDGET = 32_000_000  # "32MB"
DATA_BYTES = 300_000_000  # ~10x the budget: reading or buffering it whole fails the bound

# Runs in a fresh interpreter so its peak RSS is its own. Batches are generated lazily, ~2 MB
# each (the batch size a 32 MB budget asks of a source). The baseline is taken after imports and
# one tiny batch through the same code paths: that faults in libparquet's code pages and starts
# pyarrow's thread pools, one-off costs (~20 MB) that do not grow with the data.
MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import pyarrow as pa, pyarrow.compute as pc
    from membound import memory
    from membound.backends.files import FileBackend

    mode, path, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ROWS = 16_000
    BASE = pa.array(range(ROWS), pa.int64())
    TAIL = pc.utf8_lpad(pc.cast(BASE, pa.string()), 88, "q")

    def generate(total_bytes):
        start = done = 0
        while done < total_bytes:
            ids = pc.add(BASE, start)
            head = pc.utf8_lpad(pc.cast(ids, pa.string()), 12, "0")
            batch = pa.record_batch({"id": ids, "x": pc.multiply(pc.cast(ids, pa.float64()), 0.5),
                                     "s": pc.binary_join_element_wise(head, TAIL, "")})
            done += batch.nbytes
            start += ROWS
            yield batch

    def consume(batches):
        rows = ids = chars = 0
        for batch in batches:
            rows += batch.num_rows
            ids += pc.sum(batch["id"]).as_py()
            chars += pc.sum(pc.binary_length(batch["s"])).as_py()
        return {"rows": rows, "ids": ids, "chars": chars}

    warm = FileBackend(path + ".warm.parquet")
    warm.write(None, generate(1), mode="replace", budget="32MB")
    consume(warm.batches(budget="32MB"))
    pa.default_memory_pool().release_unused()
    baseline = memory.rss_bytes()
    memory.reset_peak()
    if mode == "write":
        result = FileBackend(path).write(None, generate(total), mode="replace", budget="32MB")
        out = {"rows": result.rows, "bytes": result.bytes}
    else:
        out = consume(FileBackend(path).batches(budget="32MB"))
    out["peak"] = memory.peak_rss_bytes() - baseline
    print(json.dumps(out))
    """
)


def run_measured(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, *args], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module", params=["parquet", "csv", "jsonl", "arrow"])
def written(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[Path, int, dict]:
    """A big file of each format, written under the budget in a subprocess that measured it."""
    # A few hundred MB of Parquet, as the bound matters most there; 200 MB for the others keeps
    # the suite quick and is still 6x the budget.
    size = DATA_BYTES if request.param == "parquet" else 200_000_000
    path = tmp_path_factory.mktemp("memory") / f"big.{request.param}"
    return path, size, run_measured("write", str(path), str(size))


def test_write_stays_in_budget(written: tuple[Path, int, dict]) -> None:
    path, size, measured = written
    print(f"{path.name}: write peak above baseline {measured['peak'] / 1e6:.1f} MB")
    assert measured["bytes"] >= size > 6 * BUDGET
    assert measured["peak"] <= 1.1 * BUDGET


def test_read_stays_in_budget(written: tuple[Path, int, dict]) -> None:
    path, _, written_result = written
    measured = run_measured("read", str(path), "0")
    print(f"{path.name}: read peak above baseline {measured['peak'] / 1e6:.1f} MB")
    rows = written_result["rows"]
    assert measured["rows"] == rows
    assert measured["ids"] == rows * (rows - 1) // 2
    assert measured["chars"] == rows * 100
    assert measured["peak"] <= 1.1 * BUDGET


def test_parquet_pages_and_statistics(tmp_path: Path) -> None:
    table = pa.table({"id": list(range(50_000)), "text": [f"t{i:06d}" for i in range(50_000)],
                      "blob": [bytes([i % 256]) * 8 for i in range(50_000)]})
    for option in ("", "?page_version=1"):
        target = tmp_path / "pages.parquet"
        FileBackend(f"file://{target}{option}").write(None, table.to_batches(), mode="replace")
        assert pq.read_table(target).equals(table)
        column = pq.ParquetFile(target).metadata.row_group(0)
        # Statistics for all but binary columns.
        assert column.column(0).statistics.has_min_max
        assert column.column(1).statistics.has_min_max
        assert column.column(2).statistics is None or not column.column(2).statistics.has_min_max
    with pytest.raises(ConfigurationError, match="page_version"):
        FileBackend(f"file://{tmp_path}/x.parquet?page_version=3")


# ------------------------------------------------------------------ handing memory back


@pytest.mark.parametrize("share, releases", [(0.1, 0), (0.3, 0), (0.9, 3)])
def test_memory_is_handed_back_only_above_half_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, share: float, releases: int
) -> None:
    # Handing freed memory back after every batch makes the next one fault its pages in afresh
    # (a Parquet -> PostgreSQL load: 250k page faults instead of 75k), so reads and writes do it
    # only once memory above the start passes half the budget.
    from membound.backends import files
    from membound.budget import BatchSizer, Budget

    budget = Budget("64MB")
    calls = {"release": 0, "trim": 0}
    monkeypatch.setattr(files, "release_arrow_memory",
                        lambda: calls.__setitem__("release", calls["release"] + 1))
    monkeypatch.setattr(files, "trim_heap", lambda: calls.__setitem__("trim", calls["trim"] + 1))
    monkeypatch.setattr(BatchSizer, "check_memory",
                        lambda self, where="": int(share * budget.max_memory))
    path = tmp_path / "t.parquet"
    batches = [sample_batch(4 * i) for i in range(3)]
    FileBackend(path).write(None, batches, budget=budget)
    assert calls == {"release": releases, "trim": releases}
    calls.update(release=0, trim=0)
    assert sum(b.num_rows for b in FileBackend(path).batches(budget=budget)) == 12
    # The reader releases Arrow's pools before each next batch once above the share; never
    # glibc's heaps (a reader thread would build its next batch in emptied ones).
    assert calls["trim"] == 0
    assert (calls["release"] > 0) == (releases > 0)
