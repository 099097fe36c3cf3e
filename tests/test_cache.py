"""Cache: budgets, tags, stampede protection and query caching, in-process and on real servers."""

from __future__ import annotations

import gc
import os
import sqlite3
import threading
import time
import tracemalloc
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import membound
from membound import Cache, ConfigurationError, SourceError
from membound.cache import ENVELOPE_SIZE
from membound.cache_stores import MemoryStore, RedisStore
from membound.codecs import get_codec
from membound.demo import event_batches

# -- stores ----------------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis", "memcached"])
def store_url(request):
    """Each store in turn: the in-process one, and the real servers (skipped when absent)."""
    if request.param == "memory":
        return "memory"
    return request.getfixturevalue(f"{request.param}_url")


def _prefix() -> str:
    return f"membound-test:{uuid.uuid4().hex}:"


@pytest.fixture
def make_cache(store_url):
    """Caches on the store under test, sharing one unique prefix (like two processes would);
    their keys are deleted afterwards."""
    prefix = _prefix()
    made: list[Cache] = []

    def make(**options) -> Cache:
        options.setdefault("prefix", prefix)
        cache = Cache(store_url, **options)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.clear()
        cache.close()
    if store_url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(store_url)
        assert list(client.scan_iter(match=f"{prefix}*")) == []
        client.close()


# -- get / set / delete ----------------------------------------------------------------------------


def test_set_get_delete_round_trip(make_cache):
    cache = make_cache()
    assert cache.get("missing", "default") == "default"
    assert cache.set("user:1", {"id": 1, "tags": ["a", "b"], "blob": b"\x00\xff"})
    assert cache.get("user:1") == {"id": 1, "tags": ["a", "b"], "blob": b"\x00\xff"}
    assert cache.delete("user:1") is True
    assert cache.get("user:1") is None
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.sets) == (1, 2, 1)


def test_values_are_copies(make_cache):
    cache = make_cache()
    cache.set("k", [1, 2])
    value = cache.get("k")
    value.append(3)
    assert cache.get("k") == [1, 2]


def test_ttl_expires(make_cache):
    cache = make_cache(ttl=1)
    cache.set("k", "v")
    cache.set("short", "v", ttl=0.05)
    time.sleep(0.1)
    assert cache.get("short") is None
    assert cache.get("k") == "v"


def test_server_entries_carry_their_ttl(redis_url):
    import redis

    cache = Cache(redis_url, ttl=30, stale_ttl=10, prefix=_prefix())
    try:
        cache.set("k", "v", tags=["t"])
        client = redis.Redis.from_url(redis_url)
        # ttl + stale_ttl: the entry outlives its freshness by stale_ttl, for stale reads.
        assert 39_000 < client.pttl(f"{cache.store.prefix}k:k") <= 40_000
        assert 39_000 < client.pttl(f"{cache.store.prefix}t:t") <= 40_000
        cache.set("forever", "v", ttl=None, tags=["t"])
        assert client.pttl(f"{cache.store.prefix}t:t") == -1  # a tag set outlives its entries
        client.close()
    finally:
        cache.clear()
        cache.close()


def test_a_changed_codec_reads_as_a_miss(make_cache):
    first = make_cache(codec="json")
    first.set("k", {"a": 1})
    cache = Cache(first.store, codec="msgpack+zstd")  # a new release, another codec
    assert cache.get("k") is None
    assert cache.stats.errors == 1


def test_options_are_checked():
    with pytest.raises(ConfigurationError, match="ttl"):
        Cache(ttl=0)
    with pytest.raises(ConfigurationError, match="give ttl"):
        Cache(stale_ttl=5)
    with pytest.raises(ConfigurationError, match="not a size"):
        Cache(max_memory="lots")
    with pytest.raises(ConfigurationError, match="unknown cache store"):
        Cache("mongodb://x")
    with pytest.raises(ConfigurationError, match="not a string"):
        Cache().set("k", 1, tags="events")
    with pytest.raises(membound.CodecError):
        Cache().set("k", object())
    assert repr(Cache(ttl=5)) == (
        "Cache('memory', max_memory='64.0 MB', codec='msgpack+zstd', ttl=5)"
    )


def test_a_down_server_is_a_source_error():
    cache = Cache("redis://127.0.0.1:1/0", prefix=_prefix())
    with pytest.raises(SourceError, match="127.0.0.1:1.*running"):
        cache.get("k")


