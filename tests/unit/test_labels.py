from __future__ import annotations

import numpy as np
import pytest

from raft.labels import LabelMap, infer_label_map


def test_string_labels_are_sorted_so_ids_are_stable():
    labels = infer_label_map(["spam", "ham", "spam", "ham"])
    assert labels.names == ("ham", "spam")
    assert labels.encode(["spam", "ham"]) == [1, 0]


def test_integer_labels_keep_their_ids():
    labels = infer_label_map([2, 0, 2])
    assert labels.names == ("0", "1", "2")
    assert labels.encode([2, 0, 1.0, np.int64(1), "2"]) == [2, 0, 1, 1, 2]


def test_declared_labels_fix_the_order_and_must_cover_the_data():
    labels = infer_label_map(["pos", "neg"], declared=["pos", "neg", "neutral"])
    assert labels.label2id == {"pos": 0, "neg": 1, "neutral": 2}
    with pytest.raises(ValueError, match=r"\['maybe'\]"):
        infer_label_map(["pos", "maybe"], declared=["pos", "neg"])


def test_integer_ids_are_named_by_declared_labels_that_are_not_integers():
    """Data that stores ids (a Hugging Face ClassLabel column, conll2003's ner_tags) is
    named by task.labels in id order; where a declared name is itself an integer (star
    ratings "1".."5"), an integer is a name, never an id."""
    tags = ("O", "B-PER", "I-PER")
    labels = infer_label_map([0, 2, 1, 0], declared=list(tags))
    assert labels.names == tags
    assert labels.encode([0, np.int64(2), 1.0, "I-PER"]) == [0, 2, 1, 2]
    with pytest.raises(ValueError, match=r"\['3'\]"):
        infer_label_map([0, 3], declared=list(tags))  # out of range
    with pytest.raises(ValueError, match="3 is not one of the classes"):
        labels.encode([3])
    stars = ("1", "2", "3", "4", "5")
    assert infer_label_map([1, 5], declared=list(stars)).encode([1, 5]) == [0, 4]
    with pytest.raises(ValueError, match=r"\['0'\]"):
        infer_label_map([0, 1], declared=list(stars))


def test_unknown_label_at_encode_time_names_it():
    with pytest.raises(ValueError, match="'maybe' is not one of the classes"):
        LabelMap(("neg", "pos")).encode(["pos", "maybe"])


def test_bad_label_values_are_refused():
    with pytest.raises(ValueError, match="class names or integer ids"):
        infer_label_map(["a", None])
    with pytest.raises(ValueError, match="at least 2 classes"):
        infer_label_map(["only"])
    with pytest.raises(ValueError, match="0 or more"):
        infer_label_map([-1, 1])


def test_save_and_load(tmp_path):
    labels = LabelMap(("b", "a", "c"))
    labels.save(tmp_path)
    assert LabelMap.load(tmp_path) == labels
    assert labels.id2label == {0: "b", 1: "a", 2: "c"}
