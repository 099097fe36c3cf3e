from __future__ import annotations

import gc

import pytest

from membound import gc_paused, measure, peak_rss_bytes, rss_bytes, trim
from membound.memory import RSSSampler, reset_peak

MB = 1_000_000


def test_rss_and_peak_are_plausible():
    rss = rss_bytes()
    assert 5 * MB < rss < 10_000 * MB
    assert peak_rss_bytes() >= rss - MB


def test_measure_sees_a_region_peak_and_its_release():
    with measure() as m:
        block = bytearray(80 * MB)
        block[::4096] = b"x" * len(block[::4096])  # touch every page
        del block
    assert m.peak_above_start >= 70 * MB
    assert m.end_rss < m.peak_rss
    assert m.seconds >= 0
    assert "above start" in str(m)


def test_measure_region_after_a_spike_does_not_inherit_it():
    spike = bytearray(60 * MB)
    spike[::4096] = b"x" * len(spike[::4096])
    del spike
    if not reset_peak():
        pytest.skip("this kernel does not let the process reset its peak RSS")
    with measure() as m:
        small = bytearray(MB)
        del small
    assert m.peak_above_start < 30 * MB


def test_nested_measure_keeps_the_outer_peak():
    with measure() as outer:
        block = bytearray(50 * MB)
        block[::4096] = b"x" * len(block[::4096])
        del block
        with measure() as inner:
            pass
    assert outer.peak_above_start >= 40 * MB
    assert inner.peak_above_start < 40 * MB


def test_measure_as_decorator_and_tracemalloc():
    m = measure(tracemalloc=True)

    @m
    def build():
        return [str(i) for i in range(200_000)]

    assert len(build()) == 200_000
    assert m.last is not None
    assert m.last.tracemalloc_peak is not None and m.last.tracemalloc_peak > 5 * MB


def test_sampler_records_a_timeline():
    with RSSSampler(0.001) as sampler:
        block = bytearray(30 * MB)
        block[::4096] = b"x" * len(block[::4096])
        for _ in range(200_000):
            pass
        del block
    assert sampler.samples
    assert sampler.peak >= max(rss for _, rss in sampler.samples)


def test_gc_paused_restores_state():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError
    assert gc.isenabled()


def test_trim_runs():
    trim()


class _FakeGlibc:
    """Records mallopt() calls in place of glibc."""

    def __init__(self):
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1

    def malloc_trim(self, pad):
        return 1


@pytest.fixture
def fake_glibc(monkeypatch):
    from membound import memory

    fake = _FakeGlibc()
    monkeypatch.setattr(memory, "_libc", fake)
    monkeypatch.setattr(memory, "_threshold_fixed", False)
    monkeypatch.setattr(memory, "_trim_thresholds", [])
    return fake


def trim_settings(fake):
    from membound import memory

    return [value for param, value in fake.calls if param == memory._M_TRIM_THRESHOLD]


def test_heap_retention_keeps_a_share_of_the_budget_and_restores_glibcs_default(fake_glibc):
    from membound import memory

    with memory.heap_retention(64_000_000):
        assert trim_settings(fake_glibc) == [8_000_000]
        # The mmap threshold is fixed first: that is what fixes the trim threshold at 128 KiB.
        assert (memory._M_MMAP_THRESHOLD, memory.MMAP_THRESHOLD) in fake_glibc.calls
    assert trim_settings(fake_glibc) == [8_000_000, memory.MIN_TRIM_THRESHOLD]


def test_heap_retention_bounds_and_the_smallest_running_budget_wins(fake_glibc):
    from membound import memory

    with memory.heap_retention(10**12):  # a huge budget keeps at most 32 MiB
        assert trim_settings(fake_glibc)[-1] == memory.MAX_TRIM_THRESHOLD
        with memory.heap_retention(16_000_000):  # a second pipeline with a small budget
            assert trim_settings(fake_glibc)[-1] == 2_000_000
        assert trim_settings(fake_glibc)[-1] == memory.MAX_TRIM_THRESHOLD
        with memory.heap_retention(100_000):  # below the floor: glibc's own 128 KiB
            assert trim_settings(fake_glibc)[-1] == memory.MIN_TRIM_THRESHOLD
    assert trim_settings(fake_glibc)[-1] == memory.MIN_TRIM_THRESHOLD
    assert memory._trim_thresholds == []


def test_heap_retention_restores_after_an_error(fake_glibc):
    from membound import memory

    with pytest.raises(RuntimeError), memory.heap_retention(64_000_000):
        raise RuntimeError("boom")
    assert trim_settings(fake_glibc)[-1] == memory.MIN_TRIM_THRESHOLD
    assert memory._trim_thresholds == []


def test_heap_retention_is_a_no_op_without_glibc(monkeypatch):
    from membound import memory

    monkeypatch.setattr(memory, "_libc", False)
    monkeypatch.setattr(memory, "_threshold_fixed", False)
    with memory.heap_retention(64_000_000):
        pass
    assert memory._trim_thresholds == []


def test_release_arrow_memory_leaves_glibcs_heaps_alone(monkeypatch):
    # The system pool's release_unused() is malloc_trim(0), which empties every thread's heap:
    # per batch it made a reader refault each next batch. Only trim_heap()/trim() do that.
    import pyarrow as pa

    from membound import memory

    released = []

    class Pool:
        def __init__(self, name):
            self.name = name

        def release_unused(self):
            released.append(self.name)

    monkeypatch.setattr(pa, "default_memory_pool", lambda: Pool("system"))
    monkeypatch.setattr(pa, "system_memory_pool", lambda: Pool("system"))
    monkeypatch.setattr(pa, "mimalloc_memory_pool", lambda: Pool("mimalloc"))
    monkeypatch.setattr(pa, "jemalloc_memory_pool", lambda: Pool("jemalloc"))
    memory.release_arrow_memory()
    assert released == ["mimalloc", "jemalloc"]
