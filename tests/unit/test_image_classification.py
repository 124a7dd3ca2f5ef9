"""Image classification: folder trees, decoding with the model's image processor,
augmentation, bad images, top-k."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from raft.labels import LabelMap
from raft.sources import DataError, class_of, resolve
from raft.tasks.image_classification import ImageClassification, ImageClassificationSpec, augment_pixels
from raft.testing import make_tiny_vision_model, write_toy_image_folder

TASK = ImageClassification()
CLASSES = LabelMap(("horizontal", "vertical"))


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    return str(make_tiny_vision_model(tmp_path_factory.mktemp("vit")))


def test_an_image_folder_is_one_subfolder_per_class(tmp_path):
    write_toy_image_folder(tmp_path / "images", 6)
    source = resolve(str(tmp_path / "images"))
    assert source.format == "imagefolder" and len(source.files) == 6
    assert {class_of(f, source.root) for f in source.files} == {"horizontal", "vertical"}
    (tmp_path / "images" / "stray.png").write_bytes(
        (tmp_path / "images" / "vertical" / "00001.png").read_bytes()
    )
    with pytest.raises(DataError, match="one subfolder per class.*'stray.png'"):
        resolve(str(tmp_path / "images"))


def test_a_folder_with_a_single_class_is_refused(tmp_path):
    write_toy_image_folder(tmp_path / "images", 1)
    with pytest.raises(DataError, match="one class folder"):
        resolve(str(tmp_path / "images"))


def test_preprocess_uses_the_models_image_processor(vit, tmp_path):
    from transformers import AutoImageProcessor

    source = resolve(str(write_toy_image_folder(tmp_path / "images", 4)))
    images = np.array([Path(f).read_bytes() for f in source.files], dtype=object)
    labels = np.array([class_of(f, source.root) for f in source.files], dtype=object)
    features = TASK.preprocess({"image": images, "label": labels}, ImageClassificationSpec(), vit, CLASSES)
    assert features["pixel_values"].shape == (4, 3, 32, 32)
    assert features["labels"].tolist() == [CLASSES.encode([label])[0] for label in labels]
    from PIL import Image

    expected = AutoImageProcessor.from_pretrained(vit, backend="pil")(
        images=[Image.open(source.files[0]).convert("RGB")], return_tensors="np"
    )["pixel_values"][0]
    assert np.allclose(features["pixel_values"][0], expected)


def test_image_paths_are_relative_to_the_data_file(vit, tmp_path):
    write_toy_image_folder(tmp_path / "images", 2)
    row = {
        "image": "images/horizontal/00000.png",
        "label": "horizontal",
        "path": str(tmp_path / "rows.jsonl"),
    }
    assert TASK.row_problem(row, ImageClassificationSpec(), vit) is None
    assert "cannot be read as an image" in TASK.row_problem(
        dict(row, image="images/missing.png"), ImageClassificationSpec(), vit
    )
    assert "cannot be read as an image" in TASK.row_problem(
        dict(row, image=b"\x89PNG broken"), ImageClassificationSpec(), vit
    )


def test_augmentation_flips_and_crops():
    pixels = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)

    class AlwaysFlip:
        def random(self):
            return 0.0

        def integers(self, low, high):
            return low

    flipped = augment_pixels(pixels, flip=True, crop=None, rng=AlwaysFlip())
    assert np.array_equal(flipped, pixels[:, :, :, ::-1])
    cropped = augment_pixels(pixels, flip=False, crop=0.5, rng=AlwaysFlip())
    assert cropped.shape == pixels.shape and not np.array_equal(cropped, pixels)
    assert TASK.augments(ImageClassificationSpec(flip=True)) and not TASK.augments(ImageClassificationSpec())


def test_top_k_accuracy_counts_labels_among_the_k_best():
    labels = LabelMap(("a", "b", "c"))

    class Out:
        logits = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])

    class Context:
        spec = ImageClassificationSpec(top_k=2)

    stats = TASK.eval_stats(Out(), {"labels": torch.tensor([0, 1, 2])}, labels, Context())
    metrics = TASK.metrics(stats, labels)
    assert metrics["accuracy"] == pytest.approx(1 / 3)
    assert metrics["top_k_accuracy"] == pytest.approx(2 / 3)


def test_virtual_token_techniques_are_refused_for_vision():
    from raft.spec import SpecError, validate

    for technique in ("prompt_tuning", "prefix_tuning"):
        with pytest.raises(SpecError, match="vision encoder has no token embeddings"):
            validate(
                {
                    "model": {"path": "m"},
                    "task": {"type": "image_classification"},
                    "technique": {"type": technique},
                    "data": {"train": "images"},
                }
            )


def test_convnext_gets_lora_and_ia3_on_its_pointwise_layers(tmp_path):
    from transformers import AutoModel, ConvNextConfig

    from raft import registry
    from raft.spec import validate

    config = ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], image_size=32, num_stages=2)
    AutoModel.from_config(config).save_pretrained(tmp_path / "convnext")
    for technique, marker in (({"type": "lora", "r": 4}, "lora_A"), ({"type": "ia3"}, "ia3_l")):
        spec = validate(
            {
                "model": {"path": str(tmp_path / "convnext")},
                "task": {"type": "image_classification"},
                "technique": technique,
                "data": {"train": "unused"},
            }
        )
        model = registry.apply_technique(
            TASK.build_model(spec.model.path, spec.task, CLASSES), spec.technique, TASK
        )
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        adapted = {n.split(f".{marker}")[0].rsplit(".", 1)[-1] for n in trainable if marker in n}
        assert adapted == {"pwconv1", "pwconv2"}, trainable
        assert any("classifier" in n for n in trainable)  # the new head trains beside the adapter
        outputs = model(pixel_values=torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 1]))
        assert torch.isfinite(outputs.loss)
