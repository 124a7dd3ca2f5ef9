"""Shared fixtures: a tiny model and toy data built locally (no hub, no network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Hub access is never needed; fail loudly if anything tries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from raft.testing import make_tiny_model, toy_sentiment_rows, write_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-32 BERT with a toy WordPiece vocabulary, saved like a hub model."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A learnable sentiment task: train (600 rows) and validation (120 rows) jsonl."""
    root = tmp_path_factory.mktemp("data")
    return {
        "train": write_jsonl(toy_sentiment_rows(600, seed=0), root / "train.jsonl"),
        "validation": write_jsonl(toy_sentiment_rows(120, seed=1), root / "validation.jsonl"),
    }
