"""Encoder sequence classification: sentiment, spam, topics, NLI (a text pair).

``AutoModelForSequenceClassification`` with a new head sized to the classes found in the
training data (or listed in ``task.labels``). Metrics: accuracy and macro-F1.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt

from raft.labels import LabelMap
from raft.metrics import classification_metrics, confusion_matrix
from raft.registry import TaskSpec, register_task
from raft.serving import TopK
from raft.sources import RowFault, label_fault, text_fault
from raft.tasks.base import Task, load_tokenizer, ranked_classes


class SequenceClassificationSpec(TaskSpec):
    type: Literal["sequence_classification"] = "sequence_classification"
    text_column: str = Field("text", description="Column with the text to classify.")
    text_pair_column: str | None = Field(
        None, description="Optional second text column (NLI premise/hypothesis, QA pairs)."
    )
    label_column: str = Field("label", description="Column with class names or integer ids.")
    labels: list[str] | None = Field(
        None,
        min_length=2,
        description="Class names in id order; integer labels are then ids into it (unless a name is "
        "an integer). Default: a saved dataset's ClassLabel names, else the sorted labels found in the "
        "training data (integer labels keep their values as ids).",
    )
    max_length: PositiveInt = Field(128, description="Tokens per example; longer text is cut.")


class SequenceClassification(Task):
    name = "sequence_classification"
    spec_class = SequenceClassificationSpec
    auto_class = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    primary_metric = "accuracy"

    def required_columns(self, spec: SequenceClassificationSpec) -> list[str]:
        columns = [spec.text_column, spec.label_column]
        return columns + ([spec.text_pair_column] if spec.text_pair_column else [])

    def label_column(self, spec: SequenceClassificationSpec) -> str:
        return spec.label_column

    def check_row(
        self, row: dict[str, Any], spec: SequenceClassificationSpec, model_path: str
    ) -> RowFault | None:
        # Text longer than max_length is cut (the documented behaviour), not a fault.
        pair = (
            text_fault(row[spec.text_pair_column], spec.text_pair_column) if spec.text_pair_column else None
        )
        return (
            text_fault(row[spec.text_column], spec.text_column)
            or pair
            or label_fault(row[spec.label_column], spec.label_column, spec.labels)
        )

    def preprocess(
        self,
        batch: dict[str, np.ndarray],
        spec: SequenceClassificationSpec,
        model_path: str,
        labels: LabelMap | None,
    ) -> dict[str, np.ndarray]:
        tokenizer = load_tokenizer(model_path)
        texts = _texts(batch[spec.text_column], spec.text_column)
        pairs = _texts(batch[spec.text_pair_column], spec.text_pair_column) if spec.text_pair_column else None
        # Pad to max_length here so every block has one shape; collate trims the padding
        # that no row in the batch needs.
        encoded = tokenizer(
            texts,
            pairs,
            truncation=True,
            max_length=spec.max_length,
            padding="max_length",
            return_tensors="np",
        )
        features = {key: np.asarray(value, dtype=np.int64) for key, value in encoded.items()}
        if labels is not None:
            features["labels"] = np.asarray(labels.encode(batch[spec.label_column]), dtype=np.int64)
        return features

    def collate(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return trim_padding({key: torch.from_numpy(np.array(value)) for key, value in batch.items()})

    def build_model(
        self,
        model_path: str,
        spec: SequenceClassificationSpec,
        labels: LabelMap | None,
        trust_remote_code: bool = False,
        *,
        allow_pickle: bool = False,
    ) -> torch.nn.Module:
        return self.load_with_head(model_path, labels, trust_remote_code, allow_pickle=allow_pickle)

    def empty_stats(self, labels: LabelMap | None) -> np.ndarray:
        return np.zeros((labels.num_labels, labels.num_labels), dtype=np.int64)

    def eval_stats(
        self, outputs: Any, batch: dict[str, torch.Tensor], labels: LabelMap | None, context: Any = None
    ) -> np.ndarray:
        predictions = outputs.logits.argmax(dim=-1).cpu().numpy()
        return confusion_matrix(batch["labels"].cpu().numpy(), predictions, labels.num_labels)

    def confusion(self, stats: np.ndarray) -> np.ndarray | None:
        return stats

    def metrics(self, stats: np.ndarray, labels: LabelMap | None) -> dict[str, float]:
        return classification_metrics(stats)

    serves = True
    options_model = TopK

    def request_input(self, item: Any, spec: SequenceClassificationSpec, model_dir: str | None = None) -> Any:
        if spec.text_pair_column:
            if not (isinstance(item, list) and len(item) == 2 and all(isinstance(t, str) for t in item)):
                raise ValueError("this model classifies text pairs; give [text, pair]")
        elif not isinstance(item, str):
            raise ValueError("give a text (this model takes one text per input)")
        return item

    @torch.no_grad()
    def predict(
        self, model: Any, model_dir: str, spec: SequenceClassificationSpec, inputs: list[Any], top_k: int = 1
    ) -> list[dict[str, Any]]:
        """Each input (a text, or a [text, pair] list) → its label, score and top_k classes."""
        tokenizer = load_tokenizer(model_dir)
        texts = [item[0] if isinstance(item, list) else item for item in inputs]
        pairs = [item[1] for item in inputs] if spec.text_pair_column else None
        encoded = tokenizer(
            texts, pairs, truncation=True, max_length=spec.max_length, padding=True, return_tensors="pt"
        )
        probabilities = model(**encoded.to(model.device)).logits.float().softmax(dim=-1).cpu()
        return ranked_classes(probabilities, model.config.id2label, top_k)

    def tiny_config(self, **overrides: Any) -> Any:
        from transformers import BertConfig

        settings = dict(
            vocab_size=1024,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
        settings.update(overrides)
        return BertConfig(**settings)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _texts(column: np.ndarray, name: str) -> list[str]:
    texts = []
    for value in column:
        if _is_missing(value):
            raise ValueError(f"column {name!r} has an empty value")
        texts.append(str(value))
    return texts


def token_columns(mask: torch.Tensor) -> slice:
    """The columns of a batch's attention mask that hold a token in some row: the batch
    without the padding every row has, whichever side the tokenizer pads on (some
    checkpoints' tokenizer_config pads on the left)."""
    present = mask.any(dim=0).nonzero()
    if len(present) == 0:
        return slice(0, 1)
    return slice(int(present[0]), int(present[-1]) + 1)


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut sequence columns to the tokens of the batch's longest row (``token_columns``)."""
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return batch
    columns = token_columns(mask)
    return {
        # contiguous: heads call .view() on labels (token classification's loss does)
        key: value[:, columns].contiguous() if value.dim() == 2 and value.shape[1] == mask.shape[1] else value
        for key, value in batch.items()
    }


register_task(SequenceClassification())
