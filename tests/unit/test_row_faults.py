"""Every family's row check gives a stable reason key (data.on_bad_rows counts them), no Ray."""

from __future__ import annotations

import pytest

from raft.registry import get_task
from raft.sources import MAX_ROW_BYTES, REASONS


def reason(task_name: str, row: dict, **spec) -> str | None:
    task = get_task(task_name)
    fault = task.row_fault(row, task.spec_class(**spec), "")
    assert fault is None or fault.reason in REASONS, fault  # only documented keys
    assert task.row_problem(row, task.spec_class(**spec), "") == (fault and fault.message)
    return fault and fault.reason


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"text": "good film", "label": "positive"}, None),
        ({"text": "good film", "label": 1}, None),
        ({"label": "positive"}, "missing_column"),
        ({"text": None, "label": "positive"}, "missing_column"),
        ({"text": float("nan"), "label": "positive"}, "missing_column"),  # pandas' null
        ({"text": 42, "label": "positive"}, "wrong_type"),
        ({"text": ["good"], "label": "positive"}, "wrong_type"),
        ({"text": {"a": 1}, "label": "positive"}, "wrong_type"),
        ({"text": "good", "label": [1, 2]}, "wrong_type"),
        ({"text": "good", "label": True}, "wrong_type"),
        ({"text": "  ", "label": "positive"}, "empty_text"),
        ({"text": "good", "label": -2}, "bad_label"),
        ({"text": "x" * (MAX_ROW_BYTES + 1), "label": "positive"}, "too_long"),
    ],
)
def test_sequence_classification_rows(row, expected):
    assert reason("sequence_classification", row) == expected


def test_declared_labels_and_text_pairs():
    assert (
        reason("sequence_classification", {"text": "a", "label": "meh"}, labels=["neg", "pos"]) == "bad_label"
    )
    pair = {"text_pair_column": "hypothesis"}
    assert reason("sequence_classification", {"text": "a", "label": "x"}, **pair) == "missing_column"
    assert (
        reason("sequence_classification", {"text": "a", "hypothesis": 3, "label": "x"}, **pair)
        == "wrong_type"
    )
    assert reason("sequence_classification", {"text": "a", "hypothesis": "b", "label": "x"}, **pair) is None


def test_seq2seq_rows():
    assert reason("seq2seq", {"source": "hello", "target": "bonjour"}) is None
    assert reason("seq2seq", {"source": "hello"}) == "missing_column"
    assert reason("seq2seq", {"source": "hello", "target": 5}) == "wrong_type"
    assert reason("seq2seq", {"source": "", "target": "x"}) == "empty_text"
    # Longer than max_source_length is cut, as documented: not a fault.
    assert reason("seq2seq", {"source": "word " * 5000, "target": "x"}, max_source_length=8) is None


def test_media_rows_without_decoding_anything():
    assert reason("image_classification", {"image": 12, "label": "cat"}) == "wrong_type"
    assert reason("image_classification", {"image": b"not an image", "label": "cat"}) == "bad_media"
    task = get_task("image_classification")
    fault = task.row_fault({"image": b"not an image", "label": "cat"}, task.spec_class(), "")
    assert "cannot identify image file" in fault.message and "0x" not in fault.message  # no address
    assert reason("image_classification", {"image": b"x", "label": None}) == "missing_column"
    assert reason("image_text", {"image": b"x", "caption": ["a"]}) == "wrong_type"
    assert reason("speech_recognition", {"audio": 3.5, "text": "four"}) == "wrong_type"
    assert reason("speech_recognition", {"audio": b"RIFF....WAVE nothing", "text": "four"}) == "bad_media"
