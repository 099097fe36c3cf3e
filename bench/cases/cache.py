"""Cache get/set latency: membound.Cache in this process, on Redis and on Memcached, beside
``cachetools.LRUCache`` + pickle and a hand-written redis-py + pickle cache.

Every contestant is one cache in its own process (``contestants/cache_run.py``), timing each
operation alone; the servers run on this machine (Redis 127.0.0.1:6379 database 15, Memcached
127.0.0.1:11211), and each run uses a key prefix of its own and removes its keys at the end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cases.base import CONTESTANTS_DIR, Case, Contestant, Dataset, RunSpec
from checksum import Verification
from data import build_sqlite
from workloads import CACHE_KINDS, CACHE_LAST_ID, cache_checksum, cache_values

SCRIPT = CONTESTANTS_DIR / "cache_run.py"

CACHES = {
    "membound-memory": ("**membound.Cache** in-process (msgpack+zstd)", "membound", "memory"),
    "membound-memory-msgpack": (
        '**membound.Cache** in-process, `codec="msgpack"`',
        "membound",
        "memory",
    ),
    "cachetools": ("`cachetools.LRUCache(getsizeof=len)` + pickle", "peer", "memory"),
    "membound-redis": ("**membound.Cache** on Redis (msgpack+zstd)", "membound", "server"),
    "membound-memcached": (
        "**membound.Cache** on Memcached (msgpack+zstd)",
        "membound",
        "server",
    ),
    "redis-pickle": ("redis-py `SET EX`/`GET` + pickle (by hand)", "peer", "server"),
}
KIND_TITLES = {
    "row": "one row (a tuple of 7 fields, ~100 B)",
    "page": "a page of 60 rows (~10 kB as msgpack)",
    "result": "a 1000-row query result (~160 kB as msgpack)",
}


def _contestant(name: str) -> Contestant:
    label, role, _ = CACHES[name]

    def command(spec: RunSpec) -> list[str]:
        return [
            sys.executable,
            str(SCRIPT),
            spec.dataset.source,
            str(spec.output),
            "--cache",
            name,
            "--budget",
            spec.budget,
            "--timing",
            str(spec.timing_path),
        ]

    return Contestant(
        name=name,
        label=label,
        role=role,  # type: ignore[arg-type]
        command=command,
        baseline_command=(sys.executable, str(SCRIPT), "-", "-", "--cache", name, "--imports-only"),
    )


def prepare(rows: int) -> Dataset:
    if rows < CACHE_LAST_ID:
        raise SystemExit(f"the cache case reads the first {CACHE_LAST_ID:,} rows; give more --rows")
    path = build_sqlite(rows)
    reference = cache_checksum(cache_values(str(path)))
    return Dataset(
        rows=rows,
        source=str(path),
        table="events",
        reference=Verification(rows=reference.count, checksum=reference.hexdigest()),
        facts={"values from": f"the first {CACHE_LAST_ID:,} rows of the SQLite file"},
    )


def verify(output: Path, dataset: Dataset) -> Verification:
    found = json.loads(output.read_text())
    return Verification(rows=found["values"], checksum=found["checksum"])


# -- the report ---------------------------------------------------------------------------------


def _figures(size: dict, name: str) -> dict[str, dict[str, float | None]]:
    """Per kind: medians over the runs of each run's median and p99, per operation."""
    from report import _median

    runs = [r for r in size["runs"] if r["contestant"] == name and r["status"] == "ok"]
    figures: dict[str, dict[str, float | None]] = {}
    for kind in CACHE_KINDS:
        details = [r["details"][kind] for r in runs if r["details"] and kind in r["details"]]
        if not details:
            continue
        figures[kind] = {
            "entry": _median([d["entry_bytes"] for d in details]),
            "ops": details[0]["set"]["ops"],
            **{
                f"{op}_{stat}": _median([d[op][f"{stat}_us"] for d in details])
                for op in ("set", "get")
                for stat in ("median", "p99")
            },
        }
    return figures


