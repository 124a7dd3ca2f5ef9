"""Metrics computed from sufficient statistics, so that workers can sum them.

Each Train worker scores its own validation shard; summing confusion matrices (an
all-reduce) and then deriving accuracy and F1 gives exactly the numbers one process would
get on the whole split. Pure: no Ray import.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> np.ndarray:
    """Counts[i, j]: rows whose true class is i and predicted class is j."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    predictions = np.asarray(predictions, dtype=np.int64).ravel()
    flat = labels * num_labels + predictions
    return np.bincount(flat, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def classification_metrics(confusion: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-averaged F1 from a confusion matrix.

    Macro-F1 averages over the classes that occur in the labels or the predictions
    (scikit-learn's convention), so an absent class does not count as a zero.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    total = confusion.sum()
    if total == 0:
        return {"accuracy": 0.0, "macro_f1": 0.0}
    true_positive = np.diag(confusion)
    predicted = confusion.sum(axis=0)
    actual = confusion.sum(axis=1)
    present = (predicted + actual) > 0
    denominator = predicted + actual
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    return {
        "accuracy": float(true_positive.sum() / total),
        "macro_f1": float(f1[present].mean()),
    }
