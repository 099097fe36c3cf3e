"""One cache (membound's, or what a user would write by hand): set and get latency, op by op.

    python bench/contestants/cache_run.py DB.sqlite OUT.json --cache membound-redis

For each kind of value of ``workloads.CACHE_KINDS`` (one row of ~100 bytes, a page of ~10 kB, a
1000-row query result), under that kind's distinct keys, cycled: a few untimed warm-up
operations, then ``OPS[kind]`` sets, then as many gets (every get a hit), each operation timed
alone with ``perf_counter_ns``. The medians and 99th percentiles go to the timing file. Then one
untimed get of every key feeds the checksum written to OUT, which the harness compares with the
source's, so a cache that lost or changed a value is reported. Server keys live under a prefix
unique to the run (Redis database 15) and are removed at the end, whatever happens.

Caches:

- ``membound-memory``: ``membound.Cache("memory", max_memory=BUDGET)``, default codec
  (msgpack+zstd); ``membound-memory-msgpack``: the same with ``codec="msgpack"``.
- ``membound-redis`` / ``membound-memcached``: ``membound.Cache(URL, ttl=3600, prefix=...)``.
- ``cachetools``: ``cachetools.LRUCache(maxsize=BUDGET, getsizeof=len)`` holding
  ``pickle.dumps(value)``, ``pickle.loads`` on get: bounded by bytes, as membound's store is.
- ``redis-pickle``: redis-py, ``set(key, pickle.dumps(value), ex=3600)`` (``SETEX``) and
  ``pickle.loads(get(key))``.
"""

from __future__ import annotations

import argparse
import gc
import json
import pickle
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cachetools
import redis

import membound
from membound.budget import parse_size

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/, for the shared modules
import workloads  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/15"
MEMCACHED_URL = "memcached://127.0.0.1:11211"
TTL_SECONDS = 3600  # for the server caches: an entry with an expiry, as a cache entry has
WARM_UP_OPS = 50
# Timed operations of each kind (sets, then as many gets).
OPS = {"row": 10_000, "page": 10_000, "result": 10_000}

CACHES = (
    "membound-memory",
    "membound-memory-msgpack",
    "membound-redis",
    "membound-memcached",
    "cachetools",
    "redis-pickle",
)


class BenchCache:
    """``set(key, value)``, ``get(key)``, ``entry_bytes()`` and ``cleanup()`` for one cache."""

    def __init__(self, name: str, budget: str, prefix: str) -> None:
        self.name = name
        self.sizes: list[int] = []
        if name.startswith("membound-"):
            if name == "membound-memory":
                cache = membound.Cache("memory", max_memory=budget)
            elif name == "membound-memory-msgpack":
                cache = membound.Cache("memory", max_memory=budget, codec="msgpack")
            elif name == "membound-redis":
                cache = membound.Cache(REDIS_URL, ttl=TTL_SECONDS, prefix=prefix)
            elif name == "membound-memcached":
                cache = membound.Cache(MEMCACHED_URL, ttl=TTL_SECONDS, prefix=prefix)
            else:
                raise SystemExit(f"unknown cache {name!r}")
            self.membound = cache
            self.set: Callable[[str, Any], Any] = cache.set
            self.get: Callable[[str], Any] = cache.get
        elif name == "cachetools":
            store = cachetools.LRUCache(maxsize=parse_size(budget), getsizeof=len)

            def set_value(key: str, value: Any) -> None:
                store[key] = pickle.dumps(value)

            def get_value(key: str) -> Any:
                payload = store.get(key)
                return None if payload is None else pickle.loads(payload)

            self.store = store
            self.set, self.get = set_value, get_value
        elif name == "redis-pickle":
            client = redis.Redis.from_url(REDIS_URL)

            def set_value(key: str, value: Any) -> None:
                # SET ... EX: what SETEX does, in the form redis-py 8 no longer calls deprecated.
                client.set(prefix + key, pickle.dumps(value), ex=TTL_SECONDS)

            def get_value(key: str) -> Any:
                payload = client.get(prefix + key)
                return None if payload is None else pickle.loads(payload)

            self.client = client
            self.set, self.get = set_value, get_value
        else:
            raise SystemExit(f"unknown cache {name!r}")
        self.prefix = prefix

    def stats(self) -> dict[str, Any]:
        if hasattr(self, "membound"):
            stats = self.membound.stats
            return {
                "sets": stats.sets,
                "bytes_written": stats.bytes_written,
                "evictions": stats.evictions,
                "too_large": stats.too_large,
                "errors": stats.errors,
            }
        if hasattr(self, "store"):
            return {"entries": len(self.store), "bytes": self.store.currsize}
        return {}

    def written(self) -> tuple[int, int]:
        """(entries stored, their bytes) so far, for membound's caches; (0, 0) for the others."""
        if hasattr(self, "membound"):
            stats = self.membound.stats
            return stats.sets, stats.bytes_written
        return 0, 0

    def entry_bytes(self, key: str) -> int | None:
        """The stored size of one peer's entry (membound's come from its statistics)."""
        if hasattr(self, "store"):
            return len(self.store[key])
        if hasattr(self, "client"):
            return self.client.strlen(self.prefix + key)
        return None

    def cleanup(self, keys: list[str]) -> None:
        if hasattr(self, "membound"):
            if self.membound.store.name == "memcached":
                for key in keys:
                    self.membound.delete(key)
            self.membound.clear()
            self.membound.close()
        elif hasattr(self, "client"):
            for batch in _chunks(list(self.client.scan_iter(match=self.prefix + "*", count=1000))):
                self.client.unlink(*batch)
            self.client.close()


