"""Measuring memory: current and peak RSS, region peaks, tracemalloc, GC control, trimming.

Linux gives the best numbers: the kernel keeps a high-water mark (``VmHWM``) that a process may
reset to its current RSS by writing ``5`` to ``/proc/self/clear_refs``, so the peak of any region
of code is exact and costs nothing while the region runs. Where that is not allowed, a background
thread samples RSS instead (:class:`RSSSampler`) and the peak is a lower bound.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import os
import resource
import sys
import threading
import time
import tracemalloc as _tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [
    "Measurement",
    "fixed_mmap_threshold",
    "heap_retention",
    "RSSSampler",
    "gc_paused",
    "measure",
    "peak_rss_bytes",
    "release_arrow_memory",
    "reset_peak",
    "rss_bytes",
    "system_arrow_pool",
    "trim",
    "trim_heap",
    "warm_up",
]

F = TypeVar("F", bound=Callable[..., Any])

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# How often the fallback sampler reads RSS. 5 ms catches a batch-sized spike on any machine this
# runs on and costs well under 1% of a core.
SAMPLE_INTERVAL_S = 0.005


def rss_bytes() -> int:
    """The process's resident set size now, in bytes (``/proc/self/statm``; psutil elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except OSError:
        try:
            import psutil
        except ImportError:
            return _ru_maxrss()
        return int(psutil.Process().memory_info().rss)


def _ru_maxrss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # KiB on Linux, bytes on macOS.
    return peak if sys.platform == "darwin" else peak * 1024


def _status_field(name: bytes) -> int | None:
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(name):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_rss_bytes() -> int:
    """The process's peak RSS since it started or since the last :func:`reset_peak`."""
    peak = _status_field(b"VmHWM:")
    return peak if peak is not None else _ru_maxrss()


