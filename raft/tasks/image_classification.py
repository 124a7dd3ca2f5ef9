"""Image classification (ViT, DeiT, ConvNeXt: ``AutoModelForImageClassification``).

Images come from a folder tree (``data.format: imagefolder``; one subfolder per class), or
from a column of image bytes or paths in jsonl/csv/parquet (relative paths are relative
to the data file). They are decoded with Pillow and turned into ``pixel_values`` by the
model's own image processor (its Pillow backend: no torchvision) inside Ray Data.
Training batches can be augmented (horizontal flip, random crop) after preprocessing, in
the same streamed pipeline, so every epoch sees fresh draws. Metrics: accuracy, macro-F1
and top-k accuracy.
"""

from __future__ import annotations

import functools
import io
import re
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt, confloat

from raft.labels import LabelMap
from raft.metrics import classification_metrics, confusion_matrix
from raft.registry import TaskSpec, register_task
from raft.serving import TopK, decode_media
from raft.sources import BAD_MEDIA, RowFault, label_fault, media_type_fault
from raft.tasks.base import EvalContext, Task, ranked_classes

PROMPT_REASON = (
    "peft's {kind} works on token sequences of language models; a vision encoder has no "
    "token embeddings or past key/values to attach it to"
)


class ImageClassificationSpec(TaskSpec):
    type: Literal["image_classification"] = "image_classification"
    image_column: str = Field(
        "image",
        description="Column of image bytes or paths (relative to the data file); 'image' for imagefolder.",
    )
    label_column: str = Field(
        "label", description="Column with class names; the folder name for imagefolder."
    )
    labels: list[str] | None = Field(
        None, min_length=2, description="Class names in id order. Default: the sorted classes found."
    )
    flip: bool = Field(False, description="Augment training images with random horizontal flips.")
    crop: confloat(gt=0.0, le=1.0) | None = Field(
        None, description="Augment with a random crop of this fraction of each side, resized back."
    )
    top_k: PositiveInt = Field(5, description="k of the top-k accuracy metric.")


