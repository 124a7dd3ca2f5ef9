"""A shard's first pass begins in a background thread before the worker reads it
(raft.worker._Prefetched): the reader gets every item in order, the producer's error at
the point it happened, and an abandoned pass stops its thread."""

from __future__ import annotations

import itertools
import threading

import pytest

from raft.worker import _Prefetched


def test_the_pass_begins_before_it_is_read_and_keeps_its_order():
    began = threading.Event()

    def items():
        began.set()
        yield from range(10)

    prefetched = _Prefetched(items(), depth=2)
    assert began.wait(5), "the producer did not start until read"
    assert list(prefetched) == list(range(10))


def test_the_producers_error_reaches_the_reader_where_it_happened():
    def items():
        yield 1
        yield 2
        raise ValueError("row 3 cannot be tokenized")

    read = []
    with pytest.raises(ValueError, match="row 3 cannot be tokenized"):
        for item in _Prefetched(items()):
            read.append(item)
    assert read == [1, 2]


def test_close_stops_a_pass_left_early():
    produced = itertools.count()
    prefetched = _Prefetched(iter(produced), depth=2)
    for item in prefetched:
        if item == 3:
            break
    prefetched.close()
    prefetched._thread.join(timeout=5)
    assert not prefetched._thread.is_alive()
    assert next(produced) <= 3 + 2 + 2  # read, queued, and one held when stopped
