"""Image-text end to end: captioned images named by a jsonl, processed in Ray Data, a tiny
CLIP trained contrastively on 2 Ray Train workers under ZeRO-2; retrieval recall and
zero-shot accuracy over the whole validation set (gathered from both workers); the export
classifies zero-shot with plain transformers and agrees with the last evaluation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from raft.evaluate import evaluate_model
from raft.spec import validate
from raft.testing import make_tiny_clip_model, write_toy_captions
from raft.train import fit

pytestmark = pytest.mark.slow

ZERO_SHOT = """
import json, os, sys, torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer
model_dir, data = sys.argv[1], sys.argv[2]
model = AutoModel.from_pretrained(model_dir).eval()
processor, tokenizer = AutoImageProcessor.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
names = [model.config.id2label[i] for i in range(len(model.config.id2label))]
prompts = [tokenizer(f"a photo of {n} stripes")["input_ids"] + [tokenizer.eos_token_id] for n in names]
width = max(map(len, prompts))
ids = torch.tensor([p + [tokenizer.pad_token_id] * (width - len(p)) for p in prompts])
rows = [json.loads(line) for line in open(data)]
images = [Image.open(os.path.join(os.path.dirname(data), r["image"])).convert("RGB") for r in rows]
with torch.no_grad():
    text = model.get_text_features(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long()).pooler_output
    image = model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output
predicted = (image / image.norm(dim=-1, keepdim=True) @ (text / text.norm(dim=-1, keepdim=True)).T).argmax(-1)
print(json.dumps(sum(names[int(p)] == r["label"] for p, r in zip(predicted, rows)) / len(rows)))
"""


def test_clip_learns_captions_and_zero_shot_classes(tmp_path):
    model = make_tiny_clip_model(tmp_path / "clip")
    train = write_toy_captions(tmp_path / "captions", 960, seed=0, name="train.jsonl")
    validation = write_toy_captions(tmp_path / "captions", 40, seed=1, name="validation.jsonl")
    spec = validate(
        {
            "model": {"path": str(model)},
            "task": {
                "type": "image_text",
                "label_column": "label",
                "class_prompt": "a photo of {} stripes",
                "max_length": 16,
            },
            "technique": {"type": "full"},
            "data": {"train": str(train), "validation": str(validation)},
            "train": {"epochs": 4, "batch_size": 16, "lr": 1e-3, "lr_scheduler": "linear"},
            "scaling": {"num_workers": 2},
            "deepspeed": {"zero_stage": 2},
            "output": {"dir": str(tmp_path / "runs")},
        }
    )
    outcome = fit(spec)
    first, last = outcome.history[0], outcome.history[-1]
    assert last["val_rows"] == 40
    # 8 classes (4 colours × 2 stripe directions): chance is 1/8. The colour alone, which a
    # tiny CLIP picks up in the first epoch, gives 1/2. At a constant 3e-3 the last epoch
    # swung between 0.35 (a CI failure) and 0.6; at 1e-3 decaying linearly, five runs ended
    # at 0.625–0.85 (recall@5 at 0.59–0.69, from 0.09).
    zero_shot = [h["val_zero_shot_accuracy"] for h in outcome.history]
    assert zero_shot[0] < 0.3 and zero_shot[-1] > 0.35 and zero_shot[-1] > zero_shot[0] + 0.2, zero_shot
    assert last["val_recall_at_5"] > first["val_recall_at_5"] + 0.1, outcome.history
    for key in ("image_to_text_recall_at_1", "text_to_image_recall_at_5", "recall_at_1"):
        assert 0.0 <= last[f"val_{key}"] <= 1.0
    plain = subprocess.run(
        [sys.executable, "-c", ZERO_SHOT, outcome.model_dir, str(validation)], capture_output=True, text=True
    )
    assert plain.returncode == 0, plain.stderr[-2000:]
    # Classes that differ only in stripe direction are near-ties until the model learns the
    # direction: float32 rounding in other batch shapes flips some of them (a CI run: 0.625
    # here against 0.5 in the last evaluation), so agreement is asserted within 0.2; an
    # export with wrong weights or label order lands near chance (0.125).
    plain_accuracy = json.loads(plain.stdout.strip().splitlines()[-1])
    assert plain_accuracy == pytest.approx(last["val_zero_shot_accuracy"], abs=0.2)
    # raft eval, in one process over every row, ranks against the same 40 pairs.
    scored = evaluate_model(outcome.model_dir, str(validation))
    assert scored["rows"] == 40
    for key in ("recall_at_1", "recall_at_5", "zero_shot_accuracy"):
        assert scored[f"val_{key}"] == pytest.approx(last[f"val_{key}"], abs=0.2), key