# -- the byte budget -------------------------------------------------------------------------------

BUDGET = 10_000


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from("abcdefghij"),
            st.integers(0, BUDGET * 3 // 2),
            st.sampled_from([(), ("t1",), ("t1", "t2")]),
            st.booleans(),
        ),
        max_size=60,
    )
)
def test_memory_cache_never_holds_more_than_its_budget(operations):
    cache = Cache(max_memory=BUDGET, codec="bytes")
    expected_too_large = 0
    for key, size, tags, invalidate in operations:
        stored = cache.set(key, b"x" * size, tags=tags)
        entry_size = ENVELOPE_SIZE + 9 + size  # envelope + codec header + value
        assert stored == (entry_size <= BUDGET)
        expected_too_large += not stored
        if invalidate:
            cache.invalidate("t2")
        held = sum(len(entry) for entry, _, _ in cache.store._entries.values())
        stats = cache.stats
        assert stats.bytes == held <= BUDGET
        assert stats.too_large == expected_too_large
        if not stored:
            assert cache.get(key) is None  # never the key's previous value
        # The tag index names only live entries, each under every tag it was set with.
        for tag, keys in cache.store._keys_by_tag.items():
            assert all(tag in cache.store._entries[k][2] for k in keys)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 4_000), min_size=1, max_size=80))
def test_memory_store_evicts_least_recently_used_first(sizes):
    store = MemoryStore(8_000)
    for index, size in enumerate(sizes):
        store.get(str(index - 2))  # touch an older key: it must outlive untouched ones
        store.set(str(index), b"x" * size, ttl=None)
        held = list(store._entries)
        assert store.usage()[0] == sum(len(store._entries[k][0]) for k in held) <= 8_000
        assert held[-1] == str(index)


def test_lru_order_and_eviction_count():
    cache = Cache(max_memory=3 * (ENVELOPE_SIZE + 9 + 100), codec="bytes")
    for key in "abc":
        cache.set(key, b"x" * 100)
    cache.get("a")
    cache.set("d", b"x" * 100)
    assert cache.get("b") is None and cache.get("a") is not None
    assert cache.stats.evictions == 1


def test_a_value_larger_than_the_budget_is_not_cached_and_counted(make_cache):
    cache = make_cache(max_memory="100kB")
    cache.set("k", "old")
    assert cache.set("k", os.urandom(200_000)) is False
    assert cache.get("k") is None  # not the old value either
    stats = cache.stats
    assert stats.too_large == 1 and stats.largest_rejected > 200_000
    assert "too large to cache" in str(stats)


def test_memcached_item_size_limits_entries_too(memcached_url):
    cache = Cache(memcached_url, max_memory="64MB", codec="bytes", prefix=_prefix())
    try:
        assert cache.set("small", b"x" * 100_000)
        assert cache.set("big", os.urandom(1_100_000)) is False  # over memcached's 1 MB items
        assert cache.stats.too_large == 1
        assert cache.get("small") == b"x" * 100_000
    finally:
        cache.clear()
        cache.close()


# -- tags ------------------------------------------------------------------------------------------


def test_invalidate_by_tag(make_cache):
    cache = make_cache()
    cache.set("a", 1, tags=["events"])
    cache.set("b", 2, tags=["events", "users"])
    cache.set("c", 3, tags=["users"])
    cache.set("d", 4)
    removed = cache.invalidate("events")
    assert removed in (2, None)  # memcached cannot count
    assert [cache.get(k) for k in "abcd"] == [None, None, 3, 4]
    cache.set("a", 5, tags=["events"])  # a tag works again after invalidation
    assert cache.get("a") == 5
    cache.invalidate("users", "events")
    assert [cache.get(k) for k in "abcd"] == [None, None, None, 4]
    assert cache.stats.invalidations == 3


def test_a_value_computed_during_an_invalidation_is_not_stored(make_cache):
    cache = make_cache()

    def compute():
        cache.invalidate("events")  # the table changed while the value was computed
        return "old data"

    assert cache.get_or_compute("k", compute, tags=["events"]) == "old data"
    assert cache.get("k") is None
    assert cache.get_or_compute("k", lambda: "new data", tags=["events"]) == "new data"
    assert cache.get("k") == "new data"
    assert cache.stats.outdated == 1


