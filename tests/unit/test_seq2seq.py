"""Seq2seq preprocessing (prefix, label padding ignored), trimming, and text metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raft.metrics import text_generation_metrics, text_generation_stats
from raft.tasks.seq2seq import IGNORE, Seq2Seq, Seq2SeqSpec, decode_labels, trim_seq2seq
from raft.testing import make_tiny_generative_model

TASK = Seq2Seq()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(make_tiny_generative_model(tmp_path_factory.mktemp("t5"), "seq2seq"))


def test_prefix_is_prepended_and_target_padding_is_ignored(model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    spec = Seq2SeqSpec(source_prefix="translate: ", max_source_length=16, max_target_length=8)
    batch = {"source": np.array(["good movie", "the story was sad"]), "target": np.array(["bon filmo", "le"])}
    features = TASK.preprocess(batch, spec, model_dir, None)
    assert set(features) == {"input_ids", "attention_mask", "labels"}
    source = features["input_ids"][0][features["attention_mask"][0] == 1]
    assert tokenizer.decode(source, skip_special_tokens=True) == "translate: good movie"
    assert features["labels"].shape == (2, 8)
    second = features["labels"][1]
    # The target ends with EOS (the model must learn to stop); padding is ignored.
    assert tokenizer.decode(second[second != IGNORE]) == "le</s>"
    assert (second[len(tokenizer("le")["input_ids"]) + 1 :] == IGNORE).all()
    assert decode_labels(tokenizer, torch.from_numpy(features["labels"])) == ["bon filmo", "le"]


def test_a_long_target_is_cut_with_its_eos_kept(model_dir):
    from transformers import AutoTokenizer

    from raft.tasks.seq2seq import target_ids

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    (ids,) = target_ids(tokenizer, ["le " * 20], max_length=5)
    assert len(ids) == 5 and ids[-1] == tokenizer.eos_token_id


def test_collate_trims_sources_and_targets_separately():
    batch = {
        "input_ids": torch.tensor([[5, 6, 7, 0, 0], [5, 6, 0, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]),
        "labels": torch.tensor([[8, IGNORE, IGNORE, IGNORE], [8, 9, IGNORE, IGNORE]]),
    }
    out = trim_seq2seq(batch)
    assert out["input_ids"].shape == (2, 3) and out["labels"].tolist() == [[8, IGNORE], [8, 9]]


def test_row_problem_names_an_empty_target(model_dir):
    spec = Seq2SeqSpec()
    assert "'target' is empty" in TASK.row_problem({"source": "x", "target": None}, spec, model_dir)
    assert TASK.row_problem({"source": "x", "target": "y"}, spec, model_dir) is None


def test_text_metrics_sum_exactly_across_workers():
    from sacrebleu import corpus_bleu

    predictions = ["le filmo eta bon", "gai histo", "tres mal"]
    references = ["le filmo eta bon", "le histo gai", "tres trist"]
    whole = text_generation_metrics(text_generation_stats(predictions, references))
    split = text_generation_metrics(
        text_generation_stats(predictions[:1], references[:1])
        + text_generation_stats(predictions[1:], references[1:])
    )
    assert split == pytest.approx(whole)
    assert whole["bleu"] == pytest.approx(corpus_bleu(predictions, [references]).score)
    assert text_generation_metrics(text_generation_stats(references, references)) == pytest.approx(
        {"rougeL": 1.0, "bleu": 100.0}
    )


def test_seq2seq_refuses_a_decoder_only_model(tmp_path):
    path = make_tiny_generative_model(tmp_path / "llama", "causal_lm")
    with pytest.raises(ValueError, match="needs an encoder-decoder model"):
        TASK.check_model(Seq2SeqSpec(), str(path))
