"""Image-text contrastive fine-tuning (CLIP style: ``CLIPModel`` through ``AutoModel``).

Rows pair an image (bytes, or a path relative to the data file) with its caption. Inside
Ray Data the image goes through the model's image processor (Pillow backend) and the
caption through its tokenizer. Training uses the model's own symmetric contrastive loss
(``return_loss=True``): each caption's negatives are the other captions of the same batch
on that worker. Either tower can be frozen (``technique: {type: freeze, parts: [vision]}``).

Validation keeps every row's normalized image and text embedding and, after gathering them
from all workers, scores retrieval over the whole validation set: image→text and
text→image recall@k. A caption's rank counts only the captions scored strictly higher, so
identical captions (which embed alike) do not count against each other. With a
``label_column``, each image is also classified zero-shot against ``class_prompt`` filled
with every class name, and the accuracy is reported.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt, field_validator

from raft.labels import LabelMap
from raft.registry import SectionModel, TaskSpec, register_task
from raft.serving import decode_media
from raft.sources import RowFault, label_fault, text_fault
from raft.tasks.base import EvalContext, Task, load_tokenizer, ranked_classes, safetensors_only
from raft.tasks.image_classification import image_fault, load_image_processor, open_image, request_image

PROMPT_REASON = (
    "peft's {kind} needs a task type with token embeddings to prepend to; an image-text "
    "model has two towers and peft has no task type for it"
)


# Cosine similarities closer than this count as ties (float32 embeddings differ by ~1e-7).
TIE_TOLERANCE = 1e-5


class ImageTextSpec(TaskSpec):
    type: Literal["image_text"] = "image_text"
    image_column: str = Field(
        "image", description="Column of image bytes or paths (relative to the data file)."
    )
    text_column: str = Field("caption", description="Column with each image's caption.")
    label_column: str | None = Field(
        None, description="Column with each row's class name: enables zero-shot accuracy on validation."
    )
    labels: list[str] | None = Field(
        None,
        min_length=2,
        description="Class names for zero-shot scoring. Default: the sorted classes found.",
    )
    class_prompt: str = Field(
        "a photo of {}.", description="Caption each class name is put into for zero-shot scoring ({} = name)."
    )
    max_length: PositiveInt = Field(77, description="Caption tokens kept (CLIP's text tower takes 77).")
    recall_at: list[PositiveInt] = Field(
        default_factory=lambda: [1, 5], min_length=1, description="The k of the recall@k metrics."
    )

    @field_validator("class_prompt")
    @classmethod
    def _has_slot(cls, value: str) -> str:
        if "{}" not in value:
            raise ValueError("class_prompt needs a {} where the class name goes")
        return value


class ImageTextOptions(SectionModel):
    """``raft serve`` parameters of an image-text model."""

    candidate_labels: list[str] | None = Field(
        None,
        min_length=1,
        max_length=1000,
        description="Class names to classify each image against zero-shot (each put into "
        "task.class_prompt). Default: the classes the model was trained with, if any.",
    )
    top_k: PositiveInt = Field(1, le=1000, description="Classes to return per image, best first.")

    @field_validator("candidate_labels")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if any(not label.strip() for label in value):
            raise ValueError("a candidate label is blank")
        repeated = sorted({label for label in value if value.count(label) > 1})
        if repeated:
            raise ValueError(f"candidate labels repeat: {repeated}")
        return value


INPUT_SHAPE = 'give {"image": <base64 image>} or {"text": "..."} (exactly one of the two)'


class ImageText(Task):
    name = "image_text"
    spec_class = ImageTextSpec
    auto_class = "AutoModel"
    peft_task_type = None  # the adapter wraps the two-tower model as is
    preprocessor_class = "AutoImageProcessor"
    extra_preprocessors = ("AutoTokenizer",)
    primary_metric = "recall_at_1"
    row_stats = True  # per-row embeddings, gathered from every worker (retrieval needs all)
    model_parts = {
        "vision": ["vision_model.*", "visual_projection.*"],
        "text": ["text_model.*", "text_projection.*"],
    }
    unsupported_techniques = {
        "prompt_tuning": PROMPT_REASON.format(kind="prompt tuning"),
        "prefix_tuning": PROMPT_REASON.format(kind="prefix tuning"),
    }

    def required_columns(self, spec: ImageTextSpec) -> list[str]:
        return [spec.image_column, spec.text_column] + ([spec.label_column] if spec.label_column else [])

    def label_column(self, spec: ImageTextSpec) -> str | None:
        return spec.label_column

    def check_row(self, row: dict[str, Any], spec: ImageTextSpec, model_path: str) -> RowFault | None:
        # Captions longer than max_length are cut (documented), not faults.
        fault = text_fault(row[spec.text_column], spec.text_column) or (
            label_fault(row[spec.label_column], spec.label_column, spec.labels) if spec.label_column else None
        )
        return fault or image_fault(row[spec.image_column], spec.image_column, row.get("path"))

    def preprocess(
        self, batch: dict[str, np.ndarray], spec: ImageTextSpec, model_path: str, labels: LabelMap | None
    ) -> dict[str, np.ndarray]:
        paths = batch.get("path")
        images = [
            open_image(value, None if paths is None else paths[i]).convert("RGB")
            for i, value in enumerate(batch[spec.image_column])
        ]
        pixels = load_image_processor(model_path)(images=images, return_tensors="np")["pixel_values"]
        ids, mask = caption_ids(
            load_tokenizer(model_path), [str(t) for t in batch[spec.text_column]], spec.max_length
        )
        features = {"pixel_values": pixels.astype(np.float32), "input_ids": ids, "attention_mask": mask}
        if labels is not None and spec.label_column:
            features["class_ids"] = np.asarray(labels.encode(batch[spec.label_column]), dtype=np.int64)
        return features

    def collate(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        tensors = {key: torch.from_numpy(np.array(value)) for key, value in batch.items()}
        longest = int(tensors["attention_mask"].sum(dim=1).max().item()) or 1
        for key in ("input_ids", "attention_mask"):
            tensors[key] = tensors[key][:, :longest].contiguous()
        return tensors

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        inputs = {key: value for key, value in batch.items() if key != "class_ids"}
        return {**inputs, "return_loss": True}

    # -- model ----------------------------------------------------------------------
    def build_model(
        self,
        model_path: str,
        spec: ImageTextSpec,
        labels: LabelMap | None,
        trust_remote_code: bool = False,
        *,
        allow_pickle: bool = False,
    ) -> torch.nn.Module:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(
            model_path, trust_remote_code=trust_remote_code, use_safetensors=safetensors_only(allow_pickle)
        )
        if labels is not None:  # the class names travel in the config, for zero-shot serving
            model.config.id2label, model.config.label2id = labels.id2label, labels.label2id
        return model

    def check_model(self, spec: ImageTextSpec, model_path: str) -> None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_path)
        if getattr(config, "text_config", None) is None or getattr(config, "vision_config", None) is None:
            raise ValueError(
                f"task image_text needs a two-tower image-text model (CLIP, SigLIP); {model_path} is a "
                f"{config.model_type!r} model"
            )
        positions = getattr(config.text_config, "max_position_embeddings", None)
        if positions and spec.max_length > positions:
            raise ValueError(
                f"task.max_length {spec.max_length} is longer than the text tower's {positions} positions"
            )

    # -- evaluation -----------------------------------------------------------------
    # One row per example: [image embedding (D), text embedding (D), class id, zero-shot class].
    def empty_stats(self, labels: LabelMap | None) -> np.ndarray:
        return np.zeros((0, 2), dtype=np.float64)

    def eval_stats(
        self,
        outputs: Any,
        batch: dict[str, torch.Tensor],
        labels: LabelMap | None,
        context: EvalContext | None = None,
    ) -> np.ndarray:
        images = _unit(outputs.image_embeds.detach()).cpu().double()
        texts = _unit(outputs.text_embeds.detach()).cpu().double()
        rows = images.shape[0]
        gold = batch.get("class_ids")
        classes = torch.full((rows,), -1.0, dtype=torch.float64)
        predicted = torch.full((rows,), -1.0, dtype=torch.float64)
        if gold is not None and labels is not None and context is not None:
            prompts = class_embeddings(context, labels)
            classes = gold.cpu().double()
            predicted = (images @ prompts.T).argmax(dim=-1).double()
        return torch.cat([images, texts, classes[:, None], predicted[:, None]], dim=1).numpy()

    def metrics(self, stats: np.ndarray, labels: LabelMap | None) -> dict[str, float]:
        return retrieval_metrics(stats)

    def metrics_for(
        self, stats: np.ndarray, labels: LabelMap | None, spec: ImageTextSpec
    ) -> dict[str, float]:
        return retrieval_metrics(stats, tuple(sorted({1, *spec.recall_at})))

    # -- serving --------------------------------------------------------------------
    serves = True
    options_model = ImageTextOptions

    def request_input(self, item: Any, spec: ImageTextSpec, model_dir: str | None = None) -> tuple[str, Any]:
        """{"image": base64} → ("image", RGB PIL image); {"text": str} → ("text", str)."""
        if not isinstance(item, dict):
            raise ValueError(INPUT_SHAPE)
        if set(item) not in ({"image"}, {"text"}):
            raise ValueError(f"{INPUT_SHAPE}; got the keys {sorted(map(str, item))}")
        if "text" in item:
            if not isinstance(item["text"], str):
                raise ValueError(f'"text" must be a string, got {type(item["text"]).__name__}')
            return "text", item["text"]
        return "image", request_image(decode_media(item["image"], "image"))

    @torch.no_grad()
    def predict(
        self,
        model: Any,
        model_dir: str,
        spec: ImageTextSpec,
        inputs: list[tuple[str, Any]],
        candidate_labels: list[str] | None = None,
        top_k: int = 1,
    ) -> list[dict[str, Any]]:
        """Each input → {"embedding": its unit embedding}; an image is also classified
        zero-shot (label, score, top_k: softmax over the model's scaled cosine similarity
        to ``class_prompt`` filled with each name) against ``candidate_labels``, or else the
        classes the model was trained with, when there are any."""
        answers: list[dict[str, Any]] = [{} for _ in inputs]
        texts = [i for i, (kind, _) in enumerate(inputs) if kind == "text"]
        images = [i for i, (kind, _) in enumerate(inputs) if kind == "image"]
        if texts:
            vectors = text_embeddings(model, model_dir, [inputs[i][1] for i in texts], spec.max_length)
            for i, vector in zip(texts, vectors, strict=True):
                answers[i] = {"embedding": vector.tolist()}
        if images:
            pixels = load_image_processor(model_dir)(
                images=[inputs[i][1] for i in images], return_tensors="pt"
            )
            features = model.get_image_features(
                pixel_values=pixels["pixel_values"].to(model.device, model.dtype)
            )
            vectors = _unit(_pooled(features).float()).cpu()
            names = candidate_labels or trained_classes(model, spec)
            ranked: list[dict[str, Any]] = [{} for _ in images]
            if names:
                prompts = [spec.class_prompt.format(name) for name in names]
                classes = text_embeddings(model, model_dir, prompts, spec.max_length)
                scale = getattr(model, "logit_scale", None)
                scale = float(scale.exp()) if scale is not None else 1.0
                probabilities = (scale * vectors @ classes.T).softmax(dim=-1)
                ranked = ranked_classes(probabilities, dict(enumerate(names)), top_k)
            for i, vector, classified in zip(images, vectors, ranked, strict=True):
                answers[i] = {**classified, "embedding": vector.tolist()}
        return answers

    def tiny_config(self, **overrides: Any) -> Any:
        from transformers import CLIPConfig

        token_ids = {
            k: overrides.pop(k)
            for k in ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id")
            if k in overrides
        }
        text = dict(
            vocab_size=512,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=32,
        )
        text.update(token_ids)
        vision = dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        )
        settings = dict(text_config=text, vision_config=vision, projection_dim=32)
        settings.update(overrides)
        return CLIPConfig(**settings)


def caption_ids(tokenizer: Any, captions: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded (input_ids, attention_mask), each caption ending with EOS: CLIP's text
    tower pools at the EOS token, so one is added where the tokenizer does not add it."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids = np.full((len(captions), max_length), pad, dtype=np.int64)
    mask = np.zeros((len(captions), max_length), dtype=np.int64)
    for i, tokens in enumerate(tokenizer(captions)["input_ids"]):
        tokens = list(tokens)
        if eos is not None and (not tokens or tokens[-1] != eos):
            tokens.append(eos)
        if len(tokens) > max_length:
            tokens = tokens[: max_length - 1] + tokens[-1:]
        ids[i, : len(tokens)] = tokens
        mask[i, : len(tokens)] = 1
    return ids, mask


def class_embeddings(context: EvalContext, labels: LabelMap) -> torch.Tensor:
    """Unit text embeddings of ``class_prompt`` filled with each class name, in id order."""
    spec: ImageTextSpec = context.spec
    prompts = [spec.class_prompt.format(name) for name in labels.names]
    return text_embeddings(context.model, context.model_path, prompts, spec.max_length).double()


def text_embeddings(model: Any, model_path: str, texts: list[str], max_length: int) -> torch.Tensor:
    """(N, D) unit float32 text embeddings (on the CPU) of ``texts``, tokenized as captions
    are in training (``caption_ids``) with the tokenizer in ``model_path``."""
    ids, mask = caption_ids(load_tokenizer(model_path), texts, max_length)
    longest = int(mask.sum(axis=1).max()) or 1  # padding past the longest changes nothing
    device = next(model.parameters()).device
    with torch.no_grad():
        features = model.get_text_features(
            input_ids=torch.from_numpy(ids[:, :longest]).to(device),
            attention_mask=torch.from_numpy(mask[:, :longest]).to(device),
        )
    return _unit(_pooled(features).float()).cpu()


def trained_classes(model: Any, spec: ImageTextSpec) -> list[str]:
    """The class names a model trained with a ``label_column`` carries in its config (in id
    order); none for a model trained on captions alone."""
    id2label = getattr(model.config, "id2label", None) or {}
    if not spec.label_column or not id2label:
        return []
    return [str(id2label[i]) for i in sorted(id2label, key=int)]


def retrieval_metrics(stats: np.ndarray, recall_at: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Recall@k both ways over all rows, their mean per k, and zero-shot accuracy."""
    rows = stats.shape[0]
    if rows == 0:
        return {f"recall_at_{k}": 0.0 for k in recall_at}
    dim = (stats.shape[1] - 2) // 2
    images, texts = stats[:, :dim], stats[:, dim : 2 * dim]
    similarity = images @ texts.T
    paired = np.diag(similarity)
    # Rank of the paired item: how many others score higher by more than float noise. Ties
    # are not misses: identical captions embed alike, but not bit-identically when they
    # were computed in batches of other shapes (float32 sums in another order).
    image_to_text = (similarity > paired[:, None] + TIE_TOLERANCE).sum(axis=1)
    text_to_image = (similarity > paired[None, :] + TIE_TOLERANCE).sum(axis=0)
    metrics: dict[str, float] = {}
    for k in recall_at:
        i2t, t2i = float((image_to_text < k).mean()), float((text_to_image < k).mean())
        metrics[f"image_to_text_recall_at_{k}"] = i2t
        metrics[f"text_to_image_recall_at_{k}"] = t2i
        metrics[f"recall_at_{k}"] = (i2t + t2i) / 2
    classes, predicted = stats[:, -2], stats[:, -1]
    labelled = classes >= 0
    if labelled.any():
        metrics["zero_shot_accuracy"] = float((predicted[labelled] == classes[labelled]).mean())
    return metrics


def _pooled(features: Any) -> torch.Tensor:
    """The projected embeddings of ``get_*_features`` (transformers 5 returns an output object)."""
    return getattr(features, "pooler_output", features)


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)


register_task(ImageText())