def test_clear_removes_only_this_prefix(store_url):
    mine, theirs = Cache(store_url, prefix=_prefix()), Cache(store_url, prefix=_prefix())
    try:
        mine.set("k", 1)
        theirs.set("k", 2)
        mine.clear()
        assert mine.get("k") is None
        assert theirs.get("k") == 2
    finally:
        mine.clear()
        theirs.clear()


# -- stampede protection ---------------------------------------------------------------------------


def _run_threads(count, target):
    barrier = threading.Barrier(count)
    results, errors = [], []

    def run():
        barrier.wait()
        try:
            results.append(target())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    return results


def test_concurrent_misses_compute_once_in_one_process(make_cache):
    cache = make_cache()
    calls = []

    def compute():
        calls.append(1)
        time.sleep(0.2)
        return "value"

    results = _run_threads(16, lambda: cache.get_or_compute("k", compute))
    assert results == ["value"] * 16
    assert len(calls) == 1
    stats = cache.stats
    assert stats.misses == 1 and stats.hits == 15 and stats.waits >= 1
    assert cache._key_locks == {}  # per-key locks are forgotten once unused


@pytest.mark.parametrize("server", ["redis", "memcached"])
def test_concurrent_misses_compute_once_across_processes(request, server):
    # One Cache per "process": their local locks are separate, so only the server's lock
    # keeps them from computing together.
    url = request.getfixturevalue(f"{server}_url")
    prefix = _prefix()
    caches = [Cache(url, prefix=prefix) for _ in range(6)]
    calls = []
    turn = iter(caches)
    lock = threading.Lock()

    def call():
        with lock:
            cache = next(turn)

        def compute():
            calls.append(1)
            time.sleep(0.3)
            return [1, 2, 3]

        return cache.get_or_compute("shared", compute)

    try:
        assert _run_threads(6, call) == [[1, 2, 3]] * 6
        assert len(calls) == 1
        assert sum(cache.stats.waits for cache in caches) == 5
    finally:
        caches[0].clear()
        for cache in caches:
            cache.close()


def test_a_failed_computation_lets_the_next_caller_compute(make_cache):
    cache = make_cache()
    attempts = []

    def compute():
        attempts.append(1)
        time.sleep(0.05)
        if len(attempts) == 1:
            raise RuntimeError("database down")
        return "value"

    def call():
        try:
            return cache.get_or_compute("k", compute)
        except RuntimeError:
            return "failed"

    results = _run_threads(4, call)
    assert sorted(results) == ["failed"] + ["value"] * 3
    assert len(attempts) == 2


def test_stale_value_is_served_while_one_caller_recomputes(make_cache):
    cache = make_cache(ttl=0.2, stale_ttl=30)
    cache.get_or_compute("k", lambda: "v1")
    time.sleep(0.3)
    started = threading.Event()

    def slow():
        started.set()
        time.sleep(0.5)
        return "v2"

    thread = threading.Thread(target=lambda: cache.get_or_compute("k", slow))
    thread.start()
    started.wait(5)
    began = time.perf_counter()
    assert cache.get_or_compute("k", lambda: pytest.fail("computed twice")) == "v1"
    assert time.perf_counter() - began < 0.4  # did not wait for the 0.5 s recomputation
    thread.join()
    assert cache.get("k") == "v2"
    assert cache.stats.stale_hits == 1


# -- the decorator ---------------------------------------------------------------------------------


def test_cached_decorator(make_cache):
    cache = make_cache()
    calls = []

    @cache.cached(tags=lambda user_id, **_: [f"user:{user_id}"])
    def profile(user_id, *, verbose=False):
        calls.append(user_id)
        return {"id": user_id, "verbose": verbose}

    assert profile(1) == profile(1) == {"id": 1, "verbose": False}
    assert profile(1, verbose=True)["verbose"] is True
    assert calls == [1, 1]
    cache.invalidate("user:1")
    profile(1)
    assert calls == [1, 1, 1]
    assert profile.uncached(2) == {"id": 2, "verbose": False}
    assert profile.cache_key(1) != profile.cache_key(2)

    @cache.cached
    def takes_anything(value):
        return 1

    with pytest.raises(ConfigurationError, match="stable repr"):
        takes_anything(object())


# -- query -----------------------------------------------------------------------------------------