def _us(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 10 else f"{value:,.1f}"


def render_body(results: dict) -> list[str]:
    from report import _data_cell, _number, _problems, summarise

    lines: list[str] = []
    for size in results["sizes"]:
        summaries = {s.name: s for s in summarise(results, size)}
        figures = {name: _figures(size, name) for name in summaries}
        facts = "; ".join(f"{key} {value}" for key, value in size["facts"].items())
        lines += [f"### `events`, {size['rows']:,} rows ({facts})", ""]
        for kind, title in KIND_TITLES.items():
            spec = CACHE_KINDS[kind]
            ops = next((f[kind]["ops"] for f in figures.values() if kind in f), None)
            lines += [
                f"#### {title}: {spec['keys']:,} keys, "
                f"{_number(ops, 0)} sets then {_number(ops, 0)} gets",
                "",
                "| cache | entry (bytes) | set median (µs) | set p99 (µs) | get median (µs) "
                "| get p99 (µs) | data |",
                "|---|--:|--:|--:|--:|--:|:-:|",
            ]
            for name, summary in summaries.items():
                figure = figures[name].get(kind, {})
                lines.append(
                    "| "
                    + " | ".join(
                        [
                            summary.label,
                            _number(figure.get("entry"), 0),
                            _us(figure.get("set_median")),
                            _us(figure.get("set_p99")),
                            _us(figure.get("get_median")),
                            _us(figure.get("get_p99")),
                            _data_cell(summary),
                        ]
                    )
                    + " |"
                )
            lines.append("")
        ratio_lines = []
        for name, summary in summaries.items():
            _, role, place = CACHES.get(name, ("", "", ""))
            if role != "membound":
                continue
            peer = "cachetools" if place == "memory" else "redis-pickle"
            if peer not in summaries:
                continue
            cells = []
            for kind in KIND_TITLES:
                mine, theirs = figures[name].get(kind), figures[peer].get(kind)
                if not mine or not theirs:
                    cells += ["—", "—"]
                    continue
                for op in ("set", "get"):
                    a, b = mine[f"{op}_median"], theirs[f"{op}_median"]
                    cells.append(f"{a / b:.2f}" if a and b else "—")
            ratio_lines.append(
                f"| {summary.label} | {summaries[peer].label} | " + " | ".join(cells) + " |"
            )
        if ratio_lines:
            lines += [
                "**membound / the peer of the same kind** (median latency; below 1 is faster)",
                "",
                "| membound | peer | row set | row get | page set | page get | result set "
                "| result get |",
                "|---|---|--:|--:|--:|--:|--:|--:|",
                *ratio_lines,
                "",
            ]
        lines += [
            "Memory (whole process, from the OS; every process holds the same "
            f"{CACHE_LAST_ID:,} rows as its values, and the in-process caches hold their entries "
            "too):",
            "",
            "| cache | peak RSS (MB) | import baseline (MB) | above baseline (MB) |",
            "|---|--:|--:|--:|",
        ]
        for summary in summaries.values():
            lines.append(
                f"| {summary.label} | {_number(summary.peak_mb, 0)} | "
                f"{_number(summary.baseline_mb, 0)} | {_number(summary.above_mb, 0)} |"
            )
        lines.append("")
        problems = _problems(list(summaries.values()))
        if problems:
            lines += ["Failures and mismatches:", "", *problems, ""]
    return lines


CACHE = Case(
    name="cache",
    title="Cache get/set latency",
    description=(
        "Latency of one `set` and one `get` of a cache, for three sizes of value taken from the "
        "`events` table. membound.Cache (default codec msgpack+zstd, and in-process also with "
        "plain msgpack) in this process, on Redis and on Memcached, beside "
        "`cachetools.LRUCache` bounded by bytes (`getsizeof=len`) holding `pickle.dumps` of the "
        "value, and a hand-written redis-py cache (`SET key pickle EX 3600`, `GET` + "
        "`pickle.loads`). The server caches set a time to live of 3600 s, as the hand-written "
        "one does (membound writes through a Lua script that also keeps its tag sets); the "
        "in-process ones none; the budget below is what both in-process caches may hold, which "
        "is enough for every value (no evictions). Redis and Memcached run on this machine "
        "(loopback): their figures are mostly the round trip and the client. Each contestant is "
        "its own process (`bench/contestants/cache_run.py`): per kind of value, 50 untimed "
        "warm-up operations, then the sets, then as many gets (all hits), each timed alone with "
        "`perf_counter_ns`, cycling through the kind's keys; the table gives, per operation, "
        "the median over the runs of each run's median and 99th percentile (nearest rank). "
        "**entry** is the stored size of one value (membound: envelope + codec header + body; "
        "the peers: the pickle). Every value is read back once more at the end and checked "
        "against the database's rows (membound with msgpack gives rows back as lists; they "
        "are compared as tuples)."
    ),
    contestants=tuple(_contestant(name) for name in CACHES),
    packages=("membound", "cachetools", "redis", "pymemcache", "msgpack", "zstandard"),
    prepare=prepare,
    verify=verify,
    output_suffix=".json",
    default_rows=(200_000,),
    render_body=render_body,
)
