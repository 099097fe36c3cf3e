"""The Redis backend against a real server (MEMBOUND_TEST_REDIS_URL, default db 15).

Each test works under its own key prefix and deletes its keys afterwards; nothing here flushes a
database, which other tests share.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import uuid
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet
import pytest

import membound
from membound import open_backend
from membound.errors import (
    ConfigurationError,
    NotFoundError,
    PartialWriteError,
    SchemaError,
    SourceError,
    TargetError,
    TargetExistsError,
    URLError,
)

redis = pytest.importorskip("redis")


@pytest.fixture
def server(redis_url):
    """(url, client, prefix): a unique key prefix in the test database, cleaned up after."""
    prefix = f"mbtest:{uuid.uuid4().hex[:10]}:".encode()
    client = redis.Redis.from_url(redis_url, protocol=2)
    yield redis_url, client, prefix
    for key in client.scan_iter(match=prefix + b"*", count=1000):
        client.unlink(key)
    for key in client.scan_iter(match=b"__membound_tmp__:*", count=1000):
        client.unlink(key)
    client.close()


def url(base: str, prefix: bytes, **options: object) -> str:
    options.setdefault("match", prefix.decode() + "*")
    query = "&".join(f"{name}={quote(str(value), safe='*:')}" for name, value in options.items())
    return f"{base}?{query}"


def snapshot(client, prefix: bytes) -> dict:
    """Every key under the prefix with its type and full content, as Python values."""
    out = {}
    for key in client.scan_iter(match=prefix + b"*"):
        kind = client.type(key).decode()
        if kind == "string":
            out[key] = (kind, client.get(key))
        elif kind == "hash":
            out[key] = (kind, client.hgetall(key))
        elif kind == "list":
            out[key] = (kind, client.lrange(key, 0, -1))
        elif kind == "set":
            out[key] = (kind, client.smembers(key))
        elif kind == "zset":
            out[key] = (kind, client.zrange(key, 0, -1, withscores=True))
        elif kind == "stream":
            out[key] = (kind, client.xrange(key))
    return out


def delete_prefix(client, prefix: bytes) -> None:
    for key in client.scan_iter(match=prefix + b"*"):
        client.unlink(key)


def fill_every_type(client, p: bytes) -> None:
    client.set(p + b"s:plain", b"hello")
    client.set(p + b"s:\x00bin\xff\x00", b"\x00\x01\x00\xfe")
    client.set(p + b"s:empty", b"")
    client.hset(p + b"h:1", mapping={b"f\x00": b"\x00", b"empty": b"", b"x": b"y" * 300})
    client.hset(p + b"h:big", mapping={f"f{i}".encode(): str(i).encode() for i in range(12_000)})
    client.rpush(p + b"l:1", b"a", b"", b"\x00", b"a")
    client.rpush(p + b"l:big", *[str(i).encode() for i in range(15_000)])
    client.sadd(p + b"set:1", b"m1", b"\x00", b"")
    client.zadd(p + b"z:1", {b"a": 1.5, b"\x00b": -2.25, b"c": float("inf")})
    client.xadd(p + b"x:1", {b"f": b"v", b"g": b"\x00"}, id=b"1-1")
    client.xadd(p + b"x:1", {b"f": b""}, id=b"2-5")
    for i in range(30):
        client.xadd(p + b"x:2", {b"n": str(i).encode()}, id=f"{i + 1}-0".encode())


TABLES = ("strings", "hashes", "lists", "sets", "zsets", "streams")


def test_every_type_round_trips_through_parquet(server, tmp_path):
    base, client, p = server
    fill_every_type(client, p)
    before = snapshot(client, p)
    counts = {}
    for table in TABLES:
        report = membound.copy(url(base, p, table=table), str(tmp_path / f"{table}.parquet"),
                               max_memory="32MB")
        counts[table] = report.rows
    assert counts == {"strings": 3, "hashes": 12_003, "lists": 15_004, "sets": 3, "zsets": 3,
                      "streams": 33}
    delete_prefix(client, p)
    for table in TABLES:
        membound.copy(str(tmp_path / f"{table}.parquet"), f"{base}?table={table}",
                      max_memory="32MB")
    assert snapshot(client, p) == before


def test_tables_read_with_their_columns(server):
    base, client, p = server
    fill_every_type(client, p)
    with open_backend(url(base, p, table="zsets", keys="text", values="text")) as db:
        assert db.schema().names == ["key", "member", "score"]
        rows = sorted(db.rows())
    assert rows == [(p.decode() + "z:1", "\x00b", -2.25), (p.decode() + "z:1", "a", 1.5),
                    (p.decode() + "z:1", "c", float("inf"))]
    with open_backend(url(base, p, type="stream", match=p.decode() + "x:1")) as db:
        assert list(db.rows()) == [(p + b"x:1", "1-1", b"f", b"v"),
                                   (p + b"x:1", "1-1", b"g", b"\x00"),
                                   (p + b"x:1", "2-5", b"f", b"")]
    with open_backend(url(base, p, table="lists", match=p.decode() + "l:1")) as db:
        assert list(db.rows()) == [(p + b"l:1", 0, b"a"), (p + b"l:1", 1, b""),
                                   (p + b"l:1", 2, b"\x00"), (p + b"l:1", 3, b"a")]


def test_big_collections_are_scanned_in_bounded_steps(server):
    base, client, p = server
    client.hset(p + b"wide", mapping={f"f{i:06d}".encode(): b"v" * 50 for i in range(50_000)})
    with open_backend(url(base, p, table="hashes", fields="text")) as db:
        batches = list(db.batches(budget="2MB"))
    assert len(batches) > 5  # 64 kB batches from a 2 MB budget
    fields = [f for b in batches for f in b.column("field").to_pylist()]
    assert sorted(fields) == [f"f{i:06d}" for i in range(50_000)]
    assert max(b.nbytes for b in batches) < 400_000


@pytest.mark.slow
def test_binary_keys_empty_values_and_a_fifty_megabyte_value(server, tmp_path):
    base, client, p = server
    big = bytes(range(256)) * (50_000_000 // 256) + b"\x00tail"
    client.set(p + b"\x00zero\x00", b"")
    client.set(p + b"big\x00", big)
    for i in range(2000):
        client.set(p + b"k" + i.to_bytes(4, "big"), i.to_bytes(4, "big") * (i % 7))
    before = snapshot(client, p)
    target = str(tmp_path / "s.parquet")
    report = membound.copy(url(base, p), target, max_memory="32MB")
    assert report.rows == 2002
    delete_prefix(client, p)
    membound.copy(target, f"{base}?table=strings", max_memory="32MB")
    after = snapshot(client, p)
    assert after.keys() == before.keys()
    assert after[p + b"big\x00"][1] == big
    assert after == before


def test_every_fetch_mode_gives_the_same_rows(server):
    base, client, p = server
    client.set(p + b"huge", b"h" * 3_000_000)  # above the 256 kB batch target: read alone
    for i in range(3000):
        client.set(p + b"%05d" % i, b"v" * (i % 300))
    client.hset(p + b"not-a-string", b"f", b"v")
    rows = {}
    for mode in ("mget", "script", "pipeline"):
        with open_backend(url(base, p, fetch=mode)) as db:
            batches = list(db.batches(budget="4MB"))
        rows[mode] = sorted((k, v) for b in batches for k, v in zip(
            b.column(0).to_pylist(), b.column(1).to_pylist(), strict=True))
        # Small values fill batches up to about the target; the huge one comes alone.
        assert max(b.nbytes for b in batches if b.num_rows > 1) < 400_000
    assert rows["mget"] == rows["script"] == rows["pipeline"]
    assert len(rows["mget"]) == 3001 and (p + b"huge", b"h" * 3_000_000) in rows["mget"]


def test_a_read_left_unfinished_leaves_the_connection_usable(server):
    base, client, p = server
    client.mset({p + b"%05d" % i: b"x" * 500 for i in range(20_000)})
    with open_backend(url(base, p)) as db:
        first = next(iter(db.batches(budget="2MB")))  # replies still on the way
        assert 0 < first.num_rows < 20_000
        assert sum(b.num_rows for b in db.batches(budget="2MB")) == 20_000
        assert db.schema("strings").names == ["key", "value"]


def test_value_codec_and_text_round_trip(server):
    base, client, p = server
    batch = pa.record_batch({"key": [p.decode() + "a", p.decode() + "b"],
                             "value": [{"n": 1, "tags": ["x"]}, {"n": 2, "tags": []}]})
    with open_backend(f"{base}?value_codec=msgpack+zstd") as db:
        db.write("strings", [batch], mode="fail")
    with open_backend(url(base, p, keys="text", value_codec="msgpack+zstd")) as db:
        assert sorted(db.rows(), key=lambda r: r[0]) == [
            (p.decode() + "a", {"n": 1, "tags": ["x"]}), (p.decode() + "b", {"n": 2, "tags": []})]
    client.set(p + b"bad", b"\xff\xfe")
    with open_backend(url(base, p, values="text")) as db, pytest.raises(SchemaError,
                                                                        match="UTF-8"):
        list(db.rows())


def test_ttl_and_write_modes_for_strings(server):
    base, client, p = server
    first = pa.record_batch({"key": [p + b"a", p + b"b"], "value": [b"1", b"2"]})
    with open_backend(f"{base}?ttl=100") as db:
        result = db.write("strings", [first], mode="fail")
    assert result.rows == 2
    assert 90 < client.ttl(p + b"a") <= 100
    with open_backend(base) as db:
        with pytest.raises(TargetExistsError, match="already exists"):
            db.write("strings", [first], mode="fail")
        assert client.get(p + b"a") == b"1"
        db.write("strings", [pa.record_batch({"key": [p + b"a"], "value": [b"new"]})],
                 mode="upsert")
    assert client.get(p + b"a") == b"new"
    # A conflict in a later batch: the first batch is reported as written.
    second = pa.record_batch({"key": [p + b"c"], "value": [b"3"]})
    with open_backend(base) as db, pytest.raises(PartialWriteError) as info:
        db.write("strings", [second, first], mode="fail")
    assert info.value.rows_committed == 1 and info.value.resume_after == (p + b"c",)


def test_replace_and_append_for_collections(server):
    base, client, p = server
    client.hset(p + b"h", mapping={b"old": b"1", b"keep": b"1"})
    client.rpush(p + b"l", b"x")
    rows = pa.record_batch({"key": [p + b"h", p + b"h"], "field": [b"keep", b"new"],
                            "value": [b"2", b"3"]})
    with open_backend(base) as db:
        with pytest.raises(TargetExistsError):
            db.write("hashes", [rows], mode="fail")
        assert client.hgetall(p + b"h") == {b"old": b"1", b"keep": b"1"}
        db.write("hashes", [rows], mode="replace")
        assert client.hgetall(p + b"h") == {b"keep": b"2", b"new": b"3"}
        db.write("lists", [pa.record_batch({"key": [p + b"l"] * 2, "value": [b"y", b"z"]})],
                 mode="append")
        assert client.lrange(p + b"l", 0, -1) == [b"x", b"y", b"z"]
        scattered = pa.record_batch({"key": [p + b"s1", p + b"s2", p + b"s1"],
                                     "member": [b"a", b"b", b"c"]})
        with pytest.raises(PartialWriteError, match="do not come together"):
            db.write("sets", [scattered], mode="replace")
    assert not list(client.scan_iter(match=b"__membound_tmp__:*"))


def test_wrong_type_is_a_schema_error_naming_the_key(server):
    base, client, p = server
    client.set(p + b"str", b"v")
    client.hset(p + b"hash", b"f", b"v")
    with open_backend(url(base, p, table="hashes", match=p.decode() + "str")) as db, \
            pytest.raises(SchemaError, match="str.*holds a string.*table=strings"):
        list(db.rows())
    with open_backend(url(base, p, match=p.decode() + "missing")) as db, \
            pytest.raises(NotFoundError, match="missing"):
        list(db.rows())
    rows = pa.record_batch({"key": [p + b"str"], "field": [b"f"], "value": [b"v"]})
    with open_backend(base) as db, pytest.raises(SchemaError, match="str"):
        db.write("hashes", [rows], mode="append")
    # SCAN's type filter skips keys of other types.
    with open_backend(url(base, p)) as db:
        assert list(db.rows()) == [(p + b"str", b"v")]


def test_bad_urls_and_options_say_what_to_write():
    with pytest.raises(URLError, match="database number"):
        open_backend("redis://127.0.0.1:6379/cache")
    with pytest.raises(ConfigurationError, match="unknown Redis URL option"):
        open_backend("redis://127.0.0.1:6379/0?macth=x*")
    with pytest.raises(ConfigurationError, match="positive whole number"):
        open_backend("redis://127.0.0.1:6379/0?count=many")
    with open_backend("redis://127.0.0.1:6379/0") as db, pytest.raises(
            ConfigurationError, match="one of strings, hashes"):
        db.schema("events")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_is_a_clear_error():
    port = _free_port()
    with open_backend(f"redis://127.0.0.1:{port}/0") as db:
        with pytest.raises(SourceError, match=f"127.0.0.1:{port}.*is the server running"):
            list(db.rows())
        with pytest.raises(TargetError, match="is the server running"):
            db.write("strings", [pa.record_batch({"key": [b"k"], "value": [b"v"]})])


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_a_server_that_goes_away_mid_write_is_reported(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly",
                             "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)

        def batches():
            yield pa.record_batch({"key": [b"k%06d" % i for i in range(30_000)],
                                   "value": [b"v"] * 30_000})
            proc.kill()
            proc.wait()
            yield pa.record_batch({"key": [b"z%06d" % i for i in range(30_000)],
                                   "value": [b"v"] * 30_000})

        with open_backend(f"redis://127.0.0.1:{port}/0") as db, \
                pytest.raises(PartialWriteError, match="is the server running") as info:
            db.write("strings", batches(), mode="append")
        assert 20_000 <= info.value.rows_committed <= 30_000
        assert info.value.resume_after[0].startswith(b"k")
    finally:
        proc.kill()
        proc.wait()


def test_keys_deleted_during_a_read_are_skipped(server):
    """MGET answers nil for a key deleted after the SCAN: whole replies and streamed ones."""
    base, client, p = server
    client.mset({p + b"%05d" % i: b"x" * 500 for i in range(20_000)})
    with open_backend(url(base, p)) as db:
        batches = db.batches(budget="2MB")
        first = next(iter(batches))
        client.unlink(*[p + b"%05d" % i for i in range(0, 20_000, 2)])
        rest = [(k, v) for b in batches for k, v in zip(
            b.column(0).to_pylist(), b.column(1).to_pylist(), strict=True)]
    assert 0 < first.num_rows + len(rest) < 20_000
    assert all(v == b"x" * 500 for _, v in rest)
    assert len({k for k, _ in rest}) == len(rest)


def test_whole_replies_and_their_fallback_off_a_socket():
    """RespReader.whole: a reply within the limit parsed whole, one over it left to stream."""
    pytest.importorskip("hiredis")
    from membound.backends.redis_resp import RespReader, bulk_list_size, scan_reply_size

    values = [b"a", None, b"", b"\x00\r\n" * 5000]
    reply = b"*4\r\n$1\r\na\r\n$-1\r\n$0\r\n\r\n$15000\r\n" + b"\x00\r\n" * 5000 + b"\r\n"
    scan = b"*2\r\n$3\r\n120\r\n*2\r\n$2\r\nk1\r\n$3\r\nk22\r\n"
    left, right = socket.socketpair()
    try:
        right.sendall(reply + scan)
        reader = RespReader(left)
        assert reader.whole(1_000_000, bulk_list_size) == values
        assert reader.whole(1_000_000, scan_reply_size) == [b"120", [b"k1", b"k22"]]
        right.sendall(reply[:2000])
        reader.more()
        # 2,000 bytes received, the reply unfinished, the limit 1,000: left to stream.
        assert reader.whole(1000, bulk_list_size) is False
        right.sendall(reply[2000:])
        assert reader.line() == b"*4"
        assert [reader.reply() for _ in range(3)] == [b"a", None, b""]
        assert reader.line() == b"$15000"
        assert reader.bulk(15000).to_pybytes() == values[3]
    finally:
        left.close()
        right.close()


def test_a_strings_export_does_not_make_pyarrow_import_pandas(server, tmp_path):
    """String columns are built from joined bytes, so pandas (~50 MB) is never imported."""
    base, client, p = server
    client.mset({p + b"%03d" % i: b"v%03d" % i for i in range(300)})
    target = tmp_path / "s.parquet"
    code = ("import sys, membound; membound.copy(sys.argv[1], sys.argv[2]); "
            "print('pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, url(base, p, keys="text"), str(target)],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    table = pa.parquet.read_table(target)
    assert table.schema.field("key").type == pa.string()
    assert sorted(table.column("value").to_pylist()) == [b"v%03d" % i for i in range(300)]
