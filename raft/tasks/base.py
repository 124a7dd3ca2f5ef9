"""What every task family provides. A family is mostly data plus a few small functions.

Pure: no Ray import. The Ray glue (``raft.data``, ``raft.train``) calls these.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from raft.labels import LabelMap
from raft.registry import TaskSpec
from raft.sources import RowFault, missing_fault, oversized_fault


@dataclass
class EvalContext:
    """What a family may need beyond the forward pass to score a batch (seq2seq generates)."""

    model: Any  # the transformers/peft model (unwrapped from DeepSpeed and DDP)
    spec: Any  # the task section of the spec
    model_path: str  # where the tokenizer is
    synced: bool = False  # every worker generates in lockstep (ZeRO-3 with several workers)


class Task(ABC):
    """One task family: which model class, how rows become features, how to score."""

    name: ClassVar[str]
    spec_class: ClassVar[type[TaskSpec]]
    # The transformers Auto class of this family's models (e.g. "AutoModelForSequenceClassification").
    auto_class: ClassVar[str]
    # peft's TaskType for adapters on this family (e.g. "SEQ_CLS"); None where peft has
    # none (vision), and then the modules listed next train in full beside the adapter.
    peft_task_type: ClassVar[str | None]
    peft_modules_to_save: ClassVar[list[str] | None] = None
    # Validation metric the run summary leads with, and whether higher is better.
    primary_metric: ClassVar[str]
    primary_mode: ClassVar[str] = "max"
    # True when the label column holds one label per token (a list), not one per row.
    label_is_sequence: ClassVar[bool] = False
    # True when a training step may leave trainable parameters without a gradient (DDP
    # must then search for them each step).
    has_unused_parameters: ClassVar[bool] = False
    # Techniques this family cannot take, each with the reason shown at validation.
    unsupported_techniques: ClassVar[dict[str, str]] = {}
    # True when eval_stats returns one row per example (e.g. embeddings for retrieval) that
    # are concatenated over batches and gathered from every worker, instead of summed.
    row_stats: ClassVar[bool] = False
    # True when the model's inputs are token sequences padded to a batch's longest row
    # (an attention mask), so grouping rows by length (data.group_by_length) saves work.
    token_inputs: ClassVar[bool] = True

    # -- data ---------------------------------------------------------------------
    @abstractmethod
    def required_columns(self, spec: Any) -> list[str]:
        """Columns every input row must have."""

    def label_column(self, spec: Any) -> str | None:
        """The column holding class labels, when the family has a label set to learn."""
        return None

    def row_problem(self, row: dict[str, Any], spec: Any, model_path: str) -> str | None:
        """What is wrong with one input row (a message), or None: ``row_fault``'s message."""
        fault = self.row_fault(row, spec, model_path)
        return None if fault is None else fault.message

    def row_fault(self, row: dict[str, Any], spec: Any, model_path: str) -> RowFault | None:
        """Why one input row cannot be used (a reason key of ``raft.sources.REASONS`` and a
        message), or None. Checked for every row before training (the error names the file
        and row), and used to skip and count rows (data.on_bad_rows: skip). The generic
        checks come first: an absurdly large cell, then a required column absent or null."""
        return (
            oversized_fault(row)
            or missing_fault(row, self.required_columns(spec))
            or self.check_row(row, spec, model_path)
        )

    def check_row(self, row: dict[str, Any], spec: Any, model_path: str) -> RowFault | None:
        """The family's own row check (types, blanks, lengths...); every required column is
        present and not null by then."""
        return None

    def changes_row_count(self, spec: Any) -> bool:
        """True when preprocessing turns N rows into another number of examples (packing);
        the example count is then taken after preprocessing."""
        return False

    def augments(self, spec: Any) -> bool:
        """True when training batches go through ``augment`` after preprocessing."""
        return False

    def augment(self, batch: dict[str, np.ndarray], spec: Any) -> dict[str, np.ndarray]:
        """Random training-time changes to preprocessed features (fresh draws each epoch)."""
        return batch

    # The transformers class that turns raw inputs into model inputs for this family, and
    # any more it needs (speech and image-text models also carry a tokenizer).
    preprocessor_class: ClassVar[str] = "AutoTokenizer"
    extra_preprocessors: ClassVar[tuple[str, ...]] = ()
    # Named parts of the model (glob patterns over parameter names) that
    # ``technique: {type: freeze, parts: [...]}`` can freeze, e.g. CLIP's vision tower.
    model_parts: ClassVar[dict[str, list[str]]] = {}

    def save_preprocessor(self, model_path: str, destination: Any) -> None:
        """Copy the model's tokenizer (or image processor...) into an export folder."""
        import transformers

        for name in (self.preprocessor_class, *self.extra_preprocessors):
            getattr(transformers, name).from_pretrained(model_path).save_pretrained(destination)

    def check_model(self, spec: Any, model_path: str) -> None:
        """Refuse a model folder this family cannot use (ValueError), before any Ray work."""
        return None

    @abstractmethod
    def preprocess(
        self, batch: dict[str, np.ndarray], spec: Any, model_path: str, labels: LabelMap | None
    ) -> dict[str, np.ndarray]:
        """Rows (a column batch) → model features. Runs inside Ray Data ``map_batches``."""

    @abstractmethod
    def collate(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Feature batch → tensors for one forward pass."""

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The keyword arguments of the model's forward pass (that returns the loss) for a
        collated batch; a family may keep evaluation-only columns out of it."""
        return batch

    # -- model --------------------------------------------------------------------
    @abstractmethod
    def build_model(
        self,
        model_path: str,
        spec: Any,
        labels: LabelMap | None,
        trust_remote_code: bool,
        *,
        allow_pickle: bool = False,
    ) -> torch.nn.Module:
        """Load the pretrained model from a local folder, with a fresh head if needed."""

    def load_pretrained(self, run_spec: Any, labels: LabelMap | None) -> torch.nn.Module:
        """``build_model`` as a run spec says: its model folder, its task settings, and
        whether its model may run its own code or load pickle-based weights."""
        model = run_spec.model
        return self.build_model(
            model.path,
            run_spec.task,
            labels,
            model.trust_remote_code,
            allow_pickle=model.allow_pickle_weights,
        )

    def load_with_head(
        self, model_path: str, labels: LabelMap | None, trust_remote_code: bool, allow_pickle: bool = False
    ) -> torch.nn.Module:
        """``auto_class.from_pretrained`` with a new head sized to ``labels``, whose names go
        into the config (``id2label``) so predictions come back in the user's words."""
        import transformers

        if labels is None:
            raise ValueError(f"{self.name} needs a label set")
        return getattr(transformers, self.auto_class).from_pretrained(
            model_path,
            num_labels=labels.num_labels,
            id2label=labels.id2label,
            label2id=labels.label2id,
            trust_remote_code=trust_remote_code,
            use_safetensors=safetensors_only(allow_pickle),
        )

    def lora_targets(self, model: torch.nn.Module) -> list[str]:
        """Default LoRA target modules: peft's table for this architecture, else q/v-like."""
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
            return list(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type])
        names = {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)
        }
        guesses = [n for n in ("q_proj", "v_proj", "query", "value", "q", "v") if n in names]
        if not guesses:
            raise ValueError(
                f"no default LoRA target modules for model type {model_type!r}; set technique.target_modules"
            )
        return guesses

    def ia3_targets(self, model: torch.nn.Module) -> tuple[list[str], list[str]] | None:
        """Default IA3 (target, feed-forward) modules where peft's table has none (ViT,
        Whisper and CLIP in transformers 5): keys, values and the second MLP layer, found by
        name. None leaves the choice to peft's table."""
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING

        if getattr(model.config, "model_type", None) in TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING:
            return None
        names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        if {"k_proj", "v_proj", "fc2"} <= names:
            return ["k_proj", "v_proj", "fc2"], ["fc2"]
        if {"key", "value", "dense"} <= names:  # BERT-style naming
            return ["key", "value", "output.dense"], ["output.dense"]
        return None

    # -- evaluation ---------------------------------------------------------------
    @abstractmethod
    def empty_stats(self, labels: LabelMap | None) -> np.ndarray:
        """Zero statistics (what a worker with no validation rows contributes)."""

    @abstractmethod
    def eval_stats(
        self,
        outputs: Any,
        batch: dict[str, torch.Tensor],
        labels: LabelMap | None,
        context: EvalContext | None = None,
    ) -> np.ndarray:
        """Sufficient statistics of one batch; summed over batches and workers (int64
        arrays are counts; float64 arrays are sums)."""

    @abstractmethod
    def metrics(self, stats: np.ndarray, labels: LabelMap | None) -> dict[str, float]:
        """Metrics from summed statistics. A ``loss`` entry replaces the row-weighted mean
        of the batch losses (generative families weight by token instead)."""

    def metrics_for(self, stats: np.ndarray, labels: LabelMap | None, spec: Any) -> dict[str, float]:
        """``metrics`` where they depend on the task spec (image-text's recall@k)."""
        return self.metrics(stats, labels)

    def confusion(self, stats: np.ndarray) -> np.ndarray | None:
        """The confusion matrix (rows: true class, columns: predicted) in the summed
        statistics, for classifiers; reports draw it."""
        return None

    def combine_stats(self, total: np.ndarray, batch: np.ndarray) -> np.ndarray:
        """Fold one batch's statistics into the running total: a sum, or for ``row_stats``
        families a concatenation of per-row statistics."""
        if self.row_stats:
            return batch if len(total) == 0 else np.concatenate([total, batch])
        return total + batch

    def sample_generations(self, rows: list[dict[str, Any]], context: EvalContext) -> list[dict[str, str]]:
        """For generative families: {prompt, output, reference} for a few validation rows,
        logged at each evaluation. Every worker calls it (ZeRO-3 generation is collective)."""
        return []

    def generation_config(self, spec: Any, model_path: str) -> Any:
        """The ``GenerationConfig`` the export carries, for generative families."""
        return None

    # -- serving ------------------------------------------------------------------
    # ``raft serve``: a ``POST /predict`` body is {"inputs": one input or a list,
    # "parameters": {...}}. Each input goes through ``request_input`` and the parameters
    # through ``options_model``; a ValueError / ValidationError there is the client's 422.
    # Inputs of one batch that share their options run as one ``predict`` call.
    serves = False  # True where predict() is implemented (raft serve refuses the others)
    # True for families whose /predict input is a media file (image, audio): the input is
    # base64 text (or a data: URL) in JSON, or a file of a multipart upload (bytes).
    media_inputs: ClassVar[bool] = False
    options_model: ClassVar[type | None] = None  # pydantic model of the request's parameters

    def request_input(self, item: Any, spec: Any, model_dir: str | None = None) -> Any:
        """One input of a request, as ``predict`` takes it; ValueError says what is wrong.
        ``model_dir``: the served export, for checks that need the model (a clip's length)."""
        if not isinstance(item, str):
            raise ValueError("give a text")
        return item

    def request_options(self, parameters: dict[str, Any], spec: Any) -> dict[str, Any]:
        """The request's ``parameters`` checked against ``options_model`` (ValueError names
        the bad or unknown key), as the keyword arguments of ``predict``."""
        if self.options_model is None:
            if parameters:
                raise ValueError(f"this model takes no parameters (got {sorted(parameters)})")
            return {}
        from pydantic import ValidationError

        try:
            return self.options_model.model_validate(parameters).model_dump(exclude_none=True)
        except ValidationError as error:
            raise ValueError(
                "; ".join(
                    f"parameters.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
                )
            ) from None

    def predict(self, model: Any, model_dir: str, spec: Any, inputs: list[Any], **options: Any) -> list[Any]:
        """One answer per input (from ``request_input``), for ``raft serve``: plain
        JSON-able values. ``options``: from ``request_options``."""
        raise NotImplementedError(f"raft serve does not serve {self.name} models yet")

    # -- tests --------------------------------------------------------------------
    @abstractmethod
    def tiny_config(self, **overrides: Any) -> Any:
        """A few-thousand-parameter config of this family's reference architecture."""


