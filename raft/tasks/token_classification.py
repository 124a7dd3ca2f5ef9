"""Token classification: named entities (BIO/IOBES tags), part-of-speech, chunking.

Rows hold pre-split words and one tag per word (two list columns). Words are cut into
sub-word tokens; the first sub-token of each word carries the word's tag and the others
are ignored by the loss (-100), unless ``label_all_subtokens``. Metrics: entity-level
precision, recall and F1 (entities found with seqeval), and token accuracy.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt

from raft.labels import LabelMap
from raft.registry import TaskSpec, register_task
from raft.sources import (
    LENGTH_MISMATCH,
    TOO_LONG,
    WRONG_TYPE,
    RowFault,
    is_list,
    label_fault,
    strings_fault,
)
from raft.tasks.base import Task, load_tokenizer
from raft.tasks.sequence_classification import trim_padding

IGNORE = -100


class TokenClassificationSpec(TaskSpec):
    type: Literal["token_classification"] = "token_classification"
    tokens_column: str = Field("tokens", description="Column with each row's words (a list of strings).")
    tags_column: str = Field("tags", description="Column with one tag per word (names like B-PER, or ids).")
    labels: list[str] | None = Field(
        None,
        min_length=2,
        description="Tag names in id order; integer tags are then ids into it. Default: a saved "
        "dataset's ClassLabel names (conll2003's ner_tags), else the sorted tags found in the training data.",
    )
    label_all_subtokens: bool = Field(
        False,
        description="Give every sub-token its word's tag, a B- tag continued as its I- tag "
        "(default: the first sub-token only).",
    )
    max_length: PositiveInt = Field(
        128,
        description="Sub-word tokens per row, special tokens included; a row whose words need more "
        "is a bad row (too_long: cutting it would drop words and their tags).",
    )


class TokenClassification(Task):
    name = "token_classification"
    spec_class = TokenClassificationSpec
    auto_class = "AutoModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"
    primary_metric = "f1"
    label_is_sequence = True
    unsupported_techniques = {
        "prompt_tuning": "peft's prompt tuning prepends virtual tokens to the input, so the "
        "per-token logits no longer line up with the tags; use prefix_tuning, which adds its "
        "prefix inside attention instead",
    }

    def required_columns(self, spec: TokenClassificationSpec) -> list[str]:
        return [spec.tokens_column, spec.tags_column]

    def label_column(self, spec: TokenClassificationSpec) -> str:
        return spec.tags_column

    def check_row(
        self, row: dict[str, Any], spec: TokenClassificationSpec, model_path: str
    ) -> RowFault | None:
        tokens, tags = row[spec.tokens_column], row[spec.tags_column]
        fault = strings_fault(tokens, spec.tokens_column, "words")
        if fault is not None:
            return fault
        if not is_list(tags):
            return RowFault(
                WRONG_TYPE, f"column {spec.tags_column!r} must hold a list of tags, got {tags!r:.60}"
            )
        if len(tokens) != len(tags):
            return RowFault(
                LENGTH_MISMATCH,
                f"{len(tokens)} tokens in {spec.tokens_column!r} but {len(tags)} tags in "
                f"{spec.tags_column!r}: {[str(t) for t in tokens][:8]}",
            )
        for number, tag in enumerate(tags, start=1):
            fault = label_fault(tag, spec.tags_column, spec.labels)
            if fault is not None:
                return RowFault(fault.reason, f"{fault.message} (tag {number})")
        return words_fit(load_tokenizer(model_path), list(tokens), spec.max_length)

    def preprocess(
        self,
        batch: dict[str, np.ndarray],
        spec: TokenClassificationSpec,
        model_path: str,
        labels: LabelMap | None,
    ) -> dict[str, np.ndarray]:
        tokenizer = load_tokenizer(model_path)
        words = [_strings(value, spec.tokens_column, i) for i, value in enumerate(batch[spec.tokens_column])]
        encoded = tokenizer(
            words,
            is_split_into_words=True,
            truncation=True,
            max_length=spec.max_length,
            padding="max_length",
        )
        features = {key: np.asarray(value, dtype=np.int64) for key, value in encoded.items()}
        if labels is not None:
            rows, continuing = [], continuation_ids(labels.names)
            for i, value in enumerate(batch[spec.tags_column]):
                tags = _strings(value, spec.tags_column, i)
                if len(tags) != len(words[i]):
                    raise ValueError(
                        f"row {i} of the batch has {len(words[i])} words in {spec.tokens_column!r} but "
                        f"{len(tags)} tags in {spec.tags_column!r}: {words[i][:8]}"
                    )
                rows.append(
                    align_tags(encoded.word_ids(i), labels.encode(tags), spec.label_all_subtokens, continuing)
                )
            features["labels"] = np.asarray(rows, dtype=np.int64)
        return features

    def collate(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return trim_padding({key: torch.from_numpy(np.array(value)) for key, value in batch.items()})

    def build_model(
        self,
        model_path: str,
        spec: TokenClassificationSpec,
        labels: LabelMap | None,
        trust_remote_code: bool = False,
        *,
        allow_pickle: bool = False,
    ) -> torch.nn.Module:
        return self.load_with_head(model_path, labels, trust_remote_code, allow_pickle=allow_pickle)

    # Statistics: one row [true positives, predicted, gold] per entity type, and a last
    # row [correct tokens, scored tokens, 0]. Counts add up across batches and workers.
    def empty_stats(self, labels: LabelMap | None) -> np.ndarray:
        return np.zeros((len(entity_types(labels.names)) + 1, 3), dtype=np.int64)

    def eval_stats(
        self, outputs: Any, batch: dict[str, torch.Tensor], labels: LabelMap | None, context: Any = None
    ) -> np.ndarray:
        predictions = outputs.logits.argmax(dim=-1).cpu().numpy()
        gold = batch["labels"].cpu().numpy()
        return entity_stats(gold, predictions, labels.names)

    def metrics(self, stats: np.ndarray, labels: LabelMap | None) -> dict[str, float]:
        return entity_metrics(stats)

    serves = True

    @torch.no_grad()
    def predict(
        self, model: Any, model_dir: str, spec: TokenClassificationSpec, inputs: list[Any]
    ) -> list[dict[str, Any]]:
        """Each text → its words' tags and the entities they form, with character spans."""
        tokenizer = load_tokenizer(model_dir)
        split = [[(m.group(), m.start(), m.end()) for m in re.finditer(r"\S+", text)] for text in inputs]
        encoded = tokenizer(
            [[w for w, _, _ in words] or [""] for words in split],
            is_split_into_words=True,
            truncation=True,
            max_length=spec.max_length,
            padding=True,
            return_tensors="pt",
        )
        probabilities = model(**encoded.to(model.device)).logits.float().softmax(dim=-1).cpu()
        names = model.config.id2label
        answers = []
        for row, (words, text) in enumerate(zip(split, inputs, strict=True)):
            tagged: dict[int, tuple[str, float]] = {}
            for position, word in enumerate(encoded.word_ids(row)):
                if word is not None and word not in tagged and word < len(words):  # first sub-token
                    score, tag_id = probabilities[row, position].max(dim=-1)
                    tagged[word] = (names[int(tag_id)], float(score))
            tags = [tagged.get(i, ("O", 0.0)) for i in range(len(words))]  # cut by max_length: O
            answers.append(
                {
                    "tags": [
                        {"word": w, "tag": t, "score": p}
                        for (w, _, _), (t, p) in zip(words, tags, strict=True)
                    ],
                    "entities": group_entities(text, words, tags),
                }
            )
        return answers

    def tiny_config(self, **overrides: Any) -> Any:
        from raft.tasks.sequence_classification import SequenceClassification

        return SequenceClassification().tiny_config(**overrides)


