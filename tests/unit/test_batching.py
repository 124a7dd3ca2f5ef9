"""Length-grouped batching (raft.batching): which rows go together, and what it saves."""

from __future__ import annotations

import numpy as np
import pytest

from raft.batching import length_groups, padding_fraction, row_lengths
from raft.spec import validate


def test_every_row_once_in_as_many_batches_as_without_grouping():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 129, size=100)
    batches = length_groups(lengths, 16, rng)
    assert [len(b) for b in batches] == [16] * 6 + [4]  # ceil(100 / 16): the epoch's steps stay
    assert sorted(np.concatenate(batches).tolist()) == list(range(100))
    # the remainder holds the shortest rows; every full batch is one slice of the sorted order
    assert lengths[batches[-1]].max() <= lengths[np.concatenate(batches[:-1])].min()


def test_batches_hold_rows_of_similar_length_in_a_random_order():
    lengths = np.arange(64)[::-1].copy()  # 63, 62, ..., 0
    first = length_groups(lengths, 8, np.random.default_rng(1))
    for batch in first:
        assert lengths[batch].max() - lengths[batch].min() == 7
    # the order of the batches is shuffled (seeded), not longest first
    assert [int(lengths[b].max()) for b in first] != sorted(
        (int(lengths[b].max()) for b in first), reverse=True
    )
    again = length_groups(lengths, 8, np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


def test_grouping_cuts_padding():
    rng = np.random.default_rng(2)
    lengths = rng.integers(8, 129, size=512)
    ungrouped = [np.arange(i, i + 16) for i in range(0, 512, 16)]
    grouped = length_groups(lengths, 16, rng)
    before, after = padding_fraction(lengths, ungrouped), padding_fraction(lengths, grouped)
    assert before > 0.3 and after < 0.05  # uniform lengths: a random batch's longest is near the top
    assert padding_fraction(np.array([5, 5]), [np.array([0, 1])]) == 0.0


def test_row_lengths_come_from_the_attention_mask():
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert row_lengths({"input_ids": mask, "attention_mask": mask}).tolist() == [3, 1]
    assert row_lengths({"pixel_values": np.zeros((2, 3, 4, 4))}) is None
    assert row_lengths({"attention_mask": np.ones(3)}) is None


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        length_groups(np.array([1, 2]), 0, np.random.default_rng())


BASE = {"model": {"path": "m"}, "data": {"train": "t.jsonl", "group_by_length": True}}


def test_spec_refuses_grouping_families_without_token_lengths():
    assert validate({**BASE, "task": {"type": "sequence_classification"}}).data.group_by_length
    with pytest.raises(
        ValueError, match="data.group_by_length: image_classification rows have no token length"
    ):
        validate({**BASE, "task": {"type": "image_classification"}})
    with pytest.raises(ValueError, match="length_window"):
        validate(
            {
                **BASE,
                "task": {"type": "sequence_classification"},
                "data": {**BASE["data"], "length_window": 1},
            }
        )