def _chunks(items: list[Any], size: int = 1000) -> list[list[Any]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _percentile(sorted_values: list[int], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    index = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values)) - 1))
    return float(sorted_values[index])


def _summary(nanoseconds: list[int]) -> dict[str, float]:
    ordered = sorted(nanoseconds)
    return {
        "ops": len(ordered),
        "median_us": statistics.median(ordered) / 1000,
        "p99_us": _percentile(ordered, 0.99) / 1000,
        "mean_us": statistics.fmean(ordered) / 1000,
        "max_us": ordered[-1] / 1000,
    }


def run(source: str, output: str, name: str, budget: str) -> dict[str, Any]:
    values = workloads.cache_values(source)
    prefix = f"membound-bench:{uuid.uuid4().hex[:12]}:"
    cache = BenchCache(name, budget, prefix)
    gc.collect()
    gc.freeze()
    keys_by_kind = {
        kind: [f"{kind}:{index}" for index in range(len(values[kind]))] for kind in values
    }
    results: dict[str, Any] = {"cache": name}
    perf = time.perf_counter_ns
    try:
        for kind, kind_values in values.items():
            keys = keys_by_kind[kind]
            count = len(keys)
            for op in range(WARM_UP_OPS):
                cache.set(keys[op % count], kind_values[op % count])
                cache.get(keys[op % count])
            set_ns: list[int] = []
            get_ns: list[int] = []
            ops = OPS[kind]
            sets_before, bytes_before = cache.written()
            for op in range(ops):
                key, value = keys[op % count], kind_values[op % count]
                started = perf()
                cache.set(key, value)
                set_ns.append(perf() - started)
            for op in range(ops):
                key = keys[op % count]
                started = perf()
                cache.get(key)
                get_ns.append(perf() - started)
            sets_after, bytes_after = cache.written()
            entry_bytes = (
                (bytes_after - bytes_before) / (sets_after - sets_before)
                if sets_after > sets_before
                else cache.entry_bytes(keys[0])
            )
            results[kind] = {
                "set": _summary(set_ns),
                "get": _summary(get_ns),
                "entry_bytes": entry_bytes,
            }
        results["stats"] = cache.stats()
        checksum = workloads.Checksum()
        missing = 0
        for kind, spec in workloads.CACHE_KINDS.items():
            for key in keys_by_kind[kind]:
                value = cache.get(key)
                if value is None:
                    missing += 1
                    continue
                if spec["rows"] == 1:
                    checksum.add(value)
                else:
                    checksum.add_all(value)
        results["missing"] = missing
        Path(output).write_text(
            json.dumps({"values": checksum.count, "checksum": checksum.hexdigest()})
        )
    finally:
        cache.cleanup([key for keys in keys_by_kind.values() for key in keys])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("output")
    parser.add_argument("--cache", choices=CACHES, required=True)
    parser.add_argument("--budget", default="64MB", help="the in-process caches' byte budget")
    parser.add_argument("--timing", help="write {'work_seconds': ..., 'details': ...} here")
    parser.add_argument("--imports-only", action="store_true", help="exit after the imports")
    args = parser.parse_args()
    if args.imports_only:
        return
    started = time.perf_counter()
    details = run(args.source, args.output, args.cache, args.budget)
    work_seconds = time.perf_counter() - started
    if args.timing:
        with open(args.timing, "w") as timing:
            json.dump({"work_seconds": work_seconds, "details": details}, timing)


if __name__ == "__main__":
    main()
