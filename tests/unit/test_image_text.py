"""Image-text (CLIP): caption tokens, retrieval recall both ways, zero-shot accuracy, bad
rows, tower freezing and the model checks."""

from __future__ import annotations

import base64
import io
import json
import random

import numpy as np
import pytest
import torch

from raft.evaluate import load_exported
from raft.labels import LabelMap
from raft.spec import SpecError, validate
from raft.tasks.base import EvalContext
from raft.tasks.image_text import ImageText, ImageTextSpec, caption_ids, retrieval_metrics
from raft.techniques.freeze import frozen_parameter_names
from raft.testing import (
    make_byte_tokenizer,
    make_tiny_clip_model,
    make_tiny_model,
    toy_captioned_image,
    write_toy_captions,
)
from tests.helpers import export_tiny

TASK = ImageText()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return str(make_tiny_clip_model(tmp_path_factory.mktemp("clip")))


def stats_of(images, texts, classes=None, predicted=None):
    rows = len(images)
    classes = np.full(rows, -1.0) if classes is None else np.asarray(classes, dtype=float)
    predicted = np.full(rows, -1.0) if predicted is None else np.asarray(predicted, dtype=float)
    unit = lambda m: np.asarray(m, dtype=float) / np.linalg.norm(m, axis=1, keepdims=True)  # noqa: E731
    return np.concatenate([unit(images), unit(texts), classes[:, None], predicted[:, None]], axis=1)


def test_recall_counts_only_strictly_better_candidates():
    eye = np.eye(4)
    perfect = retrieval_metrics(stats_of(eye, eye), (1, 2))
    assert perfect["image_to_text_recall_at_1"] == perfect["text_to_image_recall_at_1"] == 1.0
    # Image 0 is closer to caption 1 than to its own caption: its caption ranks second
    # (image→text recall@1 3/4, @2 1). Each caption still finds its own image first:
    # caption 0 scores image 0 at 0.2 and the others at 0; caption 1 prefers image 1.
    images = eye.copy()
    images[0] = [0.2, 1.0, 0, 0]
    metrics = retrieval_metrics(stats_of(images, eye), (1, 2))
    assert metrics["image_to_text_recall_at_1"] == 0.75 and metrics["image_to_text_recall_at_2"] == 1.0
    assert metrics["text_to_image_recall_at_1"] == 1.0
    assert metrics["recall_at_1"] == pytest.approx(0.875)
    # Image 1 moved onto caption 0: captions 0 and 1 each prefer the other's image.
    images[1] = [1.0, 0.1, 0, 0]
    assert retrieval_metrics(stats_of(images, eye), (1,))["text_to_image_recall_at_1"] == 0.5
    # Two identical captions embed identically: a tie is not a miss.
    twins = retrieval_metrics(stats_of(eye[[0, 0, 1]], eye[[0, 0, 1]]), (1,))
    assert twins["image_to_text_recall_at_1"] == 1.0 and twins["text_to_image_recall_at_1"] == 1.0
    # ... also when float32 rounding in different batch shapes nudged one of them.
    nudged = eye[[0, 0, 1]].copy()
    nudged[1, 1] = 1e-4  # cosine to its twin: 1 - 5e-9
    twins = retrieval_metrics(stats_of(eye[[0, 0, 1]], nudged), (1,))
    assert twins["image_to_text_recall_at_1"] == 1.0 and twins["text_to_image_recall_at_1"] == 1.0


def test_zero_shot_accuracy_counts_labelled_rows_only():
    eye = np.eye(3)
    metrics = retrieval_metrics(stats_of(eye, eye, classes=[0, 1, -1], predicted=[0, 2, 1]))
    assert metrics["zero_shot_accuracy"] == 0.5
    assert "zero_shot_accuracy" not in retrieval_metrics(stats_of(eye, eye))
    assert retrieval_metrics(np.zeros((0, 2))) == {"recall_at_1": 0.0, "recall_at_5": 0.0}


