"""Tiny models and toy data for tests and benchmarks: built locally, never downloaded.

A tiny model is a real architecture with a few thousand parameters, saved with
``save_pretrained`` so that raft loads it through the same ``from_pretrained`` path a
user's model takes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from raft import registry

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# A learnable toy sentiment task: the label is carried by one cue word among fillers.
CUES = {
    "positive": ["good", "great", "fine", "happy", "love"],
    "negative": ["bad", "awful", "poor", "sad", "hate"],
}
FILLERS = [
    "the",
    "a",
    "this",
    "that",
    "movie",
    "film",
    "plot",
    "actor",
    "scene",
    "story",
    "was",
    "is",
    "very",
    "really",
    "quite",
    "so",
    "it",
]


def toy_vocabulary() -> list[str]:
    words = sorted({w for cue in CUES.values() for w in cue} | set(FILLERS))
    return SPECIAL_TOKENS + words


def make_tiny_model(directory: str | Path, task_name: str = "sequence_classification", **overrides) -> Path:
    """Save a tiny model of ``task_name``'s family (weights + tokenizer) to ``directory``."""
    from transformers import AutoModel, BertTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = toy_vocabulary()
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}, do_lower_case=True)
    config = registry.get_task(task_name).tiny_config(vocab_size=len(vocab), **overrides)
    import torch

    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def toy_sentiment_rows(count: int, seed: int = 0, label_type: str = "str") -> list[dict]:
    """Rows {"text", "label"}: a cue word decides the label, fillers are noise."""
    rng = random.Random(seed)
    names = sorted(CUES)
    rows = []
    for _ in range(count):
        label = rng.choice(names)
        words = [rng.choice(FILLERS) for _ in range(rng.randint(3, 8))]
        words.insert(rng.randint(0, len(words)), rng.choice(CUES[label]))
        rows.append({"text": " ".join(words), "label": label if label_type == "str" else names.index(label)})
    return rows


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def toy_ner_rows(count: int, seed: int = 0) -> list[dict]:
    """Rows {"tokens", "tags"}: cue words are entities (B-POS / B-NEG), fillers are O."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        tokens = [rng.choice(FILLERS) for _ in range(rng.randint(3, 8))]
        tags = ["O"] * len(tokens)
        for _ in range(rng.randint(1, 2)):
            kind = rng.choice(sorted(CUES))
            at = rng.randint(0, len(tokens))
            tokens.insert(at, rng.choice(CUES[kind]))
            tags.insert(at, "B-POS" if kind == "positive" else "B-NEG")
        rows.append({"tokens": tokens, "tags": tags})
    return rows
