"""Encoder-decoder text-to-text (T5, BART): summarization, translation, question answering.

Rows hold a source and a target text; ``source_prefix`` (T5's "summarize: ", "translate
English to German: ") is put before each source. Target padding gets label -100, so the
loss ignores it. Metrics come from generated text, decoded with the spec's ``generation``
settings (beam search with ``num_beams``): ROUGE-L F1 (rouge-score) and corpus BLEU
(sacrebleu), summed exactly across workers; plus the teacher-forced loss.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt

from raft.generation import GenerationSpec, generate, generation_config
from raft.labels import LabelMap
from raft.metrics import TEXT_STATS, text_generation_metrics, text_generation_stats
from raft.registry import TaskSpec, register_task
from raft.serving import GenerationOptions
from raft.sources import RowFault, text_fault
from raft.tasks.base import EvalContext, Task, load_tokenizer, safetensors_only
from raft.tasks.sequence_classification import token_columns

IGNORE = -100


class Seq2SeqSpec(TaskSpec):
    type: Literal["seq2seq"] = "seq2seq"
    source_column: str = Field("source", description="Column with the input text.")
    target_column: str = Field("target", description="Column with the text to produce.")
    source_prefix: str = Field("", description="Text put before every source (e.g. 'summarize: ').")
    max_source_length: PositiveInt = Field(256, description="Source tokens kept; longer sources are cut.")
    max_target_length: PositiveInt = Field(64, description="Target tokens kept; longer targets are cut.")
    generate_metrics: bool = Field(
        True, description="Generate for every validation row and score ROUGE-L/BLEU (else loss only)."
    )
    generation: GenerationSpec = Field(
        default_factory=GenerationSpec, description="Decoding for metrics, logged samples and serving."
    )


class Seq2Seq(Task):
    name = "seq2seq"
    spec_class = Seq2SeqSpec
    auto_class = "AutoModelForSeq2SeqLM"
    peft_task_type = "SEQ_2_SEQ_LM"
    primary_metric = "rougeL"
    model_parts = {"encoder": ["*encoder.*"], "decoder": ["*decoder.*", "lm_head.*"]}

    def required_columns(self, spec: Seq2SeqSpec) -> list[str]:
        return [spec.source_column, spec.target_column]

    def check_row(self, row: dict[str, Any], spec: Seq2SeqSpec, model_path: str) -> RowFault | None:
        # Sources and targets longer than their max lengths are cut (documented), not faults.
        return text_fault(row[spec.source_column], spec.source_column) or text_fault(
            row[spec.target_column], spec.target_column
        )

    def preprocess(
        self, batch: dict[str, np.ndarray], spec: Seq2SeqSpec, model_path: str, labels: LabelMap | None
    ) -> dict[str, np.ndarray]:
        tokenizer = load_tokenizer(model_path)
        sources = [spec.source_prefix + str(s) for s in batch[spec.source_column]]
        encoded = tokenizer(sources, truncation=True, max_length=spec.max_source_length, padding="max_length")
        targets = target_ids(tokenizer, [str(t) for t in batch[spec.target_column]], spec.max_target_length)
        features = {key: np.asarray(encoded[key], dtype=np.int64) for key in ("input_ids", "attention_mask")}
        features["labels"] = pad_labels(targets, spec.max_target_length)
        return features

    def collate(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        tensors = {key: torch.from_numpy(np.array(value)) for key, value in batch.items()}
        return trim_seq2seq(tensors)

    # -- model ----------------------------------------------------------------------
    def build_model(
        self,
        model_path: str,
        spec: Seq2SeqSpec,
        labels: LabelMap | None,
        trust_remote_code: bool = False,
        *,
        allow_pickle: bool = False,
    ) -> torch.nn.Module:
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM.from_pretrained(
            model_path, trust_remote_code=trust_remote_code, use_safetensors=safetensors_only(allow_pickle)
        )

    def check_model(self, spec: Seq2SeqSpec, model_path: str) -> None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_path)
        if not getattr(config, "is_encoder_decoder", False):
            raise ValueError(
                f"task seq2seq needs an encoder-decoder model (T5, BART); {model_path} is a "
                f"{config.model_type!r} model (for a decoder-only model use task.type: causal_lm)"
            )

    def generation_config(self, spec: Seq2SeqSpec, model_path: str) -> Any:
        from transformers import AutoConfig

        return generation_config(
            spec.generation, load_tokenizer(model_path), AutoConfig.from_pretrained(model_path)
        )

    # -- evaluation -----------------------------------------------------------------
    def empty_stats(self, labels: LabelMap | None) -> np.ndarray:
        return np.zeros(TEXT_STATS, dtype=np.float64)

    def eval_stats(
        self,
        outputs: Any,
        batch: dict[str, torch.Tensor],
        labels: LabelMap | None,
        context: EvalContext | None = None,
    ) -> np.ndarray:
        if context is None or not context.spec.generate_metrics:
            return self.empty_stats(labels)
        tokenizer = load_tokenizer(context.model_path)
        predictions = generate(
            context.model,
            tokenizer,
            context.spec.generation,
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_only=False,
            synced=context.synced,
        )
        return text_generation_stats(predictions, decode_labels(tokenizer, batch["labels"]))

    def metrics(self, stats: np.ndarray, labels: LabelMap | None) -> dict[str, float]:
        return text_generation_metrics(stats)

    def sample_generations(self, rows: list[dict[str, Any]], context: EvalContext) -> list[dict[str, str]]:
        spec: Seq2SeqSpec = context.spec
        rows = rows[: spec.generation.logged_samples]
        if not rows:
            return []
        tokenizer = load_tokenizer(context.model_path)
        sources = [spec.source_prefix + str(row[spec.source_column]) for row in rows]
        encoded = tokenizer(
            sources, truncation=True, max_length=spec.max_source_length, padding=True, return_tensors="pt"
        )
        outputs = generate(
            context.model,
            tokenizer,
            spec.generation,
            input_ids=encoded["input_ids"],
            attention_mask=encoded["attention_mask"],
            decoder_only=False,
            synced=context.synced,
        )
        return [
            {"prompt": source, "output": output, "reference": str(row[spec.target_column])}
            for source, output, row in zip(sources, outputs, rows, strict=True)
        ]

    # -- serving --------------------------------------------------------------------
    serves = True
    options_model = GenerationOptions

    def request_input(self, item: Any, spec: Seq2SeqSpec, model_dir: str | None = None) -> str:
        if not isinstance(item, str):
            raise ValueError("give a text (this model takes one source text per input)")
        if not item.strip():
            raise ValueError("the text is blank; give a source text to generate from")
        return item

    @torch.no_grad()
    def predict(
        self, model: Any, model_dir: str, spec: Seq2SeqSpec, inputs: list[str], **options: Any
    ) -> list[dict[str, str]]:
        """Each source text (``source_prefix`` put before it, as in training) → the text
        generated with the spec's ``generation`` settings, overridden by ``options``."""
        tokenizer = load_tokenizer(model_dir)
        encoded = tokenizer(
            [spec.source_prefix + text for text in inputs],
            truncation=True,
            max_length=spec.max_source_length,
            padding=True,
            return_tensors="pt",
        )
        outputs = generate(
            model,
            tokenizer,
            spec.generation.model_copy(update=options),
            input_ids=encoded["input_ids"],
            attention_mask=encoded["attention_mask"],
            decoder_only=False,
        )
        return [{"generated_text": text} for text in outputs]

    def tiny_config(self, **overrides: Any) -> Any:
        from transformers import T5Config

        settings = dict(
            vocab_size=512, d_model=64, d_ff=128, d_kv=16, num_layers=2, num_heads=4, dropout_rate=0.0
        )
        settings.update(overrides)
        settings.setdefault("decoder_start_token_id", settings.get("pad_token_id", 0))
        settings.pop("bos_token_id", None)  # T5 starts decoding from the pad token
        return T5Config(**settings)


