from __future__ import annotations

import threading
import time

import pytest

from membound.prefetch import interruptible, ordered_parallel, prefetch


def test_order_and_completeness():
    assert list(prefetch(range(1000))) == list(range(1000))
    assert list(prefetch([])) == []


def test_runs_on_another_thread_at_most_depth_ahead():
    made: list[int] = []
    threads: set[str] = set()

    def source():
        for i in range(10):
            threads.add(threading.current_thread().name)
            made.append(i)
            yield i

    stream = prefetch(source(), depth=1)
    assert next(stream) == 0
    time.sleep(0.2)
    # One item handed out, one queued, one being made at most.
    assert len(made) <= 3
    assert list(stream) == list(range(1, 10))
    assert threads == {"membound-prefetch"}


def test_source_errors_are_raised_in_the_caller():
    def source():
        yield 1
        raise KeyError("boom")

    stream = prefetch(source())
    assert next(stream) == 1
    with pytest.raises(KeyError, match="boom"):
        next(stream)


def test_stopping_early_closes_the_source_on_its_thread():
    closed = threading.Event()

    def source():
        try:
            yield from range(10**9)
        finally:
            closed.set()

    stream = prefetch(source())
    for item in stream:
        if item == 3:
            break
    stream.close()
    assert closed.wait(2)


def test_alone_item_waits_for_its_own_release_not_an_earlier_one():
    made: list[int] = []

    def source():
        for i in range(4):
            made.append(i)
            yield i

    stream = prefetch(source(), depth=2, alone=lambda item: item == 1)
    assert next(stream) == 0
    time.sleep(0.2)
    assert made == [0, 1]
    assert next(stream) == 1  # done with item 0, not with item 1
    time.sleep(0.2)
    assert made == [0, 1], "item 2 may not be made while item 1 is in use"
    assert list(stream) == [2, 3]


def test_alone_items_wait_until_released():
    made: list[int] = []

    def source():
        for i in range(3):
            made.append(i)
            yield i

    stream = prefetch(source(), alone=lambda item: item == 0)
    assert next(stream) == 0
    time.sleep(0.2)
    assert made == [0], "nothing may be made while an 'alone' item is in use"
    assert list(stream) == [1, 2]


# ordered_parallel: segments read on several threads, items handed out in segment order.


def _segment_reader(log: list[tuple[str, int]] | None = None):
    def read(segment: tuple[int, int]):
        if log is not None:
            log.append((threading.current_thread().name, segment[0]))
        slow = (segment[0] // 100) % 2
        for i in range(*segment):
            if slow and i % 20 == 0:
                time.sleep(0.001)
            yield i

    return read


def test_ordered_parallel_keeps_segment_order_across_threads():
    segments = [(i * 100, i * 100 + 100) for i in range(17)]
    log: list[tuple[str, int]] = []
    # Uneven work: odd segments are slow, so the threads finish out of order.
    assert list(ordered_parallel(segments, _segment_reader(log), workers=3)) == list(range(1700))
    by_thread = {}
    for name, start in log:
        by_thread.setdefault(name, []).append(start)
    assert len(by_thread) == 3
    # Each worker took every third segment, in order.
    assert sorted(sorted(v) for v in by_thread.values()) == [
        [s * 100 for s in range(k, 17, 3)] for k in range(3)
    ]
    assert list(ordered_parallel([], _segment_reader(), workers=2)) == []
    assert list(ordered_parallel([(0, 3)], _segment_reader(), workers=4)) == [0, 1, 2]


def test_ordered_parallel_workers_stay_at_most_depth_ahead():
    made: list[int] = []

    def read(segment):
        for i in range(*segment):
            made.append(i)
            yield i

    stream = ordered_parallel([(0, 50), (50, 100)], read, workers=2, depth=1)
    assert next(stream) == 0
    time.sleep(0.3)
    # Per worker: one item queued and one waiting to be queued; the caller holds one.
    assert len(made) <= 5
    assert list(stream) == list(range(1, 100))


def test_ordered_parallel_raises_a_segments_error_where_it_occurred():
    def read(segment):
        yield segment
        if segment == 2:
            raise KeyError("segment 2")
        yield segment

    stream = ordered_parallel([0, 1, 2, 3], read, workers=2)
    assert [next(stream) for _ in range(5)] == [0, 0, 1, 1, 2]
    with pytest.raises(KeyError, match="segment 2"):
        next(stream)


def test_ordered_parallel_stopping_early_stops_and_closes_every_worker():
    closed: list[int] = []
    lock = threading.Lock()

    def read(segment):
        try:
            yield from range(segment * 10**6, segment * 10**6 + 10**6)
        finally:
            with lock:
                closed.append(segment)

    before = threading.active_count()
    stream = ordered_parallel(list(range(8)), read, workers=2)
    for item in stream:
        if item == 10:
            break
    stream.close()
    assert threading.active_count() == before
    # The two segments that were open, one per worker, were closed on the workers' threads.
    assert sorted(closed) == [0, 1]


def test_a_consumer_that_stops_early_interrupts_a_blocked_read():
    """The producer blocks (as a driver waiting on a server would) inside interruptible(): a
    consumer that stops calls its callback, so it need not wait for the block to end."""
    unblock = threading.Event()
    calls: list[int] = []

    def source():
        yield 1
        with interruptible(lambda: (calls.append(1), unblock.set())):
            unblock.wait(30)  # the "server" answers only when cancelled
        yield 2

    start = time.monotonic()
    stream = prefetch(source())
    assert next(stream) == 1
    time.sleep(0.1)  # the producer is now blocked
    stream.close()
    assert time.monotonic() - start < 5
    assert calls == [1]


def test_interruptible_callbacks_are_gone_once_the_read_is_done():
    from membound import prefetch as module

    def source():
        with interruptible(lambda: None):
            yield 1
        yield 2

    assert list(prefetch(source())) == [1, 2]
    assert module._interrupters == {}
