"""Length-grouped batching (``data.group_by_length``): which rows of a window of batches go
together. Pure: numpy only, used by raft.worker on each worker's stream of rows.

Batches are trimmed to their longest row (``trim_padding``), so a batch of one long and
fifteen short rows computes sixteen long ones. Sorting a window of rows by length before
cutting it into batches makes rows of a batch alike in length; shuffling the order of the
window's batches keeps long and short batches interleaved over the epoch, as Hugging Face's
``group_by_length`` does with its mega-batches.
"""

from __future__ import annotations

import numpy as np


def row_lengths(batch: dict[str, np.ndarray]) -> np.ndarray | None:
    """Tokens per row (its attention mask's sum), or None for rows without a 2-D mask."""
    mask = batch.get("attention_mask")
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.ndim != 2:
        return None
    return mask.sum(axis=1)


def length_groups(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices of one window cut into batches of ``batch_size`` rows of similar length.

    Longest rows first, so a short remainder batch holds the window's shortest rows; full
    batches come in a random order and the remainder last. Every index appears once, and a
    window of n rows gives ceil(n / batch_size) batches, as ungrouped batching would: the
    steps of an epoch do not change."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    lengths = np.asarray(lengths)
    # A stable sort on the negated lengths: equal lengths keep their (already shuffled) order.
    order = np.argsort(-lengths, kind="stable")
    full = len(order) // batch_size
    batches = [order[i * batch_size : (i + 1) * batch_size] for i in range(full)]
    batches = [batches[i] for i in rng.permutation(full)]
    if len(order) % batch_size:
        batches.append(order[full * batch_size :])
    return batches


def padding_fraction(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """Share of the computed tokens that are padding when each batch is trimmed to its
    longest row (0 for an empty window)."""
    lengths = np.asarray(lengths)
    computed = sum(len(b) * int(lengths[b].max()) for b in batches if len(b))
    real = int(lengths.sum())
    return 1.0 - real / computed if computed else 0.0
