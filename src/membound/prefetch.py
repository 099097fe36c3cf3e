"""Read ahead on a thread: the source makes the next batch while the sink writes this one.

The expensive parts of a copy, a database driver filling Arrow buffers and a Parquet or COPY
writer encoding them, run in C with the GIL released, so on two cores reading and writing side
by side take about as long as the slower of the two instead of their sum. The queue between
them is bounded, so read-ahead costs a fixed number of batches, never more.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Generic, TypeVar

__all__ = ["PREFETCH_DEPTH", "blocking", "interruptible", "ordered_parallel", "prefetch"]

T = TypeVar("T")
S = TypeVar("S")

# Batches waiting between the reader and the writer. One is enough to keep both sides busy;
# each more costs a batch (budget/16) of memory and buys nothing once both sides overlap.
PREFETCH_DEPTH = 1
# How often a blocked side looks whether the other has stopped, in seconds.
_POLL_S = 0.05

_ITEM, _ERROR, _END = 0, 1, 2

# How each thread's blocking read can be cut short from another thread, while it runs: thread
# ident -> callbacks (see interruptible()).
_interrupters: dict[int, list[Callable[[], object]]] = {}
_interrupters_lock = threading.Lock()


@contextlib.contextmanager
def interruptible(callback: Callable[[], object]) -> Iterator[None]:
    """While inside, a consumer that stops early (an exception, Ctrl-C, ``break``) calls
    ``callback()`` from its own thread before it waits for this reading thread to end.

    For reads that block in C with the GIL released until the server sends something (a query
    that sorts for minutes before its first row): the callback cancels the statement on the
    server (it must be safe to call from another thread), the read then fails, and the
    consumer's Ctrl-C takes effect at once instead of when the first rows arrive.
    """
    ident = threading.get_ident()
    with _interrupters_lock:
        _interrupters.setdefault(ident, []).append(callback)
    try:
        yield
    finally:
        with _interrupters_lock:
            callbacks = _interrupters.get(ident, [])
            if callback in callbacks:
                callbacks.remove(callback)
            if not callbacks:
                _interrupters.pop(ident, None)


def blocking(call: Callable[[], T], cancel: Callable[[], object]) -> T:
    """``call()``, a driver call that blocks in C with the GIL released until a server answers,
    made interruptible: ``cancel()`` (safe from another thread) stops the statement on the server.

    On the main thread a Ctrl-C arrives only when such a call returns, which may be minutes away:
    the call runs on a helper thread instead, and a Ctrl-C calls ``cancel()``, waits for the call
    to end and raises KeyboardInterrupt. On another thread (a copy's reading thread) signals do
    not arrive at all: the call runs there, ``interruptible(cancel)``.
    """
    if threading.current_thread() is not threading.main_thread():
        with interruptible(cancel):
            return call()
    outcome: list[tuple[bool, object]] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # noqa: BLE001 - raised in the caller
            outcome.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=run, name="membound-blocking", daemon=True).start()
    try:
        done.wait()
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            cancel()
        done.wait()
        raise
    ok, value = outcome[0]
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


def _interrupt(thread: threading.Thread) -> None:
    """Cut short what ``thread`` is reading (its interruptible() callbacks), if anything."""
    with _interrupters_lock:
        callbacks = list(_interrupters.get(thread.ident or 0, ()))
    for callback in callbacks:
        with contextlib.suppress(Exception):
            callback()


def _offer(q: queue.Queue[tuple[int, object]], stop: threading.Event, kind: int,
           value: object) -> bool:
    """Put ``(kind, value)`` on a bounded queue, waiting for room unless ``stop`` is set;
    False when it was set (the consumer has gone)."""
    while not stop.is_set():
        try:
            q.put((kind, value), timeout=_POLL_S)
        except queue.Full:
            continue
        return True
    return False


def prefetch(
    items: Iterable[T],
    depth: int = PREFETCH_DEPTH,
    *,
    alone: Callable[[T], bool] | None = None,
) -> Iterator[T]:
    """Iterate ``items`` on a background thread, at most ``depth`` items ahead.

    ``alone(item)`` true means the item is too big to have another one made while it is in
    use: the thread then waits until the caller is done with it (asks for the next one) before
    it goes on. A copy passes batches larger than the batch target, so a 20 MB value is never
    alive twice.

    Exceptions from ``items`` are raised in the caller at the point they occurred. When the
    caller stops early (``break``, an exception, ``close()``), the thread stops and the source
    is closed on that thread, where it ran, so its cursors are released. The source must not be
    used from two threads at once, and is not: only the reading thread touches it.
    """
    return _Prefetch(items, depth, alone).run()


class _Prefetch(Generic[T]):
    def __init__(self, items: Iterable[T], depth: int,
                 alone: Callable[[T], bool] | None) -> None:
        self.items = items
        self.alone = alone
        # How many items the consumer is done with (it asked for the next one), under a lock.
        self.done = 0
        self.progress = threading.Condition()
        self.queue: queue.Queue[tuple[int, object]] = queue.Queue(maxsize=max(1, depth))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, name="membound-prefetch",
                                       daemon=True)

    def _put(self, kind: int, value: object) -> bool:
        return _offer(self.queue, self.stop, kind, value)

    def _produce(self) -> None:
        iterator = iter(self.items)
        try:
            for made, item in enumerate(iterator, start=1):
                wait = self.alone is not None and self.alone(item)
                if not self._put(_ITEM, item):
                    return
                del item
                if wait:
                    # Wait until the consumer is done with this very item, not just any.
                    with self.progress:
                        while self.done < made:
                            if self.stop.is_set():
                                return
                            self.progress.wait(_POLL_S)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(_ERROR, exc)
            return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        self._put(_END, None)

    def run(self) -> Iterator[T]:
        self.thread.start()
        ended = False
        try:
            while True:
                kind, value = self.queue.get()
                if kind == _ITEM:
                    yield value  # type: ignore[misc]
                    del value
                    with self.progress:
                        self.done += 1
                        self.progress.notify()
                elif kind == _ERROR:
                    ended = True
                    raise value  # type: ignore[misc]
                else:
                    ended = True
                    return
        finally:
            self.stop.set()
            if not ended:
                # Stopped early: the producer may be blocked in a read that waits on a server.
                _interrupt(self.thread)
            # Drop what is queued so the producer's put() returns, then wait for it to close
            # the source.
            while True:
                try:
                    self.queue.get_nowait()
                except queue.Empty:
                    break
            self.thread.join()


_SEGMENT_END = 3


def ordered_parallel(
    segments: Sequence[S],
    read: Callable[[S], Iterable[T]],
    workers: int = 2,
    depth: int = PREFETCH_DEPTH,
) -> Iterator[T]:
    """``read(segment)`` for every segment, on ``workers`` threads, yielded in segment order.

    Worker ``k`` reads segments ``k``, ``k + workers``, ... one after another, and hands its
    items over through a queue of ``depth`` items: a worker that is ahead of the caller blocks,
    so at most ``workers x (depth + 1)`` items are alive beyond the caller's. The caller gets
    every item of segment 0, then of segment 1, and so on, as if it had read them in turn.

    For sources whose reading runs in C with the GIL released (ADBC's readers): on two cores
    two readers fill batches while the caller's side (a Parquet writer, say) encodes the last.
    ``read`` runs on the worker's thread and its iterator is closed there, so each segment may
    hold a cursor of its own. Exceptions are raised in the caller when it reaches the segment
    they came from; when the caller stops early every worker stops and closes what it opened.
    """
    count = max(1, min(workers, len(segments)))
    if count == 1:
        for segment in segments:
            yield from read(segment)
        return
    stop = threading.Event()
    queues: list[queue.Queue[tuple[int, object]]] = [
        queue.Queue(maxsize=max(1, depth)) for _ in range(count)
    ]

    def put(q: queue.Queue[tuple[int, object]], kind: int, value: object) -> bool:
        return _offer(q, stop, kind, value)

    def work(index: int) -> None:
        q = queues[index]
        for segment in segments[index::count]:
            iterator = iter(read(segment))
            try:
                for item in iterator:
                    if not put(q, _ITEM, item):
                        return
                    del item
            except BaseException as exc:  # handed to the caller, raised there
                put(q, _ERROR, exc)
                return
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
            if not put(q, _SEGMENT_END, None):
                return

    threads = [threading.Thread(target=work, args=(k,), name=f"membound-reader-{k}",
                                daemon=True) for k in range(count)]
    for thread in threads:
        thread.start()
    try:
        for number in range(len(segments)):
            q = queues[number % count]
            while True:
                kind, value = q.get()
                if kind == _ITEM:
                    yield value  # type: ignore[misc]
                    del value
                elif kind == _ERROR:
                    raise value  # type: ignore[misc]
                else:
                    break
    finally:
        stop.set()
        for thread, q in zip(threads, queues, strict=True):
            # Drop what is queued so a blocked put() returns, then wait for the worker.
            while thread.is_alive():
                with contextlib.suppress(queue.Empty):
                    while True:
                        q.get_nowait()
                thread.join(_POLL_S)
