"""Preprocessing, collation and model building for sequence classification (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raft.labels import LabelMap
from raft.registry import get_task
from raft.tasks.sequence_classification import SequenceClassificationSpec, trim_padding

TASK = get_task("sequence_classification")
LABELS = LabelMap(("negative", "positive"))


def batch(texts, labels, **extra):
    return {"text": np.array(texts, dtype=object), "label": np.array(labels, dtype=object), **extra}


def test_preprocess_tokenizes_pads_and_encodes_labels(tiny_bert):
    spec = SequenceClassificationSpec(max_length=12)
    features = TASK.preprocess(
        batch(["a good movie", "bad"], ["positive", "negative"]), spec, str(tiny_bert), LABELS
    )
    assert features["input_ids"].shape == (2, 12)
    assert features["labels"].tolist() == [1, 0]
    assert features["attention_mask"].sum(axis=1).tolist() == [5, 3]  # [CLS] words [SEP]


def test_long_text_is_truncated(tiny_bert):
    spec = SequenceClassificationSpec(max_length=6)
    features = TASK.preprocess(batch(["good " * 50], ["positive"]), spec, str(tiny_bert), LABELS)
    assert features["attention_mask"].sum() == 6


def test_text_pairs_use_segment_ids(tiny_bert):
    spec = SequenceClassificationSpec(text_pair_column="hypothesis", max_length=16)
    rows = batch(["the movie"], ["positive"], hypothesis=np.array(["good"], dtype=object))
    features = TASK.preprocess(rows, spec, str(tiny_bert), LABELS)
    assert features["token_type_ids"][0].tolist()[:6] == [
        0,
        0,
        0,
        0,
        1,
        1,
    ]  # [CLS] the movie [SEP] good [SEP]


def test_bad_rows_name_the_problem(tiny_bert):
    spec = SequenceClassificationSpec()
    with pytest.raises(ValueError, match="'meh' is not one of the classes"):
        TASK.preprocess(batch(["fine"], ["meh"]), spec, str(tiny_bert), LABELS)
    with pytest.raises(ValueError, match="column 'text' has an empty value"):
        TASK.preprocess(batch([None], ["positive"]), spec, str(tiny_bert), LABELS)


def test_collate_trims_to_longest_row():
    features = {
        "input_ids": np.array([[2, 5, 3, 0, 0, 0], [2, 3, 0, 0, 0, 0]]),
        "attention_mask": np.array([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]]),
        "labels": np.array([0, 1]),
    }
    tensors = TASK.collate(features)
    assert tensors["input_ids"].shape == (2, 3)
    assert tensors["labels"].shape == (2,)
    assert trim_padding({"labels": torch.tensor([1])})["labels"].tolist() == [1]


def test_a_left_padding_tokenizer_keeps_its_tokens(tiny_bert, tmp_path):
    """Some checkpoints' tokenizer_config pads on the left; the batch is cut to the columns
    that hold tokens, not to the first ones (which are all padding then)."""
    import json
    import shutil

    left = tmp_path / "left"
    shutil.copytree(tiny_bert, left)
    config = json.loads((left / "tokenizer_config.json").read_text())
    (left / "tokenizer_config.json").write_text(json.dumps(config | {"padding_side": "left"}))
    spec = SequenceClassificationSpec(max_length=12)
    rows = batch(["a good movie", "bad"], ["positive", "negative"])
    right = TASK.collate(TASK.preprocess(rows, spec, str(tiny_bert), LABELS))
    padded_left = TASK.preprocess(rows, spec, str(left), LABELS)
    assert padded_left["attention_mask"][1].tolist()[:9] == [0] * 9  # it does pad on the left
    cut = TASK.collate(padded_left)
    assert cut["attention_mask"].shape == (2, 5)
    for row in range(2):  # the same tokens, on the other side
        kept = cut["input_ids"][row][cut["attention_mask"][row].bool()]
        assert kept.tolist() == right["input_ids"][row][right["attention_mask"][row].bool()].tolist()


def test_build_model_sizes_the_head_to_the_labels(tiny_bert):
    labels = LabelMap(("a", "b", "c"))
    model = TASK.build_model(str(tiny_bert), SequenceClassificationSpec(), labels, False)
    assert model.config.num_labels == 3
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert TASK.lora_targets(model) == ["query", "value"]


def test_eval_stats_are_a_confusion_matrix():
    class Out:
        logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])

    stats = TASK.eval_stats(Out(), {"labels": torch.tensor([0, 0, 1])}, LabelMap(("a", "b")))
    assert stats.tolist() == [[1, 1], [1, 0]]
    assert TASK.metrics(stats, LabelMap(("a", "b")))["accuracy"] == pytest.approx(1 / 3)


def test_predict_ranks_every_class_and_takes_text_pairs(tiny_bert):
    labels = LabelMap(("contradiction", "entailment", "neutral"))
    spec = SequenceClassificationSpec(text_pair_column="hypothesis", max_length=16)
    model = TASK.build_model(str(tiny_bert), spec, labels).eval()
    pairs = [["a good day", "a fine day"], ["bad", "good"]]
    answers = TASK.predict(model, str(tiny_bert), spec, pairs, top_k=3)
    for answer in answers:
        ranked = answer["top_k"]
        assert {c["label"] for c in ranked} == set(labels.names)
        assert [c["score"] for c in ranked] == sorted((c["score"] for c in ranked), reverse=True)
        assert sum(c["score"] for c in ranked) == pytest.approx(1.0, abs=1e-5)
        assert (answer["label"], answer["score"]) == (ranked[0]["label"], ranked[0]["score"])
    # The pair is read: swapping the two texts changes the logits.
    swapped = TASK.predict(model, str(tiny_bert), spec, [pairs[0][::-1]], top_k=3)[0]
    assert swapped["top_k"] != answers[0]["top_k"]
    assert len(TASK.predict(model, str(tiny_bert), spec, pairs, top_k=1)[0]["top_k"]) == 1


def test_pickle_weights_load_only_when_the_spec_allows_them(tiny_bert, tmp_path):
    """A folder with only pytorch_model.bin (pickle: loading it can run code) is refused by
    the same load raft trains with, and by the check before any cluster starts."""
    import shutil

    from transformers import AutoModel

    from raft.spec import validate
    from raft.train import RunError, check_model_path

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_bert, pickled, ignore=shutil.ignore_patterns("*.safetensors"))
    # transformers 5 writes safetensors only; a .bin as older tools and the hub still ship.
    torch.save(AutoModel.from_pretrained(tiny_bert).state_dict(), pickled / "pytorch_model.bin")
    assert (pickled / "pytorch_model.bin").is_file() and not list(pickled.glob("*.safetensors"))

    with pytest.raises(OSError, match="safetensors"):
        TASK.build_model(str(pickled), SequenceClassificationSpec(), LABELS, False)
    model = TASK.build_model(str(pickled), SequenceClassificationSpec(), LABELS, False, allow_pickle=True)
    reference = AutoModel.from_pretrained(tiny_bert)
    assert torch.equal(
        model.bert.embeddings.word_embeddings.weight, reference.embeddings.word_embeddings.weight
    )

    document = {
        "model": {"path": str(pickled)},
        "task": {"type": "sequence_classification"},
        "data": {"train": "t.jsonl"},
    }
    with pytest.raises(
        RunError, match=r"only pickle-based pytorch_model.bin.*model.allow_pickle_weights: true"
    ):
        check_model_path(validate(document))
    check_model_path(validate({**document, "model": {**document["model"], "allow_pickle_weights": True}}))
