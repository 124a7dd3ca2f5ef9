"""Seq2seq preprocessing (prefix, label padding ignored), trimming, and text metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raft.evaluate import load_exported
from raft.metrics import text_generation_metrics, text_generation_stats
from raft.tasks.seq2seq import IGNORE, Seq2Seq, Seq2SeqSpec, decode_labels, trim_seq2seq
from raft.testing import make_tiny_generative_model
from tests.helpers import export_tiny

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


def test_collate_keeps_left_padded_sources():
    batch = {
        "input_ids": torch.tensor([[0, 0, 5, 6, 7], [0, 0, 0, 5, 6]]),
        "attention_mask": torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 1, 1]]),
        "labels": torch.tensor([[8, IGNORE], [8, 9]]),
    }
    out = trim_seq2seq(batch)
    assert out["input_ids"].tolist() == [[5, 6, 7], [0, 5, 6]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]


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


# -- serving ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served_t5(model_dir, tmp_path_factory):
    """The tiny T5 exported with a source prefix, a short source limit and 6 new tokens. Its
    pad embedding is zeroed first: untrained, it would otherwise only repeat the pad token
    it starts decoding from (and every answer would be empty)."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    root = tmp_path_factory.mktemp("served-t5")
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    with torch.no_grad():
        model.shared.weight[0].zero_()
    model.save_pretrained(root / "base")
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(root / "base")
    task = {
        "type": "seq2seq",
        "source_prefix": "translate: ",
        "max_source_length": 8,
        "generation": {"max_new_tokens": 6},
    }
    return str(export_tiny(root / "base", root, task))


def _generated(model, tokenizer, source: str, max_source_length: int, **settings) -> str:
    ids = tokenizer(source)["input_ids"][:max_source_length]
    output = model.generate(input_ids=torch.tensor([ids]), do_sample=False, num_beams=1, **settings)
    return tokenizer.decode(output[0], skip_special_tokens=True).strip()


def test_serving_generates_from_the_prefixed_source_as_model_generate_does(served_t5):
    from transformers import AutoTokenizer

    spec, model, _ = load_exported(served_t5)
    tokenizer = AutoTokenizer.from_pretrained(served_t5)
    texts = ["good movie", "the story was sad " * 4, "le"]  # the second is cut at 8 tokens
    answers = TASK.predict(model, served_t5, spec.task, texts)
    expected = [_generated(model, tokenizer, "translate: " + t, 8, max_new_tokens=6) for t in texts]
    assert answers == [{"generated_text": text} for text in expected]
    assert all(expected) and len(set(expected)) > 1  # real, input-dependent generations
    # Without the prefix the model would have been asked something else.
    assert expected != [_generated(model, tokenizer, t, 8, max_new_tokens=6) for t in texts]


def test_request_parameters_override_the_exports_generation_settings(served_t5):
    spec, model, _ = load_exported(served_t5)
    texts = ["good movie", "the story was sad"]
    default = TASK.predict(model, served_t5, spec.task, texts)
    options = TASK.request_options({"max_new_tokens": 1}, spec.task)
    assert options == {"max_new_tokens": 1}
    short = TASK.predict(model, served_t5, spec.task, texts, **options)
    for one, full in zip(short, default, strict=True):
        assert one["generated_text"] and full["generated_text"].startswith(one["generated_text"])
        assert len(one["generated_text"]) < len(full["generated_text"])
    with pytest.raises(ValueError, match=r"parameters\.top_k: Extra inputs are not permitted"):
        TASK.request_options({"top_k": 2}, spec.task)
    with pytest.raises(ValueError, match=r"parameters\.max_new_tokens: Input should be greater than 0"):
        TASK.request_options({"max_new_tokens": 0}, spec.task)


def test_a_source_must_be_a_non_blank_text():
    from raft.serving import input_problems

    spec = Seq2SeqSpec(source_prefix="translate: ")
    assert TASK.serves and not TASK.media_inputs
    assert TASK.request_input("good movie", spec) == "good movie"
    decoded, problems = input_problems(TASK, spec, ["good movie", ["a", "b"], "  "])
    assert decoded == ["good movie"]
    assert problems == [
        "inputs[1]: give a text (this model takes one source text per input)",
        "inputs[2]: the text is blank; give a source text to generate from",
    ]