def target_ids(tokenizer: Any, targets: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each target, ending with EOS (added when the tokenizer does not add it
    itself, as T5's and BART's do) so the model learns where to stop; cut at max_length
    with the EOS kept."""
    eos = tokenizer.eos_token_id
    rows = []
    for ids in tokenizer(text_target=targets)["input_ids"]:
        ids = list(ids)
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        if len(ids) > max_length:
            ids = ids[: max_length - 1] + ([eos] if eos is not None else [ids[max_length - 1]])
        rows.append(ids)
    return rows


def pad_labels(rows: list[list[int]], max_length: int) -> np.ndarray:
    """Right-pad label rows with -100, which the loss ignores."""
    labels = np.full((len(rows), max_length), IGNORE, dtype=np.int64)
    for i, ids in enumerate(rows):
        labels[i, : len(ids)] = ids
    return labels


def trim_seq2seq(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut source columns to the longest source and labels to the longest target."""
    out = dict(batch)
    columns = token_columns(batch["attention_mask"])  # a left-padding tokenizer's too
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        if key in out:
            out[key] = out[key][:, columns].contiguous()
    if "labels" in out:
        scored = (out["labels"] != IGNORE).sum(dim=1)
        out["labels"] = out["labels"][:, : int(scored.max().item()) or 1].contiguous()
    return out


def decode_labels(tokenizer: Any, labels: torch.Tensor) -> list[str]:
    ids = labels.clone().cpu()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids[ids == IGNORE] = pad
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


register_task(Seq2Seq())