def group_entities(
    text: str, words: list[tuple[str, int, int]], tags: list[tuple[str, float]]
) -> list[dict[str, Any]]:
    """Tagged words → entities: ``B-X`` starts one, ``I-X`` continues an ``X`` (or starts
    one, as seqeval reads a stray ``I-``), ``O`` ends it; a tag with no prefix is its own
    type, and neighbouring words with it join. Spans index ``text``; an entity's score is
    the mean of its words' tag scores."""
    entities: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for (_, start, end), (tag, score) in zip(words, tags, strict=True):
        prefix, _, kind = tag.partition("-") if tag[:2] in ("B-", "I-") else ("", "", tag)
        if kind == "O" or not kind:
            current = None
            continue
        if current is not None and current["entity"] == kind and prefix != "B":
            current["end"], current["scores"] = end, [*current["scores"], score]
            continue
        current = {"entity": kind, "start": start, "end": end, "scores": [score]}
        entities.append(current)
    return [
        {
            "entity": e["entity"],
            "text": text[e["start"] : e["end"]],
            "start": e["start"],
            "end": e["end"],
            "score": sum(e["scores"]) / len(e["scores"]),
        }
        for e in entities
    ]


def align_tags(
    word_ids: list[int | None],
    tag_ids: list[int],
    label_all_subtokens: bool,
    continuing: dict[int, int] | None = None,
) -> list[int]:
    """One label per sub-token: the word's tag on its first sub-token, -100 on special
    tokens, padding and continuation sub-tokens. With ``label_all_subtokens`` continuation
    sub-tokens get the word's tag too, a B- tag continued as its I- tag (``continuing``,
    from ``continuation_ids``), as Hugging Face's run_ner does: a word split in three is one
    entity, B-LOC I-LOC I-LOC, not three."""
    aligned, previous = [], None
    for word in word_ids:
        if word is None:
            aligned.append(IGNORE)
        elif word != previous:
            aligned.append(tag_ids[word])
        elif label_all_subtokens:
            aligned.append((continuing or {}).get(tag_ids[word], tag_ids[word]))
        else:
            aligned.append(IGNORE)
        previous = word
    return aligned


