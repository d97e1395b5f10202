"""Bounded queues between the stages of a streaming job (the dub: decode -> redraw -> encode).

Each stage runs on its own thread and hands its results on through a queue of fixed depth, so a
fast stage waits for a slow one instead of piling up frames: memory is bounded by the depths and
the chunk size, never by the video's length. Decoding, the generator and encoding release the GIL
(FFmpeg, torch), so the stages overlap on separate cores.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetch(Iterator[T]):
    """``items`` iterated on a background thread from the moment this is made, at most ``depth``
    results ahead of the consumer: work the consumer is not ready for yet (the dub's first chunks
    decode while its style reference is decoded) already runs. Use as a context manager: leaving
    it, iterated to the end or not, stops the producer at its next item and waits for it.

    An exception in the producer is raised in the consumer at the point it happened."""

    def __init__(self, items: Iterable[T], depth: int = 2, name: str = "prefetch") -> None:
        self._items = items
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._ended = False
        self._worker = threading.Thread(target=self._produce, name=name, daemon=True)
        self._worker.start()

    def _put(self, value: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(_Failure(e))
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> "Prefetch[T]":
        return self

    def __next__(self) -> T:
        if self._ended:
            raise StopIteration
        value = self._queue.get()
        if value is _DONE:
            self._ended = True
            raise StopIteration
        if isinstance(value, _Failure):
            self._ended = True
            raise value.error
        return value

    def close(self) -> None:
        self._ended = True
        self._stop.set()
        self._worker.join()

    def __enter__(self) -> "Prefetch[T]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 1, name: str = "map") -> Iterator[R]:
    """``fn`` over ``items`` on ``workers`` threads, results in input order. At most ``workers + 1``
    items are taken at a time (one queued behind the busy workers while the consumer handles the
    last result), so memory is bounded whatever the input's length."""
    workers = max(1, workers)
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix=name) as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                while len(pending) > workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def tap(fn: Callable[[T], object], items: Iterable[T], depth: int = 2, name: str = "tap") -> Iterator[T]:
    """Pass ``items`` through unchanged while ``fn`` sees each one, in order, on its own thread (a
    measurement beside the pipeline, like QA watching the output). At most ``depth`` items wait for
    ``fn``: a slow observer holds the pipeline back rather than piling items up. Its errors raise."""
    waiting: deque[Future] = deque()
    with ThreadPoolExecutor(1, thread_name_prefix=name) as pool:
        for item in items:
            waiting.append(pool.submit(fn, item))
            while len(waiting) > depth:
                waiting.popleft().result()
            yield item
        while waiting:
            waiting.popleft().result()