# Measurements currently open, so that a nested one resetting the kernel's high-water mark does
# not erase the peak an outer one has yet to read.
_open_measurements: list[Measurement] = []
_open_lock = threading.Lock()


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS. Returns False where not allowed."""
    with _open_lock:
        if _open_measurements:
            hwm = peak_rss_bytes()
            for m in _open_measurements:
                m._peak_seen = max(m._peak_seen, hwm)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class RSSSampler:
    """A background thread that samples RSS every ``interval`` seconds.

    Use it for a timeline (``samples`` is a list of ``(seconds_since_start, rss_bytes)``), or as
    the peak where the kernel's mark cannot be reset. It keeps at most ``max_samples`` samples,
    thinning the timeline as it grows, so a long run cannot make it grow without bound.
    """

    def __init__(self, interval: float = SAMPLE_INTERVAL_S, *, max_samples: int = 2000) -> None:
        self.interval = interval
        self.max_samples = max_samples
        self.samples: list[tuple[float, int]] = []
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0

    def __enter__(self) -> RSSSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="membound-rss", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._record()

    def _record(self) -> None:
        rss = rss_bytes()
        self.peak = max(self.peak, rss)
        self.samples.append((time.perf_counter() - self._start, rss))
        if len(self.samples) > self.max_samples:
            # Keep every other sample, and the running peak separately.
            self.samples = self.samples[::2]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._record()


@dataclass
class Measurement:
    """What :func:`measure` saw. Sizes are bytes; ``peak_above_start`` is what a budget bounds."""

    start_rss: int = 0
    end_rss: int = 0
    peak_rss: int = 0
    seconds: float = 0.0
    exact_peak: bool = True
    tracemalloc_peak: int | None = None
    _peak_seen: int = field(default=0, repr=False)

    @property
    def peak_above_start(self) -> int:
        return max(0, self.peak_rss - self.start_rss)

    def __str__(self) -> str:
        from membound.budget import format_size

        text = (
            f"peak RSS {format_size(self.peak_rss)} "
            f"({format_size(self.peak_above_start)} above start), "
            f"now {format_size(self.end_rss)}, {self.seconds:.2f} s"
        )
        if self.tracemalloc_peak is not None:
            text += f", tracemalloc peak {format_size(self.tracemalloc_peak)}"
        return text


class measure(contextlib.ContextDecorator):  # noqa: N801 - used like a function
    """Measure a region of code: ``with measure() as m: ...`` or ``@measure()``.

    ``m.peak_rss`` is the peak resident memory of the region, exact on Linux (the kernel's mark is
    reset at the start), sampled elsewhere; ``m.peak_above_start`` is the part the region added.
    ``tracemalloc=True`` also records the peak of Python allocations, at a real cost in speed
    (several times slower), so it is off by default. As a decorator, the last measurement is kept
    on the decorator object's ``last`` attribute.
    """

    def __init__(self, *, tracemalloc: bool = False) -> None:
        self.tracemalloc = tracemalloc
        self.last: Measurement | None = None
        self._stack: list[tuple[Measurement, RSSSampler | None, bool, float]] = []

    def __enter__(self) -> Measurement:
        m = Measurement(start_rss=rss_bytes())
        exact = reset_peak()
        sampler = None
        if not exact:
            m.exact_peak = False
            sampler = RSSSampler()
            sampler.start()
        started_tracing = False
        if self.tracemalloc:
            if not _tracemalloc.is_tracing():
                _tracemalloc.start()
                started_tracing = True
            _tracemalloc.reset_peak()
        with _open_lock:
            _open_measurements.append(m)
        self._stack.append((m, sampler, started_tracing, time.perf_counter()))
        return m

    def __exit__(self, *exc: object) -> None:
        m, sampler, started_tracing, t0 = self._stack.pop()
        m.seconds = time.perf_counter() - t0
        with _open_lock:
            _open_measurements.remove(m)
        if self.tracemalloc:
            m.tracemalloc_peak = _tracemalloc.get_traced_memory()[1]
            if started_tracing:
                _tracemalloc.stop()
        m.end_rss = rss_bytes()
        if sampler is not None:
            sampler.stop()
            m.peak_rss = max(sampler.peak, m.end_rss, m.start_rss)
        else:
            m.peak_rss = max(peak_rss_bytes(), m._peak_seen, m.end_rss)
        self.last = m

    def __call__(self, func: F) -> F:  # type: ignore[override]
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return func(*args, **kwargs)

        wrapper.measure = self  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for a bulk load; always restores its previous state.

    Every fetched row tuple is a container the collector tracks, so a bulk load triggers a
    young-generation collection every couple of thousand rows for nothing: rows from a database
    hold no cycles. Reference counting still frees everything as usual.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_warmed_up = False
_warmed_up_conversion = False


def warm_up(*, conversion: bool = True) -> None:
    """Pay one-time costs now rather than inside a measured region.

    The first Parquet write and read page in libparquet/libarrow code (a few MB, file-backed
    and shared: not data) and the compute registry initialises (~1 MB).
    ``conversion=True`` also converts a Python list to Arrow once: pyarrow then imports pandas
    (and numpy) if installed, about 50 MB, once per process. Paths that never convert Python
    objects (the SQLite fast path, Parquet and Arrow files) pass False and so never import
    pandas. membound calls this before it records the baseline a budget is measured from.
    """
    global _warmed_up, _warmed_up_conversion
    with contextlib.suppress(ImportError):
        import pyarrow as pa

        if not _warmed_up:
            _warmed_up = True
            import pyarrow.compute as pc
            import pyarrow.parquet as pq

            sample = pa.Table.from_arrays(
                [pa.nulls(1, pa.int64()), pa.nulls(1, pa.string()), pa.nulls(1, pa.binary())],
                names=["i", "s", "b"],
            )
            pc.binary_length(sample.column("b"))
            sink = pa.BufferOutputStream()
            pq.write_table(sample, sink, compression="zstd")
            # Not pq.read_table: it imports pandas to look for pandas metadata (~40 MB).
            reader = pq.ParquetFile(pa.BufferReader(sink.getvalue()))
            for _ in reader.iter_batches(use_threads=False):
                pass
        if conversion and not _warmed_up_conversion:
            _warmed_up_conversion = True
            pa.array([0, None])


# glibc serves allocations at least this big by mmap, so they go back to the OS when freed.
# Smaller ones come from the heap and are reused without a page fault: ADBC's batch buffers
# (1-2 MB each) took 82k faults per 2M rows of events with 1 MiB here and 26k with 4 MiB
# (0.3 s less system time), at the same peak.
MMAP_THRESHOLD = 4 * 1024 * 1024
# Fixing the mmap threshold also fixes glibc's trim threshold, at 128 KiB: every free that
# leaves more than that at the top of a heap hands it to the OS, and the next batch, built in
# the same place, faults it back in page by page. A pipeline lets each heap keep this share of
# its budget instead (8 MB at 64MB), within these bounds: copying 2M rows of events from SQLite
# to Parquet took 33k page faults with it against 75k at 128 KiB (0.1 s less CPU), at the same
# peak (22-23 MB above start at 64MB).
TRIM_THRESHOLD_SHARE = 1 / 8
MIN_TRIM_THRESHOLD = 128 * 1024
MAX_TRIM_THRESHOLD = 32 * 1024 * 1024
_M_TRIM_THRESHOLD = -1  # mallopt() parameter numbers, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_threshold_fixed = False
_malloc_lock = threading.Lock()
_trim_thresholds: list[int] = []  # one per pipeline running now; the smallest applies
_libc: Any = None  # glibc through ctypes; False where the C library is another


def _glibc() -> Any:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim  # noqa: B018 - probe the symbols
            _libc.mallopt  # noqa: B018
        except (OSError, AttributeError):
            _libc = False
    return _libc


def fixed_mmap_threshold() -> bool:
    """Make glibc serve every allocation of 4 MiB or more by mmap, for the whole process.

    By default glibc raises its mmap threshold to the size of the largest block freed so far
    (up to 32 MiB), after which batch-sized buffers come from the heap and, freed, stay in the
    process behind anything allocated after them. Reading 20 MB values with a 32 MB budget
    peaked at 43 MB above the start that way, and at 25 MB with the threshold fixed. Fixing it
    (any explicit setting does) costs an mmap/munmap per large buffer: nothing next to filling
    one. Returns False where the C library is not glibc.
    """
    global _threshold_fixed
    if _threshold_fixed:
        return True
    libc = _glibc()
    if not libc:
        return False
    _threshold_fixed = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    return _threshold_fixed


@contextlib.contextmanager
def heap_retention(max_memory: int) -> Iterator[None]:
    """Inside the block, let each glibc heap keep up to :data:`TRIM_THRESHOLD_SHARE` of
    ``max_memory`` of freed memory for the next batch instead of handing it to the OS at once.

    Process-wide: with pipelines running in several threads, the smallest budget's share
    applies; after the last one, glibc's 128 KiB again. A no-op where the C library is not
    glibc. :func:`trim` still hands everything back when a pipeline nears its budget.
    """
    libc = _glibc() if fixed_mmap_threshold() else None
    if not libc:
        yield
        return
    share = int(max(MIN_TRIM_THRESHOLD, min(MAX_TRIM_THRESHOLD,
                                            max_memory * TRIM_THRESHOLD_SHARE)))
    with _malloc_lock:
        _trim_thresholds.append(share)
        libc.mallopt(_M_TRIM_THRESHOLD, min(_trim_thresholds))
    try:
        yield
    finally:
        with _malloc_lock:
            _trim_thresholds.remove(share)
            libc.mallopt(_M_TRIM_THRESHOLD, min(_trim_thresholds, default=MIN_TRIM_THRESHOLD))


@contextlib.contextmanager
def system_arrow_pool(max_memory: int | None = None) -> Iterator[None]:
    """Let Arrow allocate from the system allocator inside the block, then restore the default.

    pyarrow's default pool (mimalloc or jemalloc) keeps freed pages for reuse: reading 200k rows
    in 0.5 MB batches left RSS 25 MB above the start with mimalloc and 9 MB with the system pool.
    A budgeted pipeline needs freed batch memory to leave the process, so membound's pipelines
    run inside this. Buffers remember their pool, so restoring the default later is safe. With
    ``max_memory``, glibc's heaps keep a share of it for reuse (:func:`heap_retention`).
    """
    try:
        import pyarrow as pa
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        yield
        return
    fixed_mmap_threshold()
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        if max_memory is None:
            yield
        else:
            with heap_retention(max_memory):
                yield
    finally:
        pa.set_memory_pool(previous)


def release_arrow_memory() -> None:
    """Hand memory freed in Arrow's own pools (mimalloc, jemalloc) back to the OS.

    pyarrow's Python default pool may be switched (``system_arrow_pool()``), but C++ code such
    as libparquet allocates from the process-wide default, mimalloc, chosen when pyarrow
    loaded; that one keeps freed pages unless told otherwise. Cheap enough per batch.

    Not the system pool: its ``release_unused()`` is glibc's ``malloc_trim(0)``, which empties
    every heap of every thread, so a reader on another thread builds each next batch in fresh
    pages (per batch, copying 2M rows of events took 190k page faults and 0.4 s more CPU).
    :func:`trim` does that, for when memory nears the budget.
    """
    try:
        import pyarrow as pa
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        return
    pools = []
    for factory in ("mimalloc_memory_pool", "jemalloc_memory_pool"):
        with contextlib.suppress(AttributeError, NotImplementedError, pa.ArrowException):
            pools.append(getattr(pa, factory)())
    for pool in pools:
        pool.release_unused()


def trim_heap() -> None:
    """glibc's ``malloc_trim(0)``: free heap memory of every thread back to the OS (a no-op
    where glibc is not the allocator). The next allocations fault their pages back in."""
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)


def trim() -> None:
    """Give freed memory back to the OS: a GC pass, Arrow's pools, then glibc's ``malloc_trim``.

    It cannot free pymalloc arenas pinned by a few surviving objects. ``malloc_trim`` is a
    no-op where glibc is not the allocator. Costs a few milliseconds, and the next allocations
    fault their pages back in: call it when memory nears a budget, not per batch.
    """
    gc.collect()
    release_arrow_memory()
    trim_heap()