def test_captions_end_with_eos_where_clip_pools():
    tokenizer = make_byte_tokenizer()
    ids, mask = caption_ids(tokenizer, ["good movie", "bad " * 30], 8)
    eos = tokenizer.eos_token_id
    assert ids.shape == (2, 8) and mask[1].sum() == 8 and ids[1, -1] == eos
    length = int(mask[0].sum())
    assert ids[0, length - 1] == eos and (ids[0, length:] == tokenizer.pad_token_id).all()
    assert tokenizer.decode(ids[0, : length - 1]) == "good movie"


def test_preprocess_and_forward_with_the_contrastive_loss(clip, tmp_path):
    data = write_toy_captions(tmp_path / "captions", 6)
    rows = [json.loads(line) | {"path": str(data)} for line in data.read_text().splitlines()]
    spec = ImageTextSpec(label_column="label", max_length=16, class_prompt="a photo of {} stripes")
    labels = LabelMap(tuple(sorted({row["label"] for row in rows})))
    batch = {key: np.array([row[key] for row in rows], dtype=object) for key in rows[0]}
    features = TASK.preprocess(batch, spec, clip, labels)
    assert features["pixel_values"].shape == (6, 3, 32, 32) and features["input_ids"].shape == (6, 16)
    assert features["class_ids"].tolist() == labels.encode([row["label"] for row in rows])
    tensors = TASK.collate(features)
    inputs = TASK.model_inputs(tensors)
    assert "class_ids" not in inputs and inputs["return_loss"] is True
    model = TASK.build_model(clip, spec, labels).eval()
    with torch.no_grad():
        outputs = model(**inputs)
    assert torch.isfinite(outputs.loss)
    stats = TASK.eval_stats(outputs, tensors, labels, EvalContext(model=model, spec=spec, model_path=clip))
    assert stats.shape == (6, 2 * 32 + 2) and np.allclose(np.linalg.norm(stats[:, :32], axis=1), 1)
    assert stats[:, -2].tolist() == features["class_ids"].tolist()
    # Statistics of two halves (two workers) concatenate to those of the whole.
    halves = TASK.combine_stats(TASK.combine_stats(TASK.empty_stats(labels), stats[:3]), stats[3:])
    assert np.array_equal(halves, stats)
    metrics = TASK.metrics_for(stats, labels, spec.model_copy(update={"recall_at": [3]}))
    assert {"recall_at_1", "recall_at_3", "zero_shot_accuracy"} <= set(metrics)


def test_bad_rows_are_named(clip, tmp_path):
    data = write_toy_captions(tmp_path / "captions", 1)
    row = json.loads(data.read_text()) | {"path": str(data)}
    spec = ImageTextSpec(label_column="label")
    assert TASK.row_problem(row, spec, clip) is None
    assert TASK.row_problem(row | {"caption": None}, spec, clip) == "column 'caption' is empty"
    assert TASK.row_problem(row | {"label": None}, spec, clip) == "column 'label' is empty"
    broken = TASK.row_problem(row | {"image": b"not a png"}, spec, clip)
    assert broken.startswith("column 'image': cannot be read as an image")


def test_model_checks_and_spec_rules(clip, tmp_path):
    TASK.check_model(ImageTextSpec(max_length=16), clip)
    with pytest.raises(ValueError, match="longer than the text tower's 32 positions"):
        TASK.check_model(ImageTextSpec(), clip)  # 77 tokens
    bert = str(make_tiny_model(tmp_path / "bert"))
    with pytest.raises(ValueError, match="needs a two-tower image-text model.*'bert'"):
        TASK.check_model(ImageTextSpec(), bert)
    base = {"model": {"path": clip}, "task": {"type": "image_text"}, "data": {"train": "x.jsonl"}}
    with pytest.raises(SpecError, match="prompt_tuning cannot train image_text"):
        validate(base | {"technique": {"type": "prompt_tuning"}})
    with pytest.raises(SpecError, match="class_prompt needs a"):
        validate(base | {"task": {"type": "image_text", "class_prompt": "a photo"}})


def test_freezing_the_vision_tower_freezes_exactly_it(clip):
    spec = validate(
        {
            "model": {"path": clip},
            "task": {"type": "image_text"},
            "technique": {"type": "freeze", "embeddings": False, "parts": ["vision"]},
            "data": {"train": "x.jsonl"},
        }
    )
    model = TASK.build_model(clip, spec.task, None)
    frozen = frozen_parameter_names(model, spec.technique, TASK)
    vision = {n for n, _ in model.named_parameters() if n.startswith(("vision_model.", "visual_projection."))}
    assert frozen == vision and vision
    assert "logit_scale" not in frozen and any(
        n.startswith("text_model.") for n, _ in model.named_parameters()
    )


