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


# -- generated text: ROUGE-L (rouge-score) and corpus BLEU (sacrebleu) -----------------
# Statistics vector: [ROUGE-L F1 sum, rows, BLEU matches 1-4, BLEU totals 1-4, hypothesis
# length, reference length]. BLEU is a corpus statistic, but its n-gram matches, totals
# and lengths are sums over sentences, so per-worker sums give the exact corpus BLEU.
TEXT_STATS = 12


def text_generation_stats(predictions: list[str], references: list[str]) -> np.ndarray:
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU

    stats = np.zeros(TEXT_STATS, dtype=np.float64)
    if not predictions:
        return stats
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    stats[0] = sum(
        scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references, strict=True)
    )
    stats[1] = len(predictions)
    bleu = BLEU().corpus_score(predictions, [references])
    stats[2:6] = bleu.counts
    stats[6:10] = bleu.totals
    stats[10:12] = (bleu.sys_len, bleu.ref_len)
    return stats


def text_generation_metrics(stats: np.ndarray) -> dict[str, float]:
    """ROUGE-L F1 (0-1, mean over rows) and corpus BLEU (0-100, sacrebleu's default)."""
    from sacrebleu.metrics import BLEU

    rows = float(stats[1])
    if rows == 0:
        return {"rougeL": 0.0, "bleu": 0.0}
    bleu = BLEU.compute_bleu(
        correct=[int(v) for v in stats[2:6]],
        total=[int(v) for v in stats[6:10]],
        sys_len=int(stats[10]),
        ref_len=int(stats[11]),
    )
    return {"rougeL": float(stats[0]) / rows, "bleu": float(bleu.score)}