def continuation_ids(names: tuple[str, ...]) -> dict[int, int]:
    """Each B-X tag's id → its I-X tag's id, where the label map has both."""
    index = {name: i for i, name in enumerate(names)}
    return {
        i: index["I-" + name[2:]]
        for i, name in enumerate(names)
        if name.startswith("B-") and "I-" + name[2:] in index
    }


def entity_types(names: tuple[str, ...]) -> list[str]:
    """Entity types named by BIO/IOBES tags (B-PER, I-PER → PER); "O" names none."""
    return sorted({name.split("-", 1)[1] for name in names if "-" in name and name[0] in "BIESL"})


def entity_stats(gold: np.ndarray, predictions: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    from seqeval.metrics.sequence_labeling import get_entities

    types = entity_types(names)
    index = {kind: i for i, kind in enumerate(types)}
    stats = np.zeros((len(types) + 1, 3), dtype=np.int64)
    for gold_row, predicted_row in zip(gold, predictions, strict=True):
        scored = gold_row != IGNORE
        gold_tags = [names[i] for i in gold_row[scored]]
        predicted_tags = [names[i] for i in predicted_row[scored]]
        stats[-1, 0] += sum(g == p for g, p in zip(gold_tags, predicted_tags, strict=True))
        stats[-1, 1] += len(gold_tags)
        gold_entities = {e for e in get_entities(gold_tags) if e[0] in index}
        predicted_entities = {e for e in get_entities(predicted_tags) if e[0] in index}
        for kind, *_ in gold_entities & predicted_entities:
            stats[index[kind], 0] += 1
        for kind, *_ in predicted_entities:
            stats[index[kind], 1] += 1
        for kind, *_ in gold_entities:
            stats[index[kind], 2] += 1
    return stats


def entity_metrics(stats: np.ndarray) -> dict[str, float]:
    """Micro-averaged entity precision/recall/F1 (as seqeval's default) and token accuracy."""
    true_positives, predicted, gold = (int(v) for v in stats[:-1].sum(axis=0))
    precision = true_positives / predicted if predicted else 0.0
    recall = true_positives / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    correct, scored = int(stats[-1, 0]), int(stats[-1, 1])
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "token_accuracy": correct / scored if scored else 0.0,
    }


def words_fit(tokenizer: Any, words: list[str], max_length: int) -> RowFault | None:
    """``too_long`` when a row's words, cut into sub-word tokens with the model's special
    tokens, exceed ``max_length``: truncation would cut words off, and their tags with them
    (they would neither train nor be scored)."""
    count = len(tokenizer(words, is_split_into_words=True, truncation=False)["input_ids"])
    if count <= max_length:
        return None
    return RowFault(
        TOO_LONG,
        f"the {len(words)} words make {count} sub-word tokens (with the special tokens), more than "
        f"task.max_length={max_length}: the words past the cut would lose their tags "
        "(raise task.max_length, or split the sentence)",
    )


def _is_list(value: Any) -> bool:
    return value is not None and not isinstance(value, (str, bytes, dict)) and hasattr(value, "__len__")


def _strings(value: Any, column: str, row: int) -> list[str]:
    if not _is_list(value):
        raise ValueError(f"row {row} of the batch: column {column!r} must hold a list, got {value!r:.60}")
    return [str(v) for v in value]


register_task(TokenClassification())
