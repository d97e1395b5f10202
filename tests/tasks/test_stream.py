"""The bounded queues between the dub's stages: order kept, bounded look-ahead, errors surface."""

from __future__ import annotations

import threading
import time

import pytest

from tasks.stream import Prefetch, ordered_map, tap


def counting(n: int, taken: list[int]):
    for i in range(n):
        taken.append(i)
        yield i


def test_prefetch_keeps_order_and_runs_at_most_depth_ahead():
    taken: list[int] = []
    seen = []
    with Prefetch(counting(20, taken), depth=2) as ahead:
        for item in ahead:
            time.sleep(0.01)                     # a slow consumer: the producer must wait for it
            seen.append(item)
            assert len(taken) - len(seen) <= 3   # the queue's 2, plus the one produced and waiting to go in
    assert seen == list(range(20))


def test_prefetch_raises_the_producers_error_where_it_happened():
    def failing():
        yield 1
        raise ValueError("frame 2 does not decode")

    got = []
    with pytest.raises(ValueError, match="frame 2"):
        with Prefetch(failing()) as ahead:
            for item in ahead:
                got.append(item)
    assert got == [1]


def test_prefetch_stops_its_producer_when_the_consumer_stops():
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    with Prefetch(endless(), depth=1) as ahead:
        for item in ahead:
            if item == 3:
                break
    assert closed.wait(5)


def test_prefetch_object_works_ahead_before_the_first_item_is_asked_for():
    """The dub makes its decode stage before it decodes the style reference: chunks are decoded
    meanwhile, at most ``depth`` ahead; leaving the block unread stops the producer."""
    taken: list[int] = []
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                taken.append(i)
                yield i
                i += 1
        finally:
            closed.set()

    with Prefetch(endless(), depth=2) as ahead:
        deadline = time.monotonic() + 5
        while len(taken) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        assert len(taken) == 3            # the queue's 2 and the one waiting to go in, nothing asked for yet
    assert closed.wait(5)
    assert list(ahead) == []              # closed: nothing more comes out


def test_ordered_map_keeps_input_order_with_workers_out_of_order():
    def slow_first(i: int) -> int:
        time.sleep(0.05 if i % 3 == 0 else 0.0)
        return i * i

    assert list(ordered_map(slow_first, range(10), workers=3)) == [i * i for i in range(10)]


def test_ordered_map_takes_a_bounded_number_of_items_ahead():
    taken: list[int] = []
    for k, _ in enumerate(ordered_map(lambda i: i, counting(30, taken), workers=2)):
        assert len(taken) - k <= 3           # workers + 1 taken, whatever the input's length


def test_tap_sees_every_item_in_order_and_passes_them_through():
    seen: list[int] = []
    out = list(tap(lambda i: (time.sleep(0.005), seen.append(i)), range(15), depth=2))
    assert out == list(range(15)) and seen == list(range(15))


def test_tap_raises_the_observers_error():
    def observer(i: int) -> None:
        if i == 4:
            raise RuntimeError("observer failed on 4")

    with pytest.raises(RuntimeError, match="on 4"):
        list(tap(observer, range(10)))
