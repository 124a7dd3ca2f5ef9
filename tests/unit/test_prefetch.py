"""A shard's first pass begins in a background thread before the worker reads it
(raft.worker._Prefetched): the reader gets every item in order, the producer's error at
the point it happened, and an abandoned pass stops its thread."""

from __future__ import annotations

import itertools
import threading

import pytest

from raft.worker import _FirstStep, _Prefetched


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


def test_a_pass_made_not_started_begins_at_start_or_at_its_first_read():
    began = threading.Event()

    def items():
        began.set()
        yield from range(3)

    waiting = _Prefetched(items(), start=False)
    assert not began.wait(0.3), "a pass made with start=False began on its own"
    waiting.start()
    waiting.start()  # a second start changes nothing
    assert began.wait(5)
    assert list(waiting) == [0, 1, 2]
    assert list(_Prefetched(iter(range(4)), start=False)) == [0, 1, 2, 3]  # read without start()


def test_actions_given_to_the_first_step_probe_run_once_after_the_first_step():
    timeline: dict[str, float] = {}
    probe = _FirstStep(timeline, engine=None)
    ran: list[str] = []
    probe.then(lambda: ran.append("queued"))
    assert ran == [] and "first_step" not in timeline
    probe.stepped()
    stamped = timeline["first_step"]
    assert ran == ["queued"]
    probe.stepped()
    assert ran == ["queued"] and timeline["first_step"] == stamped
    probe.then(lambda: ran.append("late"))  # after the first step: at once
    assert ran == ["queued", "late"]
