"""Image classification: folder trees, decoding with the model's image processor,
augmentation, bad images, top-k."""

from __future__ import annotations

import base64
import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from raft.evaluate import load_exported
from raft.labels import LabelMap
from raft.sources import DataError, class_of, resolve
from raft.tasks.image_classification import ImageClassification, ImageClassificationSpec, augment_pixels
from raft.testing import make_tiny_vision_model, toy_image, write_toy_image_folder
from tests.helpers import export_tiny

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


# -- serving ---------------------------------------------------------------------------------
SERVED_CLASSES = ("diagonal", "horizontal", "vertical")


@pytest.fixture(scope="module")
def served_vit(vit, tmp_path_factory):
    root = tmp_path_factory.mktemp("served-vit")
    return str(export_tiny(vit, root, {"type": "image_classification"}, SERVED_CLASSES))


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_serving_classifies_images_as_the_model_does(served_vit):
    from PIL import Image
    from transformers import AutoImageProcessor

    rng = random.Random(0)
    images = [toy_image("horizontal", rng), toy_image("vertical", rng, size=40), toy_image("vertical", rng)]
    images[2] = images[2].convert("L")  # a grayscale file is served as RGB
    files = [png(image) for image in images]
    # base64 text, a data: URL, and the bytes of a multipart upload
    items = [
        base64.b64encode(files[0]).decode(),
        "data:image/png;base64," + base64.b64encode(files[1]).decode(),
        files[2],
    ]
    spec, model, _ = load_exported(served_vit)
    decoded = [TASK.request_input(item, spec.task) for item in items]
    assert [image.mode for image in decoded] == ["RGB"] * 3
    answers = TASK.predict(model, served_vit, spec.task, decoded, top_k=2)

    processor = AutoImageProcessor.from_pretrained(served_vit, backend="pil")
    pixels = processor(images=[Image.open(io.BytesIO(f)).convert("RGB") for f in files], return_tensors="pt")[
        "pixel_values"
    ]
    with torch.no_grad():
        probabilities = model(pixel_values=pixels).logits.softmax(dim=-1)
    for answer, row in zip(answers, probabilities, strict=True):
        assert set(answer) == {"label", "score", "top_k"}
        assert answer["label"] == SERVED_CLASSES[int(row.argmax())]
        assert answer["score"] == pytest.approx(float(row.max()), abs=1e-5)
        assert [c["label"] for c in answer["top_k"]] == [
            SERVED_CLASSES[int(i)] for i in row.argsort()[-2:].flip(0)
        ]
        assert answer["top_k"][0] == {"label": answer["label"], "score": answer["score"]}
        assert answer["top_k"][0]["score"] >= answer["top_k"][1]["score"]
    assert len({a["score"] for a in answers}) == 3  # three different images, three answers
    # top_k defaults to 1 and stops at the number of classes.
    assert [len(a["top_k"]) for a in TASK.predict(model, served_vit, spec.task, decoded)] == [1, 1, 1]
    every = TASK.predict(model, served_vit, spec.task, decoded[:1], top_k=1000)[0]["top_k"]
    assert sorted(c["label"] for c in every) == list(SERVED_CLASSES)
    assert sum(c["score"] for c in every) == pytest.approx(1.0)


def test_bad_images_and_parameters_are_the_clients_errors(served_vit):
    from raft.serving import input_problems

    spec = ImageClassificationSpec()
    assert TASK.serves and TASK.media_inputs
    good = png(toy_image("horizontal", random.Random(1)))
    items = [
        base64.b64encode(good).decode(),
        "not base64!",
        base64.b64encode(b"plain text, not a picture").decode(),
        base64.b64encode(good[: len(good) // 2]).decode(),  # cut short: the header reads fine
        {"image": base64.b64encode(good).decode()},
        "",
    ]
    decoded, problems = input_problems(TASK, spec, items)
    assert len(decoded) == 1
    assert problems == [
        "inputs[1]: give the image as base64 text (or a data: URL); this is not base64",
        "inputs[2]: the image does not decode: cannot identify image file",
        "inputs[3]: the image does not decode: image file is truncated",
        "inputs[4]: give the image as base64 text (or upload it as a file)",
        "inputs[5]: the image is empty",
    ]
    assert TASK.request_options({}, spec) == {"top_k": 1}
    assert TASK.request_options({"top_k": 3}, spec) == {"top_k": 3}
    with pytest.raises(ValueError, match=r"parameters\.k: Extra inputs are not permitted"):
        TASK.request_options({"k": 3}, spec)
    with pytest.raises(ValueError, match=r"parameters\.top_k: Input should be less than or equal to 1000"):
        TASK.request_options({"top_k": 1001}, spec)