@pytest.fixture
def events_db(tmp_path):
    path = tmp_path / "events.db"
    with membound.open_backend(f"sqlite:///{path}") as db:
        db.write("events", event_batches(20_000))
    return path


def test_query_caches_rows_and_invalidates_by_table(make_cache, events_db):
    cache = make_cache(max_memory="32MB")
    sql = "SELECT id, kind, amount, payload, ts FROM events WHERE id <= ? ORDER BY id"
    expected = (
        sqlite3.connect(events_db)
        .execute("SELECT id, kind, amount, payload FROM events WHERE id <= 300 ORDER BY id")
        .fetchall()
    )
    with membound.open_backend(f"sqlite:///{events_db}") as db:
        first = cache.query(db, sql, [300], tags=["events"])
        assert [row[:4] for row in first] == expected
        assert all(isinstance(row, tuple) for row in first)
        assert cache.query(db, sql, [300], tags=["events"]) == first
        assert cache.query(f"sqlite:///{events_db}", sql, [300]) == first  # same URL, same key
        assert cache.stats.hits == 2 and cache.stats.misses == 1
        assert len(cache.query(db, sql, [5])) == 5  # other params, other entry
        cache.invalidate("events")
        assert cache.query(db, sql, [300], tags=["events"]) == first
        assert cache.stats.misses == 3


def test_query_too_large_returns_every_row_uncached(make_cache, events_db):
    cache = make_cache(max_memory="50kB")
    with membound.open_backend(f"sqlite:///{events_db}", budget="4MB") as db:
        rows = cache.query(db, "SELECT * FROM events")
        assert len(rows) == 20_000
        assert cache.query(db, "SELECT * FROM events") == rows
        assert cache.stats.too_large == 2 and cache.stats.sets == 0
        assert len(cache.query(db, "SELECT id FROM events", max_rows=100)) == 20_000
        assert cache.stats.too_large == 3
        small = cache.query(db, "SELECT id FROM events WHERE id < 50", max_rows=100)
        assert cache.query(db, "SELECT id FROM events WHERE id < 50", max_rows=100) == small
        assert cache.stats.sets == 1


def test_query_refuses_a_codec_that_cannot_hold_rows(events_db):
    with pytest.raises(ConfigurationError, match="msgpack"):
        Cache(codec="arrow+zstd").query(f"sqlite:///{events_db}", "SELECT 1")


def test_query_over_budget_does_not_hold_the_encoded_result(events_db):
    # Uncompressed msgpack is about half the rows' Python size: were every chunk kept until
    # the end, the peak would grow by several MB over a plain fetch; it grows by one chunk.
    sql = "SELECT * FROM events"
    cache = Cache(max_memory="200kB", codec="msgpack")
    with membound.open_backend(f"sqlite:///{events_db}", budget="4MB") as db:
        encoded_total = len(get_codec("msgpack").encode(list(db.rows(sql))))
        gc.collect()
        tracemalloc.start()
        try:
            rows = list(db.rows(sql))
            plain_peak = tracemalloc.get_traced_memory()[1]
            del rows
            gc.collect()
            tracemalloc.reset_peak()
            rows = cache.query(db, sql)
            cached_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert len(rows) == 20_000 and cache.stats.too_large == 1
    assert encoded_total > 3_000_000
    assert cached_peak - plain_peak < encoded_total / 3, (plain_peak, cached_peak, encoded_total)


# -- leaks -----------------------------------------------------------------------------------------


def test_repeated_workload_does_not_grow():
    cache = Cache(max_memory="200kB")

    def workload():
        for index in range(2_000):
            cache.set(
                f"k{index % 300}",
                {"index": index, "pad": "x" * (index % 500)},
                tags=[f"t{index % 7}"],
            )
            cache.get(f"k{(index * 7) % 300}")
            if index % 250 == 0:
                cache.invalidate(f"t{index % 7}")

    counts = []
    for _ in range(3):
        workload()
        gc.collect()
        counts.append(len(gc.get_objects()))
    assert counts[2] <= counts[1] + 50, counts
    assert cache.stats.bytes <= 200_000
    assert len(cache.store._keys_by_tag) <= 7


def test_redis_store_is_importable_without_a_server():
    store = RedisStore("redis://127.0.0.1:1/0", prefix="p:")
    assert "p:" in repr(store)
    store.close()
