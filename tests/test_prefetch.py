from __future__ import annotations

import threading
import time

import pytest

from membound.prefetch import prefetch


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