def test_a_missing_caption_column_is_named_before_ray_starts(clip, tmp_path):
    from raft.data import resolve_sources
    from raft.sources import DataError

    data = write_toy_captions(tmp_path / "captions", 4)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    data.write_text("".join(json.dumps({"image": r["image"], "text": r["caption"]}) + "\n" for r in rows))
    spec = validate({"model": {"path": clip}, "task": {"type": "image_text"}, "data": {"train": str(data)}})
    with pytest.raises(DataError, match=r"has no column\(s\) \['caption'\]; it has \['image', 'text'\]"):
        resolve_sources(spec)
    fixed = spec.model_copy(update={"task": spec.task.model_copy(update={"text_column": "text"})})
    assert resolve_sources(fixed)[0].files == (str(data),)


# -- serving ---------------------------------------------------------------------------------
SERVED_CLASSES = ("blue vertical", "red horizontal")
SERVED_TASK = {"type": "image_text", "max_length": 16, "class_prompt": "a photo of {} stripes"}


@pytest.fixture(scope="module")
def served_clip(clip, tmp_path_factory):
    """The tiny CLIP exported after training with class names (a label column)."""
    root = tmp_path_factory.mktemp("served-clip")
    return str(export_tiny(clip, root, SERVED_TASK | {"label_column": "label"}, SERVED_CLASSES))


def image_item(color: str, direction: str, seed: int = 0) -> dict:
    buffer = io.BytesIO()
    toy_captioned_image(color, direction, random.Random(seed)).save(buffer, format="PNG")
    return {"image": base64.b64encode(buffer.getvalue()).decode()}


def unit_features(features) -> torch.Tensor:
    features = getattr(features, "pooler_output", features)
    return features / features.norm(dim=-1, keepdim=True)


def expected_probabilities(model, tokenizer, image: torch.Tensor, names: list[str]) -> torch.Tensor:
    """Softmax over logit_scale × cosine of one unit image embedding and each class prompt."""
    eos = tokenizer.eos_token_id
    prompts = [tokenizer(f"a photo of {name} stripes")["input_ids"] + [eos] for name in names]
    with torch.no_grad():
        texts = torch.cat(
            [unit_features(model.get_text_features(input_ids=torch.tensor([p]))) for p in prompts]
        )
        return (model.logit_scale.exp() * image @ texts.T).softmax(dim=-1)


def test_serving_embeds_images_and_texts_as_the_towers_do(served_clip):
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer

    spec, model, _ = load_exported(served_clip)
    items = [image_item("red", "horizontal"), {"text": "red lines"}, image_item("blue", "vertical", 1)]
    decoded = [TASK.request_input(item, spec.task) for item in items]
    assert [kind for kind, _ in decoded] == ["image", "text", "image"]
    answers = TASK.predict(model, served_clip, spec.task, decoded)

    processor = AutoImageProcessor.from_pretrained(served_clip)
    tokenizer = AutoTokenizer.from_pretrained(served_clip)
    files = [Image.open(io.BytesIO(base64.b64decode(items[i]["image"]))).convert("RGB") for i in (0, 2)]
    with torch.no_grad():
        images = unit_features(
            model.get_image_features(
                pixel_values=processor(images=files, return_tensors="pt")["pixel_values"]
            )
        )
        ids = tokenizer("red lines")["input_ids"] + [tokenizer.eos_token_id]  # CLIP pools at EOS
        text = unit_features(model.get_text_features(input_ids=torch.tensor([ids])))[0]
    assert set(answers[1]) == {"embedding"}  # a text: its embedding only
    assert np.allclose(answers[1]["embedding"], text.numpy(), atol=1e-5)
    for answer, image in zip((answers[0], answers[2]), images, strict=True):
        assert set(answer) == {"embedding", "label", "score", "top_k"}
        assert len(answer["embedding"]) == 32 and np.allclose(answer["embedding"], image.numpy(), atol=1e-5)
        # Zero-shot over the classes the model was trained with.
        probabilities = expected_probabilities(model, tokenizer, image, list(SERVED_CLASSES))
        assert answer["label"] == SERVED_CLASSES[int(probabilities.argmax())]
        assert answer["score"] == pytest.approx(float(probabilities.max()), abs=1e-5)
        assert answer["top_k"] == [{"label": answer["label"], "score": answer["score"]}]
    assert not np.allclose(answers[0]["embedding"], answers[2]["embedding"])


