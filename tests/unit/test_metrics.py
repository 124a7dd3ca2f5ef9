from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from raft.metrics import classification_metrics, confusion_matrix


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=200)
    predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 4, size=200))
    metrics = classification_metrics(confusion_matrix(labels, predictions, 4))
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, predictions))
    assert metrics["macro_f1"] == pytest.approx(f1_score(labels, predictions, average="macro"))


def test_absent_class_is_not_averaged_in():
    labels = np.array([0, 0, 1, 1])
    predictions = np.array([0, 1, 1, 1])
    metrics = classification_metrics(confusion_matrix(labels, predictions, 5))
    assert metrics["macro_f1"] == pytest.approx(f1_score(labels, predictions, average="macro"))


def test_summed_shards_equal_the_whole():
    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 3, 90), rng.integers(0, 3, 90)
    whole = confusion_matrix(labels, predictions, 3)
    parts = sum(confusion_matrix(labels[i::3], predictions[i::3], 3) for i in range(3))
    assert (whole == parts).all()
    assert classification_metrics(np.zeros((3, 3))) == {"accuracy": 0.0, "macro_f1": 0.0}