def ranked_classes(probabilities: torch.Tensor, names: dict[int, str], top_k: int) -> list[dict[str, Any]]:
    """Per row of (N, classes) probabilities: {"label", "score", "top_k": [{"label",
    "score"}, ...]}, the top_k classes best first (at most every class)."""
    answers = []
    for row in probabilities:
        scores, ids = row.topk(min(top_k, row.numel()))
        ranked = [{"label": names[int(i)], "score": float(p)} for p, i in zip(scores, ids, strict=True)]
        answers.append({"label": ranked[0]["label"], "score": ranked[0]["score"], "top_k": ranked})
    return answers


def safetensors_only(allow_pickle: bool) -> bool | None:
    """transformers' ``use_safetensors``: True refuses pickle-based ``.bin`` weights (loading
    them can run code); None (the spec's model.allow_pickle_weights) prefers safetensors and
    falls back to them."""
    return None if allow_pickle else True


@functools.lru_cache(maxsize=4)
def load_tokenizer(model_path: str, trust_remote_code: bool = False) -> Any:
    """Tokenizer from a local model folder, cached per process (Ray Data reuses workers)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)


def loss_weight(batch: dict[str, torch.Tensor]) -> int:
    """What a batch's loss is a mean over: its scored label tokens where labels are per
    token (token classification, seq2seq and speech targets; -100 marks what the loss
    skips), else its rows. A validation loss weighted by it is the mean over every scored
    token of the set, whatever the batches and workers were."""
    labels = batch.get("labels")
    if isinstance(labels, torch.Tensor) and labels.dim() == 2:
        return int((labels != -100).sum())
    return int(next(iter(batch.values())).shape[0])