def test_candidate_labels_replace_the_trained_classes(served_clip, clip, tmp_path):
    from transformers import AutoTokenizer

    spec, model, _ = load_exported(served_clip)
    decoded = [TASK.request_input(image_item("green", "vertical"), spec.task)]
    options = TASK.request_options({"candidate_labels": ["green", "yellow", "red"], "top_k": 5}, spec.task)
    assert options == {"candidate_labels": ["green", "yellow", "red"], "top_k": 5}
    (answer,) = TASK.predict(model, served_clip, spec.task, decoded, **options)
    ranked = answer["top_k"]
    assert sorted(c["label"] for c in ranked) == ["green", "red", "yellow"]  # top_k stops at 3
    assert [c["score"] for c in ranked] == sorted((c["score"] for c in ranked), reverse=True)
    probabilities = expected_probabilities(
        model,
        AutoTokenizer.from_pretrained(served_clip),
        torch.tensor(answer["embedding"]),
        ["green", "yellow", "red"],
    )
    assert {c["label"]: c["score"] for c in ranked} == pytest.approx(
        dict(zip(["green", "yellow", "red"], probabilities.tolist(), strict=True)), abs=1e-5
    )
    # A model trained on captions alone has no classes: an image gets its embedding only,
    # unless the request names candidates.
    captions_only = str(export_tiny(clip, tmp_path, SERVED_TASK))
    spec, model, _ = load_exported(captions_only)
    (plain,) = TASK.predict(model, captions_only, spec.task, decoded)
    assert set(plain) == {"embedding"}
    (named,) = TASK.predict(
        model, captions_only, spec.task, decoded, candidate_labels=["red", "blue"], top_k=2
    )
    assert [c["label"] for c in named["top_k"]] in (["red", "blue"], ["blue", "red"])


def test_bad_inputs_and_parameters_are_the_clients_errors(served_clip):
    from raft.serving import input_problems

    spec = ImageTextSpec()
    assert TASK.serves and not TASK.media_inputs  # the image travels inside an object
    good = image_item("red", "horizontal")
    items = [
        good,
        good | {"text": "red lines"},
        {},
        "red lines",
        {"text": 3},
        {"image": "not base64!"},
        {"image": base64.b64encode(b"not a png").decode()},
        {"caption": "red lines"},
    ]
    decoded, problems = input_problems(TASK, spec, items)
    assert len(decoded) == 1
    shape = 'give {"image": <base64 image>} or {"text": "..."} (exactly one of the two)'
    assert problems == [
        f"inputs[1]: {shape}; got the keys ['image', 'text']",
        f"inputs[2]: {shape}; got the keys []",
        f"inputs[3]: {shape}",
        'inputs[4]: "text" must be a string, got int',
        "inputs[5]: give the image as base64 text (or a data: URL); this is not base64",
        "inputs[6]: the image does not decode: cannot identify image file",
        f"inputs[7]: {shape}; got the keys ['caption']",
    ]
    assert TASK.request_options({}, spec) == {"top_k": 1}
    for parameters, message in (
        ({"labels": ["red"]}, r"parameters\.labels: Extra inputs are not permitted"),
        ({"candidate_labels": []}, r"parameters\.candidate_labels: List should have at least 1 item"),
        ({"candidate_labels": ["red", "red"]}, r"parameters\.candidate_labels: .*repeat: \['red'\]"),
        ({"candidate_labels": ["red", " "]}, r"parameters\.candidate_labels: .*blank"),
        ({"top_k": 0}, r"parameters\.top_k: Input should be greater than 0"),
    ):
        with pytest.raises(ValueError, match=message):
            TASK.request_options(parameters, spec)