class ImageClassification(Task):
    name = "image_classification"
    token_inputs = False
    spec_class = ImageClassificationSpec
    auto_class = "AutoModelForImageClassification"
    peft_task_type = None  # peft has no image task type: the adapter wraps the model as is
    peft_modules_to_save = ["classifier"]  # and the new head trains in full beside it
    preprocessor_class = "AutoImageProcessor"
    primary_metric = "accuracy"
    unsupported_techniques = {
        "prompt_tuning": PROMPT_REASON.format(kind="prompt tuning"),
        "prefix_tuning": PROMPT_REASON.format(kind="prefix tuning"),
    }

    def required_columns(self, spec: ImageClassificationSpec) -> list[str]:
        return [spec.image_column, spec.label_column]

    def label_column(self, spec: ImageClassificationSpec) -> str:
        return spec.label_column

    def check_row(
        self, row: dict[str, Any], spec: ImageClassificationSpec, model_path: str
    ) -> RowFault | None:
        return label_fault(row[spec.label_column], spec.label_column, spec.labels) or image_fault(
            row[spec.image_column], spec.image_column, row.get("path")
        )

    def preprocess(
        self,
        batch: dict[str, np.ndarray],
        spec: ImageClassificationSpec,
        model_path: str,
        labels: LabelMap | None,
    ) -> dict[str, np.ndarray]:
        processor = load_image_processor(model_path)
        paths = batch.get("path")
        images = [
            open_image(value, None if paths is None else paths[i]).convert("RGB")
            for i, value in enumerate(batch[spec.image_column])
        ]
        pixels = processor(images=images, return_tensors="np")["pixel_values"].astype(np.float32)
        features = {"pixel_values": pixels}
        if labels is not None:
            features["labels"] = np.asarray(labels.encode(batch[spec.label_column]), dtype=np.int64)
        return features

    def augments(self, spec: ImageClassificationSpec) -> bool:
        return spec.flip or spec.crop is not None

    def augment(self, batch: dict[str, np.ndarray], spec: ImageClassificationSpec) -> dict[str, np.ndarray]:
        return {**batch, "pixel_values": augment_pixels(batch["pixel_values"], spec.flip, spec.crop)}

    def collate(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {key: torch.from_numpy(np.array(value)) for key, value in batch.items()}

    def build_model(
        self,
        model_path: str,
        spec: ImageClassificationSpec,
        labels: LabelMap | None,
        trust_remote_code: bool = False,
        *,
        allow_pickle: bool = False,
    ) -> torch.nn.Module:
        return self.load_with_head(model_path, labels, trust_remote_code, allow_pickle=allow_pickle)

    # Statistics: the confusion matrix, plus one extra row whose first entry counts the
    # rows whose label is among the top-k logits.
    def empty_stats(self, labels: LabelMap | None) -> np.ndarray:
        return np.zeros((labels.num_labels + 1, labels.num_labels), dtype=np.int64)

    def eval_stats(
        self,
        outputs: Any,
        batch: dict[str, torch.Tensor],
        labels: LabelMap | None,
        context: EvalContext | None = None,
    ) -> np.ndarray:
        k = min(context.spec.top_k if context else 5, labels.num_labels)
        gold = batch["labels"].cpu()
        stats = self.empty_stats(labels)
        stats[:-1] = confusion_matrix(
            gold.numpy(), outputs.logits.argmax(-1).cpu().numpy(), labels.num_labels
        )
        top = outputs.logits.topk(k, dim=-1).indices.cpu()
        stats[-1, 0] = int((top == gold[:, None]).any(dim=-1).sum())
        stats[-1, 1] = k
        return stats

    def confusion(self, stats: np.ndarray) -> np.ndarray | None:
        return stats[:-1]

    def metrics(self, stats: np.ndarray, labels: LabelMap | None) -> dict[str, float]:
        confusion = stats[:-1]
        metrics = classification_metrics(confusion)
        total = int(confusion.sum())
        metrics["top_k_accuracy"] = float(stats[-1, 0]) / total if total else 0.0
        return metrics

    def save_preprocessor(self, model_path: str, destination: Any) -> None:
        load_image_processor(model_path).save_pretrained(destination)

    def lora_targets(self, model: torch.nn.Module) -> list[str]:
        names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        for pair in (["q_proj", "v_proj"], ["query", "value"]):  # ViT/DeiT/BEiT, new and old names
            if set(pair) <= names:
                return pair
        if {"pwconv1", "pwconv2"} <= names:  # ConvNeXt: the pointwise (linear) convolutions
            return ["pwconv1", "pwconv2"]
        return super().lora_targets(model)

    def ia3_targets(self, model: torch.nn.Module) -> tuple[list[str], list[str]] | None:
        names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        if {"pwconv1", "pwconv2"} <= names and not {"k_proj", "key"} & names:  # ConvNeXt
            return ["pwconv1", "pwconv2"], ["pwconv2"]
        return super().ia3_targets(model)

    # -- serving --------------------------------------------------------------------
    serves = True
    media_inputs = True
    options_model = TopK

    def request_input(self, item: Any, spec: ImageClassificationSpec, model_dir: str | None = None) -> Any:
        return request_image(decode_media(item, "image"))

    @torch.no_grad()
    def predict(
        self, model: Any, model_dir: str, spec: ImageClassificationSpec, inputs: list[Any], top_k: int = 1
    ) -> list[dict[str, Any]]:
        """Each image (an RGB PIL image from ``request_input``) → its label, score and the
        top_k classes, best first (the answer of sequence classification)."""
        pixels = load_image_processor(model_dir)(images=inputs, return_tensors="pt")["pixel_values"]
        logits = model(pixel_values=pixels.to(model.device, model.dtype)).logits
        return ranked_classes(logits.float().softmax(dim=-1).cpu(), model.config.id2label, top_k)

    def tiny_config(self, **overrides: Any) -> Any:
        from transformers import ViTConfig

        settings = dict(
            image_size=32,
            patch_size=8,
            num_channels=3,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        )
        settings.update(overrides)
        settings.pop("vocab_size", None)
        return ViTConfig(**settings)


@functools.lru_cache(maxsize=4)
def load_image_processor(model_path: str) -> Any:
    """The model's image processor with its Pillow backend, cached per process."""
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(model_path, backend="pil")


def open_image(value: Any, data_file: Any = None) -> Any:
    """A PIL image from bytes, a path (relative to ``data_file``'s folder) or a URI."""
    from PIL import Image

    from raft.sources import read_media

    return Image.open(io.BytesIO(read_media(value, data_file)))


def image_fault(value: Any, column: str, data_file: Any = None) -> RowFault | None:
    """Why an image cell cannot be used (``wrong_type``, or ``bad_media`` when it does not
    read or its file structure is broken), or None. Pixels are not decoded here."""
    fault = media_type_fault(value, column)
    if fault is not None:
        return fault
    try:
        open_image(value, data_file).verify()  # reads the whole file's structure
    except Exception as error:
        return RowFault(BAD_MEDIA, f"column {column!r}: cannot be read as an image ({_image_error(error)})")
    return None


def _image_error(error: Exception) -> str:
    """Pillow's message without the name it gives an in-memory file (an address that
    differs on every call, and means nothing to the user)."""
    return re.sub(r" <_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", _short(error))


def request_image(data: bytes) -> Any:
    """The RGB PIL image of a request's image bytes, decoded in full here (a truncated or
    foreign file is the client's error, not the batch's); ValueError says why not."""
    try:
        image = open_image(data)
        image.load()
        return image.convert("RGB")
    except Exception as error:
        raise ValueError(f"the image does not decode: {_image_error(error)}") from None


def augment_pixels(pixels: np.ndarray, flip: bool, crop: float | None, rng: Any = None) -> np.ndarray:
    """Random horizontal flip and/or random crop (resized back) of a (N, C, H, W) batch."""
    rng = rng or np.random.default_rng()
    out = pixels.copy()
    n, _, height, width = out.shape
    for i in range(n):
        image = out[i]
        if crop is not None and crop < 1.0:
            h, w = max(1, round(height * crop)), max(1, round(width * crop))
            top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
            window = torch.from_numpy(np.ascontiguousarray(image[:, top : top + h, left : left + w]))[None]
            image = torch.nn.functional.interpolate(window, size=(height, width), mode="bilinear")[0].numpy()
        if flip and rng.random() < 0.5:
            image = image[:, :, ::-1]
        out[i] = image
    return out


def _short(error: Exception) -> str:
    return str(error).splitlines()[0][:120] if str(error) else type(error).__name__


register_task(ImageClassification())
