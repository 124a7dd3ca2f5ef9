"""Image classification end to end: an image folder tree through Ray Data (decoded and
processed by the model's image processor, augmented for training), a tiny ViT on 2 Ray
Train workers under ZeRO-2; the export classifies with plain transformers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from raft.data import prepare
from raft.sources import DataError
from raft.spec import validate
from raft.testing import make_tiny_vision_model, write_toy_image_folder
from raft.train import fit

pytestmark = pytest.mark.slow

PREDICT = """
import json, pathlib, sys, torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification
model_dir, folder = sys.argv[1], pathlib.Path(sys.argv[2])
model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
processor = AutoImageProcessor.from_pretrained(model_dir, backend="pil")
right = total = 0
for path in sorted(folder.glob("*/*.png")):
    inputs = processor(images=[Image.open(path).convert("RGB")], return_tensors="pt")
    with torch.no_grad():
        right += model.config.id2label[int(model(**inputs).logits.argmax(-1))] == path.parent.name
    total += 1
print(json.dumps([right, total]))
"""


def spec_for(model, train, validation, tmp_path, technique=None, **task):
    return validate(
        {
            "model": {"path": str(model)},
            "task": {"type": "image_classification", **task},
            "technique": technique or {"type": "full"},
            "data": {"train": str(train), "validation": str(validation)},
            "train": {
                "epochs": 6,
                "batch_size": 16,
                "lr": 2e-3,
                "lr_scheduler": "constant",
                "log_every_n_steps": 5,
            },
            "scaling": {"num_workers": 2},
            "deepspeed": {"zero_stage": 2},
            "output": {"dir": str(tmp_path / "runs")},
        }
    )


def test_vit_learns_stripe_direction_from_an_image_folder(tmp_path):
    model = make_tiny_vision_model(tmp_path / "vit")
    train = write_toy_image_folder(tmp_path / "train", 320, seed=0)
    validation = write_toy_image_folder(tmp_path / "validation", 60, seed=1)
    outcome = fit(spec_for(model, train, validation, tmp_path, flip=True, top_k=1))
    first, last = outcome.history[0], outcome.history[-1]
    assert last["val_loss"] < first["val_loss"] - 0.2, outcome.history
    assert last["val_accuracy"] > 0.8 and last["val_rows"] == 60, outcome.history  # chance: 0.5
    assert last["val_top_k_accuracy"] == pytest.approx(last["val_accuracy"])  # k = 1
    # The export, loaded with plain transformers, classifies the validation folder (named by
    # its subfolders) exactly as the last evaluation did.
    predicted = subprocess.run(
        [sys.executable, "-c", PREDICT, outcome.model_dir, str(validation)],
        capture_output=True,
        text=True,
        check=True,
    )
    right, total = json.loads(predicted.stdout.strip().splitlines()[-1])
    assert total == 60 and right / total == pytest.approx(last["val_accuracy"]), (right, outcome.history)


def test_a_corrupt_image_is_named(tmp_path):
    model = make_tiny_vision_model(tmp_path / "vit")
    train = write_toy_image_folder(tmp_path / "train", 20, seed=0)
    (train / "vertical" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    spec = spec_for(model, train, train, tmp_path)
    with pytest.raises(DataError, match=r"vertical/broken.png: column 'image': cannot be read as an image"):
        prepare(spec)
    skipping = spec.model_copy(update={"data": spec.data.model_copy(update={"on_bad_rows": "skip"})})
    prepared = prepare(skipping)  # 1 bad image in 21 (4.8%): within data.max_bad_fraction's 5%
    assert prepared.skipped == {"data.train": {"bad_media": 1}, "data.validation": {"bad_media": 1}}
    assert prepared.train_rows == 20
