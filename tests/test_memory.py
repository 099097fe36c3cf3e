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
